"""nftables through `nft -f -`: one transaction per call, all or nothing."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Sequence
from typing import Protocol

DEFAULT_TIMEOUT = 120.0


class NftError(RuntimeError):
    pass


class NftKernel(Protocol):
    def apply(self, text: str) -> None: ...

    def objects(self, family: str, table: str) -> dict[str, set[str]]: ...

    def set_exists(self, family: str, table: str, name: str) -> bool: ...


class Nft:
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
        """Names of the table's chains, maps and sets ({} entries if the table does not exist)."""
        out: dict[str, set[str]] = {"chains": set(), "maps": set(), "sets": set()}
        for kind, key in (("chains", "chain"), ("maps", "map"), ("sets", "set")):
            # -t: terse, without set elements; listing is per family so other tables are filtered here.
            proc = self._run(["nft", "-t", "-j", "list", kind, family], check=False)
            if proc.returncode != 0:
                continue
            for item in json.loads(proc.stdout or "{}").get("nftables", []):
                obj = item.get(key)
                if obj and obj.get("table") == table:
                    out[kind].add(obj["name"])
        return out

    def chain_exists(self, family: str, table: str, chain: str) -> bool:
        return self._run(["nft", "list", "chain", family, table, chain], check=False).returncode == 0

    def set_exists(self, family: str, table: str, name: str) -> bool:
        # -t: without elements. Much cheaper than listing a chain in a large table.
        return self._run(["nft", "-t", "list", "set", family, table, name], check=False).returncode == 0

    def delete_table(self, family: str, table: str) -> None:
        self._run(["nft", "delete", "table", family, table], check=False)

    def list_table(self, family: str, table: str) -> str:
        return self._run(["nft", "list", "table", family, table]).stdout
