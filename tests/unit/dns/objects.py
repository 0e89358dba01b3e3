"""Builders for the Kubernetes objects the DNS tests feed the model."""

from __future__ import annotations

from typing import Any


def service(name: str, namespace: str = "default", cluster_ip: str | None = "10.96.0.20",
            ports: list[dict[str, Any]] | None = None, **spec: Any) -> dict[str, Any]:
    s: dict[str, Any] = {"apiVersion": "v1", "kind": "Service",
                         "metadata": {"name": name, "namespace": namespace, "resourceVersion": "1"},
                         "spec": {"ports": ports if ports is not None else
                                  [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}], **spec}}
    if cluster_ip is not None:
        s["spec"]["clusterIP"] = cluster_ip
        if cluster_ip != "None":
            s["spec"]["clusterIPs"] = [cluster_ip]
    return s


def headless(name: str, namespace: str = "default", **spec: Any) -> dict[str, Any]:
    return service(name, namespace, "None", **spec)


def external(name: str, target: str, namespace: str = "default") -> dict[str, Any]:
    return service(name, namespace, None, ports=[], type="ExternalName", externalName=target)


def endpoint(ip: str, ready: bool | None = True, hostname: str | None = None) -> dict[str, Any]:
    ep: dict[str, Any] = {"addresses": [ip]}
    if ready is not None:
        ep["conditions"] = {"ready": ready}
    if hostname:
        ep["hostname"] = hostname
    return ep


def endpoint_slice(service_name: str, endpoints: list[dict[str, Any]], namespace: str = "default",
                   name: str | None = None, ports: list[dict[str, Any]] | None = None,
                   address_type: str = "IPv4") -> dict[str, Any]:
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": address_type,
            "metadata": {"name": name or f"{service_name}-abcde", "namespace": namespace,
                         "labels": {"kubernetes.io/service-name": service_name}, "resourceVersion": "1"},
            "endpoints": endpoints,
            "ports": ports if ports is not None else [{"name": "http", "port": 8080, "protocol": "TCP"}]}


def pod(name: str, ip: str | None, namespace: str = "default", phase: str = "Running") -> dict[str, Any]:
    status: dict[str, Any] = {"phase": phase}
    if ip:
        status["podIP"] = ip
        status["podIPs"] = [{"ip": ip}]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": namespace},
            "spec": {"containers": [{"name": "c", "image": "busybox"}]}, "status": status}
