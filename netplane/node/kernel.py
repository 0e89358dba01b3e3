"""The node agent's kernel seam: a Protocol the agent talks to, and the Linux implementation.

The agent computes desired state purely (network.py) and hands it here whole.
`LinuxNodeKernel` works on the namespace the process runs in (the agent is
started inside its node's netns) through netplane.kernel; tests of the agent's
logic use a fake with the same methods.
"""

from __future__ import annotations

import logging
from typing import Protocol

from netplane.kernel import routes as kroutes
from netplane.kernel import vxlan as kvxlan
from netplane.kernel.nftables import Nft
from netplane.kernel.sysctl import Sysctl
from netplane.node.network import DesiredNetwork

log = logging.getLogger(__name__)


class NodeKernel(Protocol):
    def enable_forwarding(self) -> None: ...

    def ensure_vtep(self, cfg: kvxlan.VxlanConfig, gateway_cidr: str) -> kvxlan.VtepInfo: ...

    def remove_vtep(self, name: str) -> bool: ...

    def sync_network(self, desired: DesiredNetwork, vxlan_device: str | None) -> list[str]: ...

    def apply_masquerade(self, nft_text: str) -> None: ...


class LinuxNodeKernel:
    """Synchronous (pyroute2 runs its own event loop): call from one worker thread."""

    def enable_forwarding(self) -> None:
        Sysctl().write("net.ipv4.ip_forward", "1")

    def ensure_vtep(self, cfg: kvxlan.VxlanConfig, gateway_cidr: str) -> kvxlan.VtepInfo:
        with kvxlan.VxlanDevice() as dev:
            info = dev.ensure(cfg)
            dev.ensure_only_address(info.index, gateway_cidr)
            return info

    def remove_vtep(self, name: str) -> bool:
        with kvxlan.VxlanDevice() as dev:
            return dev.delete(name)

    def sync_network(self, desired: DesiredNetwork, vxlan_device: str | None) -> list[str]:
        """Neighbours and FDB first (so a new route never points at an unresolved gateway), then routes."""
        done: list[str] = []
        if vxlan_device is not None:
            with kvxlan.VxlanDevice() as dev:
                index = dev.index_of(vxlan_device)
                if index is None:
                    raise kvxlan.VxlanError(f"vxlan device {vxlan_device!r} is missing")
                n = dev.sync_neighbours(index, desired.neighbours)
                f = dev.sync_fdb(index, desired.fdb)
                done += [f"neigh+ {x.ip}={x.mac}" for x in n.added] + [f"neigh- {x.ip}" for x in n.removed]
                done += [f"fdb+ {x.mac}->{x.dst}" for x in f.added] + [f"fdb- {x.mac}->{x.dst}" for x in f.removed]
        r = kroutes.sync_routes(desired.routes)
        done += [f"route+ {x.dst} via {x.gateway}" for x in r.added] + [f"route- {x.dst}" for x in r.removed]
        return done

    def apply_masquerade(self, nft_text: str) -> None:
        Nft().apply(nft_text)
