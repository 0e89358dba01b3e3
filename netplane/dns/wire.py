"""The DNS wire format: a minimal fast query parser, and rendering with dnspython (no I/O).

The fast parser reads only what the common query has: a 12-byte header with one question, no
answer or authority records, and at most one additional record that is an EDNS0 OPT. Anything else
(compression in the question, several questions, unknown EDNS versions, junk) returns None and goes
through dnspython's full decoder, which turns malformed input into a FORMERR.

Rendering goes through dnspython (name compression, EDNS, size limits); the engine caches what it
renders, so dnspython is off the hot path.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterable
from dataclasses import dataclass

import dns.edns
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.CNAME
import dns.rdtypes.ANY.NS
import dns.rdtypes.ANY.PTR
import dns.rdtypes.ANY.SOA
import dns.rdtypes.ANY.TXT
import dns.rdtypes.IN.A
import dns.rdtypes.IN.AAAA
import dns.rdtypes.IN.SRV
import dns.rrset

from netplane.dns.records import AAAA, CNAME, NS, PTR, RR, SOA, SRV, TXT, A

HEADER = 12
OPT = 41
MAX_NAME = 255
QR, AA, TC, RD = 0x80, 0x04, 0x02, 0x01  # in header byte 2
RA, CD = 0x80, 0x10  # in header byte 3
DO = 0x80  # in the OPT TTL's flags, first byte
BADVERS = 16
IN = dns.rdataclass.IN


@dataclass(frozen=True, slots=True)
class Query:
    """One parsed question, with the header bits and EDNS values a response needs."""

    qid: bytes  # 2 bytes, as sent
    flags2: int  # header byte 2 as sent (RD is bit 0)
    flags3: int  # header byte 3 as sent (CD is 0x10)
    qname: bytes  # the question name in wire format, as sent (case preserved)
    qtype: int
    qclass: int
    edns: bool
    payload: int  # the client's UDP buffer size (512 without EDNS)
    do: bool

    @property
    def key(self) -> bytes:
        return self.qname.lower()


def parse_query(data: bytes) -> Query | None:
    """The common query shape, or None (then use :func:`parse_full`)."""
    n = len(data)
    if n < HEADER + 5 or data[2] & 0xF8 or data[4:10] != b"\x00\x01\x00\x00\x00\x00":
        return None
    i = HEADER
    try:
        length = data[i]
        while length:
            if length > 63:
                return None  # a compression pointer or an extended label type
            i += length + 1
            length = data[i]
    except IndexError:
        return None
    end = i + 1
    if end - HEADER > MAX_NAME or end + 4 > n:
        return None
    qtype, qclass = struct.unpack_from("!HH", data, end)
    rest = end + 4
    arcount = data[10:12]
    edns, payload, do = False, 512, False
    if arcount == b"\x00\x01":
        opt = data[rest:]
        # root owner, type OPT, class = payload, TTL = ext-rcode 0, version 0, flags; rdlength
        if len(opt) < 11 or opt[0] != 0 or opt[1:3] != b"\x00\x29" or opt[5] != 0 or opt[6] != 0:
            return None
        if 11 + int.from_bytes(opt[9:11], "big") != len(opt):
            return None
        edns, payload, do = True, max(512, int.from_bytes(opt[3:5], "big")), bool(opt[7] & DO)
    elif arcount != b"\x00\x00" or rest != n:
        return None
    return Query(data[:2], data[2], data[3], data[HEADER:end], qtype, qclass, edns, payload, do)


class FormatError(Exception):
    """The packet is a query that cannot be decoded: answer FORMERR (or BADVERS when ``rcode`` says so)."""

    def __init__(self, message: str, rcode: int = 1) -> None:
        super().__init__(message)
        self.rcode = rcode


def parse_full(data: bytes) -> Query | None:
    """Any query dnspython can decode; None for what must be dropped (too short, or a response);
    FormatError for a query that deserves FORMERR (several questions, junk) or BADVERS."""
    if len(data) < HEADER or data[2] & QR:
        return None  # never answer responses: two servers could bounce errors forever
    try:
        msg = dns.message.from_wire(data)
    except Exception as e:  # dnspython raises many kinds for malformed input
        raise FormatError(f"undecodable query: {type(e).__name__}") from e
    if len(msg.question) != 1:
        raise FormatError(f"{len(msg.question)} questions")
    if msg.edns > 0:
        raise FormatError(f"EDNS version {msg.edns}", BADVERS)
    q = msg.question[0]
    qname = q.name.to_wire()
    if qname is None or len(qname) > MAX_NAME:
        raise FormatError("bad question name")
    edns = msg.edns == 0
    return Query(data[:2], data[2], data[3], qname, int(q.rdtype), int(q.rdclass), edns,
                 max(512, msg.payload) if edns else 512, bool(msg.ednsflags & dns.flags.DO))


_HOSTNAME_BYTES = b"abcdefghijklmnopqrstuvwxyz0123456789-_"


def plain_name_text(qname: bytes) -> str | None:
    """Wire name -> lowercase text when every label is plain hostname characters (what index names
    are made of); None when some label would need escapes."""
    labels = []
    i = 0
    while i < len(qname) and qname[i]:
        n = qname[i]
        label = qname[i + 1:i + 1 + n].lower()
        if label.translate(None, _HOSTNAME_BYTES):
            return None
        labels.append(label.decode())
        i += n + 1
    return ".".join(labels)


def name_text(qname: bytes) -> str:
    """Wire name -> lowercase text without the trailing dot, as the index keys names ('' for the root)."""
    plain = plain_name_text(qname)
    if plain is not None:
        return plain
    name, _ = dns.name.from_wire(qname, 0)
    return name.to_text(omit_final_dot=True).lower() if len(name.labels) > 1 else ""


def name_wire(text: str) -> bytes:
    """Lowercase text name -> wire format (names in the index are plain hostnames)."""
    return dns.name.from_text(text or ".").canonicalize().to_wire() or b"\x00"


def _name(text: str) -> dns.name.Name:
    return dns.name.from_text(text + "." if text else ".")


def rdata(rr: RR) -> dns.rdata.Rdata:
    d = rr.data
    if rr.rtype == A:
        return dns.rdtypes.IN.A.A(IN, A, str(d))
    if rr.rtype == AAAA:
        return dns.rdtypes.IN.AAAA.AAAA(IN, AAAA, str(d))
    if rr.rtype == PTR:
        return dns.rdtypes.ANY.PTR.PTR(IN, PTR, _name(str(d)))
    if rr.rtype == CNAME:
        return dns.rdtypes.ANY.CNAME.CNAME(IN, CNAME, _name(str(d)))
    if rr.rtype == NS:
        return dns.rdtypes.ANY.NS.NS(IN, NS, _name(str(d)))
    if rr.rtype == TXT:
        return dns.rdtypes.ANY.TXT.TXT(IN, dns.rdatatype.TXT, [str(d).encode()])
    if rr.rtype == SRV and isinstance(d, tuple):
        return dns.rdtypes.IN.SRV.SRV(IN, SRV, d[0], d[1], d[2], _name(str(d[3])))
    if rr.rtype == SOA and isinstance(d, tuple):
        return dns.rdtypes.ANY.SOA.SOA(IN, SOA, _name(d[0]), _name(d[1]), *d[2:])
    raise ValueError(f"cannot render record type {rr.rtype}")


def rrsets(rrs: Iterable[RR], ttl: int, question: dns.name.Name, question_text: str) -> list[dns.rrset.RRset]:
    """Records grouped into RRsets in first-seen order; the question's own name keeps the client's case."""
    out: dict[tuple[str, int], dns.rrset.RRset] = {}
    for rr in rrs:
        key = (rr.name, rr.rtype)
        rrset = out.get(key)
        if rrset is None:
            owner = question if rr.name == question_text else _name(rr.name)
            rrset = out[key] = dns.rrset.RRset(owner, IN, dns.rdatatype.RdataType.make(rr.rtype))
            rrset.update_ttl(ttl)
        rrset.add(rdata(rr), ttl)
    return list(out.values())


def response_message(q: Query, rcode: int, authoritative: bool, recursion_available: bool,
                     udp_payload: int) -> dns.message.Message:
    """An empty response to q: header bits, the question as sent, EDNS when the query had it."""
    msg = dns.message.Message(id=int.from_bytes(q.qid, "big"))
    flags = dns.flags.QR
    if q.flags2 & RD:
        flags |= dns.flags.RD
    if q.flags3 & CD:
        flags |= dns.flags.CD
    if authoritative:
        flags |= dns.flags.AA
    if recursion_available:
        flags |= dns.flags.RA
    msg.flags = flags
    qname, _ = dns.name.from_wire(q.qname, 0)
    msg.question.append(dns.rrset.RRset(qname, dns.rdataclass.RdataClass.make(q.qclass),
                                        dns.rdatatype.RdataType.make(q.qtype)))
    if q.edns:
        msg.use_edns(0, dns.flags.DO if q.do else 0, udp_payload)
    msg.set_rcode(dns.rcode.Rcode.make(rcode))
    return msg


# -- the hand encoder for zone answers ---------------------------------------------------------------

_TYPE_CLASS_IN = {t: struct.pack("!HH", t, 1) for t in (A, NS, CNAME, SOA, PTR, TXT, AAAA, SRV)}
# Types whose RDATA names may be compressed (RFC 3597 section 4: the RFC 1035 types only; not SRV).
_COMPRESSIBLE = {NS, CNAME, PTR, SOA}


class _Writer:
    """A response being written, with RFC 1035 name compression (pointers to earlier names)."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self.names: dict[str, int] = {}  # lowercase suffix -> offset of its first label

    def register_question(self, qtext: str, at: int) -> None:
        """Make the question's name (and its suffixes) targets for compression pointers."""
        if not qtext:
            return
        labels = qtext.split(".")
        for k in range(len(labels)):
            self.names.setdefault(".".join(labels[k:]), at)
            at += len(labels[k]) + 1

    def name(self, name: str, compress: bool = True) -> None:
        labels = name.split(".") if name else []
        for k in range(len(labels)):
            suffix = ".".join(labels[k:])
            if compress:
                ptr = self.names.get(suffix)
                if ptr is not None:
                    self.buf += struct.pack("!H", 0xC000 | ptr)
                    return
                if len(self.buf) < 0x3FFF:
                    self.names[suffix] = len(self.buf)
            raw = labels[k].encode("ascii")
            if not 0 < len(raw) < 64:
                raise ValueError(f"bad label in {name!r}")
            self.buf.append(len(raw))
            self.buf += raw
        self.buf.append(0)

    def record(self, rr: RR, ttl: int) -> None:
        self.name(rr.name)
        self.buf += _TYPE_CLASS_IN[rr.rtype]
        self.buf += struct.pack("!I", ttl)
        at = len(self.buf)
        self.buf += b"\x00\x00"  # RDLENGTH, filled in below
        d = rr.data
        if rr.rtype == A:
            self.buf += socket.inet_pton(socket.AF_INET, str(d))
        elif rr.rtype == AAAA:
            self.buf += socket.inet_pton(socket.AF_INET6, str(d))
        elif rr.rtype in (PTR, CNAME, NS):
            self.name(str(d))
        elif rr.rtype == SRV and isinstance(d, tuple):
            self.buf += struct.pack("!HHH", d[0], d[1], d[2])
            self.name(str(d[3]), compress=False)
        elif rr.rtype == TXT:
            raw = str(d).encode()
            for i in range(0, max(len(raw), 1), 255):
                chunk = raw[i:i + 255]
                self.buf.append(len(chunk))
                self.buf += chunk
        elif rr.rtype == SOA and isinstance(d, tuple):
            self.name(str(d[0]))
            self.name(str(d[1]))
            self.buf += struct.pack("!IIIII", *d[2:7])
        else:
            raise ValueError(f"cannot render record type {rr.rtype}")
        struct.pack_into("!H", self.buf, at, len(self.buf) - at - 2)


def _opt(udp_payload: int, do: bool) -> bytes:
    return b"\x00" + struct.pack("!HHBBBBH", OPT, udp_payload, 0, 0, DO if do else 0, 0, 0)


def encode_response(q: Query, rcode: int, answer: Iterable[RR], authority: Iterable[RR],
                    additional: Iterable[RR], ttl: int, authoritative: bool, recursion_available: bool,
                    udp_payload: int, truncate: bool = False, qtext: str | None = None) -> bytes:
    """A zone answer in wire form, without dnspython (the cache-miss path must be quick too).
    With truncate: the header with TC, the question and EDNS only. qtext: the question as
    plain_name_text spells it, when known ('' when it is not plain: no pointers into it)."""
    w = _Writer()
    flags2 = QR | (AA if authoritative else 0) | (TC if truncate else 0) | (q.flags2 & RD)
    flags3 = (RA if recursion_available else 0) | (q.flags3 & CD) | (rcode & 0x0F)
    sections = ([], [], []) if truncate else (list(answer), list(authority), list(additional))
    w.buf += q.qid + bytes((flags2, flags3))
    w.buf += struct.pack("!HHHH", 1, len(sections[0]), len(sections[1]), len(sections[2]) + (1 if q.edns else 0))
    if qtext is None:
        qtext = plain_name_text(q.qname)
    if qtext:
        w.register_question(qtext, len(w.buf))
    w.buf += q.qname + struct.pack("!HH", q.qtype, q.qclass)
    for section in sections:
        for rr in section:
            w.record(rr, ttl)
    if q.edns:
        w.buf += _opt(udp_payload, q.do)
    return bytes(w.buf)


def truncated(q: Query, rcode: int, authoritative: bool, recursion_available: bool, udp_payload: int) -> bytes:
    """The answer for a response too large for the client's UDP buffer: header with TC, the question,
    EDNS; no records, so the client retries over TCP (RFC 7766)."""
    return encode_response(q, rcode, (), (), (), 0, authoritative, recursion_available, udp_payload, truncate=True)


def header_only(data: bytes, rcode: int) -> bytes | None:
    """A response carrying only the header (FORMERR, NOTIMP for queries we cannot parse); None when
    the packet is not a query at all."""
    if len(data) < HEADER or data[2] & QR:
        return None
    flags2 = QR | (data[2] & 0x78) | (data[2] & RD)  # keep opcode and RD
    return data[:2] + bytes((flags2, rcode & 0x0F)) + b"\x00" * 8


def badvers(data: bytes, udp_payload: int) -> bytes | None:
    """RFC 6891: BADVERS (extended rcode 16) with our OPT, version 0."""
    if len(data) < HEADER or data[2] & QR:
        return None
    flags2 = QR | (data[2] & RD)
    opt = b"\x00" + struct.pack("!HHBBHH", OPT, udp_payload, BADVERS >> 4, 0, 0, 0)
    return data[:2] + bytes((flags2, BADVERS & 0x0F)) + b"\x00\x00\x00\x00\x00\x00\x00\x01" + opt
