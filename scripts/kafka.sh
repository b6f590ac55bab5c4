#!/usr/bin/env bash
# A real single-node Apache Kafka 4.x broker (KRaft, broker+controller in one JVM) for
# development, tests and CI: fetch it, configure it, start it, stop it, print its
# environment. Needs only bash, coreutils, Java 17+ and Maven. Run with -h for the details.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: scripts/kafka.sh start [--fresh] | stop | status | env [--plain] | -h

A single-node Apache Kafka 4.x broker on loopback, for development, tests and CI.

  start    Fetch Kafka from Maven Central into a cache (first time only), format the
           storage (first time only), start the broker in the background and wait until
           it answers through every listener (Kafka's own kafka-broker-api-versions tool,
           logging in over SASL and TLS). Progress goes to stderr; stdout gets
           KEY=value lines, the last one is KAFKA_BROKERS=127.0.0.1:<port>.
           A broker this script already started is left running (and reported).
           --fresh (or KAFKA_FRESH=1) stops it and wipes its data first.
  stop     Stop the broker this script started (SIGTERM, SIGKILL after 30 s).
           The data is kept: the next start brings the same topics back on the same port.
  status   Print whether the broker is running; exit 0 if it is, 1 if not.
  env      Print `export KEY=value` lines for a running broker, for
           eval "$(scripts/kafka.sh env)". With --plain: bare KEY=value lines.
           KAFKA_BROKERS, plus KAFKA_SASL_BROKERS, KAFKA_SASL_USERNAME and
           KAFKA_SASL_PASSWORD with a SASL listener, and KAFKA_TLS_BROKERS and KAFKA_TLS_CA
           (the absolute path of the PEM certificate to trust) with a TLS listener.
           Exit 1 if no broker is running.

Environment:
  KAFKA_PORT            PLAINTEXT listener port (default 9092; 0 = pick a free one).
                        On a restart, 0 or unset reuses the port of the previous start.
  KAFKA_SASL_PORT       If set, also open a SASL_PLAINTEXT listener on this port
                        (0 = pick a free one) with SCRAM-SHA-512, SCRAM-SHA-256 and PLAIN.
                        On a restart, unset keeps the listener (and port) of the previous
                        start; --fresh forgets it.
  KAFKA_TLS_PORT        If set, also open an SSL (TLS, no client certificate) listener on
                        this port (0 = pick a free one). Its self-signed certificate (SAN
                        127.0.0.1 and localhost) is made once per state dir with Java's
                        keytool; clients trust tls/ca.pem. On a restart, unset keeps the
                        listener (and port) of the previous start; --fresh forgets it and
                        makes a new certificate.
  KAFKA_SASL_USERNAME   SASL user created at format time (default presence).
  KAFKA_SASL_PASSWORD   its password (default presence-secret; no '"' or '\').
  KAFKA_CONTROLLER_PORT KRaft controller listener port (default: a free one, kept).
  KAFKA_FRESH=1         same as start --fresh.
  KAFKA_VERSION         Kafka version to use (default: the newest of a tested list).
  KAFKA_CACHE_DIR       where the jars go
                        (default $HOME/.cache/presence-bridge/kafka-<version>).
  KAFKA_STATE_DIR       config, data, pid and logs (default <repo>/target/kafka).
  KAFKA_HEAP            maximum heap (default 512m).
  KAFKA_START_TIMEOUT   seconds to wait for the broker to answer (default 90).
  KAFKA_REQUEST_LOG=1   log every request (kafka.request.logger at DEBUG) to
                        <state>/logs/kafka-request.log.
  KAFKA_MVN_ARGS        extra arguments for mvn (e.g. -Dmaven.repo.local=/some/dir).

Files in the state dir: server.properties, log4j2.xml, data/, logs/server.log,
logs/ready-{plain,sasl,tls}.log (each listener's last answer at start), kafka.out (JVM
stdout/stderr), kafka.pid, ports.env, credentials.env, client-{plain,sasl,tls}.properties
(client settings per listener, e.g. for --command-config of Kafka's tools), tls/ (keystore,
its password, ca.pem).
EOF
}

# Newest first. The first one that is already cached is used; otherwise the first one
# Maven can fetch. Override with KAFKA_VERSION.
KAFKA_VERSIONS_DEFAULT="4.4.0 4.3.1 4.2.2 4.1.2 4.0.2"
LOG4J_VERSION="${KAFKA_LOG4J_VERSION:-2.25.5}"
DEPENDENCY_PLUGIN_VERSION="3.8.1"

SCRIPT_DIR="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd -- "$SCRIPT_DIR/.." && pwd)"
STATE_DIR="${KAFKA_STATE_DIR:-$REPO_ROOT/target/kafka}"
PID_FILE="$STATE_DIR/kafka.pid"
PORTS_FILE="$STATE_DIR/ports.env"
CREDS_FILE="$STATE_DIR/credentials.env"
DATA_DIR="$STATE_DIR/data"
LOG_DIR="$STATE_DIR/logs"
CONFIG_FILE="$STATE_DIR/server.properties"
LOG4J_FILE="$STATE_DIR/log4j2.xml"
OUT_FILE="$STATE_DIR/kafka.out"
STATE_MARKER="$STATE_DIR/.kafka-sh-state"
TLS_DIR="$STATE_DIR/tls"
TLS_KEYSTORE="$TLS_DIR/broker.p12"
TLS_PASSWORD_FILE="$TLS_DIR/keystore.password"
TLS_CA_FILE="$TLS_DIR/ca.pem"

SASL_USER="${KAFKA_SASL_USERNAME:-presence}"
SASL_PASSWORD="${KAFKA_SASL_PASSWORD:-presence-secret}"
START_TIMEOUT="${KAFKA_START_TIMEOUT:-90}"
HEAP="${KAFKA_HEAP:-512m}"

log() { printf 'kafka.sh: %s\n' "$*" >&2; }
die() { printf 'kafka.sh: error: %s\n' "$*" >&2; exit 1; }

# ---------------------------------------------------------------------------------------
# Fetching Kafka

cache_dir_for() { printf '%s\n' "${KAFKA_CACHE_DIR:-$HOME/.cache/presence-bridge/kafka-$1}"; }

# A cache is complete when its stamp names the version (written last, after the jars).
cache_complete() {
  [[ -f "$1/complete.stamp" ]] && [[ "$(head -n1 "$1/complete.stamp")" == "kafka $2" ]]
}

write_fetch_pom() {
  cat >"$1" <<EOF
<?xml version="1.0" encoding="UTF-8"?>
<!-- Generated by scripts/kafka.sh: the runtime classpath of a Kafka broker and its tools. -->
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>local.presence-bridge</groupId>
  <artifactId>kafka-runtime</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencyManagement>
    <dependencies>
      <dependency>
        <groupId>org.apache.logging.log4j</groupId>
        <artifactId>log4j-bom</artifactId>
        <version>$LOG4J_VERSION</version>
        <type>pom</type>
        <scope>import</scope>
      </dependency>
    </dependencies>
  </dependencyManagement>
  <dependencies>
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka_2.13</artifactId>
      <version>$2</version>
    </dependency>
    <!-- The command line tools (kafka-broker-api-versions, which start uses to see that the
         broker answers; topics, console producer/consumer); Kafka Connect is left out. -->
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka-tools</artifactId>
      <version>$2</version>
      <exclusions>
        <exclusion>
          <groupId>org.apache.kafka</groupId>
          <artifactId>connect-runtime</artifactId>
        </exclusion>
      </exclusions>
    </dependency>
    <!-- Kafka logs through slf4j 1.7; route it to log4j2 as Kafka's distribution does. -->
    <dependency>
      <groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-slf4j-impl</artifactId>
    </dependency>
    <dependency>
      <groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-core</artifactId>
    </dependency>
  </dependencies>
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
}

# fetch_kafka DIR VERSION: download the jars into DIR/libs; returns non-zero on failure.
fetch_kafka() {
  local dir=$1 version=$2 work=$1/.fetch
  local -a extra=()
  command -v mvn >/dev/null 2>&1 || die "mvn (Apache Maven) is needed to fetch Kafka"
  rm -rf "$work" "$dir/libs" "$dir/complete.stamp"
  mkdir -p "$work"
  write_fetch_pom "$work/pom.xml" "$version"
  log "fetching Apache Kafka $version and its dependencies from Maven Central into $dir"
  if [[ -n "${KAFKA_MVN_ARGS:-}" ]]; then read -r -a extra <<<"$KAFKA_MVN_ARGS"; fi
  if ! mvn -B -q -f "$work/pom.xml" "${extra[@]}" \
    dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$work/libs" \
    >"$work/mvn.log" 2>&1; then
    log "maven could not fetch Kafka $version (log: $work/mvn.log):"
    tail -n 15 "$work/mvn.log" >&2 || true
    return 1
  fi
  [[ -f "$work/libs/kafka_2.13-$version.jar" ]] || { log "kafka_2.13-$version.jar missing after fetch"; return 1; }
  mv "$work/libs" "$dir/libs"
  { printf 'kafka %s\n' "$version" && ls "$dir/libs"; } >"$dir/complete.stamp.tmp"
  mv "$dir/complete.stamp.tmp" "$dir/complete.stamp"
  rm -rf "$work"
}

# Sets KAFKA_VERSION_USED and KAFKA_LIBS: the first cached version, else the first fetched.
ensure_kafka() {
  local candidates="${KAFKA_VERSION:-$KAFKA_VERSIONS_DEFAULT}" version pass
  for pass in cached fetch; do
    for version in $candidates; do
      if cache_complete "$(cache_dir_for "$version")" "$version" ||
        { [[ $pass == fetch ]] && fetch_kafka "$(cache_dir_for "$version")" "$version"; }; then
        KAFKA_VERSION_USED=$version KAFKA_LIBS="$(cache_dir_for "$version")/libs"
        return 0
      fi
    done
  done
  die "could not fetch Apache Kafka (tried: $candidates)"
}

check_java() {
  command -v java >/dev/null 2>&1 || die "java (17 or newer) is needed"
  local line major
  line="$(java -version 2>&1 | head -n1)"
  major="$(sed -E 's/.*version "([0-9]+)(\.[0-9]+)?.*/\1/' <<<"$line")"
  if [[ "$major" == 1 ]]; then major=8; fi
  if ! [[ "$major" =~ ^[0-9]+$ ]] || ((major < 17)); then
    die "Kafka 4 needs Java 17 or newer, found: $line"
  fi
}

# ---------------------------------------------------------------------------------------
# Ports

# Whether something accepts connections on 127.0.0.1:PORT (where the broker binds).
port_listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# free_port AVOID...: a free loopback port below the ephemeral range, so that outgoing
# connections do not take it.
free_port() {
  local port i avoid=" $* "
  for ((i = 0; i < 200; i++)); do
    port=$((20000 + RANDOM % 12000))
    [[ "$avoid" == *" $port "* ]] && continue
    port_listening "$port" || { printf '%s\n' "$port"; return 0; }
  done
  die "no free port found"
}

# pick_port WANTED SAVED AVOID...: WANTED unless it is empty or 0, else the port SAVED by the
# previous start unless another listener here has it, else a free one.
pick_port() {
  local wanted=$1 saved=$2
  shift 2
  if [[ -n "$wanted" && "$wanted" != 0 ]]; then
    printf '%s\n' "$wanted"
  elif [[ -n "$saved" && " $* " != *" $saved "* ]]; then
    printf '%s\n' "$saved"
  else
    free_port "$@"
  fi
}

# ---------------------------------------------------------------------------------------
# Process bookkeeping

# Prints the pid of the broker this script started for this state dir, if it is alive.
running_pid() {
  local pid cmdline
  [[ -f "$PID_FILE" ]] || return 1
  pid="$(tr -dc '0-9' <"$PID_FILE")"
  [[ -n "$pid" ]] || return 1
  if [[ -r "/proc/$pid/cmdline" ]]; then
    cmdline="$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null)" || return 1
  else
    cmdline="$(ps -o args= -p "$pid" 2>/dev/null)" || return 1
  fi
  [[ "$cmdline" == *java* && "$cmdline" == *" kafka.Kafka "* && "$cmdline" == *"$CONFIG_FILE"* ]] || return 1
  printf '%s\n' "$pid"
}

# read_env FILE PREFIX: each KEY=value line of FILE as the variable PREFIX_KEY (never
# evaluated: the password may hold any character but '"' and '\').
read_env() {
  local key value
  [[ -f "$1" ]] || return 0
  while IFS='=' read -r key value; do
    if [[ "$key" =~ ^[A-Z_]+$ ]]; then printf -v "$2_$key" '%s' "$value"; fi
  done <"$1"
}

load_ports() {
  SAVED_PORT="" SAVED_CONTROLLER_PORT="" SAVED_SASL_PORT="" SAVED_TLS_PORT=""
  read_env "$PORTS_FILE" SAVED
}

# The SASL user and password the storage was formatted with.
load_creds() {
  FORMATTED_USERNAME="" FORMATTED_PASSWORD=""
  read_env "$CREDS_FILE" FORMATTED
}

# The ports of the running broker, from its config (empty for a listener it does not have).
running_port() {
  sed -n 's#^listeners=.*PLAINTEXT://127\.0\.0\.1:\([0-9]*\),CONTROLLER.*#\1#p' "$CONFIG_FILE" 2>/dev/null
}
running_sasl_port() {
  sed -n 's#^listeners=.*SASL_PLAINTEXT://127\.0\.0\.1:\([0-9]*\).*#\1#p' "$CONFIG_FILE" 2>/dev/null
}
running_tls_port() {
  sed -n 's#^listeners=.*,SSL://127\.0\.0\.1:\([0-9]*\).*#\1#p' "$CONFIG_FILE" 2>/dev/null
}

print_env() {
  local prefix=$1 port=$2 sasl_port=$3 tls_port=$4
  if [[ -n "$sasl_port" ]]; then
    printf '%sKAFKA_SASL_BROKERS=%q\n' "$prefix" "127.0.0.1:$sasl_port"
    printf '%sKAFKA_SASL_USERNAME=%q\n' "$prefix" "$FORMATTED_USERNAME"
    printf '%sKAFKA_SASL_PASSWORD=%q\n' "$prefix" "$FORMATTED_PASSWORD"
  fi
  if [[ -n "$tls_port" ]]; then
    printf '%sKAFKA_TLS_BROKERS=%q\n' "$prefix" "127.0.0.1:$tls_port"
    printf '%sKAFKA_TLS_CA=%q\n' "$prefix" "$(tls_ca_path)"
  fi
  printf '%sKAFKA_BROKERS=%q\n' "$prefix" "127.0.0.1:$port"
}

lock_state() {
  mkdir -p "$STATE_DIR"
  if command -v flock >/dev/null 2>&1; then
    exec 9>"$STATE_DIR/.lock"
    flock -w 120 9 || die "another scripts/kafka.sh is busy with $STATE_DIR"
  fi
}

# stop_pid PID: SIGTERM, wait up to 30 s, then SIGKILL.
stop_pid() {
  local pid=$1 i
  kill -TERM "$pid" 2>/dev/null || return 0
  for ((i = 0; i < 300; i++)); do
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 0.1
  done
  log "broker (pid $pid) did not stop within 30 s; sending SIGKILL"
  kill -KILL "$pid" 2>/dev/null || true
  for ((i = 0; i < 50; i++)); do
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 0.1
  done
  die "could not stop pid $pid"
}

wipe_state() {
  [[ -d "$STATE_DIR" ]] || return 0
  # Only a dir this script created (or an empty one) is wiped.
  local entry
  if [[ ! -f "$STATE_MARKER" ]]; then
    for entry in "$STATE_DIR"/* "$STATE_DIR"/.[!.]*; do
      if [[ -e "$entry" && "$entry" != "$STATE_DIR/.lock" ]]; then
        die "$STATE_DIR does not look like a scripts/kafka.sh state dir; not wiping it"
      fi
    done
  fi
  log "wiping $STATE_DIR"
  rm -rf "$DATA_DIR" "$LOG_DIR" "$PORTS_FILE" "$CREDS_FILE" "$CONFIG_FILE" "$LOG4J_FILE" \
    "$OUT_FILE" "$PID_FILE" "$TLS_DIR" "$STATE_DIR"/client-*.properties
}

# ---------------------------------------------------------------------------------------
# Configuring

write_config() {
  local port=$1 cport=$2 sport=$3 tport=$4 more protocols
  more="${sport:+,SASL_PLAINTEXT://127.0.0.1:$sport}${tport:+,SSL://127.0.0.1:$tport}"
  protocols="PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT${sport:+,SASL_PLAINTEXT:SASL_PLAINTEXT}${tport:+,SSL:SSL}"
  cat >"$CONFIG_FILE.tmp" <<EOF
# Generated by scripts/kafka.sh on every start; edits are overwritten.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$cport
controller.listener.names=CONTROLLER
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$cport$more
advertised.listeners=PLAINTEXT://127.0.0.1:$port$more
listener.security.protocol.map=$protocols
inter.broker.listener.name=PLAINTEXT

log.dirs=$DATA_DIR
num.partitions=1
default.replication.factor=1
min.insync.replicas=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
share.coordinator.state.topic.num.partitions=1
group.initial.rebalance.delay.ms=0
# The consumer-group protocol (KIP-848) with a short session: a killed bridge instance's
# partitions move within seconds, not the broker's default 45 s (docs/decisions/0002).
group.consumer.min.session.timeout.ms=2000
group.consumer.session.timeout.ms=6000
group.consumer.min.heartbeat.interval.ms=500
group.consumer.heartbeat.interval.ms=1000
auto.create.topics.enable=true

# Small segments and short retention: this broker is for tests.
log.segment.bytes=1048576
log.retention.ms=3600000
log.retention.bytes=268435456
log.retention.check.interval.ms=30000
log.cleaner.dedupe.buffer.size=16777216
log.cleaner.backoff.ms=5000

num.network.threads=2
num.io.threads=4
num.recovery.threads.per.data.dir=1
EOF
  if [[ -n "$sport" ]]; then
    cat >>"$CONFIG_FILE.tmp" <<EOF

# SASL_PLAINTEXT listener; users are SCRAM credentials stored in the cluster metadata
# (created at format time) and, for PLAIN, the user_<name> entry below.
sasl.enabled.mechanisms=SCRAM-SHA-512,SCRAM-SHA-256,PLAIN
listener.name.sasl_plaintext.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.sasl_plaintext.scram-sha-256.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.sasl_plaintext.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required user_$FORMATTED_USERNAME="$FORMATTED_PASSWORD";
EOF
  fi
  if [[ -n "$tport" ]]; then
    local tls_password
    tls_password="$(cat "$TLS_PASSWORD_FILE")"
    cat >>"$CONFIG_FILE.tmp" <<EOF

# SSL listener: server authentication only, with the self-signed certificate in
# $TLS_KEYSTORE (clients trust $TLS_CA_FILE).
ssl.keystore.type=PKCS12
ssl.keystore.location=$TLS_KEYSTORE
ssl.keystore.password=$tls_password
ssl.key.password=$tls_password
ssl.client.auth=none
EOF
  fi
  mv "$CONFIG_FILE.tmp" "$CONFIG_FILE"

  local request_level=WARN
  [[ "${KAFKA_REQUEST_LOG:-0}" == 1 ]] && request_level=DEBUG
  cat >"$LOG4J_FILE" <<EOF
<?xml version="1.0" encoding="UTF-8"?>
<!-- Generated by scripts/kafka.sh. Everything goes to files under kafka.logs.dir. -->
<Configuration status="WARN" name="kafka.sh">
  <Appenders>
    <RollingFile name="server" fileName="\${sys:kafka.logs.dir}/server.log"
                 filePattern="\${sys:kafka.logs.dir}/server.log.%i">
      <PatternLayout pattern="[%d] %p %m (%c)%n"/>
      <SizeBasedTriggeringPolicy size="20 MB"/>
      <DefaultRolloverStrategy max="2"/>
    </RollingFile>
    <RollingFile name="request" fileName="\${sys:kafka.logs.dir}/kafka-request.log"
                 filePattern="\${sys:kafka.logs.dir}/kafka-request.log.%i">
      <PatternLayout pattern="[%d] %p %m (%c)%n"/>
      <SizeBasedTriggeringPolicy size="50 MB"/>
      <DefaultRolloverStrategy max="2"/>
    </RollingFile>
  </Appenders>
  <Loggers>
    <Root level="INFO">
      <AppenderRef ref="server"/>
    </Root>
    <Logger name="kafka.request.logger" level="$request_level" additivity="false">
      <AppenderRef ref="request"/>
    </Logger>
    <Logger name="kafka.network.RequestChannel\$" level="WARN"/>
    <Logger name="org.apache.kafka.common.config.AbstractConfig" level="WARN"/>
  </Loggers>
</Configuration>
EOF

  # What a client needs for each listener; start hands these to kafka-broker-api-versions.
  (
    umask 077
    printf 'request.timeout.ms=5000\n' >"$STATE_DIR/client-plain.properties"
    if [[ -n "$sport" ]]; then
      printf '%s\n' "security.protocol=SASL_PLAINTEXT" "sasl.mechanism=SCRAM-SHA-512" \
        "sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username=\"$FORMATTED_USERNAME\" password=\"$FORMATTED_PASSWORD\";" \
        "request.timeout.ms=5000" >"$STATE_DIR/client-sasl.properties"
    fi
    if [[ -n "$tport" ]]; then
      printf '%s\n' "security.protocol=SSL" "ssl.truststore.type=PEM" \
        "ssl.truststore.location=$(tls_ca_path)" "request.timeout.ms=5000" \
        >"$STATE_DIR/client-tls.properties"
    fi
  )
}

# The PEM certificate clients trust, as an absolute path.
tls_ca_path() {
  local dir
  dir="$(cd -- "$TLS_DIR" 2>/dev/null && pwd)" || dir=$TLS_DIR
  printf '%s/%s\n' "$dir" "${TLS_CA_FILE##*/}"
}

# ensure_tls_cert: a self-signed key pair (SAN 127.0.0.1, localhost) in a PKCS12 keystore
# and its certificate as PEM, made once per state dir. The keystore password is random and
# only ever in files (never on a command line or in the logs).
ensure_tls_cert() {
  if [[ -s "$TLS_KEYSTORE" && -s "$TLS_PASSWORD_FILE" && -s "$TLS_CA_FILE" ]]; then
    return 0
  fi
  command -v keytool >/dev/null 2>&1 || die "keytool (part of Java) is needed for the TLS listener"
  rm -rf "$TLS_DIR"
  mkdir -p "$TLS_DIR"
  chmod 700 "$TLS_DIR"
  (umask 077 && head -c 24 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' >"$TLS_PASSWORD_FILE")
  [[ "$(wc -c <"$TLS_PASSWORD_FILE")" -ge 16 ]] || die "could not make a keystore password"
  log "making a self-signed TLS certificate for 127.0.0.1/localhost in $TLS_DIR"
  if ! keytool -genkeypair -alias broker -keyalg RSA -keysize 2048 -validity 3650 \
    -dname "CN=localhost, O=presence-bridge scripts/kafka.sh" \
    -ext "SAN=ip:127.0.0.1,dns:localhost" \
    -storetype PKCS12 -keystore "$TLS_KEYSTORE" -storepass:file "$TLS_PASSWORD_FILE" \
    >"$TLS_DIR/keytool.log" 2>&1 ||
    ! keytool -exportcert -rfc -alias broker -keystore "$TLS_KEYSTORE" -storetype PKCS12 \
      -storepass:file "$TLS_PASSWORD_FILE" -file "$TLS_CA_FILE.tmp" >>"$TLS_DIR/keytool.log" 2>&1; then
    cat "$TLS_DIR/keytool.log" >&2
    rm -f "$TLS_KEYSTORE" "$TLS_CA_FILE.tmp"
    die "keytool could not make the TLS certificate"
  fi
  mv "$TLS_CA_FILE.tmp" "$TLS_CA_FILE"
}

format_storage() {
  local cluster_id
  # A KRaft cluster id: 16 random bytes, URL-safe base64, not starting with '-'.
  while :; do
    cluster_id="$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n')"
    [[ "$cluster_id" != -* && ${#cluster_id} -eq 22 ]] && break
  done
  log "formatting $DATA_DIR (cluster id $cluster_id, SCRAM user $FORMATTED_USERNAME)"
  local scram="[name=$FORMATTED_USERNAME,password=\"$FORMATTED_PASSWORD\"]"
  if ! java -Xmx256m -Dlog4j2.configurationFile="$LOG4J_FILE" -Dkafka.logs.dir="$LOG_DIR" \
    -cp "$KAFKA_LIBS/*" kafka.tools.StorageTool format \
    --config "$CONFIG_FILE" --cluster-id "$cluster_id" \
    --add-scram "SCRAM-SHA-512=$scram" --add-scram "SCRAM-SHA-256=$scram" \
    >"$LOG_DIR/format.log" 2>&1; then
    cat "$LOG_DIR/format.log" >&2
    die "formatting the storage failed"
  fi
}

# ---------------------------------------------------------------------------------------
# Starting

# answers NAME PORT: Kafka's own kafka-broker-api-versions, connecting to that listener
# with client-NAME.properties (so logging in over SASL, or over TLS trusting ca.pem), finds
# our broker there, unfenced, and gets its API versions. Its output: logs/ready-NAME.log.
answers() {
  local out="$LOG_DIR/ready-$1.log"
  # Polling the port first is cheap; the tool starts a JVM.
  port_listening "$2" || return 1
  timeout 30 java -Xmx64m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 \
    -cp "$KAFKA_LIBS/*" org.apache.kafka.tools.BrokerApiVersionsCommand \
    --bootstrap-server "127.0.0.1:$2" --command-config "$STATE_DIR/client-$1.properties" \
    >"$out" 2>&1 || return 1
  grep -q "^127\.0\.0\.1:$2 (id: " "$out" && ! grep -q "isFenced: true" "$out"
}

# wait_until_ready PID PORT SASL_PORT TLS_PORT: asks every listener, all at once, until each
# has answered, the broker exits or START_TIMEOUT passes (then the broker is stopped).
wait_until_ready() {
  local pid=$1 deadline=$((SECONDS + START_TIMEOUT)) i
  local -a waiting=("plain $2" ${3:+"sasl $3"} ${4:+"tls $4"}) asking left
  rm -f "$LOG_DIR"/ready-*.log
  while :; do
    asking=() left=()
    for i in "${!waiting[@]}"; do
      answers ${waiting[$i]} &
      asking[i]=$!
    done
    for i in "${!waiting[@]}"; do
      wait "${asking[$i]}" || left+=("${waiting[$i]}")
    done
    ((${#left[@]})) || return 0
    waiting=("${left[@]}")
    if ! kill -0 "$pid" 2>/dev/null; then
      rm -f "$PID_FILE"
      show_logs
      die "the broker exited during startup"
    fi
    if ((SECONDS >= deadline)); then
      show_logs
      for i in "${waiting[@]}"; do
        if [[ -f "$LOG_DIR/ready-${i% *}.log" ]]; then
          log "last answer of kafka-broker-api-versions on the ${i% *} listener:"
          tail -n 5 "$LOG_DIR/ready-${i% *}.log" >&2
        else
          log "nothing listens on the ${i% *} listener's port 127.0.0.1:${i#* }"
        fi
      done
      stop_pid "$pid" || true
      rm -f "$PID_FILE"
      die "the broker did not answer on 127.0.0.1:${waiting[0]#* } within ${START_TIMEOUT}s (stopped it)"
    fi
    sleep 0.3
  done
}

show_logs() {
  log "last lines of $LOG_DIR/server.log (this start):"
  tail -n "+$((${LOG_START_LINE:-0} + 1))" "$LOG_DIR/server.log" 2>/dev/null | tail -n 30 >&2 || true
  if [[ -s "$OUT_FILE" ]]; then
    log "last lines of $OUT_FILE:"
    tail -n 15 "$OUT_FILE" >&2 || true
  fi
}

# same_listener NAME WANTED RUNNING PID: asking a running broker for a listener it does not
# have, or on another port, is an error.
same_listener() {
  local name=$1 wanted=$2 running=$3 pid=$4
  [[ -z "$wanted" ]] && return 0
  [[ -n "$running" ]] ||
    die "the running broker (pid $pid) has no $name listener; run scripts/kafka.sh stop, then start with KAFKA_${name}_PORT"
  [[ "$wanted" == 0 || "$wanted" == "$running" ]] ||
    die "the running broker (pid $pid) has its $name listener on port $running, not $wanted"
}

# ---------------------------------------------------------------------------------------
# Commands

cmd_start() {
  local fresh=${KAFKA_FRESH:-0} var value pid
  while (($#)); do
    case "$1" in
      --fresh) fresh=1 ;;
      -h | --help) usage; exit 0 ;;
      *) die "unknown option for start: $1" ;;
    esac
    shift
  done
  for var in KAFKA_PORT KAFKA_SASL_PORT KAFKA_TLS_PORT KAFKA_CONTROLLER_PORT; do
    value="${!var:-}"
    if ! [[ -z "$value" || ( "$value" =~ ^[0-9]+$ && ${#value} -le 5 && $((10#$value)) -lt 65536 ) ]]; then
      die "$var must be a port number, got '$value'"
    fi
  done
  [[ "$SASL_PASSWORD" != *[\"\\]* && "$SASL_USER" =~ ^[A-Za-z0-9._-]+$ ]] ||
    die "KAFKA_SASL_USERNAME must be [A-Za-z0-9._-]+ and KAFKA_SASL_PASSWORD must not contain '\"' or '\\'"

  lock_state
  if [[ "$fresh" == 1 ]]; then
    if pid="$(running_pid)"; then
      log "--fresh: stopping the running broker (pid $pid)"
      stop_pid "$pid"
    fi
    wipe_state
  fi

  load_ports
  load_creds
  if pid="$(running_pid)"; then
    local rport rsport rtport
    rport="$(running_port)" rsport="$(running_sasl_port)" rtport="$(running_tls_port)"
    if [[ -n "${KAFKA_PORT:-}" && "${KAFKA_PORT}" != 0 && "$KAFKA_PORT" != "$rport" ]]; then
      die "a broker is already running on port $rport (pid $pid), not on KAFKA_PORT=$KAFKA_PORT; stop it first"
    fi
    same_listener SASL "${KAFKA_SASL_PORT:-}" "$rsport" "$pid"
    same_listener TLS "${KAFKA_TLS_PORT:-}" "$rtport" "$pid"
    log "already running (pid $pid) on 127.0.0.1:$rport${rsport:+, SASL on 127.0.0.1:$rsport}${rtport:+, TLS on 127.0.0.1:$rtport}"
    print_env "" "$rport" "$rsport" "$rtport"
    return 0
  fi
  rm -f "$PID_FILE"

  check_java
  ensure_kafka
  mkdir -p "$DATA_DIR" "$LOG_DIR"
  : >"$STATE_MARKER"

  # Ports: explicit > remembered from the previous start > default / free. A restart keeps
  # the SASL and TLS listeners of the previous start unless told otherwise.
  local port cport sport="" tport=""
  if [[ -z "${KAFKA_PORT:-}" && -z "$SAVED_PORT" ]]; then
    port=9092
  else
    port="$(pick_port "${KAFKA_PORT:-}" "$SAVED_PORT")"
  fi
  if [[ -n "$SAVED_CONTROLLER_PORT" ]] && port_listening "$SAVED_CONTROLLER_PORT"; then
    SAVED_CONTROLLER_PORT=""
  fi
  cport="$(pick_port "${KAFKA_CONTROLLER_PORT:-}" "$SAVED_CONTROLLER_PORT" "$port")"
  if [[ -n "${KAFKA_SASL_PORT:-}" || -n "$SAVED_SASL_PORT" ]]; then
    sport="$(pick_port "${KAFKA_SASL_PORT:-}" "$SAVED_SASL_PORT" "$port" "$cport")"
  fi
  if [[ -n "${KAFKA_TLS_PORT:-}" || -n "$SAVED_TLS_PORT" ]]; then
    tport="$(pick_port "${KAFKA_TLS_PORT:-}" "$SAVED_TLS_PORT" "$port" "$cport" $sport)"
  fi
  local p seen=" "
  for p in "$port" "$cport" $sport $tport; do
    ! port_listening "$p" || die "port 127.0.0.1:$p is already in use by another process"
    [[ "$seen" != *" $p "* ]] ||
      die "the PLAINTEXT, controller, SASL and TLS ports must differ ($port, $cport, ${sport:-none}, ${tport:-none})"
    seen+="$p "
  done
  {
    printf 'PORT=%s\nCONTROLLER_PORT=%s\n' "$port" "$cport"
    if [[ -n "$sport" ]]; then printf 'SASL_PORT=%s\n' "$sport"; fi
    if [[ -n "$tport" ]]; then printf 'TLS_PORT=%s\n' "$tport"; fi
  } >"$PORTS_FILE"
  if [[ -n "$tport" ]]; then ensure_tls_cert; fi

  # SCRAM users live in the cluster metadata, written when the storage is formatted.
  local formatted=0
  [[ -f "$DATA_DIR/meta.properties" ]] && formatted=1
  if ((formatted)); then
    if [[ -n "$sport" && ( "$FORMATTED_USERNAME" != "$SASL_USER" || "$FORMATTED_PASSWORD" != "$SASL_PASSWORD" ) ]]; then
      die "the storage in $DATA_DIR was formatted with other SASL credentials (user '$FORMATTED_USERNAME'); use KAFKA_FRESH=1 to wipe it"
    fi
  else
    FORMATTED_USERNAME=$SASL_USER FORMATTED_PASSWORD=$SASL_PASSWORD
  fi
  write_config "$port" "$cport" "$sport" "$tport"
  if ((!formatted)); then
    (umask 077 && printf 'USERNAME=%s\nPASSWORD=%s\n' "$FORMATTED_USERNAME" "$FORMATTED_PASSWORD" >"$CREDS_FILE")
    rm -rf "$DATA_DIR" && mkdir -p "$DATA_DIR"
    format_storage
  fi

  LOG_START_LINE=0
  if [[ -f "$LOG_DIR/server.log" ]]; then LOG_START_LINE="$(wc -l <"$LOG_DIR/server.log")"; fi
  log "starting Apache Kafka $KAFKA_VERSION_USED on 127.0.0.1:$port${sport:+ (SASL 127.0.0.1:$sport)}${tport:+ (TLS 127.0.0.1:$tport)}, controller 127.0.0.1:$cport; logs in $LOG_DIR"
  local -a detach=(nohup)
  command -v setsid >/dev/null 2>&1 && detach+=(setsid)
  "${detach[@]}" java -Xms128m "-Xmx$HEAP" -XX:+UseG1GC -XX:MaxGCPauseMillis=20 \
    -XX:+ExitOnOutOfMemoryError -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$LOG4J_FILE" -Dkafka.logs.dir="$LOG_DIR" \
    -cp "$KAFKA_LIBS/*" kafka.Kafka "$CONFIG_FILE" \
    </dev/null >"$OUT_FILE" 2>&1 9>&- &
  pid=$!
  printf '%s\n' "$pid" >"$PID_FILE"

  wait_until_ready "$pid" "$port" "$sport" "$tport"
  log "ready: Apache Kafka $KAFKA_VERSION_USED answers on 127.0.0.1:$port${sport:+, SASL 127.0.0.1:$sport}${tport:+, TLS 127.0.0.1:$tport} (pid $pid)"
  print_env "" "$port" "$sport" "$tport"
}

cmd_stop() {
  local pid
  lock_state
  if pid="$(running_pid)"; then
    log "stopping broker (pid $pid)"
    stop_pid "$pid"
    rm -f "$PID_FILE"
    log "stopped"
  else
    if [[ -f "$PID_FILE" ]]; then
      log "pid file $PID_FILE is stale (that process is gone or is not our broker); removing it"
      rm -f "$PID_FILE"
    fi
    log "not running"
  fi
}

cmd_status() {
  local pid port sport tport
  if pid="$(running_pid)"; then
    port="$(running_port)" sport="$(running_sasl_port)" tport="$(running_tls_port)"
    printf 'running: pid %s, KAFKA_BROKERS=127.0.0.1:%s%s%s (state %s)\n' "$pid" "$port" \
      "${sport:+, KAFKA_SASL_BROKERS=127.0.0.1:$sport}" "${tport:+, KAFKA_TLS_BROKERS=127.0.0.1:$tport}" \
      "$STATE_DIR"
    return 0
  fi
  printf 'not running (state %s)\n' "$STATE_DIR"
  return 1
}

cmd_env() {
  local prefix="export "
  case "${1:-}" in
    --plain) prefix="" ;;
    "") ;;
    *) die "unknown option for env: $1" ;;
  esac
  running_pid >/dev/null || die "no broker is running (state $STATE_DIR); run scripts/kafka.sh start"
  load_creds
  print_env "$prefix" "$(running_port)" "$(running_sasl_port)" "$(running_tls_port)"
}

case "${1:-}" in
  start) shift && cmd_start "$@" ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  env) shift && cmd_env "$@" ;;
  -h | --help | help) usage ;;
  "") usage >&2 && exit 2 ;;
  *) printf 'kafka.sh: unknown command: %s\n\n' "$1" >&2 && usage >&2 && exit 2 ;;
esac
