"""The mode-agnostic proxier: change tracking, the one sync function, and the backend boundary.

A `Backend` turns the desired `ProxyState` into kernel state for one mode. It is
told which services changed (or None for a full sync) and must apply atomically;
it keeps whatever memory of the applied state it needs for partial syncs and
forgets it on `reset()`. The iptables and nftables backends here are a pure
renderer plus one kernel call; an IPVS backend (desired virtual servers diffed
against the kernel) implements the same three methods and reuses everything
else: trackers, endpoint selection, conntrack cleanup, metrics, health, runner.

`Proxier.sync()` is kube-proxy's syncProxyRules: take the lock, apply pending
changes, have the backend render and apply, and on failure reset the backend so
the retry is a full sync. A full sync is also done first, periodically, and when
the backend reports that its rules were removed by someone else.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from netplane.kernel.conntrack import ConntrackKernel
from netplane.kernel.iptables import IptablesKernel
from netplane.kernel.nftables import NftKernel
from netplane.proxy import iptables as ipt
from netplane.proxy import nftables as nft
from netplane.proxy.changes import EndpointsChangeTracker, ServiceChangeTracker
from netplane.proxy.conntrack import Programmed, plan_cleanup
from netplane.proxy.metrics import ProxyMetrics
from netplane.proxy.model import InvalidObject, NamespacedName
from netplane.proxy.state import ProxyConfig, ProxyState

log = logging.getLogger("netplane.proxy")


@dataclass(frozen=True, slots=True)
class BackendResult:
    full: bool
    rule_counts: Mapping[str, int] = field(default_factory=dict)


class Backend(Protocol):
    mode: str

    def sync(self, state: ProxyState, changed: set[NamespacedName] | None) -> BackendResult:
        """Program `state`; `changed` None means full. Raises on failure (nothing half-applied)."""
        ...

    def rules_present(self) -> bool:
        """False when our rules were removed behind our back (then a full sync follows)."""
        ...

    def reset(self) -> None:
        """Forget what was applied: the next sync is full."""
        ...


class IptablesBackend:
    mode = "iptables"

    def __init__(self, kernel: IptablesKernel) -> None:
        self.kernel = kernel
        self.renderer = ipt.IptablesRenderer()
        self.last_plan: ipt.IptablesPlan | None = None

    def sync(self, state: ProxyState, changed: set[NamespacedName] | None) -> BackendResult:
        full = changed is None or not self.renderer.can_partial
        existing: dict[str, set[str]] | None = None
        present: set[ipt.Jump] | None = None
        if full:
            saved = {t: self.kernel.save(t) for t in ipt.TABLES}
            existing = {t: ipt.parse_save(text)[0] for t, text in saved.items()}
            present = ipt.jumps_present(saved)
        plan = self.renderer.plan(state, None if full else changed, existing, present)
        if plan.text:
            self.kernel.restore(plan.text)
        self.renderer.commit(plan)
        self.last_plan = plan
        return BackendResult(full=plan.full, rule_counts=plan.rule_counts)

    def rules_present(self) -> bool:
        return all(self.kernel.chain_exists(t, ipt.CANARY) for t in ipt.TABLES)

    def reset(self) -> None:
        self.renderer.reset()


class NftablesBackend:
    mode = "nftables"

    def __init__(self, kernel: NftKernel) -> None:
        self.kernel = kernel
        self.renderer = nft.NftablesRenderer()
        self.last_plan: nft.NftPlan | None = None

    def sync(self, state: ProxyState, changed: set[NamespacedName] | None) -> BackendResult:
        full = changed is None or not self.renderer.can_partial
        existing = self.kernel.objects(nft.FAMILY, nft.TABLE) if full else None
        plan = self.renderer.plan(state, None if full else changed, existing)
        self.kernel.apply(plan.text)
        self.renderer.commit(plan)
        self.last_plan = plan
        return BackendResult(full=plan.full, rule_counts=plan.rule_counts)

    def rules_present(self) -> bool:
        return self.kernel.set_exists(nft.FAMILY, nft.TABLE, nft.CANARY)

    def reset(self) -> None:
        self.renderer.reset()


class SyncListener(Protocol):
    def queued(self) -> None: ...

    def synced(self, state: ProxyState) -> None: ...


class Proxier:
    def __init__(
        self,
        config: ProxyConfig,
        backend: Backend,
        *,
        conntrack: ConntrackKernel | None = None,
        metrics: ProxyMetrics | None = None,
        full_sync_period: float = 3600.0,
        check_rules_period: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        on_invalid: Callable[[InvalidObject], None] | None = None,
    ) -> None:
        self.state = ProxyState(config)
        self.backend = backend
        self.conntrack = conntrack
        self.metrics = metrics or ProxyMetrics()
        self.full_sync_period = full_sync_period
        # Looking for our canary costs a kernel dump in iptables-nft at scale: not on every sync.
        self.check_rules_period = check_rules_period
        self._last_check: float | None = None
        self._pending_changed: set[NamespacedName] = set()
        self._pending_config: ProxyConfig | None = None
        self.clock = clock
        self.wall_clock = wall_clock
        self._lock = threading.Lock()  # trackers and pending changes
        self._sync_lock = threading.Lock()  # one sync at a time
        self._on_invalid = on_invalid
        self.services = ServiceChangeTracker(self._invalid)
        self.endpoints = EndpointsChangeTracker(self._invalid)
        self._need_full = True
        self._last_full: float | None = None
        self._stale: dict[Any, Any] = {}  # programmed before the changes not yet synced successfully
        self._request: Callable[[], None] = lambda: None
        self.listeners: list[SyncListener] = []
        self.synced_once = False

    # -- events -------------------------------------------------------------
    def set_sync_requester(self, request: Callable[[], None]) -> None:
        """The runner's non-blocking run(): called whenever a change makes a sync worthwhile."""
        self._request = request

    def _invalid(self, err: InvalidObject) -> None:
        log.warning("skipping invalid object: %s", err)
        if self._on_invalid:
            self._on_invalid(err)

    def _queued(self) -> None:
        self.metrics.last_queued.set(self.wall_clock())
        for listener in self.listeners:
            listener.queued()
        self._request()

    def on_service(self, old: Mapping[str, Any] | None, new: Mapping[str, Any] | None) -> None:
        with self._lock:
            changed = self.services.update(old, new)
            self.metrics.invalid_objects.set(len(self.services.invalid) + len(self.endpoints.invalid))
        if changed:
            self.metrics.service_changes.inc()
            self._queued()

    def on_endpoint_slice(self, old: Mapping[str, Any] | None, new: Mapping[str, Any] | None) -> None:
        with self._lock:
            changed = self.endpoints.update(old, new)
            self.metrics.invalid_objects.set(len(self.services.invalid) + len(self.endpoints.invalid))
        if changed:
            self.metrics.endpoint_changes.inc()
            self._queued()

    def update_config(self, config: ProxyConfig) -> None:
        """New node addresses or flags: everything is re-rendered."""
        with self._lock:
            self._pending_config = config  # taken up by the next sync, which will be full
        self._queued()

    def force_full_sync(self) -> None:
        with self._lock:
            self._need_full = True
        self._request()

    # -- the sync function ---------------------------------------------------
    def _programmed(self, services: set[NamespacedName]) -> Programmed:
        st = self.state
        return {spn: (st.services[spn], st.selection(spn).all_used) for spn in st.port_names(services)}

    def sync(self) -> bool:
        """Apply pending changes to the kernel; False if the apply failed (retry as a full sync)."""
        # Two locks: event handlers (on the daemon's event loop) only wait for the short tracker
        # section, never for a multi-second kernel apply.
        with self._sync_lock:
            start = self.clock()
            with self._lock:
                pending = self.services.pending() | self.endpoints.pending()
                for spn, value in self._programmed(pending).items():
                    self._stale.setdefault(spn, value)
                svc_result = self.services.apply(self.state.services)
                ep_result = self.endpoints.apply(self.state.endpoints)
                self._pending_changed |= svc_result.updated | ep_result.updated
                if self._pending_config is not None:
                    if self._pending_config != self.state.config:
                        self.state.config = self._pending_config
                        self._need_full = True
                    self._pending_config = None
                full = self._need_full or (
                    self._last_full is not None and start - self._last_full >= self.full_sync_period)
            if not full and (self._last_check is None or start - self._last_check >= self.check_rules_period):
                self._last_check = start
                if not self.backend.rules_present():
                    log.warning("proxy rules were removed by someone else: full resync")
                    full = True
            if full:
                self.backend.reset()
            try:
                result = self.backend.sync(self.state, None if full else self._pending_changed)
            except Exception as e:  # any failure: nothing is known about the kernel, start over
                log.error("sync failed, retrying as a full sync: %s", e)
                self.metrics.sync_failures.inc()
                self.backend.reset()
                self._need_full = True
                return False
            elapsed = self.clock() - start
            done_wall = self.wall_clock()
            self._need_full = False
            if result.full:
                self._last_full = start
                self.metrics.full_sync_duration.observe(elapsed)
            else:
                self.metrics.partial_sync_duration.observe(elapsed)
            self.metrics.sync_duration.observe(elapsed)
            self.metrics.last_sync.set(done_wall)
            for kind, count in result.rule_counts.items():
                self.metrics.rules.set(count, mode=self.backend.mode, kind=kind)
            for trigger in ep_result.trigger_times.values():
                self.metrics.programming_latency.observe(max(0.0, done_wall - trigger))
            stale_services = {spn.service for spn in self._stale} | self._pending_changed
            old, self._stale = self._stale, {}
            self._pending_changed = set()
            new = self._programmed(stale_services)
            self.synced_once = True
            self._cleanup_conntrack(old, new)
        for listener in self.listeners:
            listener.synced(self.state)
        return True

    def _cleanup_conntrack(self, old: Programmed, new: Programmed) -> None:
        if self.conntrack is None:
            return
        for flt in plan_cleanup(old, new):
            try:
                deleted = self.conntrack.delete(flt)
            except Exception as e:  # a failed cleanup costs a client a timeout, not the sync
                log.warning("conntrack cleanup failed for %s: %s", flt, e)
                continue
            self.metrics.conntrack_deletions.inc(deleted)
