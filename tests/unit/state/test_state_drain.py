"""`netplane drain`'s pod filter (netplane.cli.nodes_cmd)."""

from __future__ import annotations

from typing import Any

from netplane.cli.nodes_cmd import plan_drain

Obj = dict[str, Any]


def pod(name: str, owner: str | None = "ReplicaSet", phase: str = "Running", emptydir: bool = False,
        mirror: bool = False) -> Obj:
    meta: Obj = {"name": name, "namespace": "default"}
    if owner:
        meta["ownerReferences"] = [{"kind": owner, "name": "o", "uid": "u", "controller": True}]
    if mirror:
        meta["annotations"] = {"kubernetes.io/config.mirror": "x"}
    spec: Obj = {"nodeName": "n1", "containers": [{"name": "c", "image": "x"}]}
    if emptydir:
        spec["volumes"] = [{"name": "scratch", "emptyDir": {}}]
    return {"metadata": meta, "spec": spec, "status": {"phase": phase}}


def names(pods: list[Obj]) -> list[str]:
    return [p["metadata"]["name"] for p in pods]


def test_managed_pods_are_deleted_mirror_pods_never() -> None:
    plan = plan_drain([pod("a"), pod("b"), pod("static", owner=None, mirror=True)])
    assert names(plan.delete) == ["a", "b"] and plan.errors == [] and plan.warnings == []


def test_unmanaged_pods_need_force() -> None:
    pods = [pod("a"), pod("bare", owner=None), pod("finished", owner=None, phase="Succeeded")]
    plan = plan_drain(pods)
    assert plan.errors == ["cannot delete Pods declare no controller (use --force to override): default/bare"]
    forced = plan_drain(pods, force=True)
    assert names(forced.delete) == ["a", "bare", "finished"]
    assert forced.warnings == ["deleting Pods that declare no controller: default/bare"]


def test_daemonset_and_emptydir_pods() -> None:
    pods = [pod("ds", owner="DaemonSet"), pod("cache", emptydir=True)]
    plan = plan_drain(pods)
    assert plan.errors == [
        "cannot delete DaemonSet-managed Pods (use --ignore-daemonsets to ignore): default/ds",
        "cannot delete Pods with local storage (use --delete-emptydir-data to override): default/cache"]
    ok = plan_drain(pods, ignore_daemonsets=True, delete_emptydir_data=True)
    assert names(ok.delete) == ["cache"] and ok.errors == []
    assert ok.warnings == ["ignoring DaemonSet-managed Pods: default/ds"]
