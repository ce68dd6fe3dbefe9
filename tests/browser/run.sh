#!/usr/bin/env bash
# run.sh - the dashboard's browser test (`make browser-test`, part of `make test`).
#
# Starts a 3-node cluster of real tally-node processes on the real Kafka and Cassandra
# (`make services`), with auth on, its own topics, keyspace and cluster id and free ports,
# so it runs beside any other test; then dashboard.test.mjs opens the dashboard of one node
# in headless Chromium (Debian's package, scripts/install-chromium.sh installs it when
# missing) through puppeteer-core, sends events through POST /v1/events and checks what the
# page shows, kills one node with kill -9 and checks the page again (dashboard.test.mjs
# lists the steps). Screenshots go to
# $SCREENSHOTS (default target/browser-screenshots/, git-ignored).
#
# Every wait is bounded; the nodes are stopped on any exit. The test fails if a node logged
# an ERROR line. On failure the node configs and logs stay in the work folder it names.
#
# Environment: NODE_BIN (default target/debug/tally-node), CHROMIUM (default
# /usr/bin/chromium), SCREENSHOTS, TALLY_KAFKA (127.0.0.1:9092), TALLY_CASSANDRA
# (127.0.0.1:9042), BROWSER_TEST_KEEP=1 keeps the work folder after a pass.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

NODE_BIN=${NODE_BIN:-target/debug/tally-node}
export CHROMIUM=${CHROMIUM:-/usr/bin/chromium}
export SCREENSHOTS=${SCREENSHOTS:-$PWD/target/browser-screenshots}
KAFKA=${TALLY_KAFKA:-127.0.0.1:9092}
CASSANDRA=${TALLY_CASSANDRA:-127.0.0.1:9042}
START_TIMEOUT=${BROWSER_TEST_START_TIMEOUT:-120}

say() { echo "browser-test: $*" >&2; }
fail() { say "FAIL: $*"; exit 1; }
started=$(date +%s)

# --- what the test needs
[ -x "$NODE_BIN" ] || fail "$NODE_BIN is missing: build it with 'make browser-test' (or cargo test --workspace --no-run)"
scripts/install-chromium.sh || fail "no Chromium at $CHROMIUM (see the message above)"
if ! command -v node > /dev/null || ! command -v npm > /dev/null; then
  fail "node and npm are needed to drive the browser (Debian: apt-get install nodejs npm)"
fi
node -e 'process.exit(Number(process.versions.node.split(".")[0]) >= 18 ? 0 : 1)' ||
  fail "node $(node --version) is too old: puppeteer-core needs 18 or later"
# puppeteer-core, as package-lock.json pins it; again whenever the lock file changes.
if ! cmp -s tests/browser/package-lock.json tests/browser/node_modules/.tally-lock 2> /dev/null; then
  say "npm ci (tests/browser/package-lock.json)"
  (cd tests/browser && npm ci --no-audit --no-fund --loglevel=error) || fail "npm ci failed in tests/browser"
  cp tests/browser/package-lock.json tests/browser/node_modules/.tally-lock
fi
serving() { timeout 3 bash -c "exec 3<> /dev/tcp/${2%:*}/${2#*:}" 2> /dev/null ||
  fail "$1 is not serving on $2: start the services with 'make services'"; }
serving kafka "$KAFKA"
serving cassandra "$CASSANDRA"

# --- the cluster's own resources
RUN="dash_$$_$(date +%s%N | cut -c1-13)"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/tally-browser-test.XXXXXX")
PIDS=()
cleanup() {
  local status=$?
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2> /dev/null || true; done
  for pid in "${PIDS[@]}"; do
    for _ in $(seq 1 50); do kill -0 "$pid" 2> /dev/null || break; sleep 0.2; done
    kill -KILL "$pid" 2> /dev/null || true
  done
  wait 2> /dev/null || true
  if [ "$status" = 0 ] && [ -z "${BROWSER_TEST_KEEP:-}" ]; then
    rm -rf "$WORK"
  else
    say "node configs and logs kept in $WORK"
  fi
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

free_udp() { python3 -c 'import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# One key with every scope: the page asks for it, the test sends events with it.
"$NODE_BIN" keys new --name browser-test --scopes ingest,read,admin > "$WORK/key.out"
KEY=$(grep '^tally_' "$WORK/key.out")
sed -n '/^\[\[key\]\]/,$p' "$WORK/key.out" > "$WORK/keys.toml"
"$NODE_BIN" keys cluster-secret > "$WORK/cluster-secret"

GOSSIP=("$(free_udp)" "$(free_udp)" "$(free_udp)")
SEEDS="\"127.0.0.1:${GOSSIP[0]}\", \"127.0.0.1:${GOSSIP[1]}\", \"127.0.0.1:${GOSSIP[2]}\""
KEYSPACE=$(echo "t_$RUN" | tr -c 'a-z0-9_\n' '_' | cut -c1-48)
for i in 1 2 3; do
  cat > "$WORK/node-$i.toml" << EOT
[node]
id = "node-$i"
api_addr = "127.0.0.1:0"
[kafka]
brokers = "$KAFKA"
player_topic = "$RUN.players"
channel_topic = "$RUN.channels"
dlq_topic = "$RUN.dlq"
partitions = 4
group_id = "$RUN"
[cassandra]
contact_points = ["$CASSANDRA"]
keyspace = "$KEYSPACE"
[shard]
checkpoint_interval_ms = 200
[cluster]
cluster_id = "$RUN"
gossip_addr = "127.0.0.1:${GOSSIP[$((i - 1))]}"
seeds = [$SEEDS]
gossip_interval_ms = 100
phi_threshold = 8.0
handover_timeout_ms = 10000
[auth]
enabled = true
keys_file = "$WORK/keys.toml"
cluster_secret_file = "$WORK/cluster-secret"
EOT
  RUST_LOG=info,scylla=warn,rdkafka=warn "$NODE_BIN" --config "$WORK/node-$i.toml" > "$WORK/node-$i.log" 2>&1 &
  PIDS+=($!)
done
say "3 nodes starting (run $RUN, work folder $WORK)"

# Each node's address from its log line "api listening on http://ADDR", then /readyz.
NODES_JSON=""
deadline=$(($(date +%s) + START_TIMEOUT))
for i in 1 2 3; do
  pid=${PIDS[$((i - 1))]} addr=""
  while :; do
    kill -0 "$pid" 2> /dev/null || { tail -n 30 "$WORK/node-$i.log" >&2; fail "node-$i exited while starting"; }
    addr=${addr:-$(sed -n 's/.*api listening on http:\/\/\([0-9.:]*\).*/\1/p' "$WORK/node-$i.log" | head -n 1)}
    if [ -n "$addr" ] && curl -fs -o /dev/null --max-time 2 "http://$addr/readyz"; then break; fi
    [ "$(date +%s)" -lt "$deadline" ] ||
      { tail -n 30 "$WORK/node-$i.log" >&2; fail "node-$i not ready within ${START_TIMEOUT} s (address: ${addr:-none yet})"; }
    sleep 0.25
  done
  NODES_JSON+="${NODES_JSON:+,}{\"id\":\"node-$i\",\"url\":\"http://$addr\",\"pid\":$pid}"
done
say "nodes ready after $(($(date +%s) - started)) s: $NODES_JSON"

export TALLY_NODES="[$NODES_JSON]" TALLY_API_KEY=$KEY
# The test bounds each step; this bounds the whole, should the browser itself hang.
timeout --kill-after=10 300 node tests/browser/dashboard.test.mjs || fail "the dashboard test failed (above)"
# As every test that starts nodes: none may have logged an ERROR line.
if grep -h ' ERROR ' "$WORK"/node-*.log > "$WORK/errors.txt"; then
  head -n 20 "$WORK/errors.txt" >&2
  fail "the nodes logged $(wc -l < "$WORK/errors.txt") ERROR lines (above, at most 20)"
fi
say "passed in $(($(date +%s) - started)) s"
