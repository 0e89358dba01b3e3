"""The node agent's settings (from `netplane node` flags), checked once at start-up."""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass, field

from netplane.node.cniconf import PLUGINS
from netplane.node.network import BACKEND_HOST_GW, BACKEND_VXLAN, BACKENDS

DEFAULT_CNI_BIN_DIRS = ("/opt/cni/bin", "/usr/lib/cni")
DEFAULT_CNI_CONF_DIR = "/etc/cni/net.d"
DEFAULT_STATE_DIR = "/var/lib/netplane/node"
DEFAULT_NETNS_PREFIX = "np-pod-"
DEFAULT_LOGS_PORT = 10250  # the kubelet's port: `netplane logs` asks the pod's node here


class ConfigError(ValueError):
    pass


_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h)?$")


def parse_duration(text: str) -> float:
    """'10s', '500ms', '2m', '1h' or plain seconds -> seconds."""
    m = _DURATION.match(text.strip())
    if not m:
        raise ConfigError(f"{text!r} is not a duration (e.g. 10s, 500ms, 2m)")
    value = float(m.group(1))
    return value * {"ms": 0.001, "s": 1, "m": 60, "h": 3600, None: 1}[m.group(2)]


@dataclass(frozen=True)
class AgentConfig:
    node_name: str
    address: str
    backend: str = BACKEND_VXLAN
    cni_bin_dirs: tuple[str, ...] = DEFAULT_CNI_BIN_DIRS
    cni_conf_dir: str = DEFAULT_CNI_CONF_DIR
    state_dir: str = DEFAULT_STATE_DIR
    heartbeat_interval: float = 10.0
    status_report_interval: float = 300.0
    lease_duration: int = 40
    cluster_cidr: str = "10.244.0.0/16"
    cni_plugin: str = "netplane"
    netns_prefix: str = DEFAULT_NETNS_PREFIX
    resync_interval: float = 30.0
    # Pod runtime
    run_pods: bool = True
    logs_port: int = DEFAULT_LOGS_PORT  # 0: do not serve logs over HTTP
    cluster_dns: str = "10.96.0.10"
    cluster_domain: str = "cluster.local"
    kubernetes_service: tuple[str, int] | None = ("10.96.0.1", 443)
    # Install the netplane plugin executables into the first CNI bin dir (netplane plugin only).
    install_cni: bool = True
    # Serve the netplane plugin's fast path on <state-dir>/cni.sock (netplane plugin only).
    cni_fast_path: bool = True
    # BPF host routing (netplane/node/fastpath.py): tc programs short-cut cross-node pod-to-pod
    # traffic past the bridge, IP forwarding and netfilter. host-gw only; off by default.
    bpf_host_routing: bool = False
    extra: dict[str, str] = field(default_factory=dict)

    def check(self) -> None:
        if not self.node_name or len(self.node_name) > 253:
            raise ConfigError("--node-name must be a non-empty DNS name")
        try:
            ipaddress.ip_address(self.address)
        except ValueError as e:
            raise ConfigError(f"--address: {e}") from None
        if self.backend not in BACKENDS:
            raise ConfigError(f"--backend must be one of {', '.join(BACKENDS)}")
        if self.bpf_host_routing and self.backend != BACKEND_HOST_GW:
            raise ConfigError(f"--bpf-host-routing works with --backend {BACKEND_HOST_GW} only, not "
                              f"{self.backend} (its programs route to the underlay, not into the overlay)")
        if self.cni_plugin not in PLUGINS:
            raise ConfigError(f"--cni-plugin must be one of {', '.join(PLUGINS)}")
        try:
            ipaddress.ip_network(self.cluster_cidr, strict=True)
        except ValueError as e:
            raise ConfigError(f"--cluster-cidr: {e}") from None
        if self.heartbeat_interval <= 0:
            raise ConfigError("--heartbeat-interval must be positive")
        if not self.cni_bin_dirs:
            raise ConfigError("--cni-bin-dir must name at least one directory")
        if len(self.netns_prefix) > 40 or "/" in self.netns_prefix:
            raise ConfigError("--netns-prefix must be short and contain no '/'")

    @property
    def ipam_dir(self) -> str:
        return os.path.join(self.state_dir, "ipam")

    @property
    def pods_dir(self) -> str:
        return os.path.join(self.state_dir, "pods")

    @property
    def cni_cache_dir(self) -> str:
        return os.path.join(self.state_dir, "cni-cache")

    @property
    def cni_path(self) -> str:
        return ":".join(self.cni_bin_dirs)
