"""Runs inside a network namespace (via `ip netns exec`): tiny servers and clients for the proxy tests.

Standard library only, so it starts fast in any namespace.

    serve TCP_PORTS UDP_PORTS      answer every TCP connection / UDP datagram with
                                   "<local ip> <peer ip>:<peer port>" (TCP: then close)
    burst PROTO HOST PORT COUNT [SRC]
                                   COUNT fresh connections; prints one JSON list of results
    session                        reads commands on stdin, keeps sockets across them:
                                   "tcp-open HOST PORT", "tcp-ask", "udp-open HOST PORT", "udp-ask", "quit"

A result is {"ok": true, "server": ip, "peer": "ip:port", "ms": elapsed} or
{"ok": false, "error": "ECONNREFUSED" | "timeout" | ..., "ms": elapsed}.
"""

from __future__ import annotations

import errno
import json
import selectors
import socket
import sys
import time

TIMEOUT = 1.0  # seconds; a dropped packet is reported as "timeout" after this


def serve(tcp_ports: list[int], udp_ports: list[int]) -> None:
    sel = selectors.DefaultSelector()
    for port in tcp_ports:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("0.0.0.0", port))
        s.listen(128)
        sel.register(s, selectors.EVENT_READ, "tcp")
    for port in udp_ports:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("0.0.0.0", port))
        sel.register(s, selectors.EVENT_READ, "udp")
    print("ready", flush=True)
    while True:
        for key, _ in sel.select():
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            if key.data == "tcp":
                conn, peer = sock.accept()
                local = conn.getsockname()[0]
                try:
                    conn.sendall(f"{local} {peer[0]}:{peer[1]}\n".encode())
                    # Keep the connection for session clients that ask again; others close.
                    conn.settimeout(0.05)
                    sel.register(conn, selectors.EVENT_READ, "conn")
                except OSError:
                    conn.close()
            elif key.data == "conn":
                try:
                    data = sock.recv(100)
                except OSError:
                    data = b""
                if not data:
                    sel.unregister(sock)
                    sock.close()
                    continue
                peer = sock.getpeername()
                sock.sendall(f"{sock.getsockname()[0]} {peer[0]}:{peer[1]}\n".encode())
            else:
                data, peer = sock.recvfrom(2048)
                # The reply's source must be the address the datagram was sent to; we bound 0.0.0.0,
                # and with a single address per pod the kernel picks that one.
                local = sock.getsockname()[0]
                if local == "0.0.0.0":
                    local = _pod_ip()
                sock.sendto(f"{local} {peer[0]}:{peer[1]}\n".encode(), peer)


_POD_IP: str | None = None


def _pod_ip() -> str:
    global _POD_IP
    if _POD_IP is None:
        probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        probe.connect(("10.255.255.255", 9))
        _POD_IP = probe.getsockname()[0]
        probe.close()
    return _POD_IP


def _result(line: str, start: float) -> dict:
    server, peer = line.strip().split()
    return {"ok": True, "server": server, "peer": peer, "ms": (time.monotonic() - start) * 1000}


def _error(e: BaseException, start: float) -> dict:
    if isinstance(e, socket.timeout | TimeoutError):
        name = "timeout"
    elif isinstance(e, OSError) and e.errno:
        name = errno.errorcode.get(e.errno, str(e.errno))
    else:
        name = type(e).__name__
    return {"ok": False, "error": name, "ms": (time.monotonic() - start) * 1000}


def tcp_once(host: str, port: int, src: str | None = None) -> dict:
    start = time.monotonic()
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(TIMEOUT)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    try:
        if src:
            s.bind((src, 0))
        s.connect((host, port))
        data = s.makefile().readline()
        return _result(data, start)
    except OSError as e:
        return _error(e, start)
    finally:
        s.close()


def udp_once(host: str, port: int, src: str | None = None) -> dict:
    start = time.monotonic()
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(TIMEOUT)
    try:
        if src:
            s.bind((src, 0))
        s.connect((host, port))
        s.send(b"hello")
        return _result(s.recv(2048).decode(), start)
    except OSError as e:
        return _error(e, start)
    finally:
        s.close()


def burst(proto: str, host: str, port: int, count: int, src: str | None) -> None:
    fn = tcp_once if proto == "tcp" else udp_once
    print(json.dumps([fn(host, port, src) for _ in range(count)]), flush=True)


def session() -> None:
    tcp: socket.socket | None = None
    udp: socket.socket | None = None
    for line in sys.stdin:
        words = line.split()
        if not words:
            continue
        cmd = words[0]
        start = time.monotonic()
        try:
            if cmd == "tcp-open":
                tcp = socket.create_connection((words[1], int(words[2])), timeout=TIMEOUT)
                out = _result(tcp.makefile().readline(), start)
            elif cmd == "tcp-ask":
                assert tcp is not None
                tcp.sendall(b"again\n")
                out = _result(tcp.makefile().readline(), start)
            elif cmd == "udp-open":
                udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                udp.settimeout(TIMEOUT)
                udp.connect((words[1], int(words[2])))
                host, port = udp.getsockname()
                out = {"ok": True, "local": f"{host}:{port}"}
            elif cmd == "udp-ask":
                assert udp is not None
                udp.send(b"hello")
                out = _result(udp.recv(2048).decode(), start)
            elif cmd == "quit":
                return
            else:
                out = {"ok": False, "error": f"unknown command {cmd}"}
        except OSError as e:
            out = _error(e, start)
        print(json.dumps(out), flush=True)


def main(argv: list[str]) -> None:
    if argv[0] == "serve":
        serve([int(p) for p in argv[1].split(",") if p], [int(p) for p in argv[2].split(",") if p])
    elif argv[0] == "burst":
        burst(argv[1], argv[2], int(argv[3]), int(argv[4]), argv[5] if len(argv) > 5 else None)
    elif argv[0] == "session":
        session()
    else:
        raise SystemExit(f"unknown mode {argv[0]}")


if __name__ == "__main__":
    main(sys.argv[1:])
