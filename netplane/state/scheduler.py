"""The scheduler: binds pods without spec.nodeName to a node (kube-scheduler's role, much reduced).

Choice (pure, `choose_node`): among nodes that are Ready (Ready condition True), schedulable
(spec.unschedulable not set, unless the pod tolerates node.kubernetes.io/unschedulable:NoSchedule)
and whose NoSchedule / NoExecute taints the pod tolerates, and whose labels satisfy the pod's
spec.nodeSelector, the one with the fewest non-terminated pods; ties go to the first name.
kube-scheduler relies on the not-ready/unreachable taints for readiness; we also check the Ready
condition directly so a node that never reported Ready gets nothing. Not supported: affinity,
topology spread, resource requests, preemption.

A pod that fits nowhere stays Pending with PodScheduled=False (reason Unschedulable, kube's
"0/3 nodes are available: ..." message) and is retried whenever a node changes. Binding is an
update of spec.nodeName (the registry allows it from empty) followed by PodScheduled=True.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from netplane.api import jsonbytes
from netplane.api.errors import APIError
from netplane.state.objects import Obj, key_prefix
from netplane.state.registry import NODES, PODS, Registry
from netplane.state.watchcache import Change
from netplane.state.workloads import is_terminal, is_terminating, rfc3339

log = logging.getLogger(__name__)

UNSCHEDULABLE_TAINT = "node.kubernetes.io/unschedulable"
DEFAULT_SCHEDULER = "default-scheduler"
PodKey = tuple[str, str]


# --------------------------------------------------------------------------- pure choice

def tolerates(tolerations: Iterable[Mapping[str, Any]], taint: Mapping[str, Any]) -> bool:
    """kube's Toleration.ToleratesTaint over a pod's tolerations."""
    for t in tolerations:
        if t.get("effect") and t.get("effect") != taint.get("effect"):
            continue
        if t.get("key") and t.get("key") != taint.get("key"):
            continue
        op = t.get("operator") or "Equal"
        if op == "Exists":
            return True
        if op == "Equal" and not t.get("key") and not t.get("effect") and not t.get("value"):
            continue  # an empty Equal toleration matches nothing (validation forbids it anyway)
        if op == "Equal" and (t.get("value") or "") == (taint.get("value") or ""):
            return True
    return False


def node_ready(node: Obj) -> bool:
    for c in (node.get("status") or {}).get("conditions") or []:
        if isinstance(c, dict) and c.get("type") == "Ready":
            return c.get("status") == "True"
    return False


def pod_counts(pods: Iterable[Obj]) -> dict[str, int]:
    """Non-terminated pods per node (terminating ones still occupy their node, as in kube)."""
    counts: dict[str, int] = {}
    for p in pods:
        node = (p.get("spec") or {}).get("nodeName")
        if node and not is_terminal(p):
            counts[node] = counts.get(node, 0) + 1
    return counts


@dataclass(frozen=True, slots=True)
class Choice:
    node: str | None
    message: str  # why nothing fits, in kube's words, when node is None


def choose_node(pod: Obj, nodes: Iterable[Obj], counts: Mapping[str, int]) -> Choice:
    spec = pod.get("spec") or {}
    tolerations = [t for t in spec.get("tolerations") or [] if isinstance(t, dict)]
    selector = spec.get("nodeSelector") or {}
    reasons: dict[str, int] = {}
    fits: list[tuple[int, str]] = []
    total = 0

    def reject(why: str) -> None:
        reasons[why] = reasons.get(why, 0) + 1

    for node in nodes:
        total += 1
        name = str(node["metadata"]["name"])
        nspec = node.get("spec") or {}
        labels = (node.get("metadata") or {}).get("labels") or {}
        if is_terminating(node):
            reject("node(s) were being deleted")
            continue
        if not node_ready(node):
            reject("node(s) were not ready")
            continue
        if nspec.get("unschedulable") and not tolerates(
                tolerations, {"key": UNSCHEDULABLE_TAINT, "effect": "NoSchedule"}):
            reject("node(s) were unschedulable")
            continue
        untolerated = next((t for t in nspec.get("taints") or [] if isinstance(t, dict)
                            and t.get("effect") in ("NoSchedule", "NoExecute") and not tolerates(tolerations, t)),
                           None)
        if untolerated is not None:
            reject(f"node(s) had untolerated taint {{{untolerated.get('key')}: {untolerated.get('value') or ''}}}")
            continue
        if any(labels.get(k) != v for k, v in selector.items()):
            reject("node(s) didn't match Pod's node affinity/selector")
            continue
        fits.append((counts.get(name, 0), name))
    if fits:
        return Choice(min(fits)[1], "")
    detail = ", ".join(f"{n} {why}" for why, n in sorted(reasons.items()))
    return Choice(None, f"0/{total} nodes are available" + (f": {detail}." if detail else "."))


def needs_scheduling(pod: Obj) -> bool:
    spec = pod.get("spec") or {}
    return (not spec.get("nodeName") and not is_terminating(pod) and not is_terminal(pod)
            and (spec.get("schedulerName") or DEFAULT_SCHEDULER) == DEFAULT_SCHEDULER
            and not spec.get("schedulingGates"))


def with_condition(status: dict[str, Any], ctype: str, cstatus: str, now: float,
                   reason: str | None = None, message: str | None = None) -> dict[str, Any]:
    """A copy of a pod status with one condition set; lastTransitionTime kept when the status holds."""
    out = jsonbytes.clone(status)
    conds = [c for c in out.get("conditions") or [] if isinstance(c, dict)]
    current = next((c for c in conds if c.get("type") == ctype), None)
    cond: dict[str, Any] = {"type": ctype, "status": cstatus, "lastProbeTime": None,
                            "lastTransitionTime": rfc3339(now)}
    if current is not None and current.get("status") == cstatus:
        cond["lastTransitionTime"] = current.get("lastTransitionTime") or cond["lastTransitionTime"]
    if reason:
        cond["reason"] = reason
    if message:
        cond["message"] = message
    out["conditions"] = [cond if c is current else c for c in conds] if current is not None else [*conds, cond]
    return out


# --------------------------------------------------------------------------- the controller

class Scheduler:
    """Follows pods and nodes in the watch cache; schedules pending pods in creation order."""

    def __init__(self, registry: Registry, delay: float = 0.01, clock: Callable[[], float] = time.time) -> None:
        self.registry = registry
        self.delay = delay
        self.clock = clock
        self._node_of: dict[PodKey, str] = {}  # bound, non-terminated pods -> node
        self._pending: set[PodKey] = set()
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[Any]] = []

    async def start(self) -> None:
        sub = self.registry.cache.subscribe((key_prefix(PODS), key_prefix(NODES)))
        lst = await self.registry.list(PODS, None)
        start_rev = int(lst["metadata"]["resourceVersion"])
        for pod in lst["items"]:
            self._track(pod, deleted=False)
        self._wake.set()
        self._tasks.append(asyncio.create_task(self._follow(sub, start_rev), name="scheduler-follow"))
        self._tasks.append(asyncio.create_task(self._work(), name="scheduler-work"))

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t

    @staticmethod
    def _pod_key(pod: Obj) -> PodKey:
        m = pod["metadata"]
        return str(m.get("namespace")), str(m["name"])

    def _track(self, pod: Obj, deleted: bool) -> None:
        key = self._pod_key(pod)
        node = (pod.get("spec") or {}).get("nodeName")
        if deleted or is_terminal(pod) or not node:
            self._node_of.pop(key, None)
        else:
            self._node_of[key] = node
        if not deleted and needs_scheduling(pod):
            self._pending.add(key)
        else:
            self._pending.discard(key)

    async def _follow(self, sub: Any, start_rev: int) -> None:
        try:
            while True:
                change: Change = await sub.next()
                if change.revision <= start_rev or not change.readable():
                    continue  # already in the initial list, or a value that does not decode
                self.observe(change)
        finally:
            sub.close()

    def observe(self, change: Change) -> None:
        if change.key.startswith("/registry/core/pods/"):
            self._track(change.object, change.type == "DELETED")
            if change.type != "DELETED" and needs_scheduling(change.object):
                self._wake.set()
        elif change.key.startswith("/registry/core/nodes/") and self._pending:
            self._wake.set()

    async def _work(self) -> None:
        while True:
            await self._wake.wait()
            await asyncio.sleep(self.delay)
            self._wake.clear()
            try:
                await self.schedule_pending()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("scheduling pass failed")
                await asyncio.sleep(1.0)
                self._wake.set()

    async def schedule_pending(self) -> None:
        if not self._pending:
            return
        nodes = (await self.registry.list(NODES, None))["items"]
        counts: dict[str, int] = {}
        for node in self._node_of.values():
            counts[node] = counts.get(node, 0) + 1
        pods: list[Obj] = []
        for ns, name in list(self._pending):
            try:
                pods.append(await self.registry.get(PODS, ns, name))
            except APIError as e:
                if e.code == 404:
                    self._pending.discard((ns, name))
                else:
                    raise
        pods.sort(key=lambda p: (p["metadata"].get("creationTimestamp") or "", p["metadata"]["name"]))
        for pod in pods:
            if not needs_scheduling(pod):
                self._pending.discard(self._pod_key(pod))
                continue
            choice = choose_node(pod, nodes, counts)
            if choice.node is None:
                await self._mark_unschedulable(pod, choice.message)
                continue
            if await self._bind(pod, choice.node):
                counts[choice.node] = counts.get(choice.node, 0) + 1
                self._node_of[self._pod_key(pod)] = choice.node
                self._pending.discard(self._pod_key(pod))

    async def _bind(self, pod: Obj, node: str) -> bool:
        ns, name = self._pod_key(pod)
        body = jsonbytes.clone(pod)
        body["spec"]["nodeName"] = node
        try:
            bound = await self.registry.update(PODS, ns, name, body)
        except APIError as e:
            if e.code in (404, 409):
                self._wake.set()  # changed under us: look again with fresh data
                return False
            log.warning("cannot bind pod=%s/%s node=%s error=%s", ns, name, node, e.message)
            return False
        log.info("scheduled pod=%s/%s node=%s", ns, name, node)
        # kube's binding sets PodScheduled=True in the same write; ours is a second one, retried
        # if the node agent updated the status in between.
        for _ in range(3):
            status = with_condition(bound.get("status") or {}, "PodScheduled", "True", self.clock())
            if status == bound.get("status"):
                break
            body = jsonbytes.clone(bound)
            body["status"] = status
            try:
                await self.registry.update(PODS, ns, name, body, subresource="status")
                break
            except APIError as e:
                if e.code != 409:
                    break
                try:
                    bound = await self.registry.get(PODS, ns, name)
                except APIError:
                    break
        return True

    async def _mark_unschedulable(self, pod: Obj, message: str) -> None:
        ns, name = self._pod_key(pod)
        status = with_condition(pod.get("status") or {}, "PodScheduled", "False", self.clock(),
                                "Unschedulable", message)
        if status == pod.get("status"):
            return
        body = jsonbytes.clone(pod)
        body["status"] = status
        with contextlib.suppress(APIError):
            await self.registry.update(PODS, ns, name, body, subresource="status")
            log.info("pod unschedulable pod=%s/%s reason=%s", ns, name, message)


__all__ = ["Choice", "Scheduler", "choose_node", "needs_scheduling", "node_ready", "pod_counts", "tolerates"]
