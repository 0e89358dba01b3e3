"""Validation by reload with a real nginx: a configuration nginx refuses never stops serving.

While nginx runs a known-good configuration, the controller skips ``nginx -t`` and lets the reload
be the check. This drives :class:`IngressController` in-process (so the test can see which path it
took) against its own nginx in a private namespace, under continuous requests:

* a change that carries a broken Ingress (a certificate with somebody else's key: only nginx can
  tell) together with a good new Ingress: the master refuses the reload and keeps its workers, the
  broken Ingress is rejected with nginx's reason, the new one serves after the retry, and not one
  request to the established host fails on the way;
* the file on disk names the configuration nginx runs, and no ``nginx -t`` ran after the first start.
"""

from __future__ import annotations

import shutil
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from netplane.ingress.controller import ControllerOptions, IngressController, Snapshot
from netplane.ingress.fixtures import endpoint_slice, ingress, path, rule, service, tls_secret
from tests.integration.ingress.support import Backends, Netns, make_cert, request

pytestmark = pytest.mark.prerequisite_missing(shutil.which("nginx") is None and not Path("/usr/sbin/nginx").exists(),
                                reason="nginx is not installed (./run setup installs nginx-light)")


@dataclass
class Load:
    """Fresh-connection requests to one host until stopped; every answer but the backend's is a failure."""

    netns: Netns
    host: str
    ok: int = 0
    failures: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                served = request(self.netns, 80, self.host, "/").served_by
            except OSError as e:
                self.failures.append(f"{type(e).__name__}: {e}")
                continue
            if served == "echo":
                self.ok += 1
            else:
                self.failures.append(f"served by {served!r}")


@pytest.fixture
def env(tmp_path: Path) -> Iterator[tuple[Netns, IngressController, int]]:
    netns = Netns(prefix="np-ingv").create()
    backends = Backends(netns)
    ctl: IngressController | None = None
    try:
        port = backends.start("echo")
        opts = ControllerOptions(state_dir=tmp_path / "ing", http_port=80, https_port=443, address=netns.address,
                                 upstream_mode="endpoints", worker_processes="1", netns=netns.name,
                                 report_status=False)
        ctl = IngressController(opts)
        ctl.start()
        yield netns, ctl, port
    finally:
        if ctl is not None:
            ctl.stop()
        backends.stop()
        netns.delete()


def test_a_refused_reload_rejects_the_broken_ingress_while_everything_else_serves(
        env: tuple[Netns, IngressController, int], tmp_path: Path) -> None:
    netns, ctl, port = env
    svc = [service("svc", [("", 80, port)]), endpoint_slice("svc", [netns.address], [("", port)])]
    good = ingress("good", rule("good.test", path("/", "svc")), created="2024-01-01T00:00:00Z")
    first = ctl.apply(Snapshot(ingresses=[good], services=[svc[0]], slices=[svc[1]]))
    assert first.ok and first.changed, first.error
    assert ctl.checks == 1  # nothing ran yet: the first configuration is checked with nginx -t
    assert request(netns, 80, "good.test", "/").served_by == "echo"
    master = ctl.nginx.pid

    crt, _ = make_cert(tmp_path, ["mismatch.test"], "m1")
    _, other_key = make_cert(tmp_path, ["mismatch.test"], "m2")
    secret = tls_secret("mismatch", crt.read_bytes(), other_key.read_bytes())
    broken = ingress("broken", rule("mismatch.test", path("/", "svc")), tls=[(["mismatch.test"], "mismatch")],
                     created="2024-01-01T00:00:01Z")
    new = ingress("new", rule("new.test", path("/", "svc")), created="2024-01-01T00:00:02Z")
    log_before = ctl.nginx.error_log.read_text(errors="replace")

    load = Load(netns, "good.test")
    thread = threading.Thread(target=load.run, daemon=True)
    thread.start()
    try:
        result = ctl.apply(Snapshot(ingresses=[good, broken, new], services=[svc[0]], slices=[svc[1]],
                                    secrets=[secret]))
    finally:
        load.stop.set()
        thread.join(15)

    assert result.ok and result.changed, result.error
    assert result.plan is not None
    reason = result.plan.rejected[("default", "broken")]
    assert reason.startswith("nginx rejected the configuration it produces: "), reason
    assert set(result.plan.accepted) == {("default", "good"), ("default", "new")}
    # The reload was the check: the master logged the refusal, and nginx -t did not run again.
    assert ctl.checks == 1 and ctl.refused_reloads == 1
    assert "[emerg]" in ctl.nginx.error_log.read_text(errors="replace")[len(log_before):]
    assert ctl.nginx.pid == master and ctl.nginx.running()
    # Serving: the established host throughout, the new one now, the broken one not at all.
    assert load.failures == [], load.failures[:5]
    assert load.ok > 0
    assert request(netns, 80, "new.test", "/").served_by == "echo"
    assert request(netns, 80, "mismatch.test", "/").status == 404
    assert request(netns, 443, "mismatch.test", "/", https=True).status == 0  # no certificate: refused
    # The file names what nginx runs, and is known good (a restarted controller may trust it).
    assert ctl.nginx.conf.read_text() == ctl.live_text
    assert ctl.nginx.conf_verified
