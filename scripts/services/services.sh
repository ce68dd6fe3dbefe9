#!/usr/bin/env bash
# services.sh - run the real Apache Kafka and Apache Cassandra that Tally's integration tests,
# cluster tests and local development talk to, on any fresh machine with a JDK 17 and Maven.
#
# No Docker and no tarballs: Maven fetches each server's jar closure from Maven Central, this
# script writes their configs, starts each JVM in the background and waits until it really
# serves a client (a Kafka metadata request, a CQL query), not just until a port opens.
#
#   scripts/services/services.sh up     [SERVICE]   fetch (cached), start, wait until serving (default: kafka cassandra)
#   scripts/services/services.sh up-secure          the same for cassandra-secure
#   scripts/services/services.sh down   [SERVICE]   stop what this script started (default: all three)
#   scripts/services/services.sh status [SERVICE]   running/serving per service (exit 1 if one is not serving)
#   SERVICE: kafka | cassandra | cassandra-secure
#
# Kafka 3.9.x: KRaft single node (broker+controller), PLAINTEXT 127.0.0.1:9092, SASL_SSL
#   127.0.0.1:9094 (SCRAM-SHA-512 and PLAIN, user tally), controller 127.0.0.1:9093.
# Cassandra 5.0.x: single node, CQL 127.0.0.1:9042, storage 127.0.0.1:7000, local JMX 127.0.0.1:7199.
# cassandra-secure: a second Cassandra 5.0.x, CQL over TLS only on 127.0.0.1:9142 with
#   PasswordAuthenticator (role tally), storage 127.0.0.1:7100, local JMX 127.0.0.1:7299.
# The CA, certificates and passwords of the secure listeners are made here, once, into
# .services/secure/. Everything is for development and tests only: one node each, unsafe-but-
# fast settings, a throwaway CA.
#
# Environment (all optional):
#   TALLY_SERVICES_DIR         state folder (default: <repo>/.services): lib/ data/ logs/ run/ conf/ secure/
#   TALLY_SERVICES             a service: act on that one only (a positional argument wins)
#   TALLY_KAFKA_VERSION        default 3.9.2 (newest 3.9.x on Maven Central when written)
#   TALLY_CASSANDRA_VERSION    default 5.0.9 (newest 5.0.x on Maven Central when written)
#   TALLY_KAFKA_TIMEOUT        seconds to wait for Kafka to serve (default 90)
#   TALLY_CASSANDRA_TIMEOUT    seconds to wait for each Cassandra to serve (default 180)
#   TALLY_STOP_TIMEOUT         seconds between SIGTERM and SIGKILL on down (default 30)
#   TALLY_KAFKA_HEAP           default 512m;  TALLY_CASSANDRA_HEAP default 2G;
#   TALLY_CASSANDRA_SECURE_HEAP default 1G
#   Ports (defaults above), to run a second set beside the usual one:
#   TALLY_KAFKA_PORT, TALLY_KAFKA_CONTROLLER_PORT, TALLY_KAFKA_SASL_PORT,
#   TALLY_CASSANDRA_PORT, TALLY_CASSANDRA_STORAGE_PORT, TALLY_CASSANDRA_JMX_PORT,
#   TALLY_CASSANDRA_SECURE_PORT, TALLY_CASSANDRA_SECURE_STORAGE_PORT, TALLY_CASSANDRA_SECURE_JMX_PORT
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
SECURE_DIR=$STATE_DIR/secure

KAFKA_VERSION=${TALLY_KAFKA_VERSION:-3.9.2}
CASSANDRA_VERSION=${TALLY_CASSANDRA_VERSION:-5.0.9}
DEPENDENCY_PLUGIN_VERSION=3.8.1

HOST=127.0.0.1
KAFKA_PORT=${TALLY_KAFKA_PORT:-9092}
KAFKA_CONTROLLER_PORT=${TALLY_KAFKA_CONTROLLER_PORT:-9093}
KAFKA_SASL_PORT=${TALLY_KAFKA_SASL_PORT:-9094}
CASSANDRA_PORT=${TALLY_CASSANDRA_PORT:-9042}
CASSANDRA_STORAGE_PORT=${TALLY_CASSANDRA_STORAGE_PORT:-7000}
CASSANDRA_JMX_PORT=${TALLY_CASSANDRA_JMX_PORT:-7199}
CASSANDRA_SECURE_PORT=${TALLY_CASSANDRA_SECURE_PORT:-9142}
CASSANDRA_SECURE_STORAGE_PORT=${TALLY_CASSANDRA_SECURE_STORAGE_PORT:-7100}
CASSANDRA_SECURE_JMX_PORT=${TALLY_CASSANDRA_SECURE_JMX_PORT:-7299}

# The one user of the secure listeners, in Kafka and in cassandra-secure.
SECURE_USER=tally
# Certificates are made again when one is missing or expires within this many seconds.
CERT_MIN_LIFETIME=86400
CERT_DAYS=365

KAFKA_TIMEOUT=${TALLY_KAFKA_TIMEOUT:-90}
CASSANDRA_TIMEOUT=${TALLY_CASSANDRA_TIMEOUT:-180}
STOP_TIMEOUT=${TALLY_STOP_TIMEOUT:-30}
KAFKA_HEAP=${TALLY_KAFKA_HEAP:-512m}
CASSANDRA_HEAP=${TALLY_CASSANDRA_HEAP:-2G}
CASSANDRA_SECURE_HEAP=${TALLY_CASSANDRA_SECURE_HEAP:-1G}

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

# Per service: its main class, the config file its command line names (which tells the two
# Cassandras apart), its client port, every port it binds, and the timeout to wait for it.
main_class() { case $1 in kafka) echo "$KAFKA_MAIN" ;; cassandra*) echo "$CASSANDRA_MAIN" ;; esac; }
service_config() { case $1 in kafka) echo "$CONF_DIR/kafka-server.properties" ;; cassandra*) echo "$CONF_DIR/$1.yaml" ;; esac; }
service_port() {
  case $1 in
    kafka) echo "$KAFKA_PORT" ;;
    cassandra) echo "$CASSANDRA_PORT" ;;
    cassandra-secure) echo "$CASSANDRA_SECURE_PORT" ;;
  esac
}
service_ports() {
  case $1 in
    kafka) echo "$KAFKA_PORT $KAFKA_CONTROLLER_PORT $KAFKA_SASL_PORT" ;;
    cassandra) echo "$CASSANDRA_PORT $CASSANDRA_STORAGE_PORT $CASSANDRA_JMX_PORT" ;;
    cassandra-secure) echo "$CASSANDRA_SECURE_PORT $CASSANDRA_SECURE_STORAGE_PORT $CASSANDRA_SECURE_JMX_PORT" ;;
  esac
}
service_timeout() { case $1 in kafka) echo "$KAFKA_TIMEOUT" ;; cassandra*) echo "$CASSANDRA_TIMEOUT" ;; esac; }
service_where() {  # how status and up name what serves: the client port(s)
  case $1 in
    kafka) echo "$HOST:$KAFKA_PORT (PLAINTEXT) and $HOST:$KAFKA_SASL_PORT (SASL_SSL)" ;;
    cassandra-secure) echo "$HOST:$CASSANDRA_SECURE_PORT (TLS, password)" ;;
    *) echo "$HOST:$(service_port "$1")" ;;
  esac
}
service_log() { echo "$LOG_DIR/$1.log"; }
# call <service> <step> [args]: runs <service>_<step>, e.g. cassandra_secure_serving.
call() { local fn="${1//-/_}_$2"; shift 2; "$fn" "$@"; }

# our_pid <service>: prints the pid from run/<service>.pid if that process is alive and really
# is our server (its command line names the main class and the service's config file in this
# state folder). A pid file that fails the check is stale (process gone, or pid reused) and is
# removed.
our_pid() {
  local pidfile=$RUN_DIR/$1.pid pid cmdline
  [[ -f $pidfile ]] || return 1
  pid=$(<"$pidfile")
  if [[ $pid =~ ^[0-9]+$ && -r /proc/$pid/cmdline ]]; then
    cmdline=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null || true)
    # An empty command line is a process between fork and exec (seen under heavy load
    # right after the start), still ours; or a zombie, which is not.
    local state; state=$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null || echo Z)
    if [[ ( -z $cmdline && $state != Z ) || ( $cmdline == *"$(main_class "$1")"* && $cmdline == *"$(service_config "$1")"* ) ]]; then
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

kafka_fetch() {
  # kafka_2.13 is the broker; kafka-tools holds the CLI tools (topics, console producer and
  # consumer) used by the readiness probe and by humans. Kafka's POM carries no logging
  # backend, so the broker would run silently without slf4j-reload4j + reload4j.
  fetch_libs kafka \
    "org.apache.kafka:kafka_2.13:$KAFKA_VERSION" \
    "org.apache.kafka:kafka-tools:$KAFKA_VERSION" \
    "org.slf4j:slf4j-reload4j:1.7.36" \
    "ch.qos.reload4j:reload4j:1.2.25"
}

cassandra_fetch() {
  fetch_libs cassandra "org.apache.cassandra:cassandra-all:$CASSANDRA_VERSION"
}

# --- throwaway CA, certificates and passwords for the secure listeners ----------------------

# secret <name>: the content of secure/<name> (a password: no newline).
secret() { cat "$SECURE_DIR/$1"; }

# make_password <name>: a random password into secure/<name> (mode 0600, no trailing newline),
# once: the servers' data folders remember it (SCRAM credentials, Cassandra roles).
make_password() {
  local file=$SECURE_DIR/$1
  [[ -s $file ]] && return 0
  (umask 077 && openssl rand -hex 16 | tr -d '\n' >"$file.tmp" && mv "$file.tmp" "$file")
  say "made a password in $file"
}

# certs_fresh: every certificate and store exists, the leaves are signed by this CA, and none
# expires within CERT_MIN_LIFETIME seconds.
certs_fresh() {
  local f
  for f in ca.pem ca.key server.pem server.key client.pem client.key server.p12 truststore.p12 store-password; do
    [[ -s $SECURE_DIR/$f ]] || return 1
  done
  for f in ca server client; do
    openssl x509 -checkend "$CERT_MIN_LIFETIME" -noout -in "$SECURE_DIR/$f.pem" >/dev/null || return 1
  done
  openssl verify -CAfile "$SECURE_DIR/ca.pem" "$SECURE_DIR/server.pem" "$SECURE_DIR/client.pem" >/dev/null 2>&1
}

# sign_leaf <name> <subject> <extensions>: a new key and a certificate for it signed by the CA.
sign_leaf() {
  local name=$1 subject=$2 ext=$3 d=$SECURE_DIR
  openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$d/$name.key" 2>/dev/null
  openssl req -new -key "$d/$name.key" -subj "$subject" -out "$d/$name.csr"
  printf '%s\n' "$ext" >"$d/$name.ext"
  openssl x509 -req -in "$d/$name.csr" -CA "$d/ca.pem" -CAkey "$d/ca.key" -CAserial "$d/ca.srl" \
    -CAcreateserial -days "$CERT_DAYS" -sha256 -extfile "$d/$name.ext" -out "$d/$name.pem" 2>/dev/null
  rm -f "$d/$name.csr" "$d/$name.ext"
}

# ensure_secure_material: the CA, the server and client certificates, the JVM key and trust
# stores, and the passwords, made with openssl and keytool the first time and again only
# when a certificate is missing or about to expire. Servers started before a renewal keep the
# old certificate until they are restarted (`up` says so).
ensure_secure_material() {
  need_cmd openssl "to make the throwaway CA and certificates of the secure listeners"
  need_cmd keytool "to make the truststore of the secure listeners (it comes with the JDK)"
  mkdir -p "$SECURE_DIR"
  chmod 700 "$SECURE_DIR"
  make_password kafka-password
  make_password cassandra-password
  make_password cassandra-admin-password
  certs_fresh && return 0

  local d=$SECURE_DIR started
  started=$(now)
  (
    umask 077  # keys and stores 0600; certificates are chmod-ed to 0644 below
    rm -f "$d"/{ca,server,client}.{pem,key} "$d"/ca.srl "$d"/{server,truststore}.p12 "$d/store-password"
    openssl rand -hex 16 | tr -d '\n' >"$d/store-password"
    openssl req -x509 -newkey rsa:2048 -nodes -sha256 -days "$CERT_DAYS" \
      -keyout "$d/ca.key" -out "$d/ca.pem" -subj "/O=Tally/CN=Tally throwaway test CA" \
      -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
    sign_leaf server "/O=Tally/CN=localhost" "basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=DNS:localhost,IP:127.0.0.1
authorityKeyIdentifier=keyid"
    sign_leaf client "/O=Tally/CN=$SECURE_USER" "basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=clientAuth
authorityKeyIdentifier=keyid"
    # Kafka's and Cassandra's keystore: the server key with its chain up to the CA.
    openssl pkcs12 -export -name server -inkey "$d/server.key" -in "$d/server.pem" -certfile "$d/ca.pem" \
      -passout "file:$d/store-password" -out "$d/server.p12"
    # The truststore JVM clients need (Kafka clients can also take ca.pem with type PEM).
    keytool -importcert -noprompt -alias tally-ca -file "$d/ca.pem" -keystore "$d/truststore.p12" \
      -storetype PKCS12 -storepass:file "$d/store-password" >/dev/null 2>&1
    chmod 644 "$d"/{ca,server,client}.pem "$d/truststore.p12"
  ) || die "could not make the CA and certificates in $d"
  # errexit does not apply inside a subshell followed by ||: this check catches a failed step.
  certs_fresh || die "the certificates made in $d do not verify against $d/ca.pem"
  say "made a throwaway CA and certificates in $d (valid $CERT_DAYS days) in $(($(now) - started)) s"
}

# --- Kafka ---------------------------------------------------------------------------------

# kafka_tool <main class> <args>...: run a short-lived Kafka CLI tool (probe, storage format),
# bounded to 60 s; JVM flags chosen to start fast and log only warnings.
kafka_tool() {
  timeout 60 java -Xmx256m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -Djava.awt.headless=true \
    -Dlog4j.configuration="file:$CONF_DIR/kafka-tools-log4j.properties" \
    -cp "$LIB_DIR/kafka/*" "$@"
}

# kafka_probe <port> <client properties>: a real metadata request (list topics) answered by
# the broker on that listener.
kafka_probe() {
  port_open "$1" || return 1
  [[ -f $LIB_DIR/kafka/.fetched ]] || return 1
  kafka_tool org.apache.kafka.tools.TopicCommand --bootstrap-server "$HOST:$1" --list \
    --command-config "$2" >/dev/null 2>&1
}

# Kafka serves when both listeners answer: PLAINTEXT, and SASL_SSL with user tally (SCRAM).
kafka_serving() {
  kafka_probe "$KAFKA_PORT" "$CONF_DIR/kafka-probe-client.properties" &&
    kafka_probe "$KAFKA_SASL_PORT" "$CONF_DIR/kafka-probe-scram.properties"
}

# After a start, setup runs once the PLAINTEXT listener answers. SCRAM credentials live in
# the cluster metadata, not in a config file, so user tally's are (re)written on every start
# (an existing data folder gets them too); then both mechanisms are tried on SASL_SSL.
kafka_answers() { kafka_probe "$KAFKA_PORT" "$CONF_DIR/kafka-probe-client.properties"; }
kafka_setup() {
  # The log is 0600: ConfigCommand's errors quote the credential.
  (umask 077 && kafka_tool kafka.admin.ConfigCommand --bootstrap-server "$HOST:$KAFKA_PORT" \
    --command-config "$CONF_DIR/kafka-probe-client.properties" --alter \
    --entity-type users --entity-name "$SECURE_USER" \
    --add-config-file "$CONF_DIR/kafka-scram-credential.properties" >>"$LOG_DIR/kafka-setup.log" 2>&1) ||
    { SETUP_STATE="could not set the SCRAM credentials of $SECURE_USER (see $LOG_DIR/kafka-setup.log)"; return 1; }
  kafka_probe "$KAFKA_SASL_PORT" "$CONF_DIR/kafka-probe-plain.properties" ||
    { SETUP_STATE="$HOST:$KAFKA_SASL_PORT did not serve user $SECURE_USER with SASL PLAIN"; return 1; }
  kafka_probe "$KAFKA_SASL_PORT" "$CONF_DIR/kafka-probe-scram.properties" ||
    { SETUP_STATE="$HOST:$KAFKA_SASL_PORT did not serve user $SECURE_USER with SCRAM-SHA-512"; return 1; }
}

# kafka_client_properties <mechanism>: what a Kafka (Java) client needs for the SASL_SSL
# listener as user tally.
kafka_client_properties() {
  local module=org.apache.kafka.common.security.scram.ScramLoginModule
  [[ $1 == PLAIN ]] && module=org.apache.kafka.common.security.plain.PlainLoginModule
  cat <<EOT
# Generated by scripts/services/services.sh: a client of the local (throwaway) Kafka's
# SASL_SSL listener as user $SECURE_USER with SASL $1.
bootstrap.servers=$HOST:$KAFKA_SASL_PORT
security.protocol=SASL_SSL
sasl.mechanism=$1
sasl.jaas.config=$module required username="$SECURE_USER" password="$(secret kafka-password)";
ssl.truststore.type=PEM
ssl.truststore.location=$SECURE_DIR/ca.pem
EOT
}

kafka_write_config() {
  local store_password kafka_password
  store_password=$(secret store-password)
  kafka_password=$(secret kafka-password)
  # 0600: the broker's config and the client files hold passwords.
  (
    umask 077
    cat >"$CONF_DIR/kafka-server.properties" <<EOT
# Generated by scripts/services/services.sh - Kafka $KAFKA_VERSION, KRaft, one node (dev/test only).
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@$HOST:$KAFKA_CONTROLLER_PORT
listeners=PLAINTEXT://$HOST:$KAFKA_PORT,CONTROLLER://$HOST:$KAFKA_CONTROLLER_PORT,SASL_SSL://$HOST:$KAFKA_SASL_PORT
advertised.listeners=PLAINTEXT://$HOST:$KAFKA_PORT,SASL_SSL://$HOST:$KAFKA_SASL_PORT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,SASL_SSL:SASL_SSL
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

# The SASL_SSL listener: TLS with the throwaway CA's server certificate, then user
# $SECURE_USER by SCRAM-SHA-512 (credentials in the cluster metadata, set by services.sh
# after each start) or PLAIN (the password below). No ACLs: every authenticated user may do
# everything, as on the PLAINTEXT listener.
listener.name.sasl_ssl.sasl.enabled.mechanisms=SCRAM-SHA-512,PLAIN
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.sasl_ssl.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required user_$SECURE_USER="$kafka_password";
listener.name.sasl_ssl.ssl.keystore.type=PKCS12
listener.name.sasl_ssl.ssl.keystore.location=$SECURE_DIR/server.p12
listener.name.sasl_ssl.ssl.keystore.password=$store_password
listener.name.sasl_ssl.ssl.key.password=$store_password
listener.name.sasl_ssl.ssl.client.auth=none
EOT
    # For ConfigCommand --add-config-file, so the password is on no command line. In a file
    # the value goes without the brackets that --add-config on the command line wants.
    printf 'SCRAM-SHA-512=iterations=8192,password=%s\n' "$kafka_password" \
      >"$CONF_DIR/kafka-scram-credential.properties"
    kafka_client_properties SCRAM-SHA-512 >"$SECURE_DIR/kafka-client.properties"
    kafka_client_properties PLAIN >"$SECURE_DIR/kafka-client-plain.properties"
    # The readiness probes: the client files plus the probe's short timeouts.
    cat "$CONF_DIR/kafka-probe-client.properties" "$SECURE_DIR/kafka-client.properties" \
      >"$CONF_DIR/kafka-probe-scram.properties"
    cat "$CONF_DIR/kafka-probe-client.properties" "$SECURE_DIR/kafka-client-plain.properties" \
      >"$CONF_DIR/kafka-probe-plain.properties"
  )

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

kafka_start() {
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

# Two instances from the same jars: `cassandra` (plain CQL, no authentication) and
# `cassandra-secure` (CQL over TLS only, password authentication). Each has its own yaml,
# logback config, data folder, log and ports; the JPMS argument file is shared.

cassandra_secure_fetch() { cassandra_fetch; }

cassandra_serving() {  # a real CQL query (native protocol v4) answered with rows
  port_open "$CASSANDRA_PORT" || return 1
  python3 "$SCRIPT_DIR/cql_ping.py" --quiet --host "$HOST" --port "$CASSANDRA_PORT" --timeout 10
}
cassandra_answers() { cassandra_serving; }
cassandra_setup() { true; }

# cql_secure <user> <password file> [cql_ping.py arguments]: CQL over TLS to cassandra-secure,
# the server certificate checked against the throwaway CA. Exit status as cql_ping.py's
# (0 answered, 1 protocol or server error, 2 not reachable, 3 credentials refused).
cql_secure() {
  local user=$1 password_file=$2
  shift 2
  python3 "$SCRIPT_DIR/cql_ping.py" --quiet --host "$HOST" --port "$CASSANDRA_SECURE_PORT" --timeout 10 \
    --tls --ca "$SECURE_DIR/ca.pem" --user "$user" --password-file "$password_file" "$@"
}

# cassandra-secure serves when user tally logs in over TLS and a query answers.
cassandra_secure_serving() {
  [[ -s $SECURE_DIR/cassandra-password ]] || return 1
  port_open "$CASSANDRA_SECURE_PORT" || return 1
  cql_secure "$SECURE_USER" "$SECURE_DIR/cassandra-password"
}

# Setup may start once TLS and authentication answer, even if they refuse tally (a fresh
# data folder has only the default superuser cassandra/cassandra).
cassandra_secure_answers() {
  [[ -s $SECURE_DIR/cassandra-password ]] || return 1
  port_open "$CASSANDRA_SECURE_PORT" || return 1
  local rc=0
  cql_secure "$SECURE_USER" "$SECURE_DIR/cassandra-password" || rc=$?
  ((rc == 0 || rc == 3))
}

# The role tally (LOGIN, SUPERUSER) with the password in secure/cassandra-password, made as
# the default superuser; then the default superuser's well-known password is replaced by the
# one in secure/cassandra-admin-password. Idempotent: each step is skipped once done. Ends
# with tally's login and query, which proves the instance serves.
cassandra_secure_setup() {
  local tally_file=$SECURE_DIR/cassandra-password admin_file=$SECURE_DIR/cassandra-admin-password
  local default_file=$CONF_DIR/cassandra-default-password rc=0 changed=0
  # The password every fresh Cassandra gives its superuser; no secret.
  printf cassandra >"$default_file"
  cql_secure "$SECURE_USER" "$tally_file" || rc=$?
  if ((rc == 3)); then
    local as_file
    if cql_secure cassandra "$default_file"; then
      as_file=$default_file
    elif cql_secure cassandra "$admin_file"; then
      as_file=$admin_file
    else
      # Right after the first start the default superuser may not exist yet: retried.
      SETUP_STATE="it refuses $SECURE_USER, and cassandra with both the default password and the one in"
      SETUP_STATE+=" $admin_file (a data folder made with other passwords? Then: services.sh down"
      SETUP_STATE+=" cassandra-secure; rm -rf $DATA_DIR/cassandra-secure)"
      return 1
    fi
    # The statements go through stdin, so the passwords are not on a command line.
    cql_secure cassandra "$as_file" - <<CQL || { SETUP_STATE="could not create role $SECURE_USER"; return 1; }
CREATE ROLE IF NOT EXISTS $SECURE_USER WITH PASSWORD = '$(secret cassandra-password)' AND LOGIN = true AND SUPERUSER = true
CQL
    # A role that existed with another password gets this one. (Not right after CREATE:
    # Cassandra 5 refuses a second password change of a role within 5 s.)
    if ! cql_secure "$SECURE_USER" "$tally_file"; then
      cql_secure cassandra "$as_file" - <<CQL || { SETUP_STATE="could not set the password of role $SECURE_USER"; return 1; }
ALTER ROLE $SECURE_USER WITH PASSWORD = '$(secret cassandra-password)' AND LOGIN = true AND SUPERUSER = true
CQL
    fi
    say "cassandra-secure: role $SECURE_USER (LOGIN, SUPERUSER) set up, password in $tally_file"
    changed=1
  elif ((rc != 0)); then
    SETUP_STATE="cql_ping.py exited with $rc as $SECURE_USER"
    return 1
  fi
  if cql_secure cassandra "$default_file"; then
    cql_secure "$SECURE_USER" "$tally_file" - <<CQL || { SETUP_STATE="could not change the password of role cassandra"; return 1; }
ALTER ROLE cassandra WITH PASSWORD = '$(secret cassandra-admin-password)'
CQL
    say "cassandra-secure: the default superuser cassandra has a new password, in $admin_file"
    changed=1
  fi
  ((changed == 0)) || cassandra_secure_serving || { SETUP_STATE="$SECURE_USER cannot log in after the setup"; return 1; }
}

# The JPMS argument file, shared by both instances and by Cassandra's own tools
# (java @.services/conf/cassandra-jpms.options -cp '.services/lib/cassandra/*' ...NodeTool).
# Cassandra reflects into JDK internals; without these it dies at once (IllegalAccessException
# in FileUtils, InaccessibleObjectException further on). The list is conf/jvm17-server.options
# of Cassandra 5.0, plus java.nio.
write_cassandra_jpms_options() {
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
}

# write_cassandra_yaml <instance> <cluster name> <cql port> <storage port> <security yaml>:
# conf/<instance>.yaml and conf/<instance>-logback.xml (logs/<instance>.log).
write_cassandra_yaml() {
  local instance=$1 cluster=$2 port=$3 storage_port=$4 security=$5 d=$DATA_DIR/$1
  cat >"$CONF_DIR/$instance.yaml" <<EOF
# Generated by scripts/services/services.sh - Cassandra $CASSANDRA_VERSION, one node (dev/test only).
cluster_name: $cluster
num_tokens: 1
partitioner: org.apache.cassandra.dht.Murmur3Partitioner
endpoint_snitch: SimpleSnitch
seed_provider:
  - class_name: org.apache.cassandra.locator.SimpleSeedProvider
    parameters:
      - seeds: "$HOST:$storage_port"
listen_address: $HOST
rpc_address: $HOST
storage_port: $storage_port
native_transport_port: $port
start_native_transport: true
auto_bootstrap: false
$security

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

  cat >"$CONF_DIR/$instance-logback.xml" <<EOF
<?xml version="1.0" encoding="UTF-8"?>
<!-- Generated by scripts/services/services.sh - Cassandra logs INFO to a file, nothing to the console. -->
<configuration scan="false" debug="false">
  <appender name="FILE" class="ch.qos.logback.core.rolling.RollingFileAppender">
    <file>$LOG_DIR/$instance.log</file>
    <rollingPolicy class="ch.qos.logback.core.rolling.FixedWindowRollingPolicy">
      <fileNamePattern>$LOG_DIR/$instance.log.%i.zip</fileNamePattern>
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

cassandra_write_config() {
  write_cassandra_jpms_options
  write_cassandra_yaml cassandra tally-dev "$CASSANDRA_PORT" "$CASSANDRA_STORAGE_PORT" \
    "authenticator: AllowAllAuthenticator
authorizer: AllowAllAuthorizer"
}

cassandra_secure_write_config() {
  write_cassandra_jpms_options
  # 0600: the yaml holds the keystore password.
  (umask 077 && write_cassandra_yaml cassandra-secure tally-dev-secure "$CASSANDRA_SECURE_PORT" \
    "$CASSANDRA_SECURE_STORAGE_PORT" "# Roles with passwords (bcrypt) and permissions; services.sh makes one login role,
# $SECURE_USER. Clients must speak TLS (optional: false): a plaintext connection is closed.
authenticator: PasswordAuthenticator
authorizer: CassandraAuthorizer
role_manager: CassandraRoleManager
client_encryption_options:
  enabled: true
  optional: false
  keystore: $SECURE_DIR/server.p12
  keystore_password: $(secret store-password)
  store_type: PKCS12
  require_client_auth: false")
}

# start_cassandra_instance <instance> <heap> <jmx port> [more JVM flags]
start_cassandra_instance() {
  local instance=$1 heap=$2 jmx_port=$3 d=$DATA_DIR/$1
  shift 3
  mkdir -p "$d/data" "$d/commitlog" "$d/saved_caches" "$d/hints" "$d/cdc_raw" "$d/triggers" "$STATE_DIR/tmp"

  local jvm=(
    -Xms"$heap" -Xmx"$heap" -Xss256k
    # GC, from conf/jvm17-server.options of Cassandra 5.0.
    -XX:+UseG1GC -XX:+ParallelRefProcEnabled -XX:MaxTenuringThreshold=1 -XX:G1HeapRegionSize=16m
    -XX:G1RSetUpdatingPauseTimePercent=5 -XX:MaxGCPauseMillis=300 -XX:InitiatingHeapOccupancyPercent=70
    # From conf/jvm-server.options.
    -XX:+UseThreadPriorities -XX:+UseTLAB -XX:+ResizeTLAB -XX:+PerfDisableSharedMem
    -XX:-RestrictContended -XX:StringTableSize=1000003 -XX:+ExitOnOutOfMemoryError
    -Djava.net.preferIPv4Stack=true -Dchronicle.analytics.disable=true
    # JPMS: Cassandra reflects into JDK internals; see write_cassandra_jpms_options.
    @"$CONF_DIR/cassandra-jpms.options"
    -Dio.netty.tryReflectionSetAccessible=true
    -Dio.netty.allocator.useCacheForAllThreads=true -Dio.netty.allocator.maxOrder=11
    # Where things live.
    -Dcassandra.config="file://$CONF_DIR/$instance.yaml"
    -Dcassandra.storagedir="$d"
    -Dcassandra.triggers_dir="$d/triggers"
    -Dcassandra.logdir="$LOG_DIR"
    -Dlogback.configurationFile="file://$CONF_DIR/$instance-logback.xml"
    -Djna.tmpdir="$STATE_DIR/tmp"
    -Dcassandra-foreground=yes
    # Local-only JMX, so NodeTool from lib/cassandra works.
    -Dcassandra.jmx.local.port="$jmx_port"
    # Fast single-node start (dev/test only): no gossip settling, short ring delay, no fsync
    # of system tables.
    -Dcassandra.skip_wait_for_gossip_to_settle=0
    -Dcassandra.ring_delay_ms=1000
    -Dcassandra.unsafesystem=true
    "$@"
  )
  # jamm measures object sizes; as an agent it uses Instrumentation instead of guessing.
  local jamm
  jamm=$(find "$LIB_DIR/cassandra" -maxdepth 1 -name 'jamm-*.jar' | head -n 1)
  [[ -n $jamm ]] && jvm+=(-javaagent:"$jamm")

  setsid nohup java "${jvm[@]}" -cp "$LIB_DIR/cassandra/*" "$CASSANDRA_MAIN" \
    >"$LOG_DIR/$instance.out" 2>&1 </dev/null 9>&- &
  echo $! >"$RUN_DIR/$instance.pid"
  say "$instance starting (pid $!)"
}

cassandra_start() { start_cassandra_instance cassandra "$CASSANDRA_HEAP" "$CASSANDRA_JMX_PORT"; }

# The default superuser is made at once rather than after the usual 10 s (dev/test only).
cassandra_secure_start() {
  start_cassandra_instance cassandra-secure "$CASSANDRA_SECURE_HEAP" "$CASSANDRA_SECURE_JMX_PORT" \
    -Dcassandra.superuser_setup_delay_ms=0
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

# What the last setup attempt of a service saw; printed if the wait for it times out.
SETUP_STATE=""

# config_stamp <service>: a digest of what the service reads when it starts (its config and,
# behind the secure listeners, the server certificate). run/<service>.config keeps the one
# it was started with.
config_stamp() {
  local files=("$(service_config "$1")")
  [[ $1 == cassandra ]] || files+=("$SECURE_DIR/server.pem")
  cat "${files[@]}" | sha256sum | cut -d' ' -f1
}

# stale_reason <service>: prints why the running service is not what `up` would start now.
stale_reason() {
  local stamp=$RUN_DIR/$1.config
  if [[ -f $stamp ]]; then
    [[ $(<"$stamp") == "$(config_stamp "$1")" ]] || echo "its config or certificate changed since it started"
  elif [[ $1 == kafka ]] && port_open "$KAFKA_PORT" && ! port_open "$KAFKA_SASL_PORT"; then
    echo "no SASL_SSL listener on $HOST:$KAFKA_SASL_PORT, so started by an older services.sh"
  fi
}

# wait_serving <service> <timeout> <started-at>: once the service answers requests, run its
# setup (users, roles), which ends with the real probe; retried until it succeeds, the
# process dies, or the time is up.
wait_serving() {
  local service=$1 limit=$2 started=$3 pid where
  where=$(service_where "$service")
  SETUP_STATE=""
  while true; do
    if call "$service" answers && call "$service" setup; then
      pid=$(our_pid "$service" || true)
      say "$service serving on $where (pid ${pid:-?}, after $(($(now) - started)) s, rss $(rss_of "${pid:-0}"))"
      return 0
    fi
    if ! pid=$(our_pid "$service"); then
      say "$service exited before serving on $where"
      show_log_tail "$service"
      return 1
    fi
    if (($(now) - started >= limit)); then
      say "$service did not serve on $where within $limit s (still running as pid $pid; '$0 down $service' stops it)"
      [[ -z $SETUP_STATE ]] || say "$service setup: $SETUP_STATE"
      show_log_tail "$service"
      return 1
    fi
    sleep 1
  done
}

cmd_up() {
  need_cmd java "to run Kafka and Cassandra (install a JDK 17)"
  local service pid port reason to_wait=()
  local -A started=()
  if [[ " ${SERVICES[*]} " != " cassandra " ]]; then
    ensure_secure_material  # Kafka's SASL_SSL listener and cassandra-secure need it
  fi
  for service in "${SERVICES[@]}"; do
    call "$service" fetch
  done
  # All JVMs start before we wait on any: on 2 cores this is faster than one after the other.
  for service in "${SERVICES[@]}"; do
    port=$(service_port "$service")
    call "$service" write_config
    if pid=$(our_pid "$service"); then
      reason=$(stale_reason "$service")
      [[ -z $reason ]] ||
        die "$service (pid $pid) runs with an older setup: $reason; restart it: $0 down $service && $0 up $service"
      if call "$service" serving; then
        say "$service already serving on $(service_where "$service") (pid $pid)"
      else
        say "$service already running (pid $pid), not serving yet; waiting"
        to_wait+=("$service")
        started[$service]=$(now)
      fi
    elif port_open "$port"; then
      if call "$service" serving; then
        say "$service already serving on $(service_where "$service"), but not started by this script (no pid file in $RUN_DIR); not starting another"
      elif [[ $service == kafka ]] && kafka_answers; then
        # Another checkout's broker, say: its PLAINTEXT listener serves as ever, but its
        # user tally has the password in that checkout's state folder, not in this one.
        say "kafka already serving on $HOST:$KAFKA_PORT (PLAINTEXT), but not started by this script (no pid file in $RUN_DIR); not starting another. $(foreign_kafka_note)"
      else
        die "$HOST:$port is taken by a process that is not $service started by this script; not starting $service (if another checkout's services.sh started it, set TALLY_SERVICES_DIR to that checkout's .services)"
      fi
    else
      for port in $(service_ports "$service"); do
        ! port_open "$port" || die "$HOST:$port, which $service needs, is taken by another process; not starting $service"
      done
      started[$service]=$(now)
      mark_log_start "$service"
      call "$service" start
      config_stamp "$service" >"$RUN_DIR/$service.config"
      to_wait+=("$service")
    fi
  done
  ((${#to_wait[@]})) || return 0
  say "logs in $LOG_DIR: $(printf '%s.log ' "${to_wait[@]}")(JVM stdout/stderr in *.out)"
  local failed=0
  for service in "${to_wait[@]}"; do
    wait_serving "$service" "$(service_timeout "$service")" "${started[$service]}" || failed=1
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
  # A JVM whose main thread has exited reads as a zombie while its other threads still
  # shut down and hold its ports (an `up` right after once found JMX's 7199 taken): it
  # has stopped once none of its ports accepts connections any more.
  local port
  for port in $(service_ports "$service"); do
    while port_open "$port" && (($(now) - started < STOP_TIMEOUT)); do
      sleep 0.5
    done
  done
  rm -f "$RUN_DIR/$service.pid" "$RUN_DIR/$service.config"
  say "$service stopped (pid $pid, in $(($(now) - started)) s)"
}

cmd_down() {  # all at once: each Cassandra takes seconds to drain
  local service
  for service in "${SERVICES[@]}"; do
    stop_one "$service" &
  done
  wait
}

foreign_kafka_note() {
  echo "Its SASL_SSL listener on $HOST:$KAFKA_SASL_PORT does not take user $SECURE_USER with the password in" \
    "$SECURE_DIR/kafka-password: for the secure listeners, set TALLY_SERVICES_DIR to the .services of the checkout that started it."
}

# OPTIONAL: services that `status` without an argument reports but does not require.
OPTIONAL=()

cmd_status() {
  local service pid port where reason state all_serving=0
  for service in "${SERVICES[@]}"; do
    port=$(service_port "$service")
    where=$(service_where "$service")
    if pid=$(our_pid "$service"); then
      if call "$service" serving; then state="serving on $where"; else state="NOT serving on $where"; all_serving=1; fi
      reason=$(stale_reason "$service")
      [[ -z $reason ]] || state+="; runs with an older setup ($reason): restart it"
      say "$service running (pid $pid, rss $(rss_of "$pid")), $state"
    elif port_open "$port" && call "$service" serving; then
      say "$service serving on $where, not started by this script"
    elif [[ $service == kafka ]] && port_open "$port" && kafka_answers; then
      say "kafka serving on $HOST:$KAFKA_PORT (PLAINTEXT), not started by this script. $(foreign_kafka_note)"
    elif port_open "$port"; then
      say "$service not serving: $HOST:$port is taken by a process not started by this script (another checkout's? then set TALLY_SERVICES_DIR to its .services)"
      [[ " ${OPTIONAL[*]} " == *" $service "* ]] || all_serving=1
    elif [[ " ${OPTIONAL[*]} " == *" $service "* ]]; then
      say "$service stopped ('$0 up-secure' starts it)"
    else
      say "$service stopped"
      all_serving=1
    fi
  done
  return "$all_serving"
}

usage() {
  echo "usage: $0 up|down|status [kafka|cassandra|cassandra-secure]  |  $0 up-secure" >&2
  exit 2
}

main() {
  local cmd=${1:-}
  local only=${2:-${TALLY_SERVICES:-}}
  case $cmd in
    up-secure)
      [[ -z ${2:-} ]] || usage
      cmd=up
      only=cassandra-secure
      ;;
    up | down | status) ;;
    *) usage ;;
  esac
  case $only in
    "" | all)
      case $cmd in
        up) SERVICES=(kafka cassandra) ;;
        down) SERVICES=(kafka cassandra cassandra-secure) ;;
        status) SERVICES=(kafka cassandra cassandra-secure) OPTIONAL=(cassandra-secure) ;;
      esac
      ;;
    kafka | cassandra | cassandra-secure) SERVICES=("$only") ;;
    *) die "unknown service '$only' (expected kafka, cassandra or cassandra-secure)" ;;
  esac
  if [[ $cmd != down && " ${SERVICES[*]} " == *" cassandra"* ]]; then
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
  esac
}

main "$@"
