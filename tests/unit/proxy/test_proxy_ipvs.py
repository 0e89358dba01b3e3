"""IPVS mode, pure: desired virtual servers and set members per service, the diff against the kernel,
and partial plans. No kernel: the kernel's state is plain data here."""

from __future__ import annotations

from collections.abc import Collection

import pytest

from netplane.kernel.ipset import SavedSet
from netplane.kernel.ipvs import Observed, ObservedRealServer, RealServer, VirtualServer, VirtualServerKey
from netplane.proxy import ipvs
from netplane.proxy.changes import EndpointsChangeTracker, ServiceChangeTracker
from netplane.proxy.fixtures import endpoint_slice, service
from netplane.proxy.ipvs import DesiredIndex, IpvsPlanner, diff_virtual, render_service
from netplane.proxy.model import NamespacedName, ServicePortName
from netplane.proxy.state import ProxyConfig, ProxyState
from tests.unit.proxy.proxy_scenarios import CONFIG, NODE_IP, build_state

NODEPORTS = (NODE_IP,)


def spn(name: str, port: str = "", proto: str = "TCP") -> ServicePortName:
    return ServicePortName(NamespacedName("default", name), port, proto)


def key(addr: str, port: int, proto: str = "TCP") -> VirtualServerKey:
    return VirtualServerKey(proto, addr, port)


def fragment(state: ProxyState, name: str, port: str = "", proto: str = "TCP",
             scheduler: str = "rr") -> ipvs.IpvsFragment:
    s = spn(name, port, proto)
    return render_service(state.services[s], state.selection(s), NODEPORTS, scheduler)


def targets(frag: ipvs.IpvsFragment, k: VirtualServerKey) -> set[str]:
    return {f"{r.address}:{r.port}" for r in frag.virtual[k][1]}


@pytest.fixture(scope="module")
def state() -> ProxyState:
    return build_state()


def test_cluster_ip_gets_a_virtual_server_with_every_ready_endpoint(state: ProxyState) -> None:
    frag = fragment(state, "web", "http")
    assert set(frag.virtual) == {key("10.96.0.10", 80)}
    assert targets(frag, key("10.96.0.10", 80)) == {"10.244.1.2:8080", "10.244.1.3:8080", "10.244.2.2:8080"}
    vs = frag.virtual[key("10.96.0.10", 80)][0]
    assert (vs.scheduler, vs.persistence) == ("rr", 0)
    assert all(r.weight == 1 for r in frag.virtual[key("10.96.0.10", 80)][1])
    assert frag.addresses == ("10.96.0.10",)
    assert (ipvs.CLUSTER_IP, "10.96.0.10,tcp:80") in frag.members
    assert (ipvs.IPVS_IPS, "10.96.0.10") in frag.members
    # Hairpin: each endpoint reaching itself through the service is masqueraded.
    assert (ipvs.LOOP_BACK, "10.244.1.2,tcp:8080,10.244.1.2") in frag.members
    udp = fragment(state, "web", "dns", "UDP")
    assert set(udp.virtual) == {key("10.96.0.10", 53, "UDP")}
    assert (ipvs.CLUSTER_IP, "10.96.0.10,udp:53") in udp.members


def test_scheduler_and_client_ip_affinity_become_persistence(state: ProxyState) -> None:
    frag = fragment(state, "aff", scheduler="wlc")
    vs = frag.virtual[key("10.96.0.50", 80)][0]
    assert (vs.scheduler, vs.persistence) == ("wlc", 600)
    with pytest.raises(ValueError, match="unknown IPVS scheduler"):
        IpvsPlanner("fastest")


def test_nodeport_virtual_servers_per_address_and_masquerade_sets(state: ProxyState) -> None:
    s = spn("np")
    frag = render_service(state.services[s], state.selection(s), (NODE_IP, "10.0.0.9"))
    assert set(frag.virtual) == {key("10.96.0.20", 80), key(NODE_IP, 30080), key("10.0.0.9", 30080)}
    assert targets(frag, key(NODE_IP, 30080)) == {"10.244.1.10:80", "10.244.2.10:80"}
    assert (ipvs.node_port_set("TCP", False), "30080") in frag.members
    assert frag.addresses == ("10.96.0.20",)  # node addresses are never bound to the device


def test_external_policy_local_uses_local_endpoints_and_keeps_the_source(state: ProxyState) -> None:
    frag = fragment(state, "np-local")
    assert targets(frag, key(NODE_IP, 30081)) == {"10.244.1.11:80"}
    assert targets(frag, key("10.96.0.21", 80)) == {"10.244.1.11:80", "10.244.2.11:80"}
    assert (ipvs.node_port_set("TCP", True), "30081") in frag.members
    assert (ipvs.node_port_set("TCP", False), "30081") not in frag.members
    none = fragment(state, "np-local-none")
    assert targets(none, key(NODE_IP, 30082)) == set()
    assert (ipvs.NO_LOCAL_ENDPOINTS, f"{NODE_IP},tcp:30082") in none.members
    assert (ipvs.NO_LOCAL_ENDPOINTS, "10.96.0.22,tcp:80") not in none.members


def test_internal_policy_local(state: ProxyState) -> None:
    assert targets(fragment(state, "itp"), key("10.96.0.60", 80)) == {"10.244.1.60:80"}
    none = fragment(state, "itp-none")
    assert targets(none, key("10.96.0.61", 80)) == set()
    assert none.members >= {(ipvs.NO_LOCAL_ENDPOINTS, "10.96.0.61,tcp:80")}


def test_load_balancer_with_source_ranges(state: ProxyState) -> None:
    frag = fragment(state, "lb")
    assert set(frag.virtual) == {key("10.96.0.30", 443), key("203.0.113.10", 443), key(NODE_IP, 30443)}
    assert frag.addresses == ("10.96.0.30", "203.0.113.10")
    assert {(ipvs.LOAD_BALANCER, "203.0.113.10,tcp:443"), (ipvs.LOAD_BALANCER_FW, "203.0.113.10,tcp:443"),
            (ipvs.LB_SOURCE_CIDR, "203.0.113.10,tcp:443,198.51.100.0/24")} <= frag.members
    assert not any(m[0] == ipvs.LOAD_BALANCER_LOCAL for m in frag.members)
    local = fragment(state, "lb-local")
    assert (ipvs.LOAD_BALANCER_LOCAL, "203.0.113.11,tcp:443") in local.members
    assert (ipvs.HEALTH_CHECK_NODE_PORT, "32100") in local.members


def test_service_without_endpoints_keeps_its_virtual_servers_and_rejects(state: ProxyState) -> None:
    frag = fragment(state, "empty")
    assert set(frag.virtual) == {key("10.96.0.70", 80), key("192.0.2.70", 80), key(NODE_IP, 30070)}
    assert all(not reals for _, reals in frag.virtual.values())
    assert {m for m in frag.members if m[0] == ipvs.NO_ENDPOINTS} == {
        (ipvs.NO_ENDPOINTS, "10.96.0.70,tcp:80"), (ipvs.NO_ENDPOINTS, "192.0.2.70,tcp:80"),
        (ipvs.NO_ENDPOINTS, f"{NODE_IP},tcp:30070")}
    assert (ipvs.EXTERNAL_IP, "192.0.2.70,tcp:80") in frag.members


def test_terminating_endpoints_only_when_none_is_ready(state: ProxyState) -> None:
    assert targets(fragment(state, "term"), key("10.96.0.80", 80)) == {"10.244.1.80:80"}
    assert targets(fragment(state, "term-ready"), key("10.96.0.81", 80)) == {"10.244.1.81:80"}


def test_sctp(state: ProxyState) -> None:
    frag = fragment(state, "sctp", proto="SCTP")
    assert set(frag.virtual) == {key("10.96.0.90", 9999, "SCTP")}
    assert (ipvs.CLUSTER_IP, "10.96.0.90,sctp:9999") in frag.members


def test_nodeport_addresses_from_flag_or_local_addresses() -> None:
    local = [("lo", "127.0.0.1"), ("eth0", "192.168.0.1"), ("cbr0", "10.244.1.1"), (ipvs.DEVICE, "10.96.0.10")]
    assert ipvs.nodeport_addresses(CONFIG, local) == ("10.244.1.1", "192.168.0.1")
    flagged = ProxyConfig(node_name="n1", node_ips=("192.168.0.1", "172.16.0.1"),
                          nodeport_addresses=("192.168.0.0/24",))
    assert ipvs.nodeport_addresses(flagged, local) == ("192.168.0.1",)


# -- the diff ----------------------------------------------------------------------------------
K = key("10.96.0.10", 80)
VS = VirtualServer(K, "rr", 0)
A, B = RealServer("10.244.1.2", 8080), RealServer("10.244.1.3", 8080)


def obs(*reals: ObservedRealServer, vs: VirtualServer = VS) -> dict:
    return {vs.key: (vs, {r.target: r for r in reals})}


def kinds(ops: list) -> list[str]:
    return [str(op) for op in ops]


def test_diff_creates_what_is_missing() -> None:
    ops, draining = diff_virtual({K: (VS, (A, B))}, {}, [K])
    assert kinds(ops) == ["add-service tcp:10.96.0.10:80", "add-dest tcp:10.96.0.10:80 -> 10.244.1.2:8080 w1",
                          "add-dest tcp:10.96.0.10:80 -> 10.244.1.3:8080 w1"]
    assert draining == set()


def test_diff_of_identical_state_is_empty() -> None:
    observed = obs(ObservedRealServer(A.address, A.port, 1, active=5), ObservedRealServer(B.address, B.port, 1))
    assert diff_virtual({K: (VS, (A, B))}, observed, [K]) == ([], set())


def test_diff_updates_scheduler_persistence_weight_and_forwarding() -> None:
    observed = obs(ObservedRealServer(A.address, A.port, 0), ObservedRealServer(B.address, B.port, 1,
                                                                                 masquerade=False),
                   vs=VirtualServer(K, "wlc", 0))
    ops, _ = diff_virtual({K: (VirtualServer(K, "rr", 300), (A, B))}, observed, [K])
    assert kinds(ops) == ["set-service tcp:10.96.0.10:80", "set-dest tcp:10.96.0.10:80 -> 10.244.1.2:8080 w1",
                          "set-dest tcp:10.96.0.10:80 -> 10.244.1.3:8080 w1"]


def test_diff_drains_a_removed_tcp_real_server_with_connections_then_deletes_it() -> None:
    busy = ObservedRealServer(B.address, B.port, 1, active=2)
    ops, draining = diff_virtual({K: (VS, (A,))}, obs(ObservedRealServer(A.address, A.port, 1), busy), [K])
    assert kinds(ops) == ["set-dest tcp:10.96.0.10:80 -> 10.244.1.3:8080 w0"] and draining == {K}
    drained = ObservedRealServer(B.address, B.port, 0, active=1)
    ops, draining = diff_virtual({K: (VS, (A,))}, obs(ObservedRealServer(A.address, A.port, 1), drained), [K])
    assert ops == [] and draining == {K}  # still busy: leave it at weight 0
    idle = ObservedRealServer(B.address, B.port, 0)
    ops, draining = diff_virtual({K: (VS, (A,))}, obs(ObservedRealServer(A.address, A.port, 1), idle), [K])
    assert kinds(ops) == ["del-dest tcp:10.96.0.10:80 -> 10.244.1.3:8080 w0"] and draining == set()


def test_diff_brings_a_drained_real_server_back() -> None:
    ops, draining = diff_virtual({K: (VS, (A,))}, obs(ObservedRealServer(A.address, A.port, 0, active=3)), [K])
    assert kinds(ops) == ["set-dest tcp:10.96.0.10:80 -> 10.244.1.2:8080 w1"] and draining == set()


def test_diff_removes_udp_real_servers_at_once() -> None:
    k = key("10.96.0.10", 53, "UDP")
    vs = VirtualServer(k)
    busy = ObservedRealServer("10.244.1.3", 5353, 1, active=0, inactive=9)
    ops, draining = diff_virtual({k: (vs, ())}, obs(busy, vs=vs), [k])
    assert kinds(ops) == ["del-dest udp:10.96.0.10:53 -> 10.244.1.3:5353 w1"] and draining == set()


def test_diff_deletes_unwanted_virtual_servers_last() -> None:
    other = key("10.96.0.99", 80)
    observed = {**obs(), other: (VirtualServer(other), {})}
    ops, _ = diff_virtual({K: (VS, (A,))}, observed, [other, K])
    assert kinds(ops) == ["add-dest tcp:10.96.0.10:80 -> 10.244.1.2:8080 w1", "del-service tcp:10.96.0.99:80"]


# -- the union and partial plans ---------------------------------------------------------------
def test_index_keeps_shared_addresses_and_virtual_servers_until_the_last_owner_goes() -> None:
    st = ProxyState(CONFIG)
    trackers = ServiceChangeTracker(), EndpointsChangeTracker()
    for name, ip in (("one", "10.96.0.1"), ("two", "10.96.0.2")):
        trackers[0].update(None, service(name, ip, external_ips=["192.0.2.1"]))
        trackers[1].update(None, endpoint_slice(name, [(f"10.244.1.{ip[-1]}", "n1")]))
    trackers[0].apply(st.services)
    trackers[1].apply(st.endpoints)
    index = DesiredIndex()
    for s in sorted(st.services):
        index.replace(s, render_service(st.services[s], st.selection(s), ()))
    shared = key("192.0.2.1", 80)
    want = index.virtual(shared)
    assert want is not None and [r.address for r in want[1]] == ["10.244.1.1"]  # the smaller name wins
    index.replace(spn("one"), None)
    want = index.virtual(shared)
    assert want is not None and [r.address for r in want[1]] == ["10.244.1.2"]
    assert index.has_address("192.0.2.1") and not index.has_address("10.96.0.1")
    index.replace(spn("two"), None)
    assert index.virtual(shared) is None and index.addresses() == set() and index.members() == set()


def as_kernel(index: DesiredIndex) -> Observed:
    """What the kernel holds once `index` is applied."""
    out: Observed = {}
    for k in index.virtual_keys():
        want = index.virtual(k)
        assert want is not None
        out[k] = (want[0], {r.target: ObservedRealServer(r.address, r.port, r.weight) for r in want[1]})
    return out


def _planned(state: ProxyState) -> IpvsPlanner:
    planner = IpvsPlanner()
    plan, index = planner.plan_full(state, NODEPORTS, {}, set(), {}, None)
    planner.commit(plan, index)
    return planner


def test_partial_plan_touches_only_the_changed_service() -> None:
    st = build_state()
    planner = _planned(st)
    trackers = EndpointsChangeTracker()
    old = endpoint_slice("web", [("10.244.1.2", "n1"), ("10.244.1.3", "n1"), ("10.244.2.2", "n2"),
                                 ("10.244.2.3", "n2", False)], ports=(("http", 8080, "TCP"), ("dns", 5353, "UDP")))
    trackers.update(None, old)
    trackers.apply({})
    trackers.update(old, endpoint_slice("web", [("10.244.1.2", "n1"), ("10.244.1.4", "n1")],
                                        ports=(("http", 8080, "TCP"), ("dns", 5353, "UDP"))))
    # Replace the service's endpoints in the state, as the proxier's apply would.
    for s in [s for s in st.endpoints if s.service.name == "web"]:
        del st.endpoints[s]
    trackers.apply(st.endpoints)
    reads: list[list[VirtualServerKey]] = []
    assert planner._applied is not None
    current = as_kernel(planner._applied)

    def read(keys: Collection[VirtualServerKey] | None) -> Observed:
        assert keys is not None
        reads.append(list(keys))
        return {k: current[k] for k in keys if k in current}

    plan = planner.plan_partial(st, {NamespacedName("default", "web")}, read)
    assert reads == [[key("10.96.0.10", 80), key("10.96.0.10", 53, "UDP")]]
    assert not plan.full and plan.iptables_text == "" and plan.bind == [] and plan.unbind == []
    assert sorted(str(op) for op in plan.ipvs_ops) == sorted([
        "add-dest tcp:10.96.0.10:80 -> 10.244.1.4:8080 w1",
        "add-dest udp:10.96.0.10:53 -> 10.244.1.4:5353 w1",
        "del-dest tcp:10.96.0.10:80 -> 10.244.1.3:8080 w1",
        "del-dest tcp:10.96.0.10:80 -> 10.244.2.2:8080 w1",
        "del-dest udp:10.96.0.10:53 -> 10.244.1.3:5353 w1",
        "del-dest udp:10.96.0.10:53 -> 10.244.2.2:5353 w1",
    ])
    lines = set(plan.ipset_text.splitlines())
    assert "add NPV-LOOP-BACK 10.244.1.4,tcp:8080,10.244.1.4" in lines
    assert "del NPV-LOOP-BACK 10.244.2.2,udp:5353,10.244.2.2" in lines
    assert not any("NPV-CLUSTER-IP" in line for line in lines)  # unchanged members are left alone


def test_partial_plan_of_a_deleted_service_unbinds_and_deletes() -> None:
    st = build_state()
    planner = _planned(st)
    for s in [s for s in st.services if s.service.name == "ext"]:
        del st.services[s]
    assert planner._applied is not None
    current = as_kernel(planner._applied)
    plan = planner.plan_partial(st, {NamespacedName("default", "ext")},
                                lambda keys: {k: current[k] for k in keys or () if k in current})
    assert sorted(str(op) for op in plan.ipvs_ops) == ["del-service tcp:10.96.0.40:80", "del-service tcp:192.0.2.40:80"]
    assert plan.unbind == ["10.96.0.40", "192.0.2.40"]
    assert "del NPV-EXTERNAL-IP 192.0.2.40,tcp:80" in plan.ipset_text.splitlines()


def test_full_plan_against_the_kernel_it_produced_is_empty() -> None:
    st = build_state()
    planner = IpvsPlanner()
    plan, index = planner.plan_full(st, NODEPORTS, {}, set(), {}, None)
    observed = as_kernel(index)
    saved = {name: SavedSet(name, kind, {m for s, m in index.members() if s == name})
             for name, kind in ipvs.SET_TYPES.items()}
    again, _ = IpvsPlanner().plan_full(st, NODEPORTS, observed, index.addresses(), saved, None)
    assert again.ipvs_ops == [] and again.bind == [] and again.unbind == []
    assert not any(line.startswith(("add ", "del ")) for line in again.ipset_text.splitlines())
    assert plan.rule_counts == again.rule_counts and plan.rule_counts["virtual_servers"] == len(observed)
