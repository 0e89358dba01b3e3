"""`netplane cni install`: put the plugin executables into a CNI bin dir, write a conflist.

The executables are named after the plugin types (`netplane`, `netplane-ipam`).
Where a C compiler is present they are the compiled launcher (launcher.py):
it forwards the call to the agent without starting Python, and runs the Python
plugin when it must. Otherwise they are tiny Python scripts run with `-I -S`:
no site import and no user environment, with the few directories they need put
on sys.path explicitly, which saves the interpreter's site start-up on every pod.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import tempfile
from typing import Any

from .config import BUILTIN_IPAM, DEFAULT_BRIDGE, DEFAULT_DATA_DIR

PLUGIN_TYPE = "netplane"
EXECUTABLES = {PLUGIN_TYPE: "bridge", BUILTIN_IPAM: "ipam"}


def import_paths() -> list[str]:
    """Directories holding netplane and the venv's packages (put on sys.path of the `-I -S` plugin).

    The plugin itself needs only netplane and the stdlib; site-packages (found via
    pyroute2, a dependency) stays on the path for anything imported lazily.
    """
    paths: list[str] = []
    for module in ("netplane", "pyroute2"):
        spec = importlib.util.find_spec(module)
        if spec is None or not spec.origin:
            raise RuntimeError(f"cannot locate the {module} package")
        root = os.path.dirname(os.path.dirname(spec.origin))
        if root not in paths:
            paths.append(root)
    return paths


def executable_text(plugin: str, python: str, paths: list[str]) -> str:
    return (
        f"#!{python} -IS\n"
        f"# netplane CNI plugin ({plugin}); written by `netplane cni install`.\n"
        "import sys\n"
        f"sys.path[:0] = {paths!r}\n"
        "from netplane.cni.main import main\n"
        f"sys.exit(main({plugin!r}))\n"
    )


def _write_atomic(path: str, text: str, mode: int) -> None:
    # A runtime may exec the file while we replace it: never let it see half a file.
    directory = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(prefix=".netplane-", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def install_executables(bin_dir: str, python: str | None = None, *, compiled: bool | None = None) -> list[str]:
    """Install the plugin executables: the compiled launcher when a C compiler is at hand, else the script.

    `compiled` True insists on the launcher (RuntimeError without one), False
    writes the scripts; None (the default) takes the launcher when it builds.
    NETPLANE_CNI_EXECUTABLE=script in the environment forces the scripts.
    """
    os.makedirs(bin_dir, mode=0o755, exist_ok=True)
    python = python or sys.executable
    paths = import_paths()
    if compiled is None and os.environ.get("NETPLANE_CNI_EXECUTABLE") == "script":
        compiled = False
    written = []
    for name, plugin in EXECUTABLES.items():
        path = os.path.join(bin_dir, name)
        if compiled is not False and _install_launcher(path, plugin, python, paths, required=bool(compiled)):
            written.append(path)
            continue
        _write_atomic(path, executable_text(plugin, python, paths), 0o755)
        written.append(path)
    return written


def _install_launcher(path: str, plugin: str, python: str, paths: list[str], required: bool) -> bool:
    from . import launcher

    directory = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(prefix=".netplane-", dir=directory)
    os.close(fd)
    try:
        problem = launcher.build(tmp, plugin, python, paths)
        if problem is not None:
            if required:
                raise RuntimeError(f"cannot build the CNI launcher: {problem}")
            return False
        os.chmod(tmp, 0o755)
        os.replace(tmp, path)  # atomic: a runtime exec'ing it meanwhile sees the old or the new file
        return True
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


# The version a written conflist declares: 1.0.0, not the newest we speak, because the reference
# plugins chained after us (Debian 12's portmap, plugins 1.1.1) refuse 1.1.0 with
# "incompatible CNI versions".
CHAIN_VERSION = "1.0.0"


def conflist(name: str, subnets: list[str], *, bridge: str = DEFAULT_BRIDGE, cni_version: str = CHAIN_VERSION,
             ip_masq: bool = True, is_default_gateway: bool = True, mtu: int | None = None,
             data_dir: str = DEFAULT_DATA_DIR, agent_socket: str | None = None, portmap: bool = True,
             routes: list[str] | None = None) -> dict[str, Any]:
    """A conflist for one node's pod network: netplane first, then (optionally) portmap."""
    ipam: dict[str, Any] = {
        "type": BUILTIN_IPAM,
        "ranges": [[{"subnet": s}] for s in subnets],
        "dataDir": data_dir,
    }
    if routes:
        ipam["routes"] = [{"dst": r} for r in routes]
    plugin: dict[str, Any] = {
        "type": PLUGIN_TYPE,
        "bridge": bridge,
        "isGateway": True,
        "isDefaultGateway": is_default_gateway,
        "ipMasq": ip_masq,
        "hairpinMode": True,
        "ipam": ipam,
    }
    if mtu:
        plugin["mtu"] = mtu
    if agent_socket:
        plugin["agentSocket"] = agent_socket
    plugins: list[dict[str, Any]] = [plugin]
    if portmap:
        plugins.append({"type": "portmap", "capabilities": {"portMappings": True}, "snat": True})
    return {"cniVersion": cni_version, "name": name, "plugins": plugins}


def write_conflist(conf_dir: str, conf: dict[str, Any], priority: int = 10) -> str:
    os.makedirs(conf_dir, mode=0o755, exist_ok=True)
    path = os.path.join(conf_dir, f"{priority:02d}-{conf['name']}.conflist")
    _write_atomic(path, json.dumps(conf, indent=2) + "\n", 0o644)
    return path
