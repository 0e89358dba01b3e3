"""The controller with a real state server and a real nginx: real HTTP(S) requests give the pure table's answers.

One state server, one controller (``--upstream endpoints``, every Service pointing at loopback echo
servers) and one certificate serve the whole module; each test uses its own hosts and removes its
Ingresses, so the tests do not depend on each other's order.
"""

from __future__ import annotations

import json
import shutil
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from netplane.ingress.fixtures import ingress, ingress_class, path, rule, tls_secret
from netplane.ingress.model import parse_ingress
from netplane.ingress.routes import RouteTable, build_table
from tests.integration.ingress.support import (
    Answer,
    Api,
    Backends,
    Controller,
    Netns,
    make_cert,
    request,
    running_controller,
    selectorless_service,
    wait_for,
)
from tests.support.server import start_server
from tests.unit.ingress.cases import (
    DEFAULT_INGRESS,
    HOST_CATCH_ALL,
    HOST_INGRESS,
    HOST_REQUESTS,
    SERVICES,
    path_table_ingresses,
    path_table_requests,
)

pytestmark = pytest.mark.prerequisite_missing(shutil.which("nginx") is None and not Path("/usr/sbin/nginx").exists(),
                                reason="nginx is not installed (./run setup installs nginx-light)")

CERT_NAMES = ["secure.test", "*.wild.test", "noredirect.test", "tlsbackend.test"]


@dataclass
class Env:
    netns: Netns
    api: Api
    ctl: Controller
    backends: Backends
    ca: Path
    tmp: Path


class _TLSEcho(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = json.dumps({"pod": "tls-backend", "path": self.path, "headers": dict(self.headers)}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    tmp = tmp_path_factory.mktemp("ingress")
    netns = Netns().create()
    srv = start_server(tmp / "state")
    backends = Backends(netns)
    tls_server: ThreadingHTTPServer | None = None
    try:
        api = Api(srv.url)
        for name in SERVICES:
            selectorless_service(api, name, backends.start(name), (netns.address,))
        crt, key = make_cert(tmp, CERT_NAMES)
        api.apply(tls_secret("cert", crt.read_bytes(), key.read_bytes()))
        # An HTTPS backend for the backend-protocol annotation (its socket made inside the namespace).
        with netns.inside():
            tls_server = ThreadingHTTPServer((netns.address, 9443), _TLSEcho)
        sctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        sctx.load_cert_chain(crt, key)
        tls_server.socket = sctx.wrap_socket(tls_server.socket, server_side=True)
        threading.Thread(target=tls_server.serve_forever, daemon=True).start()
        selectorless_service(api, "tls-backend", 9443, (netns.address,), port=443)
        with running_controller(srv.url, netns, tmp / "ing", "--upstream", "endpoints") as ctl:
            yield Env(netns, api, ctl, backends, crt, tmp)
    finally:
        if tls_server is not None:
            tls_server.shutdown()
            tls_server.server_close()
        backends.stop()
        srv.kill()
        netns.delete()


def expected(table: RouteTable, host: str, p: str, scheme: str, https_port: int) -> tuple[int, str | None]:
    d = table.decide(host, p, scheme, https_port)
    if d.action == "proxy":
        assert d.backend is not None
        return (200, d.backend.name)
    if d.action == "redirect":
        return (308, d.location)
    if d.action == "not_found":
        return (404, None)
    return (0, None)


def actual(a: Answer) -> tuple[int, str | None]:
    if a.status == 200:
        return (200, a.served_by)
    if a.status == 308:
        return (308, a.headers.get("location"))
    return (a.status, None)


def check_matrix(e: Env, objs: list[dict[str, Any]], requests: list[tuple[str, str, str]],
                 timeout: float = 30.0) -> RouteTable:
    """Apply objs, then poll until nginx answers every (host, path, scheme) as the pure table says."""
    for o in objs:
        e.api.apply(o)
    table = build_table([parse_ingress(o) for o in objs], lambda _s: None)
    wrong: list[str] = []

    def all_match() -> bool:
        wrong.clear()
        for host, p, scheme in requests:
            port = e.ctl.https_port if scheme == "https" else e.ctl.http_port
            got = actual(request(e.netns, port, host, p, https=scheme == "https", ca_file=e.ca))
            want = expected(table, host, p, scheme, e.ctl.https_port)
            if got != want:
                wrong.append(f"{scheme}://{host}{p}: nginx {got}, table {want}")
        return not wrong

    try:
        wait_for("nginx to answer as the route table", all_match, timeout, interval=0.2)
    except AssertionError:
        raise AssertionError("\n".join(wrong) + "\n--- controller log ---\n" + e.ctl.log()[-3000:]) from None
    return table


def served(e: Env, host: str, p: str = "/", port: int | None = None) -> str | None:
    return request(e.netns, port or e.ctl.http_port, host, p).served_by


def status(e: Env, host: str, p: str = "/") -> int:
    return request(e.netns, e.ctl.http_port, host, p).status


def cleanup(e: Env, *objs: dict[str, Any]) -> None:
    for o in objs:
        e.api.delete(o["kind"], o["metadata"]["name"], o["metadata"].get("namespace"))


def test_documented_path_and_host_tables_through_nginx(env: Env) -> None:
    objs = [*path_table_ingresses(), HOST_INGRESS]
    reqs = [(h, p, "http") for h, p, _ in path_table_requests()] + [(h, "/x", "http") for h, _, _ in HOST_REQUESTS]
    try:
        table = check_matrix(env, objs, reqs)
        # The table itself gives the documented answers (unit-tested too): nginx gave the same.
        for host, p, want in path_table_requests():
            r = table.route(host, p)
            assert (r.backend.name if r else None) == want
        # Now with a catch-all rule and a default backend: "no match" answers change accordingly.
        table = check_matrix(env, [*objs, HOST_CATCH_ALL, DEFAULT_INGRESS], reqs)
        for host, p, want in path_table_requests():
            r = table.route(host, p)
            assert (r.backend.name if r else None) == (want or "svc-default")
        for host, _without, with_catch_all in HOST_REQUESTS:
            r = table.route(host, "/x")
            assert (r.backend.name if r else None) == with_catch_all
    finally:
        cleanup(env, *objs, HOST_CATCH_ALL, DEFAULT_INGRESS)


def test_tls_by_sni_redirects_and_https_backends(env: Env) -> None:
    objs = [
        ingress("tls", rule("secure.test", path("/", "svc-a")), rule("plain.test", path("/", "svc-b")),
                rule("a.wild.test", path("/", "svc-c")), rule("x.y.wild.test", path("/", "svc-a")),
                tls=[(["secure.test"], "cert"), (["*.wild.test"], "cert")], created="2024-02-01T00:00:00Z"),
        ingress("noredirect", rule("noredirect.test", path("/", "svc-b")), tls=[(["noredirect.test"], "cert")],
                annotations={"nginx.ingress.kubernetes.io/ssl-redirect": "false"}, created="2024-02-01T00:00:01Z"),
        ingress("tlsbackend", rule("tlsbackend.test", path("/", "tls-backend", 443)),
                tls=[(["tlsbackend.test"], "cert")],
                annotations={"nginx.ingress.kubernetes.io/backend-protocol": "HTTPS"}, created="2024-02-01T00:00:02Z"),
    ]
    hosts = ["secure.test", "plain.test", "a.wild.test", "x.y.wild.test", "noredirect.test", "tlsbackend.test"]
    reqs = [(h, "/some/path?q=1", scheme) for h in hosts for scheme in ("http", "https")]
    try:
        table = check_matrix(env, objs, reqs)
        assert table.decide("secure.test", "/", "http", env.ctl.https_port).action == "redirect"
        assert table.decide("plain.test", "/", "https").action == "tls_refused"
        assert table.decide("noredirect.test", "/", "http").action == "proxy"
        a = request(env.netns, env.ctl.https_port, "tlsbackend.test", "/over-tls", https=True, ca_file=env.ca)
        assert a.served_by == "tls-backend" and a.body is not None and a.body["path"] == "/over-tls"
    finally:
        cleanup(env, *objs)


def test_forwarded_headers_and_host_reach_the_backend(env: Env) -> None:
    obj = ingress("hdr", rule("hdr.test", path("/", "svc-a")), tls=[(["secure.test"], "cert")],
                  annotations={"nginx.ingress.kubernetes.io/ssl-redirect": "false"})
    sec = ingress("hdr-tls", rule("secure.test", path("/", "svc-b")), tls=[(["secure.test"], "cert")])
    try:
        env.api.apply(obj)
        env.api.apply(sec)
        a = wait_for("hdr.test served", lambda: (lambda r: r if r.served_by == "svc-a" else None)(
            request(env.netns, env.ctl.http_port, f"hdr.test:{env.ctl.http_port}", "/h?x=1",
                    headers={"X-Forwarded-For": "203.0.113.9"})))
        assert a.body is not None
        h = {k.lower(): v for k, v in a.body["headers"].items()}
        assert h["host"] == f"hdr.test:{env.ctl.http_port}"
        assert h["x-forwarded-for"] == env.netns.address  # the client's own X-Forwarded-For is not trusted
        assert h["x-forwarded-proto"] == "http"
        assert h["x-forwarded-host"] == "hdr.test"
        assert h["x-forwarded-port"] == str(env.ctl.http_port)
        assert a.body["path"] == "/h?x=1"
        b = wait_for("secure.test over https", lambda: (lambda r: r if r.served_by == "svc-b" else None)(
            request(env.netns, env.ctl.https_port, "secure.test", "/", https=True, ca_file=env.ca)))
        assert b.body is not None
        assert {k.lower(): v for k, v in b.body["headers"].items()}["x-forwarded-proto"] == "https"
    finally:
        cleanup(env, obj, sec)


def _events(e: Env, name: str) -> list[dict[str, Any]]:
    return [ev for ev in e.api.list("Event", "default") if (ev.get("involvedObject") or {}).get("name") == name]


def test_bad_ingresses_are_rejected_with_an_event_and_the_rest_keeps_serving(env: Env) -> None:
    good = ingress("good", rule("good.test", path("/", "svc-a")), created="2024-03-01T00:00:00Z")
    bad = ingress("bad-annotation", rule("bad.test", path("/", "svc-b")), created="2024-03-01T00:00:01Z",
                  annotations={"nginx.ingress.kubernetes.io/backend-protocol": "GRPC"})
    # A certificate with somebody else's key: it looks fine, and only nginx -t can tell.
    crt1, _key1 = make_cert(env.tmp, ["mismatch.test"], "m1")
    _crt2, key2 = make_cert(env.tmp, ["mismatch.test"], "m2")
    secret = tls_secret("mismatch", crt1.read_bytes(), key2.read_bytes())
    badcert = ingress("bad-cert", rule("mismatch.test", path("/", "svc-c")), tls=[(["mismatch.test"], "mismatch")],
                      created="2024-03-01T00:00:02Z")
    try:
        for o in (good, bad, secret, badcert):
            env.api.apply(o)
        wait_for("good.test served", lambda: served(env, "good.test", "/") == "svc-a")

        def rejected(name: str) -> list[dict[str, Any]]:
            return [ev for ev in _events(env, name) if ev.get("reason") == "Rejected" and ev.get("type") == "Warning"]

        ev = wait_for("a Rejected event for bad-annotation", lambda: rejected("bad-annotation"))
        assert "backend-protocol" in ev[0]["message"]
        ev2 = wait_for("a Rejected event for bad-cert", lambda: rejected("bad-cert"))
        assert "nginx" in ev2[0]["message"]
        assert status(env, "bad.test", "/") == 404
        assert status(env, "mismatch.test", "/") == 404
        assert served(env, "good.test", "/") == "svc-a"
        # Fixing the Ingress brings it in.
        fixed = ingress("bad-annotation", rule("bad.test", path("/", "svc-b")), created="2024-03-01T00:00:01Z")
        env.api.apply(fixed)
        wait_for("bad.test served once fixed", lambda: served(env, "bad.test", "/") == "svc-b")
    finally:
        cleanup(env, good, bad, badcert, secret)


def test_status_load_balancer_is_filled(env: Env) -> None:
    obj = ingress("status", rule("status.test", path("/", "svc-a")))
    try:
        env.api.apply(obj)

        def status() -> list[Any]:
            lb: list[Any] = ((env.api.get("Ingress", "status").get("status") or {}).get("loadBalancer") or {}).get(
                "ingress") or []
            return lb

        assert wait_for("status.loadBalancer", status) == [{"ip": env.netns.address}]
    finally:
        cleanup(env, obj)


def test_class_selection(env: Env) -> None:
    other = ingress("other-class", rule("cls.test", path("/", "svc-a")), class_name="someone-else")
    legacy = ingress("legacy", rule("legacy.test", path("/", "svc-b")), class_name=None,
                     annotations={"kubernetes.io/ingress.class": "netplane"})
    unclassed = ingress("unclassed", rule("unclassed.test", path("/", "svc-c")), class_name=None)
    ic = ingress_class("netplane", default=True)
    try:
        for o in (other, legacy, unclassed):
            env.api.apply(o)
        wait_for("legacy annotation honoured", lambda: served(env, "legacy.test", "/") == "svc-b")
        assert status(env, "unclassed.test", "/") == 404  # no default class yet
        env.api.apply(ic)
        wait_for("the default IngressClass takes unclassed Ingresses",
                 lambda: served(env, "unclassed.test", "/") == "svc-c")
        assert status(env, "cls.test", "/") == 404
    finally:
        cleanup(env, other, legacy, unclassed)
        env.api.delete("IngressClass", "netplane", None)


def _reloads(ctl: Controller) -> int:
    return ctl.log().count("nginx reloaded")


def _settled_reloads(ctl: Controller, quiet: float = 1.0, timeout: float = 20.0) -> int:
    """The reload count once it has stopped moving for `quiet` seconds (a reload is logged only
    after its old workers have stopped, which can be after the new route already serves)."""
    deadline = time.monotonic() + timeout
    count, since = _reloads(ctl), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.1)
        now = _reloads(ctl)
        if now != count:
            count, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return count
    return count


def test_reload_only_when_the_rendered_configuration_changes(env: Env) -> None:
    a = ingress("rl", rule("rl.test", path("/a", "svc-a")))
    try:
        env.api.apply(a)
        wait_for("rl.test/a", lambda: served(env, "rl.test", "/a") == "svc-a")
        before = _settled_reloads(env.ctl)
        # Changes that render the same configuration: another class's Ingress, an annotation nobody reads.
        env.api.apply(ingress("rl-other", rule("rl.test", path("/b", "svc-b")), class_name="someone-else"))
        env.api.apply(ingress("rl", rule("rl.test", path("/a", "svc-a")), annotations={"team": "x"}))
        # Then one change that matters; events are handled in order, so once it serves, the others were seen.
        env.api.apply(ingress("rl", rule("rl.test", path("/a", "svc-a"), path("/c", "svc-c")),
                              annotations={"team": "x"}))
        wait_for("rl.test/c", lambda: served(env, "rl.test", "/c") == "svc-c")
        assert _settled_reloads(env.ctl) == before + 1
    finally:
        env.api.delete("Ingress", "rl")
        env.api.delete("Ingress", "rl-other")


def test_endpoint_changes_reach_nginx_in_endpoints_mode(env: Env) -> None:
    port = env.backends.start("svc-moved")
    obj = ingress("ep", rule("ep.test", path("/", "svc-ep")))
    try:
        selectorless_service(env.api, "svc-ep", env.backends.ports["svc-a"], (env.netns.address,))
        env.api.apply(obj)
        wait_for("ep.test -> svc-a's server", lambda: served(env, "ep.test", "/") == "svc-a")
        selectorless_service(env.api, "svc-ep", port, (env.netns.address,))
        wait_for("ep.test -> the moved endpoint", lambda: served(env, "ep.test", "/") == "svc-moved")
        env.api.delete("EndpointSlice", "svc-ep-manual")
        wait_for("503 without endpoints", lambda: status(env, "ep.test", "/") == 503)
    finally:
        cleanup(env, obj)
        env.api.delete("Service", "svc-ep")


def test_controller_restart_adopts_its_running_nginx(env: Env, tmp_path: Path) -> None:
    """A second controller on the same state dir after a crash takes over nginx instead of failing."""
    # Covered here without killing the module's controller: a fresh controller on its own dir.
    from tests.integration.ingress.support import start_controller

    obj = ingress("adopt", rule("adopt.test", path("/", "svc-a")))
    env.api.apply(obj)
    url = env.api.config.server
    first = start_controller(url, env.netns, tmp_path / "ing2", "--upstream", "endpoints", http_port=8080,
                             https_port=8443)
    try:
        wait_for("served by the first", lambda: served(env, "adopt.test", "/", first.http_port) == "svc-a")
        nginx_pid = first.nginx_pid()
        assert nginx_pid is not None
        first.proc.kill()  # a crash: nginx is left running
        first.proc.wait(10)
        assert served(env, "adopt.test", "/", first.http_port) == "svc-a"
        second = start_controller(url, env.netns, tmp_path / "ing2", "--upstream", "endpoints", http_port=8080,
                                  https_port=8443)
        try:
            assert second.nginx_pid() == nginx_pid
            assert served(env, "adopt.test", "/", second.http_port) == "svc-a"
        finally:
            second.stop()
        cmdline = Path(f"/proc/{nginx_pid}/cmdline")
        assert not cmdline.exists() or b"nginx" not in cmdline.read_bytes()  # stopped with its controller
    finally:
        first.stop()
        cleanup(env, obj)
