"""BPF host routing for host-gw (opt-in, `netplane node --bpf-host-routing`): pure parts and the sync.

Cross-node pod-to-pod traffic normally crosses the sender's bridge, IP forwarding and
netfilter, the wire, then the receiver's IP forwarding, netfilter, bridge and the pod's
veth. Like Cilium's "BPF host routing", two tc programs short-cut both ends:

- TX, on clsact ingress of each pod's host-side veth: an IPv4 packet (no options, TTL > 1)
  whose destination is in a REMOTE node's pod CIDR (an LPM map, the very CIDRs host-gw
  routes to) and that conntrack has not NAT'd -> bpf_fib_lookup (SKIP_NEIGH) -> TTL-1 with
  an incremental checksum fix -> bpf_redirect_neigh out of the underlay device.
- RX, on clsact ingress of the node's underlay device: an IPv4 packet whose source is in a
  remote pod CIDR AND whose destination is a local pod (a hash map pod IP -> {host veth
  ifindex, pod MAC, bridge MAC}) and that conntrack has not NAT'd -> MAC rewrite, TTL-1 ->
  bpf_redirect_peer straight into the pod's namespace.

Everything else goes the normal way (TC_ACT_OK). Both safety checks are required, as the
feasibility study measured: without the conntrack NAT check (bpf_skb_ct_lookup kfunc,
nf_conn.status & IPS_NAT_MASK) the reply of a flow this node DNAT'd (pod -> ClusterIP ->
remote endpoint) would skip reverse DNAT; without RX's source restriction a NodePort flow
masqueraded to another node's IP would bypass conntrack here, and the pod's reply would be
picked up mid-stream as a new flow and masqueraded (RST at the client).

Caveats (as with Cilium's BPF host routing): fast-pathed packets skip the FORWARD chain, so
NetworkPolicy enforced there is bypassed for cross-node pod-to-pod traffic; with both programs
conntrack on either node never sees those flows (no conntrack entries, no nf counters), and
tcpdump on cni0 shows nothing of them. Only pods set up through this agent's CNI invoker (the
lab runtime) get the TX program; IPv4 only; IP options and fragments take the normal path.

This module is pure: the assembler, the two programs as instruction lists, the maps'
desired contents, and `HostRouting`, which syncs them through a `BPFKernel` (the real one is
netplane.kernel.bpf.LinuxBPF; tests use a fake).
"""

from __future__ import annotations

import ipaddress
import logging
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

log = logging.getLogger(__name__)

# -- the assembler ----------------------------------------------------------------------------------
# struct bpf_insn {u8 code; u8 dst_reg:4, src_reg:4; s16 off; s32 imm} (include/uapi/linux/bpf.h)

R0, R1, R2, R3, R4, R5, R6, R7, R8, R9, FP = range(11)

LDX = {"b": 0x71, "h": 0x69, "w": 0x61, "dw": 0x79}  # BPF_LDX | BPF_MEM | size
STX = {"b": 0x73, "h": 0x6B, "w": 0x63, "dw": 0x7B}  # BPF_STX | BPF_MEM | size
ST = {"b": 0x72, "h": 0x6A, "w": 0x62, "dw": 0x7A}  # BPF_ST | BPF_MEM | size
MOV64_K, MOV64_X, ADD64_K, AND64_K = 0xB7, 0xBF, 0x07, 0x57
JA, JEQ_K, JNE_K, JGT_K, JLE_K, JGT_X = 0x05, 0x15, 0x55, 0x25, 0xB5, 0x2D
JNE32_K = 0x56  # BPF_JMP32 | BPF_JNE | BPF_K: compares the low 32 bits (a loaded s32 with a negative imm)
CALL, EXIT, LD_IMM64 = 0x85, 0x95, 0x18
PSEUDO_MAP_FD, PSEUDO_KFUNC_CALL = 1, 2


@dataclass(frozen=True, slots=True)
class Insn:
    code: int
    dst: int = 0
    src: int = 0
    off: int | str = 0  # a label for jumps, resolved by assemble()
    imm: int = 0


@dataclass(frozen=True, slots=True)
class MapRef:
    """LD_IMM64 of a map fd (two instruction slots)."""

    dst: int
    fd: int


@dataclass(frozen=True, slots=True)
class Label:
    name: str


Item = Insn | MapRef | Label


def assemble(items: Iterable[Item]) -> bytes:
    """Encode, resolving jump labels to relative offsets (in slots, from the next instruction)."""
    items = list(items)
    labels: dict[str, int] = {}
    pc = 0
    for it in items:
        if isinstance(it, Label):
            if it.name in labels:
                raise ValueError(f"label {it.name!r} defined twice")
            labels[it.name] = pc
        else:
            pc += 2 if isinstance(it, MapRef) else 1
    out = bytearray()
    pc = 0
    for it in items:
        if isinstance(it, Label):
            continue
        if isinstance(it, MapRef):
            out += struct.pack("<BBhi", LD_IMM64, it.dst | (PSEUDO_MAP_FD << 4), 0, it.fd)
            out += struct.pack("<BBhi", 0, 0, 0, 0)
            pc += 2
            continue
        off = it.off
        if isinstance(off, str):
            if off not in labels:
                raise ValueError(f"jump to undefined label {off!r}")
            off = labels[off] - (pc + 1)
        out += struct.pack("<BBhi", it.code, (it.dst & 0xF) | ((it.src & 0xF) << 4), off, it.imm)
        pc += 1
    return bytes(out)


class Asm:
    """Builds a list of items; the methods read like the instructions they emit."""

    def __init__(self) -> None:
        self.items: list[Item] = []

    def label(self, name: str) -> None:
        self.items.append(Label(name))

    def ldx(self, size: str, dst: int, src: int, off: int) -> None:
        self.items.append(Insn(LDX[size], dst, src, off))

    def stx(self, size: str, dst: int, off: int, src: int) -> None:
        self.items.append(Insn(STX[size], dst, src, off))

    def st(self, size: str, dst: int, off: int, imm: int) -> None:
        self.items.append(Insn(ST[size], dst, 0, off, imm))

    def mov(self, dst: int, src: int) -> None:
        self.items.append(Insn(MOV64_X, dst, src))

    def movi(self, dst: int, imm: int) -> None:
        self.items.append(Insn(MOV64_K, dst, 0, 0, imm))

    def addi(self, dst: int, imm: int) -> None:
        self.items.append(Insn(ADD64_K, dst, 0, 0, imm))

    def andi(self, dst: int, imm: int) -> None:
        self.items.append(Insn(AND64_K, dst, 0, 0, imm))

    def ld_map(self, dst: int, fd: int) -> None:
        self.items.append(MapRef(dst, fd))

    def jmp(self, op: int, dst: int, label: str, imm: int = 0, src: int = 0) -> None:
        self.items.append(Insn(op, dst, src, label, imm))

    def call(self, helper: int) -> None:
        self.items.append(Insn(CALL, 0, 0, 0, helper))

    def kcall(self, btf_id: int) -> None:
        self.items.append(Insn(CALL, 0, PSEUDO_KFUNC_CALL, 0, btf_id))

    def exit(self) -> None:
        self.items.append(Insn(EXIT))


# -- the programs ----------------------------------------------------------------------------------

# enum bpf_func_id
MAP_LOOKUP_ELEM, L3_CSUM_REPLACE, FIB_LOOKUP, REDIRECT_NEIGH, REDIRECT_PEER = 1, 10, 69, 152, 155
FIB_SKIP_NEIGH = 4
FIB_LKUP_RET_SUCCESS = 0
# struct __sk_buff offsets
SKB_PKT_TYPE, SKB_PROTOCOL, SKB_INGRESS_IFINDEX, SKB_DATA, SKB_DATA_END = 4, 16, 36, 76, 80
PACKET_HOST = 0
# The IP header's "more fragments" flag and fragment offset (network order 0x3FFF) as a little-endian
# 16-bit load sees them: any fragment, first or later, has one of them set.
IP_FRAG_MASK_LE = 0xFF3F
ENOENT = 2
ETH_HLEN, IP_HLEN = 14, 20
ETH_P_IP_BE = 0x0008  # htons(ETH_P_IP) as a little-endian load sees it
AF_INET = 2
IPPROTO_TCP, IPPROTO_UDP = 6, 17
IPS_NAT_MASK = 0x30  # IPS_SRC_NAT | IPS_DST_NAT
TC_ACT_OK = 0
CURRENT_NETNS = -1  # BPF_F_CURRENT_NETNS

# Stack layout (offsets from the frame pointer), shared by both programs.
SP_LPM_KEY = -8  # struct {u32 prefixlen; u8 addr[4]}
SP_LOCAL_KEY = -16  # u32 pod IP (RX)
SP_FIB = -80  # struct bpf_fib_lookup, 64 bytes
SP_NEIGH = -104  # struct bpf_redir_neigh, 20 bytes (24 zeroed)
SP_TUPLE = -120  # struct bpf_sock_tuple, ipv4 part: 12 bytes (16 zeroed)
SP_CT_OPTS = -136  # struct bpf_ct_opts, 16 bytes

TX_PROG_NAME = "np_hostrt_tx"
RX_PROG_NAME = "np_hostrt_rx"


@dataclass(frozen=True, slots=True)
class KernelSyms:
    """What the programs need from the running kernel's BTF (see netplane.kernel.btf)."""

    ct_lookup: int  # BTF id of bpf_skb_ct_lookup
    ct_release: int  # BTF id of bpf_ct_release
    nf_conn_status: int  # offsetof(struct nf_conn, status)


def _ipv4_prologue(a: Asm, out: str) -> None:
    """r6 = skb, r7 = data, r8 = data_end; IPv4 without options, not a fragment, TTL > 1, else
    goto `out`."""
    a.mov(R6, R1)
    a.ldx("w", R2, R6, SKB_PROTOCOL)
    a.jmp(JNE_K, R2, out, imm=ETH_P_IP_BE)
    _reload_packet(a, out)
    a.ldx("b", R2, R7, ETH_HLEN + 0)
    a.jmp(JNE_K, R2, out, imm=0x45)  # version 4, IHL 5
    # Fragments to the stack: only the first carries the ports, so the conntrack check below could
    # not see that a later fragment belongs to a NAT'd flow (a large UDP reply through a Service
    # would lose its tail to the fast path, un-NAT'd).
    a.ldx("h", R2, R7, ETH_HLEN + 6)
    a.andi(R2, IP_FRAG_MASK_LE)
    a.jmp(JNE_K, R2, out, imm=0)
    a.ldx("b", R2, R7, ETH_HLEN + 8)
    a.jmp(JLE_K, R2, out, imm=1)  # TTL about to expire: the stack sends the ICMP


def _reload_packet(a: Asm, out: str) -> None:
    """Packet pointers again (helpers that may change the packet invalidate them), bounds-checked."""
    a.ldx("w", R7, R6, SKB_DATA)
    a.ldx("w", R8, R6, SKB_DATA_END)
    a.mov(R2, R7)
    a.addi(R2, ETH_HLEN + IP_HLEN)
    a.jmp(JGT_X, R2, out, src=R8)


def _lpm_lookup(a: Asm, map_fd: int, ip_off: int, out: str) -> None:
    """goto `out` unless the IPv4 address at data+ip_off is in the LPM map."""
    a.ldx("w", R2, R7, ip_off)
    a.st("w", FP, SP_LPM_KEY, 32)
    a.stx("w", FP, SP_LPM_KEY + 4, R2)
    a.ld_map(R1, map_fd)
    a.mov(R2, FP)
    a.addi(R2, SP_LPM_KEY)
    a.call(MAP_LOOKUP_ELEM)
    a.jmp(JEQ_K, R0, out, imm=0)


def _ct_nat_check(a: Asm, syms: KernelSyms, out: str, tag: str) -> None:
    """goto `out` if conntrack holds this packet's flow and it is NAT'd (or it is neither TCP nor UDP).

    Clobbers r0-r5, r7, r8 (reloaded and bounds-checked at the end); keeps r6 and r9.
    """
    a.ldx("b", R2, R7, ETH_HLEN + 9)
    a.jmp(JEQ_K, R2, f"{tag}_l4", imm=IPPROTO_TCP)
    a.jmp(JNE_K, R2, out, imm=IPPROTO_UDP)
    a.label(f"{tag}_l4")
    a.mov(R3, R7)
    a.addi(R3, ETH_HLEN + IP_HLEN + 4)
    a.jmp(JGT_X, R3, out, src=R8)  # the ports must be in the linear part
    a.st("dw", FP, SP_TUPLE, 0)
    a.st("dw", FP, SP_TUPLE + 8, 0)
    a.ldx("w", R3, R7, ETH_HLEN + 12)
    a.stx("w", FP, SP_TUPLE, R3)  # saddr
    a.ldx("w", R3, R7, ETH_HLEN + 16)
    a.stx("w", FP, SP_TUPLE + 4, R3)  # daddr
    a.ldx("w", R3, R7, ETH_HLEN + IP_HLEN)
    a.stx("w", FP, SP_TUPLE + 8, R3)  # sport, dport as on the wire
    a.st("dw", FP, SP_CT_OPTS, 0)
    a.st("dw", FP, SP_CT_OPTS + 8, 0)
    a.st("w", FP, SP_CT_OPTS, CURRENT_NETNS)  # netns_id
    a.stx("b", FP, SP_CT_OPTS + 8, R2)  # l4proto
    a.mov(R1, R6)
    a.mov(R2, FP)
    a.addi(R2, SP_TUPLE)
    a.movi(R3, 12)
    a.mov(R4, FP)
    a.addi(R4, SP_CT_OPTS)
    a.movi(R5, 16)
    a.kcall(syms.ct_lookup)
    a.jmp(JNE_K, R0, f"{tag}_found", imm=0)
    # No entry. Only "not found" (-ENOENT) means untracked here, nothing for this node to un-NAT;
    # any other error (e.g. a kernel that takes a smaller bpf_ct_opts) says nothing: the stack decides.
    a.ldx("w", R2, FP, SP_CT_OPTS + 4)  # opts.error
    a.jmp(JNE32_K, R2, out, imm=-ENOENT)
    a.jmp(JA, 0, f"{tag}_done")
    a.label(f"{tag}_found")
    a.ldx("dw", R7, R0, syms.nf_conn_status)
    a.mov(R1, R0)
    a.kcall(syms.ct_release)
    a.andi(R7, IPS_NAT_MASK)
    a.jmp(JNE_K, R7, out, imm=0)
    a.label(f"{tag}_done")
    _reload_packet(a, out)


def _ttl_decrement(a: Asm) -> None:
    """TTL - 1 and fix the IP checksum incrementally (the 16-bit word holding TTL and protocol).

    Expects r7 = data with the IP header checked; the TTL is >= 2, so the low byte never borrows.
    """
    a.ldx("h", R3, R7, ETH_HLEN + 8)  # from: the word as in memory
    a.mov(R4, R3)
    a.addi(R4, -1)  # to: TTL is the word's low byte in memory order
    a.stx("b", R7, ETH_HLEN + 8, R4)
    a.mov(R1, R6)
    a.movi(R2, ETH_HLEN + 10)  # the IP checksum's offset
    a.movi(R5, 2)  # flags: the changed field's size
    a.call(L3_CSUM_REPLACE)


def _pass(a: Asm) -> None:
    a.label("pass")
    a.movi(R0, TC_ACT_OK)
    a.exit()


def tx_program(remote_cidrs_fd: int, syms: KernelSyms) -> list[Item]:
    """The sender side (a pod's host veth, clsact ingress)."""
    a = Asm()
    _ipv4_prologue(a, "pass")
    _lpm_lookup(a, remote_cidrs_fd, ETH_HLEN + 16, "pass")  # daddr in a remote pod CIDR
    _ct_nat_check(a, syms, "pass", "ct")
    for off in range(SP_FIB, SP_FIB + 64, 8):
        a.st("dw", FP, off, 0)
    a.st("b", FP, SP_FIB + 0, AF_INET)  # family
    a.ldx("b", R2, R7, ETH_HLEN + 9)
    a.stx("b", FP, SP_FIB + 1, R2)  # l4_protocol
    # tot_len stays 0: the skb flavour then checks the MTU with is_skb_forwardable (GSO aware).
    a.ldx("w", R2, R6, SKB_INGRESS_IFINDEX)
    a.stx("w", FP, SP_FIB + 8, R2)  # ifindex: the host veth it came in on
    a.ldx("b", R2, R7, ETH_HLEN + 1)
    a.stx("b", FP, SP_FIB + 12, R2)  # tos
    a.ldx("w", R2, R7, ETH_HLEN + 12)
    a.stx("w", FP, SP_FIB + 16, R2)  # ipv4_src
    a.ldx("w", R2, R7, ETH_HLEN + 16)
    a.stx("w", FP, SP_FIB + 32, R2)  # ipv4_dst
    a.mov(R1, R6)
    a.mov(R2, FP)
    a.addi(R2, SP_FIB)
    a.movi(R3, 64)
    a.movi(R4, FIB_SKIP_NEIGH)
    a.call(FIB_LOOKUP)
    a.jmp(JNE_K, R0, "pass", imm=FIB_LKUP_RET_SUCCESS)  # no route, blackhole, MTU...: the stack decides
    _reload_packet(a, "pass")
    _ttl_decrement(a)
    # struct bpf_redir_neigh {nh_family; ipv4_nh}: the fib result's ipv4_dst (the gateway, if any).
    a.st("dw", FP, SP_NEIGH, 0)
    a.st("dw", FP, SP_NEIGH + 8, 0)
    a.st("dw", FP, SP_NEIGH + 16, 0)
    a.st("w", FP, SP_NEIGH, AF_INET)
    a.ldx("w", R2, FP, SP_FIB + 32)
    a.stx("w", FP, SP_NEIGH + 4, R2)
    a.ldx("w", R1, FP, SP_FIB + 8)  # the egress ifindex
    a.mov(R2, FP)
    a.addi(R2, SP_NEIGH)
    a.movi(R3, 20)
    a.movi(R4, 0)
    a.call(REDIRECT_NEIGH)
    a.exit()  # TC_ACT_REDIRECT, or TC_ACT_SHOT on a bad ifindex
    _pass(a)
    return a.items


def rx_program(local_pods_fd: int, remote_cidrs_fd: int, syms: KernelSyms) -> list[Item]:
    """The receiver side (the node's underlay device, clsact ingress)."""
    a = Asm()
    _ipv4_prologue(a, "pass")
    # Only frames addressed to this node: the stack drops the others (a flooded unicast on the
    # underlay bridge), and so must this program rather than hand them to a pod.
    a.ldx("w", R2, R6, SKB_PKT_TYPE)
    a.jmp(JNE_K, R2, "pass", imm=PACKET_HOST)
    _lpm_lookup(a, remote_cidrs_fd, ETH_HLEN + 12, "pass")  # saddr in a remote pod CIDR: pod-to-pod only
    a.ldx("w", R2, R7, ETH_HLEN + 16)
    a.stx("w", FP, SP_LOCAL_KEY, R2)
    a.ld_map(R1, local_pods_fd)
    a.mov(R2, FP)
    a.addi(R2, SP_LOCAL_KEY)
    a.call(MAP_LOOKUP_ELEM)
    a.jmp(JEQ_K, R0, "pass", imm=0)  # daddr is not a local pod
    a.mov(R9, R0)  # the LocalPod value, kept across the conntrack check
    _ct_nat_check(a, syms, "pass", "ct")
    # value: u32 ifindex, u8 pod_mac[6] (-> eth dst), u8 bridge_mac[6] (-> eth src)
    for off, size in ((4, "w"), (8, "h"), (10, "w"), (14, "h")):
        a.ldx(size, R2, R9, off)
        a.stx(size, R7, off - 4, R2)
    _ttl_decrement(a)
    a.ldx("w", R1, R9, 0)
    a.movi(R2, 0)
    a.call(REDIRECT_PEER)
    a.exit()
    _pass(a)
    return a.items


# -- the maps' contents ---------------------------------------------------------------------------

MAP_TYPE_HASH, MAP_TYPE_LPM_TRIE = 1, 11  # enum bpf_map_type
F_NO_PREALLOC = 1  # LPM tries require it
REMOTE_CIDRS_MAX = 1024
LOCAL_PODS_MAX = 4096
LPM_KEY_SIZE, LPM_VALUE_SIZE = 8, 4
LOCAL_KEY_SIZE, LOCAL_VALUE_SIZE = 4, 16


def lpm_key(cidr: str) -> bytes:
    net = ipaddress.IPv4Network(cidr, strict=True)
    return struct.pack("<I", net.prefixlen) + net.network_address.packed


def local_key(ip: str) -> bytes:
    return ipaddress.IPv4Address(ip).packed


def _mac(mac: str) -> bytes:
    raw = bytes.fromhex(mac.replace(":", ""))
    if len(raw) != 6:
        raise ValueError(f"bad MAC {mac!r}")
    return raw


def local_value(ifindex: int, pod_mac: str, bridge_mac: str) -> bytes:
    return struct.pack("<I", ifindex) + _mac(pod_mac) + _mac(bridge_mac)


def remote_cidrs_contents(cidrs: Iterable[str]) -> dict[bytes, bytes]:
    """LPM map contents: every remote IPv4 pod CIDR host-gw routes to (IPv6 ones are left out)."""
    out = {}
    for c in cidrs:
        if ipaddress.ip_network(c, strict=False).version == 4:
            out[lpm_key(c)] = struct.pack("<I", 1)
    return out


@dataclass(frozen=True, slots=True)
class LocalPod:
    """A pod on this node, from its CNI ADD result."""

    ip: str
    pod_mac: str
    host_ifnames: tuple[str, ...]  # the result's host-side interfaces: the veth, and maybe the bridge


def local_pods_from_results(results: Iterable[Mapping[str, Any]], pod_cidr: str) -> list[LocalPod]:
    """Local pods from CNI ADD results (the agent's CNI result cache): IPv4 addresses in our pod CIDR
    on a sandbox interface with a MAC. Results of other networks (loopback) drop out here."""
    net = ipaddress.ip_network(pod_cidr, strict=False)
    pods: dict[str, LocalPod] = {}
    for result in results:
        interfaces = [i for i in result.get("interfaces") or [] if isinstance(i, dict)]
        host = tuple(str(i["name"]) for i in interfaces if not i.get("sandbox") and i.get("name"))
        for ipc in result.get("ips") or []:
            if not isinstance(ipc, dict):
                continue
            idx = ipc.get("interface")
            if not isinstance(idx, int) or not 0 <= idx < len(interfaces):
                continue
            iface = interfaces[idx]
            if not iface.get("sandbox") or not iface.get("mac"):
                continue
            try:
                ip = ipaddress.ip_interface(str(ipc.get("address") or "")).ip
            except ValueError:
                continue
            if ip.version != 4 or ip not in net:
                continue
            pods[str(ip)] = LocalPod(str(ip), str(iface["mac"]).lower(), host)
    return [pods[k] for k in sorted(pods, key=lambda a: ipaddress.ip_address(a))]


def map_changes(have: Mapping[bytes, bytes], want: Mapping[bytes, bytes]) -> tuple[dict[bytes, bytes],
                                                                                        list[bytes]]:
    """(entries to write, keys to delete) turning `have` into `want`; empty when equal."""
    upserts = {k: v for k, v in want.items() if have.get(k) != v}
    deletes = sorted(k for k in have if k not in want)
    return upserts, deletes


# -- the sync ----------------------------------------------------------------------------------------


class LinkFactsLike(Protocol):
    @property
    def ifindex(self) -> int: ...

    @property
    def mac(self) -> str: ...

    @property
    def master_mac(self) -> str | None: ...


class BPFKernel(Protocol):
    """What HostRouting needs from the kernel; netplane.kernel.bpf.LinuxBPF is the real one."""

    def ensure_map(self, name: str, map_type: int, key_size: int, value_size: int, max_entries: int,
                   flags: int = 0) -> tuple[int, bool]: ...

    def map_items(self, fd: int, key_size: int, value_size: int) -> dict[bytes, bytes]: ...

    def map_update(self, fd: int, key: bytes, value: bytes) -> None: ...

    def map_delete(self, fd: int, key: bytes) -> bool: ...

    def prog_load(self, insns: bytes, name: str) -> int: ...

    def ensure_tc_ingress(self, ifindex: int, prog_fd: int, name: str) -> None: ...

    def tc_ingress_names(self, ifindex: int) -> list[str]: ...

    def remove_tc_ingress(self, ifindex: int, name: str) -> bool: ...

    def link_facts(self) -> Mapping[str, LinkFactsLike]: ...

    def ifindex_with_address(self, address: str) -> int | None: ...

    def netns_inode(self) -> int: ...

    def kfunc_ids(self) -> tuple[int, int, int]: ...

    def close(self, fd: int) -> None: ...


class HostRoutingError(RuntimeError):
    pass


def map_names(netns_inode: int) -> tuple[str, str]:
    """(remote CIDRs map, local pods map) names: unique per network namespace, <= 15 characters."""
    tag = f"{netns_inode & 0xFFFFFFFF:08x}"
    return f"np_rc_{tag}", f"np_lp_{tag}"


@dataclass
class HostRouting:
    """Loads the programs, keeps the maps equal to the desired state, attaches the filters.

    Every method converges (whole state in, minimal map writes out) and runs on the agent's
    kernel thread.
    """

    kernel: BPFKernel
    node_address: str
    remote_fd: int = -1
    local_fd: int = -1
    tx_fd: int = -1
    rx_fd: int = -1
    adopted: bool = False
    underlay: int = -1
    rx_attached: bool = False
    _tx_attached: dict[int, int] = field(default_factory=dict)  # host veth ifindex -> the prog fd attached

    def start(self) -> None:
        """Adopt (or create) the maps and load both programs over them.

        Nothing is attached yet: the first sync_local() attaches, once both maps hold the desired
        state. (A map found by name may be a dead namespace's whose inode number ours reuses.)
        """
        remote_name, local_name = map_names(self.kernel.netns_inode())
        self.remote_fd, adopted_remote = self.kernel.ensure_map(
            remote_name, MAP_TYPE_LPM_TRIE, LPM_KEY_SIZE, LPM_VALUE_SIZE, REMOTE_CIDRS_MAX, F_NO_PREALLOC)
        self.local_fd, adopted_local = self.kernel.ensure_map(
            local_name, MAP_TYPE_HASH, LOCAL_KEY_SIZE, LOCAL_VALUE_SIZE, LOCAL_PODS_MAX)
        self.adopted = adopted_remote and adopted_local
        syms = KernelSyms(*self.kernel.kfunc_ids())
        self.tx_fd = self.kernel.prog_load(assemble(tx_program(self.remote_fd, syms)), TX_PROG_NAME)
        self.rx_fd = self.kernel.prog_load(assemble(rx_program(self.local_fd, self.remote_fd, syms)),
                                           RX_PROG_NAME)
        underlay = self.kernel.ifindex_with_address(self.node_address)
        if underlay is None:
            raise HostRoutingError(f"no device holds the node address {self.node_address}")
        self.underlay, self.rx_attached = underlay, False
        log.info("node bpf host routing started underlay_ifindex=%d maps=%s", underlay,
                 "adopted" if self.adopted else "created")

    def sync_remote(self, cidrs: Iterable[str]) -> list[str]:
        want = remote_cidrs_contents(cidrs)
        have = self.kernel.map_items(self.remote_fd, LPM_KEY_SIZE, LPM_VALUE_SIZE)
        upserts, deletes = map_changes(have, want)
        done = []
        for k, v in upserts.items():
            self.kernel.map_update(self.remote_fd, k, v)
            done.append(f"fastpath remote +{_lpm_text(k)}")
        for k in deletes:
            self.kernel.map_delete(self.remote_fd, k)
            done.append(f"fastpath remote -{_lpm_text(k)}")
        return done

    def sync_local(self, pods: Iterable[LocalPod]) -> list[str]:
        """Local pods map := `pods` whose host veth exists; TX attached on each veth not yet done."""
        want: dict[bytes, bytes] = {}
        veths: dict[int, str] = {}
        links = self.kernel.link_facts()
        for pod in pods:
            for name in pod.host_ifnames:
                facts = links.get(name)
                if facts is not None and facts.master_mac:  # the bridge port, not the bridge
                    want[local_key(pod.ip)] = local_value(facts.ifindex, pod.pod_mac, facts.master_mac)
                    veths[facts.ifindex] = pod.ip
                    break
        done = []
        have = self.kernel.map_items(self.local_fd, LOCAL_KEY_SIZE, LOCAL_VALUE_SIZE)
        upserts, deletes = map_changes(have, want)
        for k, v in upserts.items():
            self.kernel.map_update(self.local_fd, k, v)
            done.append(f"fastpath local +{ipaddress.IPv4Address(k)}")
        for k in deletes:
            self.kernel.map_delete(self.local_fd, k)
            done.append(f"fastpath local -{ipaddress.IPv4Address(k)}")
        # RX before any TX: disable() finds what an agent left by the RX on the underlay, so a send
        # side must never exist without it (an agent dying between the two steps included).
        if not self.rx_attached:
            self.kernel.ensure_tc_ingress(self.underlay, self.rx_fd, RX_PROG_NAME)
            self.rx_attached = True
            done.append(f"fastpath rx attached ifindex={self.underlay}")
        for ifindex, ip in veths.items():
            if self._tx_attached.get(ifindex) != self.tx_fd:
                self.kernel.ensure_tc_ingress(ifindex, self.tx_fd, TX_PROG_NAME)
                self._tx_attached[ifindex] = self.tx_fd
                done.append(f"fastpath tx attached pod={ip} ifindex={ifindex}")
        for gone in set(self._tx_attached) - set(veths):
            del self._tx_attached[gone]  # the filter went with the veth
        return done


def _lpm_text(key: bytes) -> str:
    return f"{ipaddress.IPv4Address(key[4:8])}/{struct.unpack('<I', key[:4])[0]}"


def disable(kernel: BPFKernel, node_address: str) -> list[str]:
    """Remove what an agent with BPF host routing attached, when this one runs without it.

    Left in place, the programs would go on routing with maps nobody updates any more (a new pod
    reusing a deleted pod's IP would get packets sent to the old veth). Cheap when there is nothing
    to do: one filter listing on the underlay device, where the receive side always sits.
    """
    underlay = kernel.ifindex_with_address(node_address)
    if underlay is None or RX_PROG_NAME not in kernel.tc_ingress_names(underlay):
        return []
    done = []
    for link in kernel.link_facts().values():
        if link.master_mac and kernel.remove_tc_ingress(link.ifindex, TX_PROG_NAME):
            done.append(f"fastpath tx removed ifindex={link.ifindex}")
    # The receive side last: until the send sides are gone, replies may still need it.
    if kernel.remove_tc_ingress(underlay, RX_PROG_NAME):
        done.append(f"fastpath rx removed ifindex={underlay}")
    return done
