"""`python3 -m netplane.install` (via vagrant/provision.sh) and `netplane uninstall` in a fresh Debian 12 root.

The install runs exactly as on a new node: Debian's python3, from a copy of the
checkout, no network (dependencies from a wheelhouse), systemd present but not running
(so units are enabled, not started). Then an upgrade with other flags, then the
uninstall, after which the root must be what debootstrap made, path for path.

The first run bootstraps the root (a few minutes); later runs reuse the cached tarball.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from netplane.install import plan
from tests.integration.install import debian_root
from tests.integration.install.debian_root import REPO, chroot_run, snapshot

pytestmark = [
    pytest.mark.root,
    pytest.mark.prerequisite_missing(os.geteuid() != 0, reason="needs root (chroot, unshare)"),
    pytest.mark.prerequisite_missing(shutil.which("debootstrap") is None,
                                     reason="debootstrap not installed (./run setup)"),
]

SRC = "/tmp/netplane-src"
WHEELS = "/tmp/wheels"


def copy_checkout(dest: Path) -> None:
    """What a node needs from the checkout: the package source and the deployable artifacts."""
    dest.mkdir(parents=True)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, dest / name)
    for name in ("netplane", "proxy", "cni", "vagrant"):
        shutil.copytree(REPO / name, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))


def ok(proc: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return proc


@pytest.mark.timeout(1500)  # the first run bootstraps Debian; cached runs take well under a minute
def test_install_upgrade_uninstall_in_a_fresh_debian_root(tmp_path: Path) -> None:
    tarball = debian_root.rootfs_tarball()
    wheels = debian_root.wheelhouse()
    root = tmp_path / "root"
    debian_root.unpack(tarball, root)
    copy_checkout(root / SRC.lstrip("/"))
    shutil.copytree(wheels, root / WHEELS.lstrip("/"))
    before = snapshot(root)

    # -- install: a worker node ------------------------------------------------------------------
    # The Vagrant lab's provisioning script, i.e. `python3 -m netplane.install` from the checkout.
    proc = ok(chroot_run(root, f"NETPLANE_SRC={SRC} sh {SRC}/vagrant/provision.sh --role node "
                               f"--server http://192.168.56.10:6443 --node-name w1 --address 192.168.56.11 "
                               f"--wheelhouse {WHEELS}"))
    assert "units enabled, not started" in proc.stderr

    etc = root / "etc"
    for d in plan.DAEMONS:
        unit = plan.unit_name(d)
        assert (etc / "systemd/system" / unit).read_text() == (REPO / "proxy" / unit).read_text()
        assert (etc / "netplane" / f"{d}.env").is_file()
    wants = etc / "systemd/system/multi-user.target.wants"
    assert sorted(p.name for p in wants.glob("netplane-*")) == ["netplane-node.service", "netplane-proxy.service"]
    env = plan.parse_env((etc / "netplane/netplane.env").read_text())
    assert (env["NETPLANE_SERVER"], env["NETPLANE_NODE_NAME"], env["NETPLANE_NODE_ADDRESS"]) == (
        "http://192.168.56.10:6443", "w1", "192.168.56.11")
    assert (etc / "modules-load.d/netplane.conf").is_file()
    assert os.readlink(root / "usr/local/bin/netplane") == "/opt/netplane/venv/bin/netplane"
    manifest = json.loads((root / "opt/netplane/install-manifest.json").read_text())
    assert manifest["enabled"] == ["netplane-node.service", "netplane-proxy.service"]

    # The installed command and the CNI executable work inside the root.
    assert "netplane, version 0.1.0" in ok(chroot_run(root, "netplane --version")).stdout
    assert "node" in ok(chroot_run(root, "netplane --help")).stdout
    ok(chroot_run(root, "netplane node --help && netplane proxy --help && netplane server --help"))
    cni = ok(chroot_run(root, "echo '{\"cniVersion\":\"1.1.0\"}' | CNI_COMMAND=VERSION /opt/cni/bin/netplane"))
    assert "1.1.0" in json.loads(cni.stdout)["supportedVersions"]
    assert (root / "opt/cni/bin/netplane-ipam").stat().st_mode & 0o111
    # the reference plugins a chain needs come from Debian (in /usr/lib/cni, on the agent's --cni-bin-dir)
    assert (root / "usr/lib/cni/portmap").exists() and (root / "usr/lib/cni/bandwidth").exists()

    # The installed units pass systemd's own checks against this root (ExecStart exists there).
    units = [str(etc / "systemd/system" / plan.unit_name(d)) for d in plan.DAEMONS]
    verify = subprocess.run(["systemd-analyze", "verify", f"--root={root}", *units],
                            capture_output=True, text=True, timeout=60, check=False)
    assert (verify.returncode, verify.stdout + verify.stderr) == (0, "")

    # -- upgrade in place: the same machine becomes control plane + node, host-gw --------------------
    ok(chroot_run(root, f"cd {SRC} && python3 -m netplane.install --role all --backend host-gw "
                        f"--listen 0.0.0.0:6443 --wheelhouse {WHEELS}"))
    assert sorted(p.name for p in wants.glob("netplane-*")) == [
        "netplane-node.service", "netplane-proxy.service", "netplane-server.service"]
    assert "--backend host-gw" in plan.parse_env((etc / "netplane/node.env").read_text())["NETPLANE_NODE_ARGS"]
    assert "--listen 0.0.0.0:6443" in plan.parse_env((etc / "netplane/server.env").read_text())["NETPLANE_SERVER_ARGS"]
    # values from the first install survive an upgrade that does not name them
    assert plan.parse_env((etc / "netplane/netplane.env").read_text())["NETPLANE_NODE_NAME"] == "w1"
    assert "netplane, version 0.1.0" in ok(chroot_run(root, "netplane --version")).stdout

    # -- uninstall with the installed command: the root is as debootstrap left it ---------------------
    proc = ok(chroot_run(root, "netplane uninstall"))
    assert "uninstalled netplane" in proc.stderr
    after = snapshot(root)
    assert {p: after.get(p) for p in set(after) | set(before) if after.get(p) != before.get(p)} == {}
