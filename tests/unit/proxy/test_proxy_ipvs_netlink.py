"""The IPVS kernel layer's hand-packed netlink: messages decode (with pyroute2's own parser) to what
the kernel expects, and batched acknowledgements are matched to their requests. No kernel needed."""

from __future__ import annotations

import errno
import struct

import pytest
from pyroute2.netlink.generic.ipvs import ipvsmsg
from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg

from netplane.kernel.ipvs import (
    NLMSG_ERROR,
    IpvsError,
    IpvsOp,
    NetlinkRequest,
    ObservedRealServer,
    RealServer,
    VirtualServer,
    VirtualServerKey,
    address_message_body,
    ipvs_message_body,
    parse_dest,
    parse_service,
    send_batched,
)

VS = VirtualServer(VirtualServerKey("TCP", "10.96.0.10", 80), "wlc", 300)


def decode(body: bytes) -> tuple[int, dict[str, dict[str, object]]]:
    msg = ipvsmsg(struct.pack("=IHHII", 16 + len(body), 30, 5, 1, 0) + body)
    msg.decode()
    return msg["cmd"], {name: dict(value["attrs"]) for name, value in msg["attrs"]}


def test_service_messages_carry_scheduler_persistence_and_a_host_netmask() -> None:
    cmd, attrs = decode(ipvs_message_body(IpvsOp("add-service", VS)))
    svc = attrs["IPVS_CMD_ATTR_SERVICE"]
    assert cmd == 1 and svc["IPVS_SVC_ATTR_ADDR"] == "10.96.0.10" and svc["IPVS_SVC_ATTR_PORT"] == 80
    assert svc["IPVS_SVC_ATTR_PROTOCOL"] == 6 and svc["IPVS_SVC_ATTR_SCHED_NAME"] == "wlc"
    assert svc["IPVS_SVC_ATTR_FLAGS"] == {"flags": 1, "mask": 0xFFFFFFFF}  # persistent
    assert svc["IPVS_SVC_ATTR_TIMEOUT"] == 300 and svc["IPVS_SVC_ATTR_NETMASK"] == "255.255.255.255"
    cmd, attrs = decode(ipvs_message_body(IpvsOp("del-service", VS)))
    assert cmd == 3 and "IPVS_SVC_ATTR_SCHED_NAME" not in attrs["IPVS_CMD_ATTR_SERVICE"]  # the key only


def test_dest_messages_masquerade() -> None:
    cmd, attrs = decode(ipvs_message_body(IpvsOp("set-dest", VS, RealServer("10.244.1.2", 8080, 0))))
    dest = attrs["IPVS_CMD_ATTR_DEST"]
    assert cmd == 6 and dest["IPVS_DEST_ATTR_ADDR"] == "10.244.1.2" and dest["IPVS_DEST_ATTR_PORT"] == 8080
    assert dest["IPVS_DEST_ATTR_FWD_METHOD"] == 0 and dest["IPVS_DEST_ATTR_WEIGHT"] == 0  # NAT, drained
    udp = VirtualServer(VirtualServerKey("UDP", "10.96.0.10", 53))
    cmd, attrs = decode(ipvs_message_body(IpvsOp("del-dest", udp, RealServer("10.244.1.2", 5353))))
    assert cmd == 7 and attrs["IPVS_CMD_ATTR_SERVICE"]["IPVS_SVC_ATTR_PROTOCOL"] == 17
    assert "IPVS_DEST_ATTR_WEIGHT" not in attrs["IPVS_CMD_ATTR_DEST"]


def test_address_message() -> None:
    body = address_message_body(7, "10.96.0.10")
    msg = ifaddrmsg(struct.pack("=IHHII", 16 + len(body), 20, 5, 1, 0) + body)
    msg.decode()
    assert (msg["family"], msg["prefixlen"], msg["index"]) == (2, 32, 7)
    assert msg.get_attr("IFA_LOCAL") == "10.96.0.10" and msg.get_attr("IFA_ADDRESS") == "10.96.0.10"


class FakeNetlink:
    """Acknowledges every request of each send, with the errno chosen per sequence number."""

    def __init__(self, errors: dict[int, int]) -> None:
        self.errors = errors
        self.sends: list[int] = []
        self.inbox = b""

    def setsockopt(self, *args: object) -> None:
        pass

    def sendall(self, data: bytes) -> None:
        count = 0
        offset = 0
        while offset < len(data):
            length, _, _, seq, _ = struct.unpack_from("=IHHII", data, offset)
            ack = struct.pack("=i", -self.errors.get(seq, 0)) + data[offset:offset + 16]
            self.inbox += struct.pack("=IHHII", 16 + len(ack), NLMSG_ERROR, 0, seq, 0) + ack
            offset += length + (-length % 4)
            count += 1
        self.sends.append(count)

    def recv(self, size: int) -> bytes:
        # Answer in two pieces, as a busy socket may.
        half = (len(self.inbox) // 2) // 36 * 36 or len(self.inbox)
        out, self.inbox = self.inbox[:half], self.inbox[half:]
        return out


def requests(n: int) -> list[NetlinkRequest]:
    return [NetlinkRequest(30, 0, b"\0" * 400, f"request {i}", frozenset({errno.EEXIST})) for i in range(n)]


def test_batches_are_sent_many_per_send_and_every_ack_is_read() -> None:
    sock = FakeNetlink({5: errno.EEXIST})
    assert send_batched(sock, requests(400)) == 400  # type: ignore[arg-type]
    assert len(sock.sends) > 1 and sum(sock.sends) == 400 and max(sock.sends) == 100  # acks fit the buffer
    assert sock.inbox == b""


def test_an_error_is_raised_after_its_batch_was_handled() -> None:
    sock = FakeNetlink({3: errno.EINVAL, 4: errno.ENOENT})
    with pytest.raises(IpvsError, match="request 2 failed: Invalid argument"):
        send_batched(sock, requests(10))  # type: ignore[arg-type]
    assert sock.inbox == b"" and sum(sock.sends) == 10


def kernel_reply(attrs: list[tuple[str, dict[str, object]]]) -> bytes:
    """A reply as the kernel sends it, encoded by pyroute2; the payload after the netlink header."""
    msg = ipvsmsg()
    msg["cmd"] = 1
    msg["version"] = 1
    msg["attrs"] = attrs
    msg.encode()
    return bytes(msg.data[16:msg["header"]["length"]])


def test_replies_parse_back_into_virtual_and_real_servers() -> None:
    svc = kernel_reply([("IPVS_CMD_ATTR_SERVICE", {"attrs": [
        ("IPVS_SVC_ATTR_AF", 2), ("IPVS_SVC_ATTR_PROTOCOL", 17), ("IPVS_SVC_ATTR_ADDR", "10.96.0.10"),
        ("IPVS_SVC_ATTR_PORT", 53), ("IPVS_SVC_ATTR_SCHED_NAME", "sh"),
        ("IPVS_SVC_ATTR_FLAGS", {"flags": 1, "mask": 0xFFFFFFFF}), ("IPVS_SVC_ATTR_TIMEOUT", 60)]})])
    assert parse_service(svc) == VirtualServer(VirtualServerKey("UDP", "10.96.0.10", 53), "sh", 60)
    fwmark = kernel_reply([("IPVS_CMD_ATTR_SERVICE", {"attrs": [
        ("IPVS_SVC_ATTR_AF", 2), ("IPVS_SVC_ATTR_FWMARK", 7), ("IPVS_SVC_ATTR_SCHED_NAME", "rr")]})])
    assert parse_service(fwmark) is None  # never ours
    dest = kernel_reply([("IPVS_CMD_ATTR_DEST", {"attrs": [
        ("IPVS_DEST_ATTR_ADDR_FAMILY", 2), ("IPVS_DEST_ATTR_ADDR", "10.244.1.2"), ("IPVS_DEST_ATTR_PORT", 8080),
        ("IPVS_DEST_ATTR_FWD_METHOD", 3), ("IPVS_DEST_ATTR_WEIGHT", 0), ("IPVS_DEST_ATTR_ACTIVE_CONNS", 2),
        ("IPVS_DEST_ATTR_INACT_CONNS", 5)]})])
    assert parse_dest(dest) == ObservedRealServer("10.244.1.2", 8080, 0, 2, 5, masquerade=False)
