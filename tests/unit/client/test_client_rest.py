"""The REST client: paths, Status errors, verbs, and watch stream parsing (pure and over HTTP)."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest
from aiohttp import web

from netplane.api.resources import ResourceInfo, resolve_name
from netplane.client.fake import FakeAPIServer
from netplane.client.kubeconfig import ClusterConfig
from netplane.client.rest import (
    APIClient,
    APIConnectionError,
    APIStatusError,
    WatchDecoder,
    WatchProtocolError,
    resource_path,
)

T = TypeVar("T")


def res(name: str) -> ResourceInfo:
    info = resolve_name(name)
    assert info is not None
    return info


SVC, DEPLOY, NODE, CM = res("svc"), res("deploy"), res("no"), res("cm")


def run(coro: Awaitable[T], timeout: float = 20) -> T:
    async def main() -> T:
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(main())


def with_fake(body: Callable[[FakeAPIServer, APIClient], Awaitable[T]], **kw: Any) -> T:
    async def main() -> T:
        fake = FakeAPIServer(**kw)
        await fake.start()
        try:
            async with APIClient(ClusterConfig(server=fake.url, token="tkn")) as client:
                return await body(fake, client)
        finally:
            await fake.stop()

    return run(main())


# ------------------------------------------------------------------------------------ pure parts

def test_resource_paths() -> None:
    assert resource_path(SVC, "default") == "/api/v1/namespaces/default/services"
    assert resource_path(SVC, None) == "/api/v1/services"
    assert resource_path(DEPLOY, "shop", "web", "scale") == "/apis/apps/v1/namespaces/shop/deployments/web/scale"
    assert resource_path(NODE, "ignored", "n1", "status") == "/api/v1/nodes/n1/status"
    assert resource_path(SVC, "default", "a b") == "/api/v1/namespaces/default/services/a%20b"
    with pytest.raises(ValueError):
        resource_path(SVC, "default", "")


def event(etype: str, name: str, rv: str) -> bytes:
    return json.dumps({"type": etype, "object": {"kind": "Service", "metadata": {"name": name,
                                                                                 "resourceVersion": rv}}}).encode()


def test_watch_decoder_reassembles_lines_split_anywhere() -> None:
    stream = event("ADDED", "a", "1") + b"\n" + event("MODIFIED", "a", "2") + b"\n" + event("DELETED", "a", "3")
    for cut in (1, 7, 50, len(stream) - 1):
        d = WatchDecoder()
        events = d.feed(stream[:cut]) + d.feed(stream[cut:]) + d.close()
        assert [(e["type"], e["object"]["metadata"]["resourceVersion"]) for e in events] == [
            ("ADDED", "1"), ("MODIFIED", "2"), ("DELETED", "3")]


def test_watch_decoder_byte_by_byte_and_blank_lines() -> None:
    stream = b"\n" + event("ADDED", "a", "1") + b"\r\n\n" + event("BOOKMARK", "", "9") + b"\n"
    d = WatchDecoder()
    events = [e for b in stream for e in d.feed(bytes([b]))]
    assert [e["type"] for e in events] == ["ADDED", "BOOKMARK"]
    assert d.close() == []


def test_watch_decoder_large_object() -> None:
    big = json.dumps({"type": "ADDED", "object": {"data": {"k": "x" * 3_000_000}}}).encode() + b"\n"
    d = WatchDecoder()
    events = [e for i in range(0, len(big), 65536) for e in d.feed(big[i:i + 65536])]
    assert len(events) == 1 and len(events[0]["object"]["data"]["k"]) == 3_000_000


@pytest.mark.parametrize("line", [b"{not json}\n", b"[1, 2]\n", b'{"type": "ADDED"}\n', b'{"object": {}}\n'])
def test_watch_decoder_rejects_what_is_not_an_event(line: bytes) -> None:
    with pytest.raises(WatchProtocolError):
        WatchDecoder().feed(line)


# ------------------------------------------------------------------------------------ over HTTP

def test_crud_round_trip_and_status_errors() -> None:
    async def body(fake: FakeAPIServer, client: APIClient) -> None:
        created = await client.create(CM, {"apiVersion": "v1", "kind": "ConfigMap",
                                           "metadata": {"name": "c", "namespace": "shop"}, "data": {"a": "1"}})
        assert created["metadata"]["namespace"] == "shop"
        with pytest.raises(APIStatusError) as err:
            await client.create(CM, {"metadata": {"name": "c"}}, namespace="shop")
        assert (err.value.code, err.value.reason) == (409, "AlreadyExists")
        assert err.value.status["kind"] == "Status"

        got = await client.get(CM, "c", "shop")
        got["data"]["a"] = "2"
        updated = await client.update(CM, got)
        assert updated["data"] == {"a": "2"}
        with pytest.raises(APIStatusError) as err:
            await client.update(CM, got)  # got carries the old resourceVersion
        assert (err.value.code, err.value.reason) == (409, "Conflict")

        patched = await client.patch(CM, "c", {"data": {"b": "3", "a": None}}, "shop")
        assert patched["data"] == {"b": "3"}
        assert fake.requests[-1].headers["Content-Type"] == "application/merge-patch+json"

        listed = await client.list(CM, "shop")
        assert listed["metadata"]["resourceVersion"] == str(fake.rv)
        # Typed list items come without apiVersion/kind; the client fills them in.
        assert [(i["apiVersion"], i["kind"], i["metadata"]["name"]) for i in listed["items"]] == [
            ("v1", "ConfigMap", "c")]

        await client.delete(CM, "c", "shop", grace_period_seconds=0, propagation_policy="Background")
        assert fake.requests[-1].body == {"kind": "DeleteOptions", "apiVersion": "v1",
                                          "gracePeriodSeconds": 0, "propagationPolicy": "Background"}
        with pytest.raises(APIStatusError) as err:
            await client.get(CM, "c", "shop")
        assert err.value.not_found and err.value.message == 'configmaps "c" not found'
        assert all(r.headers.get("Authorization") == "Bearer tkn" for r in fake.requests)

    with_fake(body)


def test_namespace_defaults_to_the_config_namespace() -> None:
    async def body(fake: FakeAPIServer, client: APIClient) -> None:
        await client.create(CM, {"metadata": {"name": "c"}})
        assert fake.requests[-1].path == "/api/v1/namespaces/default/configmaps"
        await client.list(CM)
        assert fake.requests[-1].path == "/api/v1/configmaps"  # no namespace: all namespaces

    with_fake(body)


def test_error_body_that_is_not_a_status() -> None:
    async def handler(request: web.Request) -> web.Response:
        return web.Response(status=503, text="upstream down")

    async def main() -> None:
        app = web.Application()
        app.router.add_get("/api/v1/namespaces/default/services/x", handler)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        try:
            async with APIClient(ClusterConfig(server=f"http://127.0.0.1:{runner.addresses[0][1]}")) as c:
                with pytest.raises(APIStatusError) as err:
                    await c.get(SVC, "x")
            assert (err.value.code, err.value.message) == (503, "upstream down")
        finally:
            await runner.cleanup()

    run(main())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_unreachable_server() -> None:
    async def main() -> None:
        url = f"http://127.0.0.1:{free_port()}"
        async with APIClient(ClusterConfig(server=url)) as client:
            with pytest.raises(APIConnectionError, match=f"cannot reach the server at {url}"):
                await client.list(SVC)
            with pytest.raises(APIConnectionError):
                await client.open_watch(SVC)

    run(main())


def test_watch_yields_events_and_bookmarks() -> None:
    async def body(fake: FakeAPIServer, client: APIClient) -> None:
        start = str(fake.rv)
        stream = await client.open_watch(CM, "default", resource_version=start)
        fake.put_object(CM, {"metadata": {"name": "a", "namespace": "default"}})
        fake.put_object(CM, {"metadata": {"name": "a", "namespace": "default"}, "data": {"x": "1"}})
        fake.put_object(CM, {"metadata": {"name": "other", "namespace": "elsewhere"}})
        fake.send_bookmark()
        fake.remove_object(CM, "a", "default")
        seen = []
        async with stream:
            async for ev in stream:
                seen.append((ev["type"], ev["object"]["metadata"].get("name"),
                             ev["object"]["metadata"]["resourceVersion"]))
                if ev["type"] == "DELETED":
                    break
        r = int(start)
        assert seen == [("ADDED", "a", str(r + 1)), ("MODIFIED", "a", str(r + 2)),
                        ("BOOKMARK", None, str(r + 3)), ("DELETED", "a", str(r + 4))]
        q = fake.requests[0].query
        assert q == {"watch": "true", "resourceVersion": start, "allowWatchBookmarks": "true"}

    with_fake(body)


def test_watch_generator_ends_when_the_server_ends_the_stream() -> None:
    async def body(fake: FakeAPIServer, client: APIClient) -> None:
        fake.put_object(CM, {"metadata": {"name": "a", "namespace": "default"}})
        events = [ev async for ev in client.watch(CM, "default", resource_version="0", timeout_seconds=1)]
        assert [e["type"] for e in events] == ["ADDED"]
        assert fake.requests[-1].query["timeoutSeconds"] == "1"

    with_fake(body)


@pytest.mark.parametrize("as_event", [True, False])
def test_watch_too_old_raises_410_either_way(as_event: bool) -> None:
    async def body(fake: FakeAPIServer, client: APIClient) -> None:
        old = str(fake.rv)
        fake.put_object(CM, {"metadata": {"name": "a", "namespace": "default"}})
        fake.compact()
        with pytest.raises(APIStatusError) as err:
            async for _ in client.watch(CM, "default", resource_version=old):
                pass
        assert err.value.gone and err.value.reason == "Expired"

    with_fake(body, watch_gone_as_event=as_event)


def test_watch_connection_cut_raises_connection_error() -> None:
    async def body(fake: FakeAPIServer, client: APIClient) -> None:
        stream = await client.open_watch(CM, "default", resource_version=str(fake.rv))
        fake.put_object(CM, {"metadata": {"name": "a", "namespace": "default"}})
        first = await stream.__anext__()
        assert first["type"] == "ADDED"
        fake.drop_watches()
        with pytest.raises((APIConnectionError, StopAsyncIteration)):
            await stream.__anext__()

    with_fake(body)
