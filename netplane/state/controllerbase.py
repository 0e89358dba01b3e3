"""What the in-server controllers share: a coalescing work queue of dirty keys and a life cycle
that follows the watch cache (subscribe, initial pass, observe every change, sync each key)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Hashable
from typing import Any, Generic, TypeVar

from netplane.api import resources as res
from netplane.api.errors import APIError
from netplane.state.objects import Obj
from netplane.state.registry import Registry
from netplane.state.watchcache import Change

log = logging.getLogger(__name__)

K = TypeVar("K", bound=Hashable)
Key = tuple[str, str]  # (namespace, name)


class WorkQueue(Generic[K]):
    """Dirty keys, reconciled one at a time by one worker after a short coalescing delay.

    The handler returns None, or seconds after which the key must be looked at again (a pod
    becoming available, a progress deadline). A 409 Conflict retries soon; other failures back off.
    """

    def __init__(self, name: str, handler: Callable[[K], Awaitable[float | None]], delay: float = 0.01,
                 error_backoff: float = 1.0) -> None:
        self.name = name
        self.handler = handler
        self.delay = delay
        self.error_backoff = error_backoff
        self._dirty: set[K] = set()
        self._wake = asyncio.Event()
        self._timers: dict[K, asyncio.TimerHandle] = {}

    def add(self, key: K) -> None:
        self._dirty.add(key)
        self._wake.set()

    def add_after(self, key: K, seconds: float) -> None:
        old = self._timers.get(key)
        loop = asyncio.get_running_loop()
        when = loop.time() + seconds
        if old is not None and not old.cancelled() and old.when() <= when:
            return  # an earlier look is already planned
        if old is not None:
            old.cancel()
        self._timers[key] = loop.call_at(when, self._fire, key)

    def _fire(self, key: K) -> None:
        self._timers.pop(key, None)
        self.add(key)

    def close(self) -> None:
        for t in self._timers.values():
            t.cancel()
        self._timers.clear()

    async def run(self) -> None:
        while True:
            await self._wake.wait()
            await asyncio.sleep(self.delay)  # coalesce a burst of changes into one pass
            self._wake.clear()
            batch, self._dirty = self._dirty, set()
            for key in sorted(batch, key=repr):
                try:
                    again = await self.handler(key)
                except APIError as e:
                    if e.code == 409:
                        self.add_after(key, self.delay)  # raced with another writer: look again
                    else:
                        log.warning("%s sync failed key=%s code=%s error=%s", self.name, key, e.code, e.message)
                        self.add_after(key, self.error_backoff)
                    continue
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("%s sync failed key=%s", self.name, key)
                    self.add_after(key, self.error_backoff)
                    continue
                if again is not None:
                    self.add_after(key, again)


def key_parts(key: str) -> Key:
    """(namespace, name) from /registry/<group>/<plural>/<ns>/<name>."""
    parts = key.split("/")
    return parts[-2], parts[-1]



class Controller:
    """Shared life cycle: subscribe to the watch cache, queue keys, run the worker."""

    name = "controller"
    # The key prefixes of the kinds observe() looks at: changes to anything else never wake it.
    prefixes: tuple[str, ...] = ("/registry/",)

    def __init__(self, registry: Registry, delay: float = 0.01, clock: Callable[[], float] = time.time) -> None:
        self.registry = registry
        self.clock = clock
        self.queue: WorkQueue[Key] = WorkQueue(self.name, self._sync_key, delay)
        self._tasks: list[asyncio.Task[Any]] = []

    async def start(self) -> None:
        sub = self.registry.cache.subscribe(self.prefixes)
        await self._initial()
        self._tasks.append(asyncio.create_task(self._follow(sub), name=f"{self.name}-follow"))
        self._tasks.append(asyncio.create_task(self.queue.run(), name=f"{self.name}-work"))

    async def stop(self) -> None:
        self.queue.close()
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t

    async def _follow(self, sub: Any) -> None:
        try:
            while True:
                change: Change = await sub.next()
                try:
                    self.observe(change)
                except Exception:
                    log.exception("%s could not handle change key=%s", self.name, change.key)
        finally:
            sub.close()

    async def _initial(self) -> None:
        raise NotImplementedError

    def observe(self, change: Change) -> None:
        raise NotImplementedError

    async def _sync_key(self, key: Key) -> float | None:
        return await self.sync(*key)

    async def sync(self, namespace: str, name: str) -> float | None:
        raise NotImplementedError

    async def _get(self, info: res.ResourceInfo, namespace: str, name: str) -> Obj | None:
        try:
            return await self.registry.get(info, namespace, name)
        except APIError as e:
            if e.code == 404:
                return None
            raise
