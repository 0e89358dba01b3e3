"""The DNS server's sockets: a thin asyncio shell around :class:`netplane.dns.engine.Engine`.

UDP: one datagram in, at most one out; answers that need an upstream run as tasks (at most
``max_pending`` at a time; beyond that, queries that would need an upstream are dropped, as a
full resolver queue does, while zone answers keep flowing). TCP (RFC 7766): 2-byte length-prefixed
messages, pipelined, answered as they complete (possibly out of order), connection closed after
``idle_timeout`` seconds without a query or on a zero-length message. A packet that makes the
engine fail is logged and dropped: one bad packet never stops the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from dataclasses import dataclass, field

from netplane.dns.engine import Engine, Job

log = logging.getLogger(__name__)

# The UDP socket's receive buffer. A pause of the server (another process on its CPU, a kernel
# thread, the hypervisor) leaves the queries of that pause queued in it: at 50k queries/s a 5 ms pause
# is ~250 datagrams, ~300 KB of kernel buffers, more than Linux's 208 KiB default holds. A dropped
# query costs its client a retry after 1-5 s; a queued one a few ms. Asked with SO_RCVBUFFORCE when
# privileged (as Unbound does), so Debian's 208 KiB net.core.rmem_max does not cap it; else SO_RCVBUF.
UDP_RCVBUF = 1 << 20
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)  # Linux's value; not exported by Python 3.11


def _set_rcvbuf(sock: socket.socket, size: int) -> None:
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, size)
    except OSError:  # not CAP_NET_ADMIN: as much as net.core.rmem_max allows
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)


def parse_listen(text: str) -> tuple[str, int]:
    """'0.0.0.0:53', '127.0.0.1:0', '[::]:53' -> (host, port)."""
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest.removeprefix(":")
    else:
        host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError(f"{text!r} is not ADDR:PORT")
    return host, int(port)


class _Forwarding:
    """Runs engine jobs as tasks, bounded, keeping references so they are not collected."""

    def __init__(self, engine: Engine, max_pending: int) -> None:
        self.engine = engine
        self.max_pending = max_pending
        self.tasks: set[asyncio.Task[None]] = set()

    def start(self, job: Job, deliver: object) -> None:
        if len(self.tasks) >= self.max_pending:
            self.engine.stats["dropped"] += 1
            return
        task = asyncio.ensure_future(self._run(job, deliver))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _run(self, job: Job, deliver: object) -> None:
        try:
            response = await self.engine.finish(job)
        except Exception:
            log.exception("dns forwarding failed name=%s", job.target)
            return
        if response is not None:
            deliver(response)  # type: ignore[operator]


class UDPProtocol(asyncio.DatagramProtocol):
    def __init__(self, engine: Engine, forwarding: _Forwarding) -> None:
        self.engine = engine
        self.forwarding = forwarding
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        try:
            out = self.engine.handle(data)
        except Exception:
            log.exception("dns query failed client=%s", addr)
            return
        if out is None:
            return
        transport = self.transport
        if transport is None:
            return
        if out.__class__ is bytes:
            transport.sendto(out, addr)
        else:
            self.forwarding.start(out, lambda response: transport.sendto(response, addr))  # type: ignore[arg-type]

    def error_received(self, exc: Exception) -> None:
        # ICMP errors from clients that went away: nothing to do, and not worth a log line each.
        pass


class TCPProtocol(asyncio.Protocol):
    def __init__(self, engine: Engine, forwarding: _Forwarding, idle_timeout: float) -> None:
        self.engine = engine
        self.forwarding = forwarding
        self.idle_timeout = idle_timeout
        self.transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._idle: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self._arm()

    def _arm(self) -> None:
        if self._idle is not None:
            self._idle.cancel()
        self._idle = asyncio.get_running_loop().call_later(self.idle_timeout, self._close)

    def _close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._idle is not None:
            self._idle.cancel()
        self.transport = None

    def _send(self, response: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(len(response).to_bytes(2, "big") + response)

    def data_received(self, data: bytes) -> None:
        self._buf += data
        self._arm()
        while len(self._buf) >= 2:
            size = int.from_bytes(self._buf[:2], "big")
            if size == 0:
                self._close()
                return
            if len(self._buf) < 2 + size:
                return
            msg = bytes(self._buf[2:2 + size])
            del self._buf[:2 + size]
            try:
                out = self.engine.handle(msg, tcp=True)
            except Exception:
                log.exception("dns query failed (tcp)")
                continue
            if out is None:
                continue
            if isinstance(out, bytes):
                self._send(out)
            else:
                self.forwarding.start(out, self._send)


@dataclass
class DNSServer:
    host: str
    port: int
    udp: asyncio.DatagramTransport
    tcp: asyncio.Server
    forwarding: _Forwarding
    closed: bool = field(default=False)

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.udp.close()
        self.tcp.close()
        for task in list(self.forwarding.tasks):
            task.cancel()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.tcp.wait_closed(), 2)


async def start_server(engine: Engine, host: str, port: int, idle_timeout: float = 10.0,
                       max_pending: int = 1000) -> DNSServer:
    """Listen on host:port over UDP and TCP (port 0: the same free port for both)."""
    loop = asyncio.get_running_loop()
    forwarding = _Forwarding(engine, max_pending)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    last_error: OSError | None = None
    for _ in range(20 if port == 0 else 1):
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            _set_rcvbuf(sock, UDP_RCVBUF)
            sock.bind((host, port))
        except OSError:
            sock.close()
            raise
        udp, _proto = await loop.create_datagram_endpoint(lambda: UDPProtocol(engine, forwarding), sock=sock)
        bound = udp.get_extra_info("sockname")[1]
        try:
            tcp = await loop.create_server(lambda: TCPProtocol(engine, forwarding, idle_timeout), host, bound,
                                           family=family, reuse_address=True, backlog=1024)
        except OSError as e:  # port 0: the UDP port may be taken for TCP; pick another
            udp.close()
            last_error = e
            continue
        return DNSServer(host, bound, udp, tcp, forwarding)
    raise OSError(f"cannot listen on {host}:{port} over both UDP and TCP: {last_error}")
