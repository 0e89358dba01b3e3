"""Node status, conditions and Lease shapes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from netplane.node import status

T0 = datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=UTC)


def test_ready_condition_transition_time_moves_only_on_flips() -> None:
    first = status.node_status("n1", "192.168.1.1", False, "Starting", "m", T0)
    later = status.node_status("n1", "192.168.1.1", False, "Starting", "m", T0 + timedelta(seconds=10), first)
    ready = next(c for c in later["conditions"] if c["type"] == "Ready")
    assert ready["lastTransitionTime"] == "2024-05-01T12:00:00Z"
    assert ready["lastHeartbeatTime"] == "2024-05-01T12:00:10Z"
    flipped = status.node_status("n1", "192.168.1.1", True, "Ok", "m", T0 + timedelta(seconds=20), later,
                                 network_ready=True)
    types = {c["type"]: c for c in flipped["conditions"]}
    assert types["Ready"]["status"] == "True" and types["Ready"]["lastTransitionTime"] == "2024-05-01T12:00:20Z"
    assert types["NetworkUnavailable"]["status"] == "False"
    assert flipped["addresses"] == [{"type": "InternalIP", "address": "192.168.1.1"},
                                    {"type": "Hostname", "address": "n1"}]


def test_other_agents_conditions_are_kept() -> None:
    prev = {"conditions": [{"type": "DiskPressure", "status": "False"}]}
    st = status.node_status("n1", "192.168.1.1", True, "Ok", "m", T0, prev)
    assert {"type": "DiskPressure", "status": "False"} in st["conditions"]


def test_status_differs_ignores_heartbeats() -> None:
    a = status.node_status("n1", "192.168.1.1", True, "Ok", "m", T0)
    b = status.node_status("n1", "192.168.1.1", True, "Ok", "m", T0 + timedelta(seconds=30), a)
    assert not status.status_differs(a, b)
    c = status.node_status("n1", "192.168.1.2", True, "Ok", "m", T0, a)
    assert status.status_differs(a, c)


def test_lease_renewal_keeps_metadata() -> None:
    lease = status.lease_object("n1", T0, 40, node_uid="uid-1")
    assert lease["metadata"] == {"name": "n1", "namespace": "kube-node-lease",
                                 "ownerReferences": [{"apiVersion": "v1", "kind": "Node", "name": "n1",
                                                      "uid": "uid-1"}]}
    assert lease["spec"] == {"holderIdentity": "n1", "leaseDurationSeconds": 40,
                             "renewTime": "2024-05-01T12:00:00.123456Z"}
    stored = {**lease, "metadata": {**lease["metadata"], "resourceVersion": "7"}}
    renewed = status.lease_object("n1", T0 + timedelta(seconds=10), 40, "uid-1", stored)
    assert renewed["metadata"]["resourceVersion"] == "7"
    assert renewed["spec"]["renewTime"] == "2024-05-01T12:00:10.123456Z"


def test_new_node_registers_not_ready_with_labels() -> None:
    n = status.new_node("n1", "192.168.1.1", T0, {"netplane.io/backend-type": "vxlan"})
    assert n["metadata"]["labels"]["kubernetes.io/hostname"] == "n1"
    assert n["metadata"]["annotations"] == {"netplane.io/backend-type": "vxlan"}
    assert next(c for c in n["status"]["conditions"] if c["type"] == "Ready")["status"] == "False"
