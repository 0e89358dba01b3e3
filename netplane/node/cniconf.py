"""The node's CNI network configuration (a conflist): rendered purely, written atomically.

Two plugin flavours with the same keys (the netplane plugin follows the reference
bridge plugin's configuration):

- ``netplane``: ``{"type": "netplane", ... "ipam": {"type": "netplane-ipam"}}``
- ``bridge``: the reference plugins, ``bridge`` + ``host-local`` (Debian's containernetworking-plugins)

then ``portmap`` for hostPort mappings, as kubeadm-era flannel conflists do.

``ipMasq`` is off in the conflist on purpose: the plugin's masquerade would NAT
everything leaving the node's /24, including traffic to pods on other nodes. The
agent masquerades only traffic leaving the cluster CIDR (see network.masquerade_rules),
so pod-to-pod traffic across nodes keeps its source address.

The IPAM dataDir lives under the agent's state dir: lab nodes share one filesystem,
and host-local's default /var/lib/cni/networks/<name> would mix their files.
"""

from __future__ import annotations

import ipaddress
import json
import os
import tempfile
from typing import Any

PLUGIN_NETPLANE = "netplane"
PLUGIN_BRIDGE = "bridge"
PLUGINS = (PLUGIN_NETPLANE, PLUGIN_BRIDGE)
IPAM_FOR = {PLUGIN_NETPLANE: "netplane-ipam", PLUGIN_BRIDGE: "host-local"}

NETWORK_NAME = "netplane"
BRIDGE_NAME = "cni0"
CNI_VERSION = "1.0.0"  # podman's and containerd's common ground; both plugin flavours speak it
CONFLIST_FILE = "10-netplane.conflist"


def render_conflist(pod_cidr: str, *, plugin: str = PLUGIN_NETPLANE, mtu: int | None = None,
                    ipam_data_dir: str | None = None, bridge: str = BRIDGE_NAME, name: str = NETWORK_NAME,
                    agent_socket: str | None = None, portmap: bool = True,
                    cni_version: str = CNI_VERSION) -> dict[str, Any]:
    """The conflist for a node whose pods take addresses from `pod_cidr`."""
    if plugin not in PLUGINS:
        raise ValueError(f"unknown CNI plugin {plugin!r} (choose from {', '.join(PLUGINS)})")
    subnet = ipaddress.ip_network(pod_cidr, strict=True)
    ipam: dict[str, Any] = {"type": IPAM_FOR[plugin], "ranges": [[{"subnet": str(subnet)}]]}
    if ipam_data_dir:
        ipam["dataDir"] = ipam_data_dir
    main: dict[str, Any] = {
        "type": plugin,
        "bridge": bridge,
        "isGateway": True,
        "isDefaultGateway": True,
        "ipMasq": False,
        "hairpinMode": True,  # a pod reaching itself through its Service (MACHINE-NOTES)
    }
    if mtu:
        main["mtu"] = mtu
    if agent_socket is not None and plugin == PLUGIN_NETPLANE:
        main["agentSocket"] = agent_socket
    main["ipam"] = ipam
    plugins: list[dict[str, Any]] = [main]
    if portmap:
        plugins.append({"type": "portmap", "capabilities": {"portMappings": True}, "snat": True})
    return {"cniVersion": cni_version, "name": name, "plugins": plugins}


def conflist_text(conf: dict[str, Any]) -> str:
    return json.dumps(conf, indent=2, sort_keys=False) + "\n"


def write_if_changed(path: str, text: str) -> bool:
    """Write atomically (a runtime may read it at any moment); False when the file already says this."""
    try:
        with open(path, encoding="utf-8") as f:
            if f.read() == text:
                return False
    except OSError:
        pass
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".netplane-", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return True
