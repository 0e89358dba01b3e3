"""`netplane apply/get/delete` against the real state server process (and side by side with kubectl)."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import yaml
from click.testing import CliRunner, Result

from netplane.cli.main import cli
from tests.support.server import REPO, ServerProcess

KUBECTL = REPO / ".venv" / "bin" / "kubectl"

APP = """\
apiVersion: v1
kind: Namespace
metadata:
  name: shop
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: shop
spec:
  replicas: 2
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: web
        image: nginx:1.25
        ports:
        - containerPort: 80
---
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: shop
  labels: {tier: front}
spec:
  type: NodePort
  selector: {app: web}
  ports:
  - name: http
    port: 80
    targetPort: 80
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: web
  namespace: shop
spec:
  rules:
  - host: shop.example
    http:
      paths:
      - path: /
        pathType: Prefix
        backend:
          service:
            name: web
            port: {number: 80}
"""

NAMES = ["namespace/shop", "deployment.apps/web", "service/web", "ingress.networking.k8s.io/web"]


def np(server: ServerProcess, *args: str, input: str | None = None) -> Result:
    return CliRunner(env={"KUBECONFIG": None, "NETPLANE_SERVER": None}).invoke(
        cli, ["--server", server.url, *args], input=input, catch_exceptions=False)


def ok(result: Result) -> str:
    assert result.exit_code == 0, result.output
    return result.stdout


def lines(action: str) -> str:
    return "".join(f"{n} {action}\n" for n in NAMES)


def live(server: ServerProcess, *args: str) -> dict:
    return json.loads(ok(np(server, "get", *args, "-o", "json")))


def test_apply_get_delete_round_trip(state_server: ServerProcess, tmp_path: Path) -> None:
    f = tmp_path / "app.yaml"
    f.write_text(APP)
    assert ok(np(state_server, "apply", "-f", str(f))) == lines("created")
    assert ok(np(state_server, "apply", "-f", str(f))) == lines("unchanged")

    svc = live(state_server, "svc", "web", "-n", "shop")
    node_port = svc["spec"]["ports"][0]["nodePort"]
    cluster_ip = svc["spec"]["clusterIP"]

    # Change the port's name and drop the label: the server's allocations stay, the label goes.
    f.write_text(APP.replace("name: http", "name: web").replace("  labels: {tier: front}\n", ""))
    assert ok(np(state_server, "apply", "-f", str(f))) == (
        "namespace/shop unchanged\ndeployment.apps/web unchanged\nservice/web configured\n"
        "ingress.networking.k8s.io/web unchanged\n")
    svc = live(state_server, "svc", "web", "-n", "shop")
    assert svc["spec"]["ports"][0]["name"] == "web"
    assert svc["spec"]["ports"][0]["nodePort"] == node_port
    assert svc["spec"]["clusterIP"] == cluster_ip
    assert "labels" not in svc["metadata"] or "tier" not in svc["metadata"]["labels"]

    table = ok(np(state_server, "get", "svc", "-n", "shop"))
    header, row = table.splitlines()
    assert re.fullmatch(r"NAME\s+TYPE\s+CLUSTER-IP\s+EXTERNAL-IP\s+PORT\(S\)\s+AGE", header)
    assert re.fullmatch(rf"web\s+NodePort\s+{re.escape(cluster_ip)}\s+<none>\s+80:{node_port}/TCP\s+\d+s", row)
    wide = ok(np(state_server, "get", "svc", "-n", "shop", "-o", "wide"))
    assert wide.splitlines()[0].endswith("SELECTOR") and wide.splitlines()[1].endswith("app=web")
    every = ok(np(state_server, "get", "svc", "-A"))
    assert [ln.split()[:2] for ln in every.splitlines()] == [["NAMESPACE", "NAME"], ["default", "kubernetes"],
                                                             ["shop", "web"]]
    assert ok(np(state_server, "get", "deploy", "-n", "shop", "-o", "name")) == "deployment.apps/web\n"

    assert ok(np(state_server, "delete", "-f", str(f))) == (
        'deployment.apps "web" deleted\nservice "web" deleted\ningress.networking.k8s.io "web" deleted\n'
        'namespace "shop" deleted\n')
    r = np(state_server, "get", "svc", "web", "-n", "shop")
    assert (r.exit_code, r.stderr) == (1, 'Error: services "web" not found\n')


def test_get_yaml_output_applies_back_unchanged(state_server: ServerProcess, tmp_path: Path) -> None:
    f = tmp_path / "app.yaml"
    f.write_text(APP)
    ok(np(state_server, "apply", "-f", str(f)))
    dumped = ok(np(state_server, "get", "svc", "web", "-n", "shop", "-o", "yaml"))
    assert yaml.safe_load(dumped)["kind"] == "Service"
    before = live(state_server, "svc", "web", "-n", "shop")
    # The manifest is now the whole object, so the last-applied annotation changes once (as with
    # kubectl); resourceVersion and status in the dump are ignored rather than causing a conflict.
    assert ok(np(state_server, "apply", "-f", "-", input=dumped)) == "service/web configured\n"
    after = live(state_server, "svc", "web", "-n", "shop")
    assert after["spec"] == before["spec"]
    assert ok(np(state_server, "apply", "-f", "-", input=dumped)) == "service/web unchanged\n"


def test_stdin_and_default_namespace(state_server: ServerProcess) -> None:
    cm = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings\ndata:\n  a: '1'\n"
    assert ok(np(state_server, "apply", "-f", "-", input=cm)) == "configmap/settings created\n"
    got = live(state_server, "cm", "settings")
    assert (got["metadata"]["namespace"], got["data"]) == ("default", {"a": "1"})
    assert ok(np(state_server, "delete", "cm", "settings")) == 'configmap "settings" deleted\n'


def test_invalid_object_is_one_line_and_nothing_is_stored(state_server: ServerProcess, tmp_path: Path) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text("apiVersion: v1\nkind: Service\nmetadata:\n  name: bad\nspec:\n  ports:\n  - port: 70000\n")
    r = np(state_server, "apply", "-f", str(f))
    assert r.exit_code == 1
    assert r.stderr.startswith(
        f'Error: {f} (document 1): Service "bad" is invalid: spec.ports[0].port: Invalid value: 70000')
    assert r.stderr.count("\n") == 1
    r = np(state_server, "get", "svc", "bad")
    assert r.exit_code == 1


def test_unknown_kind_and_missing_object(state_server: ServerProcess) -> None:
    r = np(state_server, "get", "widgets")
    assert (r.exit_code, r.stderr) == (1, 'Error: the server doesn\'t have a resource type "widgets"\n')
    r = np(state_server, "delete", "svc", "nope")
    assert (r.exit_code, r.stderr) == (1, 'Error: services "nope" not found\n')
    r = np(state_server, "get", "pods", "-n", "empty")
    assert (r.exit_code, r.stdout, r.stderr) == (0, "", "No resources found in empty namespace.\n")


def kubectl(server: ServerProcess, *args: str) -> str:
    proc = subprocess.run([str(KUBECTL), "--server", server.url, *args], capture_output=True, text=True,
                          timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_netplane_and_kubectl_take_turns(state_server: ServerProcess, tmp_path: Path) -> None:
    """The last-applied annotation is kubectl's, byte for byte: each tool sees the other's apply as a no-op."""
    f = tmp_path / "app.yaml"
    f.write_text(APP)
    assert ok(np(state_server, "apply", "-f", str(f))) == lines("created")
    assert kubectl(state_server, "apply", "-f", str(f)) == lines("unchanged")
    f.write_text(APP.replace("replicas: 2", "replicas: 3"))
    assert kubectl(state_server, "apply", "-f", str(f)).splitlines()[1] == "deployment.apps/web configured"
    assert ok(np(state_server, "apply", "-f", str(f))) == lines("unchanged")
    # A field removed from the manifest after kubectl applied it is removed by netplane's apply.
    f.write_text(APP.replace("  labels: {tier: front}\n", ""))
    assert ok(np(state_server, "apply", "-f", str(f))).splitlines()[1:3] == [
        "deployment.apps/web configured", "service/web configured"]
    svc = live(state_server, "svc", "web", "-n", "shop")
    assert "tier" not in (svc["metadata"].get("labels") or {})
    assert live(state_server, "deploy", "web", "-n", "shop")["spec"]["replicas"] == 2
