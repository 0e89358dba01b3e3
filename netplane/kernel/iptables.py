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

DEFAULT_TIMEOUT = 300.0  # seconds; a 300k-rule restore takes 10-30 s here with iptables-nft
# Above this many chain declarations in one table, an iptables-nft restore asks for the whole
# table's cache at once (see _whole_table_cache): below it, fetching the named chains is cheaper.
WHOLE_CACHE_CHAINS = 2000


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


def _whole_table_cache(text: str) -> tuple[str, str]:
    """Make iptables-nft-restore fetch a table's chains in one dump when the text names many.

    iptables-nft 1.8.x (nft-cache.c) records every chain a restore line names, and every
    jump target, in a sorted linked list, to fetch only those chains: a linear insert per
    line, so a restore of C chains and R rules costs C x R string compares (27 s for 1k
    services x 10 endpoints, hours at 10k). A command without a chain switches that off
    ("all chains"); `-S` is the read-only one (its listing is discarded), so it goes first
    in each table that declares many chains. Legacy iptables has no such cache.

    A listing also makes iptables-nft treat the table's built-in chains as present, so
    inserting into one that does not exist yet (a fresh network namespace) fails. Those
    inserts (`-I`: the jumps from built-in chains into ours) are returned as a second,
    small text, applied right after: until then our chains exist but nothing jumps to them,
    which is the state before this restore too (the jumps are only ever inserted when missing).
    """
    main: list[str] = []
    after: list[str] = []
    section: list[str] = []
    for line in text.split("\n"):
        if line.startswith("*"):
            section = [line]
            continue
        if not section:
            main.append(line)
            continue
        section.append(line)
        if line != "COMMIT":
            continue
        if sum(1 for x in section if x.startswith(":")) > WHOLE_CACHE_CHAINS:
            inserts = [x for x in section if x.startswith("-I ")]
            main.extend([section[0], "-S", *(x for x in section[1:] if not x.startswith("-I "))])
            if inserts:
                after.extend([section[0], *inserts, "COMMIT"])
        else:
            main.extend(section)
        section = []
    return "\n".join(main), ("\n".join(after) + "\n" if after else "")


def in_netns(argv: Sequence[str], netns: str | None) -> list[str]:
    return ["ip", "netns", "exec", netns, *argv] if netns else list(argv)


class Iptables:
    """The real thing. `backend` picks the binaries: "nft" (Debian's default iptables) or "legacy"."""

    def __init__(self, netns: str | None = None, backend: str = "nft", timeout: float = DEFAULT_TIMEOUT) -> None:
        if backend not in ("nft", "legacy"):
            raise ValueError(f"unknown iptables backend {backend!r}")
        self.netns = netns
        self.timeout = timeout
        self.backend = backend
        suffix = "-legacy" if backend == "legacy" else "-nft"
        self._iptables = "iptables" + suffix
        self._restore = "iptables" + suffix + "-restore"
        self._save = "iptables" + suffix + "-save"

    def _run(self, argv: Sequence[str], stdin: str | None = None, check: bool = True,
             discard_stdout: bool = False) -> subprocess.CompletedProcess[str]:
        cmd = in_netns(argv, self.netns)
        try:
            proc = subprocess.run(cmd, input=stdin, stdout=subprocess.DEVNULL if discard_stdout else subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True, timeout=self.timeout, env=os.environ.copy())
        except (OSError, subprocess.TimeoutExpired) as e:
            raise IptablesError(f"{argv[0]} failed: {e}") from e
        if check and proc.returncode != 0:
            raise IptablesError(f"{' '.join(argv[:3])} exited {proc.returncode}: {proc.stderr.strip()[:2000]}")
        return proc

    def restore(self, text: str) -> None:
        # -w: wait for the xtables lock (legacy) instead of failing; XTABLES_LOCKFILE is honoured.
        after = ""
        if self.backend == "nft":
            text, after = _whole_table_cache(text)
        self._run([self._restore, "-w", "5", "--noflush"], stdin=text, discard_stdout=True)
        if after:
            self._run([self._restore, "-w", "5", "--noflush"], stdin=after)

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
