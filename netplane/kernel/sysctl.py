"""Per-network-namespace sysctls (net.*), written directly or inside a named netns."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Protocol


class SysctlError(RuntimeError):
    pass


class SysctlKernel(Protocol):
    def write(self, name: str, value: str) -> None: ...

    def read(self, name: str) -> str: ...


def _path(name: str) -> Path:
    if ".." in name or name.startswith("/"):
        raise SysctlError(f"bad sysctl name {name!r}")
    return Path("/proc/sys") / name.replace(".", "/")


class Sysctl:
    """net.* sysctls are per netns: for another netns, run `sysctl` inside it."""

    def __init__(self, netns: str | None = None) -> None:
        self.netns = netns

    def write(self, name: str, value: str) -> None:
        if self.netns is None:
            try:
                _path(name).write_text(f"{value}\n")
            except OSError as e:
                raise SysctlError(f"cannot set {name}={value}: {e}") from e
            return
        _path(name)  # validate the name before handing it to a command
        proc = subprocess.run(["ip", "netns", "exec", self.netns, "sysctl", "-q", "-w", f"{name}={value}"],
                              capture_output=True, text=True, timeout=10)
        if proc.returncode != 0:
            raise SysctlError(f"cannot set {name}={value} in netns {self.netns}: {proc.stderr.strip()}")

    def read(self, name: str) -> str:
        if self.netns is None:
            return _path(name).read_text().strip()
        proc = subprocess.run(["ip", "netns", "exec", self.netns, "sysctl", "-n", name],
                              capture_output=True, text=True, timeout=10)
        if proc.returncode != 0:
            raise SysctlError(f"cannot read {name} in netns {self.netns}: {proc.stderr.strip()}")
        return proc.stdout.strip()
