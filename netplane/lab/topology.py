"""The lab's network layout, as data: which namespaces, links and addresses make a cluster.

Pure: `plan()` decides names and addresses; `setup_batch()` renders the `ip -batch`
commands that build it, so the whole topology is created by one `ip` process and
tested without root. Every name starts with the lab's prefix, which is how
`lab down` finds (and only finds) what a lab made, even after a crash.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

DEFAULT_PREFIX = "np-lab-"
UNDERLAY_CIDR = "192.168.50.0/24"
SERVICE_CIDR = "10.96.0.0/12"
CLUSTER_CIDR = "10.244.0.0/16"
API_PORT = 6443
MAX_NODES = 50


class TopologyError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Host:
    """One namespace on the underlay: the control plane, a node or the external client."""

    role: str  # "cp" | "node" | "ext"
    name: str  # short name: cp, n1, n2, ext
    netns: str
    address: str  # on the underlay
    underlay_port: str  # the veth end inside the underlay namespace (<= 15 chars)


@dataclass(frozen=True, slots=True)
class LabPlan:
    prefix: str
    underlay_netns: str
    gateway: str  # the underlay namespace's own address: every host's default route
    prefix_len: int
    control_plane: Host
    nodes: tuple[Host, ...]
    external: Host
    backend: str
    proxy_mode: str

    @property
    def hosts(self) -> tuple[Host, ...]:
        return (self.control_plane, *self.nodes, self.external)

    @property
    def api_url(self) -> str:
        return f"http://{self.control_plane.address}:{API_PORT}"

    def node(self, name: str) -> Host:
        for n in self.nodes:
            if n.name == name:
                return n
        raise TopologyError(f"no node {name!r} in this lab (nodes: {', '.join(n.name for n in self.nodes)})")

    @property
    def pod_netns_prefix(self) -> str:
        return f"{self.prefix}pod-"


def plan(nodes: int = 3, backend: str = "vxlan", proxy_mode: str = "iptables",
         prefix: str = DEFAULT_PREFIX) -> LabPlan:
    if not 1 <= nodes <= MAX_NODES:
        raise TopologyError(f"--nodes must be between 1 and {MAX_NODES}, not {nodes}")
    if backend not in ("vxlan", "host-gw"):
        raise TopologyError(f"--backend must be vxlan or host-gw, not {backend!r}")
    if proxy_mode not in ("iptables", "nftables"):
        raise TopologyError(f"--proxy-mode must be iptables or nftables, not {proxy_mode!r}")
    net = ipaddress.ip_network(UNDERLAY_CIDR)

    def host(role: str, name: str, offset: int) -> Host:
        return Host(role, name, f"{prefix}{name}", str(net[offset]), f"u-{name}")

    return LabPlan(
        prefix=prefix,
        underlay_netns=f"{prefix}underlay",
        gateway=str(net[1]),
        prefix_len=net.prefixlen,
        control_plane=host("cp", "cp", 10),
        nodes=tuple(host("node", f"n{i}", 10 + i) for i in range(1, nodes + 1)),
        external=host("ext", "ext", 200),
        backend=backend,
        proxy_mode=proxy_mode,
    )


def setup_batches(p: LabPlan) -> list[tuple[str | None, list[str]]]:
    """(namespace, `ip -batch` lines) in order: first the namespaces (None: run in the caller's
    namespace, where `netns add` only creates files), then the underlay, then each host."""
    ul = p.underlay_netns
    batches: list[tuple[str | None, list[str]]] = [
        (None, [f"netns add {ul}", *(f"netns add {h.netns}" for h in p.hosts)]),
    ]
    underlay = [
        "link set lo up",
        "link add br0 type bridge",
        f"addr add {p.gateway}/{p.prefix_len} dev br0",
        "link set br0 up",
    ]
    for h in p.hosts:
        # Each veth is created inside the underlay namespace, its peer moved straight into the host.
        underlay += [
            f"link add {h.underlay_port} type veth peer name eth0 netns {h.netns}",
            f"link set {h.underlay_port} master br0",
            f"link set {h.underlay_port} up",
        ]
    batches.append((ul, underlay))
    for h in p.hosts:
        batches.append((h.netns, [
            "link set lo up",
            f"addr add {h.address}/{p.prefix_len} dev eth0",
            "link set eth0 up",
            # A default route: nodes need one covering the service CIDR before DNAT (MACHINE-NOTES).
            f"route add default via {p.gateway}",
        ]))
    return batches


def sysctls(p: LabPlan) -> dict[str, dict[str, str]]:
    """Per-namespace sysctls the lab sets (namespace -> {key: value})."""
    node = {"net.ipv4.ip_forward": "1", "net.ipv4.conf.all.rp_filter": "0",
            "net.ipv4.conf.default.rp_filter": "0"}
    return {n.netns: dict(node) for n in p.nodes} | {p.underlay_netns: {"net.ipv4.ip_forward": "1"}}


def owns_netns(prefix: str, name: str) -> bool:
    return name.startswith(prefix)
