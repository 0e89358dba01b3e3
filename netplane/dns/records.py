"""The cluster zone's records from Kubernetes objects, after the Kubernetes DNS-Based Service
Discovery specification (schema 1.1.0). Pure functions over plain JSON objects.

Names are stored lowercase, without the trailing dot (``web.default.svc.cluster.local``).

- ClusterIP service: ``<svc>.<ns>.svc.<zone>`` A/AAAA for each cluster IP; for each named port
  ``_<port>._<proto>.<svc>.<ns>.svc.<zone>`` SRV ``0 100 <port> <svc>.<ns>.svc.<zone>``; a PTR for each
  cluster IP.
- Headless service (clusterIP ``None``): A/AAAA per ready endpoint address; ``<host>.<svc>.<ns>.svc.<zone>``
  per ready endpoint, where ``<host>`` is the endpoint's hostname or, without one, its address
  with dashes (``10-244-1-5``, CoreDNS's stable name); SRV per ready endpoint and named slice port,
  pointing at that per-endpoint name, with the endpoint's port and weights sharing 100; PTR per ready
  address to the per-endpoint name. No ready endpoints: no records, so the name is NXDOMAIN.
- ExternalName service: a CNAME to ``spec.externalName``.
- Pods: ``<a-b-c-d>.<ns>.pod.<zone>`` A (``<ipv6-with-dashes>`` AAAA) only for addresses of pods that
  exist in that namespace and are not finished: CoreDNS's ``pods verified`` mode. kubeadm's default
  Corefile says ``pods insecure`` (any well-formed address answers); we answer only what the pod
  cache proves, so a name never vouches for an address no pod holds.

An endpoint is ready when its ``ready`` condition is true or absent (the API's "unknown means
ready"), or when the service sets ``publishNotReadyAddresses``.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

# Record types (RFC 1035, 2782, 3596) used by the cluster zone.
A, NS, CNAME, SOA, PTR, TXT, AAAA, SRV = 1, 2, 5, 6, 12, 16, 28, 33
SCHEMA_VERSION = "1.1.0"
PROTOCOL_LABELS = {"TCP": "_tcp", "UDP": "_udp", "SCTP": "_sctp"}

Obj = Mapping[str, Any]
SrvData = tuple[int, int, int, str]  # priority, weight, port, target


@dataclass(frozen=True, slots=True)
class RR:
    """One record: owner name (lowercase, no trailing dot), type and data (an address, a target name,
    a TXT string, SRV's (priority, weight, port, target) or SOA's seven fields)."""

    name: str
    rtype: int
    data: str | tuple[Any, ...]


Contribution = dict[str, tuple[RR, ...]]


def normalize(name: str) -> str:
    return name.strip().rstrip(".").lower()


def address_rtype(ip: str) -> int:
    return AAAA if ":" in ip else A


def reverse_name(ip: str) -> str:
    """'10.96.0.10' -> '10.0.96.10.in-addr.arpa' (and the nibble form for IPv6)."""
    return ipaddress.ip_address(ip).reverse_pointer


def dashed(ip: str) -> str:
    """The address as one DNS label: '10.244.1.5' -> '10-244-1-5', '2001:db8::1' -> '2001-db8--1'."""
    return str(ipaddress.ip_address(ip)).replace(".", "-").replace(":", "-")


def service_domain(name: str, namespace: str, zone: str) -> str:
    return f"{name}.{namespace}.svc.{zone}".lower()


def _valid_ips(ips: Iterable[Any]) -> list[str]:
    out: list[str] = []
    for ip in ips:
        try:
            text = str(ipaddress.ip_address(str(ip)))
        except ValueError:
            continue
        if text not in out:
            out.append(text)
    return out


def _add(out: dict[str, list[RR]], rr: RR) -> None:
    rrs = out.setdefault(rr.name, [])
    if rr not in rrs:
        rrs.append(rr)


def _freeze(out: dict[str, list[RR]]) -> Contribution:
    return {name: tuple(rrs) for name, rrs in out.items()}


def _port_label(name: Any, protocol: Any) -> str | None:
    """'_http._tcp' for a named port, None for an unnamed one or an unknown protocol."""
    if not name:
        return None
    proto = PROTOCOL_LABELS.get(str(protocol or "TCP").upper())
    return f"_{str(name).lower()}.{proto}" if proto else None


def endpoint_ready(endpoint: Obj, publish_not_ready: bool) -> bool:
    if publish_not_ready:
        return True
    ready = (endpoint.get("conditions") or {}).get("ready")
    return ready is None or ready is True


def service_records(service: Obj, slices: Iterable[Obj], zone: str) -> Contribution:
    """Every record one Service contributes (with its EndpointSlices for headless services)."""
    meta = service.get("metadata") or {}
    spec = service.get("spec") or {}
    name, namespace = str(meta.get("name") or ""), str(meta.get("namespace") or "default")
    if not name:
        return {}
    domain = service_domain(name, namespace, zone)
    out: dict[str, list[RR]] = {}
    if spec.get("type") == "ExternalName":
        target = normalize(str(spec.get("externalName") or ""))
        if target:
            _add(out, RR(domain, CNAME, target))
        return _freeze(out)
    cluster_ip = spec.get("clusterIP")
    if cluster_ip == "None":
        return _headless_records(service, slices, domain)
    ips = _valid_ips(spec.get("clusterIPs") or ([cluster_ip] if cluster_ip else []))
    if not ips:
        return {}  # no address allocated yet
    for ip in ips:
        _add(out, RR(domain, address_rtype(ip), ip))
        _add(out, RR(reverse_name(ip), PTR, domain))
    for port in spec.get("ports") or []:
        label = _port_label(port.get("name"), port.get("protocol"))
        number = port.get("port")
        if label and isinstance(number, int):
            _add(out, RR(f"{label}.{domain}", SRV, (0, 100, number, domain)))
    return _freeze(out)


def _headless_records(service: Obj, slices: Iterable[Obj], domain: str) -> Contribution:
    publish_not_ready = bool((service.get("spec") or {}).get("publishNotReadyAddresses"))
    # host label -> addresses; (port label -> {(host label, port)}); one address may appear in several
    # slices (dual-stack, migrations): dedupe.
    hosts: dict[str, list[str]] = {}
    srv: dict[str, set[tuple[str, int]]] = {}
    for slc in slices:
        if slc.get("addressType") not in ("IPv4", "IPv6"):
            continue  # FQDN slices carry no addresses to publish
        ports = [(lbl, p["port"]) for p in slc.get("ports") or []
                 if (lbl := _port_label(p.get("name"), p.get("protocol"))) and isinstance(p.get("port"), int)]
        for ep in slc.get("endpoints") or []:
            if not endpoint_ready(ep, publish_not_ready):
                continue
            hostname = normalize(str(ep.get("hostname") or ""))
            for ip in _valid_ips(ep.get("addresses") or []):
                host = hostname or dashed(ip)
                addrs = hosts.setdefault(host, [])
                if ip not in addrs:
                    addrs.append(ip)
                for lbl, number in ports:
                    srv.setdefault(lbl, set()).add((host, number))
    out: dict[str, list[RR]] = {}
    for host in sorted(hosts):
        for ip in sorted(hosts[host], key=ipaddress.ip_address):
            _add(out, RR(domain, address_rtype(ip), ip))
            _add(out, RR(f"{host}.{domain}", address_rtype(ip), ip))
            _add(out, RR(reverse_name(ip), PTR, f"{host}.{domain}"))
    for lbl in sorted(srv):
        targets = sorted(srv[lbl])
        weight = max(1, 100 // len(targets))  # each endpoint's share of 100
        for host, number in targets:
            _add(out, RR(f"{lbl}.{domain}", SRV, (0, weight, number, f"{host}.{domain}")))
    return _freeze(out)


def pod_records(pod: Obj, zone: str) -> Contribution:
    meta = pod.get("metadata") or {}
    status = pod.get("status") or {}
    if status.get("phase") in ("Succeeded", "Failed"):
        return {}
    namespace = str(meta.get("namespace") or "default").lower()
    ips = _valid_ips([p.get("ip") for p in status.get("podIPs") or [] if isinstance(p, Mapping)]
                     or ([status["podIP"]] if status.get("podIP") else []))
    out: dict[str, list[RR]] = {}
    for ip in ips:
        _add(out, RR(f"{dashed(ip)}.{namespace}.pod.{zone}".lower(), address_rtype(ip), ip))
    return _freeze(out)


def zone_apex_records(zone: str) -> Contribution:
    """What the zone's apex and fixed names hold besides the SOA (which the resolver builds)."""
    return {zone: (RR(zone, NS, f"ns.dns.{zone}"),),
            f"dns-version.{zone}": (RR(f"dns-version.{zone}", TXT, SCHEMA_VERSION),)}
