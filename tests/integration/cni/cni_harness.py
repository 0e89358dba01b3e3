"""Run the installed netplane CNI executable exactly as a runtime does, inside throwaway namespaces.

Even the "host" is a network namespace (prefix np-cni-), so nothing here touches
the machine's own network; everything made is removed afterwards, on failure too.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[3]
VENV_BIN = REPO / ".venv" / "bin"
REFERENCE_DIR = "/usr/lib/cni"
_counter = itertools.count()


def can_run() -> str:
    """'' if these tests can run here, else why not."""
    if os.geteuid() != 0:
        return "needs root"
    for tool in ("ip", "nsenter", "nft"):
        if shutil.which(tool) is None:
            return f"needs {tool}"
    return ""


def sh(*cmd: str, check: bool = True, timeout: float = 60, **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(cmd), check=check, capture_output=True, text=True, timeout=timeout, **kw)


def unique(prefix: str = "np-cni") -> str:
    return f"{prefix}-{os.getpid() % 100000}-{next(_counter)}"


class Netns:
    """A named network namespace that is deleted when closed."""

    def __init__(self, name: str | None = None) -> None:
        self.name = name or unique()
        sh("ip", "netns", "add", self.name)
        self.path = f"/run/netns/{self.name}"
        sh("ip", "-n", self.name, "link", "set", "lo", "up")

    def ip(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return sh("ip", "-n", self.name, *args, check=check)

    def ipj(self, *args: str) -> Any:
        out = sh("ip", "-n", self.name, "-j", "-d", *args).stdout
        return json.loads(out) if out.strip() else []

    def run(self, *cmd: str, check: bool = True, timeout: float = 60, **kw: Any) -> subprocess.CompletedProcess[str]:
        return sh("nsenter", f"--net={self.path}", *cmd, check=check, timeout=timeout, **kw)

    def links(self) -> dict[str, Any]:
        return {link["ifname"]: link for link in self.ipj("link", "show")}

    def addrs(self, dev: str) -> list[str]:
        out: list[str] = []
        for link in self.ipj("addr", "show", "dev", dev):
            out.extend(f"{a['local']}/{a['prefixlen']}" for a in link.get("addr_info", [])
                       if a.get("scope") != "link")
        return out

    def routes(self) -> list[dict[str, Any]]:
        return self.ipj("route", "show")

    def close(self) -> None:
        sh("ip", "netns", "del", self.name, check=False)


@dataclass
class Outcome:
    code: int
    out: dict[str, Any] | None
    stderr: str

    @property
    def error_code(self) -> int | None:
        return self.out.get("code") if self.out and self.code != 0 else None


@dataclass
class Plugin:
    """One installed bin dir and a way to exec plugins from it as a runtime does."""

    bin_dir: Path
    data_dir: Path
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def cni_path(self) -> str:
        return f"{self.bin_dir}:{REFERENCE_DIR}"

    def exec(self, host: Netns, command: str, conf: dict[str, Any], *, container_id: str = "",
             netns: str = "", ifname: str = "eth0", plugin: str | None = None, env: dict[str, str] | None = None,
             timeout: float = 60) -> Outcome:
        plugin_type = plugin or conf.get("type", "netplane")
        directory = self.bin_dir if plugin_type.startswith("netplane") else Path(REFERENCE_DIR)
        full_env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), "CNI_COMMAND": command,
                    "CNI_PATH": self.cni_path, "NETPLANE_CNI_SOCKET": "",
                    "XTABLES_LOCKFILE": str(self.data_dir / "xtables.lock")}
        if container_id:
            full_env["CNI_CONTAINERID"] = container_id
        if netns:
            full_env["CNI_NETNS"] = netns
        if ifname:
            full_env["CNI_IFNAME"] = ifname
        full_env.update(self.extra_env)
        full_env.update(env or {})
        proc = subprocess.run(["nsenter", f"--net={host.path}", str(directory / plugin_type)],
                              input=json.dumps(conf).encode(), capture_output=True, env=full_env, timeout=timeout)
        out = json.loads(proc.stdout) if proc.stdout.strip() else None
        return Outcome(proc.returncode, out, proc.stderr.decode(errors="replace"))


def install(bin_dir: Path) -> None:
    sh(str(VENV_BIN / "netplane"), "cni", "install", "--bin-dir", str(bin_dir))


def bridge_conf(name: str, data_dir: Path, *, subnet: str = "10.77.0.0/24", bridge: str = "np-br0",
                version: str = "1.0.0", **over: Any) -> dict[str, Any]:
    conf: dict[str, Any] = {
        "cniVersion": version, "name": name, "type": "netplane", "bridge": bridge,
        "isGateway": True, "isDefaultGateway": True, "ipMasq": True, "hairpinMode": True,
        "ipam": {"type": "netplane-ipam", "subnet": subnet, "dataDir": str(data_dir)},
    }
    conf.update(over)
    return conf


def with_prev(conf: dict[str, Any], prev: dict[str, Any] | None) -> dict[str, Any]:
    return {**conf, "prevResult": prev}


def wait_for(pred: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    pause = 0.01
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(pause)
        pause = min(pause * 2, 0.2)


def ip_files(data_dir: Path, network: str) -> dict[str, str]:
    d = data_dir / network
    if not d.exists():
        return {}
    return {p.name: p.read_bytes().decode() for p in d.iterdir() if p.name[0].isdigit() or ":" in p.name}


def masq_ips(host: Netns) -> set[str]:
    proc = host.run("nft", "-j", "list", "table", "inet", "netplane_cni", check=False)
    if proc.returncode != 0:
        return set()
    out = set()
    for item in json.loads(proc.stdout)["nftables"]:
        m = item.get("map")
        if m:
            for key, _verdict in m.get("elem", []):
                out.add(key["elem"]["val"] if isinstance(key, dict) else key)
    return out


def host_veths(host: Netns) -> list[str]:
    return [n for n, link in host.links().items() if link.get("linkinfo", {}).get("info_kind") == "veth"]


def snapshot(ns: Netns) -> dict[str, Any]:
    """The stable part of a namespace's network state (no timers, no carrier transitions)."""
    links = {}
    for name, link in ns.links().items():
        info = link.get("linkinfo", {})
        links[name] = (info.get("info_kind"), link.get("master"), link["mtu"], "UP" in link["flags"],
                       link.get("address"), info.get("info_slave_data", {}).get("hairpin"))
    addrs = sorted((a["ifname"], i["local"], i["prefixlen"]) for a in ns.ipj("addr", "show")
                   for i in a.get("addr_info", []) if i.get("scope") != "link")
    routes = sorted(json.dumps(r, sort_keys=True) for r in ns.routes())
    return {"links": links, "addrs": addrs, "routes": routes}


class Server:
    """`netplane cni serve` running inside the host namespace (the fast path's far end)."""

    def __init__(self, host: Netns, socket_path: Path, log_path: Path) -> None:
        self.socket_path = socket_path
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        # nsenter execs the server itself, so the PID we hold is the server's.
        self.proc = subprocess.Popen(
            ["nsenter", f"--net={host.path}", str(VENV_BIN / "netplane"), "cni", "serve",
             "--socket", str(socket_path)], stdout=self._log, stderr=subprocess.STDOUT)
        try:
            wait_for(lambda: socket_path.is_socket() or self.proc.poll() is not None, 20, "the CNI server socket")
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {log_path.read_text()}")
        except BaseException:
            self.stop()
            raise

    def served(self, command: str) -> int:
        return self.log_path.read_text().count(f"event=served command={command} ")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._log.close()
