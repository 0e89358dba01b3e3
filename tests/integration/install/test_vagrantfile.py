"""`vagrant validate` on vagrant/Vagrantfile (Debian's vagrant + vagrant-libvirt; no VM is started).

With the vagrant-libvirt plugin present, validate checks the libvirt provider block, the
private networks and that the shell provisioner's script exists. The VirtualBox block
can only be validated where VirtualBox is installed, so its settings are checked against
the VirtualBox provider's config class that ships with Vagrant.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
VAGRANT_DIR = REPO / "vagrant"

pytestmark = pytest.mark.prerequisite_missing(shutil.which("vagrant") is None,
                                              reason="vagrant not installed (./run setup)")


def vagrant(args: list[str], cwd: Path, tmp: Path, **env: str) -> subprocess.CompletedProcess[str]:
    # Keep vagrant's state (.vagrant/, ~/.vagrant.d) out of the checkout and the home directory.
    full_env = {**os.environ, "VAGRANT_DOTFILE_PATH": str(tmp / "dotfile"), "VAGRANT_HOME": str(tmp / "home"),
                "VAGRANT_CHECKPOINT_DISABLE": "1", "VAGRANT_NO_COLOR": "1", **env}
    return subprocess.run(["vagrant", *args, "--no-tty"], cwd=cwd, env=full_env, capture_output=True, text=True,
                          timeout=120, check=False)


def test_libvirt_plugin_is_there_so_validate_checks_the_provider_block(tmp_path: Path) -> None:
    proc = vagrant(["plugin", "list"], VAGRANT_DIR, tmp_path)
    assert "vagrant-libvirt" in proc.stdout, proc.stdout + proc.stderr


def test_vagrantfile_validates(tmp_path: Path) -> None:
    proc = vagrant(["validate"], VAGRANT_DIR, tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Vagrantfile validated successfully" in proc.stdout
    assert not (VAGRANT_DIR / ".vagrant").exists()


def test_vagrantfile_defines_cp_and_the_workers(tmp_path: Path) -> None:
    proc = vagrant(["status"], VAGRANT_DIR, tmp_path, NETPLANE_WORKERS="3")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    machines = sorted(m.group(1) for m in re.finditer(r"^(\S+)\s+not created", proc.stdout, re.M))
    assert machines == ["cp", "w1", "w2", "w3"]


def test_validate_catches_a_broken_vagrantfile(tmp_path: Path) -> None:
    """A misspelt libvirt setting or a missing provisioning script fails (the test above means something)."""
    work = tmp_path / "lab" / "vagrant"
    work.mkdir(parents=True)
    shutil.copy2(VAGRANT_DIR / "provision.sh", work)
    good = (VAGRANT_DIR / "Vagrantfile").read_text()
    for broken, expect in [(good.replace("lv.cpus = CPUS", "lv.cpuz = CPUS"), "cpuz"),
                           (good.replace('path: "provision.sh"', 'path: "missing.sh"'), "missing.sh")]:
        (work / "Vagrantfile").write_text(broken)
        proc = vagrant(["validate"], work, tmp_path)
        assert proc.returncode != 0 and expect in proc.stdout + proc.stderr


def test_virtualbox_settings_exist_in_vagrants_virtualbox_provider() -> None:
    text = (VAGRANT_DIR / "Vagrantfile").read_text()
    block = re.search(r"provider :virtualbox do \|vb\|(.*?)\n  end", text, re.S)
    assert block is not None
    used = set(re.findall(r"vb\.(\w+)\s*=", block.group(1)))
    assert used == {"memory", "cpus", "linked_clone"}
    version = subprocess.run(["vagrant", "--version"], capture_output=True, text=True, timeout=60,
                             check=True).stdout.split()[-1]
    configs = list(Path("/usr/share/rubygems-integration/all/gems").glob(
        f"vagrant-{version}/plugins/providers/virtualbox/config.rb"))
    if not configs:
        pytest.fail("this vagrant's VirtualBox provider sources are not where Debian puts them")
    source = configs[0].read_text()
    for name in used:
        assert re.search(rf"def {name}=|attr_accessor :{name}\b", source), name
