"""The lab pod runtime against a real server: restart policies, unsupported images, logs, localhost."""

from __future__ import annotations

import subprocess

import pytest

from tests.integration.node.cluster import Cluster, pod_manifest, wait_for
from tests.support.server import NETPLANE

pytestmark = pytest.mark.root


def _status(cluster: Cluster, name: str) -> dict:
    assert cluster.api is not None
    return (cluster.api.pod(name) or {}).get("status") or {}


def test_restart_policies_images_and_logs(cluster: Cluster) -> None:
    assert cluster.api is not None
    agent = cluster.start_agent("n1")
    cluster.wait_ready("n1")
    api = cluster.api
    api.create_pod(pod_manifest("crash", "n1", image="busybox", command=["sh", "-c", "echo run $POD_NAME; exit 3"]))
    api.create_pod(pod_manifest("once", "n1", image="busybox", command=["sh", "-c", "echo done"],
                                restart_policy="Never"))
    api.create_pod(pod_manifest("bad", "n1", image="redis:7"))
    two = pod_manifest("two", "n1", ports=[8080])
    two["spec"]["containers"].append({
        "name": "client", "image": "busybox",
        "command": ["sh", "-c", "until wget -q -O - http://127.0.0.1:8080/local; do sleep 0.2; done; sleep 3600"]})
    api.create_pod(two)

    def crashed() -> dict | None:
        cs = (_status(cluster, "crash").get("containerStatuses") or [{}])[0]
        return cs if cs.get("restartCount", 0) >= 1 and cs.get("lastState", {}).get("terminated") else None

    cs = wait_for("a restart of the crashing container", crashed, 30)
    assert cs["lastState"]["terminated"]["exitCode"] == 3
    assert _status(cluster, "crash")["phase"] == "Running"
    # The second crash waits in CrashLoopBackOff (10 s) instead of restarting at once.
    wait_for("CrashLoopBackOff", lambda: "CrashLoopBackOff" in str(_status(cluster, "crash")), 30)

    wait_for("the Never pod to succeed", lambda: _status(cluster, "once").get("phase") == "Succeeded", 30)
    once = _status(cluster, "once")["containerStatuses"][0]
    assert once["state"]["terminated"]["exitCode"] == 0 and once["restartCount"] == 0

    wait_for("the unsupported image to fail", lambda: _status(cluster, "bad").get("phase") == "Failed", 30)
    bad = _status(cluster, "bad")
    assert bad["reason"] == "ImageNotSupported"
    assert bad["containerStatuses"][0]["state"]["waiting"]["reason"] == "ImageNotSupported"

    # Logs: from the state dir, and through the API (the node advertises its state dir).
    out = subprocess.run([NETPLANE, "logs", "once", "--state-dir", str(agent.state_dir)], capture_output=True,
                         text=True, timeout=30)
    assert out.returncode == 0 and out.stdout == "done\n"
    out = subprocess.run([NETPLANE, "logs", "crash", "--server", api.url, "--previous"], capture_output=True,
                         text=True, timeout=30)
    assert out.returncode == 0 and out.stdout == "run crash\n"
    out = subprocess.run([NETPLANE, "logs", "two", "--server", api.url], capture_output=True, text=True, timeout=30)
    assert out.returncode == 1 and "a container name must be specified" in out.stderr

    # Containers of one pod share its network namespace and talk over localhost.
    def local_answer() -> str | None:
        r = subprocess.run([NETPLANE, "logs", "two", "-c", "client", "--server", api.url], capture_output=True,
                           text=True, timeout=30)
        return r.stdout if '"path": "/local"' in r.stdout else None

    answer = wait_for("the client container's request over localhost", local_answer, 30)
    assert '"pod": "two"' in answer and '"clientIP": "127.0.0.1"' in answer


def test_sigkill_after_the_grace_period(cluster: Cluster) -> None:
    import time

    assert cluster.api is not None
    cluster.start_agent("n1")
    cluster.wait_ready("n1")
    stubborn = "trap '' TERM; echo up; while true; do sleep 0.1; done"
    cluster.api.create_pod(pod_manifest("stubborn", "n1", image="busybox", command=["sh", "-c", stubborn], grace=2))
    wait_for("the pod to run", lambda: _status(cluster, "stubborn").get("phase") == "Running", 30)
    started = time.monotonic()
    cluster.api.delete_pod("stubborn")
    wait_for("the pod to be gone", lambda: cluster.api.pod("stubborn") is None, 20)  # type: ignore[union-attr]
    took = time.monotonic() - started
    assert 1.5 <= took < 10, took  # waited for the grace period, then killed
    assert "killed after grace period" in cluster.agents["n1"].log()


def test_exit_while_the_agent_is_down_is_reported_after_restart(cluster: Cluster) -> None:
    assert cluster.api is not None
    agent = cluster.start_agent("n1", launcher="ip-netns-exec")
    cluster.wait_ready("n1")
    cluster.api.create_pod(pod_manifest("short", "n1", image="busybox", restart_policy="Never",
                                        command=["sh", "-c", "sleep 1.5; exit 7"]))
    wait_for("the pod to run", lambda: _status(cluster, "short").get("phase") == "Running", 30)
    cluster.stop_agent("n1")
    # The shim outlives the agent and records the exit code on its own.
    exit_file = wait_for("the exit record", lambda: next(agent.state_dir.glob("pods/*/containers/main/0/exit"), None))
    assert exit_file.read_text().strip() == "7"
    cluster.start_agent("n1", launcher="ip-netns-exec")
    wait_for("Failed after restart", lambda: _status(cluster, "short").get("phase") == "Failed", 30)
    term = _status(cluster, "short")["containerStatuses"][0]["state"]["terminated"]
    assert term["exitCode"] == 7 and term["reason"] == "Error"


def _ready(pod: dict | None) -> bool:
    return any(c.get("type") == "Ready" and c.get("status") == "True"
               for c in ((pod or {}).get("status") or {}).get("conditions") or [])


def test_prestop_hooks_run_before_sigterm(cluster: Cluster) -> None:
    """kubelet's order on deletion: preStop (exec in the pod with its env, or sleep), then SIGTERM;
    the pod stays Ready meanwhile, and the whole thing ends well before the grace period."""
    import time

    assert cluster.api is not None
    api = cluster.api
    cluster.start_agent("n1")
    cluster.wait_ready("n1")
    journal = cluster.tmp / "journal"
    trap = f"trap 'echo TERM >> {journal}; exit 0' TERM; echo up; while true; do sleep 0.1; done"
    hooked = pod_manifest("hooked", "n1", image="busybox", command=["sh", "-c", trap], grace=20)
    hooked["spec"]["containers"][0]["lifecycle"] = {"preStop": {"exec": {"command": [
        "sh", "-c", f"echo prestop $POD_NAME >> {journal}; ip -o -4 addr show eth0 >> {journal}; sleep 1"]}}}
    sleepy = pod_manifest("sleepy", "n1", image="busybox", command=["sleep", "3600"], grace=20)
    sleepy["spec"]["containers"][0]["lifecycle"] = {"preStop": {"sleep": {"seconds": 3}}}
    api.create_pod(hooked)
    api.create_pod(sleepy)
    wait_for("both pods to be Ready", lambda: _ready(api.pod("hooked")) and _ready(api.pod("sleepy")), 30)
    pod_ip = api.pod("hooked")["status"]["podIP"]

    started = time.monotonic()
    api.delete_pod("hooked")
    api.delete_pod("sleepy")
    # During the preStop sleep the pod is terminating, yet still Ready (readiness is orthogonal to
    # deletion; the EndpointSlice marks it serving + terminating, not ready).
    wait_for("sleepy's hook to start", lambda: "preStop hook pod=default/sleepy" in cluster.agents["n1"].log(), 10)
    terminating = api.pod("sleepy")
    assert terminating["metadata"].get("deletionTimestamp") and _ready(terminating)
    wait_for("hooked to go", lambda: api.pod("hooked") is None, 15)
    lines = journal.read_text().splitlines()
    assert lines[0] == "prestop hooked", lines  # the hook ran first, with the container's env ...
    assert pod_ip in lines[1], lines  # ... inside the pod's network namespace
    assert lines[2:] == ["TERM"], lines  # and SIGTERM came after it
    wait_for("sleepy to go", lambda: api.pod("sleepy") is None, 15)
    took = time.monotonic() - started
    assert 3.0 <= took < 15, took  # the 3 s sleep, then SIGTERM ended it (no wait for the 20 s grace)
    log = cluster.agents["n1"].log()
    assert "preStop hook" in log and "killed after grace period" not in log
