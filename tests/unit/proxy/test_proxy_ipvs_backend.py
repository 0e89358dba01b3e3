"""The IPVS backend through the proxier, against in-memory kernels: what reaches each kernel, in which
order, and that a restart or an unchanged resync changes nothing."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import click

from netplane.cli.proxy_cmd import proxy
from netplane.client.kubeconfig import ClusterConfig
from netplane.kernel.ipvs import Observed, VirtualServerKey
from netplane.proxy import ipvs
from netplane.proxy.daemon import DaemonOptions, build_backend
from netplane.proxy.fixtures import endpoint_slice, service
from netplane.proxy.ipvs_backend import SYSCTLS, IpvsBackend
from netplane.proxy.proxier import Proxier
from tests.unit.proxy.ipvs_fakes import FakeIpset, FakeIptables, FakeIpvs
from tests.unit.proxy.proxy_scenarios import CONFIG, NODE_IP, objects

WEB_TCP = VirtualServerKey("TCP", "10.96.0.10", 80)


class Node:
    """One node's kernels, shared by successive proxiers (a restart keeps the kernel)."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.ipvs = FakeIpvs(calls=self.calls)
        self.ipset = FakeIpset(calls=self.calls)
        self.iptables = FakeIptables(calls=self.calls)

    def proxier(self, scheduler: str = "rr") -> Proxier:
        backend = IpvsBackend(self.ipvs, self.ipset, self.iptables, scheduler=scheduler)
        p = Proxier(CONFIG, backend, check_rules_period=0.0)
        services, slices = objects()
        for s in services:
            p.on_service(None, s)
        for e in slices:
            p.on_endpoint_slice(None, e)
        return p


def backend_of(p: Proxier) -> IpvsBackend:
    assert isinstance(p.backend, IpvsBackend)
    return p.backend


def reals(node: Node, key: VirtualServerKey) -> dict[str, int]:
    return {f"{a}:{port}": rs.weight for (a, port), rs in node.ipvs.dests[key].items()}


def test_first_sync_programs_everything_in_order() -> None:
    node = Node()
    p = node.proxier()
    assert p.sync()
    assert node.calls == ["ipset", "iptables", "ipvs:add-dest,add-service", "bind"]
    assert node.ipvs.has_device and node.ipvs.sysctls == SYSCTLS
    assert reals(node, WEB_TCP) == {"10.244.1.2:8080": 1, "10.244.1.3:8080": 1, "10.244.2.2:8080": 1}
    assert VirtualServerKey("TCP", NODE_IP, 30080) in node.ipvs.services  # the node's address from the kernel
    assert "10.96.0.10" in node.ipvs.bound and NODE_IP not in node.ipvs.bound
    assert set(node.ipset.sets) == set(ipvs.SET_TYPES)
    assert "10.96.0.10,tcp:80" in node.ipset.members(ipvs.CLUSTER_IP)
    assert {("nat", ipvs.CANARY), ("filter", ipvs.CANARY)} <= node.iptables.chains
    assert "-I PREROUTING 1" in node.iptables.texts[0]
    counts = backend_of(p).last_plan.rule_counts  # type: ignore[union-attr]
    assert counts["virtual_servers"] == len(node.ipvs.services)
    assert counts["addresses"] == len(node.ipvs.bound)


def test_restart_and_full_resync_change_nothing_in_ipvs() -> None:
    node = Node()
    assert node.proxier().sync()
    applied = len(node.ipvs.applied)
    restarted = node.proxier()  # no memory; the kernel keeps what the first one programmed
    assert restarted.sync()
    assert len(node.ipvs.applied) == applied
    plan = backend_of(restarted).last_plan
    assert plan is not None and plan.full and plan.bind == [] and plan.unbind == []
    assert not any(line.startswith(("add ", "del ")) for line in plan.ipset_text.splitlines())
    # The jumps are found in the saved tables: none is inserted twice.
    assert "\n-I " in node.iptables.texts[0] and "\n-I " not in node.iptables.texts[-1]
    assert len(node.iptables.jumps) == len(ipvs.JUMPS)


def test_partial_sync_reads_and_changes_only_the_changed_service() -> None:
    node = Node()
    p = node.proxier()
    assert p.sync()
    node.calls.clear()
    node.ipvs.reads.clear()
    p.on_endpoint_slice(None, endpoint_slice("ext", [("10.244.2.41", "n2")]))
    assert p.sync()
    assert p.metrics.partial_sync_duration.count() == 1
    assert node.ipvs.reads == [[VirtualServerKey("TCP", "10.96.0.40", 80), VirtualServerKey("TCP", "192.0.2.40", 80)]]
    assert node.calls == ["ipset", "ipvs:add-dest", "ipvs:del-dest"]  # no iptables, no address change
    assert reals(node, VirtualServerKey("TCP", "192.0.2.40", 80)) == {"10.244.2.41:80": 1}


def test_removed_tcp_endpoint_drains_until_idle() -> None:
    node = Node()
    p = node.proxier()
    assert p.sync()
    node.ipvs.set_connections(WEB_TCP, ("10.244.2.2", 8080), active=3)
    p.on_endpoint_slice(None, endpoint_slice("web", [("10.244.1.2", "n1"), ("10.244.1.3", "n1")],
                                             ports=(("http", 8080, "TCP"), ("dns", 5353, "UDP"))))
    assert p.sync()
    assert reals(node, WEB_TCP) == {"10.244.1.2:8080": 1, "10.244.1.3:8080": 1, "10.244.2.2:8080": 0}
    udp = VirtualServerKey("UDP", "10.96.0.10", 53)
    assert "10.244.2.2:5353" not in reals(node, udp)  # UDP: no drain
    node.ipvs.reads.clear()
    assert p.sync()  # nothing changed: only the draining virtual server is looked at
    assert node.ipvs.reads == [[WEB_TCP]] and "10.244.2.2:8080" in reals(node, WEB_TCP)
    node.ipvs.set_connections(WEB_TCP, ("10.244.2.2", 8080), active=0)
    assert p.sync()
    assert reals(node, WEB_TCP) == {"10.244.1.2:8080": 1, "10.244.1.3:8080": 1}
    node.ipvs.reads.clear()
    assert p.sync()
    assert node.ipvs.reads == []  # nothing left to watch


def test_deleted_service_loses_its_virtual_servers_addresses_and_members() -> None:
    node = Node()
    p = node.proxier()
    assert p.sync()
    p.on_service(service("ext", "10.96.0.40", external_ips=["192.0.2.40"]), None)
    assert p.sync()
    assert not {VirtualServerKey("TCP", "10.96.0.40", 80), VirtualServerKey("TCP", "192.0.2.40", 80)} & set(
        node.ipvs.services)
    assert not {"10.96.0.40", "192.0.2.40"} & node.ipvs.bound
    assert "192.0.2.40,tcp:80" not in node.ipset.members(ipvs.EXTERNAL_IP)
    assert "10.96.0.40" not in node.ipset.members(ipvs.IPVS_IPS)


def test_rules_removed_behind_our_back_force_a_full_resync() -> None:
    node = Node()
    p = node.proxier()
    assert p.sync()
    assert backend_of(p).rules_present()
    node.iptables.chains.discard(("nat", ipvs.CANARY))
    node.ipvs.services.clear()
    node.ipvs.dests.clear()
    assert not backend_of(p).rules_present()
    assert p.sync()
    assert p.metrics.full_sync_duration.count() == 2 and WEB_TCP in node.ipvs.services
    node.ipvs.has_device = False
    assert not backend_of(p).rules_present()


def test_a_failed_apply_is_retried_as_a_full_sync() -> None:
    node = Node()
    p = node.proxier()
    assert p.sync()

    def broken(keys: Collection[VirtualServerKey] | None = None) -> Observed:
        raise OSError("netlink went away")

    real_observe = node.ipvs.observe
    node.ipvs.observe = broken  # type: ignore[method-assign]
    p.on_endpoint_slice(None, endpoint_slice("ext", [("10.244.2.41", "n2")]))
    assert not p.sync()
    node.ipvs.observe = real_observe  # type: ignore[method-assign]
    assert p.sync()
    assert p.metrics.full_sync_duration.count() == 2
    assert reals(node, VirtualServerKey("TCP", "192.0.2.40", 80)) == {"10.244.2.41:80": 1}


def test_scheduler_reaches_every_virtual_server() -> None:
    node = Node()
    assert node.proxier(scheduler="sh").sync()
    assert {vs.scheduler for vs in node.ipvs.services.values()} == {"sh"}
    assert node.ipvs.services[VirtualServerKey("TCP", "10.96.0.50", 80)].persistence == 600


def test_daemon_and_cli_know_ipvs_mode() -> None:
    opts: Any = DaemonOptions(cluster=ClusterConfig(server="http://127.0.0.1:1"), node_name="n1", mode="ipvs",
                              ipvs_scheduler="lc", netns="np-unused")
    backend = build_backend(opts)
    assert isinstance(backend, IpvsBackend) and backend.mode == "ipvs" and backend.planner.scheduler == "lc"
    flags = {p.name: p for p in proxy.params}
    assert isinstance(flags["mode"].type, click.Choice) and "ipvs" in flags["mode"].type.choices
    scheduler = flags["ipvs_scheduler"].type
    assert isinstance(scheduler, click.Choice) and tuple(scheduler.choices) == ipvs.SCHEDULERS
