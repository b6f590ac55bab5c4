#!/usr/bin/env bash
# The README's demo command: starts the local Kafka broker (scripts/kafka.sh, fetched from
# Maven Central on first use) unless KAFKA_BROKERS is set, then runs `presence-bridge demo`:
# the Genesys Cloud emulator and the bridge in one process, with the dashboard URL printed at
# start. Extra arguments go to `presence-bridge demo` (see --help). Ctrl-C stops the demo;
# the broker keeps running (scripts/kafka.sh stop).
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ -z "${KAFKA_BROKERS:-}" ]]; then
    scripts/kafka.sh start >/dev/null
    eval "$(scripts/kafka.sh env)"
fi
echo "demo.sh: Kafka at ${KAFKA_BROKERS}; building presence-bridge (the first build takes a few minutes)" >&2
exec cargo run -q -p presence-bridge -- demo "$@"
