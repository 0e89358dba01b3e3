"""kube-apiserver's defaulting, for the fields users see and the data plane reads.

The rules follow the v1 defaulting functions of kube (SetDefaults_Service, SetDefaults_PodSpec,
SetDefaults_Deployment, ...) plus the create-time touches of the registry strategies that show up
in every object (a Namespace's finalizer and name label, a Secret's stringData). Defaulting runs
before validation and never raises: values of the wrong type are left for validation to report.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

from netplane.api.resources import ResourceInfo

DEFAULT_SESSION_AFFINITY_TIMEOUT = 10800  # 3 hours, kube's DefaultClientIPServiceAffinitySeconds
DEFAULT_TERMINATION_GRACE_PERIOD = 30
DEFAULT_SCHEDULER = "default-scheduler"
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"

Obj = dict[str, Any]


def apply_defaults(info: ResourceInfo, obj: dict[str, Any]) -> None:
    """Fill in what kube-apiserver defaults, in place (only what matters to users and the data plane)."""
    fn = _BY_KIND.get(info.kind)
    if fn is not None:
        fn(obj)


# -- helpers -----------------------------------------------------------------


def _dict_at(parent: Any, key: str, create: bool = True) -> Obj | None:
    """parent[key] as a dict, created when absent (None); None when parent or the value is not a dict."""
    if not isinstance(parent, dict):
        return None
    cur = parent.get(key)
    if cur is None and create:
        cur = parent[key] = {}
    return cur if isinstance(cur, dict) else None


def _dicts(parent: Any, key: str) -> list[Obj]:
    """The dict items of the list parent[key] (the others are validation's business)."""
    if not isinstance(parent, dict):
        return []
    items = parent.get(key)
    if not isinstance(items, list):
        return []
    return [i for i in items if isinstance(i, dict)]


def _unset(d: Obj, key: str) -> bool:
    # kube's Go types cannot tell an absent string from an empty one, so both get the default.
    return d.get(key) is None or d.get(key) == ""


def _default(d: Obj, key: str, value: Any) -> None:
    if _unset(d, key):
        d[key] = value


# -- Service -------------------------------------------------------------------


def _service(obj: Obj) -> None:
    spec = _dict_at(obj, "spec")
    if spec is None:
        return
    _default(spec, "type", "ClusterIP")
    svc_type = spec.get("type")
    _default(spec, "sessionAffinity", "None")
    if spec.get("sessionAffinity") == "ClientIP":
        cfg = _dict_at(spec, "sessionAffinityConfig")
        client_ip = _dict_at(cfg, "clientIP")
        if client_ip is not None:
            _default(client_ip, "timeoutSeconds", DEFAULT_SESSION_AFFINITY_TIMEOUT)
    for port in _dicts(spec, "ports"):
        _default(port, "protocol", "TCP")
        if port.get("targetPort") in (None, 0, "") and isinstance(port.get("port"), int):
            port["targetPort"] = port["port"]
    if svc_type != "ExternalName":
        _default(spec, "internalTrafficPolicy", "Cluster")
        sync_cluster_ips(obj)
        # A single-stack IPv4 cluster: what kube's service REST fills in for every
        # Service that gets (or could get) a cluster IP.
        _default(spec, "ipFamilyPolicy", "SingleStack")
        if not spec.get("ipFamilies"):
            spec["ipFamilies"] = ["IPv4"]
    if svc_type in ("NodePort", "LoadBalancer"):
        _default(spec, "externalTrafficPolicy", "Cluster")
    if svc_type == "LoadBalancer" and spec.get("allocateLoadBalancerNodePorts") is None:
        spec["allocateLoadBalancerNodePorts"] = True


def sync_cluster_ips(obj: dict[str, Any]) -> None:
    """Make spec.clusterIP and spec.clusterIPs agree when only one of them is set.

    Call after allocating a cluster IP too: clients read either field.
    """
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        return
    ip, ips = spec.get("clusterIP"), spec.get("clusterIPs")
    if isinstance(ip, str) and ip and not ips:
        spec["clusterIPs"] = [ip]
    elif not ip and isinstance(ips, list) and ips and isinstance(ips[0], str):
        spec["clusterIP"] = ips[0]


def drop_type_dependent_fields(new: dict[str, Any], old: dict[str, Any]) -> None:
    """On a Service update that changes its type, drop values the new type cannot have.

    kube-apiserver does this so that ``kubectl apply`` of, say, a ClusterIP Service over a
    LoadBalancer one succeeds although the live object still carries the fields defaulting and
    allocation put there. A field is dropped only when the new type has no use for it and the
    update left it as it was (a value the user changed is theirs, and validation judges it).
    """
    spec, old_spec = new.get("spec"), old.get("spec")
    if not isinstance(spec, dict) or not isinstance(old_spec, dict):
        return
    old_type, new_type = old_spec.get("type") or "ClusterIP", spec.get("type") or "ClusterIP"
    if old_type == new_type:
        return

    def same(key: str) -> bool:
        return spec.get(key) == old_spec.get(key)

    def drop(key: str) -> None:
        spec.pop(key, None)

    if new_type == "ExternalName":
        if same("clusterIP") and same("clusterIPs"):
            drop("clusterIP")
            drop("clusterIPs")
        for key in ("ipFamilies", "ipFamilyPolicy"):
            if same(key):
                drop(key)
    node_port_types = ("NodePort", "LoadBalancer")
    if old_type in node_port_types and new_type not in node_port_types:
        new_ports, old_ports = spec.get("ports"), old_spec.get("ports")
        if isinstance(new_ports, list) and isinstance(old_ports, list):
            old_node_ports = [p.get("nodePort") for p in old_ports if isinstance(p, dict)]
            new_node_ports = [p.get("nodePort") for p in new_ports if isinstance(p, dict)]
            if new_node_ports == old_node_ports[:len(new_node_ports)]:
                for p in new_ports:
                    if isinstance(p, dict):
                        p.pop("nodePort", None)
    if old_type == "LoadBalancer" and new_type != "LoadBalancer":
        for key in ("healthCheckNodePort", "allocateLoadBalancerNodePorts", "loadBalancerClass"):
            if same(key):
                drop(key)

    def externally_accessible(s: dict[str, Any], svc_type: str) -> bool:
        return svc_type in node_port_types or (svc_type == "ClusterIP" and bool(s.get("externalIPs")))

    if (externally_accessible(old_spec, old_type) and not externally_accessible(spec, new_type)
            and same("externalTrafficPolicy")):
        drop("externalTrafficPolicy")


# -- Pod and pod templates -------------------------------------------------------


def image_pull_policy(image: str) -> str:
    """Always for ':latest' or an untagged image without a digest, else IfNotPresent (kube's rule)."""
    name, _, digest = image.partition("@")
    last = name.rsplit("/", 1)[-1]
    tag = last.partition(":")[2]
    if tag == "latest" or (not tag and not digest):
        return "Always"
    return "IfNotPresent"


def _probe(probe: Any) -> None:
    if not isinstance(probe, dict):
        return
    _default(probe, "timeoutSeconds", 1)
    _default(probe, "periodSeconds", 10)
    _default(probe, "successThreshold", 1)
    _default(probe, "failureThreshold", 3)
    http = probe.get("httpGet")
    if isinstance(http, dict):
        _default(http, "path", "/")
        _default(http, "scheme", "HTTP")


def _container(c: Obj) -> None:
    if isinstance(c.get("image"), str) and _unset(c, "imagePullPolicy"):
        c["imagePullPolicy"] = image_pull_policy(c["image"])
    _default(c, "terminationMessagePath", "/dev/termination-log")
    _default(c, "terminationMessagePolicy", "File")
    for port in _dicts(c, "ports"):
        _default(port, "protocol", "TCP")
    for kind in ("livenessProbe", "readinessProbe", "startupProbe"):
        _probe(c.get(kind))


def pod_spec_defaults(spec: dict[str, Any]) -> None:
    """SetDefaults_PodSpec and the container defaults: shared by Pods and pod templates."""
    _default(spec, "dnsPolicy", "ClusterFirst")
    _default(spec, "restartPolicy", "Always")
    if spec.get("securityContext") is None:
        spec["securityContext"] = {}
    _default(spec, "terminationGracePeriodSeconds", DEFAULT_TERMINATION_GRACE_PERIOD)
    _default(spec, "schedulerName", DEFAULT_SCHEDULER)
    for c in (*_dicts(spec, "initContainers"), *_dicts(spec, "containers")):
        _container(c)


def _pod(obj: Obj) -> None:
    spec = _dict_at(obj, "spec")
    if spec is None:
        return
    pod_spec_defaults(spec)
    # SetDefaults_Pod: only real Pods get these, not the templates of Deployments/ReplicaSets.
    if spec.get("enableServiceLinks") is None:
        spec["enableServiceLinks"] = True
    for c in (*_dicts(spec, "initContainers"), *_dicts(spec, "containers")):
        if spec.get("hostNetwork") is True:
            # On the host's network the container port is the host port.
            for port in _dicts(c, "ports"):
                if port.get("hostPort") in (None, 0):
                    port["hostPort"] = port.get("containerPort")
        resources = c.get("resources")
        if isinstance(resources, dict) and isinstance(resources.get("limits"), dict):
            requests = _dict_at(resources, "requests")
            if requests is not None:
                for res, qty in resources["limits"].items():
                    requests.setdefault(res, qty)


def _template(obj: Obj) -> None:
    template = _dict_at(_dict_at(obj, "spec", create=False), "template", create=False)
    spec = _dict_at(template, "spec", create=False)
    if spec is not None:
        pod_spec_defaults(spec)


# -- workloads -----------------------------------------------------------------


def _replicaset(obj: Obj) -> None:
    spec = _dict_at(obj, "spec")
    if spec is None:
        return
    if spec.get("replicas") is None:
        spec["replicas"] = 1
    _template(obj)


def _deployment(obj: Obj) -> None:
    spec = _dict_at(obj, "spec")
    if spec is None:
        return
    if spec.get("replicas") is None:
        spec["replicas"] = 1
    strategy = _dict_at(spec, "strategy")
    if strategy is not None:
        _default(strategy, "type", "RollingUpdate")
        if strategy.get("type") == "RollingUpdate":
            rolling = _dict_at(strategy, "rollingUpdate")
            if rolling is not None:
                _default(rolling, "maxUnavailable", "25%")
                _default(rolling, "maxSurge", "25%")
    if spec.get("revisionHistoryLimit") is None:
        spec["revisionHistoryLimit"] = 10
    if spec.get("progressDeadlineSeconds") is None:
        spec["progressDeadlineSeconds"] = 600
    _template(obj)


# -- the rest ------------------------------------------------------------------


def _endpointslice(obj: Obj) -> None:
    for port in _dicts(obj, "ports"):
        if port.get("name") is None:
            port["name"] = ""
        _default(port, "protocol", "TCP")


def _namespace(obj: Obj) -> None:
    meta = _dict_at(obj, "metadata")
    spec = _dict_at(obj, "spec")
    status = _dict_at(obj, "status")
    if spec is not None and spec.get("finalizers") is None:
        spec["finalizers"] = ["kubernetes"]
    if status is not None:
        _default(status, "phase", "Active")
    # Every namespace carries its own name as a label, so namespaceSelectors can pick one by name.
    if meta is not None and isinstance(meta.get("name"), str) and meta["name"]:
        labels = _dict_at(meta, "labels")
        if labels is not None:
            labels[NAMESPACE_NAME_LABEL] = meta["name"]


def _secret(obj: Obj) -> None:
    _default(obj, "type", "Opaque")
    # stringData is write-only: kube merges it into data (base64) and never stores it.
    string_data = obj.get("stringData")
    if isinstance(string_data, dict):
        data = _dict_at(obj, "data")
        if data is not None and all(isinstance(v, str) for v in string_data.values()):
            for k, v in string_data.items():
                data[k] = base64.b64encode(v.encode()).decode()
            del obj["stringData"]


def _node(obj: Obj) -> None:
    status = obj.get("status")
    if isinstance(status, dict) and status.get("allocatable") is None and isinstance(status.get("capacity"), dict):
        status["allocatable"] = dict(status["capacity"])


_BY_KIND: dict[str, Callable[[Obj], None]] = {
    "Service": _service,
    "Pod": _pod,
    "Deployment": _deployment,
    "ReplicaSet": _replicaset,
    "EndpointSlice": _endpointslice,
    "Namespace": _namespace,
    "Secret": _secret,
    "Node": _node,
}
