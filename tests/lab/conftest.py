"""Lab clusters for packet-level tests: real namespaces, daemons, pods and traffic.

Each lab uses its own namespace prefix and state directory, so a tester's own
`netplane lab` is never touched, and everything is removed even when a test fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import threading
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

        return self.lab.api(lambda c: apply_objects(c, docs, "default"))

    def pods(self, selector: str) -> list[dict[str, Any]]:
        return self.api(lambda c: c.list(PODS, "default", label_selector=selector))["items"]

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


# Requests in a loop, one new connection each, until the stop file appears; one JSON line per request.
TRAFFIC_LOOP = (
    "import json, os, sys, time, urllib.request\n"
    "url, stop, deadline = sys.argv[1], sys.argv[2], time.monotonic() + float(sys.argv[3])\n"
    "while not os.path.exists(stop) and time.monotonic() < deadline:\n"
    "    t = time.monotonic()\n"
    "    try:\n"
    "        with urllib.request.urlopen(url, timeout=2) as r:\n"
    "            rec = {'pod': json.loads(r.read())['pod']}\n"
    "    except Exception as e:\n"
    "        rec = {'error': repr(e)}\n"
    "    rec['t'] = t\n"
    "    print(json.dumps(rec), flush=True)\n"
    "    time.sleep(0.05)\n"
)


@dataclass
class Answer:
    t: float  # the client's monotonic clock (the same clock as this process's)
    pod: str | None
    error: str | None


class Traffic:
    """Steady HTTP requests from inside a namespace while the block runs; afterwards `answers`
    holds every request's outcome in order.

        with Traffic(cluster, netns, url) as traffic:
            ...  # disturb the cluster
        assert not traffic.failures()
    """

    def __init__(self, cluster: LabCluster, netns: str, url: str, max_seconds: float = 240.0) -> None:
        self.netns = netns
        self.url = url
        self.max_seconds = max_seconds
        self.answers: list[Answer] = []
        self._cond = threading.Condition()
        self._stop: Path | None = None
        self._proc: subprocess.Popen[str] | None = None
        self._reader: threading.Thread | None = None

    def __enter__(self) -> Traffic:
        fd, name = tempfile.mkstemp(prefix="np-lab-traffic-")
        os.close(fd)
        os.unlink(name)  # the loop runs until this path exists
        self._stop = Path(name)
        argv = [sys.executable, "-c", TRAFFIC_LOOP, self.url, name, str(self.max_seconds)]
        self._proc = subprocess.Popen(labnet.netns_exec_argv(self.netns, argv), stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        return self

    def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for line in self._proc.stdout:
            if line.strip():
                rec = json.loads(line)
                with self._cond:
                    self.answers.append(Answer(rec["t"], rec.get("pod"), rec.get("error")))
                    self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def wait_answers(self, count: int, timeout: float = 20.0) -> None:
        """Block until the loop has made `count` more requests than so far."""
        with self._cond:
            want = len(self.answers) + count
            ok = self._cond.wait_for(lambda: len(self.answers) >= want or not self._running(), timeout)
            if not ok or len(self.answers) < want:
                raise AssertionError(f"traffic to {self.url} stopped reporting: {self._stderr()}")

    def _running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def _stderr(self) -> str:
        if self._running() or self._proc is None or self._proc.stderr is None:
            return "(the loop is still running)"
        return self._proc.stderr.read()[-400:]

    def __exit__(self, *exc: object) -> None:
        assert self._proc is not None and self._stop is not None and self._reader is not None
        self._stop.touch()
        try:
            self._proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        finally:
            self._stop.unlink(missing_ok=True)
        self._reader.join(10)

    def failures(self, since: float = 0.0) -> list[Answer]:
        return [a for a in self.answers if a.error and a.t >= since]

    def pods(self, since: float = 0.0) -> set[str]:
        return {a.pod for a in self.answers if a.pod and a.t >= since}


# The echo server exits at once on SIGTERM, as many servers do; so, as real deployments do, its pods
# wait in a preStop sleep until every proxy has stopped sending them new connections: longer than
# the proxies' minimum sync interval (1 s) plus a sync on a busy machine. The grace period only
# needs to cover that (the server ends the moment SIGTERM comes), so it is short, not 30 s.
PRESTOP_SECONDS = 3
GRACE_SECONDS = 10


def echo_app(name: str, replicas: int, node_port: int | None = None, prestop_seconds: int | None = PRESTOP_SECONDS,
             **pod_spec: Any) -> list[dict[str, Any]]:
    """A Deployment of echo servers behind a Service. `prestop_seconds` None: no preStop hook."""
    svc: dict[str, Any] = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name},
                           "spec": {"selector": {"app": name},
                                    "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}}
    if node_port:
        svc["spec"]["type"] = "NodePort"
        svc["spec"]["ports"][0]["nodePort"] = node_port
    container = {"name": "echo", "image": "netplane/echo-server", "ports": [{"name": "http", "containerPort": 8080}],
                 "readinessProbe": {"httpGet": {"path": "/", "port": "http"}, "periodSeconds": 1}}
    if prestop_seconds is not None:
        container["lifecycle"] = {"preStop": {"sleep": {"seconds": prestop_seconds}}}
    pod_spec.setdefault("terminationGracePeriodSeconds", GRACE_SECONDS)
    dep = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
           "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                    "template": {"metadata": {"labels": {"app": name}},
                                 "spec": {"containers": [container], **pod_spec}}}}
    return [dep, svc]


@contextlib.contextmanager
def lab_cluster(backend: str, mode: str, prefix: str, state: Path, nodes: int = 3,
                extra_node_args: tuple[str, ...] = ()) -> Iterator[LabCluster]:
    """A lab of its own (namespace prefix and state dir), removed afterwards even when the test fails."""
    remove_leftovers(prefix, progress=lambda _m: None)
    lab = Lab(plan(nodes, backend, mode, prefix=prefix), state_dir=state, server_args=SERVER_ARGS,
              node_args=(*NODE_ARGS, *extra_node_args))
    try:
        lab.up(progress=lambda _m: None)
        yield LabCluster(lab)
    finally:
        lab.down(progress=lambda _m: None)
        assert labnet.list_netns(prefix) == [], "lab down left namespaces behind"


# Every backend with every proxy mode: the requirements must hold in each combination.
MATRIX = [("vxlan", "iptables"), ("vxlan", "nftables"), ("host-gw", "iptables"), ("host-gw", "nftables")]


@pytest.fixture(scope="module", params=MATRIX, ids=lambda p: f"{p[0]}-{p[1]}")
def cluster(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabCluster]:
    backend, mode = request.param
    prefix = f"np-lt{'v' if backend == 'vxlan' else 'h'}{mode[0]}-"
    with lab_cluster(backend, mode, prefix, Path(tmp_path_factory.mktemp(f"lab-{backend}-{mode}"))) as c:
        yield c
