"""A bounded-frequency runner (kube-proxy's async.BoundedFrequencyRunner).

`run()` asks for a sync and returns at once; requests made while one is waiting
coalesce into one. Syncs are at least `min_interval` apart (a burst of changes
costs one sync, not one per change) and at most `max_interval` apart (the
periodic resync). A failed sync is retried after `retry_interval`.

The decision is a small pure state machine (`RunnerCore`) over an injected clock;
`AsyncRunner` is the asyncio shell that sleeps until the core says the function
is due and runs it in a worker thread, so the event loop (informer, health and
metrics endpoints) never blocks on iptables-restore.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(slots=True)
class RunnerCore:
    min_interval: float
    max_interval: float
    retry_interval: float = 1.0
    last_run: float | None = None
    requested: bool = True  # the first sync happens as soon as the loop starts
    retry_at: float | None = None

    def __post_init__(self) -> None:
        if self.min_interval < 0 or self.max_interval <= 0 or self.min_interval > self.max_interval:
            raise ValueError("need 0 <= min_interval <= max_interval and max_interval > 0")

    def request(self) -> None:
        self.requested = True

    def due(self) -> float:
        """When the function should run next (may be in the past: run now)."""
        if self.last_run is None:
            return float("-inf")
        earliest = self.last_run + self.min_interval
        candidates = [self.last_run + self.max_interval]
        if self.requested:
            candidates.append(earliest)
        if self.retry_at is not None:
            candidates.append(max(self.retry_at, earliest))
        return min(candidates)

    def started(self, now: float) -> None:
        self.last_run = now
        self.requested = False
        self.retry_at = None

    def finished(self, ok: bool, now: float) -> None:
        if not ok:
            self.retry_at = now + self.retry_interval


class AsyncRunner:
    def __init__(self, fn: Callable[[], bool], min_interval: float, max_interval: float,
                 retry_interval: float = 1.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.fn = fn
        self.core = RunnerCore(min_interval, max_interval, retry_interval)
        self.clock = clock
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._lock = threading.Lock()
        self.runs = 0

    def run(self) -> None:
        """Request a run; non-blocking, safe from any thread."""
        with self._lock:
            self.core.request()
        loop, wake = self._loop, self._wake
        if loop is not None and wake is not None:
            try:
                loop.call_soon_threadsafe(wake.set)
            except RuntimeError:
                pass  # the loop is closing

    async def loop(self, stop: asyncio.Event) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        try:
            while not stop.is_set():
                now = self.clock()
                with self._lock:
                    due = self.core.due()
                    if due <= now:
                        self.core.started(now)
                if due <= now:
                    try:
                        ok = await asyncio.to_thread(self.fn)
                    except Exception:
                        ok = False
                    self.runs += 1
                    with self._lock:
                        self.core.finished(ok, self.clock())
                    continue
                self._wake.clear()
                waiters = [asyncio.ensure_future(self._wake.wait()), asyncio.ensure_future(stop.wait())]
                try:
                    await asyncio.wait(waiters, timeout=due - now, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    for w in waiters:
                        w.cancel()
        finally:
            self._loop = None
            self._wake = None
