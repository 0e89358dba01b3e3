"""Suite-wide rules.

Tests never skip: a missing prerequisite (root, a tool, a package) means `./run setup`
failed to provide it, which is a defect to fix, so the test fails and says what is
missing. Tests state prerequisites with `@pytest.mark.prerequisite_missing(condition,
reason=...)` (the shape of skipif) or call pytest.fail. As a backstop, in CI (CI=true)
a run in which anything skipped fails.
"""

from __future__ import annotations

import os

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "prerequisite_missing(condition, reason): fail the test when condition holds")


def pytest_runtest_setup(item: pytest.Item) -> None:
    for mark in item.iter_markers("prerequisite_missing"):
        if mark.args and mark.args[0]:
            reason = mark.kwargs.get("reason", "a prerequisite is missing")
            pytest.fail(f"missing prerequisite: {reason} (./run setup must provide it)", pytrace=False)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if os.environ.get("CI", "").lower() not in ("1", "true", "yes"):
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = reporter.stats.get("skipped", []) if reporter is not None else []
    if skipped and exitstatus == 0:
        names = ", ".join(getattr(r, "nodeid", "?") for r in skipped[:10])
        print(f"\nCI: {len(skipped)} test(s) skipped, which CI does not allow: {names}")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
