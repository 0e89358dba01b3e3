"""The proxy's rules in a real kernel: two nodes, pods and an outside client in network namespaces,
real TCP and UDP traffic, in both modes. Rules are applied to node1 through the real sync path
(Proxier -> renderer -> iptables-restore / nft -> conntrack)."""

from __future__ import annotations

import os
import subprocess
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from netplane.kernel.conntrack import Conntrack
from netplane.kernel.iptables import Iptables
from netplane.kernel.nftables import LibNft, Nft
from netplane.proxy.fixtures import endpoint_slice, service
from netplane.proxy.proxier import Backend, IptablesBackend, NftablesBackend, Proxier
from netplane.proxy.state import ProxyConfig
from tests.integration.proxy.topology import (
    CLIENT_ALT_IP,
    CLIENT_IP,
    CLUSTER_CIDR,
    NODE1_IP,
    NODE2_IP,
    Topology,
    sh,
)

pytestmark = [
    pytest.mark.root,
    pytest.mark.prerequisite_missing(os.geteuid() != 0, reason="needs root for network namespaces"),
]

A, B, C = "10.244.1.2", "10.244.1.3", "10.244.2.2"
WEB_PORTS = (("http", 8080, "TCP"), ("dns", 5353, "UDP"))


def services() -> list[dict[str, Any]]:
    return [
        service("web", "10.96.0.10", ports=(("http", 80, "TCP"), ("dns", 53, "UDP"))),
        service("np", "10.96.0.20", ports=(("", 80, "TCP", 30080),), type="NodePort"),
        service("nplocal", "10.96.0.21", ports=(("", 80, "TCP", 30081),), type="NodePort",
                external_policy="Local"),
        service("lb", "10.96.0.30", ports=(("", 443, "TCP", 30443),), type="LoadBalancer",
                lb_ips=["203.0.113.10"], source_ranges=["198.51.100.0/24"]),
        service("ext", "10.96.0.40", external_ips=["192.0.2.40"]),
        service("aff", "10.96.0.50", affinity_timeout=300),
        service("itp", "10.96.0.60", internal_policy="Local"),
        service("empty", "10.96.0.70", ports=(("tcp", 80, "TCP"), ("udp", 53, "UDP"))),
        service("self", "10.96.0.81"),
        service("remote", "10.96.0.82"),
        service("dns", "10.96.0.90", ports=(("", 53, "UDP"),)),
    ]


def slices() -> list[dict[str, Any]]:
    tcp8080 = (("", 8080, "TCP"),)
    return [
        endpoint_slice("web", [(A, "n1"), (B, "n1"), (C, "n2")], ports=WEB_PORTS),
        endpoint_slice("np", [(A, "n1"), (C, "n2")], ports=tcp8080),
        endpoint_slice("nplocal", [(A, "n1"), (C, "n2")], ports=tcp8080),
        endpoint_slice("lb", [(A, "n1")], ports=(("", 8443, "TCP"),)),
        endpoint_slice("ext", [(C, "n2")], ports=tcp8080),
        endpoint_slice("aff", [(A, "n1"), (B, "n1"), (C, "n2")], ports=tcp8080),
        endpoint_slice("itp", [(A, "n1"), (C, "n2")], ports=tcp8080),
        endpoint_slice("self", [(A, "n1")], ports=tcp8080),
        endpoint_slice("remote", [(C, "n2")], ports=tcp8080),
        endpoint_slice("dns", [(A, "n1")], ports=(("", 5353, "UDP"),)),
    ]


def make_proxier(topo: Topology, mode: str, **config: Any) -> Proxier:
    cfg = ProxyConfig(node_name="n1", cluster_cidr=CLUSTER_CIDR, node_ips=(NODE1_IP,), **config)
    backend: Backend
    if mode == "iptables":
        backend = IptablesBackend(Iptables(netns=topo.node1))
    elif mode == "nftables":
        backend = NftablesBackend(LibNft(netns=topo.node1))  # libnftables in this process
    else:
        backend = NftablesBackend(Nft(netns=topo.node1))  # the `nft` binary: the fallback
    proxier = Proxier(cfg, backend, conntrack=Conntrack(netns=topo.node1), check_rules_period=0.0)
    for s in services():
        proxier.on_service(None, s)
    for e in slices():
        proxier.on_endpoint_slice(None, e)
    return proxier


@pytest.fixture(params=["iptables", "nftables", "nftables-cli"])
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def proxier(topo: Topology, mode: str) -> Iterator[Proxier]:
    # A clean node for every test: no rules, no conntrack entries (both only in our namespace).
    sh("ip", "netns", "exec", topo.node1, "nft", "flush", "ruleset")
    sh("ip", "netns", "exec", topo.node1, "conntrack", "-F", check=False)
    p = make_proxier(topo, mode)
    assert p.sync()
    yield p


def servers(results: list[dict]) -> Counter[str]:
    assert all(r["ok"] for r in results), results
    return Counter(r["server"] for r in results)


def peer_ips(results: list[dict]) -> set[str]:
    return {r["peer"].split(":")[0] for r in results}


def test_clusterip_tcp_and_udp_multiport(topo: Topology, proxier: Proxier) -> None:
    assert set(servers(topo.burst("pb", "tcp", "10.96.0.10", 80, 6))) <= {A, B, C}
    assert set(servers(topo.burst("pb", "udp", "10.96.0.10", 53, 6))) <= {A, B, C}
    assert topo.one("pb", "tcp", "10.96.0.10", 53)["ok"] is False  # port 53 is UDP only


def test_traffic_is_spread_over_ready_endpoints(topo: Topology, proxier: Proxier) -> None:
    counts = servers(topo.burst("pb", "tcp", "10.96.0.10", 80, 45))
    # Each of 3 gets about 15; fewer than 4 has probability ~1e-5.
    assert set(counts) == {A, B, C} and min(counts.values()) >= 4, counts


def test_nodeport_from_the_other_node_and_outside_is_masqueraded(topo: Topology, proxier: Proxier) -> None:
    from_node2 = topo.burst("n2", "tcp", NODE1_IP, 30080, 8)
    assert set(servers(from_node2)) <= {A, C} and NODE2_IP not in peer_ips(from_node2)
    from_client = topo.burst("cl", "tcp", NODE1_IP, 30080, 8)
    assert set(servers(from_client)) <= {A, C} and CLIENT_IP not in peer_ips(from_client)


def test_external_traffic_policy_local_keeps_the_source(topo: Topology, proxier: Proxier) -> None:
    results = topo.burst("cl", "tcp", NODE1_IP, 30081, 8)
    assert servers(results) == Counter({A: 8})
    assert peer_ips(results) == {CLIENT_IP}


def test_external_ip(topo: Topology, proxier: Proxier) -> None:
    assert servers(topo.burst("cl", "tcp", "192.0.2.40", 80, 3)) == Counter({C: 3})


def test_load_balancer_ip_with_source_ranges(topo: Topology, proxier: Proxier) -> None:
    allowed = topo.one("cl", "tcp", "203.0.113.10", 443, src=CLIENT_ALT_IP)
    assert allowed["ok"] and allowed["server"] == A
    denied = topo.one("cl", "tcp", "203.0.113.10", 443, src=CLIENT_IP)
    assert denied == {**denied, "ok": False, "error": "timeout"}  # dropped, not rejected
    assert topo.one("cl", "tcp", NODE1_IP, 30443)["ok"]  # the NodePort is not behind the ranges


def test_client_ip_affinity(topo: Topology, proxier: Proxier) -> None:
    counts = servers(topo.burst("pb", "tcp", "10.96.0.50", 80, 15))
    assert len(counts) == 1, counts


def test_internal_traffic_policy_local(topo: Topology, proxier: Proxier) -> None:
    assert servers(topo.burst("pb", "tcp", "10.96.0.60", 80, 10)) == Counter({A: 10})


def test_service_without_endpoints_rejects_at_once(topo: Topology, proxier: Proxier) -> None:
    tcp = topo.one("pb", "tcp", "10.96.0.70", 80)
    assert tcp["ok"] is False and tcp["error"] == "ECONNREFUSED" and tcp["ms"] < 500
    udp = topo.one("pb", "udp", "10.96.0.70", 53)
    assert udp["ok"] is False and udp["error"] == "ECONNREFUSED" and udp["ms"] < 500


def test_hairpin_pod_reaches_itself(topo: Topology, proxier: Proxier) -> None:
    result = topo.one("pa", "tcp", "10.96.0.81", 80)
    assert result["ok"] and result["server"] == A
    assert result["peer"].split(":")[0] != A  # masqueraded, or the reply would not come back


def test_pod_source_kept_and_outside_source_masqueraded(topo: Topology, proxier: Proxier) -> None:
    from_pod = topo.one("pb", "tcp", "10.96.0.82", 80)
    assert from_pod["ok"] and from_pod["server"] == C and peer_ips([from_pod]) == {B}
    from_outside = topo.one("cl", "tcp", "10.96.0.82", 80)
    assert from_outside["ok"] and peer_ips([from_outside]) != {CLIENT_IP}


def test_masquerade_all(topo: Topology, mode: str, proxier: Proxier) -> None:
    sh("ip", "netns", "exec", topo.node1, "nft", "flush", "ruleset")
    masq = make_proxier(topo, mode, masquerade_all=True)
    assert masq.sync()
    result = topo.one("pb", "tcp", "10.96.0.82", 80)
    assert result["ok"] and peer_ips([result]) != {B}


def test_udp_conntrack_cleanup(topo: Topology, proxier: Proxier) -> None:
    session = topo.session("pb")
    try:
        session.ask("udp-open 10.96.0.90 53")
        assert session.ask("udp-ask")["server"] == A
        # The endpoint moves; the client keeps its socket (same 5-tuple, same conntrack entry).
        proxier.on_endpoint_slice(None, endpoint_slice("dns", [(B, "n1")], ports=(("", 5353, "UDP"),)))
        assert proxier.sync()
        assert session.ask("udp-ask")["server"] == B
        # 0 -> 1 endpoints: the socket that was refused recovers.
        session.ask("udp-open 10.96.0.70 53")
        assert session.ask("udp-ask")["error"] == "ECONNREFUSED"
        proxier.on_endpoint_slice(None, endpoint_slice("empty", [(A, "n1")], ports=(("udp", 5353, "UDP"),)))
        assert proxier.sync()
        assert session.ask("udp-ask")["server"] == A
    finally:
        session.close()


def test_live_connection_survives_reapply_and_restart(topo: Topology, mode: str, proxier: Proxier) -> None:
    session = topo.session("pb")
    try:
        first = session.ask("tcp-open 10.96.0.10 80")
        assert first["ok"]
        proxier.force_full_sync()
        assert proxier.sync()  # a re-apply of the whole ruleset
        assert session.ask("tcp-ask")["server"] == first["server"]
        restarted = make_proxier(topo, mode)  # a new process: no memory, rules still in the kernel
        assert restarted.sync()
        again = session.ask("tcp-ask")
        assert again["ok"] and again["server"] == first["server"] and again["peer"] == first["peer"]
    finally:
        session.close()


def test_rules_removed_by_someone_else_are_restored(topo: Topology, mode: str, proxier: Proxier) -> None:
    if mode == "iptables":
        sh("ip", "netns", "exec", topo.node1, "iptables", "-t", "nat", "-F", "PREROUTING")
        sh("ip", "netns", "exec", topo.node1, "iptables", "-t", "nat", "-X", "NP-PROXY-CANARY")
    else:
        sh("ip", "netns", "exec", topo.node1, "nft", "delete", "table", "ip", "netplane")
    assert not topo.one("pb", "tcp", "10.96.0.82", 80)["ok"]
    assert proxier.sync()
    assert proxier.metrics.full_sync_duration.count() == 2
    assert topo.one("pb", "tcp", "10.96.0.82", 80)["ok"]


def test_partial_sync_applies_an_endpoint_change(topo: Topology, proxier: Proxier) -> None:
    proxier.on_endpoint_slice(None, endpoint_slice("remote", [(A, "n1")], ports=(("", 8080, "TCP"),)))
    assert proxier.sync()
    assert proxier.metrics.partial_sync_duration.count() == 1
    assert servers(topo.burst("pb", "tcp", "10.96.0.82", 80, 3)) == Counter({A: 3})
    proxier.on_service(service("remote", "10.96.0.82"), None)
    assert proxier.sync()
    assert topo.one("pb", "tcp", "10.96.0.82", 80)["ok"] is False


def test_sysctl_helper_in_netns(topo: Topology) -> None:
    from netplane.kernel.sysctl import Sysctl

    s = Sysctl(netns=topo.node1)
    s.write("net.ipv4.conf.all.route_localnet", "1")
    assert s.read("net.ipv4.conf.all.route_localnet") == "1"
    s.write("net.ipv4.conf.all.route_localnet", "0")
    assert subprocess.run(["ip", "netns", "exec", topo.node1, "sysctl", "-n", "net.ipv4.ip_forward"],
                          capture_output=True, text=True).stdout.strip() == "1"
