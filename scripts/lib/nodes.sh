# nodes.sh - start and stop tally-node processes on 127.0.0.1 for the bench and soak
# scripts. Sourced; expects NODE_BIN (the node binary) and WORK (a scratch folder), and
# LOG_PREFIX for log lines.

log() { echo "${LOG_PREFIX:-nodes}: $*" >&2; }

# release_binaries: sets NODE_BIN and LT, or fails saying how to build them.
release_binaries() {
  NODE_BIN=target/release/tally-node
  LT=target/release/tally-loadtest
  for b in "$NODE_BIN" "$LT"; do
    [ -x "$b" ] || { log "$b missing: run 'make build-release'"; exit 1; }
  done
}
rss_kib() { awk '/VmRSS/{print $2}' "/proc/$1/status"; }
metric() { curl -fs "http://$1/metrics" | awk -v m="$2" '$1 ~ "^"m"({|$)" {s+=$2} END {printf "%d", s}'; }

free_udp() { python3 -c 'import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# start_node NAME [CLUSTER_TOML] -> sets NODE_PID, NODE_ADDR; config in $WORK/NAME.toml.
# Without CLUSTER_TOML the node gossips alone on a free port. Auth is off (local nodes only:
# the load tester sends no key).
start_node() {
  local name=$1 cluster=${2:-} topics=${3:-$1} port
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  NODE_ADDR=127.0.0.1:$port
  if [ -z "$cluster" ]; then
    cluster=$(printf '[cluster]\ncluster_id = "%s"\ngossip_addr = "127.0.0.1:%s"\n' "$name" "$(free_udp)")
  fi
  # Auth off for the benchmarks; a binary from before auth (no `keys` command, as
  # bench-compare.sh may run) would refuse the section.
  local auth=$'[auth]\nenabled = false'
  "$NODE_BIN" keys --help > /dev/null 2>&1 || auth=""
  cat > "$WORK/$name.toml" <<EOT
[node]
id = "$name"
api_addr = "$NODE_ADDR"
[kafka]
player_topic = "$topics.players"
channel_topic = "$topics.channels"
dlq_topic = "$topics.dlq"
partitions = 8
group_id = "$topics"
[cassandra]
keyspace = "$(echo "$topics" | tr -c 'a-z0-9_\n' '_')"
$cluster
$auth
${BENCH_NODE_TOML:-}
EOT
  launch_node "$name"
}

# launch_node NAME: (re)starts the node of $WORK/NAME.toml (same id, same address) and
# waits until it is ready; sets NODE_PID, NODE_ADDR. Its log is appended to $WORK/NAME.log.
# NODE_ENV holds extra VAR=VALUE words for the node's environment (config overrides).
launch_node() {
  local name=$1
  NODE_ADDR=$(grep api_addr "$WORK/$name.toml" | cut -d'"' -f2)
  # shellcheck disable=SC2086
  env ${NODE_ENV:-} RUST_LOG="${NODE_LOG:-warn}" "$NODE_BIN" --config "$WORK/$name.toml" >> "$WORK/$name.log" 2>&1 &
  NODE_PID=$!
  for _ in $(seq 1 480); do
    curl -fs "http://$NODE_ADDR/readyz" > /dev/null 2>&1 && return 0
    kill -0 "$NODE_PID" 2>/dev/null || { tail -20 "$WORK/$name.log" >&2; return 1; }
    sleep 0.25
  done
  log "node $name not ready"; return 1
}

# cassandra_quiet [MAX_SECS]: waits until the local Cassandra uses under a fifth of a core
# over a second (the previous node's writes and the compactions they caused are done), at
# most MAX_SECS (default 180), so a round is not charged for the one before it.
cassandra_quiet() {
  local pid hz a b max=${1:-180}
  pid=$(pgrep -f CassandraDaemon | head -1) || return 0
  hz=$(getconf CLK_TCK)
  for _ in $(seq 1 "$max"); do
    a=$(awk '{print $14+$15}' "/proc/$pid/stat"); sleep 1; b=$(awk '{print $14+$15}' "/proc/$pid/stat")
    [ $((b - a)) -lt $((hz / 5)) ] && return 0
  done
  log "cassandra still busy after $max s; going on"
}

stop_node() { kill -TERM "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }

# start_cluster BASE: three nodes gossiping on free ports; sets PIDS and ADDRS.
start_cluster() {
  local base=$1 g1 g2 g3
  g1=$(free_udp); g2=$(free_udp); g3=$(free_udp)
  for i in 1 2 3; do
    local g; g=$(eval echo "\$g$i")
    start_node "${base}_n$i" "[cluster]
cluster_id = \"$base\"
gossip_addr = \"127.0.0.1:$g\"
seeds = [\"127.0.0.1:$g1\", \"127.0.0.1:$g2\", \"127.0.0.1:$g3\"]
phi_threshold = 8.0" "$base" &
  done
  wait
  PIDS=(); ADDRS=()
  for i in 1 2 3; do
    PIDS+=("$(pgrep -f "$WORK/${base}_n$i.toml")")
    ADDRS+=("$(grep api_addr "$WORK/${base}_n$i.toml" | cut -d'"' -f2)")
  done
  sleep 3
}

