#!/usr/bin/env bash
# demo.sh up|down - start a local Tally node on the services `make services` started, send it
# a few thousand events through HTTP ingest, and print where to look.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

STATE=.services/demo
mkdir -p "$STATE"
BIN=target/release/tally-node
CONFIG=cluster-config/local.toml
API=http://127.0.0.1:8080

stop_node() {
  local pidfile=$STATE/tally-node.pid
  [ -f "$pidfile" ] || return 0
  local pid; pid=$(cat "$pidfile")
  if kill -0 "$pid" 2>/dev/null && tr '\0' ' ' < "/proc/$pid/cmdline" | grep -q tally-node; then
    kill -TERM "$pid"
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
    echo "demo: stopped tally-node (pid $pid)"
  fi
  rm -f "$pidfile"
}

case "${1:-up}" in
  down) stop_node; exit 0 ;;
  up) ;;
  *) echo "usage: $0 up|down" >&2; exit 2 ;;
esac

[ -x "$BIN" ] || { echo "demo: $BIN is missing: run 'make build-release' first" >&2; exit 1; }
stop_node
nohup "$BIN" --config "$CONFIG" > "$STATE/tally-node.log" 2>&1 &
echo $! > "$STATE/tally-node.pid"
echo "demo: started tally-node (pid $!), log: $STATE/tally-node.log"

for i in $(seq 1 120); do
  if curl -fs "$API/readyz" > /dev/null 2>&1; then break; fi
  if ! kill -0 "$(cat "$STATE/tally-node.pid")" 2>/dev/null; then
    echo "demo: tally-node exited; last log lines:" >&2; tail -n 30 "$STATE/tally-node.log" >&2; exit 1
  fi
  [ "$i" = 120 ] && { echo "demo: node not ready after 60 s:" >&2; curl -s "$API/readyz" >&2; exit 1; }
  sleep 0.5
done
echo "demo: node ready: $(curl -s "$API/readyz")"

# A few thousand events: 200 players over 10 channels, sessions, matches, purchases, viewing.
python3 - > "$STATE/events.ndjson" <<'PY'
import json, random
rnd = random.Random(7)
t = 1_700_000_000_000
for i in range(3000):
    t += rnd.randint(10, 500)
    p = f"demo-player-{rnd.randint(1, 200)}"
    c = f"demo-channel-{rnd.randint(1, 10)}"
    kind = rnd.choice(["session_start", "session_end", "match_end", "purchase", "viewer_join",
                       "viewer_heartbeat", "follow", "level_up"])
    e = {"v": 1, "id": f"demo-{i}", "ts": t, "player": p, "kind": kind}
    if kind == "match_end":
        e.update(match_id=f"m{i}", kills=rnd.randint(0, 9), deaths=rnd.randint(0, 3),
                 survival_secs=rnd.randint(30, 1500), placement=rnd.randint(1, 50))
    elif kind == "purchase":
        e.update(item="skin", amount=rnd.choice([99, 499, 999]), currency=rnd.choice(["USD", "EUR"]))
    elif kind in ("viewer_join", "viewer_heartbeat", "follow"):
        e.update(channel=c)
    elif kind == "level_up":
        e.update(level=rnd.randint(1, 60))
    print(json.dumps(e))
PY
echo "demo: ingest: $(curl -s -XPOST -H 'content-type: application/x-ndjson' --data-binary @"$STATE/events.ndjson" "$API/v1/events" | head -c 200)"
sleep 2
cat <<EOT

Tally is running. Look at:
  $API/readyz
  $API/v1/players/demo-player-1
  $API/v1/channels/demo-channel-1
  $API/v1/channels/top?by=concurrent&limit=5
  $API/v1/cluster
  $API/metrics
Stop it with: make demo-down   (services: make services-down)
EOT
