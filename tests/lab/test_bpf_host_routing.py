"""BPF host routing (`netplane node --bpf-host-routing`) on a 2-node host-gw lab, with real traffic.

The fast path must carry cross-node pod-to-pod traffic (the bridges see none of it) while
everything that needs netfilter still gets it: ClusterIP DNAT to a remote endpoint (and the
reply's reverse DNAT), masquerade to the outside, NodePort from outside the cluster. A node
agent restart must leave an established connection working.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from netplane.kernel import labnet
from netplane.lab.cluster import netplane_argv

from .conftest import LabCluster, echo_app, lab_cluster, wait_for
from .test_lab_failures import restart_daemon

NODE_PORT = 30471
SERVER_PORT = 9000
OUTSIDE_PORT = 8099
BULK_BYTES = 32 * 1024 * 1024
# Bytes through a node's bridge during the bulk transfer, beyond which the fast path did not carry
# it: readiness probes and their answers cross the bridge too, a few hundred bytes a second.
BRIDGE_SLACK = 2 * 1024 * 1024

# Runs in a pod's namespace. One thread per connection; the first 5 bytes pick the mode:
# "SINK": count bytes until EOF, answer "<peer ip> <count>"; "ECHO": echo each line back.
SERVER = (
    "import socket, threading\n"
    "def serve(c, peer):\n"
    "    mode = c.recv(5, socket.MSG_WAITALL)\n"
    "    if mode == b'SINK\\n':\n"
    "        n = 0\n"
    "        while True:\n"
    "            b = c.recv(1 << 16)\n"
    "            if not b: break\n"
    "            n += len(b)\n"
    "        c.sendall(f'{peer[0]} {n}\\n'.encode())\n"
    "    else:\n"
    "        f = c.makefile('rwb')\n"
    "        for line in f:\n"
    "            f.write(peer[0].encode() + b' ' + line); f.flush()\n"
    "    c.close()\n"
    "s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
    "s.bind(('0.0.0.0', int(__import__('sys').argv[1]))); s.listen(16)\n"
    "print('ready', flush=True)\n"
    "while True:\n"
    "    c, peer = s.accept()\n"
    "    threading.Thread(target=serve, args=(c, peer), daemon=True).start()\n"
)

SINK_CLIENT = (
    "import socket, sys\n"
    "c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=30)\n"
    "c.sendall(b'SINK\\n')\n"
    "chunk, left = b'x' * 65536, int(sys.argv[3])\n"
    "while left > 0:\n"
    "    c.sendall(chunk[:left]); left -= len(chunk)\n"
    "c.shutdown(socket.SHUT_WR)\n"
    "sys.stdout.write(c.makefile().readline())\n"
)

# Keeps one connection open; sends each stdin line and prints the echoed answer.
ECHO_CLIENT = (
    "import socket, sys\n"
    "c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=20)\n"
    "f = c.makefile('rwb')\n"
    "f.write(b'ECHO\\n'); f.flush()\n"
    "for line in sys.stdin:\n"
    "    f.write(line.encode()); f.flush()\n"
    "    print(f.readline().decode().strip(), flush=True)\n"
)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabCluster]:
    with lab_cluster("host-gw", "iptables", "np-ltbpf-", Path(tmp_path_factory.mktemp("lab-bhr")), nodes=2,
                     extra_node_args=("--bpf-host-routing",)) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def pods(lab: LabCluster) -> dict[str, dict[str, Any]]:
    """One echo pod per node, and a TCP server (SERVER) in each pod's namespace."""
    c = lab
    for node in ("n1", "n2"):
        c.apply(echo_app(f"bhr-{node}", 1, node_port=NODE_PORT if node == "n2" else None, nodeName=node))
    out = {}
    for node in ("n1", "n2"):
        pod = c.wait_ready(f"app=bhr-{node}", 1)[0]
        assert pod["spec"]["nodeName"] == node
        out[node] = pod
    return out


@pytest.fixture(scope="module")
def servers(lab: LabCluster, pods: dict[str, dict[str, Any]]) -> Iterator[None]:
    procs = []
    try:
        for pod in pods.values():
            p = subprocess.Popen(labnet.netns_exec_argv(lab.netns_of(pod), [sys.executable, "-c", SERVER,
                                                                             str(SERVER_PORT)]),
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            procs.append(p)
            assert p.stdout is not None and p.stdout.readline().strip() == "ready", "pod TCP server did not start"
        yield
    finally:
        for p in procs:
            p.kill()
            p.wait(10)


def ip_of(pod: dict[str, Any]) -> str:
    return str(pod["status"]["podIP"])


def bridge_bytes(c: LabCluster, node: str) -> tuple[int, int]:
    """(rx, tx) bytes of the node's pod bridge."""
    proc = c.run_in(c.lab.plan.node(node).netns, ["cat", "/sys/class/net/cni0/statistics/rx_bytes",
                                                  "/sys/class/net/cni0/statistics/tx_bytes"])
    assert proc.returncode == 0, proc.stderr
    rx, tx = proc.stdout.split()
    return int(rx), int(tx)


def bulk(c: LabCluster, src: dict[str, Any], dst: dict[str, Any]) -> tuple[str, int]:
    proc = c.run_in(c.netns_of(src), [sys.executable, "-c", SINK_CLIENT, ip_of(dst), str(SERVER_PORT),
                                      str(BULK_BYTES)], timeout=60)
    assert proc.returncode == 0, proc.stderr[-400:]
    peer, count = proc.stdout.split()
    return peer, int(count)


def tc_filters(c: LabCluster, node: str, dev: str) -> str:
    proc = c.run_in(c.lab.plan.node(node).netns, ["tc", "filter", "show", "dev", dev, "ingress"])
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_programs_are_attached(lab: LabCluster, pods: dict[str, dict[str, Any]]) -> None:
    for node in ("n1", "n2"):
        assert "np_hostrt_rx" in tc_filters(lab, node, "eth0")
        proc = lab.run_in(lab.lab.plan.node(node).netns, ["ip", "-o", "link", "show", "master", "cni0"])
        veths = [line.split(":")[1].strip().split("@")[0] for line in proc.stdout.splitlines()]
        assert veths, f"no pod veth on {node}'s bridge"
        for veth in veths:
            assert "np_hostrt_tx" in tc_filters(lab, node, veth), f"{node}/{veth} has no send-side program"


@pytest.mark.parametrize(("src", "dst"), [("n1", "n2"), ("n2", "n1")])
def test_pod_to_pod_takes_the_fast_path_and_keeps_the_source(lab: LabCluster, pods: dict[str, dict[str, Any]],
                                                             servers: None, src: str, dst: str) -> None:
    before = {n: bridge_bytes(lab, n) for n in ("n1", "n2")}
    peer, count = bulk(lab, pods[src], pods[dst])
    after = {n: bridge_bytes(lab, n) for n in ("n1", "n2")}
    assert count == BULK_BYTES
    assert peer == ip_of(pods[src]), "the receiver must see the sender's pod IP"
    # The sender's bridge receives nothing from its pod; the receiver's bridge forwards nothing to its pod.
    sent_through_bridge = after[src][0] - before[src][0]
    delivered_through_bridge = after[dst][1] - before[dst][1]
    assert sent_through_bridge < BRIDGE_SLACK, f"{src}'s cni0 received {sent_through_bridge} bytes"
    assert delivered_through_bridge < BRIDGE_SLACK, f"{dst}'s cni0 sent {delivered_through_bridge} bytes"


def test_cluster_ip_with_the_endpoint_on_the_other_node(lab: LabCluster, pods: dict[str, dict[str, Any]]) -> None:
    # bhr-n2's only endpoint is on n2; the client on n1. The reply must be reverse-DNAT'd on n1.
    # (Polled: the proxies program a new Service's rules shortly after its pods are ready.)
    url = f"http://{lab.service_ip('bhr-n2')}/"
    answer = wait_for("the ClusterIP to answer", partial(lab.fetch, lab.netns_of(pods["n1"]), url), 20)
    assert answer["pod"] == pods["n2"]["metadata"]["name"]
    assert answer["client"].rsplit(":", 1)[0] == ip_of(pods["n1"])
    url = f"http://{lab.service_ip('bhr-n1')}/"
    answer = wait_for("the ClusterIP to answer", partial(lab.fetch, lab.netns_of(pods["n2"]), url), 20)
    assert answer["pod"] == pods["n1"]["metadata"]["name"]


# Sends one datagram of argv[3] bytes to argv[1]:argv[2] and prints the size and source of the reply.
UDP_ROUNDTRIP = (
    "import socket, sys\n"
    "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
    "s.settimeout(2)\n"
    "s.sendto(b'x' * int(sys.argv[3]), (sys.argv[1], int(sys.argv[2])))\n"
    "data, peer = s.recvfrom(65535)\n"
    "print(len(data), peer[0])\n"
)


def test_a_fragmented_udp_reply_through_a_cluster_ip_arrives(lab: LabCluster,
                                                             pods: dict[str, dict[str, Any]]) -> None:
    # The reply to a client on n1 from an endpoint on n2 is fragmented (4,000 bytes over MTU 1500)
    # and must be reverse-DNAT'd on n1. Only the first fragment carries the ports: the programs must
    # leave every fragment to the stack, or the later ones reach the client un-NAT'd and the
    # datagram is never reassembled.
    dep, svc = echo_app("bhr-udp", 1, prestop_seconds=None, nodeName="n2")
    container = dep["spec"]["template"]["spec"]["containers"][0]
    container["ports"].append({"name": "echo-udp", "containerPort": 5353, "protocol": "UDP"})
    svc["spec"]["ports"] = [{"name": "echo-udp", "port": 53, "targetPort": 5353, "protocol": "UDP"}]
    lab.apply([dep, svc])
    assert lab.wait_ready("app=bhr-udp", 1)[0]["spec"]["nodeName"] == "n2"
    vip = lab.service_ip("bhr-udp")

    def roundtrip() -> str | None:
        proc = lab.run_in(lab.netns_of(pods["n1"]), [sys.executable, "-c", UDP_ROUNDTRIP, vip, "53", "4000"])
        return proc.stdout.strip() if proc.returncode == 0 else None

    assert wait_for("a 4,000-byte UDP echo through the ClusterIP", roundtrip, 30) == f"4000 {vip}"


def test_pod_to_outside_is_masqueraded(lab: LabCluster, pods: dict[str, dict[str, Any]]) -> None:
    ext = lab.lab.plan.external
    server = subprocess.Popen(labnet.netns_exec_argv(ext.netns, [
        *netplane_argv(), "echo-server", "--http-port", str(OUTSIDE_PORT), "--host", ext.address]),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for node in ("n1", "n2"):
            answer = wait_for("the outside server to answer",
                              partial(lab.fetch, lab.netns_of(pods[node]), f"http://{ext.address}:{OUTSIDE_PORT}/"),
                              20)
            assert answer["client"].rsplit(":", 1)[0] == lab.lab.plan.node(node).address
    finally:
        server.kill()
        server.wait(10)


def test_node_port_from_outside(lab: LabCluster, pods: dict[str, dict[str, Any]]) -> None:
    ext = lab.lab.plan.external.netns
    for node in ("n1", "n2"):  # on n1 the endpoint is remote (masqueraded to n1), on n2 local
        address = lab.lab.plan.node(node).address
        answer = wait_for(f"NodePort on {node}", partial(lab.fetch, ext, f"http://{address}:{NODE_PORT}/"), 20)
        assert answer["pod"] == pods["n2"]["metadata"]["name"]


def test_agent_restart_keeps_an_established_connection(lab: LabCluster, pods: dict[str, dict[str, Any]],
                                                       servers: None) -> None:
    c = lab
    client = subprocess.Popen(labnet.netns_exec_argv(c.netns_of(pods["n1"]), [
        sys.executable, "-c", ECHO_CLIENT, ip_of(pods["n2"]), str(SERVER_PORT)]),
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert client.stdin is not None and client.stdout is not None

    def say(word: str) -> str:
        assert client.stdin is not None and client.stdout is not None and client.stderr is not None
        client.stdin.write(word + "\n")
        client.stdin.flush()
        answer = client.stdout.readline().strip()
        if not answer:
            client.kill()
            logs = "\n".join(f"--- {n} agent, since its restart ---\n" + Path(
                c.lab.procs.daemons[f"{n}/node"].log).read_text().rsplit("node agent stopped", 1)[-1][:6000]
                for n in ("n1", "n2"))
            raise AssertionError(f"the connection broke at {word!r}: {client.stderr.read()[-600:]}\n{logs}")
        return answer

    try:
        assert say("before") == f"{ip_of(pods['n1'])} before"
        for node in ("n1", "n2"):
            log = Path(c.lab.procs.daemons[f"{node}/node"].log)
            adopted_before = log.read_text().count("maps=adopted")
            ready_before = log.read_text().count("node ready")
            try:
                restart_daemon(c, f"{node}/node")
            except AssertionError as e:
                raise AssertionError(f"{e}\n--- {node} agent log ---\n{log.read_text()[-5000:]}") from None

            def restarted(log: Path = log, adopted: int = adopted_before, ready: int = ready_before) -> bool:
                text = log.read_text()
                return text.count("maps=adopted") > adopted and text.count("node ready") > ready

            wait_for(f"the restarted {node} agent to be ready and to adopt its maps", restarted, 30)
            assert say(f"after-{node}") == f"{ip_of(pods['n1'])} after-{node}"
    finally:
        client.kill()
        client.wait(10)
    # Still on the fast path after both restarts (the new agents replaced the programs in place).
    test_programs_are_attached(c, pods)
    peer, count = bulk(c, pods["n1"], pods["n2"])
    assert (peer, count) == (ip_of(pods["n1"]), BULK_BYTES)


def test_turning_the_flag_off_removes_the_programs(lab: LabCluster, pods: dict[str, dict[str, Any]],
                                                   servers: None) -> None:
    """Last in this module: n1's agent restarts without --bpf-host-routing (swapped for a flag that
    changes nothing); its programs go, and pod-to-pod traffic takes the plain path, both ways."""
    c = lab
    log = Path(c.lab.procs.daemons["n1/node"].log)
    ready_before = log.read_text().count("node ready")
    restart_daemon(c, "n1/node", {"--bpf-host-routing": "--run-pods"})
    wait_for("the restarted n1 agent to be ready", lambda: log.read_text().count("node ready") > ready_before, 30)
    assert "np_hostrt" not in tc_filters(c, "n1", "eth0")
    proc = c.run_in(c.lab.plan.node("n1").netns, ["ip", "-o", "link", "show", "master", "cni0"])
    for veth in [line.split(":")[1].strip().split("@")[0] for line in proc.stdout.splitlines()]:
        assert "np_hostrt" not in tc_filters(c, "n1", veth)
    for src, dst in (("n1", "n2"), ("n2", "n1")):
        before = bridge_bytes(c, src)
        assert bulk(c, pods[src], pods[dst]) == (ip_of(pods[src]), BULK_BYTES)
        if src == "n1":  # n1's bridge carries its pod's traffic again
            assert bridge_bytes(c, "n1")[0] - before[0] >= BULK_BYTES
