#!/usr/bin/env python3
"""Open-loop latency of a well-behaved tenant, alone and under abuse.

    python3 benches/openloop.py [--duration 20] [--rate 200] [--rounds 2]
        [--system NAME=BINARY]...   (default: wasm-run=target/release/wasm-run)

For each system, interleaved round by round (loopback only; servers and
load generators share the machine):
  - alone: GET /hello of the wasi:http guest at a fixed --rate (open loop:
    latency from each request's scheduled time, so a stall shows up in every
    request it delays), for --duration seconds;
  - abused: the same, while 8 other connections loop over requests that
    spin, bomb or sleep until their 2 s deadline (32 MiB cap).
`wasmtime serve` 48 joins as a system when it is on PATH.

Prints a JSON line per measurement and a markdown table: p50/p99/max and
failures, alone and abused, and the p99 ratio abused/alone.
"""

import argparse
import json
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HTTP_GUEST = ROOT / "target/guests/wasm32-wasip2/release/wasm_run_http_guest.wasm"
LOAD = ROOT / "target/release/load"
ABUSE = ["--mix", "/spin=0.34", "--mix", "/bomb=0.33", "--mix", "/sleep?s=10=0.33"]


def start(cmd):
    # wasmtime prints its "Serving HTTP on" line on stderr, wasm-run on
    # stdout: read both, and keep draining them so the server never blocks.
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env={"WASM_RUN_LOG": "error", "PATH": "/usr/bin:/bin",
                                            "RUST_BACKTRACE": "0"})
    deadline = time.time() + 120
    while time.time() < deadline:
        line = proc.stdout.readline()
        for marker in ("Serving HTTP on http://", "Serving HTTP on "):
            if marker in line:
                addr = line.split(marker, 1)[1].strip().rstrip("/").removeprefix("http://")
                assert addr.startswith("127."), "loopback only"
                threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()
                return proc, addr
        if proc.poll() is not None:
            break
    proc.kill()
    sys.exit(f"openloop: {cmd[0]} did not start")


def load(addr, *args):
    out = subprocess.run([str(LOAD), "--url", f"http://{addr}/hello", *args],
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out)


def measure(name, cmd, rate, duration, abuse=ABUSE):
    proc, addr = start(cmd)
    try:
        load(addr, "--rate", str(rate), "--duration", "3s")  # warm-up
        alone = load(addr, "--rate", str(rate), "--duration", f"{duration}s")
        abusers = subprocess.Popen(
            [str(LOAD), "--url", f"http://{addr}/spin", "--connections", "8",
             "--duration", f"{duration + 4}s", *abuse],
            stdout=subprocess.PIPE, text=True)
        time.sleep(2)
        abused = load(addr, "--rate", str(rate), "--duration", f"{duration}s")
        abuse = json.loads(abusers.communicate()[0])
    finally:
        proc.kill()
        proc.wait()
    result = {"system": name, "alone": alone["paths"]["/hello"],
              "abused": abused["paths"]["/hello"],
              "abuse": {p: s["statuses"] for p, s in abuse["paths"].items()}}
    print(json.dumps(result), flush=True)
    return result


def print_table(results, failed_label="failed alone / abused"):
    """Markdown rows of `measure` results: {system: [round, ...]}."""
    print(f"| system | round | alone p50 / p99 / max | abused p50 / p99 / max | p99 ratio | {failed_label} |")
    print("|---|---|---|---|---|---|")
    for name, rounds in results.items():
        for i, r in enumerate(rounds, 1):
            a, b = r["alone"], r["abused"]
            print(f"| {name} | {i} | {a['p50_ms']:.2f} / {a['p99_ms']:.2f} / {a['max_ms']:.1f} ms "
                  f"| {b['p50_ms']:.2f} / {b['p99_ms']:.2f} / {b['max_ms']:.1f} ms "
                  f"| {b['p99_ms'] / max(a['p99_ms'], 1e-9):.2f}× "
                  f"| {failures(a)} / {failures(b)} |")


def failures(s):
    return s["errors"] + sum(v for k, v in s["statuses"].items() if k != "200")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--duration", type=int, default=20)
    ap.add_argument("--rate", type=float, default=200)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--system", action="append", default=[])
    args = ap.parse_args()
    if not 5 <= args.duration <= 300:
        sys.exit("openloop: --duration must be 5..300 seconds")
    systems = [s.split("=", 1) for s in args.system] or [
        ["wasm-run", str(ROOT / "target/release/wasm-run")]]
    cmds = {name: [binary, "serve", "--addr", "127.0.0.1:0", "--timeout", "2s",
                   "--max-memory", "32MiB", "--no-cache", str(HTTP_GUEST)]
            for name, binary in systems}
    wasmtime = shutil.which("wasmtime")
    if wasmtime:
        cmds["wasmtime serve 48"] = [wasmtime, "serve", "-S", "cli", "--addr", "127.0.0.1:0",
                                     "-W", "max-memory-size=33554432",
                                     "-W", "timeout=2s", str(HTTP_GUEST)]
    for f in [LOAD, HTTP_GUEST]:
        if not f.exists():
            sys.exit(f"openloop: {f} is missing (cargo build --release -p wasm-run-cli -p wasm-run-benches; "
                     "cargo test --workspace --no-run builds the guests)")
    results = {name: [] for name in cmds}
    for _ in range(args.rounds):
        for name, cmd in cmds.items():
            results[name].append(measure(name, cmd, args.rate, args.duration))
    print(f"\n{args.rate:.0f} req/s of GET /hello for {args.duration} s, open loop; "
          f"abuse: 8 connections looping spin/bomb/sleep to a 2 s deadline\n")
    print_table(results)

if __name__ == "__main__":
    main()
