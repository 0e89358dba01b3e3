"""Fuzzing the decoder: random and mutated packets never crash the engine, and every reply is a
well-formed DNS response to the packet it answers."""

from __future__ import annotations

import dns.message
import dns.rcode
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from netplane.dns.engine import Engine, Job
from netplane.dns.zone import ClusterModel
from tests.unit.dns.objects import endpoint, endpoint_slice, external, headless, service


def _engine() -> Engine:
    m = ClusterModel()
    e = Engine(m)
    for o in (service("web"), headless("db"), endpoint_slice("db", [endpoint("10.244.1.5", hostname="db-0")]),
              external("ext", "web.default.svc.cluster.local")):
        e.invalidate(m.on_service(None, o) if o["kind"] == "Service" else m.on_slice(None, o))
    return e


ENGINE = _engine()
SEEDS = [dns.message.make_query(n, t, use_edns=e).to_wire() for n, t, e in [
    ("web.default.svc.cluster.local", "A", None), ("_http._tcp.web.default.svc.cluster.local", "SRV", 0),
    ("db.default.svc.cluster.local", "A", 0), ("20.0.96.10.in-addr.arpa", "PTR", None),
    ("ext.default.svc.cluster.local", "A", 0), ("x.y.z.cluster.local", "AAAA", None), ("cluster.local", "SOA", 0)]]


def check(data: bytes) -> None:
    for tcp in (False, True):
        out = ENGINE.handle(data, tcp)
        if out is None or isinstance(out, Job):
            continue
        assert isinstance(out, bytes)
        assert out[:2] == data[:2], "a reply carries the query's ID"
        assert out[2] & 0x80, "a reply has QR set"
        # Well-formed: dnspython decodes it completely (header-only error replies included).
        reply = dns.message.from_wire(out)
        assert len(reply.question) <= 1
        if not tcp:
            assert len(out) <= 4096


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(min_size=0, max_size=300))
def test_random_packets(data: bytes) -> None:
    check(data)


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(SEEDS), st.lists(st.tuples(st.integers(0, 400), st.integers(0, 255)), max_size=6),
       st.integers(0, 400), st.binary(max_size=20))
def test_mutated_queries(seed: bytes, flips: list[tuple[int, int]], cut: int, extra: bytes) -> None:
    data = bytearray(seed)
    for pos, value in flips:
        if data:
            data[pos % len(data)] = value
    data = data[: max(cut, 12)] + extra if cut < len(data) else data + extra
    check(bytes(data))


@settings(max_examples=500, deadline=None)
@given(st.sampled_from(SEEDS), st.integers(0, 0xFFFF), st.integers(0, 0xFF))
def test_header_variants_of_valid_queries(seed: bytes, qid: int, flags: int) -> None:
    data = qid.to_bytes(2, "big") + bytes((seed[2], flags)) + seed[4:]
    out = ENGINE.handle(data)
    if out is not None and not isinstance(out, Job):
        reply = dns.message.from_wire(out)
        assert reply.id == qid and reply.rcode() in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN, dns.rcode.FORMERR)
