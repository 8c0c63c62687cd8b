#!/usr/bin/env python3
"""Two `wasm-run serve` replicas behind HAProxy: the scale-out story, tested.

    python3 deploy/replicas_test.py [--wasm-run PATH | --image IMAGE] [--json OUT]

With --image, each replica is a container of that image (deploy/image.sh
builds one) run by Podman on the host's network, bound to 127.0.0.1, with a
read-only root file system; a restart starts a new container from the image.

HAProxy health-checks each replica's `/readyz` on its admin port and retries
a request that met a refused connection, an empty response or a 503 on the
other replica (`retry-on`, `option redispatch`) -- for GET requests, which
are safe to retry. Everything listens on 127.0.0.1; the test stops itself.

1. Saturation: replica A is flooded directly (not through HAProxy) with slow
   requests until its admission queue is full; its `/readyz` turns 503,
   HAProxy takes it out of rotation, and a steady stream of `GET /hello`
   through HAProxy sees no error. When the flood stops, A comes back.
2. Rolling restart: under the same steady stream, A gets SIGTERM (it
   drains and exits 0), is started again and waits to be back in rotation;
   then B. Not one request may fail.

Exits non-zero, saying why, when an expectation fails. Needs `haproxy`
(Debian: `apt-get install haproxy`) and a built `wasm-run`.
"""

import argparse
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Small budget so that a flood fills it quickly: 16 MiB cap + 4 MiB host
# allowance per request -> 3 requests at once, 4 more may queue.
REPLICA_FLAGS = ["--max-memory", "16MiB", "--memory-budget", "60MiB", "--max-queue", "4",
                 "--queue-timeout", "5s", "--timeout", "5s"]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fail(message):
    print(f"replicas_test: FAIL: {message}", file=sys.stderr)
    sys.exit(1)


class Replica:
    """One `wasm-run serve`: a process of `exe`, or a container of `image`."""

    def __init__(self, name, exe=None, image=None):
        self.name, self.exe, self.image = name, exe, image
        self.port, self.admin = free_port(), free_port()
        self.proc = None
        self.container = None
        self.starts = 0
        self.ready_after = []

    def command(self):
        serve = ["serve", "--addr", f"127.0.0.1:{self.port}",
                 "--admin-addr", f"127.0.0.1:{self.admin}", *REPLICA_FLAGS]
        if self.image is None:
            return [self.exe, *serve]
        self.starts += 1
        self.container = f"wasm-run-replica-{self.name}-{os.getpid()}-{self.starts}"
        return ["podman", "run", "--rm", "--network", "host", "--read-only",
                "--tmpfs", "/tmp", "--name", self.container, "-e", "WASM_RUN_LOG=warn",
                "-e", f"WASM_RUN_ADMIN_PORT={self.admin}", self.image, *serve]

    def start(self):
        started = time.time()
        self.proc = subprocess.Popen(
            self.command(), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
            env={**os.environ, "WASM_RUN_LOG": "warn"})
        line = self.proc.stdout.readline()
        if "Serving HTTP on" not in line:
            fail(f"replica {self.name} did not start: {line!r}")
        threading.Thread(target=lambda: [None for _ in self.proc.stdout], daemon=True).start()
        deadline = time.time() + 30
        while self.readyz() != 200:
            if time.time() > deadline:
                fail(f"replica {self.name} never became ready")
            time.sleep(0.01)
        self.ready_after.append(round(time.time() - started, 3))

    def healthcheck(self):
        """The image's HEALTHCHECK, run by Podman: 0 when healthy."""
        return subprocess.run(["podman", "healthcheck", "run", self.container],
                              capture_output=True, text=True, timeout=30)

    def readyz(self):
        try:
            c = http.client.HTTPConnection("127.0.0.1", self.admin, timeout=2)
            c.request("GET", "/readyz")
            return c.getresponse().status
        except OSError:
            return None

    def terminate(self, within=30):
        if self.container:
            # The container's process gets the SIGTERM (Podman's `run`
            # forwards it too, but `kill` does not depend on that).
            subprocess.run(["podman", "kill", "--signal", "TERM", self.container],
                           capture_output=True, timeout=30)
        else:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(within)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            fail(f"replica {self.name} did not drain within {within}s of SIGTERM")
        if code != 0:
            fail(f"replica {self.name} exited {code} after SIGTERM, not 0")

    def kill(self):
        if self.container:
            subprocess.run(["podman", "rm", "--force", "--time", "0", self.container],
                           capture_output=True, timeout=60)
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


class HAProxy:
    def __init__(self, replicas, workdir):
        self.port = free_port()
        self.socket = str(Path(workdir) / "haproxy.sock")
        servers = "\n".join(
            f"  server {r.name} 127.0.0.1:{r.port} check port {r.admin}" for r in replicas)
        config = f"""
global
  stats socket {self.socket} mode 600 level admin
defaults
  mode http
  timeout connect 1s
  timeout client 30s
  timeout server 30s
  retries 3
  option redispatch 1
  retry-on conn-failure empty-response response-timeout 503
frontend web
  bind 127.0.0.1:{self.port}
  default_backend replicas
backend replicas
  balance roundrobin
  option httpchk GET /readyz
  http-check expect status 200
  default-server inter 100ms fall 1 rise 2
{servers}
"""
        path = Path(workdir) / "haproxy.cfg"
        path.write_text(config)
        self.proc = subprocess.Popen(["haproxy", "-db", "-f", str(path)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 10
        while time.time() < deadline:
            if Path(self.socket).exists() and self.status():
                return
            time.sleep(0.05)
        fail("haproxy did not start")

    def status(self):
        """Each server's status as HAProxy sees it (UP, DOWN, ...)."""
        try:
            with socket.socket(socket.AF_UNIX) as s:
                s.connect(self.socket)
                s.sendall(b"show stat\n")
                data = b""
                while chunk := s.recv(65536):
                    data += chunk
        except OSError:
            return {}
        lines = data.decode().splitlines()
        if not lines:
            return {}
        header = lines[0].lstrip("# ").split(",")
        out = {}
        for line in lines[1:]:
            row = dict(zip(header, line.split(",")))
            if row.get("pxname") == "replicas" and row.get("svname") not in ("BACKEND", None):
                out[row["svname"]] = row["status"].split()[0]
        return out

    def wait_status(self, name, want, within):
        deadline = time.time() + within
        while time.time() < deadline:
            if self.status().get(name) == want:
                return
            time.sleep(0.02)
        fail(f"haproxy did not see {name} {want} within {within}s: {self.status()}")

    def stop(self):
        self.proc.terminate()
        self.proc.wait(10)


class Steady:
    """GET /hello through HAProxy from a few threads, ~200 requests/s."""

    def __init__(self, port, threads=4, pause=0.02):
        self.port, self.pause = port, pause
        self.stop_flag = threading.Event()
        self.ok = 0
        self.failures = []
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self.run) for _ in range(threads)]
        for t in self.threads:
            t.start()

    def run(self):
        conn = None
        while not self.stop_flag.is_set():
            try:
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
                conn.request("GET", "/hello")
                r = conn.getresponse()
                body = r.read()
                with self.lock:
                    if r.status == 200 and body == b"Hello from wasm-run!\n":
                        self.ok += 1
                    else:
                        self.failures.append(f"{r.status} {body[:100]!r}")
            except (OSError, http.client.HTTPException) as e:
                with self.lock:
                    self.failures.append(repr(e))
                conn = None
            time.sleep(self.pause)

    def finish(self):
        self.stop_flag.set()
        for t in self.threads:
            t.join()
        return self.ok, self.failures


def flood(replica, stop, connections=16):
    """Slow requests straight at one replica: fills its budget and queue."""
    def one():
        while not stop.is_set():
            try:
                c = http.client.HTTPConnection("127.0.0.1", replica.port, timeout=10)
                c.request("GET", "/sleep")
                c.getresponse().read()
            except (OSError, http.client.HTTPException):
                time.sleep(0.01)
    threads = [threading.Thread(target=one) for _ in range(connections)]
    for t in threads:
        t.start()
    return threads


def settle(steady, figures, phase, what):
    """Stops the steady stream of a phase; fails unless every request of it
    succeeded (and enough went through to mean something)."""
    ok, failures = steady.finish()
    figures[phase] = {"ok": ok, "failed": len(failures), "errors": failures[:5]}
    name = phase.replace("_", " ")
    print(f"{name}: {what}; {ok} hellos ok, {len(failures)} failed", file=sys.stderr)
    if failures:
        fail(f"{len(failures)} requests failed during the {name} phase: {failures[:5]}")
    if ok < 100:
        fail(f"only {ok} requests went through during the {name} phase")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--wasm-run", default=None, help="wasm-run binary (default: target/release, "
                   "else target/debug)")
    p.add_argument("--image", default=None, help="run each replica as a container of this "
                   "image (Podman; deploy/image.sh builds one)")
    p.add_argument("--json", help="write the figures here")
    a = p.parse_args()
    exe = a.wasm_run
    if a.image:
        if not shutil.which("podman"):
            fail("podman is not installed (apt-get install podman runc)")
        os.environ.setdefault("CONTAINERS_CONF", str(ROOT / "deploy/containers.conf"))
        if subprocess.run(["podman", "image", "exists", a.image]).returncode != 0:
            fail(f"no image {a.image}; build it with deploy/image.sh")
        exe = "(image)"
    elif exe is None:
        for candidate in (ROOT / "target/release/wasm-run", ROOT / "target/debug/wasm-run"):
            if candidate.exists():
                exe = str(candidate)
                break
    if not a.image and (not exe or not Path(exe).exists()):
        fail("no wasm-run binary; build it with `cargo build -p wasm-run-cli`")
    if not shutil.which("haproxy"):
        fail("haproxy is not installed (apt-get install haproxy)")
    figures = {}
    workdir = tempfile.mkdtemp(prefix="wasm-run-replicas-")
    a_rep, b_rep = Replica("a", exe, a.image), Replica("b", exe, a.image)
    lb = None
    try:
        a_rep.start()
        b_rep.start()
        if a.image:
            check = a_rep.healthcheck()
            if check.returncode != 0:
                fail(f"the image's HEALTHCHECK failed: {check.stdout} {check.stderr}")
            size = subprocess.run(["podman", "image", "inspect", "--format", "{{.Size}}",
                                   a.image], capture_output=True, text=True).stdout.strip()
            figures["image"] = a.image
            figures["image_size_mib"] = round(int(size) / (1 << 20), 1)
        lb = HAProxy([a_rep, b_rep], workdir)
        lb.wait_status("a", "UP", 10)
        lb.wait_status("b", "UP", 10)

        # 1. Saturate A; HAProxy takes it out; no client error.
        steady = Steady(lb.port)
        time.sleep(1)
        stop = threading.Event()
        started = time.time()
        flooders = flood(a_rep, stop)
        lb.wait_status("a", "DOWN", 10)
        figures["saturation_detected_s"] = round(time.time() - started, 3)
        if a_rep.readyz() != 503:
            fail(f"replica a is out of rotation but its /readyz says {a_rep.readyz()}")
        time.sleep(3)
        stop.set()
        for t in flooders:
            t.join()
        lb.wait_status("a", "UP", 15)
        settle(steady, figures, "saturation",
               f"A out of rotation after {figures['saturation_detected_s']} s")

        # 2. Rolling restart under load: zero lost requests.
        steady = Steady(lb.port)
        time.sleep(1)
        started = time.time()
        for replica in (a_rep, b_rep):
            replica.terminate()
            lb.wait_status(replica.name, "DOWN", 10)
            replica.start()
            lb.wait_status(replica.name, "UP", 15)
        figures["rolling_restart_s"] = round(time.time() - started, 3)
        figures["start_to_ready_s"] = a_rep.ready_after + b_rep.ready_after
        time.sleep(1)
        settle(steady, figures, "rolling_restart", f"{figures['rolling_restart_s']} s")
    finally:
        for r in (a_rep, b_rep):
            r.kill()
        if lb:
            lb.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    if a.json:
        Path(a.json).write_text(json.dumps(figures, indent=1) + "\n")
    what = f"containers of {a.image}" if a.image else "processes"
    print(f"replicas_test: ok ({what}; ready after {figures['start_to_ready_s']} s)",
          file=sys.stderr)


if __name__ == "__main__":
    main()
