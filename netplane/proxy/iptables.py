"""Pure iptables renderer: ProxyState -> an `iptables-restore --noflush` text.

The chain layout is kube-proxy's (pkg/proxy/iptables), with the prefix `NP-`
instead of `KUBE-` so that both can coexist on one host:

nat:
  PREROUTING, OUTPUT -> NP-SERVICES        dispatch on destination address/port
  NP-SERVICES: ClusterIP -> NP-SVC-<h> (or NP-SVL-<h> for internalTrafficPolicy Local),
               externalIPs -> NP-EXT-<h>, LB IPs -> NP-FW-<h> / NP-EXT-<h>,
               last: local destinations -> NP-NODEPORTS
  NP-NODEPORTS: node port -> NP-EXT-<h>
  NP-EXT-<h>:   masquerade (policy Cluster) or source-preserving Local handling
  NP-FW-<h>:    loadBalancerSourceRanges; what falls through is dropped in filter
  NP-SVC-<h>:   masquerade off-cluster sources, ClientIP affinity (recent), spread
                with `statistic --mode random --probability 1/(n-i)`
  NP-SVL-<h>:   the same over local endpoints only
  NP-SEP-<h>:   hairpin masquerade, affinity `--set`, DNAT to the endpoint
  NP-MARK-MASQ: set mark bit 14 (0x4000); POSTROUTING -> NP-POSTROUTING masquerades it
filter:
  NP-SERVICES (OUTPUT, FORWARD, new conns): REJECT a ClusterIP without endpoints,
               DROP when internalTrafficPolicy Local has no local endpoint
  NP-EXTERNAL-SERVICES (INPUT, FORWARD, new conns): the same for external addresses
  NP-PROXY-FIREWALL (INPUT, FORWARD, OUTPUT, new conns): DROP LB traffic that the
               source ranges did not let through (still addressed to the LB IP)
  NP-NODEPORTS (INPUT): ACCEPT health-check node ports
  NP-FORWARD (FORWARD): ACCEPT marked and established traffic

Chain names are at most 28 characters: a 7-character prefix plus the first 16
characters of base32(sha256(port name + protocol [+ endpoint])), as kube-proxy.

Partial sync: each service port renders into a `ServiceFragment` (its own chains
plus its lines in the shared dispatch chains). A partial plan re-renders only the
changed services, writes only chains whose content differs from what was applied
(declaring a chain in `--noflush` mode flushes it), rewrites a dispatch chain only
when its assembled content changed, and deletes chains that disappeared. It looks
only at the changed services (port indexes, reference counts kept by difference):
under a millisecond of Python at 10k services.

What remains at scale is the kernel's (tests/bench/bench_proxy.py, 10k services x 10
endpoints): iptables-legacy replaces the whole nat table on every restore (seconds),
and iptables-nft re-validates every rule of the table on each commit that adds a jump
or a DNAT (~0.3-0.4 s). Neither depends on how little the restore text says; the
nftables mode is the one that scales (see netplane/proxy/nftables.py).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field

from netplane.proxy.model import Endpoint, NamespacedName, ServicePort, ServicePortName
from netplane.proxy.selection import Selection
from netplane.proxy.state import ProxyConfig, ProxyState

PREFIX = "NP-"
SERVICES = "NP-SERVICES"
EXTERNAL_SERVICES = "NP-EXTERNAL-SERVICES"
NODEPORTS = "NP-NODEPORTS"
POSTROUTING = "NP-POSTROUTING"
MARK_MASQ = "NP-MARK-MASQ"
FORWARD = "NP-FORWARD"
FIREWALL = "NP-PROXY-FIREWALL"
CANARY = "NP-PROXY-CANARY"

# (table, chain) of the dispatch chains every sync owns, in the order they are written.
TOP_CHAINS: tuple[tuple[str, str], ...] = (
    ("filter", SERVICES),
    ("filter", EXTERNAL_SERVICES),
    ("filter", FORWARD),
    ("filter", FIREWALL),
    ("filter", NODEPORTS),
    ("filter", CANARY),
    ("nat", SERVICES),
    ("nat", NODEPORTS),
    ("nat", POSTROUTING),
    ("nat", MARK_MASQ),
    ("nat", CANARY),
)
TABLES = ("filter", "nat")


@dataclass(frozen=True, slots=True)
class Jump:
    """A rule in a built-in chain that hands traffic to one of ours; ensured outside the restore text."""

    table: str
    chain: str
    rule: tuple[str, ...]  # arguments after `-A chain`

    def line(self) -> str:
        return f"-A {self.chain} " + " ".join(_quote(a) for a in self.rule)

    def insert_line(self) -> str:
        return f"-I {self.chain} 1 " + " ".join(_quote(a) for a in self.rule)

    def found_in(self, save_lines: Iterable[str]) -> bool:
        """Whether an iptables-save listing holds this jump (matched on chain, comment and target)."""
        comment = self.rule[self.rule.index("--comment") + 1]
        target = self.rule[-1]
        prefix = f"-A {self.chain} "
        return any(line.startswith(prefix) and f"-j {target}" in line and comment in line for line in save_lines)


def parse_save(text: str) -> tuple[set[str], list[str]]:
    """Chain names and rule lines of one table's iptables-save output."""
    chains = {line[1:].split()[0] for line in text.splitlines() if line.startswith(":")}
    rules = [line for line in text.splitlines() if line.startswith("-A ")]
    return chains, rules


def jumps_present(saved: Mapping[str, str]) -> set[Jump]:
    """The built-in-chain jumps already in the kernel, from each table's iptables-save text."""
    lines = {table: parse_save(text)[1] for table, text in saved.items()}
    return {j for j in JUMPS if j.found_in(lines.get(j.table, []))}


def _quote(arg: str) -> str:
    return f'"{arg}"' if (" " in arg or not arg) else arg


_NEW = ("-m", "conntrack", "--ctstate", "NEW")
JUMPS: tuple[Jump, ...] = (
    Jump("filter", "INPUT", (*_NEW, "-m", "comment", "--comment", "netplane firewall", "-j", FIREWALL)),
    Jump("filter", "INPUT", (*_NEW, "-m", "comment", "--comment", "netplane external services",
                             "-j", EXTERNAL_SERVICES)),
    Jump("filter", "INPUT", ("-m", "comment", "--comment", "netplane health check nodeports",
                             "-j", NODEPORTS)),
    Jump("filter", "FORWARD", (*_NEW, "-m", "comment", "--comment", "netplane firewall", "-j", FIREWALL)),
    Jump("filter", "FORWARD", ("-m", "comment", "--comment", "netplane forwarding rules", "-j", FORWARD)),
    Jump("filter", "FORWARD", (*_NEW, "-m", "comment", "--comment", "netplane service portals",
                               "-j", SERVICES)),
    Jump("filter", "FORWARD", (*_NEW, "-m", "comment", "--comment", "netplane external services",
                               "-j", EXTERNAL_SERVICES)),
    Jump("filter", "OUTPUT", (*_NEW, "-m", "comment", "--comment", "netplane firewall", "-j", FIREWALL)),
    Jump("filter", "OUTPUT", (*_NEW, "-m", "comment", "--comment", "netplane service portals",
                              "-j", SERVICES)),
    Jump("nat", "PREROUTING", ("-m", "comment", "--comment", "netplane service portals", "-j", SERVICES)),
    Jump("nat", "OUTPUT", ("-m", "comment", "--comment", "netplane service portals", "-j", SERVICES)),
    Jump("nat", "POSTROUTING", ("-m", "comment", "--comment", "netplane postrouting rules",
                                "-j", POSTROUTING)),
)


def svc_chain(spn: ServicePortName) -> str:
    return "NP-SVC-" + spn.hash16()


def svl_chain(spn: ServicePortName) -> str:
    return "NP-SVL-" + spn.hash16()


def ext_chain(spn: ServicePortName) -> str:
    return "NP-EXT-" + spn.hash16()


def fw_chain(spn: ServicePortName) -> str:
    return "NP-FW-" + spn.hash16()


def sep_chain(spn: ServicePortName, ep: Endpoint) -> str:
    return "NP-SEP-" + ep.hash16(spn)


@dataclass(frozen=True, slots=True)
class ServiceFragment:
    """Everything one service port contributes to the ruleset."""

    nat_chains: Mapping[str, tuple[str, ...]]  # the service's own chains -> their rule lines
    nat_services: tuple[str, ...] = ()
    nat_nodeports: tuple[str, ...] = ()
    filter_services: tuple[str, ...] = ()
    filter_external: tuple[str, ...] = ()
    filter_firewall: tuple[str, ...] = ()
    filter_nodeports: tuple[str, ...] = ()


def _proto(svc: ServicePort) -> str:
    p = svc.protocol.lower()
    return f"-p {p} -m {p}"


def _comment(text: str) -> str:
    return f'-m comment --comment "{text}"'


def _endpoint_rules(spn: ServicePortName, svc: ServicePort, chain: str, eps: tuple[Endpoint, ...],
                    out: list[str]) -> None:
    """Affinity and spreading rules of a SVC/SVL chain."""
    if svc.affinity_timeout:
        for ep in eps:
            sep = sep_chain(spn, ep)
            out.append(f"-A {chain} -m recent --name {sep} --mask 255.255.255.255 --rsource --rcheck "
                       f"--seconds {svc.affinity_timeout} --reap -j {sep}")
    n = len(eps)
    for i, ep in enumerate(eps):
        sep = sep_chain(spn, ep)
        if i < n - 1:
            out.append(f"-A {chain} -m statistic --mode random --probability {1.0 / (n - i):0.10f} -j {sep}")
        else:
            out.append(f"-A {chain} -j {sep}")


def render_service(svc: ServicePort, sel: Selection, config: ProxyConfig) -> ServiceFragment:
    """The fragment of one service port; pure."""
    spn = svc.name
    name = str(spn)

    def cm(text: str) -> str:
        return f"{_comment(text)} "

    proto = _proto(svc)
    dport = f"{proto} --dport {svc.port}"
    chains: dict[str, tuple[str, ...]] = {}
    nat_services: list[str] = []
    nat_nodeports: list[str] = []
    f_services: list[str] = []
    f_external: list[str] = []
    f_firewall: list[str] = []
    f_nodeports: list[str] = []

    internal_eps = sel.internal(svc)
    external_eps = sel.external(svc)
    cluster_chain = svc_chain(spn)
    local_chain = svl_chain(spn)
    internal_chain = local_chain if svc.internal_policy_local else cluster_chain
    external_policy_chain = local_chain if svc.external_policy_local else cluster_chain
    uses_cluster, uses_local = sel.policy_chains(svc)
    uses_ext = svc.has_external_addresses
    uses_fw = bool(svc.load_balancer_ips and svc.load_balancer_source_ranges)
    if not sel.has_any:
        # No endpoint anywhere: every address of the service refuses at once.
        why = _comment(name + " has no endpoints")
        f_services.append(f"-A {SERVICES} {why} -d {svc.cluster_ip}/32 {dport} -j REJECT")
        for ip in (*svc.external_ips, *svc.load_balancer_ips):
            f_external.append(f"-A {EXTERNAL_SERVICES} {why} -d {ip}/32 {dport} -j REJECT")
        if svc.node_port:
            f_external.append(f"-A {EXTERNAL_SERVICES} {why} -m addrtype --dst-type LOCAL "
                              f"{proto} --dport {svc.node_port} -j REJECT")
    else:
        no_local = _comment(name + " has no local endpoints")
        if internal_eps:
            nat_services.append(f'-A {SERVICES} {cm(name + " cluster IP")}-d {svc.cluster_ip}/32 '
                                f"{dport} -j {internal_chain}")
        else:
            f_services.append(f"-A {SERVICES} {no_local} -d {svc.cluster_ip}/32 {dport} -j DROP")
        if uses_ext and external_eps:
            for ip in svc.external_ips:
                nat_services.append(f'-A {SERVICES} {cm(name + " external IP")}-d {ip}/32 '
                                    f"{dport} -j {ext_chain(spn)}")
            for ip in svc.load_balancer_ips:
                target = fw_chain(spn) if uses_fw else ext_chain(spn)
                nat_services.append(f'-A {SERVICES} {cm(name + " loadbalancer IP")}-d {ip}/32 '
                                    f"{dport} -j {target}")
            if svc.node_port:
                nat_nodeports.append(f"-A {NODEPORTS} {cm(name)}{proto} --dport {svc.node_port} "
                                     f"-j {ext_chain(spn)}")
        elif uses_ext:
            # Endpoints exist but none here: drop, so that the client retries elsewhere.
            for ip in (*svc.external_ips, *svc.load_balancer_ips):
                f_external.append(f"-A {EXTERNAL_SERVICES} {no_local} -d {ip}/32 {dport} -j DROP")
            if svc.node_port:
                f_external.append(f"-A {EXTERNAL_SERVICES} {no_local} -m addrtype --dst-type LOCAL "
                                  f"{proto} --dport {svc.node_port} -j DROP")

        masq_src = "" if config.masquerade_all else f"! -s {config.cluster_cidr} "
        masq_rule = (f"-A {internal_chain} {cm(name + ' cluster IP')}{masq_src}-d {svc.cluster_ip}/32 "
                     f"{dport} -j {MARK_MASQ}")
        if uses_cluster:
            rules: list[str] = [masq_rule] if internal_chain == cluster_chain else []
            _endpoint_rules(spn, svc, cluster_chain, sel.cluster, rules)
            chains[cluster_chain] = tuple(rules)
        if uses_local:
            rules = [masq_rule] if internal_chain == local_chain else []
            _endpoint_rules(spn, svc, local_chain, sel.local, rules)
            chains[local_chain] = tuple(rules)
        if uses_ext:
            ext = ext_chain(spn)
            rules = []
            if not svc.external_policy_local:
                why = cm("masquerade traffic for " + name + " external destinations")
                rules.append(f"-A {ext} {why}-j {MARK_MASQ}")
            elif uses_cluster:
                # Pods and the node itself are not "outside": they may reach any endpoint.
                rules.append(f'-A {ext} {cm("pod traffic for " + name + " external destinations")}'
                             f"-s {config.cluster_cidr} -j {cluster_chain}")
                rules.append(f'-A {ext} {cm("masquerade LOCAL traffic for " + name)}'
                             f"-m addrtype --src-type LOCAL -j {MARK_MASQ}")
                rules.append(f'-A {ext} {cm("route LOCAL traffic for " + name)}'
                             f"-m addrtype --src-type LOCAL -j {cluster_chain}")
            if external_eps:
                rules.append(f"-A {ext} -j {external_policy_chain}")
            chains[ext] = tuple(rules)
        if uses_fw:
            fw = fw_chain(spn)
            rules = [f'-A {fw} {cm(name + " loadbalancer IP")}-s {cidr} -j {ext_chain(spn)}'
                     for cidr in svc.load_balancer_source_ranges]
            # The node itself talking to its LB IP is allowed (kube-proxy does the same).
            rules += [f'-A {fw} {cm(name + " loadbalancer IP")}-s {ip}/32 -j {ext_chain(spn)}'
                      for ip in svc.load_balancer_ips]
            chains[fw] = tuple(rules)
            if external_eps:
                for ip in svc.load_balancer_ips:
                    f_firewall.append(f'-A {FIREWALL} {_comment(name + " traffic not accepted by " + fw)} '
                                      f"-d {ip}/32 {dport} -j DROP")
        used = dict.fromkeys(sel.cluster if uses_cluster else ())
        used.update(dict.fromkeys(sel.local if uses_local else ()))
        for ep in used:
            sep = sep_chain(spn, ep)
            affinity = (f"-m recent --name {sep} --mask 255.255.255.255 --rsource --set "
                        if svc.affinity_timeout else "")
            chains[sep] = (
                f"-A {sep} {cm(name)}-s {ep.ip}/32 -j {MARK_MASQ}",
                f"-A {sep} {cm(name)}{proto} {affinity}-j DNAT --to-destination {ep.address}",
            )
    if svc.health_check_node_port:
        # Per service, not per port: every port of the service renders the same line (deduplicated).
        f_nodeports.append(f'-A {NODEPORTS} {_comment(str(spn.service) + " health check node port")} '
                           f"-p tcp -m tcp --dport {svc.health_check_node_port} -j ACCEPT")
    return ServiceFragment(
        nat_chains=chains,
        nat_services=tuple(nat_services),
        nat_nodeports=tuple(nat_nodeports),
        filter_services=tuple(f_services),
        filter_external=tuple(f_external),
        filter_firewall=tuple(f_firewall),
        filter_nodeports=tuple(f_nodeports),
    )


def _static_rules(config: ProxyConfig) -> dict[tuple[str, str], tuple[str, ...]]:
    mark = config.masq_mark
    return {
        ("filter", FORWARD): (
            f'-A {FORWARD} {_comment("netplane forwarding rules")} -m mark --mark {mark}/{mark} -j ACCEPT',
            f'-A {FORWARD} {_comment("netplane forwarding conntrack rule")} '
            "-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
        ),
        ("nat", POSTROUTING): (
            f"-A {POSTROUTING} -m mark ! --mark {mark}/{mark} -j RETURN",
            f"-A {POSTROUTING} -j MARK --xor-mark {mark}",
            f'-A {POSTROUTING} {_comment("netplane service traffic requiring SNAT")} '
            "-j MASQUERADE --random-fully",
        ),
        ("nat", MARK_MASQ): (f"-A {MARK_MASQ} -j MARK --or-mark {mark}",),
        ("filter", CANARY): (),
        ("nat", CANARY): (),
    }


def _nodeport_dispatch(config: ProxyConfig) -> tuple[str, ...]:
    ips = config.nodeport_ips()
    comment = _comment("netplane service nodeports; NOTE: this must be the last rule in this chain")
    if ips is None:
        return (f"-A {SERVICES} {comment} ! -d 127.0.0.0/8 -m addrtype --dst-type LOCAL -j {NODEPORTS}",)
    return tuple(f"-A {SERVICES} {comment} -d {ip}/32 -j {NODEPORTS}" for ip in ips)


def assemble_top(fragments: Iterable[ServiceFragment],
                 config: ProxyConfig) -> dict[tuple[str, str], tuple[str, ...]]:
    """The content of every shared chain, from the fragments in a stable order."""
    frags = list(fragments)
    top: dict[tuple[str, str], tuple[str, ...]] = {
        ("filter", SERVICES): tuple(r for f in frags for r in f.filter_services),
        ("filter", EXTERNAL_SERVICES): tuple(r for f in frags for r in f.filter_external),
        ("filter", FIREWALL): tuple(r for f in frags for r in f.filter_firewall),
        ("filter", NODEPORTS): tuple(dict.fromkeys(r for f in frags for r in f.filter_nodeports)),
        ("nat", SERVICES): tuple(r for f in frags for r in f.nat_services) + _nodeport_dispatch(config),
        ("nat", NODEPORTS): tuple(r for f in frags for r in f.nat_nodeports),
    }
    top.update(_static_rules(config))
    return {key: top[key] for key in TOP_CHAINS}


@dataclass(slots=True)
class IptablesPlan:
    """One restore text plus what the kernel will hold once it is applied."""

    text: str
    full: bool
    fragments: dict[ServicePortName, ServiceFragment]
    top: dict[tuple[str, str], tuple[str, ...]]
    own_rules: int = 0
    # Port names per service: all of them after a full plan, the changed services' after a partial one.
    ports: dict[NamespacedName, tuple[ServicePortName, ...]] = field(default_factory=dict)
    jumps: tuple[Jump, ...] = JUMPS
    rule_counts: dict[str, int] = field(default_factory=dict)
    chains_written: int = 0
    chains_deleted: int = 0


def _own_rules(frag: ServiceFragment) -> int:
    return sum(len(r) for r in frag.nat_chains.values())


def _rule_counts(own_rules: int, top: Mapping[tuple[str, str], tuple[str, ...]]) -> dict[str, int]:
    counts = {t: sum(len(rules) for (tt, _), rules in top.items() if tt == t) for t in TABLES}
    counts["nat"] += own_rules
    return counts


def _group_ports(names: Iterable[ServicePortName]) -> dict[NamespacedName, tuple[ServicePortName, ...]]:
    out: dict[NamespacedName, list[ServicePortName]] = {}
    for spn in names:
        out.setdefault(spn.service, []).append(spn)
    return {svc: tuple(spns) for svc, spns in out.items()}


def _top_part(frag: ServiceFragment | None) -> tuple[tuple[str, ...], ...]:
    """What a fragment contributes to the shared chains."""
    if frag is None:
        return ()
    return (frag.nat_services, frag.nat_nodeports, frag.filter_services, frag.filter_external,
            frag.filter_firewall, frag.filter_nodeports)


class IptablesRenderer:
    """Renders plans and remembers what was applied, so the next plan can be partial."""

    def __init__(self) -> None:
        self._applied: dict[ServicePortName, ServiceFragment] | None = None
        self._applied_top: dict[tuple[str, str], tuple[str, ...]] = {}
        self._own_rules = 0  # rules in the services' own chains, kept by difference
        self._ports: dict[NamespacedName, tuple[ServicePortName, ...]] = {}  # applied port names per service

    @property
    def can_partial(self) -> bool:
        return self._applied is not None

    def reset(self) -> None:
        """Forget what is applied: the next plan is full (after a failed apply, or rules removed)."""
        self._applied = None
        self._applied_top = {}
        self._ports = {}

    def commit(self, plan: IptablesPlan) -> None:
        self._applied = plan.fragments
        self._applied_top = plan.top
        self._own_rules = plan.own_rules
        if plan.full:
            self._ports = {}
        for svc, spns in plan.ports.items():
            if spns:
                self._ports[svc] = spns
            else:
                self._ports.pop(svc, None)

    def plan(self, state: ProxyState, changed: set[NamespacedName] | None = None,
             existing: Mapping[str, Iterable[str]] | None = None,
             present_jumps: Collection[Jump] | None = None) -> IptablesPlan:
        """A full plan when `changed` is None or nothing is applied yet, else a partial one.

        `existing` maps a table to the chain names the kernel holds now (for a full
        plan: our chains that are no longer wanted get deleted, e.g. after a restart).
        `present_jumps`: the built-in-chain jumps the kernel already has; a full plan
        inserts the missing ones in the same restore (None: the caller manages them).
        Checking them with `iptables -C` instead costs a whole-table read per rule in
        iptables-nft, seconds at 10k services.
        """
        config = state.config
        full = changed is None or self._applied is None
        if full:
            fragments = {spn: render_service(svc, state.selection(spn), config)
                         for spn, svc in sorted(state.services.items())}
            top = assemble_top(fragments.values(), config)
            own_rules = sum(_own_rules(f) for f in fragments.values())
            ports = _group_ports(fragments)
        else:
            assert self._applied is not None and changed is not None
            # Only the changed services are looked at (through the port indexes): at 10k services
            # any pass over all of them costs more than the rest of the plan.
            fragments = dict(self._applied)
            old = {spn: fragments.pop(spn) for svc in changed for spn in self._ports.get(svc, ())}
            new = {spn: render_service(state.services[spn], state.selection(spn), config)
                   for spn in state.port_names(changed)}
            fragments.update(new)
            ports = {svc: tuple(spn for spn in new if spn.service == svc) for svc in changed}
            own_rules = (self._own_rules - sum(_own_rules(f) for f in old.values())
                         + sum(_own_rules(f) for f in new.values()))
            if all(_top_part(old.get(spn)) == _top_part(new.get(spn)) for spn in old.keys() | new.keys()):
                # An endpoint change inside the services' own chains: the shared chains stay as
                # they are, and assembling them from every fragment (O(services)) is skipped.
                top = self._applied_top
            else:
                # Sorted, so the shared chains list services in the order a full sync does.
                fragments = dict(sorted(fragments.items()))
                top = assemble_top(fragments.values(), config)

        sections: dict[str, tuple[list[str], list[str], list[str]]] = {t: ([], [], []) for t in TABLES}
        written = 0
        if full:
            for table, chain in TOP_CHAINS:
                decl, rules, _ = sections[table]
                decl.append(f":{chain} - [0:0]")
                rules.extend(top[(table, chain)])
            for frag in fragments.values():
                for chain, rules_ in frag.nat_chains.items():
                    sections["nat"][0].append(f":{chain} - [0:0]")
                    sections["nat"][1].extend(rules_)
            written = sum(len(s[0]) for s in sections.values())
            if present_jumps is not None:
                # Inserted at position 1 in reverse order: they end up in JUMPS order.
                for jump in reversed(JUMPS):
                    if jump not in present_jumps:
                        sections[jump.table][1].append(jump.insert_line())
            wanted = {t: {c for tt, c in TOP_CHAINS if tt == t} for t in TABLES}
            wanted["nat"].update(c for f in fragments.values() for c in f.nat_chains)
            for table, chains in (existing or {}).items():
                if table not in sections:
                    continue
                for chain in sorted(chains):
                    if chain.startswith(PREFIX) and chain not in wanted[table]:
                        # Declare first (flush), so a chain referenced only by other stale chains can go.
                        sections[table][0].append(f":{chain} - [0:0]")
                        sections[table][2].append(f"-X {chain}")
        else:
            assert self._applied is not None
            old_chains: dict[str, tuple[str, ...]] = {}
            for frag in old.values():
                old_chains.update(frag.nat_chains)
            new_chains: dict[str, tuple[str, ...]] = {}
            for frag in new.values():
                new_chains.update(frag.nat_chains)
            decl, rules, deletes = sections["nat"]
            for chain, content in new_chains.items():
                if old_chains.get(chain) != content or chain not in old_chains:
                    decl.append(f":{chain} - [0:0]")
                    rules.extend(content)
            for chain in old_chains:
                if chain not in new_chains:
                    decl.append(f":{chain} - [0:0]")
                    deletes.append(f"-X {chain}")
            for table, chain in TOP_CHAINS:
                if self._applied_top.get((table, chain)) != top[(table, chain)]:
                    sections[table][0].append(f":{chain} - [0:0]")
                    sections[table][1].extend(top[(table, chain)])
            written = sum(len(s[0]) for s in sections.values()) - len(deletes)
        parts: list[str] = []
        deleted = 0
        for table in TABLES:
            decl, rules, deletes = sections[table]
            if not (decl or rules or deletes):
                continue
            deleted += len(deletes)
            parts.append(f"*{table}")
            parts.extend(decl)
            parts.extend(rules)
            parts.extend(deletes)
            parts.append("COMMIT")
        text = "\n".join(parts) + "\n" if parts else ""
        return IptablesPlan(text=text, full=full, fragments=fragments, top=top,
                            own_rules=own_rules, ports=ports, rule_counts=_rule_counts(own_rules, top),
                            chains_written=written, chains_deleted=deleted)
