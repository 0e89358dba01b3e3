"""Bytes in, bytes out: parse a query, answer it from the zone (through a cache of rendered
responses), or hand back a :class:`Job` for the upstream resolvers. No sockets here.

The response cache is what makes Python serve at speed: for each question name (lowercase wire
form) and (type, class, EDNS/DO) it holds the rendered response split around the question name.
A hit splices the client's ID, RD/CD bits and question name (same bytes up to case, so every
compression pointer stays valid and the answer echoes the client's case, 0x20 style) into it:
no decoding, no dnspython. Entries are dropped by name when the zone index reports that a name, or
a name an answer depends on (CNAME and SRV targets), changed.

In front of it sits a second, exact cache for UDP: the query's bytes after its ID -> the response's
bytes after the ID. A repeated query (the same name in the same case, flags and EDNS) is then one
slice, one dict lookup and one concatenation: the whole answer is a function of those bytes and of
the cached entry it was made from, which carries a ``valid`` flag that is cleared when the entry
leaves the response cache. This matters for latency, not only for throughput: every microsecond
saved per query lowers the server's load at a given rate, and a busy server takes longer to work off
the queue that any pause (another process, a kernel thread, the hypervisor) leaves behind.
"""

from __future__ import annotations

import logging
import struct
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

import dns.exception
import dns.flags
import dns.message
import dns.rcode

from netplane.dns import wire
from netplane.dns.resolver import REFUSE, SERVFAIL, Resolution, Resolver
from netplane.dns.zone import ClusterModel

log = logging.getLogger(__name__)

MAX_TCP = 65535
# The largest response the exact UDP cache keeps (100k entries of at most this: ~50 MB at worst).
EXACT_MAX_RESPONSE = 512


class Upstream(Protocol):
    async def resolve(self, name: str, qtype: int, qclass: int, do: bool) -> dns.message.Message | None:
        """The upstream's answer for a question (None when no upstream answered)."""
        ...


@dataclass(frozen=True, slots=True)
class Job:
    """A query that needs the upstream resolvers: forward ``target`` (the question, or the out-of-zone
    target of a CNAME whose in-zone part is ``base``)."""

    query: wire.Query
    tcp: bool
    target: str
    base: Resolution | None = None


class Entry:
    """A rendered response without its ID, RD/CD bits and question name."""

    __slots__ = ("counts", "f2", "f3", "size", "tail", "truncated", "valid")

    def __init__(self, response: bytes, qname_len: int, truncated: Entry | None = None) -> None:
        self.valid = True  # False once dropped from the response cache (see Engine._exact)
        self.f2 = response[2] & ~wire.RD
        self.f3 = response[3] & ~wire.CD
        self.counts = response[4:12]
        self.tail = response[12 + qname_len:]
        self.size = len(response)
        self.truncated = truncated


def _name_wire(name: str) -> bytes:
    try:
        return b"".join(bytes((len(label),)) + label.encode("ascii") for label in name.split(".")
                        if label and len(label) < 64) + b"\x00"
    except UnicodeEncodeError:
        return wire.name_wire(name)


class Engine:
    def __init__(self, model: ClusterModel, resolver: Resolver | None = None, upstream: Upstream | None = None,
                 ttl: int = 5, udp_payload: int = 1232, max_udp: int = 4096, cache_names: int = 100_000) -> None:
        self.model = model
        self.resolver = resolver or Resolver(model.zone, negative_ttl=ttl)
        self.upstream = upstream
        self.ttl = ttl
        # Our EDNS buffer size (the DNS flag day 2020 value): what we accept, and advertise.
        self.udp_payload = udp_payload
        # The largest UDP answer we send whatever the client advertises, so answers are never
        # fragmented beyond what BIND's and Unbound's defaults allow.
        self.max_udp = max_udp
        self.cache_names = cache_names
        # False until the caches hold the cluster's objects: the zone's names answer SERVFAIL meanwhile
        # (never a cacheable NXDOMAIN for a name that merely has not been heard of yet).
        self.synced = True
        self._cache: dict[bytes, dict[bytes, Entry]] = {}
        self._deps: dict[bytes, set[bytes]] = {}
        # UDP query bytes after the ID -> (the entry it was answered from, response bytes after the ID).
        self._exact: dict[bytes, tuple[Entry, bytes]] = {}
        self.stats = {"forwarded": 0, "formerr": 0, "dropped": 0}
        # Held around handle() and around every change of the model and its invalidate(): UDP is
        # answered on a thread of its own (netplane.dns.server), TCP and the informers on the event
        # loop. Without it an answer resolved from the old model could be stored after the change
        # that should have dropped it, and stay stale until the name next changed.
        self.lock = threading.Lock()

    # -- the zone changed -----------------------------------------------------------------

    def invalidate(self, names: Iterable[str]) -> None:
        for name in names:
            key = _name_wire(name)
            self._drop(key)
            for dependent in self._deps.pop(key, ()):
                self._drop(dependent)

    def _drop(self, key: bytes) -> None:
        bucket = self._cache.pop(key, None)
        if bucket is not None:
            for entry in bucket.values():
                entry.valid = False  # the exact cache's copies of it are stale from now on

    def clear(self) -> None:
        self._cache.clear()
        self._deps.clear()
        self._exact.clear()

    # -- queries ------------------------------------------------------------------------------

    def cached_udp(self, data: bytes) -> bytes | None:
        """The exact cache's response to a UDP query, or None. Needs no lock: it only reads, and an
        entry whose invalidation is under way answers as if the query had come a moment earlier."""
        hit = self._exact.get(data[2:])
        if hit is not None and hit[0].valid:
            return data[:2] + hit[1]
        return None

    def handle(self, data: bytes, tcp: bool = False) -> bytes | Job | None:
        """The response to one packet, a Job for the upstream, or None (drop it)."""
        if not tcp:
            cached = self.cached_udp(data)
            if cached is not None:
                return cached
        return self.handle_uncached(data, tcp)

    def handle_uncached(self, data: bytes, tcp: bool = False) -> bytes | Job | None:
        """handle() for a packet the exact cache does not answer (the UDP thread has just asked it)."""
        # Fast path: the shape of an ordinary query, answered from the cache (see wire.parse_query,
        # which this mirrors; every miss is re-parsed there).
        try:
            if len(data) > 16 and not data[2] & 0xF8 and data[4:10] == b"\x00\x01\x00\x00\x00\x00":
                # The name ends at its first zero byte when it is well formed; when it is not (a zero
                # inside a label, a compression pointer), the bytes up to there are no well-formed name
                # either, so they match no key of the cache (keys are well-formed names, lowercased:
                # lowering never touches a length byte) and the query takes the parsing path.
                end = data.index(0, 12) + 1
                tail_at = end + 4
                ar = data[10:12]
                tag = b""
                limit = 512
                if ar == b"\x00\x00":
                    if tail_at == len(data):
                        tag = b"N"
                elif ar == b"\x00\x01" and data[tail_at] == 0 and data[tail_at + 1:tail_at + 3] == b"\x00\x29" \
                        and data[tail_at + 5:tail_at + 7] == b"\x00\x00" \
                        and tail_at + 11 + int.from_bytes(data[tail_at + 9:tail_at + 11], "big") == len(data):
                    tag = b"D" if data[tail_at + 7] & 0x80 else b"E"
                    limit = min(max(512, int.from_bytes(data[tail_at + 3:tail_at + 5], "big")), self.max_udp)
                if tag:
                    bucket = self._cache.get(data[12:end].lower())
                    if bucket is not None:
                        top = bucket.get(data[end:tail_at] + tag)
                        if top is not None:
                            entry = top
                            if not tcp and entry.size > limit and entry.truncated is not None:
                                entry = entry.truncated
                            out = b"".join((data[:2], bytes((entry.f2 | (data[2] & 1), entry.f3 | (data[3] & 0x10))),
                                            entry.counts, data[12:end], entry.tail))
                            if not tcp:
                                self._remember(data, top, out)
                            return out
        except (IndexError, ValueError):
            pass
        return self._slow(data, tcp)

    def _remember(self, query: bytes, entry: Entry, response: bytes) -> None:
        if len(response) > EXACT_MAX_RESPONSE:
            # Bounds the exact cache's memory by bytes too: keyed by spelling (0x20 case, EDNS), it
            # holds one copy per variant, where the response cache holds one per name.
            return
        exact = self._exact
        if len(exact) >= self.cache_names:
            exact.clear()  # bounded whatever clients send (0x20 spellings, random IDs do not count)
        exact[query[2:]] = (entry, response[2:])

    def _slow(self, data: bytes, tcp: bool) -> bytes | Job | None:
        if len(data) >= wire.HEADER and not data[2] & wire.QR and (data[2] >> 3) & 0x0F:
            return wire.header_only(data, 4)  # NOTIMP: only standard queries (no NOTIFY, UPDATE, ...)
        try:
            q = wire.parse_query(data) or wire.parse_full(data)
        except wire.FormatError as e:
            self.stats["formerr"] += 1
            if e.rcode == wire.BADVERS:
                return wire.badvers(data, self.udp_payload)
            return wire.header_only(data, e.rcode)
        if q is None:
            self.stats["dropped"] += 1
            return None
        return self.answer(q, tcp)

    def _limit(self, q: wire.Query, tcp: bool) -> int:
        return MAX_TCP if tcp else min(q.payload, self.max_udp)

    @staticmethod
    def _sub(q: wire.Query) -> bytes:
        return struct.pack("!HH", q.qtype, q.qclass) + (b"N" if not q.edns else b"D" if q.do else b"E")

    def answer(self, q: wire.Query, tcp: bool = False) -> bytes | Job | None:
        key, sub = q.key, self._sub(q)
        bucket = self._cache.get(key)
        entry = bucket.get(sub) if bucket is not None else None
        if entry is None:
            plain = wire.plain_name_text(q.qname)
            try:
                name = plain if plain is not None else wire.name_text(q.qname)
            except Exception:
                return wire.header_only(q.qid + bytes((q.flags2, q.flags3)) + b"\x00" * 8, 1)
            res = self.resolver.resolve(self.model.index, name, q.qtype, q.qclass)
            if not self.synced and not res.forward:
                return self._servfail(q, tcp)
            if res.forward:
                if self.upstream is None:
                    res = REFUSE
                else:
                    self.stats["forwarded"] += 1
                    return Job(q, tcp, name)
            if res.chase is not None and self.upstream is not None:
                self.stats["forwarded"] += 1
                return Job(q, tcp, res.chase, res)
            try:
                # Only a plain name's text maps onto its wire offsets (escaped spellings do not).
                entry = self._render(q, res, plain or "")
            except Exception:
                log.exception("dns cannot render the answer for name=%s type=%d", name, q.qtype)
                return self._servfail(q, tcp)
            self._store(key, sub, entry, res.depends)
        if not tcp and entry.size > self._limit(q, tcp) and entry.truncated is not None:
            entry = entry.truncated
        return b"".join((q.qid, bytes((entry.f2 | (q.flags2 & wire.RD), entry.f3 | (q.flags3 & wire.CD))),
                         entry.counts, q.qname, entry.tail))

    def _render(self, q: wire.Query, res: Resolution, qtext: str) -> Entry:
        ra = self.upstream is not None
        full = wire.encode_response(q, res.rcode, res.answer, res.authority, res.additional, self.ttl,
                                    res.authoritative, ra, self.udp_payload, qtext=qtext)
        tc = None
        if len(full) > 512:  # some UDP client may need the truncated form
            tc = Entry(wire.encode_response(q, res.rcode, (), (), (), 0, res.authoritative, ra, self.udp_payload,
                                            truncate=True, qtext=qtext), len(q.qname))
        return Entry(full, len(q.qname), tc)

    def _message(self, q: wire.Query, res: Resolution) -> dns.message.Message:
        msg = wire.response_message(q, res.rcode, res.authoritative, self.upstream is not None, self.udp_payload)
        question = msg.question[0].name
        qtext = question.to_text(omit_final_dot=True).lower()
        msg.answer = wire.rrsets(res.answer, self.ttl, question, qtext)
        msg.authority = wire.rrsets(res.authority, self.ttl, question, qtext)
        msg.additional = wire.rrsets(res.additional, self.ttl, question, qtext)
        return msg

    def _store(self, key: bytes, sub: bytes, entry: Entry, depends: tuple[str, ...]) -> None:
        if len(self._cache) >= self.cache_names:
            # Bounded memory whatever names clients invent (random NXDOMAIN floods): start over.
            self.clear()
        self._cache.setdefault(key, {})[sub] = entry
        for dep in depends:
            self._deps.setdefault(_name_wire(dep), set()).add(key)

    def _servfail(self, q: wire.Query, tcp: bool) -> bytes:
        msg = wire.response_message(q, SERVFAIL, False, self.upstream is not None, self.udp_payload)
        return msg.to_wire()

    # -- the upstream half --------------------------------------------------------------------

    async def finish(self, job: Job) -> bytes | None:
        """Ask the upstream for a job's target and build the client's response."""
        q = job.query
        assert self.upstream is not None
        try:
            got = await self.upstream.resolve(job.target, q.qtype, q.qclass, q.do)
        except Exception:
            log.exception("dns upstream failed name=%s", job.target)
            got = None
        base = job.base
        if got is None:
            if base is None:
                return self._servfail(q, job.tcp)
            return self._finish_wire(q, job.tcp, self._message(q, base))  # the CNAME alone
        msg = wire.response_message(q, got.rcode(), base is not None, True, self.udp_payload)
        if base is not None:
            question = msg.question[0].name
            msg.answer = wire.rrsets(base.answer, self.ttl, question, question.to_text(True).lower())
            msg.answer.extend(got.answer)
            if got.rcode() != dns.rcode.NOERROR or not got.answer:
                msg.authority = list(got.authority)
        else:
            msg.answer = list(got.answer)
            msg.authority = list(got.authority)
            msg.additional = [r for r in got.additional if r.rdtype != wire.OPT]
        return self._finish_wire(q, job.tcp, msg)

    def _finish_wire(self, q: wire.Query, tcp: bool, msg: dns.message.Message) -> bytes:
        try:
            return msg.to_wire(max_size=self._limit(q, tcp))
        except dns.exception.TooBig:
            return wire.truncated(q, msg.rcode(), bool(msg.flags & dns.flags.AA), True, self.udp_payload)
