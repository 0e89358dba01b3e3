"""The EndpointSlice controller's reconcile step, as a pure function.

Given one Service, the pods of the cluster (or of its namespace) and the EndpointSlices
this controller already manages for the Service, :func:`desired_endpoint_slices` says
which slices to create, update and delete. The state server reads its store, calls
this, and writes the result with conflict-checked updates.

Semantics follow kube-controller-manager's EndpointSlice controller
(``k8s.io/endpointslice`` reconciler), discovery.k8s.io/v1 JSON shapes:

* Only Services with a non-empty selector get managed slices; ExternalName Services
  and selector-less ones get none, so their managed slices are deleted.
* Pods: same namespace, labels match the selector, have an IP, not Succeeded/Failed.
  Terminating pods (deletionTimestamp set) stay in, marked ``terminating``.
* Conditions: ``serving`` = pod Ready; ``ready`` = publishNotReadyAddresses or
  (serving and not terminating); ``terminating`` = deletionTimestamp set.
* Each service port becomes a slice port whose number is the resolved targetPort. A
  named targetPort that a pod does not declare is left out of that pod's port list, so
  pods with different resolved ports land in different slices (slices are keyed by
  their address type and port set).
* Minimal churn, the same algorithm as kube: keep slices that are already right, update
  slices whose endpoints changed, fill the fullest updated slices first, put small
  remainders into the unchanged slice they fit best, create new slices only for what
  is left, and turn a create plus a delete into one update of the doomed slice.
* When no slice would remain, one placeholder slice with no endpoints and no ports is
  kept (kube's placeholder, which kubectl shows as ``<unset>`` ports).

Deliberate differences from kube: endpoint order is deterministic (sorted by address)
where kube's is map order; a Service with no ``ipFamilies`` and no ClusterIP gets IPv4
slices only (kube's pre-dual-stack path would also make an IPv6 placeholder); zones,
topology hints and the last-change-trigger-time annotation are not produced.
"""

from __future__ import annotations

import copy
import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

__all__ = [
    "CONTROLLER_NAME",
    "LABEL_HEADLESS",
    "LABEL_MANAGED_BY",
    "LABEL_SERVICE_NAME",
    "SliceChanges",
    "desired_endpoint_slices",
]

LABEL_SERVICE_NAME: Final = "kubernetes.io/service-name"
LABEL_MANAGED_BY: Final = "endpointslice.kubernetes.io/managed-by"
LABEL_HEADLESS: Final = "service.kubernetes.io/headless"
CONTROLLER_NAME: Final = "endpointslice-controller.k8s.io"

# Service labels with these keys are never copied: the controller owns their values.
_RESERVED_LABELS: Final = frozenset({LABEL_SERVICE_NAME, LABEL_MANAGED_BY, LABEL_HEADLESS})

_API_VERSION: Final = "discovery.k8s.io/v1"
_IPV4: Final = "IPv4"
_IPV6: Final = "IPv6"

JSON = dict[str, Any]
# (name, protocol, port, appProtocol), sorted: two port lists with the same members
# in a different order describe the same slice, as kube's PortMapKey does.
_PortKey = tuple[tuple[str, str, int, str], ...]
# kube's endpoint hash: addresses, hostname and the target's namespace/name.
_EndpointId = tuple[tuple[str, ...], str, str, str]


@dataclass(frozen=True)
class SliceChanges:
    """What to write: new slices (``generateName``, no name), full replacements of
    existing slices (their metadata kept, for a conflict-checked update) and existing
    slices to delete (as given)."""

    create: list[JSON]
    update: list[JSON]
    delete: list[JSON]

    @property
    def empty(self) -> bool:
        return not (self.create or self.update or self.delete)


def desired_endpoint_slices(
    service: Mapping[str, Any],
    pods: Iterable[Mapping[str, Any]],
    existing: Iterable[Mapping[str, Any]],
    max_endpoints: int = 100,
) -> SliceChanges:
    """Reconcile one Service's managed EndpointSlices against its pods."""
    if max_endpoints < 1:
        raise ValueError(f"max_endpoints must be at least 1, got {max_endpoints}")
    meta = service.get("metadata") or {}
    spec = service.get("spec") or {}
    name = meta.get("name", "")
    namespace = meta.get("namespace") or "default"

    # Never touch slices someone else manages, even if the caller passes them.
    managed = sorted(
        (s for s in existing if _is_managed_by_us(s, name, namespace)),
        key=_slice_name,
    )
    selector = spec.get("selector") or {}
    if spec.get("type") == "ExternalName" or not selector:
        return SliceChanges(create=[], update=[], delete=[dict(s) for s in managed])

    context = _ServiceContext(service, max_endpoints)
    desired = _desired_endpoints(context, pods, selector)

    deletes: list[Mapping[str, Any]] = []
    by_type: dict[str, list[Mapping[str, Any]]] = {t: [] for t in context.address_types}
    for existing_slice in managed:
        address_type = existing_slice.get("addressType")
        if address_type in by_type and context.owns(existing_slice):
            by_type[address_type].append(existing_slice)
        else:
            deletes.append(existing_slice)

    creates: list[JSON] = []
    updates: list[JSON] = []
    for address_type in context.address_types:
        c, u, d = _reconcile_address_type(context, address_type, desired[address_type], by_type[address_type])
        creates += c
        updates += u
        deletes += d

    # A create and a delete of the same address type become one update of the doomed
    # slice: fewer objects churned, and watchers see one MODIFIED instead of two events.
    i = 0
    while i < len(deletes) and creates:
        doomed = deletes[i]
        replacement = creates[-1]
        if doomed.get("addressType") == replacement["addressType"] and context.owns(doomed):
            creates.pop()
            deletes.pop(i)
            updates.append(_recycle(doomed, replacement))
        else:
            i += 1

    if meta.get("deletionTimestamp"):
        # Racing the garbage collector with new slices for a dying Service helps no one.
        creates = []

    updates.sort(key=_slice_name)
    deletes.sort(key=_slice_name)
    return SliceChanges(create=creates, update=updates, delete=[dict(d) for d in deletes])


class _ServiceContext:
    """What the reconcile needs from the Service, computed once."""

    def __init__(self, service: Mapping[str, Any], max_endpoints: int) -> None:
        meta = service.get("metadata") or {}
        spec = service.get("spec") or {}
        self.name: str = meta.get("name", "")
        self.namespace: str = meta.get("namespace") or "default"
        self.uid: str = meta.get("uid") or ""
        self.ports: list[Mapping[str, Any]] = list(spec.get("ports") or [])
        self.publish_not_ready: bool = bool(spec.get("publishNotReadyAddresses"))
        self.max_endpoints = max_endpoints
        self.address_types = _address_types(spec)
        self.labels = _slice_labels(meta.get("labels") or {}, spec.get("clusterIP") or "", self.name)

    def owns(self, endpoint_slice: Mapping[str, Any]) -> bool:
        for ref in (endpoint_slice.get("metadata") or {}).get("ownerReferences") or []:
            if (
                ref.get("kind") == "Service"
                and ref.get("apiVersion") == "v1"
                and (ref.get("uid") or "") == self.uid
            ):
                return True
        return False

    def new_slice(self, address_type: str, ports: list[JSON]) -> JSON:
        return {
            "apiVersion": _API_VERSION,
            "kind": "EndpointSlice",
            "metadata": {
                "generateName": f"{self.name}-",
                "namespace": self.namespace,
                "labels": dict(self.labels),
                "ownerReferences": [
                    {
                        "apiVersion": "v1",
                        "kind": "Service",
                        "name": self.name,
                        "uid": self.uid,
                        "controller": True,
                        "blockOwnerDeletion": True,
                    }
                ],
            },
            "addressType": address_type,
            "endpoints": [],
            "ports": copy.deepcopy(ports),
        }


class _PortGroup:
    """Desired endpoints that share one address type and one resolved port list."""

    __slots__ = ("endpoints", "ports")

    def __init__(self, ports: list[JSON]) -> None:
        self.ports = ports
        self.endpoints: dict[_EndpointId, JSON] = {}


def _desired_endpoints(
    context: _ServiceContext, pods: Iterable[Mapping[str, Any]], selector: Mapping[str, Any]
) -> dict[str, dict[_PortKey, _PortGroup]]:
    desired: dict[str, dict[_PortKey, _PortGroup]] = {t: {} for t in context.address_types}
    for pod in pods:
        if not _pod_selected(pod, context.namespace, selector):
            continue
        ports = _endpoint_ports(context.ports, pod)
        key = _port_key(ports)
        for address_type in context.address_types:
            # kube records the port set even when the pod has no address of this
            # family, which keeps existing slices of that port set from being recycled.
            group = desired[address_type].setdefault(key, _PortGroup(ports))
            endpoint = _pod_to_endpoint(pod, context, address_type)
            if endpoint["addresses"]:
                group.endpoints[_endpoint_id(endpoint)] = endpoint
    return desired


def _reconcile_address_type(
    context: _ServiceContext,
    address_type: str,
    desired: dict[_PortKey, _PortGroup],
    existing: list[Mapping[str, Any]],
) -> tuple[list[JSON], list[JSON], list[Mapping[str, Any]]]:
    existing_by_key: dict[_PortKey, list[Mapping[str, Any]]] = {}
    for existing_slice in existing:
        existing_by_key.setdefault(_port_key(existing_slice.get("ports") or []), []).append(existing_slice)

    creates: list[JSON] = []
    updates: list[JSON] = []
    deletes: list[Mapping[str, Any]] = []
    for key in sorted(desired):
        group = desired[key]
        c, u, d = _reconcile_port_group(context, address_type, group, existing_by_key.get(key, []))
        creates += c
        updates += u
        deletes += d
    for key in sorted(existing_by_key):
        if key not in desired:
            deletes += existing_by_key[key]

    if len(existing) == len(deletes) and not creates:
        placeholder = context.new_slice(address_type, [])
        if len(deletes) == 1 and _is_placeholder_like(deletes[0], placeholder):
            deletes = []  # deleting and recreating the same empty slice is pure churn
        else:
            creates.append(placeholder)
    return creates, updates, deletes


def _reconcile_port_group(
    context: _ServiceContext,
    address_type: str,
    group: _PortGroup,
    existing: list[Mapping[str, Any]],
) -> tuple[list[JSON], list[JSON], list[Mapping[str, Any]]]:
    """kube's reconcileByPortMapping for one (address type, port set)."""
    wanted = dict(group.endpoints)
    to_update: dict[str, JSON] = {}
    unchanged: dict[str, Mapping[str, Any]] = {}
    deletes: list[Mapping[str, Any]] = []

    # 1. Keep what is still desired in each existing slice, refreshing stale endpoints.
    for existing_slice in existing:
        current = existing_slice.get("endpoints") or []
        kept: list[JSON] = []
        endpoint_changed = False
        for endpoint in current:
            want = wanted.pop(_endpoint_id(endpoint), None)
            if want is not None:
                kept.append(want)
                if _canonical(want) != _canonical(endpoint):
                    endpoint_changed = True
        labels_changed = ((existing_slice.get("metadata") or {}).get("labels") or {}) != context.labels
        slice_name = _slice_name(existing_slice)
        if endpoint_changed or len(kept) != len(current):
            if kept:
                to_update[slice_name] = _replace(existing_slice, kept, context.labels)
            else:
                deletes.append(existing_slice)
        elif labels_changed:
            to_update[slice_name] = _replace(existing_slice, list(current), context.labels)
        else:
            unchanged[slice_name] = existing_slice

    remaining = sorted(wanted.values(), key=_endpoint_sort_key)
    remaining.reverse()  # pop() from the end hands out the lowest address first

    # 2. Top up slices that are being written anyway, fullest first.
    if remaining and to_update:
        for updated in sorted(to_update.values(), key=lambda s: (-len(s["endpoints"]), _slice_name(s))):
            while remaining and len(updated["endpoints"]) < context.max_endpoints:
                updated["endpoints"].append(remaining.pop())

    # 3. Put a small remainder into the unchanged slice it fills best, else new slices.
    creates: list[JSON] = []
    while remaining:
        target: JSON | None = None
        if len(remaining) < context.max_endpoints and unchanged:
            best = _slice_to_fill(list(unchanged.values()), len(remaining), context.max_endpoints)
            if best is not None:
                best_name = _slice_name(best)
                del unchanged[best_name]
                target = _replace(best, list(best.get("endpoints") or []), context.labels)
                to_update[best_name] = target
        if target is None:
            target = context.new_slice(address_type, group.ports)
            creates.append(target)
        while remaining and len(target["endpoints"]) < context.max_endpoints:
            target["endpoints"].append(remaining.pop())

    for written in [*creates, *to_update.values()]:
        written["endpoints"].sort(key=_endpoint_sort_key)
    return creates, list(to_update.values()), deletes


def _slice_to_fill(
    candidates: list[Mapping[str, Any]], count: int, max_endpoints: int
) -> Mapping[str, Any] | None:
    """The slice that ends up closest to full after adding ``count`` endpoints."""
    closest_diff = max_endpoints
    closest: Mapping[str, Any] | None = None
    for candidate in candidates:  # already in name order, so ties resolve deterministically
        diff = max_endpoints - (count + len(candidate.get("endpoints") or []))
        if 0 <= diff < closest_diff:
            closest_diff, closest = diff, candidate
            if diff == 0:
                break
    return closest


def _replace(existing_slice: Mapping[str, Any], endpoints: list[JSON], labels: Mapping[str, str]) -> JSON:
    """A copy of an existing slice (metadata intact) with new endpoints and labels."""
    updated = copy.deepcopy(dict(existing_slice))
    updated.setdefault("apiVersion", _API_VERSION)
    updated.setdefault("kind", "EndpointSlice")
    updated.setdefault("metadata", {})["labels"] = dict(labels)
    updated["endpoints"] = [copy.deepcopy(e) for e in endpoints]
    return updated


def _recycle(doomed: Mapping[str, Any], replacement: JSON) -> JSON:
    """Reuse a slice that would be deleted to hold a slice that would be created."""
    recycled = copy.deepcopy(dict(doomed))
    recycled.setdefault("apiVersion", _API_VERSION)
    recycled.setdefault("kind", "EndpointSlice")
    metadata = recycled.setdefault("metadata", {})
    metadata["labels"] = dict(replacement["metadata"]["labels"])
    metadata["ownerReferences"] = copy.deepcopy(replacement["metadata"]["ownerReferences"])
    recycled["addressType"] = replacement["addressType"]
    recycled["ports"] = copy.deepcopy(replacement["ports"])
    recycled["endpoints"] = copy.deepcopy(replacement["endpoints"])
    return recycled


def _is_placeholder_like(existing_slice: Mapping[str, Any], placeholder: JSON) -> bool:
    meta = existing_slice.get("metadata") or {}
    return (
        existing_slice.get("addressType") == placeholder["addressType"]
        and (meta.get("namespace") or "default") == placeholder["metadata"]["namespace"]
        and (meta.get("labels") or {}) == placeholder["metadata"]["labels"]
        and not existing_slice.get("ports")
        and not existing_slice.get("endpoints")
    )


def _is_managed_by_us(endpoint_slice: Mapping[str, Any], service_name: str, namespace: str) -> bool:
    meta = endpoint_slice.get("metadata") or {}
    labels = meta.get("labels") or {}
    return (
        labels.get(LABEL_SERVICE_NAME) == service_name
        and labels.get(LABEL_MANAGED_BY) == CONTROLLER_NAME
        and (meta.get("namespace") or "default") == namespace
    )


def _address_types(spec: Mapping[str, Any]) -> list[str]:
    families = spec.get("ipFamilies") or []
    types = [t for t in (_IPV4, _IPV6) if t in families]
    if types:
        return types
    cluster_ip = spec.get("clusterIP") or ""
    if cluster_ip and cluster_ip != "None":
        try:
            return [_IPV6 if ipaddress.ip_address(cluster_ip).version == 6 else _IPV4]
        except ValueError:
            pass
    return [_IPV4]


def _slice_labels(service_labels: Mapping[str, str], cluster_ip: str, service_name: str) -> dict[str, str]:
    labels = {k: v for k, v in service_labels.items() if k not in _RESERVED_LABELS}
    if cluster_ip in ("", "None"):
        labels[LABEL_HEADLESS] = ""
    labels[LABEL_SERVICE_NAME] = service_name
    labels[LABEL_MANAGED_BY] = CONTROLLER_NAME
    return labels


def _pod_selected(pod: Mapping[str, Any], namespace: str, selector: Mapping[str, Any]) -> bool:
    meta = pod.get("metadata") or {}
    if (meta.get("namespace") or "default") != namespace:
        return False
    labels = meta.get("labels") or {}
    if any(labels.get(k) != v for k, v in selector.items()):
        return False
    status = pod.get("status") or {}
    if status.get("phase") in ("Succeeded", "Failed"):
        return False
    return bool(_pod_ips(status))


def _pod_ips(status: Mapping[str, Any]) -> list[str]:
    ips = [entry.get("ip") for entry in status.get("podIPs") or [] if entry.get("ip")]
    if not ips and status.get("podIP"):
        ips = [status["podIP"]]
    return ips


def _is_ipv6(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).version == 6
    except ValueError:
        return ":" in address


def _pod_to_endpoint(pod: Mapping[str, Any], context: _ServiceContext, address_type: str) -> JSON:
    meta = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    status = pod.get("status") or {}
    serving = any(
        c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or []
    )
    terminating = bool(meta.get("deletionTimestamp"))
    # kube never reports a terminating endpoint as ready, unless the Service asks to
    # publish not-ready addresses (then everything is "ready").
    ready = context.publish_not_ready or (serving and not terminating)
    want_v6 = address_type == _IPV6
    target_ref: JSON = {
        "kind": "Pod",
        "namespace": meta.get("namespace") or "default",
        "name": meta.get("name", ""),
    }
    if meta.get("uid"):
        target_ref["uid"] = meta["uid"]
    endpoint: JSON = {
        "addresses": [ip for ip in _pod_ips(status) if _is_ipv6(ip) == want_v6],
        "conditions": {"ready": ready, "serving": serving, "terminating": terminating},
        "targetRef": target_ref,
    }
    if spec.get("nodeName"):
        endpoint["nodeName"] = spec["nodeName"]
    hostname = spec.get("hostname")
    if hostname and spec.get("subdomain") == context.name and target_ref["namespace"] == context.namespace:
        endpoint["hostname"] = hostname
    return endpoint


def _endpoint_ports(service_ports: list[Mapping[str, Any]], pod: Mapping[str, Any]) -> list[JSON]:
    ports: list[JSON] = []
    for service_port in service_ports:
        number = _find_port(pod, service_port)
        if number is None:
            continue  # kube: this pod's endpoint simply lacks the port
        port: JSON = {
            "name": service_port.get("name") or "",
            "protocol": service_port.get("protocol") or "TCP",
            "port": number,
        }
        if service_port.get("appProtocol"):
            port["appProtocol"] = service_port["appProtocol"]
        ports.append(port)
    return ports


def _find_port(pod: Mapping[str, Any], service_port: Mapping[str, Any]) -> int | None:
    """kube's FindPort: a number as is, a name looked up in the pod's container ports."""
    target = service_port.get("targetPort")
    if target is None or target == 0 or target == "":
        target = service_port.get("port")
    if isinstance(target, int):
        return target
    if not isinstance(target, str):
        return None
    if target.isdigit():
        # kube's validation would reject a numeric string; tolerate it as the number.
        return int(target)
    protocol = service_port.get("protocol") or "TCP"
    spec = pod.get("spec") or {}
    containers = list(spec.get("containers") or [])
    # Sidecars (restartable init containers) serve traffic too, and kube looks there.
    containers += [c for c in spec.get("initContainers") or [] if c.get("restartPolicy") == "Always"]
    for container in containers:
        for container_port in container.get("ports") or []:
            if container_port.get("name") == target and (container_port.get("protocol") or "TCP") == protocol:
                number = container_port.get("containerPort")
                return int(number) if number is not None else None
    return None


def _port_key(ports: Iterable[Mapping[str, Any]]) -> _PortKey:
    return tuple(
        sorted(
            (
                p.get("name") or "",
                p.get("protocol") or "TCP",
                int(p.get("port") or 0),
                p.get("appProtocol") or "",
            )
            for p in ports
        )
    )


def _endpoint_id(endpoint: Mapping[str, Any]) -> _EndpointId:
    ref = endpoint.get("targetRef") or {}
    return (
        tuple(sorted(endpoint.get("addresses") or [])),
        endpoint.get("hostname") or "",
        ref.get("namespace") or "",
        ref.get("name") or "",
    )


def _endpoint_sort_key(endpoint: Mapping[str, Any]) -> tuple[int, int, str, str]:
    addresses = endpoint.get("addresses") or [""]
    name = (endpoint.get("targetRef") or {}).get("name") or ""
    try:
        address = ipaddress.ip_address(addresses[0])
    except ValueError:
        return (99, 0, addresses[0], name)
    return (address.version, int(address), "", name)


def _canonical(value: Any) -> Any:
    """A comparable form: null fields dropped and addresses order-insensitive."""
    if isinstance(value, Mapping):
        result = {k: _canonical(v) for k, v in value.items() if v is not None}
        if isinstance(result.get("addresses"), list):
            result["addresses"] = sorted(result["addresses"])
        return result
    if isinstance(value, list):
        return [_canonical(v) for v in value]
    return value


def _slice_name(endpoint_slice: Mapping[str, Any]) -> str:
    return str((endpoint_slice.get("metadata") or {}).get("name") or "")
