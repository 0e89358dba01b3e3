"""Disturbances with real traffic on one lab (vxlan + iptables): drain, node failure, pod deletion,
daemon restarts, and `netplane logs` on a lab pod.

These take longer than the four requirements, so they run on one backend/proxy combination; the
requirements themselves run on all four (test_lab_networking.py). Every test leaves the cluster as
it found it (nodes uncordoned, links up), because the lab is shared by the module.
"""

from __future__ import annotations

import ipaddress
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from netplane.api import resources as res
from netplane.lab.cluster import netplane_argv
from tests.lab.conftest import NODES, PODS, PRESTOP_SECONDS, LabCluster, Traffic, echo_app, lab_cluster, wait_for

DRAIN_NODE_PORT = 30210
FAIL_NODE_PORT = 30211
STEADY_NODE_PORT = 30212
# How long after a drain the drained pod may still answer: the proxies' minimum sync interval (1 s)
# and a sync.
SETTLE = 3.0


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabCluster]:
    with lab_cluster("vxlan", "iptables", "np-ltf-", Path(tmp_path_factory.mktemp("lab-failures"))) as c:
        yield c


DEPLOYMENTS = res.must("apps", "v1", "deployments")


@pytest.fixture(autouse=True)
def empty_cluster_afterwards(lab: LabCluster) -> Iterator[None]:
    """Each test starts on empty nodes, so the scheduler (fewest pods first) spreads 3 replicas over 3
    nodes: scale every Deployment to 0 and delete bare pods after each test, and wait until they are gone."""
    yield

    async def clear(client: Any) -> None:
        for d in (await client.list(DEPLOYMENTS, "default"))["items"]:
            await client.patch(DEPLOYMENTS, d["metadata"]["name"], {"spec": {"replicas": 0}}, "default")
        for p in (await client.list(PODS, "default"))["items"]:
            if not p["metadata"].get("ownerReferences"):
                await client.delete(PODS, p["metadata"]["name"], "default")

    lab.api(clear)
    wait_for("every pod to be gone", lambda: not lab.api(lambda cl: cl.list(PODS, "default"))["items"] or None, 60)


# -- helpers -------------------------------------------------------------------------------------


def on_node(pods: list[dict[str, Any]], node: str) -> list[dict[str, Any]]:
    return [p for p in pods if p["spec"]["nodeName"] == node]


def names(pods: list[dict[str, Any]]) -> set[str]:
    return {p["metadata"]["name"] for p in pods}


def node_ready(c: LabCluster, name: str) -> str:
    node = c.api(lambda cl: cl.get(NODES, name))
    conditions = (node.get("status") or {}).get("conditions") or []
    cond: dict[str, Any] = next((x for x in conditions if x.get("type") == "Ready"), {})
    return str(cond.get("status"))


def node_schedulable(c: LabCluster, name: str) -> bool:
    spec = c.api(lambda cl: cl.get(NODES, name)).get("spec") or {}
    return node_ready(c, name) == "True" and not spec.get("unschedulable") and not spec.get("taints")


def netplane_in_cp(c: LabCluster, *args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    """A `netplane` command where an operator would run it: next to the state server."""
    return c.run_in(c.lab.plan.control_plane.netns, [*netplane_argv(), "--server", c.lab.plan.api_url, *args],
                    timeout=timeout)


def answered_by_all(c: LabCluster, netns: str, url: str, want: set[str], tries: int = 30) -> bool:
    """Every pod in `want` answers within `tries` requests, and nothing else does."""
    seen = {c.fetch(netns, url)["pod"] for _ in range(tries)}
    assert seen <= want, f"answers from {seen - want}, which should not serve {url} any more"
    return seen == want


def ipam_dir(c: LabCluster, node: str) -> Path:
    """The node's IPAM store (host-local's layout: one file per reserved IP)."""
    return c.lab.state_dir / node / "agent" / "ipam" / "netplane"


def restart_daemon(c: LabCluster, name: str, replace: dict[str, str] | None = None) -> None:
    """Stop one lab daemon (SIGTERM, by its recorded PID) and start it again as it was: same
    namespace, argv (but for arguments swapped by `replace`) and environment (read from /proc)."""
    d = c.lab.procs.daemons[name]
    assert d.alive(), f"{name} is not running"
    raw = Path(f"/proc/{d.pid}/environ").read_bytes()
    env = dict(item.split("=", 1) for item in raw.decode(errors="surrogateescape").split("\0") if "=" in item)
    os.kill(d.pid, signal.SIGTERM)
    wait_for(f"{name} to exit", lambda: not d.alive(), 20)
    argv = [(replace or {}).get(a, a) for a in d.argv]
    new = c.lab.procs.start(name, d.netns, argv, env)
    c.lab.procs.wait_started(new)


# -- tests -------------------------------------------------------------------------------------


def test_drain_moves_traffic_to_remaining_pods(lab: LabCluster) -> None:
    c = lab
    c.apply(echo_app("drain", 3, node_port=DRAIN_NODE_PORT))
    pods = c.wait_ready("app=drain", 3)
    assert {p["spec"]["nodeName"] for p in pods} == {"n1", "n2", "n3"}
    victim = on_node(pods, "n2")[0]["metadata"]["name"]
    client_pod = on_node(pods, "n1")[0]
    n1 = c.lab.plan.node("n1")
    cluster_ip_url = f"http://{c.service_ip('drain')}/"
    node_port_url = f"http://{n1.address}:{DRAIN_NODE_PORT}/"
    ext = c.lab.plan.external.netns
    wait_for("the NodePort to answer", lambda: c.fetch(ext, node_port_url), 20)
    try:
        with Traffic(c, c.netns_of(client_pod), cluster_ip_url) as via_cip, Traffic(c, ext, node_port_url) as via_np:
            via_cip.wait_answers(5)
            via_np.wait_answers(5)
            drain_started = time.monotonic()
            proc = netplane_in_cp(c, "drain", "n2", "--timeout", "60s")
            assert proc.returncode == 0, proc.stderr
            assert f"pod/{victim} evicted" in proc.stdout
            # The echo server exits the moment SIGTERM comes, faster than the proxies' minimum sync
            # interval (1 s, kube-proxy's default): the preStop sleep keeps it serving until every
            # proxy has dropped it (its endpoint is terminating, not ready, from the eviction on), so no
            # request may fail. From a moment after the drain on, none may reach the drained pod.
            assert time.monotonic() - drain_started >= PRESTOP_SECONDS, "the drain did not wait for the preStop"
            settled = time.monotonic() + SETTLE
            moved = wait_for("3 ready pods off n2",
                             lambda: (lambda ps: ps if len(ps) == 3 and not on_node(ps, "n2") else None)(
                                 c.ready_pods("app=drain")), 60)
            # Keep the traffic going until the replacement answers too.
            wait_for("the replacement pod to answer through the ClusterIP",
                     lambda: answered_by_all(c, c.netns_of(client_pod), cluster_ip_url, names(moved)), 30)
            wait_for("the traffic to run past the settling time", lambda: time.monotonic() > settled + 1, 10)
            via_cip.wait_answers(20)
            via_np.wait_answers(20)
        for traffic in (via_cip, via_np):
            print(f"{traffic.url}: {len(traffic.answers)} requests, {len(traffic.failures())} failed")
            assert not traffic.failures(), f"{traffic.url} failed during the drain: {traffic.failures()[:3]}"
            assert victim not in traffic.pods(since=settled), f"{victim} still answered {traffic.url} after the drain"
            assert traffic.pods(since=settled) <= names(moved)
        assert via_cip.pods(since=settled) == names(moved), "the ClusterIP did not reach every remaining pod"
    finally:
        proc = netplane_in_cp(c, "uncordon", "n2")
        assert proc.returncode == 0, proc.stderr


def test_node_failure_moves_traffic_to_the_remaining_pods(lab: LabCluster) -> None:
    """Cut a node off the underlay: it goes NotReady after the grace period, its pods' endpoints are
    taken out so the other nodes route around it, then its pods are recreated elsewhere."""
    c = lab
    c.apply(echo_app("fail", 3, node_port=FAIL_NODE_PORT))
    pods = c.wait_ready("app=fail", 3)
    assert {p["spec"]["nodeName"] for p in pods} == {"n1", "n2", "n3"}
    victim = on_node(pods, "n3")[0]
    victim_netns, victim_ip = c.netns_of(victim), victim["status"]["podIP"]
    client_netns = c.netns_of(on_node(pods, "n1")[0])
    cluster_ip_url = f"http://{c.service_ip('fail')}/"
    node_port_url = f"http://{c.lab.plan.node('n2').address}:{FAIL_NODE_PORT}/"
    ext = c.lab.plan.external.netns
    n3 = c.lab.plan.node("n3")
    underlay = c.lab.plan.underlay_netns

    def link(state: str) -> None:
        proc = c.run_in(underlay, ["ip", "link", "set", n3.underlay_port, state])
        assert proc.returncode == 0, proc.stderr

    link("down")
    cut = time.monotonic()
    try:
        wait_for("n3 to become NotReady", lambda: node_ready(c, "n3") != "True", 30)
        not_ready_after = time.monotonic() - cut
        # The grace period (4 s) counts from the last heartbeat the server saw, up to 1 s (the heartbeat
        # interval) before the cut: sooner than 3 s after it would be too soon.
        assert not_ready_after >= 2.5, f"n3 went NotReady {not_ready_after:.1f}s after the cut, before its grace"

        def routed_around() -> bool:
            answers = [c.fetch(client_netns, cluster_ip_url)["pod"] for _ in range(10)]
            return victim["metadata"]["name"] not in answers

        # Requests that the proxies still sent to n3 would time out (fetch raises): every one of 10
        # answered, and none by the pod on n3, means its endpoint is out of every proxy's rules.
        wait_for("the proxies to route around n3's pod", routed_around, 20)
        print(f"n3 NotReady {not_ready_after:.1f}s after the cut, routed around after {time.monotonic() - cut:.1f}s")
        with Traffic(c, client_netns, cluster_ip_url) as via_cip, Traffic(c, ext, node_port_url) as via_np:
            via_cip.wait_answers(3)
            via_np.wait_answers(3)
            moved = wait_for("3 ready pods off n3",
                             lambda: (lambda ps: ps if len(ps) == 3 and not on_node(ps, "n3") else None)(
                                 c.ready_pods("app=fail")), 60)
            assert victim["metadata"]["name"] not in names(c.pods("app=fail")), "the evicted pod is still there"
            wait_for("the replacement pod to answer through the ClusterIP",
                     lambda: answered_by_all(c, client_netns, cluster_ip_url, names(moved)), 30)
            wait_for("the replacement pod to answer through the NodePort",
                     lambda: answered_by_all(c, ext, node_port_url, names(moved)), 30)
        print(f"replacement serving {time.monotonic() - cut:.1f}s after the cut")
        for traffic in (via_cip, via_np):
            print(f"{traffic.url}: {len(traffic.answers)} requests, {len(traffic.failures())} failed")
            assert not traffic.failures(), f"{traffic.url} failed while n3 was down: {traffic.failures()[:3]}"
            assert traffic.pods() <= names(moved) - {victim["metadata"]["name"]}
    finally:
        link("up")
    # Back on the underlay, n3 heartbeats again, becomes schedulable, and tears down the pod that was
    # evicted while it was away: its sandbox and its IP reservation go.
    wait_for("n3 to be Ready and schedulable again", lambda: node_schedulable(c, "n3"), 30)
    wait_for("n3 to remove the evicted pod's sandbox",
             lambda: not Path(f"/run/netns/{victim_netns}").exists(), 30)
    wait_for("n3 to release the evicted pod's IP", lambda: not (ipam_dir(c, "n3") / victim_ip).exists(), 10)


def test_deleted_pod_ip_is_released_and_reused(lab: LabCluster) -> None:
    from netplane.cni.ipam.store import DiskStore

    c = lab

    def pod(name: str) -> dict[str, Any]:
        return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": {"app": name}},
                "spec": {"nodeName": "n1", "terminationGracePeriodSeconds": 5, "containers": [
                    {"name": "echo", "image": "netplane/echo-server", "ports": [{"containerPort": 8080}],
                     "readinessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 1}}]}}

    c.apply([pod("ipam-a")])
    (a,) = c.wait_ready("app=ipam-a", 1)
    ip, netns = a["status"]["podIP"], c.netns_of(a)
    store_dir = ipam_dir(c, "n1")
    assert (store_dir / ip).exists(), f"no reservation file for {ip} in {store_dir}"

    c.api(lambda cl: cl.delete(PODS, "ipam-a", "default"))
    wait_for("ipam-a to be gone from the API", lambda: not c.pods("app=ipam-a") or None, 30)
    assert not (store_dir / ip).exists(), f"{ip} is still reserved after its pod was deleted"
    assert not Path(f"/run/netns/{netns}").exists(), f"{netns} outlived its pod"

    # Allocation is round-robin (host-local's), so the freed address comes back only once the rest
    # of the range is taken: reserve every other address, then the next pod on n1 must get it.
    pod_cidr = c.api(lambda cl: cl.get(NODES, "n1"))["spec"]["podCIDR"]
    store = DiskStore(str(store_dir.parent), store_dir.name)
    filler = "np-lab-test-filler"
    try:
        with store.lock():
            for host in ipaddress.ip_network(pod_cidr).hosts():
                if str(host) != ip:
                    store.reserve(filler, "eth0", host, 0)
        c.apply([pod("ipam-b")])
        (b,) = c.wait_ready("app=ipam-b", 1)
        assert b["status"]["podIP"] == ip, f"the released {ip} was not reused (got {b['status']['podIP']})"
        assert c.fetch(c.lab.plan.node("n2").netns, f"http://{ip}:8080/")["pod"] == "ipam-b"
    finally:
        with store.lock():
            store.release_by_id(filler, "eth0")
        c.api(lambda cl: cl.delete(PODS, "ipam-b", "default"))
        wait_for("ipam-b to be gone", lambda: not c.pods("app=ipam-b") or None, 30)


def test_logs_of_a_lab_pod(lab: LabCluster) -> None:
    c = lab
    script = "echo hello from $(POD_NAME); echo to stderr >&2; while true; do sleep 1; done"
    c.apply([{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "talker", "labels": {"app": "talker"}},
              "spec": {"terminationGracePeriodSeconds": 1, "containers": [
                  {"name": "say", "image": "busybox", "command": ["sh", "-c", script],
                   "env": [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}]},
                  {"name": "quiet", "image": "busybox", "command": ["sleep", "3600"]}]}}])
    (p,) = c.wait_ready("app=talker", 1)

    def logs() -> str | None:
        proc = netplane_in_cp(c, "logs", "talker", "-c", "say", timeout=30)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout if "to stderr" in proc.stdout else None

    out = wait_for("the container's log", logs, 20)
    assert out.splitlines() == ["hello from talker", "to stderr"]
    # Two containers and no -c: kubectl's error, naming the choices.
    proc = netplane_in_cp(c, "logs", "talker", timeout=30)
    assert proc.returncode != 0 and "a container name must be specified" in proc.stderr, proc.stderr
    assert "say" in proc.stderr and "quiet" in proc.stderr
    # The kubelet's endpoint on the pod's node, from elsewhere on the underlay.
    node = c.lab.plan.node(p["spec"]["nodeName"])
    code = ("import sys, urllib.request\n"
            "sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())\n")
    proc = c.run_in(c.lab.plan.control_plane.netns, [
        sys.executable, "-c", code, f"http://{node.address}:10250/containerLogs/default/talker/say?tailLines=1"])
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "to stderr\n"
    c.api(lambda cl: cl.delete(PODS, "talker", "default"))


def test_restarting_node_agent_and_proxy_disturbs_no_traffic(lab: LabCluster) -> None:
    c = lab
    c.apply(echo_app("steady", 3, node_port=STEADY_NODE_PORT))
    pods = c.wait_ready("app=steady", 3)
    assert {p["spec"]["nodeName"] for p in pods} == {"n1", "n2", "n3"}
    on_n2 = on_node(pods, "n2")[0]
    client_netns = c.netns_of(on_node(pods, "n1")[0])
    ext = c.lab.plan.external.netns
    n2 = c.lab.plan.node("n2")
    cluster_ip_url = f"http://{c.service_ip('steady')}/"
    node_port_url = f"http://{n2.address}:{STEADY_NODE_PORT}/"
    pod_url = f"http://{on_n2['status']['podIP']}:8080/"
    wait_for("the NodePort on n2 to answer", lambda: c.fetch(ext, node_port_url), 20)
    with (Traffic(c, client_netns, cluster_ip_url) as via_cip, Traffic(c, ext, node_port_url) as via_np,
          Traffic(c, client_netns, pod_url) as direct):
        for t in (via_cip, via_np, direct):
            t.wait_answers(3)
        agent_log = Path(c.lab.procs.daemons["n2/node"].log)
        logged_before = agent_log.read_text().count("pod adopted")
        restart_daemon(c, "n2/node")
        wait_for("the restarted agent to adopt its pods",
                 lambda: agent_log.read_text().count("pod adopted") > logged_before, 30)
        wait_for("n2 to report Ready after the restart", lambda: node_schedulable(c, "n2"), 20)
        restart_daemon(c, "n2/proxy")
        # The new proxy has synced when its healthz answers (kube-proxy's /healthz turns 200 then).
        wait_for("the restarted proxy to be healthy", lambda: c.run_in(ext, [
            sys.executable, "-c", f"import urllib.request; urllib.request.urlopen('http://{n2.address}:10256/healthz')"
        ]).returncode == 0, 30)
        for t in (via_cip, via_np, direct):
            t.wait_answers(10)
    for t in (via_cip, via_np, direct):
        assert len(t.answers) >= 13
        assert not t.failures(), f"{t.url} failed during the restarts: {t.failures()[:3]}"
    after = {p["metadata"]["name"]: p for p in c.ready_pods("app=steady")}
    assert set(after) == names(pods), "the restart replaced pods"
    for before in pods:
        now = after[before["metadata"]["name"]]
        assert now["status"]["podIP"] == before["status"]["podIP"]
        assert [s["restartCount"] for s in now["status"]["containerStatuses"]] == [0]


def test_a_readdressed_node_is_followed(lab: LabCluster) -> None:
    """n3 moves to another underlay address and its agent restarts with it: the other nodes follow
    (with vxlan: the FDB entry and, since the device is recreated for the new local address, the
    VTEP MAC), and pod traffic across nodes flows again both ways. Then it moves back."""
    c = lab
    c.apply(echo_app("moved", 3))
    pods = c.wait_ready("app=moved", 3)
    assert {p["spec"]["nodeName"] for p in pods} == {"n1", "n2", "n3"}
    on_n1, on_n3 = on_node(pods, "n1")[0], on_node(pods, "n3")[0]
    n1_netns, n3_netns = c.netns_of(on_n1), c.netns_of(on_n3)
    to_n3 = f"http://{on_n3['status']['podIP']}:8080/"
    to_n1 = f"http://{on_n1['status']['podIP']}:8080/"
    n3 = c.lab.plan.node("n3")

    def internal_ip() -> str:
        node = c.api(lambda cl: cl.get(NODES, "n3"))
        return str(next(a["address"] for a in node["status"]["addresses"] if a["type"] == "InternalIP"))

    def move(old: str, new: str) -> None:
        plen, gw = c.lab.plan.prefix_len, c.lab.plan.gateway
        for cmd in (["addr", "del", f"{old}/{plen}", "dev", "eth0"], ["addr", "add", f"{new}/{plen}", "dev", "eth0"],
                    ["route", "replace", "default", "via", gw]):
            proc = c.run_in(n3.netns, ["ip", *cmd])
            assert proc.returncode == 0, proc.stderr
        restart_daemon(c, "n3/node", {old: new})
        wait_for(f"n3's InternalIP to become {new}", lambda: internal_ip() == new, 30)

        def both_ways() -> bool:
            return (c.fetch(n1_netns, to_n3)["clientIP"] == on_n1["status"]["podIP"]
                    and c.fetch(n3_netns, to_n1)["clientIP"] == on_n3["status"]["podIP"])

        wait_for(f"pod traffic between n1 and n3 at {new}", both_ways, 30)

    assert c.fetch(n1_netns, to_n3)["pod"] == on_n3["metadata"]["name"]
    moved_to = "192.168.50.113"
    move(n3.address, moved_to)
    move(moved_to, n3.address)
