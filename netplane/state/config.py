"""State server configuration, checked before anything starts."""

from __future__ import annotations

import ipaddress
import math
import re
from dataclasses import dataclass


class ConfigError(ValueError):
    pass


# The in-server controllers, by the names --controllers takes.
CONTROLLERS = ("endpointslice", "replicaset", "deployment", "scheduler", "nodelifecycle")


@dataclass(frozen=True, slots=True)
class ServerConfig:
    data_dir: str
    listen_host: str = "127.0.0.1"
    listen_port: int = 6443
    service_cidr: str = "10.96.0.0/12"
    cluster_cidr: str = "10.244.0.0/16"
    node_cidr_mask_size: int = 24
    node_port_range: str = "30000-32767"
    # How many change-log entries to keep for watch resume before compaction (etcd's
    # compaction keeps time; a count is simpler to reason about and to test).
    watch_history: int = 100000
    compaction_interval: float = 60.0
    endpointslice_delay: float = 0.01
    # Node lifecycle (kube-controller-manager's flags and defaults), in seconds.
    node_monitor_grace_period: float = 40.0
    pod_eviction_timeout: float = 300.0
    # kube-controller-manager's --controllers: "*" for all, "name" to enable, "-name" to disable.
    controllers: tuple[str, ...] = ("*",)

    def controller_enabled(self, name: str) -> bool:
        if f"-{name}" in self.controllers:
            return False
        return name in self.controllers or "*" in self.controllers

    def check(self) -> None:
        try:
            svc = ipaddress.ip_network(self.service_cidr, strict=True)
        except ValueError as e:
            raise ConfigError(f"--service-cidr {self.service_cidr!r} is not a valid CIDR: {e}") from e
        try:
            cluster = ipaddress.ip_network(self.cluster_cidr, strict=True)
        except ValueError as e:
            raise ConfigError(f"--cluster-cidr {self.cluster_cidr!r} is not a valid CIDR: {e}") from e
        if svc.version != 4 or cluster.version != 4:
            raise ConfigError("only IPv4 service and cluster CIDRs are supported")
        if svc.overlaps(cluster):
            raise ConfigError(
                f"--service-cidr {self.service_cidr} overlaps --cluster-cidr {self.cluster_cidr}:"
                " service IPs and pod IPs must not share addresses"
            )
        if svc.num_addresses < 4:
            raise ConfigError(f"--service-cidr {self.service_cidr} is too small")
        if not cluster.prefixlen <= self.node_cidr_mask_size <= 30:
            raise ConfigError(
                f"--node-cidr-mask-size {self.node_cidr_mask_size} must be between the cluster CIDR's"
                f" prefix ({cluster.prefixlen}) and 30"
            )
        self.node_ports()
        if self.node_monitor_grace_period <= 0:
            raise ConfigError("--node-monitor-grace-period must be greater than 0")
        if self.pod_eviction_timeout < 0:
            raise ConfigError("--pod-eviction-timeout must not be negative")
        unknown = [c for c in self.controllers if c.lstrip("-") not in (*CONTROLLERS, "*")]
        if unknown:
            raise ConfigError(f"--controllers: unknown controller {unknown[0]!r} (known: {', '.join(CONTROLLERS)})")

    def node_ports(self) -> tuple[int, int]:
        try:
            first_s, _, last_s = self.node_port_range.partition("-")
            first, last = int(first_s), int(last_s or first_s)
        except ValueError as e:
            raise ConfigError(f"--service-node-port-range {self.node_port_range!r} is not FIRST-LAST") from e
        if not 1 <= first <= last <= 65535:
            raise ConfigError(f"--service-node-port-range {self.node_port_range!r} is out of 1-65535")
        return first, last

    def kubernetes_service_ip(self) -> str:
        return str(ipaddress.ip_network(self.service_cidr)[1])


_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float:
    """Seconds in a Go duration ('40s', '5m', '1m30s', '500ms') or a plain number of seconds."""
    text = text.strip()
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        if not math.isfinite(seconds):
            raise ConfigError(f"{text!r} is not a duration")
        return seconds
    pos, total = 0, 0.0
    for m in _DURATION.finditer(text):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNIT_SECONDS[m.group(2)]
        pos = m.end()
    if pos != len(text) or not text:
        raise ConfigError(f"{text!r} is not a duration (e.g. 40s, 5m, 1m30s or a number of seconds)")
    return total
