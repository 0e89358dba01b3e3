"""ipset through its save/restore commands: every change of a sync in one `ipset restore` call.

`ipset restore -exist` reads create/add/del lines on stdin; with -exist an add of
a present member, a del of an absent one and a create of an existing set of the
same type are not errors, so a restore text is idempotent. Runs in the current
network namespace or in a named one (`ip netns exec`).
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

DEFAULT_TIMEOUT = 120.0


class IpsetError(RuntimeError):
    pass


class IpsetKernel(Protocol):
    def save(self) -> str: ...

    def restore(self, text: str) -> None: ...


@dataclass(slots=True)
class SavedSet:
    name: str
    type: str
    members: set[str] = field(default_factory=set)


def normalize_member(entry: str) -> str:
    """One spelling per member: ipset prints a host net without "/32", whatever was added."""
    return ",".join(part[:-3] if part.endswith("/32") else part for part in entry.split(","))


def parse_save(text: str, prefix: str = "") -> dict[str, SavedSet]:
    """The sets (whose names start with `prefix`) and their members, from `ipset save` output."""
    sets: dict[str, SavedSet] = {}
    for line in text.splitlines():
        words = line.split()
        if len(words) < 3 or not words[1].startswith(prefix):
            continue
        if words[0] == "create":
            sets[words[1]] = SavedSet(words[1], words[2])
        elif words[0] == "add" and words[1] in sets:
            sets[words[1]].members.add(normalize_member(words[2]))
    return sets


class Ipset:
    def __init__(self, netns: str | None = None, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.netns = netns
        self.timeout = timeout

    def _run(self, argv: Iterable[str], stdin: str | None = None) -> str:
        cmd = ["ip", "netns", "exec", self.netns, *argv] if self.netns else list(argv)
        try:
            proc = subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=self.timeout)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise IpsetError(f"ipset failed: {e}") from e
        if proc.returncode != 0:
            raise IpsetError(f"{' '.join(cmd[-2:])} exited {proc.returncode}: {proc.stderr.strip()[:2000]}")
        return proc.stdout

    def save(self) -> str:
        return self._run(["ipset", "save"])

    def restore(self, text: str) -> None:
        if text.strip():
            self._run(["ipset", "restore", "-exist"], stdin=text)
