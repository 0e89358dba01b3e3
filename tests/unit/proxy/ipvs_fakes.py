"""In-memory kernels for the IPVS backend's unit tests: IPVS virtual servers, the service device,
ipsets (fed by the same restore text the real `ipset restore` gets) and iptables."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field

from netplane.kernel.ipset import normalize_member
from netplane.kernel.ipvs import (
    IpvsOp,
    Observed,
    ObservedRealServer,
    VirtualServer,
    VirtualServerKey,
)


@dataclass
class FakeIpvs:
    device: str = "np-ipvs0"
    services: dict[VirtualServerKey, VirtualServer] = field(default_factory=dict)
    dests: dict[VirtualServerKey, dict[tuple[str, int], ObservedRealServer]] = field(default_factory=dict)
    bound: set[str] = field(default_factory=set)
    has_device: bool = False
    local: list[tuple[str, str]] = field(default_factory=lambda: [("lo", "127.0.0.1"), ("eth0", "192.168.0.1")])
    calls: list[str] = field(default_factory=list)
    applied: list[IpvsOp] = field(default_factory=list)
    reads: list[Collection[VirtualServerKey] | None] = field(default_factory=list)
    sysctls: dict[str, str] = field(default_factory=dict)

    def observe(self, keys: Collection[VirtualServerKey] | None = None) -> Observed:
        self.reads.append(None if keys is None else list(keys))
        wanted = self.services.keys() if keys is None else [k for k in keys if k in self.services]
        return {k: (self.services[k], dict(self.dests.get(k, {}))) for k in wanted}

    def apply(self, ops: Sequence[IpvsOp]) -> int:
        if ops:
            self.calls.append("ipvs:" + ",".join(sorted({op.kind for op in ops})))
        for op in ops:
            key = op.service.key
            self.applied.append(op)
            if op.kind in ("add-service", "set-service"):
                self.services[key] = op.service
                self.dests.setdefault(key, {})
            elif op.kind == "del-service":
                self.services.pop(key, None)
                self.dests.pop(key, None)
            else:
                assert op.dest is not None and key in self.services, op
                target = op.dest.target
                if op.kind == "del-dest":
                    self.dests[key].pop(target, None)
                else:
                    old = self.dests[key].get(target)
                    self.dests[key][target] = ObservedRealServer(
                        op.dest.address, op.dest.port, op.dest.weight,
                        old.active if old else 0, old.inactive if old else 0)
        return len(ops)

    def ensure_device(self) -> str:
        self.has_device = True
        return "dummy"

    def device_present(self) -> bool:
        return self.has_device

    def bound_addresses(self) -> set[str]:
        return set(self.bound)

    def bind(self, addresses: Collection[str]) -> None:
        if addresses:
            self.calls.append("bind")
        self.bound |= set(addresses)

    def unbind(self, addresses: Collection[str]) -> None:
        if addresses:
            self.calls.append("unbind")
        self.bound -= set(addresses)

    def local_addresses(self) -> list[tuple[str, str]]:
        return [*self.local, *((self.device, a) for a in sorted(self.bound))]

    def ensure_sysctls(self, values: Mapping[str, str]) -> None:
        self.sysctls.update(values)

    def set_connections(self, key: VirtualServerKey, target: tuple[str, int], active: int) -> None:
        rs = self.dests[key][target]
        self.dests[key][target] = ObservedRealServer(rs.address, rs.port, rs.weight, active, 0, rs.masquerade)


@dataclass
class FakeIpset:
    sets: dict[str, tuple[str, set[str]]] = field(default_factory=dict)
    texts: list[str] = field(default_factory=list)
    calls: list[str] | None = None

    def save(self) -> str:
        lines = []
        for name, (kind, members) in sorted(self.sets.items()):
            lines.append(f"create {name} {kind}")
            lines += [f"add {name} {m}" for m in sorted(members)]
        return "\n".join(lines) + "\n"

    def restore(self, text: str) -> None:
        self.texts.append(text)
        if self.calls is not None:
            self.calls.append("ipset")
        for line in text.splitlines():
            words = line.split()
            if words[0] == "create":
                self.sets.setdefault(words[1], (words[2], set()))
            elif words[0] == "add":
                self.sets[words[1]][1].add(normalize_member(words[2]))
            elif words[0] == "del":
                self.sets[words[1]][1].discard(normalize_member(words[2]))
            else:
                raise AssertionError(f"unexpected ipset command {line!r}")

    def members(self, name: str) -> set[str]:
        return set(self.sets.get(name, ("", set()))[1])


@dataclass
class FakeIptables:
    texts: list[str] = field(default_factory=list)
    chains: set[tuple[str, str]] = field(default_factory=set)
    jumps: list[tuple[str, str]] = field(default_factory=list)
    calls: list[str] | None = None

    def restore(self, text: str) -> None:
        self.texts.append(text)
        if self.calls is not None:
            self.calls.append("iptables")
        table = ""
        for line in text.splitlines():
            if line.startswith("*"):
                table = line[1:]
            elif line.startswith(":"):
                self.chains.add((table, line[1:].split()[0]))
            elif line.startswith("-X "):
                self.chains.discard((table, line.split()[1]))
            elif line.startswith("-I "):  # a jump from a built-in chain: kept as iptables-save shows it
                _, chain, _, rule = line.split(" ", 3)
                self.jumps.append((table, f"-A {chain} {rule}"))

    def save(self, table: str) -> str:
        lines = [f":{c} - [0:0]" for t, c in sorted(self.chains) if t == table]
        lines += [rule for t, rule in self.jumps if t == table]
        return "\n".join(lines) + "\n"

    def chain_exists(self, table: str, chain: str) -> bool:
        return (table, chain) in self.chains
