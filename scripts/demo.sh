#!/usr/bin/env bash
# The main job: build wasm-run and its guests, then run guests under limits
# and show what happens — a clean run, kills for each limit, and the report.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build -p wasm-run-cli
(cd guests && cargo build --release --target wasm32-wasip1 --target-dir ../target/guests)
bin=target/debug/wasm-run
g=target/guests/wasm32-wasip1/release
step() { printf '\n$ %s\n' "$*"; "$@" || echo "(exit status $?)"; }
step "$bin" run --report - "$g/hello.wasm"
step "$bin" run --max-memory 32MiB --report - "$g/bomb.wasm"
step "$bin" run --max-memory 32MiB --report - "$g/alloc.wasm" 16
step "$bin" run --fuel 100000000 --report - "$g/spin.wasm"
step "$bin" run --timeout 500ms --report - "$g/sleeper.wasm" 10
step "$bin" run --report - "$g/recurse.wasm"
