"""The ipset netlink encoding (netplane/kernel/ipset.py), without a kernel: member attributes, the
multi-member ADD/DEL messages, restore-text splitting, and the send path against a fake kernel on a
socket pair (acks, the kernel's "which line failed" reply)."""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Iterator

import pytest

from netplane.kernel import ipset
from netplane.kernel.ipset import Ipset, IpsetError, MemberRun, encode_member, member_messages, split_restore
from netplane.kernel.ipvs import parse_attrs


def attrs_list(data: bytes, offset: int = 0) -> list[tuple[int, bytes]]:
    """(type with flags, payload) in order, duplicates kept (parse_attrs keeps one per type)."""
    out = []
    while offset + 4 <= len(data):
        length, kind = struct.unpack_from("=HH", data, offset)
        assert length >= 4
        out.append((kind, data[offset + 4:offset + length]))
        offset += length + (-length % 4)
    return out


# -- one member ----------------------------------------------------------------------------------
def test_ip_port_member_bytes() -> None:
    # hash:ip,port "10.96.0.10,tcp:80": IP (nested, IPv4 in network order), PORT (network order), PROTO.
    expected = bytes.fromhex(
        "0c00 0180" "0800 0140" "0a60000a"   # IPSET_ATTR_IP|NESTED { IPADDR_IPV4|NET_BYTEORDER 10.96.0.10 }
        "0600 0440" "0050 0000"              # IPSET_ATTR_PORT|NET_BYTEORDER 80, padded
        "0500 0700" "06 000000"              # IPSET_ATTR_PROTO 6 (tcp), padded
    )
    assert encode_member("10.96.0.10,tcp:80") == expected


def test_bitmap_port_member_is_just_a_port() -> None:
    assert encode_member("30053") == bytes.fromhex("0600 0440 7565 0000")


def test_three_part_members_carry_the_second_address_and_its_prefix() -> None:
    loop = attrs_list(encode_member("10.244.1.2,sctp:9999,10.244.1.2"))
    assert [k for k, _ in loop] == [ipset.ATTR_IP | ipset.NLA_F_NESTED, ipset.ATTR_PORT | ipset.NLA_F_NET_BYTEORDER,
                                    ipset.ATTR_PROTO, ipset.ATTR_IP2 | ipset.NLA_F_NESTED]
    assert loop[2][1][0] == 132  # SCTP
    assert loop[3][1][4:] == socket.inet_aton("10.244.1.2")
    net = attrs_list(encode_member("203.0.113.10,udp:53,198.51.100.0/24"))
    assert net[-2][0] == ipset.ATTR_IP2 | ipset.NLA_F_NESTED and net[-2][1][4:] == socket.inet_aton("198.51.100.0")
    assert net[-1] == (ipset.ATTR_CIDR2, b"\x18")
    assert net[2][1][0] == socket.IPPROTO_UDP


@pytest.mark.parametrize("member", ["10.244.1.2,tcp:8080,10.244.1.2", "10.96.0.10,udp:53", "1.2.3.4,sctp:0",
                                    "192.168.0.1,tcp:65535,10.0.0.255"])
def test_the_one_pack_fast_path_matches_attribute_by_attribute_encoding(member: str) -> None:
    nla = ipset.nla

    def ip(kind: int, text: str) -> bytes:
        return nla(kind | ipset.NLA_F_NESTED, nla(ipset.ATTR_IPADDR_IPV4 | ipset.NLA_F_NET_BYTEORDER,
                                                  socket.inet_aton(text)))

    parts = member.split(",")
    proto, port = parts[1].split(":")
    expected = (ip(ipset.ATTR_IP, parts[0]) + nla(ipset.ATTR_PORT | ipset.NLA_F_NET_BYTEORDER,
                                                  struct.pack("!H", int(port)))
                + nla(ipset.ATTR_PROTO, bytes([ipset.PROTOCOLS[proto]])))
    if len(parts) == 3:
        expected += ip(ipset.ATTR_IP2, parts[2])
    assert ipset._fast_member(parts) == expected == encode_member(member)


def test_a_bare_port_after_an_address_means_tcp_as_in_ipset() -> None:
    assert encode_member("10.0.0.1,80") == encode_member("10.0.0.1,tcp:80")


@pytest.mark.parametrize("bad", ["", "10.0.0", "10.0.0.1,tcp:70000", "10.0.0.1,gre:5", "10.0.0.1/33",
                                 "a,b,c,d", "fe80::1", "10.0.0.1,tcp:80,10.0.0.300"])
def test_invalid_members_are_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        encode_member(bad)


# -- messages ------------------------------------------------------------------------------------
def decode_message(body: bytes) -> tuple[str, list[bytes]]:
    """(set name, each DATA entry's payload) of one ADD/DEL payload; checks the fixed parts on the way."""
    family, version, res = struct.unpack_from("=BBH", body)
    assert (family, version, res) == (socket.AF_INET, 0, 0)
    top = attrs_list(body, 4)
    kinds = [k for k, _ in top]
    assert kinds == [ipset.ATTR_PROTOCOL, ipset.ATTR_SETNAME, ipset.ATTR_LINENO, ipset.ATTR_ADT | ipset.NLA_F_NESTED]
    assert top[0][1][0] == ipset.IPSET_PROTOCOL
    datas = attrs_list(top[3][1])
    assert all(k == ipset.ATTR_DATA | ipset.NLA_F_NESTED for k, _ in datas)
    return top[1][1].rstrip(b"\0").decode(), [d for _, d in datas]


def test_members_travel_many_per_message_numbered_from_one() -> None:
    members = [f"10.96.{i // 250}.{i % 250 + 1},tcp:80" for i in range(2000)]
    messages = member_messages("add", "NPV-CLUSTER-IP", members, limit=8192)
    assert len(messages) > 1
    assert [m for _, ms in messages for m in ms] == members
    for body, ms in messages:
        assert len(body) < 8192 + 64
        name, datas = decode_message(body)
        assert name == "NPV-CLUSTER-IP" and len(datas) == len(ms)
        for i, (data, member) in enumerate(zip(datas, ms, strict=True), 1):
            fields = parse_attrs(data)
            assert struct.unpack("=I", fields[ipset.ATTR_LINENO])[0] == i
            assert fields[ipset.ATTR_IP][4:] == socket.inet_aton(member.split(",")[0])


def test_default_limit_keeps_every_member_list_inside_a_16_bit_attribute() -> None:
    members = [f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255},tcp:8080,10.1.2.3" for i in range(5000)]
    messages = member_messages("del", "NPV-LOOP-BACK", members)
    assert sum(len(ms) for _, ms in messages) == 5000
    assert all(len(body) < 65535 for body, _ in messages)


def test_an_empty_member_list_sends_nothing_and_names_are_checked() -> None:
    assert member_messages("add", "NPV-X", []) == []
    with pytest.raises(ValueError):
        member_messages("add", "N" * 32, ["1.2.3.4"])


def test_restore_text_is_split_in_order_into_member_runs_and_other_lines() -> None:
    text = ("create A hash:ip\ncreate B bitmap:port range 0-65535\nadd A 1.1.1.1\nadd A 1.1.1.2\n"
            "add B 80\ndel A 1.1.1.3\n\nflush C\nadd A 1.1.1.4\n")
    assert list(split_restore(text)) == [
        ["create A hash:ip", "create B bitmap:port range 0-65535"],
        MemberRun("add", "A", ["1.1.1.1", "1.1.1.2"]),
        MemberRun("add", "B", ["80"]),
        MemberRun("del", "A", ["1.1.1.3"]),
        ["flush C"],
        MemberRun("add", "A", ["1.1.1.4"]),
    ]


def test_error_reply_names_the_failed_line() -> None:
    body, _ = member_messages("add", "S", ["1.1.1.1", "1.1.1.2"])[0]
    echoed = struct.pack("=IHHII", 16 + len(body), ipset.message_type(ipset.CMD_ADD), 0, 1, 0) + body
    assert ipset.failed_line(struct.pack("=i", -4103) + patch_lineno(echoed, 2)) == 2
    assert ipset.failed_line(struct.pack("=i", -2) + echoed) == 0
    assert ipset.failed_line(b"") == 0


def patch_lineno(message: bytes, line: int) -> bytes:
    """What the kernel does to its copy of the request: the top-level LINENO set to the failed line."""
    offset = 16 + 4
    while offset < len(message):
        length, kind = struct.unpack_from("=HH", message, offset)
        if kind == ipset.ATTR_LINENO:
            return message[:offset + 4] + struct.pack("=I", line) + message[offset + 8:]
        offset += length + (-length % 4)
    raise AssertionError("no LINENO")


# -- the send path, against a fake kernel ------------------------------------------------------------
class FakeKernel:
    """Answers each request datagram on the other end of a socket pair: an ack, or an error for members in
    `refuse` (with the request echoed and its LINENO patched, as ip_set_core.c's call_ad does)."""

    def __init__(self, sock: socket.socket, refuse: set[str]) -> None:
        self.sock = sock
        self.refuse = refuse
        self.received: list[tuple[int, int, str, list[str]]] = []  # (type, flags, set, members)
        self.datagrams = 0

    def serve(self) -> None:
        while True:
            try:
                data = self.sock.recv(1 << 20)
            except OSError:
                return
            if not data:
                return
            self.datagrams += 1
            offset = 0
            replies = b""
            while offset + 16 <= len(data):
                length, msg_type, flags, seq, _ = struct.unpack_from("=IHHII", data, offset)
                message = data[offset:offset + length]
                offset += length + (-length % 4)
                name, datas = decode_message(message[16:])
                members = [socket.inet_ntoa(parse_attrs(d)[ipset.ATTR_IP][4:8]) for d in datas]
                self.received.append((msg_type, flags, name, members))
                bad = [i for i, m in enumerate(members, 1) if m in self.refuse]
                if bad:
                    payload = struct.pack("=i", -4352) + patch_lineno(message, bad[0])
                else:
                    payload = struct.pack("=i", 0) + message[:16]
                replies += struct.pack("=IHHII", 16 + len(payload), ipset.NLMSG_ERROR, 0, seq, 0) + payload
            self.sock.send(replies)


@pytest.fixture
def fake_kernel(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeKernel]:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    kernel = FakeKernel(theirs, {"10.0.7.7"})
    monkeypatch.setattr(Ipset, "_socket", lambda self: ours)
    thread = threading.Thread(target=kernel.serve, daemon=True)
    thread.start()
    yield kernel
    theirs.shutdown(socket.SHUT_RDWR)
    ours.close()
    thread.join(timeout=5)
    theirs.close()


def test_update_sends_runs_as_few_messages_without_excl(fake_kernel: FakeKernel) -> None:
    members = [f"10.1.{i // 256}.{i % 256}" for i in range(1500)]
    sent = Ipset().update([MemberRun("add", "NPV-IPVS-IPS", members), MemberRun("del", "NPV-IPVS-IPS", ["10.2.0.1"])])
    assert sent == len(fake_kernel.received) < 10
    assert [m for t, _, _, ms in fake_kernel.received if t == ipset.message_type(ipset.CMD_ADD) for m in ms] == members
    assert fake_kernel.received[-1][0] == ipset.message_type(ipset.CMD_DEL)
    assert fake_kernel.received[-1][2:] == ("NPV-IPVS-IPS", ["10.2.0.1"])
    # No NLM_F_EXCL: the kernel's `-exist` (re-adding a member or deleting an absent one is not an error).
    assert all(flags & 0x200 == 0 and flags & 0x5 == 0x5 for _, flags, _, _ in fake_kernel.received)
    assert fake_kernel.datagrams < sent  # several messages per send


def test_update_names_the_member_the_kernel_refused(fake_kernel: FakeKernel) -> None:
    members = ["10.0.7.1", "10.0.7.7", "10.0.7.9"]
    with pytest.raises(IpsetError, match=r"adding to ipset NPV-IPVS-IPS, member '10\.0\.7\.7': set is full") as info:
        Ipset().restore("".join(f"add NPV-IPVS-IPS {m}\n" for m in members))
    assert info.value.errno == 4352


def test_update_refuses_a_malformed_member_before_sending(fake_kernel: FakeKernel) -> None:
    with pytest.raises(IpsetError, match="not a port"):
        Ipset().update([MemberRun("add", "S", ["10.0.0.1,tcp:http"])])
    assert fake_kernel.received == []
