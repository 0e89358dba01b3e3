"""List+watch with a local cache for one resource, in the manner of client-go's reflector and informer.

The loop:

1. **list** (in pages of ``page_size`` when the server paginates), replace the cache and emit the
   difference against the previous cache as add/update/delete events; the list's resourceVersion
   becomes the point to watch from;
2. **watch** from the last seen resourceVersion; every event (and every BOOKMARK) moves that point on;
3. when the stream ends (server-side timeout, disconnect, server restart) watch again from the last
   seen resourceVersion, without relisting, so nothing is missed or repeated;
4. on ``410 Gone`` (the resourceVersion fell out of the server's history) go back to 1;
5. while the server is unreachable or failing, retry with exponential backoff and full jitter
   (``backoff_initial`` doubling up to ``backoff_max``); the cache and handlers stay as they are, so
   consumers keep serving the last known state.

Handlers (sync or async) run one at a time in event order from the informer's task; an exception in
a handler is logged and does not stop the informer. ``on_update`` gets ``(old, new)``; ``on_add`` and
``on_delete`` get the object. A DELETED event for an object the cache never held is dropped, and an
event that carries the resourceVersion the cache already holds is not repeated to the handlers.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import random
from collections.abc import Awaitable, Callable
from typing import Any

from netplane.api.resources import ResourceInfo
from netplane.client.rest import APIClient, APIConnectionError, APIStatusError, WatchProtocolError

log = logging.getLogger(__name__)

Obj = dict[str, Any]
AddHandler = Callable[[Obj], Awaitable[None] | None]
UpdateHandler = Callable[[Obj, Obj], Awaitable[None] | None]
DeleteHandler = Callable[[Obj], Awaitable[None] | None]
Key = tuple[str, str]  # (namespace or "", name)

# Errors after which the informer retries with backoff (anything else is a bug and propagates).
RETRYABLE = (APIConnectionError, APIStatusError, WatchProtocolError)


def object_key(obj: Obj) -> Key:
    meta = obj.get("metadata") or {}
    return (str(meta.get("namespace") or ""), str(meta.get("name") or ""))


def _rv(obj: Obj) -> str:
    return str((obj.get("metadata") or {}).get("resourceVersion") or "")


class Informer:
    def __init__(
        self,
        client: APIClient,
        info: ResourceInfo,
        namespace: str | None = None,
        label_selector: str | None = None,
        field_selector: str | None = None,
        backoff_initial: float = 0.2,
        backoff_max: float = 30.0,
        page_size: int = 500,
        watch_timeout: tuple[int, int] = (300, 600),
    ) -> None:
        self.client = client
        self.info = info
        self.namespace = namespace
        self.label_selector = label_selector
        self.field_selector = field_selector
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.page_size = page_size
        # Server-side watch timeout, randomised per watch like client-go's reflector so that many
        # clients do not all reconnect at the same moment.
        self.watch_timeout = watch_timeout
        self._cache: dict[Key, Obj] = {}
        self._handlers: list[tuple[AddHandler | None, UpdateHandler | None, DeleteHandler | None]] = []
        self._synced = asyncio.Event()
        self._resource_version = ""
        # Counters for logs and tests.
        self.lists = 0
        self.watches = 0
        self.retries = 0
        # Seams for tests of the retry timing.
        self._sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
        self._jitter: Callable[[float, float], float] = random.uniform

    @property
    def resource_version(self) -> str:
        """The resourceVersion the next watch resumes from."""
        return self._resource_version

    @property
    def has_synced(self) -> bool:
        return self._synced.is_set()

    def add_handler(self, on_add: AddHandler | None = None, on_update: UpdateHandler | None = None,
                    on_delete: DeleteHandler | None = None) -> None:
        self._handlers.append((on_add, on_update, on_delete))

    def get(self, name: str, namespace: str | None = None) -> Obj | None:
        ns = (namespace or "") if self.info.namespaced else ""
        return self._cache.get((ns, name))

    def list(self) -> list[Obj]:
        return list(self._cache.values())

    async def wait_synced(self, timeout: float | None = None) -> None:
        """Return once the first list has filled the cache (and its add events have been handled)."""
        await asyncio.wait_for(self._synced.wait(), timeout)

    async def run(self) -> None:
        need_list = True
        backoff = self.backoff_initial
        while True:
            connected = False

            def mark_connected() -> None:
                nonlocal connected
                connected = True

            try:
                if need_list:
                    await self._relist()
                    need_list = False
                    backoff = self.backoff_initial
                await self._watch_once(on_connected=mark_connected)
                # The stream ended normally (server-side timeout or a graceful close): the server was
                # reachable, so resume at once from the last resourceVersion.
                backoff = self.backoff_initial
            except APIStatusError as e:
                if e.gone:
                    log.info("informer resource=%s event=expired rv=%s action=relist", self.info.plural,
                             self._resource_version)
                    need_list = True
                    # A relist straight away is what the server asks for; still back off a little
                    # after repeated 410s so a misbehaving server cannot spin us.
                    await self._sleep(self._jitter(0, self.backoff_initial))
                    continue
                if connected:
                    backoff = self.backoff_initial
                backoff = await self._backoff(backoff, e)
            except RETRYABLE as e:
                # A watch that was established and then broke means the server was up a moment ago:
                # start the backoff over so the reconnect is quick.
                if connected:
                    backoff = self.backoff_initial
                backoff = await self._backoff(backoff, e)

    async def _backoff(self, backoff: float, error: Exception) -> float:
        self.retries += 1
        delay = self._jitter(0, backoff)  # full jitter
        log.warning("informer resource=%s error=%r retry_in=%.2fs", self.info.plural, str(error), delay)
        await self._sleep(delay)
        return min(backoff * 2, self.backoff_max)

    async def _relist(self) -> None:
        items: list[Obj] = []
        continue_token: str | None = None
        list_rv = ""
        while True:
            try:
                page = await self.client.list(self.info, self.namespace, self.label_selector,
                                              self.field_selector, limit=self.page_size,
                                              continue_token=continue_token)
            except APIStatusError as e:
                if e.gone and continue_token:
                    # The continue token expired mid-way: take the whole list in one request instead.
                    items, continue_token = [], None
                    page = await self.client.list(self.info, self.namespace, self.label_selector,
                                                  self.field_selector)
                else:
                    raise
            items.extend(i for i in page.get("items") or [] if isinstance(i, dict))
            meta = page.get("metadata") or {}
            list_rv = str(meta.get("resourceVersion") or list_rv)
            continue_token = meta.get("continue") or None
            if not continue_token:
                break
        self.lists += 1
        fresh = {object_key(o): o for o in items}
        old = self._cache
        self._cache = dict(fresh)
        self._resource_version = list_rv
        for key, obj in fresh.items():
            prev = old.get(key)
            if prev is None:
                await self._dispatch_add(obj)
            elif _rv(prev) != _rv(obj) or prev != obj:
                await self._dispatch_update(prev, obj)
        for key, prev in old.items():
            if key not in fresh:
                await self._dispatch_delete(prev)
        self._synced.set()

    async def _watch_once(self, on_connected: Callable[[], None]) -> None:
        lo, hi = self.watch_timeout
        stream = await self.client.open_watch(
            self.info, self.namespace, resource_version=self._resource_version,
            label_selector=self.label_selector, field_selector=self.field_selector,
            allow_bookmarks=True, timeout_seconds=random.randint(lo, hi),
        )
        self.watches += 1
        on_connected()
        async with stream:
            async for event in stream:
                await self._handle_event(event)

    async def _handle_event(self, event: Obj) -> None:
        etype = event["type"]
        obj = event["object"]
        rv = _rv(obj)
        if etype == "BOOKMARK":
            if rv:
                self._resource_version = rv
            return
        if etype not in ("ADDED", "MODIFIED", "DELETED"):
            log.warning("informer resource=%s ignored_event=%s", self.info.plural, etype)
            return
        obj.setdefault("apiVersion", self.info.api_version)
        obj.setdefault("kind", self.info.kind)
        key = object_key(obj)
        prev = self._cache.get(key)
        if etype == "DELETED":
            if prev is not None:
                del self._cache[key]
                await self._dispatch_delete(obj)
        else:
            self._cache[key] = obj
            if prev is None:
                await self._dispatch_add(obj)
            elif _rv(prev) != rv:
                await self._dispatch_update(prev, obj)
        if rv:
            self._resource_version = rv

    async def _dispatch_add(self, obj: Obj) -> None:
        for on_add, _, _ in self._handlers:
            if on_add is not None:
                await self._call(on_add, obj)

    async def _dispatch_update(self, old: Obj, new: Obj) -> None:
        for _, on_update, _ in self._handlers:
            if on_update is not None:
                await self._call(on_update, old, new)

    async def _dispatch_delete(self, obj: Obj) -> None:
        for _, _, on_delete in self._handlers:
            if on_delete is not None:
                await self._call(on_delete, obj)

    async def _call(self, handler: Callable[..., Awaitable[None] | None], *args: Obj) -> None:
        try:
            result = handler(*args)
            if inspect.isawaitable(result):
                await result
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("informer resource=%s handler=%r failed", self.info.plural, handler)
