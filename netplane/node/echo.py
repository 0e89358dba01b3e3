"""`netplane echo-server`: the lab's test workload, small and quick to start (asyncio only).

- HTTP on each --http-port: every request is answered 200 with JSON
  ``{pod, namespace, podIP, node, client, clientIP, clientPort, method, path, headers}``;
  pod/namespace/IP/node come from the env (POD_NAME, POD_NAMESPACE, POD_IP,
  NODE_NAME, which the lab runtime sets), ``client`` is the peer address as the
  server sees it, which shows whether traffic was NATed on the way.
- TCP on each --tcp-port: echoes bytes back.
- UDP on each --udp-port: echoes each datagram back to its sender.

Ports also come from the env when no flag names any (NETPLANE_ECHO_HTTP_PORTS,
NETPLANE_ECHO_TCP_PORTS, NETPLANE_ECHO_UDP_PORTS, comma-separated); with nothing
at all it serves HTTP on 8080. SIGTERM ends it at once with status 0.
Run as ``python -m netplane.node.echo --http-port 8080`` to skip the CLI's imports.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
from collections.abc import Sequence
from typing import cast

MAX_HEADER = 64 * 1024


def identity() -> dict[str, str]:
    return {
        "pod": os.environ.get("POD_NAME", socket.gethostname()),
        "namespace": os.environ.get("POD_NAMESPACE", ""),
        "podIP": os.environ.get("POD_IP", ""),
        "node": os.environ.get("NODE_NAME", ""),
    }


def parse_request_head(head: bytes) -> tuple[str, str, str, list[tuple[str, str]]]:
    """(method, path, version, headers) of an HTTP/1.x request head (without the blank line)."""
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/"):
        raise ValueError(f"bad request line {lines[0]!r}")
    headers = []
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep:
            raise ValueError(f"bad header line {line!r}")
        headers.append((name.strip(), value.strip()))
    return parts[0], parts[1], parts[2], headers


def answer(method: str, path: str, headers: list[tuple[str, str]], peer: tuple[str, int],
           ident: dict[str, str]) -> bytes:
    body: dict[str, object] = dict(ident)
    body.update({
        "client": f"{peer[0]}:{peer[1]}", "clientIP": peer[0], "clientPort": peer[1],
        "method": method, "path": path, "headers": {k: v for k, v in headers},
    })
    return (json.dumps(body, sort_keys=True) + "\n").encode()


def _peer(writer: asyncio.StreamWriter) -> tuple[str, int]:
    p = writer.get_extra_info("peername") or ("", 0)
    host = str(p[0])
    if host.startswith("::ffff:"):
        host = host[7:]
    return host, int(p[1])


async def handle_http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    ident = identity()
    peer = _peer(writer)
    try:
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
                return
            try:
                method, path, version, headers = parse_request_head(head[:-4])
            except ValueError:
                writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                await writer.drain()
                return
            lower = {k.lower(): v for k, v in headers}
            length = int(lower.get("content-length", "0") or 0)
            if length:
                await reader.readexactly(length)
            body = answer(method, path, headers, peer, ident)
            keep = version == "HTTP/1.1" and lower.get("connection", "").lower() != "close"
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                + f"Content-Length: {len(body)}\r\nConnection: {'keep-alive' if keep else 'close'}\r\n\r\n".encode()
                + (b"" if method == "HEAD" else body))
            await writer.drain()
            if not keep:
                return
    except (ConnectionError, asyncio.IncompleteReadError):
        return
    finally:
        writer.close()


async def handle_tcp(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


class UDPEcho(asyncio.DatagramProtocol):
    transport: asyncio.DatagramTransport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.transport.sendto(data, addr)


def _sockets(host: str, port: int, kind: int) -> socket.socket:
    """A socket bound to host:port; with no host, dual-stack when IPv6 exists (pods may have only IPv4)."""
    if host:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        s = socket.socket(family, kind)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((host, port))
        return s
    try:
        s = socket.socket(socket.AF_INET6, kind)
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("::", port))
        return s
    except OSError:
        s.close()
    s = socket.socket(socket.AF_INET, kind)  # no IPv6 in this namespace
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port))
    return s


async def serve(http_ports: Sequence[int], tcp_ports: Sequence[int], udp_ports: Sequence[int],
                host: str = "", ready: asyncio.Event | None = None, stop: asyncio.Event | None = None,
                bound: list[tuple[str, int]] | None = None) -> None:
    """Serve until `stop`; `bound` receives (kind, port) of every socket, e.g. for port 0."""
    loop = asyncio.get_running_loop()
    servers: list[asyncio.AbstractServer] = []
    transports: list[asyncio.BaseTransport] = []
    try:
        for port in http_ports:
            sock = _sockets(host, port, socket.SOCK_STREAM)
            if bound is not None:
                bound.append(("http", sock.getsockname()[1]))
            servers.append(await asyncio.start_server(handle_http, sock=sock, limit=MAX_HEADER))
        for port in tcp_ports:
            sock = _sockets(host, port, socket.SOCK_STREAM)
            if bound is not None:
                bound.append(("tcp", sock.getsockname()[1]))
            servers.append(await asyncio.start_server(handle_tcp, sock=sock))
        for port in udp_ports:
            sock = _sockets(host, port, socket.SOCK_DGRAM)
            if bound is not None:
                bound.append(("udp", sock.getsockname()[1]))
            t, _ = await loop.create_datagram_endpoint(UDPEcho, sock=sock)
            transports.append(t)
        if ready is not None:
            ready.set()
        await (stop or asyncio.Event()).wait()
    finally:
        for s in servers:
            s.close()
        for tr in transports:
            tr.close()


def _env_ports(name: str) -> list[int]:
    return [int(p) for p in os.environ.get(name, "").replace(" ", "").split(",") if p]


def main_with(http_ports: list[int], tcp_ports: list[int], udp_ports: list[int], host: str = "") -> int:
    if not (http_ports or tcp_ports or udp_ports):
        http_ports = _env_ports("NETPLANE_ECHO_HTTP_PORTS")
        tcp_ports = _env_ports("NETPLANE_ECHO_TCP_PORTS")
        udp_ports = _env_ports("NETPLANE_ECHO_UDP_PORTS")
        if not (http_ports or tcp_ports or udp_ports):
            http_ports = [8080]

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await serve(http_ports, tcp_ports, udp_ports, host, stop=stop)

    try:
        asyncio.run(run())
    except OSError as e:
        print(f"echo-server: {e}", file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """A tiny flag parser (no click/argparse import on the pod start-up path)."""
    args = list(sys.argv[1:] if argv is None else argv)
    ports: dict[str, list[int]] = {"--http-port": [], "--tcp-port": [], "--udp-port": []}
    host = ""
    while args:
        arg = args.pop(0)
        name, eq, value = arg.partition("=")
        if name not in ports and name != "--host":
            print(f"echo-server: unknown argument {arg!r}", file=sys.stderr)
            return 2
        if not eq:
            if not args:
                print(f"echo-server: {name} needs a value", file=sys.stderr)
                return 2
            value = args.pop(0)
        if name == "--host":
            host = value
            continue
        try:
            ports[name].append(int(value))
        except ValueError:
            print(f"echo-server: {name} wants a port number, not {value!r}", file=sys.stderr)
            return 2
    print(f"echo-server: http={ports['--http-port']} tcp={ports['--tcp-port']} udp={ports['--udp-port']}",
          file=sys.stderr, flush=True)
    return main_with(ports["--http-port"], ports["--tcp-port"], ports["--udp-port"], host)


if __name__ == "__main__":
    sys.exit(main())
