#!/usr/bin/env python3
"""Soak test of `wasm-run serve`: mixed, partly hostile traffic for a long
time, sampling the server's resident memory, open file descriptors and
threads every second. Everything stays flat, or the soak fails.

    python3 benches/soak.py [--duration 1800] [--binary target/debug/wasm-run]

Traffic (loopback only, bounded in count and time, stops by itself):
  - well-behaved: GET /hello every 20 ms, alternating the wasi:http guest and
    the CGI demo, each on a fresh connection; any answer but 200 (or no
    answer within 10 s) is a failure;
  - abusive guests, one loop each: spin (fuel or deadline), bomb (memory
    cap) on both guest kinds, fields (host memory through wasi:http
    fields), kept outgoing bodies (host memory through wasi:http bodies
    never sent), an instance-state bomb (a component instantiating a module
    of 15,000 globals 62 times: ~15 MB, inside the pool's 16 MiB per
    component, against a 4 MiB cap), sleep (deadline);
  - WASI 0.3 abusers (the p3 guest, one route per path), one loop each: streams and
    futures created and kept without end (/hoard), subtasks that spin,
    a proxy of an upstream that sends a head and one chunk and goes
    silent, an upload to an upstream that answers at once and never
    reads the body; the two upstreams are this script's, on loopback;
    and one well-behaved WASI 0.3 request (`/stream?n=1`) every 100 ms;
  - hostile clients: 20 slowloris heads, 10 bodies that announce 1 MB and
    send 3 bytes, 2 clients that request an endless response and never
    read (one of the CGI demo, one of a WASI 0.3 blob); each reconnects
    when the server drops it.

Writes benches/soak.json and benches/soak.svg and prints a summary in the
markdown of benches/RESULTS.md. Exit status 1 if a well-behaved request
failed or a resource grew (last 10% of samples vs the 10% after warm-up).
"""

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GUESTS = ROOT / "target" / "guests"
HTTP_GUEST = GUESTS / "wasm32-wasip2/release/wasm_run_http_guest.wasm"
DEMO = GUESTS / "wasm32-wasip1/release/demo.wasm"
P3_GUEST = GUESTS / "wasm32-wasip2/release/wasm_run_p3_http_guest.wasm"
MIB = 1 << 20
MAX_DURATION = 3 * 3600


def state_bomb():
    """A command component whose instances' state (~15 MB) could never fit
    its route's 4 MiB cap: refused before the host allocates it."""
    wat = tempfile.NamedTemporaryFile("w", suffix=".wat", delete=False)
    wat.write("(component\n  (core module $state\n")
    wat.write("    (global i64 (i64.const 0))\n" * 15_000)
    wat.write("  )\n")
    for i in range(62):
        wat.write(f"  (core instance $s{i} (instantiate $state))\n")
    wat.write("""  (core module $main (func (export "run") (result i32) (i32.const 0)))
  (core instance $m (instantiate $main))
  (func $run (result (result)) (canon lift (core func $m "run")))
  (instance $cli (export "run" (func $run)))
  (export "wasi:cli/run@0.2.0" (instance $cli))
)
""")
    wat.close()
    return wat.name


async def silent_upstream(conn_reader, conn_writer):
    """Reads a request head, sends a response head and one chunk, then
    stays silent until the server closes the connection."""
    try:
        await conn_reader.read(4096)
        conn_writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
                          b"6\r\nfirst\n\r\n")
        await conn_writer.drain()
        while await conn_reader.read(65536):
            pass
    except (OSError, asyncio.CancelledError):
        pass
    finally:
        conn_writer.close()


async def deaf_upstream(conn_reader, conn_writer):
    """Answers at once, then never reads again (past what asyncio buffers);
    holds the connection until the server closes it, seen as a failed write
    of a probe byte every second."""
    try:
        await conn_reader.read(1024)
        conn_writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
        await conn_writer.drain()
        while not conn_writer.is_closing():
            await asyncio.sleep(1)
            conn_writer.write(b" ")
            await conn_writer.drain()
    except (OSError, asyncio.CancelledError):
        pass
    finally:
        conn_writer.close()


def start_server(binary, duration, upstreams):
    bomb = state_bomb()
    config = tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False)
    config.write(f"""
[server]
memory-budget = "1GiB"
max-queue = 64
queue-timeout = "5s"
header-timeout = "2s"
body-timeout = "2s"
write-timeout = "2s"
admin-addr = "127.0.0.1:0"

[limits]
max-memory = "32MiB"
timeout = "2s"
fuel = 2000000000

[[route]]
path = "/"
module = "{HTTP_GUEST}"

[[route]]
path = "/cgi"
module = "{DEMO}"

[[route]]
path = "/statebomb"
module = "{bomb}"
limits = {{ max-memory = "4MiB" }}

""")
    # The WASI 0.3 guest routes on the whole path, so each of its paths
    # the soak uses is a route of its own (`/stream?n=1` is its hello).
    for path in ("/hoard", "/subtasks", "/proxy", "/upload", "/blob", "/stream"):
        config.write(f"""
[[route]]
path = "{path}"
module = "{P3_GUEST}"
allowed-outbound-hosts = {json.dumps(upstreams)}
""")
    config.close()
    proc = subprocess.Popen(
        [str(binary), "serve", "--addr", "127.0.0.1:0", "--config", config.name],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        env={**os.environ, "WASM_RUN_LOG": "error", "RUST_BACKTRACE": "0"},
    )
    addr = proc.stdout.readline().strip()
    admin = proc.stdout.readline().strip()
    if not addr.startswith("Serving HTTP on http://"):
        proc.kill()
        sys.exit(f"soak: server did not start: {addr!r}")
    host, port = addr.removeprefix("Serving HTTP on http://").rstrip("/").split(":")
    assert host.startswith("127."), "loopback only"
    return proc, (host, int(port))


def proc_sample(pid):
    status = Path(f"/proc/{pid}/status").read_text()
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    rss = int(fields["VmRSS"].split()[0]) * 1024
    threads = int(fields["Threads"])
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    return rss, fds, threads


async def request(addr, raw, timeout=10.0):
    """Sends raw bytes on a fresh connection; returns the status code, or
    None on a timeout or a connection error."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(*addr), timeout)
    except (OSError, asyncio.TimeoutError):
        return None
    try:
        writer.write(raw)
        await writer.drain()
        # The status line is all that is needed; endless bodies are cut off.
        data = await asyncio.wait_for(reader.read(65536), timeout)
        line = data.split(b"\r\n", 1)[0].split()
        return int(line[1]) if len(line) > 1 else None
    except (OSError, asyncio.TimeoutError, ValueError):
        return None
    finally:
        writer.close()


def get(path):
    return f"GET {path} HTTP/1.1\r\nHost: soak\r\nConnection: close\r\n\r\n".encode()


class Stats:
    def __init__(self):
        self.hello = []          # (time, latency seconds, status)
        self.abuse = {}          # path -> {status: count}
        self.hostile = {"slowloris": 0, "dribble": 0, "nonreader": 0}
        self.samples = []        # (t, rss, fds, threads)


async def well_behaved(addr, stats, stop, paths=("/hello", "/cgi/hello"), every=0.02):
    """GETs `paths` in turn, one every `every` seconds, each on a fresh
    connection, recording latency and status."""
    i = 0
    tasks = set()
    while not stop.is_set():
        path = paths[i % len(paths)]
        i += 1

        async def one(path=path):
            t0 = time.monotonic()
            status = await request(addr, get(path))
            stats.hello.append((t0, time.monotonic() - t0, status))

        task = asyncio.create_task(one())
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        await asyncio.sleep(every)
    await asyncio.gather(*tasks)


async def abuser(addr, path, stats, stop):
    counts = stats.abuse.setdefault(path, {})
    while not stop.is_set():
        status = await request(addr, get(path), timeout=30)
        counts[status] = counts.get(status, 0) + 1


async def slowloris(addr, stats, stop):
    while not stop.is_set():
        try:
            reader, writer = await asyncio.open_connection(*addr)
            writer.write(b"GET /hello HTTP/1.1\r\nHost: soak\r\n")
            await writer.drain()
            await reader.read()  # until the server drops us
            writer.close()
            stats.hostile["slowloris"] += 1
        except OSError:
            await asyncio.sleep(0.1)


async def dribbler(addr, stats, stop):
    while not stop.is_set():
        try:
            reader, writer = await asyncio.open_connection(*addr)
            writer.write(b"POST /cgi/echo HTTP/1.1\r\nHost: soak\r\n"
                         b"Content-Length: 1000000\r\n\r\nabc")
            await writer.drain()
            await reader.read()  # a 408 once the body timeout passes
            writer.close()
            stats.hostile["dribble"] += 1
        except OSError:
            await asyncio.sleep(0.1)


async def nonreader(addr, stats, stop, path="/cgi/flood"):
    """Requests an endless response and never reads it. The server drops
    such a connection (deadline, write timeout) but cannot deliver its FIN
    through a full window, so the client cannot see that: it gives up after
    10 s and comes back."""
    import socket
    while not stop.is_set():
        try:
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.setblocking(False)
            await asyncio.get_running_loop().sock_connect(sock, addr)
            await asyncio.get_running_loop().sock_sendall(sock, get(path))
            for _ in range(20):
                if stop.is_set():
                    break
                await asyncio.sleep(0.5)
            sock.close()
            stats.hostile["nonreader"] += 1
        except OSError:
            await asyncio.sleep(0.1)


async def sampler(pid, stats, stop, start):
    while not stop.is_set():
        try:
            rss, fds, threads = proc_sample(pid)
        except (OSError, KeyError):
            break
        stats.samples.append((time.monotonic() - start, rss, fds, threads))
        await asyncio.sleep(1)


async def soak(addr, pid, duration, stats, upstreams):
    stop = asyncio.Event()
    start = time.monotonic()
    tasks = [asyncio.create_task(well_behaved(addr, stats, stop)),
             asyncio.create_task(sampler(pid, stats, stop, start))]
    silent, deaf = upstreams
    for path in ["/spin", "/bomb", "/fields?kib=15", "/sleep?s=10", "/cgi/bomb",
                 "/cgi/spin", "/keep-bodies?n=1000&kib=2048", "/statebomb",
                 "/hoard", "/subtasks?what=spin",
                 f"/proxy?url=http://{silent}/", f"/upload?url=http://{deaf}/"]:
        tasks.append(asyncio.create_task(abuser(addr, path, stats, stop)))
    # The WASI 0.3 guest's well-behaved request, counted with the hellos.
    tasks.append(asyncio.create_task(well_behaved(addr, stats, stop, ("/stream?n=1",), 0.1)))
    tasks += [asyncio.create_task(slowloris(addr, stats, stop)) for _ in range(20)]
    tasks += [asyncio.create_task(dribbler(addr, stats, stop)) for _ in range(10)]
    tasks.append(asyncio.create_task(nonreader(addr, stats, stop)))
    tasks.append(asyncio.create_task(nonreader(addr, stats, stop, "/blob?kib=65536")))
    await asyncio.sleep(duration)
    stop.set()
    await asyncio.wait(tasks, timeout=40)


def trend(samples, column):
    """Median of a column over the 10% of samples after a 10% warm-up, and
    over the last 10%; plus the least-squares slope per hour."""
    n = len(samples)
    k = max(1, n // 10)
    early = statistics.median(s[column] for s in samples[k:2 * k])
    late = statistics.median(s[column] for s in samples[-k:])
    xs = [s[0] for s in samples[k:]]
    ys = [s[column] for s in samples[k:]]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    var = sum((x - mx) ** 2 for x in xs) or 1.0
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / var * 3600
    return early, late, slope


def svg(samples, path):
    w, h, pad = 720, 420, 50
    t_max = max(s[0] for s in samples) or 1
    panels = [("RSS (MiB)", 1, lambda v: v / MIB), ("open fds", 2, float),
              ("threads", 3, float)]
    ph = (h - 2 * pad) / len(panels)
    parts = [f'<text x="{pad}" y="20" font-size="14">wasm-run serve soak: '
             f'{t_max / 60:.0f} min of mixed hostile traffic</text>']
    for i, (label, col, f) in enumerate(panels):
        top = pad + i * ph
        vals = [f(s[col]) for s in samples]
        vmax = max(vals) * 1.1 or 1
        pts = " ".join(
            f"{pad + (s[0] / t_max) * (w - 2 * pad):.1f},"
            f"{top + ph - 10 - (v / vmax) * (ph - 20):.1f}"
            for s, v in zip(samples, vals))
        parts.append(f'<rect x="{pad}" y="{top}" width="{w - 2 * pad}" height="{ph - 10}" '
                     'fill="none" stroke="#ccc"/>')
        parts.append(f'<polyline points="{pts}" fill="none" stroke="#2a6" stroke-width="1"/>')
        parts.append(f'<text x="{pad + 4}" y="{top + 14}" font-size="12">{label}: '
                     f'max {max(vals):.0f}</text>')
    parts.append(f'<text x="{w - pad - 60}" y="{h - 10}" font-size="12">time (s)</text>')
    path.write_text(f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}">'
                    + "".join(parts) + "</svg>\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--duration", type=float, default=1800)
    ap.add_argument("--binary", default=str(ROOT / "target/debug/wasm-run"))
    ap.add_argument("--out", default=str(ROOT / "benches"))
    args = ap.parse_args()
    if not 10 <= args.duration <= MAX_DURATION:
        sys.exit(f"soak: --duration must be between 10 and {MAX_DURATION} seconds")
    for f in (HTTP_GUEST, DEMO, P3_GUEST, Path(args.binary)):
        if not f.exists():
            sys.exit(f"soak: {f} is missing; run `cargo test --workspace --no-run` first")
    stats = Stats()
    proc = None

    async def run():
        nonlocal proc
        upstreams = []
        servers = []
        for handler in (silent_upstream, deaf_upstream):
            server = await asyncio.start_server(handler, "127.0.0.1", 0)
            servers.append(server)
            upstreams.append("127.0.0.1:%d" % server.sockets[0].getsockname()[1])
        proc, addr = start_server(args.binary, args.duration, upstreams)
        try:
            await soak(addr, proc.pid, args.duration, stats, upstreams)
        finally:
            for server in servers:
                server.close()

    try:
        asyncio.run(run())
    finally:
        if proc is not None:
            proc.kill()
            proc.wait()
    hello = stats.hello
    failed = [h for h in hello if h[2] != 200]
    lat = sorted(h[1] for h in hello)
    summary = {
        "duration_s": args.duration,
        "hello_requests": len(hello),
        "hello_failed": len(failed),
        "hello_p50_ms": lat[len(lat) // 2] * 1000 if lat else None,
        "hello_p99_ms": lat[int(len(lat) * 0.99)] * 1000 if lat else None,
        "hello_max_ms": lat[-1] * 1000 if lat else None,
        "abusive": {p: {str(k): v for k, v in c.items()} for p, c in stats.abuse.items()},
        "hostile_clients_dropped": stats.hostile,
        "samples": len(stats.samples),
    }
    grew = []
    for name, col, allowance in (("rss_bytes", 1, 64 * MIB), ("open_fds", 2, 64),
                                 ("threads", 3, 8)):
        early, late, slope = trend(stats.samples, col)
        summary[name] = {"early_median": early, "late_median": late,
                         "max": max(s[col] for s in stats.samples), "slope_per_hour": slope}
        if late - early > allowance:
            grew.append(name)
    summary["grew"] = grew
    out = Path(args.out)
    (out / "soak.json").write_text(json.dumps(
        {"summary": summary, "samples": stats.samples}, indent=1) + "\n")
    svg(stats.samples, out / "soak.svg")
    r, f, t = summary["rss_bytes"], summary["open_fds"], summary["threads"]
    print(f"""
| measure | after warm-up (median) | last 10% (median) | max | trend |
|---|---|---|---|---|
| server RSS | {r['early_median'] / MIB:.1f} MiB | {r['late_median'] / MIB:.1f} MiB | {r['max'] / MIB:.1f} MiB | {r['slope_per_hour'] / MIB:+.1f} MiB/h |
| open fds | {f['early_median']:.0f} | {f['late_median']:.0f} | {f['max']} | {f['slope_per_hour']:+.1f}/h |
| threads | {t['early_median']:.0f} | {t['late_median']:.0f} | {t['max']} | {t['slope_per_hour']:+.1f}/h |

well-behaved hello: {summary['hello_requests']} requests, {summary['hello_failed']} failed,
p50 {summary['hello_p50_ms']:.1f} ms, p99 {summary['hello_p99_ms']:.1f} ms, max {summary['hello_max_ms']:.0f} ms
abusive: {json.dumps(summary['abusive'])}
hostile connections made (each dropped, then made again): {json.dumps(stats.hostile)}
""")
    if failed or grew:
        print(f"soak: FAILED ({len(failed)} failed hellos; grew: {grew})", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
