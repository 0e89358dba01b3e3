"""A minimal rtnetlink codec and socket: the few messages the CNI plugin sends per pod.

pyroute2's generic encoder/decoder costs ~1-3 ms of Python per request (it
builds and walks a class tree per message), which dominated a pod's ADD once
the kernel work was done. The plugin's hot path needs only a handful of
messages (links, addresses, routes), so they are packed here with `struct`
directly, and replies are decoded into flat {attribute type: raw bytes}
dicts that callers read lazily.

Two layers, in the manner of sans-IO libraries:

- pure functions that build request bodies and parse reply bytes (tested
  without root, see tests/unit/cni/test_rtnl.py);
- `Rtnl`, one NETLINK_ROUTE socket in one namespace, which sends a batch of
  requests in a single datagram (the kernel runs them in order, acking each)
  and collects every request's replies and its ack.

Every non-dump request carries NLM_F_ACK, so each one ends with exactly one
NLMSG_ERROR (errno 0 = success); a dump ends with NLMSG_DONE. One socket is
used by one thread at a time.
"""

from __future__ import annotations

import errno as errno_mod
import os
import socket
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

# -- constants (linux/netlink.h, linux/rtnetlink.h, linux/if_link.h, linux/if_addr.h) --

NLMSG_NOOP = 1
NLMSG_ERROR = 2
NLMSG_DONE = 3

NLM_F_REQUEST = 0x01
NLM_F_MULTI = 0x02
NLM_F_ACK = 0x04
NLM_F_ECHO = 0x08
NLM_F_DUMP = 0x300
NLM_F_REPLACE = 0x100
NLM_F_EXCL = 0x200
NLM_F_CREATE = 0x400
NLM_F_CAPPED = 0x100  # in an ack: the request was not echoed back
NLM_F_ACK_TLVS = 0x200  # in an ack: extended attributes (the kernel's error text) follow

SOL_NETLINK = 270
NETLINK_CAP_ACK = 10
NETLINK_EXT_ACK = 11
NLMSGERR_ATTR_MSG = 1

RTM_NEWLINK = 16
RTM_DELLINK = 17
RTM_GETLINK = 18
RTM_SETLINK = 19
RTM_NEWADDR = 20
RTM_DELADDR = 21
RTM_GETADDR = 22
RTM_NEWROUTE = 24
RTM_DELROUTE = 25
RTM_GETROUTE = 26

IFF_UP = 0x1

IFLA_ADDRESS = 1
IFLA_BROADCAST = 2
IFLA_IFNAME = 3
IFLA_MTU = 4
IFLA_LINK = 5
IFLA_MASTER = 10
IFLA_PROTINFO = 12
IFLA_LINKINFO = 18
IFLA_IFALIAS = 20
IFLA_NET_NS_FD = 28
IFLA_EXT_MASK = 29
IFLA_LINK_NETNSID = 37

IFLA_INFO_KIND = 1
IFLA_INFO_DATA = 2
IFLA_INFO_SLAVE_KIND = 4
IFLA_INFO_SLAVE_DATA = 5

VETH_INFO_PEER = 1
IFLA_BRPORT_MODE = 4  # hairpin

IFA_ADDRESS = 1
IFA_LOCAL = 2
IFA_BROADCAST = 4
IFA_FLAGS = 8
IFA_F_NODAD = 0x02

RTA_DST = 1
RTA_OIF = 4
RTA_GATEWAY = 5
RTA_PRIORITY = 6
RTA_METRICS = 8
RTA_TABLE = 15
RTAX_MTU = 2
RTAX_ADVMSS = 8

RT_TABLE_UNSPEC = 0
RT_TABLE_COMPAT = 252
RT_TABLE_MAIN = 254
RTN_UNICAST = 1
RT_SCOPE_UNIVERSE = 0
RT_SCOPE_LINK = 253
RTPROT_BOOT = 3

NLA_TYPE_MASK = 0x3FFF
NLA_F_NESTED = 0x8000

_NLMSGHDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
_IFINFOMSG = struct.Struct("=BxHiII")  # family, type, index, flags, change
_IFADDRMSG = struct.Struct("=BBBBi")  # family, prefixlen, flags, scope, index
_RTMSG = struct.Struct("=BBBBBBBBI")  # family, dst_len, src_len, tos, table, protocol, scope, type, flags
_NLATTR = struct.Struct("=HH")
_U32 = struct.Struct("=I")
_I32 = struct.Struct("=i")

RECV_BUFFER = 1 << 20


class NetlinkError(OSError):
    """A request the kernel refused: `errno` is the kernel's, `strerror` says what was asked."""

    def __init__(self, err: int, what: str) -> None:
        super().__init__(err, f"{what}: {os.strerror(err)}")


# -- encoding --------------------------------------------------------------------

def _pad(n: int) -> int:
    return (n + 3) & ~3


def attr(kind: int, payload: bytes) -> bytes:
    size = 4 + len(payload)
    return _NLATTR.pack(size, kind) + payload + b"\0" * (_pad(size) - size)


def attr_u32(kind: int, value: int) -> bytes:
    return attr(kind, _U32.pack(value))


def attr_u8(kind: int, value: int) -> bytes:
    return attr(kind, bytes((value,)))


def attr_str(kind: int, value: str) -> bytes:
    return attr(kind, value.encode() + b"\0")


def nested(kind: int, *attrs: bytes) -> bytes:
    return attr(kind, b"".join(attrs))


def ifinfomsg(index: int = 0, flags: int = 0, change: int = 0, family: int = socket.AF_UNSPEC) -> bytes:
    return _IFINFOMSG.pack(family, 0, index, flags, change)


def ifaddrmsg(family: int, prefixlen: int, index: int, flags: int = 0, scope: int = 0) -> bytes:
    return _IFADDRMSG.pack(family, prefixlen, flags, scope, index)


def rtmsg(family: int, dst_len: int, *, table: int = RT_TABLE_MAIN, protocol: int = RTPROT_BOOT,
          scope: int = RT_SCOPE_UNIVERSE, kind: int = RTN_UNICAST) -> bytes:
    return _RTMSG.pack(family, dst_len, 0, 0, table if table < 256 else RT_TABLE_COMPAT, protocol, scope, kind, 0)


@dataclass(frozen=True, slots=True)
class Request:
    """One netlink request: message type, flags beyond NLM_F_REQUEST, and the body."""

    kind: int
    flags: int
    body: bytes
    what: str = ""  # for error messages: what was asked

    @property
    def dump(self) -> bool:
        return self.flags & NLM_F_DUMP == NLM_F_DUMP


def encode(req: Request, seq: int) -> bytes:
    flags = NLM_F_REQUEST | req.flags
    if not req.dump:
        flags |= NLM_F_ACK
    return _NLMSGHDR.pack(_NLMSGHDR.size + len(req.body), req.kind, flags, seq, 0) + req.body


# -- the requests the plugin makes -------------------------------------------------

def new_veth(name: str, peer_name: str, peer_netns_fd: int, *, mtu: int | None = None, up: bool = False,
             peer_up: bool = False, master: int | None = None, mac: bytes | None = None,
             peer_mac: bytes | None = None) -> Request:
    """A veth pair, `peer_name` created straight inside the namespace of `peer_netns_fd`.

    `master` enslaves the new end at creation and `up`/`peer_up` bring the ends
    up at creation (the kernel applies both in the same request), saving round trips.
    """
    peer = [attr_str(IFLA_IFNAME, peer_name), attr_u32(IFLA_NET_NS_FD, peer_netns_fd)]
    own = [attr_str(IFLA_IFNAME, name)]
    if mtu:
        own.append(attr_u32(IFLA_MTU, mtu))
        peer.append(attr_u32(IFLA_MTU, mtu))
    if mac:
        own.append(attr(IFLA_ADDRESS, mac))
    if peer_mac:
        peer.append(attr(IFLA_ADDRESS, peer_mac))
    if master:
        own.append(attr_u32(IFLA_MASTER, master))
    peer_hdr = ifinfomsg(flags=IFF_UP if peer_up else 0, change=IFF_UP if peer_up else 0)
    own.append(nested(IFLA_LINKINFO, attr_str(IFLA_INFO_KIND, "veth"),
                      nested(IFLA_INFO_DATA, nested(VETH_INFO_PEER, peer_hdr, *peer))))
    body = ifinfomsg(flags=IFF_UP if up else 0, change=IFF_UP if up else 0) + b"".join(own)
    return Request(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL, body, f"create veth {name!r} <-> {peer_name!r}")


def new_bridge(name: str, mtu: int | None = None) -> Request:
    attrs = [attr_str(IFLA_IFNAME, name)]
    if mtu:
        attrs.append(attr_u32(IFLA_MTU, mtu))
    attrs.append(nested(IFLA_LINKINFO, attr_str(IFLA_INFO_KIND, "bridge")))
    return Request(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL, ifinfomsg() + b"".join(attrs),
                   f"create bridge {name!r}")


def set_link(index: int, *, up: bool | None = None, master: int | None = None, alias: str | None = None,
             mtu: int | None = None, hairpin: bool | None = None) -> Request:
    """Change an existing link in one request; `hairpin` needs the link to be a bridge port already."""
    flags = change = 0
    if up is not None:
        change = IFF_UP
        flags = IFF_UP if up else 0
    attrs = []
    if master is not None:
        attrs.append(attr_u32(IFLA_MASTER, master))
    if alias is not None:
        attrs.append(attr_str(IFLA_IFALIAS, alias))
    if mtu:
        attrs.append(attr_u32(IFLA_MTU, mtu))
    if hairpin is not None:
        # Bridge-port options ride in IFLA_LINKINFO's slave data (what `ip link set
        # ... type bridge_slave hairpin on` sends); the kernel hands them to the master.
        attrs.append(nested(IFLA_LINKINFO, attr_str(IFLA_INFO_SLAVE_KIND, "bridge"),
                            nested(IFLA_INFO_SLAVE_DATA, attr_u8(IFLA_BRPORT_MODE, 1 if hairpin else 0))))
    return Request(RTM_NEWLINK, 0, ifinfomsg(index, flags, change) + b"".join(attrs), f"change link {index}")


def get_link(*, index: int = 0, name: str | None = None) -> Request:
    attrs = attr_str(IFLA_IFNAME, name) if name is not None else b""
    return Request(RTM_GETLINK, 0, ifinfomsg(index) + attrs, f"read link {name or index!r}")


def dump_links() -> Request:
    return Request(RTM_GETLINK, NLM_F_DUMP, ifinfomsg(), "list links")


def del_link(index: int) -> Request:
    return Request(RTM_DELLINK, 0, ifinfomsg(index), f"delete link {index}")


def _family(packed: bytes) -> int:
    return socket.AF_INET if len(packed) == 4 else socket.AF_INET6


def new_addr(index: int, address: bytes, prefixlen: int, broadcast: bytes | None = None) -> Request:
    """`address` packed (4 or 16 bytes); an IPv6 one gets IFA_F_NODAD (unique by allocation)."""
    family = _family(address)
    if family == socket.AF_INET:
        attrs = attr(IFA_LOCAL, address) + attr(IFA_ADDRESS, address)
        if broadcast is not None:
            attrs += attr(IFA_BROADCAST, broadcast)
        hdr = ifaddrmsg(family, prefixlen, index)
    else:
        attrs = attr(IFA_ADDRESS, address)
        hdr = ifaddrmsg(family, prefixlen, index, flags=IFA_F_NODAD)
    return Request(RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL, hdr + attrs,
                   f"add {socket.inet_ntop(family, address)}/{prefixlen} to link {index}")


def del_addr(index: int, address: bytes, prefixlen: int) -> Request:
    family = _family(address)
    attrs = attr(IFA_LOCAL, address) + attr(IFA_ADDRESS, address) if family == socket.AF_INET \
        else attr(IFA_ADDRESS, address)
    return Request(RTM_DELADDR, 0, ifaddrmsg(family, prefixlen, index) + attrs,
                   f"delete {socket.inet_ntop(family, address)}/{prefixlen} from link {index}")


def dump_addrs(family: int = socket.AF_UNSPEC) -> Request:
    return Request(RTM_GETADDR, NLM_F_DUMP, ifaddrmsg(family, 0, 0), "list addresses")


def new_route(family: int, dst: bytes, dst_len: int, *, gateway: bytes | None = None, oif: int = 0,
              scope: int = RT_SCOPE_UNIVERSE, table: int = RT_TABLE_MAIN, priority: int = 0, mtu: int = 0,
              advmss: int = 0, protocol: int = RTPROT_BOOT) -> Request:
    attrs = []
    if dst_len:
        attrs.append(attr(RTA_DST, dst))
    if gateway is not None:
        attrs.append(attr(RTA_GATEWAY, gateway))
    if oif:
        attrs.append(attr_u32(RTA_OIF, oif))
    if priority:
        attrs.append(attr_u32(RTA_PRIORITY, priority))
    attrs.append(attr_u32(RTA_TABLE, table))
    metrics = []
    if mtu:
        metrics.append(attr_u32(RTAX_MTU, mtu))
    if advmss:
        metrics.append(attr_u32(RTAX_ADVMSS, advmss))
    if metrics:
        attrs.append(nested(RTA_METRICS, *metrics))
    body = rtmsg(family, dst_len, table=table, protocol=protocol, scope=scope) + b"".join(attrs)
    dst_text = socket.inet_ntop(family, dst) if dst_len else ("0.0.0.0" if family == socket.AF_INET else "::")
    return Request(RTM_NEWROUTE, NLM_F_CREATE | NLM_F_EXCL, body, f"add route {dst_text}/{dst_len}")


def dump_routes(family: int = socket.AF_UNSPEC) -> Request:
    return Request(RTM_GETROUTE, NLM_F_DUMP, rtmsg(family, 0, table=0, protocol=0, kind=0), "list routes")


# -- decoding ----------------------------------------------------------------------

def parse_attrs(data: bytes | memoryview, offset: int = 0, end: int | None = None) -> dict[int, bytes]:
    """{type: payload} of a run of attributes (the last one wins on repeats)."""
    out: dict[int, bytes] = {}
    end = len(data) if end is None else end
    unpack = _NLATTR.unpack_from
    while offset + 4 <= end:
        size, kind = unpack(data, offset)
        if size < 4 or offset + size > end:
            break
        out[kind & NLA_TYPE_MASK] = bytes(data[offset + 4:offset + size])
        offset += _pad(size)
    return out


@dataclass(slots=True)
class Message:
    """One reply message: its type, its fixed header and its top-level attributes."""

    kind: int
    header: bytes
    attrs: dict[int, bytes]

    def u32(self, kind: int) -> int | None:
        raw = self.attrs.get(kind)
        return _U32.unpack_from(raw)[0] if raw is not None and len(raw) >= 4 else None

    def i32(self, kind: int) -> int | None:
        raw = self.attrs.get(kind)
        return _I32.unpack_from(raw)[0] if raw is not None and len(raw) >= 4 else None

    def text(self, kind: int) -> str | None:
        raw = self.attrs.get(kind)
        return raw.split(b"\0", 1)[0].decode("utf-8", "replace") if raw is not None else None


_HEADER_SIZE = {
    RTM_NEWLINK: _IFINFOMSG.size, RTM_DELLINK: _IFINFOMSG.size,
    RTM_NEWADDR: _IFADDRMSG.size, RTM_DELADDR: _IFADDRMSG.size,
    RTM_NEWROUTE: _RTMSG.size, RTM_DELROUTE: _RTMSG.size,
}


@dataclass(slots=True)
class Reply:
    """What came back for one request: data messages, then the status (0 or a positive errno)."""

    error: int = 0
    messages: list[Message] = field(default_factory=list)
    error_text: str = ""
    done: bool = False


def parse(data: bytes, replies: dict[int, Reply]) -> None:
    """Sort the messages of one received datagram into `replies` by sequence number."""
    offset = 0
    unpack = _NLMSGHDR.unpack_from
    while offset + _NLMSGHDR.size <= len(data):
        length, kind, flags, seq, _pid = unpack(data, offset)
        if length < _NLMSGHDR.size or offset + length > len(data):
            break
        body = offset + _NLMSGHDR.size
        end = offset + length
        reply = replies.get(seq)
        if reply is not None and not reply.done:
            if kind == NLMSG_ERROR:
                (err,) = _I32.unpack_from(data, body)
                reply.error = -err
                reply.done = True
                if flags & NLM_F_ACK_TLVS:
                    # The echoed request header (and, uncapped, its body) precede the attributes.
                    (echoed_len,) = _U32.unpack_from(data, body + 4)
                    skip = _NLMSGHDR.size if flags & NLM_F_CAPPED else echoed_len
                    ext = parse_attrs(data, body + 4 + _pad(skip), end)
                    if NLMSGERR_ATTR_MSG in ext:
                        reply.error_text = ext[NLMSGERR_ATTR_MSG].split(b"\0", 1)[0].decode("utf-8", "replace")
            elif kind == NLMSG_DONE:
                reply.done = True
                if end - body >= 4:
                    (err,) = _I32.unpack_from(data, body)
                    reply.error = -err if err < 0 else 0
            elif kind != NLMSG_NOOP:
                hsize = _HEADER_SIZE.get(kind, 0)
                reply.messages.append(Message(kind, data[body:body + hsize], parse_attrs(data, body + hsize, end)))
        offset += _pad(length)


# -- views of reply messages ---------------------------------------------------------

def ifinfo(msg: Message) -> tuple[int, int, int]:
    """(index, flags, type) of a link message."""
    _family, dev_type, index, flags, _change = _IFINFOMSG.unpack_from(msg.header)
    return index, flags, dev_type


def ifaddr(msg: Message) -> tuple[int, int, int, int]:
    """(family, prefixlen, flags, index) of an address message."""
    family, prefixlen, flags, _scope, index = _IFADDRMSG.unpack_from(msg.header)
    return family, prefixlen, flags, index


def rtinfo(msg: Message) -> tuple[int, int, int, int, int, int]:
    """(family, dst_len, table, protocol, scope, type) of a route message."""
    family, dst_len, _src, _tos, table, protocol, scope, kind, _flags = _RTMSG.unpack_from(msg.header)
    return family, dst_len, table, protocol, scope, kind


def mac_text(raw: bytes | None) -> str:
    return ":".join(f"{b:02x}" for b in raw) if raw else ""


# -- the socket ----------------------------------------------------------------------

class Rtnl:
    """One NETLINK_ROUTE socket in one namespace (see netns.netlink_socket), for one thread at a time."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._seq = 0
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECV_BUFFER)
        # Errors come back with the kernel's own explanation and without our request echoed.
        for opt in (NETLINK_EXT_ACK, NETLINK_CAP_ACK):
            try:
                sock.setsockopt(SOL_NETLINK, opt, 1)
            except OSError:
                pass
        sock.bind((0, 0))

    def close(self) -> None:
        self._sock.close()

    def fileno(self) -> int:
        return self._sock.fileno()

    def batch(self, requests: Sequence[Request]) -> list[Reply]:
        """Send the requests in one datagram and wait for every reply; never raises on a refusal.

        At most one dump per batch, and it must be the last request (the kernel
        runs one dump at a time per socket, and later requests would wait behind it).
        """
        replies: dict[int, Reply] = {}
        chunks = []
        for req in requests:
            self._seq = (self._seq + 1) & 0xFFFFFFFF or 1
            replies[self._seq] = Reply()
            chunks.append(encode(req, self._seq))
        self._sock.send(b"".join(chunks))
        pending = len(replies)
        recv = self._sock.recv
        while pending:
            data = recv(RECV_BUFFER)
            before = pending
            parse(data, replies)
            pending = sum(1 for r in replies.values() if not r.done)
            if pending == before and not data:
                raise OSError(errno_mod.EIO, "netlink socket closed")
        return list(replies.values())

    def request(self, req: Request, ignore: Iterable[int] = ()) -> Reply:
        """One request; NetlinkError unless it succeeded or failed with an errno in `ignore`."""
        reply = self.batch((req,))[0]
        check(reply, req, ignore)
        return reply


def check(reply: Reply, req: Request, ignore: Iterable[int] = ()) -> None:
    if reply.error and reply.error not in ignore:
        what = req.what or "netlink request"
        if reply.error_text:
            what = f"{what} ({reply.error_text})"
        raise NetlinkError(reply.error, what)
