"""Which conntrack entries to delete after a sync (pure; kube-proxy's stale-UDP cleanup).

UDP has no connection teardown, so a client that keeps its socket keeps hitting
its conntrack entry even after the rules changed:
- an endpoint went away: entries DNATed to it would blackhole until they time out,
  so delete entries to the service's addresses that were NATed to that endpoint;
- a service went from no endpoints to some: earlier packets were rejected/dropped
  un-NATed and their entries would keep bypassing the new DNAT, so delete entries
  to the service's addresses.
TCP needs nothing: a reset or a retransmit timeout ends the flow by itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from netplane.proxy.model import Endpoint, ServicePort, ServicePortName

STALE_PROTOCOLS = ("UDP", "SCTP")


@dataclass(frozen=True, slots=True, order=True)
class ConntrackFilter:
    protocol: str  # lower case, as the conntrack tool takes it
    orig_dst: str | None  # the service address the client sent to; None for NodePorts (any local address)
    orig_dport: int | None
    dst_nat: str | None = None  # only entries NATed to this endpoint IP


# What was (or is now) programmed for one service port: the port and the endpoints traffic can reach.
Programmed = Mapping[ServicePortName, tuple[ServicePort, tuple[Endpoint, ...]]]


def _addresses(svc: ServicePort) -> list[tuple[str | None, int]]:
    out: list[tuple[str | None, int]] = [(ip, svc.port)
                                         for ip in (svc.cluster_ip, *svc.external_ips, *svc.load_balancer_ips)]
    if svc.node_port:
        out.append((None, svc.node_port))
    return out


def plan_cleanup(old: Programmed, new: Programmed) -> list[ConntrackFilter]:
    """The deletions that make UDP clients follow the change from `old` to `new` (sorted, no duplicates)."""
    out: set[ConntrackFilter] = set()
    for spn, (svc, eps) in old.items():
        if svc.protocol not in STALE_PROTOCOLS:
            continue
        now = {e.ip for e in new[spn][1]} if spn in new else set()
        for ep in eps:
            if ep.ip in now:
                continue
            for addr, port in _addresses(svc):
                out.add(ConntrackFilter(svc.protocol.lower(), addr, port, ep.ip))
    for spn, (svc, eps) in new.items():
        if svc.protocol not in STALE_PROTOCOLS or not eps:
            continue
        before = old.get(spn)
        if before is None or not before[1]:
            for addr, port in _addresses(svc):
                out.add(ConntrackFilter(svc.protocol.lower(), addr, port))
        elif before[0] != svc:
            # Addresses added to a live service may have cached rejects too.
            old_addrs = set(_addresses(before[0]))
            for addr, port in _addresses(svc):
                if (addr, port) not in old_addrs:
                    out.add(ConntrackFilter(svc.protocol.lower(), addr, port))
    return sorted(out, key=lambda f: (f.protocol, f.orig_dst or "", f.orig_dport or 0, f.dst_nat or ""))
