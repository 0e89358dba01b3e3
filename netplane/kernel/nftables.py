"""nftables: one transaction per call, all or nothing.

Two implementations of one small Protocol:

- `LibNft` calls libnftables in this process (the `pip-nftables` binding of the
  system library). It saves a process start per transaction (`ip netns exec` plus
  `nft` cost ~10-20 ms here), which matters when one endpoint change must reach the
  kernel in well under 100 ms. Large transactions (full syncs) still go to the binary,
  for memory (see LARGE_TRANSACTION). Its context is kept between transactions; nft 1.0.6
  still refetches its cache of the table's chain and set names after each of our own
  commits (the ruleset generation moved), which is why the proxy's nftables layout
  keeps that table small (one chain per service port, see netplane/proxy/nftables.py).
- `Nft` runs the `nft` binary (`nft -f -`): the fallback when the binding is
  missing, and what one-off callers use.

`nft_kernel()` picks the first that works.
"""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol, TypeVar

DEFAULT_TIMEOUT = 120.0
# Transactions larger than this go to the `nft` binary even when the library is loaded: nft's
# parser keeps ~40 kB per rule until the next call and glibc does not hand it back, so one
# full sync of 10k services through the library left the proxy at 630 MB (200 MB otherwise).
# A child process pays ~10 ms to start, nothing next to such a transaction.
LARGE_TRANSACTION = 256 * 1024
_CLONE_NEWNET = 0x40000000

R = TypeVar("R")


class NftError(RuntimeError):
    pass


class NftKernel(Protocol):
    def apply(self, text: str) -> None: ...

    def objects(self, family: str, table: str) -> dict[str, set[str]]: ...

    def set_exists(self, family: str, table: str, name: str) -> bool: ...


def _objects_from_json(outputs: dict[str, str], table: str) -> dict[str, set[str]]:
    """{"chains"|"maps"|"sets": names} of one table, from `nft -t -j list <kind>s <family>` outputs."""
    out: dict[str, set[str]] = {"chains": set(), "maps": set(), "sets": set()}
    for kind, key in (("chains", "chain"), ("maps", "map"), ("sets", "set")):
        text = outputs.get(kind)
        if not text:
            continue
        for item in json.loads(text).get("nftables", []):
            obj = item.get(key)
            if obj and obj.get("table") == table:
                out[kind].add(obj["name"])
    return out


class Nft:
    """The `nft` binary, in the current network namespace or a named one (`ip netns exec`)."""

    def __init__(self, netns: str | None = None, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.netns = netns
        self.timeout = timeout

    def _run(self, argv: Sequence[str], stdin: str | None = None,
             check: bool = True) -> subprocess.CompletedProcess[str]:
        cmd = ["ip", "netns", "exec", self.netns, *argv] if self.netns else list(argv)
        try:
            proc = subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=self.timeout)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise NftError(f"nft failed: {e}") from e
        if check and proc.returncode != 0:
            raise NftError(f"{' '.join(argv[:4])} exited {proc.returncode}: {proc.stderr.strip()[:2000]}")
        return proc

    def apply(self, text: str) -> None:
        """Apply one transaction read from stdin (nft commits a whole file atomically)."""
        if text.strip():
            self._run(["nft", "-f", "-"], stdin=text)

    def objects(self, family: str, table: str) -> dict[str, set[str]]:
        """Names of the table's chains, maps and sets (empty sets if the table does not exist)."""
        outputs: dict[str, str] = {}
        for kind in ("chains", "maps", "sets"):
            # -t: terse, without set elements; listing is per family so other tables are filtered later.
            proc = self._run(["nft", "-t", "-j", "list", kind, family], check=False)
            if proc.returncode == 0:
                outputs[kind] = proc.stdout
        return _objects_from_json(outputs, table)

    def chain_exists(self, family: str, table: str, chain: str) -> bool:
        return self._run(["nft", "list", "chain", family, table, chain], check=False).returncode == 0

    def set_exists(self, family: str, table: str, name: str) -> bool:
        # -t: without elements. Much cheaper than listing a chain in a large table.
        return self._run(["nft", "-t", "list", "set", family, table, name], check=False).returncode == 0

    def delete_table(self, family: str, table: str) -> None:
        self._run(["nft", "delete", "table", family, table], check=False)

    def list_table(self, family: str, table: str) -> str:
        return self._run(["nft", "list", "table", family, table]).stdout


def _enter_netns(netns: str) -> None:
    """setns(2) for the calling thread only (os.setns is Python 3.12+)."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/run/netns/{netns}", os.O_RDONLY | os.O_CLOEXEC)
    try:
        if libc.setns(fd, _CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns into {netns}: {os.strerror(err)}")
    finally:
        os.close(fd)


class LibNft:
    """libnftables in this process: one context, kept for the life of the object.

    With `netns`, every call runs on one dedicated thread that entered that namespace
    when it started and never leaves it or does anything else: the library's netlink
    socket (opened, and reopened if need be, by that thread) then always talks to
    that namespace, while the rest of the process stays where it is. Without `netns`
    calls run on the caller's thread, one at a time (a context is not thread-safe).
    ctypes releases the GIL during the call, so a long transaction does not stall the
    daemon's event loop.
    """

    def __init__(self, netns: str | None = None) -> None:
        import nftables  # pip-nftables; ImportError -> use Nft

        self.netns = netns
        self._cli = Nft(netns)
        self._lock = threading.Lock()
        self._executor: ThreadPoolExecutor | None = None
        if netns is not None:
            if not os.path.exists(f"/run/netns/{netns}"):
                raise NftError(f"no network namespace {netns!r}")
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"nft-{netns}",
                                                initializer=_enter_netns, initargs=(netns,))
        try:
            self._nft: Any = self._call(nftables.Nftables)
        except Exception:
            self.close()
            raise

    def _call(self, fn: Callable[[], R]) -> R:
        if self._executor is None:
            with self._lock:
                return fn()
        try:
            return self._executor.submit(fn).result()
        except RuntimeError as e:  # a broken pool (setns failed) or one already shut down
            raise NftError(f"libnftables in netns {self.netns!r}: {e}") from e

    def _cmd(self, text: str, *, json_out: bool = False, terse: bool = False) -> tuple[int, str, str]:
        def run() -> tuple[int, str, str]:
            self._nft.set_json_output(json_out)
            self._nft.set_terse_output(terse)
            rc, out, err = self._nft.cmd(text)
            return int(rc), str(out), str(err)
        return self._call(run)

    def apply(self, text: str) -> None:
        if not text.strip():
            return
        if len(text) > LARGE_TRANSACTION:
            self._cli.apply(text)
            return
        rc, _, err = self._cmd(text)
        if rc != 0:
            raise NftError(f"nft transaction failed: {err.strip()[:2000]}")

    def objects(self, family: str, table: str) -> dict[str, set[str]]:
        outputs: dict[str, str] = {}
        for kind in ("chains", "maps", "sets"):
            rc, out, _ = self._cmd(f"list {kind} {family}", json_out=True, terse=True)
            if rc == 0:
                outputs[kind] = out
        return _objects_from_json(outputs, table)

    def set_exists(self, family: str, table: str, name: str) -> bool:
        return self._cmd(f"list set {family} {table} {name}", terse=True)[0] == 0

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    def __enter__(self) -> LibNft:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def nft_kernel(netns: str | None = None, prefer_library: bool = True) -> LibNft | Nft:
    """The in-process library when its binding is installed, else the `nft` binary."""
    if prefer_library:
        try:
            return LibNft(netns)
        except (ImportError, OSError):
            pass
    return Nft(netns)
