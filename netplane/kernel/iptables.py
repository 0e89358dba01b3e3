"""iptables through its restore/save tools: whole tables in one atomic call (rule 2 of the house).

`iptables-restore --noflush` reads the table text on stdin and commits each table
atomically; with --noflush it leaves chains it is not told about alone, so
other software's rules (and ours, between partial syncs) stay. The jumps from
built-in chains into ours are inserted in the same restore text when an
iptables-save listing shows them missing (`iptables -C` per rule would re-read
the whole table each time in iptables-nft: seconds at 10k services).

Runs in the current network namespace, or in a named one through `ip netns exec`.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence
from typing import Protocol

DEFAULT_TIMEOUT = 120.0  # seconds; a 100k-rule restore takes a few seconds here


class IptablesError(RuntimeError):
    pass


class JumpRule(Protocol):
    @property
    def table(self) -> str: ...
    @property
    def chain(self) -> str: ...
    @property
    def rule(self) -> tuple[str, ...]: ...


class IptablesKernel(Protocol):
    """What the proxy needs from iptables; the real one is `Iptables`, tests use fakes."""

    def restore(self, text: str) -> None: ...

    def save(self, table: str) -> str: ...

    def chain_exists(self, table: str, chain: str) -> bool: ...


def in_netns(argv: Sequence[str], netns: str | None) -> list[str]:
    return ["ip", "netns", "exec", netns, *argv] if netns else list(argv)


class Iptables:
    """The real thing. `backend` picks the binaries: "nft" (Debian's default iptables) or "legacy"."""

    def __init__(self, netns: str | None = None, backend: str = "nft", timeout: float = DEFAULT_TIMEOUT) -> None:
        if backend not in ("nft", "legacy"):
            raise ValueError(f"unknown iptables backend {backend!r}")
        self.netns = netns
        self.timeout = timeout
        suffix = "-legacy" if backend == "legacy" else "-nft"
        self._iptables = "iptables" + suffix
        self._restore = "iptables" + suffix + "-restore"
        self._save = "iptables" + suffix + "-save"

    def _run(self, argv: Sequence[str], stdin: str | None = None,
             check: bool = True) -> subprocess.CompletedProcess[str]:
        cmd = in_netns(argv, self.netns)
        try:
            proc = subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=self.timeout,
                                  env=os.environ.copy())
        except (OSError, subprocess.TimeoutExpired) as e:
            raise IptablesError(f"{argv[0]} failed: {e}") from e
        if check and proc.returncode != 0:
            raise IptablesError(f"{' '.join(argv[:3])} exited {proc.returncode}: {proc.stderr.strip()[:2000]}")
        return proc

    def restore(self, text: str) -> None:
        # -w: wait for the xtables lock (legacy) instead of failing; XTABLES_LOCKFILE is honoured.
        self._run([self._restore, "-w", "5", "--noflush"], stdin=text)

    def ensure_jumps(self, jumps: Sequence[JumpRule]) -> None:
        # Inserting the missing ones at position 1 in reverse order leaves them in list order.
        for jump in reversed(list(jumps)):
            base = [self._iptables, "-w", "5", "-t", jump.table]
            if self._run([*base, "-C", jump.chain, *jump.rule], check=False).returncode != 0:
                self._run([*base, "-I", jump.chain, "1", *jump.rule])

    def remove_jumps(self, jumps: Sequence[JumpRule]) -> None:
        for jump in jumps:
            base = [self._iptables, "-w", "5", "-t", jump.table]
            while self._run([*base, "-D", jump.chain, *jump.rule], check=False).returncode == 0:
                pass

    def chain_exists(self, table: str, chain: str) -> bool:
        return self._run([self._iptables, "-w", "5", "-t", table, "-S", chain], check=False).returncode == 0

    def save(self, table: str) -> str:
        return self._run([self._save, "-t", table]).stdout
