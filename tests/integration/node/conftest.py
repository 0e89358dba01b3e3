"""Fixtures for node-agent integration tests (root: network namespaces, real state server)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.node.cluster import Cluster


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    if os.geteuid() != 0:
        pytest.fail("needs root (network namespaces)")
    c = Cluster(tmp_path)
    try:
        c.create()
        c.start_server()
        yield c
    finally:
        c.destroy()
