"""IPVS over generic netlink (pyroute2), and the device that holds the service addresses.

The value types at the top are plain data with no pyroute2 in sight, so the
pure IPVS planner (netplane/proxy/ipvs.py) and its tests import them without
paying for pyroute2; the classes below import it when they are built.

- `Ipvs` reads virtual servers and their real servers (all of them, or only
  some keys for a partial sync) and applies a list of `IpvsOp`s in order. Real
  servers always use masquerading (NAT). pyroute2 only resolves the IPVS generic
  netlink family: requests are packed by hand and sent in batches (see "batched
  netlink writes" below for why), and replies are parsed the same way.
- `ServiceDevice` is kube-proxy's `kube-ipvs0`: a device that stays down and
  holds every ClusterIP, external IP and load-balancer IP as a /32, so that the
  node treats them as local and IPVS (which hooks LOCAL_IN) sees the traffic. It
  is a `dummy` where the kernel has one and a port-less bridge otherwise (this
  machine's kernel has no dummy, see MACHINE-NOTES): a local address on a down
  device still gets its local route, which is all that is needed.

Both work in the current network namespace or in a named one: the netlink
socket is opened inside it (netns.netlink_socket), without a fork.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import struct
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from . import netns, rtnl

NETLINK_GENERIC = 16
PROTOCOL_NUMBERS = {"TCP": socket.IPPROTO_TCP, "UDP": socket.IPPROTO_UDP, "SCTP": 132}
PROTOCOL_NAMES = {v: k for k, v in PROTOCOL_NUMBERS.items()}
FWD_MASQ = 0  # IP_VS_CONN_F_MASQ: NAT; 3 (IP_VS_CONN_F_DROUTE) is pyroute2's default
SVC_F_PERSISTENT = 0x1  # IP_VS_SVC_F_PERSISTENT
HOST_NETMASK = "255.255.255.255"


class IpvsError(RuntimeError):
    def __init__(self, message: str, code: int = 0) -> None:
        super().__init__(message)
        self.errno = code


@dataclass(frozen=True, slots=True, order=True)
class VirtualServerKey:
    """What identifies an IPVS virtual server: protocol, address, port."""

    protocol: str  # "TCP" | "UDP" | "SCTP"
    address: str
    port: int

    def __str__(self) -> str:
        return f"{self.protocol.lower()}:{self.address}:{self.port}"


@dataclass(frozen=True, slots=True)
class VirtualServer:
    key: VirtualServerKey
    scheduler: str = "rr"
    persistence: int = 0  # seconds of ClientIP persistence (sessionAffinity); 0 = none


@dataclass(frozen=True, slots=True, order=True)
class RealServer:
    address: str
    port: int
    weight: int = 1

    @property
    def target(self) -> tuple[str, int]:
        return (self.address, self.port)


@dataclass(frozen=True, slots=True, order=True)
class ObservedRealServer:
    """A real server as the kernel reports it, with the connection counts that decide a drain."""

    address: str
    port: int
    weight: int
    active: int = 0
    inactive: int = 0
    masquerade: bool = True

    @property
    def target(self) -> tuple[str, int]:
        return (self.address, self.port)

    @property
    def connections(self) -> int:
        return self.active + self.inactive


Observed = dict[VirtualServerKey, tuple[VirtualServer, dict[tuple[str, int], ObservedRealServer]]]

OpKind = Literal["add-service", "set-service", "del-service", "add-dest", "set-dest", "del-dest"]


@dataclass(frozen=True, slots=True, order=True)
class IpvsOp:
    kind: OpKind
    service: VirtualServer
    dest: RealServer | None = None

    def __str__(self) -> str:
        dest = f" -> {self.dest.address}:{self.dest.port} w{self.dest.weight}" if self.dest else ""
        return f"{self.kind} {self.service.key}{dest}"


class IpvsKernel(Protocol):
    """What the IPVS backend needs from the kernel; `IpvsNode` is the real one, tests use fakes."""

    def observe(self, keys: Collection[VirtualServerKey] | None = None) -> Observed: ...

    def apply(self, ops: Sequence[IpvsOp]) -> int: ...

    def ensure_device(self) -> str: ...

    def device_present(self) -> bool: ...

    def bound_addresses(self) -> set[str]: ...

    def bind(self, addresses: Collection[str]) -> None: ...

    def unbind(self, addresses: Collection[str]) -> None: ...

    def local_addresses(self) -> list[tuple[str, str]]: ...

    def ensure_sysctls(self, values: Mapping[str, str]) -> None: ...


# -- batched netlink writes -----------------------------------------------------------------------
# pyroute2 builds each request through layers of Python objects and waits for each answer: ~1 ms per
# request here and ~25 ms in the TCG test VM, i.e. minutes for 1,000 services x 10 endpoints. The
# writes of a sync are therefore packed by hand (plain struct) and sent many per send(), their
# acknowledgements read afterwards; the kernel handles each message of a batch on its own.
NLM_F_REQUEST, NLM_F_ACK, NLM_F_EXCL, NLM_F_CREATE = 0x1, 0x4, 0x200, 0x400
NLM_F_DUMP = 0x300
NLMSG_ERROR, NLMSG_DONE = 2, 3
RTM_NEWADDR, RTM_DELADDR = 20, 21
IFA_ADDRESS, IFA_LOCAL = 1, 2
IPVS_CMDS = {"add-service": 1, "set-service": 2, "del-service": 3, "add-dest": 5, "set-dest": 6, "del-dest": 7}
# Each acknowledgement is its own skb (~1 KiB of receive buffer whatever its size): more than ~200
# unread ones overflow the default buffer and the kernel drops them (ENOBUFS). So: batches of at most
# BATCH_MESSAGES, and a larger buffer where root may have one.
BATCH_BYTES = 64 * 1024
BATCH_MESSAGES = 100
RCVBUF = 4 << 20
SO_RCVBUFFORCE = 33


_nla = rtnl.attr


def _service_nla(vs: VirtualServer | VirtualServerKey) -> bytes:
    key = vs.key if isinstance(vs, VirtualServer) else vs
    attrs = (_nla(1, struct.pack("=H", socket.AF_INET)) + _nla(2, struct.pack("=H", PROTOCOL_NUMBERS[key.protocol]))
             + _nla(3, socket.inet_aton(key.address)) + _nla(4, struct.pack("!H", key.port)))
    if isinstance(vs, VirtualServer):
        flags = SVC_F_PERSISTENT if vs.persistence else 0
        attrs += (_nla(6, vs.scheduler.encode() + b"\0") + _nla(7, struct.pack("=II", flags, 0xFFFFFFFF))
                  + _nla(8, struct.pack("=I", vs.persistence)) + _nla(9, socket.inet_aton(HOST_NETMASK)))
    return _nla(1, attrs)  # IPVS_CMD_ATTR_SERVICE


def _dest_nla(dest: RealServer, full: bool) -> bytes:
    attrs = _nla(1, socket.inet_aton(dest.address)) + _nla(2, struct.pack("!H", dest.port))
    if full:
        attrs += (_nla(3, struct.pack("=I", FWD_MASQ)) + _nla(4, struct.pack("=I", dest.weight))
                  + _nla(5, struct.pack("=I", 0)) + _nla(6, struct.pack("=I", 0))
                  + _nla(11, struct.pack("=H", socket.AF_INET)))
    return _nla(2, attrs)  # IPVS_CMD_ATTR_DEST


def ipvs_message_body(op: IpvsOp) -> bytes:
    """The generic netlink payload (genlmsghdr + attributes) of one IPVS operation."""
    body = struct.pack("=BBH", IPVS_CMDS[op.kind], 1, 0)
    if op.kind.endswith("service"):
        return body + _service_nla(op.service.key if op.kind == "del-service" else op.service)
    assert op.dest is not None
    return body + _service_nla(op.service.key) + _dest_nla(op.dest, full=op.kind != "del-dest")


def address_message_body(index: int, address: str) -> bytes:
    raw = socket.inet_aton(address)
    return struct.pack("=BBBBI", socket.AF_INET, 32, 0, 0, index) + _nla(IFA_LOCAL, raw) + _nla(IFA_ADDRESS, raw)


def netlink_messages(data: bytes) -> Iterator[tuple[int, int, bytes]]:
    """(type, sequence number, payload) of each netlink message in one received datagram."""
    offset = 0
    while offset + 16 <= len(data):
        length, msg_type, _, seq, _ = struct.unpack_from("=IHHII", data, offset)
        yield msg_type, seq, data[offset + 16:offset + length]
        offset += max(length, 16) + (-length % 4)


def parse_attrs(data: bytes, offset: int = 0) -> dict[int, bytes]:
    attrs: dict[int, bytes] = {}
    while offset + 4 <= len(data):
        length, kind = struct.unpack_from("=HH", data, offset)
        if length < 4:
            break
        attrs[kind & 0x3FFF] = data[offset + 4:offset + length]  # without NLA_F_NESTED / BYTEORDER
        offset += length + (-length % 4)
    return attrs


def _u(attrs: dict[int, bytes], kind: int, fmt: str = "=I") -> int:
    raw = attrs.get(kind)
    return int(struct.unpack_from(fmt, raw)[0]) if raw else 0


def parse_service(payload: bytes) -> VirtualServer | None:
    """An IPVS_CMD_NEW_SERVICE reply (genlmsghdr + attributes); None for services never ours (IPv6, fwmark)."""
    svc = parse_attrs(parse_attrs(payload, 4).get(1, b""))
    if _u(svc, 1, "=H") != socket.AF_INET or _u(svc, 5):
        return None
    proto = PROTOCOL_NAMES.get(_u(svc, 2, "=H"))
    if proto is None:
        return None
    key = VirtualServerKey(proto, socket.inet_ntoa(svc[3][:4]), _u(svc, 4, "!H"))
    persistent = _u(svc, 7) & SVC_F_PERSISTENT
    return VirtualServer(key, svc.get(6, b"").rstrip(b"\0").decode(), _u(svc, 8) if persistent else 0)


def parse_dest(payload: bytes) -> ObservedRealServer | None:
    dest = parse_attrs(parse_attrs(payload, 4).get(2, b""))
    if 1 not in dest:
        return None
    return ObservedRealServer(
        address=socket.inet_ntoa(dest[1][:4]),
        port=_u(dest, 2, "!H"),
        weight=_u(dest, 4),
        active=_u(dest, 7),
        inactive=_u(dest, 8),
        masquerade=(_u(dest, 3) & 0x7) == FWD_MASQ,
    )


@dataclass(frozen=True, slots=True)
class NetlinkRequest:
    msg_type: int
    flags: int
    body: bytes
    what: str  # for error messages
    tolerated: frozenset[int] = frozenset()  # errnos that mean "already done"


ErrorBuilder = Callable[[NetlinkRequest, int, bytes], Exception]


def _ipvs_error(req: NetlinkRequest, code: int, ack: bytes) -> Exception:
    return IpvsError(f"{req.what} failed: {os.strerror(code)}", code)


def send_batched(sock: socket.socket, requests: Sequence[NetlinkRequest], seq_start: int = 1,
                 error: ErrorBuilder = _ipvs_error) -> int:
    """Send in batches, read every acknowledgement; raises on the first untolerated error (after the
    whole batch was handled, so the kernel is never left mid-message). Returns the number sent.

    `error` builds the exception from the request, the errno and the acknowledgement's payload
    (which echoes the request: ipset, for one, marks in it which member failed)."""
    first_error: tuple[NetlinkRequest, int, bytes] | None = None
    with contextlib.suppress(OSError):  # SO_RCVBUFFORCE needs CAP_NET_ADMIN; the default works, slower
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RCVBUF)
    i = 0
    seq = seq_start
    while i < len(requests):
        chunk: list[bytes] = []
        pending: dict[int, NetlinkRequest] = {}
        size = 0
        while i < len(requests) and size < BATCH_BYTES and len(chunk) < BATCH_MESSAGES:
            req = requests[i]
            length = 16 + len(req.body)
            chunk.append(struct.pack("=IHHII", length, req.msg_type, req.flags | NLM_F_REQUEST | NLM_F_ACK, seq, 0)
                         + req.body)
            pending[seq] = req
            size += length
            seq += 1
            i += 1
        sock.sendall(b"".join(chunk))
        while pending:
            for msg_type, msg_seq, payload in netlink_messages(sock.recv(1 << 20)):
                if msg_type == NLMSG_ERROR and msg_seq in pending:
                    (code,) = struct.unpack_from("=i", payload)
                    req = pending.pop(msg_seq)
                    if code and -code not in req.tolerated and first_error is None:
                        first_error = (req, -code, payload)
    if first_error is not None:
        raise error(*first_error)
    return len(requests)


# -- the real thing ------------------------------------------------------------------------------

def _netns_path(netns_name: str | None) -> str | None:
    return f"/run/netns/{netns_name}" if netns_name else None


class Ipvs:
    """IPVS in one network namespace. Not thread-safe: one instance per thread (or per sync)."""

    def __init__(self, netns_name: str | None = None) -> None:
        from pyroute2 import IPVS

        self.netns_name = netns_name
        self._seq = 0
        sock = netns.netlink_socket(_netns_path(netns_name), NETLINK_GENERIC)
        try:
            self._ipvs = IPVS(use_socket=sock)  # resolves the IPVS family id (prid); reads and writes are raw
        except Exception as e:
            sock.close()
            raise IpvsError(f"cannot open IPVS netlink (is ip_vs loaded?): {e}") from e

    def close(self) -> None:
        self._ipvs.close()

    def __enter__(self) -> Ipvs:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- reading -------------------------------------------------------------------------------
    # Raw too, for the same reason as the writes: a restart reads every virtual and real server.
    def _socket(self) -> socket.socket:
        sock = netns.netlink_socket(_netns_path(self.netns_name), NETLINK_GENERIC)
        sock.bind((0, 0))
        return sock

    def _query(self, sock: socket.socket, body: bytes, dump: bool, what: str) -> list[bytes] | None:
        """The replies' payloads; None when the kernel answers "no such service"."""
        self._seq += 1
        flags = NLM_F_REQUEST | (NLM_F_DUMP if dump else NLM_F_ACK)
        sock.sendall(struct.pack("=IHHII", 16 + len(body), int(self._ipvs.prid), flags, self._seq, 0) + body)
        out: list[bytes] = []
        while True:
            for msg_type, seq, payload in netlink_messages(sock.recv(1 << 20)):
                if seq != self._seq:
                    continue
                if msg_type == NLMSG_DONE:
                    return out
                if msg_type == NLMSG_ERROR:
                    (error,) = struct.unpack_from("=i", payload)
                    if error == 0:
                        return out
                    if -error in (errno.ESRCH, errno.ENOENT):
                        return None
                    raise IpvsError(f"{what} failed: {os.strerror(-error)}", -error)
                out.append(payload)

    def observe(self, keys: Collection[VirtualServerKey] | None = None) -> Observed:
        """Virtual servers with their real servers: every IPv4 one (None), or only those among `keys`."""
        out: Observed = {}
        sock = self._socket()
        try:
            if keys is None:
                found = [vs for vs in map(parse_service, self._query(sock, struct.pack("=BBH", 4, 1, 0), True,
                                                                     "listing virtual servers") or ())
                         if vs is not None]
            else:
                found = []
                for key in keys:
                    replies = self._query(sock, struct.pack("=BBH", 4, 1, 0) + _service_nla(key), False,
                                          f"reading virtual server {key}")
                    found += [vs for vs in map(parse_service, replies or ()) if vs is not None and vs.key == key]
            for vs in found:
                replies = self._query(sock, struct.pack("=BBH", 8, 1, 0) + _service_nla(vs.key), True,
                                      f"listing real servers of {vs.key}") or []
                reals = [rs for rs in map(parse_dest, replies) if rs is not None]
                out[vs.key] = (vs, {rs.target: rs for rs in reals})
        finally:
            sock.close()
        return out

    # -- writing -------------------------------------------------------------------------------
    def apply(self, ops: Iterable[IpvsOp]) -> int:
        """Apply in order, batched; returns how many were sent. Idempotent: "exists"/"gone" are success."""
        family = int(self._ipvs.prid)
        requests = []
        for op in ops:
            if op.kind.startswith("add"):
                tolerated = frozenset({errno.EEXIST})
            elif op.kind.startswith("del"):
                tolerated = frozenset({errno.ESRCH, errno.ENOENT})
            else:
                tolerated = frozenset()
            requests.append(NetlinkRequest(family, 0, ipvs_message_body(op), f"IPVS {op}", tolerated))
        if not requests:
            return 0
        sock = netns.netlink_socket(_netns_path(self.netns_name), NETLINK_GENERIC)
        try:
            sock.bind((0, 0))
            return send_batched(sock, requests)
        finally:
            sock.close()


class ServiceDevice:
    """The down device holding the service addresses (kube-proxy's kube-ipvs0)."""

    def __init__(self, name: str, netns_name: str | None = None) -> None:
        from netplane.kernel.links import Netlink

        self.name = name
        self.netns_name = netns_name
        self._nl = Netlink(_netns_path(netns_name))
        self.kind = ""

    def close(self) -> None:
        self._nl.close()

    def __enter__(self) -> ServiceDevice:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _index(self) -> int:
        link = self._nl.link(self.name)
        if link is None:
            raise IpvsError(f"service device {self.name!r} is missing", errno.ENODEV)
        return link.index

    def exists(self) -> bool:
        return self._nl.link(self.name) is not None

    def ensure(self) -> str:
        """Create the device if missing (dummy, or a bridge where dummy is unavailable); returns its kind."""
        from pyroute2.netlink.exceptions import NetlinkError

        link = self._nl.link(self.name)
        if link is not None:
            self.kind = link.kind
            return link.kind
        from pyroute2 import IPRoute

        with IPRoute(use_socket=netns.netlink_socket(_netns_path(self.netns_name))) as ipr:
            for kind in ("dummy", "bridge"):
                try:
                    ipr.link("add", ifname=self.name, kind=kind)
                except NetlinkError as e:
                    if e.code == errno.EEXIST:
                        break
                    # EOPNOTSUPP / ENOENT: the kernel has no such link type (no dummy here): next one.
                    if e.code in (errno.EOPNOTSUPP, errno.ENOENT, errno.EINVAL):
                        continue
                    raise IpvsError(f"cannot create {kind} device {self.name!r}: {e}", e.code) from e
                break
        link = self._nl.link(self.name)
        if link is None:
            raise IpvsError(f"cannot create the service device {self.name!r} (neither dummy nor bridge)")
        self.kind = link.kind
        return link.kind

    def addresses(self) -> set[str]:
        """The IPv4 addresses on the device."""
        index = self._index()
        return {str(iface.ip) for _, iface in self._nl.addresses(index) if iface.version == 4}

    def _addresses_batch(self, msg_type: int, flags: int, addresses: Iterable[str], verb: str,
                         tolerated: frozenset[int]) -> int:
        index = self._index()
        requests = [NetlinkRequest(msg_type, flags, address_message_body(index, a), f"{verb} {a}/32 on {self.name}",
                                   tolerated) for a in addresses]
        if not requests:
            return 0
        sock = netns.netlink_socket(_netns_path(self.netns_name))
        try:
            sock.bind((0, 0))
            return send_batched(sock, requests)
        finally:
            sock.close()

    def bind(self, addresses: Iterable[str]) -> int:
        """Add /32 addresses (one batch of netlink messages); present ones are fine."""
        return self._addresses_batch(RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL, addresses, "adding",
                                     frozenset({errno.EEXIST}))

    def unbind(self, addresses: Iterable[str]) -> None:
        """Delete /32 addresses; absent ones are fine."""
        self._addresses_batch(RTM_DELADDR, 0, addresses, "deleting",
                              frozenset({errno.EADDRNOTAVAIL, errno.ENOENT, errno.ENODEV}))

    def local_addresses(self) -> list[tuple[str, str]]:
        """(device name, IPv4 address) of every address in the namespace."""
        names = {link.index: link.name for link in self._nl.links()}
        return [(names.get(index, ""), str(iface.ip)) for index, iface in self._nl.addresses()
                if iface.version == 4]

    def delete(self) -> None:
        link = self._nl.link(self.name)
        if link is not None:
            self._nl.delete_link(link.index)


class IpvsNode:
    """`IpvsKernel` for one namespace: opens its netlink sockets per call, so any thread may use it."""

    def __init__(self, device: str, netns_name: str | None = None) -> None:
        self.device = device
        self.netns_name = netns_name

    def observe(self, keys: Collection[VirtualServerKey] | None = None) -> Observed:
        with Ipvs(self.netns_name) as ipvs:
            return ipvs.observe(keys)

    def apply(self, ops: Sequence[IpvsOp]) -> int:
        if not ops:
            return 0
        with Ipvs(self.netns_name) as ipvs:
            return ipvs.apply(ops)

    def ensure_device(self) -> str:
        with ServiceDevice(self.device, self.netns_name) as dev:
            return dev.ensure()

    def device_present(self) -> bool:
        with ServiceDevice(self.device, self.netns_name) as dev:
            return dev.exists()

    def bound_addresses(self) -> set[str]:
        with ServiceDevice(self.device, self.netns_name) as dev:
            return dev.addresses()

    def bind(self, addresses: Collection[str]) -> None:
        if addresses:
            with ServiceDevice(self.device, self.netns_name) as dev:
                dev.bind(addresses)

    def unbind(self, addresses: Collection[str]) -> None:
        if addresses:
            with ServiceDevice(self.device, self.netns_name) as dev:
                dev.unbind(addresses)

    def local_addresses(self) -> list[tuple[str, str]]:
        with ServiceDevice(self.device, self.netns_name) as dev:
            return dev.local_addresses()

    def ensure_sysctls(self, values: Mapping[str, str]) -> None:
        """Write net.* sysctls of the namespace in-process: /proc/sys/net resolves to the namespace of
        the thread that opens the file, so no `ip netns exec sysctl` per value (~1 s each in the test VM)."""
        path = _netns_path(self.netns_name)
        files = {}
        try:
            with contextlib.nullcontext() if path is None else netns.entered(path):
                for name in values:
                    files[name] = open(f"/proc/sys/{name.replace('.', '/')}", "r+")  # noqa: SIM115
        except OSError as e:
            for f in files.values():
                f.close()
            raise IpvsError(f"cannot open sysctl {e.filename}: {e.strerror}", e.errno or 0) from e
        for name, f in files.items():
            with f:
                try:
                    if f.read().strip() != values[name]:
                        f.seek(0)
                        f.write(values[name] + "\n")
                except OSError as e:
                    raise IpvsError(f"cannot set {name}={values[name]}: {e}", e.errno or 0) from e
