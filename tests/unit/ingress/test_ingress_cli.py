"""`netplane ingress` flag checking (the daemon itself is exercised by the integration tests)."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from netplane.cli.main import cli


@pytest.mark.parametrize(("args", "message"), [
    (["--http-port", "0"], "0 is not a port"),
    (["--https-port", "70000"], "70000 is not a port"),
    (["--address", "not-an-ip"], "is not an IP address"),
    (["--nginx", "/nonexistent/nginx"], "nginx binary '/nonexistent/nginx' not found"),
    (["--workers", "many"], "must be 'auto' or a positive number"),
    (["--upstream", "pods"], "'pods' is not one of 'service', 'endpoints'"),
])
def test_bad_flags_are_refused_before_anything_starts(args: list[str], message: str) -> None:
    result = CliRunner().invoke(cli, ["--server", "http://127.0.0.1:1", "ingress", *args], catch_exceptions=False)
    assert result.exit_code in (1, 2)
    assert message in result.output


def test_ingress_is_a_netplane_command() -> None:
    result = CliRunner().invoke(cli, ["ingress", "--help"], catch_exceptions=False)
    assert result.exit_code == 0
    assert "--upstream [service|endpoints]" in result.output
