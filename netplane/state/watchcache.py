"""The watch cache: one reader of the storage change log, fanned out to many watchers.

Every HTTP watch and every in-server controller subscribes here instead of
reading storage on its own, so one write costs one decode however many
watchers there are. Recent events stay in a ring buffer; a watch that resumes
from an older revision reads the storage log (or gets 410 Gone when it has
been compacted away).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from netplane.api import jsonbytes
from netplane.state.objects import Obj, decode
from netplane.state.storage import Compacted, Event, Storage

log = logging.getLogger(__name__)


# Not frozen: a frozen dataclass's __init__ costs an object.__setattr__ call per field, once per
# write. A Change is shared by every watcher and only read.
@dataclass(slots=True)
class Change:
    type: str  # ADDED | MODIFIED | DELETED
    key: str
    # The object as stored, decoded on first use by whoever reads it (see `object`).
    raw: bytes
    # The value before a MODIFIED change, as stored: decoded only by the few readers that need
    # it (selector-filtered watches, some controllers), not once per write for everyone.
    previous_raw: bytes | None
    revision: int
    # Encoded watch lines by event type, shared by every watcher that sends this change as is:
    # with a hundred watchers the object is serialised once, not a hundred times.
    lines: dict[str, bytes] | None = field(default=None, compare=False)
    # What was decoded, once read. Both dicts are made on first use: a change in the ring buffer
    # that nobody read is one object for the cyclic garbage collector to walk, not three.
    _object: Obj | None = field(default=None, compare=False)
    _previous: Obj | None = field(default=None, compare=False)
    _unreadable: bool = field(default=False, compare=False)

    @property
    def object(self) -> Obj:
        """The decoded object (ValueError if the stored value does not decode). Decoded lazily:
        a change nobody reads (a kind with no watcher) never becomes a tree of dicts, and the
        ring buffer of recent changes holds bytes, not ~20 objects per change for the cyclic
        garbage collector to walk (full collections had reached 76 ms under a write load)."""
        obj = self._object
        if obj is None:
            obj = self._object = decode(self.raw, self.revision)
        return obj

    def readable(self) -> bool:
        if self._unreadable:
            return False
        try:
            _ = self.object
        except (ValueError, TypeError, AttributeError):  # not JSON, or JSON but not an object
            # Never written by this server (it stores only what reads back); one bad value must
            # not end a watch, so it is reported (once, not by every reader) and passed over.
            log.exception("undecodable stored value key=%s revision=%d", self.key, self.revision)
            self._unreadable = True
            return False
        return True

    @property
    def previous(self) -> Obj | None:
        if self.previous_raw is None:
            return None
        prev = self._previous
        if prev is None:
            prev = self._previous = decode(self.previous_raw, self.revision)
        return prev

    def line(self, etype: str, obj: Obj) -> bytes:
        """The watch line sending obj (this change's object, as is) as an etype event: encoded by
        the first watcher that asks, then shared."""
        lines = self.lines
        if lines is None:
            lines = self.lines = {}
        line = lines.get(etype)
        if line is None:
            line = lines[etype] = jsonbytes.dumps({"type": etype, "object": obj}) + b"\n"
        return line


def _change(ev: Event) -> Change:
    prev = ev.prev_value if ev.type == "MODIFIED" else None
    return Change(ev.type, ev.key, ev.value, prev, ev.revision)


class TooSlow(Exception):
    """A subscriber fell so far behind that its queue was dropped."""


class Subscription:
    def __init__(self, cache: WatchCache, prefix: str | tuple[str, ...], max_queue: int) -> None:
        self._cache = cache
        self.prefix = prefix
        self.queue: asyncio.Queue[Change | None] = asyncio.Queue()
        self.max_queue = max_queue
        self.dropped = False

    def offer(self, change: Change) -> None:
        if self.dropped or not change.key.startswith(self.prefix):
            return
        if self.queue.qsize() >= self.max_queue:
            self.dropped = True
            self.queue.put_nowait(None)
            return
        self.queue.put_nowait(change)

    async def next(self) -> Change:
        item = await self.queue.get()
        if item is None:
            raise TooSlow(self.prefix)
        return item

    def close(self) -> None:
        self._cache._subs.discard(self)


class WatchCache:
    def __init__(self, storage: Storage, capacity: int = 20000, max_queue: int = 100000) -> None:
        self._storage = storage
        self._buffer: deque[Change] = deque(maxlen=capacity)
        self._subs: set[Subscription] = set()
        self._task: asyncio.Task[None] | None = None
        self._max_queue = max_queue
        self.revision = 0
        self._compacted = 0
        self._progress = asyncio.Condition()

    async def start(self) -> None:
        self.revision = await self._storage.revision()
        self._task = asyncio.create_task(self._run(self.revision), name="watch-cache")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self, start: int) -> None:
        async for batch in self._storage.watch(start):
            for ev in batch:
                change = _change(ev)
                self._buffer.append(change)
                for sub in list(self._subs):
                    sub.offer(change)
                self.revision = ev.revision
            async with self._progress:
                self._progress.notify_all()

    async def wait_for(self, revision: int, timeout: float = 5.0) -> None:
        """Wait until the cache has seen revision (so a just-made write is visible to new watchers)."""
        async with self._progress:
            await asyncio.wait_for(self._progress.wait_for(lambda: self.revision >= revision), timeout)

    def forget_until(self, revision: int) -> None:
        """Drop buffered changes at or below revision (they were compacted in storage too), so
        that a watch from there gets 410 Gone whichever way it is served."""
        self._compacted = max(self._compacted, revision)
        while self._buffer and self._buffer[0].revision <= revision:
            self._buffer.popleft()

    def subscribe(self, prefix: str | tuple[str, ...] = "") -> Subscription:
        """Changes to keys under prefix (or any of several prefixes) from now on: a subscriber
        that names only the kinds it follows is not woken by every other write."""
        sub = Subscription(self, prefix, self._max_queue)
        self._subs.add(sub)
        return sub

    async def since(self, revision: int, prefix: str = "") -> list[Change]:
        """Changes after revision under prefix, up to the cache's current revision."""
        if self._buffer and self._buffer[0].revision <= revision + 1 and revision >= self._compacted:
            return [c for c in self._buffer if c.revision > revision and c.key.startswith(prefix)]
        if revision >= self.revision:
            return []
        events = await self._storage.events_since(revision, prefix)
        return [_change(e) for e in events if e.revision <= self.revision]

    async def stream(self, revision: int, prefix: str = "") -> AsyncIterator[Change]:
        """Every change after revision under prefix, without gaps or duplicates, until cancelled.

        Raises Compacted when revision is too old.
        """
        sub = self.subscribe(prefix)
        try:
            last = revision
            for change in await self.since(revision, prefix):
                last = change.revision
                if change.readable():
                    yield change
            while True:
                change = await sub.next()
                if change.revision <= last:
                    continue
                last = change.revision
                if change.readable():
                    yield change
        finally:
            sub.close()


__all__ = ["Change", "Compacted", "Subscription", "TooSlow", "WatchCache"]
