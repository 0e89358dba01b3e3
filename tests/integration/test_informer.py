"""The informer against the real state server: list+watch, resume across a server restart, 410 relist."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path
from typing import Any, TypeVar

from netplane.api.resources import ResourceInfo, resolve_name
from netplane.client.informer import Informer
from netplane.client.kubeconfig import ClusterConfig
from netplane.client.rest import APIClient, APIStatusError
from tests.support.server import ServerProcess, start_server

T = TypeVar("T")
_cm = resolve_name("configmaps")
assert _cm is not None
CM: ResourceInfo = _cm
NS = "default"


def run(coro: Awaitable[T], timeout: float = 90) -> T:
    async def main() -> T:
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(main())


async def eventually(pred: Any, timeout: float = 10.0, what: str = "") -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not pred():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what or pred}")
        await asyncio.sleep(0.02)


def cm(name: str, v: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": NS, "labels": labels or {"app": "web"}}, "data": {"v": v}}


class Gate:
    """Holds the informer's retry sleeps while closed, so a test decides when it reconnects."""

    def __init__(self) -> None:
        self.open = asyncio.Event()
        self.open.set()
        self.waiting = 0

    async def sleep(self, delay: float) -> None:
        if not self.open.is_set():
            self.waiting += 1
            await self.open.wait()
        await asyncio.sleep(min(delay, 0.05))


class Log:
    def __init__(self) -> None:
        self.events: list[tuple[str, str, str]] = []

    def add(self, o: dict[str, Any]) -> None:
        self.events.append(("add", o["metadata"]["name"], o["data"]["v"]))

    def update(self, old: dict[str, Any], new: dict[str, Any]) -> None:
        self.events.append(("update", new["metadata"]["name"], new["data"]["v"]))

    def delete(self, o: dict[str, Any]) -> None:
        self.events.append(("delete", o["metadata"]["name"], o["data"]["v"]))


@contextlib.asynccontextmanager
async def running_informer(url: str, **kw: Any) -> AsyncIterator[tuple[Informer, Log, Gate]]:
    async with APIClient(ClusterConfig(server=url)) as client:
        inf = Informer(client, CM, namespace=NS, **kw)
        log, gate = Log(), Gate()
        inf._sleep = gate.sleep
        inf.add_handler(log.add, log.update, log.delete)
        task = asyncio.create_task(inf.run())
        try:
            await inf.wait_synced(20)
            yield inf, log, gate
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


def stop(server: ServerProcess) -> None:
    # SIGKILL: the data dir is thrown away anyway, and the server currently needs up to a minute to
    # exit on SIGTERM once a watch has been open (reported to the lead).
    server.kill(signal.SIGKILL)


async def restart(old: ServerProcess, *extra: str) -> ServerProcess:
    """kill -9 the server and start it again on the same port and data dir."""
    old.kill(signal.SIGKILL)
    return await asyncio.to_thread(start_server, old.data_dir, *extra, port=old.port)


def test_list_watch_and_label_selector(state_server: ServerProcess) -> None:
    async def main() -> None:
        async with APIClient(ClusterConfig(server=state_server.url)) as client:
            await client.create(CM, cm("a", "1"))
            async with running_informer(state_server.url, label_selector="app=web") as (inf, log, _):
                assert log.events == [("add", "a", "1")]
                await client.create(CM, cm("b", "1"))
                await client.create(CM, cm("other", "1", {"app": "db"}))
                live = await client.get(CM, "a", NS)
                live["data"]["v"] = "2"
                await client.update(CM, live)
                await client.patch(CM, "b", {"metadata": {"labels": {"app": "db"}}}, NS)  # leaves the selector
                await client.delete(CM, "a", NS)
                await eventually(lambda: len(log.events) == 5, what="five events")
                assert log.events == [("add", "a", "1"), ("add", "b", "1"), ("update", "a", "2"),
                                      ("delete", "b", "1"), ("delete", "a", "2")]
                assert inf.list() == []
                assert inf.lists == 1

    try:
        run(main())
    finally:
        stop(state_server)


def test_resume_after_a_server_restart_without_relisting(state_server: ServerProcess) -> None:
    async def main() -> None:
        server = state_server
        try:
            async with APIClient(ClusterConfig(server=server.url)) as client:
                await client.create(CM, cm("a", "1"))
                await client.create(CM, cm("b", "1"))
            async with running_informer(server.url) as (inf, log, gate):
                assert sorted(log.events) == [("add", "a", "1"), ("add", "b", "1")]
                await eventually(lambda: inf.watches == 1, what="the watch")
                resume_from = inf.resource_version
                gate.open.clear()
                server = await restart(server)
                await eventually(lambda: gate.waiting > 0, what="the informer to notice the restart")
                async with APIClient(ClusterConfig(server=server.url)) as client:
                    live = await client.get(CM, "a", NS)
                    live["data"]["v"] = "2"
                    await client.update(CM, live)
                    await client.delete(CM, "b", NS)
                    await client.create(CM, cm("c", "1"))
                gate.open.set()
                await eventually(lambda: len(log.events) == 5, what="the changes made while disconnected")
                assert log.events[2:] == [("update", "a", "2"), ("delete", "b", "1"), ("add", "c", "1")]
                assert inf.lists == 1  # resumed from its resourceVersion; no relist
                assert int(inf.resource_version) > int(resume_from)
                assert sorted(o["metadata"]["name"] for o in inf.list()) == ["a", "c"]
        finally:
            stop(server)

    run(main())


async def wait_until_compacted(url: str, rv: str) -> None:
    """Poll until a watch from ``rv`` is refused with 410 Gone (compaction runs on a timer)."""
    async with APIClient(ClusterConfig(server=url)) as client:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 20
        while True:
            try:
                stream = await client.open_watch(CM, NS, resource_version=rv, timeout_seconds=1)
                async with stream:
                    async for _ in stream:
                        pass
            except APIStatusError as e:
                if e.gone:
                    return
                raise
            if loop.time() > deadline:
                raise AssertionError(f"resourceVersion {rv} was never compacted")
            await asyncio.sleep(0.1)


def test_relist_after_410_emits_the_difference(tmp_path: Path) -> None:
    flags = ("--watch-history", "3", "--compaction-interval", "0.1")
    server = start_server(tmp_path / "state", *flags)

    async def main() -> None:
        nonlocal server
        async with APIClient(ClusterConfig(server=server.url)) as client:
            for name in ("keep", "change", "gone"):
                await client.create(CM, cm(name, "1"))
        async with running_informer(server.url) as (inf, log, gate):
            await eventually(lambda: inf.watches == 1, what="the watch")
            stale = inf.resource_version
            gate.open.clear()
            server = await restart(server, *flags)
            await eventually(lambda: gate.waiting > 0, what="the informer to notice the restart")
            async with APIClient(ClusterConfig(server=server.url)) as client:
                for v in "23456":
                    live = await client.get(CM, "change", NS)
                    live["data"]["v"] = v
                    await client.update(CM, live)
                await client.delete(CM, "gone", NS)
                await client.create(CM, cm("new", "1"))
            await wait_until_compacted(server.url, stale)
            gate.open.set()
            await eventually(lambda: len(log.events) == 6, what="the relist's events")
            assert sorted(log.events[3:]) == [("add", "new", "1"), ("delete", "gone", "1"),
                                              ("update", "change", "6")]
            assert inf.lists == 2
            assert sorted(o["metadata"]["name"] for o in inf.list()) == ["change", "keep", "new"]
            # And it watches on from the relist.
            async with APIClient(ClusterConfig(server=server.url)) as client:
                await client.delete(CM, "keep", NS)
            await eventually(lambda: len(log.events) == 7)
            assert log.events[-1] == ("delete", "keep", "1")

    try:
        run(main())
    finally:
        stop(server)


def test_watch_from_a_compacted_version_is_410_on_the_real_server(tmp_path: Path) -> None:
    """The exact behaviour the informer relies on: 200 + ERROR event or HTTP 410, both with code 410."""
    server = start_server(tmp_path / "state", "--watch-history", "3", "--compaction-interval", "0.1")

    async def main() -> None:
        async with APIClient(ClusterConfig(server=server.url)) as client:
            first = await client.create(CM, cm("x", "0"))
            for v in range(1, 8):
                live = await client.get(CM, "x", NS)
                live["data"]["v"] = str(v)
                await client.update(CM, live)
            await wait_until_compacted(server.url, first["metadata"]["resourceVersion"])

    try:
        run(main())
    finally:
        stop(server)


def test_paged_list_on_the_real_server(state_server: ServerProcess) -> None:
    async def main() -> None:
        async with APIClient(ClusterConfig(server=state_server.url)) as client:
            for i in range(5):
                await client.create(CM, cm(f"p{i}", "1"))
            first = await client.list(CM, NS, limit=2)
            assert len(first["items"]) == 2 and first["metadata"].get("continue")  # the server pages
            async with running_informer(state_server.url, page_size=2) as (inf, log, _):
                assert sorted(name for _, name, _ in log.events) == [f"p{i}" for i in range(5)]
                assert len(inf.list()) == 5

    try:
        run(main())
    finally:
        stop(state_server)
