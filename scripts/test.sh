#!/usr/bin/env bash
# The project's test command (the README's and CI's): every test of the workspace, doc tests
# included, against a real Kafka broker.
#
# Usage: scripts/test.sh [--external-kafka] [cargo test arguments...]
#
# Which broker, one rule:
#   - By default the tests use a broker this script starts itself: a fresh one in its own
#     state dir (target/kafka-test, apart from the one scripts/kafka.sh and scripts/demo.sh
#     use), on free loopback ports, with the SASL and TLS listeners the SASL and TLS tests
#     need, stopped at the end. KAFKA_BROKERS and the other KAFKA_* broker variables of the
#     environment are ignored, so a stray variable can never point the tests elsewhere.
#   - With --external-kafka (or TEST_KAFKA=external) the tests use the broker named by
#     KAFKA_BROKERS (and KAFKA_SASL_BROKERS, KAFKA_TLS_BROKERS, KAFKA_TLS_CA when set), as
#     `eval "$(scripts/kafka.sh env)"` gives them; it is an error if KAFKA_BROKERS is unset.
# Either way the script says which broker it used, before and after the tests.
set -euo pipefail
cd "$(dirname "$0")/.."

external=0
case "${TEST_KAFKA:-own}" in
    external) external=1 ;;
    own | "") ;;
    *)
        echo "test.sh: TEST_KAFKA must be 'own' or 'external', got '${TEST_KAFKA}'" >&2
        exit 2
        ;;
esac
if [[ "${1:-}" == "--external-kafka" ]]; then
    external=1
    shift
fi

if [[ "$external" == 1 ]]; then
    if [[ -z "${KAFKA_BROKERS:-}" ]]; then
        echo "test.sh: --external-kafka needs KAFKA_BROKERS (eval \"\$(scripts/kafka.sh env)\")" >&2
        exit 2
    fi
    used="the external broker at ${KAFKA_BROKERS} (external, as asked: KAFKA_BROKERS from the environment)"
else
    unset KAFKA_BROKERS KAFKA_SASL_BROKERS KAFKA_SASL_USERNAME KAFKA_SASL_PASSWORD \
        KAFKA_TLS_BROKERS KAFKA_TLS_CA
    export KAFKA_STATE_DIR="$PWD/target/kafka-test"
    echo "test.sh: starting its own Kafka broker (scripts/kafka.sh, state ${KAFKA_STATE_DIR})" >&2
    KAFKA_PORT=0 KAFKA_SASL_PORT=0 KAFKA_TLS_PORT=0 scripts/kafka.sh start --fresh >/dev/null
    trap 'scripts/kafka.sh stop >/dev/null || true' EXIT
    eval "$(scripts/kafka.sh env)"
    used="its own broker at ${KAFKA_BROKERS} (state ${KAFKA_STATE_DIR})"
fi
echo "test.sh: Kafka tests use ${used}" >&2

status=0
cargo test --workspace "$@" || status=$?
echo "test.sh: the Kafka tests used ${used}" >&2
exit "$status"
