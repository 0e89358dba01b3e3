"""`netplane install|uninstall` hand their arguments to the installer's own parser unchanged."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from netplane.cli.main import cli
from netplane.install.cli import main


def test_netplane_install_passes_arguments_through() -> None:
    result = CliRunner().invoke(cli, ["install", "--role", "worker"])
    assert result.exit_code == 2
    assert "argument --role: invalid choice: 'worker'" in result.output
    helped = CliRunner().invoke(cli, ["uninstall", "--help"])
    assert helped.exit_code == 0 and "usage: netplane uninstall [-h] [--prefix PREFIX] [--purge]" in helped.output


def test_expected_errors_are_one_line_and_exit_1(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["uninstall", "--prefix", "opt/netplane"]) == 1
    assert capsys.readouterr().err == "netplane-install: error: --prefix must be an absolute path, not 'opt/netplane'\n"
