"""Pure desired state of a node's pod network: routes, neighbours and FDB entries from the Node list.

host-gw: a route to each remote node's pod CIDR via that node's InternalIP (the
nodes must share an L2 segment, as with flannel's host-gw).

vxlan (flannel's scheme): for each remote node that has published its VTEP MAC,
a route to its pod CIDR via its VXLAN gateway address (the first address of the
CIDR, e.g. 10.244.1.0) onlink on our VXLAN device, a permanent neighbour entry
gateway -> VTEP MAC and an FDB entry VTEP MAC -> the node's underlay address.

A node without a pod CIDR, an InternalIP or (for vxlan) a VTEP MAC is skipped
until it has them; the skip is reported so a human can see why a node is not
reachable. Our own node never gets a route (its pods are on the local bridge).
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from netplane.kernel.routes import Route
from netplane.kernel.vxlan import FdbEntry, Neighbour

BACKEND_HOST_GW = "host-gw"
BACKEND_VXLAN = "vxlan"
BACKENDS = (BACKEND_HOST_GW, BACKEND_VXLAN)

VXLAN_DEVICE = "np.vxlan"
VXLAN_VNI = 1
VXLAN_PORT = 8472
VXLAN_POD_MTU = 1450

# Published on our Node object, in the manner of flannel's flannel.alpha.coreos.com/* annotations.
ANNOTATION_BACKEND = "netplane.io/backend-type"
ANNOTATION_BACKEND_DATA = "netplane.io/backend-data"  # JSON {"VtepMAC": "..."}
ANNOTATION_PUBLIC_IP = "netplane.io/public-ip"


@dataclass(frozen=True, slots=True)
class NodeNet:
    """The networking facts of one Node object."""

    name: str
    address: str | None  # InternalIP, else the public-ip annotation
    pod_cidr: str | None
    vtep_mac: str | None = None
    backend: str | None = None


@dataclass(frozen=True, slots=True)
class DesiredNetwork:
    routes: frozenset[Route] = frozenset()
    neighbours: frozenset[Neighbour] = frozenset()
    fdb: frozenset[FdbEntry] = frozenset()
    # (node name, why) for remote nodes that get no route yet.
    skipped: tuple[tuple[str, str], ...] = field(default=())


def internal_ip(node: Mapping[str, Any]) -> str | None:
    for addr in (node.get("status") or {}).get("addresses") or []:
        if isinstance(addr, dict) and addr.get("type") == "InternalIP" and addr.get("address"):
            return str(addr["address"])
    return None


def vtep_mac_of(annotations: Mapping[str, Any]) -> str | None:
    raw = annotations.get(ANNOTATION_BACKEND_DATA)
    if not isinstance(raw, str):
        return None
    try:
        data = json.loads(raw)
    except ValueError:
        return None
    mac = data.get("VtepMAC") if isinstance(data, dict) else None
    return str(mac).lower() if isinstance(mac, str) and mac else None


def node_net(node: Mapping[str, Any]) -> NodeNet:
    meta = node.get("metadata") or {}
    annotations = meta.get("annotations") or {}
    spec = node.get("spec") or {}
    address = internal_ip(node) or annotations.get(ANNOTATION_PUBLIC_IP) or None
    cidr = spec.get("podCIDR") or next(iter(spec.get("podCIDRs") or []), None)
    return NodeNet(
        name=str(meta.get("name") or ""),
        address=str(address) if address else None,
        pod_cidr=str(cidr) if cidr else None,
        vtep_mac=vtep_mac_of(annotations),
        backend=annotations.get(ANNOTATION_BACKEND),
    )


def vxlan_gateway(pod_cidr: str) -> str:
    """The address standing for a node on the overlay: its pod CIDR's network address (flannel's choice)."""
    return str(ipaddress.ip_network(pod_cidr, strict=False).network_address)


def _valid(n: NodeNet) -> str | None:
    """Why a remote node cannot be routed to, or None."""
    if not n.pod_cidr:
        return "no podCIDR"
    if not n.address:
        return "no InternalIP"
    try:
        ipaddress.ip_network(n.pod_cidr, strict=True)
        ipaddress.ip_address(n.address)
    except ValueError as e:
        return f"invalid address or podCIDR: {e}"
    return None


def desired_network(me: str, backend: str, nodes: Iterable[Mapping[str, Any]],
                    vxlan_device: str = VXLAN_DEVICE) -> DesiredNetwork:
    """What the kernel of node `me` should hold for `backend`, given every Node object."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r} (choose from {', '.join(BACKENDS)})")
    routes: set[Route] = set()
    neighbours: set[Neighbour] = set()
    fdb: set[FdbEntry] = set()
    skipped: list[tuple[str, str]] = []
    mine = [node_net(n) for n in nodes]
    own_cidr = next((n.pod_cidr for n in mine if n.name == me), None)
    for n in sorted(mine, key=lambda n: n.name):
        if n.name == me:
            continue
        why = _valid(n)
        if why is None and n.pod_cidr == own_cidr:
            why = f"its podCIDR {n.pod_cidr} is ours"
        if why is None and backend == BACKEND_VXLAN and not n.vtep_mac:
            why = "no VTEP MAC published yet"
        if why is not None:
            skipped.append((n.name, why))
            continue
        assert n.pod_cidr is not None and n.address is not None
        if backend == BACKEND_HOST_GW:
            routes.add(Route(n.pod_cidr, n.address))
        else:
            assert n.vtep_mac is not None
            gw = vxlan_gateway(n.pod_cidr)
            routes.add(Route(n.pod_cidr, gw, vxlan_device, onlink=True))
            neighbours.add(Neighbour(gw, n.vtep_mac))
            fdb.add(FdbEntry(n.vtep_mac, n.address))
    return DesiredNetwork(frozenset(routes), frozenset(neighbours), frozenset(fdb), tuple(skipped))


def backend_annotations(backend: str, address: str, vtep_mac: str | None) -> dict[str, str]:
    """The annotations our Node carries so that other nodes can reach us."""
    out = {ANNOTATION_BACKEND: backend, ANNOTATION_PUBLIC_IP: address}
    if backend == BACKEND_VXLAN and vtep_mac:
        out[ANNOTATION_BACKEND_DATA] = json.dumps({"VtepMAC": vtep_mac}, separators=(",", ":"))
    return out


def masquerade_rules(cluster_cidr: str, table: str = "netplane_node") -> str:
    """One nft transaction: masquerade pod traffic leaving the cluster CIDR (flannel's ipMasq rules).

    Traffic between pods (any node) keeps its source, so receivers see the sender's pod IP;
    multicast is left alone. The table is replaced as a whole, atomically.
    """
    net = ipaddress.ip_network(cluster_cidr, strict=True)
    fam = "ip" if net.version == 4 else "ip6"
    mcast = "224.0.0.0/4" if net.version == 4 else "ff00::/8"
    t = f"{fam} {table}"
    return "\n".join([
        f"add table {t}",
        f"flush table {t}",
        # Numeric priority: srcnat (100); nft 1.0.6 is picky about named priorities on some hooks.
        f"add chain {t} postrouting {{ type nat hook postrouting priority 100; policy accept; }}",
        f"add rule {t} postrouting {fam} saddr {net} {fam} daddr {net} return",
        f"add rule {t} postrouting {fam} saddr {net} {fam} daddr {mcast} return",
        f"add rule {t} postrouting {fam} saddr {net} masquerade",
    ]) + "\n"
