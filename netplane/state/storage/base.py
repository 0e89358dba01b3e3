"""The storage interface: a revisioned key-value store with a change log.

It is deliberately etcd-shaped (one global revision, per-key create and mod
revisions, compare-and-swap on the mod revision, watch from a revision,
compaction) so that SQLite (embedded default) and etcd fit behind it and the
rest of the server never knows which one it talks to. Values are opaque bytes
(the object's JSON without its resourceVersion, which readers derive from the
mod revision, as kube-apiserver does with etcd).
"""

from __future__ import annotations

import builtins
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Literal, Protocol

EventType = Literal["ADDED", "MODIFIED", "DELETED"]


class StorageError(Exception):
    pass


class KeyExists(StorageError):
    pass


class KeyNotFound(StorageError):
    pass


class RevisionMismatch(StorageError):
    """The key's mod revision is not the one the caller expected (optimistic concurrency)."""


class Compacted(StorageError):
    """The requested revision is older than the oldest kept change."""

    def __init__(self, requested: int, compacted: int) -> None:
        super().__init__(f"revision {requested} is compacted (oldest kept: {compacted + 1})")
        self.requested = requested
        self.compacted = compacted


@dataclass(frozen=True, slots=True)
class Record:
    key: str
    value: bytes
    create_revision: int
    mod_revision: int


@dataclass(frozen=True, slots=True)
class Event:
    type: EventType
    key: str
    # For DELETED: the last value the key had. revision is the event's own revision.
    value: bytes
    revision: int
    prev_value: bytes | None = None


class Storage(Protocol):
    async def revision(self) -> int:
        """The newest revision (0 for an empty store)."""
        ...

    async def get(self, key: str) -> Record | None: ...

    async def list(self, prefix: str, start_after: str = "", limit: int = 0) -> tuple[builtins.list[Record], int]:
        """Records whose key starts with prefix, sorted by key, and the revision they were read at."""
        ...

    async def create(self, key: str, value: bytes) -> int:
        """Store a new key; returns its revision. KeyExists when it is there."""
        ...

    async def update(self, key: str, value: bytes, expected_revision: int | None = None) -> int:
        """Replace a key's value; KeyNotFound / RevisionMismatch. Returns the new revision."""
        ...

    async def delete(self, key: str, expected_revision: int | None = None) -> tuple[int, Record]:
        """Remove a key; returns the deletion's revision and the record removed."""
        ...

    async def settle(self, key: str) -> None:
        """Return once writes to key that are accepted but not yet visible to reads are visible
        (a no-op for backends whose reads see every acknowledged write at once)."""
        ...

    async def events_since(self, revision: int, prefix: str = "") -> builtins.list[Event]:
        """Changes with revision > the given one, oldest first. Compacted when too old."""
        ...

    def watch(self, revision: int) -> AsyncIterator[builtins.list[Event]]:
        """Every change after revision, in batches, oldest first, forever."""
        ...

    async def compact(self, revision: int) -> None:
        """Forget the change log up to and including revision."""
        ...

    async def compacted_revision(self) -> int: ...

    async def close(self) -> None: ...
