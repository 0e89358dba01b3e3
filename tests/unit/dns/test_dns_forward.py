"""Upstream selection and the forwarding cache (fake exchanges and a fake clock: no sockets)."""

from __future__ import annotations

import asyncio

import dns.message
import dns.rcode
import dns.rrset
import pytest

from netplane.dns.forward import Forwarder, cache_ttl, parse_resolv_conf, parse_upstream, without_self


def test_parse_upstream() -> None:
    assert parse_upstream("1.1.1.1") == ("1.1.1.1", 53)
    assert parse_upstream("10.0.0.2:5353") == ("10.0.0.2", 5353)
    assert parse_upstream("[2001:db8::1]:54") == ("2001:db8::1", 54)
    assert parse_upstream("2001:db8::1") == ("2001:db8::1", 53)
    for bad in ("example.com", "1.1.1.1:x", "1.1.1.1:0", "[::1]x", ""):
        with pytest.raises(ValueError):
            parse_upstream(bad)


def test_parse_resolv_conf() -> None:
    text = ("# comment\nsearch default.svc.cluster.local\nnameserver 10.0.0.2\nnameserver fe80::1%eth0\n"
            "nameserver bogus\nnameserver 10.0.0.2\noptions ndots:5\n  nameserver 10.0.0.3 # trailing\n")
    assert parse_resolv_conf(text) == [("10.0.0.2", 53), ("fe80::1", 53), ("10.0.0.3", 53)]
    assert parse_resolv_conf("") == []


def test_upstreams_that_are_this_server_are_dropped() -> None:
    servers = [("10.96.0.10", 53), ("127.0.0.1", 53), ("127.0.0.1", 5353), ("1.1.1.1", 53)]
    assert without_self(servers, [("10.96.0.10", 53)]) == servers[1:]
    assert without_self(servers, [("0.0.0.0", 53)]) == [("10.96.0.10", 53), ("127.0.0.1", 5353), ("1.1.1.1", 53)]


def answer(name: str, ttl: int = 300, rcode: int = 0) -> dns.message.Message:
    r = dns.message.make_response(dns.message.make_query(name, "A"))
    if rcode == 0:
        r.answer.append(dns.rrset.from_text(name, ttl, "IN", "A", "192.0.2.1"))
    else:
        r.set_rcode(dns.rcode.Rcode.make(rcode))
        r.authority.append(dns.rrset.from_text("example.", 600, "IN", "SOA",
                                               "ns.example. h.example. 1 7200 900 86400 60"))
    return r


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_cache_ttl_rules() -> None:
    assert cache_ttl(answer("a.example.", 300), 30) == 30
    assert cache_ttl(answer("a.example.", 7), 30) == 7
    assert cache_ttl(answer("a.example.", rcode=3), 120) == 60  # SOA minimum
    assert cache_ttl(answer("a.example.", rcode=2), 30) == 0  # SERVFAIL is not cached


def test_answers_are_cached_with_ttl_counting_down_then_expire() -> None:
    calls: list[tuple[str, int]] = []
    clock = Clock()

    async def exchange(q: dns.message.Message, host: str, port: int, timeout: float) -> dns.message.Message:
        calls.append((host, port))
        return answer(q.question[0].name.to_text(), 20)

    async def go() -> None:
        f = Forwarder([("192.0.2.53", 53)], exchange=exchange, clock=clock)
        first = await f.resolve("a.example", 1, 1, False)
        assert first is not None and first.answer[0].ttl == 20
        clock.now += 5
        again = await f.resolve("A.Example", 1, 1, False)
        assert again is not None and again.answer[0].ttl == 15 and len(calls) == 1
        clock.now += 16
        await f.resolve("a.example", 1, 1, False)
        assert len(calls) == 2

    asyncio.run(asyncio.wait_for(go(), 10))


def test_failover_to_the_next_upstream_and_none_when_all_fail() -> None:
    async def exchange(q: dns.message.Message, host: str, port: int, timeout: float) -> dns.message.Message:
        if host == "192.0.2.1":
            raise TimeoutError
        return answer("a.example.")

    async def go() -> None:
        f = Forwarder([("192.0.2.1", 53), ("192.0.2.2", 53)], exchange=exchange)
        got = await f.resolve("a.example", 1, 1, False)
        assert got is not None and got.answer
        dead = Forwarder([("192.0.2.1", 53)], exchange=exchange)
        assert await dead.resolve("a.example", 1, 1, False) is None
        assert dead.stats["failures"] == 1

    asyncio.run(asyncio.wait_for(go(), 10))


def test_identical_questions_in_flight_share_one_upstream_query() -> None:
    calls = 0
    release = asyncio.Event()

    async def exchange(q: dns.message.Message, host: str, port: int, timeout: float) -> dns.message.Message:
        nonlocal calls
        calls += 1
        await release.wait()
        return answer("a.example.")

    async def go() -> None:
        f = Forwarder([("192.0.2.1", 53)], exchange=exchange)
        tasks = [asyncio.ensure_future(f.resolve("a.example", 1, 1, False)) for _ in range(5)]
        await asyncio.sleep(0)
        release.set()
        results = await asyncio.gather(*tasks)
        assert calls == 1 and all(r is not None and r.answer for r in results)

    asyncio.run(asyncio.wait_for(go(), 10))
