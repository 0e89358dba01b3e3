"""ReplicaSet and Deployment controllers (kube-controller-manager's replicaset and deployment loops).

Both follow the watch cache like the EndpointSlice controller: a change marks an owner dirty, a
single worker reconciles dirty owners after a short coalescing delay. The decisions are pure
functions over plain dicts (tested in tests/unit/state/test_state_workloads.py); the controller
classes only read the registry, call them, and write the result back.

ReplicaSet, as kube does it:
* Pods are owned through an ownerReference with controller=true. Orphan pods matching the selector
  are adopted; owned pods whose labels no longer match are released (kube's ControllerRefManager).
* Active pods are those neither terminating (deletionTimestamp) nor terminal (Succeeded/Failed);
  only they count towards spec.replicas.
* Surplus pods are deleted in kube's ActivePods order: unscheduled, then Pending/Unknown before
  Running, not ready before ready, ready for less time, more restarts, newest first.
* status.availableReplicas honours minReadySeconds (Ready condition's lastTransitionTime); a pod
  that will become available later requeues the ReplicaSet for that moment.

Deployment, as kube does it (pkg/controller/deployment):
* One ReplicaSet per pod template, named "<deployment>-<hash>" and labelled pod-template-hash. The
  hash is our own (sha256 of the canonical JSON of the template plus status.collisionCount), written
  in kube's vowel-free alphabet; a name clash with a different template bumps collisionCount.
* RollingUpdate: each sync takes one step (scale the new RS up within maxSurge, or scale old ones
  down within maxUnavailable, unhealthy old pods first), exactly kube's reconcileNewReplicaSet /
  reconcileOldReplicaSets. Fenceposts round like kube: surge up, unavailable down, and if both
  resolve to 0, maxUnavailable becomes 1.
* Recreate: old ReplicaSets go to 0; the new one is created/scaled only once no old pod is left.
* Revisions in deployment.kubernetes.io/revision (max old + 1), old ReplicaSets beyond
  revisionHistoryLimit removed once the rollout is complete, conditions Available and Progressing
  (with progressDeadlineSeconds) computed as kube's syncRolloutStatus does.

Differences from kube, on purpose: no proportional scaling of several active ReplicaSets in the
middle of a rollout (a replica change then converges through the rolling-update steps instead);
a paused Deployment only scales its single active ReplicaSet; no ReplicaFailure conditions.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from netplane.api import jsonbytes
from netplane.api import resources as res
from netplane.api.errors import APIError
from netplane.api.selectors import LabelSelector
from netplane.state.controllerbase import Controller, Key, WorkQueue, key_parts
from netplane.state.objects import Obj, key_prefix
from netplane.state.registry import PODS, Registry
from netplane.state.watchcache import Change

log = logging.getLogger(__name__)

DEPLOYMENTS = res.must("apps", "v1", "deployments")
REPLICASETS = res.must("apps", "v1", "replicasets")

TEMPLATE_HASH_LABEL = "pod-template-hash"
REVISION_ANNOTATION = "deployment.kubernetes.io/revision"
DESIRED_REPLICAS_ANNOTATION = "deployment.kubernetes.io/desired-replicas"
MAX_REPLICAS_ANNOTATION = "deployment.kubernetes.io/max-replicas"
# Annotations the deployment controller owns on ReplicaSets: never copied from the Deployment.
_CONTROLLER_ANNOTATIONS = (REVISION_ANNOTATION, DESIRED_REPLICAS_ANNOTATION, MAX_REPLICAS_ANNOTATION,
                           "deployment.kubernetes.io/revision-history",
                           "kubectl.kubernetes.io/last-applied-configuration")

# kube's rand.SafeEncodeString alphabet: no vowels, no look-alikes.
_HASH_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"



# --------------------------------------------------------------------------- small object helpers

def rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: Any) -> float | None:
    """Epoch seconds of an RFC 3339 timestamp (with or without fractions), None when absent or bad."""
    if not isinstance(text, str) or not text:
        return None
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


def controller_ref(obj: Obj) -> dict[str, Any] | None:
    for ref in (obj.get("metadata") or {}).get("ownerReferences") or []:
        if isinstance(ref, dict) and ref.get("controller"):
            return ref
    return None


def owner_reference(owner: Obj) -> dict[str, Any]:
    m = owner["metadata"]
    return {"apiVersion": owner.get("apiVersion", "apps/v1"), "kind": owner.get("kind", ""), "name": m["name"],
            "uid": m["uid"], "controller": True, "blockOwnerDeletion": True}


def is_terminating(obj: Obj) -> bool:
    return bool((obj.get("metadata") or {}).get("deletionTimestamp"))


def is_terminal(pod: Obj) -> bool:
    return (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed")


def is_active(pod: Obj) -> bool:
    """kube's FilterActivePods: counts towards replicas."""
    return not is_terminating(pod) and not is_terminal(pod)


def _condition(obj: Obj, ctype: str) -> dict[str, Any] | None:
    for c in (obj.get("status") or {}).get("conditions") or []:
        if isinstance(c, dict) and c.get("type") == ctype:
            return c
    return None


def pod_ready(pod: Obj) -> bool:
    c = _condition(pod, "Ready")
    return c is not None and c.get("status") == "True"


def available_in(pod: Obj, min_ready_seconds: int, now: float) -> float | None:
    """0 when the pod is available now, the seconds until it will be, None when it is not ready."""
    if not pod_ready(pod):
        return None
    if min_ready_seconds <= 0:
        return 0.0
    c = _condition(pod, "Ready") or {}
    since = parse_time(c.get("lastTransitionTime"))
    if since is None:
        return 0.0
    return max(0.0, since + min_ready_seconds - now)


def pod_available(pod: Obj, min_ready_seconds: int, now: float) -> bool:
    return available_in(pod, min_ready_seconds, now) == 0.0


def _labels(obj: Obj) -> dict[str, str]:
    return (obj.get("metadata") or {}).get("labels") or {}


def _int(value: Any, default: int = 0) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def _name(obj: Obj) -> str:
    return str(obj["metadata"]["name"])


# --------------------------------------------------------------------------- ownership (adopt / release)

@dataclass
class Claim:
    owned: list[Obj] = field(default_factory=list)
    adopt: list[Obj] = field(default_factory=list)
    release: list[Obj] = field(default_factory=list)


def claim(owner: Obj, selector: LabelSelector, candidates: Iterable[Obj]) -> Claim:
    """kube's ControllerRefManager.Claim: which candidates the owner keeps, adopts and releases.

    `owned` includes the adopted ones. Terminating objects are never adopted. A terminating owner
    adopts nothing (it is going away and its dependents with it).
    """
    uid = owner["metadata"].get("uid")
    out = Claim()
    owner_terminating = is_terminating(owner)
    for obj in candidates:
        ref = controller_ref(obj)
        matches = selector.matches(_labels(obj))
        if ref is not None:
            if ref.get("uid") != uid:
                continue
            if matches or owner_terminating:
                out.owned.append(obj)
            else:
                out.release.append(obj)
        elif matches and not owner_terminating and not is_terminating(obj):
            out.adopt.append(obj)
            out.owned.append(obj)
    return out


# --------------------------------------------------------------------------- ReplicaSet logic (pure)

_PHASE_RANK = {"Pending": 0, "Unknown": 1, "Running": 2}


def deletion_rank(pod: Obj) -> tuple[Any, ...]:
    """Sort key: pods that sort first are deleted first (kube's controller.ActivePods order)."""
    spec = pod.get("spec") or {}
    status = pod.get("status") or {}
    ready = pod_ready(pod)
    ready_since = parse_time((_condition(pod, "Ready") or {}).get("lastTransitionTime")) or 0.0
    restarts = sum(_int(cs.get("restartCount")) for cs in status.get("containerStatuses") or []
                   if isinstance(cs, dict))
    created = parse_time(pod["metadata"].get("creationTimestamp")) or 0.0
    return (
        1 if spec.get("nodeName") else 0,
        _PHASE_RANK.get(str(status.get("phase")), 0),
        1 if ready else 0,
        -ready_since if ready else 0.0,  # ready for a shorter time first
        -restarts,
        -created,  # newest first
        _name(pod),
    )


@dataclass
class ReplicaSetPlan:
    create: int
    delete: list[Obj]


def plan_replicaset(replicas: int, active: list[Obj]) -> ReplicaSetPlan:
    diff = len(active) - replicas
    if diff < 0:
        return ReplicaSetPlan(-diff, [])
    if diff > 0:
        return ReplicaSetPlan(0, sorted(active, key=deletion_rank)[:diff])
    return ReplicaSetPlan(0, [])


def pod_from_template(rs: Obj) -> Obj:
    """A new pod for a ReplicaSet: the template, generateName "<rs>-", and the controller reference."""
    template = (rs.get("spec") or {}).get("template") or {}
    tmeta = template.get("metadata") or {}
    meta: dict[str, Any] = {
        "generateName": f"{_name(rs)}-",
        "namespace": rs["metadata"].get("namespace"),
        "labels": dict(tmeta.get("labels") or {}),
        "ownerReferences": [owner_reference({"apiVersion": "apps/v1", "kind": "ReplicaSet", **rs})],
    }
    if tmeta.get("annotations"):
        meta["annotations"] = dict(tmeta["annotations"])
    if tmeta.get("finalizers"):
        meta["finalizers"] = list(tmeta["finalizers"])
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta,
            "spec": jsonbytes.clone(template.get("spec") or {})}


def replicaset_status(rs: Obj, active: list[Obj], now: float) -> tuple[dict[str, Any], float | None]:
    """The status a ReplicaSet should report, and when to look again (a pod becoming available)."""
    spec = rs.get("spec") or {}
    min_ready = _int(spec.get("minReadySeconds"))
    template_labels = ((spec.get("template") or {}).get("metadata") or {}).get("labels") or {}
    ready = available = fully = 0
    recheck: float | None = None
    for pod in active:
        labels = _labels(pod)
        if all(labels.get(k) == v for k, v in template_labels.items()):
            fully += 1
        if pod_ready(pod):
            ready += 1
        wait = available_in(pod, min_ready, now)
        if wait == 0.0:
            available += 1
        elif wait is not None:
            recheck = wait if recheck is None else min(recheck, wait)
    status: dict[str, Any] = {
        "replicas": len(active),
        "fullyLabeledReplicas": fully,
        "readyReplicas": ready,
        "availableReplicas": available,
        "observedGeneration": _int(rs["metadata"].get("generation"), 1),
    }
    # kube omits zero counts (omitempty) except replicas; keep the shape kubectl expects.
    for k in ("fullyLabeledReplicas", "readyReplicas", "availableReplicas"):
        if not status[k]:
            del status[k]
    return status, recheck


# --------------------------------------------------------------------------- Deployment logic (pure)

def scaled_value(value: Any, total: int, round_up: bool) -> int:
    """intstr.GetScaledValueFromIntOrPercent: an int as is, 'N%' of total rounded as asked."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.endswith("%"):
        try:
            pct = int(value[:-1])
        except ValueError:
            raise ValueError(f"invalid value for IntOrString: {value!r}") from None
        q, r = divmod(pct * total, 100)
        return q + 1 if round_up and r else q
    if isinstance(value, str) and value.isdigit():
        return int(value)
    raise ValueError(f"invalid value for IntOrString: {value!r}")


def is_rolling(deploy: Obj) -> bool:
    strategy = (deploy.get("spec") or {}).get("strategy") or {}
    return strategy.get("type", "RollingUpdate") != "Recreate"


def resolve_fenceposts(max_surge: Any, max_unavailable: Any, replicas: int) -> tuple[int, int]:
    """kube's ResolveFenceposts: (surge, unavailable); surge rounds up, unavailable down, never both 0."""
    surge = scaled_value("25%" if max_surge is None else max_surge, replicas, True)
    unavailable = scaled_value("25%" if max_unavailable is None else max_unavailable, replicas, False)
    if surge == 0 and unavailable == 0:
        unavailable = 1
    return surge, unavailable


def deployment_fenceposts(deploy: Obj) -> tuple[int, int]:
    """(maxSurge, maxUnavailable) as kube's MaxSurge / MaxUnavailable: 0 for Recreate, unavailable
    clamped to replicas."""
    spec = deploy.get("spec") or {}
    replicas = _int(spec.get("replicas"), 1)
    if not is_rolling(deploy):
        return 0, 0
    rolling = (spec.get("strategy") or {}).get("rollingUpdate") or {}
    surge, unavailable = resolve_fenceposts(rolling.get("maxSurge"), rolling.get("maxUnavailable"), replicas)
    if replicas == 0:
        unavailable = 0
    return surge, min(unavailable, replicas)


def _canonical_template(template: Obj) -> Obj:
    t = jsonbytes.clone(template or {})
    labels = (t.get("metadata") or {}).get("labels")
    if isinstance(labels, dict):
        labels.pop(TEMPLATE_HASH_LABEL, None)
    return t


def template_hash(template: Obj, collision_count: int = 0) -> str:
    """A stable short hash of a pod template (our own, in kube's alphabet and length)."""
    text = json.dumps(_canonical_template(template), sort_keys=True, separators=(",", ":"))
    if collision_count:
        text += f"#{collision_count}"
    digits = str(int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "big"))
    return "".join(_HASH_ALPHABET[ord(d) % len(_HASH_ALPHABET)] for d in digits)


def templates_equal(a: Obj, b: Obj) -> bool:
    """kube's EqualIgnoreHash: the pod templates equal apart from the pod-template-hash label."""
    ta, tb = _canonical_template(a), _canonical_template(b)
    for t in (ta, tb):
        m = t.get("metadata")
        if isinstance(m, dict) and not m.get("labels"):
            m.pop("labels", None)
        if isinstance(m, dict) and not m:
            t.pop("metadata", None)
    return ta == tb


@dataclass
class RSState:
    """What the rollout arithmetic needs of one ReplicaSet."""

    name: str
    replicas: int  # spec.replicas
    available: int = 0  # status.availableReplicas
    created: float = 0.0
    actual: int = 0  # status.replicas (pods that exist)
    ready: int = 0


def _oldest_first(rss: list[RSState]) -> list[RSState]:
    return sorted(rss, key=lambda r: (r.created, r.name))


def new_rs_replicas(replicas: int, surge: int, new: RSState, all_rs: list[RSState]) -> int:
    """kube's NewRSNewReplicas for a rolling update: scale the new RS up within replicas + surge."""
    current = sum(r.replicas for r in all_rs)
    max_total = replicas + surge
    if current >= max_total:
        return new.replicas
    up = min(max_total - current, replicas - new.replicas)
    return new.replicas + max(0, up)


def rolling_step(replicas: int, surge: int, unavailable: int, new: RSState,
                 old: list[RSState]) -> dict[str, int]:
    """One sync of kube's rolloutRolling: {rs name: new spec.replicas} for the RSs to scale.

    Either the new RS is scaled (up within the surge, or down to replicas), or old RSs are scaled
    down: first their unhealthy replicas, then as many available ones as maxUnavailable allows.
    An empty answer means nothing can move until pods become available.
    """
    all_rs = [new, *old]
    if new.replicas > replicas:
        return {new.name: replicas}
    if new.replicas < replicas:
        target = new_rs_replicas(replicas, surge, new, all_rs)
        if target != new.replicas:
            return {new.name: target}
    old_count = sum(r.replicas for r in old)
    if old_count == 0:
        return {}
    all_count = sum(r.replicas for r in all_rs)
    min_available = replicas - unavailable
    new_unavailable = new.replicas - new.available
    max_scaled_down = all_count - min_available - new_unavailable
    if max_scaled_down <= 0:
        return {}
    changes: dict[str, int] = {}
    scaled = {r.name: r.replicas for r in old}
    # cleanupUnhealthyReplicas: old replicas that are not available cost nothing to remove.
    cleaned = 0
    for r in _oldest_first(old):
        if cleaned >= max_scaled_down:
            break
        cur = scaled[r.name]
        if cur == 0 or cur <= r.available:
            continue
        n = min(max_scaled_down - cleaned, cur - r.available)
        scaled[r.name] = cur - n
        changes[r.name] = cur - n
        cleaned += n
    # scaleDownOldReplicaSetsForRollingUpdate: keep minAvailable available pods overall.
    available = sum(r.available for r in all_rs)
    if available > min_available:
        budget = available - min_available
        done = 0
        for r in _oldest_first(old):
            if done >= budget:
                break
            cur = scaled[r.name]
            if cur == 0:
                continue
            n = min(cur, budget - done)
            scaled[r.name] = cur - n
            changes[r.name] = cur - n
            done += n
    return changes


def max_revision(rss: Iterable[Obj]) -> int:
    best = 0
    for rs in rss:
        best = max(best, revision_of(rs))
    return best


def revision_of(obj: Obj) -> int:
    text = ((obj.get("metadata") or {}).get("annotations") or {}).get(REVISION_ANNOTATION)
    try:
        return int(text) if text is not None else 0
    except (TypeError, ValueError):
        return 0


def replicasets_to_clean(old: list[Obj], limit: int) -> list[Obj]:
    """kube's cleanupDeployment: old, fully scaled-down ReplicaSets beyond revisionHistoryLimit,
    oldest revision first."""
    idle = [rs for rs in old if _int((rs.get("spec") or {}).get("replicas")) == 0
            and _int((rs.get("status") or {}).get("replicas")) == 0
            and _int((rs.get("metadata") or {}).get("generation"), 1)
            <= _int((rs.get("status") or {}).get("observedGeneration"), 1)
            and not is_terminating(rs)]
    extra = len(idle) - max(0, limit)
    if extra <= 0:
        return []
    idle.sort(key=lambda rs: (revision_of(rs), parse_time(rs["metadata"].get("creationTimestamp")) or 0.0,
                              _name(rs)))
    return idle[:extra]


def rs_state(rs: Obj) -> RSState:
    status = rs.get("status") or {}
    return RSState(
        name=_name(rs),
        replicas=_int((rs.get("spec") or {}).get("replicas"), 1),
        available=_int(status.get("availableReplicas")),
        created=parse_time(rs["metadata"].get("creationTimestamp")) or 0.0,
        actual=_int(status.get("replicas")),
        ready=_int(status.get("readyReplicas")),
    )


def set_condition(status: dict[str, Any], ctype: str, cstatus: str, reason: str, message: str,
                  now: float, keep_if_same_reason: bool = True) -> None:
    """kube's SetDeploymentCondition: same status and reason -> unchanged; same status -> keep the
    lastTransitionTime; lastUpdateTime is always the moment of this call."""
    conds: list[dict[str, Any]] = status.setdefault("conditions", [])
    current = next((c for c in conds if c.get("type") == ctype), None)
    if keep_if_same_reason and current is not None and current.get("status") == cstatus \
            and current.get("reason") == reason:
        return
    ts = rfc3339(now)
    cond = {"type": ctype, "status": cstatus, "lastUpdateTime": ts, "lastTransitionTime": ts,
            "reason": reason, "message": message}
    if current is not None and current.get("status") == cstatus:
        cond["lastTransitionTime"] = current.get("lastTransitionTime", ts)
    status["conditions"] = [c for c in conds if c.get("type") != ctype] + [cond]


def deployment_status(deploy: Obj, new: Obj | None, all_rs: list[Obj], now: float) -> tuple[dict[str, Any],
                                                                                               float | None]:
    """kube's calculateStatus + syncRolloutStatus: the status to write and when to look again
    (the progress deadline)."""
    spec = deploy.get("spec") or {}
    replicas = _int(spec.get("replicas"), 1)
    old_status = deploy.get("status") or {}
    states = [rs_state(rs) for rs in all_rs]
    available = sum(s.available for s in states)
    total = sum(s.replicas for s in states)
    new_state = rs_state(new) if new is not None else None
    status: dict[str, Any] = {
        "observedGeneration": _int(deploy["metadata"].get("generation"), 1),
        "replicas": sum(s.actual for s in states),
        "updatedReplicas": new_state.actual if new_state else 0,
        "readyReplicas": sum(s.ready for s in states),
        "availableReplicas": available,
        "unavailableReplicas": max(0, total - available),
        "conditions": jsonbytes.clone(old_status.get("conditions") or []),
    }
    if old_status.get("collisionCount") is not None:
        status["collisionCount"] = old_status["collisionCount"]
    _, max_unavailable = deployment_fenceposts(deploy)
    if available >= replicas - max_unavailable:
        set_condition(status, "Available", "True", "MinimumReplicasAvailable",
                      "Deployment has minimum availability.", now)
    else:
        set_condition(status, "Available", "False", "MinimumReplicasUnavailable",
                      "Deployment does not have minimum availability.", now)

    recheck: float | None = None
    deadline = spec.get("progressDeadlineSeconds")
    subject = f'ReplicaSet "{_name(new)}"' if new is not None else f'Deployment "{_name(deploy)}"'
    current = next((c for c in status["conditions"] if c.get("type") == "Progressing"), None)
    if spec.get("paused"):
        set_condition(status, "Progressing", "Unknown", "DeploymentPaused", "Deployment is paused", now)
    elif deadline is None:
        status["conditions"] = [c for c in status["conditions"] if c.get("type") != "Progressing"]
    else:
        complete_already = (status["replicas"] == status["updatedReplicas"] and current is not None
                            and current.get("reason") == "NewReplicaSetAvailable")
        if not complete_already:
            if deployment_complete(replicas, status):
                set_condition(status, "Progressing", "True", "NewReplicaSetAvailable",
                              f"{subject} has successfully progressed.", now)
            elif _progressing(old_status, status):
                set_condition(status, "Progressing", "True", "ReplicaSetUpdated",
                              f"{subject} is progressing.", now, keep_if_same_reason=False)
            elif current is not None and current.get("reason") not in ("ProgressDeadlineExceeded",
                                                                        "NewReplicaSetAvailable"):
                since = parse_time(current.get("lastUpdateTime")) or now
                left = since + _int(deadline) - now
                if left < 0:
                    set_condition(status, "Progressing", "False", "ProgressDeadlineExceeded",
                                  f"{subject} has timed out progressing.", now)
                else:
                    recheck = left + 1.0
    # Every DeploymentStatus count is omitempty in kube: a zero is left out.
    for k in ("replicas", "updatedReplicas", "readyReplicas", "availableReplicas", "unavailableReplicas"):
        if not status[k]:
            del status[k]
    # kube orders conditions Available, Progressing on a fresh Deployment; keep that order.
    order = {"Available": 0, "Progressing": 1}
    status["conditions"].sort(key=lambda c: order.get(str(c.get("type")), 2))
    if not status["conditions"]:
        del status["conditions"]
    return status, recheck


def deployment_complete(replicas: int, status: dict[str, Any]) -> bool:
    return (status.get("updatedReplicas", 0) == replicas and status.get("replicas", 0) == replicas
            and status.get("availableReplicas", 0) == replicas)


def _progressing(old: dict[str, Any], new: dict[str, Any]) -> bool:
    old_old = _int(old.get("replicas")) - _int(old.get("updatedReplicas"))
    new_old = _int(new.get("replicas")) - _int(new.get("updatedReplicas"))
    return (_int(new.get("updatedReplicas")) > _int(old.get("updatedReplicas")) or new_old < old_old
            or _int(new.get("readyReplicas")) > _int(old.get("readyReplicas"))
            or _int(new.get("availableReplicas")) > _int(old.get("availableReplicas")))


def new_replicaset(deploy: Obj, pod_hash: str, replicas: int, revision: int) -> Obj:
    """The ReplicaSet for the Deployment's current template (kube's getNewReplicaSet, create branch)."""
    spec = deploy.get("spec") or {}
    template = jsonbytes.clone(spec.get("template") or {})
    tmeta = template.setdefault("metadata", {})
    tmeta.setdefault("labels", {})[TEMPLATE_HASH_LABEL] = pod_hash
    selector = jsonbytes.clone(spec.get("selector") or {})
    selector.setdefault("matchLabels", {})[TEMPLATE_HASH_LABEL] = pod_hash
    annotations = {k: v for k, v in ((deploy["metadata"].get("annotations") or {}).items())
                   if k not in _CONTROLLER_ANNOTATIONS}
    surge, _ = deployment_fenceposts(deploy)
    desired = _int(spec.get("replicas"), 1)
    annotations[REVISION_ANNOTATION] = str(revision)
    annotations[DESIRED_REPLICAS_ANNOTATION] = str(desired)
    annotations[MAX_REPLICAS_ANNOTATION] = str(desired + surge)
    rs_spec: dict[str, Any] = {"replicas": replicas, "selector": selector, "template": template}
    if spec.get("minReadySeconds"):
        rs_spec["minReadySeconds"] = spec["minReadySeconds"]
    return {
        "apiVersion": "apps/v1",
        "kind": "ReplicaSet",
        "metadata": {
            "name": f"{_name(deploy)}-{pod_hash}",
            "namespace": deploy["metadata"].get("namespace"),
            "labels": dict(tmeta["labels"]),
            "annotations": annotations,
            "ownerReferences": [owner_reference({"apiVersion": "apps/v1", "kind": "Deployment", **deploy})],
        },
        "spec": rs_spec,
    }


# --------------------------------------------------------------------------- shared helpers

def _selector(obj: Obj) -> LabelSelector:
    try:
        return LabelSelector.from_object((obj.get("spec") or {}).get("selector"))
    except ValueError:
        return LabelSelector.nothing()


class _Controller(Controller):
    """A workload controller: the shared life cycle plus adoption and release of dependents."""

    async def _set_controller_ref(self, info: res.ResourceInfo, obj: Obj, ref: dict[str, Any] | None,
                                  release_uid: str | None = None) -> Obj | None:
        """Adopt (ref) or release (release_uid) obj with an optimistic-concurrency update."""
        m = obj["metadata"]
        refs = [r for r in m.get("ownerReferences") or [] if r.get("uid") != release_uid]
        if ref is not None:
            refs.append(ref)
        body = jsonbytes.clone(obj)
        body["metadata"]["ownerReferences"] = refs or None
        if not refs:
            del body["metadata"]["ownerReferences"]
        try:
            return await self.registry.update(info, m.get("namespace"), m["name"], body)
        except APIError as e:
            if e.code in (404, 409):
                return None  # gone or changed: the next sync sees the new state
            raise

    def _enqueue_owners(self, change: Change, owner_kind: str, selectors: dict[Key, LabelSelector]) -> None:
        """A dependent changed: queue its controller of owner_kind, or, for an orphan, every owner
        in its namespace whose selector could adopt it (kube's getPodReplicaSets/getDeploymentsForReplicaSet)."""
        ns, _ = key_parts(change.key)
        for obj in (change.object, change.previous):
            if obj is None:
                continue
            ref = controller_ref(obj)
            if ref is not None:
                if ref.get("kind") == owner_kind:
                    self.queue.add((ns, str(ref.get("name"))))
                continue
            labels = _labels(obj)
            for key, sel in selectors.items():
                if key[0] == ns and sel.matches(labels):
                    self.queue.add(key)


# --------------------------------------------------------------------------- ReplicaSet controller

class ReplicaSetController(_Controller):
    name = "replicaset"
    prefixes = (key_prefix(REPLICASETS), key_prefix(PODS))

    def __init__(self, registry: Registry, delay: float = 0.01, clock: Callable[[], float] = time.time) -> None:
        super().__init__(registry, delay, clock)
        self._selectors: dict[Key, LabelSelector] = {}

    async def _initial(self) -> None:
        for rs in (await self.registry.list(REPLICASETS, None))["items"]:
            key = (rs["metadata"]["namespace"], rs["metadata"]["name"])
            self._selectors[key] = _selector(rs)
            self.queue.add(key)

    def observe(self, change: Change) -> None:
        key = change.key
        if key.startswith("/registry/apps/replicasets/"):
            rk = key_parts(key)
            if change.type == "DELETED":
                self._selectors.pop(rk, None)
            else:
                self._selectors[rk] = _selector(change.object)
                self.queue.add(rk)
        elif key.startswith("/registry/core/pods/"):
            self._enqueue_owners(change, "ReplicaSet", self._selectors)

    async def sync(self, namespace: str, name: str) -> float | None:
        reg = self.registry
        rs = await self._get(REPLICASETS, namespace, name)
        if rs is None:
            return None  # its pods go with it (garbage collection in the registry)
        rs.setdefault("apiVersion", "apps/v1")
        rs.setdefault("kind", "ReplicaSet")
        selector = _selector(rs)
        pods = (await reg.list(PODS, namespace))["items"]
        claimed = claim(rs, selector, pods)
        ref = owner_reference(rs)
        owned: list[Obj] = []
        adopt_uids = {p["metadata"]["uid"] for p in claimed.adopt}
        for pod in claimed.owned:
            if pod["metadata"]["uid"] in adopt_uids:
                adopted = await self._set_controller_ref(PODS, pod, ref)
                if adopted is None:
                    continue
                pod = adopted
            owned.append(pod)
        for pod in claimed.release:
            await self._set_controller_ref(PODS, pod, None, release_uid=rs["metadata"]["uid"])

        active = [p for p in owned if is_active(p)]
        replicas = _int((rs.get("spec") or {}).get("replicas"), 1)
        if is_terminating(rs):
            replicas = len(active)  # a ReplicaSet being deleted neither creates nor deletes
        plan = plan_replicaset(replicas, active)
        for _ in range(plan.create):
            try:
                active.append(await reg.create(PODS, namespace, pod_from_template(rs)))
            except APIError as e:
                log.warning("replicaset could not create pod rs=%s/%s error=%s", namespace, name, e.message)
                break
        gone = set()
        for pod in plan.delete:
            with contextlib.suppress(APIError):
                await reg.delete(PODS, namespace, _name(pod), {"preconditions": {"uid": pod["metadata"]["uid"]}})
            gone.add(pod["metadata"]["uid"])
        active = [p for p in active if p["metadata"]["uid"] not in gone]

        status, recheck = replicaset_status(rs, active, self.clock())
        old = rs.get("status") or {}
        merged = {**{k: v for k, v in old.items() if k == "conditions"}, **status}
        if merged != old:
            body = jsonbytes.clone(rs)
            body["status"] = merged
            await reg.update(REPLICASETS, namespace, name, body, subresource="status")
        return recheck


# --------------------------------------------------------------------------- Deployment controller

class DeploymentController(_Controller):
    name = "deployment"
    prefixes = (key_prefix(DEPLOYMENTS), key_prefix(REPLICASETS), key_prefix(PODS))

    def __init__(self, registry: Registry, delay: float = 0.01, clock: Callable[[], float] = time.time) -> None:
        super().__init__(registry, delay, clock)
        self._selectors: dict[Key, LabelSelector] = {}
        self._recreate: set[Key] = set()

    async def _initial(self) -> None:
        for d in (await self.registry.list(DEPLOYMENTS, None))["items"]:
            key = (d["metadata"]["namespace"], d["metadata"]["name"])
            self._remember(key, d)
            self.queue.add(key)

    def _remember(self, key: Key, d: Obj) -> None:
        self._selectors[key] = _selector(d)
        if is_rolling(d):
            self._recreate.discard(key)
        else:
            self._recreate.add(key)

    def observe(self, change: Change) -> None:
        key = change.key
        if key.startswith("/registry/apps/deployments/"):
            dk = key_parts(key)
            if change.type == "DELETED":
                self._selectors.pop(dk, None)
                self._recreate.discard(dk)
            else:
                self._remember(dk, change.object)
                self.queue.add(dk)
        elif key.startswith("/registry/apps/replicasets/"):
            self._enqueue_owners(change, "Deployment", self._selectors)
        elif key.startswith("/registry/core/pods/") and change.type == "DELETED" and self._recreate:
            # Recreate waits for the last old pod to go; only pod deletions can end that wait.
            ns, _ = key_parts(key)
            labels = _labels(change.object)
            for dk in self._recreate:
                wanted = self._selectors.get(dk)
                if dk[0] == ns and wanted is not None and wanted.matches(labels):
                    self.queue.add(dk)

    async def sync(self, namespace: str, name: str) -> float | None:
        reg = self.registry
        d = await self._get(DEPLOYMENTS, namespace, name)
        if d is None or is_terminating(d):
            return None
        d.setdefault("apiVersion", "apps/v1")
        d.setdefault("kind", "Deployment")
        spec = d.get("spec") or {}
        selector = _selector(d)
        if selector.empty():
            return None  # kube refuses to act on a selector that selects everything
        rss = (await reg.list(REPLICASETS, namespace))["items"]
        claimed = claim(d, selector, rss)
        owned: list[Obj] = []
        adopt_uids = {r["metadata"]["uid"] for r in claimed.adopt}
        ref = owner_reference(d)
        for rs in claimed.owned:
            if rs["metadata"]["uid"] in adopt_uids:
                adopted = await self._set_controller_ref(REPLICASETS, rs, ref)
                if adopted is None:
                    continue
                rs = adopted
            owned.append(rs)
        for rs in claimed.release:
            await self._set_controller_ref(REPLICASETS, rs, None, release_uid=d["metadata"]["uid"])

        template = spec.get("template") or {}
        matching = sorted((rs for rs in owned if templates_equal((rs.get("spec") or {}).get("template") or {},
                                                                  template)),
                          key=lambda rs: (parse_time(rs["metadata"].get("creationTimestamp")) or 0.0, _name(rs)))
        new = matching[0] if matching else None
        old = [rs for rs in owned if rs is not new]
        replicas = _int(spec.get("replicas"), 1)
        surge, unavailable = deployment_fenceposts(d)
        created_new = False

        if new is not None:
            updated = await self._sync_new_annotations(d, new, old)
            owned = [updated if rs is new else rs for rs in owned]
            new = updated
        if spec.get("paused"):
            active = [rs for rs in owned if _int((rs.get("spec") or {}).get("replicas")) > 0]
            if len(active) == 1 and _int(active[0]["spec"].get("replicas")) != replicas:
                await self._scale(active[0], replicas, d)
        elif is_rolling(d):
            if new is None:
                new = await self._create_new(d, old, new_rs_replicas(
                    replicas, surge, RSState("", 0), [rs_state(r) for r in old]))
                created_new = new is not None
            if new is not None and not created_new:
                steps = rolling_step(replicas, surge, unavailable, rs_state(new), [rs_state(r) for r in old])
                by_name = {_name(rs): rs for rs in owned}
                for rs_name, target in steps.items():
                    await self._scale(by_name[rs_name], target, d)
        else:
            for rs in old:
                if _int((rs.get("spec") or {}).get("replicas")) != 0:
                    await self._scale(rs, 0, d)
            if not await self._old_pods_running(namespace, old):
                if new is None:
                    new = await self._create_new(d, old, replicas)
                    created_new = new is not None
                elif _int((new.get("spec") or {}).get("replicas")) != replicas:
                    await self._scale(new, replicas, d)

        # Re-read what we changed so the status reflects it (kube re-lists in the next sync instead).
        all_rs = (await reg.list(REPLICASETS, namespace))["items"]
        uid = d["metadata"]["uid"]
        all_owned = [rs for rs in all_rs if (controller_ref(rs) or {}).get("uid") == uid]
        new_now = next((rs for rs in all_owned if new is not None and _name(rs) == _name(new)), None)
        status, recheck = deployment_status(d, new_now, all_owned, self.clock())
        if created_new and new_now is not None:
            set_condition(status, "Progressing", "True", "NewReplicaSetCreated",
                          f'Created new replica set "{_name(new_now)}"', self.clock())
        if deployment_complete(replicas, status) and spec.get("revisionHistoryLimit") is not None:
            old_now = [rs for rs in all_owned if new_now is None or _name(rs) != _name(new_now)]
            for rs in replicasets_to_clean(old_now, _int(spec.get("revisionHistoryLimit"))):
                with contextlib.suppress(APIError):
                    await reg.delete(REPLICASETS, namespace, _name(rs),
                                     {"preconditions": {"uid": rs["metadata"]["uid"]}})
        await self._write_status(d, status, new_now)
        return recheck

    async def _write_status(self, d: Obj, status: dict[str, Any], new: Obj | None) -> None:
        m = d["metadata"]
        annotations = m.get("annotations") or {}
        revision = str(revision_of(new)) if new is not None else None
        if revision is not None and annotations.get(REVISION_ANNOTATION) != revision:
            body = jsonbytes.clone(d)
            body["metadata"].setdefault("annotations", {})[REVISION_ANNOTATION] = revision
            d = await self.registry.update(DEPLOYMENTS, m["namespace"], m["name"], body)
        if (d.get("status") or {}) != status:
            body = jsonbytes.clone(d)
            body["status"] = status
            await self.registry.update(DEPLOYMENTS, m["namespace"], m["name"], body, subresource="status")

    async def _sync_new_annotations(self, d: Obj, new: Obj, old: list[Obj]) -> Obj:
        """kube's SetNewReplicaSetAnnotations on an existing new RS: revision max(old)+1 when it is
        behind (a rollback to an old template), replica annotations, minReadySeconds."""
        want_rev = max_revision(old) + 1
        spec = d.get("spec") or {}
        surge, _ = deployment_fenceposts(d)
        desired = _int(spec.get("replicas"), 1)
        body = jsonbytes.clone(new)
        ann = body["metadata"].setdefault("annotations", {})
        if revision_of(new) < want_rev:
            ann[REVISION_ANNOTATION] = str(want_rev)
        ann[DESIRED_REPLICAS_ANNOTATION] = str(desired)
        ann[MAX_REPLICAS_ANNOTATION] = str(desired + surge)
        min_ready = _int(spec.get("minReadySeconds"))
        if min_ready:
            body["spec"]["minReadySeconds"] = min_ready
        else:
            body["spec"].pop("minReadySeconds", None)
        if body == new:
            return new
        return await self.registry.update(REPLICASETS, new["metadata"]["namespace"], _name(new), body)

    async def _create_new(self, d: Obj, old: list[Obj], replicas: int) -> Obj | None:
        status = d.get("status") or {}
        collisions = _int(status.get("collisionCount"))
        template = (d.get("spec") or {}).get("template") or {}
        rs = new_replicaset(d, template_hash(template, collisions), replicas, max_revision(old) + 1)
        try:
            return await self.registry.create(REPLICASETS, d["metadata"]["namespace"], rs)
        except APIError as e:
            if e.code != 409:
                raise
        existing = await self._get(REPLICASETS, d["metadata"]["namespace"], rs["metadata"]["name"])
        if existing is not None and (controller_ref(existing) or {}).get("uid") == d["metadata"]["uid"] \
                and templates_equal((existing.get("spec") or {}).get("template") or {}, template):
            return existing  # ours, created by an earlier sync we did not see the answer of
        # A different object holds the name: bump collisionCount so the next hash differs.
        body = jsonbytes.clone(d)
        body.setdefault("status", {})["collisionCount"] = collisions + 1
        await self.registry.update(DEPLOYMENTS, d["metadata"]["namespace"], _name(d), body, subresource="status")
        self.queue.add((d["metadata"]["namespace"], _name(d)))
        return None

    async def _scale(self, rs: Obj, replicas: int, d: Obj) -> None:
        body = jsonbytes.clone(rs)
        body["spec"]["replicas"] = replicas
        spec = d.get("spec") or {}
        surge, _ = deployment_fenceposts(d)
        desired = _int(spec.get("replicas"), 1)
        ann = body["metadata"].setdefault("annotations", {})
        ann[DESIRED_REPLICAS_ANNOTATION] = str(desired)
        ann[MAX_REPLICAS_ANNOTATION] = str(desired + surge)
        await self.registry.update(REPLICASETS, rs["metadata"]["namespace"], _name(rs), body)

    async def _old_pods_running(self, namespace: str, old: list[Obj]) -> bool:
        """Recreate's wait: does any pod of an old ReplicaSet still exist (terminating included)?"""
        if not old:
            return False
        uids = {rs["metadata"]["uid"] for rs in old}
        for pod in (await self.registry.list(PODS, namespace))["items"]:
            if (controller_ref(pod) or {}).get("uid") in uids and not is_terminal(pod):
                return True
        return False


__all__ = [
    "DEPLOYMENTS",
    "REPLICASETS",
    "DeploymentController",
    "RSState",
    "ReplicaSetController",
    "WorkQueue",
    "claim",
    "deletion_rank",
    "deployment_status",
    "new_rs_replicas",
    "plan_replicaset",
    "pod_from_template",
    "replicaset_status",
    "resolve_fenceposts",
    "rolling_step",
    "template_hash",
]
