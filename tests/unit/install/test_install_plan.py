"""The pure rules of the node install: roles, packages, config-file edits, unit prefixes."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from netplane.install import plan
from netplane.install.plan import PlanError, Settings

REPO = Path(__file__).resolve().parents[3]
PROXY = REPO / "proxy"


def test_roles_enable_their_daemons_in_start_order() -> None:
    assert plan.daemons_for("control-plane") == ("server",)
    assert plan.daemons_for("node") == ("node", "proxy")
    assert plan.daemons_for("all") == ("server", "node", "proxy")
    assert plan.daemons_for("node", ["ingress", "dns"]) == ("node", "proxy", "dns", "ingress")


@pytest.mark.parametrize(("role", "extras", "message"), [
    ("worker", (), "unknown role 'worker'"),
    ("node", ("etcd",), "unknown --with 'etcd'"),
])
def test_bad_roles_are_refused(role: str, extras: tuple[str, ...], message: str) -> None:
    with pytest.raises(PlanError, match=re.escape(message)):
        plan.daemons_for(role, extras)


def test_packages_follow_the_daemons() -> None:
    cp = plan.packages_for(plan.daemons_for("control-plane"))
    assert cp == ("python3", "python3-venv", "ca-certificates")
    node = plan.packages_for(plan.daemons_for("node"))
    assert {"iptables", "nftables", "conntrack", "containernetworking-plugins", "busybox-static"} <= set(node)
    assert len(node) == len(set(node))
    assert "nginx-light" in plan.packages_for(plan.daemons_for("control-plane", ["ingress"]))


def test_set_env_values_replaces_uncomments_and_appends() -> None:
    text = "# comment\nA=1\n#B=/x\nC=keep\n"
    out = plan.set_env_values(text, {"A": "two words", "B": "/etc/k", "D": "new"})
    assert out == '# comment\nA="two words"\nB=/etc/k\nC=keep\nD=new\n'
    assert plan.parse_env(out) == {"A": "two words", "B": "/etc/k", "C": "keep", "D": "new"}


def test_set_env_values_prefers_the_live_assignment_over_a_commented_one() -> None:
    out = plan.set_env_values("#A=old\nA=live\n", {"A": "x"})
    assert out == "#A=old\nA=x\n"


def test_parse_env_ignores_comments_and_strips_quotes() -> None:
    assert plan.parse_env("# X=1\n#Y=2\nZ=\"a b\"\nW='c'\nV=\n") == {"Z": "a b", "W": "c", "V": ""}


@pytest.mark.parametrize(("args", "expected"), [
    ("--backend vxlan --cluster-cidr 10.244.0.0/16", "--backend host-gw --cluster-cidr 10.244.0.0/16"),
    ("--backend=vxlan -v", "--backend host-gw -v"),
    ("-v", "-v --backend host-gw"),
    ("", "--backend host-gw"),
])
def test_set_flag_changes_only_that_flag(args: str, expected: str) -> None:
    assert plan.set_flag(args, "--backend", "host-gw") == expected


def test_config_edits_touch_only_the_flags_given() -> None:
    current = {"node": {"NETPLANE_NODE_ARGS": "--backend vxlan --logs-port 0"},
               "server": {"NETPLANE_SERVER_ARGS": "--listen 127.0.0.1:6443 -v"}}
    edits = plan.config_edits(Settings(server="http://cp:6443", listen="0.0.0.0:6443", backend="host-gw",
                                       cluster_cidr="10.50.0.0/16"), current)
    assert edits["netplane"] == {"NETPLANE_SERVER": "http://cp:6443"}
    assert shlex.split(edits["server"]["NETPLANE_SERVER_ARGS"]) == [
        "--listen", "0.0.0.0:6443", "-v", "--cluster-cidr", "10.50.0.0/16"]
    assert shlex.split(edits["node"]["NETPLANE_NODE_ARGS"]) == [
        "--backend", "host-gw", "--logs-port", "0", "--cluster-cidr", "10.50.0.0/16"]
    assert edits["proxy"] == {"NETPLANE_PROXY_ARGS": "--cluster-cidr 10.50.0.0/16"}
    assert plan.config_edits(Settings(), current) == {}


def test_a_kubeconfig_alone_clears_the_server_url() -> None:
    edits = plan.config_edits(Settings(kubeconfig="/etc/netplane/kubeconfig"), {})
    assert edits == {"netplane": {"KUBECONFIG": "/etc/netplane/kubeconfig", "NETPLANE_SERVER": ""}}
    text = plan.set_env_values((PROXY / "netplane.env").read_text(), edits["netplane"])
    assert plan.parse_env(text)["NETPLANE_SERVER"] == "" and "\nKUBECONFIG=/etc/netplane/kubeconfig\n" in text
    both = plan.config_edits(Settings(kubeconfig="/k", server="https://api:6443"), {})
    assert both["netplane"] == {"KUBECONFIG": "/k", "NETPLANE_SERVER": "https://api:6443"}


def test_render_unit_moves_only_prefix_paths() -> None:
    text = "ExecStart=/opt/netplane/venv/bin/netplane node\nDocumentation=file:///opt/netplane/share/x\n"
    assert plan.render_unit(text, "/opt/netplane") == text
    assert plan.render_unit(text, "/srv/np/") == (
        "ExecStart=/srv/np/venv/bin/netplane node\nDocumentation=file:///srv/np/share/x\n")
    assert plan.render_unit("X=/opt/netplane-other\n", "/srv/np") == "X=/opt/netplane-other\n"


# -- the artifacts in proxy/ agree with the plan ----------------------------------------------------

def _unit(daemon: str) -> dict[str, list[str]]:
    keys: dict[str, list[str]] = {}
    for line in (PROXY / plan.unit_name(daemon)).read_text().splitlines():
        if line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            keys.setdefault(key, []).append(value)
    return keys


@pytest.mark.parametrize("daemon", plan.DAEMONS)
def test_every_variable_a_unit_uses_is_defined_by_its_environment_files(daemon: str) -> None:
    unit = _unit(daemon)
    files = [v.lstrip("-") for v in unit["EnvironmentFile"]]
    assert files == ["/etc/netplane/netplane.env", plan.env_file(daemon)]
    defined: dict[str, str] = {}
    for f in files:
        defined.update(plan.parse_env((PROXY / Path(f).name).read_text()))
    (exec_start,) = unit["ExecStart"]
    systemd_set = {"STATE_DIRECTORY": "StateDirectory", "RUNTIME_DIRECTORY": "RuntimeDirectory"}
    used = set(re.findall(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)", exec_start)) - set(systemd_set)
    assert used, exec_start
    assert used <= set(defined), f"{used - set(defined)} undefined"
    for var, setting in systemd_set.items():
        if var in exec_start:
            assert unit.get(setting), f"{var} is only set with {setting}="


@pytest.mark.parametrize("daemon", plan.DAEMONS)
def test_units_restart_with_backoff_after_the_network(daemon: str) -> None:
    unit = _unit(daemon)
    assert unit["Type"] == ["exec"]  # no daemon sends READY=1
    assert "network-online.target" in unit["After"][0].split()
    assert "network-online.target" in unit["Wants"][0].split()
    assert unit["Restart"] == ["on-failure"] and unit["RestartSec"]
    assert unit["StartLimitBurst"] and unit["StartLimitIntervalSec"]
    assert unit["ExecStart"][0].startswith(plan.UNIT_PREFIX + "/venv/bin/netplane " + daemon)
    assert "ExecReload" not in unit  # no daemon re-reads its configuration
    assert unit["WantedBy"] == ["multi-user.target"]


def test_capabilities_are_only_what_each_daemon_needs() -> None:
    caps = {d: set(_unit(d)["CapabilityBoundingSet"][0].split()) for d in plan.DAEMONS}
    assert caps == {
        "server": set(),
        "node": {"CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_SYS_ADMIN", "CAP_NET_BIND_SERVICE"},
        "proxy": {"CAP_NET_ADMIN", "CAP_NET_RAW"},
        "dns": {"CAP_NET_BIND_SERVICE"},
        "ingress": {"CAP_NET_BIND_SERVICE"},
    }
    for d in ("server", "dns", "ingress"):  # non-root: ambient carries the capability into the process
        unit = _unit(d)
        assert unit["DynamicUser"] == ["yes"]
        assert set(unit["AmbientCapabilities"][0].split()) == caps[d]


def test_node_agent_has_no_mount_namespace_and_leaves_pods_running() -> None:
    unit = _unit("node")
    # Any of these gives the unit a mount namespace whose netns bind mounts the host cannot see.
    for key in ("ProtectSystem", "ProtectHome", "PrivateTmp", "ReadWritePaths", "ReadOnlyPaths",
                "ProtectKernelTunables", "ProtectKernelModules", "ProtectControlGroups", "PrivateDevices",
                "PrivateMounts", "TemporaryFileSystem", "BindPaths"):
        assert key not in unit, key
    assert unit["KillMode"] == ["process"]

