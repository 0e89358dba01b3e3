"""Fixtures for the CNI integration tests: an installed plugin, a host namespace, pod namespaces."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.integration.cni.cni_harness import Netns, Plugin, Server, can_run, install

pytestmark = pytest.mark.root


@pytest.fixture(scope="session")
def bin_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    reason = can_run()
    if reason:
        pytest.fail(reason)
    path = tmp_path_factory.mktemp("cni-bin")
    install(path)  # exactly what an operator runs: `netplane cni install --bin-dir ...`
    return path


@pytest.fixture
def plugin(bin_dir: Path, tmp_path: Path) -> Plugin:
    data = tmp_path / "data"
    data.mkdir()
    return Plugin(bin_dir, data)


@pytest.fixture
def host() -> Iterator[Netns]:
    ns = Netns()
    try:
        yield ns
    finally:
        ns.close()


@pytest.fixture
def make_pod() -> Iterator[Callable[[], Netns]]:
    made: list[Netns] = []

    def make() -> Netns:
        ns = Netns()
        made.append(ns)
        return ns

    try:
        yield make
    finally:
        for ns in made:
            ns.close()


@pytest.fixture
def server(host: Netns, tmp_path: Path) -> Iterator[Server]:
    srv = Server(host, tmp_path / "run" / "cni.sock", tmp_path / "server.log")
    try:
        yield srv
    finally:
        srv.stop()
    assert not srv.socket_path.exists(), "the server removes its socket on exit"
