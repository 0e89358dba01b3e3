"""One set of services covering every semantic of the proxy issue, shared by the golden and tracer tests."""

from __future__ import annotations

from typing import Any

from netplane.proxy.changes import EndpointsChangeTracker, ServiceChangeTracker
from netplane.proxy.fixtures import endpoint_slice, service
from netplane.proxy.state import ProxyConfig, ProxyState

NODE = "n1"
NODE_IP = "192.168.0.1"
CONFIG = ProxyConfig(node_name=NODE, cluster_cidr="10.244.0.0/16", node_ips=(NODE_IP,))

WEB_PORTS = (("http", 8080, "TCP"), ("dns", 5353, "UDP"))


def objects() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    services = [
        service("web", "10.96.0.10", ports=(("http", 80, "TCP"), ("dns", 53, "UDP"))),
        service("np", "10.96.0.20", ports=(("", 80, "TCP", 30080),), type="NodePort"),
        service("np-local", "10.96.0.21", ports=(("", 80, "TCP", 30081),), type="NodePort",
                external_policy="Local"),
        service("np-local-none", "10.96.0.22", ports=(("", 80, "TCP", 30082),), type="NodePort",
                external_policy="Local"),
        service("lb", "10.96.0.30", ports=(("", 443, "TCP", 30443),), type="LoadBalancer",
                lb_ips=["203.0.113.10"], source_ranges=["198.51.100.0/24"]),
        service("ext", "10.96.0.40", external_ips=["192.0.2.40"]),
        service("aff", "10.96.0.50", affinity_timeout=600),
        service("itp", "10.96.0.60", internal_policy="Local"),
        service("itp-none", "10.96.0.61", internal_policy="Local"),
        service("empty", "10.96.0.70", ports=(("", 80, "TCP", 30070),), type="NodePort",
                external_ips=["192.0.2.70"]),
        service("term", "10.96.0.80"),
        service("term-ready", "10.96.0.81"),
        service("headless", "None"),
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "extname", "namespace": "default"},
         "spec": {"type": "ExternalName", "externalName": "example.com"}},
        service("sctp", "10.96.0.90", ports=(("", 9999, "SCTP"),)),
        service("lb-local", "10.96.0.31", ports=(("", 443, "TCP", 30444),), type="LoadBalancer",
                lb_ips=["203.0.113.11"], external_policy="Local", health_check_node_port=32100),
    ]
    slices = [
        endpoint_slice("web", [("10.244.1.2", NODE), ("10.244.1.3", NODE), ("10.244.2.2", "n2"),
                               ("10.244.2.3", "n2", False)], ports=WEB_PORTS),
        endpoint_slice("np", [("10.244.1.10", NODE), ("10.244.2.10", "n2")]),
        endpoint_slice("np-local", [("10.244.1.11", NODE), ("10.244.2.11", "n2")]),
        endpoint_slice("np-local-none", [("10.244.2.12", "n2")]),
        endpoint_slice("lb", [("10.244.1.30", NODE)], ports=(("", 8443, "TCP"),)),
        endpoint_slice("ext", [("10.244.2.40", "n2")]),
        endpoint_slice("aff", [("10.244.1.50", NODE), ("10.244.2.50", "n2")]),
        endpoint_slice("itp", [("10.244.1.60", NODE), ("10.244.2.60", "n2")]),
        endpoint_slice("itp-none", [("10.244.2.61", "n2")]),
        endpoint_slice("term", [("10.244.1.80", NODE, False, True, True), ("10.244.2.80", "n2", False, False, True)]),
        endpoint_slice("term-ready", [("10.244.1.81", NODE), ("10.244.1.82", NODE, False, True, True)]),
        endpoint_slice("headless", [("10.244.1.99", NODE)]),
        endpoint_slice("sctp", [("10.244.1.90", NODE)], ports=(("", 9999, "SCTP"),)),
        endpoint_slice("lb-local", [("10.244.1.31", NODE), ("10.244.2.31", "n2")], ports=(("", 8443, "TCP"),)),
    ]
    return services, slices


def build_state(config: ProxyConfig = CONFIG) -> ProxyState:
    state = ProxyState(config)
    svc, eps = ServiceChangeTracker(), EndpointsChangeTracker()
    services, slices = objects()
    for s in services:
        svc.update(None, s)
    for e in slices:
        eps.update(None, e)
    svc.apply(state.services)
    eps.apply(state.endpoints)
    return state


# (id, src, dst, port, protocol, origin, remembered, expected endpoints {ep: share} or verdict, masquerade)
H = 0.5
CASES: list[tuple[str, str, str, int, str, str, tuple[str, ...], Any, bool | None]] = [
    ("clusterip tcp spread over ready endpoints", "10.244.1.7", "10.96.0.10", 80, "TCP", "external", (),
     {"10.244.1.2:8080": 1 / 3, "10.244.1.3:8080": 1 / 3, "10.244.2.2:8080": 1 / 3}, False),
    ("clusterip udp, named port resolved per slice", "10.244.1.7", "10.96.0.10", 53, "UDP", "external", (),
     {"10.244.1.2:5353": 1 / 3, "10.244.1.3:5353": 1 / 3, "10.244.2.2:5353": 1 / 3}, False),
    ("wrong protocol does not match", "10.244.1.7", "10.96.0.10", 80, "UDP", "external", (), "accept", None),
    ("off-cluster source to clusterip is masqueraded", "172.16.0.5", "10.96.0.10", 80, "TCP", "external", (),
     {"10.244.1.2:8080": 1 / 3, "10.244.1.3:8080": 1 / 3, "10.244.2.2:8080": 1 / 3}, True),
    ("node itself to clusterip is masqueraded", NODE_IP, "10.96.0.10", 80, "TCP", "local", (),
     {"10.244.1.2:8080": 1 / 3, "10.244.1.3:8080": 1 / 3, "10.244.2.2:8080": 1 / 3}, True),
    ("nodeport from outside, policy Cluster, masqueraded", "172.16.0.5", NODE_IP, 30080, "TCP", "external", (),
     {"10.244.1.10:80": H, "10.244.2.10:80": H}, True),
    ("nodeport on loopback is not served", "127.0.0.1", "127.0.0.1", 30080, "TCP", "local", (), "accept", None),
    ("nodeport policy Local: local endpoint only, source kept", "172.16.0.5", NODE_IP, 30081, "TCP", "external",
     (), {"10.244.1.11:80": 1.0}, False),
    ("nodeport policy Local from a pod: any endpoint", "10.244.1.7", NODE_IP, 30081, "TCP", "external", (),
     {"10.244.1.11:80": H, "10.244.2.11:80": H}, False),
    ("nodeport policy Local from the node: any endpoint, masqueraded", NODE_IP, NODE_IP, 30081, "TCP", "local",
     (), {"10.244.1.11:80": H, "10.244.2.11:80": H}, True),
    ("nodeport policy Local without local endpoints drops", "172.16.0.5", NODE_IP, 30082, "TCP", "external",
     (), "drop", None),
    ("its cluster IP still works", "10.244.1.7", "10.96.0.22", 80, "TCP", "external", (),
     {"10.244.2.12:80": 1.0}, False),
    ("lb ip from an allowed source", "198.51.100.7", "203.0.113.10", 443, "TCP", "external", (),
     {"10.244.1.30:8443": 1.0}, True),
    ("lb ip from a source outside the ranges drops", "172.16.0.5", "203.0.113.10", 443, "TCP", "external", (),
     "drop", None),
    ("lb nodeport ignores source ranges", "172.16.0.5", NODE_IP, 30443, "TCP", "external", (),
     {"10.244.1.30:8443": 1.0}, True),
    ("lb policy Local keeps the source", "172.16.0.5", "203.0.113.11", 443, "TCP", "external", (),
     {"10.244.1.31:8443": 1.0}, False),
    ("external ip", "172.16.0.5", "192.0.2.40", 80, "TCP", "external", (), {"10.244.2.40:80": 1.0}, True),
    ("affinity: a remembered client goes to its endpoint", "10.244.1.7", "10.96.0.50", 80, "TCP", "external",
     ("10.244.2.50:80",), {"10.244.2.50:80": 1.0}, False),
    ("affinity: a new client is spread", "10.244.1.7", "10.96.0.50", 80, "TCP", "external", (),
     {"10.244.1.50:80": H, "10.244.2.50:80": H}, False),
    ("internalTrafficPolicy Local: local endpoint only", "10.244.1.7", "10.96.0.60", 80, "TCP", "external", (),
     {"10.244.1.60:80": 1.0}, False),
    ("internalTrafficPolicy Local without local endpoints drops", "10.244.1.7", "10.96.0.61", 80, "TCP",
     "external", (), "drop", None),
    ("no endpoints: clusterip rejects", "10.244.1.7", "10.96.0.70", 80, "TCP", "external", (), "reject", None),
    ("no endpoints: from the node rejects", NODE_IP, "10.96.0.70", 80, "TCP", "local", (), "reject", None),
    ("no endpoints: nodeport rejects", "172.16.0.5", NODE_IP, 30070, "TCP", "external", (), "reject", None),
    ("no endpoints: external ip rejects", "172.16.0.5", "192.0.2.70", 80, "TCP", "external", (), "reject", None),
    ("terminating endpoints used when none is ready", "10.244.1.7", "10.96.0.80", 80, "TCP", "external", (),
     {"10.244.1.80:80": 1.0}, False),
    ("terminating endpoints unused while one is ready", "10.244.1.7", "10.96.0.81", 80, "TCP", "external", (),
     {"10.244.1.81:80": 1.0}, False),
    ("hairpin: an endpoint reaching itself is masqueraded", "10.244.1.81", "10.96.0.81", 80, "TCP", "external",
     (), {"10.244.1.81:80": 1.0}, True),
    ("sctp", "10.244.1.7", "10.96.0.90", 9999, "SCTP", "external", (), {"10.244.1.90:9999": 1.0}, False),
    ("unrelated traffic is untouched", "10.244.1.7", "10.244.2.2", 8080, "TCP", "external", (), "accept", None),
]
