"""The `netplane proxy` command's flag handling (the daemon itself is tested in integration)."""

from __future__ import annotations

import click
import pytest
from click.testing import CliRunner

from netplane.cli.proxy_cmd import parse_duration, proxy
from netplane.proxy.daemon import node_addresses


@pytest.mark.parametrize("text, seconds", [("1s", 1.0), ("500ms", 0.5), ("1m", 60.0), ("30", 30.0), ("1.5s", 1.5)])
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


def test_bad_duration() -> None:
    with pytest.raises(click.BadParameter):
        parse_duration("soon")


@pytest.mark.parametrize("args, message", [
    (["--mode", "userspace"], "Invalid value for '--mode'"),
    (["--cluster-cidr", "nope"], "is not a CIDR"),
    (["--min-sync-period", "10s", "--sync-period", "1s"], "--sync-period"),
    (["--nodeport-addresses", "10.0.0.0/8,bad"], "'bad' is not a CIDR"),
    (["--healthz-bind-address", "nohost"], "is not HOST:PORT"),
])
def test_bad_flags_exit_with_a_clear_error(args: list[str], message: str) -> None:
    result = CliRunner().invoke(proxy, ["--server", "http://127.0.0.1:1", "--node-name", "n1", *args])
    assert result.exit_code == 2 and message in result.output


def test_node_addresses() -> None:
    node = {"status": {"addresses": [{"type": "Hostname", "address": "n1"},
                                     {"type": "ExternalIP", "address": "203.0.113.1"},
                                     {"type": "InternalIP", "address": "192.168.0.1"},
                                     {"type": "InternalIP", "address": "fd00::1"}]}}
    assert node_addresses(node) == ("192.168.0.1", "203.0.113.1")
    assert node_addresses(None) == ()
