"""Real processes for the DNS integration tests: a state server, `netplane dns`, a dnsmasq upstream.

Everything listens on 127.0.0.1 (free ports); every process is ended by its own handle.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from netplane.api.resources import must
from netplane.client.kubeconfig import ClusterConfig
from netplane.client.rest import APIClient
from tests.support.server import NETPLANE, ServerProcess, start_server

SERVICES = must("", "v1", "services")
SLICES = must("discovery.k8s.io", "v1", "endpointslices")


@dataclass
class DNSProcess:
    proc: subprocess.Popen[bytes]
    host: str
    port: int
    log_path: Path

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def start_dns(workdir: Path, server_url: str, *extra: str, timeout: float = 20.0) -> DNSProcess:
    workdir.mkdir(parents=True, exist_ok=True)
    ready = workdir / f"dns-ready-{time.monotonic_ns()}"
    log_path = workdir / "dns.log"
    cmd = [NETPLANE, "--server", server_url, "dns", "--listen", "127.0.0.1:0", "--ready-file", str(ready), *extra]
    with open(log_path, "ab") as logf:
        proc = subprocess.Popen(cmd, stdout=logf, stderr=logf, stdin=subprocess.DEVNULL,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"netplane dns exited with {proc.returncode}:\n{log_path.read_text()}")
        if ready.exists() and ready.read_text().strip():
            host, _, port = ready.read_text().strip().rpartition(":")
            return DNSProcess(proc, host, int(port), log_path)
        time.sleep(0.02)
    proc.kill()
    proc.wait(5)
    raise RuntimeError(f"netplane dns did not start in {timeout}s:\n{log_path.read_text()}")


def free_udp_tcp_port() -> int:
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.bind(("127.0.0.1", 0))
            port = int(u.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
                try:
                    t.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    raise RuntimeError("no free port")


@dataclass
class Dnsmasq:
    proc: subprocess.Popen[bytes]
    port: int

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def start_dnsmasq(*records: str, hosts_file: Path | None = None, extra: tuple[str, ...] = ()) -> Dnsmasq:
    """dnsmasq on 127.0.0.1 answering --address=/name/ip records (and a hosts file), nothing else."""
    port = free_udp_tcp_port()
    cmd = ["dnsmasq", "--keep-in-foreground", "--no-resolv", "--no-hosts", "--bind-interfaces",
           "--listen-address=127.0.0.1", f"--port={port}", "--pid-file=", "--user=root", "--group=root",
           "--log-facility=-", *(f"--address=/{r}" for r in records), *extra]
    if hosts_file is not None:
        cmd.append(f"--addn-hosts={hosts_file}")
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    import dns.message
    import dns.query

    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"dnsmasq exited with {proc.returncode}")
        try:
            dns.query.udp(dns.message.make_query("probe.invalid", "A"), "127.0.0.1", port=port, timeout=0.2)
            return Dnsmasq(proc, port)
        except Exception:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("dnsmasq did not answer")


def api_call(url: str, fn: Any, timeout: float = 30) -> Any:
    async def main() -> Any:
        async with APIClient(ClusterConfig(server=url)) as client:
            return await asyncio.wait_for(fn(client), timeout)

    return asyncio.run(main())


@pytest.fixture(scope="module")
def state(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    srv = start_server(tmp_path_factory.mktemp("dns-state"))
    try:
        yield srv
    finally:
        srv.kill()


@pytest.fixture(scope="module")
def upstream() -> Iterator[Dnsmasq]:
    d = start_dnsmasq("example.test/192.0.2.7", "ext-target.test/192.0.2.8")
    try:
        yield d
    finally:
        d.stop()


@pytest.fixture(scope="module")
def dns_server(tmp_path_factory: pytest.TempPathFactory, state: ServerProcess,
               upstream: Dnsmasq) -> Iterator[DNSProcess]:
    d = start_dns(tmp_path_factory.mktemp("dns"), state.url, "--upstream", f"127.0.0.1:{upstream.port}")
    try:
        yield d
    finally:
        d.stop()
