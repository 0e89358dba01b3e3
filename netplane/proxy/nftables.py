"""Pure nftables renderer: ProxyState -> one nft transaction.

One table, `ip netplane`, laid out as kube-proxy's nftables mode at the top:

  filter-prerouting (prio -110, before DNAT)  new conns -> firewall-check
  filter-input / filter-forward / filter-output (prio -110)
                                               new conns -> service-endpoints-check
  filter-output also                           new conns -> firewall-check
  nat-prerouting / nat-output (prio -100)      -> services
  nat-postrouting (prio 100)                   -> masquerading

  services:  ip daddr . meta l4proto . th dport @cluster-ips ip saddr != <cluster CIDR> jump mark-for-masquerade
             ip daddr . meta l4proto . th dport vmap @service-ips
             <node address> meta l4proto . th dport vmap @service-nodeports
  service-endpoints-check: the same keys into @no-endpoint-services / @no-endpoint-nodeports,
             whose verdicts are `goto reject-chain` (no endpoints) or `drop` (no local ones)
  firewall-check: @firewall-ips -> firewall-<h>: drop sources outside loadBalancerSourceRanges
  masquerading: hairpin pairs (below), then what carries the masquerade mark

A *simple* service port (a cluster IP only, no ClientIP affinity: most of them) has
no chain, map or set of its own. Its cluster IP's verdict is `goto spread-<proto>-<N>`,
a chain shared by every simple port with N endpoints, whose one rule is

  meta l4proto tcp dnat ip to ip daddr . tcp dport . numgen random mod N map @endpoints-tcp

and @endpoints-tcp holds `cluster IP . port . i : endpoint . port` for i < N. Other
ports keep kube-proxy's shape: `svc-<h>` (Cluster policy), `svl-<h>` (Local policy),
`ext-<h>` (external addresses), `fw-<h>`; their svc/svl chain spreads with
`dnat ip to numgen random mod N map @<chain>-eps`, or, with ClientIP affinity, with one
rule per endpoint (`numgen random mod N-i 0 ... update @aff-<h>-<timeout> { ip saddr }
dnat to EP`, kube-proxy's iptables cascade) after the checks of the per-endpoint
affinity sets. There are no per-endpoint chains: hairpin traffic (an endpoint reaching
itself through its service) is masqueraded in postrouting through one shared set of
`endpoint . endpoint` pairs (`ct status dnat ip saddr . ip daddr @hairpin-endpoints`),
kube-proxy's per-endpoint `ip saddr EP jump mark-for-masquerade` in one lookup.

Why (measured at 10k services x 10 endpoints, see tests/bench/bench_proxy.py):
- nft (1.0.6 here) loads the names of every chain and set of the ruleset into its
  cache before each transaction, and the kernel dumps them in time that grows faster
  than linearly: with kube-proxy's layout (110k chains, 10k maps) that alone was ~1 s
  per transaction; with a chain and a map per service ~50 ms; with the shared spread
  chains it is under a millisecond.
- a transaction that adds a rule with a jump or a NAT statement makes the kernel
  re-validate every rule reachable in the table (~75 ms for 110k rules), while
  elements of a data map are checked alone. An endpoint change of a simple service
  is element updates only (~5 ms at 10k services; a new endpoint count also moves
  its verdict to another spread chain, and a verdict element has the kernel re-check
  what the verdict maps reach: ~20 ms).
The connection path stays hash lookups plus one or two rules, for a connection's
first packet only.

Partial sync: each service port renders an `NftFragment` (its chains, maps and
affinity sets, its elements in the shared maps and sets, the hairpin endpoints and
spread chains it uses); a partial transaction adds new objects, rewrites only chains
and maps whose content changed, swaps only the shared elements that differ, adds and
removes shared spread chains and hairpin pairs by reference count (an endpoint may
serve several services), and deletes what disappeared. Affinity sets are never
flushed, so a full resync keeps clients on their endpoints.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

from netplane.proxy.model import Endpoint, NamespacedName, ServicePort, ServicePortName
from netplane.proxy.selection import Selection
from netplane.proxy.state import ProxyConfig, ProxyState

FAMILY = "ip"
TABLE = "netplane"
T = f"{FAMILY} {TABLE}"
# An empty set whose absence means someone removed our table: looking up one set is cheap
# (milliseconds), while listing a chain makes nft 1.0.6 load every chain.
CANARY = "canary"
SERVICE_IPS = "service-ips"
SERVICE_NODEPORTS = "service-nodeports"
NO_ENDPOINT_SERVICES = "no-endpoint-services"
NO_ENDPOINT_NODEPORTS = "no-endpoint-nodeports"
FIREWALL_IPS = "firewall-ips"
NODEPORT_IPS = "nodeport-ips"
HAIRPIN = "hairpin-endpoints"
CLUSTER_IPS = "cluster-ips"
MARK_MASQ = "mark-for-masquerade"
REJECT_CHAIN = "reject-chain"
PROTOCOLS = ("tcp", "udp", "sctp")
SHARED_MAPS = (SERVICE_IPS, SERVICE_NODEPORTS, NO_ENDPOINT_SERVICES, NO_ENDPOINT_NODEPORTS, FIREWALL_IPS)
_IP_KEY = "type ipv4_addr . inet_proto . inet_service : verdict;"
_PORT_KEY = "type inet_proto . inet_service : verdict;"


def endpoints_map(proto: str) -> str:
    """The shared map of the simple services' endpoints: cluster IP . port . index -> endpoint address . port."""
    return f"endpoints-{proto}"


def spread_chain(proto: str, count: int) -> str:
    """The shared chain that picks one of `count` endpoints of any simple service of that protocol."""
    return f"spread-{proto}-{count}"


# Shared maps and sets whose elements each service port contributes (the verdict maps above,
# the endpoints of the simple services, the cluster IPs to masquerade for): key -> value,
# None for a set.
SHARED_ELEMENTS = (*SHARED_MAPS, *(endpoints_map(p) for p in PROTOCOLS), CLUSTER_IPS)


def _eps_map_decl(proto: str) -> str:
    # `typeof` keeps numgen's integer type (the modulus is only a type template). The port is
    # typed by protocol: with `th dport`, nft 1.0.6 refuses elements added to the map once it
    # exists ("conflicting protocols specified: tcp vs. th").
    return f"typeof numgen random mod 2 : ip daddr . {proto} dport;"


_MAP_DECLS = {
    SERVICE_IPS: _IP_KEY,
    SERVICE_NODEPORTS: _PORT_KEY,
    NO_ENDPOINT_SERVICES: _IP_KEY,
    NO_ENDPOINT_NODEPORTS: _PORT_KEY,
    FIREWALL_IPS: _IP_KEY,
    # Typed per protocol for the same reason as _eps_map_decl.
    **{endpoints_map(p): f"typeof ip daddr . {p} dport . numgen random mod 2 : ip daddr . {p} dport;"
       for p in PROTOCOLS},
}
# Base chains: name -> hook declaration (priorities numeric: nft 1.0.6 rejects `dstnat` for output).
BASE_CHAINS: dict[str, str] = {
    "filter-prerouting": "type filter hook prerouting priority -110; policy accept;",
    "filter-input": "type filter hook input priority -110; policy accept;",
    "filter-forward": "type filter hook forward priority -110; policy accept;",
    "filter-output": "type filter hook output priority -110; policy accept;",
    "nat-prerouting": "type nat hook prerouting priority -100; policy accept;",
    "nat-output": "type nat hook output priority -100; policy accept;",
    "nat-postrouting": "type nat hook postrouting priority 100; policy accept;",
}
ELEMENT_CHUNK = 1000  # elements per `add element` line; keeps lines short for the parser


def _h(spn: ServicePortName) -> str:
    return spn.hash16().lower()


def svc_chain(spn: ServicePortName) -> str:
    return "svc-" + _h(spn)


def svl_chain(spn: ServicePortName) -> str:
    return "svl-" + _h(spn)


def ext_chain(spn: ServicePortName) -> str:
    return "ext-" + _h(spn)


def fw_chain(spn: ServicePortName) -> str:
    return "fw-" + _h(spn)


def affinity_set(spn: ServicePortName, ep: Endpoint, timeout: int) -> str:
    # The timeout is part of the name: a set's timeout cannot change in place.
    return f"aff-{ep.hash16(spn).lower()}-{timeout}"


def hairpin_element(ip: str) -> str:
    return f"{ip} . {ip}"


@dataclass(frozen=True, slots=True)
class NftFragment:
    """Everything one service port contributes."""

    chains: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # chain -> rule bodies
    maps: Mapping[str, tuple[str, tuple[str, ...]]] = field(default_factory=dict)  # map -> (protocol, elements)
    sets: Mapping[str, int] = field(default_factory=dict)  # affinity set -> timeout seconds
    # shared map or set -> key -> value (None in a set); see SHARED_ELEMENTS
    elements: Mapping[str, Mapping[str, str | None]] = field(default_factory=dict)
    hairpin: frozenset[str] = frozenset()  # IPs of the endpoints this port may DNAT to
    spread: frozenset[tuple[str, int]] = frozenset()  # shared spread chains used: (protocol, endpoint count)


def _proto(svc: ServicePort) -> str:
    return svc.protocol.lower()


def endpoint_map(chain: str) -> str:
    return chain + "-eps"


def _spread(spn: ServicePortName, svc: ServicePort, chain: str, eps: tuple[Endpoint, ...], rules: list[str],
            maps: dict[str, tuple[str, tuple[str, ...]]]) -> None:
    """The rules of a svc/svl chain that pick an endpoint."""
    proto = _proto(svc)
    if not svc.affinity_timeout:
        # One rule and a data map: changing endpoints (and not their number) only swaps map
        # elements, which the kernel applies without re-validating the table's rules.
        eps_map = endpoint_map(chain)
        rules.append(f"meta l4proto {proto} dnat ip to numgen random mod {len(eps)} map @{eps_map}")
        maps[eps_map] = (proto, tuple(f"{i} : {ep.ip} . {ep.port}" for i, ep in enumerate(eps)))
        return
    # ClientIP affinity must remember the endpoint it picked: one rule per endpoint, kube-proxy's
    # iptables cascade in nft form.

    def dnat(ep: Endpoint) -> str:
        # `meta l4proto` first: it gives dnat its port context, and it must match before
        # `update` runs (statements in a rule run in order, before later matches are known).
        aff = affinity_set(spn, ep, svc.affinity_timeout)
        return f"meta l4proto {proto} update @{aff} {{ ip saddr }} dnat to {ep.address}"

    for ep in eps:
        rules.append(f"ip saddr @{affinity_set(spn, ep, svc.affinity_timeout)} {dnat(ep)}")
    n = len(eps)
    for i, ep in enumerate(eps):
        # Each rule draws its own number: rule i takes 1/(n-i) of what reaches it, so 1/n overall.
        rules.append((f"numgen random mod {n - i} 0 " if i < n - 1 else "") + dnat(ep))


def render_service(svc: ServicePort, sel: Selection, config: ProxyConfig) -> NftFragment:
    spn = svc.name
    proto = _proto(svc)
    chains: dict[str, tuple[str, ...]] = {}
    maps: dict[str, tuple[str, tuple[str, ...]]] = {}
    sets: dict[str, int] = {}
    elements: dict[str, dict[str, str | None]] = {m: {} for m in SHARED_ELEMENTS}
    # A simple service port (a cluster IP only, no affinity; most of them) has no chain or map of
    # its own: its cluster IP goes to the shared spread chain for its endpoint count, which looks
    # its endpoints up in the shared endpoints map. Changing them is then a few element updates.
    simple = not svc.has_external_addresses and not svc.affinity_timeout
    spread: frozenset[tuple[str, int]] = frozenset()
    cluster_chain = svc_chain(spn)
    local_chain = svl_chain(spn)
    internal_chain = local_chain if svc.internal_policy_local else cluster_chain
    external_policy_chain = local_chain if svc.external_policy_local else cluster_chain
    uses_cluster, uses_local = sel.policy_chains(svc)
    uses_ext = svc.has_external_addresses
    uses_fw = bool(svc.load_balancer_ips and svc.load_balancer_source_ranges)
    internal_eps = sel.internal(svc)
    external_eps = sel.external(svc)
    external_ips = (*svc.external_ips, *svc.load_balancer_ips)
    hairpin: frozenset[str] = frozenset()

    def key(ip: str) -> str:
        return f"{ip} . {proto} . {svc.port}"

    node_key = f"{proto} . {svc.node_port}"
    if not sel.has_any:
        for ip in (svc.cluster_ip, *external_ips):
            elements[NO_ENDPOINT_SERVICES][key(ip)] = f"goto {REJECT_CHAIN}"
        if svc.node_port:
            elements[NO_ENDPOINT_NODEPORTS][node_key] = f"goto {REJECT_CHAIN}"
    else:
        if internal_eps:
            # Off-cluster sources are masqueraded (marked in the services chain through this set).
            elements[CLUSTER_IPS][key(svc.cluster_ip)] = None
            if simple:
                count = len(internal_eps)
                elements[SERVICE_IPS][key(svc.cluster_ip)] = f"goto {spread_chain(proto, count)}"
                elements[endpoints_map(proto)] = {f"{svc.cluster_ip} . {svc.port} . {i}": f"{ep.ip} . {ep.port}"
                                                  for i, ep in enumerate(internal_eps)}
                spread = frozenset({(proto, count)})
            else:
                elements[SERVICE_IPS][key(svc.cluster_ip)] = f"goto {internal_chain}"
        else:
            elements[NO_ENDPOINT_SERVICES][key(svc.cluster_ip)] = "drop"
        if uses_ext:
            if external_eps:
                for ip in external_ips:
                    elements[SERVICE_IPS][key(ip)] = f"goto {ext_chain(spn)}"
                if svc.node_port:
                    elements[SERVICE_NODEPORTS][node_key] = f"goto {ext_chain(spn)}"
            else:
                for ip in external_ips:
                    elements[NO_ENDPOINT_SERVICES][key(ip)] = "drop"
                if svc.node_port:
                    elements[NO_ENDPOINT_NODEPORTS][node_key] = "drop"
        if uses_cluster and not simple:
            rules: list[str] = []
            _spread(spn, svc, cluster_chain, sel.cluster, rules, maps)
            chains[cluster_chain] = tuple(rules)
        if uses_local and not simple:
            rules = []
            _spread(spn, svc, local_chain, sel.local, rules, maps)
            chains[local_chain] = tuple(rules)
        if uses_ext:
            rules = []
            if not svc.external_policy_local:
                rules.append(f"jump {MARK_MASQ}")
            elif uses_cluster:
                # Pods and the node itself are not "outside": they may reach any endpoint.
                rules.append(f"ip saddr {config.cluster_cidr} goto {cluster_chain}")
                rules.append(f"fib saddr type local jump {MARK_MASQ}")
                rules.append(f"fib saddr type local goto {cluster_chain}")
            if external_eps:
                rules.append(f"goto {external_policy_chain}")
            chains[ext_chain(spn)] = tuple(rules)
        if uses_fw and external_eps:
            allowed = ", ".join((*svc.load_balancer_source_ranges, *svc.load_balancer_ips))
            chains[fw_chain(spn)] = (f"ip saddr != {{ {allowed} }} drop",)
            for ip in svc.load_balancer_ips:
                elements[FIREWALL_IPS][key(ip)] = f"goto {fw_chain(spn)}"
        used = dict.fromkeys(sel.cluster if uses_cluster else ())
        used.update(dict.fromkeys(sel.local if uses_local else ()))
        hairpin = frozenset(ep.ip for ep in used)
        if svc.affinity_timeout:
            for ep in used:
                sets[affinity_set(spn, ep, svc.affinity_timeout)] = svc.affinity_timeout
    return NftFragment(chains=chains, maps=maps, sets=sets, elements={m: e for m, e in elements.items() if e},
                       hairpin=hairpin, spread=spread)


def spread_rules(proto: str, count: int) -> tuple[str, ...]:
    return (f"meta l4proto {proto} dnat ip to ip daddr . {proto} dport . numgen random mod {count} "
            f"map @{endpoints_map(proto)}",)


def _nodeport_match(config: ProxyConfig) -> str:
    if config.nodeport_ips() is None:
        return "fib daddr type local ip daddr != 127.0.0.0/8"
    return f"ip daddr @{NODEPORT_IPS}"


def static_chains(config: ProxyConfig) -> dict[str, tuple[str, ...]]:
    mark = config.masq_mark
    np = _nodeport_match(config)
    masq_src = "" if config.masquerade_all else f" ip saddr != {config.cluster_cidr}"
    return {
        "filter-prerouting": ("ct state new jump firewall-check",),
        "filter-input": ("ct state new jump service-endpoints-check",),
        "filter-forward": ("ct state new jump service-endpoints-check",),
        "filter-output": ("ct state new jump service-endpoints-check", "ct state new jump firewall-check"),
        "nat-prerouting": ("jump services",),
        "nat-output": ("jump services",),
        "nat-postrouting": ("jump masquerading",),
        "firewall-check": (f"ip daddr . meta l4proto . th dport vmap @{FIREWALL_IPS}",),
        "service-endpoints-check": (
            f"ip daddr . meta l4proto . th dport vmap @{NO_ENDPOINT_SERVICES}",
            f"{np} meta l4proto . th dport vmap @{NO_ENDPOINT_NODEPORTS}",
        ),
        "services": (
            f"ip daddr . meta l4proto . th dport @{CLUSTER_IPS}{masq_src} jump {MARK_MASQ}",
            f"ip daddr . meta l4proto . th dport vmap @{SERVICE_IPS}",
            f"{np} meta l4proto . th dport vmap @{SERVICE_NODEPORTS}",
        ),
        MARK_MASQ: (f"meta mark set meta mark | {mark}",),
        "masquerading": (
            # Hairpin: after DNAT the destination is the endpoint; it is also the source.
            f"ct status dnat ip saddr . ip daddr @{HAIRPIN} jump {MARK_MASQ}",
            f"meta mark & {mark} == 0 return",
            f"meta mark set meta mark ^ {mark}",
            "masquerade fully-random",
        ),
        REJECT_CHAIN: ("reject",),
    }


@dataclass(slots=True)
class NftPlan:
    text: str
    full: bool
    fragments: dict[ServicePortName, NftFragment]
    # How many service ports use each hairpin endpoint and each shared spread chain: all of
    # them after a full plan, only the ones that change after a partial one.
    hairpin_refs: dict[str, int]
    spread_refs: dict[tuple[str, int], int]
    totals: tuple[int, int, int]  # rules, elements, chains of the service ports (for rule_counts)
    # Port names per service: all of them after a full plan, the changed services' after a partial one.
    ports: dict[NamespacedName, tuple[ServicePortName, ...]] = field(default_factory=dict)
    rule_counts: dict[str, int] = field(default_factory=dict)
    chains_written: int = 0
    objects_deleted: int = 0


def _elements_line(name: str, items: Iterable[str]) -> list[str]:
    out: list[str] = []
    batch: list[str] = []
    for item in items:
        batch.append(item)
        if len(batch) >= ELEMENT_CHUNK:
            out.append(f"add element {T} {name} {{ {', '.join(batch)} }}")
            batch = []
    if batch:
        out.append(f"add element {T} {name} {{ {', '.join(batch)} }}")
    return out


def _delete_elements_line(name: str, items: Iterable[str]) -> list[str]:
    return [line.replace("add element", "delete element", 1) for line in _elements_line(name, items)]


def _set_decl(timeout: int) -> str:
    return f"{{ type ipv4_addr; flags dynamic,timeout; timeout {timeout}s; }}"


K = TypeVar("K", str, tuple[str, int])


def _fragment_counts(frag: NftFragment) -> tuple[int, int, int]:
    """(rules, map elements, chains) one fragment contributes, shared spread chains aside."""
    return (sum(len(r) for r in frag.chains.values()),
            sum(len(e) for e in frag.elements.values()) + sum(len(e) for _, e in frag.maps.values()),
            len(frag.chains))


def _counts(static: Mapping[str, tuple[str, ...]], totals: tuple[int, int, int], hairpin: int,
            spreads: int) -> dict[str, int]:
    rules, elements, chains = totals
    return {"rules": rules + spreads + sum(len(r) for r in static.values()), "elements": elements + hairpin,
            "chains": chains + spreads + len(static)}


def _ref_changes(refs: Mapping[K, int], old: Iterable[Iterable[K]],
                 new: Iterable[Iterable[K]]) -> tuple[dict[K, int], list[K], list[K]]:
    """The new counts of the keys whose count changes, the keys that appear and those that go."""
    delta: Counter[K] = Counter()
    for keys in old:
        delta.subtract(keys)
    for keys in new:
        delta.update(keys)
    counts: dict[K, int] = {}
    appear: list[K] = []
    gone: list[K] = []
    for key, d in sorted(delta.items()):
        if not d:
            continue
        before = refs.get(key, 0)
        counts[key] = before + d
        if before == 0 and before + d > 0:
            appear.append(key)
        elif before > 0 and before + d <= 0:
            gone.append(key)
    return counts, appear, gone


def _apply_counts(refs: dict[K, int], counts: Mapping[K, int]) -> None:
    for key, count in counts.items():
        if count > 0:
            refs[key] = count
        else:
            refs.pop(key, None)


def _group_ports(names: Iterable[ServicePortName]) -> dict[NamespacedName, tuple[ServicePortName, ...]]:
    out: dict[NamespacedName, list[ServicePortName]] = {}
    for spn in names:
        out.setdefault(spn.service, []).append(spn)
    return {svc: tuple(spns) for svc, spns in out.items()}


def _update_ports(index: dict[NamespacedName, tuple[ServicePortName, ...]],
                  ports: Mapping[NamespacedName, tuple[ServicePortName, ...]], full: bool) -> None:
    if full:
        index.clear()
    for svc, spns in ports.items():
        if spns:
            index[svc] = spns
        else:
            index.pop(svc, None)


def _element(key: str, value: str | None) -> str:
    return key if value is None else f"{key} : {value}"


class NftablesRenderer:
    """Renders transactions and remembers what was applied, so the next one can be partial.

    A partial plan costs time in the number of changed services, not in the number of
    services: it copies the applied fragment map (a dict copy, no re-sorting), and keeps
    the reference counts of shared objects and the rule counts up to date by difference.
    """

    def __init__(self) -> None:
        self._applied: dict[ServicePortName, NftFragment] | None = None
        self._hairpin_refs: dict[str, int] = {}
        self._spread_refs: dict[tuple[str, int], int] = {}
        self._totals = (0, 0, 0)
        self._ports: dict[NamespacedName, tuple[ServicePortName, ...]] = {}

    @property
    def can_partial(self) -> bool:
        return self._applied is not None

    def reset(self) -> None:
        self._applied = None
        self._hairpin_refs = {}
        self._spread_refs = {}
        self._totals = (0, 0, 0)
        self._ports = {}

    def commit(self, plan: NftPlan) -> None:
        if plan.full:
            self._hairpin_refs, self._spread_refs = {}, {}
        _apply_counts(self._hairpin_refs, plan.hairpin_refs)
        _apply_counts(self._spread_refs, plan.spread_refs)
        self._applied = plan.fragments
        self._totals = plan.totals
        _update_ports(self._ports, plan.ports, plan.full)

    def plan(self, state: ProxyState, changed: set[NamespacedName] | None = None,
             existing: Mapping[str, Iterable[str]] | None = None) -> NftPlan:
        """`existing`: {"chains"|"maps"|"sets": names} in the kernel table now (for a full plan)."""
        config = state.config
        full = changed is None or self._applied is None
        static = static_chains(config)
        totals = [0, 0, 0]
        if full:
            fragments = {spn: render_service(svc, state.selection(spn), config)
                         for spn, svc in sorted(state.services.items())}
            hairpin = dict(Counter(ip for f in fragments.values() for ip in f.hairpin))
            spread = dict(Counter(k for f in fragments.values() for k in f.spread))
            text, written, deleted = self._full_text(fragments, hairpin, spread, config, existing or {})
            pairs, spreads = len(hairpin), len(spread)
            changes = [(f, 1) for f in fragments.values()]
            ports = _group_ports(fragments)
        else:
            assert self._applied is not None and changed is not None
            # Only the changed services are looked at (through the port indexes): at 10k services
            # any pass over all of them costs more than the kernel transaction.
            fragments = dict(self._applied)
            old = {spn: fragments.pop(spn) for svc in changed for spn in self._ports.get(svc, ())}
            new = {spn: render_service(state.services[spn], state.selection(spn), config)
                   for spn in state.port_names(changed)}
            fragments.update(new)
            ports = {svc: tuple(spn for spn in new if spn.service == svc) for svc in changed}
            hairpin, pairs_in, pairs_out = _ref_changes(
                self._hairpin_refs, (f.hairpin for f in old.values()), (f.hairpin for f in new.values()))
            spread, spread_in, spread_out = _ref_changes(
                self._spread_refs, (f.spread for f in old.values()), (f.spread for f in new.values()))
            text, written, deleted = self._partial_text(old, new, pairs_in, pairs_out, spread_in, spread_out)
            pairs = len(self._hairpin_refs) + len(pairs_in) - len(pairs_out)
            spreads = len(self._spread_refs) + len(spread_in) - len(spread_out)
            totals = list(self._totals)
            changes = [*((f, -1) for f in old.values()), *((f, 1) for f in new.values())]
        for f, sign in changes:
            for k, v in enumerate(_fragment_counts(f)):
                totals[k] += sign * v
        sums = (totals[0], totals[1], totals[2])
        return NftPlan(text=text, full=full, fragments=fragments, hairpin_refs=hairpin, spread_refs=spread,
                       totals=sums, ports=ports, rule_counts=_counts(static, sums, pairs, spreads),
                       chains_written=written, objects_deleted=deleted)

    @staticmethod
    def _full_text(fragments: Mapping[ServicePortName, NftFragment], hairpin: Mapping[str, int],
                   spread: Mapping[tuple[str, int], int], config: ProxyConfig,
                   existing: Mapping[str, Iterable[str]]) -> tuple[str, int, int]:
        head: list[str] = [f"add table {T}"]
        flush: list[str] = []
        body: list[str] = []
        tail: list[str] = []
        chains = static_chains(config)
        for proto, count in sorted(spread):
            chains[spread_chain(proto, count)] = spread_rules(proto, count)
        for frag in fragments.values():
            chains.update(frag.chains)
        maps: dict[str, str] = dict(_MAP_DECLS)
        map_elements: dict[str, list[str]] = {m: [] for m in SHARED_ELEMENTS}
        sets: dict[str, int] = {}
        for frag in fragments.values():
            for name, (proto, elems) in frag.maps.items():
                maps[name] = _eps_map_decl(proto)
                map_elements[name] = list(elems)
            for name, entries in frag.elements.items():
                map_elements[name].extend(_element(k, v) for k, v in entries.items())
            sets.update(frag.sets)
        for name in chains:
            decl = BASE_CHAINS.get(name)
            head.append(f"add chain {T} {name}" + (f" {{ {decl} }}" if decl else ""))
            flush.append(f"flush chain {T} {name}")
        for name, decl in maps.items():
            head.append(f"add map {T} {name} {{ {decl} }}")
            flush.append(f"flush map {T} {name}")
        nodeport_ips = config.nodeport_ips()
        static_sets = {CANARY, HAIRPIN, CLUSTER_IPS} | ({NODEPORT_IPS} if nodeport_ips is not None else set())
        head.append(f"add set {T} {CANARY} {{ type ipv4_addr; }}")
        for name, decl in ((HAIRPIN, "type ipv4_addr . ipv4_addr;"),
                           (CLUSTER_IPS, "type ipv4_addr . inet_proto . inet_service;")):
            head.append(f"add set {T} {name} {{ {decl} }}")
            flush.append(f"flush set {T} {name}")
        if nodeport_ips is not None:
            head.append(f"add set {T} {NODEPORT_IPS} {{ type ipv4_addr; }}")
            flush.append(f"flush set {T} {NODEPORT_IPS}")
            if nodeport_ips:
                body.append(f"add element {T} {NODEPORT_IPS} {{ {', '.join(nodeport_ips)} }}")
        for name, timeout in sets.items():
            # Affinity sets are added, never flushed: clients keep their endpoint across syncs.
            head.append(f"add set {T} {name} {_set_decl(timeout)}")
        for name, rules in chains.items():
            body.extend(f"add rule {T} {name} {r}" for r in rules)
        for name, map_items in map_elements.items():
            body.extend(_elements_line(name, map_items))
        body.extend(_elements_line(HAIRPIN, (hairpin_element(ip) for ip in sorted(hairpin))))
        deleted = 0
        for name in sorted(set(existing.get("chains", ())) - set(chains)):
            flush.append(f"flush chain {T} {name}")
            tail.append(f"delete chain {T} {name}")
            deleted += 1
        for name in sorted(set(existing.get("maps", ())) - set(maps)):
            # Flushed first: a verdict map's elements may name chains deleted in this transaction.
            flush.append(f"flush map {T} {name}")
            tail.append(f"delete map {T} {name}")
            deleted += 1
        for name in sorted(set(existing.get("sets", ())) - set(sets) - static_sets):
            tail.append(f"delete set {T} {name}")
            deleted += 1
        return "\n".join([*head, *flush, *body, *tail]) + "\n", len(chains), deleted

    @staticmethod
    def _partial_text(old: Mapping[ServicePortName, NftFragment], new: Mapping[ServicePortName, NftFragment],
                      pairs_in: list[str], pairs_out: list[str], spread_in: list[tuple[str, int]],
                      spread_out: list[tuple[str, int]]) -> tuple[str, int, int]:
        """The transaction from `old` to `new` fragments, given the shared objects that appear and go."""
        def merged(frags: Iterable[NftFragment]) -> tuple[
                dict[str, tuple[str, ...]], dict[str, tuple[str, tuple[str, ...]]], dict[str, int],
                dict[str, dict[str, str | None]]]:
            chains: dict[str, tuple[str, ...]] = {}
            maps: dict[str, tuple[str, tuple[str, ...]]] = {}
            sets: dict[str, int] = {}
            elements: dict[str, dict[str, str | None]] = {}
            for f in frags:
                chains.update(f.chains)
                maps.update(f.maps)
                sets.update(f.sets)
                for m, e in f.elements.items():
                    elements.setdefault(m, {}).update(e)
            return chains, maps, sets, elements

        o_chains, o_maps, o_sets, o_elems = merged(old.values())
        n_chains, n_maps, n_sets, n_elems = merged(new.values())
        for proto, count in spread_in:
            n_chains[spread_chain(proto, count)] = spread_rules(proto, count)
        for proto, count in spread_out:
            o_chains[spread_chain(proto, count)] = spread_rules(proto, count)
        head: list[str] = []
        flush: list[str] = []
        del_elems: list[str] = []
        body: list[str] = []
        tail: list[str] = []
        written = 0
        for name, rules in n_chains.items():
            if name not in o_chains:
                head.append(f"add chain {T} {name}")
            elif o_chains[name] == rules:
                continue
            else:
                flush.append(f"flush chain {T} {name}")
            body.extend(f"add rule {T} {name} {r}" for r in rules)
            written += 1
        for name, (proto, elems) in n_maps.items():
            # A map's protocol never changes: it is part of the service port's name, hence of the map's.
            if name not in o_maps:
                head.append(f"add map {T} {name} {{ {_eps_map_decl(proto)} }}")
            elif o_maps[name][1] == elems:
                continue
            else:
                flush.append(f"flush map {T} {name}")
            body.extend(_elements_line(name, elems))
        for name, timeout in n_sets.items():
            if name not in o_sets:
                head.append(f"add set {T} {name} {_set_decl(timeout)}")
        for m in SHARED_ELEMENTS:
            before, after = o_elems.get(m, {}), n_elems.get(m, {})
            # A changed value is a delete and an add: nft refuses to add over an existing key.
            gone = [_element(k, v) for k, v in before.items() if k not in after or after[k] != v]
            added = [_element(k, v) for k, v in after.items() if k not in before or before[k] != v]
            del_elems.extend(_delete_elements_line(m, gone))
            body.extend(_elements_line(m, added))
        del_elems.extend(_delete_elements_line(HAIRPIN, (hairpin_element(ip) for ip in pairs_out)))
        body.extend(_elements_line(HAIRPIN, (hairpin_element(ip) for ip in pairs_in)))
        deleted = 0
        for name in o_chains:
            if name not in n_chains:
                flush.append(f"flush chain {T} {name}")
                tail.append(f"delete chain {T} {name}")
                deleted += 1
        for name in o_maps:
            if name not in n_maps:
                tail.append(f"delete map {T} {name}")
                deleted += 1
        for name in o_sets:
            if name not in n_sets:
                tail.append(f"delete set {T} {name}")
                deleted += 1
        lines = [*head, *flush, *del_elems, *body, *tail]
        return ("\n".join(lines) + "\n" if lines else ""), written, deleted
