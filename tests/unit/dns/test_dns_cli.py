"""`netplane dns` flag checking (no daemon is started for bad flags)."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from netplane.cli.main import cli


@pytest.mark.parametrize(("args", "message"), [
    (["--listen", "nowhere"], "is not ADDR:PORT"),
    (["--listen", "127.0.0.1:99999"], "is not ADDR:PORT"),
    (["--upstream", "dns.google"], "is not IP[:PORT]"),
    (["--zone", "."], "must not be empty"),
    (["--ttl", "-1"], "-1"),
])
def test_bad_flags_are_rejected_with_the_flag_named(args: list[str], message: str) -> None:
    result = CliRunner().invoke(cli, ["--server", "http://127.0.0.1:1", "dns", *args])
    assert result.exit_code == 2, result.output
    assert message in result.output


def test_help_lists_the_issue_flags() -> None:
    result = CliRunner().invoke(cli, ["dns", "--help"], catch_exceptions=False)
    assert result.exit_code == 0
    for flag in ("--server", "--kubeconfig", "--listen", "--zone", "--upstream", "--ttl"):
        assert flag in result.output
