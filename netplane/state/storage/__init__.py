"""Storage backends for the state server, behind one narrow interface (see base.py)."""

from netplane.state.storage.base import (
    Compacted,
    Event,
    KeyExists,
    KeyNotFound,
    Record,
    RevisionMismatch,
    Storage,
    StorageError,
)

__all__ = [
    "Compacted",
    "Event",
    "KeyExists",
    "KeyNotFound",
    "Record",
    "RevisionMismatch",
    "Storage",
    "StorageError",
]
