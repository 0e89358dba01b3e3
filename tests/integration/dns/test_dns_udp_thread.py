"""The UDP side of the DNS server runs on a thread of its own, beside the event loop that applies
zone changes: answers and changes must stay apart, and closing must end the thread.

In-process, on loopback: the daemon's own change handlers and server, no state server."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import sys
import threading
from collections.abc import Iterator

import dns.message
import dns.query
import pytest

from netplane.client.kubeconfig import ClusterConfig
from netplane.dns.daemon import DNSDaemon, DNSOptions
from netplane.dns.server import start_server
from tests.unit.dns.objects import service

NAME = "web.default.svc.cluster.local"


@pytest.fixture
def fast_switching() -> Iterator[None]:
    """Hand the GIL between threads every microsecond, so that a change landing in the middle of an
    answer (the race the engine's lock closes) happens many times per test rather than by luck."""
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        yield
    finally:
        sys.setswitchinterval(old)


def address(port: int, name: str = NAME) -> list[str]:
    r = dns.query.udp(dns.message.make_query(name, "A"), "127.0.0.1", port=port, timeout=3)
    return sorted(rd.to_text() for rrset in r.answer for rd in rrset)


def test_answers_never_stay_stale_while_the_zone_changes_under_load(fast_switching: None) -> None:
    async def main() -> None:
        daemon = DNSDaemon(DNSOptions(cluster=ClusterConfig(server="http://127.0.0.1:9"), resolv_conf=None))
        on_add, on_update, _ = daemon._handlers(daemon.model.on_service)
        current = service("web", cluster_ip="10.96.0.1")
        on_add(current)
        server = await start_server(daemon.engine, "127.0.0.1", 0)
        stop = threading.Event()
        asked = [0]

        def hammer() -> None:  # the same query again and again: the exact cache's case
            q = dns.message.make_query(NAME, "A").to_wire()
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.settimeout(3)
                while not stop.is_set():
                    s.sendto(q, ("127.0.0.1", server.port))
                    s.recv(4096)
                    asked[0] += 1

        clients = [threading.Thread(target=hammer) for _ in range(3)]
        for c in clients:
            c.start()
        try:
            for i in range(4000):
                new = service("web", cluster_ip=f"10.96.{1 + i // 250}.{1 + i % 250}")
                new["metadata"]["resourceVersion"] = str(i + 2)
                on_update(current, new)  # in bursts: the GIL switches to the answering thread meanwhile
                current = new
                if i % 50 == 49:  # after each burst, what a client sees must be the state of now
                    got = await asyncio.to_thread(address, server.port)
                    assert got == [current["spec"]["clusterIP"]], f"stale answer after change {i}"
        finally:
            stop.set()
            for c in clients:
                await asyncio.to_thread(c.join, 10)
            await server.close()
        assert asked[0] > 100  # the clients really did ask while the zone changed

    asyncio.run(main())


def test_closing_ends_the_udp_thread_and_frees_the_port() -> None:
    async def main() -> None:
        daemon = DNSDaemon(DNSOptions(cluster=ClusterConfig(server="http://127.0.0.1:9"), resolv_conf=None))
        daemon._handlers(daemon.model.on_service)[0](service("web"))
        server = await start_server(daemon.engine, "127.0.0.1", 0)
        assert await asyncio.to_thread(address, server.port) == ["10.96.0.20"]
        thread = server.udp._thread
        assert thread.is_alive()
        await server.close()
        assert not thread.is_alive()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", server.port))  # the server's socket is closed, not leaked

    asyncio.run(main())


def test_a_close_cancelled_while_it_waits_has_still_stopped_the_server() -> None:
    async def main() -> None:
        daemon = DNSDaemon(DNSOptions(cluster=ClusterConfig(server="http://127.0.0.1:9"), resolv_conf=None))
        server = await start_server(daemon.engine, "127.0.0.1", 0)
        closing = asyncio.create_task(server.close())
        await asyncio.sleep(0)  # close() runs up to its first wait (for the UDP thread) ...
        closing.cancel()  # ... and is cancelled there, as a shutdown timeout would
        with contextlib.suppress(asyncio.CancelledError):
            await closing
        assert not server.tcp.is_serving()
        thread = server.udp._thread
        for _ in range(200):
            if not thread.is_alive():
                break
            await asyncio.sleep(0.01)
        assert not thread.is_alive()

    asyncio.run(main())
