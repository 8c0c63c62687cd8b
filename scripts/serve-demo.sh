#!/usr/bin/env bash
# The main job: build wasm-run and serve its built-in demo guest.
# Open http://127.0.0.1:8080/ (or the address given as the first argument).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build -p wasm-run-cli
exec target/debug/wasm-run serve --addr "${1:-127.0.0.1:8080}"
