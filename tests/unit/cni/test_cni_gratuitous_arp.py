"""The gratuitous ARP the bridge plugin sends after ADD: its bytes, built without a kernel."""

from __future__ import annotations

import ipaddress
import struct

import pytest

from netplane.kernel.links import gratuitous_arp_frame


def test_frame_is_a_broadcast_arp_request_for_our_own_address() -> None:
    frame = gratuitous_arp_frame("0a:58:0a:f4:00:05", ipaddress.IPv4Address("10.244.0.5"))
    assert len(frame) == 14 + 28  # Ethernet header + ARP for IPv4 over Ethernet
    dst, src, ethertype = frame[:6], frame[6:12], struct.unpack("!H", frame[12:14])[0]
    assert dst == b"\xff" * 6 and src == bytes.fromhex("0a580af40005") and ethertype == 0x0806
    htype, ptype, hlen, plen, op = struct.unpack("!HHBBH", frame[14:22])
    assert (htype, ptype, hlen, plen, op) == (1, 0x0800, 6, 4, 1)
    sha, spa, tha, tpa = frame[22:28], frame[28:32], frame[32:38], frame[38:42]
    assert sha == src
    # Sender and target protocol address are the same: that is what makes it gratuitous (the
    # kernel then overrides an existing neighbour entry at once).
    assert spa == tpa == bytes([10, 244, 0, 5])
    assert tha == b"\xff" * 6


@pytest.mark.parametrize("mac", ["", "0a:58:0a", "0a:58:0a:f4:00:05:ff"])
def test_only_ethernet_macs(mac: str) -> None:
    with pytest.raises(ValueError):
        gratuitous_arp_frame(mac, ipaddress.IPv4Address("10.0.0.1"))
