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
on_exit=true
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
    on_exit='scripts/kafka.sh stop >/dev/null || true'
    trap "$on_exit" EXIT
    eval "$(scripts/kafka.sh env)"
    used="its own broker at ${KAFKA_BROKERS} (state ${KAFKA_STATE_DIR})"
fi
echo "test.sh: Kafka tests use ${used}" >&2

# The soak test (bins/presence-bridge/tests/soak.rs) spends most of its minutes waiting on
# Genesys's rate limit, not on the CPU, so it runs beside the rest instead of after it: built
# with everything else, started first, and waited for at the end. Its output is printed
# whole when it ends. With test filters or a package or target chosen (`--`, -p, --test, ...)
# everything runs as one `cargo test` instead.
apart=1
for arg in "$@"; do
    case "$arg" in
        -- | -p | --package | --package=* | --test | --test=* | --lib | --bins | --doc | --exclude | --exclude=*) apart=0 ;;
    esac
done

status=0
if [[ "$apart" == 1 ]]; then
    built="$(cargo test --workspace "$@" --no-run 2>&1)" || { printf '%s\n' "$built" >&2; exit 1; }
    printf '%s\n' "$built" >&2
    soak_exe="$(printf '%s\n' "$built" | sed -n 's|.*Executable tests/soak.rs (\(.*\))$|\1|p' | head -n 1)"
    if [[ -z "$soak_exe" ]]; then
        echo "test.sh: cargo named no executable for tests/soak.rs" >&2
        exit 1
    fi
    mkdir -p target/soak
    soak_log="$PWD/target/soak/test-output.log"
    echo "test.sh: the soak test runs beside the others (${soak_exe}; output at the end, and in ${soak_log})" >&2
    (cd bins/presence-bridge && exec "$soak_exe" --nocapture) >"$soak_log" 2>&1 &
    soak_pid=$!
    # If this script ends early, the soak test goes with it (and takes its bridge down with
    # it: the test kills the bridge when it ends).
    trap "kill -INT $soak_pid 2>/dev/null || true; ${on_exit}" EXIT
    cargo test --workspace "$@" -- --skip a_month_with_a_changing_org_in_minutes || status=$?
    soak_status=0
    wait "$soak_pid" || soak_status=$?
    echo "test.sh: ---- the soak test (tests/soak.rs), run beside the others ----" >&2
    cat "$soak_log" >&2
    echo "test.sh: ---- the soak test exited with ${soak_status} ----" >&2
    [[ "$soak_status" == 0 ]] || status=1
else
    cargo test --workspace "$@" || status=$?
fi
echo "test.sh: the Kafka tests used ${used}" >&2
exit "$status"
