"""The four Kubernetes networking requirements, with real traffic, per backend and proxy mode."""

from __future__ import annotations

import sys
from typing import Any

from tests.lab.conftest import LabCluster, echo_app, wait_for


def test_pod_to_pod_across_nodes_without_nat(cluster: LabCluster) -> None:
    cluster.apply(echo_app("p2p", 3))
    pods = cluster.wait_ready("app=p2p", 3)
    by_node = {p["spec"]["nodeName"]: p for p in pods}
    assert len(by_node) == 3, "the scheduler should spread 3 pods over 3 nodes"
    for src in pods:
        for dst in pods:
            if src["spec"]["nodeName"] == dst["spec"]["nodeName"]:
                continue
            ans = cluster.fetch(cluster.netns_of(src), f"http://{dst['status']['podIP']}:8080/")
            assert ans["pod"] == dst["metadata"]["name"]
            # The receiver sees the sender's own pod IP: no NAT between pods.
            assert ans["clientIP"] == src["status"]["podIP"]


def test_containers_of_a_pod_share_localhost(cluster: LabCluster) -> None:
    pod: dict[str, Any] = {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "duo", "labels": {"app": "duo"}},
        "spec": {"containers": [
            {"name": "web", "image": "netplane/echo-server", "ports": [{"containerPort": 8080}]},
            # Ready only once it reaches the other container over the pod's own localhost.
            {"name": "side", "image": "busybox", "command": ["sleep", "3600"],
             "readinessProbe": {"exec": {"command": ["curl", "-sf", "-m", "2", "http://127.0.0.1:8080/"]},
                                "periodSeconds": 1}},
        ]},
    }
    cluster.apply([pod])
    (ready,) = cluster.wait_ready("app=duo", 1)
    statuses = {c["name"]: c for c in ready["status"]["containerStatuses"]}
    assert statuses["side"]["ready"] and statuses["web"]["ready"]


def test_pod_to_service_spreads_over_endpoints(cluster: LabCluster) -> None:
    cluster.apply(echo_app("spread", 3))
    pods = cluster.wait_ready("app=spread", 3)
    ip = cluster.service_ip("spread")
    src = cluster.netns_of(pods[0])
    names = {p["metadata"]["name"] for p in pods}

    def all_answer() -> set[str] | None:
        seen = {cluster.fetch(src, f"http://{ip}/")["pod"] for _ in range(30)}
        return seen if seen == names else None

    wait_for("every endpoint to answer through the ClusterIP", all_answer, 30)
    # Pod-to-service keeps the pod's source address (no --masquerade-all).
    ans = cluster.fetch(src, f"http://{ip}/")
    if ans["pod"] != pods[0]["metadata"]["name"]:
        assert ans["clientIP"] == pods[0]["status"]["podIP"]


def test_outside_to_service_through_node_port(cluster: LabCluster) -> None:
    cluster.apply(echo_app("np", 2, node_port=30111))
    cluster.wait_ready("app=np", 2)
    ext = cluster.lab.plan.external.netns
    for node in cluster.lab.plan.nodes:
        url = f"http://{node.address}:30111/"
        ans = wait_for(f"NodePort on {node.name}", lambda: cluster.fetch(ext, url), 20)  # noqa: B023
        assert ans["pod"].startswith("np-")


def test_large_transfer_across_nodes(cluster: LabCluster) -> None:
    """8 MiB of full-size TCP segments across nodes: over VXLAN this fails unless the pod MTU leaves room."""
    cluster.apply(echo_app("bulk", 3))
    pods = cluster.wait_ready("app=bulk", 3)
    pair = next(((a, b) for a in pods for b in pods if a["spec"]["nodeName"] != b["spec"]["nodeName"]), None)
    assert pair is not None, "3 pods on 3 nodes should not all share one node"
    a, b = pair
    code = (
        "import socket, sys\n"
        "s = socket.create_connection((sys.argv[1], 8080), timeout=20)\n"
        "body = b'x' * (8 << 20)\n"
        "s.sendall(b'POST /bulk HTTP/1.1\\r\\nHost: x\\r\\nContent-Length: %d\\r\\n"
        "Connection: close\\r\\n\\r\\n' % len(body) + body)\n"
        "data = b''\n"
        "while chunk := s.recv(65536):\n"
        "    data += chunk\n"
        "print(data.split(b'\\r\\n')[0].decode())\n"
    )
    proc = cluster.run_in(cluster.netns_of(a), [sys.executable, "-c", code, b["status"]["podIP"]], timeout=60)
    assert proc.returncode == 0, proc.stderr[-500:]
    assert proc.stdout.startswith("HTTP/1.1 200"), proc.stdout
