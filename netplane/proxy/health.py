"""Health endpoints with kube-proxy's semantics.

`/healthz` (and `/livez`): the proxy is healthy unless a change has been waiting
longer than `health_timeout` (kube-proxy: twice the sync period) without a
successful sync. The answer is kube-proxy's JSON:
`{"lastUpdated": ..., "currentTime": ..., "nodeEligible": true}`, 200 or 503.
`/healthz` also reports 503 once the node is being deleted (not eligible), as
kube-proxy does for load balancers to drain it.

Per-service health check node ports (externalTrafficPolicy Local LoadBalancers):
`{"service": {"namespace", "name"}, "localEndpoints": N, "serviceProxyHealthy": bool}`,
200 when N > 0 and the proxy is healthy, 503 otherwise, so that a cloud load
balancer sends traffic only to nodes that have an endpoint.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from netplane.proxy.model import NamespacedName
from netplane.proxy.state import ProxyState


def _iso(ts: float | None) -> str:
    if ts is None:
        return ""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S.%f +0000 UTC")


class ProxierHealth:
    """Tracks queued vs applied updates; implements the Proxier's SyncListener."""

    def __init__(self, health_timeout: float, clock: Callable[[], float] = time.time) -> None:
        self.health_timeout = health_timeout
        self.clock = clock
        self.last_updated: float | None = None
        self.oldest_pending: float | None = None
        self.node_eligible = True
        self.local_endpoints: dict[NamespacedName, tuple[int, int]] = {}  # svc -> (port, local endpoints)

    def queued(self) -> None:
        if self.oldest_pending is None:
            self.oldest_pending = self.clock()

    def synced(self, state: ProxyState) -> None:
        self.last_updated = self.clock()
        self.oldest_pending = None
        self.local_endpoints = service_health(state)

    def healthy(self) -> bool:
        if self.oldest_pending is None:
            return True
        return self.clock() - self.oldest_pending <= self.health_timeout

    def answer(self, check_node: bool = True) -> tuple[int, dict[str, Any]]:
        ok = self.healthy() and (self.node_eligible or not check_node)
        body = {"lastUpdated": _iso(self.last_updated), "currentTime": _iso(self.clock()),
                "nodeEligible": self.node_eligible}
        return (200 if ok else 503), body

    def service_answer(self, svc: NamespacedName) -> tuple[int, dict[str, Any]]:
        count = self.local_endpoints.get(svc, (0, 0))[1]
        healthy = self.healthy()
        body = {"service": {"namespace": svc.namespace, "name": svc.name}, "localEndpoints": count,
                "serviceProxyHealthy": healthy}
        return (200 if count > 0 and healthy else 503), body


def service_health(state: ProxyState) -> dict[NamespacedName, tuple[int, int]]:
    """Services with a health check node port -> (port, local endpoints serving on this node)."""
    out: dict[NamespacedName, tuple[int, int]] = {}
    for spn, svc in state.services.items():
        if not svc.health_check_node_port:
            continue
        count = len(state.selection(spn).local)
        port, known = out.get(spn.service, (svc.health_check_node_port, 0))
        out[spn.service] = (port, max(known, count))
    return out


def health_check_ports(health: ProxierHealth) -> dict[int, NamespacedName]:
    """Which health check node ports should be listening (the daemon opens/closes sockets to match)."""
    return {port: svc for svc, (port, _) in health.local_endpoints.items()}


def make_app(health: ProxierHealth, metrics_text: Callable[[], str] | None = None) -> Any:
    """The aiohttp application serving /healthz, /livez and (optionally) /metrics."""
    from aiohttp import web

    async def healthz(request: web.Request) -> web.Response:
        status, body = health.answer(check_node=True)
        return web.Response(status=status, text=json.dumps(body), content_type="application/json")

    async def livez(request: web.Request) -> web.Response:
        status, body = health.answer(check_node=False)
        return web.Response(status=status, text=json.dumps(body), content_type="application/json")

    async def metrics(request: web.Request) -> web.Response:
        assert metrics_text is not None
        return web.Response(text=metrics_text(), content_type="text/plain", charset="utf-8",
                            headers={"X-Content-Type-Options": "nosniff"})

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/livez", livez)
    if metrics_text is not None:
        app.router.add_get("/metrics", metrics)
    return app


def make_service_app(health: ProxierHealth, svc: NamespacedName) -> Any:
    """The app behind one health check node port: any path answers for its service."""
    from aiohttp import web

    async def handler(request: web.Request) -> web.Response:
        status, body = health.service_answer(svc)
        return web.Response(status=status, text=json.dumps(body), content_type="application/json")

    app = web.Application()
    app.router.add_route("GET", "/{tail:.*}", handler)
    return app
