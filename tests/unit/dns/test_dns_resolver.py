"""The pure resolver over the model: every record type and rule of the Kubernetes DNS spec (1.1.0)."""

from __future__ import annotations

from typing import Any

import pytest

from netplane.dns.records import AAAA, CNAME, NS, PTR, SOA, SRV, TXT, A, dashed, reverse_name
from netplane.dns.resolver import CLASS_IN, FORWARD, NOERROR, NXDOMAIN, REFUSED, TYPE_ANY, Resolution, Resolver
from netplane.dns.zone import ClusterModel
from tests.unit.dns.objects import endpoint, endpoint_slice, external, headless, pod, service

ZONE = "cluster.local"


def ask(model: ClusterModel, name: str, qtype: int, qclass: int = CLASS_IN) -> Resolution:
    return Resolver(ZONE, serial=1).resolve(model.index, name, qtype, qclass)


def data(res: Resolution, rtype: int | None = None) -> list[Any]:
    return [rr.data for rr in res.answer if rtype is None or rr.rtype == rtype]


def model_with(*objs: dict[str, Any]) -> ClusterModel:
    m = ClusterModel(ZONE)
    for o in objs:
        kind = o["kind"]
        if kind == "Service":
            m.on_service(None, o)
        elif kind == "EndpointSlice":
            m.on_slice(None, o)
        else:
            m.on_pod(None, o)
    return m


def test_dns_version_txt_and_zone_apex() -> None:
    m = model_with()
    assert data(ask(m, f"dns-version.{ZONE}", TXT)) == ["1.1.0"]
    soa = ask(m, ZONE, SOA)
    assert soa.rcode == NOERROR and soa.answer[0].rtype == SOA and soa.answer[0].data[0] == f"ns.dns.{ZONE}"
    assert data(ask(m, ZONE, NS)) == [f"ns.dns.{ZONE}"]


def test_clusterip_service_a_record() -> None:
    m = model_with(service("web", cluster_ip="10.96.0.20"))
    res = ask(m, "web.default.svc.cluster.local", A)
    assert res.rcode == NOERROR and res.authoritative
    assert data(res) == ["10.96.0.20"]
    assert [rr.name for rr in res.answer] == ["web.default.svc.cluster.local"]


def test_dual_stack_service_has_a_and_aaaa() -> None:
    svc = service("web", cluster_ip="10.96.0.20")
    svc["spec"]["clusterIPs"] = ["10.96.0.20", "fd00:10:96::20"]
    m = model_with(svc)
    assert data(ask(m, "web.default.svc.cluster.local", A)) == ["10.96.0.20"]
    assert data(ask(m, "web.default.svc.cluster.local", AAAA)) == ["fd00:10:96::20"]
    assert data(ask(m, reverse_name("fd00:10:96::20"), PTR)) == ["web.default.svc.cluster.local"]


def test_srv_for_named_ports_points_at_the_service() -> None:
    svc = service("web", ports=[{"name": "http", "port": 80, "protocol": "TCP"},
                                {"name": "DNS", "port": 53, "protocol": "UDP"},
                                {"port": 9000, "protocol": "TCP"}])
    m = model_with(svc)
    res = ask(m, "_http._tcp.web.default.svc.cluster.local", SRV)
    assert data(res) == [(0, 100, 80, "web.default.svc.cluster.local")]
    # The target's address rides along in the additional section.
    assert [(rr.name, rr.data) for rr in res.additional] == [("web.default.svc.cluster.local", "10.96.0.20")]
    udp = ask(m, "_dns._udp.web.default.svc.cluster.local", SRV)
    assert data(udp) == [(0, 100, 53, "web.default.svc.cluster.local")]
    # The wrong protocol, or an unnamed port: no such name.
    assert ask(m, "_http._udp.web.default.svc.cluster.local", SRV).rcode == NXDOMAIN
    # The SRV name exists: other types get NOERROR with no data.
    nodata = ask(m, "_http._tcp.web.default.svc.cluster.local", A)
    assert nodata.rcode == NOERROR and nodata.answer == () and nodata.authority[0].rtype == SOA


def test_ptr_for_cluster_ip() -> None:
    m = model_with(service("web", cluster_ip="10.96.0.20"))
    assert data(ask(m, "20.0.96.10.in-addr.arpa", PTR)) == ["web.default.svc.cluster.local"]


def test_unknown_reverse_name_falls_through_to_forwarding() -> None:
    m = model_with(service("web", cluster_ip="10.96.0.20"))
    assert ask(m, "21.0.96.10.in-addr.arpa", PTR) == FORWARD
    assert ask(m, "8.8.8.8.in-addr.arpa", PTR) == FORWARD


def test_headless_service_a_per_ready_endpoint_and_hostnames() -> None:
    m = model_with(
        headless("db"),
        endpoint_slice("db", [endpoint("10.244.1.5", hostname="db-0"), endpoint("10.244.2.7"),
                              endpoint("10.244.3.9", ready=False)]),
    )
    assert sorted(data(ask(m, "db.default.svc.cluster.local", A))) == ["10.244.1.5", "10.244.2.7"]
    assert data(ask(m, "db-0.db.default.svc.cluster.local", A)) == ["10.244.1.5"]
    # Without a hostname: the stable dashed-address name.
    assert data(ask(m, "10-244-2-7.db.default.svc.cluster.local", A)) == ["10.244.2.7"]
    # The not-ready endpoint is left out everywhere.
    assert ask(m, "10-244-3-9.db.default.svc.cluster.local", A).rcode == NXDOMAIN
    assert ask(m, reverse_name("10.244.3.9"), PTR) == FORWARD


def test_headless_srv_per_ready_endpoint_with_endpoint_ports_and_shared_weight() -> None:
    m = model_with(
        headless("db", ports=[{"name": "pg", "port": 5432, "protocol": "TCP"}]),
        endpoint_slice("db", [endpoint("10.244.1.5", hostname="db-0"), endpoint("10.244.2.7")],
                       ports=[{"name": "pg", "port": 15432, "protocol": "TCP"}]),
    )
    res = ask(m, "_pg._tcp.db.default.svc.cluster.local", SRV)
    assert sorted(data(res)) == [(0, 50, 15432, "10-244-2-7.db.default.svc.cluster.local"),
                                 (0, 50, 15432, "db-0.db.default.svc.cluster.local")]
    assert sorted((rr.name, rr.data) for rr in res.additional) == [
        ("10-244-2-7.db.default.svc.cluster.local", "10.244.2.7"), ("db-0.db.default.svc.cluster.local", "10.244.1.5")]


def test_headless_ptr_for_ready_endpoints() -> None:
    m = model_with(headless("db"), endpoint_slice("db", [endpoint("10.244.1.5", hostname="db-0"),
                                                         endpoint("10.244.2.7")]))
    assert data(ask(m, "5.1.244.10.in-addr.arpa", PTR)) == ["db-0.db.default.svc.cluster.local"]
    assert data(ask(m, "7.2.244.10.in-addr.arpa", PTR)) == ["10-244-2-7.db.default.svc.cluster.local"]


def test_headless_without_ready_endpoints_is_nxdomain() -> None:
    m = model_with(headless("db"), endpoint_slice("db", [endpoint("10.244.1.5", ready=False)]))
    assert ask(m, "db.default.svc.cluster.local", A).rcode == NXDOMAIN
    m2 = model_with(headless("empty"))
    assert ask(m2, "empty.default.svc.cluster.local", A).rcode == NXDOMAIN


def test_publish_not_ready_addresses_includes_not_ready_endpoints() -> None:
    m = model_with(headless("db", publishNotReadyAddresses=True),
                   endpoint_slice("db", [endpoint("10.244.1.5", ready=False)]))
    assert data(ask(m, "db.default.svc.cluster.local", A)) == ["10.244.1.5"]


def test_endpoint_without_conditions_counts_as_ready() -> None:
    m = model_with(headless("db"), endpoint_slice("db", [endpoint("10.244.1.5", ready=None)]))
    assert data(ask(m, "db.default.svc.cluster.local", A)) == ["10.244.1.5"]


def test_headless_addresses_from_several_slices_are_merged_once() -> None:
    m = model_with(headless("db"),
                   endpoint_slice("db", [endpoint("10.244.1.5")], name="db-1"),
                   endpoint_slice("db", [endpoint("10.244.1.5"), endpoint("10.244.1.6")], name="db-2"),
                   endpoint_slice("db", [endpoint("fd00::5")], name="db-3", address_type="IPv6"))
    assert sorted(data(ask(m, "db.default.svc.cluster.local", A))) == ["10.244.1.5", "10.244.1.6"]
    assert data(ask(m, "db.default.svc.cluster.local", AAAA)) == ["fd00::5"]
    assert data(ask(m, f"{dashed('fd00::5')}.db.default.svc.cluster.local", AAAA)) == ["fd00::5"]


def test_slices_of_clusterip_services_do_not_publish_endpoints() -> None:
    m = model_with(service("web"), endpoint_slice("web", [endpoint("10.244.1.5")]))
    assert data(ask(m, "web.default.svc.cluster.local", A)) == ["10.96.0.20"]
    assert ask(m, "10-244-1-5.web.default.svc.cluster.local", A).rcode == NXDOMAIN


def test_external_name_is_a_cname_to_be_chased_outside_the_zone() -> None:
    m = model_with(external("ext", "Example.COM."))
    res = ask(m, "ext.default.svc.cluster.local", A)
    assert res.rcode == NOERROR and data(res) == ["example.com"] and res.answer[0].rtype == CNAME
    assert res.chase == "example.com"
    cname = ask(m, "ext.default.svc.cluster.local", CNAME)
    assert data(cname) == ["example.com"] and cname.chase is None


def test_external_name_inside_the_zone_is_followed() -> None:
    m = model_with(service("web"), external("alias", "web.default.svc.cluster.local"))
    res = ask(m, "alias.default.svc.cluster.local", A)
    assert [(rr.rtype, rr.data) for rr in res.answer] == [(CNAME, "web.default.svc.cluster.local"), (A, "10.96.0.20")]
    assert res.chase is None and res.depends == ("web.default.svc.cluster.local",)


def test_cname_to_a_missing_zone_name_is_nxdomain_and_loops_end() -> None:
    m = model_with(external("dangling", "gone.default.svc.cluster.local"))
    res = ask(m, "dangling.default.svc.cluster.local", A)
    assert res.rcode == NXDOMAIN and data(res) == ["gone.default.svc.cluster.local"]
    loop = model_with(external("a", "b.default.svc.cluster.local"), external("b", "a.default.svc.cluster.local"))
    res = ask(loop, "a.default.svc.cluster.local", A)
    assert res.rcode == NOERROR and 2 <= len(res.answer) <= 10  # bounded, no hang


def test_pod_records_only_for_existing_pods_in_their_namespace() -> None:
    m = model_with(pod("p1", "10.244.1.5"), pod("p2", "10.244.1.6", namespace="other"),
                   pod("done", "10.244.1.7", phase="Succeeded"))
    assert data(ask(m, "10-244-1-5.default.pod.cluster.local", A)) == ["10.244.1.5"]
    assert ask(m, "10-244-1-6.default.pod.cluster.local", A).rcode == NXDOMAIN  # wrong namespace
    assert data(ask(m, "10-244-1-6.other.pod.cluster.local", A)) == ["10.244.1.6"]
    assert ask(m, "10-244-1-7.default.pod.cluster.local", A).rcode == NXDOMAIN  # finished
    assert ask(m, "10-244-9-9.default.pod.cluster.local", A).rcode == NXDOMAIN  # no such pod
    assert ask(m, "default.pod.cluster.local", A).rcode == NOERROR  # an empty non-terminal


def test_pod_delete_and_ip_change() -> None:
    m = ClusterModel(ZONE)
    p = pod("p1", "10.244.1.5")
    m.on_pod(None, p)
    p2 = pod("p1", "10.244.1.9")
    changed = m.on_pod(p, p2)
    assert {"10-244-1-5.default.pod.cluster.local", "10-244-1-9.default.pod.cluster.local"} <= changed
    assert ask(m, "10-244-1-5.default.pod.cluster.local", A).rcode == NXDOMAIN
    m.on_pod(p2, None)
    assert ask(m, "10-244-1-9.default.pod.cluster.local", A).rcode == NXDOMAIN
    assert ask(m, "default.pod.cluster.local", A).rcode == NXDOMAIN  # nothing left below it


@pytest.mark.parametrize("name", ["WEB.Default.SVC.cluster.local", "web.default.svc.CLUSTER.LOCAL"])
def test_names_are_case_insensitive(name: str) -> None:
    # The caller lowercases (the engine does); the index holds lowercase names.
    m = model_with(service("Web".lower()))
    assert data(ask(m, name.lower(), A)) == ["10.96.0.20"]


def test_nxdomain_versus_nodata_and_empty_non_terminals() -> None:
    m = model_with(service("web"))
    nx = ask(m, "nope.default.svc.cluster.local", A)
    assert nx.rcode == NXDOMAIN and nx.answer == () and nx.authority[0].rtype == SOA
    assert nx.authority[0].name == ZONE and nx.authority[0].data[-1] == 5  # negative TTL
    for ent in ("default.svc.cluster.local", "svc.cluster.local", "_tcp.web.default.svc.cluster.local"):
        res = ask(m, ent, A)
        assert (res.rcode, res.answer) == (NOERROR, ()), ent
        assert res.authority[0].rtype == SOA
    assert ask(m, "web.default.svc.cluster.local", AAAA).rcode == NOERROR  # exists, no AAAA
    assert ask(m, "other.svc.cluster.local", A).rcode == NXDOMAIN  # a namespace without services


def test_search_path_misses_are_nxdomain() -> None:
    m = model_with(service("web"))
    for name in ("web.default.svc.cluster.local.default.svc.cluster.local", "google.com.default.svc.cluster.local",
                 "google.com.svc.cluster.local", "google.com.cluster.local"):
        assert ask(m, name, A).rcode == NXDOMAIN, name


def test_any_returns_every_record_of_the_name() -> None:
    m = model_with(service("web"))
    res = ask(m, "web.default.svc.cluster.local", TYPE_ANY)
    assert data(res) == ["10.96.0.20"]


def test_out_of_zone_is_forwarded_and_odd_classes_and_transfers_refused() -> None:
    m = model_with(service("web"))
    assert ask(m, "example.com", A) == FORWARD
    assert ask(m, "", NS) == FORWARD
    assert ask(m, "web.default.svc.cluster.local", A, qclass=3).rcode == REFUSED  # CHAOS
    assert ask(m, ZONE, 252).rcode == REFUSED  # AXFR


def test_deleted_service_stops_resolving_and_changes_are_reported() -> None:
    m = ClusterModel(ZONE)
    svc = service("web")
    changed = m.on_service(None, svc)
    assert {"web.default.svc.cluster.local", "default.svc.cluster.local", "20.0.96.10.in-addr.arpa",
            "_http._tcp.web.default.svc.cluster.local"} <= changed
    moved = service("web", cluster_ip="10.96.0.21")
    changed = m.on_service(svc, moved)
    assert {"web.default.svc.cluster.local", "20.0.96.10.in-addr.arpa", "21.0.96.10.in-addr.arpa"} <= changed
    assert data(ask(m, "web.default.svc.cluster.local", A)) == ["10.96.0.21"]
    m.on_service(moved, None)
    assert ask(m, "web.default.svc.cluster.local", A).rcode == NXDOMAIN
    assert ask(m, "default.svc.cluster.local", A).rcode == NXDOMAIN
    assert m.index.records.keys() == {ZONE, f"dns-version.{ZONE}"}


def test_unchanged_update_reports_nothing() -> None:
    m = ClusterModel(ZONE)
    svc = service("web")
    m.on_service(None, svc)
    assert m.on_service(svc, {**svc, "metadata": {**svc["metadata"], "resourceVersion": "2"}}) == set()


def test_slice_before_its_service_and_slice_moves() -> None:
    m = ClusterModel(ZONE)
    slc = endpoint_slice("db", [endpoint("10.244.1.5")])
    m.on_slice(None, slc)
    m.on_service(None, headless("db"))
    assert data(ask(m, "db.default.svc.cluster.local", A)) == ["10.244.1.5"]
    m.on_slice(slc, None)
    assert ask(m, "db.default.svc.cluster.local", A).rcode == NXDOMAIN


def test_invalid_objects_are_skipped_and_the_rest_keeps_serving() -> None:
    m = model_with(service("web"))
    bad = headless("db")
    bad_slice = endpoint_slice("db", [{"addresses": "not-a-list-of-ips", "conditions": None}])
    m.on_service(None, bad)
    m.on_slice(None, bad_slice)
    weird = service("weird", cluster_ip="not-an-ip")
    m.on_service(None, weird)
    assert data(ask(m, "web.default.svc.cluster.local", A)) == ["10.96.0.20"]
    assert ask(m, "weird.default.svc.cluster.local", A).rcode == NXDOMAIN


def test_shared_ptr_from_two_services_is_merged_and_survives_one_delete() -> None:
    a = headless("a")
    b = headless("b")
    sa = endpoint_slice("a", [endpoint("10.244.1.5")])
    sb = endpoint_slice("b", [endpoint("10.244.1.5")])
    m = model_with(a, b, sa, sb)
    assert sorted(data(ask(m, "5.1.244.10.in-addr.arpa", PTR))) == [
        "10-244-1-5.a.default.svc.cluster.local", "10-244-1-5.b.default.svc.cluster.local"]
    m.on_service(a, None)
    assert data(ask(m, "5.1.244.10.in-addr.arpa", PTR)) == ["10-244-1-5.b.default.svc.cluster.local"]
