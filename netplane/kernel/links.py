"""Links, addresses and routes over netlink (pyroute2), for one namespace at a time.

A `Netlink` wraps one rtnetlink socket bound to one namespace (opened without a
fork, see netns.py) and is used by one thread. Methods named `ensure_*`
converge and are safe to repeat; `delete_*` treat "already gone" as success.
Errors come out as KernelError with the errno and the operation in the message.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
from dataclasses import dataclass
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from . import netns

IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

RT_SCOPE_UNIVERSE = 0
RT_SCOPE_LINK = 253
RT_TABLE_MAIN = 254
RTPROT_BOOT = 3


class KernelError(Exception):
    def __init__(self, err: int, msg: str) -> None:
        super().__init__(f"{msg}: {os.strerror(err) if err else 'failed'}")
        self.errno = err


@dataclass(frozen=True, slots=True)
class LinkInfo:
    index: int
    name: str
    kind: str
    mac: str
    mtu: int
    up: bool
    master: int | None
    alias: str
    hairpin: bool | None  # None when not a bridge port
    # For a veth: the peer's ifindex (in the peer's namespace) and whether it lives elsewhere.
    peer_index: int | None
    peer_elsewhere: bool


@dataclass(frozen=True, slots=True)
class RouteInfo:
    dst: IPNetwork
    gw: IPAddress | None
    oif: int | None
    scope: int
    proto: int
    table: int
    priority: int


def _link_info(msg: Any) -> LinkInfo:
    linkinfo = msg.get_attr("IFLA_LINKINFO")
    kind = ""
    hairpin: bool | None = None
    if linkinfo is not None:
        kind = linkinfo.get_attr("IFLA_INFO_KIND") or ""
        if linkinfo.get_attr("IFLA_INFO_SLAVE_KIND") == "bridge":
            slave = linkinfo.get_attr("IFLA_INFO_SLAVE_DATA")
            if slave is not None:
                hairpin = bool(slave.get_attr("IFLA_BRPORT_MODE"))
    link = msg.get_attr("IFLA_LINK")
    return LinkInfo(
        index=msg["index"],
        name=msg.get_attr("IFLA_IFNAME"),
        kind=kind,
        mac=(msg.get_attr("IFLA_ADDRESS") or ""),
        mtu=msg.get_attr("IFLA_MTU") or 0,
        up=bool(msg["flags"] & 1),
        master=msg.get_attr("IFLA_MASTER"),
        alias=msg.get_attr("IFLA_IFALIAS") or "",
        hairpin=hairpin,
        peer_index=link if kind == "veth" else None,
        peer_elsewhere=msg.get_attr("IFLA_LINK_NETNSID") is not None,
    )


def _err(e: NetlinkError) -> int:
    return int(e.code)


class Netlink:
    """rtnetlink in one namespace: the current one (netns_path None) or the one at netns_path.

    Raises FileNotFoundError if the namespace file is gone and netns.NetnsError if
    the path is not a network namespace.
    """

    def __init__(self, netns_path: str | int | None = None) -> None:
        self.netns_path = netns_path
        sock: socket.socket = netns.netlink_socket(netns_path)
        self._ipr = IPRoute(use_socket=sock)

    def close(self) -> None:
        self._ipr.close()

    def __enter__(self) -> Netlink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- links ---------------------------------------------------------------

    def link(self, name: str) -> LinkInfo | None:
        try:
            return _link_info(self._ipr.link("get", ifname=name)[0])
        except NetlinkError as e:
            if _err(e) in (errno.ENODEV, errno.ENOENT):
                return None
            raise KernelError(_err(e), f"cannot read link {name!r}") from e

    def link_by_index(self, index: int) -> LinkInfo | None:
        try:
            return _link_info(self._ipr.link("get", index=index)[0])
        except NetlinkError as e:
            if _err(e) in (errno.ENODEV, errno.ENOENT):
                return None
            raise KernelError(_err(e), f"cannot read link {index}") from e

    def links(self) -> list[LinkInfo]:
        return [_link_info(m) for m in self._ipr.get_links()]

    def ensure_bridge(self, name: str, mtu: int | None) -> LinkInfo:
        """The bridge `name`, created if missing (concurrent callers converge), up."""
        link = self.link(name)
        if link is None:
            kwargs: dict[str, Any] = {"ifname": name, "kind": "bridge"}
            if mtu:
                kwargs["mtu"] = mtu
            try:
                self._ipr.link("add", **kwargs)
            except NetlinkError as e:
                if _err(e) != errno.EEXIST:  # another ADD created it first: fine
                    raise KernelError(_err(e), f"cannot create bridge {name!r}") from e
            link = self.link(name)
            if link is None:
                raise KernelError(errno.ENODEV, f"bridge {name!r} vanished after creation")
        if link.kind != "bridge":
            raise KernelError(errno.EEXIST, f"{name!r} exists and is a {link.kind or 'non-bridge'} device")
        if not link.up:
            self.set_up(link.index)
        return link

    def set_up(self, index: int) -> None:
        try:
            self._ipr.link("set", index=index, state="up")
        except NetlinkError as e:
            raise KernelError(_err(e), f"cannot set link {index} up") from e

    def add_veth(self, name: str, peer_name: str, peer_netns_fd: int, mtu: int | None,
                 mac: str | None = None, peer_mac: str | None = None) -> None:
        """A veth pair: `name` here, `peer_name` created straight inside the other namespace."""
        peer: dict[str, Any] = {"ifname": peer_name, "net_ns_fd": peer_netns_fd}
        kwargs: dict[str, Any] = {"ifname": name, "kind": "veth", "peer": peer}
        if mtu:
            kwargs["mtu"] = mtu
            peer["mtu"] = mtu
        if mac:
            kwargs["address"] = mac
        if peer_mac:
            peer["address"] = peer_mac
        try:
            self._ipr.link("add", **kwargs)
        except NetlinkError as e:
            raise KernelError(_err(e), f"cannot create veth {name!r} <-> {peer_name!r}") from e

    def set_alias(self, index: int, alias: str) -> None:
        try:
            self._ipr.link("set", index=index, ifalias=alias)
        except NetlinkError as e:
            raise KernelError(_err(e), f"cannot set the alias of link {index}") from e

    def attach_port(self, index: int, master: int, alias: str, hairpin: bool) -> None:
        """Enslave to the bridge, label and bring up in one request, then the port flags."""
        try:
            self._ipr.link("set", index=index, master=master, ifalias=alias, state="up")
            if hairpin:
                self._ipr.link("set", index=index, kind="bridge_slave", mode=1)
        except NetlinkError as e:
            raise KernelError(_err(e), f"cannot attach link {index} to bridge {master}") from e

    def set_master(self, index: int, master: int) -> None:
        try:
            self._ipr.link("set", index=index, master=master)
        except NetlinkError as e:
            raise KernelError(_err(e), f"cannot attach link {index} to bridge {master}") from e

    def set_hairpin(self, index: int, on: bool) -> None:
        try:
            self._ipr.link("set", index=index, kind="bridge_slave", mode=1 if on else 0)
        except NetlinkError as e:
            raise KernelError(_err(e), f"cannot set hairpin on link {index}") from e

    def delete_link(self, index: int) -> bool:
        """Delete; False if it was already gone."""
        try:
            self._ipr.link("del", index=index)
            return True
        except NetlinkError as e:
            if _err(e) in (errno.ENODEV, errno.ENOENT):
                return False
            raise KernelError(_err(e), f"cannot delete link {index}") from e

    # -- addresses -----------------------------------------------------------

    def addresses(self, index: int | None = None) -> list[tuple[int, IPInterface]]:
        """(ifindex, address/prefix) of every address, or of one link's."""
        out = []
        kwargs = {"index": index} if index is not None else {}
        for m in self._ipr.get_addr(**kwargs):
            addr = m.get_attr("IFA_ADDRESS") if m["family"] == socket.AF_INET6 else (
                m.get_attr("IFA_LOCAL") or m.get_attr("IFA_ADDRESS"))
            out.append((m["index"], ipaddress.ip_interface(f"{addr}/{m['prefixlen']}")))
        return out

    def ensure_address(self, index: int, address: IPInterface) -> bool:
        """Add the address; False if the link already had it."""
        kwargs: dict[str, Any] = {"index": index, "address": str(address.ip), "prefixlen": address.network.prefixlen}
        if address.version == 4:
            kwargs["broadcast"] = str(address.network.broadcast_address)
        else:
            kwargs["flags"] = 0x02  # IFA_F_NODAD: unique by allocation, and usable at once
        try:
            self._ipr.addr("add", **kwargs)
            return True
        except NetlinkError as e:
            if _err(e) == errno.EEXIST:
                return False
            raise KernelError(_err(e), f"cannot add {address} to link {index}") from e

    def delete_address(self, index: int, address: IPInterface) -> None:
        try:
            self._ipr.addr("del", index=index, address=str(address.ip), prefixlen=address.network.prefixlen)
        except NetlinkError as e:
            if _err(e) not in (errno.EADDRNOTAVAIL, errno.ENODEV, errno.ENOENT):
                raise KernelError(_err(e), f"cannot delete {address} from link {index}") from e

    # -- routes --------------------------------------------------------------

    def routes(self, family: int = socket.AF_UNSPEC) -> list[RouteInfo]:
        """Routes of the main table."""
        out = []
        for m in self._ipr.get_routes(family=family, table=RT_TABLE_MAIN):
            if m["type"] != 1:  # unicast only
                continue
            fam = 4 if m["family"] == socket.AF_INET else 6
            dst = m.get_attr("RTA_DST") or ("0.0.0.0" if fam == 4 else "::")
            gw = m.get_attr("RTA_GATEWAY")
            out.append(RouteInfo(
                dst=ipaddress.ip_network(f"{dst}/{m['dst_len']}", strict=False),
                gw=ipaddress.ip_address(gw) if gw else None,
                oif=m.get_attr("RTA_OIF"),
                scope=m["scope"],
                proto=m["proto"],
                table=m.get_attr("RTA_TABLE") or m["table"],
                priority=m.get_attr("RTA_PRIORITY") or 0,
            ))
        return out

    def add_route(self, dst: IPNetwork, gw: IPAddress | None, oif: int, *, mtu: int = 0,
                  advmss: int = 0, priority: int = 0, table: int | None = None, scope: int | None = None) -> None:
        kwargs: dict[str, Any] = {"dst": str(dst), "oif": oif, "proto": RTPROT_BOOT}
        if gw is not None:
            kwargs["gateway"] = str(gw)
        if scope is not None:
            kwargs["scope"] = scope
        elif gw is None:
            kwargs["scope"] = RT_SCOPE_LINK
        if priority:
            kwargs["priority"] = priority
        if table is not None:
            kwargs["table"] = table
        metrics = {}
        if mtu:
            metrics["RTAX_MTU"] = mtu
        if advmss:
            metrics["RTAX_ADVMSS"] = advmss
        if metrics:
            kwargs["metrics"] = metrics
        try:
            self._ipr.route("add", **kwargs)
        except NetlinkError as e:
            if _err(e) == errno.EEXIST:
                return
            raise KernelError(_err(e), f"cannot add route {dst} via {gw or 'link'} dev {oif}") from e


def enable_ip_forward(version: int) -> None:
    """Turn on forwarding in the current thread's namespace, as the reference bridge does for a gateway."""
    path = "/proc/sys/net/ipv4/ip_forward" if version == 4 else "/proc/sys/net/ipv6/conf/all/forwarding"
    try:
        with open(path, "r+", encoding="ascii") as f:
            if f.read().strip() != "1":
                f.seek(0)
                f.write("1")
    except OSError as e:
        raise KernelError(e.errno or 0, f"cannot enable forwarding ({path})") from e
