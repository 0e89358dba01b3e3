"""Lab clusters for packet-level tests: real namespaces, daemons, pods and traffic.

Each lab uses its own namespace prefix and state directory, so a tester's own
`netplane lab` is never touched, and everything is removed even when a test fails.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

from netplane.api import resources as res
from netplane.kernel import labnet
from netplane.lab.cluster import Lab, remove_leftovers
from netplane.lab.status import pod_netns
from netplane.lab.topology import plan

PODS = res.must("", "v1", "pods")
SERVICES = res.must("", "v1", "services")
NODES = res.must("", "v1", "nodes")
T = TypeVar("T")

FETCH = (
    "import sys, urllib.request\n"
    "with urllib.request.urlopen(sys.argv[1], timeout=3) as r: sys.stdout.write(r.read().decode())\n"
)

# Shortened node-failure timers so the failure tests take seconds, not minutes; the agents
# heartbeat well inside the grace period, or healthy nodes would flap NotReady.
SERVER_ARGS = ("--node-monitor-grace-period", "4s", "--pod-eviction-timeout", "6s")
NODE_ARGS = ("--heartbeat-interval", "1s")


def wait_for(what: str, check: Callable[[], T | None], timeout: float = 60.0) -> T:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            got = check()
            if got:
                return got
        except Exception as e:  # the condition may fail while things converge
            last = e
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}" + (f" (last error: {last})" if last else ""))


@dataclass
class LabCluster:
    lab: Lab

    def api(self, fn: Callable[[Any], Any]) -> Any:
        return self.lab.api(fn)

    def apply(self, docs: list[dict[str, Any]]) -> list[str]:
        from netplane.client.apply import apply_objects

        return self.lab.api(lambda c: apply_objects(c, docs, "default"))  # type: ignore[no-any-return]

    def pods(self, selector: str) -> list[dict[str, Any]]:
        return self.api(lambda c: c.list(PODS, "default", label_selector=selector))["items"]  # type: ignore[no-any-return]

    def ready_pods(self, selector: str) -> list[dict[str, Any]]:
        return [p for p in self.pods(selector) if not p["metadata"].get("deletionTimestamp")
                and any(c.get("type") == "Ready" and c.get("status") == "True"
                        for c in (p.get("status") or {}).get("conditions") or [])]

    def wait_ready(self, selector: str, count: int, timeout: float = 60.0) -> list[dict[str, Any]]:
        return wait_for(f"{count} ready pods ({selector})",
                        lambda: (lambda ps: ps if len(ps) == count else None)(self.ready_pods(selector)), timeout)

    def netns_of(self, pod: dict[str, Any]) -> str:
        return pod_netns(self.lab, pod["metadata"]["name"], pod["metadata"]["namespace"])

    def run_in(self, netns: str, argv: list[str], timeout: float = 20.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run(labnet.netns_exec_argv(netns, argv), capture_output=True, text=True,
                              timeout=timeout, check=False)

    def fetch(self, netns: str, url: str) -> dict[str, Any]:
        proc = self.run_in(netns, [sys.executable, "-c", FETCH, url])
        assert proc.returncode == 0, f"GET {url} from {netns}: {proc.stderr[-400:]}"
        out: dict[str, Any] = json.loads(proc.stdout)
        return out

    def service_ip(self, name: str) -> str:
        return str(self.api(lambda c: c.get(SERVICES, name, "default"))["spec"]["clusterIP"])


def echo_app(name: str, replicas: int, node_port: int | None = None, **pod_spec: Any) -> list[dict[str, Any]]:
    svc: dict[str, Any] = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name},
                           "spec": {"selector": {"app": name},
                                    "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}}
    if node_port:
        svc["spec"]["type"] = "NodePort"
        svc["spec"]["ports"][0]["nodePort"] = node_port
    container = {"name": "echo", "image": "netplane/echo-server", "ports": [{"name": "http", "containerPort": 8080}],
                 "readinessProbe": {"httpGet": {"path": "/", "port": "http"}, "periodSeconds": 1}}
    dep = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
           "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                    "template": {"metadata": {"labels": {"app": name}},
                                 "spec": {"containers": [container], **pod_spec}}}}
    return [dep, svc]


@pytest.fixture(scope="module", params=[("vxlan", "iptables"), ("host-gw", "nftables")],
                ids=lambda p: f"{p[0]}-{p[1]}")
def cluster(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabCluster]:
    backend, mode = request.param
    prefix = f"np-lt{'v' if backend == 'vxlan' else 'h'}{mode[0]}-"
    remove_leftovers(prefix, progress=lambda _m: None)
    state = tmp_path_factory.mktemp(f"lab-{backend}-{mode}")
    lab = Lab(plan(3, backend, mode, prefix=prefix), state_dir=Path(state), server_args=SERVER_ARGS,
              node_args=NODE_ARGS)
    try:
        lab.up(progress=lambda _m: None)
        yield LabCluster(lab)
    finally:
        lab.down(progress=lambda _m: None)
        assert labnet.list_netns(prefix) == [], "lab down left namespaces behind"
