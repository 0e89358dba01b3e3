"""The sync without a real nginx: the plan cache, validation by reload, and reading a refused reload.

A fake nginx stands in for the real one (tests/integration/ingress/ runs the real one): it refuses
a configuration the way nginx does, with an error at ``nginx.conf:LINE`` or naming a certificate
file, and keeps serving the previous configuration.
"""

from __future__ import annotations

import os
import random
import time
from pathlib import Path
from typing import Any, cast

import pytest

from netplane.ingress.backends import Resolved
from netplane.ingress.controller import ControllerOptions, IngressController, PlanCache, Snapshot, plan
from netplane.ingress.fixtures import endpoint_slice, ingress, path, rule, service, tls_secret
from netplane.ingress.model import ServiceRef, parse_ingress
from netplane.ingress.nginx import CheckResult, InstalledConf, Nginx, NginxRejected, _retired, _serving
from netplane.ingress.render import RenderOptions, ServerCache, render
from netplane.ingress.routes import build_table

CERT = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
KEY = b"-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----\n"


SVC = service("svc", [("", 80, 8080)], cluster_ip="10.96.0.9")


def snap(*objs: dict[str, Any]) -> Snapshot:
    """A snapshot of these objects; Service svc is always there (a 503 location carries no options)."""
    s = Snapshot(services=[SVC])
    for o in objs:
        {"Ingress": s.ingresses, "IngressClass": s.ingress_classes, "Service": s.services,
         "EndpointSlice": s.slices, "Secret": s.secrets}[o["kind"]].append(o)
    return s


# -- the plan cache ----------------------------------------------------------------------------


def test_cached_plans_equal_uncached_plans_through_a_series_of_changes(tmp_path: Path) -> None:
    """Every kind of change (add, edit, delete, a Secret, endpoints, a rejection) gives with the cache
    exactly the text and line owners it gives without."""
    opts = ControllerOptions(state_dir=tmp_path, upstream_mode="endpoints")
    objs: dict[str, dict[str, Any]] = {}
    for i in range(30):
        objs[f"ing-{i}"] = ingress(f"ing-{i}", rule(f"h{i % 12}.test", path(f"/p{i}", f"svc-{i % 4}")),
                                   created=f"2024-01-01T00:00:{i:02d}Z")
    for j in range(4):
        objs[f"svc-{j}"] = service(f"svc-{j}", [("", 80, 8080)])
        objs[f"eps-{j}"] = endpoint_slice(f"svc-{j}", [f"10.244.0.{j + 1}"], [("", 8080)])
    objs["tls"] = ingress("tls", rule("h1.test", path("/tls", "svc-0")), tls=[(["h1.test"], "cert")],
                          created="2023-01-01T00:00:00Z")
    objs["secret"] = tls_secret("cert", CERT, KEY)
    cache = PlanCache()
    rng = random.Random(7)
    edits = [
        lambda: objs.update({"ing-3": ingress("ing-3", rule("h3.test", path("/moved", "svc-1")))}),
        lambda: objs.pop("ing-5", None),
        lambda: objs.update({"new": ingress("new", rule("brand.new", path("/", "svc-2")))}),
        lambda: objs.update({"eps-1": endpoint_slice("svc-1", ["10.244.9.9"], [("", 8080)])}),
        lambda: objs.update({"secret": tls_secret("cert", CERT.replace(b"MIIB", b"MIIC"), KEY)}),
        lambda: objs.update({"bad": ingress("bad", rule("h2.test", path("/", "svc-0")),
                                            annotations={"nginx.ingress.kubernetes.io/backend-protocol": "X"})}),
        lambda: objs.pop("eps-2", None),
        lambda: objs.update({"ing-7": ingress("ing-7", rule("h7.test", path("/p7", "svc-3")),
                                              annotations={"nginx.ingress.kubernetes.io/ssl-redirect": "false"})}),
    ]
    first = plan(snap(*objs.values()), opts, cache=cache)
    assert first.rendered.text == plan(snap(*objs.values()), opts).rendered.text
    for step in range(24):
        edits[rng.randrange(len(edits))]()
        extra = {("default", "ing-1"): "refused by nginx"} if step % 3 == 0 else {}
        cached = plan(snap(*objs.values()), opts, extra, cache=cache)
        fresh = plan(snap(*objs.values()), opts, extra)
        assert cached.rendered.text == fresh.rendered.text, f"step {step}"
        assert cached.rendered.owners == fresh.rendered.owners
        assert cached.rejected == fresh.rejected and cached.certs == fresh.certs
    assert cache.servers.hits > cache.servers.misses  # it did save work


def test_an_ingress_object_that_was_not_replaced_is_not_parsed_again(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    import netplane.ingress.controller as controller

    parsed: list[str] = []
    real = controller.parse_ingress

    def counting(obj: dict[str, Any]) -> Any:
        parsed.append(obj["metadata"]["name"])
        return real(obj)

    monkeypatch.setattr(controller, "parse_ingress", counting)
    opts = ControllerOptions(state_dir=tmp_path)
    a, b = ingress("a", rule("a.test", path("/", "svc"))), ingress("b", rule("b.test", path("/", "svc")))
    cache = PlanCache()
    plan(snap(a, b), opts, cache=cache)
    assert sorted(parsed) == ["a", "b"]
    parsed.clear()
    b2 = ingress("b", rule("b.test", path("/x", "svc")))  # the informer hands over a new object
    p = plan(snap(a, b2), opts, cache=cache)
    assert parsed == ["b"]
    assert 'location = "/x"' in p.rendered.text


def test_a_server_block_is_rendered_again_when_its_backend_resolution_changes() -> None:
    table = build_table([parse_ingress(ingress("a", rule("a.test", path("/", "svc")))),
                         parse_ingress(ingress("b", rule("b.test", path("/", "other"))))])
    opts = RenderOptions(state_dir="/run/np-test")
    svc, other = ServiceRef("default", "svc", 80), ServiceRef("default", "other", 80)
    cache = ServerCache()
    up = {svc: Resolved(("10.0.0.1:80",)), other: Resolved(("10.0.0.2:80",))}
    render(table, up, {}, opts, cache)
    misses = cache.misses
    gone = {svc: Resolved(reason="no ready endpoint"), other: up[other]}
    text = render(table, gone, {}, opts, cache).text
    assert cache.misses == misses + 1  # a.test only; b.test and the catch-all were reused
    assert text == render(table, gone, {}, opts).text
    assert "no ready endpoint" in text and "return 503;" in text


# -- validation by reload, with a fake nginx ----------------------------------------------------


class FakeNginx(InstalledConf):
    """Serves what it was last reloaded with; refuses text containing a marker, as nginx would.
    Installs the configuration file as the real one does (InstalledConf)."""

    def __init__(self, state_dir: Path, bad: str, running: bool = True, verified: bool = True) -> None:
        self.conf = state_dir / "nginx.conf"
        self.unverified = state_dir / "nginx.conf.unverified"
        self.bad = bad
        self.pid = 4242
        self.up = running
        self.serving: str | None = None
        self.checks: list[str] = []
        self.reloads: list[str] = []
        if not verified:
            self.unverified.touch()

    def _error(self, text: str) -> CheckResult | None:
        for n, line in enumerate(text.splitlines(), start=1):
            if self.bad in line:
                return CheckResult(False, f'cannot load certificate in {self.conf}:{n}', n)
        return None

    def prepare(self) -> None:
        pass

    def adopt(self) -> bool:
        return self.up and self.conf.exists()

    def running(self) -> bool:
        return self.up

    def check(self, text: str) -> CheckResult:
        self.checks.append(text)
        return self._error(text) or CheckResult(True)

    def reload(self) -> None:
        text = self.conf.read_text()
        self.reloads.append(text)
        err = self._error(text)
        if err is not None:
            raise NginxRejected(err)
        self.serving, self.up = text, True

    def start(self) -> None:
        self.reload()

    def stop(self) -> None:
        self.up = False


def controller(tmp_path: Path, fake: FakeNginx) -> IngressController:
    ctl = IngressController(ControllerOptions(state_dir=tmp_path), nginx=cast(Nginx, fake))
    ctl.start()
    return ctl


BAD_ANNOTATION = "proxy-body-size"  # the fake refuses any line carrying this directive's value


def test_a_refused_reload_rejects_the_culprit_and_serves_everything_else_without_nginx_t(tmp_path: Path) -> None:
    fake = FakeNginx(tmp_path, "client_max_body_size 7m;")
    ctl = controller(tmp_path, fake)
    good = ingress("good", rule("good.test", path("/", "svc")))
    assert ctl.apply(snap(good)).changed  # a known-good configuration is live
    fake.checks.clear()
    fake.reloads.clear()
    new = ingress("new", rule("new.test", path("/", "svc")))
    broken = ingress("broken", rule("broken.test", path("/", "svc")),
                     annotations={f"nginx.ingress.kubernetes.io/{BAD_ANNOTATION}": "7m"})
    broken["metadata"]["resourceVersion"] = "1"
    result = ctl.apply(snap(good, new, broken))
    assert result.ok and result.changed
    assert result.plan is not None
    assert "nginx rejected" in result.plan.rejected[("default", "broken")]
    assert set(result.plan.accepted) == {("default", "good"), ("default", "new")}
    assert fake.checks == []  # the reloads were the checks
    assert len(fake.reloads) == 2 and ctl.refused_reloads == 1
    assert fake.serving is not None and "new.test" in fake.serving and "broken.test" not in fake.serving
    assert fake.conf.read_text() == fake.serving == ctl.live_text
    assert fake.conf_verified
    # Unchanged, the Ingress stays out without another try; changed, it is tried again.
    assert not ctl.apply(snap(good, new, broken)).changed and len(fake.reloads) == 2
    fixed = ingress("broken", rule("broken.test", path("/", "svc")))
    fixed["metadata"]["resourceVersion"] = "2"
    assert ctl.apply(snap(good, new, fixed)).changed
    assert "broken.test" in (fake.serving or "")


def test_between_a_refused_reload_and_the_retry_the_file_names_what_nginx_serves(tmp_path: Path) -> None:
    fake = FakeNginx(tmp_path, "client_max_body_size 7m;")
    ctl = controller(tmp_path, fake)
    ctl.apply(snap(ingress("good", rule("good.test", path("/", "svc")))))
    live = fake.serving
    seen: list[tuple[str, bool]] = []
    real_reload = fake.reload

    def reload() -> None:
        try:
            real_reload()
        except NginxRejected:
            seen.append(("refused", fake.conf_verified))
            raise

    fake.reload = reload  # type: ignore[method-assign]
    real_install = fake.install

    def install(text: str, verified: bool = True) -> None:
        real_install(text, verified)
        if seen and len(seen) == 1:
            seen.append((text, fake.conf_verified))

    fake.install = install  # type: ignore[method-assign]
    ctl.apply(snap(ingress("good", rule("good.test", path("/", "svc"))),
                   ingress("b", rule("b.test", path("/", "svc")),
                           annotations={f"nginx.ingress.kubernetes.io/{BAD_ANNOTATION}": "7m"})))
    assert seen[0] == ("refused", False)  # the refused text was marked unverified while tried
    assert seen[1] == (live, True)  # and the live text was put back, verified, straight after


def test_without_a_running_nginx_the_candidate_is_checked_with_nginx_t_first(tmp_path: Path) -> None:
    fake = FakeNginx(tmp_path, "client_max_body_size 7m;", running=False)
    ctl = controller(tmp_path, fake)
    result = ctl.apply(snap(ingress("good", rule("good.test", path("/", "svc"))),
                            ingress("b", rule("b.test", path("/", "svc")),
                                    annotations={f"nginx.ingress.kubernetes.io/{BAD_ANNOTATION}": "7m"})))
    assert result.ok and result.changed
    assert len(fake.checks) == 2 and ctl.checks == 2  # refused by nginx -t, then accepted
    assert len(fake.reloads) == 1  # nginx only ever started on the accepted one
    assert fake.serving is not None and "b.test" not in fake.serving


def test_an_adopted_nginx_with_an_unverified_file_is_not_trusted(tmp_path: Path) -> None:
    good = ingress("good", rule("good.test", path("/", "svc")))
    first = controller(tmp_path, FakeNginx(tmp_path, "never"))
    text = first.apply(snap(good)).plan.rendered.text  # type: ignore[union-attr]
    # A controller that stopped mid-try left the file unverified: the next one reloads once.
    fake = FakeNginx(tmp_path, "never", verified=False)
    ctl = controller(tmp_path, fake)
    assert ctl.live_text is None
    assert ctl.apply(snap(good)).changed and fake.reloads == [text]
    # With a verified file, the same restart reloads nothing.
    fake2 = FakeNginx(tmp_path, "never")
    ctl2 = controller(tmp_path, fake2)
    assert ctl2.live_text == text
    assert not ctl2.apply(snap(good)).changed and fake2.reloads == []


def test_validate_by_reload_can_be_turned_off(tmp_path: Path) -> None:
    fake = FakeNginx(tmp_path, "never")
    ctl = IngressController(ControllerOptions(state_dir=tmp_path, validate_by_reload=False), nginx=cast(Nginx, fake))
    ctl.start()
    ctl.apply(snap(ingress("a", rule("a.test", path("/", "svc")))))
    ctl.apply(snap(ingress("a", rule("a.test", path("/b", "svc")))))
    assert len(fake.checks) == 2 and len(fake.reloads) == 2


# -- reading a refused reload from nginx's error log ------------------------------------------


def test_a_refused_reload_is_read_from_the_error_log_after_the_signal(tmp_path: Path) -> None:
    n = Nginx(tmp_path)
    n.error_log.write_text('2024/01/01 00:00:00 [emerg] 1#1: unknown directive "old" in /x/nginx.conf:3\n')
    offset = n.error_log.stat().st_size
    assert n._refusal(offset) is None  # what was there before the reload does not count
    with n.error_log.open("a") as f:
        f.write("2024/01/01 00:00:01 [notice] 1#1: signal 1 (SIGHUP) received, reconfiguring\n")
        f.write("2024/01/01 00:00:01 [error] 7#7: *1 connect() failed (111: Connection refused) while connecting "
                f"to upstream, in {n.conf}:99\n")
    assert n._refusal(offset) is None  # a worker's error is not a refusal
    with n.error_log.open("a") as f:
        f.write(f'2024/01/01 00:00:01 [emerg] 1#1: invalid number of arguments in "listen" directive in '
                f"{n.conf}:12\n")
    got = n._refusal(offset)
    assert got is not None and not got.ok
    assert got.line == 12 and got.message.startswith('invalid number of arguments in "listen"')


def test_an_exited_worker_not_yet_reaped_counts_as_retired_and_not_as_serving() -> None:
    """nginx's master reaps workers only between its own steps (not during the 100 ms it sleeps after
    starting new ones): an old worker that already exited is a zombie, with an empty command line, and
    must neither hold up a reload nor be counted as a worker the new generation has to replace."""
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    try:
        def state() -> str:
            return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0]

        deadline = time.monotonic() + 10
        # Until the child is a zombie (we do not reap it yet). Its command line empties a little
        # earlier, while it is still exiting (R), so the state is what to wait on.
        while state() != "Z" and time.monotonic() < deadline:
            time.sleep(0.005)
        assert state() == "Z"
        assert Path(f"/proc/{pid}/cmdline").read_bytes() == b""
        assert _retired(pid) and not _serving(pid)
    finally:
        os.waitpid(pid, 0)
    assert _retired(pid)  # gone altogether
