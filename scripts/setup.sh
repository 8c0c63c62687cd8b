#!/usr/bin/env bash
# Installs what building wasm-run and its guests needs on a fresh machine:
# the wasm targets of the guests (rustup does not add them by itself here).
set -euo pipefail
if ! command -v rustup >/dev/null 2>&1; then
    echo "setup: rustup is required (https://rustup.rs)" >&2
    exit 1
fi
installed=$(rustup target list --installed)
for target in wasm32-wasip1 wasm32-wasip2; do
    if ! grep -qx "$target" <<<"$installed"; then
        rustup target add "$target"
    fi
done
