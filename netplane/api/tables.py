"""Server-side printing: meta.k8s.io/v1 Table responses, which `kubectl get` asks for.

kubectl sends `Accept: application/json;as=Table;v=v1;g=meta.k8s.io,...` and prints whatever
columns the server returns (upper-cased), hiding priority>0 columns unless `-o wide`. The
columns and cell formats here follow kube-apiserver's printers for the same kinds, so
`kubectl get` output reads as it does against a real cluster. Kinds without a printer get
kube's default table: Name and Created At.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from netplane.api.resources import ResourceInfo

Obj = dict[str, Any]
Cell = str | int | bool

INCLUDE_OBJECT_VALUES = ("None", "Metadata", "Object")


def wants_table(accept: str) -> bool:
    """True when an Accept header asks for a meta.k8s.io/v1 Table (kubectl get does)."""
    for media_range in accept.split(","):
        parts = [p.strip() for p in media_range.split(";")]
        if parts[0] not in ("application/json", "*/*", "application/*"):
            continue
        params: dict[str, str] = {}
        for p in parts[1:]:
            name, _, value = p.partition("=")
            params[name.strip().lower()] = value.strip().strip('"')
        if params.get("as") == "Table" and params.get("g") == "meta.k8s.io" and params.get("v") == "v1":
            return True
    return False


# --------------------------------------------------------------------------- time

def parse_time(value: Any) -> datetime | None:
    """An RFC 3339 timestamp (Time or MicroTime) as an aware datetime; None when absent or bad."""
    if not isinstance(value, str) or not value:
        return None
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def human_duration(seconds: float) -> str:
    """kube's short human duration (apimachinery duration.HumanDuration): 5s, 3m2s, 5h, 2d3h, 3y."""
    whole = int(seconds)
    if whole < -1:
        return "<invalid>"  # more than a second of clock skew into the future
    if whole < 0:
        return "0s"
    if whole < 120:
        return f"{whole}s"
    minutes = whole // 60
    if minutes < 10:
        rest = whole % 60
        return f"{minutes}m{rest}s" if rest else f"{minutes}m"
    if minutes < 180:
        return f"{minutes}m"
    hours = whole // 3600
    if hours < 8:
        rest = minutes % 60
        return f"{hours}h{rest}m" if rest else f"{hours}h"
    if hours < 48:
        return f"{hours}h"
    if hours < 24 * 8:
        rest = hours % 24
        return f"{hours // 24}d{rest}h" if rest else f"{hours // 24}d"
    if hours < 24 * 365 * 2:
        return f"{hours // 24}d"
    if hours < 24 * 365 * 8:
        days = (hours // 24) % 365
        return f"{hours // 24 // 365}y{days}d" if days else f"{hours // 24 // 365}y"
    return f"{hours // 24 // 365}y"


def _since(value: Any, now: datetime) -> str:
    when = parse_time(value)
    if when is None:
        return "<unknown>"
    return human_duration((now - when).total_seconds())


# --------------------------------------------------------------------------- helpers

def _get(obj: Any, *path: str, default: Any = None) -> Any:
    for key in path:
        if not isinstance(obj, dict):
            return default
        obj = obj.get(key)
    return default if obj is None else obj


def _age(obj: Obj, now: datetime) -> str:
    return _since(_get(obj, "metadata", "creationTimestamp"), now)


def _name(obj: Obj) -> str:
    return str(_get(obj, "metadata", "name", default=""))


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def format_labels(labels: Any) -> str:
    """k=v pairs sorted by key (labels.FormatLabels); <none> when empty."""
    if not isinstance(labels, dict) or not labels:
        return "<none>"
    return ",".join(f"{k}={labels[k]}" for k in sorted(labels))


def format_label_selector(selector: Any, empty: str = "<none>") -> str:
    """A LabelSelector as kube prints it: requirements sorted by key ("app=web,tier in (a,b)")."""
    if not isinstance(selector, dict):
        return empty
    reqs: list[tuple[str, str]] = []
    for key, value in (selector.get("matchLabels") or {}).items():
        reqs.append((key, f"{key}={value}"))
    for expr in selector.get("matchExpressions") or []:
        key, op = expr.get("key", ""), expr.get("operator", "")
        values = ",".join(sorted(str(v) for v in expr.get("values") or []))
        text = {"In": f"{key} in ({values})", "NotIn": f"{key} notin ({values})",
                "Exists": key, "DoesNotExist": f"!{key}"}.get(op, f"{key} {op} ({values})")
        reqs.append((key, text))
    if not reqs:
        return empty
    return ",".join(text for _, text in sorted(reqs, key=lambda r: r[0]))


def _containers(obj: Obj) -> tuple[str, str]:
    containers = _get(obj, "spec", "template", "spec", "containers", default=[])
    names = ",".join(str(c.get("name", "")) for c in containers if isinstance(c, dict))
    images = ",".join(str(c.get("image", "")) for c in containers if isinstance(c, dict))
    return names, images


def _with_more(items: list[str], total: int, limit: int = 3, empty: str = "<unset>") -> str:
    text = ",".join(items[:limit])
    if total > limit:
        return f"{text} + {total - limit} more..."
    return text or empty


# --------------------------------------------------------------------------- printers

Column = tuple[str, str, str, int]  # name, type, description, priority
Printer = Callable[[Obj, datetime], list[Cell]]

_NAME: Column = ("Name", "string", "Name must be unique within a namespace.", 0)
_AGE: Column = ("Age", "string", "How long ago the object was created.", 0)


def _pod_row(pod: Obj, now: datetime) -> list[Cell]:
    spec, status = _get(pod, "spec", default={}), _get(pod, "status", default={})
    phase = status.get("phase") or ""
    reason = status.get("reason") or phase
    for cond in status.get("conditions") or []:
        if cond.get("type") == "PodScheduled" and cond.get("reason") == "SchedulingGated":
            reason = "SchedulingGated"
    init_specs = {c.get("name"): c for c in spec.get("initContainers") or []}
    total = len(spec.get("containers") or [])
    total += sum(1 for c in init_specs.values() if c.get("restartPolicy") == "Always")
    ready = restarts = 0
    last_restart: datetime | None = None

    def note_restart(cs: Obj) -> None:
        nonlocal last_restart
        finished = parse_time(_get(cs, "lastState", "terminated", "finishedAt"))
        if finished and (last_restart is None or finished > last_restart):
            last_restart = finished

    initializing = False
    init_statuses = status.get("initContainerStatuses") or []
    for i, cs in enumerate(init_statuses):
        restarts += _int(cs.get("restartCount"))
        note_restart(cs)
        state = cs.get("state") or {}
        sidecar = init_specs.get(cs.get("name"), {}).get("restartPolicy") == "Always"
        terminated, waiting = state.get("terminated"), state.get("waiting")
        if terminated and terminated.get("exitCode") == 0:
            continue
        if sidecar and cs.get("started"):
            ready += 1 if cs.get("ready") else 0
            continue
        if terminated:
            code = terminated.get("reason") or (f"Signal:{terminated['signal']}" if terminated.get("signal")
                                                else f"ExitCode:{terminated.get('exitCode', 0)}")
            reason = "Init:" + code
        elif waiting and waiting.get("reason") and waiting.get("reason") != "PodInitializing":
            reason = "Init:" + waiting["reason"]
        else:
            reason = f"Init:{i}/{len(init_specs)}"
        initializing = True
        break

    initialized = any(c.get("type") == "Initialized" and c.get("status") == "True"
                      for c in status.get("conditions") or [])
    if not initializing or initialized:
        restarts = sum(_int(cs.get("restartCount")) for cs in init_statuses
                       if init_specs.get(cs.get("name"), {}).get("restartPolicy") == "Always")
        has_running = False
        for cs in reversed(status.get("containerStatuses") or []):
            restarts += _int(cs.get("restartCount"))
            note_restart(cs)
            state = cs.get("state") or {}
            waiting, terminated = state.get("waiting"), state.get("terminated")
            if waiting and waiting.get("reason"):
                reason = waiting["reason"]
            elif terminated and terminated.get("reason"):
                reason = terminated["reason"]
            elif terminated:
                reason = (f"Signal:{terminated['signal']}" if terminated.get("signal")
                          else f"ExitCode:{terminated.get('exitCode', 0)}")
            elif cs.get("ready") and state.get("running") is not None:
                has_running = True
                ready += 1
        if reason == "Completed" and has_running:
            pod_ready = any(c.get("type") == "Ready" and c.get("status") == "True"
                            for c in status.get("conditions") or [])
            reason = "Running" if pod_ready else "NotReady"

    if _get(pod, "metadata", "deletionTimestamp"):
        if status.get("reason") == "NodeLost":
            reason = "Unknown"
        elif phase not in ("Succeeded", "Failed"):
            reason = "Terminating"

    restarts_text = str(restarts)
    if restarts and last_restart is not None:
        restarts_text = f"{restarts} ({human_duration((now - last_restart).total_seconds())} ago)"
    pod_ips = status.get("podIPs") or []
    ip = (pod_ips[0].get("ip") if pod_ips and isinstance(pod_ips[0], dict) else None) or status.get("podIP")
    gates = spec.get("readinessGates") or []
    gates_text = "<none>"
    if gates:
        conditions = {c.get("type"): c.get("status") for c in status.get("conditions") or []}
        passed = sum(1 for g in gates if conditions.get(g.get("conditionType")) == "True")
        gates_text = f"{passed}/{len(gates)}"
    return [_name(pod), f"{ready}/{total}", reason, restarts_text, _age(pod, now),
            ip or "<none>", spec.get("nodeName") or "<none>",
            status.get("nominatedNodeName") or "<none>", gates_text]


def _service_external_ip(svc: Obj) -> str:
    spec = _get(svc, "spec", default={})
    svc_type = spec.get("type") or "ClusterIP"
    external = [str(ip) for ip in spec.get("externalIPs") or []]
    if svc_type in ("ClusterIP", "NodePort"):
        return ",".join(external) or "<none>"
    if svc_type == "LoadBalancer":
        lb = []
        for ing in _get(svc, "status", "loadBalancer", "ingress", default=[]):
            value = ing.get("ip") or ing.get("hostname")
            if value and value not in lb:
                lb.append(value)
        return ",".join(lb + external) or "<pending>"
    if svc_type == "ExternalName":
        return str(spec.get("externalName") or "")
    return "<unknown>"


def _service_row(svc: Obj, now: datetime) -> list[Cell]:
    spec = _get(svc, "spec", default={})
    cluster_ips = spec.get("clusterIPs") or ([spec["clusterIP"]] if spec.get("clusterIP") else [])
    ports = []
    for p in spec.get("ports") or []:
        proto = p.get("protocol") or "TCP"
        node_port = _int(p.get("nodePort"))
        ports.append(f"{p.get('port')}:{node_port}/{proto}" if node_port > 0 else f"{p.get('port')}/{proto}")
    return [_name(svc), spec.get("type") or "ClusterIP", cluster_ips[0] if cluster_ips else "<none>",
            _service_external_ip(svc), ",".join(ports) or "<none>", _age(svc, now),
            format_labels(spec.get("selector"))]


def _deployment_row(d: Obj, now: datetime) -> list[Cell]:
    status = _get(d, "status", default={})
    names, images = _containers(d)
    desired = _int(_get(d, "spec", "replicas"))
    return [_name(d), f"{_int(status.get('readyReplicas'))}/{desired}", _int(status.get("updatedReplicas")),
            _int(status.get("availableReplicas")), _age(d, now), names, images,
            format_label_selector(_get(d, "spec", "selector"), empty="")]


def _replicaset_row(rs: Obj, now: datetime) -> list[Cell]:
    status = _get(rs, "status", default={})
    names, images = _containers(rs)
    return [_name(rs), _int(_get(rs, "spec", "replicas")), _int(status.get("replicas")),
            _int(status.get("readyReplicas")), _age(rs, now), names, images,
            format_label_selector(_get(rs, "spec", "selector"))]


def _node_row(node: Obj, now: datetime) -> list[Cell]:
    status = _get(node, "status", default={})
    states = []
    for cond in status.get("conditions") or []:
        if cond.get("type") == "Ready":
            states = ["Ready" if cond.get("status") == "True" else "NotReady"]
    if not states:
        states = ["Unknown"]
    if _get(node, "spec", "unschedulable"):
        states.append("SchedulingDisabled")
    roles = set()
    for key, value in (_get(node, "metadata", "labels", default={})).items():
        if key.startswith("node-role.kubernetes.io/") and key[len("node-role.kubernetes.io/"):]:
            roles.add(key[len("node-role.kubernetes.io/"):])
        elif key == "kubernetes.io/role" and value:
            roles.add(value)
    info = status.get("nodeInfo") or {}

    def address(kind: str) -> str:
        for a in status.get("addresses") or []:
            if a.get("type") == kind:
                return str(a.get("address", ""))
        return "<none>"

    return [_name(node), ",".join(states), ",".join(sorted(roles)) or "<none>", _age(node, now),
            info.get("kubeletVersion") or "", address("InternalIP"), address("ExternalIP"),
            info.get("osImage") or "<unknown>", info.get("kernelVersion") or "<unknown>",
            info.get("containerRuntimeVersion") or "<unknown>"]


def _endpointslice_row(s: Obj, now: datetime) -> list[Cell]:
    ports = []
    for p in s.get("ports") or []:
        port = p.get("port")
        ports.append(str(port) if port is not None else (p.get("name") or "*"))
    addresses = [str(a) for e in s.get("endpoints") or [] for a in e.get("addresses") or []]
    return [_name(s), s.get("addressType") or "", _with_more(ports, len(ports)),
            _with_more(addresses, len(addresses)), _age(s, now)]


def _ingress_row(ing: Obj, now: datetime) -> list[Cell]:
    spec = _get(ing, "spec", default={})
    rules = spec.get("rules") or []
    hosts = [r["host"] for r in rules[:3] if r.get("host")]
    hosts_text = ",".join(hosts) or "*"
    if len(rules) > 3 and hosts:
        hosts_text += f" + {len(rules) - 3} more..."
    addresses: list[str] = []
    for lb in _get(ing, "status", "loadBalancer", "ingress", default=[]):
        value = lb.get("ip") or lb.get("hostname")
        if value and value not in addresses:
            addresses.append(value)
    return [_name(ing), spec.get("ingressClassName") or "<none>", hosts_text, ",".join(addresses),
            "80, 443" if spec.get("tls") else "80", _age(ing, now)]


def _ingressclass_row(ic: Obj, now: datetime) -> list[Cell]:
    params = _get(ic, "spec", "parameters")
    text = "<none>"
    if isinstance(params, dict):
        text = str(params.get("kind", ""))
        if params.get("apiGroup"):
            text += "." + str(params["apiGroup"])
        text += "/" + str(params.get("name", ""))
    return [_name(ic), _get(ic, "spec", "controller", default=""), text, _age(ic, now)]


def _event_row(ev: Obj, now: datetime) -> list[Cell]:
    first = (_since(ev.get("firstTimestamp"), now) if ev.get("firstTimestamp")
             else _since(ev.get("eventTime"), now))
    last = _since(ev.get("lastTimestamp"), now) if ev.get("lastTimestamp") else first
    count = _int(ev.get("count"))
    series = ev.get("series")
    if isinstance(series, dict):
        last = _since(series.get("lastObservedTime"), now)
        count = _int(series.get("count"))
    elif count == 0:
        count = 1  # singleton events carry no count in the events.k8s.io API
    involved = ev.get("involvedObject") or {}
    target = str(involved.get("kind", "")).lower()
    if involved.get("name"):
        target += "/" + str(involved["name"])
    source = ev.get("source") or {}
    component = source.get("component") or ev.get("reportingComponent") or ""
    host = source.get("host") or ev.get("reportingInstance") or ""
    return [last, ev.get("type") or "", ev.get("reason") or "", target, involved.get("fieldPath") or "",
            f"{component}, {host}" if host else component, str(ev.get("message") or "").strip(),
            first, count, _name(ev)]


_PRINTERS: dict[str, tuple[list[Column], Printer]] = {
    "Pod": ([
        _NAME,
        ("Ready", "string", "The aggregate readiness state of this pod for accepting traffic.", 0),
        ("Status", "string", "The aggregate status of the containers in this pod.", 0),
        ("Restarts", "string", "How many times the pod's containers restarted, and when last.", 0),
        _AGE,
        ("IP", "string", "The pod's IP address.", 1),
        ("Node", "string", "The node the pod is bound to.", 1),
        ("Nominated Node", "string", "The node the scheduler nominated for preemption.", 1),
        ("Readiness Gates", "string", "How many of the pod's readiness gates are met.", 1),
    ], _pod_row),
    "Service": ([
        _NAME,
        ("Type", "string", "How the service is exposed.", 0),
        ("Cluster-IP", "string", "The service's cluster IP.", 0),
        ("External-IP", "string", "External IPs or load-balancer addresses.", 0),
        ("Port(s)", "string", "The service's ports (port[:nodePort]/protocol).", 0),
        _AGE,
        ("Selector", "string", "The labels of the pods behind the service.", 1),
    ], _service_row),
    "Deployment": ([
        _NAME,
        ("Ready", "string", "Ready replicas out of desired.", 0),
        ("Up-to-date", "string", "Replicas running the current pod template.", 0),
        ("Available", "string", "Replicas available to serve.", 0),
        _AGE,
        ("Containers", "string", "Names of each container in the template.", 1),
        ("Images", "string", "Images referenced by each container in the template.", 1),
        ("Selector", "string", "The label selector of the deployment's pods.", 1),
    ], _deployment_row),
    "ReplicaSet": ([
        _NAME,
        ("Desired", "integer", "The number of replicas wanted.", 0),
        ("Current", "integer", "The number of replicas that exist.", 0),
        ("Ready", "integer", "The number of ready replicas.", 0),
        _AGE,
        ("Containers", "string", "Names of each container in the template.", 1),
        ("Images", "string", "Images referenced by each container in the template.", 1),
        ("Selector", "string", "The label selector of the replica set's pods.", 1),
    ], _replicaset_row),
    "Node": ([
        _NAME,
        ("Status", "string", "The status of the node.", 0),
        ("Roles", "string", "The roles of the node.", 0),
        _AGE,
        ("Version", "string", "The kubelet version the node reports.", 0),
        ("Internal-IP", "string", "The node's internal address.", 1),
        ("External-IP", "string", "The node's external address.", 1),
        ("OS-Image", "string", "The node's operating system image.", 1),
        ("Kernel-Version", "string", "The node's kernel version.", 1),
        ("Container-Runtime", "string", "The node's container runtime.", 1),
    ], _node_row),
    "Namespace": ([
        _NAME, ("Status", "string", "The status of the namespace.", 0), _AGE,
    ], lambda o, now: [_name(o), _get(o, "status", "phase", default=""), _age(o, now)]),
    "EndpointSlice": ([
        _NAME,
        ("AddressType", "string", "The type of the addresses in this slice.", 0),
        ("Ports", "string", "The ports of the endpoints.", 0),
        ("Endpoints", "string", "The addresses of the endpoints.", 0),
        _AGE,
    ], _endpointslice_row),
    "Ingress": ([
        _NAME,
        ("Class", "string", "The IngressClass this ingress uses.", 0),
        ("Hosts", "string", "Hosts that incoming requests are matched against.", 0),
        ("Address", "string", "Addresses where the ingress is reachable.", 0),
        ("Ports", "string", "Ports the ingress listens on.", 0),
        _AGE,
    ], _ingress_row),
    "IngressClass": ([
        _NAME,
        ("Controller", "string", "The controller that implements this class.", 0),
        ("Parameters", "string", "A reference to a resource with additional parameters.", 0),
        _AGE,
    ], _ingressclass_row),
    "Lease": ([
        _NAME, ("Holder", "string", "The identity of the lease's holder.", 0), _AGE,
    ], lambda o, now: [_name(o), _get(o, "spec", "holderIdentity", default=""), _age(o, now)]),
    "Event": ([
        ("Last Seen", "string", "When the event was last seen.", 0),
        ("Type", "string", "The type of the event (Normal, Warning).", 0),
        ("Reason", "string", "Why the event happened, in CamelCase.", 0),
        ("Object", "string", "The object the event is about.", 0),
        ("Subobject", "string", "The part of the object the event is about.", 1),
        ("Source", "string", "The component that reported the event.", 1),
        ("Message", "string", "A human-readable description.", 0),
        ("First Seen", "string", "When the event was first seen.", 1),
        ("Count", "string", "How many times the event happened.", 1),
        ("Name", "string", "Name must be unique within a namespace.", 1),
    ], _event_row),
    "Secret": ([
        _NAME, ("Type", "string", "The type of the secret.", 0),
        ("Data", "string", "The number of data entries.", 0), _AGE,
    ], lambda o, now: [_name(o), o.get("type") or "", len(o.get("data") or {}), _age(o, now)]),
    "ConfigMap": ([
        _NAME, ("Data", "string", "The number of data entries.", 0), _AGE,
    ], lambda o, now: [_name(o), len(o.get("data") or {}) + len(o.get("binaryData") or {}), _age(o, now)]),
}

# kube's default table for kinds without a printer.
_DEFAULT: tuple[list[Column], Printer] = (
    [_NAME, ("Created At", "date", "When the object was created.", 0)],
    lambda o, now: [_name(o), _get(o, "metadata", "creationTimestamp", default="")],
)


def columns_for(kind: str) -> list[Obj]:
    columns, _ = _PRINTERS.get(kind, _DEFAULT)
    out = []
    for name, kind_, description, priority in columns:
        column: Obj = {"name": name, "type": kind_, "format": "name" if name == "Name" else "",
                       "description": description, "priority": priority}
        out.append(column)
    return out


def _row_object(obj: Obj, include_object: str) -> Obj | None:
    if include_object == "None":
        return None
    if include_object == "Object":
        return copy.deepcopy(obj)
    return {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
            "metadata": copy.deepcopy(obj.get("metadata") or {})}


def to_table(
    info: ResourceInfo,
    objects: list[Obj],
    *,
    include_object: str = "Metadata",
    list_meta: Obj | None = None,
    now: datetime | None = None,
) -> Obj:
    """A meta.k8s.io/v1 Table of `objects` (kube's printer columns for `info.kind`).

    include_object (the includeObject query parameter): "None" (no object in rows), "Metadata"
    (a PartialObjectMetadata, the default) or "Object" (the whole object).
    """
    if include_object not in INCLUDE_OBJECT_VALUES:
        include_object = "Metadata"
    now = now or datetime.now(UTC)
    _, printer = _PRINTERS.get(info.kind, _DEFAULT)
    rows = []
    for obj in objects:
        row: Obj = {"cells": printer(obj, now)}
        embedded = _row_object(obj, include_object)
        if embedded is not None:
            row["object"] = embedded
        rows.append(row)
    return {
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": dict(list_meta or {}),
        "columnDefinitions": columns_for(info.kind),
        "rows": rows,
    }
