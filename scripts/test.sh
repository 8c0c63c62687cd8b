#!/usr/bin/env bash
# Runs the whole test suite: unit tests, the library and CLI integration tests
# (which build the guests in guests/ once), doc tests and examples.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo test --workspace --all-targets "$@"
cargo test --workspace --doc
# Two replicas behind HAProxy: saturation and a rolling restart lose no
# request (deploy/replicas_test.py). Needs haproxy; .ci/run installs it.
if command -v haproxy >/dev/null 2>&1; then
    cargo build -p wasm-run-cli
    python3 deploy/replicas_test.py --wasm-run target/debug/wasm-run
else
    echo "test.sh: SKIPPED deploy/replicas_test.py: haproxy is not installed" \
        "(apt-get install haproxy)" >&2
fi

