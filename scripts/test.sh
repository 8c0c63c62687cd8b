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
    [ -z "${WASM_RUN_CI:-}" ] || exit 1
fi
# The image, built and run (deploy/image.sh: a Debian base made locally, the
# binary copied in), the same replica scenario against containers of it,
# and deploy/k8s applied by `podman kube play`. Needs podman, runc,
# debootstrap, haproxy and PyYAML; .ci/run installs them.
if command -v podman >/dev/null 2>&1 && command -v debootstrap >/dev/null 2>&1 \
    && command -v haproxy >/dev/null 2>&1 && python3 -c "import yaml" 2>/dev/null; then
    cargo build -p wasm-run-cli
    deploy/image.sh --binary target/debug/wasm-run --tag localhost/wasm-run:test
    python3 deploy/replicas_test.py --image localhost/wasm-run:test
    python3 deploy/kube_test.py --image localhost/wasm-run:test
else
    echo "test.sh: SKIPPED the container image tests: they need podman, runc," \
        "debootstrap, haproxy and PyYAML (apt-get install podman runc debootstrap" \
        "haproxy; pip install pyyaml)" >&2
    [ -z "${WASM_RUN_CI:-}" ] || exit 1
fi

