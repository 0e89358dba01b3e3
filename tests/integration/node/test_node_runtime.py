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
