"""Daemons the lab starts inside its namespaces, tracked by PID in a state file.

A PID alone is not proof of ownership (PIDs are reused), so every record keeps
the command line it was started with, and only a process whose /proc cmdline
still matches is ever signalled.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from netplane.kernel.labnet import nsenter_argv


@dataclass(frozen=True, slots=True)
class Daemon:
    name: str  # e.g. "server", "n1/node", "n1/proxy"
    netns: str
    argv: list[str]
    log: str
    pid: int

    def _cmdline(self) -> list[bytes]:
        try:
            raw = Path(f"/proc/{self.pid}/cmdline").read_bytes()
        except OSError:
            return []
        return raw.rstrip(b"\0").split(b"\0")

    def _ends_with_argv(self, cmdline: list[bytes]) -> bool:
        # A console script runs as `python <script> ...`: the interpreter comes first.
        want = [a.encode() for a in self.argv]
        return cmdline[-len(want):] == want

    def cmdline_matches(self) -> bool:
        return self._ends_with_argv(self._cmdline())

    def started(self) -> bool:
        """Running its own program: nsenter's command line also ends with argv, and while nsenter
        execs the program /proc/PID/cmdline reads empty for a moment, which alive() would take for
        an exit (seen in CI: "n3/proxy exited", with an empty log). One read of the command line
        serves both checks, so they see the same side of the exec."""
        cmdline = self._cmdline()
        return bool(cmdline) and os.path.basename(cmdline[0]) != b"nsenter" and self._ends_with_argv(cmdline)

    def alive(self) -> bool:
        return self.cmdline_matches()


class ProcessTable:
    """The lab's daemons, persisted in <state_dir>/daemons.json."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.path = state_dir / "daemons.json"
        self.daemons: dict[str, Daemon] = {}
        if self.path.exists():
            for d in json.loads(self.path.read_text()):
                self.daemons[d["name"]] = Daemon(**d)

    def save(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps([asdict(d) for d in self.daemons.values()], indent=1))
        tmp.replace(self.path)

    def start(self, name: str, netns: str, argv: list[str], env: dict[str, str] | None = None) -> Daemon:
        log_path = self.state_dir / "logs" / (name.replace("/", "-") + ".log")
        log_path.parent.mkdir(parents=True, exist_ok=True)
        full = nsenter_argv(netns, argv)
        with open(log_path, "ab") as logf:
            # A new session: the daemons outlive the `lab up` command that started them.
            proc = subprocess.Popen(full, stdin=subprocess.DEVNULL, stdout=logf, stderr=logf,
                                    start_new_session=True, env={**os.environ, **(env or {}),
                                                                 "PYTHONUNBUFFERED": "1"})
        # nsenter execs the command, so the PID becomes the daemon's and its cmdline the
        # daemon's argv (`ip netns exec` would fork and leave us the wrapper's PID).
        d = Daemon(name, netns, argv, str(log_path), proc.pid)
        self.daemons[name] = d
        self.save()
        return d

    def wait_started(self, d: Daemon, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if d.started():
                return
            try:
                os.waitpid(d.pid, os.WNOHANG)
            except ChildProcessError:
                pass
            if not Path(f"/proc/{d.pid}").exists():
                break
            time.sleep(0.02)
        raise RuntimeError(f"{d.name} did not start; its log {d.log}:\n{tail(d.log)}")

    def stop_all(self, grace: float = 5.0) -> list[str]:
        stopped = []
        live = [d for d in self.daemons.values() if d.alive()]
        for d in live:
            os.kill(d.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(d.alive() for d in live):
            time.sleep(0.05)
        for d in live:
            if d.alive():
                os.kill(d.pid, signal.SIGKILL)
            stopped.append(d.name)
        self.daemons.clear()
        self.save()
        return stopped


def tail(path: str, lines: int = 20) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
