"""The echo server: request parsing, the JSON answer, and real HTTP/TCP/UDP echo on loopback."""

from __future__ import annotations

import asyncio
import json
import socket

import pytest

from netplane.node import echo


def test_parse_request_head() -> None:
    method, path, version, headers = echo.parse_request_head(b"GET /x?y=1 HTTP/1.1\r\nHost: a\r\nX-Y: z")
    assert (method, path, version) == ("GET", "/x?y=1", "HTTP/1.1")
    assert headers == [("Host", "a"), ("X-Y", "z")]
    with pytest.raises(ValueError):
        echo.parse_request_head(b"garbage")


def test_answer_reports_identity_and_client() -> None:
    ident = {"pod": "web-1", "namespace": "shop", "podIP": "10.244.1.5", "node": "n2"}
    body = json.loads(echo.answer("GET", "/hi", [("Host", "x")], ("10.244.0.7", 40000), ident))
    assert body == {"pod": "web-1", "namespace": "shop", "podIP": "10.244.1.5", "node": "n2",
                    "client": "10.244.0.7:40000", "clientIP": "10.244.0.7", "clientPort": 40000,
                    "method": "GET", "path": "/hi", "headers": {"Host": "x"}}


def test_serves_http_tcp_and_udp(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POD_NAME", "echo-1")
    monkeypatch.setenv("POD_NAMESPACE", "ns1")

    async def run() -> None:
        ready, stop = asyncio.Event(), asyncio.Event()
        bound: list[tuple[str, int]] = []
        task = asyncio.create_task(echo.serve([0], [0], [0], "127.0.0.1", ready, stop, bound))
        await asyncio.wait_for(ready.wait(), 5)
        ports = dict(bound)
        reader, writer = await asyncio.open_connection("127.0.0.1", ports["http"])
        for path in ("/one", "/two"):  # keep-alive: two requests on one connection
            writer.write(f"GET {path} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
            await writer.drain()
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200 OK")
            length = int(next(h.split(b":")[1] for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")))
            body = json.loads(await reader.readexactly(length))
            assert body["pod"] == "echo-1" and body["namespace"] == "ns1" and body["path"] == path
            assert body["clientIP"] == "127.0.0.1" and body["clientPort"] == writer.get_extra_info("sockname")[1]
        writer.close()
        reader, writer = await asyncio.open_connection("127.0.0.1", ports["tcp"])
        writer.write(b"ping\n")
        assert await reader.readexactly(5) == b"ping\n"
        writer.close()
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp.setblocking(False)
        udp.sendto(b"dgram", ("127.0.0.1", ports["udp"]))
        data = await asyncio.wait_for(asyncio.get_running_loop().sock_recv(udp, 100), 5)
        assert data == b"dgram"
        udp.close()
        stop.set()
        await task

    asyncio.run(run())


def test_main_rejects_bad_flags() -> None:
    assert echo.main(["--http-port", "abc"]) == 2
    assert echo.main(["--bogus"]) == 2
