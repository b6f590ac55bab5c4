#!/usr/bin/env bash
# The project's test command (the README's and CI's): every test of the workspace, including
# doc tests. Extra arguments go to `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo test --workspace "$@"
