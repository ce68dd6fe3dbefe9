#!/usr/bin/env bash
# services.sh - run the real Apache Kafka and Apache Cassandra that Tally's integration tests,
# cluster tests and local development talk to, on any fresh machine with a JDK 17 and Maven.
#
# No Docker and no tarballs: Maven fetches each server's jar closure from Maven Central, this
# script writes their configs, starts each JVM in the background and waits until it really
# serves a client (a Kafka metadata request, a CQL query), not just until a port opens.
#
#   scripts/services/services.sh up     [kafka|cassandra]   fetch (cached), start, wait until serving
#   scripts/services/services.sh down   [kafka|cassandra]   stop what this script started
#   scripts/services/services.sh status [kafka|cassandra]   running/serving per service (exit 1 if any is not serving)
#
# Kafka 3.9.x: KRaft single node (broker+controller), 127.0.0.1:9092, controller 127.0.0.1:9093.
# Cassandra 5.0.x: single node, CQL 127.0.0.1:9042, storage 127.0.0.1:7000, local JMX 127.0.0.1:7199.
# Both are for development and tests only: no auth, no replication, unsafe-but-fast settings.
#
# Environment (all optional):
#   TALLY_SERVICES_DIR         state folder (default: <repo>/.services): lib/ data/ logs/ run/ conf/
#   TALLY_SERVICES             kafka | cassandra: act on one only (a positional argument wins)
#   TALLY_KAFKA_VERSION        default 3.9.2 (newest 3.9.x on Maven Central when written)
#   TALLY_CASSANDRA_VERSION    default 5.0.9 (newest 5.0.x on Maven Central when written)
#   TALLY_KAFKA_TIMEOUT        seconds to wait for Kafka to serve (default 90)
#   TALLY_CASSANDRA_TIMEOUT    seconds to wait for Cassandra to serve (default 180)
#   TALLY_STOP_TIMEOUT         seconds between SIGTERM and SIGKILL on down (default 30)
#   TALLY_KAFKA_HEAP           default 512m;  TALLY_CASSANDRA_HEAP default 2G
# See docs/SERVICES.md for the flags and why each one is there.
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$SCRIPT_DIR/../.." && pwd)
STATE_DIR=${TALLY_SERVICES_DIR:-$REPO_ROOT/.services}
mkdir -p "$STATE_DIR"
STATE_DIR=$(cd "$STATE_DIR" && pwd)   # absolute: it ends up in configs and command lines
LIB_DIR=$STATE_DIR/lib
DATA_DIR=$STATE_DIR/data
LOG_DIR=$STATE_DIR/logs
RUN_DIR=$STATE_DIR/run
CONF_DIR=$STATE_DIR/conf

KAFKA_VERSION=${TALLY_KAFKA_VERSION:-3.9.2}
CASSANDRA_VERSION=${TALLY_CASSANDRA_VERSION:-5.0.9}
DEPENDENCY_PLUGIN_VERSION=3.8.1

HOST=127.0.0.1
KAFKA_PORT=9092
KAFKA_CONTROLLER_PORT=9093
CASSANDRA_PORT=9042
CASSANDRA_STORAGE_PORT=7000
CASSANDRA_JMX_PORT=7199

KAFKA_TIMEOUT=${TALLY_KAFKA_TIMEOUT:-90}
CASSANDRA_TIMEOUT=${TALLY_CASSANDRA_TIMEOUT:-180}
STOP_TIMEOUT=${TALLY_STOP_TIMEOUT:-30}
KAFKA_HEAP=${TALLY_KAFKA_HEAP:-512m}
CASSANDRA_HEAP=${TALLY_CASSANDRA_HEAP:-2G}

# Main classes: what we start, and what a pid must be running before `down` may kill it.
KAFKA_MAIN=kafka.Kafka
CASSANDRA_MAIN=org.apache.cassandra.service.CassandraDaemon

say() { echo "services: $*"; }
die() { echo "services: error: $*" >&2; exit 1; }

need_cmd() {  # need_cmd <command> <why>
  command -v "$1" >/dev/null 2>&1 || die "'$1' is not on PATH; it is needed $2"
}

now() { date +%s; }

# --- generic process and port helpers ------------------------------------------------------

port_open() {  # port_open <port>: something accepts TCP connections on $HOST:<port>
  timeout 2 bash -c "exec 3<>/dev/tcp/$HOST/$1" 2>/dev/null
}

main_class() { case $1 in kafka) echo "$KAFKA_MAIN" ;; cassandra) echo "$CASSANDRA_MAIN" ;; esac; }
service_port() { case $1 in kafka) echo "$KAFKA_PORT" ;; cassandra) echo "$CASSANDRA_PORT" ;; esac; }
service_log() { echo "$LOG_DIR/$1.log"; }

# our_pid <service>: prints the pid from run/<service>.pid if that process is alive and really
# is our server (its command line names the main class and this state folder). A pid file
# that fails the check is stale (process gone, or pid reused) and is removed.
our_pid() {
  local pidfile=$RUN_DIR/$1.pid pid cmdline
  [[ -f $pidfile ]] || return 1
  pid=$(<"$pidfile")
  if [[ $pid =~ ^[0-9]+$ && -r /proc/$pid/cmdline ]]; then
    cmdline=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null || true)
    # An empty command line is a process between fork and exec (seen under heavy load
    # right after the start), still ours; or a zombie, which is not.
    local state; state=$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null || echo Z)
    if [[ ( -z $cmdline && $state != Z ) || ( $cmdline == *"$(main_class "$1")"* && $cmdline == *"$STATE_DIR"* ) ]]; then
      echo "$pid"
      return 0
    fi
  fi
  rm -f "$pidfile"
  return 1
}

rss_of() {  # rss_of <pid>: resident set size, human readable
  awk '/^VmRSS:/ { printf "%.0f MiB", $2 / 1024 }' "/proc/$1/status" 2>/dev/null || true
}

# mark_log_start <service>: remember where this start's lines begin in the (appended) log.
mark_log_start() {
  local log
  log=$(service_log "$1")
  stat -c %s "$log" 2>/dev/null >"$RUN_DIR/$1.logstart" || echo 0 >"$RUN_DIR/$1.logstart"
}

show_log_tail() {  # show_log_tail <service>: the last 30 lines written since this start
  local log out offset=0
  log=$(service_log "$1")
  out=$LOG_DIR/$1.out
  [[ -f $RUN_DIR/$1.logstart ]] && offset=$(<"$RUN_DIR/$1.logstart")
  if [[ -s $log ]] && (($(stat -c %s "$log") > offset)); then
    say "last 30 lines of $log:"
    tail -c +$((offset + 1)) "$log" | tail -n 30 | sed 's/^/    /'
  else
    say "nothing new in $log since the start"
  fi
  if [[ -s $out ]]; then  # JVM errors before logging starts (bad flag, missing class) land here
    say "last 30 lines of $out:"
    tail -n 30 "$out" | sed 's/^/    /'
  fi
}

# --- fetching jars from Maven Central ------------------------------------------------------

# fetch_libs <service> <groupId:artifactId:version>...: copy the runtime closure of the given
# artifacts into lib/<service>/. A marker file records what the folder holds, so a second run
# downloads nothing and a version change refetches.
fetch_libs() {
  local service=$1; shift
  local dir=$LIB_DIR/$service marker=$LIB_DIR/$service/.fetched
  local want="$*"
  if [[ -f $marker && $(<"$marker") == "$want" ]]; then
    return 0
  fi
  need_cmd mvn "to fetch the $service jars from Maven Central (install Maven 3.6+)"
  need_cmd java "by Maven and to run $service (install a JDK 17)"

  local pom=$CONF_DIR/$service-deps.pom.xml deps="" coord g a v
  for coord in "$@"; do
    IFS=: read -r g a v <<<"$coord"
    deps+="    <dependency><groupId>$g</groupId><artifactId>$a</artifactId><version>$v</version></dependency>"$'\n'
  done
  cat >"$pom" <<EOF
<?xml version="1.0" encoding="UTF-8"?>
<!-- Generated by scripts/services/services.sh: only used to copy $service's jars into lib/$service. -->
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>tally.services</groupId>
  <artifactId>$service-deps</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
$deps  </dependencies>
  <build>
    <plugins>
      <plugin>
        <groupId>org.apache.maven.plugins</groupId>
        <artifactId>maven-dependency-plugin</artifactId>
        <version>$DEPENDENCY_PLUGIN_VERSION</version>
      </plugin>
    </plugins>
  </build>
</project>
EOF

  say "fetching $service jars from Maven Central ($*)"
  local started tmp=$dir.tmp.$$ mvnlog=$LOG_DIR/mvn-$service.log
  started=$(now)
  rm -rf "$tmp"
  if ! mvn -q -B -f "$pom" dependency:copy-dependencies -DincludeScope=runtime \
      -DoutputDirectory="$tmp" >"$mvnlog" 2>&1; then
    rm -rf "$tmp"
    tail -n 30 "$mvnlog" | sed 's/^/    /' >&2
    die "maven could not fetch the $service jars (full output: $mvnlog)"
  fi
  rm -rf "$dir"
  mv "$tmp" "$dir"
  echo "$want" >"$marker"
  say "fetched $service: $(find "$dir" -name '*.jar' | wc -l) jars, $(du -sh "$dir" | cut -f1), in $(($(now) - started)) s"
}

fetch_kafka() {
  # kafka_2.13 is the broker; kafka-tools holds the CLI tools (topics, console producer and
  # consumer) used by the readiness probe and by humans. Kafka's POM carries no logging
  # backend, so the broker would run silently without slf4j-reload4j + reload4j.
  fetch_libs kafka \
    "org.apache.kafka:kafka_2.13:$KAFKA_VERSION" \
    "org.apache.kafka:kafka-tools:$KAFKA_VERSION" \
    "org.slf4j:slf4j-reload4j:1.7.36" \
    "ch.qos.reload4j:reload4j:1.2.25"
}

fetch_cassandra() {
  fetch_libs cassandra "org.apache.cassandra:cassandra-all:$CASSANDRA_VERSION"
}

# --- Kafka ---------------------------------------------------------------------------------

# kafka_tool <main class> <args>...: run a short-lived Kafka CLI tool (probe, storage format),
# bounded to 60 s; JVM flags chosen to start fast and log only warnings.
kafka_tool() {
  timeout 60 java -Xmx256m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -Djava.awt.headless=true \
    -Dlog4j.configuration="file:$CONF_DIR/kafka-tools-log4j.properties" \
    -cp "$LIB_DIR/kafka/*" "$@"
}

kafka_serving() {  # a real metadata request (list topics) answered by the broker
  port_open "$KAFKA_PORT" || return 1
  [[ -f $LIB_DIR/kafka/.fetched ]] || return 1
  kafka_tool org.apache.kafka.tools.TopicCommand --bootstrap-server "$HOST:$KAFKA_PORT" --list \
    --command-config "$CONF_DIR/kafka-probe-client.properties" >/dev/null 2>&1
}

write_kafka_config() {
  cat >"$CONF_DIR/kafka-server.properties" <<EOF
# Generated by scripts/services/services.sh - Kafka $KAFKA_VERSION, KRaft, one node (dev/test only).
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@$HOST:$KAFKA_CONTROLLER_PORT
listeners=PLAINTEXT://$HOST:$KAFKA_PORT,CONTROLLER://$HOST:$KAFKA_CONTROLLER_PORT
advertised.listeners=PLAINTEXT://$HOST:$KAFKA_PORT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$DATA_DIR/kafka
num.partitions=8
default.replication.factor=1
auto.create.topics.enable=true
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
min.insync.replicas=1
# Dev setting: consumer groups start at once instead of waiting 3 s for more members.
group.initial.rebalance.delay.ms=0
num.network.threads=3
num.io.threads=8
log.retention.hours=168
log.segment.bytes=1073741824
EOF

  cat >"$CONF_DIR/kafka-log4j.properties" <<EOF
# Generated by scripts/services/services.sh - broker logging (log4j 1.x via reload4j).
log4j.rootLogger=INFO, file
log4j.appender.file=org.apache.log4j.RollingFileAppender
log4j.appender.file.File=$LOG_DIR/kafka.log
log4j.appender.file.MaxFileSize=50MB
log4j.appender.file.MaxBackupIndex=5
log4j.appender.file.layout=org.apache.log4j.PatternLayout
log4j.appender.file.layout.ConversionPattern=[%d] %p %m (%c)%n
log4j.logger.kafka=INFO
log4j.logger.org.apache.kafka=INFO
log4j.logger.org.apache.zookeeper=WARN
log4j.logger.kafka.request.logger=WARN
log4j.logger.kafka.log.LogCleaner=INFO
log4j.logger.state.change.logger=INFO
EOF
}

start_kafka() {
  write_kafka_config
  mkdir -p "$DATA_DIR/kafka"
  if [[ ! -f $DATA_DIR/kafka/meta.properties ]]; then
    local cluster_id
    cluster_id=$(kafka_tool kafka.tools.StorageTool random-uuid 2>>"$LOG_DIR/kafka-format.log")
    kafka_tool kafka.tools.StorageTool format -t "$cluster_id" \
      -c "$CONF_DIR/kafka-server.properties" --ignore-formatted >>"$LOG_DIR/kafka-format.log" 2>&1 ||
      { tail -n 30 "$LOG_DIR/kafka-format.log" | sed 's/^/    /' >&2; die "kafka storage format failed (see $LOG_DIR/kafka-format.log)"; }
    say "kafka storage formatted in $DATA_DIR/kafka (cluster id $cluster_id)"
  fi
  # setsid: own session, so a Ctrl-C or the end of a make target does not take the broker along.
  setsid nohup java -server -Xms"$KAFKA_HEAP" -Xmx"$KAFKA_HEAP" \
    -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:InitiatingHeapOccupancyPercent=35 \
    -XX:+ExplicitGCInvokesConcurrent -XX:+ExitOnOutOfMemoryError -Djava.awt.headless=true \
    -Dkafka.logs.dir="$LOG_DIR" -Dlog4j.configuration="file:$CONF_DIR/kafka-log4j.properties" \
    -cp "$LIB_DIR/kafka/*" "$KAFKA_MAIN" "$CONF_DIR/kafka-server.properties" \
    >"$LOG_DIR/kafka.out" 2>&1 </dev/null 9>&- &
  echo $! >"$RUN_DIR/kafka.pid"
  say "kafka starting (pid $!)"
}

# --- Cassandra -----------------------------------------------------------------------------

cassandra_serving() {  # a real CQL query (native protocol v4) answered with rows
  port_open "$CASSANDRA_PORT" || return 1
  python3 "$SCRIPT_DIR/cql_ping.py" --quiet --host "$HOST" --port "$CASSANDRA_PORT" --timeout 10
}

write_cassandra_config() {
  local d=$DATA_DIR/cassandra
  cat >"$CONF_DIR/cassandra.yaml" <<EOF
# Generated by scripts/services/services.sh - Cassandra $CASSANDRA_VERSION, one node (dev/test only).
cluster_name: tally-dev
num_tokens: 1
partitioner: org.apache.cassandra.dht.Murmur3Partitioner
endpoint_snitch: SimpleSnitch
seed_provider:
  - class_name: org.apache.cassandra.locator.SimpleSeedProvider
    parameters:
      - seeds: "$HOST:$CASSANDRA_STORAGE_PORT"
listen_address: $HOST
rpc_address: $HOST
storage_port: $CASSANDRA_STORAGE_PORT
native_transport_port: $CASSANDRA_PORT
start_native_transport: true
auto_bootstrap: false
authenticator: AllowAllAuthenticator
authorizer: AllowAllAuthorizer

data_file_directories:
  - $d/data
commitlog_directory: $d/commitlog
saved_caches_directory: $d/saved_caches
hints_directory: $d/hints
cdc_raw_directory: $d/cdc_raw

commitlog_sync: periodic
commitlog_sync_period: 10000ms
# Tests drop and recreate keyspaces all the time; snapshots would only fill the disk.
auto_snapshot: false
# A fresh single node: use the 5.0 formats directly (no 4.x compatibility mode).
storage_compatibility_mode: NONE

# Generous batch limits: checkpoints write many rows of one shard in one batch.
batch_size_warn_threshold: 1024KiB
batch_size_fail_threshold: 8192KiB
unlogged_batch_across_partitions_warn_threshold: 1000
EOF

  # JPMS flags as a java argument file, shared by the daemon and by Cassandra's own tools
  # (java @.services/conf/cassandra-jpms.options -cp '.services/lib/cassandra/*' ...NodeTool).
  # Cassandra reflects into JDK internals; without these it dies at once (IllegalAccessException
  # in FileUtils, InaccessibleObjectException further on). The list is conf/jvm17-server.options
  # of Cassandra 5.0, plus java.nio.
  cat >"$CONF_DIR/cassandra-jpms.options" <<EOF
-Djdk.attach.allowAttachSelf=true
--add-exports java.base/jdk.internal.misc=ALL-UNNAMED
--add-exports java.management.rmi/com.sun.jmx.remote.internal.rmi=ALL-UNNAMED
--add-exports java.rmi/sun.rmi.registry=ALL-UNNAMED
--add-exports java.rmi/sun.rmi.server=ALL-UNNAMED
--add-exports java.sql/java.sql=ALL-UNNAMED
--add-exports java.base/java.lang.ref=ALL-UNNAMED
--add-exports jdk.unsupported/sun.misc=ALL-UNNAMED
--add-exports jdk.compiler/com.sun.tools.javac.file=ALL-UNNAMED
--add-exports jdk.attach/sun.tools.attach=ALL-UNNAMED
--add-opens java.base/java.lang.module=ALL-UNNAMED
--add-opens java.base/jdk.internal.loader=ALL-UNNAMED
--add-opens java.base/jdk.internal.ref=ALL-UNNAMED
--add-opens java.base/jdk.internal.reflect=ALL-UNNAMED
--add-opens java.base/jdk.internal.math=ALL-UNNAMED
--add-opens java.base/jdk.internal.module=ALL-UNNAMED
--add-opens java.base/jdk.internal.util.jar=ALL-UNNAMED
--add-opens jdk.management/com.sun.management.internal=ALL-UNNAMED
--add-opens java.base/sun.nio.ch=ALL-UNNAMED
--add-opens java.base/java.io=ALL-UNNAMED
--add-opens java.base/java.nio=ALL-UNNAMED
--add-opens java.base/java.lang.reflect=ALL-UNNAMED
--add-opens jdk.compiler/com.sun.tools.javac=ALL-UNNAMED
--add-opens java.base/java.lang=ALL-UNNAMED
--add-opens java.base/java.util=ALL-UNNAMED
EOF

  cat >"$CONF_DIR/cassandra-logback.xml" <<EOF
<?xml version="1.0" encoding="UTF-8"?>
<!-- Generated by scripts/services/services.sh - Cassandra logs INFO to a file, nothing to the console. -->
<configuration scan="false" debug="false">
  <appender name="FILE" class="ch.qos.logback.core.rolling.RollingFileAppender">
    <file>$LOG_DIR/cassandra.log</file>
    <rollingPolicy class="ch.qos.logback.core.rolling.FixedWindowRollingPolicy">
      <fileNamePattern>$LOG_DIR/cassandra.log.%i.zip</fileNamePattern>
      <minIndex>1</minIndex>
      <maxIndex>5</maxIndex>
    </rollingPolicy>
    <triggeringPolicy class="ch.qos.logback.core.rolling.SizeBasedTriggeringPolicy">
      <maxFileSize>50MB</maxFileSize>
    </triggeringPolicy>
    <encoder>
      <pattern>%-5level [%thread] %date{ISO8601} %logger{36} - %msg%n</pattern>
    </encoder>
  </appender>
  <root level="INFO">
    <appender-ref ref="FILE"/>
  </root>
</configuration>
EOF
}

start_cassandra() {
  write_cassandra_config
  local d=$DATA_DIR/cassandra
  mkdir -p "$d/data" "$d/commitlog" "$d/saved_caches" "$d/hints" "$d/cdc_raw" "$d/triggers" "$STATE_DIR/tmp"

  local jvm=(
    -Xms"$CASSANDRA_HEAP" -Xmx"$CASSANDRA_HEAP" -Xss256k
    # GC, from conf/jvm17-server.options of Cassandra 5.0.
    -XX:+UseG1GC -XX:+ParallelRefProcEnabled -XX:MaxTenuringThreshold=1 -XX:G1HeapRegionSize=16m
    -XX:G1RSetUpdatingPauseTimePercent=5 -XX:MaxGCPauseMillis=300 -XX:InitiatingHeapOccupancyPercent=70
    # From conf/jvm-server.options.
    -XX:+UseThreadPriorities -XX:+UseTLAB -XX:+ResizeTLAB -XX:+PerfDisableSharedMem
    -XX:-RestrictContended -XX:StringTableSize=1000003 -XX:+ExitOnOutOfMemoryError
    -Djava.net.preferIPv4Stack=true -Dchronicle.analytics.disable=true
    # JPMS: Cassandra reflects into JDK internals; see write_cassandra_config.
    @"$CONF_DIR/cassandra-jpms.options"
    -Dio.netty.tryReflectionSetAccessible=true
    -Dio.netty.allocator.useCacheForAllThreads=true -Dio.netty.allocator.maxOrder=11
    # Where things live.
    -Dcassandra.config="file://$CONF_DIR/cassandra.yaml"
    -Dcassandra.storagedir="$d"
    -Dcassandra.triggers_dir="$d/triggers"
    -Dcassandra.logdir="$LOG_DIR"
    -Dlogback.configurationFile="file://$CONF_DIR/cassandra-logback.xml"
    -Djna.tmpdir="$STATE_DIR/tmp"
    -Dcassandra-foreground=yes
    # Local-only JMX, so NodeTool from lib/cassandra works.
    -Dcassandra.jmx.local.port="$CASSANDRA_JMX_PORT"
    # Fast single-node start (dev/test only): no gossip settling, short ring delay, no fsync
    # of system tables.
    -Dcassandra.skip_wait_for_gossip_to_settle=0
    -Dcassandra.ring_delay_ms=1000
    -Dcassandra.unsafesystem=true
  )
  # jamm measures object sizes; as an agent it uses Instrumentation instead of guessing.
  local jamm
  jamm=$(find "$LIB_DIR/cassandra" -maxdepth 1 -name 'jamm-*.jar' | head -n 1)
  [[ -n $jamm ]] && jvm+=(-javaagent:"$jamm")

  setsid nohup java "${jvm[@]}" -cp "$LIB_DIR/cassandra/*" "$CASSANDRA_MAIN" \
    >"$LOG_DIR/cassandra.out" 2>&1 </dev/null 9>&- &
  echo $! >"$RUN_DIR/cassandra.pid"
  say "cassandra starting (pid $!)"
}

# Logging configs for the short-lived tools (probes, storage format, console clients,
# NodeTool). Written on every run: the probes need them before any server is started here.
write_tool_configs() {
  cat >"$CONF_DIR/kafka-tools-log4j.properties" <<EOF
# Generated by scripts/services/services.sh - logging for Kafka CLI tools: warnings to stderr.
log4j.rootLogger=WARN, stderr
log4j.appender.stderr=org.apache.log4j.ConsoleAppender
log4j.appender.stderr.Target=System.err
log4j.appender.stderr.layout=org.apache.log4j.PatternLayout
log4j.appender.stderr.layout.ConversionPattern=[%d] %p %m (%c)%n
EOF

  # Client settings for the Kafka probe: give up within seconds, not the default minute.
  cat >"$CONF_DIR/kafka-probe-client.properties" <<EOF
request.timeout.ms=5000
default.api.timeout.ms=10000
EOF

  # Cassandra's own tools (NodeTool, sstable tools): warnings to stderr.
  cat >"$CONF_DIR/cassandra-tools-logback.xml" <<EOF
<?xml version="1.0" encoding="UTF-8"?>
<!-- Generated by scripts/services/services.sh - Cassandra tools log warnings to stderr. -->
<configuration>
  <appender name="STDERR" class="ch.qos.logback.core.ConsoleAppender">
    <target>System.err</target>
    <encoder><pattern>%-5level %logger{36} - %msg%n</pattern></encoder>
  </appender>
  <root level="WARN"><appender-ref ref="STDERR"/></root>
</configuration>
EOF
}

# --- subcommands ---------------------------------------------------------------------------

serving() { "$1_serving"; }

# wait_serving <service> <timeout> <started-at>: poll the real probe until it answers, the
# process dies, or the time is up.
wait_serving() {
  local service=$1 limit=$2 started=$3 port pid
  port=$(service_port "$service")
  while true; do
    if serving "$service"; then
      pid=$(our_pid "$service" || true)
      say "$service serving on $HOST:$port (pid ${pid:-?}, after $(($(now) - started)) s, rss $(rss_of "${pid:-0}"))"
      return 0
    fi
    if ! pid=$(our_pid "$service"); then
      say "$service exited before serving on $HOST:$port"
      show_log_tail "$service"
      return 1
    fi
    if (($(now) - started >= limit)); then
      say "$service did not serve on $HOST:$port within $limit s (still running as pid $pid; 'services.sh down $service' stops it)"
      show_log_tail "$service"
      return 1
    fi
    sleep 1
  done
}

cmd_up() {
  need_cmd java "to run Kafka and Cassandra (install a JDK 17)"
  local service pid port to_wait=() started_kafka started_cassandra
  for service in "${SERVICES[@]}"; do
    "fetch_$service"
  done
  # Both JVMs start before we wait on either: on 2 cores this is faster than one after the other.
  for service in "${SERVICES[@]}"; do
    port=$(service_port "$service")
    if pid=$(our_pid "$service"); then
      if serving "$service"; then
        say "$service already serving on $HOST:$port (pid $pid)"
      else
        say "$service already running (pid $pid), not serving yet; waiting"
        to_wait+=("$service")
        printf -v "started_$service" '%s' "$(now)"
      fi
    elif port_open "$port"; then
      if serving "$service"; then
        say "$service already serving on $HOST:$port, but not started by this script (no pid file in $RUN_DIR); not starting another"
      else
        die "$HOST:$port is taken by a process that is not $service started by this script; not starting $service"
      fi
    else
      printf -v "started_$service" '%s' "$(now)"
      mark_log_start "$service"
      "start_$service"
      to_wait+=("$service")
    fi
  done
  ((${#to_wait[@]})) || return 0
  say "logs: $LOG_DIR/{kafka,cassandra}.log (JVM stdout/stderr in *.out)"
  local failed=0 limit started
  for service in "${to_wait[@]}"; do
    limit=$KAFKA_TIMEOUT
    [[ $service == cassandra ]] && limit=$CASSANDRA_TIMEOUT
    started=started_$service
    wait_serving "$service" "$limit" "${!started}" || failed=1
  done
  ((failed == 0)) || die "not all services came up (see above)"
}

stop_one() {  # stop_one <service>
  local service=$1 pid port started
  port=$(service_port "$service")
  if ! pid=$(our_pid "$service"); then
    if port_open "$port"; then
      say "$service was not started by this script (no live pid file) but $HOST:$port is in use; leaving it alone"
    else
      say "$service stopped"
    fi
    return 0
  fi
  started=$(now)
  kill -TERM "$pid" 2>/dev/null || true
  while our_pid "$service" >/dev/null && (($(now) - started < STOP_TIMEOUT)); do
    sleep 0.5
  done
  if our_pid "$service" >/dev/null; then
    say "$service (pid $pid) still running after $STOP_TIMEOUT s; sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    sleep 1
  fi
  rm -f "$RUN_DIR/$service.pid"
  say "$service stopped (pid $pid, in $(($(now) - started)) s)"
}

cmd_down() {
  local service
  for service in "${SERVICES[@]}"; do
    stop_one "$service"
  done
}

cmd_status() {
  local service pid port all_serving=0 state
  for service in "${SERVICES[@]}"; do
    port=$(service_port "$service")
    if pid=$(our_pid "$service"); then
      if serving "$service"; then state="serving on $HOST:$port"; else state="NOT serving on $HOST:$port"; all_serving=1; fi
      say "$service running (pid $pid, rss $(rss_of "$pid")), $state"
    elif port_open "$port" && serving "$service"; then
      say "$service serving on $HOST:$port, not started by this script"
    else
      say "$service stopped"
      all_serving=1
    fi
  done
  return "$all_serving"
}

usage() {
  echo "usage: $0 up|down|status [kafka|cassandra]" >&2
  exit 2
}

main() {
  local cmd=${1:-}
  local only=${2:-${TALLY_SERVICES:-}}
  case $only in
    "" | all | both) SERVICES=(kafka cassandra) ;;
    kafka | cassandra) SERVICES=("$only") ;;
    *) die "unknown service '$only' (expected kafka or cassandra)" ;;
  esac
  if [[ $cmd != down && " ${SERVICES[*]} " == *" cassandra "* ]]; then
    need_cmd python3 "for the Cassandra readiness probe (scripts/services/cql_ping.py)"
  fi
  mkdir -p "$LIB_DIR" "$DATA_DIR" "$LOG_DIR" "$RUN_DIR" "$CONF_DIR"
  write_tool_configs
  case $cmd in
    up | down)
      # One up/down at a time per state folder (two `make` targets racing would double-start).
      # The servers are started with fd 9 closed, so they do not hold the lock after we exit.
      exec 9>"$RUN_DIR/lock"
      flock -w 600 9 || die "another services.sh holds $RUN_DIR/lock"
      "cmd_$cmd"
      ;;
    status) cmd_status ;;
    *) usage ;;
  esac
}

main "$@"
