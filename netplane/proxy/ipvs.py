"""IPVS mode, the pure part: desired virtual servers, bound addresses, ipset members and the fixed
iptables rules, and the diff of that desired state against the kernel's (kube-proxy's pkg/proxy/ipvs).

Per service port (`render_service`, one `IpvsFragment`):
- a virtual server (VS) on the ClusterIP, on every external IP and load-balancer
  IP, and on every NodePort address for the node port, each with the scheduler
  of the --ipvs-scheduler flag and, for `sessionAffinity: ClientIP`,
  persistence with the service's timeout (netmask /32: per client address);
- real servers (masquerade forwarding, weight 1): the endpoints that the
  internal policy selects for the ClusterIP VS, the external policy's for the
  others. A VS exists even with no real server, as in kube-proxy; the filter
  rules below reject or drop its traffic before IPVS sees it;
- the addresses to bind on the service device (ClusterIP, external and LB IPs);
- members of the ipsets that the fixed rules match on.

Rules that never change with the services (`render_iptables`): IPVS rewrites only
the destination, so masquerading stays in iptables, driven by set membership:
nat marks off-cluster sources to ClusterIPs, external IPs, LB IPs and NodePorts
(except policy Local) and POSTROUTING masquerades marked packets and hairpin
packets (NPV-LOOP-BACK: an endpoint reaching itself). filter, on INPUT (before
IPVS, which hooks LOCAL_IN after it): LB source ranges, REJECT for services with
no endpoints, DROP for policy Local with none on this node, REJECT for any other
port of a service address (kube-proxy's KUBE-IPVS-FILTER), ACCEPT NodePorts and
health-check node ports; on FORWARD, ACCEPT marked and established traffic.

Chains and sets are named `NPV-...`: not `NP-...`, which the iptables mode owns
and deletes when stale in its full syncs.

The diff (`diff_virtual`): missing VS and real servers are added, changed ones
set, unwanted VS deleted. An unwanted TCP real server with connections is
drained first (weight 0: no new connections, established ones continue) and
deleted on a later sync once it has none, as kube-proxy's graceful termination
does; UDP and SCTP real servers go at once (their conntrack entries are cleaned
by the proxier). A restart diffs against what the kernel holds, so unchanged
virtual and real servers are never touched and live connections survive.

Partial syncs: `IpvsPlanner` keeps the union of all applied fragments with
reference counts (two service ports may share an address or set member); a
partial plan re-renders only the changed services, reads back from the kernel only
their virtual servers (plus those still draining) and changes only what
differs. Bound addresses and set members are not read back in a partial sync:
they are assumed to be what was applied (the periodic full sync re-reads them).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from netplane.kernel.ipset import SavedSet, normalize_member
from netplane.kernel.ipvs import (
    IpvsOp,
    Observed,
    RealServer,
    VirtualServer,
    VirtualServerKey,
)
from netplane.proxy.model import Endpoint, NamespacedName, ServicePort, ServicePortName
from netplane.proxy.selection import Selection
from netplane.proxy.state import ProxyConfig, ProxyState

SCHEDULERS = ("rr", "wrr", "lc", "wlc", "sh", "dh", "sed", "nq")
DEFAULT_SCHEDULER = "rr"
DEVICE = "np-ipvs0"  # kube-proxy's kube-ipvs0
PREFIX = "NPV-"
DRAIN_PROTOCOLS = ("TCP",)  # UDP/SCTP real servers are deleted at once (kube-proxy does the same)

# -- ipsets ----------------------------------------------------------------------------------------
CLUSTER_IP = "NPV-CLUSTER-IP"
EXTERNAL_IP = "NPV-EXTERNAL-IP"
EXTERNAL_IP_LOCAL = "NPV-EXTERNAL-IP-LOCAL"
LOAD_BALANCER = "NPV-LOAD-BALANCER"
LOAD_BALANCER_LOCAL = "NPV-LOAD-BALANCER-LOCAL"
LOAD_BALANCER_FW = "NPV-LOAD-BALANCER-FW"
LB_SOURCE_CIDR = "NPV-LB-SOURCE-CIDR"
HEALTH_CHECK_NODE_PORT = "NPV-HEALTH-CHECK-NODE-PORT"
LOOP_BACK = "NPV-LOOP-BACK"
IPVS_IPS = "NPV-IPVS-IPS"
NO_ENDPOINTS = "NPV-NO-ENDPOINTS"
NO_LOCAL_ENDPOINTS = "NPV-NO-LOCAL-ENDPOINTS"
NODE_PORT_PROTOCOLS = ("TCP", "UDP", "SCTP")


def node_port_set(protocol: str, local: bool) -> str:
    return f"NPV-NODE-PORT-{'LOCAL-' if local else ''}{protocol}"


SET_TYPES: dict[str, str] = {
    CLUSTER_IP: "hash:ip,port",
    EXTERNAL_IP: "hash:ip,port",
    EXTERNAL_IP_LOCAL: "hash:ip,port",
    LOAD_BALANCER: "hash:ip,port",
    LOAD_BALANCER_LOCAL: "hash:ip,port",
    LOAD_BALANCER_FW: "hash:ip,port",
    LB_SOURCE_CIDR: "hash:ip,port,net",
    HEALTH_CHECK_NODE_PORT: "bitmap:port",
    LOOP_BACK: "hash:ip,port,ip",
    IPVS_IPS: "hash:ip",
    NO_ENDPOINTS: "hash:ip,port",
    NO_LOCAL_ENDPOINTS: "hash:ip,port",
    **{node_port_set(p, local): "bitmap:port" for p in NODE_PORT_PROTOCOLS for local in (False, True)},
}
# 10k services x 10 endpoints put 100k members in NPV-LOOP-BACK: far above ipset's default 65536.
MAXELEM = 1 << 20

Member = tuple[str, str]  # (set name, member as `ipset save` prints it)


def create_line(name: str) -> str:
    kind = SET_TYPES[name]
    if kind.startswith("bitmap:port"):
        return f"create {name} {kind} range 0-65535"
    return f"create {name} {kind} family inet hashsize 1024 maxelem {MAXELEM}"


# -- one service port ------------------------------------------------------------------------------
DesiredVS = tuple[VirtualServer, tuple[RealServer, ...]]


@dataclass(frozen=True, slots=True)
class IpvsFragment:
    """Everything one service port contributes to the IPVS mode's kernel state."""

    virtual: Mapping[VirtualServerKey, DesiredVS]
    addresses: tuple[str, ...]
    members: frozenset[Member]


def _reals(endpoints: Iterable[Endpoint]) -> tuple[RealServer, ...]:
    return tuple(sorted({RealServer(e.ip, e.port) for e in endpoints}))


def render_service(svc: ServicePort, sel: Selection, nodeport_addresses: Sequence[str],
                   scheduler: str = DEFAULT_SCHEDULER) -> IpvsFragment:
    """The fragment of one service port; pure."""
    proto = svc.protocol
    p = proto.lower()
    internal = _reals(sel.internal(svc))
    external = _reals(sel.external(svc))
    virtual: dict[VirtualServerKey, DesiredVS] = {}

    def add_vs(address: str, port: int, reals: tuple[RealServer, ...]) -> None:
        key = VirtualServerKey(proto, address, port)
        virtual[key] = (VirtualServer(key, scheduler, svc.affinity_timeout), reals)

    add_vs(svc.cluster_ip, svc.port, internal)
    for ip in (*svc.external_ips, *svc.load_balancer_ips):
        add_vs(ip, svc.port, external)
    if svc.node_port:
        for addr in nodeport_addresses:
            add_vs(addr, svc.node_port, external)

    members: set[Member] = set()
    at = f"{p}:{svc.port}"
    members.add((CLUSTER_IP, f"{svc.cluster_ip},{at}"))
    for ip in svc.external_ips:
        members.add((EXTERNAL_IP_LOCAL if svc.external_policy_local else EXTERNAL_IP, f"{ip},{at}"))
    for ip in svc.load_balancer_ips:
        members.add((LOAD_BALANCER, f"{ip},{at}"))
        if svc.external_policy_local:
            members.add((LOAD_BALANCER_LOCAL, f"{ip},{at}"))
        if svc.load_balancer_source_ranges and external:
            members.add((LOAD_BALANCER_FW, f"{ip},{at}"))
            for cidr in svc.load_balancer_source_ranges:
                members.add((LB_SOURCE_CIDR, normalize_member(f"{ip},{at},{cidr}")))
    if svc.node_port:
        members.add((node_port_set(proto, svc.external_policy_local), str(svc.node_port)))
    if svc.health_check_node_port:
        members.add((HEALTH_CHECK_NODE_PORT, str(svc.health_check_node_port)))
    used = {r.target for r in (*internal, *external)}
    for ip, port in used:
        members.add((LOOP_BACK, f"{ip},{p}:{port},{ip}"))
    addresses = tuple(dict.fromkeys((svc.cluster_ip, *svc.external_ips, *svc.load_balancer_ips)))
    for ip in addresses:
        members.add((IPVS_IPS, ip))

    external_targets = [f"{ip},{at}" for ip in (*svc.external_ips, *svc.load_balancer_ips)]
    if svc.node_port:
        external_targets += [f"{addr},{p}:{svc.node_port}" for addr in nodeport_addresses]
    if not sel.has_any:
        # No endpoint anywhere: every address of the service refuses at once.
        members.update((NO_ENDPOINTS, t) for t in (f"{svc.cluster_ip},{at}", *external_targets))
    else:
        # Endpoints exist, but none that this traffic may use here: drop, so the client retries elsewhere.
        if not internal:
            members.add((NO_LOCAL_ENDPOINTS, f"{svc.cluster_ip},{at}"))
        if not external:
            members.update((NO_LOCAL_ENDPOINTS, t) for t in external_targets)
    return IpvsFragment(virtual=virtual, addresses=addresses, members=frozenset(members))


# -- the union of all fragments --------------------------------------------------------------------
class DesiredIndex:
    """All applied fragments and their union, kept by reference counts so a change costs O(its size).

    When two service ports claim the same virtual server (e.g. a shared external IP and
    port), the smallest service port name wins, whatever the order of events.
    """

    def __init__(self) -> None:
        self.fragments: dict[ServicePortName, IpvsFragment] = {}
        self._virtual: dict[VirtualServerKey, dict[ServicePortName, DesiredVS]] = {}
        self._addresses: Counter[str] = Counter()
        self._members: Counter[Member] = Counter()

    def replace(self, spn: ServicePortName, fragment: IpvsFragment | None) -> None:
        old = self.fragments.pop(spn, None)
        if old is not None:
            for key in old.virtual:
                owners = self._virtual[key]
                del owners[spn]
                if not owners:
                    del self._virtual[key]
            self._addresses.subtract(old.addresses)
            self._members.subtract(old.members)
            for a in old.addresses:
                if self._addresses[a] <= 0:
                    del self._addresses[a]
            for m in old.members:
                if self._members[m] <= 0:
                    del self._members[m]
        if fragment is not None:
            self.fragments[spn] = fragment
            for key, value in fragment.virtual.items():
                self._virtual.setdefault(key, {})[spn] = value
            self._addresses.update(fragment.addresses)
            self._members.update(fragment.members)

    def virtual(self, key: VirtualServerKey) -> DesiredVS | None:
        owners = self._virtual.get(key)
        return owners[min(owners)] if owners else None

    def virtual_keys(self) -> Collection[VirtualServerKey]:
        return self._virtual.keys()

    def has_address(self, address: str) -> bool:
        return address in self._addresses

    def addresses(self) -> set[str]:
        return set(self._addresses)

    def has_member(self, member: Member) -> bool:
        return member in self._members

    def members(self) -> set[Member]:
        return set(self._members)

    def real_server_count(self) -> int:
        return sum(len(owners[min(owners)][1]) for owners in self._virtual.values())


# -- the diff --------------------------------------------------------------------------------------
_OP_ORDER = {"add-service": 0, "set-service": 1, "add-dest": 2, "set-dest": 3, "del-dest": 4, "del-service": 5}


def order_ops(ops: Iterable[IpvsOp]) -> list[IpvsOp]:
    """Additions before deletions (a VS is never without its new real servers longer than needed)."""
    return sorted(ops, key=lambda op: (_OP_ORDER[op.kind], op.service.key, op.dest or RealServer("", 0)))


def diff_virtual(desired: Mapping[VirtualServerKey, DesiredVS | None], observed: Observed,
                 scope: Iterable[VirtualServerKey]) -> tuple[list[IpvsOp], set[VirtualServerKey]]:
    """The IPVS operations that turn `observed` into `desired` over the keys in `scope`.

    Returns (operations in apply order, the keys of virtual servers still draining).
    `desired` maps a key to None (or lacks it) when the VS should not exist.
    """
    ops: list[IpvsOp] = []
    draining: set[VirtualServerKey] = set()
    for key in scope:
        want = desired.get(key)
        have = observed.get(key)
        if want is None:
            if have is not None:
                ops.append(IpvsOp("del-service", have[0]))
            continue
        vs, reals = want
        if have is None:
            ops.append(IpvsOp("add-service", vs))
            ops.extend(IpvsOp("add-dest", vs, r) for r in reals)
            continue
        have_vs, have_reals = have
        if have_vs != vs:
            ops.append(IpvsOp("set-service", vs))
        wanted = {r.target: r for r in reals}
        for target, r in wanted.items():
            current = have_reals.get(target)
            if current is None:
                ops.append(IpvsOp("add-dest", vs, r))
            elif current.weight != r.weight or not current.masquerade:
                ops.append(IpvsOp("set-dest", vs, r))
        for target, current in have_reals.items():
            if target in wanted:
                continue
            if key.protocol in DRAIN_PROTOCOLS and current.connections > 0:
                if current.weight != 0 or not current.masquerade:
                    ops.append(IpvsOp("set-dest", vs, RealServer(current.address, current.port, 0)))
                draining.add(key)
            else:
                ops.append(IpvsOp("del-dest", vs, RealServer(current.address, current.port, current.weight)))
    return order_ops(ops), draining


# -- the fixed iptables rules ----------------------------------------------------------------------
NAT_CHAINS = ("NPV-SERVICES", "NPV-NODE-PORT", "NPV-LOAD-BALANCER", "NPV-MARK-MASQ", "NPV-POSTROUTING",
              "NPV-CANARY")
FILTER_CHAINS = ("NPV-FIREWALL", "NPV-SOURCE-RANGES", "NPV-SERVICES-FILTER", "NPV-NODE-PORT", "NPV-FORWARD",
                 "NPV-CANARY")
CANARY = "NPV-CANARY"
TABLES = ("filter", "nat")


@dataclass(frozen=True, slots=True)
class Jump:
    """A rule in a built-in chain that hands traffic to one of ours."""

    table: str
    chain: str
    rule: str  # the arguments after `-A chain`; carries a unique comment

    @property
    def comment(self) -> str:
        return self.rule.split('--comment "', 1)[1].split('"', 1)[0]

    def found_in(self, save_lines: Iterable[str]) -> bool:
        target = self.rule.rsplit(" ", 1)[1]
        prefix = f"-A {self.chain} "
        return any(line.startswith(prefix) and f"-j {target}" in line and self.comment in line
                   for line in save_lines)


_NEW = "-m conntrack --ctstate NEW"
JUMPS: tuple[Jump, ...] = (
    Jump("filter", "INPUT", f'{_NEW} -m comment --comment "netplane ipvs firewall" -j NPV-FIREWALL'),
    Jump("filter", "INPUT", f'{_NEW} -m comment --comment "netplane ipvs services" -j NPV-SERVICES-FILTER'),
    Jump("filter", "INPUT", '-m comment --comment "netplane ipvs nodeports" -j NPV-NODE-PORT'),
    Jump("filter", "FORWARD", '-m comment --comment "netplane ipvs forwarding" -j NPV-FORWARD'),
    Jump("nat", "PREROUTING", '-m comment --comment "netplane ipvs services" -j NPV-SERVICES'),
    Jump("nat", "OUTPUT", '-m comment --comment "netplane ipvs services" -j NPV-SERVICES'),
    Jump("nat", "POSTROUTING", '-m comment --comment "netplane ipvs postrouting" -j NPV-POSTROUTING'),
)


def _c(text: str) -> str:
    return f'-m comment --comment "{text}"'


def iptables_rules(config: ProxyConfig) -> dict[tuple[str, str], tuple[str, ...]]:
    """The content of every chain of ours; depends on the configuration only, never on services."""
    mark = config.masq_mark
    masq_src = "" if config.masquerade_all else f"! -s {config.cluster_cidr} "
    nodeport_ips = config.nodeport_ips()
    if nodeport_ips is None:
        to_nodeports: tuple[str, ...] = (
            f"-A NPV-SERVICES {_c('nodeports')} ! -d 127.0.0.0/8 -m addrtype --dst-type LOCAL -j NPV-NODE-PORT",)
    else:
        to_nodeports = tuple(f"-A NPV-SERVICES {_c('nodeports')} -d {ip}/32 -j NPV-NODE-PORT"
                             for ip in nodeport_ips)
    nat_nodeport: list[str] = []
    filter_nodeport: list[str] = []
    for proto in NODE_PORT_PROTOCOLS:
        p = proto.lower()
        local, cluster = node_port_set(proto, True), node_port_set(proto, False)
        nat_nodeport.append(f"-A NPV-NODE-PORT -p {p} -m set --match-set {local} dst -j RETURN")
        nat_nodeport.append(f"-A NPV-NODE-PORT -p {p} -m set --match-set {cluster} dst -j NPV-MARK-MASQ")
        filter_nodeport.append(f"-A NPV-NODE-PORT -p {p} -m set --match-set {local} dst -j ACCEPT")
        filter_nodeport.append(f"-A NPV-NODE-PORT -p {p} -m set --match-set {cluster} dst -j ACCEPT")
    filter_nodeport.append(f"-A NPV-NODE-PORT {_c('health check node ports')} -p tcp "
                           f"-m set --match-set {HEALTH_CHECK_NODE_PORT} dst -j ACCEPT")
    return {
        ("nat", "NPV-SERVICES"): (
            f"-A NPV-SERVICES {_c('off-cluster source to a cluster IP')} {masq_src}"
            f"-m set --match-set {CLUSTER_IP} dst,dst -j NPV-MARK-MASQ",
            f"-A NPV-SERVICES -m set --match-set {CLUSTER_IP} dst,dst -j ACCEPT",
            f"-A NPV-SERVICES {_c('external IP')} -m set --match-set {EXTERNAL_IP} dst,dst -j NPV-MARK-MASQ",
            f"-A NPV-SERVICES -m set --match-set {EXTERNAL_IP} dst,dst -j ACCEPT",
            f"-A NPV-SERVICES -m set --match-set {EXTERNAL_IP_LOCAL} dst,dst -j ACCEPT",
            f"-A NPV-SERVICES -m set --match-set {LOAD_BALANCER} dst,dst -j NPV-LOAD-BALANCER",
            f"-A NPV-SERVICES -m set --match-set {LOAD_BALANCER} dst,dst -j ACCEPT",
            *to_nodeports,
        ),
        ("nat", "NPV-NODE-PORT"): tuple(nat_nodeport),
        ("nat", "NPV-LOAD-BALANCER"): (
            f"-A NPV-LOAD-BALANCER -m set --match-set {LOAD_BALANCER_LOCAL} dst,dst -j RETURN",
            "-A NPV-LOAD-BALANCER -j NPV-MARK-MASQ",
        ),
        ("nat", "NPV-MARK-MASQ"): (f"-A NPV-MARK-MASQ -j MARK --or-mark {mark}",),
        ("nat", "NPV-POSTROUTING"): (
            f"-A NPV-POSTROUTING {_c('hairpin: an endpoint reaching itself')} "
            f"-m set --match-set {LOOP_BACK} dst,dst,src -j MASQUERADE",
            f"-A NPV-POSTROUTING -m mark ! --mark {mark}/{mark} -j RETURN",
            f"-A NPV-POSTROUTING -j MARK --xor-mark {mark}",
            f"-A NPV-POSTROUTING {_c('service traffic requiring SNAT')} -j MASQUERADE --random-fully",
        ),
        ("nat", CANARY): (),
        ("filter", "NPV-FIREWALL"): (
            f"-A NPV-FIREWALL -m set --match-set {LOAD_BALANCER_FW} dst,dst -j NPV-SOURCE-RANGES",
        ),
        ("filter", "NPV-SOURCE-RANGES"): (
            f"-A NPV-SOURCE-RANGES -m set --match-set {LB_SOURCE_CIDR} dst,dst,src -j RETURN",
            f"-A NPV-SOURCE-RANGES {_c('load balancer source ranges')} -j DROP",
        ),
        ("filter", "NPV-SERVICES-FILTER"): (
            f"-A NPV-SERVICES-FILTER {_c('service has no endpoints')} "
            f"-m set --match-set {NO_ENDPOINTS} dst,dst -j REJECT",
            f"-A NPV-SERVICES-FILTER {_c('service has no local endpoints')} "
            f"-m set --match-set {NO_LOCAL_ENDPOINTS} dst,dst -j DROP",
            f"-A NPV-SERVICES-FILTER -m set --match-set {CLUSTER_IP} dst,dst -j RETURN",
            f"-A NPV-SERVICES-FILTER -m set --match-set {EXTERNAL_IP} dst,dst -j RETURN",
            f"-A NPV-SERVICES-FILTER -m set --match-set {EXTERNAL_IP_LOCAL} dst,dst -j RETURN",
            f"-A NPV-SERVICES-FILTER -m set --match-set {LOAD_BALANCER} dst,dst -j RETURN",
            f"-A NPV-SERVICES-FILTER {_c('other ports of service addresses')} "
            f"-m set --match-set {IPVS_IPS} dst -j REJECT",
        ),
        ("filter", "NPV-NODE-PORT"): tuple(filter_nodeport),
        ("filter", "NPV-FORWARD"): (
            f"-A NPV-FORWARD {_c('forwarding rules')} -m mark --mark {mark}/{mark} -j ACCEPT",
            f"-A NPV-FORWARD {_c('forwarding conntrack rule')} -m conntrack --ctstate RELATED,ESTABLISHED "
            "-j ACCEPT",
        ),
        ("filter", CANARY): (),
    }


def render_iptables(config: ProxyConfig, saved: Mapping[str, str] | None = None) -> str:
    """One `iptables-restore --noflush` text: our chains rewritten, missing jumps inserted, stale ones deleted.

    `saved` maps a table to its `iptables-save` text (None: insert no jumps, delete nothing).
    """
    rules = iptables_rules(config)
    parts: list[str] = []
    for table in TABLES:
        chains = NAT_CHAINS if table == "nat" else FILTER_CHAINS
        decl = [f":{c} - [0:0]" for c in chains]
        body = [r for c in chains for r in rules[(table, c)]]
        deletes: list[str] = []
        if saved is not None:
            text = saved.get(table, "")
            lines = [ln for ln in text.splitlines() if ln.startswith("-A ")]
            # Inserted at position 1 in reverse order: they end up in JUMPS order.
            body += [f"-I {j.chain} 1 {j.rule}" for j in reversed(JUMPS) if j.table == table
                     and not j.found_in(lines)]
            present = {ln[1:].split()[0] for ln in text.splitlines() if ln.startswith(":")}
            for chain in sorted(present):
                if chain.startswith(PREFIX) and chain not in chains:
                    decl.append(f":{chain} - [0:0]")
                    deletes.append(f"-X {chain}")
        parts += [f"*{table}", *decl, *body, *deletes, "COMMIT"]
    return "\n".join(parts) + "\n"


# -- the plan --------------------------------------------------------------------------------------
@dataclass(slots=True)
class IpvsPlan:
    full: bool
    ipvs_ops: list[IpvsOp]
    bind: list[str]
    unbind: list[str]
    ipset_text: str  # creates (full), adds, dels: one `ipset restore -exist`
    iptables_text: str  # "" in partial syncs: the rules do not depend on services
    draining: set[VirtualServerKey]
    nodeport_addresses: tuple[str, ...]
    rule_counts: dict[str, int] = field(default_factory=dict)


def _ipset_text(creates: Iterable[str], add: Iterable[Member], delete: Iterable[Member]) -> str:
    lines = [create_line(name) for name in creates]
    lines += [f"add {s} {m}" for s, m in sorted(add)]
    lines += [f"del {s} {m}" for s, m in sorted(delete)]
    return "\n".join(lines) + "\n" if lines else ""


Reader = Callable[[Collection[VirtualServerKey] | None], Observed]


class IpvsPlanner:
    """Plans syncs and remembers what was applied, so that the next plan can be partial."""

    def __init__(self, scheduler: str = DEFAULT_SCHEDULER) -> None:
        if scheduler not in SCHEDULERS:
            raise ValueError(f"unknown IPVS scheduler {scheduler!r} (expected one of {', '.join(SCHEDULERS)})")
        self.scheduler = scheduler
        self._applied: DesiredIndex | None = None
        self._nodeport_addresses: tuple[str, ...] = ()
        self.draining: set[VirtualServerKey] = set()

    @property
    def can_partial(self) -> bool:
        return self._applied is not None

    def reset(self) -> None:
        self._applied = None
        self.draining = set()

    def _render(self, state: ProxyState, spn: ServicePortName, nodeport_addresses: Sequence[str]) -> IpvsFragment:
        return render_service(state.services[spn], state.selection(spn), nodeport_addresses, self.scheduler)

    def plan_full(self, state: ProxyState, nodeport_addresses: Sequence[str], observed: Observed,
                  bound: Collection[str], saved_sets: Mapping[str, SavedSet],
                  saved_iptables: Mapping[str, str] | None) -> tuple[IpvsPlan, DesiredIndex]:
        """Everything from scratch, against what the kernel holds now."""
        nodeports = tuple(nodeport_addresses)
        index = DesiredIndex()
        for spn in sorted(state.services):
            index.replace(spn, self._render(state, spn, nodeports))
        keys = set(index.virtual_keys()) | set(observed)
        desired = {k: index.virtual(k) for k in keys}
        ops, draining = diff_virtual(desired, observed, sorted(keys))
        want_addrs = index.addresses()
        have_members = {(name, m) for name, s in saved_sets.items() if name in SET_TYPES for m in s.members}
        want_members = index.members()
        # Creating every set each full sync is harmless (`-exist`) and repairs a deleted one.
        text = _ipset_text(sorted(SET_TYPES), want_members - have_members, have_members - want_members)
        plan = IpvsPlan(
            full=True, ipvs_ops=ops, bind=sorted(want_addrs - set(bound)), unbind=sorted(set(bound) - want_addrs),
            ipset_text=text, iptables_text=render_iptables(state.config, saved_iptables),
            draining=draining, nodeport_addresses=nodeports,
        )
        plan.rule_counts = _counts(index)
        return plan, index

    def plan_partial(self, state: ProxyState, changed: set[NamespacedName], read: Reader) -> IpvsPlan:
        """Only the changed services (and virtual servers still draining). Mutates the applied index:
        if applying the plan fails, the caller must `reset()` (the proxier does)."""
        index = self._applied
        assert index is not None
        nodeports = self._nodeport_addresses
        spns = {spn for spn in index.fragments if spn.service in changed}
        spns |= {spn for spn in state.services if spn.service in changed}
        old = {spn: index.fragments.get(spn) for spn in spns}
        new = {spn: (self._render(state, spn, nodeports) if spn in state.services else None) for spn in spns}
        frags = [f for f in (*old.values(), *new.values()) if f is not None]
        keys = {k for f in frags for k in f.virtual} | self.draining
        addrs = {a for f in frags for a in f.addresses}
        members = {m for f in frags for m in f.members}
        had_addrs = {a for a in addrs if index.has_address(a)}
        had_members = {m for m in members if index.has_member(m)}
        for spn in sorted(spns):
            index.replace(spn, new[spn])
        observed = read(sorted(keys)) if keys else {}
        desired = {k: index.virtual(k) for k in keys}
        ops, draining = diff_virtual(desired, observed, sorted(keys))
        has_addrs = {a for a in addrs if index.has_address(a)}
        has_members = {m for m in members if index.has_member(m)}
        plan = IpvsPlan(
            full=False, ipvs_ops=ops, bind=sorted(has_addrs - had_addrs), unbind=sorted(had_addrs - has_addrs),
            ipset_text=_ipset_text((), has_members - had_members, had_members - has_members), iptables_text="",
            draining=draining, nodeport_addresses=nodeports,
        )
        plan.rule_counts = _counts(index)
        return plan

    def commit(self, plan: IpvsPlan, index: DesiredIndex | None = None) -> None:
        """The plan was applied: remember it (a full plan brings its new index)."""
        if index is not None:
            self._applied = index
        self._nodeport_addresses = plan.nodeport_addresses
        self.draining = plan.draining


def _counts(index: DesiredIndex) -> dict[str, int]:
    return {
        "virtual_servers": len(index.virtual_keys()),
        "real_servers": index.real_server_count(),
        "addresses": len(index.addresses()),
        "set_members": len(index.members()),
    }


def nodeport_addresses(config: ProxyConfig, local: Iterable[tuple[str, str]], device: str = DEVICE) -> tuple[str, ...]:
    """Addresses that get NodePort virtual servers: --nodeport-addresses' node IPs, or every local IPv4
    address except loopback and the service device's (kube-proxy does the same)."""
    explicit = config.nodeport_ips()
    if explicit is not None:
        return tuple(sorted(set(explicit)))
    return tuple(sorted({addr for dev, addr in local if dev != device and not addr.startswith("127.")}))
