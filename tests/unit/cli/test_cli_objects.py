"""`netplane apply/get/delete` against the fake API server: exact output, exit codes, one-line errors."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner, Result

from netplane.api.resources import resolve_name
from netplane.cli.main import cli
from netplane.cli.objects_cmd import age, format_table
from netplane.client.fake import FakeAPIServer

APP = """\
apiVersion: v1
kind: ConfigMap
metadata:
  name: settings
data:
  color: blue
---
apiVersion: v1
kind: Service
metadata:
  name: web
spec:
  ports:
  - port: 80
"""


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for var in ("KUBECONFIG", "NETPLANE_SERVER", "NETPLANE_DEBUG"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


@pytest.fixture
def fake() -> Iterator[FakeAPIServer]:
    server = FakeAPIServer()
    with server.running_in_thread():
        yield server


def np(fake: FakeAPIServer | str, *args: str, input: str | None = None) -> Result:
    url = fake if isinstance(fake, str) else fake.url
    return CliRunner().invoke(cli, ["--server", url, *args], input=input, catch_exceptions=False)


def ok(result: Result) -> str:
    assert result.exit_code == 0, result.output
    return result.stdout


def test_apply_created_unchanged_configured(fake: FakeAPIServer, tmp_path: Path) -> None:
    f = tmp_path / "app.yaml"
    f.write_text(APP)
    assert ok(np(fake, "apply", "-f", str(f))) == "configmap/settings created\nservice/web created\n"
    assert ok(np(fake, "apply", "-f", str(f))) == "configmap/settings unchanged\nservice/web unchanged\n"
    f.write_text(APP.replace("blue", "green"))
    assert ok(np(fake, "apply", "-f", str(f))) == "configmap/settings configured\nservice/web unchanged\n"


def test_apply_from_stdin_and_directory_with_namespace(fake: FakeAPIServer, tmp_path: Path) -> None:
    assert ok(np(fake, "apply", "-n", "shop", "-f", "-", input=APP)) == (
        "configmap/settings created\nservice/web created\n")
    assert ("core/configmaps", "shop", "settings") in fake.objects
    (tmp_path / "b.yaml").write_text(APP.split("---\n")[1])
    (tmp_path / "a.json").write_text(json.dumps(yaml.safe_load(APP.split("---\n")[0])))
    assert ok(np(fake, "apply", "-f", str(tmp_path))) == "configmap/settings created\nservice/web created\n"


def test_apply_checks_every_document_before_writing(fake: FakeAPIServer, tmp_path: Path) -> None:
    f = tmp_path / "app.yaml"
    f.write_text(APP + "---\napiVersion: v1\nkind: Widget\nmetadata:\n  name: w\n")
    r = np(fake, "apply", "-f", str(f))
    assert r.exit_code == 1
    assert r.stdout == ""
    assert r.stderr == f'Error: {f} (document 3): no kind "Widget" is registered for version "v1"\n'
    assert fake.objects == {}


def test_apply_bad_yaml_is_one_line(fake: FakeAPIServer, tmp_path: Path) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text("apiVersion: v1\nkind: [\n")
    r = np(fake, "apply", "-f", str(f))
    assert r.exit_code == 1
    assert r.stderr.count("\n") == 1
    assert r.stderr.startswith(f"Error: {f} (document 1): invalid YAML at line 3, column 1")
    r = np(fake, "apply", "-f", str(tmp_path / "missing.yaml"))
    assert (r.exit_code, r.stderr) == (1, f"Error: {tmp_path / 'missing.yaml'}: no such file or directory\n")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_unreachable_server_is_one_line(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    r = np(url, "get", "svc")
    assert r.exit_code == 1
    assert r.stderr.startswith(f"Error: cannot reach the server at {url}: ")
    assert r.stderr.count("\n") == 1
    f = tmp_path / "app.yaml"
    f.write_text(APP)
    assert np(url, "apply", "-f", str(f)).exit_code == 1


def put(fake: FakeAPIServer, kind: str, obj: dict) -> None:
    info = resolve_name(kind)
    assert info is not None
    fake.call_threadsafe(fake.put_object, info, obj)


def test_get_renders_the_servers_table(fake: FakeAPIServer) -> None:
    put(fake, "cm", {"metadata": {"name": "settings", "namespace": "default"}, "data": {"a": "1", "b": "2"}})
    put(fake, "cm", {"metadata": {"name": "kube-root-ca.crt", "namespace": "default"}, "data": {"c": "3"}})
    put(fake, "cm", {"metadata": {"name": "x", "namespace": "shop"}})
    assert ok(np(fake, "get", "configmaps")) == (
        "NAME               AGE\n"
        "kube-root-ca.crt   5m\n"
        "settings           5m\n")
    assert ok(np(fake, "get", "cm", "-o", "wide")) == (
        "NAME               DATA      AGE\n"
        "kube-root-ca.crt   1         5m\n"
        "settings           2         5m\n")
    assert ok(np(fake, "get", "cm", "-A")) == (
        "NAMESPACE   NAME               AGE\n"
        "default     kube-root-ca.crt   5m\n"
        "default     settings           5m\n"
        "shop        x                  5m\n")
    assert ok(np(fake, "get", "cm", "x", "-n", "shop")) == "NAME      AGE\nx         5m\n"
    assert ok(np(fake, "get", "cm/x", "-n", "shop")) == "NAME      AGE\nx         5m\n"
    accept = fake.requests[-1].headers["Accept"]
    assert accept == "application/json;as=Table;v=v1;g=meta.k8s.io, application/json"


def test_get_falls_back_to_name_and_age_without_a_table(fake: FakeAPIServer) -> None:
    created = (datetime.now(UTC) - timedelta(hours=3)).strftime("%Y-%m-%dT%H:%M:%SZ")
    put(fake, "svc", {"metadata": {"name": "web", "namespace": "default", "creationTimestamp": created},
                      "spec": {}})
    assert ok(np(fake, "get", "svc")) == "NAME      AGE\nweb       3h\n"
    assert ok(np(fake, "get", "svc", "-A")) == "NAMESPACE   NAME      AGE\ndefault     web       3h\n"


def test_get_label_selector(fake: FakeAPIServer) -> None:
    put(fake, "svc", {"metadata": {"name": "a", "namespace": "default", "labels": {"app": "web"}}})
    put(fake, "svc", {"metadata": {"name": "b", "namespace": "default", "labels": {"app": "db"}}})
    assert ok(np(fake, "get", "svc", "-l", "app=db", "-o", "name")) == "service/b\n"
    assert fake.requests[-1].query["labelSelector"] == "app=db"


def test_get_yaml_and_json(fake: FakeAPIServer) -> None:
    put(fake, "svc", {"metadata": {"name": "web", "namespace": "default"}, "spec": {"type": "ClusterIP"}})
    one = yaml.safe_load(ok(np(fake, "get", "svc", "web", "-o", "yaml")))
    assert (one["kind"], one["metadata"]["name"], one["spec"]) == ("Service", "web", {"type": "ClusterIP"})
    out = ok(np(fake, "get", "svc", "-o", "json"))
    assert out.startswith('{\n    "apiVersion": "v1",\n    "kind": "List",')
    doc = json.loads(out)
    assert [(i["apiVersion"], i["kind"], i["metadata"]["name"]) for i in doc["items"]] == [
        ("v1", "Service", "web")]


def test_yaml_prints_multi_line_strings_as_block_literals(fake: FakeAPIServer) -> None:
    annotation = '{"apiVersion":"v1","kind":"ConfigMap"}\n'
    put(fake, "cm", {"metadata": {"name": "c", "namespace": "default",
                                  "annotations": {"last-applied": annotation}},
                     "data": {"script": "echo a\necho b\n", "spaced": "x \ny", "n": "8"}})
    out = ok(np(fake, "get", "cm", "c", "-o", "yaml"))
    assert "    last-applied: |\n      {\"apiVersion\":\"v1\",\"kind\":\"ConfigMap\"}\n" in out
    assert "  script: |\n    echo a\n    echo b\n" in out
    doc = yaml.safe_load(out)
    assert doc["data"] == {"script": "echo a\necho b\n", "spaced": "x \ny", "n": "8"}
    assert doc["metadata"]["annotations"]["last-applied"] == annotation


def test_get_errors(fake: FakeAPIServer) -> None:
    r = np(fake, "get", "widgets")
    assert (r.exit_code, r.stderr) == (1, 'Error: the server doesn\'t have a resource type "widgets"\n')
    r = np(fake, "get", "svc", "nope")
    assert (r.exit_code, r.stderr) == (1, 'Error: services "nope" not found\n')
    r = np(fake, "get", "svc", "web", "-A")
    assert r.exit_code == 1 and "cannot be retrieved by name across all namespaces" in r.stderr


def test_get_nothing(fake: FakeAPIServer) -> None:
    r = np(fake, "get", "svc", "-n", "shop")
    assert (r.exit_code, r.stdout, r.stderr) == (0, "", "No resources found in shop namespace.\n")
    r = np(fake, "get", "nodes")
    assert (r.exit_code, r.stdout, r.stderr) == (0, "", "No resources found\n")


def test_delete_by_name_and_by_file(fake: FakeAPIServer, tmp_path: Path) -> None:
    f = tmp_path / "app.yaml"
    f.write_text(APP)
    ok(np(fake, "apply", "-f", str(f)))
    assert ok(np(fake, "delete", "svc", "web")) == 'service "web" deleted\n'
    r = np(fake, "delete", "-f", str(f))
    assert r.exit_code == 1
    assert r.stdout == 'configmap "settings" deleted\n'  # the rest still goes
    assert r.stderr == 'Error: services "web" not found\n'
    assert fake.objects == {}
    assert np(fake, "delete", "-f", str(f), "--ignore-not-found").exit_code == 0


def test_delete_group_resource_and_usage_errors(fake: FakeAPIServer) -> None:
    put(fake, "deploy", {"metadata": {"name": "web", "namespace": "shop"}})
    assert ok(np(fake, "delete", "deployment", "web", "-n", "shop")) == 'deployment.apps "web" deleted\n'
    r = np(fake, "delete", "svc")
    assert (r.exit_code, r.stderr) == (1, "Error: give the name of the service to delete\n")
    r = np(fake, "delete")
    assert (r.exit_code, r.stderr) == (1, "Error: give -f FILE or KIND NAME\n")


def test_kubeconfig_option_is_used(fake: FakeAPIServer, tmp_path: Path) -> None:
    kc = tmp_path / "kubeconfig"
    kc.write_text(yaml.safe_dump({
        "current-context": "c", "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u",
                                                                        "namespace": "shop"}}],
        "clusters": [{"name": "k", "cluster": {"server": fake.url}}],
        "users": [{"name": "u", "user": {"token": "abc"}}]}))
    r = CliRunner().invoke(cli, ["--kubeconfig", str(kc), "get", "svc"], catch_exceptions=False)
    assert (r.exit_code, r.stderr) == (0, "No resources found in shop namespace.\n")
    assert fake.requests[-1].headers["Authorization"] == "Bearer abc"
    broken = tmp_path / "broken"
    broken.write_text("current-context: nope\n")
    r = CliRunner().invoke(cli, ["--kubeconfig", str(broken), "get", "svc"], catch_exceptions=False)
    assert (r.exit_code, r.stderr) == (1, f"Error: kubeconfig {broken}: no context named 'nope'\n")


def test_format_table_matches_kubectls_tabwriter() -> None:
    header = ["NAME", "TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORT(S)", "AGE"]
    rows = [["kubernetes", "ClusterIP", "10.96.0.1", "<none>", "443/TCP", "10d"]]
    assert format_table(header, rows) == (
        "NAME         TYPE        CLUSTER-IP   EXTERNAL-IP   PORT(S)   AGE\n"
        "kubernetes   ClusterIP   10.96.0.1    <none>        443/TCP   10d\n")


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(-5, "<invalid>"), (0, "0s"), (119, "119s"), (125, "2m5s"), (600, "10m"), (3 * 3600 + 120, "3h2m"),
     (10 * 3600, "10h"), (3 * 86400 + 3600, "3d1h"), (30 * 86400, "30d"), (800 * 86400, "2y70d"),
     (9 * 365 * 86400, "9y")],
)
def test_age_column(seconds: int, text: str) -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    created = (now - timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert age(created, now) == text
