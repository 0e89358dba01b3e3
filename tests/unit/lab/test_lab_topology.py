"""The lab's topology plan and its `ip -batch` rendering (pure, no root)."""

from __future__ import annotations

import pytest

from netplane.lab.topology import TopologyError, owns_netns, plan, setup_batches, sysctls


def test_plan_names_and_addresses() -> None:
    p = plan(3)
    assert [h.name for h in p.hosts] == ["cp", "n1", "n2", "n3", "ext"]
    assert [h.address for h in p.nodes] == ["192.168.50.11", "192.168.50.12", "192.168.50.13"]
    assert p.control_plane.address == "192.168.50.10" and p.external.address == "192.168.50.200"
    assert p.api_url == "http://192.168.50.10:6443"
    assert all(h.netns.startswith("np-lab-") for h in p.hosts)
    assert all(len(h.underlay_port) <= 15 for h in plan(50).hosts)  # kernel interface name limit
    assert p.node("n2").address == "192.168.50.12"
    with pytest.raises(TopologyError, match="no node 'n9'"):
        p.node("n9")


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"nodes": 0}, "--nodes"), ({"nodes": 51}, "--nodes"), ({"backend": "gre"}, "--backend"),
    ({"proxy_mode": "ipvs"}, "--proxy-mode"),
])
def test_plan_rejects_bad_parameters(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(TopologyError, match=message):
        plan(**kwargs)  # type: ignore[arg-type]


def test_batches_build_only_inside_lab_namespaces() -> None:
    p = plan(2)
    batches = setup_batches(p)
    first_ns, first = batches[0]
    # The only batch run in the caller's namespace just creates namespace files.
    assert first_ns is None and all(line.startswith("netns add ") for line in first)
    assert {line.split()[2] for line in first} == {h.netns for h in p.hosts} | {p.underlay_netns}
    assert all(ns is not None and ns.startswith("np-lab-") for ns, _ in batches[1:])
    by_ns = dict(batches[1:])
    assert "route add default via 192.168.50.1" in by_ns["np-lab-n1"]
    assert "link add u-n2 type veth peer name eth0 netns np-lab-n2" in by_ns["np-lab-underlay"]


def test_nodes_forward_and_others_do_not() -> None:
    p = plan(2)
    s = sysctls(p)
    assert s["np-lab-n1"]["net.ipv4.ip_forward"] == "1"
    assert "np-lab-ext" not in s and "np-lab-cp" not in s


def test_ownership_is_by_prefix() -> None:
    assert owns_netns("np-lab-", "np-lab-pod-1234")
    assert not owns_netns("np-lab-", "np-cni-x") and not owns_netns("np-lab-", "default")
