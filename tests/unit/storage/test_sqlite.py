"""The SQLite storage backend and the watch cache above it (no root, real SQLite files)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from netplane.state.storage import Compacted, KeyExists, KeyNotFound, RevisionMismatch
from netplane.state.storage.base import Event
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


def test_watch_from_memory_matches_the_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Watchers that keep up are served the committed events from memory; ones further behind than
    # memory reaches read the log. Both must see exactly what the log holds, in order, with no gap.
    import netplane.state.storage.sqlite as sqlite_mod

    monkeypatch.setattr(sqlite_mod, "RECENT_EVENTS", 8)

    async def go() -> None:
        s = SQLiteStorage(str(tmp_path / "db"))
        await asyncio.gather(*(s.create(f"/r/{i}", b"v%d" % i) for i in range(5)))
        await s.update("/r/1", b"w")
        await s.delete("/r/2")
        await asyncio.gather(*(s.create(f"/r/x{i}", b"x") for i in range(10)))
        log = await s.events_since(0)
        assert [e.revision for e in log] == list(range(1, 18))
        assert s._recent_since(0) is None  # memory holds the last 8 only
        assert s._recent_since(9) == log[9:]
        assert s._recent_since(17) == []
        for start in (0, 5, 10, 14):
            log = await s.events_since(0)
            last = log[-1].revision + 1
            got: list[Event] = []

            async def collect(since: int = start, out: list[Event] = got, until: int = last) -> None:
                async for batch in s.watch(since):
                    out.extend(batch)
                    if out and out[-1].revision >= until:
                        return

            task = asyncio.create_task(collect())
            await asyncio.sleep(0)
            await s.update("/r/x0", b"live%d" % start)  # one more, live, after the backlog
            await asyncio.wait_for(task, 5)
            assert got[:-1] == log[start:], start
            assert (got[-1].type, got[-1].revision, got[-1].value) == ("MODIFIED", last, b"live%d" % start)
        await s.close()

    run(go())


def test_checkpoints_run_in_the_background_and_keep_the_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import netplane.state.storage.sqlite as sqlite_mod

    monkeypatch.setattr(sqlite_mod, "CHECKPOINT_INTERVAL", 0.05)
    wal = tmp_path / "db-wal"

    async def go() -> None:
        s = SQLiteStorage(str(tmp_path / "db"))
        for i in range(300):
            await s.create(f"/r/{i}", b"x" * 2000)
        grown = wal.stat().st_size
        assert grown > 300 * 2000  # every commit went to the WAL, none was checkpointed inline
        deadline = asyncio.get_running_loop().time() + 5
        # A PASSIVE checkpoint copies the WAL into the database file; the next write restarts it.
        while asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
            if (tmp_path / "db").stat().st_size > 300 * 2000:
                break
        assert (tmp_path / "db").stat().st_size > 300 * 2000
        await s.close()
        assert not wal.exists() or wal.stat().st_size == 0  # TRUNCATE at close

    run(go())
    s2_records = run(_list_all(tmp_path))
    assert len(s2_records) == 300


async def _list_all(tmp_path: Path) -> list[object]:
    s = SQLiteStorage(str(tmp_path / "db"))
    records, _ = await s.list("/r/")
    await s.close()
    return list(records)


def test_point_reads_from_memory_match_the_file_after_a_restart(tmp_path: Path) -> None:
    # Gets are answered from the in-memory copy of the committed objects: reopening the file must
    # rebuild exactly what was committed (values and both revisions), deleted keys included.
    async def go() -> None:
        path = str(tmp_path / "db")
        s = SQLiteStorage(path)
        await s.create("/k/a", b"a1")
        await s.create("/k/b", b"b1")
        await s.update("/k/a", b"a2")
        await s.delete("/k/b")
        await s.create("/k/c", b"c1")
        before = [await s.get(k) for k in ("/k/a", "/k/b", "/k/c")]
        listed, _ = await s.list("/k/")
        await s.close()
        s = SQLiteStorage(path)
        after = [await s.get(k) for k in ("/k/a", "/k/b", "/k/c")]
        assert before == after == [listed[0], None, listed[1]]
        a = after[0]
        assert a is not None and (a.value, a.create_revision, a.mod_revision) == (b"a2", 1, 3)
        await s.close()

    run(go())


def test_a_write_checked_against_a_read_never_misses_a_later_commit(tmp_path: Path) -> None:
    # A conditional write is checked against the newest committed or staged state, never against
    # what an earlier read returned: a stale expectation fails.
    async def go() -> None:
        s = SQLiteStorage(str(tmp_path / "db"))
        r1 = await s.create("/k", b"1")
        rec = await s.get("/k")
        assert rec is not None and rec.mod_revision == r1
        r2 = await s.update("/k", b"2", expected_revision=rec.mod_revision)
        stale = await s.get("/k")
        assert stale is not None and stale.mod_revision == r2
        await s.update("/k", b"3")  # committed after that read
        with pytest.raises(RevisionMismatch):
            await s.update("/k", b"4", expected_revision=stale.mod_revision)
        fresh = await s.get("/k")
        assert fresh is not None
        staged = asyncio.ensure_future(s.update("/k", b"5"))  # staged, not yet committed
        await asyncio.sleep(0)
        with pytest.raises(RevisionMismatch):
            await s.update("/k", b"6", expected_revision=fresh.mod_revision)
        await staged
        await s.delete("/k")
        gone = await s.get("/k")
        assert gone is None
        assert await s.create("/k", b"7") > r2
        await s.close()

    run(go())


def test_watch_cache_passes_over_an_undecodable_value(tmp_path: Path) -> None:
    # The server never stores what it cannot read back; should a value be unreadable anyway (a
    # hand-edited database), that one event is reported and skipped and every watch goes on.
    async def go() -> None:
        s = SQLiteStorage(str(tmp_path / "db"))
        cache = WatchCache(s)
        await cache.start()
        live = cache.stream(0, "/p/")
        first = asyncio.ensure_future(live.__anext__())
        await asyncio.sleep(0)  # one step: stream() subscribes and waits, nothing to replay yet
        await s.create("/p/bad", b'{"count": NaN')
        await s.create("/p/list", b"[]")  # JSON, but not an object
        await s.create("/p/good", b'{"metadata":{}}')
        change = await asyncio.wait_for(first, 5)
        assert (change.key, change.revision) == ("/p/good", 3)
        # A watch that starts later gets the same from the ring buffer.
        replay = await asyncio.wait_for(cache.stream(0, "/p/").__anext__(), 5)
        assert (replay.key, replay.revision, replay.object["metadata"]["resourceVersion"]) == ("/p/good", 3, "3")
        await live.aclose()
        await cache.stop()
        await s.close()

    run(go())


def test_a_compacted_revision_is_not_served_from_memory(tmp_path: Path) -> None:
    async def go() -> None:
        s = SQLiteStorage(str(tmp_path / "db"))
        for i in range(5):
            await s.create(f"/r/{i}", b"v")
        await s.compact(3)
        with pytest.raises(Compacted):
            await s.events_since(1)
        with pytest.raises(Compacted):
            async for _ in s.watch(1):
                pass
        first = await anext(s.watch(3))
        assert [e.revision for e in first] == [4, 5]
        await s.close()

    run(go())


def test_a_subscriber_is_offered_only_the_prefixes_it_names(tmp_path: Path) -> None:
    # Controllers name the kinds they follow, so a write to any other kind wakes none of them.
    async def go() -> None:
        s = SQLiteStorage(str(tmp_path / "db"))
        cache = WatchCache(s)
        await cache.start()
        sub = cache.subscribe(("/p/", "/q/"))
        for key in ("/other/1", "/p/1", "/pq/1", "/q/1", "/other/2"):
            await s.create(key, b'{"metadata":{}}')
        got = [(await asyncio.wait_for(sub.next(), 5)).key for _ in range(2)]
        assert got == ["/p/1", "/q/1"]
        await cache.wait_for(5)
        assert sub.queue.empty()
        await cache.stop()
        await s.close()

    run(go())
