"""The SQLite storage backend and the watch cache above it (no root, real SQLite files)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from netplane.state.storage import Compacted, KeyExists, KeyNotFound, RevisionMismatch
from netplane.state.storage.sqlite import SQLiteStorage
from netplane.state.watchcache import WatchCache


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


def test_revisions_are_global_and_monotonic(tmp_path: Path) -> None:
    async def go() -> None:
        s = SQLiteStorage(str(tmp_path / "db"))
        r1 = await s.create("/r/a", b"1")
        r2 = await s.create("/r/b", b"2")
        r3 = await s.update("/r/a", b"3")
        assert (r1, r2, r3) == (1, 2, 3)
        rec = await s.get("/r/a")
        assert rec is not None and rec.create_revision == 1 and rec.mod_revision == 3 and rec.value == b"3"
        await s.close()

    run(go())


def test_compare_and_swap(tmp_path: Path) -> None:
    async def go() -> None:
        s = SQLiteStorage(str(tmp_path / "db"))
        r1 = await s.create("/k", b"a")
        with pytest.raises(KeyExists):
            await s.create("/k", b"b")
        await s.update("/k", b"b", expected_revision=r1)
        with pytest.raises(RevisionMismatch):
            await s.update("/k", b"c", expected_revision=r1)
        with pytest.raises(RevisionMismatch):
            await s.delete("/k", expected_revision=r1)
        with pytest.raises(KeyNotFound):
            await s.update("/missing", b"x")
        rev, old = await s.delete("/k")
        assert old.value == b"b" and rev == 3
        with pytest.raises(KeyNotFound):
            await s.delete("/k")
        await s.close()

    run(go())


def test_list_by_prefix_with_paging(tmp_path: Path) -> None:
    async def go() -> None:
        s = SQLiteStorage(str(tmp_path / "db"))
        for k in ("/a/1", "/a/2", "/a/3", "/ab/1", "/b/1"):
            await s.create(k, b"")
        recs, rev = await s.list("/a/")
        assert [r.key for r in recs] == ["/a/1", "/a/2", "/a/3"] and rev == 5
        recs, _ = await s.list("/a/", start_after="/a/1", limit=1)
        assert [r.key for r in recs] == ["/a/2"]
        await s.close()

    run(go())


def test_change_log_survives_restart_and_compacts(tmp_path: Path) -> None:
    async def go() -> None:
        path = str(tmp_path / "db")
        s = SQLiteStorage(path)
        await s.create("/x", b"1")
        await s.update("/x", b"2")
        await s.delete("/x")
        await s.close()
        s = SQLiteStorage(path)
        assert await s.revision() == 3
        evs = await s.events_since(1)
        assert [(e.type, e.revision, e.value, e.prev_value) for e in evs] == [
            ("MODIFIED", 2, b"2", b"1"), ("DELETED", 3, b"2", b"2")]
        await s.compact(2)
        with pytest.raises(Compacted):
            await s.events_since(1)
        assert [e.revision for e in await s.events_since(2)] == [3]
        # The revision counter never goes back, even with an emptied log.
        await s.compact(3)
        assert await s.create("/y", b"") == 4
        await s.close()

    run(go())


def test_watch_cache_streams_backlog_then_live_without_gaps(tmp_path: Path) -> None:
    async def go() -> None:
        s = SQLiteStorage(str(tmp_path / "db"))
        for i in range(3):
            await s.create(f"/p/{i}", b'{"metadata":{}}')
        cache = WatchCache(s, capacity=2)
        await cache.start()
        got: list[tuple[str, int]] = []

        async def consume() -> None:
            async for ch in cache.stream(1, "/p/"):
                got.append((ch.key, ch.revision))
                if len(got) == 4:
                    return

        task = asyncio.create_task(consume())
        await asyncio.sleep(0.01)
        await s.create("/q/0", b'{"metadata":{}}')  # another prefix: filtered out
        await s.create("/p/3", b'{"metadata":{}}')
        await s.update("/p/0", b'{"metadata":{"labels":{"a":"b"}}}')
        await asyncio.wait_for(task, 5)
        assert got == [("/p/1", 2), ("/p/2", 3), ("/p/3", 5), ("/p/0", 6)]
        await cache.stop()
        await s.close()

    run(go())


def test_watch_cache_reports_compaction(tmp_path: Path) -> None:
    async def go() -> None:
        s = SQLiteStorage(str(tmp_path / "db"))
        for i in range(5):
            await s.create(f"/p/{i}", b'{"metadata":{}}')
        await s.compact(4)
        cache = WatchCache(s, capacity=10)
        await cache.start()
        with pytest.raises(Compacted):
            async for _ in cache.stream(1, "/p/"):
                pass
        await cache.stop()
        await s.close()

    run(go())
