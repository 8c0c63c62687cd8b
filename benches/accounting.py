#!/usr/bin/env python3
"""What the accounting allocator costs: hello throughput of `wasm-run serve`
built with it (the default) and without it (`--no-default-features` on
wasm-run-cli), measured by `wrk -t2 -c64` in interleaved rounds of one run.

    cargo build --release -p wasm-run-cli && cp target/release/wasm-run /tmp/wasm-run-acct
    cargo build --release -p wasm-run-cli --no-default-features && cp target/release/wasm-run /tmp/wasm-run-plain
    python3 benches/accounting.py --with /tmp/wasm-run-acct --without /tmp/wasm-run-plain

Loopback only; each wrk run is bounded in time. Prints a markdown table.
"""

import argparse
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HTTP_GUEST = ROOT / "target/guests/wasm32-wasip2/release/wasm_run_http_guest.wasm"
DEMO = ROOT / "target/guests/wasm32-wasip1/release/demo.wasm"


def start(binary, module):
    proc = subprocess.Popen(
        [binary, "serve", "--addr", "127.0.0.1:0", "--timeout", "5s", "--max-memory", "32MiB",
         str(module)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        env={**os.environ, "WASM_RUN_LOG": "warn", "RUST_BACKTRACE": "0"},
    )
    line = proc.stdout.readline().strip()
    if not line.startswith("Serving HTTP on http://"):
        proc.kill()
        sys.exit(f"server did not start: {line!r}")
    return proc, line.removeprefix("Serving HTTP on ").rstrip("/")


def wrk(url, duration):
    out = subprocess.run(
        ["wrk", "-t2", "-c64", f"-d{duration}s", "--latency", url],
        check=True, capture_output=True, text=True, timeout=duration + 30,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
    scale = {"us": 1e-3, "ms": 1.0, "s": 1e3}[p99.group(2)]
    return rps, float(p99.group(1)) * scale


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--with", dest="with_", required=True, help="wasm-run built with accounting")
    ap.add_argument("--without", required=True, help="wasm-run built without it")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=int, default=5)
    args = ap.parse_args()
    results = {}
    for kind, module, path in [("wasi:http", HTTP_GUEST, "/hello"), ("cgi", DEMO, "/")]:
        for r in range(args.rounds):
            for name, binary in [("with", args.with_), ("without", args.without)]:
                proc, base = start(binary, module)
                try:
                    wrk(base + path, 1)  # warm-up
                    rps, p99 = wrk(base + path, args.duration)
                finally:
                    proc.kill()
                    proc.wait()
                results.setdefault((kind, name), []).append((rps, p99))
                print(f"{kind} round {r + 1} {name}: {rps:.0f} req/s, p99 {p99:.2f} ms",
                      file=sys.stderr)
    print("| guest | accounting | req/s (median) | p99 ms (median) | ratio with/without |")
    print("|---|---|---|---|---|")
    for kind in ["wasi:http", "cgi"]:
        med = {n: statistics.median(r for r, _ in results[(kind, n)]) for n in ["with", "without"]}
        p99 = {n: statistics.median(p for _, p in results[(kind, n)]) for n in ["with", "without"]}
        for n in ["with", "without"]:
            ratio = f"{med['with'] / med['without']:.3f}" if n == "with" else ""
            print(f"| {kind} | {n} | {med[n]:.0f} | {p99[n]:.2f} | {ratio} |")


if __name__ == "__main__":
    main()
