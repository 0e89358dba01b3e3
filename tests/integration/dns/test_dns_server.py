"""`netplane dns` as a process against a real state server, queried by real clients (dnspython, dig)."""

from __future__ import annotations

import os
import random
import re
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import dns.exception
import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import dns.reversename
import pytest

from tests.integration.dns.conftest import SERVICES, SLICES, Dnsmasq, DNSProcess, api_call, start_dns
from tests.support.server import ServerProcess, start_server

pytestmark = pytest.mark.root


def svc(name: str, ports: list[dict[str, Any]] | None = None, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "default"},
            "spec": {"ports": ports or [{"name": "http", "port": 80, "protocol": "TCP"}], **spec}}


def create(url: str, obj: dict[str, Any]) -> dict[str, Any]:
    info = SERVICES if obj["kind"] == "Service" else SLICES
    out: dict[str, Any] = api_call(url, lambda c: c.create(info, obj, "default"))
    return out


def delete(url: str, kind: str, name: str) -> None:
    info = SERVICES if kind == "Service" else SLICES
    api_call(url, lambda c: c.delete(info, name, "default"))


def ask(d: DNSProcess, name: str, rdtype: str = "A", tcp: bool = False, **kw: Any) -> dns.message.Message:
    q = dns.message.make_query(name, rdtype, **kw)
    if tcp:
        return dns.query.tcp(q, d.host, port=d.port, timeout=3)
    return dns.query.udp(q, d.host, port=d.port, timeout=3)


def addresses(r: dns.message.Message) -> list[str]:
    return sorted(rd.to_text() for rrset in r.answer if rrset.rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA)
                  for rd in rrset)


def wait_answer(d: DNSProcess, name: str, want: Any, timeout: float = 10.0, rdtype: str = "A") -> float:
    """Poll until addresses(answer) == want; the seconds it took."""
    start = time.monotonic()
    last: Any = None
    while time.monotonic() - start < timeout:
        r = ask(d, name, rdtype)
        last = (dns.rcode.to_text(r.rcode()), addresses(r))
        if (want is None and r.rcode() == dns.rcode.NXDOMAIN) or (want is not None and addresses(r) == want):
            return time.monotonic() - start
        time.sleep(0.01)
    raise AssertionError(f"{name}: wanted {want}, last answer {last}")


def test_udp_and_tcp_answers_with_dnspython(state: ServerProcess, dns_server: DNSProcess) -> None:
    ip = create(state.url, svc("web"))["spec"]["clusterIP"]
    wait_answer(dns_server, "web.default.svc.cluster.local", [ip])
    for tcp in (False, True):
        r = ask(dns_server, "web.default.svc.cluster.local", tcp=tcp)
        assert addresses(r) == [ip] and r.flags & dns.flags.AA
        srv = ask(dns_server, "_http._tcp.web.default.svc.cluster.local", "SRV", tcp=tcp)
        assert srv.answer[0][0].to_text() == "0 100 80 web.default.svc.cluster.local."
        ptr = ask(dns_server, dns.reversename.from_address(ip).to_text(), "PTR", tcp=tcp)
        assert ptr.answer[0][0].to_text() == "web.default.svc.cluster.local."
        nx = ask(dns_server, "nope.default.svc.cluster.local", tcp=tcp)
        assert nx.rcode() == dns.rcode.NXDOMAIN and nx.authority[0].rdtype == dns.rdatatype.SOA
    txt = ask(dns_server, "dns-version.cluster.local", "TXT")
    assert txt.answer[0][0].to_text() == '"1.1.0"'


def test_new_service_resolves_within_one_second_and_deleted_stops(state: ServerProcess,
                                                                  dns_server: DNSProcess) -> None:
    name = "fresh.default.svc.cluster.local"
    assert ask(dns_server, name).rcode() == dns.rcode.NXDOMAIN  # also cached as negative now
    created_at = time.monotonic()
    ip = create(state.url, svc("fresh"))["spec"]["clusterIP"]
    wait_answer(dns_server, name, [ip], timeout=5)
    assert time.monotonic() - created_at < 1.0, "a new Service must resolve within 1 s of its creation"
    deleted_at = time.monotonic()
    delete(state.url, "Service", "fresh")
    wait_answer(dns_server, name, None, timeout=5)
    assert time.monotonic() - deleted_at < 1.0


def test_dig_over_udp_and_tcp(state: ServerProcess, dns_server: DNSProcess) -> None:
    ip = create(state.url, svc("dug"))["spec"]["clusterIP"]
    wait_answer(dns_server, "dug.default.svc.cluster.local", [ip])
    for transport in ("+notcp", "+tcp"):
        out = subprocess.run(["dig", f"@{dns_server.host}", "-p", str(dns_server.port), transport, "+short",
                              "+time=2", "+tries=1", "DUG.default.svc.cluster.local"],
                             capture_output=True, text=True, timeout=20, check=True).stdout.split()
        assert out == [ip], transport
        full = subprocess.run(["dig", f"@{dns_server.host}", "-p", str(dns_server.port), transport, "+time=2",
                               "+tries=1", "_http._tcp.dug.default.svc.cluster.local", "SRV"],
                              capture_output=True, text=True, timeout=20, check=True).stdout
        assert "status: NOERROR" in full and "flags: qr aa rd ra" in full
        assert re.search(r"IN\s+SRV\s+0 100 80 dug\.default\.svc\.cluster\.local\.", full), full


def test_headless_service_with_endpoint_slice(state: ServerProcess, dns_server: DNSProcess) -> None:
    create(state.url, svc("db", clusterIP="None", ports=[{"name": "pg", "port": 5432, "protocol": "TCP"}]))
    eps = [{"addresses": ["10.244.1.5"], "hostname": "db-0", "conditions": {"ready": True}},
           {"addresses": ["10.244.2.7"], "conditions": {"ready": True}},
           {"addresses": ["10.244.3.9"], "conditions": {"ready": False}}]
    create(state.url, {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
                       "metadata": {"name": "db-manual", "namespace": "default",
                                    "labels": {"kubernetes.io/service-name": "db"}},
                       "endpoints": eps, "ports": [{"name": "pg", "port": 5432, "protocol": "TCP"}]})
    wait_answer(dns_server, "db.default.svc.cluster.local", ["10.244.1.5", "10.244.2.7"])
    assert addresses(ask(dns_server, "db-0.db.default.svc.cluster.local")) == ["10.244.1.5"]
    srv = ask(dns_server, "_pg._tcp.db.default.svc.cluster.local", "SRV")
    assert sorted(rd.to_text() for rd in srv.answer[0]) == ["0 50 5432 10-244-2-7.db.default.svc.cluster.local.",
                                                           "0 50 5432 db-0.db.default.svc.cluster.local."]


def test_large_answer_truncates_over_udp_and_the_client_retries_over_tcp(state: ServerProcess,
                                                                        dns_server: DNSProcess) -> None:
    create(state.url, svc("many", clusterIP="None"))
    eps = [{"addresses": [f"10.245.{i // 250}.{i % 250 + 1}"], "conditions": {"ready": True}} for i in range(120)]
    create(state.url, {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
                       "metadata": {"name": "many-manual", "namespace": "default",
                                    "labels": {"kubernetes.io/service-name": "many"}},
                       "endpoints": eps, "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]})
    name = "many.default.svc.cluster.local"
    deadline = time.monotonic() + 10
    while len(addresses(ask(dns_server, name, tcp=True))) != 120:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    udp = ask(dns_server, name, use_edns=0, payload=1232)
    assert udp.flags & dns.flags.TC and not udp.answer
    big = ask(dns_server, name, use_edns=0, payload=4096)
    assert len(addresses(big)) == 120 and not big.flags & dns.flags.TC
    r, used_tcp = dns.query.udp_with_fallback(dns.message.make_query(name, "A"), dns_server.host,
                                              port=dns_server.port, timeout=3)
    assert used_tcp and len(addresses(r)) == 120


def test_out_of_zone_names_are_forwarded_and_external_names_chased(state: ServerProcess, dns_server: DNSProcess,
                                                                   upstream: Dnsmasq) -> None:
    r = ask(dns_server, "example.test")
    assert addresses(r) == ["192.0.2.7"] and r.flags & dns.flags.RA and not r.flags & dns.flags.AA
    assert addresses(ask(dns_server, "Example.TEST", tcp=True)) == ["192.0.2.7"]
    create(state.url, {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "ext", "namespace": "default"},
                       "spec": {"type": "ExternalName", "externalName": "ext-target.test"}})
    deadline = time.monotonic() + 10
    while True:
        r = ask(dns_server, "ext.default.svc.cluster.local")
        if r.answer:
            break
        assert time.monotonic() < deadline, r
        time.sleep(0.02)
    assert [rrset.rdtype for rrset in r.answer] == [dns.rdatatype.CNAME, dns.rdatatype.A]
    assert addresses(r) == ["192.0.2.8"]


def test_malformed_packets_do_not_stall_the_server(state: ServerProcess, dns_server: DNSProcess) -> None:
    rng = random.Random(6)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for _ in range(2000):
            s.sendto(rng.randbytes(rng.randint(0, 80)), (dns_server.host, dns_server.port))
    with socket.create_connection((dns_server.host, dns_server.port), timeout=3) as t:
        t.sendall(b"\x00\x05abc")  # a short message, then the connection goes quiet
    # The burst may have filled the socket buffer (the kernel drops what does not fit): retry as a
    # client would, but the server must be answering again within seconds.
    deadline = time.monotonic() + 10
    while True:
        try:
            r = dns.query.udp(dns.message.make_query("dns-version.cluster.local", "TXT"), dns_server.host,
                              port=dns_server.port, timeout=0.5)
            break
        except dns.exception.Timeout:
            assert time.monotonic() < deadline, "the server stopped answering after a burst of junk"
    assert r.answer and dns_server.proc.poll() is None
    two = dns.message.make_query("a.cluster.local", "A")
    two.question.append(dns.message.make_query("b.cluster.local", "A").question[0])
    assert dns.query.udp(two, dns_server.host, port=dns_server.port, timeout=3).rcode() == dns.rcode.FORMERR


def test_keeps_answering_while_the_state_server_is_down(tmp_path: Path) -> None:
    srv = start_server(tmp_path / "state")
    d = None
    try:
        ip = create(srv.url, svc("steady"))["spec"]["clusterIP"]
        # No upstream at all: out-of-zone names are REFUSED.
        d = start_dns(tmp_path / "dns", srv.url, "--resolv-conf", "")
        wait_answer(d, "steady.default.svc.cluster.local", [ip])
        assert ask(d, "example.test").rcode() == dns.rcode.REFUSED
        srv.kill()
        for _ in range(20):
            assert addresses(ask(d, "steady.default.svc.cluster.local")) == [ip]
            assert addresses(ask(d, "steady.default.svc.cluster.local", tcp=True)) == [ip]
            time.sleep(0.05)
        assert d.proc.poll() is None
    finally:
        if d is not None:
            d.stop()
        srv.kill()


def test_without_a_state_server_the_zone_is_servfail_not_nxdomain(tmp_path: Path) -> None:
    d = start_dns(tmp_path / "dns", "http://127.0.0.1:1", "--resolv-conf", "", "--sync-timeout", "0.2")
    try:
        r = ask(d, "web.default.svc.cluster.local")
        assert r.rcode() == dns.rcode.SERVFAIL
        assert ask(d, "example.test").rcode() == dns.rcode.REFUSED
    finally:
        d.stop()


def test_a_burst_while_the_server_is_paused_is_queued_not_dropped(state: ServerProcess,
                                                                  dns_server: DNSProcess) -> None:
    # 1,500 queries arrive while the server cannot run (SIGSTOP stands in for another process holding
    # its CPU): ~1 MB of kernel buffers, far more than Linux's default 208 KiB. Every one is answered.
    count = 1500
    q = dns.message.make_query("dns-version.cluster.local", "TXT")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as c:
        c.setsockopt(socket.SOL_SOCKET, 33, 8 << 20)  # SO_RCVBUFFORCE: room for every answer here too
        c.settimeout(5)
        os.kill(dns_server.proc.pid, signal.SIGSTOP)
        try:
            for i in range(count):
                q.id = i
                c.sendto(q.to_wire(), (dns_server.host, dns_server.port))
        finally:
            os.kill(dns_server.proc.pid, signal.SIGCONT)
        answered: set[int] = set()
        try:
            while len(answered) < count:
                answered.add(int.from_bytes(c.recv(4096)[:2], "big"))
        except TimeoutError:
            pass
    assert len(answered) == count, f"{count - len(answered)} of {count} queries were dropped"
