"""Reload safety: 50 Ingress changes under continuous load, and not one failed request.

Two kinds of clients run all the time against a route that never changes:

* one opens a fresh connection per request (nothing may be refused or cut);
* one keeps a connection alive, as browsers and proxies do. When nginx retires a worker it closes
  that worker's idle keep-alive connections; a request sent on such a connection at that moment
  meets a closed socket before any byte of answer. RFC 9112 section 9.3.1 lets a client retry an
  idempotent request then, and every HTTP client does, so this client does too, once, and counts
  it. Anything else (an error status, a reset after the request was answered in part, a second
  failure) is a failed request.

Each change adds a path and removes the previous one, and the test waits until the new path
serves, so every change is a real reload (50 reloads, not one coalesced sync).
"""

from __future__ import annotations

import http.client
import shutil
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import pytest

from netplane.ingress.fixtures import ingress, path, rule
from tests.integration.ingress.support import (
    Api,
    Backends,
    Controller,
    Netns,
    NetnsHTTPConnection,
    request,
    running_controller,
    selectorless_service,
    wait_for,
)
from tests.support.server import start_server

pytestmark = pytest.mark.prerequisite_missing(shutil.which("nginx") is None and not Path("/usr/sbin/nginx").exists(),
                                reason="nginx is not installed (./run setup installs nginx-light)")

CHANGES = 50


@dataclass
class Load:
    netns: Netns
    port: int
    keepalive: bool
    ok: int = 0
    retried: int = 0
    failures: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def _connect(self) -> http.client.HTTPConnection:
        conn = NetnsHTTPConnection(self.netns, self.port, timeout=10.0)
        conn.connect()
        return conn

    def _one(self, conn: http.client.HTTPConnection) -> int:
        conn.request("GET", "/stable", headers={"Host": "load.test"})
        resp = conn.getresponse()
        body = resp.read()
        if resp.status != 200 and len(self.failures) < 3:
            self.failures.append(f"detail: {resp.getheaders()} {body[:200]!r} peer={conn.sock.getpeername()}")
        return resp.status

    def run(self) -> None:
        conn: http.client.HTTPConnection | None = None
        while not self.stop.is_set():
            reused = conn is not None
            try:
                if conn is None:
                    conn = self._connect()
                status = self._one(conn)
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError) as e:
                if conn is not None:
                    conn.close()
                conn = None
                if not (self.keepalive and reused):
                    self.failures.append(f"{type(e).__name__}: {e}")
                    continue
                self.retried += 1
                try:
                    conn = self._connect()
                    status = self._one(conn)
                except OSError as e2:
                    self.failures.append(f"retry failed: {type(e2).__name__}: {e2}")
                    conn = None
                    continue
            except OSError as e:
                self.failures.append(f"{type(e).__name__}: {e}")
                conn = None
                continue
            if status == 200:
                self.ok += 1
            else:
                self.failures.append(f"HTTP {status}")
            if not self.keepalive and conn is not None:
                conn.close()
                conn = None
        if conn is not None:
            conn.close()


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[tuple[Api, Controller, Netns]]:
    netns = Netns().create()
    srv = start_server(tmp_path / "state")
    backends = Backends(netns)
    try:
        api = Api(srv.url)
        for name in ("stable", "moving"):
            selectorless_service(api, name, backends.start(name), (netns.address,))
        with running_controller(srv.url, netns, tmp_path / "ing", "--upstream", "endpoints", "--access-log") as ctl:
            yield api, ctl, netns
    finally:
        backends.stop()
        srv.kill()
        netns.delete()


def test_fifty_changes_under_load_fail_no_request(setup: tuple[Api, Controller, Netns]) -> None:
    api, ctl, netns = setup

    def obj(i: int) -> dict:
        return ingress("load", rule("load.test", path("/stable", "stable"), path(f"/v{i}", "moving")))

    def served_moving(p: str) -> bool:
        return request(netns, ctl.http_port, "load.test", p).served_by == "moving"

    api.apply(obj(0))
    # The controller logs a reload once nginx's old workers have stopped accepting; only then does
    # every new connection get the route (one good answer could come from a new worker while an
    # old one still takes connections on the old configuration for a moment).
    wait_for("the first reload with the Ingress", lambda: "ingresses=1 " in ctl.log())
    assert request(netns, ctl.http_port, "load.test", "/v0").served_by == "moving"
    loads = [Load(netns, ctl.http_port, keepalive=False), Load(netns, ctl.http_port, keepalive=True)]
    threads = [threading.Thread(target=ld.run, daemon=True) for ld in loads]
    reloads_before = ctl.log().count("nginx reloaded")
    for t in threads:
        t.start()
    try:
        for i in range(1, CHANGES + 1):
            api.apply(obj(i))
            wait_for(f"change {i} to serve", partial(served_moving, f"/v{i}"), 20)
    finally:
        for ld in loads:
            ld.stop.set()
        for t in threads:
            t.join(15)
    def reloads_done() -> int | None:
        n = ctl.log().count("nginx reloaded") - reloads_before
        return n if n >= CHANGES else None

    reloads = wait_for(f"{CHANGES} reloads in the log", reloads_done)
    for ld in loads:
        assert ld.failures == [], f"keepalive={ld.keepalive}: {len(ld.failures)} failed, e.g. {ld.failures[:5]}"
        assert ld.ok > CHANGES  # the load really ran through the reloads
    print(f"reloads={reloads} fresh-connection requests={loads[0].ok} keepalive requests={loads[1].ok} "
          f"keepalive retries on a connection closed by a retiring worker={loads[1].retried}")
