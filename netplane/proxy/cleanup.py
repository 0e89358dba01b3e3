"""Removing what netplane's proxy modes leave in a network namespace.

A node switched from one proxy mode to another must not keep the previous mode's
rules: they would keep answering for services with stale endpoints (an iptables
DNAT runs before IPVS sees a packet; a REJECT for "no endpoints" stays after the
service got some). As kube-proxy does, `netplane proxy --mode X` removes the other
modes' state at start-up, and `netplane proxy --cleanup` removes all of it and exits.

What each mode owns, and nothing else is touched:
- iptables: the `NP-` chains of the filter and nat tables (netplane/proxy/iptables.py),
  and every rule elsewhere that jumps to one of them;
- nftables: the table `ip netplane` (netplane/proxy/nftables.py). The CNI plugin's
  `inet netplane_cni` is another table and is left alone;
- ipvs: the `NPV-` chains and the jumps to them, the `NPV-` ipsets, the service device
  (np-ipvs0), and the IPVS virtual servers that are netplane's: on an address of that
  device, listed in its ClusterIP / external IP / load-balancer sets, or on a node
  address with a port of its NodePort sets. Other virtual servers stay (kube-proxy's
  cleanup flushes the whole IPVS table; we do not know that nobody else uses it).

Only the iptables binaries the proxy is configured with are looked at (--iptables-backend,
the one every mode uses), as kube-proxy cleans through its own iptables interface.
Every step is idempotent: state already gone is success, so a start-up after a clean
switch costs a few reads and changes nothing. When the kernel has no IPVS module
loaded there can be no virtual server, and it is not loaded for the look.

The pure parts (which rules and virtual servers are ours) are tested without a kernel;
the `Cleaner` only reads and applies through netplane/kernel/.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from netplane.kernel.ipset import SavedSet

log = logging.getLogger("netplane.proxy")

MODES = ("iptables", "nftables", "ipvs")
IPTABLES_PREFIX = "NP-"  # netplane/proxy/iptables.py PREFIX
IPVS_PREFIX = "NPV-"  # netplane/proxy/ipvs.py PREFIX
TABLES = ("filter", "nat")
_TARGET = re.compile(r"\s-[jg]\s+(\S+)")


# -- pure: what is ours --------------------------------------------------------------------------
def iptables_cleanup_text(saved: Mapping[str, str], prefix: str) -> tuple[str, list[str]]:
    """The `iptables-restore --noflush` text that removes our chains (names starting with `prefix`) and
    every rule of another chain that jumps to one of them; and what it removes, for the log.

    `saved` maps a table to its `iptables-save` text. Declaring a chain flushes it, so our chains'
    references to each other are gone before the `-X` lines; the jumps are deleted by their exact
    saved spelling. "" when nothing of ours is there."""
    parts: list[str] = []
    removed: list[str] = []
    for table in sorted(saved):
        text = saved[table]
        chains = sorted({ln[1:].split()[0] for ln in text.splitlines() if ln.startswith(":")
                         and ln[1:].split()[0].startswith(prefix)})
        jumps = []
        for line in text.splitlines():
            if not line.startswith("-A "):
                continue
            chain = line.split()[1]
            match = _TARGET.search(line)
            if chain.startswith(prefix) or match is None or not match.group(1).startswith(prefix):
                continue
            jumps.append("-D " + line[3:])
            removed.append(f"iptables {table} rule: {line}")
        if not chains and not jumps:
            continue
        removed += [f"iptables {table} chain {c}" for c in chains]
        parts += [f"*{table}", *(f":{c} - [0:0]" for c in chains), *jumps, *(f"-X {c}" for c in chains), "COMMIT"]
    return ("\n".join(parts) + "\n" if parts else ""), removed


ServiceKey = tuple[str, str, int]  # (protocol "TCP"|"UDP"|"SCTP", address, port): a virtual server


def owned_virtual_servers(keys: Iterable[ServiceKey], device_addresses: Collection[str],
                          sets: Mapping[str, SavedSet], node_addresses: Collection[str]) -> list[ServiceKey]:
    """The virtual servers netplane's IPVS mode made, among `keys` (sorted).

    A virtual server is ours when its address is on our service device, when our sets of service
    addresses list its (address, protocol, port), or when it is on a node address and our NodePort
    sets list its port for its protocol."""
    from netplane.proxy import ipvs

    listed: set[ServiceKey] = set()
    for name in (ipvs.CLUSTER_IP, ipvs.EXTERNAL_IP, ipvs.EXTERNAL_IP_LOCAL, ipvs.LOAD_BALANCER):
        for member in sets.get(name, SavedSet(name, "")).members:
            address, _, rest = member.partition(",")
            proto, _, port = rest.partition(":")
            if port.isdigit():
                listed.add((proto.upper(), address, int(port)))
    node_ports: set[tuple[str, int]] = set()
    for proto in ipvs.NODE_PORT_PROTOCOLS:
        for local in (False, True):
            name = ipvs.node_port_set(proto, local)
            node_ports |= {(proto, int(m)) for m in sets.get(name, SavedSet(name, "")).members if m.isdigit()}
    return sorted(k for k in keys if k[1] in device_addresses or k in listed
                  or (k[1] in node_addresses and (k[0], k[2]) in node_ports))


# -- the kernel, as the cleaner sees it -------------------------------------------------------------
class CleanupKernel(Protocol):
    """What cleaning needs; `KernelAccess` is the real one (netplane/kernel/), tests use a fake."""

    def iptables_save(self, table: str) -> str: ...

    def iptables_restore(self, text: str) -> None: ...

    def nft_table_present(self) -> bool: ...

    def nft_delete_table(self) -> None: ...

    def ipset_names(self, prefix: str) -> list[str]: ...

    def ipset_save(self) -> str: ...

    def ipset_destroy(self, names: list[str]) -> None: ...

    def ipvs_loaded(self) -> bool: ...

    def ipvs_services(self) -> list[ServiceKey]: ...

    def ipvs_delete(self, keys: list[ServiceKey]) -> None: ...

    def device_addresses(self) -> set[str] | None: ...  # None: there is no service device

    def node_addresses(self) -> set[str]: ...

    def delete_device(self) -> None: ...


class KernelAccess:
    """`CleanupKernel` in one network namespace (None: the current one), through netplane/kernel/."""

    def __init__(self, netns: str | None = None, iptables_backend: str = "nft") -> None:
        from netplane.kernel.ipset import Ipset
        from netplane.kernel.iptables import Iptables

        self.netns = netns
        self._iptables = Iptables(netns=netns, backend=iptables_backend)
        self._ipset = Ipset(netns)

    def iptables_save(self, table: str) -> str:
        # Without the tools no mode could have made rules through them: nothing to look at.
        if shutil.which(f"iptables-{self._iptables.backend}-save") is None:
            return ""
        return self._iptables.save(table)

    def iptables_restore(self, text: str) -> None:
        self._iptables.restore(text)

    def _nft(self) -> Any:
        from netplane.kernel.nftables import nft_kernel

        return nft_kernel(self.netns)

    def nft_table_present(self) -> bool:
        from netplane.kernel.nftables import Nft
        from netplane.proxy import nftables

        kernel = self._nft()
        if isinstance(kernel, Nft) and shutil.which("nft") is None:
            return False  # neither libnftables nor nft: the nftables mode cannot have run here
        try:
            return any(kernel.objects(nftables.FAMILY, nftables.TABLE).values())
        finally:
            getattr(kernel, "close", lambda: None)()

    def nft_delete_table(self) -> None:
        from netplane.proxy import nftables

        kernel = self._nft()
        try:
            # Adding first makes the delete succeed whether or not the table exists: one idempotent transaction.
            kernel.apply(f"add table {nftables.T}\ndelete table {nftables.T}\n")
        finally:
            getattr(kernel, "close", lambda: None)()

    def ipset_names(self, prefix: str) -> list[str]:
        return self._ipset.names(prefix)

    def ipset_save(self) -> str:
        return self._ipset.save()

    def ipset_destroy(self, names: list[str]) -> None:
        self._ipset.destroy(names)

    def ipvs_loaded(self) -> bool:
        # Opening IPVS generic netlink would load ip_vs where it is a module: look without touching it.
        # /proc/net/ip_vs exists in every namespace once the module is in.
        return os.path.exists("/proc/net/ip_vs")

    def _node(self) -> Any:
        from netplane.kernel.ipvs import IpvsNode
        from netplane.proxy.ipvs import DEVICE

        return IpvsNode(DEVICE, self.netns)

    def ipvs_services(self) -> list[ServiceKey]:
        return [(k.protocol, k.address, k.port) for k in self._node().observe(None)]

    def ipvs_delete(self, keys: list[ServiceKey]) -> None:
        from netplane.kernel.ipvs import IpvsOp, VirtualServer, VirtualServerKey

        self._node().apply([IpvsOp("del-service", VirtualServer(VirtualServerKey(*k))) for k in keys])

    def device_addresses(self) -> set[str] | None:
        node = self._node()
        return node.bound_addresses() if node.device_present() else None

    def node_addresses(self) -> set[str]:
        return {address for _, address in self._node().local_addresses()}

    def delete_device(self) -> None:
        from netplane.kernel.ipvs import ServiceDevice
        from netplane.proxy.ipvs import DEVICE

        with ServiceDevice(DEVICE, self.netns) as dev:
            dev.delete()


# -- the cleaner -----------------------------------------------------------------------------------
@dataclass
class CleanupReport:
    removed: list[str] = field(default_factory=list)  # what was there and is gone, one line each
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors


class Cleaner:
    def __init__(self, kernel: CleanupKernel) -> None:
        self.kernel = kernel

    def _step(self, report: CleanupReport, what: str, fn: Callable[[], list[str]]) -> None:
        """One independent step: a failure is reported and the other steps still run."""
        try:
            report.removed += fn()
        except Exception as e:
            report.errors.append(f"{what}: {e}")

    def _iptables(self, prefix: str) -> list[str]:
        saved = {t: self.kernel.iptables_save(t) for t in TABLES}
        text, removed = iptables_cleanup_text(saved, prefix)
        if text:
            self.kernel.iptables_restore(text)
        return removed

    def _nftables(self) -> list[str]:
        present = self.kernel.nft_table_present()
        if not present:
            return []
        self.kernel.nft_delete_table()
        return ["nftables table ip netplane"]

    def _ipvs_servers(self) -> list[str]:
        if not self.kernel.ipvs_loaded():
            return []
        keys = self.kernel.ipvs_services()
        if not keys:
            return []
        from netplane.kernel.ipset import parse_save

        device = self.kernel.device_addresses() or set()
        try:
            sets = parse_save(self.kernel.ipset_save(), IPVS_PREFIX)
        except Exception as e:  # no ipset binary: the device's addresses still say most of it
            log.warning("cannot read ipsets to find netplane's NodePort virtual servers: %s", e)
            sets = {}
        ours = owned_virtual_servers(keys, device, sets, self.kernel.node_addresses() - device)
        if ours:
            self.kernel.ipvs_delete(ours)
        return [f"IPVS virtual server {p.lower()}:{a}:{port}" for p, a, port in ours]

    def _device(self) -> list[str]:
        if self.kernel.device_addresses() is None:
            return []
        from netplane.proxy.ipvs import DEVICE

        self.kernel.delete_device()
        return [f"service device {DEVICE}"]

    def _ipsets(self) -> list[str]:
        names = self.kernel.ipset_names(IPVS_PREFIX)
        if names:
            self.kernel.ipset_destroy(names)
        return [f"ipset {n}" for n in names]

    def clean(self, modes: Iterable[str]) -> CleanupReport:
        """Remove the state of the given modes."""
        wanted = set(modes)
        unknown = wanted - set(MODES)
        if unknown:
            raise ValueError(f"unknown proxy modes {sorted(unknown)}")
        report = CleanupReport()
        if "iptables" in wanted:
            self._step(report, "iptables mode's rules", lambda: self._iptables(IPTABLES_PREFIX))
        if "nftables" in wanted:
            self._step(report, "nftables mode's table", self._nftables)
        if "ipvs" in wanted:
            # Virtual servers are recognised by the sets and the device, so they go first; the sets last,
            # once no rule references them.
            self._step(report, "IPVS virtual servers", self._ipvs_servers)
            self._step(report, "IPVS mode's rules", lambda: self._iptables(IPVS_PREFIX))
            self._step(report, "IPVS service device", self._device)
            if not any(e.startswith("IPVS mode's rules") for e in report.errors):
                self._step(report, "IPVS mode's ipsets", self._ipsets)
        return report

    def clean_other_modes(self, mode: str) -> CleanupReport:
        """What a proxy in `mode` removes at start-up: everything of the other modes."""
        if mode not in MODES:
            raise ValueError(f"unknown proxy mode {mode!r}")
        return self.clean(m for m in MODES if m != mode)


def cleanup(netns: str | None = None, iptables_backend: str = "nft", keep_mode: str | None = None) -> CleanupReport:
    """Remove netplane's proxy state from a namespace: all of it, or all but `keep_mode`'s."""
    cleaner = Cleaner(KernelAccess(netns, iptables_backend))
    return cleaner.clean_other_modes(keep_mode) if keep_mode else cleaner.clean(MODES)


class StartupCleanup:
    """A proxier listener that removes the other modes' state once, after the first successful sync.

    After, not before: the old mode's rules keep serving until the new mode's are in place (both
    answering the same services for a moment is harmless), so a switch never leaves a node without
    service routing while the state server is slow to answer. A failed cleanup is retried after the
    next sync."""

    ATTEMPTS = 5

    def __init__(self, mode: str, netns: str | None = None, iptables_backend: str = "nft",
                 cleaner: Cleaner | None = None) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown proxy mode {mode!r}")
        self.mode = mode
        self.cleaner = cleaner or Cleaner(KernelAccess(netns, iptables_backend))
        self.attempts = 0
        self.done = False

    def queued(self) -> None:
        pass

    def synced(self, state: object) -> None:
        if self.done or self.attempts >= self.ATTEMPTS:
            return
        self.attempts += 1
        report = self.cleaner.clean_other_modes(self.mode)
        for item in report.removed:
            log.info("removed another proxy mode's state: %s", item)
        last = self.attempts >= self.ATTEMPTS
        for error in report.errors:
            log.log(logging.ERROR if last else logging.WARNING, "cannot remove another proxy mode's state (%s): %s",
                    "giving up: run `netplane proxy --cleanup`" if last else "retrying after the next sync", error)
        self.done = report.ok
