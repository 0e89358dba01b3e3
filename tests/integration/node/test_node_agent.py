"""The node agent in a namespace cluster: registration, lease, conflist, routes (host-gw and vxlan)."""

from __future__ import annotations

import json

import pytest

from tests.integration.node.cluster import NODE_IPS, Cluster, wait_for

pytestmark = pytest.mark.root


def test_node_registers_heartbeats_and_writes_conflist(cluster: Cluster) -> None:
    agent = cluster.start_agent("n1", backend="host-gw")
    node = cluster.wait_ready("n1")
    assert {"type": "InternalIP", "address": NODE_IPS["n1"]} in node["status"]["addresses"]
    cidr = node["spec"]["podCIDR"]
    assert cidr.startswith("10.244.") and cidr.endswith("/24")
    assert node["metadata"]["annotations"]["netplane.io/backend-type"] == "host-gw"
    conf = json.loads((agent.conf_dir / "10-netplane.conflist").read_text())
    main = conf["plugins"][0]
    assert main["type"] == "bridge" and main["ipam"]["ranges"] == [[{"subnet": cidr}]]
    assert main["ipMasq"] is False
    assert cluster.api is not None
    api = cluster.api
    lease1 = api.get("/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/n1")
    assert lease1["spec"]["holderIdentity"] == "n1"
    renewed = wait_for("a lease renewal", lambda: (
        (lease := api.get("/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/n1"))
        and lease["spec"]["renewTime"] != lease1["spec"]["renewTime"] and lease), timeout=10)
    assert renewed["spec"]["renewTime"] > lease1["spec"]["renewTime"]
    # Pod traffic leaving the cluster CIDR is masqueraded, nothing else.
    rules = cluster.exec_in("n1", "nft", "list", "table", "ip", "netplane_node")
    assert "ip saddr 10.244.0.0/16 ip daddr 10.244.0.0/16 return" in rules
    assert "masquerade" in rules
    assert cluster.exec_in("n1", "cat", "/proc/sys/net/ipv4/ip_forward").strip() == "1"


def _running_pod(cluster: Cluster, name: str, timeout: float = 30) -> dict:
    assert cluster.api is not None
    api = cluster.api

    def ready() -> dict | None:
        pod = api.pod(name)
        conds = (pod or {}).get("status", {}).get("conditions") or []
        if any(c["type"] == "Ready" and c["status"] == "True" for c in conds):
            return pod
        return None

    try:
        return wait_for(f"pod {name} Ready", ready, timeout)
    except AssertionError:
        logs = "\n".join(f"--- {n}\n{a.log()[-3000:]}" for n, a in cluster.agents.items())
        raise AssertionError(f"pod {name} not Ready: {api.pod(name)}\n{logs}") from None


@pytest.mark.parametrize("backend", ["host-gw", "vxlan"])
def test_pods_reach_each_other_across_nodes(cluster: Cluster, backend: str) -> None:
    from tests.integration.node.cluster import pod_manifest

    assert cluster.api is not None
    for node in ("n1", "n2"):
        cluster.start_agent(node, backend=backend)
    for node in ("n1", "n2"):
        cluster.wait_ready(node)
    probe = {"httpGet": {"path": "/healthz", "port": 8080}, "periodSeconds": 1}
    for name, node in (("a", "n1"), ("b", "n2")):
        cluster.api.create_pod(pod_manifest(name, node, ports=[8080], readiness=probe))
    a, b = _running_pod(cluster, "a"), _running_pod(cluster, "b")
    cidr1 = cluster.api.node("n1")["spec"]["podCIDR"]
    cidr2 = cluster.api.node("n2")["spec"]["podCIDR"]
    assert a["status"]["podIP"].rsplit(".", 1)[0] == cidr1.rsplit(".", 1)[0]
    assert b["status"]["podIP"].rsplit(".", 1)[0] == cidr2.rsplit(".", 1)[0]
    routes = cluster.exec_in("n1", "ip", "route", "show", "proto", "77")
    if backend == "host-gw":
        assert f"{cidr2} via {NODE_IPS['n2']} dev eth0" in routes
    else:
        gw2 = cidr2.split("/")[0]
        assert f"{cidr2} via {gw2} dev np.vxlan onlink" in routes
        neigh = cluster.exec_in("n1", "ip", "neigh", "show", "dev", "np.vxlan")
        mac2 = json.loads(cluster.api.node("n2")["metadata"]["annotations"]["netplane.io/backend-data"])["VtepMAC"]
        assert f"{gw2} lladdr {mac2} PERMANENT" in neigh
        fdb = cluster.exec_in("n1", "bridge", "fdb", "show", "dev", "np.vxlan")
        assert f"{mac2} dst {NODE_IPS['n2']}" in fdb
    # Pod b asks pod a over HTTP: a sees b's pod IP (no NAT between pods).
    out = cluster.exec_in(cluster.pod_netns(b["metadata"]["uid"]), "/bin/busybox", "wget", "-q", "-O", "-",
                          f"http://{a['status']['podIP']}:8080/hello", timeout=15)
    answer = json.loads(out)
    assert answer["pod"] == "a" and answer["node"] == "n1" and answer["path"] == "/hello"
    assert answer["clientIP"] == b["status"]["podIP"]
    # Full-size segments cross the overlay: pods get MTU 1450 on vxlan, and a 400 kB upload goes through.
    mtu = cluster.exec_in(cluster.pod_netns(b["metadata"]["uid"]), "cat", "/sys/class/net/eth0/mtu").strip()
    assert mtu == ("1450" if backend == "vxlan" else "1500")
    blob = cluster.tmp / "blob"
    blob.write_bytes(b"x" * 400_000)
    out = cluster.exec_in(cluster.pod_netns(b["metadata"]["uid"]), "/bin/busybox", "wget", "-q", "-O", "-",
                          "--post-file", str(blob), f"http://{a['status']['podIP']}:8080/upload", timeout=15)
    assert json.loads(out)["headers"]["Content-Length"] == "400000"
    # A node that goes away takes its routes with it.
    cluster.api.call("DELETE", "/api/v1/nodes/n2")
    wait_for("n2's route to go", lambda: cidr2 not in cluster.exec_in("n1", "ip", "route", "show", "proto", "77"))


@pytest.mark.parametrize("plugin", ["bridge", "netplane"])
def test_pod_deletion_is_graceful_and_releases_the_ip(cluster: Cluster, plugin: str) -> None:
    from tests.integration.node.cluster import pod_manifest

    assert cluster.api is not None
    api = cluster.api
    agent = cluster.start_agent("n1", plugin=plugin)
    cluster.wait_ready("n1")
    marker = cluster.tmp / "got-term"
    script = (f"trap 'echo got TERM; echo TERM > {marker}; exit 0' TERM; echo started; "
              "while true; do sleep 0.1; done")
    cluster.api.create_pod(pod_manifest("term", "n1", image="busybox", command=["sh", "-c", script], grace=20))
    pod = _running_pod(cluster, "term")
    ip = pod["status"]["podIP"]
    status = pod["status"]["containerStatuses"][0]
    assert status["restartCount"] == 0 and "running" in status["state"] and status["ready"] is True
    ipam_file = agent.state_dir / "ipam" / "netplane" / ip
    assert ipam_file.exists()
    netns = cluster.pod_netns(pod["metadata"]["uid"])
    # resolv.conf as the kubelet writes it for ClusterFirst.
    resolv = cluster.exec_in(netns, "cat", "/etc/resolv.conf")
    assert "nameserver 10.96.0.10" in resolv
    assert "search default.svc.cluster.local svc.cluster.local cluster.local" in resolv
    assert "options ndots:5" in resolv
    # Logs, through the node's state dir.
    from netplane.node.podlogs import read_local

    wait_for("the container's log", lambda: b"started" in read_local(str(agent.state_dir), "default", "term"))
    cluster.api.delete_pod("term")
    wait_for("the pod object to go", lambda: api.pod("term") is None, timeout=15)
    assert marker.read_text().strip() == "TERM"  # SIGTERM, not SIGKILL: the trap ran
    assert not ipam_file.exists()  # CNI DEL released the address
    assert not (agent.state_dir / "pods" / pod["metadata"]["uid"]).exists()
    wait_for("the sandbox netns to go", lambda: not __import__("os").path.exists(f"/run/netns/{netns}"))


def test_agent_restart_keeps_pods_running(cluster: Cluster) -> None:
    from tests.integration.node.cluster import pod_manifest

    assert cluster.api is not None
    api = cluster.api
    # Started with `ip netns exec`, as the lab does: the agent's pod netns bind mounts live in its private
    # mount namespace, so the restarted agent must find its pods through their processes.
    cluster.start_agent("n1", launcher="ip-netns-exec")
    cluster.start_agent("n2", launcher="ip-netns-exec")
    cluster.wait_ready("n1")
    cluster.wait_ready("n2")
    cluster.api.create_pod(pod_manifest("web", "n1", ports=[8080],
                                        readiness={"tcpSocket": {"port": 8080}, "periodSeconds": 1}))
    pod = _running_pod(cluster, "web")
    agent = cluster.agents["n1"]
    metas = list(agent.state_dir.glob("pods/*/containers/main/0/meta.json"))
    pid = json.loads(metas[0].read_text())["pid"]
    routes_before = cluster.exec_in("n1", "ip", "route", "show", "proto", "77")
    cluster.stop_agent("n1")
    assert __import__("os").path.exists(f"/proc/{pid}")
    url = f"http://{pod['status']['podIP']}:8080/"
    # While the agent is down the pod still serves, reached from the other node across the routes.
    assert json.loads(cluster.exec_in("n2", "/bin/busybox", "wget", "-q", "-O", "-", url))["pod"] == "web"
    cluster.start_agent("n1", launcher="ip-netns-exec")
    cluster.wait_ready("n1")
    wait_for("the adopted pod's status", lambda: "adopted" in cluster.agents["n1"].log() and
             "pod adopted" in cluster.agents["n1"].log())
    after = cluster.api.pod("web")
    st = after["status"]["containerStatuses"][0]
    assert st["restartCount"] == 0 and "running" in st["state"]
    assert __import__("os").path.exists(f"/proc/{pid}")
    assert cluster.exec_in("n1", "ip", "route", "show", "proto", "77") == routes_before
    assert json.loads(cluster.exec_in("n2", "/bin/busybox", "wget", "-q", "-O", "-", url))["pod"] == "web"
    # The adopted pod can still be deleted properly (its netns found again, CNI DEL run).
    cluster.api.delete_pod("web")
    wait_for("the pod object to go", lambda: api.pod("web") is None, timeout=15)
    assert not __import__("os").path.exists(f"/proc/{pid}")
