#!/usr/bin/env bash
# HTTP benchmark: hello over wasi:http and over CGI in `wasm-run serve`, next
# to a native hyper hello server (the upper bound) and, when installed,
# `wasmtime serve` 48 on the same component. All in one run, interleaved,
# loopback only. Prints a markdown table (paste it into benches/RESULTS.md).
#
#   benches/http.sh [DURATION] [CONNECTIONS] [ROUNDS]     # default 10s 32 2
set -euo pipefail
cd "$(dirname "$0")/.."
duration=${1:-10s}
conns=${2:-32}
rounds=${3:-2}
scripts/setup.sh
cargo build --release -p wasm-run -p wasm-run-benches --bins >&2
cargo build -p wasm-run-tests >&2   # builds the guests
bin=target/release
http_guest=target/guests/wasm32-wasip2/release/wasm_run_http_guest.wasm
demo=target/guests/wasm32-wasip1/release/demo.wasm
out=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$out"; }
trap cleanup EXIT

# start NAME CMD... : runs a server printing "Serving HTTP on http://ADDR/", sets $addr.
start() {
    local name=$1; shift
    "$@" >"$out/$name.out" 2>"$out/$name.err" &
    pids+=($!)
    for _ in $(seq 100); do
        addr=$(sed -n 's|^Serving HTTP on http://\(.*\)/$|\1|p' "$out/$name.out" | head -1)
        [ -n "$addr" ] && return 0
        sleep 0.1
    done
    echo "$name did not start: $(cat "$out/$name.err")" >&2; exit 1
}

export WASM_RUN_LOG=warn RUST_BACKTRACE=0
start native "$bin/native-hello";                                       native=$addr
start wasi-http "$bin/wasm-run" serve --addr 127.0.0.1:0 "$http_guest"; wasihttp=$addr
start cgi "$bin/wasm-run" serve --addr 127.0.0.1:0 "$demo";             cgi=$addr
targets=("native-hyper|http://$native/" "wasm-run-wasi-http|http://$wasihttp/" "wasm-run-cgi|http://$cgi/hello")
if command -v wasmtime >/dev/null && wasmtime --version | grep -q '^wasmtime 48'; then
    wasmtime serve -S cli --addr 127.0.0.1:0 "$http_guest" >"$out/wt.out" 2>"$out/wt.err" &
    pids+=($!)
    sleep 2
    wt=$(grep -o 'http://[0-9.:]*' "$out/wt.out" "$out/wt.err" | head -1 | sed 's|.*http://||')
    [ -n "$wt" ] && targets+=("wasmtime-serve-48|http://$wt/")
fi

for round in $(seq "$rounds"); do
    for t in "${targets[@]}"; do
        label=${t%%|*}; url=${t#*|}
        "$bin/load" --url "$url" --connections "$conns" --duration "$duration" --label "$label" \
            >>"$out/results.jsonl"
    done
done

echo "| system | req/s | p50 ms | p99 ms | p999 ms | non-2xx or errors |"
echo "|---|---|---|---|---|---|"
python3 - "$out/results.jsonl" <<'PY'
import json, sys, statistics
rows = {}
for line in open(sys.argv[1]):
    r = json.loads(line)
    for path, s in r["paths"].items():
        rows.setdefault(r["label"], []).append(s)
for label, runs in rows.items():
    med = lambda k: statistics.median(x[k] for x in runs)
    bad = sum(x["requests"] - x["ok"] + x["errors"] for x in runs)
    print(f"| {label} | {med('rps'):,.0f} | {med('p50_ms'):.2f} | {med('p99_ms'):.2f} | {med('p999_ms'):.2f} | {bad} |")
PY
