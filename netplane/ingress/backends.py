"""Where a backend's traffic goes: a Service port turned into nginx upstream servers (pure).

Two modes, chosen per controller (``--upstream``):

* ``service`` (default): the Service's ClusterIP and port. The service proxy balances over the
  endpoints, so endpoint churn changes nothing here and needs no nginx reload. A headless Service
  (no ClusterIP) falls back to its endpoints.
* ``endpoints``: the ready endpoint addresses and the resolved target port, from the Service's
  EndpointSlices; nginx balances over them (round robin) and reloads when they change.

A backend that cannot be resolved (no such Service or port, an ExternalName Service, no ready
endpoint) is not an error of the Ingress: the location answers 503 until it resolves, as
ingress-nginx does.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from netplane.ingress.model import ServiceRef

Obj = dict[str, Any]
MODES = ("service", "endpoints")
SERVICE_NAME_LABEL = "kubernetes.io/service-name"


@dataclass(frozen=True, slots=True)
class Resolved:
    servers: tuple[str, ...] = ()  # "ip:port" / "[ip6]:port", sorted
    reason: str = ""  # why there are no servers

    @property
    def ok(self) -> bool:
        return bool(self.servers)


def upstream_name(ref: ServiceRef) -> str:
    """A stable nginx upstream name: namespace and name are DNS labels, so dots separate them safely."""
    return f"np.{ref.namespace}.{ref.name}.{ref.port}"


def _hostport(addr: str, port: int) -> str:
    return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"


def _service_port(svc: Obj, port: int | str) -> Obj | None:
    for sp in (svc.get("spec") or {}).get("ports") or []:
        if (sp.get("protocol") or "TCP") != "TCP":
            continue
        if (isinstance(port, int) and sp.get("port") == port) or (isinstance(port, str) and sp.get("name") == port):
            return dict(sp)
    return None


def _endpoint_servers(slices: Iterable[Obj], port_name: str) -> tuple[str, ...]:
    out: set[str] = set()
    for sl in slices:
        number = next((p.get("port") for p in sl.get("ports") or []
                       if (p.get("name") or "") == port_name and (p.get("protocol") or "TCP") == "TCP"), None)
        if not isinstance(number, int):
            continue
        for ep in sl.get("endpoints") or []:
            if (ep.get("conditions") or {}).get("ready") is False:
                continue
            for addr in ep.get("addresses") or []:
                out.add(_hostport(str(addr), number))
    return tuple(sorted(out))


def resolve(ref: ServiceRef, services: Mapping[tuple[str, str], Obj],
            slices: Mapping[tuple[str, str], list[Obj]], mode: str = "service") -> Resolved:
    """The upstream servers for one backend, or the reason there are none."""
    svc = services.get((ref.namespace, ref.name))
    if svc is None:
        return Resolved(reason=f"service {ref.namespace}/{ref.name} not found")
    spec = svc.get("spec") or {}
    if spec.get("type") == "ExternalName":
        return Resolved(reason=f"service {ref.namespace}/{ref.name} is ExternalName (not supported)")
    sp = _service_port(svc, ref.port)
    if sp is None:
        return Resolved(reason=f"service {ref.namespace}/{ref.name} has no TCP port {ref.port}")
    cluster_ip = str(spec.get("clusterIP") or "")
    if mode == "service" and cluster_ip and cluster_ip != "None":
        return Resolved((_hostport(cluster_ip, int(sp["port"])),))
    servers = _endpoint_servers(slices.get((ref.namespace, ref.name), []), str(sp.get("name") or ""))
    if not servers:
        return Resolved(reason=f"service {ref.namespace}/{ref.name} has no ready endpoints")
    return Resolved(servers)


def slices_by_service(slices: Iterable[Obj]) -> dict[tuple[str, str], list[Obj]]:
    out: dict[tuple[str, str], list[Obj]] = {}
    for sl in slices:
        meta = sl.get("metadata") or {}
        svc = (meta.get("labels") or {}).get(SERVICE_NAME_LABEL)
        if svc:
            out.setdefault((str(meta.get("namespace") or ""), str(svc)), []).append(sl)
    return out
