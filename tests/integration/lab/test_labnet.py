"""The lab's namespace helpers against the real kernel: ending the processes in a namespace."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator

import pytest

from netplane.kernel import labnet


@pytest.fixture
def netns() -> Iterator[str]:
    name = f"np-itlab-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True, timeout=10)
    try:
        yield name
    finally:
        labnet.kill_netns_processes(name, grace=0.5)
        labnet.delete_netns(name)


def test_a_zombie_counts_as_ended(netns: str) -> None:
    """A process that exited but is not reaped yet must not hold `lab down` for the whole grace
    period (this machine's PID 1 reaps orphans only every ~2 s, which made lab down ~2 s per pod)."""
    # We are the parent and do not reap until the end, so the SIGTERMed sleep stays a zombie.
    proc = subprocess.Popen(labnet.nsenter_argv(netns, ["sleep", "60"]))
    try:
        deadline = time.monotonic() + 5
        while labnet.netns_pids(netns) != [proc.pid] and time.monotonic() < deadline:
            time.sleep(0.02)
        assert labnet.running(proc.pid)
        started = time.monotonic()
        labnet.kill_netns_processes(netns, grace=5.0)
        took = time.monotonic() - started
        assert not labnet.running(proc.pid)
        assert os.path.exists(f"/proc/{proc.pid}"), "the zombie is still there: the test shows what it means to"
        assert took < 2.0, f"waited {took:.1f}s for a process that had already exited"
    finally:
        proc.kill()
        proc.wait(timeout=10)
    assert not labnet.running(proc.pid)


def test_a_process_ignoring_sigterm_is_killed_after_the_grace(netns: str) -> None:
    # The shell says when its trap is set: a SIGTERM that came before would end it at once.
    script = "trap '' TERM; echo ready; while :; do sleep 0.1; done"
    proc = subprocess.Popen(labnet.nsenter_argv(netns, ["sh", "-c", script]), stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        started = time.monotonic()
        labnet.kill_netns_processes(netns, grace=0.5)
        assert time.monotonic() - started >= 0.5
        assert proc.wait(timeout=5) == -9
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
