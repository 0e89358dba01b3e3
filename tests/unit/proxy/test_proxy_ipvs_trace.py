"""IPVS mode against the semantics table every mode shares (tests/unit/proxy/proxy_scenarios.CASES).

A small interpreter walks a packet through what IPVS mode programs: the rendered iptables rules (the
real text, matched against the real set members), then IPVS (virtual server lookup, persistence, real
servers), in the kernel's hook order: nat PREROUTING/OUTPUT, filter INPUT (before IPVS, which hooks
LOCAL_IN late), IPVS, nat POSTROUTING. For locally sent packets IPVS runs in LOCAL_OUT, before
filter OUTPUT, and answers a virtual server without real servers with an ICMP error (reject).

Where IPVS mode cannot do what the iptables and nftables modes do, the expectation is overridden in
KNOWN_DIFFERENCES, with the reason; kube-proxy's IPVS mode behaves the same way.
"""

from __future__ import annotations

import ipaddress
import shlex
from dataclasses import dataclass
from typing import Any

import pytest

from netplane.kernel.ipvs import VirtualServerKey
from netplane.proxy import ipvs
from netplane.proxy.ipvs import DesiredIndex, iptables_rules, render_service
from tests.unit.proxy.proxy_scenarios import CASES, CONFIG, NODE_IP, build_state

NODEPORT_ADDRESSES = (NODE_IP,)
H = 0.5

# Case id -> (expected, masquerade) in IPVS mode, and why it differs from the other modes.
KNOWN_DIFFERENCES: dict[str, tuple[Any, bool | None]] = {
    # One virtual server per address and port: it cannot pick endpoints by the client's address, so
    # pods and the node itself get the Local policy's endpoints too (and keep their source).
    "nodeport policy Local from a pod: any endpoint": ({"10.244.1.11:80": 1.0}, False),
    "nodeport policy Local from the node: any endpoint, masqueraded": ({"10.244.1.11:80": 1.0}, False),
    # Other ports of a service address are refused (kube-proxy's KUBE-IPVS-FILTER): the address is
    # bound to the node, and a node-local listener must not answer on it.
    "wrong protocol does not match": ("reject", None),
}


@dataclass
class Packet:
    src: str
    dst: str
    port: int
    proto: str
    mark: int = 0


class Tracer:
    def __init__(self) -> None:
        state = build_state()
        self.index = DesiredIndex()
        for spn in sorted(state.services):
            self.index.replace(spn, render_service(state.services[spn], state.selection(spn), NODEPORT_ADDRESSES))
        self.members = self.index.members()
        self.rules = {key: [shlex.split(r) for r in rules] for key, rules in iptables_rules(CONFIG).items()}
        self.mark = int(CONFIG.masq_mark, 16)
        self.local = {NODE_IP, "127.0.0.1", *self.index.addresses()}

    def in_set(self, name: str, flags: str, pkt: Packet, dst: str, dport: int, src: str) -> bool:
        kind = ipvs.SET_TYPES[name]
        p = pkt.proto.lower()
        if kind == "bitmap:port":
            return (name, str(dport)) in self.members
        if kind == "hash:ip":
            return (name, dst) in self.members
        if kind == "hash:ip,port":
            return (name, f"{dst},{p}:{dport}") in self.members
        if kind == "hash:ip,port,ip":
            return (name, f"{dst},{p}:{dport},{src}") in self.members
        assert kind == "hash:ip,port,net" and flags == "dst,dst,src"
        prefix = f"{dst},{p}:{dport},"
        return any(s == name and m.startswith(prefix) and
                   ipaddress.ip_address(src) in ipaddress.ip_network(m[len(prefix):], strict=False)
                   for s, m in self.members)

    def matches(self, words: list[str], pkt: Packet, dst: str, dport: int, src: str) -> bool:
        i, negate = 0, False
        while i < len(words) and words[i] != "-j":
            w = words[i]
            ok = True
            if w == "!":
                negate = True
                i += 1
                continue
            if w == "-m":
                i += 2
                continue
            if w == "--comment":
                i += 2
                continue
            if w in ("-s", "-d"):
                addr = src if w == "-s" else dst
                ok = ipaddress.ip_address(addr) in ipaddress.ip_network(words[i + 1], strict=False)
                i += 2
            elif w == "-p":
                ok = pkt.proto.lower() == words[i + 1]
                i += 2
            elif w == "--match-set":
                ok = self.in_set(words[i + 1], words[i + 2], pkt, dst, dport, src)
                i += 3
            elif w == "--dst-type":
                ok = (dst in self.local) == (words[i + 1] == "LOCAL")
                i += 2
            elif w == "--mark":
                value, mask = (int(x, 16) for x in words[i + 1].split("/"))
                ok = pkt.mark & mask == value
                i += 2
            elif w == "--ctstate":
                ok = "NEW" in words[i + 1].split(",")
                i += 2
            else:
                raise AssertionError(f"the tracer does not know {w!r} in {words}")
            if ok == negate:
                return False
            negate = False
        return True

    def run(self, table: str, chain: str, pkt: Packet, dst: str, dport: int, src: str) -> str | None:
        """A verdict (ACCEPT/DROP/REJECT/MASQUERADE) or None when the chain falls through / RETURNs."""
        for words in self.rules[(table, chain)]:
            assert words[:2] == ["-A", chain]
            if not self.matches(words[2:], pkt, dst, dport, src):
                continue
            target = words[words.index("-j") + 1]
            if target == "RETURN":
                return None
            if target == "MARK":
                op, value = words[words.index("-j") + 2:words.index("-j") + 4]
                pkt.mark = pkt.mark | int(value, 16) if op == "--or-mark" else pkt.mark ^ int(value, 16)
                continue
            if target in ("ACCEPT", "DROP", "REJECT", "MASQUERADE"):
                return target
            verdict = self.run(table, target, pkt, dst, dport, src)
            if verdict is not None:
                return verdict
        return None

    def jumps(self, table: str, builtin: str, pkt: Packet, dst: str, dport: int, src: str) -> str | None:
        for jump in ipvs.JUMPS:
            if jump.table == table and jump.chain == builtin:
                words = shlex.split(jump.rule)
                if self.matches(words, pkt, dst, dport, src):
                    verdict = self.run(table, words[-1], pkt, dst, dport, src)
                    if verdict is not None:
                        return verdict
        return None

    def trace(self, src: str, dst: str, port: int, proto: str, origin: str,
              remembered: tuple[str, ...]) -> tuple[Any, bool | None]:
        pkt = Packet(src, dst, port, proto)
        self.jumps("nat", "OUTPUT" if origin == "local" else "PREROUTING", pkt, dst, port, src)
        if origin != "local":
            if dst not in self.local:
                return "accept", None  # routed on: not ours
            verdict = self.jumps("filter", "INPUT", pkt, dst, port, src)
            if verdict in ("DROP", "REJECT"):
                return verdict.lower(), None
        want = self.index.virtual(VirtualServerKey(proto, dst, port))
        if want is None:
            return "accept", None  # no virtual server: the local stack or routing deals with it
        vs, reals = want
        if not reals:
            return "reject", None  # IPVS answers ICMP port unreachable
        targets = [f"{r.address}:{r.port}" for r in reals]
        if vs.persistence and remembered and remembered[0] in targets:
            chosen = {remembered[0]: 1.0}
        else:
            chosen = {t: 1.0 / len(targets) for t in targets}  # rr, equal weights
        masq: set[bool] = set()
        for target in chosen:
            ip, tport = target.rsplit(":", 1)
            post = Packet(src, ip, int(tport), proto, pkt.mark)
            masq.add(self.jumps("nat", "POSTROUTING", post, ip, int(tport), src) == "MASQUERADE")
        assert len(masq) == 1, masq
        return chosen, masq.pop()


@pytest.fixture(scope="module")
def tracer() -> Tracer:
    return Tracer()


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_semantics_table(tracer: Tracer, case: tuple[Any, ...]) -> None:
    name, src, dst, port, proto, origin, remembered, expected, masquerade = case
    expected, masquerade = KNOWN_DIFFERENCES.get(name, (expected, masquerade))
    got, masq = tracer.trace(src, dst, port, proto, origin, remembered)
    if isinstance(expected, dict):
        assert got == pytest.approx(expected) and masq == masquerade, (got, masq)
    else:
        assert got == expected, got


def test_known_differences_name_real_cases() -> None:
    assert set(KNOWN_DIFFERENCES) <= {c[0] for c in CASES}
