"""IPVS mode with real packets. Runs INSIDE the test VM (tests/integration/test_ipvs_vm.py boots it and
runs this module there); on a kernel without IPVS every test skips.

The topology and most tests are the iptables/nftables modes' own (tests/integration/proxy): the
shared tests are imported below and run here against an IPVS proxier on node1. Tests whose code
is mode-specific (restart, rules removed, masquerade-all) have IPVS versions here, plus what only
IPVS mode has: the diff keeping the kernel untouched on restart, draining, stale state removal.
"""

from __future__ import annotations

import os
import subprocess
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from netplane.kernel.conntrack import Conntrack
from netplane.kernel.ipset import Ipset
from netplane.kernel.iptables import Iptables
from netplane.kernel.ipvs import (
    IpvsNode,
    IpvsOp,
    RealServer,
    ServiceDevice,
    VirtualServer,
    VirtualServerKey,
)
from netplane.proxy import ipvs
from netplane.proxy.fixtures import endpoint_slice, service
from netplane.proxy.ipvs_backend import IpvsBackend
from netplane.proxy.proxier import Proxier
from netplane.proxy.state import ProxyConfig
from tests.integration.proxy import test_proxy_netns as shared
from tests.integration.proxy.topology import CLUSTER_CIDR, NODE1_IP, Topology, sh

HAS_IPVS = Path("/proc/net/ip_vs").exists()
pytestmark = [
    pytest.mark.root,
    pytest.mark.prerequisite_missing(os.geteuid() != 0, reason="needs root for network namespaces"),
    pytest.mark.prerequisite_missing(not HAS_IPVS,
                                     reason="this kernel has no IPVS: run through tests/integration/test_ipvs_vm.py"),
]

A, B, C = shared.A, shared.B, shared.C


@pytest.fixture(scope="module")
def topo() -> Iterator[Topology]:
    t = Topology()
    try:
        t.create()
        t.start_servers()
        yield t
    finally:
        t.destroy()


def node_sh(topo: Topology, *argv: str, check: bool = True) -> str:
    return sh("ip", "netns", "exec", topo.node1, *argv, check=check)


def clean_node(topo: Topology) -> None:
    """No rules, sets, virtual servers, service device or conntrack entries in node1 (one process: each
    one costs about a second under TCG)."""
    node_sh(topo, "sh", "-c", f"nft flush ruleset; ipvsadm -C; ipset destroy; ip link del {ipvs.DEVICE}; "
                              "conntrack -F; true")


def make_backend(topo: Topology, scheduler: str = "rr") -> IpvsBackend:
    return IpvsBackend(IpvsNode(ipvs.DEVICE, topo.node1), Ipset(topo.node1), Iptables(netns=topo.node1),
                       scheduler=scheduler)


def make_proxier(topo: Topology, **config: Any) -> Proxier:
    cfg = ProxyConfig(node_name="n1", cluster_cidr=CLUSTER_CIDR, node_ips=(NODE1_IP,), **config)
    # The rules check costs a process per sync: only the test that removes rules asks for it.
    proxier = Proxier(cfg, make_backend(topo), conntrack=Conntrack(netns=topo.node1), check_rules_period=3600.0)
    feed_baseline(proxier)
    return proxier


def feed_baseline(proxier: Proxier) -> None:
    """The shared services and slices; slices a test added for other services are deleted."""
    for s in shared.services():
        proxier.on_service(None, s)
    baseline = shared.slices()
    for e in baseline:
        proxier.on_endpoint_slice(None, e)
    with_slices = {e["metadata"]["labels"]["kubernetes.io/service-name"] for e in baseline}
    for s in shared.services():
        if s["metadata"]["name"] not in with_slices:
            proxier.on_endpoint_slice(endpoint_slice(s["metadata"]["name"], []), None)


# Tests that leave the kernel different from what the module's proxier remembers: a full sync follows them.
REPROGRAMS = {"test_masquerade_all", "test_state_removed_by_someone_else_is_restored",
              "test_live_connection_survives_reapply_and_restart"}


@pytest.fixture(scope="module")
def node1(topo: Topology) -> Proxier:
    """One proxier for the module: a full sync costs ~10 s under TCG, a partial one well under 1 s."""
    clean_node(topo)
    p = make_proxier(topo)
    assert p.sync()
    return p


@pytest.fixture
def proxier(node1: Proxier, request: pytest.FixtureRequest) -> Iterator[Proxier]:
    yield node1
    # Back to the baseline for the next test: the changed services only, or everything.
    feed_baseline(node1)
    if request.node.name in REPROGRAMS:
        node1.force_full_sync()
    assert node1.sync()


# -- the iptables/nftables modes' tests, unchanged, against IPVS --------------------------------
test_clusterip_tcp_and_udp_multiport = shared.test_clusterip_tcp_and_udp_multiport
test_traffic_is_spread_over_ready_endpoints = shared.test_traffic_is_spread_over_ready_endpoints
test_nodeport_from_the_other_node_and_outside_is_masqueraded = \
    shared.test_nodeport_from_the_other_node_and_outside_is_masqueraded
test_external_traffic_policy_local_keeps_the_source = shared.test_external_traffic_policy_local_keeps_the_source
test_external_ip = shared.test_external_ip
test_load_balancer_ip_with_source_ranges = shared.test_load_balancer_ip_with_source_ranges
test_client_ip_affinity = shared.test_client_ip_affinity
test_internal_traffic_policy_local = shared.test_internal_traffic_policy_local
test_service_without_endpoints_rejects_at_once = shared.test_service_without_endpoints_rejects_at_once
test_hairpin_pod_reaches_itself = shared.test_hairpin_pod_reaches_itself
test_pod_source_kept_and_outside_source_masqueraded = shared.test_pod_source_kept_and_outside_source_masqueraded
test_udp_conntrack_cleanup = shared.test_udp_conntrack_cleanup


# -- IPVS versions of the mode-specific tests ----------------------------------------------------
def test_partial_sync_applies_an_endpoint_change(topo: Topology, proxier: Proxier) -> None:
    # The shared test's, counting syncs from here (this module's proxier has synced before).
    partials = proxier.metrics.partial_sync_duration.count()
    proxier.on_endpoint_slice(None, endpoint_slice("remote", [(A, "n1")], ports=(("", 8080, "TCP"),)))
    assert proxier.sync()
    assert proxier.metrics.partial_sync_duration.count() == partials + 1
    assert shared.servers(topo.burst("pb", "tcp", "10.96.0.82", 80, 3)) == Counter({A: 3})
    proxier.on_service(service("remote", "10.96.0.82"), None)
    assert proxier.sync()
    assert topo.one("pb", "tcp", "10.96.0.82", 80)["ok"] is False


def test_node_itself_reaches_cluster_ips_and_its_node_ports(topo: Topology, proxier: Proxier) -> None:
    # Locally sent packets meet IPVS in LOCAL_OUT, not LOCAL_IN: a path the pod tests do not take.
    result = topo.one("n1", "tcp", "10.96.0.82", 80)
    assert result["ok"] and result["server"] == C
    assert shared.peer_ips([result]) == {NODE1_IP}  # masqueraded to the node's address towards C
    assert set(shared.servers(topo.burst("n1", "tcp", NODE1_IP, 30080, 4))) <= {A, C}


def test_masquerade_all(topo: Topology, proxier: Proxier) -> None:
    masq = make_proxier(topo, masquerade_all=True)
    assert masq.sync()
    result = topo.one("pb", "tcp", "10.96.0.82", 80)
    assert result["ok"] and shared.peer_ips([result]) != {B}


def test_live_connection_survives_reapply_and_restart(topo: Topology, proxier: Proxier) -> None:
    session = topo.session("pb")
    try:
        first = session.ask("tcp-open 10.96.0.10 80")
        assert first["ok"]
        before = node_sh(topo, "ipvsadm", "-Sn")
        proxier.force_full_sync()
        assert proxier.sync()
        assert session.ask("tcp-ask")["server"] == first["server"]
        restarted = make_proxier(topo)  # a new process: no memory, state still in the kernel
        assert restarted.sync()
        backend = restarted.backend
        assert isinstance(backend, IpvsBackend) and backend.last_plan is not None
        assert backend.last_plan.ipvs_ops == [] and backend.last_plan.bind == []  # the diff found nothing to do
        assert node_sh(topo, "ipvsadm", "-Sn") == before
        again = session.ask("tcp-ask")
        assert again["ok"] and again["server"] == first["server"] and again["peer"] == first["peer"]
    finally:
        session.close()


def test_state_removed_by_someone_else_is_restored(topo: Topology, proxier: Proxier) -> None:
    node_sh(topo, "sh", "-c", f"ipvsadm -C; iptables -t nat -X {ipvs.CANARY}")
    assert not topo.one("pb", "tcp", "10.96.0.82", 80)["ok"]
    fulls = proxier.metrics.full_sync_duration.count()
    proxier.check_rules_period = 0.0
    try:
        assert proxier.sync()
    finally:
        proxier.check_rules_period = 3600.0
    assert proxier.metrics.full_sync_duration.count() == fulls + 1
    assert topo.one("pb", "tcp", "10.96.0.82", 80)["ok"]


def test_stale_virtual_servers_and_addresses_are_removed(topo: Topology, proxier: Proxier) -> None:
    node_sh(topo, "sh", "-c", f"ipvsadm -A -t 10.96.5.5:80 -s rr; ip addr add 10.96.5.5/32 dev {ipvs.DEVICE}; "
                              f"ipset add {ipvs.CLUSTER_IP} 10.96.5.5,tcp:80")
    proxier.force_full_sync()
    assert proxier.sync()
    state = node_sh(topo, "sh", "-c", f"ipvsadm -Ln; ip addr show dev {ipvs.DEVICE}; ipset list {ipvs.CLUSTER_IP}")
    assert "10.96.5.5" not in state and "10.96.0.10" in state
    # The persistence of ClientIP affinity, as ipvsadm shows it.
    assert "10.96.0.50:80 rr persistent 300" in state.replace("TCP  ", "")


def test_removed_endpoint_is_drained_while_connected(topo: Topology, proxier: Proxier) -> None:
    key = VirtualServerKey("TCP", "10.96.0.82", 80)
    session = topo.session("pb")
    try:
        assert session.ask("tcp-open 10.96.0.82 80")["server"] == C
        # C is replaced by A: C keeps its live connection at weight 0, new connections go to A.
        proxier.on_endpoint_slice(None, endpoint_slice("remote", [(A, "n1")], ports=(("", 8080, "TCP"),)))
        assert proxier.sync()
        reals = IpvsNode(ipvs.DEVICE, topo.node1).observe([key])[key][1]
        assert {t: r.weight for t, r in reals.items()} == {(A, 8080): 1, (C, 8080): 0}
        assert session.ask("tcp-ask")["server"] == C
        assert shared.servers(topo.burst("pb", "tcp", "10.96.0.82", 80, 3)) == Counter({A: 3})
    finally:
        session.close()
    # C is deleted once IPVS counts no connection to it (TIME_WAIT included: up to 2 minutes, too long
    # to wait for here; the diff's rule is unit-tested). Until then it stays, drained.
    reals = IpvsNode(ipvs.DEVICE, topo.node1).observe([key])[key][1]
    assert reals[(C, 8080)].weight == 0 and reals[(C, 8080)].connections > 0


# -- the kernel layer on its own ----------------------------------------------------------------
def test_kernel_layer_round_trip() -> None:
    ns = f"np-vmk-{os.getpid()}"
    sh("ip", "netns", "add", ns)
    try:
        sh("ip", "-n", ns, "link", "set", "lo", "up")  # IPVS accepts only real servers it can route to
        node = IpvsNode("np-ipvs0", ns)
        assert node.ensure_device() == "dummy"  # Debian's kernel has dummy (this machine's has not)
        key = VirtualServerKey("UDP", "10.96.0.10", 53)
        vs = VirtualServer(key, "wlc", 60)
        ops = [IpvsOp("add-service", vs), IpvsOp("add-dest", vs, RealServer("127.0.0.2", 5353))]
        assert node.apply(ops) == 2 and node.apply(ops) == 2  # idempotent
        observed = node.observe(None)
        assert set(observed) == {key} and observed[key][0] == vs
        assert [(r.address, r.port, r.weight, r.masquerade) for r in observed[key][1].values()] == [
            ("127.0.0.2", 5353, 1, True)]
        node.ensure_sysctls({"net.ipv4.vs.conntrack": "1"})
        assert sh("ip", "netns", "exec", ns, "sysctl", "-n", "net.ipv4.vs.conntrack").strip() == "1"
        assert Path("/proc/sys/net/ipv4/vs/conntrack").read_text().strip() == "0"  # only in that namespace
        assert node.observe([VirtualServerKey("TCP", "10.96.0.10", 53)]) == {}
        node.bind(["10.96.0.10", "10.96.0.11"])
        node.unbind(["10.96.0.11", "10.96.0.12"])
        assert node.bound_addresses() == {"10.96.0.10"}
        node.apply([IpvsOp("del-service", vs), IpvsOp("del-service", vs)])
        assert node.observe(None) == {}
        with ServiceDevice("np-ipvs0", ns) as dev:
            dev.delete()
            assert not dev.exists()
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)


# -- ipset over batched netlink, on this kernel -------------------------------------------------
def check_ipset_netlink(ns: str) -> None:
    """The ipset path of IPVS mode on a real kernel (also run on the host's kernel by
    tests/integration/test_ipvs_vm.py): members added and deleted many per message, idempotently,
    read back by `ipset save`; the member the kernel refuses is named; names listed and sets destroyed
    over netlink."""
    from netplane.kernel.ipset import IpsetError, MemberRun, parse_save

    ipset = Ipset(ns)
    ipset.restore("".join(ipvs.create_line(n) + "\n" for n in sorted(ipvs.SET_TYPES)))
    loop = [f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255},tcp:8080,10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}"
            for i in range(20000)]
    text = "".join(f"add {ipvs.LOOP_BACK} {m}\n" for m in loop)
    text += "add NPV-CLUSTER-IP 10.96.0.10,udp:53\nadd NPV-NODE-PORT-SCTP 30999\n"
    text += "add NPV-LB-SOURCE-CIDR 203.0.113.10,tcp:443,198.51.100.0/24\nadd NPV-IPVS-IPS 10.96.0.10\n"
    ipset.restore(text)
    ipset.restore(text)  # present members: still fine
    saved = parse_save(ipset.save(), ipvs.PREFIX)
    assert saved[ipvs.LOOP_BACK].members == set(loop)
    assert saved["NPV-CLUSTER-IP"].members == {"10.96.0.10,udp:53"}
    assert saved["NPV-NODE-PORT-SCTP"].members == {"30999"}
    assert saved["NPV-LB-SOURCE-CIDR"].members == {"203.0.113.10,tcp:443,198.51.100.0/24"}
    ipset.restore("".join(f"del {ipvs.LOOP_BACK} {m}\n" for m in loop[:15000]) + f"del {ipvs.LOOP_BACK} 1.2.3.4,"
                  "tcp:1,1.2.3.4\n")  # an absent member: fine
    assert parse_save(ipset.save(), ipvs.PREFIX)[ipvs.LOOP_BACK].members == set(loop[15000:])
    # A bitmap:port set refuses nothing in 0-65535; a hash:ip,port set refuses a member without a port.
    try:
        ipset.update([MemberRun("add", "NPV-CLUSTER-IP", ["10.96.0.11,tcp:80", "10.96.0.12", "10.96.0.13,tcp:80"])])
        raise AssertionError("the kernel accepted a member of the wrong shape")
    except IpsetError as e:
        assert "member '10.96.0.12'" in str(e), e
    names = ipset.names(ipvs.PREFIX)
    assert sorted(names) == sorted(ipvs.SET_TYPES)
    ipset.destroy([*names, "NPV-NEVER-THERE"])
    assert ipset.names(ipvs.PREFIX) == []


def test_ipset_netlink_on_this_kernel() -> None:
    ns = f"np-vmset-{os.getpid()}"
    sh("ip", "netns", "add", ns)
    try:
        check_ipset_netlink(ns)
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)


# -- switching modes: nothing of the previous mode stays (netplane/proxy/cleanup.py) ---------------
def leftovers(topo: Topology) -> str:
    return node_sh(topo, "sh", "-c", f"iptables-save; nft list tables; ipset list -n; ipvsadm -Sn; "
                                     f"ip -br link show {ipvs.DEVICE} 2>/dev/null; true")


def start_mode(topo: Topology, mode: str) -> Proxier:
    """A proxier in `mode` on node1 with the start-up cleanup of the daemon, after its first sync."""
    from netplane.kernel.nftables import Nft
    from netplane.proxy.cleanup import StartupCleanup
    from netplane.proxy.proxier import Backend, IptablesBackend, NftablesBackend

    cfg = ProxyConfig(node_name="n1", cluster_cidr=CLUSTER_CIDR, node_ips=(NODE1_IP,))
    backend: Backend
    if mode == "ipvs":
        backend = make_backend(topo)
    elif mode == "iptables":
        backend = IptablesBackend(Iptables(netns=topo.node1))
    else:
        backend = NftablesBackend(Nft(topo.node1))
    proxier = Proxier(cfg, backend, check_rules_period=3600.0)
    cleanup = StartupCleanup(mode, topo.node1)
    proxier.listeners.append(cleanup)
    feed_baseline(proxier)
    assert proxier.sync()
    assert cleanup.done
    return proxier


def test_switching_between_ipvs_and_the_other_modes_leaves_nothing_behind(topo: Topology, node1: Proxier) -> None:
    from netplane.proxy.cleanup import cleanup

    clean_node(topo)
    # Someone else's virtual server, set and rule: never touched by a cleanup.
    node_sh(topo, "sh", "-c", "ipset create user-keep hash:ip; "
                              "iptables -A INPUT -m set --match-set user-keep src -j ACCEPT")
    try:
        start_mode(topo, "ipvs")
        for mode in ("iptables", "ipvs", "nftables", "ipvs"):
            # IPVS mode's own syncs delete virtual servers it does not know, as kube-proxy's do (without
            # --ipvs-exclude-cidrs): the foreign one comes back before each switch away from IPVS.
            node_sh(topo, "sh", "-c", "ipvsadm -A -t 203.0.113.99:80 -s rr 2>/dev/null; true")
            start_mode(topo, mode)
            state = leftovers(topo)
            assert ("NPV-" in state) == (mode == "ipvs") and (ipvs.DEVICE in state) == (mode == "ipvs"), state
            assert ("NP-SERVICES" in state) == (mode == "iptables"), state
            assert ("table ip netplane\n" in state) == (mode == "nftables"), state
            assert "-A INPUT -m set --match-set user-keep src -j ACCEPT" in state and "user-keep" in state.split()
            if mode != "ipvs":
                assert "203.0.113.99:80" in state and "10.96.0.82:80" not in state, state
            # The new mode alone serves: the remote service reaches its endpoint, an unknown port is refused.
            assert topo.one("pb", "tcp", "10.96.0.82", 80)["server"] == C, mode
        report = cleanup(topo.node1)
        assert report.ok, report.errors
        state = leftovers(topo)
        assert "NPV-" not in state and ipvs.DEVICE not in state and "10.96.0.82" not in state, state
        assert "user-keep" in state.split() and "-A INPUT -m set --match-set user-keep src -j ACCEPT" in state
        again = cleanup(topo.node1)
        assert again.ok and again.removed == []
    finally:
        # Back to the module's IPVS baseline for whatever runs next.
        clean_node(topo)
        node1.force_full_sync()
        assert node1.sync()
