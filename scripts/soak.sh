#!/usr/bin/env bash
# soak.sh - a 3-node cluster under steady mixed load for SOAK_SECS (default 1800), with a
# fault every SOAK_FAULT_EVERY seconds (default 120) taken in turn from: kill -9 a node,
# SIGSTOP a node for 20 s, SIGTERM a node, restart Kafka, restart Cassandra. At the end
# every player and channel is verified exactly, and the run reports events acknowledged,
# lost and doubled (both must be 0), the worst unavailability window (the longest time
# no node acknowledged a probe event), and each node's memory growth.
#
#   make soak                                  30 minutes
#   SOAK_SECS=300 SOAK_FAULT_EVERY=45 make soak   a short run
#
# Results: bench/results/soak.json. Release builds; services from `make services`; only
# 127.0.0.1. Every loop is bounded by SOAK_SECS.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

LOG_PREFIX=soak OUT=bench/results WORK=.services/soak SERVICES=scripts/services/services.sh
# shellcheck source=lib/nodes.sh
source scripts/lib/nodes.sh
release_binaries
mkdir -p "$OUT" "$WORK"

SECS=${SOAK_SECS:-1800}
FAULT_EVERY=${SOAK_FAULT_EVERY:-120}
RATE=${SOAK_RATE:-1000}
PLAYERS=${SOAK_PLAYERS:-20000}
BASE="soak_$(date +%s)"
EVENTS=$((RATE * SECS))

# Restarts of Kafka and Cassandra go through services.sh, which stops only what this
# checkout's `make services` started; anything else is left running, and said so here.
"$SERVICES" status > /dev/null 2>&1 || log "Kafka and Cassandra were not started by this checkout: their restarts will not happen"
log "cluster $BASE: 3 nodes; $EVENTS events at $RATE/s over $SECS s through HTTP ingest; a fault every $FAULT_EVERY s"
start_cluster "$BASE"
NAMES=("${BASE}_n1" "${BASE}_n2" "${BASE}_n3")
NODES=$(IFS=,; echo "${ADDRS[*]}")
pid_of() { pgrep -f "$WORK/$1.toml" | head -1; }
cleanup() {
  for n in "${NAMES[@]}"; do
    local p; p=$(pid_of "$n" || true)
    [ -n "$p" ] && { kill -CONT "$p" 2>/dev/null || true; stop_node "$p"; }
  done
  "$SERVICES" up > /dev/null 2>&1 || true
}
trap cleanup EXIT

# Memory: RSS of each node every 10 s (the node's pid changes when it restarts).
: > "$WORK/$BASE.rss"
( end=$((SECONDS + SECS + 900))
  while [ $SECONDS -lt $end ]; do
    for n in "${NAMES[@]}"; do
      p=$(pid_of "$n" || true)
      [ -n "$p" ] && echo "$SECONDS $n $(rss_kib "$p" 2>/dev/null || echo 0)" >> "$WORK/$BASE.rss"
    done
    sleep 10
  done ) &
RSS_LOOP=$!

# Availability: a one-event probe every 500 ms to the nodes in turn, each resent (same id)
# until some node acknowledges it; the time of each acknowledgement is logged, and the
# probes sent. Probes count as events of their own players, verified below.
: > "$WORK/$BASE.probes"; : > "$WORK/$BASE.probes-sent"
( end=$((SECONDS + SECS)); k=0
  while [ $SECONDS -lt $end ]; do
    k=$((k + 1))
    body="{\"v\":1,\"id\":\"$BASE-probe-$k\",\"ts\":$(date +%s%3N),\"player\":\"$BASE-probe-$((k % 10))\",\"kind\":\"level_up\",\"level\":1}"
    echo "$k" >> "$WORK/$BASE.probes-sent"
    for try in $(seq 0 119); do
      addr=${ADDRS[$(((k + try) % 3))]}
      if curl -fs -m 2 -X POST "http://$addr/v1/events" -d "$body" > /dev/null 2>&1; then
        echo "$(date +%s%3N) $k" >> "$WORK/$BASE.probes"
        break
      fi
      sleep 0.5
    done
    sleep 0.5
  done ) &
PROBE_LOOP=$!

# The faults, in turn, until a minute before the load ends.
FAULTS=(kill9 sigstop sigterm kafka cassandra)
( end=$((SECONDS + SECS - 60)); i=0
  sleep "$FAULT_EVERY"
  while [ $SECONDS -lt $end ]; do
    fault=${FAULTS[$((i % ${#FAULTS[@]}))]}; victim=${NAMES[$((i % 3))]}; i=$((i + 1))
    p=$(pid_of "$victim" || true)
    log "fault $i at ${SECONDS}s: $fault ${victim}"
    case $fault in
      kill9) [ -n "$p" ] && kill -9 "$p"; sleep 10; launch_node "$victim" || log "restart of $victim failed" ;;
      sigstop) [ -n "$p" ] && { kill -STOP "$p"; sleep 20; kill -CONT "$p"; } ;;
      sigterm) [ -n "$p" ] && stop_node "$p"; sleep 2; launch_node "$victim" || log "restart of $victim failed" ;;
      kafka) "$SERVICES" down kafka > /dev/null; sleep 5; "$SERVICES" up kafka > /dev/null ;;
      cassandra) "$SERVICES" down cassandra > /dev/null; sleep 5; "$SERVICES" up cassandra > /dev/null ;;
    esac
    echo "$SECONDS $fault $victim" >> "$WORK/$BASE.faults"
    sleep "$FAULT_EVERY"
  done ) &
FAULT_LOOP=$!

set +e
"$LT" players --players "$PLAYERS" --channels 500 --events "$EVENTS" --rate "$RATE" --seed 7 \
  --via http --nodes "$NODES" --batch 200 --lanes 4 --probe-interval-ms 0 \
  --player-topic "$BASE.players" --channel-topic "$BASE.channels" \
  --verify --verify-timeout 900 --json "$OUT/soak-load.json" > "$WORK/$BASE.loadtest.log" 2>&1
LT_STATUS=$?
set -e
wait "$FAULT_LOOP" 2>/dev/null || true
wait "$PROBE_LOOP" 2>/dev/null || true
kill "$RSS_LOOP" 2>/dev/null || true
"$SERVICES" up > /dev/null

# The probes: each player must count at least the probes acknowledged (none lost) and at
# most the probes sent (none twice; one whose answer was lost may or may not count).
probe_check=$(python3 - "$WORK/$BASE" "$BASE" "${ADDRS[0]}" <<'PY'
import collections, json, sys, urllib.request
prefix, base, addr = sys.argv[1:]
acked = collections.Counter(int(l.split()[1]) % 10 for l in open(prefix + ".probes") if l.strip())
sent = collections.Counter(int(l) % 10 for l in open(prefix + ".probes-sent") if l.strip())
lost = doubled = 0
for p in sent:
    try:
        got = json.load(urllib.request.urlopen(f"http://{addr}/v1/players/{base}-probe-{p}", timeout=10))["player"]["events"]
    except Exception:
        got = 0
    lost += max(0, acked[p] - got); doubled += max(0, got - sent[p])
print(f"{sum(acked.values())} {lost} {doubled}")
PY
)

python3 - "$OUT" "$WORK/$BASE" "$SECS" "$FAULT_EVERY" "$RATE" "$LT_STATUS" "$probe_check" <<'PY'
import json, sys, collections
out, prefix, secs, every, rate, lt_status, probes = sys.argv[1:]
# (probes: acknowledged, lost, doubled)
load = json.load(open(f"{out}/soak-load.json"))
v = load.get("verify") or {}
times = [int(l.split()[0]) for l in open(prefix + ".probes") if l.strip()]
gaps = [b - a for a, b in zip(times, times[1:])]
rss = collections.defaultdict(list)
for l in open(prefix + ".rss"):
    t, n, kib = l.split()
    if int(kib) > 0:
        rss[n].append((int(t), int(kib)))
faults = [l.split() for l in open(prefix + ".faults")] if __import__("os").path.exists(prefix + ".faults") else []
p_acked, p_lost, p_doubled = map(int, probes.split())
res = {
    "secs": int(secs), "fault_every_secs": int(every), "rate": float(rate),
    "faults": [{"at_secs": int(f[0]), "fault": f[1], "node": f[2]} for f in faults],
    "events_acknowledged": load.get("events_sent", 0) + p_acked,
    "events_failed": load.get("errors", 0),
    "lost": v.get("lost_events", -1) + p_lost,
    "doubled": v.get("doubled_events", -1) + p_doubled,
    "mismatches": len(v.get("mismatches", [])) if v else -1,
    "mismatch_examples": (v.get("mismatches") or [])[:10],
    "worst_unavailability_ms": max(gaps, default=None),
    "memory_growth_kib": {n: s[-1][1] - s[0][1] for n, s in rss.items() if s},
    "memory_last_kib": {n: s[-1][1] for n, s in rss.items() if s},
    "loadtest_exit": int(lt_status),
    "command": f"SOAK_SECS={secs} SOAK_FAULT_EVERY={every} SOAK_RATE={rate} make soak",
}
json.dump(res, open(f"{out}/soak.json", "w"), indent=2)
print(json.dumps(res, indent=2))
ok = res["lost"] == 0 and res["doubled"] == 0 and res["mismatches"] == 0 and res["loadtest_exit"] == 0
sys.exit(0 if ok else 1)
PY
