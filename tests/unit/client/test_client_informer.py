"""The informer against the fake API server: list, watch, resume, bookmarks, 410 relist, backoff."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from netplane.api.resources import ResourceInfo, resolve_name
from netplane.client.fake import FakeAPIServer
from netplane.client.informer import Informer
from netplane.client.kubeconfig import ClusterConfig
from netplane.client.rest import APIClient

T = TypeVar("T")
info = resolve_name("cm")
assert info is not None
CM: ResourceInfo = info


def run(coro: Awaitable[T], timeout: float = 30) -> T:
    async def main() -> T:
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(main())


async def eventually(pred: Callable[[], bool], timeout: float = 5.0, what: str = "") -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not pred():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what or pred}")
        await asyncio.sleep(0.01)


def cm(name: str, ns: str = "default", **data: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": ns, "labels": {"app": "web"}}, "data": data}


class Recorder:
    """Handlers that log what they saw as compact tuples."""

    def __init__(self) -> None:
        self.log: list[tuple[str, ...]] = []

    def add(self, obj: dict[str, Any]) -> None:
        self.log.append(("add", obj["metadata"]["name"]))

    async def update(self, old: dict[str, Any], new: dict[str, Any]) -> None:  # async on purpose
        self.log.append(("update", new["metadata"]["name"], str(new.get("data", {}).get("v"))))

    def delete(self, obj: dict[str, Any]) -> None:
        self.log.append(("delete", obj["metadata"]["name"]))


@contextlib.asynccontextmanager
async def informer_on(fake: FakeAPIServer, **kw: Any) -> AsyncIterator[tuple[Informer, Recorder]]:
    async with APIClient(ClusterConfig(server=fake.url)) as client:
        inf = Informer(client, CM, **kw)
        rec = Recorder()
        inf.add_handler(rec.add, rec.update, rec.delete)
        task = asyncio.create_task(inf.run())
        try:
            yield inf, rec
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


def watch_queries(fake: FakeAPIServer) -> list[dict[str, str]]:
    return [r.query for r in fake.requests if r.query.get("watch") == "true"]


def list_count(fake: FakeAPIServer) -> int:
    return sum(1 for r in fake.requests if r.method == "GET" and "watch" not in r.query)


def test_list_then_watch_feeds_cache_and_handlers() -> None:
    async def main() -> None:
        fake = FakeAPIServer()
        await fake.start()
        fake.put_object(CM, cm("a", v="1"))
        fake.put_object(CM, cm("b", "other"))
        listed_at = str(fake.rv)
        try:
            async with informer_on(fake) as (inf, rec):
                await inf.wait_synced(5)
                assert sorted(rec.log) == [("add", "a"), ("add", "b")]
                assert inf.get("a", "default") is not None and inf.get("b", "other") is not None
                assert inf.get("a") is None  # namespaced: the namespace is part of the key
                assert inf.get("a", "default")["kind"] == "ConfigMap"  # type: ignore[index]

                fake.put_object(CM, cm("a", v="2"))
                fake.put_object(CM, cm("c"))
                fake.remove_object(CM, "b", "other")
                await eventually(lambda: len(rec.log) == 5)
                assert rec.log[2:] == [("update", "a", "2"), ("add", "c"), ("delete", "b")]
                assert sorted(o["metadata"]["name"] for o in inf.list()) == ["a", "c"]
                assert inf.resource_version == str(fake.rv)
                # The watch started at the list's resourceVersion.
                assert watch_queries(fake)[0]["resourceVersion"] == listed_at
        finally:
            await fake.stop()

    run(main())


def test_namespace_and_label_selector_are_passed_through() -> None:
    async def main() -> None:
        fake = FakeAPIServer()
        await fake.start()
        fake.put_object(CM, cm("a"))
        fake.put_object(CM, {"metadata": {"name": "other", "namespace": "default", "labels": {"app": "db"}}})
        try:
            async with informer_on(fake, namespace="default", label_selector="app=web") as (inf, rec):
                await inf.wait_synced(5)
                assert rec.log == [("add", "a")]
                await eventually(lambda: bool(watch_queries(fake)))
                assert fake.requests[0].path == "/api/v1/namespaces/default/configmaps"
                assert fake.requests[0].query["labelSelector"] == "app=web"
                assert watch_queries(fake)[0]["labelSelector"] == "app=web"
        finally:
            await fake.stop()

    run(main())


def test_paged_list() -> None:
    async def main() -> None:
        fake = FakeAPIServer()
        await fake.start()
        for i in range(5):
            fake.put_object(CM, cm(f"o{i}"))
        try:
            async with informer_on(fake, page_size=2) as (inf, rec):
                await inf.wait_synced(5)
                assert len(inf.list()) == 5 and len(rec.log) == 5
                assert [r.query.get("continue") for r in fake.requests[:3]] == [None, "2", "4"]
        finally:
            await fake.stop()

    run(main())


def test_disconnect_resumes_from_last_resource_version_without_relisting() -> None:
    async def main() -> None:
        fake = FakeAPIServer()
        await fake.start()
        fake.put_object(CM, cm("a", v="1"))
        try:
            async with informer_on(fake) as (inf, rec):
                await inf.wait_synced(5)
                fake.put_object(CM, cm("a", v="2"))
                await eventually(lambda: len(rec.log) == 2)
                seen_rv = inf.resource_version
                fake.drop_watches()
                fake.put_object(CM, cm("a", v="3"))  # happens while the informer reconnects
                await eventually(lambda: len(rec.log) == 3, what="the event after reconnecting")
                assert rec.log == [("add", "a"), ("update", "a", "2"), ("update", "a", "3")]
                assert list_count(fake) == 1
                assert watch_queries(fake)[-1]["resourceVersion"] == seen_rv
        finally:
            await fake.stop()

    run(main())


def test_bookmark_moves_the_resume_point() -> None:
    async def main() -> None:
        fake = FakeAPIServer()
        await fake.start()
        try:
            async with informer_on(fake) as (inf, rec):
                await inf.wait_synced(5)
                await eventually(lambda: len(watch_queries(fake)) == 1)
                # Objects of another resource move the global resourceVersion on.
                other = resolve_name("secret")
                assert other is not None
                fake.put_object(other, {"metadata": {"name": "s", "namespace": "default"}})
                fake.send_bookmark()
                await eventually(lambda: inf.resource_version == str(fake.rv))
                fake.drop_watches()
                await eventually(lambda: len(watch_queries(fake)) == 2)
                assert watch_queries(fake)[1]["resourceVersion"] == str(fake.rv)
                assert watch_queries(fake)[0]["allowWatchBookmarks"] == "true"
                assert rec.log == []
        finally:
            await fake.stop()

    run(main())


def test_server_restart_resumes_and_delivers_what_happened_meanwhile() -> None:
    async def main() -> None:
        fake = FakeAPIServer()
        await fake.start()
        fake.put_object(CM, cm("a", v="1"))
        try:
            async with informer_on(fake, backoff_initial=0.05, backoff_max=0.2) as (inf, rec):
                await inf.wait_synced(5)
                await fake.stop()
                fake.put_object(CM, cm("a", v="2"))
                fake.put_object(CM, cm("b"))
                retried = inf.retries
                await eventually(lambda: inf.retries >= retried + 3, what="failed reconnects")
                assert inf.get("a", "default")["data"] == {"v": "1"}  # type: ignore[index]
                await fake.start()
                await eventually(lambda: len(rec.log) == 3, what="events from the downtime")
                assert rec.log == [("add", "a"), ("update", "a", "2"), ("add", "b")]
                assert list_count(fake) == 1
        finally:
            await fake.stop()

    run(main())


def test_410_relists_and_emits_the_difference() -> None:
    async def main() -> None:
        fake = FakeAPIServer()
        await fake.start()
        for name in ("keep", "change", "gone"):
            fake.put_object(CM, cm(name, v="1"))
        try:
            async with informer_on(fake, backoff_initial=0.05) as (inf, rec):
                await inf.wait_synced(5)
                await fake.stop()
                fake.put_object(CM, cm("change", v="2"))
                fake.remove_object(CM, "gone", "default")
                fake.put_object(CM, cm("new"))
                fake.compact()  # the informer's resourceVersion is now too old
                await fake.start()
                await eventually(lambda: len(rec.log) == 6, what="the relist's events")
                assert sorted(rec.log[3:]) == [("add", "new"), ("delete", "gone"), ("update", "change", "2")]
                assert list_count(fake) == 2
                assert sorted(o["metadata"]["name"] for o in inf.list()) == ["change", "keep", "new"]
                # Watching goes on from the new list's resourceVersion.
                fake.put_object(CM, cm("keep", v="9"))
                await eventually(lambda: len(rec.log) == 7)
                assert rec.log[-1] == ("update", "keep", "9")
        finally:
            await fake.stop()

    run(main())


def test_410_answered_up_front_also_relists() -> None:
    async def main() -> None:
        fake = FakeAPIServer(watch_gone_as_event=False)
        await fake.start()
        fake.put_object(CM, cm("a"))
        try:
            async with informer_on(fake) as (inf, rec):
                await inf.wait_synced(5)
                await eventually(lambda: len(watch_queries(fake)) == 1)
                fake.remove_object(CM, "a", "default")
                fake.compact()
                fake.drop_watches()
                await eventually(lambda: rec.log == [("add", "a"), ("delete", "a")])
                assert list_count(fake) == 2
        finally:
            await fake.stop()

    run(main())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_backoff_doubles_to_the_maximum_while_unreachable_then_resets() -> None:
    async def main() -> None:
        fake = FakeAPIServer()
        fake.port = free_port()
        fake.put_object(CM, cm("a"))
        async with APIClient(ClusterConfig(server=fake.url)) as client:
            inf = Informer(client, CM, backoff_initial=0.1, backoff_max=0.8)
            bounds: list[float] = []
            def jitter(lo: float, hi: float) -> float:
                bounds.append(hi)  # record the bound, do not wait
                return 0.0

            inf._jitter = jitter
            real_sleep = asyncio.sleep

            async def sleep(delay: float) -> None:
                await real_sleep(0.001)

            inf._sleep = sleep
            task = asyncio.create_task(inf.run())
            try:
                await eventually(lambda: len(bounds) >= 7)
                assert bounds[:7] == [0.1, 0.2, 0.4, 0.8, 0.8, 0.8, 0.8]
                assert not inf.has_synced
                await fake.start()
                await inf.wait_synced(5)
                await eventually(lambda: inf.watches == 1)
                bounds.clear()
                fake.drop_watches()  # connected a moment ago: the retry starts from the initial bound
                await eventually(lambda: inf.watches == 2)
                assert bounds == [0.1]
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                await fake.stop()

    run(main())


def test_jitter_stays_below_the_bound() -> None:
    async def main() -> None:
        url = f"http://127.0.0.1:{free_port()}"
        async with APIClient(ClusterConfig(server=url)) as client:
            inf = Informer(client, CM, backoff_initial=0.01, backoff_max=0.04)
            delays: list[float] = []
            real_sleep = asyncio.sleep

            async def sleep(delay: float) -> None:
                delays.append(delay)
                await real_sleep(0)

            inf._sleep = sleep
            task = asyncio.create_task(inf.run())
            try:
                await eventually(lambda: len(delays) >= 20)
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            assert all(0 <= d <= 0.04 for d in delays)
            assert len(set(delays)) > 1  # actually random

    run(main())


def test_cache_survives_an_outage_and_a_failing_handler_does_not_stop_the_informer() -> None:
    async def main() -> None:
        fake = FakeAPIServer()
        await fake.start()
        fake.put_object(CM, cm("a"))
        calls: list[str] = []

        def broken(obj: dict[str, Any]) -> None:
            calls.append(obj["metadata"]["name"])
            raise RuntimeError("handler bug")

        try:
            async with informer_on(fake, backoff_initial=0.05, backoff_max=0.1) as (inf, rec):
                inf.add_handler(on_add=broken)
                await inf.wait_synced(5)
                await fake.stop()
                await eventually(lambda: inf.retries >= 2, what="failed reconnects")
                assert [o["metadata"]["name"] for o in inf.list()] == ["a"]
                await fake.start()
                fake.put_object(CM, cm("b"))
                await eventually(lambda: ("add", "b") in rec.log)
                assert calls == ["a", "b"]
        finally:
            await fake.stop()

    run(main())


def test_duplicate_and_unknown_events_are_not_repeated_to_handlers() -> None:
    async def main() -> None:
        fake = FakeAPIServer()
        async with APIClient(ClusterConfig(server=fake.url)) as client:
            inf = Informer(client, CM)
            rec = Recorder()
            inf.add_handler(rec.add, rec.update, rec.delete)
            obj = {"metadata": {"name": "a", "namespace": "default", "resourceVersion": "5"}}
            await inf._handle_event({"type": "ADDED", "object": dict(obj)})
            await inf._handle_event({"type": "MODIFIED", "object": dict(obj)})  # same resourceVersion
            await inf._handle_event({"type": "DELETED", "object": {"metadata": {"name": "x", "namespace": "d",
                                                                                "resourceVersion": "6"}}})
            assert rec.log == [("add", "a")]
            assert inf.resource_version == "6"

    run(main())
