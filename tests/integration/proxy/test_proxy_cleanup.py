"""Switching a node's proxy mode leaves nothing of the previous mode behind (netplane/proxy/cleanup.py), on
this machine's kernel: the daemon switched iptables -> nftables -> iptables with real packets, the IPVS mode's
sets, chains and service device (everything but virtual servers: this kernel has no IPVS; the VM tests in
tests/vm/test_ipvs_in_vm.py cover those), and `netplane proxy --cleanup`. Other software's rules, sets and
tables in the namespace are left alone throughout."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

from netplane.cli.proxy_cmd import proxy
from netplane.kernel.ipset import Ipset
from netplane.kernel.iptables import Iptables
from netplane.kernel.ipvs import IpvsNode
from netplane.proxy import ipvs
from netplane.proxy.cleanup import cleanup
from netplane.proxy.fixtures import endpoint_slice, service
from netplane.proxy.ipvs_backend import IpvsBackend
from netplane.proxy.proxier import IptablesBackend, Proxier
from netplane.proxy.state import ProxyConfig
from tests.integration.proxy.test_proxy_daemon import Daemon, put_slice, request
from tests.integration.proxy.topology import CLUSTER_CIDR, NODE1_IP, Topology, sh, wait_for
from tests.support.server import ServerProcess
from tests.unit.proxy.ipvs_fakes import FakeIpvs

pytestmark = [pytest.mark.root, pytest.mark.prerequisite_missing(os.geteuid() != 0, reason="needs root")]

A, B = "10.244.1.2", "10.244.1.3"



@pytest.fixture
def node(topo: Topology) -> str:
    """node1, emptied of rules, sets and the service device, with someone else's state added."""
    sh("ip", "netns", "exec", topo.node1, "sh", "-c",
       f"nft flush ruleset; ip link del {ipvs.DEVICE} 2>/dev/null; ipset destroy 2>/dev/null; "
       "ipset create user-keep hash:ip; "
       "iptables -N USER-KEEP; iptables -A INPUT -m set --match-set user-keep src -j USER-KEEP; "
       "iptables -t nat -N USER-NAT; iptables -t nat -A PREROUTING -p tcp --dport 9 -j USER-NAT; "
       "nft add table inet np-user-keep; nft add chain inet np-user-keep c; "
       "nft add table inet netplane_cni; true")
    return topo.node1


def state(ns: str) -> str:
    """Everything a mode could leave: iptables listing, nft tables, ipset names, the service device."""
    return sh("ip", "netns", "exec", ns, "sh", "-c",
              f"iptables-nft-save; nft list tables; ipset list -n; ip -br link show {ipvs.DEVICE} 2>/dev/null; true")


def assert_others_kept(ns: str) -> None:
    s = state(ns)
    assert "-A INPUT -m set --match-set user-keep src -j USER-KEEP" in s
    assert "-A PREROUTING -p tcp -m tcp --dport 9 -j USER-NAT" in s
    assert "table inet np-user-keep" in s and "table inet netplane_cni" in s and "user-keep" in s.split()


def assert_no_iptables_mode(ns: str) -> None:
    s = state(ns)
    assert not [ln for ln in s.splitlines() if "NP-" in ln], s


def assert_no_nftables_mode(ns: str) -> None:
    assert "table ip netplane\n" not in state(ns) + "\n"


def assert_no_ipvs_mode(ns: str) -> None:
    s = state(ns)
    assert "NPV-" not in s and ipvs.DEVICE not in s, s



def test_daemon_switching_modes_removes_the_previous_modes_rules(
        topo: Topology, node: str, state_server: ServerProcess, tmp_path: Path) -> None:
    status, text = request(f"{state_server.url}/api/v1/namespaces/default/services", "POST",
                           service("dmn", "10.96.0.99"))
    assert status == 201, text
    put_slice(state_server.url, [(A, "n1")])
    endpoint = A
    for previous, mode in (("iptables", "nftables"), ("nftables", "iptables")):
        endpoint = switch(topo, node, state_server, tmp_path, previous, mode, endpoint)
        assert_others_kept(node)


def switch(topo: Topology, node: str, server: ServerProcess, tmp_path: Path, previous: str, mode: str,
           endpoint: str) -> str:
    """Run the daemon in `previous` mode, stop it, start it in `mode`; returns the endpoint now in use."""

    def reaches(ip: str) -> bool:
        return topo.one("pb", "tcp", "10.96.0.99", 80).get("server") == ip

    first = Daemon(server.url, node, previous, tmp_path)
    try:
        assert wait_for(lambda: reaches(endpoint), timeout=20), first.log.read_text()
    finally:
        first.stop()  # its rules stay in the kernel, as after any daemon stop
    assert "NP-SERVICES" in state(node) if previous == "iptables" else "table ip netplane" in state(node)
    daemon = Daemon(server.url, node, mode, tmp_path)
    try:
        gone = assert_no_iptables_mode if previous == "iptables" else assert_no_nftables_mode
        assert wait_for(lambda: _passes(gone, node), timeout=20), daemon.log.read_text()
        assert wait_for(lambda: "removed another proxy mode's state" in daemon.log.read_text(), timeout=10)
        # Only the new mode answers now: an endpoint change is followed (a stale DNAT would still pick the old).
        endpoint = B if endpoint == A else A
        put_slice(server.url, [(endpoint, "n1")])
        assert wait_for(lambda: reaches(endpoint), timeout=10), daemon.log.read_text()
        assert all(reaches(endpoint) for _ in range(5))
        assert ("NP-SERVICES" in state(node)) == (mode == "iptables")
        assert request(f"http://127.0.0.1:{daemon.healthz}/healthz")[0] == 200
    finally:
        daemon.stop()
    return endpoint


def _passes(check: Callable[[str], None], ns: str) -> bool:
    try:
        check(ns)
    except AssertionError:
        return False
    return True


def program_ipvs_mode_without_ipvs(ns: str) -> None:
    """The IPVS mode's real sets, chains and device on a kernel without IPVS (its virtual servers faked)."""
    fake = FakeIpvs()
    real = IpvsNode(ipvs.DEVICE, ns)
    fake.ensure_device = real.ensure_device  # type: ignore[method-assign]
    fake.bind = real.bind  # type: ignore[method-assign]
    fake.local_addresses = real.local_addresses  # type: ignore[method-assign]
    cfg = ProxyConfig(node_name="n1", cluster_cidr=CLUSTER_CIDR, node_ips=(NODE1_IP,))
    p = Proxier(cfg, IpvsBackend(fake, Ipset(ns), Iptables(netns=ns)), check_rules_period=3600.0)
    p.on_service(None, service("web", "10.96.0.10", type="NodePort", ports=(("", 80, "TCP", 30080),)))
    p.on_endpoint_slice(None, endpoint_slice("web", [(A, "n1")]))
    assert p.sync()
    s = state(ns)
    assert "NPV-SERVICES" in s and "NPV-LOOP-BACK" in s and ipvs.DEVICE in s


def program_iptables_mode(ns: str) -> None:
    cfg = ProxyConfig(node_name="n1", cluster_cidr=CLUSTER_CIDR, node_ips=(NODE1_IP,))
    p = Proxier(cfg, IptablesBackend(Iptables(netns=ns)), check_rules_period=3600.0)
    p.on_service(None, service("web", "10.96.0.10"))
    p.on_endpoint_slice(None, endpoint_slice("web", [(A, "n1")]))
    assert p.sync()


def program_nftables_mode(ns: str) -> None:
    from netplane.kernel.nftables import Nft
    from netplane.proxy.proxier import NftablesBackend

    cfg = ProxyConfig(node_name="n1", cluster_cidr=CLUSTER_CIDR, node_ips=(NODE1_IP,))
    p = Proxier(cfg, NftablesBackend(Nft(ns)), check_rules_period=3600.0)
    p.on_service(None, service("web", "10.96.0.10"))
    p.on_endpoint_slice(None, endpoint_slice("web", [(A, "n1")]))
    assert p.sync()


def test_ipvs_modes_sets_chains_and_device_go_when_another_mode_starts(node: str) -> None:
    program_ipvs_mode_without_ipvs(node)
    program_nftables_mode(node)
    report = cleanup(node, keep_mode="nftables")
    assert report.ok, report.errors
    assert_no_ipvs_mode(node)
    assert "table ip netplane" in state(node)  # the mode that starts keeps its own
    assert {"ipset NPV-LOOP-BACK", f"service device {ipvs.DEVICE}", "iptables nat chain NPV-SERVICES"} <= set(
        report.removed)
    assert_others_kept(node)
    again = cleanup(node, keep_mode="nftables")
    assert again.ok and again.removed == []


def test_ipvs_mode_keeps_its_own_state_and_removes_the_others(node: str) -> None:
    program_iptables_mode(node)
    program_ipvs_mode_without_ipvs(node)
    report = cleanup(node, keep_mode="ipvs")
    assert report.ok, report.errors
    assert_no_iptables_mode(node)
    s = state(node)
    assert "NPV-SERVICES" in s and "NPV-LOOP-BACK" in s and ipvs.DEVICE in s
    assert_others_kept(node)


def test_cleanup_flag_removes_every_mode_and_is_idempotent(node: str) -> None:
    program_iptables_mode(node)
    program_nftables_mode(node)
    program_ipvs_mode_without_ipvs(node)
    runner = CliRunner()
    result = runner.invoke(proxy, ["--cleanup", "--netns", node], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert "removed nftables table ip netplane" in lines and "removed ipset NPV-CLUSTER-IP" in lines
    assert "removed iptables nat chain NP-SERVICES" in lines
    assert_no_iptables_mode(node)
    assert_no_nftables_mode(node)
    assert_no_ipvs_mode(node)
    assert_others_kept(node)
    again = runner.invoke(proxy, ["--cleanup", "--netns", node], catch_exceptions=False)
    assert again.exit_code == 0 and again.output == ""


def test_cleanup_in_an_empty_namespace_touches_nothing(tmp_path: Path) -> None:
    ns = f"np-clean-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        report = cleanup(ns)
        assert report.ok and report.removed == []
        # Looking did not create tables or sets: the namespace is as empty as before.
        assert sh("ip", "netns", "exec", ns, "sh", "-c", "nft list ruleset; ipset list -n").strip() == ""
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)
