"""Typed views, change trackers and endpoint selection."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from netplane.proxy.changes import EndpointsChangeTracker, ServiceChangeTracker
from netplane.proxy.fixtures import endpoint_slice, service
from netplane.proxy.model import (
    Endpoint,
    InvalidObject,
    NamespacedName,
    ServicePort,
    ServicePortName,
    parse_endpoint_slice,
    parse_service,
)
from netplane.proxy.selection import select_endpoints

WEB = NamespacedName("default", "web")


def spn(name: str = "web", port: str = "", proto: str = "TCP") -> ServicePortName:
    return ServicePortName(NamespacedName("default", name), port, proto)


def test_parse_service_ports_and_addresses() -> None:
    obj = service("web", "10.96.0.10", ports=(("http", 80, "TCP", 30080), ("dns", 53, "UDP", 30053)),
                  type="LoadBalancer", lb_ips=["203.0.113.1", "2001:db8::1"], source_ranges=[" 10.0.0.0/8"],
                  affinity_timeout=60, external_policy="Local", health_check_node_port=32000,
                  external_ips=["192.0.2.1"])
    ports = parse_service(obj)
    http = ports[spn(port="http")]
    assert (http.cluster_ip, http.port, http.node_port, http.protocol) == ("10.96.0.10", 80, 30080, "TCP")
    assert http.load_balancer_ips == ("203.0.113.1",)  # IPv6 ignored
    assert http.load_balancer_source_ranges == ("10.0.0.0/8",)
    assert http.external_ips == ("192.0.2.1",)
    assert http.affinity_timeout == 60 and http.external_policy_local and http.health_check_node_port == 32000
    assert ports[spn(port="dns", proto="UDP")].port == 53
    assert str(http.name) == "default/web:http"


def test_affinity_default_timeout_and_policies_only_where_they_apply() -> None:
    obj = service("web", "10.96.0.10")
    obj["spec"]["sessionAffinity"] = "ClientIP"
    obj["spec"]["externalTrafficPolicy"] = "Local"  # ignored for a ClusterIP service
    (port,) = parse_service(obj).values()
    assert port.affinity_timeout == 10800
    assert not port.external_policy_local and not port.uses_local_endpoints


@pytest.mark.parametrize("obj", [
    service("h", "None"),
    {"metadata": {"name": "x", "namespace": "d"}, "spec": {"type": "ExternalName", "externalName": "a.b"}},
    {"metadata": {"name": "x", "namespace": "d"}, "spec": {"ports": [{"port": 80}]}},  # no cluster IP yet
])
def test_services_without_rules(obj: dict) -> None:
    assert parse_service(obj) == {}


@pytest.mark.parametrize("mutate, message", [
    (lambda s: s["spec"].update(clusterIP="banana", clusterIPs=["banana"]), "not an IP"),
    (lambda s: s["spec"]["ports"][0].update(port=70000), "out of range"),
    (lambda s: s["spec"]["ports"][0].update(protocol="ICMP"), "not supported"),
    (lambda s: s["spec"]["ports"].append(dict(s["spec"]["ports"][0])), "duplicate"),
])
def test_invalid_services_raise(mutate: Callable[[dict], None], message: str) -> None:
    obj = service("web", "10.96.0.10")
    mutate(obj)
    with pytest.raises(InvalidObject, match=message):
        parse_service(obj)


def test_parse_slice_conditions_default_as_the_api_says() -> None:
    obj = endpoint_slice("web", [("10.244.1.2", "n1")], ports=(("http", 8080, "TCP"),),
                         trigger_time="2024-01-01T00:00:00Z")
    obj["endpoints"].append({"addresses": ["10.244.1.3"]})  # no conditions at all: ready
    obj["endpoints"].append({"addresses": ["10.244.1.4"], "conditions": {"ready": False}})  # serving = ready
    info = parse_endpoint_slice(obj)
    assert info is not None and info.service == WEB and info.trigger_time == 1704067200.0
    eps = info.ports[("http", "TCP")]
    assert [(e.ip, e.port, e.ready, e.serving, e.terminating) for e in eps] == [
        ("10.244.1.2", 8080, True, True, False), ("10.244.1.3", 8080, True, True, False),
        ("10.244.1.4", 8080, False, False, False)]


def test_ignored_slices() -> None:
    v6 = endpoint_slice("web", [])
    v6["addressType"] = "IPv6"
    unlabeled = endpoint_slice("web", [])
    unlabeled["metadata"]["labels"] = {}
    assert parse_endpoint_slice(v6) is None and parse_endpoint_slice(unlabeled) is None


def test_service_tracker_reports_changed_services_and_cancels_flapping() -> None:
    t = ServiceChangeTracker()
    services: dict = {}
    a, b = service("web", "10.96.0.10"), service("web", "10.96.0.10", ports=(("", 81, "TCP"),))
    assert t.update(None, a)
    assert t.apply(services).updated == {WEB}
    assert t.update(a, b)
    assert not t.update(b, a)  # back to what is programmed: nothing pending
    assert t.apply(services).updated == set()
    assert t.update(a, None)
    assert t.apply(services).updated == {WEB} and services == {}


def test_invalid_update_keeps_the_programmed_service_and_is_reported() -> None:
    seen: list[InvalidObject] = []
    t = ServiceChangeTracker(seen.append)
    services: dict = {}
    good = service("web", "10.96.0.10")
    t.update(None, good)
    t.apply(services)
    bad = service("web", "10.96.0.10")
    bad["spec"]["ports"][0]["port"] = 0
    assert not t.update(good, bad)
    assert t.apply(services).updated == set()
    assert next(iter(services.values())).port == 80
    assert len(seen) == 1 and "web" in str(seen[0]) and WEB in t.invalid
    t.update(bad, good)
    assert WEB not in t.invalid


def test_endpoints_tracker_merges_slices_and_follows_relabelled_slices() -> None:
    t = EndpointsChangeTracker()
    eps: dict = {}
    s1 = endpoint_slice("web", [("10.244.1.2", "n1")], slice_name="web-1")
    s2 = endpoint_slice("web", [("10.244.1.3", "n1"), ("10.244.1.2", "n1")], slice_name="web-2")
    t.update(None, s1)
    t.update(None, s2)
    assert t.apply(eps).updated == {WEB}
    assert [e.ip for e in eps[spn()]] == ["10.244.1.2", "10.244.1.3"]  # deduplicated, ordered
    moved = endpoint_slice("other", [("10.244.1.3", "n1")], slice_name="web-2")
    t.update(s2, moved)
    result = t.apply(eps)
    assert result.updated == {WEB, NamespacedName("default", "other")}
    assert [e.ip for e in eps[spn()]] == ["10.244.1.2"]
    assert [e.ip for e in eps[spn("other")]] == ["10.244.1.3"]


def test_endpoints_tracker_flapping_and_trigger_times() -> None:
    t = EndpointsChangeTracker()
    eps: dict = {}
    s1 = endpoint_slice("web", [("10.244.1.2", "n1")])
    t.update(None, s1)
    t.apply(eps)
    s2 = endpoint_slice("web", [("10.244.1.3", "n1")], trigger_time="2024-01-01T00:00:10Z")
    assert t.update(s1, s2)
    s3 = endpoint_slice("web", [("10.244.1.4", "n1")], trigger_time="2024-01-01T00:00:20Z")
    t.update(s2, s3)
    result = t.apply(eps)
    assert result.trigger_times == {WEB: 1704067210.0}  # the earliest unprogrammed change
    t.update(s3, s2)
    assert not t.update(s2, s3)  # flapped back
    assert t.apply(eps).updated == set()


def ep(ip: str, node: str = "n1", ready: bool = True, serving: bool = True, terminating: bool = False) -> Endpoint:
    return Endpoint(ip, 80, ready, serving, terminating, node)


def _svc(**kw: Any) -> ServicePort:
    obj = service("web", "10.96.0.10", ports=(("", 80, "TCP", 30080),), type="NodePort", **kw)
    return next(iter(parse_service(obj).values()))


def test_selection_ready_then_serving_terminating() -> None:
    svc = _svc()
    eps = [ep("10.0.0.1", ready=False, serving=True, terminating=True), ep("10.0.0.2")]
    assert [e.ip for e in select_endpoints(svc, eps, "n1").cluster] == ["10.0.0.2"]
    eps = [ep("10.0.0.1", ready=False, serving=True, terminating=True),
           ep("10.0.0.3", ready=False, serving=False, terminating=True), ep("10.0.0.4", ready=False, serving=False)]
    sel = select_endpoints(svc, eps, "n1")
    assert [e.ip for e in sel.cluster] == ["10.0.0.1"] and sel.has_any
    assert not select_endpoints(svc, [ep("10.0.0.4", ready=False, serving=False)], "n1").has_any


def test_selection_local_policies() -> None:
    svc = _svc(external_policy="Local")
    eps = [ep("10.0.0.1", "n1", ready=False, serving=True, terminating=True), ep("10.0.0.2", "n2")]
    sel = select_endpoints(svc, eps, "n1")
    # Local falls back to the local terminating endpoint although a remote one is ready.
    assert [e.ip for e in sel.local] == ["10.0.0.1"] and [e.ip for e in sel.cluster] == ["10.0.0.2"]
    assert sel.external(svc) == sel.local and sel.internal(svc) == sel.cluster
    itp = _svc(internal_policy="Local")
    sel = select_endpoints(itp, [ep("10.0.0.2", "n2")], "n1")
    assert sel.internal(itp) == () and sel.has_any
