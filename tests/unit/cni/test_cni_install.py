"""`netplane cni install` (no root): executables that answer like the plugin, a valid conflist."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from netplane.cli.cni_cmd import cni
from netplane.cni import config, install, launcher
from netplane.cni.version import version_reply


def test_install_writes_executables_and_a_conflist(tmp_path: Path) -> None:
    bin_dir, conf_dir = tmp_path / "bin", tmp_path / "net.d"
    result = CliRunner().invoke(cni, ["install", "--bin-dir", str(bin_dir), "--conf-dir", str(conf_dir),
                                      "--subnet", "10.244.3.0/24", "--bridge", "cni9", "--mtu", "1450"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [f"installed {bin_dir}/netplane", f"installed {bin_dir}/netplane-ipam",
                                          f"wrote {conf_dir}/10-netplane.conflist"]
    for name in ("netplane", "netplane-ipam"):
        path = bin_dir / name
        head = path.read_bytes()[:4]
        # The compiled launcher where a C compiler is at hand, else the -IS script.
        assert os.access(path, os.X_OK)
        if launcher.compiler() is not None:
            assert head == b"\x7fELF"
        else:
            assert head.startswith(b"#!") and b" -IS\n" in path.read_bytes()
    conflist = json.loads((conf_dir / "10-netplane.conflist").read_text())
    first, second = conflist["plugins"]
    assert second["type"] == "portmap"
    parsed = config.parse({**first, "name": conflist["name"], "cniVersion": conflist["cniVersion"]})
    assert (parsed.bridge, parsed.mtu, parsed.ip_masq, parsed.is_default_gateway) == ("cni9", 1450, True, True)


@pytest.mark.parametrize("kind", ["compiled", "script"])
def test_installed_executable_answers_version(tmp_path: Path, kind: str) -> None:
    if kind == "compiled" and launcher.compiler() is None:
        pytest.fail("no C compiler")
    install.install_executables(str(tmp_path), compiled=kind == "compiled")
    for name in install.EXECUTABLES:
        proc = subprocess.run([str(tmp_path / name)], input=b'{"cniVersion": "1.0.0"}', capture_output=True,
                              env={"CNI_COMMAND": "VERSION"}, timeout=30)
        assert (proc.returncode, proc.stderr) == (0, b"")
        assert proc.stdout == version_reply()


def test_script_executable_has_a_lean_import_path(tmp_path: Path) -> None:
    result = CliRunner().invoke(cni, ["install", "--bin-dir", str(tmp_path)], catch_exceptions=False,
                                env={"NETPLANE_CNI_EXECUTABLE": "script"})
    assert result.exit_code == 0
    plugin = tmp_path / "netplane"
    proc = subprocess.run([str(plugin)], input=b'{"cniVersion": "1.0.0"}', capture_output=True,
                          env={"CNI_COMMAND": "VERSION"}, timeout=30)
    assert proc.returncode == 0 and proc.stderr == b""
    assert json.loads(proc.stdout)["supportedVersions"][-1] == "1.1.0"
    # The same interpreter and flags as the script's shebang, with the import trace on.
    python = plugin.read_text().splitlines()[0][2:].split()[0]
    trace = subprocess.run([python, "-IS", "-X", "importtime", str(plugin)], input=b"{}", capture_output=True,
                           env={"CNI_COMMAND": "VERSION"}, timeout=30).stderr.decode()
    modules = {line.rsplit("|", 1)[-1].strip() for line in trace.splitlines() if line.startswith("import time:")}
    assert "netplane.cni.main" in modules
    heavy = {m for m in modules if m.split(".")[0] in ("pyroute2", "click", "yaml", "typing")
             or m in ("netplane.cni.plugin", "netplane.cni.config")}
    assert heavy == set()


def test_bad_subnet_is_one_clear_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(cni, ["install", "--bin-dir", str(tmp_path / "bin"), "--conf-dir",
                                      str(tmp_path / "conf"), "--subnet", "10.244.3.1/24"])
    assert result.exit_code != 0 and "host bits" in result.output
    assert not (tmp_path / "conf").exists()
