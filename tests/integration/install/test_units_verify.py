"""`systemd-analyze verify` on every unit in proxy/.

verify checks that ExecStart's binary exists and loads the units a unit pulls in, so it
runs against a scratch root holding systemd's own units (copied from this machine) and a
stand-in /opt/netplane/venv/bin/netplane. It exits 0 even for unknown keys or values it
cannot parse (it only logs them), so the test also demands silence.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from netplane.install import plan

REPO = Path(__file__).resolve().parents[3]
SYSTEM_UNITS = Path("/usr/lib/systemd/system")

pytestmark = pytest.mark.prerequisite_missing(shutil.which("systemd-analyze") is None or not SYSTEM_UNITS.is_dir(),
                                reason="systemd-analyze not installed (./run setup installs systemd)")


@pytest.fixture(scope="module")
def scratch_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("verify-root")
    shutil.copytree(SYSTEM_UNITS, root / "usr/lib/systemd/system", symlinks=True)
    exe = root / "opt/netplane/venv/bin/netplane"
    exe.parent.mkdir(parents=True)
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    (root / "etc/systemd/system").mkdir(parents=True)
    return root


def verify(root: Path, name: str, text: str) -> tuple[int, str]:
    unit = root / "etc/systemd/system" / name
    unit.write_text(text)
    proc = subprocess.run(["systemd-analyze", "verify", f"--root={root}", str(unit)],
                          capture_output=True, text=True, timeout=60, check=False)
    return proc.returncode, (proc.stdout + proc.stderr).strip()


@pytest.mark.parametrize("daemon", plan.DAEMONS)
def test_unit_passes_systemd_analyze_verify(scratch_root: Path, daemon: str) -> None:
    name = plan.unit_name(daemon)
    assert verify(scratch_root, name, (REPO / "proxy" / name).read_text()) == (0, "")


@pytest.mark.parametrize("daemon", plan.DAEMONS)
def test_unit_with_another_prefix_passes_verify(scratch_root: Path, daemon: str) -> None:
    exe = scratch_root / "srv/np/venv/bin/netplane"
    exe.parent.mkdir(parents=True, exist_ok=True)
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    name = plan.unit_name(daemon)
    text = plan.render_unit((REPO / "proxy" / name).read_text(), "/srv/np")
    assert verify(scratch_root, name, text) == (0, "")


def test_verify_harness_reports_mistakes(scratch_root: Path) -> None:
    """The harness would catch a typo, a bad value and a missing binary (so the tests above mean something)."""
    good = (REPO / "proxy" / plan.unit_name("proxy")).read_text()
    for broken, expect in [
        (good.replace("NoNewPrivileges=yes", "NoNewPrivilege=yes"), "Unknown key"),
        (good.replace("Restart=on-failure", "Restart=sometimes"), "Failed to parse"),
        (good.replace("/opt/netplane/venv/bin/netplane", "/opt/netplane/venv/bin/missing"), "not executable"),
    ]:
        _, out = verify(scratch_root, "netplane-broken.service", broken.replace("netplane-proxy", "netplane-broken"))
        assert expect in out
