"""Pure nftables renderer: ProxyState -> one `nft -f` transaction.

One table, `ip netplane`, laid out as kube-proxy's nftables mode:

  filter-prerouting (prio -110, before DNAT)  new conns -> firewall-check
  filter-input / filter-forward / filter-output (prio -110)
                                               new conns -> service-endpoints-check
  filter-output also                           new conns -> firewall-check
  nat-prerouting / nat-output (prio -100)      -> services
  nat-postrouting (prio 100)                   -> masquerading

  services:  ip daddr . meta l4proto . th dport vmap @service-ips
             <node address> meta l4proto . th dport vmap @service-nodeports
  service-endpoints-check: the same keys into @no-endpoint-services / @no-endpoint-nodeports,
             whose verdicts are `goto reject-chain` (no endpoints) or `drop` (no local ones)
  firewall-check: @firewall-ips -> firewall-<h>: drop sources outside loadBalancerSourceRanges

Per service port: `svc-<h>` (Cluster policy), `svl-<h>` (Local policy), `ext-<h>`
(external addresses), `fw-<h>`; per endpoint `ep-<h>`. A service chain spreads with
`numgen random mod N vmap @svc-eps-<h>` (a *named* map per chain: anonymous maps
make large rulesets slow to load and replace, see MACHINE-NOTES) and implements
ClientIP affinity with a dynamic set per endpoint (`aff-<h>-<timeout>`), refreshed by
`update @set { ip saddr }` in the endpoint chain, checked before spreading.

Partial sync: each service port renders an `NftFragment` (its chains, maps, sets,
and its elements in the shared maps); a partial transaction adds new objects,
rewrites only chains/maps whose content changed, swaps only the shared-map
elements that differ, and deletes what disappeared. Affinity sets are never
flushed, so a full resync keeps clients on their endpoints.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from netplane.proxy.model import Endpoint, NamespacedName, ServicePort, ServicePortName
from netplane.proxy.selection import Selection
from netplane.proxy.state import ProxyConfig, ProxyState

FAMILY = "ip"
TABLE = "netplane"
T = f"{FAMILY} {TABLE}"
# An empty set whose absence means someone removed our table: looking up one set is cheap
# (milliseconds), while listing a chain makes nft 1.0.6 load every chain (seconds at 10k services).
CANARY = "canary"
SERVICE_IPS = "service-ips"
SERVICE_NODEPORTS = "service-nodeports"
NO_ENDPOINT_SERVICES = "no-endpoint-services"
NO_ENDPOINT_NODEPORTS = "no-endpoint-nodeports"
FIREWALL_IPS = "firewall-ips"
NODEPORT_IPS = "nodeport-ips"
MARK_MASQ = "mark-for-masquerade"
REJECT_CHAIN = "reject-chain"
SHARED_MAPS = (SERVICE_IPS, SERVICE_NODEPORTS, NO_ENDPOINT_SERVICES, NO_ENDPOINT_NODEPORTS, FIREWALL_IPS)
_IP_KEY = "type ipv4_addr . inet_proto . inet_service : verdict;"
_PORT_KEY = "type inet_proto . inet_service : verdict;"
_MAP_DECLS = {
    SERVICE_IPS: _IP_KEY,
    SERVICE_NODEPORTS: _PORT_KEY,
    NO_ENDPOINT_SERVICES: _IP_KEY,
    NO_ENDPOINT_NODEPORTS: _PORT_KEY,
    FIREWALL_IPS: _IP_KEY,
}
# `typeof` keeps numgen's integer type; the modulus in it is only a type template.
_EPS_MAP_DECL = "typeof numgen random mod 2 : verdict;"
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


def ep_chain(spn: ServicePortName, ep: Endpoint) -> str:
    return "ep-" + ep.hash16(spn).lower()


def affinity_set(spn: ServicePortName, ep: Endpoint, timeout: int) -> str:
    # The timeout is part of the name: a set's timeout cannot change in place.
    return f"aff-{ep.hash16(spn).lower()}-{timeout}"


@dataclass(frozen=True, slots=True)
class NftFragment:
    """Everything one service port contributes."""

    chains: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # chain -> rule bodies
    maps: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # per-service map -> elements
    sets: Mapping[str, int] = field(default_factory=dict)  # affinity set -> timeout seconds
    elements: Mapping[str, Mapping[str, str]] = field(default_factory=dict)  # shared map -> key -> verdict


def _proto(svc: ServicePort) -> str:
    return svc.protocol.lower()


def _spread(spn: ServicePortName, svc: ServicePort, chain: str, eps: tuple[Endpoint, ...],
            rules: list[str], maps: dict[str, tuple[str, ...]]) -> None:
    if svc.affinity_timeout:
        for ep in eps:
            rules.append(f"ip saddr @{affinity_set(spn, ep, svc.affinity_timeout)} goto {ep_chain(spn, ep)}")
    eps_map = f"{chain}-eps"
    rules.append(f"numgen random mod {len(eps)} vmap @{eps_map}")
    maps[eps_map] = tuple(f"{i} : goto {ep_chain(spn, ep)}" for i, ep in enumerate(eps))


def render_service(svc: ServicePort, sel: Selection, config: ProxyConfig) -> NftFragment:
    spn = svc.name
    proto = _proto(svc)
    chains: dict[str, tuple[str, ...]] = {}
    maps: dict[str, tuple[str, ...]] = {}
    sets: dict[str, int] = {}
    elements: dict[str, dict[str, str]] = {m: {} for m in SHARED_MAPS}
    cluster_chain = svc_chain(spn)
    local_chain = svl_chain(spn)
    internal_chain = local_chain if svc.internal_policy_local else cluster_chain
    external_policy_chain = local_chain if svc.external_policy_local else cluster_chain
    uses_cluster = bool(sel.cluster) and (
        not svc.internal_policy_local or (svc.has_external_addresses and not svc.external_policy_local))
    uses_local = bool(sel.local) and (
        svc.internal_policy_local or (svc.has_external_addresses and svc.external_policy_local))
    uses_ext = svc.has_external_addresses
    uses_fw = bool(svc.load_balancer_ips and svc.load_balancer_source_ranges)
    internal_eps = sel.internal(svc)
    external_eps = sel.external(svc)
    external_ips = (*svc.external_ips, *svc.load_balancer_ips)

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
        masq_src = "" if config.masquerade_all else f" ip saddr != {config.cluster_cidr}"
        masq_rule = f"ip daddr {svc.cluster_ip} {proto} dport {svc.port}{masq_src} jump {MARK_MASQ}"
        if uses_cluster:
            rules = [masq_rule] if internal_chain == cluster_chain else []
            _spread(spn, svc, cluster_chain, sel.cluster, rules, maps)
            chains[cluster_chain] = tuple(rules)
        if uses_local:
            rules = [masq_rule] if internal_chain == local_chain else []
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
        for ep in used:
            rules = [f"ip saddr {ep.ip} jump {MARK_MASQ}"]
            if svc.affinity_timeout:
                aff = affinity_set(spn, ep, svc.affinity_timeout)
                sets[aff] = svc.affinity_timeout
                rules.append(f"update @{aff} {{ ip saddr }}")
            rules.append(f"meta l4proto {proto} dnat to {ep.address}")
            chains[ep_chain(spn, ep)] = tuple(rules)
    return NftFragment(chains=chains, maps=maps, sets=sets,
                       elements={m: e for m, e in elements.items() if e})


def _nodeport_match(config: ProxyConfig) -> str:
    if config.nodeport_ips() is None:
        return "fib daddr type local ip daddr != 127.0.0.0/8"
    return f"ip daddr @{NODEPORT_IPS}"


def static_chains(config: ProxyConfig) -> dict[str, tuple[str, ...]]:
    mark = config.masq_mark
    np = _nodeport_match(config)
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
            f"ip daddr . meta l4proto . th dport vmap @{SERVICE_IPS}",
            f"{np} meta l4proto . th dport vmap @{SERVICE_NODEPORTS}",
        ),
        MARK_MASQ: (f"meta mark set meta mark | {mark}",),
        "masquerading": (
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


def _counts(fragments: Mapping[ServicePortName, NftFragment], config: ProxyConfig) -> dict[str, int]:
    rules = sum(len(r) for r in static_chains(config).values())
    rules += sum(len(r) for f in fragments.values() for r in f.chains.values())
    elements = sum(len(e) for f in fragments.values() for e in f.maps.values())
    elements += sum(len(e) for f in fragments.values() for e in f.elements.values())
    chains = len(static_chains(config)) + sum(len(f.chains) for f in fragments.values())
    return {"rules": rules, "elements": elements, "chains": chains}


class NftablesRenderer:
    """Renders transactions and remembers what was applied, so the next one can be partial."""

    def __init__(self) -> None:
        self._applied: dict[ServicePortName, NftFragment] | None = None

    @property
    def can_partial(self) -> bool:
        return self._applied is not None

    def reset(self) -> None:
        self._applied = None

    def commit(self, plan: NftPlan) -> None:
        self._applied = plan.fragments

    def plan(self, state: ProxyState, changed: set[NamespacedName] | None = None,
             existing: Mapping[str, Iterable[str]] | None = None) -> NftPlan:
        """`existing`: {"chains"|"maps"|"sets": names} in the kernel table now (for a full plan)."""
        config = state.config
        full = changed is None or self._applied is None
        if full:
            fragments = {spn: render_service(svc, state.selection(spn), config)
                         for spn, svc in sorted(state.services.items())}
            text, written, deleted = self._full_text(fragments, config, existing or {})
        else:
            assert self._applied is not None and changed is not None
            fragments = dict(self._applied)
            old = {spn: f for spn, f in fragments.items() if spn.service in changed}
            for spn in old:
                del fragments[spn]
            new = {spn: render_service(svc, state.selection(spn), config)
                   for spn, svc in state.services.items() if spn.service in changed}
            fragments.update(new)
            fragments = dict(sorted(fragments.items()))
            text, written, deleted = self._partial_text(old, new)
        return NftPlan(text=text, full=full, fragments=fragments, rule_counts=_counts(fragments, config),
                       chains_written=written, objects_deleted=deleted)

    @staticmethod
    def _full_text(fragments: Mapping[ServicePortName, NftFragment], config: ProxyConfig,
                   existing: Mapping[str, Iterable[str]]) -> tuple[str, int, int]:
        head: list[str] = [f"add table {T}"]
        flush: list[str] = []
        body: list[str] = []
        tail: list[str] = []
        chains = static_chains(config)
        for frag in fragments.values():
            chains.update(frag.chains)
        maps: dict[str, str] = dict(_MAP_DECLS)
        map_elements: dict[str, list[str]] = {m: [] for m in SHARED_MAPS}
        sets: dict[str, int] = {}
        for frag in fragments.values():
            for name, elems in frag.maps.items():
                maps[name] = _EPS_MAP_DECL
                map_elements[name] = list(elems)
            for name, entries in frag.elements.items():
                map_elements[name].extend(f"{k} : {v}" for k, v in entries.items())
            sets.update(frag.sets)
        for name in chains:
            decl = BASE_CHAINS.get(name)
            head.append(f"add chain {T} {name}" + (f" {{ {decl} }}" if decl else ""))
            flush.append(f"flush chain {T} {name}")
        for name, decl in maps.items():
            head.append(f"add map {T} {name} {{ {decl} }}")
            flush.append(f"flush map {T} {name}")
        nodeport_ips = config.nodeport_ips()
        static_sets = {NODEPORT_IPS, CANARY} if nodeport_ips is not None else {CANARY}
        head.append(f"add set {T} {CANARY} {{ type ipv4_addr; }}")
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
        deleted = 0
        for name in sorted(set(existing.get("chains", ())) - set(chains)):
            flush.append(f"flush chain {T} {name}")
            tail.append(f"delete chain {T} {name}")
            deleted += 1
        for name in sorted(set(existing.get("maps", ())) - set(maps)):
            flush.append(f"flush map {T} {name}")
            tail.append(f"delete map {T} {name}")
            deleted += 1
        for name in sorted(set(existing.get("sets", ())) - set(sets) - static_sets):
            tail.append(f"delete set {T} {name}")
            deleted += 1
        return "\n".join([*head, *flush, *body, *tail]) + "\n", len(chains), deleted

    @staticmethod
    def _partial_text(old: Mapping[ServicePortName, NftFragment],
                      new: Mapping[ServicePortName, NftFragment]) -> tuple[str, int, int]:
        def merged(frags: Iterable[NftFragment]) -> tuple[dict[str, tuple[str, ...]], dict[str, tuple[str, ...]],
                                                          dict[str, int], dict[str, dict[str, str]]]:
            chains: dict[str, tuple[str, ...]] = {}
            maps: dict[str, tuple[str, ...]] = {}
            sets: dict[str, int] = {}
            elements: dict[str, dict[str, str]] = {}
            for f in frags:
                chains.update(f.chains)
                maps.update(f.maps)
                sets.update(f.sets)
                for m, e in f.elements.items():
                    elements.setdefault(m, {}).update(e)
            return chains, maps, sets, elements

        o_chains, o_maps, o_sets, o_elems = merged(old.values())
        n_chains, n_maps, n_sets, n_elems = merged(new.values())
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
        for name, elems in n_maps.items():
            if name not in o_maps:
                head.append(f"add map {T} {name} {{ {_EPS_MAP_DECL} }}")
            elif o_maps[name] == elems:
                continue
            else:
                flush.append(f"flush map {T} {name}")
            body.extend(_elements_line(name, elems))
        for name, timeout in n_sets.items():
            if name not in o_sets:
                head.append(f"add set {T} {name} {_set_decl(timeout)}")
        for m in SHARED_MAPS:
            before, after = o_elems.get(m, {}), n_elems.get(m, {})
            gone = [f"{k} : {v}" for k, v in before.items() if after.get(k) != v]
            added = [f"{k} : {v}" for k, v in after.items() if before.get(k) != v]
            del_elems.extend(_delete_elements_line(m, gone))
            body.extend(_elements_line(m, added))
        deleted = 0
        for name in o_chains:
            if name not in n_chains:
                flush.append(f"flush chain {T} {name}")
                tail.append(f"delete chain {T} {name}")
                deleted += 1
        for name in o_maps:
            if name not in n_maps:
                # Flushed first: its elements refer to chains deleted in this same transaction.
                flush.append(f"flush map {T} {name}")
                tail.append(f"delete map {T} {name}")
                deleted += 1
        for name in o_sets:
            if name not in n_sets:
                tail.append(f"delete set {T} {name}")
                deleted += 1
        lines = [*head, *flush, *del_elems, *body, *tail]
        return ("\n".join(lines) + "\n" if lines else ""), written, deleted
