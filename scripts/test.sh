#!/usr/bin/env bash
# Runs the whole test suite: unit tests, the library and CLI integration tests
# (which build the guests in guests/ once), doc tests and examples.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo test --workspace --all-targets "$@"
cargo test --workspace --doc
