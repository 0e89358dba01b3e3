"""Node lifecycle: notice nodes that stopped heartbeating, and move their pods away.

kube-controller-manager's node lifecycle controller (and the pod GC's orphan rule), reduced to
what a data plane needs. Every monitor period:

* A node's heartbeat is its Lease in kube-node-lease (spec.renewTime) together with its Ready
  condition's lastHeartbeatTime. Like kube, we do not compare those timestamps with our clock
  (nodes' clocks may differ): we note when *we* last saw either of them change, and a node whose
  heartbeat has not changed for the grace period (--node-monitor-grace-period, 40 s) gets its
  conditions set to Unknown (reason NodeStatusUnknown, "Kubelet stopped posting node status.").
* A node whose Ready condition is not True gets the NoExecute taint node.kubernetes.io/unreachable
  (Ready Unknown) or node.kubernetes.io/not-ready (Ready False), removed again when it is Ready.
* Pods on such a node get their Ready condition set to False (kube's MarkPodsNotReady), so the
  EndpointSlice controller takes their endpoints out of service: on every pass while the node is
  silent (Unknown), once at the transition when the node agent itself reports Ready=False.
* After the pod eviction timeout (--pod-eviction-timeout, 5 min) of continuous unreadiness the
  node's pods are deleted with grace period 0 so that their controllers recreate them elsewhere.
  Modern kube does this with taint-based eviction and a default toleration of 300 s added to every
  pod; we honour a pod's own toleration of the taint (tolerationSeconds, or forever without one)
  and use the eviction timeout for everything else.
* Pods bound to a node that no longer exists are deleted (grace 0) once that has lasted the
  grace period (kube's PodGC orphan rule).

The decision is the pure `plan_lifecycle` over plain dicts and an injected clock; the controller
only lists, calls it and writes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from netplane.api import jsonbytes
from netplane.api import resources as res
from netplane.api.errors import APIError
from netplane.state.objects import Obj
from netplane.state.registry import NODES, PODS, Registry
from netplane.state.scheduler import tolerates, with_condition
from netplane.state.workloads import is_terminal, rfc3339

log = logging.getLogger(__name__)

LEASES = res.must("coordination.k8s.io", "v1", "leases")
LEASE_NAMESPACE = "kube-node-lease"
UNREACHABLE_TAINT = "node.kubernetes.io/unreachable"
NOT_READY_TAINT = "node.kubernetes.io/not-ready"
_OUR_TAINTS = (UNREACHABLE_TAINT, NOT_READY_TAINT)
# The conditions the kubelet posts; kube sets all of them to Unknown when it stops posting.
_KUBELET_CONDITIONS = ("Ready", "MemoryPressure", "DiskPressure", "PIDPressure")


@dataclass
class NodeHealth:
    """What we remember about one node between passes (our clock, not the node's)."""

    heartbeat: tuple[Any, Any]  # (lease renewTime, Ready lastHeartbeatTime) as last seen
    probe_time: float  # when we last saw the heartbeat change
    not_ready_since: float | None = None  # when we first saw it not Ready


@dataclass
class LifecyclePlan:
    node_status: dict[str, dict[str, Any]] = field(default_factory=dict)  # node -> new status
    node_taints: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # node -> new taints
    pods_not_ready: list[Obj] = field(default_factory=list)  # pods whose Ready must become False
    evict: list[Obj] = field(default_factory=list)  # pods to delete with grace 0
    next_check: float | None = None  # seconds until an eviction falls due


def _ready_condition(node: Obj) -> dict[str, Any] | None:
    for c in (node.get("status") or {}).get("conditions") or []:
        if isinstance(c, dict) and c.get("type") == "Ready":
            return c
    return None


def _pod_ready_status(pod: Obj) -> str | None:
    for c in (pod.get("status") or {}).get("conditions") or []:
        if isinstance(c, dict) and c.get("type") == "Ready":
            return str(c.get("status"))
    return None


def unknown_status(node: Obj, now: float) -> dict[str, Any]:
    """The node's status with the kubelet's conditions set to Unknown (kube's tryUpdateNodeHealth)."""
    status = jsonbytes.clone(node.get("status") or {})
    conds = [c for c in status.get("conditions") or [] if isinstance(c, dict)]
    ts = rfc3339(now)
    seen = {c.get("type") for c in conds}
    for c in conds:
        if c.get("type") in _KUBELET_CONDITIONS and c.get("status") != "Unknown":
            c.update(status="Unknown", reason="NodeStatusUnknown", message="Kubelet stopped posting node status.",
                     lastTransitionTime=ts)
    if "Ready" not in seen:
        conds.append({"type": "Ready", "status": "Unknown", "reason": "NodeStatusNeverUpdated",
                      "message": "Kubelet never posted node status.", "lastHeartbeatTime": None,
                      "lastTransitionTime": ts})
    status["conditions"] = conds
    return status


def desired_taints(node: Obj, ready: str | None, now: float) -> list[dict[str, Any]]:
    """The node's taints with ours matching its readiness (timeAdded kept on a taint that stays)."""
    taints = [t for t in (node.get("spec") or {}).get("taints") or [] if isinstance(t, dict)]
    want = {"Unknown": UNREACHABLE_TAINT, "False": NOT_READY_TAINT}.get(ready or "")
    out = [t for t in taints if t.get("key") not in _OUR_TAINTS or (t.get("key") == want
                                                                    and t.get("effect") == "NoExecute")]
    if want and not any(t.get("key") == want and t.get("effect") == "NoExecute" for t in out):
        out.append({"key": want, "effect": "NoExecute", "timeAdded": rfc3339(now)})
    return out


def eviction_delay(pod: Obj, taint_key: str, default: float) -> float | None:
    """Seconds of unreadiness after which the pod goes: its toleration's tolerationSeconds, None (never)
    for a toleration without it, the eviction timeout when it does not tolerate the taint."""
    tolerations = [t for t in (pod.get("spec") or {}).get("tolerations") or [] if isinstance(t, dict)]
    taint = {"key": taint_key, "effect": "NoExecute"}
    matching = [t for t in tolerations if tolerates([t], taint)]
    if not matching:
        return default
    seconds = [t.get("tolerationSeconds") for t in matching]
    if any(s is None for s in seconds):
        return None
    return float(max(0, min(int(s) for s in seconds if s is not None)))


def observe_heartbeat(health: NodeHealth | None, node: Obj, lease: Obj | None, now: float) -> NodeHealth:
    ready = _ready_condition(node) or {}
    beat = ((lease or {}).get("spec", {}).get("renewTime"), ready.get("lastHeartbeatTime"))
    if health is None:
        # First sight (or our restart): a full grace period from now, as kube does.
        return NodeHealth(beat, now)
    if beat != health.heartbeat:
        health.heartbeat = beat
        health.probe_time = now
    return health


def plan_lifecycle(
    nodes: Iterable[Obj],
    leases: Mapping[str, Obj],
    pods: Iterable[Obj],
    health: dict[str, NodeHealth],
    orphans: dict[tuple[str, str], float],
    now: float,
    grace: float,
    eviction_timeout: float,
) -> LifecyclePlan:
    """One monitor pass. Updates `health` (per node) and `orphans` (pod -> first seen without its
    node) in place and says what to write."""
    plan = LifecyclePlan()
    readiness: dict[str, tuple[str, bool]] = {}  # not-Ready node -> (Ready status, just became so)
    node_list = list(nodes)
    names = {str(n["metadata"]["name"]) for n in node_list}
    for gone in set(health) - names:
        del health[gone]
    for node in node_list:
        name = str(node["metadata"]["name"])
        h = observe_heartbeat(health.get(name), node, leases.get(name), now)
        health[name] = h
        cond = _ready_condition(node)
        ready = str(cond.get("status")) if cond else None
        if now - h.probe_time > grace and ready != "Unknown":
            status = unknown_status(node, now)
            plan.node_status[name] = status
            ready = "Unknown"
        if ready == "True":
            h.not_ready_since = None
        elif ready is not None:
            readiness[name] = (ready, h.not_ready_since is None)
            if h.not_ready_since is None:
                h.not_ready_since = now
        taints = desired_taints(node, ready, now)
        if taints != [t for t in (node.get("spec") or {}).get("taints") or [] if isinstance(t, dict)]:
            plan.node_taints[name] = taints

    seen_orphans: set[tuple[str, str]] = set()
    for pod in pods:
        node_name = (pod.get("spec") or {}).get("nodeName")
        if not node_name or is_terminal(pod):
            continue
        key = (str(pod["metadata"].get("namespace")), str(pod["metadata"]["name"]))
        if node_name not in names:
            seen_orphans.add(key)
            first = orphans.setdefault(key, now)
            if now - first >= grace:
                plan.evict.append(pod)
            else:
                _sooner(plan, first + grace - now)
            continue
        if node_name not in readiness:
            continue
        ready, transition = readiness[node_name]
        # A silent node's pods are marked on every pass (nobody else will); a node that reports
        # Ready=False itself is alive and owns its pods' status, so only the transition is marked.
        if (ready == "Unknown" or transition) and _pod_ready_status(pod) != "False":
            plan.pods_not_ready.append(pod)
        since = health[node_name].not_ready_since
        delay = eviction_delay(pod, UNREACHABLE_TAINT if ready == "Unknown" else NOT_READY_TAINT,
                               eviction_timeout)
        if since is None or delay is None:
            continue
        if now - since >= delay:
            plan.evict.append(pod)
        else:
            _sooner(plan, since + delay - now)
    for key in set(orphans) - seen_orphans:
        del orphans[key]
    return plan


def _sooner(plan: LifecyclePlan, seconds: float) -> None:
    plan.next_check = seconds if plan.next_check is None else min(plan.next_check, seconds)


def monitor_period(grace: float) -> float:
    """kube checks every 5 s against a 40 s grace; keep that ratio for short test grace periods."""
    return max(0.1, min(5.0, grace / 8))


class NodeLifecycleController:
    def __init__(self, registry: Registry, grace: float = 40.0, eviction_timeout: float = 300.0,
                 clock: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time) -> None:
        self.registry = registry
        self.grace = grace
        self.eviction_timeout = eviction_timeout
        self.clock = clock  # for durations (our observations)
        self.wall = wall  # for timestamps written into objects
        self.period = monitor_period(grace)
        self._health: dict[str, NodeHealth] = {}
        self._orphans: dict[tuple[str, str], float] = {}
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="node-lifecycle")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _loop(self) -> None:
        while True:
            wait = self.period
            try:
                nxt = await self.sync_once()
                if nxt is not None:
                    wait = min(wait, max(0.05, nxt))
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("node lifecycle pass failed")
            await asyncio.sleep(wait)

    async def sync_once(self) -> float | None:
        reg = self.registry
        nodes = (await reg.list(NODES, None))["items"]
        leases = {str(lease["metadata"]["name"]): lease
                  for lease in (await reg.list(LEASES, LEASE_NAMESPACE))["items"]}
        pods = (await reg.list(PODS, None))["items"]
        # A node status write below is our own, not a heartbeat: observe_heartbeat only looks at
        # renewTime and lastHeartbeatTime, which we never change.
        plan = plan_lifecycle(nodes, leases, pods, self._health, self._orphans, self.clock(),
                              self.grace, self.eviction_timeout)
        by_name = {str(n["metadata"]["name"]): n for n in nodes}
        wall = self.wall()
        for name, status in plan.node_status.items():
            log.warning("node stopped heartbeating node=%s grace=%ss", name, self.grace)
            body = jsonbytes.clone(by_name[name])
            body["status"] = status
            try:
                by_name[name] = await reg.update(NODES, None, name, body, subresource="status")
            except APIError as e:
                log.warning("cannot mark node unknown node=%s error=%s", name, e.message)
        for name, taints in plan.node_taints.items():
            body = jsonbytes.clone(by_name[name])
            body.setdefault("spec", {})["taints"] = taints or None
            if not taints:
                del body["spec"]["taints"]
            try:
                await reg.update(NODES, None, name, body)
            except APIError as e:
                log.warning("cannot update node taints node=%s error=%s", name, e.message)
        evicting = {p["metadata"].get("uid") for p in plan.evict}
        for pod in plan.pods_not_ready:
            if pod["metadata"].get("uid") in evicting:
                continue
            body = jsonbytes.clone(pod)
            body["status"] = with_condition(pod.get("status") or {}, "Ready", "False", wall)
            with contextlib.suppress(APIError):
                await reg.update(PODS, pod["metadata"]["namespace"], pod["metadata"]["name"], body,
                                 subresource="status")
        for pod in plan.evict:
            m = pod["metadata"]
            log.warning("evicting pod=%s/%s node=%s", m.get("namespace"), m["name"],
                        (pod.get("spec") or {}).get("nodeName"))
            with contextlib.suppress(APIError):
                await reg.delete(PODS, m.get("namespace"), m["name"],
                                 {"gracePeriodSeconds": 0, "preconditions": {"uid": m.get("uid")}})
        return plan.next_check


__all__ = [
    "NOT_READY_TAINT",
    "UNREACHABLE_TAINT",
    "LifecyclePlan",
    "NodeHealth",
    "NodeLifecycleController",
    "desired_taints",
    "eviction_delay",
    "monitor_period",
    "observe_heartbeat",
    "plan_lifecycle",
    "unknown_status",
]
