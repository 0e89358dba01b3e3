"""SQLite storage: one file, WAL, every write durable before it is acknowledged.

Tables: `objects` (current value per key with create/mod revisions), `events`
(the change log, one row per revision, kept until compaction) and `meta`
(the newest and the compacted revision). An acknowledged write has been
committed with synchronous=FULL, so it survives kill -9 and power loss, and
watchers can resume from any kept revision after a restart.

Checkpoints (copying the WAL into the database file) run on a connection and thread of their
own, at most every CHECKPOINT_INTERVAL while writes come in, never inside a commit: SQLite's
automatic checkpoint runs in the commit that crosses 1,000 pages and stalled it (and every write
batched behind it) for up to ~90 ms here. The WAL is fsynced at every commit either way, so
durability does not depend on checkpoints.

Group commit (as etcd batches its raft entries): a write is checked and given
its revision at once on the event loop, against the committed state plus the
writes staged before it, then waits while a single flusher commits everything
staged so far in one transaction on a thread of its own. Concurrent writers
thus share an fsync, and the loop keeps serving while the disk works. Reads
see committed data only: what a reader gets has been acknowledged or is about
to be, never something that could still be lost.

Point reads come from memory: the committed value of every key is kept in a dict, loaded at
open and updated after each commit (as kube-apiserver's watch cache keeps every object; here
the raw stored bytes, ~1 KB per object). A read through SQLite cost a read transaction on a
connection whose page cache the last commit had just invalidated: ~16 preads, 4 fcntl locks
and 9 getpid calls per get, the largest share of a write's system time at one writer.
Lists and the change log are still read from the file.
"""

from __future__ import annotations

import asyncio
import builtins
import collections
import contextlib
import itertools
import logging
import os
import sqlite3
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from netplane.state.storage.base import (
    Compacted,
    Event,
    EventType,
    KeyExists,
    KeyNotFound,
    Record,
    RevisionMismatch,
    StorageError,
)

log = logging.getLogger(__name__)

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

# Largest batch one transaction takes; more waits for the next.
MAX_BATCH = 512
# Seconds between background checkpoints while writes come in.
CHECKPOINT_INTERVAL = 0.5
# WAL size past which a checkpoint is finished between two commits, so SQLite can rewind the WAL.
WAL_LIMIT = 64 << 20
# Newest committed events kept in memory, so watchers that keep up never read them back.
RECENT_EVENTS = 4096
# Seconds a list waits for the loop to take in a commit it already saw in the file.
CATCH_UP_TIMEOUT = 5.0


def _prefix_end(prefix: str) -> str:
    """The smallest string greater than every string that starts with prefix."""
    return prefix + "\U0010ffff"


@dataclass(eq=False, slots=True)
class _Op:
    type: EventType
    key: str
    value: bytes
    prev: bytes | None
    rev: int
    record: Record | None  # the key's state after this op (None: deleted)
    done: asyncio.Future[int] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class SQLiteStorage:
    def __init__(self, path: str) -> None:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        # Two connections: reads on the event loop, the commits on the flusher's thread (WAL
        # lets readers go on while a transaction commits).
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(SCHEMA)
        self._wdb = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        # FULL: the WAL is fsynced at every commit, so a 2xx means on disk.
        self._wdb.execute("PRAGMA synchronous=FULL")
        # Checkpoints are ours (see the module's doc), on a third connection.
        self._cdb = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._cdb.execute("PRAGMA synchronous=FULL")
        for db in (self._db, self._wdb, self._cdb):
            db.execute("PRAGMA wal_autocheckpoint=0")
            db.execute(f"PRAGMA journal_size_limit={WAL_LIMIT}")  # what a rewound WAL is cut back to
        self._wal_path = os.path.abspath(path) + "-wal"
        self._checkpointer: asyncio.Task[None] | None = None
        self._checkpoint_lock = threading.Lock()  # the last one, at close, may meet a running one
        self._recent: collections.deque[Event] = collections.deque(maxlen=RECENT_EVENTS)
        self._compacted = 0  # what compact() last recorded (the log's own record is authoritative)
        self._committed = self._load_revision()
        self._objects: dict[str, Record] = {
            r[0]: Record(r[0], r[1], r[2], r[3])
            for r in self._db.execute("SELECT key, value, create_rev, mod_rev FROM objects")
        }
        self._next = self._committed
        self._staged: dict[str, _Op] = {}  # newest staged op per key, until committed
        self._pending: list[_Op] = []
        self._flusher: asyncio.Task[None] | None = None
        self._write_lock = asyncio.Lock()
        self._changed = asyncio.Condition()
        self._closed = False

    def _load_revision(self) -> int:
        row = self._db.execute("SELECT MAX(rev) FROM events").fetchone()
        from_log = row[0] or 0
        row = self._db.execute("SELECT value FROM meta WHERE name='revision'").fetchone()
        from_meta = row[0] if row else 0
        return max(from_log, from_meta)

    # -- reads (committed state) ------------------------------------------------------

    async def revision(self) -> int:
        return self._committed

    async def get(self, key: str) -> Record | None:
        return self._objects.get(key)

    async def list(self, prefix: str, start_after: str = "", limit: int = 0) -> tuple[builtins.list[Record], int]:
        lower = max(prefix, start_after)
        op = ">" if start_after and start_after >= prefix else ">="
        sql = f"SELECT key, value, create_rev, mod_rev FROM objects WHERE key {op} ? AND key < ? ORDER BY key"
        args: tuple[object, ...] = (lower, _prefix_end(prefix))
        if limit > 0:
            sql += " LIMIT ?"
            args += (limit,)
        # One read transaction: the revision and the rows come from the same snapshot, even while
        # the flusher commits, so a watch started at this revision neither misses nor repeats.
        cur = self._db.cursor()
        cur.execute("BEGIN")
        try:
            row = cur.execute("SELECT value FROM meta WHERE name='revision'").fetchone()
            rev = int(row[0]) if row else 0
            rows = cur.execute(sql, args).fetchall()
        finally:
            cur.execute("COMMIT")
        records = [Record(r[0], r[1], r[2], r[3]) for r in rows]
        # The file may hold a commit the loop has not taken in yet (the flusher's thread finished it a
        # moment ago): wait for it, so that a get after this list never shows an older object. Bounded:
        # should the loop never take it in (a commit reported failed that reached the disk all the
        # same), the list is still answered.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(CATCH_UP_TIMEOUT):
                async with self._changed:
                    await self._changed.wait_for(lambda: rev <= self._committed or self._closed)
        return records, rev

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

    # -- writes -----------------------------------------------------------------------

    def _current(self, key: str) -> Record | None:
        """The key's state including staged writes (what the next write must be checked against)."""
        op = self._staged.get(key)
        if op is not None:
            return op.record
        return self._objects.get(key)

    def _expect(self, key: str, expected_revision: int | None) -> Record:
        old = self._current(key)
        if old is None:
            raise KeyNotFound(key)
        if expected_revision is not None and old.mod_revision != expected_revision:
            raise RevisionMismatch(key)
        return old

    async def _stage(self, etype: EventType, key: str, value: bytes, prev: bytes | None,
                     create_rev: int | None) -> int:
        if self._closed:
            raise StorageError("storage is closed")
        self._next += 1
        rev = self._next
        record = None if etype == "DELETED" else Record(key, value, create_rev or rev, rev)
        op = _Op(etype, key, value, prev, rev, record)
        self._staged[key] = op
        self._pending.append(op)
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.get_running_loop().create_task(self._flush(), name="sqlite-flush")
        return await asyncio.shield(op.done)

    async def settle(self, key: str) -> None:
        """Wait until writes staged for key have committed, so a read sees what a conditional write
        will be checked against (a read-modify-write retried before that would only conflict again)."""
        op = self._staged.get(key)
        if op is not None:
            with contextlib.suppress(StorageError):
                await asyncio.shield(op.done)

    async def create(self, key: str, value: bytes) -> int:
        if self._current(key) is not None:
            raise KeyExists(key)
        return await self._stage("ADDED", key, value, None, None)

    async def update(self, key: str, value: bytes, expected_revision: int | None = None) -> int:
        old = self._expect(key, expected_revision)
        return await self._stage("MODIFIED", key, value, old.value, old.create_revision)

    async def delete(self, key: str, expected_revision: int | None = None) -> tuple[int, Record]:
        old = self._expect(key, expected_revision)
        rev = await self._stage("DELETED", key, old.value, old.value, None)
        return rev, old

    async def _flush(self) -> None:
        while self._pending:
            batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
            async with self._write_lock:
                try:
                    await asyncio.to_thread(self._write_batch, batch)
                except BaseException as e:
                    self._fail(batch, e)
                    if isinstance(e, asyncio.CancelledError):
                        raise
                    continue
            self._committed = batch[-1].rev
            objects = self._objects
            for op in batch:
                if op.record is None:
                    objects.pop(op.key, None)
                else:
                    objects[op.key] = op.record
            self._recent.extend(Event(op.type, op.key, op.value, op.rev, op.prev) for op in batch)
            if self._checkpointer is None or self._checkpointer.done():
                self._checkpointer = asyncio.get_running_loop().create_task(self._checkpoint_soon(),
                                                                            name="sqlite-checkpoint")
            for op in batch:
                if self._staged.get(op.key) is op:
                    del self._staged[op.key]
                if not op.done.done():
                    op.done.set_result(op.rev)
            async with self._changed:
                self._changed.notify_all()

    async def _checkpoint_soon(self) -> None:
        await asyncio.sleep(CHECKPOINT_INTERVAL)
        if self._closed:
            return
        await asyncio.to_thread(self._checkpoint, "PASSIVE")
        if self._closed or self._wal_size() < WAL_LIMIT:
            return
        # SQLite rewinds the WAL only once a checkpoint has copied all of it, which commits racing a
        # background checkpoint never let happen under a steady write load: the WAL would grow without
        # bound. So, once it is large, the copy is finished between two commits; the stall is only what
        # came in since the background copy (a few frames and one fsync).
        async with self._write_lock:
            if not self._closed:
                await asyncio.to_thread(self._checkpoint, "PASSIVE")

    def _wal_size(self) -> int:
        try:
            return os.path.getsize(self._wal_path)
        except OSError:
            return 0

    def _checkpoint(self, mode: str) -> None:
        # PASSIVE copies what no reader still needs, without waiting for anyone; the next
        # checkpoint takes the rest. A failure here loses nothing (the WAL keeps it all).
        try:
            with self._checkpoint_lock:
                self._cdb.execute(f"PRAGMA wal_checkpoint({mode})").fetchone()
        except sqlite3.Error as e:
            log.warning("sqlite checkpoint failed mode=%s: %s", mode, e)

    def _fail(self, batch: builtins.list[_Op], error: BaseException) -> None:
        """A commit failed: nothing in it (nor anything staged after it, which was checked
        against it) is durable, so all of it fails and the staged view is dropped."""
        failed = batch + self._pending
        self._pending = []
        self._staged.clear()
        self._next = self._committed
        for op in failed:
            if not op.done.done():
                op.done.set_exception(StorageError(f"commit failed: {error}"))

    def _write_batch(self, batch: builtins.list[_Op]) -> None:
        cur = self._wdb.cursor()
        cur.execute("BEGIN IMMEDIATE")
        try:
            for op in batch:
                if op.type == "DELETED":
                    cur.execute("DELETE FROM objects WHERE key=?", (op.key,))
                elif op.type == "ADDED":
                    cur.execute("INSERT INTO objects (key, value, create_rev, mod_rev) VALUES (?, ?, ?, ?)",
                                (op.key, op.value, op.rev, op.rev))
                else:
                    cur.execute("UPDATE objects SET value=?, mod_rev=? WHERE key=?", (op.value, op.rev, op.key))
            cur.executemany(
                "INSERT INTO events (rev, type, key, value, prev_value) VALUES (?, ?, ?, ?, ?)",
                [(op.rev, op.type, op.key, op.value, op.prev) for op in batch],
            )
            cur.execute("INSERT OR REPLACE INTO meta (name, value) VALUES ('revision', ?)", (batch[-1].rev,))
            cur.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                cur.execute("ROLLBACK")
            raise

    async def compact(self, revision: int) -> None:
        revision = min(revision, self._committed)
        if revision <= await self.compacted_revision():
            return
        async with self._write_lock:
            await asyncio.to_thread(self._compact, revision)
        self._compacted = max(self._compacted, revision)

    def _compact(self, revision: int) -> None:
        cur = self._wdb.cursor()
        cur.execute("BEGIN IMMEDIATE")
        try:
            cur.execute("DELETE FROM events WHERE rev <= ?", (revision,))
            cur.execute("INSERT OR REPLACE INTO meta (name, value) VALUES ('compacted', ?)", (revision,))
            cur.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                cur.execute("ROLLBACK")
            raise

    def _recent_since(self, revision: int) -> builtins.list[Event] | None:
        """The committed events after revision from memory; None when memory does not reach back
        that far. Revisions in memory are consecutive: each commit appends the next ones."""
        recent = self._recent
        if not recent or recent[0].revision > revision + 1 or revision < self._compacted:
            return None  # the log answers (or says Compacted)
        wanted = recent[-1].revision - revision
        if wanted <= 0:
            return []
        # From the right end: a watcher that keeps up wants the last few, and a deque walks from an end.
        out = list(itertools.islice(reversed(recent), wanted))
        out.reverse()
        return out

    async def watch(self, revision: int) -> AsyncIterator[builtins.list[Event]]:
        seen = revision
        while not self._closed:
            batch = self._recent_since(seen)
            if batch is None:
                batch = [e for e in await self.events_since(seen) if e.revision <= self._committed]
            if batch:
                seen = batch[-1].revision
                yield batch
                continue
            async with self._changed:
                if self._committed <= seen and not self._closed:
                    await self._changed.wait()

    async def close(self) -> None:
        if self._flusher is not None and not self._flusher.done():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(self._flusher), 10)
        self._closed = True
        if self._checkpointer is not None and not self._checkpointer.done():
            self._checkpointer.cancel()
            with contextlib.suppress(BaseException):
                await self._checkpointer
        async with self._changed:
            self._changed.notify_all()
        # Leave a short WAL behind (a clean shutdown then opens fast).
        self._checkpoint("TRUNCATE")
        self._db.close()
        self._wdb.close()
        with self._checkpoint_lock:
            self._cdb.close()
