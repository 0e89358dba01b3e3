"""A sequence of partial syncs leaves the kernel exactly as one full sync of the final state does.

The unit property test checks this against the tracer's model of the rules; this one
checks it against the kernel itself, which also judges what the model cannot: that
each partial transaction is accepted (types of existing maps, references between
objects, deletions in the right order). Two namespaces of our own: one takes the
partial syncs, the other one full sync; their rulesets are compared after listing.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Iterator
from typing import Any

import pytest

from netplane.kernel.iptables import Iptables
from netplane.kernel.nftables import LibNft, Nft
from netplane.proxy.fixtures import endpoint_slice, service
from netplane.proxy.proxier import Backend, IptablesBackend, NftablesBackend, Proxier
from netplane.proxy.state import ProxyConfig
from tests.integration.proxy.topology import sh

pytestmark = [pytest.mark.root, pytest.mark.prerequisite_missing(os.geteuid() != 0, reason="needs root")]

CONFIG = ProxyConfig(node_name="n1", cluster_cidr="10.244.0.0/16", node_ips=("192.168.77.1",))
PORTS = (("", 8080, "TCP"),)
UDP = (("dns", 5353, "UDP"),)


@pytest.fixture
def two_nodes(tmp_path: Any) -> Iterator[tuple[str, str]]:
    os.environ.setdefault("XTABLES_LOCKFILE", str(tmp_path / "xtables.lock"))
    prefix = f"np-pxeq-{secrets.token_hex(3)}"
    names = (f"{prefix}-partial", f"{prefix}-full")
    try:
        for n in names:
            sh("ip", "netns", "add", n)
        yield names
    finally:
        for n in names:
            sh("ip", "netns", "del", n, check=False)


def _backend(mode: str, netns: str) -> Backend:
    if mode == "iptables":
        return IptablesBackend(Iptables(netns=netns))
    return NftablesBackend(LibNft(netns=netns) if mode == "nftables" else Nft(netns=netns))


def _proxier(mode: str, netns: str) -> Proxier:
    return Proxier(CONFIG, _backend(mode, netns), check_rules_period=3600.0)


def _initial(p: Proxier) -> None:
    p.on_service(None, service("web", "10.96.5.1", ports=(("", 80, "TCP"), ("dns", 53, "UDP"))))
    p.on_service(None, service("np", "10.96.5.2", ports=(("", 80, "TCP", 30180),), type="NodePort",
                               external_policy="Local"))
    p.on_service(None, service("aff", "10.96.5.3", affinity_timeout=60))
    p.on_endpoint_slice(None, endpoint_slice("web", [("10.244.1.2", "n1"), ("10.244.2.2", "n2")],
                                             ports=(("", 8080, "TCP"), *UDP)))
    p.on_endpoint_slice(None, endpoint_slice("np", [("10.244.1.3", "n1"), ("10.244.2.3", "n2")], ports=PORTS))
    p.on_endpoint_slice(None, endpoint_slice("aff", [("10.244.1.4", "n1")], ports=PORTS))


# Each step is one partial sync: endpoints swapped, added, removed, all gone, a service
# gone and back, a service changing shape (affinity on, then off).
STEPS: list[list[tuple[str, Any]]] = [
    [("slice", endpoint_slice("web", [("10.244.1.9", "n1"), ("10.244.2.2", "n2")],
                              ports=(("", 8080, "TCP"), *UDP)))],
    [("slice", endpoint_slice("web", [("10.244.1.9", "n1"), ("10.244.2.2", "n2"), ("10.244.2.7", "n2")],
                              ports=(("", 8080, "TCP"), *UDP)))],
    [("slice", endpoint_slice("np", [("10.244.2.3", "n2")], ports=PORTS))],
    [("slice", endpoint_slice("aff", [("10.244.1.4", "n1"), ("10.244.1.9", "n1")], ports=PORTS))],
    [("slice", endpoint_slice("web", [], ports=(("", 8080, "TCP"), *UDP)))],
    [("delete", service("np", "10.96.5.2", ports=(("", 80, "TCP", 30180),), type="NodePort"))],
    [("service", service("np", "10.96.5.2", ports=(("", 80, "TCP", 30180),), type="NodePort"))],
    [("service", service("web", "10.96.5.1", ports=(("", 80, "TCP"), ("dns", 53, "UDP")), affinity_timeout=30)),
     ("slice", endpoint_slice("web", [("10.244.1.2", "n1")], ports=(("", 8080, "TCP"), *UDP)))],
    [("service", service("aff", "10.96.5.3"))],
]


def _apply(p: Proxier, kind: str, obj: dict[str, Any]) -> None:
    if kind == "slice":
        p.on_endpoint_slice(None, obj)
    elif kind == "service":
        p.on_service(None, obj)
    else:
        p.on_service(obj, None)


def _nft_ruleset(netns: str) -> dict[str, Any]:
    """The table as comparable data: handles dropped, elements as sets (their order is the kernel's)."""
    listing = json.loads(sh("ip", "netns", "exec", netns, "nft", "-j", "list", "table", "ip", "netplane"))
    chains: dict[str, list[str]] = {}
    objects: dict[str, Any] = {}
    for item in listing["nftables"]:
        if "chain" in item:
            chains.setdefault(item["chain"]["name"], [])
        elif "rule" in item:
            rule = item["rule"]
            chains.setdefault(rule["chain"], []).append(json.dumps(rule["expr"], sort_keys=True))
        for kind in ("map", "set"):
            if kind in item:
                obj = dict(item[kind])
                obj.pop("handle", None)
                obj["elem"] = sorted(json.dumps(e, sort_keys=True) for e in obj.get("elem", []))
                objects[obj["name"]] = obj
    return {"chains": chains, "objects": objects}


def _ipt_ruleset(netns: str) -> dict[str, list[str]]:
    chains: dict[str, list[str]] = {}
    for table in ("filter", "nat"):
        for line in sh("ip", "netns", "exec", netns, "iptables-save", "-t", table).splitlines():
            if line.startswith(":"):
                chains.setdefault(f"{table} {line[1:].split()[0]}", [])
            elif line.startswith("-A "):
                chains.setdefault(f"{table} {line.split()[1]}", []).append(line)
    return chains


@pytest.mark.parametrize("mode", ["iptables", "nftables", "nftables-cli"])
def test_partial_syncs_leave_the_kernel_as_a_full_sync_does(two_nodes: tuple[str, str], mode: str) -> None:
    partial_ns, full_ns = two_nodes
    partial = _proxier(mode, partial_ns)
    _initial(partial)
    assert partial.sync()
    for step in STEPS:
        for kind, obj in step:
            _apply(partial, kind, obj)
        assert partial.sync()
    assert partial.metrics.partial_sync_duration.count() == len(STEPS)
    assert partial.metrics.full_sync_duration.count() == 1
    full = _proxier(mode, full_ns)
    _initial(full)
    for step in STEPS:
        for kind, obj in step:
            _apply(full, kind, obj)
    assert full.sync()
    if mode == "iptables":
        assert _ipt_ruleset(partial_ns) == _ipt_ruleset(full_ns)
    else:
        got, want = _nft_ruleset(partial_ns), _nft_ruleset(full_ns)
        assert got["chains"] == want["chains"]
        assert got["objects"] == want["objects"]
