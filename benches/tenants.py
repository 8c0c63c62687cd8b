#!/usr/bin/env python3
"""A victim tenant's latency alone and beside a flooded tenant, with and
without tenants.

    python3 benches/tenants.py [--wasm-run target/debug/wasm-run]
        [--victims 100] [--flood 40] [--flood-kind slow|fast|bomb]
        [--only own]

The issue's scenario, on loopback: two routes of the CGI demo, `/a` a
request that sleeps into its 1 s deadline and `/b` the hello page, each with
a 16 MiB cap; `--memory-budget 74MiB` (four requests: 16 MiB + 256 KiB
and a 2 MiB stack each) and queues of 16.
Three configurations, the same binary:
  - one tenant: both routes in one `[[tenant]]`, i.e. one FIFO queue, as
    a host without tenants;
  - a tenant per route (the default);
  - a tenant per route, the flood's held to `max-share = 0.75`.
For each: --victims sequential GET /b/hello alone, then again while --flood
connections loop on /a: requests that sleep into their deadline (`slow`,
the default), hello pages (`fast`) or memory bombs killed at their cap
(`bomb`). --only runs one configuration (`shared`, `own` or `capped`). Prints a JSON line per measurement and a markdown
table: victim statuses, p50/p99/max latency.
"""

import argparse
import http.client
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "target/guests/wasm32-wasip1/release/demo.wasm"


# What the flooding connections loop on.
FLOODS = {"slow": "/a/sleep?s=10", "fast": "/a/hello", "bomb": "/a/bomb"}


def config(kind):
    """`shared`: both routes one tenant; `own`: a tenant each; `capped`: a
    tenant each, the flood's held to three quarters of the budget."""
    tenancy = {"shared": '[[tenant]]\nname = "everyone"\n',
               "own": "",
               "capped": '[[tenant]]\nname = "flood"\nmax-share = 0.75\n'}[kind]
    tenant = {"shared": {"/a": "everyone", "/b": "everyone"},
              "own": {},
              "capped": {"/a": "flood"}}[kind]
    routes = "".join(
        f'[[route]]\npath = "{p}"\nmodule = "{DEMO}"\n'
        f'limits = {{ max-memory = "16MiB", timeout = "1s" }}\n'
        + (f'tenant = "{tenant[p]}"\n' if p in tenant else "") + "\n"
        for p in ("/a", "/b"))
    return ('[server]\nmemory-budget = "74MiB"\nmax-queue = 16\nqueue-timeout = "5s"\n'
            + tenancy + routes)


def start(binary, text):
    path = Path(tempfile.mkdtemp()) / "tenants.toml"
    path.write_text(text)
    proc = subprocess.Popen([binary, "serve", "--addr", "127.0.0.1:0", "--config", str(path)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            env={"WASM_RUN_LOG": "error", "PATH": "/usr/bin:/bin"})
    line = proc.stdout.readline()
    addr = line.split("Serving HTTP on ", 1)[1].strip().removeprefix("http://").rstrip("/")
    assert addr.startswith("127."), "loopback only"
    threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()
    return proc, addr


def get(addr, path):
    host, port = addr.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        response.read()
        return response.status
    except OSError:
        return 0
    finally:
        conn.close()


def victims(addr, n):
    out = []
    for _ in range(n):
        t = time.perf_counter()
        status = get(addr, "/b/hello")
        out.append((status, time.perf_counter() - t))
    return out


def summary(samples):
    lat = sorted(s[1] * 1000 for s in samples)
    pick = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))]
    statuses = {}
    for status, _ in samples:
        statuses[status] = statuses.get(status, 0) + 1
    return {"statuses": statuses, "p50_ms": round(pick(0.5), 1), "p99_ms": round(pick(0.99), 1),
            "max_ms": round(lat[-1], 1)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--wasm-run", default=str(ROOT / "target/debug/wasm-run"))
    ap.add_argument("--victims", type=int, default=100)
    ap.add_argument("--flood", type=int, default=40)
    ap.add_argument("--flood-kind", choices=sorted(FLOODS), default="slow")
    ap.add_argument("--only", choices=["shared", "own", "capped"])
    args = ap.parse_args()
    rows = []
    configurations = (("one tenant (one FIFO queue)", "shared"),
                      ("a tenant per route", "own"),
                      ("a tenant per route, flood max-share 0.75", "capped"))
    for name, kind in configurations:
        if args.only and kind != args.only:
            continue
        proc, addr = start(args.wasm_run, config(kind))
        try:
            alone = summary(victims(addr, args.victims))
            stop = threading.Event()
            flood_statuses = {}

            def flood():
                while not stop.is_set():
                    s = get(addr, FLOODS[args.flood_kind])
                    flood_statuses[s] = flood_statuses.get(s, 0) + 1

            threads = [threading.Thread(target=flood, daemon=True) for _ in range(args.flood)]
            for t in threads:
                t.start()
            time.sleep(0.5)
            beside = summary(victims(addr, args.victims))
            stop.set()
            for t in threads:
                t.join(timeout=10)
        finally:
            proc.kill()
            proc.wait()
        for phase, s in (("alone", alone), ("beside the flood", beside)):
            s.update(config=name, phase=phase)
            print(json.dumps(s), flush=True)
            rows.append(s)
        print(json.dumps({"config": name, "flood_statuses": flood_statuses}), flush=True)
    print("\n| configuration | victim | statuses | p50 ms | p99 ms | max ms |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        st = ", ".join(f"{k}: {v}" for k, v in sorted(r["statuses"].items()))
        print(f"| {r['config']} | {r['phase']} | {st} | {r['p50_ms']} | {r['p99_ms']} | {r['max_ms']} |")


if __name__ == "__main__":
    sys.exit(main())
