#!/usr/bin/env bash
# bench.sh - Tally's benchmark suite against the local services, release builds only.
#
# Each benchmark uses its own topics and keyspace. Results: bench/results/<name>.json and a
# Markdown table (bench/results/table.md) for the README's Performance section.
#
#   scripts/bench.sh                 the whole suite
#   BENCH_PLAYERS=1000000 BENCH_EVENTS=4000000 scripts/bench.sh node   one benchmark
#
# Benchmarks:
#   node     one node consuming a pre-filled topic vs. a plain rdkafka consume-and-discard of
#            the same records in the same run; resident memory per player entity; Cassandra
#            writes per second vs. events per second in a steady stream.
#   cluster  3 nodes: failover time after kill -9 (BENCH_CLUSTER_PLAYERS spread over the
#            cluster, about a third resident on the killed node); query latency on the owner
#            vs. through a non-owner.
#   viewers  BENCH_VIEWERS viewers (default 500,000) at real speed on 3 nodes: the average
#            CPU of the nodes, of Kafka + Cassandra and of the load tester; verified exact.
#   idle     the 3-node cluster at rest: CPU of gossip, ticks and timers alone.
#   generator  the load tester alone (--via none): its ceiling in events/s.
#   subscribers  one node consuming BENCH_SUBS_RATE events/s (default 20,000), twice: without
#            and with BENCH_SUBSCRIBERS WebSocket subscribers (default 10,000; 60% players,
#            35% channels, 5% top-N): push latency against the event-to-visible latency of
#            the same run, node CPU per event in both runs, node memory per idle
#            subscriber; every subscriber's last frame verified exact.
#   dedupe   one binary with and without the dedupe window on one pre-filled topic: the
#            window's memory per record and its cost in records/s (bench-compare.sh).
#   history  history buckets: consume rate and memory per player with history on vs. off
#            (bench-compare.sh), p99 of a 30-day hourly player history and a 7-day minute
#            channel history while the node ingests half its live maximum, and Cassandra
#            bucket rows per second vs. records per second in a steady stream (sizes:
#            BENCH_HISTORY_* below, at bench_history).
#   latency  event latency on one node through HTTP ingest and straight through Kafka, each
#            at a trickle (BENCH_LATENCY_LIGHT_RATE events/s, default 20) and at half the
#            path's maximum measured first in the same run: acknowledged and visible p50 /
#            p99 from the load tester's probes, and the split by stage from the node's
#            stage histograms over each round (sizes: BENCH_LATENCY_* at bench_latency).
#   table    only rebuild the table (bench/results/table.md and README.md).
# Every run ends by putting its rows into the README's Performance table, in place of the rows of
# the same command; rows of benchmarks not run in this checkout stay as they were.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

LOG_PREFIX=bench OUT=bench/results WORK=.services/bench
MODE=${1:-all}
# Results files written since then are this run's (see the table at the end).
BENCH_STARTED=$(date +%s)
# shellcheck source=lib/nodes.sh
source scripts/lib/nodes.sh
release_binaries
mkdir -p "$OUT" "$WORK"

PLAYERS=${BENCH_PLAYERS:-1000000}
EVENTS=${BENCH_EVENTS:-4000000}
STEADY_RATE=${BENCH_STEADY_RATE:-20000}
STEADY_SECS=${BENCH_STEADY_SECS:-30}
MACHINE="$(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"

# Waits until every shard of the cluster NODE belongs to has checkpointed everything.
wait_checkpoints() {
  for _ in $(seq 1 1800); do
    curl -fs "http://$1/v1/cluster" | python3 -c '
import json, sys
d = json.load(sys.stdin)
shards = [s for n in d["nodes"] for s in n.get("shards", [])]
sys.exit(0 if shards and all(s["dirty_entities"] == 0 and s["durable_offset"] == s["next_offset"] for s in shards) else 1)' && return 0
    sleep 1
  done
  log "checkpoints did not catch up within 30 minutes"; return 1
}

bench_node() {
  local name="bench_node_$(date +%s)"
  log "node: starting a node on fresh topics ($name)"
  start_node "$name"
  local pid=$NODE_PID addr=$NODE_ADDR
  local rss0; rss0=$(rss_kib "$pid")
  # Pause the node while the topics fill, so it consumes a pre-filled topic.
  kill -STOP "$pid"
  log "node: pre-filling $EVENTS events of $PLAYERS players (node paused)"
  "$LT" players --players "$PLAYERS" --events "$EVENTS" --seed 1 --probe-interval-ms 0 \
    --player-topic "$name.players" --channel-topic "$name.channels" --batch 5000 \
    --json "$OUT/node-prefill.json" > /dev/null
  log "node: baseline: plain rdkafka consume-and-discard of the same topics (poll, then batch reads)"
  local records
  "$LT" baseline --topics "$name.players,$name.channels" --records 999999999999 --json "$OUT/baseline.json" > /dev/null
  "$LT" baseline --read batch --topics "$name.players,$name.channels" --records 999999999999 --json "$OUT/baseline-batch.json" > /dev/null
  records=$(python3 -c "import json; print(json.load(open('$OUT/baseline.json'))['records'])")
  log "node: resuming the node; measuring until it applied $records records"
  kill -CONT "$pid"
  "$LT" consume-rate --node "$addr" --records "$records" --json "$OUT/node-consume.json" > /dev/null
  wait_checkpoints "$addr"
  # The baseline again, now that the node is idle: the better of the two runs counts, so
  # background work of the services (compaction) never flatters the node.
  log "node: baseline again, node idle"
  "$LT" baseline --topics "$name.players,$name.channels" --records 999999999999 --json "$OUT/baseline-2.json" > /dev/null
  "$LT" baseline --read batch --topics "$name.players,$name.channels" --records 999999999999 --json "$OUT/baseline-batch-2.json" > /dev/null
  # Resident memory at rest: the allocator returns freed checkpoint buffers after a delay.
  sleep 5
  local rss1 resident
  rss1=$(rss_kib "$pid")
  resident=$(curl -fs "http://$addr/v1/cluster" | python3 -c 'import json,sys; print(sum(s["resident_entities"] for s in json.load(sys.stdin)["shards"] if s["kind"]=="players"))')

  log "node: steady stream of $STEADY_RATE events/s for $STEADY_SECS s: Cassandra writes vs events"
  local a0 w0 a1 w1
  a0=$(metric "$addr" tally_records_applied_total); w0=$(metric "$addr" tally_checkpoint_rows_total)
  "$LT" players --players "$PLAYERS" --events $((STEADY_RATE * STEADY_SECS)) --rate "$STEADY_RATE" --seed 2 \
    --nodes "$addr" --probe-interval-ms 50 --player-topic "$name.players" --channel-topic "$name.channels" \
    --json "$OUT/node-steady.json" > /dev/null
  sleep 2
  a1=$(metric "$addr" tally_records_applied_total); w1=$(metric "$addr" tally_checkpoint_rows_total)
  stop_node "$pid"

  # The same records once more, into a keyspace of its own (so from offset 0), by a node
  # that pretouched a quarter more memory than the first one grew by (node.pretouch_mib).
  local pretouch=$(( (rss1 - rss0) * 5 / 4 / 1024 + 64 ))
  log "node: the same records again, node.pretouch_mib = $pretouch"
  cassandra_quiet
  NODE_ENV="TALLY_NODE__PRETOUCH_MIB=$pretouch TALLY_CASSANDRA__KEYSPACE=$(echo "${name}_pt" | tr -c 'a-z0-9_\n' '_')" \
    start_node "$name" "" "$name"
  "$LT" consume-rate --node "$NODE_ADDR" --records "$records" --json "$OUT/node-consume-pretouch.json" > /dev/null
  stop_node "$NODE_PID"

  python3 - "$OUT" "$rss0" "$rss1" "$resident" "$a0" "$a1" "$w0" "$w1" "$STEADY_SECS" "$MACHINE" "$PLAYERS" "$EVENTS" "$STEADY_RATE" "$pretouch" <<'PY'
import json, sys
out, rss0, rss1, resident, a0, a1, w0, w1, secs, machine, players, events, rate, pretouch = sys.argv[1:]
rss0, rss1, resident, a0, a1, w0, w1, secs = map(float, (rss0, rss1, resident, a0, a1, w0, w1, secs))
bases = [json.load(open(f"{out}/{f}")) for f in ("baseline.json", "baseline-2.json")]
base = max(bases, key=lambda b: b["records_per_sec"])
batches = [json.load(open(f"{out}/{f}")) for f in ("baseline-batch.json", "baseline-batch-2.json")]
batch = max(batches, key=lambda b: b["records_per_sec"])
node = json.load(open(f"{out}/node-consume.json"))
pretouched = json.load(open(f"{out}/node-consume-pretouch.json"))
steady = json.load(open(f"{out}/node-steady.json"))
res = {
  "machine": machine,
  "baseline_records_per_sec": base["records_per_sec"],
  "baseline_runs_records_per_sec": [b["records_per_sec"] for b in bases],
  "node_records_per_sec": node["records_per_sec"],
  "node_vs_baseline": node["records_per_sec"] / base["records_per_sec"],
  "batch_baseline_records_per_sec": batch["records_per_sec"],
  "batch_baseline_runs_records_per_sec": [b["records_per_sec"] for b in batches],
  "node_vs_batch_baseline": node["records_per_sec"] / batch["records_per_sec"],
  "pretouch_mib": int(pretouch),
  "node_pretouched_records_per_sec": pretouched["records_per_sec"],
  "node_pretouched_vs_batch_baseline": pretouched["records_per_sec"] / batch["records_per_sec"],
  "records": base["records"],
  "rss_before_kib": rss0, "rss_after_kib": rss1, "players_resident": resident,
  "bytes_per_player": (rss1 - rss0) * 1024 / max(resident, 1),
  "steady_events_per_sec": (a1 - a0) / secs, "steady_cassandra_rows_per_sec": (w1 - w0) / secs,
  "steady_latency": steady["latency"],
  "command": f"BENCH_PLAYERS={players} BENCH_EVENTS={events} scripts/bench.sh node",
}
json.dump(res, open(f"{out}/node.json", "w"), indent=2)
print(json.dumps(res, indent=2))
PY
}

# A 3-node cluster: failover time from kill -9 with N players spread over it (about N/3
# resident on the killed node), and query latency on the owner vs. through another node.
# with_command FILE CMD: records in a result file the command that reproduces it.
with_command() {
  python3 - "$1" "$2" <<'PY'
import json, sys
d = json.load(open(sys.argv[1])); d["command"] = sys.argv[2]; json.dump(d, open(sys.argv[1], "w"), indent=2)
PY
}

# The load tester alone (--via none): every record built and encoded as for Kafka, then
# dropped. Its ceiling, to compare with what the cluster consumes.
bench_generator() {
  log "generator: players and viewers scenarios with --via none"
  "$LT" players --players 1000000 --events 3000000 --seed 1 --via none --probe-interval-ms 0 \
    --json "$OUT/generator-players.json" > /dev/null
  with_command "$OUT/generator-players.json" "scripts/bench.sh generator"
  "$LT" viewers --viewers 500000 --channels 5000 --duration 600 --speedup 100000 --seed 4 --via none \
    --probe-interval-ms 0 --json "$OUT/generator-viewers.json" > /dev/null
  with_command "$OUT/generator-viewers.json" "scripts/bench.sh generator"
}

# CPU seconds (user + system) used so far by the given processes.
cpu_secs() {
  local ticks=0 pid
  for pid in "$@"; do
    ticks=$((ticks + $(awk '{print $14 + $15}' "/proc/$pid/stat")))
  done
  python3 -c "print($ticks / $(getconf CLK_TCK))"
}

# N viewers over 5000 channels at real speed on a 3-node cluster: average CPU used by the
# whole cluster (all three node processes), every channel and 5000 viewers verified exact.
# rows_written ADDR...: entity and bucket rows the nodes' checkpoints wrote so far.
rows_written() {
  local sum=0 a
  for a in "$@"; do
    sum=$((sum + $(metric "$a" tally_checkpoint_rows_total) + $(metric "$a" tally_history_bucket_writes_total)))
  done
  echo "$sum"
}

bench_viewers() {
  local viewers=$1 secs=${2:-300} speedup=${3:-1} base="bench_vw_$(date +%s)"
  # BENCH_FLUSH_PERIOD_MS: the nodes' shard.flush_period_ms (unset: the default).
  local flush=${BENCH_FLUSH_PERIOD_MS:-} file="$OUT/viewers-$viewers.json"
  [ -n "$flush" ] && file="$OUT/viewers-flush$flush-$viewers.json"
  NODE_ENV="${flush:+TALLY_SHARD__FLUSH_PERIOD_MS=$flush}" start_cluster "$base"
  local services=() c0 s0 t0 c1 s1 t1 lt r0 r1 k0 k1
  for s in kafka cassandra; do services+=("$(cat ".services/run/$s.pid")"); done
  # Kafka alone too, so Cassandra's share is the difference.
  log "viewers: $viewers viewers over 5000 channels for $secs s of event time at ${speedup}x${flush:+, flush period $flush ms}"
  r0=$(rows_written "${ADDRS[@]}")
  c0=$(cpu_secs "${PIDS[@]}"); s0=$(cpu_secs "${services[@]}"); k0=$(cpu_secs "${services[0]}"); t0=$(date +%s.%N)
  "$LT" viewers --viewers "$viewers" --channels 5000 --duration "$secs" --speedup "$speedup" --seed 4 \
    --id-prefix "$base-" --player-topic "$base.players" --channel-topic "$base.channels" \
    --nodes "${ADDRS[0]},${ADDRS[1]},${ADDRS[2]}" --probe-interval-ms 200 --verify --sample 5000 \
    --json "$file" > /dev/null &
  lt=$!
  # The load tester's own CPU, sampled until it exits (it is not a child of the cluster).
  local lt_cpu=0
  while kill -0 "$lt" 2>/dev/null; do lt_cpu=$(cpu_secs "$lt" 2>/dev/null || echo "$lt_cpu"); sleep 1; done
  wait "$lt"
  # The CPU window includes the short verification at the end (conservative).
  c1=$(cpu_secs "${PIDS[@]}"); s1=$(cpu_secs "${services[@]}"); k1=$(cpu_secs "${services[0]}"); t1=$(date +%s.%N)
  r1=$(rows_written "${ADDRS[@]}")
  python3 - "$file" "$c0" "$c1" "$s0" "$s1" "$t0" "$t1" "$lt_cpu" "$secs" "$speedup" "$viewers" "$r0" "$r1" "$k0" "$k1" "$flush" <<'PY'
import json, sys
p, c0, c1, s0, s1, t0, t1, lt, duration, speedup, viewers, r0, r1, k0, k1 = sys.argv[1], *map(float, sys.argv[2:16])
flush = sys.argv[16]
viewers = int(viewers)
d = json.load(open(p)); wall = t1 - t0
d["cluster_cpu_cores_avg"] = (c1 - c0) / wall
d["kafka_cassandra_cpu_cores_avg"] = (s1 - s0) / wall
d["kafka_cpu_cores_avg"] = (k1 - k0) / wall
d["cassandra_cpu_cores_avg"] = (s1 - s0 - (k1 - k0)) / wall
rows = max(r1 - r0, 1)
# Cassandra's CPU per row the nodes wrote (entity and bucket rows; reads are few here).
d["cassandra_cpu_us_per_row"] = (s1 - s0 - (k1 - k0)) * 1e6 / rows
d["loadtest_cpu_cores_avg"] = lt / wall
# The whole stack but the load tester, per event: CPU over the window / events sent in it.
d["stack_cpu_us_per_event"] = ((c1 - c0) + (s1 - s0)) * 1e6 / max(d["events_sent"], 1)
d["cassandra_rows_per_event"] = (r1 - r0) / max(d["events_sent"], 1)
d["flush_period_ms"] = int(flush) if flush else None
d["duration_secs"], d["speedup"] = duration, speedup
d["command"] = (f"BENCH_FLUSH_PERIOD_MS={flush} " if flush else "") + \
    f"BENCH_VIEWERS={viewers} BENCH_VIEWERS_SECS={duration:.0f} scripts/bench.sh viewers"
json.dump(d, open(p, "w"), indent=2)
print(f"viewers: for {d['events_per_sec']:.0f} events/s the 3 nodes used {d['cluster_cpu_cores_avg']:.3f} cores on average, "
      f"Kafka {d['kafka_cpu_cores_avg']:.3f} + Cassandra {d['cassandra_cpu_cores_avg']:.3f} "
      f"({d['cassandra_cpu_us_per_row']:.1f} µs per row), the load tester {d['loadtest_cpu_cores_avg']:.3f}; "
      f"stack {d['stack_cpu_us_per_event']:.1f} µs and {d['cassandra_rows_per_event']:.2f} Cassandra rows per event")
PY
  for pid in "${PIDS[@]}"; do stop_node "$pid"; done
}

bench_cluster() {
  local players=$1 base="bench_cl_$(date +%s)"
  start_cluster "$base"
  local pids=("${PIDS[@]}") addrs=("${ADDRS[@]}")
  log "cluster: loading $players players ($((players * 3)) events) and waiting until all are applied"
  "$LT" players --players "$players" --events $((players * 3)) --rate "${BENCH_CLUSTER_RATE:-max}" --seed 3 --id-prefix "$base-" --probe-interval-ms 0 \
    --player-topic "$base.players" --channel-topic "$base.channels" --batch 5000 \
    --nodes "${addrs[0]}" --verify --sample 500 --verify-timeout 600 --json "$OUT/cluster-players-$players.json" > /dev/null
  with_command "$OUT/cluster-players-$players.json" "BENCH_CLUSTER_PLAYERS=$players scripts/bench.sh cluster"
  log "cluster: query latency on the owner vs. through a non-owner"
  "$LT" query-latency --node "${addrs[0]}" --id-prefix "$base-" --players "$players" --sample 500 --rounds 4 \
    --player-topic "$base.players" --channel-topic "$base.channels" --json "$OUT/query-latency-$players.json" > /dev/null
  # Steady state first: every shard's checkpoint caught up (the replay window after a
  # failure is then about one checkpoint interval, as in production).
  log "cluster: waiting until every checkpoint has caught up"
  wait_checkpoints "${addrs[0]}"
  # The victim: the node owning the most player partitions.
  local v resident survivor
  v=$(curl -fs "http://${addrs[0]}/v1/cluster" | python3 -c '
import json, sys, collections
d = json.load(sys.stdin)
c = collections.Counter(n for k, n in d["partitions"].items() if k.startswith("players/"))
print(int(c.most_common(1)[0][0].rsplit("_n", 1)[1]) - 1)')
  survivor=$(( (v + 1) % 3 ))
  resident=$(curl -fs "http://${addrs[$v]}/v1/cluster?local=1" | python3 -c 'import json,sys; print(sum(s["resident_entities"] for s in json.load(sys.stdin)["shards"]))')
  log "cluster: kill -9 n$((v + 1)) ($resident entities resident) and measure until its partitions process again"
  "$LT" failover --survivor "${addrs[$survivor]}" --victim "${base}_n$((v + 1))" --pid "${pids[$v]}" \
    --player-topic "$base.players" --channel-topic "$base.channels" --json "$OUT/failover-$players.json" > /dev/null
  python3 - "$OUT/failover-$players.json" "$resident" <<'PY'
import json, sys
p = sys.argv[1]; d = json.load(open(p)); d["resident_on_killed_node"] = int(sys.argv[2]); json.dump(d, open(p, "w"), indent=2)
PY
  for i in 0 1 2; do [ "$i" = "$v" ] || stop_node "${pids[$i]}"; done
  with_command "$OUT/failover-$players.json" "BENCH_CLUSTER_PLAYERS=$players scripts/bench.sh cluster"
  with_command "$OUT/query-latency-$players.json" "BENCH_CLUSTER_PLAYERS=$players scripts/bench.sh cluster"
  cat "$OUT/failover-$players.json" "$OUT/query-latency-$players.json"
}

# The 3-node cluster at rest (no events): what gossip, checkpoint ticks and timers cost.
# Part of every other cluster figure.
bench_idle() {
  local base="bench_idle_$(date +%s)" secs=${BENCH_IDLE_SECS:-60} c0 c1 t0 t1
  start_cluster "$base"
  sleep 10
  log "idle: measuring the 3 nodes' CPU at rest for $secs s"
  c0=$(cpu_secs "${PIDS[@]}"); t0=$(date +%s.%N)
  sleep "$secs"
  c1=$(cpu_secs "${PIDS[@]}"); t1=$(date +%s.%N)
  for pid in "${PIDS[@]}"; do stop_node "$pid"; done
  python3 - "$OUT/idle.json" "$c0" "$c1" "$t0" "$t1" "$secs" "$MACHINE" <<'PY'
import json, sys
p, c0, c1, t0, t1, secs, machine = sys.argv[1], *map(float, sys.argv[2:7]), sys.argv[7]
d = {"machine": machine, "secs": secs, "cluster_cpu_cores_avg": (c1 - c0) / (t1 - t0),
     "command": "scripts/bench.sh idle"}
json.dump(d, open(p, "w"), indent=2)
print(f"idle: the 3 nodes at rest used {d['cluster_cpu_cores_avg']:.3f} cores on average")
PY
}

# N WebSocket subscribers on one node while it consumes a steady stream. The same load
# (players at BENCH_SUBS_RATE events/s for BENCH_SUBS_SECS s, each event stamped with its
# send time) runs twice on one node: first with N subscribers, connected to the fresh node
# and idle for 10 s before the load starts, then without them. The load tester reads the
# node's CPU and memory from /proc at those phases (--node-pid): CPU per event in each run;
# RSS per idle subscriber, with them idle minus just before they connected (on the fresh
# node, so no memory freed by an earlier run is reused and hides their cost). Push latency
# (event time to the frame that shows it) is compared with the event-to-visible latency of
# the probes in the same run. Small batches (500 events, 40 a second at 20,000 events/s),
# so batches do not arrive in step with the node's push interval.
bench_subscribers() {
  local n=$1 rate=${BENCH_SUBS_RATE:-20000} secs=${BENCH_SUBS_SECS:-30}
  local players=${BENCH_SUBS_PLAYERS:-100000} channels=${BENCH_SUBS_CHANNELS:-1000}
  local name need=$((n + 1000))
  name="bench_subs_$(date +%s)"
  # The node holds a socket per subscriber too, and inherits this shell's limit.
  if [ "$(ulimit -Hn)" != unlimited ] && [ "$(ulimit -Hn)" -lt "$need" ]; then
    log "subscribers: $n subscribers need $need open files per process; the hard limit is $(ulimit -Hn)"
    return 1
  fi
  ulimit -Sn "$(ulimit -Hn)"
  start_node "$name"
  local pid=$NODE_PID addr=$NODE_ADDR
  local load=(players --players "$players" --channels "$channels" --events $((rate * secs)) --rate "$rate"
    --seed 7 --batch 500 --stamp-send-time --nodes "$addr" --probe-interval-ms 100 --verify --sample 5000
    --node-pid "$pid" --player-topic "$name.players" --channel-topic "$name.channels")
  log "subscribers: $rate events/s for $secs s on one node, with $n subscribers"
  "$LT" "${load[@]}" --id-prefix "$name-a-" --subscribers "$n" --subscribers-idle-secs 10 \
    --json "$OUT/subscribers-$n.json" > /dev/null || { stop_node "$pid"; return 1; }
  # The push stages of that run (a fresh node: everything it counted is the run's).
  curl -fs "http://$addr/metrics" > "$OUT/subscribers-$n.prom" || { stop_node "$pid"; return 1; }
  wait_checkpoints "$addr"
  log "subscribers: the same load without subscribers"
  "$LT" "${load[@]}" --id-prefix "$name-b-" --json "$OUT/subscribers-none.json" > /dev/null ||
    { stop_node "$pid"; return 1; }
  stop_node "$pid"
  # The floors under those costs on this machine (scripts/push_floor.py): the kernel's cost
  # of as many small loopback writes a second as the run pushed frames, and the memory of
  # an idle connection that stops at HTTP/1.1 or at the WebSocket upgrade (a fresh node each).
  local frames
  frames=$(python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print(max(1, d['subscribers']['frames'] // int(sys.argv[2])))" \
    "$OUT/subscribers-$n.json" "$secs")
  log "subscribers: floor: $frames loopback writes a second over $n sockets"
  python3 scripts/push_floor.py writes --frames-per-sec "$frames" --secs 10 --sockets "$n" --bytes 300 \
    --json "$OUT/subscribers-floor-writes.json" || return 1
  local mode
  for mode in http ws; do
    start_node "${name}_floor_$mode"
    python3 scripts/push_floor.py connections --node "$NODE_ADDR" --pid "$NODE_PID" --mode "$mode" \
      --n $((n / 2)) --json "$OUT/subscribers-floor-$mode.json" || { stop_node "$NODE_PID"; return 1; }
    stop_node "$NODE_PID"
  done
  python3 - "$OUT" "$n" "$rate" "$secs" "$MACHINE" <<'PY'
import json, sys
sys.path.insert(0, "scripts")
import stage_metrics
out, n, rate, secs, machine = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
p = f"{out}/subscribers-{n}.json"
d = json.load(open(p))
none = json.load(open(f"{out}/subscribers-none.json"))
d["machine"] = machine
d["push_stages"] = [s for s in stage_metrics.split({}, stage_metrics.parse(open(f"{out}/subscribers-{n}.prom").read()))
                    if s["family"] == "tally_push_stage_duration_seconds"]
writes = json.load(open(f"{out}/subscribers-floor-writes.json"))
writes["share_of_node_cpu_without"] = writes["kernel_cores"] / none["node"]["load_cpu_cores"]
d["floor"] = {"writes": writes,
              "connections": {m: json.load(open(f"{out}/subscribers-floor-{m}.json")) for m in ("http", "ws")}}
d["without_subscribers"] = {k: none[k] for k in ("events_per_sec", "latency", "node")}
with_cpu, without_cpu = d["node"]["cpu_us_per_event"], none["node"]["cpu_us_per_event"]
d["cpu_per_event_increase"] = with_cpu / without_cpu - 1
d["push_p99_over_visible_p99_ms"] = d["subscribers"]["latency"]["p99_ms"] - d["latency"]["p99_ms"]
d["command"] = (f"BENCH_SUBSCRIBERS={n} scripts/bench.sh subscribers" if (rate, secs) == ("20000", "30")
                else f"BENCH_SUBSCRIBERS={n} BENCH_SUBS_RATE={rate} BENCH_SUBS_SECS={secs} scripts/bench.sh subscribers")
json.dump(d, open(p, "w"), indent=2)
s, u = d["subscribers"], d["node"]
print(f"subscribers: {n} on one node at {d['events_per_sec']:.0f} events/s: push latency p50/p90/p99/max "
      f"{s['latency']['p50_ms']:.1f}/{s['latency']['p90_ms']:.1f}/{s['latency']['p99_ms']:.1f}/{s['latency']['max_ms']:.1f} ms "
      f"({s['latency']['samples']} samples, {s['frames']} frames); event-to-visible p50/p99 "
      f"{d['latency']['p50_ms']:.1f}/{d['latency']['p99_ms']:.1f} ms; node CPU per event {with_cpu:.2f} us vs "
      f"{without_cpu:.2f} us without ({100 * d['cpu_per_event_increase']:+.1f}%); "
      f"{u['bytes_per_idle_subscriber'] / 1024:.1f} KiB per idle subscriber; {len(s['mismatches'])} mismatches")
for st in d["push_stages"]:
    print(f"subscribers: push stage {st['labels']['stage']}: {st['count']} frames, mean {st['mean_ms']:.2f} ms, "
          f"p50 <= {st['p50_le_ms']} ms, p99 <= {st['p99_le_ms']} ms")
f = d["floor"]
print(f"subscribers: floor: {f['writes']['writes']:,} loopback writes took the kernel {f['writes']['kernel_us_per_write']:.2f} us "
      f"each, {f['writes']['kernel_cores']:.3f} cores = {100 * f['writes']['share_of_node_cpu_without']:.0f}% of the node "
      f"without subscribers; an idle connection costs {f['connections']['http']['bytes_per_connection'] / 1024:.1f} KiB "
      f"at HTTP/1.1, {f['connections']['ws']['bytes_per_connection'] / 1024:.1f} KiB upgraded to a WebSocket")
PY
}

# History (event-time buckets), four measurements on one node each:
# - consume rate and resident memory per player with history on vs. off: one binary, one
#   pre-filled topic, alternating rounds (bench-compare.sh; BENCH_PLAYERS, BENCH_EVENTS);
# - query latency of a player's hourly history over 30 days and a channel's minute history
#   over 7 days (all fields), one request at a time: with the node idle, then while it
#   ingests half the rate it sustains live. The data: BENCH_HISTORY_PLAYERS players (default
#   200) with two events an hour over 30 days and BENCH_HISTORY_CHANNELS channels (default
#   20) with a join, a follow and a leave every minute over 7 days, sent through HTTP ingest
#   (scripts/bench_history.py). The live maximum: BENCH_HISTORY_MAX_EVENTS events (default
#   2,000,000) of BENCH_PLAYERS players at max rate, until a sample is verified exact; the
#   queries then run for BENCH_HISTORY_SECS s (default 60) of a stream at half that rate;
# - Cassandra bucket rows per second next to records per second in a steady stream of
#   BENCH_STEADY_RATE events/s for BENCH_STEADY_SECS s, as the node benchmark's.
# Live streams carry their send time as event time (--stamp-send-time), so buckets open and
# close at the pace they would in production.
bench_history() {
  local max_events=${BENCH_HISTORY_MAX_EVENTS:-2000000} secs=${BENCH_HISTORY_SECS:-60}
  local hp=${BENCH_HISTORY_PLAYERS:-200} hc=${BENCH_HISTORY_CHANNELS:-20}
  local cmd="" v
  for v in BENCH_PLAYERS BENCH_EVENTS BENCH_HISTORY_PLAYERS BENCH_HISTORY_CHANNELS BENCH_HISTORY_MAX_EVENTS \
    BENCH_HISTORY_SECS BENCH_STEADY_RATE BENCH_STEADY_SECS; do
    [ -z "${!v:-}" ] || cmd+="$v=${!v} "
  done
  cmd+="scripts/bench.sh history"

  log "history: consume rate and memory per player, history on vs off, one pre-filled topic"
  # And both again with their memory pretouched (node.pretouch_mib: 5 KiB per player, more
  # than either takes), so the fresh pages the kernel zeroes count for neither.
  local pretouch=$(( PLAYERS * 5 / 1024 + 64 ))
  BENCH_COMPARE_JSON="$OUT/history-compare.json" scripts/bench-compare.sh \
    "history=$NODE_BIN" "nohistory=$NODE_BIN TALLY_HISTORY__ENABLED=false" \
    "historypt=$NODE_BIN TALLY_NODE__PRETOUCH_MIB=$pretouch" \
    "nohistorypt=$NODE_BIN TALLY_HISTORY__ENABLED=false TALLY_NODE__PRETOUCH_MIB=$pretouch"

  local name; name="bench_hist_$(date +%s)"
  start_node "$name"
  local pid=$NODE_PID addr=$NODE_ADDR
  local q=(--node "$addr" --prefix "$name-" --players "$hp" --channels "$hc" --prefill "$OUT/history-prefill.json")
  log "history: $hp players over 30 days, $hc channels over 7 days, through HTTP ingest"
  python3 scripts/bench_history.py prefill "${q[@]}" --json "$OUT/history-prefill.json"
  wait_checkpoints "$addr"
  log "history: query latency, node idle"
  python3 scripts/bench_history.py latency "${q[@]}" --queries 100 --json "$OUT/history-latency-idle.json"
  python3 scripts/bench_history.py latency "${q[@]}" --queries 100 --fields --json "$OUT/history-latency-idle-1field.json"

  local live=(players --players "$PLAYERS" --stamp-send-time --probe-interval-ms 0 --nodes "$addr"
    --player-topic "$name.players" --channel-topic "$name.channels")
  log "history: the live maximum: $max_events events at max rate, until a sample is verified exact"
  "$LT" "${live[@]}" --events "$max_events" --seed 5 --id-prefix "$name-max-" --batch 5000 \
    --verify --sample 200 --json "$OUT/history-max.json" > /dev/null
  local half
  half=$(python3 -c "import json; d=json.load(open('$OUT/history-max.json')); print(int(d['events_sent'] / (d['secs'] + d['verify']['waited_secs']) / 2))")
  wait_checkpoints "$addr"

  log "history: query latency for $secs s while the node ingests $half events/s (half that)"
  "$LT" "${live[@]}" --events $((half * (secs + 15))) --rate "$half" --seed 6 --id-prefix "$name-half-" \
    --json "$OUT/history-half.json" > /dev/null &
  local lt=$! c0 c1 t0 t1
  sleep 5
  curl -fs "http://$addr/metrics" > "$WORK/$name.load0.prom"; c0=$(cpu_secs "$pid"); t0=$(date +%s.%N)
  python3 scripts/bench_history.py latency "${q[@]}" --secs "$secs" --json "$OUT/history-latency-load.json"
  curl -fs "http://$addr/metrics" > "$WORK/$name.load1.prom"; c1=$(cpu_secs "$pid"); t1=$(date +%s.%N)
  wait "$lt"
  wait_checkpoints "$addr"

  log "history: steady stream of $STEADY_RATE events/s for $STEADY_SECS s: bucket rows vs records"
  local s0 s1
  curl -fs "http://$addr/metrics" > "$WORK/$name.steady0.prom"; s0=$(date +%s.%N)
  "$LT" "${live[@]}" --events $((STEADY_RATE * STEADY_SECS)) --rate "$STEADY_RATE" --seed 7 \
    --id-prefix "$name-steady-" --json "$OUT/history-steady.json" > /dev/null
  sleep 2
  curl -fs "http://$addr/metrics" > "$WORK/$name.steady1.prom"; s1=$(date +%s.%N)
  stop_node "$pid"

  python3 - "$OUT" "$WORK/$name" "$t0" "$t1" "$c0" "$c1" "$s0" "$s1" "$half" "$MACHINE" "$cmd" "$pretouch" <<'PY'
import json, sys
out, prom, t0, t1, c0, c1, s0, s1, half, machine, cmd, _pretouch = sys.argv[1:]
t0, t1, c0, c1, s0, s1 = map(float, (t0, t1, c0, c1, s0, s1))
load = lambda f: json.load(open(f"{out}/{f}"))

def metrics(path):
    """{name{labels}: value} of a Prometheus text dump."""
    m = {}
    for line in open(path):
        if line and not line.startswith("#"):
            k, _, v = line.rpartition(" ")
            try:
                m[k] = float(v)
            except ValueError:
                pass
    return m

def delta(a, b, name):
    """The increase of every series of `name`, summed, and by label set."""
    by = {k: b[k] - a.get(k, 0) for k in b if k == name or k.startswith(name + "{")}
    return sum(by.values()), by

def window(tag, secs):
    a, b = metrics(f"{prom}.{tag}0.prom"), metrics(f"{prom}.{tag}1.prom")
    applied, _ = delta(a, b, "tally_records_applied_total")
    buckets, by_kind = delta(a, b, "tally_history_bucket_writes_total")
    rows, _ = delta(a, b, "tally_checkpoint_rows_total")
    return {"secs": secs, "records_per_sec": applied / secs, "bucket_rows_per_sec": buckets / secs,
            "bucket_rows_by_kind_per_sec": {k.split('"')[1] if '"' in k else k: v / secs for k, v in by_kind.items()},
            "entity_rows_per_sec": rows / secs, "bucket_rows_per_record": buckets / max(applied, 1)}

cmp = load("history-compare.json")
best = cmp["best_records_per_sec"]
mx = load("history-max.json")
res = {
    "machine": machine,
    "compare": {
        "records": cmp["records"], "runs": cmp["runs"],
        "best_records_per_sec": best, "on_vs_off": best["history"] / best["nohistory"],
        "on_vs_off_by_round": [h["records_per_sec"] / n["records_per_sec"]
                               for h, n in zip(cmp["runs"]["history"], cmp["runs"]["nohistory"])],
    },
    "compare_pretouched": {
        "pretouch_mib": int(sys.argv[-1]),
        "best_records_per_sec": {"history": best["historypt"], "nohistory": best["nohistorypt"]},
        "on_vs_off": best["historypt"] / best["nohistorypt"],
        "on_vs_off_by_round": [h["records_per_sec"] / n["records_per_sec"]
                               for h, n in zip(cmp["runs"]["historypt"], cmp["runs"]["nohistorypt"])],
    },
    "prefill": load("history-prefill.json"),
    "latency_idle": load("history-latency-idle.json"),
    "latency_idle_one_field": load("history-latency-idle-1field.json"),
    "live_max": {"events": mx["events_sent"], "send_secs": mx["secs"], "verify_waited_secs": mx["verify"]["waited_secs"],
                 "events_per_sec": mx["events_sent"] / (mx["secs"] + mx["verify"]["waited_secs"]),
                 "verified_exact": not mx["verify"].get("mismatches")},
    "load_target_events_per_sec": int(half),
    "latency_load": load("history-latency-load.json"),
    "load_window": {**window("load", t1 - t0), "node_cpu_cores": (c1 - c0) / (t1 - t0),
                    "sent_events_per_sec": load("history-half.json")["events_per_sec"]},
    "steady": {**window("steady", s1 - s0), "sent_events_per_sec": load("history-steady.json")["events_per_sec"]},
    "command": cmd,
}
json.dump(res, open(f"{out}/history.json", "w"), indent=2)
c, l, w, s = res["compare"], res["latency_load"], res["load_window"], res["steady"]
print(f"history: consume on/off {best['history']:,.0f} / {best['nohistory']:,.0f} records/s = {100 * c['on_vs_off']:.0f}%; "
      f"under {w['records_per_sec']:,.0f} records/s: player 30 d hourly p99 {l['player_hourly']['p99_ms']:.1f} ms, "
      f"channel 7 d minute p99 {l['channel_minute']['p99_ms']:.1f} ms; steady: {s['bucket_rows_per_sec']:,.0f} bucket rows/s "
      f"for {s['records_per_sec']:,.0f} records/s")
PY
}

# Event latency on one node, through each path (HTTP ingest; the load tester's transactional
# producer straight to Kafka), at two loads: a trickle of BENCH_LATENCY_LIGHT_RATE events/s
# (default 20, a request or a transaction per event) and half of the path's maximum. The
# maximum is measured first, in the same run: BENCH_LATENCY_MAX_EVENTS events (default
# 1,000,000) at max rate until a sample is verified exact, as bench_history's; the half-load
# round sends batches of the same size (BENCH_LATENCY_BATCH events, default 200; 8 HTTP
# lanes), small enough that half the rate is a stream rather than a burst every second.
# Each round lasts BENCH_LATENCY_SECS (default 25) with a probe every BENCH_LATENCY_PROBE_MS
# (default 25): acknowledged (the POST's answer, the transaction's commit) and visible on the
# owner, both from the probe event's creation. The stages come from the node's histograms,
# scraped before and after the round (scripts/stage_metrics.py); they count the load's
# requests and batches with the probes'.
bench_latency() {
  local secs=${BENCH_LATENCY_SECS:-25} light=${BENCH_LATENCY_LIGHT_RATE:-20}
  local probe_ms=${BENCH_LATENCY_PROBE_MS:-25} max_events=${BENCH_LATENCY_MAX_EVENTS:-1000000}
  local batch=${BENCH_LATENCY_BATCH:-200} players=${BENCH_LATENCY_PLAYERS:-100000}
  local cmd="" v
  for v in BENCH_LATENCY_SECS BENCH_LATENCY_LIGHT_RATE BENCH_LATENCY_PROBE_MS BENCH_LATENCY_MAX_EVENTS \
    BENCH_LATENCY_BATCH BENCH_LATENCY_PLAYERS; do
    [ -z "${!v:-}" ] || cmd+="$v=${!v} "
  done
  cmd+="scripts/bench.sh latency"

  local name; name="bench_lat_$(date +%s)"
  start_node "$name"
  local pid=$NODE_PID addr=$NODE_ADDR
  local lt=(players --players "$players" --nodes "$addr" --player-topic "$name.players" --channel-topic "$name.channels")
  local via rate load max half
  for via in http kafka; do
    log "latency: $via: the maximum: $max_events events at max rate in batches of $batch, until a sample is verified exact"
    max="$WORK/$name.$via-max.json"
    "$LT" "${lt[@]}" --via "$via" --events "$max_events" --batch "$batch" --seed 11 --id-prefix "$name-$via-max-" \
      --probe-interval-ms 0 --verify --sample 200 --verify-timeout 300 --json "$max" > /dev/null ||
      { stop_node "$pid"; return 1; }
    half=$(python3 -c "import json; d=json.load(open('$max')); print(max(1, int(d['events_sent'] / (d['secs'] + d['verify']['waited_secs']) / 2)))")
    for load in light half; do
      wait_checkpoints "$addr"
      cassandra_quiet 30
      if [ "$load" = light ]; then rate=$light; else rate=$half; fi
      log "latency: $via: $load load, $rate events/s for $secs s, a probe every $probe_ms ms"
      curl -fs "http://$addr/metrics" > "$WORK/$name.$via-$load.0.prom"
      # A trickle goes an event per request or transaction; half load in batches as at max.
      local shape=(--batch "$batch")
      [ "$load" = half ] || shape=(--batch 1 --lanes 1)
      "$LT" "${lt[@]}" --via "$via" --events $((rate * secs)) --rate "$rate" "${shape[@]}" --seed 12 \
        --id-prefix "$name-$via-$load-" --probe-interval-ms "$probe_ms" \
        --json "$OUT/latency-$via-$load.json" > /dev/null || { stop_node "$pid"; return 1; }
      # A second for the last events to be applied before the stages are read.
      sleep 1
      curl -fs "http://$addr/metrics" > "$WORK/$name.$via-$load.1.prom"
      python3 - "$OUT/latency-$via-$load.json" "$WORK/$name.$via-$load" "$max" "$via" "$load" "$rate" \
        "$probe_ms" "$batch" "$MACHINE" "$cmd" <<'PY'
import json, sys
sys.path.insert(0, "scripts")
import stage_metrics
path, prom, max_path, via, load, rate, probe_ms, batch, machine, cmd = sys.argv[1:]
d = json.load(open(path))
mx = json.load(open(max_path))
before, after = (stage_metrics.parse(open(f"{prom}.{i}.prom").read()) for i in (0, 1))
d.update({
    "machine": machine, "path": via, "load": load, "target_events_per_sec": int(rate),
    "probe_interval_ms": int(probe_ms),
    "path_max": {"events": mx["events_sent"], "batch": int(batch), "send_secs": mx["secs"],
                 "verify_waited_secs": mx["verify"]["waited_secs"],
                 "events_per_sec": mx["events_sent"] / (mx["secs"] + mx["verify"]["waited_secs"]),
                 "verified_exact": not mx["verify"].get("mismatches")},
    "stages": stage_metrics.split(before, after),
    "command": cmd,
})
json.dump(d, open(path, "w"), indent=2)
a, v = d["ack_latency"], d["latency"]
split = ", ".join(f"{s['labels'].get('kind', 'ingest')} {s['labels']['stage']} {s['mean_ms']:.2f}" for s in d["stages"])
print(f"latency: {via}, {load} ({d['events_per_sec']:,.0f} events/s sent): acknowledged p50 / p99 "
      f"{a['p50_ms']:.1f} / {a['p99_ms']:.1f} ms, visible {v['p50_ms']:.1f} / {v['p99_ms']:.1f} ms "
      f"({v['samples']} probes, {v['timeouts']} timeouts); stage means (ms): {split}")
PY
    done
  done
  stop_node "$pid"
}

case "$MODE" in
  node) bench_node ;;
  idle) bench_idle ;;
  cluster) bench_cluster "${BENCH_CLUSTER_PLAYERS:-300000}" ;;
  viewers) bench_viewers "${BENCH_VIEWERS:-500000}" "${BENCH_VIEWERS_SECS:-300}" "${BENCH_VIEWERS_SPEEDUP:-1}" ;;
  generator) bench_generator ;;
  subscribers) bench_subscribers "${BENCH_SUBSCRIBERS:-10000}" ;;
  history) bench_history ;;
  latency) bench_latency ;;
  # The dedupe window's cost: the same binary with and without it on one pre-filled topic.
  dedupe) scripts/bench-compare.sh "dedupe=$NODE_BIN" "nodedupe=$NODE_BIN TALLY_SHARD__DEDUPE_WINDOW_SECS=0" ;;
  table) ;;
  all)
    bench_node
    bench_cluster 300000
    bench_viewers 500000 300 1
    bench_idle
    bench_generator
    bench_subscribers 10000
    scripts/bench-compare.sh "dedupe=$NODE_BIN" "nodedupe=$NODE_BIN TALLY_SHARD__DEDUPE_WINDOW_SECS=0"
    bench_history
    bench_latency
    ;;
  *) echo "usage: $0 [node|cluster|viewers|idle|generator|subscribers|dedupe|history|latency|table|all]" >&2; exit 2 ;;
esac
# The rows this run measured, into README.md's Performance section (`table`: the rows of
# every results file there is); the README's other rows stay as they are.
if [ "$MODE" = table ]; then
  python3 scripts/bench_table.py "$OUT" README.md
else
  BENCH_TABLE_SINCE=$BENCH_STARTED python3 scripts/bench_table.py "$OUT" README.md
fi
