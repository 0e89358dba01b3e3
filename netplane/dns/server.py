"""The DNS server's sockets around :class:`netplane.dns.engine.Engine`: UDP on a thread of its own,
TCP on the event loop.

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
import errno
import functools
import logging
import socket
import threading
import time
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
        self.closed = False

    def start(self, job: Job, deliver: object) -> None:
        if self.closed:  # handed over by the UDP thread after the server closed
            return
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


class UDPWorker:
    """Answers UDP on a thread of its own: a blocking recvfrom, the engine, a sendto, and again.

    Not on the event loop because that costs more per query at the same rate: measured with a
    trivial answer at 60k queries/s, 10.2 µs of server CPU per query through the loop's datagram
    transport against 8.1 µs here (no epoll_wait per wake-up, no recvmsg ending each batch in EAGAIN,
    no transport machinery), and a busier server takes longer to work off the queue any pause leaves
    behind. A query also waits for no other work of the loop. Queries for the upstream go to the
    loop as jobs; the engine's lock keeps answers and zone changes apart. The loop still gets the
    GIL under a flood that never lets this thread block (the interpreter's switch interval bounds
    its wait; see daemon.run_forever): measured with dnsperf flat out, pinned to one CPU or not, a
    new Service resolved 4-7 ms after its creation, about the flood's own queue, and a TCP query
    took 1-6 ms.
    """

    RECV_SIZE = 65535  # a datagram's largest payload: a longer query must not arrive cut short

    def __init__(self, sock: socket.socket, engine: Engine, forwarding: _Forwarding,
                 loop: asyncio.AbstractEventLoop) -> None:
        self.sock = sock
        self.engine = engine
        self.forwarding = forwarding
        self.loop = loop
        self.closing = False
        self._thread = threading.Thread(target=self._serve, name="dns-udp", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _serve(self) -> None:
        try:
            self._answer_until_closed()
        finally:
            # Closed here, by the only thread that may still be inside a call on it, so that its
            # descriptor number cannot be reused under a receive still in progress.
            self.sock.close()

    def _answer_until_closed(self) -> None:
        recv, send = self.sock.recvfrom, self.sock.sendto
        cached, handle, lock = self.engine.cached_udp, self.engine.handle_uncached, self.engine.lock
        while True:
            try:
                data, addr = recv(self.RECV_SIZE)
            except OSError as e:
                if self.closing or e.errno in (errno.EBADF, errno.ENOTSOCK):
                    return
                log.warning("dns udp receive failed: %s", e)
                time.sleep(0.01)  # whatever it was, not in a tight loop
                continue
            if self.closing:  # close() shut the socket down: the receive above returned empty
                return
            try:
                # Most queries: one dict lookup, without the lock.
                out: bytes | Job | None = cached(data)
                if out is None:
                    with lock:
                        out = handle(data)
            except Exception:
                log.exception("dns query failed client=%s", addr)
                continue
            if out is None:
                continue
            if isinstance(out, bytes):
                try:
                    send(out, socket.MSG_DONTWAIT, addr)
                except OSError:  # a full send buffer among them: as a datagram lost, the client asks again
                    pass
            else:
                try:
                    self.loop.call_soon_threadsafe(self.forwarding.start, out, functools.partial(self._reply, addr))
                except RuntimeError:  # the loop has closed: the server is going away
                    return

    def _reply(self, addr: tuple[str, int], response: bytes) -> None:
        """An upstream answer, sent from the loop: never blocking it (MSG_DONTWAIT)."""
        with contextlib.suppress(OSError):
            self.sock.sendto(response, socket.MSG_DONTWAIT, addr)

    def stop(self) -> None:
        """Ends the thread soon, without waiting: see join()."""
        self.closing = True
        # Wakes the thread's recvfrom (it returns empty); an unconnected UDP socket reports ENOTCONN
        # while doing so.
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)

    def join(self, timeout: float = 2.0) -> None:
        if self._thread.is_alive():
            self._thread.join(timeout)
        elif self._thread.ident is None:  # never started: nobody else will close the socket
            self.sock.close()


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
                with self.engine.lock:
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
    udp: UDPWorker
    tcp: asyncio.Server
    forwarding: _Forwarding
    closed: bool = field(default=False)

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        # Everything that needs no waiting first, so that a close() cancelled while it waits has
        # still stopped the server.
        self.udp.stop()
        self.tcp.close()
        self.forwarding.closed = True
        for task in list(self.forwarding.tasks):
            task.cancel()
        await asyncio.to_thread(self.udp.join)
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
        bound = sock.getsockname()[1]
        try:
            tcp = await loop.create_server(lambda: TCPProtocol(engine, forwarding, idle_timeout), host, bound,
                                           family=family, reuse_address=True, backlog=1024)
        except OSError as e:  # port 0: the UDP port may be taken for TCP; pick another
            sock.close()
            last_error = e
            continue
        udp = UDPWorker(sock, engine, forwarding, loop)
        udp.start()
        return DNSServer(host, bound, udp, tcp, forwarding)
    raise OSError(f"cannot listen on {host}:{port} over both UDP and TCP: {last_error}")
