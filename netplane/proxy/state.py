"""The proxy's desired state: node configuration plus the service and endpoint maps the renderers read."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from netplane.proxy.changes import EndpointsMap, ServicePortMap
from netplane.proxy.model import NamespacedName, ServicePort, ServicePortName
from netplane.proxy.selection import Selection, select_endpoints

MASQ_BIT = 14  # kube-proxy's default --iptables-masquerade-bit


@dataclass(frozen=True, slots=True)
class ProxyConfig:
    node_name: str
    cluster_cidr: str = "10.244.0.0/16"
    node_ips: tuple[str, ...] = ()
    masquerade_all: bool = False
    # CIDRs whose addresses accept NodePorts; () = every local address except loopback.
    nodeport_addresses: tuple[str, ...] = ()
    masq_bit: int = MASQ_BIT

    def __post_init__(self) -> None:
        ipaddress.ip_network(self.cluster_cidr, strict=False)  # fail early on a bad flag
        for cidr in self.nodeport_addresses:
            ipaddress.ip_network(cidr, strict=False)
        if not 0 <= self.masq_bit <= 31:
            raise ValueError(f"masquerade bit {self.masq_bit} is out of range 0..31")

    @property
    def masq_mark(self) -> str:
        return f"{1 << self.masq_bit:#x}"

    def nodeport_ips(self) -> tuple[str, ...] | None:
        """Node IPs that accept NodePorts, or None for "every local address except loopback"."""
        if not self.nodeport_addresses:
            return None
        nets = [ipaddress.ip_network(c, strict=False) for c in self.nodeport_addresses]
        if any(n.prefixlen == 0 for n in nets):
            return None
        return tuple(ip for ip in self.node_ips if any(ipaddress.ip_address(ip) in n for n in nets))


@dataclass(slots=True)
class ProxyState:
    config: ProxyConfig
    services: ServicePortMap = field(default_factory=ServicePortMap)
    endpoints: EndpointsMap = field(default_factory=dict)

    def selection(self, spn: ServicePortName) -> Selection:
        return select_endpoints(self.services[spn], self.endpoints.get(spn, ()), self.config.node_name)

    def ports_of(self, services: set[NamespacedName]) -> list[ServicePort]:
        return [self.services[spn] for spn in self.port_names(services)]

    def port_names(self, services: set[NamespacedName]) -> list[ServicePortName]:
        """The port names of these services, sorted; without a scan when `services` is indexed."""
        if isinstance(self.services, ServicePortMap):
            return self.services.ports_of(services)
        return sorted(spn for spn in self.services if spn.service in services)
