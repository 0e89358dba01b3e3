"""SQLite storage: one file, WAL, every write durable before it is acknowledged.

Tables: `objects` (current value per key with create/mod revisions), `events`
(the change log, one row per revision, kept until compaction) and `meta`
(the compacted revision). A write is one transaction that appends to the log
and updates the object, committed with synchronous=FULL, so an acknowledged
write survives kill -9 and power loss, and watchers can resume from any kept
revision after a restart.

SQLite calls are synchronous and short; the server is a single asyncio
process, so they run inline: that also makes each write atomic with respect to
the allocators that run just before it.
"""

from __future__ import annotations

import asyncio
import builtins
import os
import sqlite3
from collections.abc import AsyncIterator

from netplane.state.storage.base import (
    Compacted,
    Event,
    EventType,
    KeyExists,
    KeyNotFound,
    Record,
    RevisionMismatch,
)

SCHEMA = """
CREATE TABLE IF NOT EXISTS objects (
    key TEXT PRIMARY KEY,
    value BLOB NOT NULL,
    create_rev INTEGER NOT NULL,
    mod_rev INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS events (
    rev INTEGER PRIMARY KEY,
    type TEXT NOT NULL,
    key TEXT NOT NULL,
    value BLOB NOT NULL,
    prev_value BLOB
);
CREATE TABLE IF NOT EXISTS meta (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
"""


def _prefix_end(prefix: str) -> str:
    """The smallest string greater than every string that starts with prefix."""
    return prefix + "\U0010ffff"


class SQLiteStorage:
    def __init__(self, path: str) -> None:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        # FULL: the WAL is fsynced at every commit, so a 2xx means on disk.
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(SCHEMA)
        self._rev = self._load_revision()
        self._changed = asyncio.Condition()
        self._closed = False

    def _load_revision(self) -> int:
        row = self._db.execute("SELECT MAX(rev) FROM events").fetchone()
        from_log = row[0] or 0
        row = self._db.execute("SELECT value FROM meta WHERE name='revision'").fetchone()
        from_meta = row[0] if row else 0
        return max(from_log, from_meta)

    # -- reads --------------------------------------------------------------

    async def revision(self) -> int:
        return self._rev

    async def get(self, key: str) -> Record | None:
        row = self._db.execute(
            "SELECT value, create_rev, mod_rev FROM objects WHERE key=?", (key,)
        ).fetchone()
        return Record(key, row[0], row[1], row[2]) if row else None

    async def list(self, prefix: str, start_after: str = "", limit: int = 0) -> tuple[builtins.list[Record], int]:
        lower = max(prefix, start_after)
        op = ">" if start_after and start_after >= prefix else ">="
        sql = f"SELECT key, value, create_rev, mod_rev FROM objects WHERE key {op} ? AND key < ? ORDER BY key"
        args: tuple[object, ...] = (lower, _prefix_end(prefix))
        if limit > 0:
            sql += " LIMIT ?"
            args += (limit,)
        rows = self._db.execute(sql, args).fetchall()
        return [Record(r[0], r[1], r[2], r[3]) for r in rows], self._rev

    async def events_since(self, revision: int, prefix: str = "") -> builtins.list[Event]:
        compacted = await self.compacted_revision()
        if revision < compacted:
            raise Compacted(revision, compacted)
        if prefix:
            rows = self._db.execute(
                "SELECT rev, type, key, value, prev_value FROM events WHERE rev > ? AND key >= ? AND key < ?"
                " ORDER BY rev",
                (revision, prefix, _prefix_end(prefix)),
            ).fetchall()
        else:
            rows = self._db.execute(
                "SELECT rev, type, key, value, prev_value FROM events WHERE rev > ? ORDER BY rev", (revision,)
            ).fetchall()
        return [Event(r[1], r[2], r[3], r[0], r[4]) for r in rows]

    async def compacted_revision(self) -> int:
        row = self._db.execute("SELECT value FROM meta WHERE name='compacted'").fetchone()
        return int(row[0]) if row else 0

    # -- writes -------------------------------------------------------------

    def _commit(self, etype: EventType, key: str, value: bytes, prev: bytes | None,
                statement: str) -> int:
        """Apply one object change and its log entry in one durable transaction.

        `statement` may use the named parameters :key, :value and :rev.
        """
        rev = self._rev + 1
        params = {"key": key, "value": value, "rev": rev}
        cur = self._db.cursor()
        cur.execute("BEGIN IMMEDIATE")
        try:
            cur.execute(statement, params)
            cur.execute(
                "INSERT INTO events (rev, type, key, value, prev_value) VALUES (?, ?, ?, ?, ?)",
                (rev, etype, key, value, prev),
            )
            cur.execute("INSERT OR REPLACE INTO meta (name, value) VALUES ('revision', ?)", (rev,))
            cur.execute("COMMIT")
        except BaseException:
            cur.execute("ROLLBACK")
            raise
        self._rev = rev
        self._notify()
        return rev

    def _notify(self) -> None:
        async def wake() -> None:
            async with self._changed:
                self._changed.notify_all()

        try:
            asyncio.get_running_loop().create_task(wake())
        except RuntimeError:  # no running loop: nobody can be watching
            pass

    async def create(self, key: str, value: bytes) -> int:
        if await self.get(key) is not None:
            raise KeyExists(key)
        return self._commit(
            "ADDED", key, value, None,
            "INSERT INTO objects (key, value, create_rev, mod_rev) VALUES (:key, :value, :rev, :rev)",
        )

    async def update(self, key: str, value: bytes, expected_revision: int | None = None) -> int:
        old = await self._expect(key, expected_revision)
        return self._commit(
            "MODIFIED", key, value, old.value, "UPDATE objects SET value=:value, mod_rev=:rev WHERE key=:key"
        )

    async def delete(self, key: str, expected_revision: int | None = None) -> tuple[int, Record]:
        old = await self._expect(key, expected_revision)
        rev = self._commit("DELETED", key, old.value, old.value, "DELETE FROM objects WHERE key=:key")
        return rev, old

    async def _expect(self, key: str, expected_revision: int | None) -> Record:
        old = await self.get(key)
        if old is None:
            raise KeyNotFound(key)
        if expected_revision is not None and old.mod_revision != expected_revision:
            raise RevisionMismatch(key)
        return old

    async def compact(self, revision: int) -> None:
        revision = min(revision, self._rev)
        if revision <= await self.compacted_revision():
            return
        cur = self._db.cursor()
        cur.execute("BEGIN IMMEDIATE")
        try:
            cur.execute("DELETE FROM events WHERE rev <= ?", (revision,))
            cur.execute("INSERT OR REPLACE INTO meta (name, value) VALUES ('compacted', ?)", (revision,))
            cur.execute("COMMIT")
        except BaseException:
            cur.execute("ROLLBACK")
            raise

    async def watch(self, revision: int) -> AsyncIterator[builtins.list[Event]]:
        seen = revision
        while not self._closed:
            batch = await self.events_since(seen)
            if batch:
                seen = batch[-1].revision
                yield batch
                continue
            async with self._changed:
                if self._rev == seen and not self._closed:
                    await self._changed.wait()

    async def close(self) -> None:
        self._closed = True
        async with self._changed:
            self._changed.notify_all()
        self._db.close()
