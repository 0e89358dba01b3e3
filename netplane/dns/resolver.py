"""The pure resolver: one question + the zone index -> a :class:`Resolution` (no wire format, no I/O).

Rules, in order (names are compared lowercase; the caller lowercases):

1. A name in the cluster zone is answered authoritatively. Classes other than IN (and ANY) and
   zone transfers are REFUSED. A name with records of the asked type answers them (SRV adds the
   targets' addresses as additional records); a name with a CNAME answers it and follows it inside
   the zone (up to ``MAX_CHAIN`` links), or asks the caller to resolve an out-of-zone target
   (``chase``); a name that exists without the type (including empty non-terminals such as
   ``default.svc.cluster.local``) answers NOERROR with no data and the zone's SOA in authority; any
   other name answers NXDOMAIN with the SOA. ANY returns every record the name has.
2. A reverse name (``*.in-addr.arpa``, ``*.ip6.arpa``) with PTR records in the index is answered the
   same way; an unknown one falls through to forwarding, as CoreDNS's default Corefile does.
3. Everything else is forwarded (``forward=True``); the caller answers REFUSED when there is no
   upstream.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from netplane.dns.records import AAAA, CNAME, RR, SOA, SRV, A
from netplane.dns.zone import REVERSE_SUFFIXES, ZoneIndex

NOERROR, FORMERR, SERVFAIL, NXDOMAIN, NOTIMP, REFUSED = 0, 1, 2, 3, 4, 5
CLASS_IN, CLASS_ANY = 1, 255
TYPE_ANY, AXFR, IXFR = 255, 252, 251
MAX_CHAIN = 8  # CNAME links followed inside the zone before giving up (loops end here too)

# SOA timers as CoreDNS's kubernetes plugin publishes them (refresh 7200, retry 1800, expire 86400).
SOA_REFRESH, SOA_RETRY, SOA_EXPIRE = 7200, 1800, 86400


@dataclass(frozen=True, slots=True)
class Resolution:
    rcode: int = NOERROR
    answer: tuple[RR, ...] = ()
    authority: tuple[RR, ...] = ()
    additional: tuple[RR, ...] = ()
    authoritative: bool = True
    forward: bool = False
    # An out-of-zone CNAME target whose records of the asked type the caller appends (via upstream).
    chase: str | None = None
    # Names other than the question's whose records this answer includes (CNAME targets, SRV
    # targets): a cached answer must be dropped when any of them changes.
    depends: tuple[str, ...] = field(default=())


FORWARD = Resolution(forward=True, authoritative=False)
REFUSE = Resolution(rcode=REFUSED, authoritative=False)


class Resolver:
    def __init__(self, zone: str = "cluster.local", serial: int | None = None, negative_ttl: int = 5) -> None:
        self.zone = zone.rstrip(".").lower()
        self._dot_zone = "." + self.zone
        # One serial for the server's life: answers are invalidated by name, not by serial, so a
        # changing serial would only make every cached negative answer differ.
        self.serial = int(time.time()) if serial is None else serial
        self.negative_ttl = negative_ttl

    def in_zone(self, name: str) -> bool:
        return name == self.zone or name.endswith(self._dot_zone)

    def soa(self, owner: str | None = None) -> RR:
        # The SOA's minimum is the negative-caching TTL (RFC 2308).
        return RR(owner or self.zone, SOA, (f"ns.dns.{self.zone}", f"hostmaster.{self.zone}", self.serial,
                                            SOA_REFRESH, SOA_RETRY, SOA_EXPIRE, self.negative_ttl))

    def resolve(self, index: ZoneIndex, name: str, qtype: int, qclass: int = CLASS_IN) -> Resolution:
        if self.in_zone(name):
            if qclass not in (CLASS_IN, CLASS_ANY) or qtype in (AXFR, IXFR):
                return REFUSE
            return self._authoritative(index, name, qtype, self.zone)
        if name.endswith(REVERSE_SUFFIXES) and name in index.records and qclass in (CLASS_IN, CLASS_ANY):
            suffix = next(s for s in REVERSE_SUFFIXES if name.endswith(s))
            return self._authoritative(index, name, qtype, suffix[1:])
        return FORWARD

    def _authoritative(self, index: ZoneIndex, name: str, qtype: int, soa_owner: str) -> Resolution:
        records = index.records.get(name)
        soa = self.soa(soa_owner)
        if records is None:
            if index.exists(name):
                return Resolution(NOERROR, authority=(soa,))
            return Resolution(NXDOMAIN, authority=(soa,))
        at_apex = name == self.zone
        if qtype == TYPE_ANY:
            every = [rr for rrs in records.values() for rr in rrs]
            return Resolution(NOERROR, answer=(soa, *every) if at_apex else tuple(every))
        if qtype == SOA and at_apex:
            return Resolution(NOERROR, answer=(soa,))
        if qtype in records:
            if qtype == SRV:
                return self._with_targets(index, records[qtype])
            return Resolution(NOERROR, answer=records[qtype])
        if CNAME in records:
            return self._follow(index, records[CNAME], qtype, soa)
        return Resolution(NOERROR, authority=(soa,))

    def _with_targets(self, index: ZoneIndex, answer: tuple[RR, ...]) -> Resolution:
        targets = list(dict.fromkeys(str(rr.data[3]) for rr in answer if isinstance(rr.data, tuple)))
        extra: list[RR] = []
        for target in targets:
            recs = index.records.get(target) or {}
            extra.extend(recs.get(A, ()))
            extra.extend(recs.get(AAAA, ()))
        return Resolution(NOERROR, answer=answer, additional=tuple(extra), depends=tuple(targets))

    def _follow(self, index: ZoneIndex, cnames: tuple[RR, ...], qtype: int, soa: RR) -> Resolution:
        answer = list(cnames)
        depends: list[str] = []
        rcode = NOERROR
        target = str(cnames[0].data)
        for _ in range(MAX_CHAIN):
            if not self.in_zone(target):
                return Resolution(NOERROR, answer=tuple(answer), depends=tuple(depends), chase=target)
            depends.append(target)
            recs = index.records.get(target)
            if recs is None:
                # RFC 6604: the rcode describes the last name in the chain.
                rcode = NOERROR if index.exists(target) else NXDOMAIN
                break
            if qtype in recs:
                answer.extend(recs[qtype])
                return Resolution(NOERROR, answer=tuple(answer), depends=tuple(depends))
            if CNAME not in recs:
                break
            answer.extend(recs[CNAME])
            target = str(recs[CNAME][0].data)
        return Resolution(rcode, answer=tuple(answer), authority=(soa,), depends=tuple(depends))
