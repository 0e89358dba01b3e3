"""Kernel operations the lab needs: build a topology from an `ip -batch`, find and remove
namespaces by prefix, and list the processes inside a namespace."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

NETNS_DIR = Path("/run/netns")
ETC_NETNS = Path("/etc/netns")


class LabNetError(RuntimeError):
    pass


def run_ip_batch(lines: list[str], netns: str | None = None) -> None:
    """Run `ip -batch` in one process (inside netns if given); stop at the first failing line."""
    argv = ["ip", *(["-n", netns] if netns else []), "-batch", "-"]
    proc = subprocess.run(argv, input="\n".join(lines) + "\n", capture_output=True, text=True, timeout=60,
                          check=False)
    if proc.returncode != 0:
        where = f" in {netns}" if netns else ""
        raise LabNetError(f"ip -batch failed{where}: {proc.stderr.strip()}")


def list_netns(prefix: str) -> list[str]:
    try:
        names = os.listdir(NETNS_DIR)
    except FileNotFoundError:
        return []
    return sorted(n for n in names if n.startswith(prefix))


def netns_exists(name: str) -> bool:
    return (NETNS_DIR / name).exists()


def netns_pids(name: str) -> list[int]:
    proc = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True, timeout=10, check=False)
    if proc.returncode != 0:
        return []
    return [int(p) for p in proc.stdout.split() if p.isdigit()]


def running(pid: int) -> bool:
    """Alive and not a zombie. An exited process waiting for its parent to reap it is done; an
    orphan's reaper (PID 1) can take seconds to get to it (~2 s on some container inits)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return False
    return data[data.rfind(b")") + 2:][:1] != b"Z"


def kill_netns_processes(name: str, grace: float = 3.0) -> None:
    """End every process inside a namespace the lab made (SIGTERM, then SIGKILL)."""
    pids = netns_pids(name)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace
    while pids and time.monotonic() < deadline:
        pids = [p for p in pids if running(p)]
        time.sleep(0.05)
    for pid in netns_pids(name):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def delete_netns(name: str) -> None:
    """Remove a namespace the lab made, with its per-namespace /etc/netns files."""
    subprocess.run(["ip", "netns", "delete", name], capture_output=True, timeout=30, check=False)
    etc = ETC_NETNS / name
    if etc.is_dir():
        for f in etc.iterdir():
            f.unlink(missing_ok=True)
        etc.rmdir()


def set_sysctl(netns: str, key: str, value: str) -> None:
    subprocess.run(["ip", "netns", "exec", netns, "sysctl", "-qw", f"{key}={value}"], check=True,
                   capture_output=True, timeout=10)


def netns_exec_argv(netns: str, argv: list[str]) -> list[str]:
    """Run argv in a namespace as `ip netns exec` does (with /etc/netns/<ns> bind mounts, for pods'
    resolv.conf). It forks here, so the PID is not the command's: daemons use nsenter_argv."""
    return ["ip", "netns", "exec", netns, *argv]


def nsenter_argv(netns: str, argv: list[str]) -> list[str]:
    """Run argv in a namespace by exec (nsenter switches and execs): the PID is the command's."""
    return ["nsenter", f"--net={NETNS_DIR / netns}", "--", *argv]
