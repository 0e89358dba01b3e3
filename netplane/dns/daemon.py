"""The `netplane dns` daemon: informers -> ClusterModel -> Engine, behind a UDP+TCP server.

Start-up: the informers' first lists are awaited (at most ``sync_timeout`` seconds, as CoreDNS's
kubernetes plugin waits up to 5 s) before the sockets open; if they take longer the server opens
anyway and answers the zone's names SERVFAIL until they are in, so it never answers NXDOMAIN for a
name it simply has not heard of yet (forwarding works meanwhile). After that every watch event updates the index and
drops the affected cached answers at once, so a new Service resolves as soon as its event arrives.
While the state server is away the informers retry with backoff and the index stays as it was:
the server keeps answering from what it knows.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from netplane.api.resources import must
from netplane.client.informer import Informer
from netplane.client.kubeconfig import ClusterConfig
from netplane.client.rest import APIClient
from netplane.dns.engine import Engine
from netplane.dns.forward import Forwarder, parse_resolv_conf, parse_upstream, without_self
from netplane.dns.server import DNSServer, parse_listen, start_server
from netplane.dns.zone import ClusterModel

log = logging.getLogger("netplane.dns")

SERVICES = must("", "v1", "services")
SLICES = must("discovery.k8s.io", "v1", "endpointslices")
PODS = must("", "v1", "pods")
SWITCH_INTERVAL = 0.001  # seconds; see run_forever


@dataclass(frozen=True)
class DNSOptions:
    cluster: ClusterConfig
    listen: str = "0.0.0.0:53"
    zone: str = "cluster.local"
    upstreams: tuple[str, ...] = ()
    resolv_conf: str | None = "/etc/resolv.conf"  # used when no upstream is given; None: none
    ttl: int = 5
    pod_records: bool = True
    sync_timeout: float = 5.0
    ready_file: str | None = None  # written with "host:port" once serving (tests, labs)


def upstream_servers(opts: DNSOptions) -> list[tuple[str, int]]:
    host, port = parse_listen(opts.listen)
    servers = [parse_upstream(u) for u in opts.upstreams]
    if not servers and opts.resolv_conf:
        try:
            servers = parse_resolv_conf(Path(opts.resolv_conf).read_text())
        except OSError as e:
            log.warning("cannot read %s: %s (no upstream: out-of-zone names get REFUSED)", opts.resolv_conf, e)
    kept = without_self(servers, [(host, port)])
    if len(kept) != len(servers):
        log.warning("dropped upstreams that are this server: %s", sorted(set(servers) - set(kept)))
    return kept


class DNSDaemon:
    def __init__(self, opts: DNSOptions) -> None:
        self.opts = opts
        self.model = ClusterModel(opts.zone)
        servers = upstream_servers(opts)
        self.forwarder = Forwarder(servers) if servers else None
        self.engine = Engine(self.model, upstream=self.forwarder, ttl=opts.ttl)
        self.server: DNSServer | None = None
        self.ready = asyncio.Event()

    def _handlers(self, update: Callable[[Any, Any], set[str]]) -> tuple[Callable[..., None], ...]:
        engine = self.engine
        lock = engine.lock  # the model and the caches change together, between two answers

        def on_add(obj: Any) -> None:
            with lock:
                engine.invalidate(update(None, obj))

        def on_update(old: Any, new: Any) -> None:
            with lock:
                engine.invalidate(update(old, new))

        def on_delete(obj: Any) -> None:
            with lock:
                engine.invalidate(update(obj, None))

        return on_add, on_update, on_delete

    async def run(self, stop: asyncio.Event) -> None:
        opts = self.opts
        async with APIClient(opts.cluster) as client:
            informers = [Informer(client, SERVICES), Informer(client, SLICES)]
            informers[0].add_handler(*self._handlers(self.model.on_service))
            informers[1].add_handler(*self._handlers(self.model.on_slice))
            if opts.pod_records:
                informers.append(Informer(client, PODS))
                informers[2].add_handler(*self._handlers(self.model.on_pod))
            tasks = [asyncio.create_task(i.run()) for i in informers]

            async def synced() -> None:
                await asyncio.gather(*(i.wait_synced() for i in informers))
                self.engine.synced = True
                settle_heap()
                log.info("caches synced services=%d endpointslices=%d names=%d", len(informers[0].list()),
                         len(informers[1].list()), len(self.model.index.records))

            self.engine.synced = False
            sync_task = asyncio.create_task(synced())
            tasks.append(sync_task)
            try:
                try:
                    await asyncio.wait_for(asyncio.shield(sync_task), opts.sync_timeout)
                except TimeoutError:
                    log.warning("caches not synced after %.0fs: serving, with SERVFAIL for the zone until they are",
                                opts.sync_timeout)
                host, port = parse_listen(opts.listen)
                self.server = await start_server(self.engine, host, port)
                upstreams = ",".join(f"{h}:{p}" for h, p in self.forwarder.servers) if self.forwarder else "none"
                log.info("serving zone=%s listen=%s:%d udp+tcp upstreams=%s", self.model.zone, host,
                         self.server.port, upstreams)
                if opts.ready_file:
                    Path(opts.ready_file).write_text(f"{host}:{self.server.port}\n")
                self.ready.set()
                await stop.wait()
            finally:
                if self.server is not None:
                    await self.server.close()
                for t in tasks:
                    t.cancel()
                for t in tasks:
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await t


def settle_heap() -> None:
    """Move everything alive after the first sync out of the cyclic collector's sight.

    The index and the informers' caches are long-lived objects by the hundred thousand; every full
    (oldest-generation) collection would walk them all while queries wait behind it (measured: 18 ms
    with 1,000 Services, 117 ms with 10,000). They are freed
    by reference counting when a Service goes, so the collector has nothing to find among them.
    """
    t = time.perf_counter()
    gc.collect()
    gc.freeze()
    log.info("heap settled: %d objects frozen, full collection took %.1f ms", gc.get_freeze_count(),
             (time.perf_counter() - t) * 1000)


def run_forever(opts: DNSOptions) -> None:
    from netplane.cli.logs import run_loop

    # The UDP thread and the event loop share the GIL: whichever waits for it (the loop under a
    # flood of queries, the UDP thread while the loop works through a relist) takes it after at
    # most this long, 1 ms rather than the interpreter's 5 ms, a bound that fits a 1 ms p99.
    sys.setswitchinterval(SWITCH_INTERVAL)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await DNSDaemon(opts).run(stop)

    run_loop(main())
