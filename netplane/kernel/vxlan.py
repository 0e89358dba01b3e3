"""The VXLAN overlay device and its static forwarding entries, in the manner of flannel's vxlan backend.

One device per node (VNI 1, UDP 8472, learning off, local = the node's address).
For each remote node the agent installs:

- a permanent neighbour entry: remote VXLAN gateway address (first address of
  its pod CIDR) -> the remote VTEP's MAC, so the kernel never ARPs over the overlay;
- an FDB entry on the device: that MAC -> the remote node's underlay address,
  which tells the device where to send the encapsulated frame;
- (in routes.py) a route to the remote pod CIDR via the gateway address, onlink.

Entries are converged as whole sets per device: anything on our device that is
not wanted is removed, so a removed or readdressed node leaves nothing behind.
An existing device with the right parameters is adopted as it is (its MAC is
what the other nodes already know), so restarting the agent disturbs no traffic.

pyroute2's synchronous API runs its own event loop: use these from a worker thread.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

NUD_PERMANENT = 0x80
NTF_SELF = 0x02
VXLAN_OVERHEAD = 50  # outer IPv4 (20) + UDP (8) + VXLAN (8) + inner Ethernet (14)


class VxlanError(Exception):
    pass


@dataclass(frozen=True, slots=True)
class VxlanConfig:
    name: str
    local: str
    vni: int = 1
    port: int = 8472
    underlay_dev: str | None = None  # the device holding `local`; its MTU sets ours
    mtu: int | None = None  # None: the underlay's MTU minus the VXLAN overhead


@dataclass(frozen=True, slots=True)
class VtepInfo:
    index: int
    name: str
    mac: str
    mtu: int


@dataclass(frozen=True, slots=True, order=True)
class Neighbour:
    ip: str
    mac: str


@dataclass(frozen=True, slots=True, order=True)
class FdbEntry:
    mac: str
    dst: str


@dataclass(frozen=True, slots=True)
class SetChanges:
    added: tuple[Any, ...] = ()
    removed: tuple[Any, ...] = ()


def plan(current: Iterable[Any], desired: Iterable[Any]) -> SetChanges:
    """Entries to remove and to add so `current` becomes `desired` (pure)."""
    cur, want = set(current), set(desired)
    return SetChanges(tuple(sorted(want - cur)), tuple(sorted(cur - want)))


def _linkinfo_data(msg: Any) -> dict[str, Any]:
    info = msg.get_attr("IFLA_LINKINFO")
    if info is None or info.get_attr("IFLA_INFO_KIND") != "vxlan":
        return {}
    data = info.get_attr("IFLA_INFO_DATA")
    if data is None:
        return {}
    return {name: value for name, value in data["attrs"]}


@dataclass
class VxlanDevice:
    """Netlink access to one namespace (the current one when netns_path is None) for the overlay."""

    netns_path: str | None = None
    _ipr: Any = field(default=None, init=False, repr=False)

    def __enter__(self) -> VxlanDevice:
        from pyroute2 import IPRoute

        from netplane.kernel import netns

        self._ipr = IPRoute(use_socket=netns.netlink_socket(self.netns_path))
        return self

    def __exit__(self, *exc: object) -> None:
        if self._ipr is not None:
            self._ipr.close()
            self._ipr = None

    def _lookup(self, name: str) -> Any | None:
        found = self._ipr.link_lookup(ifname=name)
        if not found:
            return None
        return self._ipr.link("get", index=found[0])[0]

    def index_of(self, name: str) -> int | None:
        found = self._ipr.link_lookup(ifname=name)
        return int(found[0]) if found else None

    def _underlay_mtu(self, cfg: VxlanConfig) -> tuple[int | None, int]:
        """(ifindex, MTU) of the underlay device: the named one, else the one holding cfg.local."""
        if cfg.underlay_dev:
            msg = self._lookup(cfg.underlay_dev)
            if msg is None:
                raise VxlanError(f"no underlay device {cfg.underlay_dev!r}")
            return msg["index"], int(msg.get_attr("IFLA_MTU"))
        for a in self._ipr.get_addr(family=socket.AF_INET):
            if a.get_attr("IFA_ADDRESS") == cfg.local:
                msg = self._ipr.link("get", index=a["index"])[0]
                return a["index"], int(msg.get_attr("IFLA_MTU"))
        return None, 1500

    def ensure(self, cfg: VxlanConfig) -> VtepInfo:
        """The device, created if missing, recreated if its VNI/port/local differ; up with the right MTU."""
        from pyroute2.netlink.exceptions import NetlinkError

        link_index, underlay_mtu = self._underlay_mtu(cfg)
        mtu = cfg.mtu or underlay_mtu - VXLAN_OVERHEAD
        msg = self._lookup(cfg.name)
        if msg is not None:
            data = _linkinfo_data(msg)
            if (data.get("IFLA_VXLAN_ID") != cfg.vni or data.get("IFLA_VXLAN_PORT") != cfg.port
                    or data.get("IFLA_VXLAN_LOCAL") != cfg.local):
                # Another config (or another device by that name): flannel deletes and recreates too.
                self._ipr.link("del", index=msg["index"])
                msg = None
        try:
            if msg is None:
                kw: dict[str, Any] = {"ifname": cfg.name, "kind": "vxlan", "vxlan_id": cfg.vni,
                                      "vxlan_local": cfg.local, "vxlan_port": cfg.port, "vxlan_learning": 0,
                                      "mtu": mtu}
                if link_index is not None:
                    kw["vxlan_link"] = link_index
                self._ipr.link("add", **kw)
                msg = self._lookup(cfg.name)
                if msg is None:
                    raise VxlanError(f"vxlan device {cfg.name!r} vanished after creation")
            if int(msg.get_attr("IFLA_MTU")) != mtu:
                self._ipr.link("set", index=msg["index"], mtu=mtu)
            if not msg["flags"] & 1:
                self._ipr.link("set", index=msg["index"], state="up")
        except NetlinkError as e:
            raise VxlanError(f"cannot set up vxlan device {cfg.name!r}: {e}") from e
        msg = self._lookup(cfg.name)
        assert msg is not None
        return VtepInfo(msg["index"], cfg.name, str(msg.get_attr("IFLA_ADDRESS")), int(msg.get_attr("IFLA_MTU")))

    def delete(self, name: str) -> bool:
        msg = self._lookup(name)
        if msg is None or not _linkinfo_data(msg):
            return False
        self._ipr.link("del", index=msg["index"])
        return True

    def ensure_only_address(self, index: int, address: str) -> None:
        """Exactly this one address (CIDR text) on our device, as flannel gives flannel.1 its x.y.z.0/32."""
        from pyroute2.netlink.exceptions import NetlinkError

        want = ipaddress.ip_interface(address)
        present = [(a.get_attr("IFA_ADDRESS"), a["prefixlen"]) for a in self._ipr.get_addr(index=index)
                   if a["family"] == socket.AF_INET]
        try:
            for ip, plen in present:
                if ipaddress.ip_interface(f"{ip}/{plen}") != want:
                    self._ipr.addr("del", index=index, address=ip, prefixlen=plen)
            if (str(want.ip), want.network.prefixlen) not in present:
                self._ipr.addr("add", index=index, address=str(want.ip), prefixlen=want.network.prefixlen)
        except NetlinkError as e:
            if e.code != errno.EEXIST:
                raise VxlanError(f"cannot set address {address} on link {index}: {e}") from e

    # -- neighbours ----------------------------------------------------------

    def neighbours(self, index: int) -> set[Neighbour]:
        out = set()
        for n in self._ipr.get_neighbours(family=socket.AF_INET, ifindex=index):
            if n["state"] & NUD_PERMANENT and n.get_attr("NDA_LLADDR"):
                out.add(Neighbour(str(n.get_attr("NDA_DST")), str(n.get_attr("NDA_LLADDR"))))
        return out

    def sync_neighbours(self, index: int, desired: Iterable[Neighbour]) -> SetChanges:
        from pyroute2.netlink.exceptions import NetlinkError

        changes = plan(self.neighbours(index), desired)
        want_ips = {n.ip for n in changes.added}
        try:
            for n in changes.removed:
                if n.ip in want_ips:
                    continue  # replaced below in one step
                try:
                    self._ipr.neigh("del", dst=n.ip, lladdr=n.mac, ifindex=index)
                except NetlinkError as e:
                    if e.code not in (errno.ENOENT, errno.ESRCH):
                        raise
            for n in changes.added:
                self._ipr.neigh("replace", dst=n.ip, lladdr=n.mac, ifindex=index, state=NUD_PERMANENT)
        except NetlinkError as e:
            raise VxlanError(f"cannot sync neighbours on link {index}: {e}") from e
        return changes

    # -- fdb -----------------------------------------------------------------

    def fdb(self, index: int) -> set[FdbEntry]:
        out = set()
        for n in self._ipr.fdb("dump", ifindex=index):
            if n["ifindex"] != index:
                continue
            dst, mac = n.get_attr("NDA_DST"), n.get_attr("NDA_LLADDR")
            if dst and mac:
                out.add(FdbEntry(str(mac), str(dst)))
        return out

    def sync_fdb(self, index: int, desired: Iterable[FdbEntry]) -> SetChanges:
        from pyroute2.netlink.exceptions import NetlinkError

        changes = plan(self.fdb(index), desired)
        try:
            for f in changes.removed:
                try:
                    self._ipr.fdb("del", ifindex=index, lladdr=f.mac, dst=f.dst, state=NUD_PERMANENT, flags=NTF_SELF)
                except NetlinkError as e:
                    if e.code not in (errno.ENOENT, errno.ESRCH):
                        raise
            for f in changes.added:
                self._ipr.fdb("append", ifindex=index, lladdr=f.mac, dst=f.dst, state=NUD_PERMANENT,
                              flags=NTF_SELF)
        except NetlinkError as e:
            raise VxlanError(f"cannot sync FDB on link {index}: {e}") from e
        return changes
