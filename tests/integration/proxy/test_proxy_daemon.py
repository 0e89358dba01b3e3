"""The `netplane proxy` daemon against a real state server, programming a namespace node."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from netplane.proxy.fixtures import endpoint_slice, service
from tests.integration.proxy.topology import Topology, sh, wait_for
from tests.support.server import ServerProcess

pytestmark = [pytest.mark.root, pytest.mark.prerequisite_missing(os.geteuid() != 0, reason="needs root")]

A, B = "10.244.1.2", "10.244.1.3"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def request(url: str, method: str = "GET", body: dict[str, Any] | None = None) -> tuple[int, str]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except OSError:
        return 0, ""


def put_slice(server: str, eps: list[tuple[str, str]]) -> None:
    obj = endpoint_slice("dmn", eps, ports=(("", 8080, "TCP"),), slice_name="dmn-1")
    base = f"{server}/apis/discovery.k8s.io/v1/namespaces/default/endpointslices"
    status, current = request(f"{base}/dmn-1")
    if status == 200:
        obj["metadata"]["resourceVersion"] = json.loads(current)["metadata"]["resourceVersion"]
        status, text = request(f"{base}/dmn-1", "PUT", obj)
    else:
        status, text = request(base, "POST", obj)
    assert status in (200, 201), text


class Daemon:
    def __init__(self, server: str, netns: str, mode: str, tmp: Path) -> None:
        self.healthz, self.metrics = free_port(), free_port()
        self.log = tmp / f"proxy-{mode}-{time.monotonic_ns()}.log"
        code = ("import sys; from netplane.cli.proxy_cmd import proxy; "
                "proxy.main(sys.argv[1:], prog_name='netplane proxy')")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code, "--server", server, "--node-name", "n1", "--mode", mode,
             "--cluster-cidr", "10.244.0.0/16", "--min-sync-period", "100ms", "--sync-period", "30s",
             "--healthz-bind-address", f"127.0.0.1:{self.healthz}",
             "--metrics-bind-address", f"127.0.0.1:{self.metrics}", "--netns", netns],
            stdout=subprocess.DEVNULL, stderr=self.log.open("w"))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # by PID: the process this test started
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)



@pytest.mark.parametrize("mode", ["iptables", "nftables"])
def test_daemon_programs_changes_and_survives_restart_and_server_loss(
        topo: Topology, state_server: ServerProcess, mode: str, tmp_path: Path) -> None:
    sh("ip", "netns", "exec", topo.node1, "nft", "flush", "ruleset")
    svc = service("dmn", "10.96.0.99")
    status, text = request(f"{state_server.url}/api/v1/namespaces/default/services", "POST", svc)
    assert status == 201, text
    put_slice(state_server.url, [(A, "n1")])
    daemon = Daemon(state_server.url, topo.node1, mode, tmp_path)
    try:
        first = wait_for(lambda: topo.one("pb", "tcp", "10.96.0.99", 80).get("server") == A, timeout=20)
        assert first, daemon.log.read_text()
        assert request(f"http://127.0.0.1:{daemon.healthz}/healthz")[0] == 200
        # An endpoint change reaches the kernel through watch -> tracker -> partial sync.
        put_slice(state_server.url, [(B, "n1")])
        assert wait_for(lambda: topo.one("pb", "tcp", "10.96.0.99", 80).get("server") == B, timeout=10)
        metrics = request(f"http://127.0.0.1:{daemon.metrics}/metrics")[1]
        assert "kubeproxy_sync_partial_proxy_rules_duration_seconds_count" in metrics
        # A live connection across a daemon restart: the new process must not flush first.
        session = topo.session("pb")
        try:
            assert session.ask("tcp-open 10.96.0.99 80")["server"] == B
            daemon.stop()
            daemon = Daemon(state_server.url, topo.node1, mode, tmp_path)
            synced = "kubeproxy_sync_full_proxy_rules_duration_seconds_count 1"
            assert wait_for(lambda: synced in request(f"http://127.0.0.1:{daemon.metrics}/metrics")[1],
                            timeout=20), daemon.log.read_text()
            assert session.ask("tcp-ask")["server"] == B
        finally:
            session.close()
        # The state server goes away: rules stay as they are.
        state_server.kill(signal.SIGKILL)
        assert wait_for(lambda: "cannot reach the server" in daemon.log.read_text(), timeout=10)
        assert request(f"http://127.0.0.1:{daemon.healthz}/healthz")[0] == 200
        assert topo.one("pb", "tcp", "10.96.0.99", 80).get("server") == B
    finally:
        daemon.stop()
