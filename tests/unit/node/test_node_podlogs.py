"""Reading container logs from a node's state dir (what `netplane logs --state-dir` and the log server do)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import aiohttp
import pytest

from netplane.node.podlogs import LogsError, LogServer, read_local


def make_pod(state: Path, uid: str, name: str, logs: dict[str, list[str]], created: float = 1.0) -> None:
    pod = state / "pods" / uid
    pod.mkdir(parents=True)
    (pod / "pod.json").write_text(json.dumps({"uid": uid, "namespace": "shop", "name": name, "created": created}))
    for container, runs in logs.items():
        for n, text in enumerate(runs):
            d = pod / "containers" / container / str(n)
            d.mkdir(parents=True)
            (d / "log").write_text(text)


def test_current_previous_and_tail(tmp_path: Path) -> None:
    make_pod(tmp_path, "u1", "web", {"main": ["first run\n", "a\nb\nc\n"]})
    assert read_local(str(tmp_path), "shop", "web") == b"a\nb\nc\n"
    assert read_local(str(tmp_path), "shop", "web", "main", previous=True) == b"first run\n"
    assert read_local(str(tmp_path), "shop", "web", tail=2) == b"b\nc\n"
    assert read_local(str(tmp_path), "shop", "web", tail=0) == b""


def test_errors_name_the_problem(tmp_path: Path) -> None:
    make_pod(tmp_path, "u1", "two", {"a": ["x"], "b": ["y"]})
    make_pod(tmp_path, "u2", "one", {"main": ["only"]})
    with pytest.raises(LogsError, match=r"choose one of: \[a b\]"):
        read_local(str(tmp_path), "shop", "two")
    with pytest.raises(LogsError, match="container c is not valid"):
        read_local(str(tmp_path), "shop", "two", "c")
    with pytest.raises(LogsError, match="previous terminated container"):
        read_local(str(tmp_path), "shop", "one", previous=True)
    with pytest.raises(LogsError, match='pod "nope" not found'):
        read_local(str(tmp_path), "shop", "nope")


def test_newest_pod_of_a_name_wins(tmp_path: Path) -> None:
    make_pod(tmp_path, "old", "web", {"main": ["old\n"]}, created=1.0)
    make_pod(tmp_path, "new", "web", {"main": ["new\n"]}, created=2.0)
    assert read_local(str(tmp_path), "shop", "web") == b"new\n"


def test_log_server_serves_the_kubelet_path(tmp_path: Path) -> None:
    make_pod(tmp_path, "u1", "web", {"main": ["one\n", "two\nthree\n"]})

    async def run() -> None:
        server = LogServer(str(tmp_path), "127.0.0.1", 0)
        await server.start()
        assert server._runner is not None
        port = server._runner.addresses[0][1]
        base = f"http://127.0.0.1:{port}/containerLogs/shop/web/main"
        async with aiohttp.ClientSession() as s:
            async with s.get(base, params={"tailLines": "1"}) as r:
                assert r.status == 200 and await r.text() == "three\n"
            async with s.get(base, params={"previous": "true"}) as r:
                assert await r.text() == "one\n"
            async with s.get(base.replace("/web/", "/nope/")) as r:
                assert r.status == 404
        await server.stop()

    asyncio.run(run())
