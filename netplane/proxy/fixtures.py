"""Builders of Kubernetes-shaped Service and EndpointSlice dicts.

For tests, benchmarks and demos: they produce exactly what the API returns (the
shape a user's YAML has after defaulting), so code under test sees real objects.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

PortSpec = tuple[str, int, str] | tuple[str, int, str, int]  # (name, port, protocol[, nodePort])


def service(
    name: str,
    cluster_ip: str,
    ports: Sequence[PortSpec] = (("", 80, "TCP"),),
    namespace: str = "default",
    type: str = "ClusterIP",
    external_ips: Iterable[str] = (),
    lb_ips: Iterable[str] = (),
    source_ranges: Iterable[str] = (),
    affinity_timeout: int = 0,
    external_policy: str = "Cluster",
    internal_policy: str = "Cluster",
    health_check_node_port: int = 0,
    target_port: int | str | None = None,
) -> dict[str, Any]:
    spec_ports = []
    for p in ports:
        entry: dict[str, Any] = {"port": p[1], "protocol": p[2],
                                 "targetPort": target_port if target_port is not None else p[1]}
        if p[0]:
            entry["name"] = p[0]
        if len(p) > 3:
            entry["nodePort"] = p[3]
        spec_ports.append(entry)
    spec: dict[str, Any] = {
        "type": type,
        "clusterIP": cluster_ip,
        "clusterIPs": [cluster_ip],
        "ports": spec_ports,
        "sessionAffinity": "ClientIP" if affinity_timeout else "None",
        "internalTrafficPolicy": internal_policy,
    }
    if affinity_timeout:
        spec["sessionAffinityConfig"] = {"clientIP": {"timeoutSeconds": affinity_timeout}}
    if type in ("NodePort", "LoadBalancer"):
        spec["externalTrafficPolicy"] = external_policy
    if external_ips:
        spec["externalIPs"] = list(external_ips)
    if source_ranges:
        spec["loadBalancerSourceRanges"] = list(source_ranges)
    if health_check_node_port:
        spec["healthCheckNodePort"] = health_check_node_port
    status: dict[str, Any] = {"loadBalancer": {}}
    if lb_ips:
        status["loadBalancer"] = {"ingress": [{"ip": ip} for ip in lb_ips]}
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
        "status": status,
    }


EndpointSpec = tuple[str, str] | tuple[str, str, bool] | tuple[str, str, bool, bool, bool]
# (ip, nodeName[, ready[, serving, terminating]])


def endpoint_slice(
    service_name: str,
    endpoints: Sequence[EndpointSpec],
    ports: Sequence[tuple[str, int, str]] = (("", 80, "TCP"),),
    namespace: str = "default",
    slice_name: str | None = None,
    trigger_time: str | None = None,
) -> dict[str, Any]:
    eps = []
    for e in endpoints:
        ready = e[2] if len(e) > 2 else True
        serving = e[3] if len(e) > 3 else ready
        terminating = e[4] if len(e) > 4 else False
        eps.append({
            "addresses": [e[0]],
            "conditions": {"ready": ready, "serving": serving, "terminating": terminating},
            "nodeName": e[1],
        })
    meta: dict[str, Any] = {
        "name": slice_name or f"{service_name}-abcde",
        "namespace": namespace,
        "labels": {"kubernetes.io/service-name": service_name},
    }
    if trigger_time:
        meta["annotations"] = {"endpoints.kubernetes.io/last-change-trigger-time": trigger_time}
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": meta,
        "addressType": "IPv4",
        "endpoints": eps,
        "ports": [{"name": n, "port": p, "protocol": proto} for n, p, proto in ports],
    }
