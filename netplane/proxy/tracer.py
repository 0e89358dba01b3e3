"""A pure packet tracer over the rules this package renders, in either mode.

It loads the exact text handed to the kernel (an `iptables-restore --noflush`
text plus the built-in-chain jumps, or an `nft -f` transaction) into a model,
applying each load on top of the previous one as the kernel would, so partial
syncs are traced too. Then it walks the first packet of a new connection,
`{source, destination, port, protocol}` arriving from an interface or sent by a
local process, through the netfilter hooks in priority order, and reports every
possible outcome with its probability:

    dnat to an endpoint | accept (no service rule took it) | reject | drop,
    and whether the packet leaves masqueraded.

Only the vocabulary our renderers emit is understood; anything else raises
`TraceError`, so a renderer change that the tracer does not know fails loudly.
`undefined_targets()` lists jumps/gotos to chains that do not exist.
"""

from __future__ import annotations

import ipaddress
import shlex
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field, replace
from typing import Any

BUILTIN_TARGETS = {"ACCEPT", "DROP", "REJECT", "RETURN", "DNAT", "MARK", "MASQUERADE"}


class TraceError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Packet:
    src: str
    dst: str
    dport: int
    protocol: str = "TCP"
    origin: str = "external"  # "external": arrives on an interface; "local": sent by a process on the node


@dataclass(frozen=True, slots=True)
class Context:
    local_ips: frozenset[str] = frozenset()
    # Endpoints ("ip:port") the client is remembered for by ClientIP affinity.
    remembered: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class Outcome:
    verdict: str  # "dnat" | "accept" | "reject" | "drop"
    endpoint: str | None = None
    masquerade: bool = False
    probability: float = 1.0


@dataclass(slots=True)
class TraceResult:
    outcomes: list[Outcome]

    @property
    def verdicts(self) -> set[str]:
        return {o.verdict for o in self.outcomes}

    def endpoints(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for o in self.outcomes:
            if o.endpoint:
                out[o.endpoint] = out.get(o.endpoint, 0.0) + o.probability
        return out

    @property
    def masquerade(self) -> set[bool]:
        return {o.masquerade for o in self.outcomes if o.verdict in ("dnat", "accept")}


@dataclass(slots=True)
class _Pkt:
    src: str
    dst: str
    dport: int
    proto: str  # lower case
    mark: int = 0
    endpoint: str | None = None
    masquerade: bool = False
    prob: float = 1.0

    def copy(self, **kw: object) -> _Pkt:
        return replace(self, **kw)  # type: ignore[arg-type]


def _in(ip: str, cidr: str) -> bool:
    return ipaddress.ip_address(ip) in ipaddress.ip_network(cidr, strict=False)


# A match returns the probability that it matches (0, 1, or in between for random ones).
Match = Callable[[_Pkt, Context], float]


@dataclass(slots=True)
class _Rule:
    matches: list[Match] = field(default_factory=list)
    action: tuple[str, ...] = ()  # ("jump", chain) ("goto", chain) ("return",) ("accept",) ("drop",) ("reject",)
    # ("dnat", "ip:port") ("dnat-map", n, map, key prefix) ("mark-or", m) ("mark-xor", m) ("masquerade",)
    # ("vmap", keyspec, map) ("continue",)
    text: str = ""


@dataclass(slots=True)
class _Branch:
    pkt: _Pkt
    verdict: str | None  # None: fell off / returned; else "accept" | "drop" | "reject"


class _Program:
    """Chains + hooks, mode independent; the walker."""

    def __init__(self) -> None:
        self.chains: dict[str, list[_Rule]] = {}
        self.hooks: dict[str, list[str]] = {}  # hook -> base chains in priority order
        self.maps: dict[str, dict[tuple[str, ...], tuple[str, ...]]] = {}
        self.sets: dict[str, set[str]] = {}
        self.remembered_by: Callable[[str], str | None] = lambda name: None
        self.missing_sets: set[tuple[str, str]] = set()  # (chain, set) of lookups in undefined sets

    def walk_chain(self, chain: str, pkt: _Pkt, ctx: Context, depth: int = 0) -> list[_Branch]:
        if depth > 64:
            raise TraceError(f"chain nesting too deep at {chain}")
        if chain not in self.chains:
            raise TraceError(f"jump to undefined chain {chain}")
        return self._walk_rules(self.chains[chain], 0, pkt, ctx, depth)

    def _walk_rules(self, rules: list[_Rule], start: int, pkt: _Pkt, ctx: Context, depth: int) -> list[_Branch]:
        out: list[_Branch] = []
        for i in range(start, len(rules)):
            rule = rules[i]
            p = 1.0
            for m in rule.matches:
                p *= m(pkt, ctx)
                if p == 0.0:
                    break
            if p == 0.0:
                continue
            if p < 1.0:
                # Branch: one side takes this rule, the other continues with the next.
                out.extend(self._act(rule, rules, i, pkt.copy(prob=pkt.prob * p), ctx, depth))
                pkt = pkt.copy(prob=pkt.prob * (1.0 - p))
                continue
            out.extend(self._act(rule, rules, i, pkt, ctx, depth))
            return out
        out.append(_Branch(pkt, None))
        return out

    def _continue(self, branches: list[_Branch], rules: list[_Rule], i: int, ctx: Context,
                  depth: int) -> list[_Branch]:
        out: list[_Branch] = []
        for b in branches:
            if b.verdict is None:
                out.extend(self._walk_rules(rules, i + 1, b.pkt, ctx, depth))
            else:
                out.append(b)
        return out

    def _verdict(self, verdict: tuple[str, ...], rules: list[_Rule], i: int, pkt: _Pkt, ctx: Context,
                 depth: int) -> list[_Branch]:
        kind = verdict[0]
        if kind == "jump":
            return self._continue(self.walk_chain(verdict[1], pkt, ctx, depth + 1), rules, i, ctx, depth)
        if kind == "goto":
            return self.walk_chain(verdict[1], pkt, ctx, depth + 1)
        if kind == "return":
            return [_Branch(pkt, None)]
        if kind in ("accept", "drop", "reject"):
            return [_Branch(pkt, kind)]
        raise TraceError(f"unknown verdict {verdict}")

    def _act(self, rule: _Rule, rules: list[_Rule], i: int, pkt: _Pkt, ctx: Context,
             depth: int) -> list[_Branch]:
        a = rule.action
        kind = a[0]
        if kind in ("jump", "goto", "return", "accept", "drop", "reject"):
            return self._verdict(a, rules, i, pkt, ctx, depth)
        if kind == "continue":
            return self._walk_rules(rules, i + 1, pkt, ctx, depth)
        if kind == "dnat":
            ip, _, port = a[1].rpartition(":")
            return [_Branch(pkt.copy(dst=ip, dport=int(port), endpoint=a[1]), "accept")]
        if kind == "dnat-map":
            # numgen random mod n: each of 0..n-1 with probability 1/n, looked up in a data map,
            # alone or after the packet's destination address and port.
            n = int(a[1])
            prefix = (pkt.dst, str(pkt.dport)) if a[3] == "daddr.dport" else ()
            out: list[_Branch] = []
            for k in range(n):
                ip, port = self._endpoint_element(a[2], (*prefix, str(k)))
                out.append(_Branch(pkt.copy(dst=ip, dport=int(port), endpoint=f"{ip}:{port}",
                                            prob=pkt.prob / n), "accept"))
            return out
        if kind == "mark-or":
            return self._walk_rules(rules, i + 1, pkt.copy(mark=pkt.mark | int(a[1], 0)), ctx, depth)
        if kind == "mark-xor":
            return self._walk_rules(rules, i + 1, pkt.copy(mark=pkt.mark ^ int(a[1], 0)), ctx, depth)
        if kind == "masquerade":
            return [_Branch(pkt.copy(masquerade=True), "accept")]
        if kind == "vmap":
            key = tuple(_key_value(k, pkt) for k in a[1].split("."))
            verdict = self.maps.get(a[2], {}).get(key)
            if verdict is None:
                return self._walk_rules(rules, i + 1, pkt, ctx, depth)
            return self._verdict(verdict, rules, i, pkt, ctx, depth)
        raise TraceError(f"unknown action {a}")

    def _endpoint_element(self, name: str, key: tuple[str, ...]) -> tuple[str, str]:
        value = self.maps.get(name, {}).get(key)
        if value is None or len(value) != 3 or value[1] != ".":
            raise TraceError(f"endpoint map {name} has no element {' . '.join(key)} (or not `ip . port`): {value}")
        return value[0], value[2]

    def trace(self, packet: Packet, ctx: Context) -> TraceResult:
        pkt = _Pkt(packet.src, packet.dst, packet.dport, packet.protocol.lower())
        first = "output" if packet.origin == "local" else "prerouting"
        live = self._hook(first, [pkt], ctx)
        outcomes: list[Outcome] = []
        finished: list[_Pkt] = []
        for p, verdict in live:
            if verdict in ("drop", "reject"):
                outcomes.append(Outcome(verdict, None, False, p.prob))
                continue
            finished.append(p)
        to_local = [p for p in finished if p.dst in ctx.local_ips]
        forwarded = [p for p in finished if p.dst not in ctx.local_ips]
        if packet.origin == "local":
            # Local -> local goes out through postrouting and back in through input.
            after = self._hook("postrouting", to_local + forwarded, ctx)
            local_ok = [p for p, v in after if p.dst in ctx.local_ips]
            out_ok = [(p, v) for p, v in after if p.dst not in ctx.local_ips]
            final = out_ok + self._hook("input", local_ok, ctx)
        else:
            final = self._hook("input", to_local, ctx)
            fwd = self._hook("forward", forwarded, ctx)
            final += [(p, v) for p, v in fwd if v in ("drop", "reject")]
            final += self._hook("postrouting", [p for p, v in fwd if v not in ("drop", "reject")], ctx)
        for p, verdict in final:
            if verdict in ("drop", "reject"):
                outcomes.append(Outcome(verdict, None, False, p.prob))
            else:
                outcomes.append(Outcome("dnat" if p.endpoint else "accept", p.endpoint, p.masquerade, p.prob))
        merged: dict[tuple[str, str | None, bool], float] = {}
        for o in outcomes:
            k = (o.verdict, o.endpoint, o.masquerade)
            merged[k] = merged.get(k, 0.0) + o.probability
        return TraceResult([Outcome(v, e, m, round(pr, 9)) for (v, e, m), pr in sorted(
            merged.items(), key=lambda kv: (kv[0][0], kv[0][1] or "", kv[0][2]))])

    def _hook(self, hook: str, pkts: list[_Pkt], ctx: Context) -> list[tuple[_Pkt, str | None]]:
        live: list[tuple[_Pkt, str | None]] = [(p, None) for p in pkts]
        for chain in self.hooks.get(hook, []):
            nxt: list[tuple[_Pkt, str | None]] = []
            for p, verdict in live:
                if verdict in ("drop", "reject"):
                    nxt.append((p, verdict))
                    continue
                for b in self.walk_chain(chain, p, ctx):
                    nxt.append((b.pkt, b.verdict if b.verdict in ("drop", "reject") else None))
            live = nxt
        return live

    def undefined_targets(self) -> list[str]:
        out = []
        for name, rules in self.chains.items():
            for r in rules:
                targets: list[str] = []
                if r.action and r.action[0] in ("jump", "goto"):
                    targets.append(r.action[1])
                if r.action and r.action[0] == "dnat-map":
                    if r.action[2] not in self.maps:
                        out.append(f"{name}: map {r.action[2]} is not defined")
                    # A map keyed by the index alone must hold every index the rule can draw.
                    for k in range(int(r.action[1]) if r.action[3] == "" else 0):
                        try:
                            self._endpoint_element(r.action[2], (str(k),))
                        except TraceError as e:
                            out.append(f"{name}: {e}")
                if r.action and r.action[0] == "vmap":
                    m = r.action[2]
                    if m not in self.maps:
                        out.append(f"{name}: map {m} is not defined")
                        continue
                    targets.extend(v[1] for v in self.maps[m].values() if v[0] in ("jump", "goto"))
                for t in targets:
                    if t not in self.chains:
                        out.append(f"{name}: {t}")
        out.extend(f"{chain}: set {s} is not defined" for chain, s in self.missing_sets)
        return sorted(set(out))


def _key_value(field_name: str, pkt: _Pkt) -> str:
    field_name = field_name.strip()
    if field_name == "daddr":
        return pkt.dst
    if field_name == "proto":
        return pkt.proto
    if field_name == "dport":
        return str(pkt.dport)
    raise TraceError(f"unknown key field {field_name}")


# --------------------------------------------------------------------------- iptables

_IPT_HOOKS = {
    "prerouting": [("nat", "PREROUTING")],
    "input": [("filter", "INPUT")],
    "forward": [("filter", "FORWARD")],
    "output": [("nat", "OUTPUT"), ("filter", "OUTPUT")],
    "postrouting": [("nat", "POSTROUTING")],
}


class IptablesModel:
    """Tables as iptables-restore --noflush leaves them."""

    def __init__(self) -> None:
        self.tables: dict[str, dict[str, list[str]]] = {
            "filter": {"INPUT": [], "FORWARD": [], "OUTPUT": []},
            "nat": {"PREROUTING": [], "INPUT": [], "OUTPUT": [], "POSTROUTING": []},
        }

    def restore(self, text: str) -> None:
        """Apply a restore text; a table's changes land only at its COMMIT (like the kernel)."""
        table: str | None = None
        work: dict[str, list[str]] = {}
        for raw in text.splitlines():
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            if line.startswith("*"):
                table = line[1:]
                work = {c: list(r) for c, r in self.tables.setdefault(table, {}).items()}
            elif line == "COMMIT":
                if table is None:
                    raise TraceError("COMMIT outside a table")
                self.tables[table] = work
                table = None
            elif table is None:
                raise TraceError(f"rule outside a table: {line}")
            elif line.startswith(":"):
                work[line[1:].split()[0]] = []  # declaring a chain flushes it
            elif line.startswith("-A "):
                chain = line.split()[1]
                if chain not in work:
                    raise TraceError(f"append to undeclared chain {chain}")
                work[chain].append(line)
            elif line.startswith("-I "):
                words = line.split()
                chain, pos = words[1], int(words[2])
                if chain not in work:
                    raise TraceError(f"insert into missing chain {chain}")
                work[chain].insert(pos - 1, f"-A {chain} " + " ".join(words[3:]))
            elif line.startswith("-X "):
                chain = line.split()[1]
                for c, rules in work.items():
                    if c != chain and any(r.split("-j ")[-1].split()[0] == chain for r in rules if "-j " in r):
                        raise TraceError(f"cannot delete {chain}: referenced from {c}")
                if work.pop(chain, None) is None:
                    raise TraceError(f"delete of missing chain {chain}")
            elif line.startswith("-F "):
                work[line.split()[1]] = []
            else:
                raise TraceError(f"unknown restore line {line}")
        if table is not None:
            raise TraceError(f"table {table} without COMMIT")

    def ensure_jump(self, table: str, chain: str, rule: Iterable[str]) -> None:
        line = f"-A {chain} " + " ".join(shlex.quote(a) if " " in a else a for a in rule)
        rules = self.tables[table][chain]
        if line not in rules:
            rules.insert(0, line)

    def user_chains(self) -> dict[str, set[str]]:
        builtin = {"PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"}
        return {t: {c for c in chains if c not in builtin} for t, chains in self.tables.items()}

    def program(self) -> _Program:
        prog = _Program()
        for table, chains in self.tables.items():
            for chain, rules in chains.items():
                prog.chains[f"{table}:{chain}"] = [_parse_ipt_rule(table, r) for r in rules]
        prog.hooks = {h: [f"{t}:{c}" for t, c in pairs] for h, pairs in _IPT_HOOKS.items()}

        def remembered_by(name: str) -> str | None:
            for r in prog.chains.get(f"nat:{name}", []):
                if r.action[0] == "dnat":
                    return r.action[1]
            return None

        prog.remembered_by = remembered_by
        _bind_recent(prog)
        return prog

    def trace(self, packet: Packet, ctx: Context) -> TraceResult:
        return self.program().trace(packet, ctx)

    def undefined_targets(self) -> list[str]:
        return self.program().undefined_targets()

    def rule_count(self) -> int:
        return sum(len(r) for chains in self.tables.values() for r in chains.values())


def _remembered_match(ep: str | None) -> Match:
    def m(p: _Pkt, c: Context) -> float:
        return 1.0 if ep and ep in c.remembered else 0.0
    return m


def _member_match(members: set[str], attr: str) -> Match:
    def m(p: _Pkt, c: Context) -> float:
        if attr == "src.dst":
            return 1.0 if f"{p.src} . {p.dst}" in members else 0.0
        if attr == "dst.proto.dport":
            return 1.0 if f"{p.dst} . {p.proto} . {p.dport}" in members else 0.0
        return 1.0 if getattr(p, attr) in members else 0.0
    return m


def _bind_recent(prog: _Program) -> None:
    """Recent/affinity matches need the program to find the endpoint a list belongs to."""
    for rules in prog.chains.values():
        for r in rules:
            for i, m in enumerate(r.matches):
                name = getattr(m, "recent_name", None)
                if name is not None:
                    ep = prog.remembered_by(name)
                    r.matches[i] = _remembered_match(ep)


def _pred(test: Callable[[_Pkt, Context], bool]) -> Match:
    return lambda p, c: 1.0 if test(p, c) else 0.0


def _proto_match(proto: str) -> Match:
    return _pred(lambda p, c: p.proto == proto)


def _port_match(port: int) -> Match:
    return _pred(lambda p, c: p.dport == port)


def _proto_port_match(proto: str, port: int) -> Match:
    return _pred(lambda p, c: p.proto == proto and p.dport == port)


def _local_match(attr: str, negate: bool) -> Match:
    return _pred(lambda p, c: (getattr(p, attr) in c.local_ips) != negate)


def _probability(prob: float) -> Match:
    return lambda p, c: prob


def _mark_match(mask: int, value: int, negate: bool) -> Match:
    return _pred(lambda p, c: ((p.mark & mask) == value) != negate)


def _cidrs_match(attr: str, cidrs: list[str], negate: bool) -> Match:
    return _pred(lambda p, c: any(_in(getattr(p, attr), x) for x in cidrs) != negate)


def _cidr_match(attr: str, cidr: str, negate: bool) -> Match:
    def m(p: _Pkt, c: Context) -> float:
        return 1.0 if _in(getattr(p, attr), cidr) != negate else 0.0
    return m


def _parse_ipt_rule(table: str, line: str) -> _Rule:
    toks = shlex.split(line)
    if toks[0] != "-A":
        raise TraceError(f"not a rule: {line}")
    rule = _Rule(text=line)
    i = 2
    negate = False
    while i < len(toks):
        t = toks[i]
        nxt = toks[i + 1] if i + 1 < len(toks) else ""
        if t == "!":
            negate = True
            i += 1
            continue
        if t in ("-s", "-d"):
            rule.matches.append(_cidr_match("src" if t == "-s" else "dst", nxt, negate))
            i += 2
        elif t == "-p":
            proto = nxt.lower()
            rule.matches.append(_proto_match(proto))
            i += 2
        elif t == "-m":
            i += 2  # module name; its options follow and are handled below
            continue
        elif t == "--dport":
            port = int(nxt)
            rule.matches.append(_port_match(port))
            i += 2
        elif t == "--comment":
            i += 2
        elif t in ("--dst-type", "--src-type"):
            if nxt != "LOCAL":
                raise TraceError(f"unsupported addrtype {nxt}")
            attr = "dst" if t == "--dst-type" else "src"
            neg = negate
            rule.matches.append(_local_match(attr, neg))
            i += 2
        elif t == "--mode":
            i += 2
        elif t == "--probability":
            prob = float(nxt)
            rule.matches.append(_probability(prob))
            i += 2
        elif t == "--name":
            recent_name = nxt
            i += 2
            # Collect the recent options up to the next non-recent option.
            opts = []
            while i < len(toks) and toks[i] in ("--mask", "--rsource", "--rcheck", "--seconds", "--reap", "--set"):
                opts.append(toks[i])
                i += 2 if toks[i] in ("--mask", "--seconds") else 1
            if "--rcheck" in opts:
                def recent(p: _Pkt, c: Context) -> float:
                    return 0.0  # replaced in _bind_recent
                recent.recent_name = recent_name  # type: ignore[attr-defined]
                rule.matches.append(recent)
        elif t == "--mark":
            value, _, mask = nxt.partition("/")
            v, msk = int(value, 0), int(mask or "0xffffffff", 0)
            neg = negate
            rule.matches.append(_mark_match(msk, v, neg))
            i += 2
        elif t == "--ctstate":
            states = set(nxt.split(","))
            rule.matches.append(_probability(1.0 if "NEW" in states else 0.0))
            i += 2
        elif t == "-j":
            target = nxt
            rest = toks[i + 2:]
            if target == "DNAT":
                rule.action = ("dnat", rest[rest.index("--to-destination") + 1])
            elif target == "MARK":
                if "--or-mark" in rest:
                    rule.action = ("mark-or", rest[rest.index("--or-mark") + 1])
                elif "--xor-mark" in rest:
                    rule.action = ("mark-xor", rest[rest.index("--xor-mark") + 1])
                else:
                    raise TraceError(f"unsupported MARK rule {line}")
            elif target == "MASQUERADE":
                rule.action = ("masquerade",)
            elif target in ("ACCEPT", "DROP", "REJECT", "RETURN"):
                rule.action = (target.lower(),)
            else:
                rule.action = ("jump", f"{table}:{target}")
            break
        else:
            raise TraceError(f"unsupported option {t} in {line}")
        negate = False
    if not rule.action:
        rule.action = ("continue",)
    return rule


# --------------------------------------------------------------------------- nftables


class NftModel:
    """One nft table as a sequence of `nft -f` transactions leaves it."""

    def __init__(self) -> None:
        self.chains: dict[str, list[str]] = {}
        self.base: dict[str, tuple[str, int]] = {}  # chain -> (hook, priority)
        self.maps: dict[str, dict[str, str]] = {}
        self.sets: dict[str, set[str]] = {}
        self.exists = False

    def apply(self, text: str) -> None:
        """All-or-nothing, like an nft transaction."""
        saved = (
            {k: list(v) for k, v in self.chains.items()}, dict(self.base),
            {k: dict(v) for k, v in self.maps.items()}, {k: set(v) for k, v in self.sets.items()}, self.exists,
        )
        try:
            for line in text.splitlines():
                if line.strip():
                    self._command(line.strip())
        except Exception:
            self.chains, self.base, self.maps, self.sets, self.exists = saved
            raise

    def _command(self, line: str) -> None:
        words = line.split()
        verb, kind = words[0], words[1]
        if kind == "table":
            if verb == "add":
                self.exists = True
            elif verb == "delete":
                self.__init__()  # type: ignore[misc]
            return
        if not self.exists:
            raise TraceError(f"no table for: {line}")
        name = words[4]
        rest = " ".join(words[5:])
        if kind == "chain":
            if verb == "add":
                self.chains.setdefault(name, [])
                if "hook" in rest:
                    hw = rest.strip("{} ;").replace(";", " ").split()
                    self.base[name] = (hw[hw.index("hook") + 1], int(hw[hw.index("priority") + 1]))
            elif verb == "flush":
                self._need(self.chains, name)[:] = []
            elif verb == "delete":
                if self._need(self.chains, name):
                    raise TraceError(f"delete of non-empty chain {name}")
                for c, rules in self.chains.items():
                    if c != name and any(f" {name}" in f" {r} " and _refers(r, name) for r in rules):
                        raise TraceError(f"cannot delete chain {name}: referenced from {c}")
                for m, elems in self.maps.items():
                    if any(v.split()[-1] == name for v in elems.values()):
                        raise TraceError(f"cannot delete chain {name}: referenced from map {m}")
                del self.chains[name]
                self.base.pop(name, None)
        elif kind == "rule":
            if verb != "add":
                raise TraceError(f"unsupported: {line}")
            self._need(self.chains, name).append(rest)
        elif kind == "map":
            if verb == "add":
                self.maps.setdefault(name, {})
            elif verb == "flush":
                self._need(self.maps, name).clear()
            elif verb == "delete":
                self._need(self.maps, name)
                del self.maps[name]
        elif kind == "set":
            if verb == "add":
                self.sets.setdefault(name, set())
            elif verb == "flush":
                self._need(self.sets, name).clear()
            elif verb == "delete":
                self._need(self.sets, name)
                del self.sets[name]
        elif kind == "element":
            body = rest.strip()
            if not (body.startswith("{") and body.endswith("}")):
                raise TraceError(f"bad element list: {line}")
            items = [x.strip() for x in body[1:-1].split(",") if x.strip()]
            if name in self.maps:
                target = self.maps[name]
                for item in items:
                    key, _, verdict = item.partition(" : ")
                    key = " ".join(key.split())
                    if verb == "add":
                        if key in target and target[key] != verdict.strip():
                            raise TraceError(f"element {key} exists in {name} with another value")
                        target[key] = verdict.strip()
                    elif verb == "delete":
                        if key not in target:
                            raise TraceError(f"delete of missing element {key} in {name}")
                        del target[key]
            elif name in self.sets:
                for item in items:
                    if verb == "add":
                        self.sets[name].add(item)
                    else:
                        self.sets[name].discard(item)
            else:
                raise TraceError(f"elements for missing map/set {name}")
        else:
            raise TraceError(f"unsupported: {line}")

    @staticmethod
    def _need(objs: dict[str, Any], name: str) -> Any:
        if name not in objs:
            raise TraceError(f"no such object {name}")
        return objs[name]

    def program(self) -> _Program:
        prog = _Program()
        for name, rules in self.chains.items():
            prog.chains[name] = [_parse_nft_rule(r) for r in rules]
        for name, elems in self.maps.items():
            prog.maps[name] = {tuple(p.strip() for p in k.split(" . ")): tuple(v.split()) for k, v in elems.items()}
        prog.sets = {k: set(v) for k, v in self.sets.items()}
        hooks: dict[str, list[tuple[int, str]]] = {}
        for chain, (hook, prio) in self.base.items():
            hooks.setdefault(hook, []).append((prio, chain))
        prog.hooks = {h: [c for _, c in sorted(v)] for h, v in hooks.items()}

        def remembered_by(set_name: str) -> str | None:
            # The endpoint whose DNAT rule also writes the client into the set.
            for rules in prog.chains.values():
                for r in rules:
                    if f" update @{set_name} " in f" {r.text} " and r.action[0] == "dnat":
                        return r.action[1]
            return None

        prog.remembered_by = remembered_by
        _bind_sets(prog)
        return prog

    def trace(self, packet: Packet, ctx: Context) -> TraceResult:
        return self.program().trace(packet, ctx)

    def undefined_targets(self) -> list[str]:
        return self.program().undefined_targets()


def _refers(rule: str, chain: str) -> bool:
    words = rule.split()
    return any(words[i] in ("jump", "goto") and words[i + 1] == chain for i in range(len(words) - 1))


def _bind_sets(prog: _Program) -> None:
    for chain, rules in prog.chains.items():
        for r in rules:
            for i, m in enumerate(r.matches):
                set_name = getattr(m, "set_name", None)
                if set_name is None:
                    continue
                if set_name not in prog.sets:
                    prog.missing_sets.add((chain, set_name))
                if set_name.startswith("aff-"):
                    ep = prog.remembered_by(set_name)
                    r.matches[i] = _remembered_match(ep)
                else:
                    members = prog.sets.get(set_name, set())
                    attr = m.attr  # type: ignore[attr-defined]
                    r.matches[i] = _member_match(members, attr)


def _set_match(attr: str, name: str) -> Match:
    def m(p: _Pkt, c: Context) -> float:
        raise TraceError(f"set match @{name} was not bound")  # replaced in _bind_sets
    m.set_name = name  # type: ignore[attr-defined]
    m.attr = attr  # type: ignore[attr-defined]
    return m


def _parse_nft_rule(text: str) -> _Rule:
    toks = text.replace("{", " { ").replace("}", " } ").replace(",", " , ").split()
    rule = _Rule(text=text)
    i = 0
    while i < len(toks):
        t = toks[i]
        rest = toks[i:]
        if rest[:3] == ["ct", "state", "new"]:
            i += 3
        elif rest[:7] == ["ip", "daddr", ".", "meta", "l4proto", ".", "th"] and rest[7:9] == ["dport", "vmap"]:
            rule.action = ("vmap", "daddr.proto.dport", rest[9].lstrip("@"))
            i += 10
        elif rest[:8] == ["ip", "daddr", ".", "meta", "l4proto", ".", "th", "dport"] and rest[8:9] \
                and rest[8].startswith("@"):
            rule.matches.append(_set_match("dst.proto.dport", rest[8][1:]))
            i += 9
        elif rest[:5] == ["meta", "l4proto", ".", "th", "dport"] and rest[5] == "vmap":
            rule.action = ("vmap", "proto.dport", rest[6].lstrip("@"))
            i += 7
        elif rest[:5] == ["ip", "saddr", ".", "ip", "daddr"] and rest[5:6] and rest[5].startswith("@"):
            rule.matches.append(_set_match("src.dst", rest[5][1:]))
            i += 6
        elif rest[:3] == ["ct", "status", "dnat"]:
            rule.matches.append(_pred(lambda p, c: p.endpoint is not None))
            i += 3
        elif t == "ip" and toks[i + 1] in ("saddr", "daddr"):
            attr = "src" if toks[i + 1] == "saddr" else "dst"
            j = i + 2
            neg = toks[j] == "!="
            if neg:
                j += 1
            if toks[j] == "{":
                end = toks.index("}", j)
                cidrs = [x for x in toks[j + 1:end] if x != ","]
                rule.matches.append(_cidrs_match(attr, cidrs, neg))
                i = end + 1
            elif toks[j].startswith("@"):
                if neg:
                    raise TraceError(f"unsupported negated set match in {text}")
                rule.matches.append(_set_match(attr, toks[j][1:]))
                i = j + 1
            else:
                rule.matches.append(_cidr_match(attr, toks[j], neg))
                i = j + 1
        elif t in ("tcp", "udp", "sctp") and toks[i + 1] == "dport":
            port = int(toks[i + 2])
            rule.matches.append(_proto_port_match(t, port))
            i += 3
        elif rest[:3] in (["fib", "saddr", "type"], ["fib", "daddr", "type"]) and rest[3] == "local":
            attr = "src" if rest[1] == "saddr" else "dst"
            rule.matches.append(_local_match(attr, False))
            i += 4
        elif t == "numgen" and rest[1:3] == ["random", "mod"] and rest[4:5] == ["0"]:
            # A fresh random number in [0, n) per evaluation: equal to 0 with probability 1/n.
            rule.matches.append(_probability(1.0 / int(rest[3])))
            i += 5
        elif t == "update" and rest[2:6] == ["{", "ip", "saddr", "}"]:
            i += 6  # refreshes an affinity set: modelled by Context.remembered
        elif rest[:2] == ["meta", "l4proto"] and rest[2] in ("tcp", "udp", "sctp"):
            rule.matches.append(_proto_match(rest[2]))
            i += 3
        elif rest[:6] == ["dnat", "ip", "to", "numgen", "random", "mod"] and rest[7:8] == ["map"]:
            rule.action = ("dnat-map", rest[6], rest[8].lstrip("@"), "")
            i += 9
        elif (rest[:6] == ["dnat", "ip", "to", "ip", "daddr", "."] and rest[7:12] == ["dport", ".", "numgen", "random",
                                                                                     "mod"] and rest[13:14] == ["map"]):
            # `ip daddr . <proto> dport . numgen ...`: the destination picks the service's elements.
            rule.action = ("dnat-map", rest[12], rest[14].lstrip("@"), "daddr.dport")
            i += 15
        elif rest[:2] == ["dnat", "to"]:
            rule.action = ("dnat", rest[2])
            i += 3
        elif rest[:3] == ["meta", "mark", "&"] and rest[4] == "==":
            mask, value = int(rest[3], 0), int(rest[5], 0)
            rule.matches.append(_mark_match(mask, value, False))
            i += 6
        elif rest[:5] == ["meta", "mark", "set", "meta", "mark"]:
            rule.action = ("mark-or" if rest[5] == "|" else "mark-xor", rest[6])
            i += 7
        elif t == "masquerade":
            rule.action = ("masquerade",)
            i += 2 if rest[1:2] == ["fully-random"] else 1
        elif t in ("jump", "goto"):
            rule.action = (t, toks[i + 1])
            i += 2
        elif t in ("return", "drop", "accept", "reject"):
            rule.action = (t,)
            i += 1
        else:
            raise TraceError(f"unsupported nft rule: {text}")
    if not rule.action:
        rule.action = ("continue",)
    return rule


def load_iptables(texts: Iterable[str], jumps: Iterable[object] = ()) -> IptablesModel:
    """A model after applying each restore text in turn, plus the built-in-chain jumps."""
    model = IptablesModel()
    for text in texts:
        model.restore(text)
    for j in jumps:
        model.ensure_jump(j.table, j.chain, j.rule)  # type: ignore[attr-defined]
    return model


def load_nft(texts: Iterable[str]) -> NftModel:
    model = NftModel()
    for text in texts:
        model.apply(text)
    return model


def context(local_ips: Collection[str] = (), remembered: Collection[str] = ()) -> Context:
    return Context(frozenset(local_ips), frozenset(remembered))
