#!/usr/bin/env python3
"""WASI 0.3: isolation and throughput of wasm-run beside `wasmtime serve -Sp3`.

    python3 benches/p3.py [--duration 15] [--rate 200] [--rounds 2]
        [--wasmtime PATH] [--wrk-duration 8] [--python]
        [--abuse crash|sleep|traps] [--only isolation|throughput]
        [--guest p3|p2] [--before PATH] [--also-flags FLAGS]...

The same WASI 0.3 service (`guests/p3-http`, built with the `wasip3` crate)
under `wasm-run serve` (a fresh store per request) and under `wasmtime serve
-Sp3 -Scli` 48 with its WASI 0.3 defaults (an instance reused for up to 128
requests, 16 at once). Loopback only; servers and load generators share the
machine; rounds interleave the systems.

  1. isolation: GET /hello at a fixed --rate (open loop: latency from each
     request's scheduled time), alone, then while 8 other connections loop
     over /spin, /bomb and /crash (2 s deadline, 32 MiB cap);
  2. throughput: `wrk -t2 -c64` on /hello.

--abuse sleep swaps /crash for /sleep to the deadline (the WASI 0.2 mix);
--abuse traps loops only /crash and /bomb (requests killed within ~50 ms);
--abuse spin only /spin (8 guests spinning to their deadline at all times).
--guest p2 runs the same measurements on the WASI 0.2 service
(`guests/http`, same routes). --before PATH adds another wasm-run binary to
the same rounds, for a before/after comparison. --also-flags "FLAGS" adds
wasm-run with these extra serve flags to the same rounds (repeatable), e.g.
--also-flags "--background-threads 1".

--python adds a third-party WASI 0.3 component to the throughput rows: a
Python service built with componentize-py 0.25 (installed from PyPI into a
virtualenv under target/) from benches/python-p3/app.py.

Needs `cargo build --release -p wasm-run-cli -p wasm-run-benches`, the
guests (`cargo test --workspace --no-run` builds them), `wrk`, and wasmtime
48 (`cargo install wasmtime-cli --version 48.0.8 --locked`; the script runs
without it, measuring wasm-run alone).
"""

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import openloop  # noqa: E402  (same directory)
from run import wrk  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
P3_GUEST = ROOT / "target/guests/wasm32-wasip2/release/wasm_run_p3_http_guest.wasm"
WASM_RUN = ROOT / "target/release/wasm-run"
ABUSE = {
    # What the issue asks for: requests that spin, exhaust memory or trap.
    "crash": ["--mix", "/spin=0.34", "--mix", "/bomb=0.33", "--mix", "/crash=0.33"],
    # openloop.py's WASI 0.2 mix, for a like-for-like comparison.
    "sleep": ["--mix", "/spin=0.34", "--mix", "/bomb=0.33", "--mix", "/sleep?ms=10000=0.33"],
    # Only requests that are killed at once (trap) or within ~50 ms (memory):
    # ~250 killed requests a second from 8 connections, all at normal
    # priority unless the server penalizes their connections.
    "traps": ["--mix", "/crash=0.5", "--mix", "/bomb=0.5"],
    # Only requests that spin to their deadline: demoted work on every
    # background thread all the time.
    "spin": ["--mix", "/spin=1"],
}
P2_GUEST = ROOT / "target/guests/wasm32-wasip2/release/wasm_run_http_guest.wasm"
PY_APP = ROOT / "benches/python-p3/app.py"
PY_ENV = ROOT / "target/componentize-py"
PY_WASM = ROOT / "target/python-p3/app.wasm"
# The WASI 0.3.0 WIT wasmtime 48 implements, from the crate cargo fetched.
WIT_CRATE = "wasmtime-wasi-http-48.0.8"


def wasmtime_48(explicit):
    exe = explicit or shutil.which("wasmtime")
    if not exe:
        return None
    v = subprocess.run([exe, "--version"], capture_output=True, text=True).stdout
    return exe if v.startswith("wasmtime 48") else None


def commands(guest, wasmtime, before=None, also=()):
    def wasm_run(exe, flags=()):
        return [str(exe), "serve", "--addr", "127.0.0.1:0", "--timeout", "2s",
                "--max-memory", "32MiB", "--no-cache", *flags, str(guest)]
    cmds = {"wasm-run serve (fresh store per request)": wasm_run(WASM_RUN)}
    if before:
        cmds[f"wasm-run serve, before ({before})"] = wasm_run(before)
    for flags in also:
        cmds[f"wasm-run serve {flags}"] = wasm_run(WASM_RUN, flags.split())
    if wasmtime:
        cmds["wasmtime serve -Sp3 (instance reuse: 128 requests, 16 at once)"] = [
            wasmtime, "serve", "-Sp3", "-Scli", "--addr", "127.0.0.1:0",
            "-W", "max-memory-size=33554432", "-W", "timeout=2s", str(guest)]
    return cmds


def throughput(name, cmd, seconds):
    proc, addr = openloop.start(cmd)
    try:
        wrk(f"http://{addr}/hello", 2, 64)  # warm-up
        result = {"system": name, **wrk(f"http://{addr}/hello", seconds, 64)}
    finally:
        proc.kill()
        proc.wait()
    print(json.dumps(result), flush=True)
    return result


def python_guest():
    """Builds the componentize-py service (once); None if that fails."""
    if PY_WASM.exists() and PY_WASM.stat().st_mtime > PY_APP.stat().st_mtime:
        return PY_WASM
    wit = next(Path.home().glob(f".cargo/registry/src/*/{WIT_CRATE}/src/p3/wit"), None)
    if wit is None:
        print(f"p3: {WIT_CRATE} is not in the cargo registry; skipping Python", file=sys.stderr)
        return None
    cpy = PY_ENV / "bin/componentize-py"
    if not cpy.exists():
        subprocess.run([sys.executable, "-m", "venv", str(PY_ENV)], check=True)
        subprocess.run([str(PY_ENV / "bin/pip"), "install", "-q", "componentize-py==0.25.0"],
                       check=True)
    PY_WASM.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([str(cpy), "-d", str(wit), "-w", "wasi:http/service@0.3.0", "componentize",
                    "-p", str(PY_APP.parent), "app", "-o", str(PY_WASM)], check=True)
    return PY_WASM


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--duration", type=int, default=15)
    ap.add_argument("--rate", type=float, default=200)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--wrk-duration", type=int, default=8)
    ap.add_argument("--wasmtime")
    ap.add_argument("--python", action="store_true")
    ap.add_argument("--abuse", choices=sorted(ABUSE), default="crash",
                    help="what the abusers loop: crash (/spin, /bomb, /crash), sleep (/spin, "
                         "/bomb, /sleep to the deadline), traps (/crash, /bomb) or spin")
    ap.add_argument("--only", choices=["isolation", "throughput"])
    ap.add_argument("--guest", choices=["p3", "p2"], default="p3",
                    help="the WASI 0.3 service (default) or the WASI 0.2 one, which has the "
                         "same routes")
    ap.add_argument("--before", help="another wasm-run binary, measured in the same rounds "
                                     "(a before/after comparison)")
    ap.add_argument("--also-flags", action="append", default=[], metavar="FLAGS",
                    help="wasm-run with these extra serve flags, in the same rounds "
                         "(repeatable)")
    args = ap.parse_args()
    if not 5 <= args.duration <= 120 or not 2 <= args.wrk_duration <= 60:
        sys.exit("p3: --duration must be 5..120 s and --wrk-duration 2..60 s")
    guest = P3_GUEST if args.guest == "p3" else P2_GUEST
    for f in [WASM_RUN, openloop.LOAD, guest]:
        if not f.exists():
            sys.exit(f"p3: {f} is missing (see the docstring)")
    wasmtime = wasmtime_48(args.wasmtime)
    cmds = commands(guest, wasmtime, args.before, args.also_flags)
    py_cmds = {}
    if args.python and (py := python_guest()):
        py_cmds = {f"{name}, Python": cmd[:-1] + [str(py)]
                   for name, cmd in commands(py, wasmtime).items()}
        # A CPython guest needs more than 32 MiB.
        for cmd in py_cmds.values():
            for i, a in enumerate(cmd):
                if a in ("32MiB", "max-memory-size=33554432"):
                    cmd[i] = "256MiB" if a == "32MiB" else "max-memory-size=268435456"
    iso = {n: [] for n in cmds}
    thr = {n: [] for n in {**cmds, **py_cmds}}
    for _ in range(args.rounds):
        if args.only != "throughput":
            for name, cmd in cmds.items():
                iso[name].append(openloop.measure(name, cmd, args.rate, args.duration,
                                                  ABUSE[args.abuse]))
        if args.only != "isolation":
            for name, cmd in {**cmds, **py_cmds}.items():
                thr[name].append(throughput(name, cmd, args.wrk_duration))

    looped = ", ".join(ABUSE[args.abuse][1::2])
    print(f"\n### Isolation: {args.rate:.0f} req/s of GET /hello for {args.duration} s, open loop; "
          f"abuse: 8 connections looping {looped} (2 s deadline, 32 MiB cap)\n")
    openloop.print_table(iso, "hello failed alone / abused")
    print(f"\n### Throughput: `wrk -t2 -c64 -d{args.wrk_duration}s` on /hello\n")
    print("| system | round | req/s | p99 ms | failed |")
    print("|---|---|---|---|---|")
    for name, rounds in thr.items():
        for i, r in enumerate(rounds, 1):
            print(f"| {name} | {i} | {r['rps']:,.0f} | {r['p99_ms']:.2f} | {r['failed']} |")
    names = [n for n, rounds in thr.items() if rounds]
    pairs = [(a, b) for a, b in zip(names, names[1:])
             if a.startswith("wasm-run") and b.startswith("wasmtime")]
    for ours, theirs in pairs:
        mine = sorted(r["rps"] for r in thr[ours])[len(thr[ours]) // 2]
        peer = sorted(r["rps"] for r in thr[theirs])[len(thr[theirs]) // 2]
        print(f"\n{ours} / {theirs}: **{mine / peer:.2f}×** (median rounds)")

if __name__ == "__main__":
    main()
