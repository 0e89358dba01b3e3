"""Forwarding names outside the cluster zone to upstream resolvers, with a cache.

Upstreams come from ``--upstream`` or else the host's resolv.conf (as CoreDNS's ``forward .
/etc/resolv.conf``). Each question is asked of the upstreams in order over UDP (retrying over TCP
when the answer is truncated), ``timeout`` seconds each; identical questions in flight share one
upstream query. Answers are cached for their TTL, at most ``max_ttl`` seconds (negative answers
for the SOA's negative TTL), and served with their TTLs counted down, as CoreDNS's cache plugin does.
SERVFAIL, REFUSED and failed exchanges are not cached.

An upstream that is this server itself (the listen address, or the cluster DNS address from a
pod's ClusterFirst resolv.conf) would forward in a loop: such upstreams are dropped.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable

import dns.asyncquery
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype

log = logging.getLogger(__name__)

Server = tuple[str, int]
Exchange = Callable[[dns.message.Message, str, int, float], Awaitable[dns.message.Message]]


def parse_upstream(text: str) -> Server:
    """'1.1.1.1', '1.1.1.1:5353', '[2001:db8::1]:53' or '2001:db8::1' -> (address, port)."""
    text = text.strip()
    host, port = text, 53
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        if rest:
            if not rest.startswith(":") or not rest[1:].isdigit():
                raise ValueError(f"{text!r} is not IP[:PORT]")
            port = int(rest[1:])
    elif text.count(":") == 1:
        host, _, p = text.partition(":")
        if not p.isdigit():
            raise ValueError(f"{text!r} is not IP[:PORT]")
        port = int(p)
    try:
        host = str(ipaddress.ip_address(host))
    except ValueError as e:
        raise ValueError(f"{text!r} is not IP[:PORT]") from e
    if not 0 < port < 65536:
        raise ValueError(f"{text!r}: port out of range")
    return host, port


def parse_resolv_conf(text: str) -> list[Server]:
    """The nameservers of a resolv.conf (port 53), in order; lines that are not addresses are skipped."""
    out: list[Server] = []
    for line in text.splitlines():
        parts = line.split("#", 1)[0].split(";", 1)[0].split()
        if len(parts) >= 2 and parts[0] == "nameserver":
            try:
                server = (str(ipaddress.ip_address(parts[1].split("%", 1)[0])), 53)
            except ValueError:
                continue
            if server not in out:
                out.append(server)
    return out


def without_self(servers: Iterable[Server], own: Iterable[Server]) -> list[Server]:
    """Drop upstreams that are this server (a forwarding loop); an unspecified own address
    (0.0.0.0 / ::) stands for every local address, so loopback upstreams on our port go too."""
    own = list(own)
    out = []
    for host, port in servers:
        looped = False
        for own_host, own_port in own:
            if port != own_port:
                continue
            if host == own_host or (own_host in ("0.0.0.0", "::") and ipaddress.ip_address(host).is_loopback):
                looped = True
        if not looped:
            out.append((host, port))
    return out


async def udp_then_tcp(q: dns.message.Message, host: str, port: int, timeout: float) -> dns.message.Message:
    response, _ = await dns.asyncquery.udp_with_fallback(q, host, timeout=timeout, port=port)
    return response


def cache_ttl(msg: dns.message.Message, max_ttl: int) -> int:
    """How long an upstream answer may be cached (0: not at all)."""
    rcode = msg.rcode()
    if msg.flags & dns.flags.TC or rcode not in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
        return 0
    if rcode == dns.rcode.NOERROR and msg.answer:
        return min(max_ttl, *(r.ttl for r in msg.answer))
    for rrset in msg.authority:
        if rrset.rdtype == dns.rdatatype.SOA and len(rrset):
            return min(max_ttl, rrset.ttl, rrset[0].minimum)  # RFC 2308 negative TTL
    return 0


class Forwarder:
    def __init__(self, servers: list[Server], timeout: float = 2.0, max_ttl: int = 30, cache_size: int = 10_000,
                 exchange: Exchange = udp_then_tcp, clock: Callable[[], float] = time.monotonic) -> None:
        self.servers = servers
        self.timeout = timeout
        self.max_ttl = max_ttl
        self.cache_size = cache_size
        self._exchange = exchange
        self._clock = clock
        # key -> (stored at, expires at, answer in wire form)
        self._cache: OrderedDict[tuple[str, int, int, bool], tuple[float, float, bytes]] = OrderedDict()
        self._inflight: dict[tuple[str, int, int, bool], asyncio.Future[dns.message.Message | None]] = {}
        self.stats = {"upstream_queries": 0, "cache_hits": 0, "failures": 0}

    async def resolve(self, name: str, qtype: int, qclass: int, do: bool) -> dns.message.Message | None:
        key = (name.lower(), qtype, qclass, do)
        cached = self._cached(key)
        if cached is not None:
            self.stats["cache_hits"] += 1
            return cached
        pending = self._inflight.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        fut: asyncio.Future[dns.message.Message | None] = asyncio.get_running_loop().create_future()
        self._inflight[key] = fut
        try:
            result = await self._ask(name, qtype, qclass, do)
            fut.set_result(result)
        except asyncio.CancelledError:
            fut.cancel()
            raise
        except Exception as e:
            fut.set_exception(e)
            fut.exception()  # marked retrieved: waiters see it, nobody else has to
            raise
        finally:
            del self._inflight[key]
        if result is not None:
            ttl = cache_ttl(result, self.max_ttl)
            if ttl > 0:
                now = self._clock()
                self._cache[key] = (now, now + ttl, result.to_wire(max_size=65535))
                self._cache.move_to_end(key)
                while len(self._cache) > self.cache_size:
                    self._cache.popitem(last=False)
        return result

    def _cached(self, key: tuple[str, int, int, bool]) -> dns.message.Message | None:
        hit = self._cache.get(key)
        if hit is None:
            return None
        stored, expires, data = hit
        now = self._clock()
        if now >= expires:
            del self._cache[key]
            return None
        msg = dns.message.from_wire(data)
        age = int(now - stored)
        for section in (msg.answer, msg.authority, msg.additional):
            for rrset in section:
                rrset.ttl = max(0, rrset.ttl - age)
        return msg

    async def _ask(self, name: str, qtype: int, qclass: int, do: bool) -> dns.message.Message | None:
        q = dns.message.make_query(dns.name.from_text(name + "." if name else "."),
                                   dns.rdatatype.RdataType.make(qtype), dns.rdataclass.RdataClass.make(qclass),
                                   use_edns=0, payload=1232, want_dnssec=do)
        for host, port in self.servers:
            self.stats["upstream_queries"] += 1
            try:
                return await asyncio.wait_for(self._exchange(q, host, port, self.timeout), self.timeout * 2)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # a timeout, refusal or garbage: try the next upstream
                log.warning("dns upstream=%s:%d name=%s error=%r", host, port, name, str(e) or type(e).__name__)
        self.stats["failures"] += 1
        return None
