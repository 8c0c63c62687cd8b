#!/usr/bin/env python3
"""HTTP benchmarks of wasm-run, every scenario and baseline in one run.

    python3 benches/run.py [--duration 10] [--connections 32] [--rounds 2] [--quick]

Scenarios (loopback only; servers and load generator share the machine):
  1. hello: wasm-run serve over wasi:http and over CGI, next to a native hyper
     server (upper bound), a process-per-request CGI server (fork/exec of a
     native hello) and `wasmtime serve -S cli` 48 when installed (fresh
     instance per request, and its reuse mode, which keeps no isolation
     between requests); rounds are interleaved so noise hits every system
     alike. With `wrk` installed, every system is also measured by
     `wrk -t2 -c64` in the same rounds.
  2. isolation: hello alone, then 50% hello + 50% abusive (spin, bomb, sleep)
     on the same server: hello failures, p99 ratio mix/alone, kill outcomes.
  3. overload: many memory-heavy requests at once against a small memory
     budget: peak RSS of the server vs the budget, 503 count, other errors.

Writes benches/results.json, benches/plot.svg and the marked section of
benches/RESULTS.md.
"""

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REL = ROOT / "target" / "release"
GUESTS = ROOT / "target" / "guests"
HTTP_GUEST = GUESTS / "wasm32-wasip2/release/wasm_run_http_guest.wasm"
DEMO = GUESTS / "wasm32-wasip1/release/demo.wasm"
MIB = 1 << 20


def sh(*cmd, **kw):
    subprocess.run(cmd, check=True, cwd=ROOT, **kw)


class Server:
    """A server printing 'Serving HTTP on http://ADDR/' (or wasmtime's line)."""

    def __init__(self, name, cmd, env=None, merge_stderr=False):
        self.name = name
        self.log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            cmd, cwd=ROOT, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT if merge_stderr else self.log, text=True,
            env={**os.environ, "WASM_RUN_LOG": "warn", "RUST_BACKTRACE": "0", **(env or {})},
        )
        self.addr = None
        deadline = time.time() + 60
        while time.time() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            m = re.search(r"http://([0-9.]+:[0-9]+)", line)
            if m:
                self.addr = m.group(1)
                break
        if not self.addr:
            self.log.seek(0)
            raise RuntimeError(f"{name} did not start: {self.log.read().decode()[-2000:]}")
        threading.Thread(target=lambda: [None for _ in self.proc.stdout], daemon=True).start()

    def rss_bytes(self):
        try:
            for line in open(f"/proc/{self.proc.pid}/status"):
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        except OSError:
            pass
        return 0

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def load(url, duration, conns, label, mix=()):
    cmd = [str(REL / "load"), "--url", url, "--connections", str(conns),
           "--duration", f"{duration}s", "--label", label]
    for path, frac in mix:
        cmd += ["--mix", f"{path}={frac}"]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out)


WASMTIME = None  # set from --wasmtime


def wasmtime_48():
    exe = WASMTIME or shutil.which("wasmtime")
    if not exe:
        return None
    v = subprocess.run([exe, "--version"], capture_output=True, text=True).stdout
    return exe if v.startswith("wasmtime 48") else None


def wrk(url, duration, conns):
    """`wrk -t2 -cN`: requests/s and p99 as wrk measures them (closed loop)."""
    out = subprocess.run(["wrk", "-t2", f"-c{conns}", f"-d{duration}s", "--latency", url],
                         check=True, capture_output=True, text=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([0-9.]+)", out).group(1))
    m = re.search(r"99%\s+([0-9.]+)(us|ms|s)\b", out)
    p99_ms = float(m.group(1)) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[m.group(2)]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    failed = (int(errors.group(1)) if errors else 0) + (sum(map(int, sock.groups())) if sock else 0)
    return {"rps": rps, "p99_ms": p99_ms, "failed": failed}


def med(runs, key):
    return statistics.median(r[key] for r in runs)


def scenario_hello(a, results):
    systems = [
        ("native hyper", lambda: Server("native", [str(REL / "native-hello")]), "/"),
        ("process per request (fork/exec)",
         lambda: Server("fork", [str(REL / "cgi-fork"), str(REL / "hello-cgi")]), "/"),
        ("wasm-run wasi:http",
         lambda: Server("wr-http", [str(REL / "wasm-run"), "serve", "--addr", "127.0.0.1:0",
                                    str(HTTP_GUEST)]), "/"),
        ("wasm-run CGI",
         lambda: Server("wr-cgi", [str(REL / "wasm-run"), "serve", "--addr", "127.0.0.1:0",
                                   str(DEMO)]), "/hello"),
    ]
    wt = wasmtime_48()
    if wt:
        systems.append(("wasmtime serve 48 (fresh instance)",
                        lambda: Server("wasmtime", [wt, "serve", "-S", "cli", "-O",
                                                    "pooling-allocator=y", "--addr",
                                                    "127.0.0.1:0", str(HTTP_GUEST)],
                                       merge_stderr=True), "/"))
        systems.append((REUSE,
                        lambda: Server("wasmtime-reuse",
                                       [wt, "serve", "-S", "cli", "--addr", "127.0.0.1:0",
                                        "--max-instance-reuse-count", "1000000",
                                        str(HTTP_GUEST)], merge_stderr=True), "/"))
    servers = {name: start() for name, start, _ in systems}
    try:
        runs = {name: [] for name, _, _ in systems}
        wrk_runs = {name: [] for name, _, _ in systems}
        use_wrk = shutil.which("wrk") is not None
        for _ in range(a.rounds):
            for name, _, path in systems:
                r = load(f"http://{servers[name].addr}{path}", a.duration, a.connections, name)
                runs[name].append(next(iter(r["paths"].values())))
                if use_wrk:
                    url = f"http://{servers[name].addr}{path}"
                    wrk_runs[name].append(wrk(url, a.duration, a.wrk_connections))
        if use_wrk:
            results["hello_wrk"] = {
                name: {"rps": med(rs, "rps"), "p99_ms": med(rs, "p99_ms"),
                       "failed": sum(r["failed"] for r in rs), "runs": rs}
                for name, rs in wrk_runs.items()
            }
        results["hello"] = {
            name: {
                "rps": med(rs, "rps"), "p50_ms": med(rs, "p50_ms"), "p99_ms": med(rs, "p99_ms"),
                "p999_ms": med(rs, "p999_ms"),
                "failed": sum(r["requests"] - r["ok"] + r["errors"] for r in rs),
                "runs": rs,
            }
            for name, rs in runs.items()
        }
    finally:
        for s in servers.values():
            s.stop()


REUSE = "wasmtime serve 48 (one instance reused: no isolation)"
FRESH = "wasmtime serve 48 (fresh instance)"


def ratio_lines(h):
    """Each wasm-run figure against its baselines, from the same run."""
    out = []
    for ours in ("wasm-run wasi:http", "wasm-run CGI"):
        if FRESH in h:
            out.append(f"{ours} / wasmtime serve: **{h[ours]['rps'] / h[FRESH]['rps']:.2f}×**")
        if REUSE in h:
            out.append(f"{ours} / wasmtime serve reuse mode: "
                       f"**{h[ours]['rps'] / h[REUSE]['rps']:.2f}×**")
    if FRESH not in h:
        out.append("wasmtime serve 48: not installed for this run")
    return out


def scenario_isolation(a, results):
    server = Server("iso", [str(REL / "wasm-run"), "serve", "--addr", "127.0.0.1:0",
                            "--timeout", "1s", "--max-memory", "32MiB", str(HTTP_GUEST)])
    try:
        base = f"http://{server.addr}/hello"
        alone, mixed = [], []
        for _ in range(a.rounds):
            alone.append(load(base, a.duration, a.connections, "alone")["paths"]["/hello"])
            r = load(base, a.duration, a.connections, "mix",
                     mix=[("/spin", 1 / 6), ("/bomb", 1 / 6), ("/sleep?s=10", 1 / 6)])
            mixed.append(r)
        hello_mix = [r["paths"]["/hello"] for r in mixed]
        kills = {}
        for r in mixed:
            for path, s in r["paths"].items():
                if path != "/hello":
                    for status, n in s["statuses"].items():
                        kills.setdefault(path, {}).setdefault(status, 0)
                        kills[path][status] += n
        results["isolation"] = {
            "alone": {"rps": med(alone, "rps"), "p50_ms": med(alone, "p50_ms"),
                      "p99_ms": med(alone, "p99_ms"), "p999_ms": med(alone, "p999_ms")},
            "mix": {"rps": med(hello_mix, "rps"), "p50_ms": med(hello_mix, "p50_ms"),
                    "p99_ms": med(hello_mix, "p99_ms"), "p999_ms": med(hello_mix, "p999_ms")},
            "hello_failures": sum(r["requests"] - r["ok"] + r["errors"] for r in hello_mix),
            "p99_ratio": med(hello_mix, "p99_ms") / max(med(alone, "p99_ms"), 1e-9),
            "abusive_statuses": kills,
        }
    finally:
        server.stop()


def scenario_overload(a, results):
    budget = 128 * MIB
    server = Server("overload", [str(REL / "wasm-run"), "serve", "--addr", "127.0.0.1:0",
                                 "--max-memory", "32MiB", "--memory-budget", "128MiB",
                                 "--max-queue", "16", "--queue-timeout", "500ms", str(DEMO)])
    try:
        idle_rss = server.rss_bytes()
        peak = [idle_rss]
        stop = threading.Event()

        def sample():
            while not stop.is_set():
                peak[0] = max(peak[0], server.rss_bytes())
                time.sleep(0.05)

        t = threading.Thread(target=sample)
        t.start()
        r = load(f"http://{server.addr}/bomb", a.duration, 128, "overload")
        stop.set()
        t.join()
        s = r["paths"]["/bomb"]
        statuses = s["statuses"]
        results["overload"] = {
            "budget_bytes": budget, "idle_rss_bytes": idle_rss, "peak_rss_bytes": peak[0],
            "peak_over_budget_bytes": peak[0] - budget, "statuses": statuses,
            "connection_errors": s["errors"],
            "other": sum(n for st, n in statuses.items() if st not in ("500", "503")),
        }
    finally:
        server.stop()


def svg(results, path):
    hello = results.get("hello", {})
    names = list(hello)
    w, bar_h, gap, left = 760, 22, 8, 260
    rows = []
    y = 40
    maxrps = max((v["rps"] for v in hello.values()), default=1)
    rows.append(f'<text x="10" y="24" font-size="15" font-weight="bold">hello: requests/s (higher is better)</text>')
    for n in names:
        v = hello[n]
        bw = (w - left - 90) * v["rps"] / maxrps
        rows.append(f'<text x="10" y="{y + 15}" font-size="12">{n}</text>')
        rows.append(f'<rect x="{left}" y="{y}" width="{bw:.1f}" height="{bar_h}" fill="#4a7bd0"/>')
        rows.append(f'<text x="{left + bw + 5:.1f}" y="{y + 15}" font-size="12">{v["rps"]:,.0f}</text>')
        y += bar_h + gap
    y += 30
    rows.append(f'<text x="10" y="{y}" font-size="15" font-weight="bold">hello latency, ms (p50 / p99 / p999, log scale)</text>')
    y += 16
    import math
    series = [(n, hello[n]) for n in names]
    iso = results.get("isolation")
    if iso:
        series += [("isolation: hello alone", iso["alone"]), ("isolation: hello in 50% abusive mix", iso["mix"])]
    allv = [v[k] for _, v in series for k in ("p50_ms", "p99_ms", "p999_ms") if v[k] > 0]
    lo, hi = math.log10(max(min(allv, default=0.1), 0.01)), math.log10(max(allv, default=10) * 1.2)
    colors = {"p50_ms": "#7fb77e", "p99_ms": "#e0a03c", "p999_ms": "#d05a4a"}
    for n, v in series:
        rows.append(f'<text x="10" y="{y + 20}" font-size="12">{n}</text>')
        for k in ("p50_ms", "p99_ms", "p999_ms"):
            val = max(v[k], 10 ** lo)
            bw = (w - left - 90) * (math.log10(val) - lo) / (hi - lo)
            rows.append(f'<rect x="{left}" y="{y}" width="{max(bw, 1):.1f}" height="9" fill="{colors[k]}"/>')
            rows.append(f'<text x="{left + max(bw, 1) + 4:.1f}" y="{y + 8}" font-size="9">{v[k]:.2f}</text>')
            y += 10
        y += gap + 2
    rows.append(f'<text x="{left}" y="{y + 14}" font-size="11"><tspan fill="#7fb77e">■ p50</tspan>  <tspan fill="#e0a03c">■ p99</tspan>  <tspan fill="#d05a4a">■ p999</tspan></text>')
    h = y + 30
    path.write_text(f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" '
                    f'font-family="sans-serif"><rect width="100%" height="100%" fill="white"/>'
                    + "".join(rows) + "</svg>\n")


def markdown(results, a):
    out = []
    m = results["machine"]
    out.append(f"Measured {m['date']} on {m['cpus']} CPUs ({m['cpu']}), {m['mem_gib']:.0f} GiB, "
               f"Linux {m['kernel']}; `python3 benches/run.py --duration {a.duration} "
               f"--connections {a.connections} --rounds {a.rounds}`; load generator "
               f"(`benches/src/bin/load.rs`, {a.connections} keep-alive connections) on the same "
               f"machine; servers run with RUST_BACKTRACE=0 and WASM_RUN_LOG=warn. "
               f"Figures are medians over rounds; rounds interleave the systems.\n")
    if "hello" in results:
        out.append("### 1. hello\n")
        out.append("| system | req/s | p50 ms | p99 ms | p999 ms | failed |")
        out.append("|---|---|---|---|---|---|")
        for n, v in results["hello"].items():
            out.append(f"| {n} | {v['rps']:,.0f} | {v['p50_ms']:.2f} | {v['p99_ms']:.2f} | "
                       f"{v['p999_ms']:.2f} | {v['failed']} |")
        h = results["hello"]
        ratios = ratio_lines(h)
        ratios.append(f"wasm-run CGI / process per request: "
                      f"**{h['wasm-run CGI']['rps'] / h['process per request (fork/exec)']['rps']:.1f}×**")
        ratios.append(f"wasm-run wasi:http / native hyper: "
                      f"{h['wasm-run wasi:http']['rps'] / h['native hyper']['rps']:.2f}×")
        out.append("\n" + "; ".join(ratios) + ".\n")
    if "hello_wrk" in results:
        out.append(f"#### hello under `wrk -t2 -c{a.wrk_connections} -d{a.duration}s` "
                   f"(same servers, interleaved with the rows above)\n")
        out.append("| system | req/s | p99 ms | failed |")
        out.append("|---|---|---|---|")
        for n, v in results["hello_wrk"].items():
            out.append(f"| {n} | {v['rps']:,.0f} | {v['p99_ms']:.2f} | {v['failed']} |")
        out.append("\n" + "; ".join(ratio_lines(results["hello_wrk"])) + ".\n")
    if "isolation" in results:
        i = results["isolation"]
        out.append("### 2. isolation: 50% hello + 50% abusive (spin, bomb, sleep)\n")
        out.append("wasm-run serve, wasi:http guest, `--timeout 1s --max-memory 32MiB`.\n")
        out.append("| hello | req/s | p50 ms | p99 ms | p999 ms |")
        out.append("|---|---|---|---|---|")
        for k in ("alone", "mix"):
            v = i[k]
            out.append(f"| {k} | {v['rps']:,.0f} | {v['p50_ms']:.2f} | {v['p99_ms']:.2f} | {v['p999_ms']:.2f} |")
        out.append(f"\nhello failures in the mix: **{i['hello_failures']}**; p99 ratio mix/alone: "
                   f"**{i['p99_ratio']:.2f}**; abusive requests' statuses: "
                   f"`{json.dumps(i['abusive_statuses'])}`.\n")
    if "overload" in results:
        o = results["overload"]
        out.append("### 3. overload: memory bombs against a 128 MiB budget\n")
        out.append("wasm-run serve, CGI demo `/bomb` (each request grows to its 32 MiB cap and is "
                   "killed), `--memory-budget 128MiB --max-queue 16 --queue-timeout 500ms`, "
                   "128 connections.\n")
        out.append(f"| budget | idle RSS | peak RSS | peak − budget | statuses | other errors |")
        out.append("|---|---|---|---|---|---|")
        out.append(f"| {o['budget_bytes'] / MIB:.0f} MiB | {o['idle_rss_bytes'] / MIB:.0f} MiB | "
                   f"{o['peak_rss_bytes'] / MIB:.0f} MiB | {o['peak_over_budget_bytes'] / MIB:+.0f} MiB | "
                   f"`{json.dumps(o['statuses'])}` | {o['other'] + o['connection_errors']} |")
        out.append("")
    out.append("![throughput and latency per scenario and system](plot.svg)\n")
    return "\n".join(out)


def machine():
    cpu = "unknown"
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem = int(open("/proc/meminfo").readline().split()[1]) / (1 << 20)
    return {"date": time.strftime("%Y-%m-%d"), "cpus": os.cpu_count(), "cpu": cpu,
            "mem_gib": mem, "kernel": platform.release()}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--duration", type=int, default=10)
    p.add_argument("--connections", type=int, default=32)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--wrk-connections", type=int, default=64)
    p.add_argument("--wasmtime", help="wasmtime 48 binary (default: `wasmtime` on PATH)")
    p.add_argument("--only", choices=["hello", "isolation", "overload"], action="append")
    a = p.parse_args()
    global WASMTIME
    WASMTIME = a.wasmtime
    sh("scripts/setup.sh")
    sh("cargo", "build", "--release", "-p", "wasm-run-cli", "-p", "wasm-run-benches", "--bins")
    sh("cargo", "build", "-p", "wasm-run-tests")
    results = {"machine": machine()}
    for name, f in [("hello", scenario_hello), ("isolation", scenario_isolation),
                    ("overload", scenario_overload)]:
        if not a.only or name in a.only:
            print(f"== {name}", file=sys.stderr)
            f(a, results)
    (ROOT / "benches/results.json").write_text(json.dumps(results, indent=1) + "\n")
    svg(results, ROOT / "benches/plot.svg")
    md = markdown(results, a)
    res = ROOT / "benches/RESULTS.md"
    text = res.read_text()
    begin, end = "<!-- http:begin -->", "<!-- http:end -->"
    if begin in text:
        text = text[:text.index(begin) + len(begin)] + "\n" + md + "\n" + text[text.index(end):]
        res.write_text(text)
    print(md)


if __name__ == "__main__":
    main()
