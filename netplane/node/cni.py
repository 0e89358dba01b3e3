"""Invoke CNI plugins exactly as a container runtime does (libcni's behaviour, in Python).

- The network is the first ``*.conflist`` (else ``*.conf``/``*.json``, wrapped as a
  one-plugin list) in the conf dir, in lexical order, as kubelet/containerd pick it.
- Each plugin is an executable named by its ``type``, looked up in CNI_PATH (the
  ':'-separated bin dirs). It gets CNI_COMMAND, CNI_CONTAINERID, CNI_NETNS,
  CNI_IFNAME, CNI_PATH and CNI_ARGS (``IgnoreUnknown=1;K8S_POD_NAMESPACE=..;
  K8S_POD_NAME=..;K8S_POD_INFRA_CONTAINER_ID=..;K8S_POD_UID=..``) in its environment
  and on stdin the plugin's own config with ``name`` and ``cniVersion`` injected,
  ``runtimeConfig`` for the capabilities it declares, and ``prevResult``:
- ADD runs the plugins in order, each receiving the previous one's result;
  the final result is cached (like /var/lib/cni/results) together with the exact
  config it was made with.
- DEL runs them in reverse order with the cached result as prevResult, from the
  cached config (so a conflist changed since the ADD still deletes what was
  made); a missing cache still runs DEL with the current config. DEL of
  something already gone succeeds (the plugins' contract); the cache goes last.

A plugin's failure is its error JSON ``{code, msg, details}`` on stdout with a
non-zero exit; it becomes CNIInvokeError carrying them.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import json
import logging
import os
import tempfile
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

PLUGIN_TIMEOUT = 120.0
LOOPBACK_CONF: dict[str, Any] = {"cniVersion": "1.0.0", "name": "cni-loopback", "plugins": [{"type": "loopback"}]}


class CNIInvokeError(Exception):
    def __init__(self, message: str, code: int = 0, details: str = "") -> None:
        super().__init__(message + (f" ({details})" if details else ""))
        self.code = code
        self.msg = message
        self.details = details


@dataclass(frozen=True)
class Attachment:
    """Who a call is for: the pod sandbox and its interface."""

    container_id: str
    netns: str  # path, e.g. /run/netns/np-pod-1234abcd
    ifname: str = "eth0"
    pod_namespace: str = ""
    pod_name: str = ""
    pod_uid: str = ""
    capability_args: Mapping[str, Any] = field(default_factory=dict)  # e.g. {"portMappings": [...]}

    def cni_args(self) -> str:
        parts = ["IgnoreUnknown=1"]
        if self.pod_namespace:
            parts.append(f"K8S_POD_NAMESPACE={self.pod_namespace}")
        if self.pod_name:
            parts.append(f"K8S_POD_NAME={self.pod_name}")
        parts.append(f"K8S_POD_INFRA_CONTAINER_ID={self.container_id}")
        if self.pod_uid:
            parts.append(f"K8S_POD_UID={self.pod_uid}")
        return ";".join(parts)


def load_network(conf_dir: str) -> dict[str, Any] | None:
    """The network a runtime would use: first conflist by name, else a single .conf as a list."""
    try:
        names = sorted(os.listdir(conf_dir))
    except FileNotFoundError:
        return None
    for suffixes in ((".conflist",), (".conf", ".json")):
        for name in names:
            if not name.endswith(suffixes) or name.startswith("."):
                continue
            try:
                with open(os.path.join(conf_dir, name), encoding="utf-8") as f:
                    doc = json.load(f)
            except (OSError, ValueError):
                continue  # libcni skips unreadable files and looks on
            if not isinstance(doc, dict):
                continue
            if "plugins" not in doc:
                if not doc.get("type"):
                    continue
                doc = {"cniVersion": doc.get("cniVersion", "0.2.0"), "name": doc.get("name", ""), "plugins": [doc]}
            if isinstance(doc.get("plugins"), list) and doc["plugins"] and doc.get("name"):
                return doc
    return None


def plugin_config(net: Mapping[str, Any], plugin: Mapping[str, Any], prev_result: Mapping[str, Any] | None,
                  capability_args: Mapping[str, Any]) -> dict[str, Any]:
    """What one plugin reads on stdin (libcni's buildOneConfig + injectRuntimeConfig)."""
    conf = copy.deepcopy(dict(plugin))
    conf["name"] = net["name"]
    conf["cniVersion"] = net["cniVersion"]
    if prev_result is not None:
        conf["prevResult"] = copy.deepcopy(dict(prev_result))
    caps = plugin.get("capabilities") or {}
    runtime = {k: v for k, v in capability_args.items() if caps.get(k)}
    if runtime:
        conf["runtimeConfig"] = runtime
    return conf


def find_plugin(plugin_type: str, bin_dirs: Sequence[str]) -> str:
    if "/" in plugin_type or not plugin_type:
        raise CNIInvokeError(f"invalid plugin type {plugin_type!r}")
    for d in bin_dirs:
        path = os.path.join(d, plugin_type)
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    raise CNIInvokeError(f"failed to find plugin {plugin_type!r} in path {list(bin_dirs)}")


class CNIInvoker:
    def __init__(self, bin_dirs: Sequence[str], cache_dir: str, timeout: float = PLUGIN_TIMEOUT) -> None:
        self.bin_dirs = list(bin_dirs)
        self.cache_dir = cache_dir
        self.timeout = timeout
        # Called after every ADD and DEL that changed the result cache (e.g. the agent's BPF host
        # routing adds the new pod to its maps); a listener's failure is logged, never the call's.
        self.listeners: list[Callable[[], Awaitable[None]]] = []

    async def _notify(self) -> None:
        for listener in self.listeners:
            try:
                await listener()
            except Exception:
                log.exception("CNI listener failed")

    # -- exec ----------------------------------------------------------------

    async def exec_plugin(self, command: str, conf: Mapping[str, Any], att: Attachment) -> dict[str, Any]:
        path = find_plugin(str(conf.get("type", "")), self.bin_dirs)
        env = {
            "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
            "CNI_COMMAND": command,
            "CNI_CONTAINERID": att.container_id,
            "CNI_NETNS": att.netns,
            "CNI_IFNAME": att.ifname,
            "CNI_PATH": ":".join(self.bin_dirs),
            "CNI_ARGS": att.cni_args(),
        }
        proc = await asyncio.create_subprocess_exec(
            path, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, env=env)
        try:
            out, err = await asyncio.wait_for(proc.communicate(json.dumps(conf).encode()), self.timeout)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise CNIInvokeError(f"plugin {path} {command} timed out after {self.timeout:.0f}s") from None
        if proc.returncode != 0:
            try:
                doc = json.loads(out)
            except ValueError:
                doc = None
            if isinstance(doc, dict) and "msg" in doc:
                raise CNIInvokeError(f"plugin type={conf.get('type')!r} {command} failed: {doc.get('msg')}",
                                     int(doc.get("code") or 0), str(doc.get("details") or ""))
            raise CNIInvokeError(f"plugin type={conf.get('type')!r} {command} failed (exit {proc.returncode})",
                                 0, (err or out).decode(errors="replace").strip()[:500])
        if command != "ADD" or not out.strip():
            return {}
        try:
            result = json.loads(out)
        except ValueError as e:
            raise CNIInvokeError(f"plugin type={conf.get('type')!r} printed a result that is not JSON") from e
        if not isinstance(result, dict):
            raise CNIInvokeError(f"plugin type={conf.get('type')!r} printed a result that is not an object")
        return result

    # -- cache ---------------------------------------------------------------

    def _cache_path(self, net_name: str, att: Attachment) -> str:
        return os.path.join(self.cache_dir, f"{net_name}-{att.container_id}-{att.ifname}")

    def cached(self, net_name: str, att: Attachment) -> dict[str, Any] | None:
        return _read_cache_file(self._cache_path(net_name, att))

    def _write_cache(self, net: Mapping[str, Any], att: Attachment, result: Mapping[str, Any]) -> None:
        os.makedirs(self.cache_dir, exist_ok=True)
        doc = {
            "kind": "cniCacheV1", "containerId": att.container_id, "ifName": att.ifname,
            "networkName": net["name"], "cniArgs": att.cni_args(),
            "capabilityArgs": dict(att.capability_args),
            "config": base64.b64encode(json.dumps(net).encode()).decode(),
            "result": dict(result),
        }
        fd, tmp = tempfile.mkstemp(prefix=".cache-", dir=self.cache_dir)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(doc, f)
        os.replace(tmp, self._cache_path(str(net["name"]), att))

    def _drop_cache(self, net_name: str, att: Attachment) -> None:
        try:
            os.unlink(self._cache_path(net_name, att))
        except FileNotFoundError:
            pass

    # -- verbs -----------------------------------------------------------------

    async def add(self, net: Mapping[str, Any], att: Attachment) -> dict[str, Any]:
        """ADD through the chain; on failure, DEL what was done (as kubelet tears a failed sandbox down)."""
        prev: dict[str, Any] | None = None
        for plugin in net["plugins"]:
            conf = plugin_config(net, plugin, prev, att.capability_args)
            try:
                prev = await self.exec_plugin("ADD", conf, att)
            except CNIInvokeError:
                try:
                    await self._del_chain(net, att, prev)
                except CNIInvokeError:
                    pass
                raise
        result = prev or {}
        self._write_cache(net, att, result)
        await self._notify()
        return result

    async def delete(self, net: Mapping[str, Any] | None, att: Attachment, net_name: str | None = None) -> None:
        """DEL with the cached config and result when there are any, else with `net`."""
        name = net_name or (str(net["name"]) if net else "")
        cache = self.cached(name, att) if name else None
        prev = None
        use = net
        if cache is not None:
            prev = cache.get("result") or None
            try:
                use = json.loads(base64.b64decode(cache["config"]))
            except (KeyError, ValueError):
                use = net
        if use is None:
            return  # nothing was ever added with a config we know
        await self._del_chain(use, att, prev)
        self._drop_cache(str(use["name"]), att)
        await self._notify()

    async def _del_chain(self, net: Mapping[str, Any], att: Attachment, prev: Mapping[str, Any] | None) -> None:
        first_error: CNIInvokeError | None = None
        for plugin in reversed(net["plugins"]):
            conf = plugin_config(net, plugin, prev, att.capability_args)
            try:
                await self.exec_plugin("DEL", conf, att)
            except CNIInvokeError as e:
                first_error = first_error or e
        if first_error is not None:
            raise first_error


def result_ips(result: Mapping[str, Any]) -> list[str]:
    """Pod IPs from an ADD result (0.3.0+ `ips` list; 0.2.0 `ip4`/`ip6`), interface-less or container-side."""
    out: list[str] = []
    interfaces = result.get("interfaces") or []
    for ip in result.get("ips") or []:
        idx = ip.get("interface")
        if isinstance(idx, int) and 0 <= idx < len(interfaces) and not interfaces[idx].get("sandbox"):
            continue  # an address on a host-side interface is not the pod's
        addr = str(ip.get("address") or "").split("/")[0]
        if addr:
            out.append(addr)
    for key in ("ip4", "ip6"):
        v = result.get(key)
        if isinstance(v, dict) and v.get("ip"):
            out.append(str(v["ip"]).split("/")[0])
    # IPv4 first, as kubelet orders podIPs by the cluster's primary family.
    return sorted(dict.fromkeys(out), key=lambda a: ":" in a)


def read_cached_results(cache_dir: str) -> list[dict[str, Any]]:
    """Every ADD result in a result cache (what is attached now, as far as this invoker knows)."""
    out: list[dict[str, Any]] = []
    try:
        names = sorted(os.listdir(cache_dir))
    except FileNotFoundError:
        return out
    for name in names:
        if name.startswith("."):
            continue  # a cache file being written
        doc = _read_cache_file(os.path.join(cache_dir, name))
        result = doc.get("result") if doc is not None else None
        if isinstance(result, dict):
            out.append(result)
    return out


def _read_cache_file(path: str) -> dict[str, Any] | None:
    """One result cache file's document; None when it is missing or not a JSON object."""
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None
