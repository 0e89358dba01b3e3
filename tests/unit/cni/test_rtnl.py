"""The hand-written rtnetlink codec (no root): requests decode as the kernel would read them, replies
parse into the right requests' answers.

pyroute2's decoders serve as an independent reader of what we encode, so a
mistake in our attribute layout cannot hide behind our own parser.
"""

from __future__ import annotations

import socket
import struct
from typing import Any

import pytest
from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg
from pyroute2.netlink.rtnl.rtmsg import rtmsg

from netplane.kernel import links, rtnl


def decoded(cls: type, req: rtnl.Request, seq: int = 7) -> Any:
    msg = cls(rtnl.encode(req, seq))
    msg.decode()
    return msg


def test_attributes_are_padded_to_four_bytes() -> None:
    assert rtnl.attr(3, b"ab") == b"\x06\x00\x03\x00ab\x00\x00"
    assert rtnl.attr_str(3, "eth0") == b"\x09\x00\x03\x00eth0\x00\x00\x00\x00"
    assert rtnl.attr_u32(4, 1500) == b"\x08\x00\x04\x00" + struct.pack("=I", 1500)
    assert rtnl.parse_attrs(rtnl.attr(3, b"ab") + rtnl.attr_u32(4, 9)) == {3: b"ab", 4: struct.pack("=I", 9)}


def test_requests_ask_for_an_ack_and_dumps_do_not() -> None:
    length, kind, flags, seq, pid = struct.unpack_from("=IHHII", rtnl.encode(rtnl.del_link(5), 42))
    assert (kind, flags, seq, pid) == (rtnl.RTM_DELLINK, rtnl.NLM_F_REQUEST | rtnl.NLM_F_ACK, 42, 0)
    assert length == 16 + 16
    _, _, flags, _, _ = struct.unpack_from("=IHHII", rtnl.encode(rtnl.dump_links(), 1))
    assert flags == rtnl.NLM_F_REQUEST | rtnl.NLM_F_DUMP


def test_new_veth_reads_back_as_the_kernel_would() -> None:
    req = rtnl.new_veth("veth1234", "eth0", 9, mtu=1450, up=True, master=3)
    msg = decoded(ifinfmsg, req)
    assert msg["header"]["flags"] & 0xF0F == rtnl.NLM_F_REQUEST | rtnl.NLM_F_ACK | rtnl.NLM_F_CREATE | rtnl.NLM_F_EXCL
    assert (msg["flags"], msg["change"]) == (rtnl.IFF_UP, rtnl.IFF_UP)
    assert msg.get_attr("IFLA_IFNAME") == "veth1234"
    assert (msg.get_attr("IFLA_MTU"), msg.get_attr("IFLA_MASTER")) == (1450, 3)
    info = msg.get_attr("IFLA_LINKINFO")
    assert info.get_attr("IFLA_INFO_KIND") == "veth"
    peer = info.get_attr("IFLA_INFO_DATA").get_attr("VETH_INFO_PEER")
    assert peer.get_attr("IFLA_IFNAME") == "eth0"
    assert (peer.get_attr("IFLA_NET_NS_FD"), peer.get_attr("IFLA_MTU")) == (9, 1450)


def test_set_link_carries_alias_master_and_the_hairpin_port_flag() -> None:
    msg = decoded(ifinfmsg, rtnl.set_link(12, up=True, master=3, alias="netplane-cni n c eth0", hairpin=True))
    assert (msg["index"], msg["flags"], msg["change"]) == (12, rtnl.IFF_UP, rtnl.IFF_UP)
    assert (msg.get_attr("IFLA_MASTER"), msg.get_attr("IFLA_IFALIAS")) == (3, "netplane-cni n c eth0")
    info = msg.get_attr("IFLA_LINKINFO")
    assert info.get_attr("IFLA_INFO_SLAVE_KIND") == "bridge"
    assert info.get_attr("IFLA_INFO_SLAVE_DATA").get_attr("IFLA_BRPORT_MODE") == 1
    down = decoded(ifinfmsg, rtnl.set_link(12, up=False))
    assert (down["flags"], down["change"]) == (0, rtnl.IFF_UP)


def test_addresses_v4_with_broadcast_and_v6_without_dad() -> None:
    v4 = decoded(ifaddrmsg, rtnl.new_addr(4, socket.inet_aton("10.1.0.5"), 24, socket.inet_aton("10.1.0.255")))
    assert (v4["family"], v4["prefixlen"], v4["index"]) == (socket.AF_INET, 24, 4)
    assert (v4.get_attr("IFA_LOCAL"), v4.get_attr("IFA_ADDRESS"), v4.get_attr("IFA_BROADCAST")) == \
        ("10.1.0.5", "10.1.0.5", "10.1.0.255")
    v6 = decoded(ifaddrmsg, rtnl.new_addr(4, socket.inet_pton(socket.AF_INET6, "fd00::5"), 64))
    assert (v6["family"], v6["prefixlen"], v6["flags"]) == (socket.AF_INET6, 64, rtnl.IFA_F_NODAD)
    assert v6.get_attr("IFA_ADDRESS") == "fd00::5"


def test_routes_default_and_with_metrics_in_a_big_table() -> None:
    default = decoded(rtmsg, rtnl.new_route(socket.AF_INET, bytes(4), 0, gateway=socket.inet_aton("10.1.0.1"),
                                            oif=4))
    assert (default["dst_len"], default["table"], default["proto"], default["scope"], default["type"]) == \
        (0, rtnl.RT_TABLE_MAIN, rtnl.RTPROT_BOOT, rtnl.RT_SCOPE_UNIVERSE, rtnl.RTN_UNICAST)
    assert default.get_attr("RTA_DST") is None
    assert (default.get_attr("RTA_GATEWAY"), default.get_attr("RTA_OIF")) == ("10.1.0.1", 4)
    req = links._route_request(links.PodRoute(ipaddress_net("10.9.0.0/16"), None, mtu=1400, advmss=1360,
                                              priority=7, table=1000), 4)
    route = decoded(rtmsg, req)
    assert (route["dst_len"], route["table"], route["scope"]) == (16, rtnl.RT_TABLE_COMPAT, rtnl.RT_SCOPE_LINK)
    assert (route.get_attr("RTA_DST"), route.get_attr("RTA_TABLE"), route.get_attr("RTA_PRIORITY")) == \
        ("10.9.0.0", 1000, 7)
    metrics = route.get_attr("RTA_METRICS")
    assert (metrics.get_attr("RTAX_MTU"), metrics.get_attr("RTAX_ADVMSS")) == (1400, 1360)


def ipaddress_net(text: str) -> links.IPNetwork:
    import ipaddress

    return ipaddress.ip_network(text)


def _nlmsg(kind: int, seq: int, body: bytes, flags: int = 0) -> bytes:
    data = struct.pack("=IHHII", 16 + len(body), kind, flags, seq, 0) + body
    return data + b"\0" * ((-len(data)) % 4)


def test_replies_are_sorted_by_sequence_with_data_acks_and_kernel_error_text() -> None:
    link = rtnl.ifinfomsg(index=3, flags=rtnl.IFF_UP) + rtnl.attr_str(rtnl.IFLA_IFNAME, "br0") + \
        rtnl.nested(rtnl.IFLA_LINKINFO, rtnl.attr_str(rtnl.IFLA_INFO_KIND, "bridge"))
    capped = rtnl.NLM_F_CAPPED | rtnl.NLM_F_ACK_TLVS
    failed = struct.pack("=i", -17) + struct.pack("=IHHII", 32, rtnl.RTM_NEWLINK, 5, 2, 0) + \
        rtnl.attr_str(rtnl.NLMSGERR_ATTR_MSG, "File exists")
    data = (_nlmsg(rtnl.RTM_NEWLINK, 1, link) + _nlmsg(rtnl.NLMSG_ERROR, 1, struct.pack("=i", 0) + bytes(16))
            + _nlmsg(rtnl.NLMSG_ERROR, 2, failed, capped))
    replies = {1: rtnl.Reply(), 2: rtnl.Reply(), 3: rtnl.Reply()}
    rtnl.parse(data, replies)
    first, second, third = replies[1], replies[2], replies[3]
    assert (first.done, first.error, len(first.messages)) == (True, 0, 1)
    info = links.link_info(first.messages[0])
    assert (info.index, info.name, info.kind, info.up) == (3, "br0", "bridge", True)
    assert (second.done, second.error, second.error_text) == (True, 17, "File exists")
    assert not third.done
    rtnl.parse(_nlmsg(rtnl.NLMSG_DONE, 3, struct.pack("=i", 0)), replies)
    assert third.done and third.error == 0
    with pytest.raises(rtnl.NetlinkError) as err:
        rtnl.check(second, rtnl.get_link(name="br0"))
    assert err.value.errno == 17 and "File exists" in str(err.value) and "'br0'" in str(err.value)
    rtnl.check(second, rtnl.get_link(name="br0"), ignore=(17,))  # an expected errno is not an error


def test_link_info_reads_bridge_port_flags_and_veth_peer() -> None:
    port = rtnl.nested(rtnl.IFLA_LINKINFO, rtnl.attr_str(rtnl.IFLA_INFO_KIND, "veth"),
                       rtnl.attr_str(rtnl.IFLA_INFO_SLAVE_KIND, "bridge"),
                       rtnl.nested(rtnl.IFLA_INFO_SLAVE_DATA, rtnl.attr_u8(rtnl.IFLA_BRPORT_MODE, 1)))
    body = (rtnl.ifinfomsg(index=9) + rtnl.attr_str(rtnl.IFLA_IFNAME, "veth1") + rtnl.attr_u32(rtnl.IFLA_LINK, 2)
            + rtnl.attr_u32(rtnl.IFLA_MASTER, 3) + rtnl.attr(rtnl.IFLA_ADDRESS, bytes.fromhex("0a0b0c0d0e0f"))
            + rtnl.attr_u32(rtnl.IFLA_LINK_NETNSID, 0) + rtnl.attr_str(rtnl.IFLA_IFALIAS, "x y") + port)
    replies = {1: rtnl.Reply()}
    rtnl.parse(_nlmsg(rtnl.RTM_NEWLINK, 1, body), replies)
    info = links.link_info(replies[1].messages[0])
    assert (info.kind, info.hairpin, info.master, info.peer_index, info.peer_elsewhere) == ("veth", True, 3, 2, True)
    assert (info.mac, info.alias, info.up) == ("0a:0b:0c:0d:0e:0f", "x y", False)


def test_a_dellink_notification_is_recognised_only_for_its_link() -> None:
    note = _nlmsg(rtnl.RTM_DELLINK, 0, rtnl.ifinfomsg(index=7))
    bridge_port = _nlmsg(rtnl.RTM_DELLINK, 0, rtnl.ifinfomsg(index=7, family=socket.AF_BRIDGE))
    assert links._dellink_seen(_nlmsg(rtnl.RTM_NEWLINK, 0, rtnl.ifinfomsg(index=7)) + note, 7)
    assert not links._dellink_seen(note, 8)
    assert not links._dellink_seen(bridge_port, 7)
