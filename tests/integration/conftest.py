"""Shared fixtures for integration tests (root, real servers, network namespaces)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.server import ServerProcess, start_server, write_kubeconfig


@pytest.fixture
def state_server(tmp_path: Path) -> Iterator[ServerProcess]:
    """A fresh state server process on a free loopback port."""
    srv = start_server(tmp_path / "state")
    try:
        yield srv
    finally:
        srv.kill()


@pytest.fixture
def kubeconfig(tmp_path: Path, state_server: ServerProcess) -> Path:
    return write_kubeconfig(tmp_path / "kubeconfig", state_server.url)
