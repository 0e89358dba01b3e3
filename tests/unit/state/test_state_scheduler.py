"""The scheduler's node choice (netplane.state.scheduler)."""

from __future__ import annotations

from typing import Any

import pytest

from netplane.state.scheduler import choose_node, needs_scheduling, pod_counts, tolerates, with_condition

Obj = dict[str, Any]


def node(name: str, ready: str | None = "True", unschedulable: bool = False,
         taints: list[Obj] | None = None, labels: dict[str, str] | None = None) -> Obj:
    spec: Obj = {}
    if unschedulable:
        spec["unschedulable"] = True
    if taints:
        spec["taints"] = taints
    status: Obj = {"conditions": [{"type": "Ready", "status": ready}] if ready else []}
    return {"metadata": {"name": name, "labels": labels or {}}, "spec": spec, "status": status}


def pod(name: str = "p", node_name: str = "", phase: str = "Pending", **spec: Any) -> Obj:
    s: Obj = {"containers": [{"name": "c", "image": "x"}], **spec}
    if node_name:
        s["nodeName"] = node_name
    return {"metadata": {"name": name, "namespace": "default"}, "spec": s, "status": {"phase": phase}}


def test_fewest_pods_wins_ties_by_name() -> None:
    nodes = [node("n3"), node("n1"), node("n2")]
    assert choose_node(pod(), nodes, {}).node == "n1"
    assert choose_node(pod(), nodes, {"n1": 2, "n2": 1, "n3": 1}).node == "n2"
    assert choose_node(pod(), nodes, {"n1": 0, "n2": 1, "n3": 0}).node == "n1"


def test_pod_counts_skip_finished_and_unbound() -> None:
    pods = [pod("a", "n1", "Running"), pod("b", "n1", "Succeeded"), pod("c", "n2", "Failed"), pod("d"),
            pod("e", "n2", "Pending")]
    assert pod_counts(pods) == {"n1": 1, "n2": 1}


def test_not_ready_unschedulable_and_tainted_nodes_are_skipped() -> None:
    nodes = [
        node("a-notready", ready="False"),
        node("b-unknown", ready="Unknown"),
        node("c-noready", ready=None),
        node("d-cordoned", unschedulable=True),
        node("e-tainted", taints=[{"key": "dedicated", "value": "db", "effect": "NoSchedule"}]),
        node("f-unreachable", taints=[{"key": "node.kubernetes.io/unreachable", "effect": "NoExecute"}]),
        node("g-soft", taints=[{"key": "soft", "effect": "PreferNoSchedule"}]),
    ]
    assert choose_node(pod(), nodes, {"g-soft": 50}).node == "g-soft"
    choice = choose_node(pod(), nodes[:-1], {})
    assert choice.node is None
    assert choice.message == (
        "0/6 nodes are available: 1 node(s) had untolerated taint {dedicated: db}, "
        "1 node(s) had untolerated taint {node.kubernetes.io/unreachable: }, "
        "3 node(s) were not ready, 1 node(s) were unschedulable.")


def test_tolerations_open_tainted_and_cordoned_nodes() -> None:
    nodes = [node("cordoned", unschedulable=True), node("tainted", taints=[
        {"key": "dedicated", "value": "db", "effect": "NoSchedule"}])]
    db = pod(tolerations=[{"key": "dedicated", "operator": "Equal", "value": "db", "effect": "NoSchedule"}])
    assert choose_node(db, nodes, {}).node == "tainted"
    anything = pod(tolerations=[{"operator": "Exists"}])
    assert choose_node(anything, nodes, {}).node == "cordoned"
    wrong_value = pod(tolerations=[{"key": "dedicated", "value": "web", "effect": "NoSchedule"}])
    assert choose_node(wrong_value, nodes, {}).node is None


def test_node_selector() -> None:
    nodes = [node("a", labels={"zone": "x"}), node("b", labels={"zone": "y"})]
    assert choose_node(pod(nodeSelector={"zone": "y"}), nodes, {"b": 9}).node == "b"
    c = choose_node(pod(nodeSelector={"zone": "z"}), nodes, {})
    assert c.node is None and "2 node(s) didn't match Pod's node affinity/selector" in c.message


def test_no_nodes_message() -> None:
    assert choose_node(pod(), [], {}).message == "0/0 nodes are available."


@pytest.mark.parametrize(("toleration", "taint", "expected"), [
    ({"key": "k", "operator": "Exists"}, {"key": "k", "value": "v", "effect": "NoSchedule"}, True),
    ({"key": "k", "value": "v"}, {"key": "k", "value": "v", "effect": "NoExecute"}, True),
    ({"key": "k", "value": "v", "effect": "NoSchedule"}, {"key": "k", "value": "v", "effect": "NoExecute"}, False),
    ({"key": "other", "operator": "Exists"}, {"key": "k", "effect": "NoSchedule"}, False),
    ({"operator": "Exists"}, {"key": "anything", "effect": "NoExecute"}, True),
    ({"operator": "Exists", "effect": "NoSchedule"}, {"key": "anything", "effect": "NoExecute"}, False),
])
def test_tolerates(toleration: Obj, taint: Obj, expected: bool) -> None:
    assert tolerates([toleration], taint) is expected


def test_needs_scheduling() -> None:
    assert needs_scheduling(pod())
    assert not needs_scheduling(pod(node_name="n1"))
    assert not needs_scheduling(pod(schedulerName="other"))
    assert not needs_scheduling(pod(phase="Failed"))
    gone = pod()
    gone["metadata"]["deletionTimestamp"] = "2024-01-01T00:00:00Z"
    assert not needs_scheduling(gone)


def test_with_condition_keeps_transition_time_and_others() -> None:
    status: Obj = {"phase": "Pending", "conditions": [
        {"type": "Initialized", "status": "True"},
        {"type": "PodScheduled", "status": "False", "lastTransitionTime": "2024-01-01T00:00:00Z"}]}
    out = with_condition(status, "PodScheduled", "False", 1_700_000_000, "Unschedulable", "no nodes")
    cond = out["conditions"][1]
    assert cond["lastTransitionTime"] == "2024-01-01T00:00:00Z" and cond["message"] == "no nodes"
    assert out["conditions"][0] == {"type": "Initialized", "status": "True"}
    flipped = with_condition(out, "PodScheduled", "True", 1_700_000_000)
    assert flipped["conditions"][1]["lastTransitionTime"] == "2023-11-14T22:13:20Z"
    assert "reason" not in flipped["conditions"][1]
    assert status["conditions"][1]["status"] == "False"  # the input is untouched
