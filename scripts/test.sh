#!/usr/bin/env bash
# The project's test command (the README's and CI's): every test of the workspace, doc tests
# included, against a real Kafka broker.
#
# When KAFKA_BROKERS is not set, a local broker is started with scripts/kafka.sh (on free
# loopback ports, with SASL and TLS listeners for the SASL and TLS tests) and stopped at the
# end. Extra arguments go to `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ -z "${KAFKA_BROKERS:-}" ]]; then
    echo "test.sh: starting a local Kafka broker (scripts/kafka.sh)" >&2
    KAFKA_PORT="${KAFKA_PORT:-0}" KAFKA_SASL_PORT="${KAFKA_SASL_PORT:-0}" KAFKA_TLS_PORT="${KAFKA_TLS_PORT:-0}" \
        scripts/kafka.sh start --fresh >/dev/null
    trap 'scripts/kafka.sh stop >/dev/null || true' EXIT
    eval "$(scripts/kafka.sh env)"
fi
echo "test.sh: Kafka at ${KAFKA_BROKERS}" >&2

cargo test --workspace "$@"
