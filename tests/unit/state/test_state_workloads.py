"""The ReplicaSet and Deployment controllers' pure decisions (netplane.state.workloads)."""

from __future__ import annotations

from typing import Any

import pytest

from netplane.api.selectors import LabelSelector
from netplane.state.workloads import (
    RSState,
    claim,
    deployment_fenceposts,
    deployment_status,
    new_replicaset,
    new_rs_replicas,
    plan_replicaset,
    pod_from_template,
    replicaset_status,
    replicasets_to_clean,
    resolve_fenceposts,
    rfc3339,
    rolling_step,
    scaled_value,
    template_hash,
    templates_equal,
)

Obj = dict[str, Any]
NOW = 1_700_000_000.0


def pod(name: str, *, node: str = "n1", phase: str = "Running", ready: bool = True, created: float = NOW - 100,
        ready_since: float = NOW - 50, restarts: int = 0, labels: dict[str, str] | None = None,
        owner_uid: str | None = "rs-uid", terminating: bool = False) -> Obj:
    meta: Obj = {"name": name, "namespace": "default", "uid": f"uid-{name}",
                 "labels": {"app": "web"} if labels is None else labels,
                 "creationTimestamp": rfc3339(created)}
    if owner_uid:
        meta["ownerReferences"] = [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-abc",
                                    "uid": owner_uid, "controller": True}]
    if terminating:
        meta["deletionTimestamp"] = rfc3339(NOW + 30)
    spec: Obj = {"containers": [{"name": "c", "image": "nginx"}]}
    if node:
        spec["nodeName"] = node
    status: Obj = {"phase": phase, "conditions": [
        {"type": "Ready", "status": "True" if ready else "False", "lastTransitionTime": rfc3339(ready_since)}],
        "containerStatuses": [{"name": "c", "restartCount": restarts}]}
    return {"metadata": meta, "spec": spec, "status": status}


def replicaset(replicas: int = 3, min_ready: int = 0, generation: int = 1) -> Obj:
    spec: Obj = {"replicas": replicas, "selector": {"matchLabels": {"app": "web"}},
                 "template": {"metadata": {"labels": {"app": "web", "tier": "fe"}},
                              "spec": {"containers": [{"name": "c", "image": "nginx"}]}}}
    if min_ready:
        spec["minReadySeconds"] = min_ready
    return {"apiVersion": "apps/v1", "kind": "ReplicaSet",
            "metadata": {"name": "web-abc", "namespace": "default", "uid": "rs-uid", "generation": generation},
            "spec": spec}


# ------------------------------------------------------------------------------ ReplicaSet


def test_plan_creates_missing_and_keeps_exact() -> None:
    pods = [pod("a"), pod("b")]
    assert plan_replicaset(5, pods).create == 3 and plan_replicaset(5, pods).delete == []
    assert plan_replicaset(2, pods).create == 0 and plan_replicaset(2, pods).delete == []


def test_plan_deletes_unscheduled_then_not_ready_then_newest() -> None:
    pods = [
        pod("old-ready", created=NOW - 500),
        pod("new-ready", created=NOW - 10),
        pod("not-ready", ready=False),
        pod("pending", phase="Pending", ready=False),
        pod("unscheduled", node="", phase="Pending", ready=False, created=NOW - 1000),
        pod("restarting", restarts=5),
    ]
    order = [p["metadata"]["name"] for p in plan_replicaset(0, pods).delete]
    assert order == ["unscheduled", "pending", "not-ready", "restarting", "new-ready", "old-ready"]
    assert [p["metadata"]["name"] for p in plan_replicaset(4, pods).delete] == ["unscheduled", "pending"]


def test_plan_prefers_pods_ready_for_less_time() -> None:
    pods = [pod("long", ready_since=NOW - 1000, created=NOW - 10), pod("short", ready_since=NOW - 5,
                                                                        created=NOW - 2000)]
    assert [p["metadata"]["name"] for p in plan_replicaset(1, pods).delete] == ["short"]


def test_claim_adopts_orphans_and_releases_mismatches() -> None:
    rs = replicaset()
    mine = pod("mine")
    orphan = pod("orphan", owner_uid=None)
    theirs = pod("theirs", owner_uid="other-uid")
    relabelled = pod("relabelled", labels={"app": "debug"})
    unrelated_orphan = pod("unrelated", owner_uid=None, labels={"app": "db"})
    dying_orphan = pod("dying", owner_uid=None, terminating=True)
    c = claim(rs, LabelSelector.from_object(rs["spec"]["selector"]),
              [mine, orphan, theirs, relabelled, unrelated_orphan, dying_orphan])
    assert [p["metadata"]["name"] for p in c.owned] == ["mine", "orphan"]
    assert [p["metadata"]["name"] for p in c.adopt] == ["orphan"]
    assert [p["metadata"]["name"] for p in c.release] == ["relabelled"]


def test_pod_from_template_has_owner_and_generate_name() -> None:
    rs = replicaset()
    p = pod_from_template(rs)
    assert p["metadata"]["generateName"] == "web-abc-"
    assert "name" not in p["metadata"]
    assert p["metadata"]["labels"] == {"app": "web", "tier": "fe"}
    assert p["metadata"]["ownerReferences"] == [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-abc",
                                                 "uid": "rs-uid", "controller": True, "blockOwnerDeletion": True}]
    assert p["spec"] == rs["spec"]["template"]["spec"]
    p["spec"]["containers"][0]["image"] = "changed"
    assert rs["spec"]["template"]["spec"]["containers"][0]["image"] == "nginx"  # a copy


def test_replicaset_status_counts() -> None:
    rs = replicaset(generation=4)
    pods = [pod("a", labels={"app": "web", "tier": "fe"}), pod("b"), pod("c", ready=False)]
    status, recheck = replicaset_status(rs, pods, NOW)
    assert status == {"replicas": 3, "fullyLabeledReplicas": 1, "readyReplicas": 2, "availableReplicas": 2,
                      "observedGeneration": 4}
    assert recheck is None
    empty, _ = replicaset_status(rs, [], NOW)
    assert empty == {"replicas": 0, "observedGeneration": 4}


def test_replicaset_status_honours_min_ready_seconds() -> None:
    rs = replicaset(min_ready=30)
    pods = [pod("long", ready_since=NOW - 40), pod("recent", ready_since=NOW - 10)]
    status, recheck = replicaset_status(rs, pods, NOW)
    assert status["readyReplicas"] == 2 and status["availableReplicas"] == 1
    assert recheck == pytest.approx(20.0)
    later, again = replicaset_status(rs, pods, NOW + 20)
    assert later["availableReplicas"] == 2 and again is None


# ------------------------------------------------------------------------------ Deployment arithmetic


@pytest.mark.parametrize(("value", "total", "up", "expected"), [
    (2, 10, True, 2), ("25%", 10, True, 3), ("25%", 10, False, 2), ("0%", 10, True, 0),
    ("100%", 3, False, 3), ("33%", 3, True, 1), ("33%", 3, False, 0), ("50%", 1, True, 1), ("50%", 1, False, 0),
])
def test_scaled_value_rounds_like_kube(value: Any, total: int, up: bool, expected: int) -> None:
    assert scaled_value(value, total, up) == expected


@pytest.mark.parametrize(("surge", "unavailable", "replicas", "expected"), [
    (None, None, 10, (3, 2)),  # the 25%/25% defaults
    (1, 0, 3, (1, 0)),
    (0, 1, 3, (0, 1)),
    ("0%", "0%", 3, (0, 1)),  # both zero after rounding: maxUnavailable becomes 1
    ("10%", "10%", 3, (1, 0)),  # surge rounds up, unavailable down
    (0, "10%", 3, (0, 1)),
])
def test_fenceposts(surge: Any, unavailable: Any, replicas: int, expected: tuple[int, int]) -> None:
    assert resolve_fenceposts(surge, unavailable, replicas) == expected


def test_deployment_fenceposts_clamp_and_recreate() -> None:
    d = {"spec": {"replicas": 2, "strategy": {"type": "RollingUpdate",
                                              "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 5}}}}
    assert deployment_fenceposts(d) == (0, 2)
    assert deployment_fenceposts({"spec": {"replicas": 2, "strategy": {"type": "Recreate"}}}) == (0, 0)
    assert deployment_fenceposts({"spec": {"replicas": 0}}) == (0, 0)


def test_new_rs_replicas_within_surge() -> None:
    new = RSState("new", 0)
    assert new_rs_replicas(3, 1, new, [new, RSState("old", 3, 3)]) == 1
    assert new_rs_replicas(10, 3, new, [new, RSState("old", 10, 10)]) == 3
    assert new_rs_replicas(3, 0, new, [new, RSState("old", 3, 3)]) == 0
    assert new_rs_replicas(3, 1, new, [new]) == 3  # a first rollout starts everything


def test_rolling_step_surge_first_then_old_down() -> None:
    old = RSState("old", 3, available=3, created=1)
    assert rolling_step(3, 1, 0, RSState("new", 0, created=2), [old]) == {"new": 1}
    # The new pod is not available yet: nothing may go down with maxUnavailable=0.
    assert rolling_step(3, 1, 0, RSState("new", 1, available=0, created=2), [old]) == {}
    # Once it is, one old pod may go.
    assert rolling_step(3, 1, 0, RSState("new", 1, available=1, created=2), [old]) == {"old": 2}


def test_rolling_step_unavailable_first() -> None:
    old = RSState("old", 4, available=4, created=1)
    # maxSurge=0, maxUnavailable=1: old goes down by one before the new RS may grow.
    assert rolling_step(4, 0, 1, RSState("new", 0, created=2), [old]) == {"old": 3}
    old.replicas = 3
    assert rolling_step(4, 0, 1, RSState("new", 0, created=2), [old]) == {"new": 1}


def test_rolling_step_cleans_unhealthy_old_replicas_first() -> None:
    # An old RS with 2 of 3 pods broken: they go first, as far as maxUnavailable allows counting
    # the new RS's own unavailable pods.
    old = RSState("old", 3, available=1, created=1)
    assert rolling_step(3, 1, 1, RSState("new", 1, available=1, created=2), [old]) == {"old": 1}
    assert rolling_step(3, 1, 1, RSState("new", 1, available=0, created=2), [old]) == {"old": 2}


def test_rolling_step_scales_new_down_and_oldest_old_first() -> None:
    assert rolling_step(2, 1, 0, RSState("new", 4, 4), []) == {"new": 2}
    olds = [RSState("older", 1, 1, created=1), RSState("old", 2, 2, created=2)]
    steps = rolling_step(3, 1, 1, RSState("new", 3, available=3, created=3), olds)
    assert steps == {"older": 0, "old": 0}


def _simulate(replicas: int, surge_v: Any, unavailable_v: Any) -> list[tuple[int, int, int]]:
    """Run the rollout to the end, pods becoming available between syncs; check kube's two bounds."""
    surge, unavailable = resolve_fenceposts(surge_v, unavailable_v, replicas)
    unavailable = min(unavailable, replicas)
    new = RSState("new", 0, created=2)
    old = [RSState("old", replicas, available=replicas, created=1)]
    history = []
    for _ in range(200):
        steps = rolling_step(replicas, surge, unavailable, new, old)
        for rs in (new, *old):
            if rs.name in steps:
                rs.replicas = steps[rs.name]
                rs.available = min(rs.available, rs.replicas)  # scaled-down pods go at once
        total = new.replicas + sum(r.replicas for r in old)
        available = new.available + sum(r.available for r in old)
        history.append((new.replicas, sum(r.replicas for r in old), available))
        assert total <= replicas + surge, f"surge exceeded: {history}"
        assert available >= replicas - unavailable, f"too few available: {history}"
        if not steps:
            if new.available < new.replicas:
                new.available = new.replicas  # the new pods become ready
                continue
            break
    assert (new.replicas, new.available, sum(r.replicas for r in old)) == (replicas, replicas, 0), history
    return history


@pytest.mark.parametrize(("replicas", "surge", "unavailable"), [
    (3, 1, 0), (3, 0, 1), (10, "25%", "25%"), (10, "0%", "30%"), (5, "100%", 0), (1, 1, 0), (1, 0, 1),
    (4, 2, 2), (7, "50%", "10%"),
])
def test_rollout_converges_within_bounds(replicas: int, surge: Any, unavailable: Any) -> None:
    _simulate(replicas, surge, unavailable)


def test_rollout_with_surge_one_unavailable_zero_goes_one_by_one() -> None:
    history = _simulate(3, 1, 0)
    assert history[0] == (1, 3, 3)
    assert max(n + o for n, o, _ in history) == 4


# ------------------------------------------------------------------------------ Deployment objects


def deploy(replicas: int = 3, **spec: Any) -> Obj:
    return {"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "default", "uid": "d-uid", "generation": 2,
                         "annotations": {"team": "a", "deployment.kubernetes.io/revision": "1"}},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "web"}},
                     "template": {"metadata": {"labels": {"app": "web"}},
                                  "spec": {"containers": [{"name": "c", "image": "nginx"}]}},
                     "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%",
                                                                             "maxUnavailable": "25%"}},
                     "progressDeadlineSeconds": 600, "revisionHistoryLimit": 10, **spec}}


def test_template_hash_is_stable_and_distinguishes() -> None:
    d = deploy()
    t = d["spec"]["template"]
    h = template_hash(t)
    assert h == template_hash(deploy()["spec"]["template"])
    assert 1 <= len(h) <= 10 and set(h) <= set("bcdfghjklmnpqrstvwxz2456789")
    other = deploy()["spec"]["template"]
    other["spec"]["containers"][0]["image"] = "nginx:2"
    assert template_hash(other) != h
    assert template_hash(t, 1) != h
    # The pod-template-hash label is not part of the hash.
    labelled = deploy()["spec"]["template"]
    labelled["metadata"]["labels"]["pod-template-hash"] = h
    assert template_hash(labelled) == h and templates_equal(labelled, t)
    assert not templates_equal(other, t)


def test_new_replicaset_shape() -> None:
    rs = new_replicaset(deploy(), "abc12", 1, 2)
    assert rs["metadata"]["name"] == "web-abc12"
    assert rs["metadata"]["labels"] == {"app": "web", "pod-template-hash": "abc12"}
    assert rs["spec"]["selector"] == {"matchLabels": {"app": "web", "pod-template-hash": "abc12"}}
    assert rs["spec"]["template"]["metadata"]["labels"]["pod-template-hash"] == "abc12"
    assert rs["spec"]["replicas"] == 1
    assert rs["metadata"]["annotations"] == {"team": "a", "deployment.kubernetes.io/revision": "2",
                                             "deployment.kubernetes.io/desired-replicas": "3",
                                             "deployment.kubernetes.io/max-replicas": "4"}
    ref = rs["metadata"]["ownerReferences"][0]
    assert (ref["kind"], ref["name"], ref["uid"], ref["controller"]) == ("Deployment", "web", "d-uid", True)


def rs_obj(name: str, replicas: int, actual: int, available: int, ready: int | None = None,
           revision: int = 1, created: float = NOW - 100) -> Obj:
    return {"metadata": {"name": name, "creationTimestamp": rfc3339(created), "generation": 1,
                         "annotations": {"deployment.kubernetes.io/revision": str(revision)}},
            "spec": {"replicas": replicas},
            "status": {"replicas": actual, "availableReplicas": available,
                       "readyReplicas": available if ready is None else ready, "observedGeneration": 1}}


def conds(status: Obj) -> dict[str, Obj]:
    return {c["type"]: c for c in status.get("conditions") or []}


def test_deployment_status_complete() -> None:
    new = rs_obj("web-new", 3, 3, 3)
    status, recheck = deployment_status(deploy(), new, [new, rs_obj("web-old", 0, 0, 0)], NOW)
    assert {k: v for k, v in status.items() if k != "conditions"} == {
        "observedGeneration": 2, "replicas": 3, "updatedReplicas": 3, "readyReplicas": 3,
        "availableReplicas": 3}  # unavailableReplicas 0 is omitted, as kube does
    c = conds(status)
    assert (c["Available"]["status"], c["Available"]["reason"]) == ("True", "MinimumReplicasAvailable")
    assert (c["Progressing"]["status"], c["Progressing"]["reason"]) == ("True", "NewReplicaSetAvailable")
    assert c["Progressing"]["message"] == 'ReplicaSet "web-new" has successfully progressed.'
    assert recheck is None
    assert [x["type"] for x in status["conditions"]] == ["Available", "Progressing"]


def test_deployment_status_mid_rollout_and_deadline() -> None:
    d = deploy(replicas=4)
    new = rs_obj("web-new", 2, 2, 0, created=NOW - 10)
    old = rs_obj("web-old", 3, 3, 3)
    status, _ = deployment_status(d, new, [new, old], NOW)
    assert status["replicas"] == 5 and status["updatedReplicas"] == 2 and status["availableReplicas"] == 3
    assert status["unavailableReplicas"] == 2  # spec total 5 minus 3 available
    c = conds(status)
    assert c["Available"]["status"] == "True"  # 3 >= 4 - 1
    assert c["Progressing"]["reason"] == "ReplicaSetUpdated"
    # No progress for longer than the deadline: ProgressDeadlineExceeded.
    d["status"] = status
    stuck, recheck = deployment_status(d, new, [new, old], NOW + 100)
    assert conds(stuck)["Progressing"]["reason"] == "ReplicaSetUpdated"
    assert recheck == pytest.approx(501.0)
    d["status"] = stuck
    late, _ = deployment_status(d, new, [new, old], NOW + 601)
    p = conds(late)["Progressing"]
    assert (p["status"], p["reason"]) == ("False", "ProgressDeadlineExceeded")
    assert p["message"] == 'ReplicaSet "web-new" has timed out progressing.'


def test_deployment_status_unavailable() -> None:
    new = rs_obj("web-new", 3, 3, 1)
    status, _ = deployment_status(deploy(), new, [new], NOW)
    a = conds(status)["Available"]
    assert (a["status"], a["reason"]) == ("False", "MinimumReplicasUnavailable")


def test_replicasets_to_clean_beyond_history_limit() -> None:
    old = [rs_obj("r1", 0, 0, 0, revision=1), rs_obj("r3", 0, 0, 0, revision=3), rs_obj("r2", 0, 0, 0, revision=2),
           rs_obj("busy", 1, 1, 1, revision=0)]
    assert [r["metadata"]["name"] for r in replicasets_to_clean(old, 1)] == ["r1", "r2"]
    assert replicasets_to_clean(old, 3) == []
    assert [r["metadata"]["name"] for r in replicasets_to_clean(old, 0)] == ["r1", "r2", "r3"]
