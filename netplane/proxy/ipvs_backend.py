"""The IPVS backend: plugs the IPVS planner (netplane/proxy/ipvs.py) into the proxier's `Backend` boundary.

One sync, in an order that never leaves a reachable address without its rules:
ipset members (and, in a full sync, the sets themselves), then the fixed iptables
rules (full syncs only: they do not depend on services), then IPVS additions and
changes, then the new addresses on the service device, then IPVS deletions, then
addresses that are no longer wanted. Every step is idempotent, so a failure
half-way is repaired by the full sync that the proxier schedules next.

A full sync reads the kernel's virtual servers, the device's addresses, our ipsets
and the iptables tables first, so a restarted proxy changes only what differs.

Sysctls (kube-proxy's for IPVS mode), set before the first sync's changes:
- net.ipv4.vs.conntrack=1: IPVS connections get conntrack entries, without which
  the masquerade rules in nat POSTROUTING never see IPVS-forwarded packets;
- net.ipv4.vs.expire_nodest_conn=1: connections to a deleted real server end at
  once instead of blackholing until they time out;
- net.ipv4.vs.expire_quiescent_template=1: ClientIP persistence stops pinning
  clients to a drained (weight 0) real server;
- net.ipv4.conf.all.arp_ignore=1, arp_announce=2: the node does not answer ARP
  for service addresses on its real interfaces.
"""

from __future__ import annotations

from netplane.kernel.ipset import IpsetKernel, parse_save
from netplane.kernel.iptables import IptablesKernel
from netplane.kernel.ipvs import IpvsKernel, IpvsOp
from netplane.proxy.ipvs import (
    CANARY,
    DEFAULT_SCHEDULER,
    DEVICE,
    PREFIX,
    TABLES,
    IpvsPlan,
    IpvsPlanner,
    nodeport_addresses,
)
from netplane.proxy.model import NamespacedName
from netplane.proxy.proxier import BackendResult
from netplane.proxy.state import ProxyState

SYSCTLS = {
    "net.ipv4.vs.conntrack": "1",
    "net.ipv4.vs.expire_nodest_conn": "1",
    "net.ipv4.vs.expire_quiescent_template": "1",
    "net.ipv4.conf.all.arp_ignore": "1",
    "net.ipv4.conf.all.arp_announce": "2",
}


class IpvsBackend:
    mode = "ipvs"

    def __init__(self, ipvs: IpvsKernel, ipset: IpsetKernel, iptables: IptablesKernel,
                 scheduler: str = DEFAULT_SCHEDULER, device: str = DEVICE) -> None:
        self.ipvs = ipvs
        self.ipset = ipset
        self.iptables = iptables
        self.device = device
        self.planner = IpvsPlanner(scheduler)
        self.last_plan: IpvsPlan | None = None
        self._sysctls_set = False

    def sync(self, state: ProxyState, changed: set[NamespacedName] | None) -> BackendResult:
        if changed is None or not self.planner.can_partial:
            self.ipvs.ensure_device()
            observed = self.ipvs.observe(None)  # first: opening IPVS netlink fails early without ip_vs
            self._set_sysctls()
            plan, index = self.planner.plan_full(
                state,
                nodeport_addresses(state.config, self.ipvs.local_addresses(), self.device),
                observed,
                self.ipvs.bound_addresses(),
                parse_save(self.ipset.save(), PREFIX),
                {t: self.iptables.save(t) for t in TABLES},
            )
        else:
            plan, index = self.planner.plan_partial(state, changed, self.ipvs.observe), None
        self._apply(plan)
        self.planner.commit(plan, index)
        self.last_plan = plan
        return BackendResult(full=plan.full, rule_counts=plan.rule_counts)

    def _set_sysctls(self) -> None:
        if not self._sysctls_set:
            self.ipvs.ensure_sysctls(SYSCTLS)
            self._sysctls_set = True

    def _apply(self, plan: IpvsPlan) -> None:
        if plan.ipset_text:
            self.ipset.restore(plan.ipset_text)
        if plan.iptables_text:
            self.iptables.restore(plan.iptables_text)
        removals = ("del-dest", "del-service")
        additions: list[IpvsOp] = [op for op in plan.ipvs_ops if op.kind not in removals]
        deletions: list[IpvsOp] = [op for op in plan.ipvs_ops if op.kind in removals]
        self.ipvs.apply(additions)
        self.ipvs.bind(plan.bind)
        self.ipvs.apply(deletions)
        self.ipvs.unbind(plan.unbind)

    def rules_present(self) -> bool:
        # One table's canary: each look costs a process (iptables -S), and both tables go together.
        return self.ipvs.device_present() and self.iptables.chain_exists("nat", CANARY)

    def reset(self) -> None:
        self.planner.reset()
        self._sysctls_set = False
