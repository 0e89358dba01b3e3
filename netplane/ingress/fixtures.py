"""Builders for Kubernetes-shaped Ingress, Service, EndpointSlice and Secret objects (tests, benchmarks, demo)."""

from __future__ import annotations

import base64
from typing import Any

Obj = dict[str, Any]


def path(p: str | None, service: str, port: int | str = 80, kind: str = "Prefix") -> Obj:
    port_ref: Obj = {"number": port} if isinstance(port, int) else {"name": port}
    out: Obj = {"pathType": kind, "backend": {"service": {"name": service, "port": port_ref}}}
    if p is not None:
        out["path"] = p
    return out


def rule(host: str | None, *paths: Obj) -> Obj:
    out: Obj = {"http": {"paths": list(paths)}}
    if host:
        out["host"] = host
    return out


def ingress(name: str, *rules: Obj, namespace: str = "default", default: tuple[str, int | str] | None = None,
            tls: list[tuple[list[str], str]] | None = None, annotations: dict[str, str] | None = None,
            class_name: str | None = "netplane", created: str | None = None) -> Obj:
    spec: Obj = {}
    if class_name:
        spec["ingressClassName"] = class_name
    if default is not None:
        svc, port = default
        spec["defaultBackend"] = {"service": {"name": svc, "port": {"number": port} if isinstance(port, int)
                                              else {"name": port}}}
    if rules:
        spec["rules"] = list(rules)
    if tls:
        spec["tls"] = [{"hosts": hosts, "secretName": secret} if hosts else {"secretName": secret}
                       for hosts, secret in tls]
    meta: Obj = {"name": name, "namespace": namespace}
    if annotations:
        meta["annotations"] = dict(annotations)
    if created:
        meta["creationTimestamp"] = created
    return {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": meta, "spec": spec}


def service(name: str, ports: list[tuple[str, int, int]], namespace: str = "default", cluster_ip: str | None = None,
            selector: dict[str, str] | None = None) -> Obj:
    """ports: (name, port, targetPort)."""
    spec: Obj = {"ports": [{"name": n, "port": p, "targetPort": t, "protocol": "TCP"} if n else
                           {"port": p, "targetPort": t, "protocol": "TCP"} for n, p, t in ports]}
    if cluster_ip:
        spec["clusterIP"] = cluster_ip
    if selector:
        spec["selector"] = selector
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": namespace}, "spec": spec}


def endpoint_slice(service_name: str, addresses: list[str], ports: list[tuple[str, int]], namespace: str = "default",
                   name: str | None = None, ready: bool = True) -> Obj:
    """ports: (name, port) as the slice carries them (the resolved targetPort)."""
    return {
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
        "metadata": {"name": name or f"{service_name}-manual", "namespace": namespace,
                     "labels": {"kubernetes.io/service-name": service_name}},
        "endpoints": [{"addresses": [a], "conditions": {"ready": ready}} for a in addresses],
        "ports": [{"name": n, "port": p, "protocol": "TCP"} for n, p in ports],
    }


def tls_secret(name: str, cert_pem: bytes, key_pem: bytes, namespace: str = "default") -> Obj:
    return {"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
            "metadata": {"name": name, "namespace": namespace},
            "data": {"tls.crt": base64.b64encode(cert_pem).decode(), "tls.key": base64.b64encode(key_pem).decode()}}


def ingress_class(name: str = "netplane", default: bool = False,
                  controller: str = "netplane.io/ingress-nginx") -> Obj:
    meta: Obj = {"name": name}
    if default:
        meta["annotations"] = {"ingressclass.kubernetes.io/is-default-class": "true"}
    return {"apiVersion": "networking.k8s.io/v1", "kind": "IngressClass", "metadata": meta,
            "spec": {"controller": controller}}
