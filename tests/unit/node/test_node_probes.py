"""Probe result state machine and probe actions (against in-process servers on loopback)."""

from __future__ import annotations

import asyncio
import sys

import pytest

from netplane.node import probes
from netplane.node.probes import FAILURE, SUCCESS, ProbeSpec, ProbeState


def spec(**kw: object) -> ProbeSpec:
    probe = {"httpGet": {"port": 8080}, **kw}
    parsed = ProbeSpec.parse(probe)
    assert parsed is not None
    return parsed


def test_parse_defaults() -> None:
    s = spec()
    assert (s.kind, s.initial_delay, s.period, s.timeout, s.success_threshold, s.failure_threshold) == \
        ("httpGet", 0.0, 10.0, 1.0, 1, 3)
    assert ProbeSpec.parse(None) is None


def test_readiness_needs_consecutive_successes_and_failures() -> None:
    st = ProbeState(spec(successThreshold=2, failureThreshold=2), initial=False)
    assert not st.observe(SUCCESS) and not st.value
    assert not st.observe(FAILURE)  # resets the success run
    assert not st.observe(SUCCESS)
    assert st.observe(SUCCESS) and st.value
    assert not st.observe(FAILURE) and st.value
    assert not st.observe(SUCCESS)
    assert not st.observe(FAILURE)
    assert st.observe(FAILURE) and not st.value


def test_liveness_starts_alive() -> None:
    st = ProbeState(spec(failureThreshold=1), initial=True)
    assert st.value and not st.observe(SUCCESS)
    assert st.observe(FAILURE) and not st.value


def test_due_honours_initial_delay_and_period() -> None:
    st = ProbeState(spec(initialDelaySeconds=5, periodSeconds=2), initial=False)
    assert not st.due(started_at=100, last_run=None, now=104.9)
    assert st.due(100, None, 105)
    assert not st.due(100, 105, 106.9)
    assert st.due(100, 105, 107)


def test_named_ports() -> None:
    ports = [{"name": "http", "containerPort": 8080}]
    assert probes.resolve_port("http", ports) == 8080
    assert probes.resolve_port(9000, ports) == 9000
    with pytest.raises(ValueError):
        probes.resolve_port("metrics", ports)


def test_http_tcp_and_exec_probes() -> None:
    async def run() -> None:
        async def ok(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            line = await reader.readline()
            code = b"500" if b"/bad" in line else b"200"
            writer.write(b"HTTP/1.1 " + code + b" X\r\nContent-Length: 0\r\n\r\n")
            await writer.drain()
            writer.close()

        srv = await asyncio.start_server(ok, "127.0.0.1", 0)
        port = srv.sockets[0].getsockname()[1]
        argv = lambda c: list(c)  # noqa: E731 - run exec probes as they are
        get = ProbeSpec("httpGet", {"port": port, "path": "/healthz"})
        bad = ProbeSpec("httpGet", {"port": port, "path": "/bad"})
        tcp = ProbeSpec("tcpSocket", {"port": port})
        assert await probes.run_probe(get, "127.0.0.1", [], argv) == SUCCESS
        assert await probes.run_probe(bad, "127.0.0.1", [], argv) == FAILURE
        assert await probes.run_probe(tcp, "127.0.0.1", [], argv) == SUCCESS
        srv.close()
        await srv.wait_closed()
        assert await probes.run_probe(tcp, "127.0.0.1", [], argv) == FAILURE
        assert await probes.run_probe(get, "127.0.0.1", [], argv) == FAILURE
        yes = ProbeSpec("exec", {"command": [sys.executable, "-c", "pass"]})
        no = ProbeSpec("exec", {"command": [sys.executable, "-c", "raise SystemExit(1)"]})
        slow = ProbeSpec("exec", {"command": [sys.executable, "-c", "import time; time.sleep(5)"]}, timeout=0.2)
        assert await probes.run_probe(yes, "", [], argv) == SUCCESS
        assert await probes.run_probe(no, "", [], argv) == FAILURE
        assert await probes.run_probe(slow, "", [], argv) == FAILURE

    asyncio.run(run())
