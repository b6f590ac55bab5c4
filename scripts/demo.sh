#!/usr/bin/env bash
# The README's demo command: starts the local Kafka broker (scripts/kafka.sh, fetched from
# Maven Central on first use) unless KAFKA_BROKERS is set, builds presence-bridge, prints
# how to watch the topic from a second terminal (Kafka's own console consumer, from the jars
# scripts/kafka.sh fetched) and how to stop everything, then runs `presence-bridge demo`:
# the Genesys Cloud emulator and the bridge in one process, the emulator's groups mapped to
# mask bits and gentle chaos (a fault every 30 s or so), with the dashboard URL printed at
# start. Extra arguments go to `presence-bridge demo` (see --help; --chaos 0 for calm).
# Ctrl-C stops the demo; the broker keeps running until `scripts/kafka.sh stop`.
set -euo pipefail
cd "$(dirname "$0")/.."
repo="$(pwd)"

started_broker=0
if [[ -z "${KAFKA_BROKERS:-}" ]]; then
    scripts/kafka.sh start >/dev/null
    eval "$(scripts/kafka.sh env)"
    started_broker=1
fi

# The topic the demo writes: --topic from the arguments, else KAFKA_TOPIC, else the default.
topic="${KAFKA_TOPIC:-genesys.presence.updates}"
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
    case "${args[$i]}" in
        --topic=*) topic="${args[$i]#--topic=}" ;;
        --topic) if ((i + 1 < ${#args[@]})); then topic="${args[$((i + 1))]}"; fi ;;
    esac
done

# The jars of the running broker (its `-cp DIR/*`), else of a cached download.
kafka_libs() {
    local pid_file="${KAFKA_STATE_DIR:-$repo/target/kafka}/kafka.pid" pid arg take=0 dir
    if [[ -f "$pid_file" ]]; then
        pid="$(tr -dc '0-9' <"$pid_file")"
        if [[ -n "$pid" && -r "/proc/$pid/cmdline" ]]; then
            while IFS= read -r -d '' arg; do
                if ((take)); then
                    printf '%s\n' "${arg%/\*}"
                    return 0
                fi
                [[ "$arg" == -cp ]] && take=1
            done <"/proc/$pid/cmdline"
        fi
    fi
    local -a dirs
    if [[ -n "${KAFKA_CACHE_DIR:-}" ]]; then
        dirs=("$KAFKA_CACHE_DIR/libs")
    else
        dirs=("$HOME"/.cache/presence-bridge/kafka-*/libs)
    fi
    for dir in "${dirs[@]}"; do
        if [[ -d "$dir" ]] && compgen -G "$dir/kafka-tools-*.jar" >/dev/null; then
            printf '%s\n' "$dir"
            return 0
        fi
    done
    return 1
}

echo "demo.sh: Kafka at ${KAFKA_BROKERS}; building presence-bridge (the first build takes a few minutes)" >&2
cargo build -q -p presence-bridge

first_broker="${KAFKA_BROKERS%%,*}"
echo
echo "================================================================================"
echo " presence-bridge demo"
echo
echo " Watch the records arrive, in a second terminal (key, then value; null = tombstone):"
echo
if libs="$(kafka_libs)"; then
    printf "   java -cp '%s' org.apache.kafka.tools.consumer.ConsoleConsumer \\\\\n" "$libs/*"
else
    printf '   kafka-console-consumer.sh \\\n'
fi
printf "     --bootstrap-server %q --topic %q --from-beginning \\\\\n" "$first_broker" "$topic"
printf "     --formatter-property print.key=true --formatter-property key.separator=' '\n"
echo
echo " To stop everything:"
echo "   Ctrl-C here                stops the emulator and the bridge"
if ((started_broker)); then
    echo "   scripts/kafka.sh stop      stops the Kafka broker (its data stays in target/kafka)"
else
    echo "   (the broker at ${KAFKA_BROKERS} was given in KAFKA_BROKERS: this script did not start it)"
fi
echo "================================================================================"
echo
exec cargo run -q -p presence-bridge -- demo "$@"
