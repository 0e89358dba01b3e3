"""The installer's file handling, against a temp directory as the root and a fake system.

The fake answers dpkg-query, makes a stand-in virtualenv, writes the CNI executables
as `netplane cni install` would, and records systemctl calls. The real thing (a
debootstrap'd Debian 12 root, real pip and systemctl) is tests/integration/install/.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest

from netplane.install import plan
from netplane.install.installer import SYSTEM_PYTHON, Installer, InstallError, Options
from netplane.install.plan import Settings


class FakeSystem:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.calls: list[list[str]] = []
        self.missing: set[str] = set()
        self.booted = False

    def host(self, path: str) -> Path:
        return self.root / path.lstrip("/")

    def __call__(self, argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
        argv = list(argv)
        self.calls.append(argv)
        out = ""
        rc = 0
        if argv[0] == "dpkg-query":
            if argv[-1] in self.missing:
                rc = 1
            else:
                out = "install ok installed"
        elif argv[0] == SYSTEM_PYTHON and argv[1:3] == ["-m", "venv"]:
            venv = self.host(argv[-1])
            (venv / "bin").mkdir(parents=True, exist_ok=True)
            for exe in ("python", "netplane"):
                (venv / "bin" / exe).write_text("#!/bin/sh\n")
            (venv / "pyvenv.cfg").write_text("home = /usr/bin\nversion = 3.11.2\n")
        elif argv[0] == SYSTEM_PYTHON:
            out = "3.11.2\n"
        elif argv[0].endswith("/bin/netplane") and argv[1:3] == ["cni", "install"]:
            bin_dir = self.host(argv[argv.index("--bin-dir") + 1])
            for name in ("netplane", "netplane-ipam"):
                (bin_dir / name).write_text(f"#!/opt/netplane/venv/bin/python -IS\n# netplane CNI plugin ({name})\n")
        return subprocess.CompletedProcess(argv, rc, out, "")

    def systemctl_calls(self) -> list[list[str]]:
        return [c[1:] for c in self.calls if c[0] == "systemctl"]


@pytest.fixture
def system(tmp_path: Path) -> FakeSystem:
    root = tmp_path / "root"
    for d in ("etc/systemd/system", "usr/local/bin", "opt", "etc/modules-load.d"):
        (root / d).mkdir(parents=True)
    return FakeSystem(root)


def snapshot(root: Path) -> dict[str, str]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath, name)
            rel = "/" + str(p.relative_to(root))
            out[rel] = "dir" if p.is_dir() and not p.is_symlink() else (
                f"link:{os.readlink(p)}" if p.is_symlink() else p.read_text())
    return out


def installer(system: FakeSystem, logs: list[str] | None = None) -> Installer:
    return Installer(root=str(system.root), run=system, log=(logs if logs is not None else []).append)


def node_options(tmp_path: Path, **kw: object) -> Options:
    wheel = tmp_path / "netplane-0.1.0-py3-none-any.whl"
    wheel.write_text("fake")
    settings = Settings(server="http://10.0.0.10:6443", node_name="w1", address="10.0.0.11")
    return Options(**{"role": "node", "source": str(wheel), "settings": settings, **kw})  # type: ignore[arg-type]


def test_node_install_puts_everything_in_place_and_uninstall_removes_exactly_it(
        system: FakeSystem, tmp_path: Path) -> None:
    before = snapshot(system.root)
    m = installer(system).install(node_options(tmp_path))

    root = system.root
    for d in plan.DAEMONS:
        unit = (root / "etc/systemd/system" / plan.unit_name(d)).read_text()
        assert unit == (Path(__file__).resolve().parents[3] / "proxy" / plan.unit_name(d)).read_text()
    env = plan.parse_env((root / "etc/netplane/netplane.env").read_text())
    assert env["NETPLANE_SERVER"] == "http://10.0.0.10:6443"
    assert (env["NETPLANE_NODE_NAME"], env["NETPLANE_NODE_ADDRESS"]) == ("w1", "10.0.0.11")
    assert os.readlink(root / "usr/local/bin/netplane") == "/opt/netplane/venv/bin/netplane"
    assert (root / "opt/cni/bin/netplane").is_file() and (root / "opt/cni/bin/netplane-ipam").is_file()
    assert (root / "etc/modules-load.d/netplane.conf").read_text().count("br_netfilter") >= 1
    assert (root / "opt/netplane/share/netplane/proxy/netplane-node.service").is_file()
    assert (root / "opt/netplane/share/netplane/cni/10-netplane.conflist").is_file()
    assert m.enabled == ["netplane-node.service", "netplane-proxy.service"]
    assert ["enable", "netplane-node.service", "netplane-proxy.service"] in system.systemctl_calls()
    # not booted with systemd (a chroot): nothing is started or reloaded
    assert not any(c[0] in ("restart", "daemon-reload") for c in system.systemctl_calls())
    manifest = json.loads((root / "opt/netplane/install-manifest.json").read_text())
    assert set(manifest["files"]) >= {"/opt/netplane/venv", "/etc/netplane/node.env", "/opt/cni/bin/netplane",
                                      "/usr/local/bin/netplane", "/etc/systemd/system/netplane-node.service"}

    notes = installer(system).uninstall()
    assert notes == []
    assert snapshot(root) == before
    assert ["disable", *sorted(plan.unit_name(d) for d in plan.DAEMONS)] in system.systemctl_calls()


def test_upgrade_keeps_operator_edits_and_changes_only_the_flags_given(system: FakeSystem, tmp_path: Path) -> None:
    inst = installer(system)
    inst.install(node_options(tmp_path))
    node_env = system.root / "etc/netplane/node.env"
    node_env.write_text(node_env.read_text() + "# tuned by the operator\n")
    unit = system.root / "etc/systemd/system/netplane-node.service"
    unit.write_text("stale\n")

    inst.install(node_options(tmp_path, settings=Settings(backend="host-gw")))

    text = node_env.read_text()
    assert "# tuned by the operator" in text
    assert "--backend host-gw" in plan.parse_env(text)["NETPLANE_NODE_ARGS"]
    assert plan.parse_env((system.root / "etc/netplane/netplane.env").read_text())["NETPLANE_NODE_NAME"] == "w1"
    assert unit.read_text() != "stale\n"  # units are ours: rewritten

    notes = inst.uninstall()
    assert notes == ["kept /etc/netplane/node.env: you changed it (uninstall --purge removes it)"]
    assert node_env.exists() and not (system.root / "etc/netplane/proxy.env").exists()


def test_purge_removes_edited_config_and_daemon_state(system: FakeSystem, tmp_path: Path) -> None:
    inst = installer(system)
    inst.install(node_options(tmp_path))
    (system.root / "etc/netplane/node.env").write_text("NETPLANE_NODE_ARGS=-v\n")
    state = system.root / "var/lib/netplane/node"
    state.mkdir(parents=True)
    (state / "pods").write_text("x")

    assert inst.uninstall(purge=True) == []
    assert not (system.root / "etc/netplane").exists()
    assert not (system.root / "var/lib/netplane").exists()


def test_uninstall_without_purge_keeps_daemon_state(system: FakeSystem, tmp_path: Path) -> None:
    inst = installer(system)
    inst.install(node_options(tmp_path))
    (system.root / "var/lib/netplane").mkdir(parents=True)
    notes = inst.uninstall()
    assert notes == ["kept the daemons' state: /var/lib/netplane (uninstall --purge removes it)"]
    assert (system.root / "var/lib/netplane").is_dir()


def test_a_config_file_that_was_there_before_is_never_removed(system: FakeSystem, tmp_path: Path) -> None:
    conf = system.root / "etc/netplane/proxy.env"
    conf.parent.mkdir(parents=True)
    conf.write_text("NETPLANE_PROXY_ARGS=--mode nftables\n")
    inst = installer(system)
    inst.install(node_options(tmp_path))
    assert conf.read_text() == "NETPLANE_PROXY_ARGS=--mode nftables\n"
    notes = inst.uninstall()
    assert notes == ["kept /etc/netplane/proxy.env: it existed before netplane was installed"]
    assert conf.exists()


def test_foreign_files_at_our_paths_are_not_overwritten_without_force(system: FakeSystem, tmp_path: Path) -> None:
    foreign = system.root / "etc/systemd/system/netplane-proxy.service"
    foreign.write_text("someone else's\n")
    with pytest.raises(InstallError, match=r"netplane-proxy\.service exists and was not installed by netplane"):
        installer(system).install(node_options(tmp_path))
    assert foreign.read_text() == "someone else's\n"
    installer(system).install(node_options(tmp_path, force=True))
    assert foreign.read_text() != "someone else's\n"


def test_cni_executables_from_an_earlier_cni_install_are_adopted(system: FakeSystem, tmp_path: Path) -> None:
    bin_dir = system.root / "opt/cni/bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "netplane").write_text("#!/usr/bin/python3 -IS\n# netplane CNI plugin (bridge); written by ...\n")
    (bin_dir / "bridge").write_text("reference plugin\n")
    inst = installer(system)
    inst.install(node_options(tmp_path))
    inst.uninstall()
    assert sorted(p.name for p in bin_dir.iterdir()) == ["bridge"]  # ours gone, the directory was not ours


def test_someone_elses_netplane_command_is_left_alone(system: FakeSystem, tmp_path: Path) -> None:
    link = system.root / "usr/local/bin/netplane"
    link.write_text("#!/bin/sh\necho mine\n")
    logs: list[str] = []
    inst = installer(system, logs)
    inst.install(node_options(tmp_path))
    assert link.read_text() == "#!/bin/sh\necho mine\n"
    assert any("skipping /usr/local/bin/netplane" in line for line in logs)
    inst.uninstall()
    assert link.read_text() == "#!/bin/sh\necho mine\n"


def test_changing_role_removes_what_the_old_role_needed(system: FakeSystem, tmp_path: Path) -> None:
    inst = installer(system)
    inst.install(node_options(tmp_path))
    m = inst.install(node_options(tmp_path, role="control-plane", settings=Settings(listen="0.0.0.0:6443")))
    assert m.enabled == ["netplane-server.service"]
    assert not (system.root / "opt/cni/bin/netplane").exists()
    assert not (system.root / "etc/modules-load.d/netplane.conf").exists()
    assert ["disable", "netplane-node.service", "netplane-proxy.service"] in system.systemctl_calls()
    server_args = plan.parse_env((system.root / "etc/netplane/server.env").read_text())["NETPLANE_SERVER_ARGS"]
    assert "--listen 0.0.0.0:6443" in server_args


def test_on_a_running_systemd_units_are_reloaded_enabled_and_restarted(system: FakeSystem, tmp_path: Path) -> None:
    (system.root / "run/systemd/system").mkdir(parents=True)
    inst = installer(system)
    inst.install(node_options(tmp_path, role="all"))
    units = ["netplane-server.service", "netplane-node.service", "netplane-proxy.service"]
    calls = system.systemctl_calls()
    assert calls.index(["daemon-reload"]) < calls.index(["enable", *units]) < calls.index(["restart", *units])
    inst.uninstall()
    assert ["disable", "--now", *sorted(plan.unit_name(d) for d in plan.DAEMONS)] in system.systemctl_calls()
    assert system.systemctl_calls()[-1] == ["daemon-reload"]


def test_no_start_enables_without_starting(system: FakeSystem, tmp_path: Path) -> None:
    (system.root / "run/systemd/system").mkdir(parents=True)
    installer(system).install(node_options(tmp_path, start=False))
    restarted = [u for c in system.systemctl_calls() if c[0] == "restart" for u in c[1:]]
    assert restarted == ["systemd-modules-load.service"]  # kernel modules now; no netplane unit started


def test_missing_packages_are_installed_or_refused(system: FakeSystem, tmp_path: Path) -> None:
    system.missing = {"nftables", "conntrack"}
    with pytest.raises(InstallError, match="missing Debian packages: nftables conntrack"):
        installer(system).install(node_options(tmp_path, apt=False))
    installer(system).install(node_options(tmp_path))
    apt = [c for c in system.calls if "apt-get" in c]
    assert apt[0][-3:] == ["apt-get", "update", "-qq"]
    assert apt[1][-2:] == ["nftables", "conntrack"]


def test_a_prefix_moves_the_venv_and_the_units_paths(system: FakeSystem, tmp_path: Path) -> None:
    inst = Installer(prefix="/srv/np", root=str(system.root), run=system, log=lambda s: None)
    inst.install(node_options(tmp_path, prefix="/srv/np"))
    unit = (system.root / "etc/systemd/system/netplane-node.service").read_text()
    assert "ExecStart=/srv/np/venv/bin/netplane node " in unit and "/opt/netplane" not in unit
    assert (system.root / "srv/np/install-manifest.json").is_file()
    inst.uninstall()
    assert not (system.root / "srv").exists()


def test_uninstall_with_nothing_installed_says_so(system: FakeSystem) -> None:
    with pytest.raises(InstallError, match="nothing to uninstall"):
        installer(system).uninstall()
