"""Pod-CIDR routes of the node agent, over netlink: read ours, converge to a desired set.

The agent marks every route it installs with its own routing protocol number
(``PROTO_NETPLANE``, shown by ``ip route`` as ``proto 77``), so a whole-state
sync can tell its routes from the kernel's, the CNI plugin's and an operator's:
only routes carrying that mark are ever replaced or deleted here. Restarting the
agent re-reads the marked routes and changes nothing that is already right.

Works in the namespace the calling thread is in (the agent runs inside its
node's netns), or in the one at ``netns_path``. pyroute2's synchronous API runs
its own event loop, so callers in asyncio code use it from a worker thread.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

PROTO_NETPLANE = 77
RT_TABLE_MAIN = 254
RTNH_F_ONLINK = 4
RT_SCOPE_LINK = 253


@dataclass(frozen=True, slots=True, order=True)
class Route:
    """One IPv4/IPv6 route: to ``dst`` via ``gateway`` (None: directly on ``dev``), ``onlink`` for overlays."""

    dst: str
    gateway: str | None = None
    dev: str | None = None
    onlink: bool = False

    def __post_init__(self) -> None:
        # Canonical text, so routes read back from the kernel compare equal to computed ones.
        object.__setattr__(self, "dst", str(ipaddress.ip_network(self.dst, strict=True)))
        if self.gateway is not None:
            object.__setattr__(self, "gateway", str(ipaddress.ip_address(self.gateway)))


@dataclass(frozen=True, slots=True)
class RouteChanges:
    added: tuple[Route, ...] = ()
    removed: tuple[Route, ...] = ()

    @property
    def empty(self) -> bool:
        return not self.added and not self.removed


class RouteKernel(Protocol):
    """What route sync needs from the kernel; `NetlinkRoutes` is the real one, tests use a fake."""

    def routes(self) -> set[Route]: ...

    def replace(self, route: Route) -> None: ...

    def delete(self, route: Route) -> None: ...


class RouteError(Exception):
    pass


def satisfies(have: Route, want: Route) -> bool:
    """Whether an installed route is the wanted one; a wanted route without a device takes the kernel's choice."""
    return (have.dst == want.dst and have.gateway == want.gateway and have.onlink == want.onlink
            and (want.dev is None or have.dev == want.dev))


def plan(current: Iterable[Route], desired: Iterable[Route]) -> RouteChanges:
    """What to replace and delete so that our routes are exactly `desired` (pure).

    Keyed by destination: a route whose gateway or device changed is replaced in
    place (one netlink replace, no window without a route) rather than deleted and added.
    """
    cur = set(current)
    want = set(desired)
    want_dsts = {r.dst for r in want}
    added = sorted(w for w in want if not any(satisfies(c, w) for c in cur))
    removed = sorted(r for r in cur if r.dst not in want_dsts)
    return RouteChanges(tuple(added), tuple(removed))


def sync(kernel: RouteKernel, desired: Iterable[Route]) -> RouteChanges:
    """Converge the kernel's netplane routes to `desired`; idempotent.

    One bad route (say, a gateway that is not on-link for host-gw) does not stop the
    others: every change is attempted, then the failures are raised together.
    """
    changes = plan(kernel.routes(), desired)
    errors: list[str] = []
    for r in changes.removed:
        try:
            kernel.delete(r)
        except RouteError as e:
            errors.append(str(e))
    for r in changes.added:
        try:
            kernel.replace(r)
        except RouteError as e:
            errors.append(str(e))
    if errors:
        raise RouteError("; ".join(errors))
    return changes


@dataclass
class NetlinkRoutes:
    """RouteKernel over pyroute2 for one namespace (the current one when netns_path is None)."""

    netns_path: str | None = None
    proto: int = PROTO_NETPLANE
    _ipr: Any = field(default=None, init=False, repr=False)

    def __enter__(self) -> NetlinkRoutes:
        from pyroute2 import IPRoute

        from netplane.kernel import netns

        sock = netns.netlink_socket(self.netns_path)
        self._ipr = IPRoute(use_socket=sock)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._ipr is not None:
            self._ipr.close()
            self._ipr = None

    def _index(self, dev: str) -> int:
        found = self._ipr.link_lookup(ifname=dev)
        if not found:
            raise RouteError(f"no device {dev!r} for a route")
        return int(found[0])

    def _name(self, index: int | None) -> str | None:
        if index is None:
            return None
        msgs = self._ipr.link("get", index=index)
        return str(msgs[0].get_attr("IFLA_IFNAME")) if msgs else None

    def routes(self) -> set[Route]:
        out: set[Route] = set()
        for family in (socket.AF_INET, socket.AF_INET6):
            for m in self._ipr.get_routes(family=family, table=RT_TABLE_MAIN):
                if m["proto"] != self.proto:
                    continue
                dst = m.get_attr("RTA_DST")
                if dst is None:
                    continue
                gw = m.get_attr("RTA_GATEWAY")
                out.add(Route(f"{dst}/{m['dst_len']}", gw, self._name(m.get_attr("RTA_OIF")),
                              bool(m["flags"] & RTNH_F_ONLINK)))
        return out

    def _kwargs(self, route: Route) -> dict[str, Any]:
        kw: dict[str, Any] = {"dst": route.dst, "proto": self.proto, "table": RT_TABLE_MAIN}
        if route.gateway is not None:
            kw["gateway"] = route.gateway
        if route.dev is not None:
            kw["oif"] = self._index(route.dev)
            if route.gateway is None:
                kw["scope"] = RT_SCOPE_LINK
        if route.onlink:
            kw["flags"] = RTNH_F_ONLINK
        return kw

    def replace(self, route: Route) -> None:
        from pyroute2.netlink.exceptions import NetlinkError

        try:
            self._ipr.route("replace", **self._kwargs(route))
        except NetlinkError as e:
            raise RouteError(f"cannot install route {route}: {e}") from e

    def delete(self, route: Route) -> None:
        from pyroute2.netlink.exceptions import NetlinkError

        try:
            kw = self._kwargs(route)
        except RouteError:
            kw = {"dst": route.dst, "proto": self.proto, "table": RT_TABLE_MAIN}  # its device is gone already
        try:
            self._ipr.route("del", **kw)
        except NetlinkError as e:
            if e.code not in (errno.ESRCH, errno.ENOENT, errno.ENODEV):
                raise RouteError(f"cannot delete route {route}: {e}") from e


def sync_routes(desired: Iterable[Route], netns_path: str | None = None) -> RouteChanges:
    """Open a netlink socket, converge, close: the thin applier used by the agent."""
    with NetlinkRoutes(netns_path) as kernel:
        return sync(kernel, desired)
