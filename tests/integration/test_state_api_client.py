"""The state server through the official `kubernetes` Python client: it must work unchanged."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException

from tests.support.server import ServerProcess, start_server, write_kubeconfig


@pytest.fixture
def api(kubeconfig: Path) -> Iterator[client.ApiClient]:
    cfg = client.Configuration()
    config.load_kube_config(config_file=str(kubeconfig), client_configuration=cfg)
    with client.ApiClient(cfg) as c:
        yield c


def svc(name: str, port: int = 80, **spec: object) -> dict[str, object]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "labels": {"app": name, "tier": "web"}},
        "spec": {"selector": {"app": name}, "ports": [{"port": port, "targetPort": 8080}], **spec},
    }


def test_version_and_discovery(api: client.ApiClient) -> None:
    v = client.VersionApi(api).get_code()
    assert v.major == "1"
    groups = {g.name for g in client.ApisApi(api).get_api_versions().groups}
    assert {"apps", "discovery.k8s.io", "networking.k8s.io", "coordination.k8s.io"} <= groups
    core = client.CoreV1Api(api).get_api_resources()
    by_name = {r.name: r for r in core.resources}
    assert by_name["services"].short_names == ["svc"]
    assert by_name["pods"].namespaced and not by_name["nodes"].namespaced
    assert "pods/status" in by_name
    apps = client.AppsV1Api(api).get_api_resources()
    assert any(r.name == "deployments/scale" for r in apps.resources)


def test_system_namespaces_and_kubernetes_service(api: client.ApiClient) -> None:
    core = client.CoreV1Api(api)
    names = {n.metadata.name for n in core.list_namespace().items}
    assert {"default", "kube-system", "kube-node-lease"} <= names
    k = core.read_namespaced_service("kubernetes", "default")
    assert k.spec.cluster_ip == "10.96.0.1"


def test_create_get_list_with_selectors(api: client.ApiClient) -> None:
    core = client.CoreV1Api(api)
    created = core.create_namespaced_service("default", svc("web"))
    assert created.metadata.uid and created.metadata.resource_version
    assert created.metadata.creation_timestamp is not None
    ip = created.spec.cluster_ip
    assert ip.startswith("10.") and ip != "10.96.0.1"
    assert created.spec.cluster_ips == [ip]
    assert created.spec.type == "ClusterIP" and created.spec.session_affinity == "None"
    core.create_namespaced_service("default", svc("db", 5432))
    got = core.read_namespaced_service("web", "default")
    assert got.spec.ports[0].target_port == 8080
    names = lambda lst: sorted(i.metadata.name for i in lst.items)  # noqa: E731
    assert names(core.list_namespaced_service("default", label_selector="app=web")) == ["web"]
    assert names(core.list_namespaced_service("default", label_selector="app in (web,db)")) == ["db", "web"]
    assert names(core.list_namespaced_service("default", label_selector="app notin (web),tier")) == ["db"]
    assert names(core.list_namespaced_service("default", label_selector="!tier")) == ["kubernetes"]
    assert names(core.list_namespaced_service("default", field_selector="metadata.name=db")) == ["db"]
    assert names(core.list_service_for_all_namespaces(label_selector="app!=web,tier==web")) == ["db"]
    with pytest.raises(ApiException) as e:
        core.create_namespaced_service("default", svc("web"))
    assert e.value.status == 409 and "AlreadyExists" in e.value.body


def test_pagination(api: client.ApiClient) -> None:
    core = client.CoreV1Api(api)
    for i in range(5):
        core.create_namespaced_config_map("default", {"metadata": {"name": f"cm-{i}"}, "data": {"i": str(i)}})
    page = core.list_namespaced_config_map("default", limit=2)
    seen = [i.metadata.name for i in page.items]
    while page.metadata._continue:
        page = core.list_namespaced_config_map("default", limit=2, _continue=page.metadata._continue)
        seen += [i.metadata.name for i in page.items]
    assert seen == [f"cm-{i}" for i in range(5)]


@pytest.fixture
def api_without_deployment_controller(tmp_path: Path) -> Iterator[client.ApiClient]:
    """A server whose Deployment controller is off, so the test is the only writer of its Deployment."""
    srv = start_server(tmp_path / "nodeploy", "--controllers", "*,-deployment")
    try:
        cfg = client.Configuration()
        config.load_kube_config(config_file=str(write_kubeconfig(tmp_path / "kc", srv.url)),
                                client_configuration=cfg)
        with client.ApiClient(cfg) as c:
            yield c
    finally:
        srv.kill()


def test_update_conflict_and_generation(api_without_deployment_controller: client.ApiClient) -> None:
    apps = client.AppsV1Api(api_without_deployment_controller)
    dep = {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
        "spec": {"selector": {"matchLabels": {"app": "web"}},
                 "template": {"metadata": {"labels": {"app": "web"}},
                              "spec": {"containers": [{"name": "web", "image": "nginx:1.25"}]}}},
    }
    created = apps.create_namespaced_deployment("default", dep)
    assert created.metadata.generation == 1 and created.spec.replicas == 1
    stale_rv = created.metadata.resource_version
    created.spec.replicas = 3
    updated = apps.replace_namespaced_deployment("web", "default", created)
    assert updated.metadata.generation == 2 and updated.spec.replicas == 3
    assert int(updated.metadata.resource_version) > int(stale_rv)
    updated.metadata.resource_version = stale_rv
    updated.spec.replicas = 4
    with pytest.raises(ApiException) as e:
        apps.replace_namespaced_deployment("web", "default", updated)
    assert e.value.status == 409 and "Conflict" in e.value.body
    # A status write does not bump generation, and a main-resource write cannot change status.
    patched = apps.patch_namespaced_deployment_status("web", "default", {"status": {"replicas": 3}})
    assert patched.status.replicas == 3 and patched.metadata.generation == 2
    again = apps.patch_namespaced_deployment("web", "default", {"status": {"replicas": 9}})
    assert again.status.replicas == 3
    scale = apps.patch_namespaced_deployment_scale("web", "default", {"spec": {"replicas": 5}})
    assert scale.spec.replicas == 5
    assert apps.read_namespaced_deployment("web", "default").spec.replicas == 5


def test_patch_types(api: client.ApiClient) -> None:
    core = client.CoreV1Api(api)
    core.create_namespaced_config_map("default", {"metadata": {"name": "c", "labels": {"a": "1"}},
                                                  "data": {"x": "1", "y": "2"}})
    # The client sends strategic merge patch for dicts, JSON patch for lists.
    out = core.patch_namespaced_config_map("c", "default", {"data": {"y": None, "z": "3"}})
    assert out.data == {"x": "1", "z": "3"}
    out = core.patch_namespaced_config_map("c", "default", [{"op": "replace", "path": "/data/x", "value": "9"}])
    assert out.data["x"] == "9"
    with pytest.raises(ApiException) as e:
        core.patch_namespaced_config_map("c", "default", [{"op": "test", "path": "/data/x", "value": "0"}])
    assert e.value.status in (409, 422, 400)


def test_watch_resume_and_delete(api: client.ApiClient) -> None:
    core = client.CoreV1Api(api)
    first = core.create_namespaced_config_map("default", {"metadata": {"name": "w1"}})
    rv = first.metadata.resource_version
    core.create_namespaced_config_map("default", {"metadata": {"name": "w2"}})
    core.patch_namespaced_config_map("w2", "default", {"data": {"k": "v"}})
    core.delete_namespaced_config_map("w1", "default")
    w = watch.Watch()
    seen = []
    for ev in w.stream(core.list_namespaced_config_map, "default", resource_version=rv, timeout_seconds=2):
        seen.append((ev["type"], ev["object"].metadata.name))
        if len(seen) == 3:
            w.stop()
    assert seen == [("ADDED", "w2"), ("MODIFIED", "w2"), ("DELETED", "w1")]
    with pytest.raises(ApiException) as e:
        core.read_namespaced_config_map("w1", "default")
    assert e.value.status == 404


def test_watch_sees_live_changes(api: client.ApiClient) -> None:
    core = client.CoreV1Api(api)
    rv = core.list_namespaced_config_map("default").metadata.resource_version
    got: list[tuple[str, str]] = []

    def watcher() -> None:
        w = watch.Watch()
        for ev in w.stream(core.list_namespaced_config_map, "default", resource_version=rv,
                           label_selector="watched=yes", timeout_seconds=10):
            got.append((ev["type"], ev["object"].metadata.name))
            if len(got) == 3:
                w.stop()

    t = threading.Thread(target=watcher)
    t.start()
    time.sleep(0.3)
    core.create_namespaced_config_map("default", {"metadata": {"name": "ignored"}})
    core.create_namespaced_config_map("default", {"metadata": {"name": "live", "labels": {"watched": "yes"}}})
    # Stops matching the selector: a watcher with a selector sees that as DELETED.
    core.patch_namespaced_config_map("live", "default", {"metadata": {"labels": {"watched": "no"}}})
    core.patch_namespaced_config_map("ignored", "default", {"metadata": {"labels": {"watched": "yes"}}})
    t.join(15)
    assert got == [("ADDED", "live"), ("DELETED", "live"), ("ADDED", "ignored")]


def test_errors_are_status_objects(api: client.ApiClient, state_server: ServerProcess) -> None:
    core = client.CoreV1Api(api)
    with pytest.raises(ApiException) as e:
        core.read_namespaced_service("nope", "default")
    assert e.value.status == 404 and '"reason":"NotFound"' in e.value.body
    with pytest.raises(ApiException) as e:
        core.create_namespaced_service("no-such-ns", svc("x"))
    assert e.value.status == 404 and 'namespaces \\"no-such-ns\\" not found' in e.value.body
    bad = svc("bad", 70000)
    with pytest.raises(ApiException) as e:
        core.create_namespaced_service("default", bad)
    assert e.value.status == 422 and "spec.ports[0].port" in e.value.body
    with pytest.raises(ApiException):
        core.read_namespaced_service("bad", "default")


def test_pod_graceful_deletion(api: client.ApiClient) -> None:
    core = client.CoreV1Api(api)
    pod = {"metadata": {"name": "p"}, "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "bb"}]}}
    core.create_namespaced_pod("default", pod)
    core.delete_namespaced_pod("p", "default", grace_period_seconds=30)
    terminating = core.read_namespaced_pod("p", "default")
    assert terminating.metadata.deletion_timestamp is not None
    assert terminating.metadata.deletion_grace_period_seconds == 30
    # The node agent confirms with a zero grace period.
    core.delete_namespaced_pod("p", "default", grace_period_seconds=0)
    with pytest.raises(ApiException) as e:
        core.read_namespaced_pod("p", "default")
    assert e.value.status == 404
    # Without a node nothing has to stop: deleted at once.
    core.create_namespaced_pod("default", {"metadata": {"name": "q"}, "spec": pod["spec"] | {"nodeName": None}})
    core.delete_namespaced_pod("q", "default")
    with pytest.raises(ApiException):
        core.read_namespaced_pod("q", "default")


def test_pod_deleted_when_grace_period_ends(api: client.ApiClient) -> None:
    core = client.CoreV1Api(api)
    pod = {"metadata": {"name": "g"}, "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "bb"}]}}
    core.create_namespaced_pod("default", pod)
    core.delete_namespaced_pod("g", "default", grace_period_seconds=1)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            core.read_namespaced_pod("g", "default")
        except ApiException as e:
            assert e.status == 404
            return
        time.sleep(0.1)
    pytest.fail("pod was not removed after its grace period")
