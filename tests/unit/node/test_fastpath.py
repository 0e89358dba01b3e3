"""BPF host routing's pure parts: the assembler, the two programs, map contents, and the sync
against a fake kernel (no root, no bpf(2))."""

from __future__ import annotations

import asyncio
import json
import re
import struct
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from netplane.node import fastpath as F
from netplane.node.cni import Attachment, CNIInvoker, read_cached_results
from netplane.node.config import AgentConfig, ConfigError

SYMS = F.KernelSyms(ct_lookup=70001, ct_release=70002, nf_conn_status=136)


def decode(code: bytes) -> list[tuple[int, int, int, int, int]]:
    """(opcode, dst, src, off, imm) per 8-byte slot."""
    out = []
    for i in range(0, len(code), 8):
        op, regs, off, imm = struct.unpack_from("<BBhi", code, i)
        out.append((op, regs & 0xF, regs >> 4, off, imm))
    return out


# -- assembler ----------------------------------------------------------------------------------


def test_golden_encodings() -> None:
    a = F.Asm()
    a.mov(F.R6, F.R1)
    a.ldx("w", F.R2, F.R6, 16)
    a.st("dw", F.FP, -8, 0)
    a.movi(F.R0, 7)
    a.kcall(1234)
    a.exit()
    assert F.assemble(a.items).hex() == (
        "bf16000000000000"  # r6 = r1
        "6162100000000000"  # r2 = *(u32 *)(r6 + 16)
        "7a0af8ff00000000"  # *(u64 *)(r10 - 8) = 0
        "b700000007000000"  # r0 = 7
        "85200000d2040000"  # call kfunc btf_id 1234 (src_reg = BPF_PSEUDO_KFUNC_CALL)
        "9500000000000000"  # exit
    )


def test_labels_resolve_forward_and_backward_counting_ld_imm64_as_two_slots() -> None:
    a = F.Asm()
    a.label("top")
    a.jmp(F.JEQ_K, F.R1, "end", imm=0)  # slot 0 -> end at slot 4: off 3
    a.ld_map(F.R1, 42)  # slots 1-2
    a.jmp(F.JNE_K, F.R1, "top", imm=1)  # slot 3 -> 0: off -4
    a.label("end")
    a.exit()  # slot 4
    ins = decode(F.assemble(a.items))
    assert len(ins) == 5
    assert ins[0][3] == 3 and ins[3][3] == -4
    assert ins[1] == (F.LD_IMM64, F.R1, F.PSEUDO_MAP_FD, 0, 42) and ins[2] == (0, 0, 0, 0, 0)


def test_bad_labels_are_errors() -> None:
    with pytest.raises(ValueError, match="undefined label"):
        F.assemble([F.Insn(F.JA, off="nowhere"), F.Insn(F.EXIT)])
    with pytest.raises(ValueError, match="defined twice"):
        F.assemble([F.Label("x"), F.Label("x"), F.Insn(F.EXIT)])


# -- programs ---------------------------------------------------------------------------------------


def slots(items: list[F.Item]) -> list[tuple[int, int, int, int, int]]:
    return decode(F.assemble(items))


def check_well_formed(ins: list[tuple[int, int, int, int, int]]) -> None:
    """Every jump lands inside the program and not in the second half of an LD_IMM64."""
    second_halves = {i + 1 for i, x in enumerate(ins) if x[0] == F.LD_IMM64}
    for i, (op, *_rest) in enumerate(ins):
        if i in second_halves or op & 0x07 != 0x05 or op in (F.CALL, F.EXIT):
            continue
        target = i + 1 + ins[i][3]
        assert 0 <= target < len(ins) and target not in second_halves, f"bad jump at {i}"
    assert ins[-1][0] == F.EXIT


def helper_calls(ins: list[tuple[int, int, int, int, int]]) -> list[int]:
    return [x[4] for x in ins if x[0] == F.CALL and x[2] == 0]


def kfunc_calls(ins: list[tuple[int, int, int, int, int]]) -> list[int]:
    return [x[4] for x in ins if x[0] == F.CALL and x[2] == F.PSEUDO_KFUNC_CALL]


def map_fds(ins: list[tuple[int, int, int, int, int]]) -> list[int]:
    return [x[4] for x in ins if x[0] == F.LD_IMM64]


def test_tx_program_shape() -> None:
    ins = slots(F.tx_program(remote_cidrs_fd=11, syms=SYMS))
    check_well_formed(ins)
    assert map_fds(ins) == [11]
    # LPM lookup of the destination, then the conntrack NAT check, then fib lookup and redirect_neigh.
    assert helper_calls(ins) == [F.MAP_LOOKUP_ELEM, F.FIB_LOOKUP, F.L3_CSUM_REPLACE, F.REDIRECT_NEIGH]
    assert kfunc_calls(ins) == [SYMS.ct_lookup, SYMS.ct_release]
    # nf_conn.status is read at the offset the kernel's BTF gave.
    assert any(x[0] == F.LDX["dw"] and x[3] == SYMS.nf_conn_status for x in ins)
    # The LPM key is the destination address (IP header offset 16).
    assert (F.LDX["w"], F.R2, F.R7, F.ETH_HLEN + 16, 0) in ins[:ins.index(next(x for x in ins if x[0] == F.LD_IMM64))]
    # fib lookup asks to skip the neighbour (redirect_neigh resolves it).
    fib = next(i for i, x in enumerate(ins) if x[0] == F.CALL and x[4] == F.FIB_LOOKUP)
    assert (F.MOV64_K, F.R4, 0, 0, F.FIB_SKIP_NEIGH) in ins[fib - 4:fib]


def test_rx_program_checks_the_source_before_the_local_pod() -> None:
    ins = slots(F.rx_program(local_pods_fd=21, remote_cidrs_fd=22, syms=SYMS))
    check_well_formed(ins)
    # The remote-pod-CIDR check (on the SOURCE address) comes first, then the local pod lookup.
    assert map_fds(ins) == [22, 21]
    first_map = next(i for i, x in enumerate(ins) if x[0] == F.LD_IMM64)
    assert (F.LDX["w"], F.R2, F.R7, F.ETH_HLEN + 12, 0) in ins[:first_map]
    assert helper_calls(ins) == [F.MAP_LOOKUP_ELEM, F.MAP_LOOKUP_ELEM, F.L3_CSUM_REPLACE, F.REDIRECT_PEER]
    assert kfunc_calls(ins) == [SYMS.ct_lookup, SYMS.ct_release]


def test_fragments_pass_and_rx_takes_only_frames_for_this_host() -> None:
    for items in (F.tx_program(1, SYMS), F.rx_program(1, 2, SYMS)):
        ins = slots(items)
        # frag_off (IP header offset 6) masked with MF | offset, anything set -> pass, before any map.
        first_map = next(i for i, x in enumerate(ins) if x[0] == F.LD_IMM64)
        load = ins.index((F.LDX["h"], F.R2, F.R7, F.ETH_HLEN + 6, 0))
        assert load < first_map
        assert ins[load + 1] == (F.AND64_K, F.R2, 0, 0, F.IP_FRAG_MASK_LE)
        assert ins[load + 2][:2] == (F.JNE_K, F.R2) and ins[load + 2][4] == 0
    rx = slots(F.rx_program(1, 2, SYMS))
    load = rx.index((F.LDX["w"], F.R2, F.R6, F.SKB_PKT_TYPE, 0))
    assert rx[load + 1][:2] == (F.JNE_K, F.R2) and rx[load + 1][4] == F.PACKET_HOST
    assert F.IP_FRAG_MASK_LE.to_bytes(2, "little") == (0x3FFF).to_bytes(2, "big")


def test_a_conntrack_lookup_error_other_than_not_found_takes_the_stack() -> None:
    for items in (F.tx_program(1, SYMS), F.rx_program(1, 2, SYMS)):
        ins = slots(items)
        call = ins.index((F.CALL, 0, F.PSEUDO_KFUNC_CALL, 0, SYMS.ct_lookup))
        # NULL: opts.error is read and anything but -ENOENT (32-bit compare) goes to the stack.
        assert ins[call + 1][:2] == (F.JNE_K, F.R0)
        assert ins[call + 2] == (F.LDX["w"], F.R2, F.FP, F.SP_CT_OPTS + 4, 0)
        assert ins[call + 3][:2] == (F.JNE32_K, F.R2) and ins[call + 3][4] == -F.ENOENT


def test_non_ipv4_and_expiring_ttl_pass() -> None:
    for items in (F.tx_program(1, SYMS), F.rx_program(1, 2, SYMS)):
        ins = slots(items)
        # The first test is the EtherType, the TTL test is "<= 1 -> pass".
        assert ins[2][0] == F.JNE_K and ins[2][4] == F.ETH_P_IP_BE
        assert any(x[0] == F.JLE_K and x[4] == 1 for x in ins[:15])
        # The "pass" exit returns TC_ACT_OK.
        assert ins[-2] == (F.MOV64_K, F.R0, 0, 0, F.TC_ACT_OK)


# -- map contents -----------------------------------------------------------------------------------------


def test_map_encodings() -> None:
    assert F.lpm_key("10.244.1.0/24") == bytes([24, 0, 0, 0, 10, 244, 1, 0])
    assert F.local_key("10.244.0.5") == bytes([10, 244, 0, 5])
    assert F.local_value(7, "02:00:00:00:00:01", "AA:BB:CC:DD:EE:FF") == (
        bytes([7, 0, 0, 0, 2, 0, 0, 0, 0, 1, 0xAA, 0xBB, 0xCC, 0xDD, 0xEE, 0xFF]))
    with pytest.raises(ValueError):
        F.local_value(7, "02:00", "aa:bb:cc:dd:ee:ff")
    assert F.remote_cidrs_contents(["10.244.1.0/24", "fd00:1::/64"]) == {F.lpm_key("10.244.1.0/24"):
                                                                        b"\x01\0\0\0"}


def netplane_result(ip: str, veth: str, mac: str) -> dict[str, Any]:
    return {"cniVersion": "1.0.0",
            "interfaces": [{"name": "cni0", "mac": "aa:aa:aa:aa:aa:aa"}, {"name": veth, "mac": "ee:ee:ee:ee:ee:ee"},
                           {"name": "eth0", "mac": mac, "sandbox": "/run/netns/x"}],
            "ips": [{"address": f"{ip}/24", "gateway": "10.244.0.1", "interface": 2}]}


def test_local_pods_from_results() -> None:
    loopback = {"interfaces": [{"name": "lo", "sandbox": "/run/netns/x"}],
                "ips": [{"address": "127.0.0.1/8", "interface": 0}]}
    other_cidr = netplane_result("10.244.9.3", "vethz", "02:00:00:00:00:09")
    pods = F.local_pods_from_results([netplane_result("10.244.0.12", "veth2", "02:00:00:00:00:0C"),
                                      loopback, other_cidr,
                                      netplane_result("10.244.0.3", "veth1", "02:00:00:00:00:03")],
                                     "10.244.0.0/24")
    assert pods == [F.LocalPod("10.244.0.3", "02:00:00:00:00:03", ("cni0", "veth1")),
                    F.LocalPod("10.244.0.12", "02:00:00:00:00:0c", ("cni0", "veth2"))]


def test_map_changes() -> None:
    assert F.map_changes({b"a": b"1", b"b": b"2"}, {b"a": b"1", b"b": b"3", b"c": b"4"}) == (
        {b"b": b"3", b"c": b"4"}, [])
    assert F.map_changes({b"a": b"1", b"z": b"9"}, {b"a": b"1"}) == ({}, [b"z"])
    assert F.map_changes({b"a": b"1"}, {b"a": b"1"}) == ({}, [])


def test_map_names_are_per_namespace_and_short() -> None:
    remote, local = F.map_names(4026532011)
    assert remote != local and len(remote) <= 15 and len(local) <= 15
    assert F.map_names(4026532012) != (remote, local)


# -- the sync, against a fake kernel -------------------------------------------------------------------


@dataclass
class Link:
    ifindex: int
    mac: str
    master_mac: str | None


@dataclass
class FakeBPF:
    maps: dict[str, tuple[int, dict[bytes, bytes]]] = field(default_factory=dict)  # name -> (fd, contents)
    progs: dict[int, str] = field(default_factory=dict)
    filters: dict[int, int] = field(default_factory=dict)  # ifindex -> prog fd
    links: dict[str, Link] = field(default_factory=dict)
    addresses: dict[str, int] = field(default_factory=dict)
    writes: int = 0
    next_fd: int = 100

    def _fd(self) -> int:
        self.next_fd += 1
        return self.next_fd

    def by_fd(self, fd: int) -> dict[bytes, bytes]:
        return next(m for f, m in self.maps.values() if f == fd)

    def ensure_map(self, name: str, map_type: int, key_size: int, value_size: int, max_entries: int,
                   flags: int = 0) -> tuple[int, bool]:
        if name in self.maps:
            return self.maps[name][0], True
        self.maps[name] = (self._fd(), {})
        return self.maps[name][0], False

    def map_items(self, fd: int, key_size: int, value_size: int) -> dict[bytes, bytes]:
        return dict(self.by_fd(fd))

    def map_update(self, fd: int, key: bytes, value: bytes) -> None:
        self.writes += 1
        self.by_fd(fd)[key] = value

    def map_delete(self, fd: int, key: bytes) -> bool:
        self.writes += 1
        return self.by_fd(fd).pop(key, None) is not None

    def prog_load(self, insns: bytes, name: str) -> int:
        fd = self._fd()
        self.progs[fd] = name
        return fd

    def ensure_tc_ingress(self, ifindex: int, prog_fd: int, name: str) -> None:
        assert self.progs[prog_fd] == name
        self.filters[ifindex] = prog_fd

    def tc_ingress_names(self, ifindex: int) -> list[str]:
        return [self.progs[self.filters[ifindex]]] if ifindex in self.filters else []

    def remove_tc_ingress(self, ifindex: int, name: str) -> bool:
        if name not in self.tc_ingress_names(ifindex):
            return False
        del self.filters[ifindex]
        return True

    def link_facts(self) -> dict[str, Link]:
        return dict(self.links)

    def ifindex_with_address(self, address: str) -> int | None:
        return self.addresses.get(address)

    def netns_inode(self) -> int:
        return 4026532011

    def kfunc_ids(self) -> tuple[int, int, int]:
        return (SYMS.ct_lookup, SYMS.ct_release, SYMS.nf_conn_status)

    def close(self, fd: int) -> None:
        pass


BRIDGE_MAC = "aa:aa:aa:aa:aa:aa"


def fake_node() -> FakeBPF:
    return FakeBPF(links={"eth0": Link(2, "02:50:00:00:00:11", None), "cni0": Link(3, BRIDGE_MAC, None),
                          "veth1": Link(5, "ee:00:00:00:00:01", BRIDGE_MAC),
                          "veth2": Link(6, "ee:00:00:00:00:02", BRIDGE_MAC)},
                   addresses={"192.168.50.11": 2})


POD1 = F.LocalPod("10.244.0.3", "02:00:00:00:00:03", ("cni0", "veth1"))
POD2 = F.LocalPod("10.244.0.4", "02:00:00:00:00:04", ("cni0", "veth2"))


def test_start_loads_both_programs_and_the_first_sync_attaches_rx_on_the_underlay() -> None:
    k = fake_node()
    hr = F.HostRouting(k, "192.168.50.11")
    hr.start()
    assert not hr.adopted
    assert k.progs[hr.rx_fd] == F.RX_PROG_NAME and k.progs[hr.tx_fd] == F.TX_PROG_NAME
    assert k.filters == {}  # not before the maps hold the desired state
    assert hr.sync_local([]) == ["fastpath rx attached ifindex=2"]
    assert k.filters == {2: hr.rx_fd}
    assert hr.sync_local([]) == []
    with pytest.raises(F.HostRoutingError, match=re.escape("192.168.50.99")):
        F.HostRouting(k, "192.168.50.99").start()


def test_sync_remote_is_whole_state_and_idempotent() -> None:
    k = fake_node()
    hr = F.HostRouting(k, "192.168.50.11")
    hr.start()
    assert hr.sync_remote(["10.244.1.0/24", "10.244.2.0/24"]) == [
        "fastpath remote +10.244.1.0/24", "fastpath remote +10.244.2.0/24"]
    writes = k.writes
    assert hr.sync_remote(["10.244.2.0/24", "10.244.1.0/24"]) == []
    assert k.writes == writes
    assert hr.sync_remote(["10.244.2.0/24"]) == ["fastpath remote -10.244.1.0/24"]
    assert k.by_fd(hr.remote_fd) == F.remote_cidrs_contents(["10.244.2.0/24"])


def test_sync_local_attaches_tx_once_and_follows_pods() -> None:
    k = fake_node()
    hr = F.HostRouting(k, "192.168.50.11")
    hr.start()
    done = hr.sync_local([POD1, POD2])
    assert k.filters == {2: hr.rx_fd, 5: hr.tx_fd, 6: hr.tx_fd}
    assert k.by_fd(hr.local_fd) == {F.local_key(POD1.ip): F.local_value(5, POD1.pod_mac, BRIDGE_MAC),
                                    F.local_key(POD2.ip): F.local_value(6, POD2.pod_mac, BRIDGE_MAC)}
    assert len(done) == 5
    assert hr.sync_local([POD1, POD2]) == []
    # POD2 deleted: its veth is gone, and so is its entry; the filter went with the veth.
    del k.links["veth2"]
    assert hr.sync_local([POD1]) == ["fastpath local -10.244.0.4"]
    # A pod whose veth is not there (yet) gets no entry.
    assert hr.sync_local([POD1, POD2]) == []


def test_a_restarted_agent_adopts_the_maps_and_replaces_the_programs_in_place() -> None:
    k = fake_node()
    first = F.HostRouting(k, "192.168.50.11")
    first.start()
    first.sync_remote(["10.244.1.0/24"])
    first.sync_local([POD1])
    contents = {name: dict(m) for name, (_fd, m) in k.maps.items()}
    writes = k.writes
    second = F.HostRouting(k, "192.168.50.11")
    second.start()
    assert second.adopted
    assert (second.remote_fd, second.local_fd) == (first.remote_fd, first.local_fd)
    assert second.sync_remote(["10.244.1.0/24"]) == []
    # The receive side first: a send side never exists without it (see disable()).
    assert second.sync_local([POD1]) == ["fastpath rx attached ifindex=2",
                                         f"fastpath tx attached pod={POD1.ip} ifindex=5"]
    assert k.writes == writes, "adopting rewrote map entries"
    assert {name: dict(m) for name, (_fd, m) in k.maps.items()} == contents
    assert k.filters == {2: second.rx_fd, 5: second.tx_fd}


def test_disable_removes_what_an_earlier_agent_attached() -> None:
    k = fake_node()
    assert F.disable(k, "192.168.50.11") == []  # never enabled: nothing to do
    hr = F.HostRouting(k, "192.168.50.11")
    hr.start()
    hr.sync_local([POD1, POD2])
    assert F.disable(k, "192.168.50.11") == [
        "fastpath tx removed ifindex=5", "fastpath tx removed ifindex=6", "fastpath rx removed ifindex=2"]
    assert k.filters == {}
    assert F.disable(k, "192.168.50.11") == []


# -- wiring: config and the CNI invoker's listeners -------------------------------------------------------


def test_the_flag_is_host_gw_only() -> None:
    AgentConfig("n1", "192.168.50.11", backend="host-gw", bpf_host_routing=True).check()
    with pytest.raises(ConfigError, match="--bpf-host-routing works with --backend host-gw only"):
        AgentConfig("n1", "192.168.50.11", backend="vxlan", bpf_host_routing=True).check()


PLUGIN = """#!{python}
import json, os, sys
conf = json.load(sys.stdin)
if os.environ["CNI_COMMAND"] == "ADD":
    print(json.dumps({result}))
"""


def test_cni_listeners_run_after_add_and_del_and_see_the_cache(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    plugin = bin_dir / "fake"
    plugin.write_text(PLUGIN.format(python=sys.executable,
                                    result=repr(netplane_result("10.244.0.7", "veth7", "02:00:00:00:00:07"))))
    plugin.chmod(0o755)
    cache = tmp_path / "cache"
    inv = CNIInvoker([str(bin_dir)], str(cache))
    seen: list[list[F.LocalPod]] = []

    async def listener() -> None:
        seen.append(F.local_pods_from_results(read_cached_results(str(cache)), "10.244.0.0/24"))

    async def failing() -> None:
        raise RuntimeError("a listener's failure is not the ADD's")

    inv.listeners += [listener, failing]
    net = {"cniVersion": "1.0.0", "name": "n", "plugins": [{"type": "fake"}]}
    att = Attachment("c1", "/run/netns/x")
    asyncio.run(inv.add(net, att))
    asyncio.run(inv.delete(net, att))
    assert seen == [[F.LocalPod("10.244.0.7", "02:00:00:00:00:07", ("cni0", "veth7"))], []]
    assert json.loads(json.dumps(read_cached_results(str(tmp_path / "missing")))) == []
