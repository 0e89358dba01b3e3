"""Links, addresses and routes over rtnetlink, for one namespace at a time.

A `Netlink` wraps one rtnetlink socket bound to one namespace (opened without a
fork, see netns.py) and is used by one thread. Methods named `ensure_*`
converge and are safe to repeat; `delete_*` treat "already gone" as success.
Errors come out as KernelError with the errno and the operation in the message.

This sits on the small hand-written codec in rtnl.py rather than pyroute2:
the CNI plugin makes a dozen of these calls per pod, and pyroute2's generic
message classes cost more Python time than the kernel takes for the work
(and ~130 ms to import in a plugin that runs without the agent). The calls the
plugin makes per pod are also offered pre-batched (`add_port`, `configure_pod`):
one datagram, several requests, one wait.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import select
import socket
import struct
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from . import netns, rtnl

if TYPE_CHECKING:
    from concurrent.futures import Future

IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

RT_SCOPE_UNIVERSE = rtnl.RT_SCOPE_UNIVERSE
RT_SCOPE_LINK = rtnl.RT_SCOPE_LINK
RT_TABLE_MAIN = rtnl.RT_TABLE_MAIN
RTPROT_BOOT = rtnl.RTPROT_BOOT

_GONE = (errno.ENODEV, errno.ENOENT)


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


@dataclass(frozen=True, slots=True)
class PodRoute:
    """A route to add in a pod: `gw` None means on-link (scope link unless `scope` says otherwise)."""

    dst: IPNetwork
    gw: IPAddress | None
    mtu: int = 0
    advmss: int = 0
    priority: int = 0
    table: int | None = None
    scope: int | None = None


def link_info(msg: rtnl.Message) -> LinkInfo:
    index, flags, _type = rtnl.ifinfo(msg)
    kind = ""
    hairpin: bool | None = None
    raw_info = msg.attrs.get(rtnl.IFLA_LINKINFO)
    if raw_info is not None:
        info = rtnl.parse_attrs(raw_info)
        kind = _cstr(info.get(rtnl.IFLA_INFO_KIND))
        if _cstr(info.get(rtnl.IFLA_INFO_SLAVE_KIND)) == "bridge" and rtnl.IFLA_INFO_SLAVE_DATA in info:
            port = rtnl.parse_attrs(info[rtnl.IFLA_INFO_SLAVE_DATA])
            mode = port.get(rtnl.IFLA_BRPORT_MODE)
            hairpin = bool(mode[0]) if mode else False
    peer = msg.u32(rtnl.IFLA_LINK)
    return LinkInfo(
        index=index,
        name=msg.text(rtnl.IFLA_IFNAME) or "",
        kind=kind,
        mac=rtnl.mac_text(msg.attrs.get(rtnl.IFLA_ADDRESS)),
        mtu=msg.u32(rtnl.IFLA_MTU) or 0,
        up=bool(flags & rtnl.IFF_UP),
        master=msg.u32(rtnl.IFLA_MASTER),
        alias=msg.text(rtnl.IFLA_IFALIAS) or "",
        hairpin=hairpin,
        peer_index=peer if kind == "veth" else None,
        peer_elsewhere=rtnl.IFLA_LINK_NETNSID in msg.attrs,
    )


def random_mac() -> bytes:
    """A random unicast, locally administered MAC (what the kernel's eth_random_addr makes)."""
    raw = bytearray(os.urandom(6))
    raw[0] = (raw[0] & 0xFE) | 0x02
    return bytes(raw)


def _cstr(raw: bytes | None) -> str:
    return raw.split(b"\0", 1)[0].decode("utf-8", "replace") if raw else ""


def _packed(ip: IPAddress) -> bytes:
    return ip.packed


def _family(version: int) -> int:
    return socket.AF_INET if version == 4 else socket.AF_INET6


class Netlink:
    """rtnetlink in one namespace: the current one (netns_path None) or the one at netns_path.

    Raises FileNotFoundError if the namespace file is gone and netns.NetnsError if
    the path is not a network namespace.
    """

    def __init__(self, netns_path: str | int | None = None) -> None:
        self.netns_path = netns_path
        self._nl = rtnl.Rtnl(netns.netlink_socket(netns_path))

    def close(self) -> None:
        self._nl.close()

    def __enter__(self) -> Netlink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _do(self, req: rtnl.Request, ignore: Sequence[int] = ()) -> rtnl.Reply:
        try:
            return self._nl.request(req, ignore)
        except rtnl.NetlinkError as e:
            raise KernelError(e.errno or 0, req.what) from e
        except OSError as e:  # the socket itself failed
            raise KernelError(e.errno or 0, req.what) from e

    def _batch(self, reqs: Sequence[rtnl.Request]) -> list[rtnl.Reply]:
        try:
            return self._nl.batch(reqs)
        except OSError as e:
            raise KernelError(e.errno or 0, reqs[0].what if reqs else "netlink") from e

    # -- links ---------------------------------------------------------------

    def link(self, name: str) -> LinkInfo | None:
        reply = self._do(rtnl.get_link(name=name), ignore=_GONE)
        return link_info(reply.messages[0]) if not reply.error and reply.messages else None

    def link_by_index(self, index: int) -> LinkInfo | None:
        reply = self._do(rtnl.get_link(index=index), ignore=_GONE)
        return link_info(reply.messages[0]) if not reply.error and reply.messages else None

    def links(self) -> list[LinkInfo]:
        reply = self._do(rtnl.dump_links())
        return [link_info(m) for m in reply.messages if m.kind == rtnl.RTM_NEWLINK]

    def ensure_bridge(self, name: str, mtu: int | None) -> LinkInfo:
        """The bridge `name`, created if missing (concurrent callers converge), up.

        A bridge made here gets a MAC of its own: one whose MAC the kernel assigned takes
        the lowest MAC of its ports and changes as ports come and go, and every pod then
        keeps sending to the gateway's old MAC (dropped) until its ARP entry expires.
        """
        link = self.link(name)
        if link is None:
            # EEXIST: another ADD created it first, fine.
            create = rtnl.new_bridge(name, mtu)
            create = rtnl.Request(create.kind, create.flags,
                                  create.body + rtnl.attr(rtnl.IFLA_ADDRESS, random_mac()), create.what)
            self._do(create, ignore=(errno.EEXIST,))
            link = self.link(name)
            if link is None:
                raise KernelError(errno.ENODEV, f"bridge {name!r} vanished after creation")
        if link.kind != "bridge":
            raise KernelError(errno.EEXIST, f"{name!r} exists and is a {link.kind or 'non-bridge'} device")
        if not link.up:
            self.set_up(link.index)
        return link

    def set_up(self, index: int) -> None:
        self._do(rtnl.set_link(index, up=True))

    def add_veth(self, name: str, peer_name: str, peer_netns_fd: int, mtu: int | None,
                 mac: str | None = None, peer_mac: str | None = None, *, up: bool = False,
                 master: int | None = None) -> None:
        """A veth pair: `name` here, `peer_name` created straight inside the other namespace.

        `master` and `up` are applied to `name` by the kernel in the same request.
        """
        self._do(rtnl.new_veth(name, peer_name, peer_netns_fd, mtu=mtu, up=up, master=master,
                               mac=bytes.fromhex(mac.replace(":", "")) if mac else None,
                               peer_mac=bytes.fromhex(peer_mac.replace(":", "")) if peer_mac else None))

    def configure_port(self, name: str, alias: str, hairpin: bool) -> LinkInfo:
        """Label a bridge port and set its hairpin flag, then read it back: one round trip."""
        change = rtnl.set_link(0, alias=alias, hairpin=hairpin if hairpin else None)
        # Addressed by name (index 0 + IFLA_IFNAME): the caller just created it under that name.
        change = rtnl.Request(change.kind, change.flags,
                              change.body + rtnl.attr_str(rtnl.IFLA_IFNAME, name), f"configure port {name!r}")
        get = rtnl.get_link(name=name)
        set_reply, get_reply = self._batch((change, get))
        if set_reply.error:
            raise KernelError(set_reply.error, change.what)
        if get_reply.error or not get_reply.messages:
            raise KernelError(get_reply.error or errno.ENODEV, f"cannot read link {name!r}")
        return link_info(get_reply.messages[0])

    def set_mac(self, index: int, mac: str) -> None:
        """Set a link's MAC. On a bridge this also pins it: the kernel stops deriving the
        bridge's MAC from its ports' (it flushes the link's neighbour entries once)."""
        body = rtnl.ifinfomsg(index) + rtnl.attr(rtnl.IFLA_ADDRESS, bytes.fromhex(mac.replace(":", "")))
        self._do(rtnl.Request(rtnl.RTM_NEWLINK, 0, body, f"set the MAC of link {index}"))

    def set_alias(self, index: int, alias: str) -> None:
        self._do(rtnl.set_link(index, alias=alias))

    def attach_port(self, index: int, master: int, alias: str, hairpin: bool) -> None:
        """Enslave to the bridge, label and bring up, then the port flags (one datagram)."""
        enslave = rtnl.set_link(index, up=True, master=master, alias=alias)
        reqs = [enslave]
        if hairpin:
            reqs.append(rtnl.set_link(index, hairpin=True))
        for reply in self._batch(reqs):
            if reply.error:
                raise KernelError(reply.error, f"cannot attach link {index} to bridge {master}")

    def set_master(self, index: int, master: int) -> None:
        self._do(rtnl.set_link(index, master=master))

    def set_hairpin(self, index: int, on: bool) -> None:
        self._do(rtnl.set_link(index, hairpin=on))

    def delete_link(self, index: int) -> bool:
        """Delete; False if it was already gone."""
        return not self._do(rtnl.del_link(index), ignore=_GONE).error

    def delete_link_named(self, name: str) -> bool:
        """Delete by name; False if it was already gone."""
        req = rtnl.Request(rtnl.RTM_DELLINK, 0, rtnl.ifinfomsg() + rtnl.attr_str(rtnl.IFLA_IFNAME, name),
                           f"delete link {name!r}")
        return not self._do(req, ignore=_GONE).error

    # -- addresses -----------------------------------------------------------

    def addresses(self, index: int | None = None) -> list[tuple[int, IPInterface]]:
        """(ifindex, address/prefix) of every address, or of one link's."""
        out: list[tuple[int, IPInterface]] = []
        for m in self._do(rtnl.dump_addrs()).messages:
            if m.kind != rtnl.RTM_NEWADDR:
                continue
            family, prefixlen, _flags, ifindex = rtnl.ifaddr(m)
            if index is not None and ifindex != index:
                continue
            raw = m.attrs.get(rtnl.IFA_ADDRESS) if family == socket.AF_INET6 else (
                m.attrs.get(rtnl.IFA_LOCAL) or m.attrs.get(rtnl.IFA_ADDRESS))
            if raw is None or family not in (socket.AF_INET, socket.AF_INET6):
                continue
            out.append((ifindex, ipaddress.ip_interface((socket.inet_ntop(family, raw), prefixlen))))
        return out

    def ensure_address(self, index: int, address: IPInterface) -> bool:
        """Add the address; False if the link already had it."""
        return not self._do(_addr_request(index, address), ignore=(errno.EEXIST,)).error

    def delete_address(self, index: int, address: IPInterface) -> None:
        self._do(rtnl.del_addr(index, _packed(address.ip), address.network.prefixlen),
                 ignore=(errno.EADDRNOTAVAIL, errno.ENODEV, errno.ENOENT))

    # -- routes --------------------------------------------------------------

    def routes(self, family: int = socket.AF_UNSPEC) -> list[RouteInfo]:
        """Routes of the main table."""
        out = []
        for m in self._do(rtnl.dump_routes(family)).messages:
            if m.kind != rtnl.RTM_NEWROUTE:
                continue
            fam, dst_len, hdr_table, proto, scope, kind = rtnl.rtinfo(m)
            table = m.u32(rtnl.RTA_TABLE) or hdr_table
            if kind != rtnl.RTN_UNICAST or table != RT_TABLE_MAIN or fam not in (socket.AF_INET, socket.AF_INET6):
                continue
            dst = m.attrs.get(rtnl.RTA_DST)
            gw = m.attrs.get(rtnl.RTA_GATEWAY)
            dst_text = socket.inet_ntop(fam, dst) if dst else ("0.0.0.0" if fam == socket.AF_INET else "::")
            out.append(RouteInfo(
                dst=ipaddress.ip_network((dst_text, dst_len), strict=False),
                gw=ipaddress.ip_address(socket.inet_ntop(fam, gw)) if gw else None,
                oif=m.u32(rtnl.RTA_OIF),
                scope=scope,
                proto=proto,
                table=table,
                priority=m.u32(rtnl.RTA_PRIORITY) or 0,
            ))
        return out

    def add_route(self, dst: IPNetwork, gw: IPAddress | None, oif: int, *, mtu: int = 0,
                  advmss: int = 0, priority: int = 0, table: int | None = None, scope: int | None = None) -> None:
        req = _route_request(PodRoute(dst, gw, mtu, advmss, priority, table, scope), oif)
        self._do(req, ignore=(errno.EEXIST,))

    # -- neighbours ----------------------------------------------------------
    def delete_neighbours(self, index: int, addresses: Sequence[IPAddress]) -> int:
        """Drop the neighbour (ARP/NDP) entries for `addresses` on link `index`, in one datagram;
        how many there were (an entry already gone is fine)."""
        reqs = [_del_neigh_request(index, a) for a in addresses]
        if not reqs:
            return 0
        deleted = 0
        for req, reply in zip(reqs, self._batch(reqs), strict=True):
            if reply.error in _GONE or reply.error == errno.ENXIO:
                continue
            if reply.error:
                raise KernelError(reply.error, req.what)
            deleted += 1
        return deleted

    # -- a pod's side, in one round trip ------------------------------------------

    def configure_pod(self, index: int, addresses: Sequence[IPInterface], routes: Sequence[PodRoute],
                      loopback: int = 1) -> LinkInfo | None:
        """Addresses on `index`, it and lo up, then the routes, then read `index` back (None if gone).

        One datagram, run in order by the kernel. An address or route that is
        already there counts as done (ensure semantics).
        """
        reqs = [_addr_request(index, a) for a in addresses]
        reqs.append(rtnl.set_link(index, up=True))
        reqs.append(rtnl.set_link(loopback, up=True))
        reqs.extend(_route_request(r, index) for r in routes)
        reqs.append(rtnl.get_link(index=index))
        replies = self._batch(reqs)
        for req, reply in zip(reqs[:-1], replies[:-1], strict=True):
            if reply.error and not (reply.error == errno.EEXIST and req.kind in (rtnl.RTM_NEWADDR,
                                                                                 rtnl.RTM_NEWROUTE)):
                raise KernelError(reply.error, req.what)
        got = replies[-1]
        return link_info(got.messages[0]) if not got.error and got.messages else None


RTMGRP_LINK = 0x1


class LinkReaper:
    """Deletes links and answers as soon as the kernel has unlisted them.

    Deleting a veth costs ~15-20 ms here, nearly all of it after the device is
    gone from both namespaces: the kernel sends RTM_DELLINK once the device is
    unlisted (under the RTNL lock), then waits for an RCU barrier and for the
    last references to drop before the delete request returns. The names, the
    addresses and routes are gone by then, so what `ip link` shows no longer
    changes; only memory is still being freed. The reaper sends the delete
    from a worker thread and returns when the RTM_DELLINK notification for
    the link arrives (or the request itself answers, whichever comes first),
    so a long-running caller (the CNI agent) can answer DEL ~15 ms sooner.
    `close()` waits for the deletions still finishing.
    """

    def __init__(self, workers: int = 8, timeout: float = 60.0) -> None:
        # Imported here: concurrent.futures (and the logging it pulls in) costs the one-shot plugin ~5 ms.
        from concurrent.futures import ThreadPoolExecutor

        self.timeout = timeout
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="link-reaper")
        self._lock = threading.Lock()
        self._pending: set[Future[bool]] = set()
        self._answered_early: set[Future[bool]] = set()

    def delete(self, netns_path: str | int | None, index: int) -> bool:
        """Delete link `index` in that namespace; False if it was already gone. KernelError on failure."""
        monitor = netns.netlink_socket(netns_path)
        # The worker closes its end of the pipe when the request has answered: each side owns one fd,
        # so neither can close a descriptor the other still polls.
        done_r, done_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        try:
            monitor.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rtnl.RECV_BUFFER)
            monitor.bind((0, RTMGRP_LINK))  # subscribed before the delete is sent: no notification is missed
            try:
                worker_nl = Netlink(netns_path)
            except BaseException:
                os.close(done_w)
                raise

            def work() -> bool:
                try:
                    return worker_nl.delete_link(index)
                finally:
                    worker_nl.close()
                    os.close(done_w)

            try:
                future = self._pool.submit(work)
            except BaseException:
                worker_nl.close()
                os.close(done_w)
                raise
            with self._lock:
                self._pending.add(future)
            future.add_done_callback(self._finished)
            if self._wait_unlisted(monitor, done_r, index):
                with self._lock:
                    if future in self._pending:
                        self._answered_early.add(future)
                return True
            return future.result(timeout=self.timeout)
        finally:
            monitor.close()
            os.close(done_r)

    def _wait_unlisted(self, monitor: socket.socket, done_fd: int, index: int) -> bool:
        """True once RTM_DELLINK for `index` arrived; False when the request answered first (or on doubt)."""
        poller = select.poll()
        poller.register(monitor, select.POLLIN)
        poller.register(done_fd, select.POLLIN)
        while True:
            events = poller.poll(self.timeout * 1000)
            if not events:
                return False
            if any(fd == done_fd for fd, _ in events):
                return False
            try:
                data = monitor.recv(rtnl.RECV_BUFFER, socket.MSG_DONTWAIT)
            except BlockingIOError:
                continue
            except OSError:  # ENOBUFS: notifications were lost; the request's answer decides
                return False
            if _dellink_seen(data, index):
                return True

    def _finished(self, future: Future[bool]) -> None:
        with self._lock:
            self._pending.discard(future)
            early = future in self._answered_early
            self._answered_early.discard(future)
        if early and future.exception() is not None:
            # The caller was answered when the link was unlisted, so nobody sees
            # this failure of the kernel's late teardown but the log.
            import sys

            sys.stderr.write(f"link-reaper event=delete-failed error={future.exception()!s}\n")

    def close(self, timeout: float | None = None) -> None:
        """Wait (up to `timeout`) for deletions still finishing, then stop the workers."""
        with self._lock:
            pending = list(self._pending)
        for future in pending:
            try:
                future.result(timeout=timeout if timeout is not None else self.timeout)
            except Exception:  # reported by _finished
                pass
        self._pool.shutdown(wait=False)


_NLMSGHDR = struct.Struct("=IHHII")
_IFINFO_INDEX = struct.Struct("=BxHi")


def _dellink_seen(data: bytes, index: int) -> bool:
    """Does this datagram of link notifications carry RTM_DELLINK (family unspec) for `index`?"""
    offset = 0
    while offset + _NLMSGHDR.size + _IFINFO_INDEX.size <= len(data):
        length, kind, _flags, _seq, _pid = _NLMSGHDR.unpack_from(data, offset)
        if length < _NLMSGHDR.size:
            return False
        if kind == rtnl.RTM_DELLINK:
            family, _type, ifindex = _IFINFO_INDEX.unpack_from(data, offset + _NLMSGHDR.size)
            if family == socket.AF_UNSPEC and ifindex == index:
                return True
        offset += (length + 3) & ~3
    return False


RTM_DELNEIGH = 29
NDA_DST = 1
_NDMSG = struct.Struct("=BxxxiHBB")  # family, ifindex, state, flags, type


def _del_neigh_request(index: int, address: IPAddress) -> rtnl.Request:
    body = _NDMSG.pack(_family(address.version), index, 0, 0, 0) + rtnl.attr(NDA_DST, address.packed)
    return rtnl.Request(RTM_DELNEIGH, 0, body, f"delete neighbour {address} on link {index}")


def _addr_request(index: int, address: IPInterface) -> rtnl.Request:
    broadcast = address.network.broadcast_address.packed if address.version == 4 else None
    return rtnl.new_addr(index, address.ip.packed, address.network.prefixlen, broadcast)


def _route_request(r: PodRoute, oif: int) -> rtnl.Request:
    scope = r.scope if r.scope is not None else (RT_SCOPE_LINK if r.gw is None else RT_SCOPE_UNIVERSE)
    return rtnl.new_route(_family(r.dst.version), r.dst.network_address.packed, r.dst.prefixlen,
                          gateway=r.gw.packed if r.gw is not None else None, oif=oif, scope=scope,
                          table=r.table if r.table is not None else RT_TABLE_MAIN, priority=r.priority,
                          mtu=r.mtu, advmss=r.advmss)


ETH_P_ARP = 0x0806
ETH_P_IP = 0x0800
ARP_REQUEST = 1
_BROADCAST_MAC = b"\xff" * 6


def gratuitous_arp_frame(mac: str, address: ipaddress.IPv4Address) -> bytes:
    """An Ethernet broadcast ARP request for our own address (sender = target = `address`).

    What the reference bridge plugin sends after configuring a pod's interface: every
    neighbour that still maps this address to another MAC (a deleted pod's, when the
    address is reused) updates its entry at once (a gratuitous ARP overrides the entry's
    locktime); without it the node's probes and peers keep sending to the old MAC
    until their entry expires, ~30-60 s.
    """
    hw = bytes.fromhex(mac.replace(":", ""))
    if len(hw) != 6:
        raise ValueError(f"not an Ethernet MAC: {mac!r}")
    ip = address.packed
    ether = _BROADCAST_MAC + hw + struct.pack("!H", ETH_P_ARP)
    arp = struct.pack("!HHBBH", 1, ETH_P_IP, 6, 4, ARP_REQUEST) + hw + ip + _BROADCAST_MAC + ip
    return ether + arp


def send_gratuitous_arp(netns_path_or_fd: str | int, ifname: str, mac: str,
                        addresses: Sequence[ipaddress.IPv4Address]) -> None:
    """Announce `addresses` on `ifname` inside that namespace (a raw packet socket made there).

    OSError when the socket cannot be made or the frame not sent; callers treat it as
    best effort, as the reference plugin does.
    """
    with netns.entered(netns_path_or_fd):
        # Protocol 0: the socket only sends, so it never queues received frames.
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    with sock:
        for address in addresses:
            sock.sendto(gratuitous_arp_frame(mac, address), (ifname, ETH_P_ARP))


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
