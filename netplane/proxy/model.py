"""Typed, immutable views of what the proxy needs from Services and EndpointSlices.

The objects arrive as Kubernetes-shaped dicts (from the informer, a manifest or a
test). Parsing turns them into frozen values once, so everything downstream
(change tracking, endpoint selection, the renderers) compares and hashes plain
data. Only IPv4 is programmed: IPv6 addresses and slices are ignored, as a
single-stack IPv4 kube-proxy would.

Parsing is strict where a bad value would produce a broken rule (an address that
is not an IP, a port out of range) and raises `InvalidObject`; the trackers turn
that into "skip this object and report it", never into a failed sync.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

PROTOCOLS = ("TCP", "UDP", "SCTP")
DEFAULT_AFFINITY_TIMEOUT = 10800  # seconds; the API server's default for ClientIP affinity
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
TRIGGER_TIME_ANNOTATION = "endpoints.kubernetes.io/last-change-trigger-time"


class InvalidObject(ValueError):
    """An object the proxy cannot program; it is skipped and reported."""

    def __init__(self, kind: str, key: str, message: str) -> None:
        super().__init__(f"{kind} {key}: {message}")
        self.kind = kind
        self.key = key


@dataclass(frozen=True, slots=True, order=True)
class NamespacedName:
    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True, slots=True, order=True)
class ServicePortName:
    """One port of one service: the unit every rule set is keyed by (as kube-proxy's)."""

    service: NamespacedName
    port: str  # the port's name; "" for a single unnamed port
    protocol: str

    def __str__(self) -> str:
        base = str(self.service)
        return f"{base}:{self.port}" if self.port else base

    def hash16(self) -> str:
        """16 characters of base32(sha256(name + protocol)), kube-proxy's portProtoHash."""
        return _hash16(str(self) + self.protocol)


def _hash16(text: str) -> str:
    digest = hashlib.sha256(text.encode()).digest()
    # Base32 turns each 5 bytes into 8 characters: the first 16 come from the first 10 bytes
    # alone, and encoding only those is 3x cheaper (it adds up over 100k endpoints).
    return base64.b32encode(digest[:10]).decode()


@dataclass(frozen=True, slots=True)
class ServicePort:
    """Everything the renderers need about one service port."""

    name: ServicePortName
    cluster_ip: str
    port: int
    protocol: str
    node_port: int = 0
    external_ips: tuple[str, ...] = ()
    load_balancer_ips: tuple[str, ...] = ()
    load_balancer_source_ranges: tuple[str, ...] = ()
    affinity_timeout: int = 0  # seconds; 0 = no ClientIP affinity
    external_policy_local: bool = False
    internal_policy_local: bool = False
    health_check_node_port: int = 0

    @property
    def has_external_addresses(self) -> bool:
        return bool(self.node_port or self.external_ips or self.load_balancer_ips)

    @property
    def uses_local_endpoints(self) -> bool:
        # externalTrafficPolicy only matters when the service can be reached from outside.
        return self.internal_policy_local or (self.external_policy_local and self.has_external_addresses)


@dataclass(frozen=True, slots=True, order=True)
class Endpoint:
    """One backend of one service port, with the EndpointSlice conditions that decide its use."""

    ip: str
    port: int
    ready: bool = True
    serving: bool = True
    terminating: bool = False
    node_name: str = ""
    zone: str = ""

    @property
    def address(self) -> str:
        return f"{self.ip}:{self.port}"

    def hash16(self, spn: ServicePortName) -> str:
        return _hash16(str(spn) + spn.protocol + self.address)


@dataclass(frozen=True, slots=True)
class SliceInfo:
    """One EndpointSlice, reduced to endpoints per service port name."""

    service: NamespacedName
    name: str
    # (port name, protocol) -> endpoints for that port, in slice order
    ports: Mapping[tuple[str, str], tuple[Endpoint, ...]] = field(default_factory=dict)
    trigger_time: float | None = None  # seconds since the epoch, from the trigger-time annotation


def _meta(obj: Mapping[str, Any]) -> tuple[str, str]:
    meta = obj.get("metadata") or {}
    return str(meta.get("namespace") or "default"), str(meta.get("name") or "")


def _ipv4(value: Any, kind: str, key: str, what: str) -> str | None:
    """The address if it is IPv4, None if it is IPv6 (ignored), InvalidObject otherwise."""
    try:
        addr = ipaddress.ip_address(str(value))
    except ValueError as e:
        raise InvalidObject(kind, key, f"{what}: {value!r} is not an IP address") from e
    return str(addr) if addr.version == 4 else None


def _port(value: Any, kind: str, key: str, what: str, allow_zero: bool = False) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidObject(kind, key, f"{what}: {value!r} is not a port number")
    if not (0 if allow_zero else 1) <= value <= 65535:
        raise InvalidObject(kind, key, f"{what}: {value} is out of range")
    return value


def _protocol(value: Any, kind: str, key: str) -> str:
    proto = str(value or "TCP")
    if proto not in PROTOCOLS:
        raise InvalidObject(kind, key, f"protocol {proto!r} is not supported")
    return proto


def parse_service(obj: Mapping[str, Any]) -> dict[ServicePortName, ServicePort]:
    """The service's ports that get rules; {} for headless and ExternalName services."""
    namespace, name = _meta(obj)
    key = f"{namespace}/{name}"
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    svc_type = spec.get("type") or "ClusterIP"
    if svc_type == "ExternalName":
        return {}
    cluster_ips = spec.get("clusterIPs") or ([spec["clusterIP"]] if spec.get("clusterIP") else [])
    if not cluster_ips or cluster_ips[0] in ("None", ""):
        return {}  # headless: DNS answers with pod IPs, the proxy does nothing
    cluster_ip = None
    for ip in cluster_ips:
        cluster_ip = _ipv4(ip, "Service", key, "spec.clusterIPs")
        if cluster_ip:
            break
    if cluster_ip is None:
        return {}  # IPv6-only service
    external_ips = tuple(ip for ip in (_ipv4(x, "Service", key, "spec.externalIPs")
                                       for x in spec.get("externalIPs") or []) if ip)
    lb_ips: tuple[str, ...] = ()
    source_ranges: tuple[str, ...] = ()
    if svc_type == "LoadBalancer":
        ingress = (status.get("loadBalancer") or {}).get("ingress") or []
        lb_ips = tuple(ip for ip in (_ipv4(i["ip"], "Service", key, "status.loadBalancer.ingress")
                                     for i in ingress if i.get("ip")) if ip)
        ranges = []
        for cidr in spec.get("loadBalancerSourceRanges") or []:
            try:
                net = ipaddress.ip_network(str(cidr).strip(), strict=False)
            except ValueError as e:
                raise InvalidObject("Service", key,
                                    f"loadBalancerSourceRanges: {cidr!r} is not a CIDR") from e
            if net.version == 4:
                ranges.append(str(net))
        source_ranges = tuple(ranges)
    affinity = 0
    if spec.get("sessionAffinity") == "ClientIP":
        cfg = ((spec.get("sessionAffinityConfig") or {}).get("clientIP") or {})
        affinity = int(cfg.get("timeoutSeconds") or DEFAULT_AFFINITY_TIMEOUT)
        if not 0 < affinity <= 86400:
            raise InvalidObject("Service", key,
                                f"sessionAffinityConfig.clientIP.timeoutSeconds {affinity} is out of range")
    external_local = spec.get("externalTrafficPolicy") == "Local" and svc_type in ("NodePort", "LoadBalancer")
    internal_local = spec.get("internalTrafficPolicy") == "Local"
    hc_port = 0
    if external_local and svc_type == "LoadBalancer":
        hc_port = _port(spec.get("healthCheckNodePort") or 0, "Service", key, "healthCheckNodePort", True)
    ports = spec.get("ports") or []
    out: dict[ServicePortName, ServicePort] = {}
    for p in ports:
        proto = _protocol(p.get("protocol"), "Service", key)
        spn = ServicePortName(NamespacedName(namespace, name), str(p.get("name") or ""), proto)
        if spn in out:
            raise InvalidObject("Service", key, f"duplicate port {spn.port!r}/{proto}")
        node_port = 0
        if svc_type in ("NodePort", "LoadBalancer") and p.get("nodePort"):
            node_port = _port(p["nodePort"], "Service", key, "nodePort")
        out[spn] = ServicePort(
            name=spn,
            cluster_ip=cluster_ip,
            port=_port(p.get("port"), "Service", key, "port"),
            protocol=proto,
            node_port=node_port,
            external_ips=external_ips,
            load_balancer_ips=lb_ips,
            load_balancer_source_ranges=source_ranges,
            affinity_timeout=affinity,
            external_policy_local=external_local,
            internal_policy_local=internal_local,
            health_check_node_port=hc_port,
        )
    return out


def _condition(conditions: Mapping[str, Any], name: str, default: bool) -> bool:
    value = conditions.get(name)
    return default if value is None else bool(value)


def _parse_time(value: Any) -> float | None:
    if not value:
        return None
    from datetime import datetime

    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None  # a bad annotation only costs a latency sample


def parse_endpoint_slice(obj: Mapping[str, Any]) -> SliceInfo | None:
    """The slice's endpoints per port; None for slices the proxy ignores (IPv6, FQDN, no service label)."""
    namespace, name = _meta(obj)
    key = f"{namespace}/{name}"
    meta = obj.get("metadata") or {}
    service = (meta.get("labels") or {}).get(SERVICE_NAME_LABEL)
    if not service or obj.get("addressType", "IPv4") != "IPv4":
        return None
    ports: dict[tuple[str, str], tuple[Endpoint, ...]] = {}
    raw_endpoints = obj.get("endpoints") or []
    for p in obj.get("ports") or []:
        if p.get("port") is None:
            continue  # a port the controller could not resolve: no endpoints for it
        port = _port(p.get("port"), "EndpointSlice", key, "ports[].port")
        proto = _protocol(p.get("protocol"), "EndpointSlice", key)
        eps: list[Endpoint] = []
        for e in raw_endpoints:
            cond = e.get("conditions") or {}
            # The API: a nil ready means ready, a nil serving means "same as ready".
            ready = _condition(cond, "ready", True)
            serving = _condition(cond, "serving", ready)
            terminating = _condition(cond, "terminating", False)
            for addr in e.get("addresses") or []:
                ip = _ipv4(addr, "EndpointSlice", key, "endpoints[].addresses")
                if ip:
                    eps.append(Endpoint(ip, port, ready, serving, terminating,
                                        str(e.get("nodeName") or ""), str(e.get("zone") or "")))
        ports[(str(p.get("name") or ""), proto)] = tuple(eps)
    return SliceInfo(
        service=NamespacedName(namespace, service),
        name=name,
        ports=ports,
        trigger_time=_parse_time((meta.get("annotations") or {}).get(TRIGGER_TIME_ANNOTATION)),
    )


def merge_slices(slices: Mapping[str, SliceInfo]) -> dict[ServicePortName, tuple[Endpoint, ...]]:
    """All endpoints of one service per port, deduplicated by address, in a stable order.

    The same address can appear in two slices for a moment while the controller moves
    it; the first one in slice-name order wins, so the result does not depend on
    event order.
    """
    merged: dict[ServicePortName, dict[str, Endpoint]] = {}
    for slice_name in sorted(slices):
        info = slices[slice_name]
        for (port_name, proto), eps in info.ports.items():
            spn = ServicePortName(info.service, port_name, proto)
            bucket = merged.setdefault(spn, {})
            for ep in eps:
                bucket.setdefault(ep.address, ep)
    return {
        spn: tuple(sorted(bucket.values(), key=lambda e: (ipaddress.IPv4Address(e.ip), e.port)))
        for spn, bucket in merged.items()
    }
