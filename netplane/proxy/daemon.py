"""The `netplane proxy` daemon: informers -> Proxier -> bounded-frequency runner, plus health and metrics.

Start-up order matters for "a restart breaks no connection": the rules already in
the kernel are left alone until the Service and EndpointSlice caches have synced,
so the first sync programs the complete state instead of an empty one. When the
state server goes away the informers retry with backoff and the rules stay as
they are; the periodic sync keeps repairing them meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from dataclasses import dataclass, replace
from typing import Any

from netplane.api.resources import lookup
from netplane.client.informer import Informer
from netplane.client.kubeconfig import ClusterConfig
from netplane.client.rest import APIClient
from netplane.kernel.conntrack import Conntrack
from netplane.kernel.iptables import Iptables
from netplane.kernel.nftables import nft_kernel
from netplane.proxy.cleanup import StartupCleanup
from netplane.proxy.health import ProxierHealth, health_check_ports, make_app, make_service_app
from netplane.proxy.proxier import Backend, IptablesBackend, NftablesBackend, Proxier
from netplane.proxy.runner import AsyncRunner
from netplane.proxy.state import ProxyConfig

log = logging.getLogger("netplane.proxy")
MODES = ("iptables", "nftables", "ipvs")


@dataclass(frozen=True)
class DaemonOptions:
    cluster: ClusterConfig
    node_name: str
    mode: str = "iptables"
    cluster_cidr: str = "10.244.0.0/16"
    masquerade_all: bool = False
    nodeport_addresses: tuple[str, ...] = ()
    min_sync_period: float = 1.0
    sync_period: float = 30.0
    healthz_bind_address: str = "0.0.0.0:10256"
    metrics_bind_address: str = "127.0.0.1:10249"
    netns: str | None = None  # apply rules in this named netns (labs, tests); None: where we run
    iptables_backend: str = "nft"  # which iptables binaries: "nft" (Debian's default) or "legacy"
    health_check_host: str = "0.0.0.0"
    ipvs_scheduler: str = "rr"  # --ipvs-scheduler, IPVS mode only


def node_addresses(node: dict[str, Any] | None) -> tuple[str, ...]:
    """InternalIP then ExternalIP addresses of a Node (IPv4), as kube-proxy takes them."""
    if not node:
        return ()
    addrs = (node.get("status") or {}).get("addresses") or []
    out: list[str] = []
    for kind in ("InternalIP", "ExternalIP"):
        out.extend(a["address"] for a in addrs if a.get("type") == kind and "." in str(a.get("address", "")))
    return tuple(dict.fromkeys(out))


def _split_bind(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host or "0.0.0.0", int(port)


def build_backend(opts: DaemonOptions) -> Backend:
    if opts.mode == "iptables":
        return IptablesBackend(Iptables(netns=opts.netns, backend=opts.iptables_backend))
    if opts.mode == "nftables":
        # libnftables in-process when its binding is installed (tens of ms saved per sync), else `nft`.
        return NftablesBackend(nft_kernel(opts.netns))
    if opts.mode == "ipvs":  # imported here: only IPVS mode pays for them
        from netplane.kernel.ipset import Ipset
        from netplane.kernel.ipvs import IpvsNode
        from netplane.proxy.ipvs import DEVICE
        from netplane.proxy.ipvs_backend import IpvsBackend

        return IpvsBackend(IpvsNode(DEVICE, opts.netns), Ipset(opts.netns),
                           Iptables(netns=opts.netns, backend=opts.iptables_backend), scheduler=opts.ipvs_scheduler)
    raise ValueError(f"unknown proxy mode {opts.mode!r} (expected one of {', '.join(MODES)})")


class ProxyDaemon:
    def __init__(self, opts: DaemonOptions) -> None:
        self.opts = opts
        self.config = ProxyConfig(node_name=opts.node_name, cluster_cidr=opts.cluster_cidr,
                                  masquerade_all=opts.masquerade_all, nodeport_addresses=opts.nodeport_addresses)
        self.proxier = Proxier(self.config, build_backend(opts), conntrack=Conntrack(netns=opts.netns),
                               check_rules_period=opts.sync_period)
        self.health = ProxierHealth(health_timeout=2 * opts.sync_period)
        self.proxier.listeners.append(self.health)
        # A node switched from another mode: its rules go once this mode's are in (netplane/proxy/cleanup.py).
        self.proxier.listeners.append(StartupCleanup(opts.mode, opts.netns, opts.iptables_backend))
        self.runner = AsyncRunner(self.proxier.sync, opts.min_sync_period, opts.sync_period)
        self.proxier.set_sync_requester(self.runner.run)
        self._service_sites: dict[int, Any] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self.ready = asyncio.Event()

    # Node events: addresses feed NodePort handling; a deleted node makes /healthz fail (drain).
    def _on_node(self, node: dict[str, Any]) -> None:
        if (node.get("metadata") or {}).get("name") != self.opts.node_name:
            return
        self.health.node_eligible = not (node.get("metadata") or {}).get("deletionTimestamp")
        ips = node_addresses(node)
        if ips != self.proxier.state.config.node_ips:
            self.proxier.update_config(replace(self.proxier.state.config, node_ips=ips))

    def _on_node_delete(self, node: dict[str, Any]) -> None:
        if (node.get("metadata") or {}).get("name") == self.opts.node_name:
            self.health.node_eligible = False

    async def _reconcile_health_ports(self) -> None:
        from aiohttp import web

        wanted = health_check_ports(self.health)
        for port in [p for p in self._service_sites if p not in wanted]:
            await self._service_sites.pop(port).cleanup()
        for port, svc in wanted.items():
            if port in self._service_sites:
                continue
            runner = web.AppRunner(make_service_app(self.health, svc))
            await runner.setup()
            try:
                await web.TCPSite(runner, self.opts.health_check_host, port).start()
            except OSError as e:
                log.warning("cannot listen on health check node port %d for %s: %s", port, svc, e)
                await runner.cleanup()
                continue
            self._service_sites[port] = runner

    def _synced_hook(self) -> None:
        loop = self._loop
        if loop is not None:
            loop.call_soon_threadsafe(lambda: asyncio.ensure_future(self._reconcile_health_ports()))

    async def run(self, stop: asyncio.Event) -> None:
        from aiohttp import web

        self._loop = asyncio.get_running_loop()
        daemon = self

        class _Hook:
            def queued(self) -> None:
                pass

            def synced(self, state: object) -> None:
                daemon._synced_hook()

        self.proxier.listeners.append(_Hook())
        sites: list[web.AppRunner] = []
        for app, bind in ((make_app(self.health), self.opts.healthz_bind_address),
                          (make_app(self.health, self.proxier.metrics.render), self.opts.metrics_bind_address)):
            if not bind:
                continue
            runner = web.AppRunner(app)
            await runner.setup()
            host, port = _split_bind(bind)
            await web.TCPSite(runner, host, port).start()
            sites.append(runner)
        async with APIClient(self.opts.cluster) as client:
            infos = {name: lookup(group, "v1", name) for group, name in
                     (("", "services"), ("discovery.k8s.io", "endpointslices"), ("", "nodes"))}
            services = Informer(client, infos["services"])  # type: ignore[arg-type]
            slices = Informer(client, infos["endpointslices"])  # type: ignore[arg-type]
            nodes = Informer(client, infos["nodes"])  # type: ignore[arg-type]
            p = self.proxier
            services.add_handler(lambda o: p.on_service(None, o), p.on_service, lambda o: p.on_service(o, None))
            slices.add_handler(lambda o: p.on_endpoint_slice(None, o), p.on_endpoint_slice,
                               lambda o: p.on_endpoint_slice(o, None))
            nodes.add_handler(self._on_node, lambda _old, new: self._on_node(new), self._on_node_delete)
            self.health.queued()  # the first sync is pending from start-up, as in kube-proxy
            tasks = [asyncio.create_task(i.run()) for i in (services, slices, nodes)]
            try:
                # Do not touch the kernel until the caches are complete (see the module docstring).
                waiter: asyncio.Future[Any] = asyncio.gather(services.wait_synced(), slices.wait_synced())
                stopper: asyncio.Future[Any] = asyncio.ensure_future(stop.wait())
                await asyncio.wait([waiter, stopper], return_when=asyncio.FIRST_COMPLETED)
                stopper.cancel()
                if not stop.is_set():
                    log.info("caches synced: services=%d endpointslices=%d mode=%s", len(services.list()),
                             len(slices.list()), self.opts.mode)
                    self.ready.set()
                    await self.runner.loop(stop)
                else:
                    waiter.cancel()
            finally:
                for t in tasks:
                    t.cancel()
                for t in tasks:
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await t
                for runner in [*sites, *self._service_sites.values()]:
                    await runner.cleanup()


def run_forever(opts: DaemonOptions) -> None:
    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await ProxyDaemon(opts).run(stop)

    asyncio.run(main())

