"""The engine on the wire, without sockets: bytes in, bytes out (dnspython as the client's codec)."""

from __future__ import annotations

import asyncio
import struct
from typing import Any

import dns.edns
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import pytest

from netplane.dns.engine import EXACT_MAX_RESPONSE, Engine, Job
from netplane.dns.wire import parse_full, parse_query
from netplane.dns.zone import ClusterModel
from tests.unit.dns.objects import endpoint, endpoint_slice, external, headless, service


def engine_with(*objs: dict[str, Any], upstream: Any = None) -> Engine:
    m = ClusterModel()
    e = Engine(m, upstream=upstream)
    for o in objs:
        handler = {"Service": m.on_service, "EndpointSlice": m.on_slice}[o["kind"]]
        e.invalidate(handler(None, o))
    return e


def query(name: str, rdtype: str = "A", **kw: Any) -> dns.message.Message:
    return dns.message.make_query(name, rdtype, **kw)


def exchange(e: Engine, q: dns.message.Message, tcp: bool = False) -> dns.message.Message:
    out = e.handle(q.to_wire(), tcp)
    assert isinstance(out, bytes), out
    r = dns.message.from_wire(out)
    assert q.is_response(r)
    return r


def addresses(r: dns.message.Message) -> list[str]:
    return sorted(rd.to_text() for rrset in r.answer if rrset.rdtype == dns.rdatatype.A for rd in rrset)


def test_answer_is_authoritative_with_ttl_and_echoes_the_question_case() -> None:
    e = engine_with(service("web"))
    resolved = []
    resolve = e.resolver.resolve
    e.resolver.resolve = lambda *a: resolved.append(a[1]) or resolve(*a)  # type: ignore[method-assign]
    r = exchange(e, query("WeB.DeFault.svc.Cluster.Local"))
    assert r.rcode() == dns.rcode.NOERROR and r.flags & dns.flags.AA and r.flags & dns.flags.QR
    assert addresses(r) == ["10.96.0.20"] and r.answer[0].ttl == 5
    assert r.question[0].name.to_text() == "WeB.DeFault.svc.Cluster.Local."
    # The cached answer is reused for other spellings, each echoed as asked.
    r2 = exchange(e, query("WEB.default.svc.cluster.local"))
    assert r2.question[0].name.to_text() == "WEB.default.svc.cluster.local." and addresses(r2) == ["10.96.0.20"]
    assert len(resolved) == 1


@pytest.mark.parametrize("rd", [True, False])
@pytest.mark.parametrize("cd", [True, False])
def test_rd_and_cd_bits_are_copied_from_each_query(rd: bool, cd: bool) -> None:
    e = engine_with(service("web"))
    for _ in range(2):  # a miss, then a cache hit
        q = query("web.default.svc.cluster.local")
        q.flags = (dns.flags.RD if rd else 0) | (dns.flags.CD if cd else 0)
        r = exchange(e, q)
        assert bool(r.flags & dns.flags.RD) == rd and bool(r.flags & dns.flags.CD) == cd


def test_cache_hit_is_byte_identical_to_a_fresh_render() -> None:
    e = engine_with(service("web"))
    q = query("_http._tcp.web.default.svc.cluster.local", "SRV", use_edns=0, payload=4096)
    first = e.handle(q.to_wire())
    second = e.handle(q.to_wire())
    fresh = engine_with(service("web")).handle(q.to_wire())
    assert first == second == fresh


def test_srv_answer_carries_target_address_in_additional() -> None:
    e = engine_with(service("web"))
    r = exchange(e, query("_http._tcp.web.default.svc.cluster.local", "SRV"))
    assert r.answer[0].to_text().endswith("SRV 0 100 80 web.default.svc.cluster.local.")
    assert [a.to_text() for a in r.additional] == ["web.default.svc.cluster.local. 5 IN A 10.96.0.20"]


def test_nxdomain_and_nodata_carry_the_soa() -> None:
    e = engine_with(service("web"))
    nx = exchange(e, query("nope.default.svc.cluster.local"))
    assert nx.rcode() == dns.rcode.NXDOMAIN and not nx.answer
    assert nx.authority[0].rdtype == dns.rdatatype.SOA and nx.authority[0].name.to_text() == "cluster.local."
    nodata = exchange(e, query("web.default.svc.cluster.local", "AAAA"))
    assert nodata.rcode() == dns.rcode.NOERROR and not nodata.answer and nodata.authority[0].rdtype == dns.rdatatype.SOA


def test_new_service_resolves_and_deleted_one_stops_after_the_cached_answer() -> None:
    e = engine_with()
    m = e.model
    q = query("web.default.svc.cluster.local")
    assert exchange(e, q).rcode() == dns.rcode.NXDOMAIN  # now cached
    ns_q = query("default.svc.cluster.local")
    assert exchange(e, ns_q).rcode() == dns.rcode.NXDOMAIN
    svc = service("web")
    e.invalidate(m.on_service(None, svc))
    assert addresses(exchange(e, q)) == ["10.96.0.20"]
    assert exchange(e, ns_q).rcode() == dns.rcode.NOERROR  # the namespace became an empty non-terminal
    e.invalidate(m.on_service(svc, None))
    assert exchange(e, q).rcode() == dns.rcode.NXDOMAIN


def test_srv_additional_follows_a_cluster_ip_change() -> None:
    e = engine_with(service("web"))
    q = query("_http._tcp.web.default.svc.cluster.local", "SRV")
    assert "10.96.0.20" in exchange(e, q).additional[0].to_text()
    e.invalidate(e.model.on_service(service("web"), service("web", cluster_ip="10.96.0.30")))
    assert "10.96.0.30" in exchange(e, q).additional[0].to_text()


def test_cname_answer_follows_its_in_zone_target_when_it_changes() -> None:
    e = engine_with(service("web"), external("alias", "web.default.svc.cluster.local"))
    q = query("alias.default.svc.cluster.local")
    assert addresses(exchange(e, q)) == ["10.96.0.20"]
    e.invalidate(e.model.on_service(service("web"), service("web", cluster_ip="10.96.0.30")))
    assert addresses(exchange(e, q)) == ["10.96.0.30"]


def test_edns_payload_is_honoured_and_large_answers_truncate_over_udp_only() -> None:
    eps = [endpoint(f"10.244.{i // 200}.{i % 200 + 1}") for i in range(100)]  # ~1.6 kB of A records
    e = engine_with(headless("big"), endpoint_slice("big", eps))
    name = "big.default.svc.cluster.local"
    plain = exchange(e, query(name))  # no EDNS: 512 bytes
    assert plain.flags & dns.flags.TC and not plain.answer
    small = exchange(e, query(name, use_edns=0, payload=1200))
    assert small.flags & dns.flags.TC and not small.answer and small.edns == 0
    big = exchange(e, query(name, use_edns=0, payload=4096))
    assert not big.flags & dns.flags.TC and len(addresses(big)) == 100
    assert big.payload == 1232  # our own advertised buffer
    tcp = exchange(e, query(name), tcp=True)
    assert not tcp.flags & dns.flags.TC and len(addresses(tcp)) == 100


def test_edns_do_bit_is_echoed() -> None:
    e = engine_with(service("web"))
    r = exchange(e, query("web.default.svc.cluster.local", use_edns=0, want_dnssec=True))
    assert r.ednsflags & dns.flags.DO
    r = exchange(e, query("web.default.svc.cluster.local", use_edns=0))
    assert not r.ednsflags & dns.flags.DO


def test_edns_options_such_as_cookies_are_accepted() -> None:
    e = engine_with(service("web"))
    opt = dns.edns.GenericOption(dns.edns.OptionType.COOKIE, b"\x01" * 8)
    r = exchange(e, query("web.default.svc.cluster.local", use_edns=0, options=[opt]))
    assert addresses(r) == ["10.96.0.20"]


def test_two_questions_get_formerr() -> None:
    e = engine_with(service("web"))
    q = query("web.default.svc.cluster.local")
    q.question.append(dns.message.make_query("x.default.svc.cluster.local", "A").question[0])
    out = e.handle(q.to_wire())
    assert isinstance(out, bytes) and out[:2] == q.to_wire()[:2]
    assert dns.message.from_wire(out).rcode() == dns.rcode.FORMERR


def test_no_question_gets_formerr() -> None:
    e = engine_with()
    wire = struct.pack("!HHHHHH", 0x1234, 0x0100, 0, 0, 0, 0)
    out = e.handle(wire)
    assert isinstance(out, bytes) and dns.message.from_wire(out).rcode() == dns.rcode.FORMERR


def test_junk_after_the_question_gets_formerr() -> None:
    e = engine_with(service("web"))
    out = e.handle(query("web.default.svc.cluster.local").to_wire() + b"\x00\x01junk")
    assert isinstance(out, bytes) and dns.message.from_wire(out).rcode() == dns.rcode.FORMERR


def test_unknown_edns_version_gets_badvers() -> None:
    e = engine_with(service("web"))
    out = e.handle(query("web.default.svc.cluster.local", use_edns=1).to_wire())
    assert isinstance(out, bytes)
    r = dns.message.from_wire(out)
    assert r.rcode() == dns.rcode.BADVERS and r.edns == 0


def test_other_opcodes_get_notimp_and_responses_and_runts_are_dropped() -> None:
    e = engine_with(service("web"))
    notify = query("cluster.local", "SOA")
    notify.set_opcode(dns.opcode.NOTIFY)
    out = e.handle(notify.to_wire())
    assert isinstance(out, bytes) and dns.message.from_wire(out).rcode() == dns.rcode.NOTIMP
    response = dns.message.make_response(query("web.default.svc.cluster.local")).to_wire()
    assert e.handle(response) is None
    assert e.handle(b"\x12\x34\x01") is None
    assert e.handle(b"") is None


def test_compressed_question_name_is_decoded_by_the_full_parser() -> None:
    e = engine_with(service("web"))
    plain = query("web.default.svc.cluster.local").to_wire()
    # Same question, but written as two names: 'svc.cluster.local' first then a pointer to it is
    # not allowed in a question; instead check that a pointer in the question is handled (decoded
    # by dnspython) or refused with FORMERR, never a crash.
    bad = plain[:12] + b"\xc0\x0c" + plain[-4:]
    out = e.handle(bad)
    assert out is None or (isinstance(out, bytes) and dns.message.from_wire(out).rcode() == dns.rcode.FORMERR)


def test_without_upstream_out_of_zone_names_are_refused() -> None:
    e = engine_with(service("web"))
    r = exchange(e, query("example.com"))
    assert r.rcode() == dns.rcode.REFUSED and not r.flags & dns.flags.AA and not r.flags & dns.flags.RA
    r = exchange(e, query("1.1.168.192.in-addr.arpa", "PTR"))
    assert r.rcode() == dns.rcode.REFUSED


class FakeUpstream:
    def __init__(self, answers: dict[tuple[str, int], dns.message.Message | None]) -> None:
        self.answers = answers
        self.asked: list[tuple[str, int]] = []

    async def resolve(self, name: str, qtype: int, qclass: int, do: bool) -> dns.message.Message | None:
        self.asked.append((name, qtype))
        return self.answers.get((name, qtype))


def upstream_answer(name: str, rdtype: str, *rdatas: str, rcode: int = 0) -> dns.message.Message:
    q = dns.message.make_query(name, rdtype)
    r = dns.message.make_response(q)
    if rdatas:
        r.answer.append(dns.rrset.from_text(name, 300, "IN", rdtype, *rdatas))
    r.set_rcode(dns.rcode.Rcode.make(rcode))
    return r


def finish(e: Engine, q: dns.message.Message, tcp: bool = False) -> dns.message.Message:
    job = e.handle(q.to_wire(), tcp)
    assert isinstance(job, Job)
    out = asyncio.run(e.finish(job))
    assert out is not None
    r = dns.message.from_wire(out)
    assert q.is_response(r)
    return r


def test_out_of_zone_names_are_forwarded_with_the_clients_id() -> None:
    up = FakeUpstream({("example.com", 1): upstream_answer("example.com.", "A", "93.184.216.34")})
    e = engine_with(service("web"), upstream=up)
    r = finish(e, query("Example.com"))
    assert addresses(r) == ["93.184.216.34"] and r.flags & dns.flags.RA and not r.flags & dns.flags.AA
    assert up.asked == [("example.com", 1)]
    # Zone answers advertise recursion too once an upstream exists.
    assert exchange(e, query("web.default.svc.cluster.local")).flags & dns.flags.RA


def test_upstream_failure_is_servfail() -> None:
    e = engine_with(upstream=FakeUpstream({}))
    assert finish(e, query("example.com")).rcode() == dns.rcode.SERVFAIL


def test_upstream_nxdomain_is_passed_on() -> None:
    up = FakeUpstream({("nope.example", 1): upstream_answer("nope.example.", "A", rcode=3)})
    e = engine_with(upstream=up)
    assert finish(e, query("nope.example")).rcode() == dns.rcode.NXDOMAIN


def test_external_name_target_address_is_appended() -> None:
    up = FakeUpstream({("example.com", 1): upstream_answer("example.com.", "A", "93.184.216.34")})
    e = engine_with(external("ext", "example.com"), upstream=up)
    r = finish(e, query("ext.default.svc.cluster.local"))
    assert [rr.to_text() for rr in r.answer] == ["ext.default.svc.cluster.local. 5 IN CNAME example.com.",
                                                 "example.com. 300 IN A 93.184.216.34"]
    assert r.flags & dns.flags.AA
    # Upstream down: the CNAME alone, NOERROR.
    e2 = engine_with(external("ext", "example.com"), upstream=FakeUpstream({}))
    r = finish(e2, query("ext.default.svc.cluster.local"))
    assert r.rcode() == dns.rcode.NOERROR and [rr.rdtype for rr in r.answer] == [dns.rdatatype.CNAME]


def test_external_name_without_upstream_is_the_cname_alone() -> None:
    e = engine_with(external("ext", "example.com"))
    r = exchange(e, query("ext.default.svc.cluster.local"))
    assert r.rcode() == dns.rcode.NOERROR and r.answer[0].rdtype == dns.rdatatype.CNAME and len(r.answer) == 1


def test_forwarded_answer_too_large_for_udp_is_truncated() -> None:
    many = [f"10.0.{i // 250}.{i % 250 + 1}" for i in range(60)]
    up = FakeUpstream({("big.example", 1): upstream_answer("big.example.", "A", *many)})
    e = engine_with(upstream=up)
    r = finish(e, query("big.example"))
    assert r.flags & dns.flags.TC and not r.answer
    r = finish(e, query("big.example"), tcp=True)
    assert len(addresses(r)) == 60


def test_fast_parser_agrees_with_the_full_decoder() -> None:
    for q in (query("web.default.svc.cluster.local"), query("A.b", "SRV", use_edns=0, payload=900),
              query("x.cluster.local", "TXT", use_edns=0, want_dnssec=True)):
        q.flags |= dns.flags.CD
        data = q.to_wire()
        assert parse_query(data) == parse_full(data)


def test_cache_stays_bounded() -> None:
    m = ClusterModel()
    e = Engine(m, cache_names=50)
    for i in range(500):
        exchange(e, query(f"n{i}.default.svc.cluster.local"))
    assert len(e._cache) <= 50


def test_odd_bytes_in_a_zone_name_get_a_well_formed_nxdomain() -> None:
    # A label with a NUL and a dot in it: spelled with escapes in text, so no compression pointer
    # may be computed from the text (found by the fuzz test).
    e = engine_with(service("web"))
    wire = query("web.default.svc.cluster.local").to_wire()
    odd = wire[:13] + b"\x00.b" + wire[16:]
    r = dns.message.from_wire(e.handle(odd))  # type: ignore[arg-type]
    assert r.rcode() == dns.rcode.NXDOMAIN and r.question[0].name.labels[0] == b"\x00.b"
    assert r.authority[0].name.to_text() == "cluster.local."


def test_every_record_type_decodes_as_dnspython_reads_it() -> None:
    svc = service("web")
    svc["spec"]["clusterIPs"] = ["10.96.0.20", "fd00::20"]
    e = engine_with(svc, external("ext", "web.default.svc.cluster.local"))
    want = {
        ("cluster.local", "NS"): ["ns.dns.cluster.local."],
        ("cluster.local", "SOA"): [f"ns.dns.cluster.local. hostmaster.cluster.local. {e.resolver.serial} 7200 1800 "
                                   "86400 5"],
        ("dns-version.cluster.local", "TXT"): ['"1.1.0"'],
        ("web.default.svc.cluster.local", "AAAA"): ["fd00::20"],
        ("0.2.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.d.f.ip6.arpa", "PTR"):
            ["web.default.svc.cluster.local."],
        ("ext.default.svc.cluster.local", "CNAME"): ["web.default.svc.cluster.local."],
        ("_http._tcp.web.default.svc.cluster.local", "SRV"): ["0 100 80 web.default.svc.cluster.local."],
    }
    for (name, rdtype), texts in want.items():
        r = exchange(e, query(name, rdtype, use_edns=0))
        assert [rd.to_text() for rrset in r.answer for rd in rrset] == texts, name
        assert r.answer[0].name.to_text() == name + "."


def test_before_the_caches_sync_the_zone_answers_servfail_and_nothing_is_cached() -> None:
    e = engine_with(upstream=FakeUpstream({}))
    e.synced = False
    r = exchange(e, query("web.default.svc.cluster.local"))
    assert r.rcode() == dns.rcode.SERVFAIL
    assert isinstance(e.handle(query("example.com").to_wire()), Job)  # forwarding works meanwhile
    e.synced = True
    e.invalidate(e.model.on_service(None, service("web")))
    assert addresses(exchange(e, query("web.default.svc.cluster.local"))) == ["10.96.0.20"]


# -- the exact cache: a repeated UDP query answered from its own bytes -----------------------------

def warm(e: Engine, q: dns.message.Message) -> bytes:
    """Ask three times (a miss, a response-cache hit, an exact-cache hit): the answers must agree."""
    answers = {e.handle(q.to_wire()) for _ in range(3)}
    assert len(answers) == 1
    out = answers.pop()
    assert isinstance(out, bytes)
    return out


def test_repeated_query_gets_the_same_answer_with_each_clients_id() -> None:
    e = engine_with(service("web"))
    q = query("web.default.svc.cluster.local")
    first = warm(e, q)
    for qid in (0, 1, 0xBEEF, 0xFFFF):
        q.id = qid
        out = e.handle(q.to_wire())
        assert isinstance(out, bytes) and out[:2] == qid.to_bytes(2, "big") and out[2:] == first[2:]
        assert e.cached_udp(q.to_wire()) == out  # from the exact cache, without the lock
    assert e.cached_udp(query("other.default.svc.cluster.local").to_wire()) is None


def test_repeated_answers_follow_every_kind_of_change() -> None:
    e = engine_with(service("web"), external("alias", "web.default.svc.cluster.local"))
    a = query("web.default.svc.cluster.local")
    srv = query("_http._tcp.web.default.svc.cluster.local", "SRV")
    cname = query("alias.default.svc.cluster.local")
    for q in (a, srv, cname):
        warm(e, q)
    e.invalidate(e.model.on_service(service("web"), service("web", cluster_ip="10.96.0.30")))
    assert addresses(exchange(e, a)) == ["10.96.0.30"]  # the name itself changed
    assert "10.96.0.30" in exchange(e, srv).additional[0].to_text()  # a name its answer depends on
    assert addresses(exchange(e, cname)) == ["10.96.0.30"]  # the CNAME's in-zone target
    for q in (a, srv, cname):
        warm(e, q)
    e.invalidate(e.model.on_service(service("web", cluster_ip="10.96.0.30"), None))
    assert exchange(e, a).rcode() == dns.rcode.NXDOMAIN
    assert exchange(e, srv).rcode() == dns.rcode.NXDOMAIN


def test_repeated_query_over_tcp_is_not_answered_with_the_truncated_udp_form() -> None:
    eps = [endpoint(f"10.244.{i // 200}.{i % 200 + 1}") for i in range(100)]  # ~1.6 kB of A records
    e = engine_with(headless("big"), endpoint_slice("big", eps))
    q = query("big.default.svc.cluster.local")  # no EDNS: 512 bytes over UDP
    r = dns.message.from_wire(warm(e, q))
    assert r.flags & dns.flags.TC and not r.answer
    assert len(addresses(exchange(e, q, tcp=True))) == 100


def test_a_name_with_a_zero_byte_in_a_label_is_not_taken_for_a_cached_name() -> None:
    e = engine_with(service("web"))
    wire_q = query("web.default.svc.cluster.local").to_wire()
    warm(e, query("web.default.svc.cluster.local"))
    # The same bytes with the label "web" spelled "we\0": the first zero byte now sits inside it.
    odd = wire_q[:15] + b"\x00" + wire_q[16:]
    for _ in range(3):
        r = dns.message.from_wire(e.handle(odd))  # type: ignore[arg-type]
        assert r.rcode() == dns.rcode.NXDOMAIN and r.question[0].name.labels[0] == b"we\x00"


def test_exact_cache_stays_bounded() -> None:
    e = Engine(ClusterModel(), cache_names=50)
    for i in range(300):
        warm(e, query(f"n{i}.default.svc.cluster.local"))
    assert len(e._exact) <= 50


def test_exact_cache_keeps_only_small_answers() -> None:
    # Keyed by spelling, the exact cache would hold a copy of a large answer per 0x20 variant: large
    # answers are served from the response cache (one entry per name) and not copied into it.
    eps = [endpoint(f"10.244.{i // 200}.{i % 200 + 1}") for i in range(100)]
    e = engine_with(headless("big"), service("web"), endpoint_slice("big", eps))
    big = query("big.default.svc.cluster.local")
    big.use_edns(payload=4096)
    out = warm(e, big)
    assert len(out) > EXACT_MAX_RESPONSE and len(addresses(dns.message.from_wire(out))) == 100
    assert e._exact == {}
    warm(e, query("web.default.svc.cluster.local"))
    assert len(e._exact) == 1
