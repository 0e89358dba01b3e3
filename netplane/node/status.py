"""Pure shapes of what the node agent reports: the Node it registers, its status, its Lease.

Like the kubelet: the Node is created once with its addresses and conditions;
afterwards liveness is the Lease in ``kube-node-lease`` (renewed every heartbeat
interval, cheap for every watcher), and the Node status is written only when
it changes or every ``status_report_interval`` (kubelet's nodeStatusReportFrequency).
"""

from __future__ import annotations

import platform
import socket
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

LEASE_NAMESPACE = "kube-node-lease"
DEFAULT_LEASE_DURATION = 40  # seconds, kubelet's default (node-monitor-grace-period)


def rfc3339(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def micro_time(t: datetime) -> str:
    """metav1.MicroTime, as Lease.spec.renewTime carries it."""
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def node_labels(name: str) -> dict[str, str]:
    return {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
            "kubernetes.io/arch": {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())}


def node_addresses(name: str, address: str) -> list[dict[str, str]]:
    return [{"type": "InternalIP", "address": address}, {"type": "Hostname", "address": name}]


def ready_condition(ready: bool, reason: str, message: str, now: datetime,
                    previous: Sequence[Mapping[str, Any]] | None = None) -> dict[str, str]:
    """The Ready condition; lastTransitionTime moves only when the status flips."""
    status = "True" if ready else "False"
    transition = rfc3339(now)
    for c in previous or []:
        if c.get("type") == "Ready" and c.get("status") == status and c.get("lastTransitionTime"):
            transition = str(c["lastTransitionTime"])
    return {"type": "Ready", "status": status, "reason": reason, "message": message,
            "lastHeartbeatTime": rfc3339(now), "lastTransitionTime": transition}


def network_condition(now: datetime, previous: Sequence[Mapping[str, Any]] | None = None) -> dict[str, str]:
    """NetworkUnavailable=False once routes are set up, as flannel and kube-router report it."""
    transition = rfc3339(now)
    for c in previous or []:
        if c.get("type") == "NetworkUnavailable" and c.get("status") == "False" and c.get("lastTransitionTime"):
            transition = str(c["lastTransitionTime"])
    return {"type": "NetworkUnavailable", "status": "False", "reason": "NetplaneIsUp",
            "message": "netplane node agent set up the pod network", "lastHeartbeatTime": rfc3339(now),
            "lastTransitionTime": transition}


def node_info() -> dict[str, str]:
    uname = platform.uname()
    return {"kernelVersion": uname.release, "osImage": "netplane lab", "operatingSystem": "linux",
            "architecture": node_labels("")["kubernetes.io/arch"], "containerRuntimeVersion": "netplane://0.1",
            "kubeletVersion": "netplane-0.1", "kubeProxyVersion": "", "machineID": "", "systemUUID": "",
            "bootID": "", "hostname": socket.gethostname()}


def node_status(name: str, address: str, ready: bool, reason: str, message: str, now: datetime,
                previous: Mapping[str, Any] | None = None, network_ready: bool = False) -> dict[str, Any]:
    prev_conditions = list((previous or {}).get("conditions") or [])
    conditions = [ready_condition(ready, reason, message, now, prev_conditions)]
    if network_ready:
        conditions.insert(0, network_condition(now, prev_conditions))
    # Keep conditions other agents report (e.g. a problem detector), as the kubelet does.
    ours = {c["type"] for c in conditions}
    conditions.extend(dict(c) for c in prev_conditions if c.get("type") not in ours)
    return {
        "addresses": node_addresses(name, address),
        "conditions": conditions,
        "nodeInfo": node_info(),
        "capacity": {"pods": "110"},
        "allocatable": {"pods": "110"},
    }


def status_differs(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> bool:
    """True when a status update would change more than heartbeat timestamps."""
    def strip(st: Mapping[str, Any] | None) -> Any:
        st = dict(st or {})
        st["conditions"] = sorted(
            ({k: v for k, v in c.items() if k != "lastHeartbeatTime"} for c in st.get("conditions") or []),
            key=lambda c: str(c.get("type")))
        st.pop("nodeInfo", None)
        return st
    return bool(strip(old) != strip(new))


def new_node(name: str, address: str, now: datetime, annotations: Mapping[str, str] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": node_labels(name), "annotations": dict(annotations or {})},
        "spec": {},
        "status": node_status(name, address, False, "AgentStarting", "netplane node agent is starting", now),
    }


def lease_object(node: str, now: datetime, duration: int = DEFAULT_LEASE_DURATION,
                 node_uid: str | None = None, existing: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The node's Lease, renewed at `now` (existing: the object read back, to keep its resourceVersion)."""
    meta: dict[str, Any] = dict((existing or {}).get("metadata") or {"name": node, "namespace": LEASE_NAMESPACE})
    if node_uid and not meta.get("ownerReferences"):
        meta["ownerReferences"] = [{"apiVersion": "v1", "kind": "Node", "name": node, "uid": node_uid}]
    spec = dict((existing or {}).get("spec") or {})
    spec.update({"holderIdentity": node, "leaseDurationSeconds": duration, "renewTime": micro_time(now)})
    return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": meta, "spec": spec}
