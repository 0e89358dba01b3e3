"""One namespace topology for all proxy integration tests in a session (it takes about a second)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.integration.proxy.topology import Topology


@pytest.fixture(scope="package")
def topo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Topology]:
    if os.geteuid() != 0:
        pytest.fail("needs root for network namespaces")
    # iptables-legacy would share /run/xtables.lock with every other test session.
    os.environ["XTABLES_LOCKFILE"] = str(tmp_path_factory.mktemp("xtables") / "xtables.lock")
    t = Topology()
    try:
        t.create()
        t.start_servers()
        yield t
    finally:
        t.destroy()
