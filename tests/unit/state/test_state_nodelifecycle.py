"""Node lifecycle decisions with an injected clock (netplane.state.nodelifecycle)."""

from __future__ import annotations

from typing import Any

from netplane.state.nodelifecycle import (
    NOT_READY_TAINT,
    UNREACHABLE_TAINT,
    LifecyclePlan,
    NodeHealth,
    desired_taints,
    eviction_delay,
    monitor_period,
    plan_lifecycle,
)

Obj = dict[str, Any]
GRACE = 40.0
EVICT = 300.0


def node(name: str, ready: str | None = "True", heartbeat: str = "t0", taints: list[Obj] | None = None) -> Obj:
    conds = [{"type": "Ready", "status": ready, "lastHeartbeatTime": heartbeat,
              "lastTransitionTime": "2024-01-01T00:00:00Z"},
             {"type": "MemoryPressure", "status": "False", "lastHeartbeatTime": heartbeat}] if ready else []
    spec: Obj = {"taints": taints} if taints else {}
    return {"metadata": {"name": name}, "spec": spec, "status": {"conditions": conds}}


def lease(name: str, renew: str) -> Obj:
    return {"metadata": {"name": name}, "spec": {"holderIdentity": name, "renewTime": renew}}


def pod(name: str, node_name: str, ready: bool = True, tolerations: list[Obj] | None = None,
        phase: str = "Running") -> Obj:
    spec: Obj = {"nodeName": node_name, "containers": [{"name": "c", "image": "x"}]}
    if tolerations:
        spec["tolerations"] = tolerations
    return {"metadata": {"name": name, "namespace": "default", "uid": f"u-{name}"}, "spec": spec,
            "status": {"phase": phase, "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}}


class Sim:
    """One controller's memory across passes."""

    def __init__(self) -> None:
        self.health: dict[str, NodeHealth] = {}
        self.orphans: dict[tuple[str, str], float] = {}

    def run(self, nodes: list[Obj], leases: dict[str, Obj], pods: list[Obj], now: float) -> LifecyclePlan:
        return plan_lifecycle(nodes, leases, pods, self.health, self.orphans, now, GRACE, EVICT)


def names(pods: list[Obj]) -> list[str]:
    return sorted(p["metadata"]["name"] for p in pods)


def test_a_heartbeating_node_is_left_alone() -> None:
    sim = Sim()
    pods = [pod("a", "n1")]
    for i in range(20):
        plan = sim.run([node("n1")], {"n1": lease("n1", f"renew-{i}")}, pods, now=i * 10.0)
        assert plan == LifecyclePlan()


def test_node_ready_heartbeat_alone_counts_too() -> None:
    sim = Sim()
    for i in range(10):
        plan = sim.run([node("n1", heartbeat=f"hb-{i}")], {}, [], now=i * 30.0)
        assert not plan.node_status


def test_silent_node_goes_unknown_after_grace_and_pods_not_ready() -> None:
    sim = Sim()
    nodes = [node("n1"), node("n2")]
    pods = [pod("a", "n1"), pod("b", "n2"), pod("done", "n1", phase="Succeeded")]
    assert sim.run(nodes, {"n1": lease("n1", "r0"), "n2": lease("n2", "r0")}, pods, now=0.0) == LifecyclePlan()
    # n2 keeps renewing, n1 does not.
    plan = sim.run(nodes, {"n1": lease("n1", "r0"), "n2": lease("n2", "r1")}, pods, now=40.0)
    assert plan == LifecyclePlan()  # exactly the grace period is not yet too long
    plan = sim.run(nodes, {"n1": lease("n1", "r0"), "n2": lease("n2", "r2")}, pods, now=41.0)
    assert list(plan.node_status) == ["n1"]
    conds = {c["type"]: c for c in plan.node_status["n1"]["conditions"]}
    assert conds["Ready"]["status"] == "Unknown" and conds["Ready"]["reason"] == "NodeStatusUnknown"
    assert conds["Ready"]["message"] == "Kubelet stopped posting node status."
    assert conds["Ready"]["lastHeartbeatTime"] == "t0"  # the node's last word is kept
    assert conds["MemoryPressure"]["status"] == "Unknown"
    taints = plan.node_taints["n1"]
    assert [(t["key"], t["effect"]) for t in taints] == [(UNREACHABLE_TAINT, "NoExecute")]
    assert names(plan.pods_not_ready) == ["a"]
    assert plan.evict == [] and plan.next_check == EVICT


def test_eviction_after_timeout_honours_tolerations() -> None:
    sim = Sim()
    forever = [{"key": UNREACHABLE_TAINT, "operator": "Exists", "effect": "NoExecute"}]
    short = [{"key": UNREACHABLE_TAINT, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 10}]
    pods = [pod("plain", "n1"), pod("forever", "n1", tolerations=forever), pod("short", "n1", tolerations=short)]
    unknown = [node("n1", ready="Unknown", taints=[{"key": UNREACHABLE_TAINT, "effect": "NoExecute"}])]
    plan = sim.run(unknown, {}, pods, now=100.0)  # first seen NotReady at 100
    assert names(plan.pods_not_ready) == ["forever", "plain", "short"]
    assert plan.evict == [] and plan.next_check == 10.0
    assert "n1" not in plan.node_taints  # already right
    assert names(sim.run(unknown, {}, pods, now=110.0).evict) == ["short"]
    plan = sim.run(unknown, {}, pods, now=399.0)
    assert names(plan.evict) == ["short"] and plan.next_check == 1.0
    assert names(sim.run(unknown, {}, pods, now=400.0).evict) == ["plain", "short"]


def test_recovery_clears_taint_and_eviction_clock() -> None:
    sim = Sim()
    bad = [node("n1", ready="False", taints=[{"key": "keep", "effect": "NoSchedule"}])]
    plan = sim.run(bad, {}, [pod("a", "n1")], now=0.0)
    assert [t["key"] for t in plan.node_taints["n1"]] == ["keep", NOT_READY_TAINT]
    assert names(plan.pods_not_ready) == ["a"]  # at the transition
    # The agent is alive (it reports False itself) and set its pod Ready again: left to it.
    assert sim.run(bad, {}, [pod("a", "n1")], now=1.0).pods_not_ready == []
    good = [node("n1", ready="True", heartbeat="t1", taints=plan.node_taints["n1"])]
    plan = sim.run(good, {}, [pod("a", "n1")], now=200.0)
    assert plan.node_taints["n1"] == [{"key": "keep", "effect": "NoSchedule"}]
    assert plan.pods_not_ready == [] and sim.health["n1"].not_ready_since is None
    # NotReady again later: the eviction clock starts afresh.
    plan = sim.run(bad, {}, [pod("a", "n1", ready=False)], now=250.0)
    assert plan.pods_not_ready == []  # already not ready
    assert plan.evict == [] and plan.next_check == EVICT


def test_node_without_status_is_marked_never_updated() -> None:
    sim = Sim()
    sim.run([node("n1", ready=None)], {}, [], now=0.0)
    plan = sim.run([node("n1", ready=None)], {}, [], now=41.0)
    ready = plan.node_status["n1"]["conditions"][0]
    assert (ready["status"], ready["reason"]) == ("Unknown", "NodeStatusNeverUpdated")


def test_restart_gives_every_node_a_full_grace_period() -> None:
    stale = [node("n1")]
    plan = Sim().run(stale, {"n1": lease("n1", "ancient")}, [], now=1e9)
    assert plan == LifecyclePlan()


def test_pods_of_deleted_nodes_are_removed_after_grace() -> None:
    sim = Sim()
    pods = [pod("orphan", "gone"), pod("ok", "n1")]
    plan = sim.run([node("n1")], {}, pods, now=0.0)
    assert plan.evict == [] and plan.next_check == GRACE
    assert names(sim.run([node("n1", heartbeat="t1")], {}, pods, now=GRACE).evict) == ["orphan"]
    # The orphan went away: forgotten.
    sim.run([node("n1", heartbeat="t2")], {}, [pods[1]], now=GRACE + 1)
    assert sim.orphans == {}


def test_desired_taints_keeps_time_added() -> None:
    existing = [{"key": UNREACHABLE_TAINT, "effect": "NoExecute", "timeAdded": "2024-01-01T00:00:00Z"}]
    n = node("n1", ready="Unknown", taints=existing)
    assert desired_taints(n, "Unknown", 0.0) == existing
    swapped = desired_taints(n, "False", 0.0)
    assert [(t["key"], t["timeAdded"]) for t in swapped] == [(NOT_READY_TAINT, "1970-01-01T00:00:00Z")]


def test_eviction_delay() -> None:
    assert eviction_delay(pod("a", "n"), UNREACHABLE_TAINT, 300.0) == 300.0
    tol = [{"key": UNREACHABLE_TAINT, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 5},
           {"operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 60}]
    assert eviction_delay(pod("a", "n", tolerations=tol), UNREACHABLE_TAINT, 300.0) == 5.0
    assert eviction_delay(pod("a", "n", tolerations=tol), NOT_READY_TAINT, 300.0) == 60.0


def test_monitor_period_scales_with_grace() -> None:
    assert monitor_period(40.0) == 5.0
    assert monitor_period(2.0) == 0.25
    assert monitor_period(0.1) == 0.1
