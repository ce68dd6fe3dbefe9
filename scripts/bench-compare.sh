#!/usr/bin/env bash
# bench-compare.sh - node binaries side by side on one pre-filled topic: each applies the
# same records from offset 0 (a keyspace of its own, so nothing is resumed), in alternating
# rounds, and the run reports each one's records/s and resident bytes per player. Each round
# starts once Cassandra is quiet again, so none pays for the writes of the one before.
#
#   scripts/bench-compare.sh old=/tmp/tally-node-old new=target/release/tally-node \
#       'nodedupe=target/release/tally-node TALLY_SHARD__DEDUPE_WINDOW_SECS=0'
#
# Each argument is LABEL=BINARY [VAR=VALUE ...] (environment for that node). Sizes:
# BENCH_PLAYERS (1,000,000), BENCH_EVENTS (4,000,000), BENCH_ROUNDS (2). Results:
# BENCH_COMPARE_JSON (bench/results/compare.json).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

LOG_PREFIX=compare OUT=bench/results WORK=.services/bench
# shellcheck source=lib/nodes.sh
source scripts/lib/nodes.sh
release_binaries
mkdir -p "$OUT" "$WORK"
[ $# -ge 1 ] || { echo "compare: usage: $0 LABEL=BINARY [VAR=VALUE ...] ..." >&2; exit 2; }

PLAYERS=${BENCH_PLAYERS:-1000000}
EVENTS=${BENCH_EVENTS:-4000000}
ROUNDS=${BENCH_ROUNDS:-2}
RESULT=${BENCH_COMPARE_JSON:-$OUT/compare.json}
TOPICS="compare_$(date +%s)"

# A node creates the topics (as Tally sizes them), then leaves.
NODE_BIN=target/release/tally-node start_node "${TOPICS}_topics" "" "$TOPICS"
stop_node "$NODE_PID"
log "pre-filling $EVENTS events of $PLAYERS players into $TOPICS"
"$LT" players --players "$PLAYERS" --events "$EVENTS" --seed 1 --probe-interval-ms 0 \
  --player-topic "$TOPICS.players" --channel-topic "$TOPICS.channels" --batch 5000 > /dev/null
"$LT" baseline --topics "$TOPICS.players,$TOPICS.channels" --records 999999999999 \
  --json "$WORK/$TOPICS.baseline.json" > /dev/null
RECORDS=$(python3 -c "import json; print(json.load(open('$WORK/$TOPICS.baseline.json'))['records'])")

: > "$WORK/$TOPICS.results"
for round in $(seq 1 "$ROUNDS"); do
  for spec in "$@"; do
    read -r -a parts <<< "$spec"
    label=${parts[0]%%=*}; NODE_BIN=${parts[0]#*=}
    name="${TOPICS}_${label}_$round"
    cassandra_quiet
    log "round $round: $label ($NODE_BIN ${parts[*]:1})"
    # A keyspace of its own: the node starts from offset 0 and resumes nothing.
    NODE_ENV="${parts[*]:1} TALLY_CASSANDRA__KEYSPACE=$(echo "$name" | tr -c 'a-z0-9_\n' '_')"
    start_node "$name" "" "$TOPICS"
    pid=$NODE_PID addr=$NODE_ADDR
    rss0=$(rss_kib "$pid")
    "$LT" consume-rate --node "$addr" --records "$RECORDS" --json "$WORK/$name.rate.json" > /dev/null
    sleep 5
    rss1=$(rss_kib "$pid")
    resident=$(curl -fs "http://$addr/v1/cluster" | python3 -c 'import json,sys; print(sum(s["resident_entities"] for s in json.load(sys.stdin)["shards"] if s["kind"]=="players"))')
    stop_node "$pid"
    rate=$(python3 -c "import json; print(json.load(open('$WORK/$name.rate.json'))['records_per_sec'])")
    echo "$label $round $rate $rss0 $rss1 $resident" >> "$WORK/$TOPICS.results"
    log "$label round $round: $rate records/s"
  done
done

python3 - "$WORK/$TOPICS.results" "$RESULT" "$RECORDS" "$*" <<'PY'
import collections, json, sys
path, out, records, specs = sys.argv[1:]
runs = collections.defaultdict(list)
for line in open(path):
    label, rnd, rate, rss0, rss1, resident = line.split()
    runs[label].append({"round": int(rnd), "records_per_sec": float(rate), "players_resident": int(resident),
                        "bytes_per_player": (float(rss1) - float(rss0)) * 1024 / max(float(resident), 1)})
res = {"records": int(records), "specs": specs, "runs": runs,
       "best_records_per_sec": {l: max(r["records_per_sec"] for r in rs) for l, rs in runs.items()}}
json.dump(res, open(out, "w"), indent=2)
print(json.dumps(res, indent=2))
PY
