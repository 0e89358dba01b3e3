"""Helpers for ingress tests and the benchmark: echo backends, the controller process, HTTP(S) requests."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import os
import secrets
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from netplane.api.resources import lookup
from netplane.client.kubeconfig import ClusterConfig
from netplane.client.rest import APIClient, APIStatusError
from tests.support.server import NETPLANE

T = TypeVar("T")
RESOURCES = {
    "Ingress": lookup("networking.k8s.io", "v1", "ingresses"),
    "IngressClass": lookup("networking.k8s.io", "v1", "ingressclasses"),
    "Service": lookup("", "v1", "services"),
    "EndpointSlice": lookup("discovery.k8s.io", "v1", "endpointslices"),
    "Secret": lookup("", "v1", "secrets"),
    "Event": lookup("", "v1", "events"),
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Netns:
    """A private network namespace (np-ing-*) with loopback up and one routable address on lo.

    The state server refuses loopback endpoint addresses (as kube-apiserver does), so backends
    and nginx live here, on ``address``; the state server and the controller stay on 127.0.0.1 in
    the root namespace, and the controller starts nginx in here (``--netns``).
    """

    def __init__(self, address: str = "10.250.0.1", prefix: str = "np-ing") -> None:
        self.name = f"{prefix}-{os.getpid() % 100000}-{secrets.token_hex(2)}"
        self.address = address

    def create(self) -> Netns:
        subprocess.run(["ip", "netns", "add", self.name], check=True, capture_output=True, timeout=30)
        try:
            for cmd in (["link", "set", "lo", "up"], ["addr", "add", f"{self.address}/32", "dev", "lo"]):
                subprocess.run(["ip", "-n", self.name, *cmd], check=True, capture_output=True, timeout=30)
        except BaseException:
            self.delete()
            raise
        return self

    def delete(self) -> None:
        from netplane.kernel.labnet import delete_netns, kill_netns_processes

        kill_netns_processes(self.name)
        delete_netns(self.name)

    def argv(self, argv: list[str]) -> list[str]:
        from netplane.kernel.labnet import nsenter_argv

        return nsenter_argv(self.name, argv)

    @contextlib.contextmanager
    def inside(self) -> Iterator[None]:
        """This thread inside the namespace (sockets made here stay in it)."""
        from netplane.kernel.netns import entered

        with entered(f"/run/netns/{self.name}"):
            yield

    def connect(self, port: int, timeout: float = 5.0) -> socket.socket:
        with self.inside():
            return socket.create_connection((self.address, port), timeout=timeout)


def wait_for(what: str, check: Callable[[], T | None], timeout: float = 20.0, interval: float = 0.05) -> T:
    """Poll ``check`` until it returns something truthy; fail naming ``what`` (and the last error)."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            got = check()
        except Exception as e:  # keep polling; report the last error on timeout
            got, last = None, e
        if got:
            return got
        time.sleep(interval)
    hint = f" (last error: {last!r})" if last else ""
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}{hint}")


class Api:
    """A synchronous face on APIClient for tests (one request, one short event loop)."""

    def __init__(self, url: str) -> None:
        self.config = ClusterConfig(server=url)

    def _run(self, fn: Callable[[APIClient], Any]) -> Any:
        async def go() -> Any:
            async with APIClient(self.config) as c:
                return await fn(c)

        return asyncio.run(go())

    def apply(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Create, or replace (keeping resourceVersion), one object."""
        info = RESOURCES[obj["kind"]]
        assert info is not None
        meta = obj["metadata"]

        async def go(c: APIClient) -> Any:
            for _attempt in range(20):
                try:
                    return await c.create(info, obj)
                except APIStatusError as e:
                    if e.code != 409:
                        raise
                try:
                    current = await c.get(info, meta["name"], meta.get("namespace"))
                    rv = current["metadata"]["resourceVersion"]
                    return await c.update(info, dict(obj, metadata={**obj["metadata"], "resourceVersion": rv}))
                except APIStatusError as e:
                    # 409: the controller wrote the status in between; 404: deleted in between. Again.
                    if e.code not in (404, 409):
                        raise
            raise AssertionError(f"could not apply {obj['kind']} {meta['name']}: too many conflicts")

        result: dict[str, Any] = self._run(go)
        return result

    def delete(self, kind: str, name: str, namespace: str | None = "default") -> None:
        info = RESOURCES[kind]
        assert info is not None

        async def go(c: APIClient) -> None:
            with contextlib.suppress(APIStatusError):
                await c.delete(info, name, namespace)

        self._run(go)

    def get(self, kind: str, name: str, namespace: str | None = "default") -> dict[str, Any]:
        info = RESOURCES[kind]
        assert info is not None
        result: dict[str, Any] = self._run(lambda c: c.get(info, name, namespace))
        return result

    def list(self, kind: str, namespace: str | None = None) -> list[dict[str, Any]]:
        info = RESOURCES[kind]
        assert info is not None
        items: list[dict[str, Any]] = self._run(lambda c: c.list(info, namespace))["items"]
        return items


@dataclass
class Backends:
    """Echo servers in the test's namespace, one per service name; each answers with POD_NAME = its service."""

    netns: Netns
    ports: dict[str, int] = field(default_factory=dict)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start(self, name: str, port: int | None = None) -> int:
        port = port or 8000 + len(self.ports) + 1
        env = {**os.environ, "POD_NAME": name, "POD_NAMESPACE": "default", "PYTHONUNBUFFERED": "1"}
        argv = [sys.executable, "-m", "netplane.node.echo", "--host", self.netns.address, "--http-port", str(port)]
        proc = subprocess.Popen(self.netns.argv(argv), env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        self.procs.append(proc)
        self.ports[name] = port

        def up() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"echo server {name} exited with {proc.returncode}")
            self.netns.connect(port, 0.5).close()
            return True

        wait_for(f"echo server {name} on {port}", up, 10)
        return port

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(5)
            if p.poll() is None:
                p.kill()
                p.wait(5)


def selectorless_service(api: Api, name: str, backend_port: int, addresses: tuple[str, ...], port: int = 80,
                         namespace: str = "default") -> None:
    """A Service without selector and a hand-made EndpointSlice pointing at the echo servers."""
    from netplane.ingress.fixtures import endpoint_slice, service

    api.apply(service(name, [("", port, backend_port)], namespace=namespace))
    api.apply(endpoint_slice(name, list(addresses), [("", backend_port)], namespace=namespace))


@dataclass
class Controller:
    proc: subprocess.Popen[bytes]
    state_dir: Path
    http_port: int
    https_port: int
    log_path: Path
    netns: Netns

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def nginx_pid(self) -> int | None:
        try:
            return int((self.state_dir / "nginx.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def start_controller(server_url: str, netns: Netns, state_dir: Path, *extra: str, http_port: int = 80,
                     https_port: int = 443, timeout: float = 30.0) -> Controller:
    state_dir.mkdir(parents=True, exist_ok=True)
    ready = state_dir.parent / f"{state_dir.name}.ready"
    ready.unlink(missing_ok=True)
    log_path = state_dir.parent / f"{state_dir.name}.log"
    cmd = [NETPLANE, "--server", server_url, "ingress", "--netns", netns.name, "--address", netns.address,
           "--http-port", str(http_port), "--https-port", str(https_port), "--state-dir", str(state_dir),
           "--ready-file", str(ready), "--workers", "1", *extra]
    with open(log_path, "ab") as logf:
        proc = subprocess.Popen(cmd, stdout=logf, stderr=logf, stdin=subprocess.DEVNULL,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
    ctl = Controller(proc, state_dir, http_port, https_port, log_path, netns)

    def is_ready() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"controller exited with {proc.returncode}:\n{ctl.log()}")
        return ready.exists()

    try:
        wait_for("the ingress controller's first sync", is_ready, timeout)
    except BaseException:
        ctl.stop()
        raise
    return ctl


@contextlib.contextmanager
def running_controller(server_url: str, netns: Netns, state_dir: Path, *extra: str,
                       **kw: Any) -> Iterator[Controller]:
    ctl = start_controller(server_url, netns, state_dir, *extra, **kw)
    try:
        yield ctl
    finally:
        ctl.stop()


# -- requests -----------------------------------------------------------------------------


@dataclass
class Answer:
    status: int  # 0: the TLS handshake was refused
    body: dict[str, Any] | None
    headers: dict[str, str]

    @property
    def served_by(self) -> str | None:
        return (self.body or {}).get("pod") if self.status == 200 else None


def client_context(ca_file: Path | None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(ca_file)) if ca_file else ssl.create_default_context()
    return ctx


class NetnsHTTPConnection(http.client.HTTPConnection):
    """http.client reconnects by itself (after a "Connection: close"); do it inside the namespace too."""

    def __init__(self, netns: Netns, port: int, timeout: float = 5.0) -> None:
        super().__init__(netns.address, port, timeout=timeout)
        self.netns = netns

    def connect(self) -> None:
        self.sock = self.netns.connect(self.port, self.timeout if isinstance(self.timeout, float) else 5.0)


def request(netns: Netns, port: int, host: str, path: str, https: bool = False, ca_file: Path | None = None,
            headers: dict[str, str] | None = None, timeout: float = 5.0) -> Answer:
    """One GET to nginx inside ``netns`` with this Host header (and SNI for HTTPS); a fresh connection."""
    sock = netns.connect(port, timeout)
    try:
        if https:
            try:
                sock = client_context(ca_file).wrap_socket(sock, server_hostname=host.split(":")[0])
            except ssl.SSLError:
                return Answer(0, None, {})
        conn = NetnsHTTPConnection(netns, port, timeout=timeout)
        conn.sock = sock
        conn.request("GET", path, headers={"Host": host, **(headers or {})})
        resp = conn.getresponse()
        raw = resp.read()
        body = None
        if resp.getheader("Content-Type", "").startswith("application/json"):
            body = json.loads(raw)
        return Answer(resp.status, body, {k.lower(): v for k, v in resp.getheaders()})
    finally:
        sock.close()


def make_cert(directory: Path, names: list[str], stem: str = "cert") -> tuple[Path, Path]:
    """A self-signed certificate (its own CA) for ``names``, made with the openssl CLI."""
    crt, key = directory / f"{stem}.crt", directory / f"{stem}.key"
    san = ",".join(f"DNS:{n}" for n in names)
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-keyout", str(key), "-out", str(crt), "-days", "2", "-subj", f"/CN={names[0]}",
                    "-addext", f"subjectAltName={san}"], check=True, capture_output=True, timeout=30)
    return crt, key
