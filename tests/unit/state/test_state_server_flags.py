"""The state server's workload flags: durations and --controllers (netplane.state.config)."""

from __future__ import annotations

import pytest

from netplane.state.config import ConfigError, ServerConfig, parse_duration


@pytest.mark.parametrize(("text", "seconds"), [
    ("40s", 40.0), ("5m", 300.0), ("1m30s", 90.0), ("500ms", 0.5), ("1h", 3600.0), ("12", 12.0), ("2.5", 2.5),
    ("1.5s", 1.5),
])
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "s", "5 m", "5d", "m5", "1m 30s", "inf", "nan"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_duration(text)


@pytest.mark.parametrize(("controllers", "enabled"), [
    (("*",), {"endpointslice", "replicaset", "deployment", "scheduler", "nodelifecycle"}),
    (("*", "-deployment", "-scheduler"), {"endpointslice", "replicaset", "nodelifecycle"}),
    (("endpointslice",), {"endpointslice"}),
])
def test_controllers_flag(controllers: tuple[str, ...], enabled: set[str]) -> None:
    cfg = ServerConfig(data_dir="/nonexistent", controllers=controllers)
    cfg.check()
    names = ("endpointslice", "replicaset", "deployment", "scheduler", "nodelifecycle")
    assert {n for n in names if cfg.controller_enabled(n)} == enabled


def test_bad_flags_are_refused() -> None:
    with pytest.raises(ConfigError, match="unknown controller '-deploy'"):
        ServerConfig(data_dir="/x", controllers=("*", "-deploy")).check()
    with pytest.raises(ConfigError, match="node-monitor-grace-period"):
        ServerConfig(data_dir="/x", node_monitor_grace_period=0).check()
