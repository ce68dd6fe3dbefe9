#!/usr/bin/env bash
# demo.sh up|down - start a local 3-node Tally cluster (cluster-config/cluster-3/) on the
# services `make services` started, send it a few thousand events through HTTP ingest, and
# print where to look.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

STATE=.services/demo
mkdir -p "$STATE"
BIN=target/release/tally-node
NODES=(1 2 3)
API=http://127.0.0.1:8081

stop_node() {
  local pidfile=$STATE/node-$1.pid
  [ -f "$pidfile" ] || return 0
  local pid; pid=$(cat "$pidfile")
  if kill -0 "$pid" 2>/dev/null && tr '\0' ' ' < "/proc/$pid/cmdline" | grep -q tally-node; then
    kill -TERM "$pid"
    for _ in $(seq 1 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
    echo "demo: stopped node-$1 (pid $pid)"
  fi
  rm -f "$pidfile"
}

stop_all() { for n in "${NODES[@]}"; do stop_node "$n"; done; }

case "${1:-up}" in
  down) stop_all; exit 0 ;;
  up) ;;
  *) echo "usage: $0 up|down" >&2; exit 2 ;;
esac

[ -x "$BIN" ] || { echo "demo: $BIN is missing: run 'make build-release' first" >&2; exit 1; }
stop_all
for n in "${NODES[@]}"; do
  nohup "$BIN" --config "cluster-config/cluster-3/node-$n.toml" > "$STATE/node-$n.log" 2>&1 &
  echo $! > "$STATE/node-$n.pid"
  echo "demo: started node-$n (pid $!), api http://127.0.0.1:808$n, log $STATE/node-$n.log"
done

for n in "${NODES[@]}"; do
  for i in $(seq 1 120); do
    if curl -fs "http://127.0.0.1:808$n/readyz" > /dev/null 2>&1; then break; fi
    if ! kill -0 "$(cat "$STATE/node-$n.pid")" 2>/dev/null; then
      echo "demo: node-$n exited; last log lines:" >&2; tail -n 30 "$STATE/node-$n.log" >&2; exit 1
    fi
    [ "$i" = 120 ] && { echo "demo: node-$n not ready after 60 s:" >&2; curl -s "http://127.0.0.1:808$n/readyz" >&2; exit 1; }
    sleep 0.5
  done
  echo "demo: node-$n ready: $(curl -s "http://127.0.0.1:808$n/readyz")"
done

# A few thousand events: 200 players over 10 channels, sessions, matches, purchases, viewing.
# Ids carry the run's start time, so running the demo again starts from fresh entities.
RUN="demo$(date +%s)"
RUN=$RUN python3 - > "$STATE/events.ndjson" <<'PY'
import json, os, random
run = os.environ["RUN"]
rnd = random.Random(7)
t = 1_700_000_000_000
for i in range(3000):
    t += rnd.randint(10, 500)
    p = f"{run}-player-{rnd.randint(1, 200)}"
    c = f"{run}-channel-{rnd.randint(1, 10)}"
    kind = rnd.choice(["session_start", "session_end", "match_end", "purchase", "viewer_join",
                       "viewer_heartbeat", "follow", "level_up"])
    e = {"v": 1, "id": f"{run}-{i}", "ts": t, "player": p, "kind": kind}
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

Tally is running: 3 nodes (APIs on ports 8081, 8082, 8083; any node answers any query).
Look at:
  $API/                      the dashboard: cluster, top channels, channel and player pages
  $API/#/channel/$RUN-channel-1
  $API/readyz
  $API/v1/players/$RUN-player-1
  $API/v1/channels/$RUN-channel-1
  $API/v1/channels/top?by=concurrent&limit=5
  $API/v1/players/$RUN-player-1/history?step=minute&from=2023-11-14T22:13:00Z&to=2023-11-14T22:40:00Z
  $API/v1/channels/$RUN-channel-1/history?step=minute&from=2023-11-14T22:13:00Z&to=2023-11-14T22:40:00Z
  $API/v1/stats?metric=dau&step=hour&from=2023-11-14T22:00:00Z&to=2023-11-15T00:00:00Z
  $API/v1/cluster            members, partition owners, lag, checkpoint age
  $API/metrics
Try: kill -9 one node, watch /v1/cluster on another, query again.
Stop it with: make demo-down   (services: make services-down)
EOT
