"""State server configuration, checked before anything starts."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass


class ConfigError(ValueError):
    pass


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
