"""Which endpoints a service port's traffic may reach, from this node (kube-proxy's CategorizeEndpoints).

Rules, in order:
- Ready endpoints are used. Only when none is ready are endpoints that are
  serving *and* terminating used (graceful termination keeps a service alive
  during a rolling update instead of refusing connections).
- Traffic policy Local restricts that choice to endpoints on this node, with the
  same ready-then-terminating fallback applied among the local ones only.
- internalTrafficPolicy Local governs traffic to the ClusterIP; externalTrafficPolicy
  Local governs NodePort, externalIPs and load-balancer IPs.
- `has_any` says whether the service has any usable endpoint anywhere: without
  one every address of the service rejects; with some but none local, Local
  traffic is dropped instead (the client should try another node).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from netplane.proxy.model import Endpoint, ServicePort


@dataclass(frozen=True, slots=True)
class Selection:
    cluster: tuple[Endpoint, ...]  # targets for traffic under policy Cluster
    local: tuple[Endpoint, ...]  # targets for traffic under policy Local
    has_any: bool

    def internal(self, svc: ServicePort) -> tuple[Endpoint, ...]:
        return self.local if svc.internal_policy_local else self.cluster

    def external(self, svc: ServicePort) -> tuple[Endpoint, ...]:
        return self.local if svc.external_policy_local else self.cluster

    def policy_chains(self, svc: ServicePort) -> tuple[bool, bool]:
        """(cluster, local): which policy chains the service port needs. As kube-proxy: a policy
        chain exists only when its policy is in use (internally, or externally when the service has
        external addresses) and it has endpoints. Shared by every rule-based backend."""
        ext = svc.has_external_addresses
        uses_cluster = bool(self.cluster) and (
            not svc.internal_policy_local or (ext and not svc.external_policy_local))
        uses_local = bool(self.local) and (svc.internal_policy_local or (ext and svc.external_policy_local))
        return uses_cluster, uses_local

    @property
    def all_used(self) -> tuple[Endpoint, ...]:
        seen = dict.fromkeys(self.cluster)
        seen.update(dict.fromkeys(self.local))
        return tuple(seen)


def _usable(endpoints: Iterable[Endpoint]) -> tuple[Endpoint, ...]:
    eps = tuple(endpoints)
    ready = tuple(e for e in eps if e.ready)
    if ready:
        return ready
    return tuple(e for e in eps if e.serving and e.terminating)


def select_endpoints(svc: ServicePort, endpoints: Iterable[Endpoint], node_name: str) -> Selection:
    eps = tuple(endpoints)
    cluster = _usable(eps)
    local: tuple[Endpoint, ...] = ()
    if svc.uses_local_endpoints:
        local = _usable(e for e in eps if e.node_name == node_name)
    # Cluster endpoints are computed even under Local policies: has_any depends on
    # them, and a service that is Local for one direction is Cluster for the other.
    return Selection(cluster=cluster, local=local, has_any=bool(cluster))
