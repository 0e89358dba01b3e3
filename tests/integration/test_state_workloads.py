"""Deployments, ReplicaSets, the scheduler, node lifecycle and drain against a real state server.

No node agent runs here: `FakeKubelets` plays its part for a set of registered nodes (renews
their Leases, marks their pods Running+Ready through pods/status after a short delay, and
finishes graceful deletions), and can stop playing it for one node to simulate a failure.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.support.server import NETPLANE, REPO, ServerProcess, start_server

Obj = dict[str, Any]
DEPLOY = "/apis/apps/v1/namespaces/default/deployments"
RS = "/apis/apps/v1/namespaces/default/replicasets"
PODS = "/api/v1/namespaces/default/pods"


def now_micro() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class API:
    """A tiny JSON client: the tests want to see exact codes and bodies."""

    def __init__(self, url: str) -> None:
        self.url = url

    def call(self, method: str, path: str, body: Any = None,
             content_type: str = "application/json") -> tuple[int, Obj]:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Content-Type": content_type, "Accept": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status, json.loads(resp.read() or b"{}")
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"{}")

    def ok(self, method: str, path: str, body: Any = None, content_type: str = "application/json") -> Obj:
        code, obj = self.call(method, path, body, content_type)
        assert code < 300, f"{method} {path}: {code} {obj}"
        return obj

    def get(self, path: str) -> Obj:
        return self.ok("GET", path)

    def pods(self, selector: str = "app=web") -> list[Obj]:
        return list(self.get(f"{PODS}?labelSelector={selector}")["items"])

    def merge(self, path: str, patch: Obj) -> Obj:
        return self.ok("PATCH", path, patch, "application/merge-patch+json")


def wait_for(what: str, check: Callable[[], Any], timeout: float = 30.0, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


def ready(pod: Obj) -> bool:
    return any(c.get("type") == "Ready" and c.get("status") == "True"
               for c in (pod.get("status") or {}).get("conditions") or [])


def live(pods: list[Obj]) -> list[Obj]:
    return [p for p in pods if not p["metadata"].get("deletionTimestamp")]


class FakeKubelets(threading.Thread):
    """The node agents' side of the protocol, for the nodes in `alive`."""

    def __init__(self, api: API, nodes: list[str], ready_delay: float = 0.0) -> None:
        super().__init__(daemon=True)
        self.api = api
        self.alive = set(nodes)
        self.ready_delay = ready_delay
        self.stop_event = threading.Event()
        self._seen: dict[str, float] = {}
        for n in nodes:
            self.register(n)

    def register(self, name: str) -> None:
        ts = now_micro()
        node = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": {
            "kubernetes.io/hostname": name}},
            "status": {"addresses": [{"type": "InternalIP", "address": f"192.0.2.{10 + len(self._seen)}"}],
                       "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                                       "lastHeartbeatTime": ts, "lastTransitionTime": ts}]}}
        self.api.ok("POST", "/api/v1/nodes", node)
        self.api.ok("POST", "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases", {
            "metadata": {"name": name},
            "spec": {"holderIdentity": name, "leaseDurationSeconds": 40, "renewTime": ts}})

    def run(self) -> None:
        while not self.stop_event.wait(0.1):
            try:
                self.tick()
            except (OSError, AssertionError, KeyError):
                pass  # a conflict or a race with the controllers: the next tick sees fresh state

    def stop(self) -> None:
        self.stop_event.set()
        self.join(5)

    def tick(self) -> None:
        for name in sorted(self.alive):
            path = f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{name}"
            self.api.merge(path, {"spec": {"renewTime": now_micro()}})
        now = time.monotonic()
        for pod in self.api.get(PODS)["items"]:
            node = (pod.get("spec") or {}).get("nodeName")
            if node not in self.alive:
                continue
            m = pod["metadata"]
            if m.get("deletionTimestamp"):
                # The runtime stopped the containers: finish the graceful deletion.
                self.api.call("DELETE", f"{PODS}/{m['name']}",
                              {"gracePeriodSeconds": 0, "preconditions": {"uid": m["uid"]}})
                continue
            if ready(pod):
                continue
            first = self._seen.setdefault(m["uid"], now)
            if now - first < self.ready_delay:
                continue
            ts = now_micro()
            status = {
                "phase": "Running", "podIP": f"10.244.{sorted(self.all_nodes()).index(node)}.{len(self._seen)}",
                "hostIP": "192.0.2.1", "startTime": ts,
                "conditions": [{"type": t, "status": "True", "lastTransitionTime": ts}
                               for t in ("PodScheduled", "Initialized", "ContainersReady", "Ready")],
                "containerStatuses": [{"name": c["name"], "ready": True, "restartCount": 0, "image": c["image"],
                                       "state": {"running": {"startedAt": ts}}}
                                      for c in pod["spec"]["containers"]],
            }
            body = {**pod, "status": status}
            self.api.call("PUT", f"{PODS}/{m['name']}/status", body)

    def all_nodes(self) -> list[str]:
        return [n["metadata"]["name"] for n in self.api.get("/api/v1/nodes")["items"]]


def deployment(name: str = "web", replicas: int = 3, image: str = "nginx:1.25", **spec: Any) -> Obj:
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}},
                         "spec": {"containers": [{"name": "app", "image": image}]}},
            **spec,
        },
    }


@pytest.fixture
def fast_server(tmp_path: Path) -> Iterator[ServerProcess]:
    """A state server whose node lifecycle runs in seconds instead of minutes."""
    srv = start_server(tmp_path / "state", "--node-monitor-grace-period", "2s", "--pod-eviction-timeout", "3s")
    try:
        yield srv
    finally:
        srv.kill()


@pytest.fixture
def api(fast_server: ServerProcess) -> API:
    return API(fast_server.url)


@pytest.fixture
def kubelets(api: API) -> Iterator[FakeKubelets]:
    k = FakeKubelets(api, ["n1", "n2", "n3"])
    k.start()
    try:
        yield k
    finally:
        k.stop()


def nodes_of(pods: list[Obj]) -> list[str]:
    return sorted(p["spec"].get("nodeName") or "" for p in pods)


def deploy_status(api: API, name: str = "web") -> Obj:
    return api.get(f"{DEPLOY}/{name}").get("status") or {}


def settled(api: API, replicas: int, name: str = "web") -> bool:
    d = api.get(f"{DEPLOY}/{name}")
    s = d.get("status") or {}
    pods = live(api.pods(f"app={name}"))
    return (s.get("observedGeneration") == d["metadata"]["generation"] and s.get("replicas") == replicas
            and s.get("updatedReplicas") == replicas and s.get("availableReplicas") == replicas
            and len(pods) == replicas and all(ready(p) for p in pods))


def test_unschedulable_pod_waits_for_a_ready_node(api: API) -> None:
    api.ok("POST", PODS, {"metadata": {"name": "lonely", "labels": {"app": "lonely"}},
                          "spec": {"containers": [{"name": "c", "image": "busybox"}]}})

    def condition() -> Obj | None:
        pod = api.get(f"{PODS}/lonely")
        return next((c for c in pod["status"].get("conditions") or [] if c["type"] == "PodScheduled"), None)

    cond = wait_for("PodScheduled=False", condition)
    assert cond["status"] == "False" and cond["reason"] == "Unschedulable"
    assert cond["message"] == "0/0 nodes are available."
    assert api.get(f"{PODS}/lonely")["status"]["phase"] == "Pending"
    k = FakeKubelets(api, ["n1"])
    k.start()
    try:
        node = wait_for("binding", lambda: api.get(f"{PODS}/lonely")["spec"].get("nodeName"))
        assert node == "n1"
        assert wait_for("PodScheduled=True", lambda: (condition() or {}).get("status") == "True")
    finally:
        k.stop()


def test_deployment_spreads_and_scales(api: API, kubelets: FakeKubelets) -> None:
    api.ok("POST", DEPLOY, deployment(replicas=3))
    wait_for("3 ready pods", lambda: settled(api, 3))
    pods = live(api.pods())
    assert nodes_of(pods) == ["n1", "n2", "n3"]  # fewest pods first: one per node
    rs = api.get(RS)["items"]
    assert len(rs) == 1
    rs_name = rs[0]["metadata"]["name"]
    assert rs_name.startswith("web-") and rs[0]["metadata"]["labels"]["pod-template-hash"] == rs_name[4:]
    for p in pods:
        assert p["metadata"]["name"].startswith(rs_name + "-")
        ref = p["metadata"]["ownerReferences"][0]
        assert (ref["kind"], ref["name"], ref["controller"]) == ("ReplicaSet", rs_name, True)
    d = api.get(f"{DEPLOY}/web")
    assert d["metadata"]["annotations"]["deployment.kubernetes.io/revision"] == "1"
    conds = {c["type"]: c for c in d["status"]["conditions"]}
    assert conds["Available"]["status"] == "True"
    assert conds["Progressing"]["reason"] == "NewReplicaSetAvailable"

    # kubectl scale goes through /scale.
    api.merge(f"{DEPLOY}/web/scale", {"spec": {"replicas": 5}})
    wait_for("5 ready pods", lambda: settled(api, 5))
    counts = [nodes_of(live(api.pods())).count(n) for n in ("n1", "n2", "n3")]
    assert sorted(counts) == [1, 2, 2]
    api.merge(f"{DEPLOY}/web/scale", {"spec": {"replicas": 2}})
    wait_for("2 ready pods", lambda: settled(api, 2) and len(api.pods()) == 2)
    assert api.get(RS)["items"][0]["status"]["replicas"] == 2

    # A pod deleted by hand is replaced.
    victim = api.pods()[0]["metadata"]["name"]
    api.ok("DELETE", f"{PODS}/{victim}")
    wait_for("replacement", lambda: settled(api, 2) and victim not in {p["metadata"]["name"] for p in api.pods()})


def test_replicaset_adopts_orphans_and_releases_relabelled_pods(api: API, kubelets: FakeKubelets) -> None:
    api.ok("POST", PODS, {"metadata": {"name": "stray", "labels": {"app": "solo"}},
                          "spec": {"containers": [{"name": "c", "image": "busybox"}]}})
    api.ok("POST", RS, {"metadata": {"name": "solo"}, "spec": {
        "replicas": 2, "selector": {"matchLabels": {"app": "solo"}},
        "template": {"metadata": {"labels": {"app": "solo"}},
                     "spec": {"containers": [{"name": "c", "image": "busybox"}]}}}})

    def owned() -> list[Obj]:
        return [p for p in live(api.pods("app=solo")) if (p["metadata"].get("ownerReferences") or [{}])[0]
                .get("name") == "solo"]

    wait_for("2 owned pods", lambda: len(owned()) == 2 and len(api.pods("app=solo")) == 2)
    assert "stray" in {p["metadata"]["name"] for p in owned()}  # adopted, not replaced
    wait_for("status", lambda: (api.get(f"{RS}/solo").get("status") or {}).get("readyReplicas") == 2)

    # Relabelling a pod takes it out of the set: it is released and replaced.
    api.merge(f"{PODS}/stray", {"metadata": {"labels": {"app": "debug"}}})
    wait_for("replacement", lambda: len(owned()) == 2 and "stray" not in {p["metadata"]["name"] for p in owned()})
    wait_for("stray released", lambda: not api.get(f"{PODS}/stray")["metadata"].get("ownerReferences"))

    # Deleting the ReplicaSet removes its pods (garbage collection), not the released one.
    api.ok("DELETE", f"{RS}/solo")
    wait_for("pods gone", lambda: not api.pods("app=solo"))
    assert api.get(f"{PODS}/stray")["metadata"]["name"] == "stray"


def test_rolling_update_honours_surge_and_unavailable(api: API, kubelets: FakeKubelets) -> None:
    kubelets.ready_delay = 0.3  # slow enough that the rollout passes through observable steps
    api.ok("POST", DEPLOY, deployment(replicas=3, strategy={
        "type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}))
    wait_for("3 ready pods", lambda: settled(api, 3))
    old_rs = api.get(RS)["items"][0]["metadata"]["name"]

    api.merge(f"{DEPLOY}/web", {"spec": {"template": {"spec": {"containers": [
        {"name": "app", "image": "nginx:1.26"}]}}}})
    samples = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        pods = live(api.pods())
        samples.append(pods)
        if settled(api, 3) and all(p["spec"]["containers"][0]["image"] == "nginx:1.26" for p in pods):
            break
        time.sleep(0.05)
    else:
        raise AssertionError("rollout did not finish in 60s")
    for pods in samples:
        assert len(pods) <= 4, "maxSurge=1: never more than 4 pods"
        assert sum(1 for p in pods if ready(p)) >= 3, "maxUnavailable=0: never fewer than 3 ready pods"
    assert any(len(p) == 4 for p in samples), "the rollout surged"
    rss = {r["metadata"]["name"]: r for r in api.get(RS)["items"]}
    assert len(rss) == 2 and rss[old_rs]["spec"]["replicas"] == 0
    new_rs = next(r for n, r in rss.items() if n != old_rs)
    assert new_rs["spec"]["replicas"] == 3
    assert new_rs["metadata"]["annotations"]["deployment.kubernetes.io/revision"] == "2"
    d = api.get(f"{DEPLOY}/web")
    assert d["metadata"]["annotations"]["deployment.kubernetes.io/revision"] == "2"
    assert d["status"]["updatedReplicas"] == 3 and d["status"].get("unavailableReplicas", 0) == 0

    # Rolling back to the first template reuses its ReplicaSet, which becomes revision 3.
    api.merge(f"{DEPLOY}/web", {"spec": {"template": {"spec": {"containers": [
        {"name": "app", "image": "nginx:1.25"}]}}}})
    wait_for("rollback", lambda: settled(api, 3) and api.get(f"{RS}/{old_rs}")["spec"]["replicas"] == 3, 60)
    assert api.get(f"{RS}/{old_rs}")["metadata"]["annotations"]["deployment.kubernetes.io/revision"] == "3"


def test_recreate_and_revision_history(api: API, kubelets: FakeKubelets) -> None:
    api.ok("POST", DEPLOY, deployment(replicas=2, revisionHistoryLimit=1, strategy={"type": "Recreate"}))
    wait_for("2 ready pods", lambda: settled(api, 2))
    for image in ("nginx:2", "nginx:3"):
        api.merge(f"{DEPLOY}/web", {"spec": {"template": {"spec": {"containers": [
            {"name": "app", "image": image}]}}}})
        seen_mixed = False
        deadline = time.monotonic() + 60
        while not (settled(api, 2) and all(p["spec"]["containers"][0]["image"] == image
                                           for p in live(api.pods()))):
            images = {p["spec"]["containers"][0]["image"] for p in live(api.pods())}
            seen_mixed = seen_mixed or len(images) > 1
            assert time.monotonic() < deadline, "recreate did not finish"
            time.sleep(0.05)
        assert not seen_mixed, "Recreate never runs old and new pods together"
    # revisionHistoryLimit=1: the current ReplicaSet and one old one remain.
    wait_for("old ReplicaSet cleanup", lambda: len(api.get(RS)["items"]) == 2)


def test_node_failure_marks_pods_not_ready_then_moves_them(api: API, kubelets: FakeKubelets) -> None:
    api.ok("POST", "/api/v1/namespaces/default/services", {
        "metadata": {"name": "web"},
        "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]}})
    api.ok("POST", DEPLOY, deployment(replicas=3))
    wait_for("3 ready pods", lambda: settled(api, 3))
    victim = next(p for p in api.pods() if p["spec"]["nodeName"] == "n1")
    victim_ip = victim["status"]["podIP"]

    kubelets.alive.discard("n1")  # n1's agent dies: no more lease renewals, no pod updates

    def n1_unknown() -> bool:
        n1 = api.get("/api/v1/nodes/n1")
        ready_cond = next(c for c in n1["status"]["conditions"] if c["type"] == "Ready")
        taints = n1["spec"].get("taints") or []
        return ready_cond["status"] == "Unknown" and any(
            t["key"] == "node.kubernetes.io/unreachable" and t["effect"] == "NoExecute" for t in taints)

    wait_for("n1 NotReady", n1_unknown, timeout=15)
    n1 = api.get("/api/v1/nodes/n1")
    ready_cond = next(c for c in n1["status"]["conditions"] if c["type"] == "Ready")
    assert ready_cond["reason"] == "NodeStatusUnknown"
    assert next(c for c in n1["status"]["conditions"] if c["type"] == "Ready") and n2_ready(api)

    def victim_not_ready() -> bool:
        code, pod = api.call("GET", f"{PODS}/{victim['metadata']['name']}")
        return code == 404 or not ready(pod)

    wait_for("victim Ready=False", victim_not_ready, timeout=10)

    def endpoint_not_ready() -> bool:
        slices = api.get("/apis/discovery.k8s.io/v1/namespaces/default/endpointslices?"
                         "labelSelector=kubernetes.io/service-name=web")["items"]
        eps = [e for s in slices for e in s.get("endpoints") or [] if victim_ip in e["addresses"]]
        return not eps or eps[0]["conditions"]["ready"] is False

    wait_for("the victim's endpoint not ready", endpoint_not_ready, timeout=10)

    # After the eviction timeout the pod is deleted and recreated on a live node.
    wait_for("3 ready pods away from n1", lambda: settled(api, 3)
             and all(p["spec"]["nodeName"] in ("n2", "n3") for p in api.pods()), timeout=30)
    code, _ = api.call("GET", f"{PODS}/{victim['metadata']['name']}")
    assert code == 404
    # New pods never go to the NotReady node.
    api.merge(f"{DEPLOY}/web/scale", {"spec": {"replicas": 5}})
    wait_for("5 ready pods", lambda: settled(api, 5))
    assert "n1" not in nodes_of(api.pods())

    # The agent comes back: Ready again, the taint goes, and new pods may land there again.
    kubelets.alive.add("n1")
    api.merge("/api/v1/nodes/n1/status", {"status": {"conditions": [{
        "type": "Ready", "status": "True", "reason": "KubeletReady", "lastHeartbeatTime": now_micro(),
        "lastTransitionTime": now_micro()}]}})
    wait_for("n1 untainted", lambda: not api.get("/api/v1/nodes/n1")["spec"].get("taints"), timeout=10)


def n2_ready(api: API) -> bool:
    n2 = api.get("/api/v1/nodes/n2")
    return next(c for c in n2["status"]["conditions"] if c["type"] == "Ready")["status"] == "True"


def netplane(server: ServerProcess, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([NETPLANE, "--server", server.url, *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)


def test_cordon_uncordon_and_drain(fast_server: ServerProcess, api: API, kubelets: FakeKubelets) -> None:
    api.ok("POST", DEPLOY, deployment(replicas=3))
    wait_for("3 ready pods", lambda: settled(api, 3))

    out = netplane(fast_server, "cordon", "n3")
    assert (out.returncode, out.stdout) == (0, "node/n3 cordoned\n")
    assert netplane(fast_server, "cordon", "n3").stdout == "node/n3 already cordoned\n"
    assert api.get("/api/v1/nodes/n3")["spec"]["unschedulable"] is True
    api.merge(f"{DEPLOY}/web/scale", {"spec": {"replicas": 5}})
    wait_for("5 ready pods", lambda: settled(api, 5))
    assert nodes_of(api.pods()).count("n3") == 1  # only the pod that was there before
    out = netplane(fast_server, "uncordon", "n3")
    assert (out.returncode, out.stdout) == (0, "node/n3 uncordoned\n")
    assert "unschedulable" not in api.get("/api/v1/nodes/n3")["spec"]
    assert netplane(fast_server, "uncordon", "n3").stdout == "node/n3 already uncordoned\n"

    # A bare pod on n1 blocks the drain until --force.
    api.ok("POST", PODS, {"metadata": {"name": "bare"}, "spec": {
        "nodeName": "n1", "containers": [{"name": "c", "image": "busybox"}]}})
    out = netplane(fast_server, "drain", "n1", "--timeout", "30s")
    assert out.returncode == 1
    assert "cannot delete Pods declare no controller (use --force to override): default/bare" in out.stderr
    assert out.stdout == "node/n1 cordoned\n"

    on_n1 = sorted(p["metadata"]["name"] for p in api.pods() if p["spec"]["nodeName"] == "n1")
    assert on_n1
    out = netplane(fast_server, "drain", "n1", "--force", "--timeout", "30s")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "node/n1 already cordoned"
    assert lines[-1] == "node/n1 drained"
    for name in [*on_n1, "bare"]:
        assert f"evicting pod default/{name}" in lines
        assert f"pod/{name} evicted" in lines
    assert "Warning: deleting Pods that declare no controller: default/bare" in out.stderr
    wait_for("5 ready pods off n1", lambda: settled(api, 5) and "n1" not in nodes_of(api.pods()))
    code, _ = api.call("GET", f"{PODS}/bare")
    assert code == 404


@pytest.mark.prerequisite_missing(shutil.which("kubectl", path=str(REPO / ".venv" / "bin")) is None,
                                  reason="no kubectl")
def test_kubectl_rollout_status_and_get(fast_server: ServerProcess, api: API, kubelets: FakeKubelets,
                                        tmp_path: Path) -> None:
    from tests.support.server import write_kubeconfig

    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", fast_server.url)
    kubectl = [str(REPO / ".venv" / "bin" / "kubectl"), "--kubeconfig", str(kubeconfig)]
    kubelets.ready_delay = 0.5
    api.ok("POST", DEPLOY, deployment(replicas=2))
    # kubectl 1.37 watches with sendInitialEvents (WatchList): the bookmark ending the initial
    # events must come, or rollout status never finishes.
    out = subprocess.run([*kubectl, "rollout", "status", "deployment/web", "--timeout=60s"],
                         capture_output=True, text=True, timeout=90)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == 'deployment "web" successfully rolled out'
    out = subprocess.run([*kubectl, "get", "deploy", "web"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    header, row = out.stdout.splitlines()
    assert header.split() == ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"]
    assert row.split()[:4] == ["web", "2/2", "2", "2"]
    out = subprocess.run([*kubectl, "scale", "deployment/web", "--replicas=3"], capture_output=True,
                         text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "deployment.apps/web scaled"
    wait_for("3 ready pods", lambda: settled(api, 3))
