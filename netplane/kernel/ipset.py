"""ipset: set members over batched netlink, set creation through `ipset restore`, reading through `ipset save`.

A sync's changes arrive as one restore text (create/add/del lines, as `ipset restore`
reads them), the form the IPVS planner renders and its tests read. `Ipset.restore`
applies it in order:
- add and del lines go straight to the kernel over netlink (NETLINK_NETFILTER, the
  ipset subsystem), packed by hand: consecutive members of one set and one command
  travel in a single IPSET_CMD_ADD/DEL message (the kernel's multi-member form, an
  IPSET_ATTR_ADT list of IPSET_ATTR_DATA entries), and several messages per send()
  (netplane/kernel/ipvs.py `send_batched`). `ipset restore` sends one request per
  member and waits for each: minutes for the ~100k members of 10k services x 10
  endpoints in the TCG test VM, where this takes well under a second of kernel work;
- every other line (create, destroy, flush: a few per full sync) goes through one
  `ipset restore -exist` call, whose knowledge of each set type's revisions and
  create options is not worth repeating here.

Messages are sent without NLM_F_EXCL, which the kernel reads as `-exist`: adding a
present member and deleting an absent one succeed, so every text is idempotent.

Set names for cleanup are listed over netlink too (IPSET_CMD_LIST, names only), and
sets destroyed with IPSET_CMD_DESTROY: that path needs no `ipset` binary, so a node
in another proxy mode can remove the IPVS mode's sets without having ipset installed.

Runs in the current network namespace or in a named one (`ip netns exec` for the
binary; the netlink socket is opened inside the namespace without a fork).
"""

from __future__ import annotations

import errno
import os
import socket
import struct
import subprocess
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

from netplane.kernel import rtnl

DEFAULT_TIMEOUT = 120.0


class IpsetError(RuntimeError):
    def __init__(self, message: str, code: int = 0) -> None:
        super().__init__(message)
        self.errno = code


class IpsetKernel(Protocol):
    def save(self) -> str: ...

    def restore(self, text: str) -> None: ...


@dataclass(slots=True)
class SavedSet:
    name: str
    type: str
    members: set[str] = field(default_factory=set)


def normalize_member(entry: str) -> str:
    """One spelling per member: ipset prints a host net without "/32", whatever was added."""
    return ",".join(part[:-3] if part.endswith("/32") else part for part in entry.split(","))


def parse_save(text: str, prefix: str = "") -> dict[str, SavedSet]:
    """The sets (whose names start with `prefix`) and their members, from `ipset save` output."""
    sets: dict[str, SavedSet] = {}
    for line in text.splitlines():
        words = line.split()
        if len(words) < 3 or not words[1].startswith(prefix):
            continue
        if words[0] == "create":
            sets[words[1]] = SavedSet(words[1], words[2])
        elif words[0] == "add" and words[1] in sets:
            sets[words[1]].members.add(normalize_member(words[2]))
    return sets


# -- the netlink protocol (include/uapi/linux/netfilter/ipset/ip_set.h) ------------------------------
NETLINK_NETFILTER = 12
NFNL_SUBSYS_IPSET = 6
# Protocol 6 is what every kernel since 2.6.39 accepts for these commands (7 only adds set indexes).
IPSET_PROTOCOL = 6
IPSET_MAXNAMELEN = 32
CMD_DESTROY, CMD_LIST, CMD_ADD, CMD_DEL = 3, 7, 9, 10
# Command-level attributes.
ATTR_PROTOCOL, ATTR_SETNAME, ATTR_FLAGS, ATTR_DATA, ATTR_ADT, ATTR_LINENO = 1, 2, 6, 7, 8, 9
# Data attributes (inside IPSET_ATTR_DATA).
ATTR_IP, ATTR_CIDR, ATTR_PORT, ATTR_PROTO, ATTR_IP2, ATTR_CIDR2 = 1, 3, 4, 7, 20, 21
ATTR_IPADDR_IPV4 = 1
FLAG_LIST_SETNAME = 1 << 1
NLA_F_NESTED, NLA_F_NET_BYTEORDER = 1 << 15, 1 << 14
NLM_F_REQUEST, NLM_F_DUMP = 0x1, 0x300
NLMSG_ERROR, NLMSG_DONE = 2, 3
# An attribute's length is 16 bits, so one message's member list must stay under 64 KiB; 32 KiB
# (~700 members) keeps a batch of messages well inside the socket's default send buffer.
ADT_BYTES = 32 * 1024
PROTOCOLS = {"tcp": socket.IPPROTO_TCP, "udp": socket.IPPROTO_UDP, "sctp": 132, "icmp": 1}

ERRORS = {  # enum ipset_errno, and the hash/bitmap types' own codes (IPSET_ERR_TYPE_SPECIFIC = 4352)
    4097: "protocol error (kernel and netplane disagree on the message format)",
    4098: "no such set type", 4099: "maximum number of sets reached", 4100: "set is in use",
    4102: "set type mismatch", 4103: "element exists / does not exist", 4104: "invalid CIDR",
    4106: "invalid address family", 4108: "set is referenced by a rule", 4109: "invalid IPv4 address",
    4352: "set is full (or value out of the bitmap's range)", 4353: "invalid element",
    4354: "invalid protocol", 4355: "missing protocol",
}


def describe(code: int) -> str:
    if code == errno.ENOENT:
        return "no such set"
    return ERRORS.get(code) or os.strerror(code)


nla = rtnl.attr


# Fixed-layout attributes packed in one call each: a sync encodes ~100k members, and at that count the
# Python encoding is most of the time this path takes (the kernel's part is smaller).
_IP_ATTR = struct.Struct("=HHHH4s")  # nested { IPSET_ATTR_IPADDR_IPV4 (network order) }
_PORT_ATTR = struct.Struct("=HHHxx")  # the value pre-swapped to network order (socket.htons)
_U8_ATTR = struct.Struct("=HHB3x")
_U32_ATTR = struct.Struct("=HHI")
_NLA_HEADER = struct.Struct("=HH")


def _ip(kind: int, text: str) -> bytes:
    if text.count(".") != 3:
        raise ValueError(f"{text!r} is not a dotted IPv4 address")
    try:
        raw = socket.inet_aton(text)
    except OSError as e:
        raise ValueError(f"{text!r} is not an IPv4 address") from e
    return _IP_ATTR.pack(12, kind | NLA_F_NESTED, 8, ATTR_IPADDR_IPV4 | NLA_F_NET_BYTEORDER, raw)


def _cidr(kind: int, text: str) -> bytes:
    if not text.isdigit() or not 0 < int(text) <= 32:
        raise ValueError(f"/{text} is not an IPv4 prefix length")
    return _U8_ATTR.pack(5, kind, int(text))


def _port(text: str) -> bytes:
    if not text.isdigit() or int(text) > 65535:
        raise ValueError(f"{text!r} is not a port")
    return _PORT_ATTR.pack(6, ATTR_PORT | NLA_F_NET_BYTEORDER, socket.htons(int(text)))


def _address(kind: int, cidr_kind: int, text: str) -> bytes:
    if "/" not in text:
        return _ip(kind, text)
    address, _, prefix = text.partition("/")
    return _ip(kind, address) + _cidr(cidr_kind, prefix)


_IP_PORT = struct.Struct("=HHHH4s" "HHHxx" "HHB3x")
_IP_PORT_IP = struct.Struct("=HHHH4s" "HHHxx" "HHB3x" "HHHH4s")
_IP_KIND, _IP2_KIND = ATTR_IP | NLA_F_NESTED, ATTR_IP2 | NLA_F_NESTED
_V4_KIND, _PORT_KIND = ATTR_IPADDR_IPV4 | NLA_F_NET_BYTEORDER, ATTR_PORT | NLA_F_NET_BYTEORDER


def _fast_member(parts: list[str]) -> bytes | None:
    """`IP,PROTO:PORT[,IP]` without prefixes (nearly every member of a sync) in one pack; None for any
    other shape or anything unusual, which the general path then encodes or refuses."""
    if len(parts) < 2 or "/" in parts[0] or parts[0].count(".") != 3:
        return None
    proto, _, port = parts[1].partition(":")
    number = PROTOCOLS.get(proto)
    if number is None or not port.isdigit() or int(port) > 65535:
        return None
    try:
        ip = socket.inet_aton(parts[0])
        if len(parts) == 2:
            return _IP_PORT.pack(12, _IP_KIND, 8, _V4_KIND, ip, 6, _PORT_KIND, socket.htons(int(port)),
                                 5, ATTR_PROTO, number)
        if "/" in parts[2] or parts[2].count(".") != 3:
            return None
        return _IP_PORT_IP.pack(12, _IP_KIND, 8, _V4_KIND, ip, 6, _PORT_KIND, socket.htons(int(port)),
                                5, ATTR_PROTO, number, 12, _IP2_KIND, 8, _V4_KIND, socket.inet_aton(parts[2]))
    except OSError:
        return None


def encode_member(member: str) -> bytes:
    """The data attributes of one member, in the spelling of `ipset save`: `IP[/len]`, `PORT` (bitmap:port),
    `IP,PROTO:PORT`, `IP,PROTO:PORT,IP[/len]`. The set type is not needed: the shape says which is which."""
    parts = member.split(",")
    if len(parts) > 3 or not parts[0]:
        raise ValueError(f"unsupported ipset member {member!r}")
    fast = _fast_member(parts)
    if fast is not None:
        return fast
    if len(parts) == 1 and parts[0].isdigit():
        return _port(parts[0])  # bitmap:port
    out = _address(ATTR_IP, ATTR_CIDR, parts[0])
    if len(parts) >= 2:
        proto, sep, port = parts[1].rpartition(":")
        number = PROTOCOLS.get(proto if sep else "tcp")  # a bare port is tcp, as ipset reads it
        if number is None:
            raise ValueError(f"unknown protocol {proto!r} in ipset member {member!r}")
        out += _port(port) + _U8_ATTR.pack(5, ATTR_PROTO, number)
    if len(parts) == 3:
        out += _address(ATTR_IP2, ATTR_CIDR2, parts[2])
    return out


def _name(set_name: str) -> bytes:
    raw = set_name.encode()
    if not raw or len(raw) >= IPSET_MAXNAMELEN or b"\0" in raw:
        raise ValueError(f"invalid ipset name {set_name!r}")
    return nla(ATTR_SETNAME, raw + b"\0")


def _header() -> bytes:
    # nfgenmsg (family, version NFNETLINK_V0, resource id), then the protocol version every command carries.
    return struct.pack("=BBH", socket.AF_INET, 0, 0) + nla(ATTR_PROTOCOL, struct.pack("=B", IPSET_PROTOCOL))


def message_type(cmd: int) -> int:
    return (NFNL_SUBSYS_IPSET << 8) | cmd


Command = Literal["add", "del"]


def member_messages(command: Command, set_name: str, members: Sequence[str],
                    limit: int = ADT_BYTES) -> list[tuple[bytes, list[str]]]:
    """The netlink payloads (after the nlmsghdr) that add or delete `members`, each with its members.

    Each payload is nfgenmsg + protocol + set name + a top-level IPSET_ATTR_LINENO (which the kernel
    requires with a member list, and overwrites in its error reply with the failed member's line) +
    IPSET_ATTR_ADT holding one IPSET_ATTR_DATA per member, each numbered (LINENO 1, 2, ...)."""
    head = _header() + _name(set_name) + nla(ATTR_LINENO, struct.pack("=I", 0))
    out: list[tuple[bytes, list[str]]] = []
    datas: list[bytes] = []
    names: list[str] = []
    size = 0

    def flush() -> None:
        if datas:
            out.append((head + nla(ATTR_ADT | NLA_F_NESTED, b"".join(datas)), list(names)))
            datas.clear()
            names.clear()

    for member in members:
        encoded = encode_member(member)
        length = 4 + len(encoded) + _U32_ATTR.size  # every attribute above is already 4-byte aligned
        if datas and size + length > limit:
            flush()
            size = 0
        datas.append(_NLA_HEADER.pack(length, ATTR_DATA | NLA_F_NESTED) + encoded
                     + _U32_ATTR.pack(8, ATTR_LINENO, len(datas) + 1))
        names.append(member)
        size += length
    flush()
    return out


def failed_line(ack: bytes) -> int:
    """From an ipset error reply (errno + the echoed request), the LINENO the kernel put there: the
    1-based position of the member that failed in its message (0 when it did not say)."""
    from netplane.kernel.ipvs import parse_attrs

    if len(ack) < 4 + 16 + 4:
        return 0
    (length,) = struct.unpack_from("=I", ack, 4)
    attrs = parse_attrs(ack[4:4 + length], 16 + 4)
    raw = attrs.get(ATTR_LINENO, b"")
    return int(struct.unpack_from("=I", raw)[0]) if len(raw) >= 4 else 0


def destroy_message(set_name: str) -> bytes:
    return _header() + _name(set_name)


def list_names_message() -> bytes:
    return _header() + nla(ATTR_FLAGS | NLA_F_NET_BYTEORDER, struct.pack("!I", FLAG_LIST_SETNAME))


# -- restore texts -----------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class MemberRun:
    """Consecutive add (or del) lines of one set: one message (or a few) on the wire."""

    command: Command
    set_name: str
    members: list[str]


def split_restore(text: str) -> Iterator[MemberRun | list[str]]:
    """A restore text in order: runs of members, and runs of other lines (for `ipset restore`)."""
    other: list[str] = []
    run: MemberRun | None = None
    for line in text.splitlines():
        words = line.split()
        if not words or words[0].startswith("#"):
            continue
        if words[0] in ("add", "del", "-A", "-D") and len(words) == 3:
            command: Command = "add" if words[0] in ("add", "-A") else "del"
            if other:
                yield other
                other = []
            if run is None or run.command != command or run.set_name != words[1]:
                if run is not None:
                    yield run
                run = MemberRun(command, words[1], [])
            run.members.append(words[2])
            continue
        if run is not None:
            yield run
            run = None
        other.append(line)
    if run is not None:
        yield run
    if other:
        yield other


# -- the real thing ------------------------------------------------------------------------------------
class Ipset:
    def __init__(self, netns: str | None = None, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.netns = netns
        self.timeout = timeout

    def _run(self, argv: Iterable[str], stdin: str | None = None) -> str:
        cmd = ["ip", "netns", "exec", self.netns, *argv] if self.netns else list(argv)
        try:
            proc = subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=self.timeout)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise IpsetError(f"ipset failed: {e}") from e
        if proc.returncode != 0:
            raise IpsetError(f"{' '.join(cmd[-2:])} exited {proc.returncode}: {proc.stderr.strip()[:2000]}")
        return proc.stdout

    def _socket(self) -> socket.socket:
        from netplane.kernel import netns

        try:
            sock = netns.netlink_socket(f"/run/netns/{self.netns}" if self.netns else None, NETLINK_NETFILTER)
            sock.bind((0, 0))
        except OSError as e:
            raise IpsetError(f"cannot open a netfilter netlink socket: {e}", e.errno or 0) from e
        return sock

    def save(self) -> str:
        return self._run(["ipset", "save"])

    def restore(self, text: str) -> None:
        """Apply a restore text in order: members over netlink, other lines through `ipset restore -exist`."""
        for part in split_restore(text):
            if isinstance(part, MemberRun):
                self.update([part])
            else:
                self._run(["ipset", "restore", "-exist"], stdin="\n".join(part) + "\n")

    def update(self, runs: Sequence[MemberRun]) -> int:
        """Add or delete members (present/absent ones are fine) in as few messages as fit; returns how
        many messages were sent. Raises IpsetError naming the first member the kernel refused."""
        from netplane.kernel.ipvs import NetlinkRequest, send_batched

        requests: list[NetlinkRequest] = []
        members_of: dict[int, list[str]] = {}
        for run in runs:
            cmd = CMD_ADD if run.command == "add" else CMD_DEL
            try:
                messages = member_messages(run.command, run.set_name, run.members)
            except ValueError as e:
                raise IpsetError(f"ipset {run.set_name}: {e}", errno.EINVAL) from e
            for body, members in messages:
                req = NetlinkRequest(message_type(cmd), 0, body,
                                     f"{'adding to' if cmd == CMD_ADD else 'deleting from'} ipset {run.set_name}")
                members_of[id(req)] = members
                requests.append(req)
        if not requests:
            return 0

        def error(req: NetlinkRequest, code: int, ack: bytes) -> Exception:
            members = members_of[id(req)]
            line = failed_line(ack)
            which = f"member {members[line - 1]!r}" if 0 < line <= len(members) else \
                f"one of {len(members)} members from {members[0]!r}"
            return IpsetError(f"{req.what}, {which}: {describe(code)}", code)

        sock = self._socket()
        try:
            return send_batched(sock, requests, error=error)
        finally:
            sock.close()

    def names(self, prefix: str = "") -> list[str]:
        """The names of the sets in the namespace (those starting with `prefix`); [] when the kernel
        has no ipset at all."""
        try:
            sock = self._socket()
        except IpsetError as e:
            if e.errno == errno.EPROTONOSUPPORT:
                return []
            raise
        names: list[str] = []
        try:
            sock.sendall(struct.pack("=IHHII", 16 + len(list_names_message()), message_type(CMD_LIST),
                                     NLM_F_REQUEST | NLM_F_DUMP, 1, 0) + list_names_message())
            from netplane.kernel.ipvs import netlink_messages, parse_attrs

            while True:
                for msg_type, _, payload in netlink_messages(sock.recv(1 << 20)):
                    if msg_type == NLMSG_DONE:
                        return [n for n in names if n.startswith(prefix)]
                    if msg_type == NLMSG_ERROR:
                        (code,) = struct.unpack_from("=i", payload)
                        if code == 0:
                            continue
                        if -code in (errno.EOPNOTSUPP, errno.EPROTONOSUPPORT, errno.ENOENT, errno.EINVAL):
                            return []  # no ipset in this kernel
                        raise IpsetError(f"listing ipsets failed: {describe(-code)}", -code)
                    if msg_type == message_type(CMD_LIST):
                        raw = parse_attrs(payload, 4).get(ATTR_SETNAME, b"")
                        name = raw.split(b"\0", 1)[0].decode(errors="replace")
                        if name and name not in names:
                            names.append(name)
        finally:
            sock.close()

    def destroy(self, set_names: Iterable[str]) -> int:
        """Destroy sets; absent ones are fine. A set still referenced by a rule fails (remove the rule first)."""
        from netplane.kernel.ipvs import NetlinkRequest, send_batched

        requests = [NetlinkRequest(message_type(CMD_DESTROY), 0, destroy_message(n), f"destroying ipset {n}",
                                   frozenset({errno.ENOENT})) for n in set_names]
        if not requests:
            return 0
        sock = self._socket()
        try:
            return send_batched(sock, requests,
                                error=lambda req, code, _: IpsetError(f"{req.what}: {describe(code)}", code))
        finally:
            sock.close()
