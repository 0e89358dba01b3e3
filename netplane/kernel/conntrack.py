"""Deleting conntrack entries with the `conntrack` tool (conntrack-tools)."""

from __future__ import annotations

import subprocess
from typing import Protocol


class ConntrackError(RuntimeError):
    pass


class ConntrackFilterLike(Protocol):
    @property
    def protocol(self) -> str: ...
    @property
    def orig_dst(self) -> str | None: ...
    @property
    def orig_dport(self) -> int | None: ...
    @property
    def dst_nat(self) -> str | None: ...


class ConntrackKernel(Protocol):
    def delete(self, flt: ConntrackFilterLike) -> int: ...


class Conntrack:
    def __init__(self, netns: str | None = None, timeout: float = 10.0) -> None:
        self.netns = netns
        self.timeout = timeout

    def delete(self, flt: ConntrackFilterLike) -> int:
        """Delete the matching entries; returns how many went (0 is not an error)."""
        argv = ["conntrack", "-D", "-p", flt.protocol.lower()]
        if flt.orig_dst:
            argv += ["--orig-dst", flt.orig_dst]
        if flt.orig_dport:
            argv += ["--orig-port-dst", str(flt.orig_dport)]
        if flt.dst_nat:
            argv += ["--dst-nat", flt.dst_nat]
        cmd = ["ip", "netns", "exec", self.netns, *argv] if self.netns else argv
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=self.timeout)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise ConntrackError(f"conntrack failed: {e}") from e
        # "conntrack v1.4.7 (conntrack-tools): N flow entries have been deleted." on stderr;
        # the exit status is 1 when nothing matched, which is fine here.
        for line in proc.stderr.splitlines():
            if "flow entries have been deleted" in line:
                return int(line.split(":")[-1].split()[0])
        if proc.returncode not in (0, 1):
            raise ConntrackError(f"conntrack -D exited {proc.returncode}: {proc.stderr.strip()}")
        return 0
