#!/usr/bin/env python3
"""deploy/k8s applied by a real engine: `podman kube play` runs the
Deployment and its ConfigMap from the manifests, `podman kube down` stops
them.

    python3 deploy/kube_test.py [--image IMAGE] [--json OUT]

The manifests are applied as written but for what a test on one machine
must change, and says so: host networking with the server bound to
127.0.0.1 on free ports (the config's `addr` and `admin-addr`; the probes
name them by number, and the container declares no ports, which Podman
would map), one replica (two on the host's network
would share ports; deploy/replicas_test.py --image covers two), the image
under test, and the guests' PersistentVolumeClaim replaced by a host
directory holding a guest as /modules/app.wasm. Then:

1. The pod runs as the manifests say: user 10001, no new privileges, its
   own system-call filter, a read-only root file system.
2. The readiness and liveness probes (/readyz, /healthz on the admin port)
   answer 200, asked as a kubelet asks them, and the ConfigMap's route is
   served.
3. Deleting the pod while a request is in flight, as a kubelet does
   (SIGTERM, the manifest's grace period, then `podman kube down`): the
   server drains, the request is answered in full, the pod is gone.

The HorizontalPodAutoscaler and the Service need a cluster; they are
checked against the fields of their schemas (autoscaling/v2, v1) and
against the Deployment they name. Everything listens on 127.0.0.1; the test
removes what it created and stops itself. Needs podman and runc (Debian:
apt-get install podman runc), PyYAML, and an image (deploy/image.sh).
"""

import argparse
import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "k8s"
GUEST = ROOT / "target/guests/wasm32-wasip2/release/wasm_run_http_guest.wasm"
HELLO = b"Hello from wasm-run over wasi:http!\n"


def fail(message):
    print(f"kube_test: FAIL: {message}", file=sys.stderr)
    sys.exit(1)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(port, path, timeout=10):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    c.request("GET", path)
    r = c.getresponse()
    return r.status, r.read()


def status_or_none(port, path):
    try:
        return get(port, path, timeout=2)[0]
    except OSError:
        return None


def podman(*args, check=True, timeout=120):
    r = subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        fail(f"podman {' '.join(args)}: {r.stdout} {r.stderr}")
    return r


def load(name):
    docs = [d for d in yaml.safe_load_all((K8S / name).read_text()) if d]
    if len(docs) != 1:
        fail(f"{name}: expected one object, found {len(docs)}")
    return docs[0]


def check_cluster_objects(deployment):
    """The objects that need a cluster: their schema's fields, and that they
    name the Deployment and its ports."""
    kustomization = load("kustomization.yaml")
    for resource in kustomization["resources"]:
        if not (K8S / resource).exists():
            fail(f"kustomization names {resource}, which does not exist")
    hpa = load("hpa.yaml")
    if (hpa["apiVersion"], hpa["kind"]) != ("autoscaling/v2", "HorizontalPodAutoscaler"):
        fail(f"hpa.yaml is {hpa['apiVersion']} {hpa['kind']}")
    spec = hpa["spec"]
    target = spec["scaleTargetRef"]
    if (target["apiVersion"], target["kind"], target["name"]) != (
            "apps/v1", "Deployment", deployment["metadata"]["name"]):
        fail(f"the autoscaler's target {target} is not the Deployment")
    if not (isinstance(spec["minReplicas"], int) and isinstance(spec["maxReplicas"], int)
            and 1 <= spec["minReplicas"] <= spec["maxReplicas"]):
        fail(f"autoscaler replicas {spec['minReplicas']}..{spec['maxReplicas']}")
    for metric in spec["metrics"]:
        if metric["type"] != "Resource" or metric["resource"]["name"] not in ("cpu", "memory"):
            fail(f"autoscaler metric {metric}")
        t = metric["resource"]["target"]
        if t["type"] != "Utilization" or not 0 < t["averageUtilization"] <= 100:
            fail(f"autoscaler target {t}")
    service = load("service.yaml")
    if (service["apiVersion"], service["kind"]) != ("v1", "Service"):
        fail("service.yaml is not a v1 Service")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    for key, value in service["spec"]["selector"].items():
        if labels.get(key) != value:
            fail(f"the Service selects {key}={value}, which the pods do not carry")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    port_names = {p["name"] for p in container["ports"]}
    for port in service["spec"]["ports"]:
        if port["targetPort"] not in port_names:
            fail(f"the Service targets port {port['targetPort']}, not a container port")
    resources = container["resources"]
    if resources["limits"]["memory"] != resources["requests"]["memory"]:
        fail("memory request and limit differ (the budget is sized against the limit)")


def for_one_machine(configmap, deployment, image, port, admin, modules):
    """The manifests with what a test on one machine must change."""
    toml = configmap["data"]["wasm-run.toml"]
    for old, new in (('addr = "0.0.0.0:8080"', f'addr = "127.0.0.1:{port}"'),
                     ('admin-addr = "0.0.0.0:9090"', f'admin-addr = "127.0.0.1:{admin}"')):
        if old not in toml:
            fail(f"the ConfigMap no longer says {old}")
        toml = toml.replace(old, new)
    configmap["data"]["wasm-run.toml"] = toml

    deployment["spec"]["replicas"] = 1
    pod = deployment["spec"]["template"]["spec"]
    pod["hostNetwork"] = True
    container = pod["containers"][0]
    container["image"] = image
    # On the host's network the ports are the server's own: the probes
    # name them by number, and no port is mapped (Podman maps declared
    # container ports, which host networking forbids).
    numbers = {p["name"]: {"http": port, "admin": admin}[p["name"]] for p in container["ports"]}
    del container["ports"]
    for probe in ("readinessProbe", "livenessProbe"):
        get_ = container[probe]["httpGet"]
        get_["port"] = numbers.get(get_["port"], get_["port"])
    container.setdefault("env", []).append({"name": "WASM_RUN_ADMIN_PORT", "value": str(admin)})
    for volume in pod["volumes"]:
        if volume["name"] == "modules":
            volume.pop("persistentVolumeClaim")
            volume["hostPath"] = {"path": str(modules), "type": "Directory"}
    return configmap, deployment


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--image", default="localhost/wasm-run:latest")
    p.add_argument("--json", help="write the figures here")
    a = p.parse_args()
    if not shutil.which("podman"):
        fail("podman is not installed (apt-get install podman runc)")
    os.environ.setdefault("CONTAINERS_CONF", str(ROOT / "deploy/containers.conf"))
    if podman("image", "exists", a.image, check=False).returncode != 0:
        fail(f"no image {a.image}; build it with deploy/image.sh")
    if not GUEST.exists():
        fail(f"no {GUEST}; `cargo test` builds the guests")

    configmap, deployment = load("configmap.yaml"), load("deployment.yaml")
    check_cluster_objects(deployment)

    work = Path(tempfile.mkdtemp(prefix="wasm-run-kube-"))
    work.chmod(0o755)
    modules = work / "modules"
    modules.mkdir(mode=0o755)
    shutil.copy(GUEST, modules / "app.wasm")
    (modules / "app.wasm").chmod(0o644)
    port, admin = free_port(), free_port()
    configmap, deployment = for_one_machine(configmap, deployment, a.image, port, admin, modules)
    manifest = work / "wasm-run.yaml"
    manifest.write_text(yaml.safe_dump_all([configmap, deployment]))

    figures = {}
    played = False
    try:
        started = time.time()
        podman("kube", "play", str(manifest))
        played = True
        deadline = time.time() + 60
        while status_or_none(admin, "/readyz") != 200:
            if time.time() > deadline:
                logs = podman("pod", "logs", "--tail", "20", f"{deployment['metadata']['name']}-pod-0",
                              check=False)
                fail(f"the pod never became ready: {logs.stdout} {logs.stderr}")
            time.sleep(0.05)
        figures["start_to_ready_s"] = round(time.time() - started, 3)

        # 1. The pod as the manifests say.
        names = podman("ps", "--format", "{{.Names}}", "--filter",
                       "label=app.kubernetes.io/name=wasm-run").stdout.split()
        names = [n for n in names if not n.endswith("-infra")]
        if len(names) != 1:
            fail(f"expected one wasm-run container, found {names}")
        name = names[0]
        status = podman("exec", name, "cat", "/proc/1/status").stdout
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        if fields["Uid"].split() != ["10001"] * 4:
            fail(f"runs as {fields['Uid'].split()}, not 10001")
        if fields["NoNewPrivs"].strip() != "1" or fields["Seccomp"].strip() != "2":
            fail(f"NoNewPrivs {fields['NoNewPrivs'].strip()}, Seccomp {fields['Seccomp'].strip()}")
        if podman("exec", name, "touch", "/usr/local/bin/x", check=False).returncode == 0:
            fail("the root file system is writable")

        # 2. The probes, asked as a kubelet asks them (Podman would turn an
        # httpGet probe into `curl` in the container, which the image has
        # not), and the ConfigMap's route.
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        for probe in ("readinessProbe", "livenessProbe"):
            probe_get = container[probe]["httpGet"]
            code = status_or_none(probe_get["port"], probe_get["path"])
            if code != 200:
                fail(f"the {probe} ({probe_get['path']}) answered {code}")
        if status_or_none(admin, "/metrics") != 200:
            fail("/metrics did not answer 200")
        code, body = get(port, "/")
        if (code, body) != (200, HELLO):
            fail(f"GET / answered {code} {body[:200]!r}")

        # 3. kube down drains a request in flight.
        answer = {}

        def slow():
            try:
                answer["reply"] = get(port, "/sleep?s=2", timeout=30)
            except OSError as e:
                answer["reply"] = repr(e)
        t = threading.Thread(target=slow)
        t.start()
        deadline = time.time() + 10
        while b"wasm_run_requests_in_flight 1" not in get(admin, "/metrics")[1]:
            if time.time() > deadline:
                fail("the slow request never showed as in flight")
            time.sleep(0.02)
        # What a kubelet does to a pod it deletes: SIGTERM, then SIGKILL
        # after the manifest's grace period. (`podman kube down` of Podman
        # 4.3 removes the pod at once, SIGKILL included, so the pod is
        # stopped first and then taken down.)
        grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        down = time.time()
        podman("pod", "stop", "--time", str(grace), f"{deployment['metadata']['name']}-pod-0",
               timeout=grace + 60)
        figures["stop_s"] = round(time.time() - down, 3)
        podman("kube", "down", str(manifest), timeout=120)
        played = False
        t.join(30)
        if answer.get("reply") != (200, b"slept\n"):
            fail(f"the request in flight at SIGTERM got {answer.get('reply')!r}")
        figures["drained_request"] = "200 slept"
        if status_or_none(admin, "/healthz") is not None:
            fail("the server still answers after kube down")
    finally:
        if played:
            podman("kube", "down", str(manifest), check=False)
        shutil.rmtree(work, ignore_errors=True)
    if a.json:
        Path(a.json).write_text(json.dumps(figures, indent=1) + "\n")
    print(f"kube_test: ok (ready after {figures['start_to_ready_s']} s; a request in "
          f"flight at SIGTERM answered {figures['drained_request']}, the pod stopped after "
          f"{figures['stop_s']} s)", file=sys.stderr)


if __name__ == "__main__":
    main()
