"""Desired routes, neighbours and FDB entries per backend, from Node lists (pure)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from netplane.kernel.routes import Route, RouteChanges, plan, sync
from netplane.kernel.vxlan import FdbEntry, Neighbour
from netplane.kernel.vxlan import plan as set_plan
from netplane.node.network import (
    ANNOTATION_BACKEND_DATA,
    backend_annotations,
    desired_network,
    masquerade_rules,
    node_net,
)


def node(name: str, ip: str | None, cidr: str | None, mac: str | None = None) -> dict[str, Any]:
    annotations = {ANNOTATION_BACKEND_DATA: json.dumps({"VtepMAC": mac})} if mac else {}
    return {
        "metadata": {"name": name, "annotations": annotations},
        "spec": {"podCIDR": cidr} if cidr else {},
        "status": {"addresses": [{"type": "Hostname", "address": name}]
                   + ([{"type": "InternalIP", "address": ip}] if ip else [])},
    }


NODES = [
    node("n1", "192.168.1.1", "10.244.0.0/24", "aa:aa:aa:aa:aa:01"),
    node("n2", "192.168.1.2", "10.244.1.0/24", "aa:aa:aa:aa:aa:02"),
    node("n3", "192.168.1.3", "10.244.2.0/24", "AA:AA:AA:AA:AA:03"),
]


def test_host_gw_routes_every_other_node_via_its_address() -> None:
    d = desired_network("n1", "host-gw", NODES)
    assert d.routes == {Route("10.244.1.0/24", "192.168.1.2"), Route("10.244.2.0/24", "192.168.1.3")}
    assert not d.neighbours and not d.fdb


def test_vxlan_routes_onlink_via_gateway_with_neighbour_and_fdb() -> None:
    d = desired_network("n1", "vxlan", NODES)
    assert d.routes == {Route("10.244.1.0/24", "10.244.1.0", "np.vxlan", onlink=True),
                        Route("10.244.2.0/24", "10.244.2.0", "np.vxlan", onlink=True)}
    assert d.neighbours == {Neighbour("10.244.1.0", "aa:aa:aa:aa:aa:02"),
                            Neighbour("10.244.2.0", "aa:aa:aa:aa:aa:03")}  # MACs are lower-cased
    assert d.fdb == {FdbEntry("aa:aa:aa:aa:aa:02", "192.168.1.2"), FdbEntry("aa:aa:aa:aa:aa:03", "192.168.1.3")}


def test_incomplete_nodes_are_skipped_with_a_reason() -> None:
    nodes = [*NODES[:1], node("nocidr", "192.168.1.9", None), node("noip", None, "10.244.9.0/24"),
             node("nomac", "192.168.1.8", "10.244.8.0/24"),
             node("dup", "192.168.1.7", "10.244.0.0/24", "aa:bb:cc:dd:ee:ff")]
    d = desired_network("n1", "vxlan", nodes)
    assert not d.routes
    assert dict(d.skipped) == {"nocidr": "no podCIDR", "noip": "no InternalIP",
                               "nomac": "no VTEP MAC published yet", "dup": "its podCIDR 10.244.0.0/24 is ours"}
    # host-gw does not need the MAC.
    assert desired_network("n1", "host-gw", nodes).routes == {Route("10.244.8.0/24", "192.168.1.8")}


def test_public_ip_annotation_stands_in_for_a_missing_internal_ip() -> None:
    n = node("n2", None, "10.244.1.0/24")
    n["metadata"]["annotations"]["netplane.io/public-ip"] = "192.168.1.22"
    assert node_net(n).address == "192.168.1.22"


def test_removed_and_readdressed_nodes_change_the_plan() -> None:
    before = desired_network("n1", "host-gw", NODES).routes
    moved = [NODES[0], node("n2", "192.168.1.20", "10.244.1.0/24")]
    after = desired_network("n1", "host-gw", moved).routes
    changes = plan(before, after)
    # n2's route is replaced in place (same dst, new gateway); n3's is deleted.
    assert changes.added == (Route("10.244.1.0/24", "192.168.1.20"),)
    assert changes.removed == (Route("10.244.2.0/24", "192.168.1.3"),)


def test_unknown_backend_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown backend"):
        desired_network("n1", "ipip", NODES)


class FakeRoutes:
    def __init__(self, routes: set[Route]) -> None:
        self.table = set(routes)
        self.calls: list[str] = []

    def routes(self) -> set[Route]:
        return set(self.table)

    def replace(self, route: Route) -> None:
        self.calls.append(f"replace {route.dst}")
        self.table = {r for r in self.table if r.dst != route.dst} | {route}

    def delete(self, route: Route) -> None:
        self.calls.append(f"delete {route.dst}")
        self.table.discard(route)


def test_route_sync_converges_and_is_idempotent() -> None:
    # The kernel reports the device it chose; a wanted route without a device matches it.
    kernel = FakeRoutes({Route("10.244.1.0/24", "192.168.1.2", "eth0"), Route("10.244.7.0/24", "192.168.1.7", "eth0")})
    want = desired_network("n1", "host-gw", NODES).routes
    changes = sync(kernel, want)
    assert changes.added == (Route("10.244.2.0/24", "192.168.1.3"),)
    assert changes.removed == (Route("10.244.7.0/24", "192.168.1.7", "eth0"),)
    kernel.calls.clear()
    assert sync(kernel, want) == RouteChanges()
    assert kernel.calls == []


def test_set_plan_for_neighbours_and_fdb() -> None:
    cur = {FdbEntry("aa:aa:aa:aa:aa:02", "192.168.1.2"), FdbEntry("aa:aa:aa:aa:aa:09", "192.168.1.9")}
    want = {FdbEntry("aa:aa:aa:aa:aa:02", "192.168.1.20")}
    ch = set_plan(cur, want)
    assert ch.added == (FdbEntry("aa:aa:aa:aa:aa:02", "192.168.1.20"),)
    assert set(ch.removed) == cur


def test_backend_annotations() -> None:
    a = backend_annotations("vxlan", "192.168.1.1", "aa:aa:aa:aa:aa:01")
    assert json.loads(a[ANNOTATION_BACKEND_DATA]) == {"VtepMAC": "aa:aa:aa:aa:aa:01"}
    assert a["netplane.io/public-ip"] == "192.168.1.1"
    assert ANNOTATION_BACKEND_DATA not in backend_annotations("host-gw", "192.168.1.1", None)


def test_masquerade_keeps_pod_to_pod_sources_and_multicast() -> None:
    text = masquerade_rules("10.244.0.0/16")
    lines = text.splitlines()
    assert lines[:2] == ["add table ip netplane_node", "flush table ip netplane_node"]
    rules = [line for line in lines if line.startswith("add rule")]
    assert rules == [
        "add rule ip netplane_node postrouting ip saddr 10.244.0.0/16 ip daddr 10.244.0.0/16 return",
        "add rule ip netplane_node postrouting ip saddr 10.244.0.0/16 ip daddr 224.0.0.0/4 return",
        "add rule ip netplane_node postrouting ip saddr 10.244.0.0/16 masquerade",
    ]
    with pytest.raises(ValueError):
        masquerade_rules("10.244.0.1/16")


def test_one_failing_route_does_not_stop_the_others() -> None:
    from netplane.kernel.routes import RouteError

    class Picky(FakeRoutes):
        def replace(self, route: Route) -> None:
            if route.gateway == "192.168.1.2":
                raise RouteError(f"cannot install route {route}: gateway not on-link")
            super().replace(route)

    kernel = Picky(set())
    with pytest.raises(RouteError, match="not on-link"):
        sync(kernel, desired_network("n1", "host-gw", NODES).routes)
    assert kernel.table == {Route("10.244.2.0/24", "192.168.1.3")}
