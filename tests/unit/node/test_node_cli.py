"""The node commands' argument handling (no agent is started)."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from netplane.cli.node_cmd import echo_server, logs, node
from netplane.node.config import ConfigError, parse_duration


def test_durations() -> None:
    assert parse_duration("10s") == 10 and parse_duration("500ms") == 0.5 and parse_duration("2m") == 120
    assert parse_duration("3") == 3
    try:
        parse_duration("soon")
    except ConfigError as e:
        assert "not a duration" in str(e)
    else:
        raise AssertionError("accepted a bad duration")


def test_node_rejects_bad_settings_before_starting() -> None:
    runner = CliRunner()
    r = runner.invoke(node, ["--server", "http://127.0.0.1:1", "--node-name", "n1", "--address", "not-an-ip"])
    assert r.exit_code == 1 and "--address" in r.output
    r = runner.invoke(node, ["--node-name", "n1", "--address", "10.0.0.1", "--heartbeat-interval", "often"])
    assert r.exit_code == 2 and "not a duration" in r.output
    r = runner.invoke(node, ["--node-name", "n1", "--address", "10.0.0.1", "--backend", "ipip"])
    assert r.exit_code == 2


def test_logs_from_a_state_dir(tmp_path: Path) -> None:
    pod = tmp_path / "pods" / "u1"
    (pod / "containers" / "main" / "0").mkdir(parents=True)
    (pod / "pod.json").write_text('{"uid": "u1", "namespace": "default", "name": "web", "created": 1}')
    (pod / "containers" / "main" / "0" / "log").write_text("hello\n")
    r = CliRunner().invoke(logs, ["web", "--state-dir", str(tmp_path)], catch_exceptions=False)
    assert r.exit_code == 0 and r.output == "hello\n"
    r = CliRunner().invoke(logs, ["nope", "--state-dir", str(tmp_path)])
    assert r.exit_code == 1 and 'pod "nope" not found in namespace "default"' in r.output


def test_echo_server_help() -> None:
    r = CliRunner().invoke(echo_server, ["--help"])
    assert r.exit_code == 0 and "--udp-port" in r.output
