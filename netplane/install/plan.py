"""What a node install consists of: roles, units, packages, and the pure edits of config files.

Nothing here touches the file system or runs a command, so the rules are tested without
root. `netplane.install.installer` does the I/O.

The installed layout (prefix /opt/netplane by default):

    <prefix>/venv/                         the netplane package in its own virtualenv
    <prefix>/share/netplane/{proxy,cni}/   the units, default configs and example conflists
    <prefix>/install-manifest.json         every path the install put there (for uninstall)
    /usr/local/bin/netplane                symlink into the venv
    /opt/cni/bin/netplane{,-ipam}          the CNI executables (roles running the node agent)
    /etc/netplane/*.env                    configuration, one EnvironmentFile per daemon + shared
    /etc/systemd/system/netplane-*.service the units
    /etc/modules-load.d/netplane.conf      kernel modules a node needs at boot
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

DEFAULT_PREFIX = "/opt/netplane"
CNI_BIN_DIR = "/opt/cni/bin"
CONFIG_DIR = "/etc/netplane"
UNIT_DIR = "/etc/systemd/system"
BIN_LINK = "/usr/local/bin/netplane"
MODULES_LOAD = "/etc/modules-load.d/netplane.conf"
MANIFEST_NAME = "install-manifest.json"
# Written by the node agent at run time, not by the install: removed only by `uninstall --purge`.
RUNTIME_LEFTOVERS = (
    "/var/lib/netplane", "/var/lib/private/netplane", "/etc/cni/net.d/10-netplane.conflist", "/run/netplane",
)

DAEMONS = ("server", "node", "proxy", "dns", "ingress")
ROLES: dict[str, tuple[str, ...]] = {
    "control-plane": ("server",),
    "node": ("node", "proxy"),
    "all": ("server", "node", "proxy"),  # a single machine: control plane and node
}
OPTIONAL = ("dns", "ingress")  # enabled with --with; the units are installed either way

# Debian packages each daemon needs at run time (the install itself needs python3-venv).
BASE_PACKAGES = ("python3", "python3-venv", "ca-certificates")
DAEMON_PACKAGES: dict[str, tuple[str, ...]] = {
    "server": (),
    "node": ("iproute2", "iptables", "nftables", "conntrack", "containernetworking-plugins", "busybox-static"),
    "proxy": ("iptables", "nftables", "conntrack"),
    "dns": (),
    "ingress": ("nginx-light",),
}

# The unit files refer to this prefix; another prefix is substituted at install time.
UNIT_PREFIX = DEFAULT_PREFIX


class PlanError(ValueError):
    """Options that cannot make an install."""


def unit_name(daemon: str) -> str:
    return f"netplane-{daemon}.service"


def env_file(daemon: str) -> str:
    return f"{CONFIG_DIR}/{daemon}.env"


def daemons_for(role: str, extras: Sequence[str] = ()) -> tuple[str, ...]:
    """The daemons whose units a role enables, in start order."""
    if role not in ROLES:
        raise PlanError(f"unknown role {role!r} (one of: {', '.join(ROLES)})")
    bad = [e for e in extras if e not in OPTIONAL]
    if bad:
        raise PlanError(f"unknown --with {bad[0]!r} (one of: {', '.join(OPTIONAL)})")
    wanted = set(ROLES[role]) | set(extras)
    return tuple(d for d in DAEMONS if d in wanted)


def runs_node_agent(daemons: Sequence[str]) -> bool:
    return "node" in daemons


def packages_for(daemons: Sequence[str]) -> tuple[str, ...]:
    seen: dict[str, None] = dict.fromkeys(BASE_PACKAGES)
    for d in daemons:
        seen.update(dict.fromkeys(DAEMON_PACKAGES[d]))
    return tuple(seen)


def render_unit(text: str, prefix: str) -> str:
    """The unit text for an install under `prefix` (the files in proxy/ name /opt/netplane)."""
    prefix = prefix.rstrip("/") or "/"
    if prefix == UNIT_PREFIX:
        return text
    return re.sub(re.escape(UNIT_PREFIX) + r"(?=/)", prefix, text)


# -- EnvironmentFile editing -------------------------------------------------------------------

_ASSIGN = re.compile(r"^(?P<comment>#\s*)?(?P<key>[A-Za-z_][A-Za-z0-9_]*)=(?P<value>.*)$")


def _unquote(value: str) -> str:
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
        return value[1:-1]
    return value


def _quote(value: str) -> str:
    # systemd's EnvironmentFile accepts shell-like double quotes; quote only when needed.
    if value == "" or re.fullmatch(r"[A-Za-z0-9_@%+=:,./-]+", value):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def parse_env(text: str) -> dict[str, str]:
    """KEY=value assignments of an EnvironmentFile (comments and commented-out keys ignored)."""
    values: dict[str, str] = {}
    for line in text.splitlines():
        m = _ASSIGN.match(line.strip())
        if m and not m.group("comment"):
            values[m.group("key")] = _unquote(m.group("value"))
    return values


def set_env_values(text: str, values: Mapping[str, str]) -> str:
    """Set KEY=value for each key, keeping every other line as it is.

    The first assignment of a key is replaced (a commented-out `#KEY=...` is uncommented
    when there is no live one); a key that appears nowhere is appended.
    """
    lines = text.splitlines()
    for key, value in values.items():
        new = f"{key}={_quote(value)}"
        live = commented = None
        for i, line in enumerate(lines):
            m = _ASSIGN.match(line.strip())
            if m and m.group("key") == key:
                if not m.group("comment"):
                    live = i
                    break
                if commented is None:
                    commented = i
        target = live if live is not None else commented
        if target is None:
            lines.append(new)
        else:
            lines[target] = new
    return "\n".join(lines) + "\n"


def set_flag(args: str, flag: str, value: str) -> str:
    """In a daemon's ARGS string, set `flag value` (replacing `flag x` or `flag=x`, else appending)."""
    words = shlex.split(args)
    out: list[str] = []
    done = False
    i = 0
    while i < len(words):
        w = words[i]
        if w == flag:
            i += 2  # drop the flag and its value
            if not done:
                out += [flag, value]
                done = True
            continue
        if w.startswith(flag + "="):
            i += 1
            if not done:
                out += [flag, value]
                done = True
            continue
        out.append(w)
        i += 1
    if not done:
        out += [flag, value]
    return shlex.join(out)


@dataclass(frozen=True, slots=True)
class Settings:
    """What the install's command line says about configuration (None: leave as it is)."""

    server: str | None = None
    kubeconfig: str | None = None
    node_name: str | None = None
    address: str | None = None
    listen: str | None = None
    backend: str | None = None
    proxy_mode: str | None = None
    cluster_cidr: str | None = None
    service_cidr: str | None = None


def config_edits(settings: Settings, current: Mapping[str, Mapping[str, str]]) -> dict[str, dict[str, str]]:
    """The KEY=value edits per config file (`netplane`, `server`, `node`, `proxy`, ...).

    `current` holds each file's present values, so flags inside an ARGS string are
    changed without disturbing the operator's other flags.
    """
    edits: dict[str, dict[str, str]] = {}

    def put(file: str, key: str, value: str) -> None:
        edits.setdefault(file, {})[key] = value

    def put_flag(file: str, key: str, flag: str, value: str) -> None:
        args = edits.get(file, {}).get(key, current.get(file, {}).get(key, ""))
        put(file, key, set_flag(args, flag, value))

    if settings.server is not None:
        put("netplane", "NETPLANE_SERVER", settings.server)
    if settings.kubeconfig is not None:
        put("netplane", "KUBECONFIG", settings.kubeconfig)
        if settings.server is None:
            # A server URL beside a kubeconfig overrides the kubeconfig's: the kubeconfig alone decides.
            put("netplane", "NETPLANE_SERVER", "")
    if settings.node_name is not None:
        put("netplane", "NETPLANE_NODE_NAME", settings.node_name)
    if settings.address is not None:
        put("netplane", "NETPLANE_NODE_ADDRESS", settings.address)
    if settings.listen is not None:
        put_flag("server", "NETPLANE_SERVER_ARGS", "--listen", settings.listen)
    if settings.backend is not None:
        if settings.backend not in ("vxlan", "host-gw"):
            raise PlanError(f"--backend must be vxlan or host-gw, not {settings.backend!r}")
        put_flag("node", "NETPLANE_NODE_ARGS", "--backend", settings.backend)
    if settings.proxy_mode is not None:
        put_flag("proxy", "NETPLANE_PROXY_ARGS", "--mode", settings.proxy_mode)
    if settings.cluster_cidr is not None:
        put_flag("server", "NETPLANE_SERVER_ARGS", "--cluster-cidr", settings.cluster_cidr)
        put_flag("node", "NETPLANE_NODE_ARGS", "--cluster-cidr", settings.cluster_cidr)
        put_flag("proxy", "NETPLANE_PROXY_ARGS", "--cluster-cidr", settings.cluster_cidr)
    if settings.service_cidr is not None:
        put_flag("server", "NETPLANE_SERVER_ARGS", "--service-cidr", settings.service_cidr)
    return edits
