"""Validation of objects as kube-apiserver does it, one Cause per problem with the field's path.

Field paths and reasons follow kube (``spec.ports[0].port``, FieldValueRequired, ...), so a client
sees the same error it would from a real cluster. Validation runs after defaulting
(netplane.api.defaults); fields defaulting fills in are only checked when present, so calling
``validate`` on an undefaulted object reports real problems only. It never raises: a value of the
wrong JSON type is one more Cause.

Where we differ from kube on purpose: a Service's cluster IPs are IPv4 only (a single-stack
IPv4 cluster) and errors about them name ``spec.clusterIP`` (the field users write) rather than
``spec.clusterIPs[0]``.
"""

from __future__ import annotations

import base64
import binascii
import copy
import ipaddress
import json
import re
from collections.abc import Callable
from typing import Any, TypeGuard

from netplane.api import names
from netplane.api.errors import Cause
from netplane.api.resources import ResourceInfo
from netplane.api.selectors import LabelSelector

REQUIRED = "FieldValueRequired"
INVALID = "FieldValueInvalid"
NOT_SUPPORTED = "FieldValueNotSupported"
DUPLICATE = "FieldValueDuplicate"
FORBIDDEN = "FieldValueForbidden"
NOT_FOUND = "FieldValueNotFound"
TOO_LONG = "FieldValueTooLong"
TOO_MANY = "FieldValueTooMany"

TOTAL_ANNOTATION_SIZE_LIMIT = 256 * 1024
MAX_CONFIG_SIZE = 1024 * 1024  # ConfigMaps and Secrets, kube's MaxSecretSize
MAX_ENDPOINTS = 1000
MAX_ADDRESSES = 100
MAX_ENDPOINT_PORTS = 20000
MAX_DNS_NAMESERVERS = 3
MAX_DNS_SEARCHES = 32

PROTOCOLS = ("TCP", "UDP", "SCTP")
STANDARD_FINALIZERS = ("kubernetes", "orphan", "foregroundDeletion")

Obj = dict[str, Any]


def validate(info: ResourceInfo, obj: dict[str, Any], old: dict[str, Any] | None = None) -> list[Cause]:
    """Every problem with obj (old is the stored object on update, None on create). Empty list = valid."""
    v = _Errors()
    if not isinstance(obj, dict):
        v.invalid("", "", "must be a JSON object")
        return v.causes
    _metadata(v, info, obj)
    check = _KINDS.get(info.kind)
    if check is not None:
        check(v, obj)
    if isinstance(old, dict):
        _metadata_update(v, obj, old)
        check_update = _UPDATES.get(info.kind)
        if check_update is not None:
            check_update(v, obj, old)
    return v.causes


# -- error collection and typed access ------------------------------------------


def _show(value: Any) -> str:
    """A value as kube prints it in a field error: strings quoted, numbers bare."""
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    try:
        return json.dumps(value, sort_keys=True)
    except (TypeError, ValueError):
        return repr(value)


def _as_dict(value: Any) -> Obj:
    return value if isinstance(value, dict) else {}


def _is_int(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


class _Errors:
    """Collects Causes; its getters read a field and report a wrong JSON type as one more Cause."""

    def __init__(self) -> None:
        self.causes: list[Cause] = []

    def required(self, field: str, detail: str = "") -> None:
        self.causes.append(Cause(field, f"Required value: {detail}" if detail else "Required value", REQUIRED))

    def invalid(self, field: str, value: Any, detail: str) -> None:
        self.causes.append(Cause(field, f"Invalid value: {_show(value)}: {detail}", INVALID))

    def not_supported(self, field: str, value: Any, allowed: tuple[str, ...]) -> None:
        supported = ", ".join(json.dumps(a) for a in allowed)
        self.causes.append(Cause(field, f"Unsupported value: {_show(value)}: supported values: {supported}",
                                 NOT_SUPPORTED))

    def duplicate(self, field: str, value: Any) -> None:
        self.causes.append(Cause(field, f"Duplicate value: {_show(value)}", DUPLICATE))

    def forbidden(self, field: str, detail: str) -> None:
        self.causes.append(Cause(field, f"Forbidden: {detail}", FORBIDDEN))

    def not_found(self, field: str, value: Any) -> None:
        self.causes.append(Cause(field, f"Not found: {_show(value)}", NOT_FOUND))

    def too_long(self, field: str, limit: int) -> None:
        self.causes.append(Cause(field, f"Too long: must have at most {limit} bytes", TOO_LONG))

    def too_many(self, field: str, count: int, limit: int) -> None:
        self.causes.append(Cause(field, f"Too many: {count}: must have at most {limit} items", TOO_MANY))

    def format(self, field: str, value: Any, problems: list[str]) -> bool:
        """One Invalid for the problems of a name/format check; True when there were none.

        kube makes one Cause per problem; one per field reads better and names the same field.
        """
        if problems:
            self.invalid(field, value, "; ".join(problems))
        return not problems

    def immutable(self, field: str, value: Any) -> None:
        self.invalid(field, value, "field is immutable")

    # Typed getters: None (or an empty container) when absent or of the wrong type.

    def str_(self, d: Obj, key: str, field: str) -> str | None:
        value = d.get(key)
        if value is None:
            return None
        if not isinstance(value, str):
            self.invalid(field, value, "must be a string")
            return None
        return value

    def int_(self, d: Obj, key: str, field: str) -> int | None:
        value = d.get(key)
        if value is None:
            return None
        if not _is_int(value):
            self.invalid(field, value, "must be an integer")
            return None
        return int(value)

    def bool_(self, d: Obj, key: str, field: str) -> bool | None:
        value = d.get(key)
        if value is None:
            return None
        if not isinstance(value, bool):
            self.invalid(field, value, "must be a boolean")
            return None
        return value

    def dict_(self, d: Obj, key: str, field: str) -> Obj | None:
        value = d.get(key)
        if value is None:
            return None
        if not isinstance(value, dict):
            self.invalid(field, value, "must be an object")
            return None
        return value

    def list_(self, d: Obj, key: str, field: str) -> list[Any]:
        value = d.get(key)
        if value is None:
            return []
        if not isinstance(value, list):
            self.invalid(field, value, "must be a list")
            return []
        return value

    def dicts(self, d: Obj, key: str, field: str) -> list[tuple[int, Obj]]:
        """(index, item) for the object items of a list, reporting the others."""
        out = []
        for i, item in enumerate(self.list_(d, key, field)):
            if isinstance(item, dict):
                out.append((i, item))
            else:
                self.invalid(f"{field}[{i}]", item, "must be an object")
        return out

    def strs(self, d: Obj, key: str, field: str) -> list[tuple[int, str]]:
        out = []
        for i, item in enumerate(self.list_(d, key, field)):
            if isinstance(item, str):
                out.append((i, item))
            else:
                self.invalid(f"{field}[{i}]", item, "must be a string")
        return out

    def str_map(self, d: Obj, key: str, field: str) -> dict[str, str]:
        """A map of strings (labels, annotations, data); other values are reported and skipped."""
        m = self.dict_(d, key, field)
        if m is None:
            return {}
        out = {}
        for k, val in m.items():
            if isinstance(val, str):
                out[k] = val
            else:
                self.invalid(f"{field}[{k}]", val, "must be a string")
        return out

    def one_of(self, d: Obj, key: str, field: str, allowed: tuple[str, ...], required: bool = False) -> str | None:
        raw = d.get(key)
        value = self.str_(d, key, field)
        if not value:
            if required and raw in (None, ""):
                self.required(field)
            return None
        if value not in allowed:
            self.not_supported(field, value, allowed)
            return None
        return value


def _spec(v: _Errors, obj: Obj) -> Obj:
    return v.dict_(obj, "spec", "spec") or {}


# -- metadata ------------------------------------------------------------------

# Name formats per kind (kube's ValidateXName functions); the rest are DNS-1123 subdomains.
_NAME_CHECKS: dict[str, Callable[[str], list[str]]] = {
    "Namespace": names.dns1123_label,
    "Service": names.dns1035_label,
}


def _metadata(v: _Errors, info: ResourceInfo, obj: Obj) -> None:
    meta = v.dict_(obj, "metadata", "metadata") or {}
    name = v.str_(meta, "name", "metadata.name")
    if not name:
        v.required("metadata.name", "name or generateName is required")
    else:
        v.format("metadata.name", name, _NAME_CHECKS.get(info.kind, names.dns1123_subdomain)(name))
    namespace = v.str_(meta, "namespace", "metadata.namespace")
    if info.namespaced:
        if namespace:
            v.format("metadata.namespace", namespace, names.dns1123_label(namespace))
    elif namespace:
        v.forbidden("metadata.namespace", "not allowed on this type")
    _labels(v, meta, "labels", "metadata.labels")
    _annotations(v, meta, "metadata.annotations")
    for i, fin in v.strs(meta, "finalizers", "metadata.finalizers"):
        problems = names.qualified_name(fin)
        if not problems and "/" not in fin and fin not in STANDARD_FINALIZERS:
            problems = ["name is neither a standard finalizer name nor is it fully qualified"]
        v.format(f"metadata.finalizers[{i}]", fin, problems)
    controllers = 0
    for i, ref in v.dicts(meta, "ownerReferences", "metadata.ownerReferences"):
        path = f"metadata.ownerReferences[{i}]"
        for key in ("apiVersion", "kind", "name", "uid"):
            if not v.str_(ref, key, f"{path}.{key}"):
                v.required(f"{path}.{key}")
        if v.bool_(ref, "controller", f"{path}.controller"):
            controllers += 1
    if controllers > 1:
        v.invalid("metadata.ownerReferences", controllers, "only one reference can have controller set to true")


def _labels(v: _Errors, parent: Obj, key: str, field: str) -> dict[str, str]:
    labels = v.str_map(parent, key, field)
    for k, val in labels.items():
        v.format(field, k, names.qualified_name(k))
        v.format(field, val, names.label_value(val))
    return labels


def _annotations(v: _Errors, meta: Obj, field: str) -> None:
    annotations = v.str_map(meta, "annotations", field)
    total = 0
    for k, val in annotations.items():
        # kube lower-cases annotation keys before checking them, so upper case is fine here.
        v.format(field, k, names.qualified_name(k.lower()))
        total += len(k.encode()) + len(val.encode())
    if total > TOTAL_ANNOTATION_SIZE_LIMIT:
        v.too_long(field, TOTAL_ANNOTATION_SIZE_LIMIT)


def _metadata_update(v: _Errors, obj: Obj, old: Obj) -> None:
    meta = _as_dict(obj.get("metadata"))
    old_meta = _as_dict(old.get("metadata"))
    for key in ("name", "namespace"):
        if meta.get(key) != old_meta.get(key):
            v.immutable(f"metadata.{key}", meta.get(key))
    # The server copies these from the stored object; a client may only repeat them.
    for key in ("uid", "creationTimestamp"):
        if meta.get(key) and old_meta.get(key) and meta.get(key) != old_meta.get(key):
            v.immutable(f"metadata.{key}", meta.get(key))


# -- shared pieces -------------------------------------------------------------


def _port_or_name(v: _Errors, value: Any, field: str) -> None:
    """An IntOrString port: a number 1-65535 or an IANA service name (a container port's name)."""
    if _is_int(value):
        v.format(field, value, names.port_number(value))
    elif isinstance(value, str):
        v.format(field, value, names.iana_svc_name(value))
    else:
        v.invalid(field, value, "must be a port number or a port name")


def _port_range(v: _Errors, value: int | None, field: str, low: int = 1) -> None:
    if value is not None and not low <= value <= 65535:
        v.invalid(field, value, f"must be between {low} and 65535, inclusive")


def _protocol(v: _Errors, d: Obj, field: str) -> str:
    return v.one_of(d, "protocol", field, PROTOCOLS) or "TCP"


def _label_selector(v: _Errors, sel: Obj, field: str) -> LabelSelector | None:
    """Validate a metav1.LabelSelector field by field; its selector when valid."""
    before = len(v.causes)
    _labels(v, sel, "matchLabels", f"{field}.matchLabels")
    operators = ("In", "NotIn", "Exists", "DoesNotExist")
    for i, expr in v.dicts(sel, "matchExpressions", f"{field}.matchExpressions"):
        path = f"{field}.matchExpressions[{i}]"
        key = v.str_(expr, "key", f"{path}.key")
        if not key:
            v.required(f"{path}.key")
        else:
            v.format(f"{path}.key", key, names.qualified_name(key))
        op = v.one_of(expr, "operator", f"{path}.operator", operators, required=True)
        values = v.strs(expr, "values", f"{path}.values")
        if op in ("In", "NotIn") and not values:
            v.required(f"{path}.values", "must be specified when `operator` is 'In' or 'NotIn'")
        if op in ("Exists", "DoesNotExist") and values:
            v.forbidden(f"{path}.values", "may not be specified when `operator` is 'Exists' or 'DoesNotExist'")
        for j, val in values:
            v.format(f"{path}.values[{j}]", val, names.label_value(val))
    if len(v.causes) != before:
        return None
    try:
        return LabelSelector.from_object(sel)
    except ValueError as e:  # pragma: no cover - the checks above cover what from_object refuses
        v.invalid(field, sel, str(e))
        return None


# -- Service -------------------------------------------------------------------

SERVICE_TYPES = ("ClusterIP", "NodePort", "LoadBalancer", "ExternalName")


def _service(v: _Errors, obj: Obj) -> None:
    spec = _spec(v, obj)
    svc_type = v.one_of(spec, "type", "spec.type", SERVICE_TYPES) or "ClusterIP"
    cluster_ip = v.str_(spec, "clusterIP", "spec.clusterIP") or ""
    headless = cluster_ip == "None"
    external_name = svc_type == "ExternalName"

    ips = v.strs(spec, "clusterIPs", "spec.clusterIPs")
    if external_name:
        if cluster_ip:
            v.forbidden("spec.clusterIP", "may not be set for type 'ExternalName'")
        elif ips:
            v.forbidden("spec.clusterIPs", "may not be set for type 'ExternalName'")
        ext = v.str_(spec, "externalName", "spec.externalName")
        if not ext:
            v.required("spec.externalName")
        else:
            # A trailing dot (a fully qualified name) is allowed.
            v.format("spec.externalName", ext, names.dns1123_subdomain(ext.removesuffix(".")))
    else:
        if cluster_ip and not headless:
            v.format("spec.clusterIP", cluster_ip, names.ipv4_address(cluster_ip))
        if len(ips) > 1:
            v.too_many("spec.clusterIPs", len(ips), 1)  # single-stack IPv4 cluster
        if ips and cluster_ip and ips[0][1] != cluster_ip:
            v.invalid("spec.clusterIPs[0]", ips[0][1], "must match `spec.clusterIP`")
        if headless and svc_type in ("NodePort", "LoadBalancer"):
            v.invalid("spec.clusterIP", cluster_ip, f"may not be set to 'None' for {svc_type} services")

    ports = v.dicts(spec, "ports", "spec.ports")
    if not spec.get("ports") and not headless and not external_name:
        v.required("spec.ports")
    seen_names: set[str] = set()
    seen_ports: set[tuple[int, str]] = set()
    seen_node_ports: set[tuple[int, str]] = set()
    for i, port in ports:
        path = f"spec.ports[{i}]"
        pname = v.str_(port, "name", f"{path}.name") or ""
        if len(ports) > 1 and not pname:
            v.required(f"{path}.name")
        elif pname:
            v.format(f"{path}.name", pname, names.dns1123_label(pname))
            if pname in seen_names:
                v.duplicate(f"{path}.name", pname)
            seen_names.add(pname)
        number = v.int_(port, "port", f"{path}.port")
        if number is None and "port" not in port:
            v.required(f"{path}.port")
        _port_range(v, number, f"{path}.port")
        proto = _protocol(v, port, f"{path}.protocol")
        if number is not None:
            if (number, proto) in seen_ports:
                v.duplicate(path, {"port": number, "protocol": proto})
            seen_ports.add((number, proto))
        if port.get("targetPort") not in (None, 0, ""):
            _port_or_name(v, port["targetPort"], f"{path}.targetPort")
        node_port = v.int_(port, "nodePort", f"{path}.nodePort")
        if node_port:
            _port_range(v, node_port, f"{path}.nodePort", low=0)
            if svc_type == "ClusterIP":
                v.forbidden(f"{path}.nodePort", "may not be used when `type` is 'ClusterIP'")
            if (node_port, proto) in seen_node_ports:
                v.duplicate(f"{path}.nodePort", node_port)
            seen_node_ports.add((node_port, proto))
        v.str_(port, "appProtocol", f"{path}.appProtocol")

    _service_selector(v, spec)
    _session_affinity(v, spec)
    _traffic_policies(v, spec, svc_type)

    for i, ip in v.strs(spec, "externalIPs", "spec.externalIPs"):
        problems = names.ipv4_address(ip) or names.non_special_ip(ip)
        v.format(f"spec.externalIPs[{i}]", ip, problems)
    ranges = v.strs(spec, "loadBalancerSourceRanges", "spec.loadBalancerSourceRanges")
    if ranges and svc_type != "LoadBalancer":
        v.forbidden("spec.loadBalancerSourceRanges", "may only be used when `type` is 'LoadBalancer'")
    for i, cidr in ranges:
        v.format(f"spec.loadBalancerSourceRanges[{i}]", cidr, names.cidr(cidr.strip()))
    lb_ip = v.str_(spec, "loadBalancerIP", "spec.loadBalancerIP")
    if lb_ip:
        v.format("spec.loadBalancerIP", lb_ip, names.ip_address(lb_ip))
    if external_name:
        for key in ("ipFamilies", "ipFamilyPolicy"):
            if spec.get(key):
                v.forbidden(f"spec.{key}", "may not be set for type 'ExternalName'")
    else:
        v.one_of(spec, "ipFamilyPolicy", "spec.ipFamilyPolicy", ("SingleStack", "PreferDualStack",
                                                                   "RequireDualStack"))
        for i, fam in v.strs(spec, "ipFamilies", "spec.ipFamilies"):
            if fam != "IPv4":
                v.not_supported(f"spec.ipFamilies[{i}]", fam, ("IPv4",))  # single-stack IPv4 cluster


def _service_selector(v: _Errors, spec: Obj) -> None:
    selector = v.str_map(spec, "selector", "spec.selector")
    for k, val in selector.items():
        v.format("spec.selector", k, names.qualified_name(k))
        v.format("spec.selector", val, names.label_value(val))


def _session_affinity(v: _Errors, spec: Obj) -> None:
    affinity = v.one_of(spec, "sessionAffinity", "spec.sessionAffinity", ("None", "ClientIP")) or "None"
    config = v.dict_(spec, "sessionAffinityConfig", "spec.sessionAffinityConfig")
    if affinity == "ClientIP":
        client_ip = v.dict_(config or {}, "clientIP", "spec.sessionAffinityConfig.clientIP") or {}
        field = "spec.sessionAffinityConfig.clientIP.timeoutSeconds"
        timeout = v.int_(client_ip, "timeoutSeconds", field)
        if timeout is not None and not 0 < timeout <= 86400:
            v.invalid(field, timeout, "must be greater than 0 and less than or equal to 86400")
    elif config:
        v.forbidden("spec.sessionAffinityConfig", f"must not be set when `sessionAffinity` is {affinity}")


def _traffic_policies(v: _Errors, spec: Obj, svc_type: str) -> None:
    external_ips = bool(spec.get("externalIPs"))
    # kube's "externally accessible": NodePort, LoadBalancer, or ClusterIP with external IPs.
    externally_accessible = svc_type in ("NodePort", "LoadBalancer") or (svc_type == "ClusterIP" and external_ips)
    etp = v.one_of(spec, "externalTrafficPolicy", "spec.externalTrafficPolicy", ("Cluster", "Local"))
    if etp and not externally_accessible:
        v.invalid("spec.externalTrafficPolicy", etp,
                  "may only be set when `type` is 'NodePort' or 'LoadBalancer' (or with external IPs)")
    hc = v.int_(spec, "healthCheckNodePort", "spec.healthCheckNodePort")
    if hc:
        if svc_type != "LoadBalancer" or etp != "Local":
            v.invalid("spec.healthCheckNodePort", hc,
                      "may only be set when `type` is 'LoadBalancer' and `externalTrafficPolicy` is 'Local'")
        else:
            _port_range(v, hc, "spec.healthCheckNodePort")
    v.one_of(spec, "internalTrafficPolicy", "spec.internalTrafficPolicy", ("Cluster", "Local"))
    v.bool_(spec, "allocateLoadBalancerNodePorts", "spec.allocateLoadBalancerNodePorts")
    v.bool_(spec, "publishNotReadyAddresses", "spec.publishNotReadyAddresses")


def _service_update(v: _Errors, obj: Obj, old: Obj) -> None:
    spec, old_spec = obj.get("spec"), old.get("spec")
    if not isinstance(spec, dict) or not isinstance(old_spec, dict):
        return
    if "ExternalName" in (spec.get("type"), old_spec.get("type")):
        return  # the cluster IP comes and goes with the ExternalName type
    new_ip, old_ip = spec.get("clusterIP") or "", old_spec.get("clusterIP") or ""
    # An empty clusterIP on update means "keep the allocated one": the server carries it over.
    if new_ip and old_ip and new_ip != old_ip:
        v.invalid("spec.clusterIP", new_ip, "field is immutable")


# -- Pod and pod specs -----------------------------------------------------------


def _pod(v: _Errors, obj: Obj) -> None:
    _pod_spec(v, _spec(v, obj), "spec", template=False)


_ENV_NAME = re.compile(r"[ -<>-~]+")  # printable ASCII except '=' (kube's relaxed rule)


def _pod_spec(v: _Errors, spec: Obj, path: str, template: bool) -> None:
    host_network = bool(v.bool_(spec, "hostNetwork", f"{path}.hostNetwork"))
    volumes: set[str] = set()
    for i, vol in v.dicts(spec, "volumes", f"{path}.volumes"):
        vname = v.str_(vol, "name", f"{path}.volumes[{i}].name")
        if not vname:
            v.required(f"{path}.volumes[{i}].name")
            continue
        v.format(f"{path}.volumes[{i}].name", vname, names.dns1123_label(vname))
        if vname in volumes:
            v.duplicate(f"{path}.volumes[{i}].name", vname)
        volumes.add(vname)

    containers = v.dicts(spec, "containers", f"{path}.containers")
    if not spec.get("containers"):
        v.required(f"{path}.containers")
    container_names: set[str] = set()
    host_ports: set[tuple[int, str, str]] = set()
    for kind in ("initContainers", "containers"):
        items = containers if kind == "containers" else v.dicts(spec, kind, f"{path}.{kind}")
        for i, c in items:
            _container(v, c, f"{path}.{kind}[{i}]", container_names, host_ports, volumes, host_network)

    if template:
        v.one_of(spec, "restartPolicy", f"{path}.restartPolicy", ("Always",))
        if v.int_(spec, "activeDeadlineSeconds", f"{path}.activeDeadlineSeconds") is not None:
            v.forbidden(f"{path}.activeDeadlineSeconds", "activeDeadlineSeconds in a pod template is not supported")
    else:
        v.one_of(spec, "restartPolicy", f"{path}.restartPolicy", ("Always", "OnFailure", "Never"))
        deadline = v.int_(spec, "activeDeadlineSeconds", f"{path}.activeDeadlineSeconds")
        if deadline is not None and not 1 <= deadline <= 2**31 - 1:
            v.invalid(f"{path}.activeDeadlineSeconds", deadline, "must be between 1 and 2147483647, inclusive")
    _dns(v, spec, path)
    for key in ("hostname", "subdomain"):
        value = v.str_(spec, key, f"{path}.{key}")
        if value:
            v.format(f"{path}.{key}", value, names.dns1123_label(value))
    for key in ("nodeName", "serviceAccountName", "schedulerName", "priorityClassName"):
        value = v.str_(spec, key, f"{path}.{key}")
        if value:
            v.format(f"{path}.{key}", value, names.dns1123_subdomain(value))
    # kube accepts a negative grace period (with a warning); only the type matters here.
    v.int_(spec, "terminationGracePeriodSeconds", f"{path}.terminationGracePeriodSeconds")
    for key in ("hostPID", "hostIPC", "enableServiceLinks", "automountServiceAccountToken"):
        v.bool_(spec, key, f"{path}.{key}")
    v.str_map(spec, "nodeSelector", f"{path}.nodeSelector")
    _tolerations(v, spec, path)


def _dns(v: _Errors, spec: Obj, path: str) -> None:
    policy = v.one_of(spec, "dnsPolicy", f"{path}.dnsPolicy",
                      ("ClusterFirstWithHostNet", "ClusterFirst", "Default", "None"))
    config = v.dict_(spec, "dnsConfig", f"{path}.dnsConfig")
    if policy == "None" and config is None:
        v.required(f"{path}.dnsConfig", "must provide `dnsConfig` when `dnsPolicy` is None")
    if config is None:
        return
    cpath = f"{path}.dnsConfig"
    servers = v.strs(config, "nameservers", f"{cpath}.nameservers")
    if len(servers) > MAX_DNS_NAMESERVERS:
        v.invalid(f"{cpath}.nameservers", [s for _, s in servers],
                  f"must not have more than {MAX_DNS_NAMESERVERS} nameservers")
    if policy == "None" and not servers:
        v.required(f"{cpath}.nameservers", "must provide at least one DNS nameserver when `dnsPolicy` is None")
    for i, server in servers:
        v.format(f"{cpath}.nameservers[{i}]", server, names.ip_address(server))
    searches = v.strs(config, "searches", f"{cpath}.searches")
    if len(searches) > MAX_DNS_SEARCHES:
        v.invalid(f"{cpath}.searches", [s for _, s in searches],
                  f"must not have more than {MAX_DNS_SEARCHES} search paths")
    for i, search in searches:
        # "." alone means the root; a trailing dot marks a fully qualified name.
        if search != ".":
            v.format(f"{cpath}.searches[{i}]", search, names.dns1123_subdomain(search.removesuffix(".")))
    for i, opt in v.dicts(config, "options", f"{cpath}.options"):
        if not v.str_(opt, "name", f"{cpath}.options[{i}].name"):
            v.required(f"{cpath}.options[{i}].name")


def _container(
    v: _Errors,
    c: Obj,
    path: str,
    container_names: set[str],
    host_ports: set[tuple[int, str, str]],
    volumes: set[str],
    host_network: bool,
) -> None:
    name = v.str_(c, "name", f"{path}.name")
    if not name:
        v.required(f"{path}.name")
    else:
        v.format(f"{path}.name", name, names.dns1123_label(name))
        if name in container_names:
            v.duplicate(f"{path}.name", name)
        container_names.add(name)
    image = v.str_(c, "image", f"{path}.image")
    if not image:
        v.required(f"{path}.image")
    elif image.strip() != image:
        v.invalid(f"{path}.image", image, "must not have leading or trailing whitespace")
    v.one_of(c, "imagePullPolicy", f"{path}.imagePullPolicy", ("Always", "IfNotPresent", "Never"))
    v.one_of(c, "terminationMessagePolicy", f"{path}.terminationMessagePolicy", ("File", "FallbackToLogsOnError"))
    for key in ("command", "args"):
        v.strs(c, key, f"{path}.{key}")

    # Port names are unique per container, as in kube (sidecars may reuse "metrics").
    port_names: set[str] = set()
    for j, port in v.dicts(c, "ports", f"{path}.ports"):
        ppath = f"{path}.ports[{j}]"
        pname = v.str_(port, "name", f"{ppath}.name")
        if pname:
            v.format(f"{ppath}.name", pname, names.iana_svc_name(pname))
            if pname in port_names:
                v.duplicate(f"{ppath}.name", pname)
            port_names.add(pname)
        container_port = v.int_(port, "containerPort", f"{ppath}.containerPort")
        if not container_port and "containerPort" not in port:
            v.required(f"{ppath}.containerPort")
        elif container_port is not None:
            _port_range(v, container_port, f"{ppath}.containerPort")
        host_port = v.int_(port, "hostPort", f"{ppath}.hostPort")
        _port_range(v, host_port, f"{ppath}.hostPort", low=0)
        proto = _protocol(v, port, f"{ppath}.protocol")
        host_ip = v.str_(port, "hostIP", f"{ppath}.hostIP") or ""
        if host_ip:
            v.format(f"{ppath}.hostIP", host_ip, names.ip_address(host_ip))
        if host_port:
            if host_network and container_port and host_port != container_port:
                v.invalid(f"{ppath}.hostPort", host_port, "must match `containerPort` when `hostNetwork` is true")
            host_key = (host_port, proto, host_ip)
            if host_key in host_ports:
                v.duplicate(f"{ppath}.hostPort", f"{host_port}/{proto}")
            host_ports.add(host_key)

    for j, env in v.dicts(c, "env", f"{path}.env"):
        ename = v.str_(env, "name", f"{path}.env[{j}].name")
        if not ename:
            v.required(f"{path}.env[{j}].name")
        elif not _ENV_NAME.fullmatch(ename):
            v.invalid(f"{path}.env[{j}].name", ename,
                      "a valid environment variable name must consist only of printable ASCII characters "
                      "other than '='")
        v.str_(env, "value", f"{path}.env[{j}].value")
    for j, mount in v.dicts(c, "volumeMounts", f"{path}.volumeMounts"):
        mname = v.str_(mount, "name", f"{path}.volumeMounts[{j}].name")
        if not mname:
            v.required(f"{path}.volumeMounts[{j}].name")
        elif mname not in volumes:
            v.not_found(f"{path}.volumeMounts[{j}].name", mname)
        if not v.str_(mount, "mountPath", f"{path}.volumeMounts[{j}].mountPath"):
            v.required(f"{path}.volumeMounts[{j}].mountPath")
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        p = v.dict_(c, probe, f"{path}.{probe}")
        if p is None:
            continue
        for key in ("timeoutSeconds", "periodSeconds", "successThreshold", "failureThreshold"):
            n = v.int_(p, key, f"{path}.{probe}.{key}")
            if n is not None and n < 1:
                v.invalid(f"{path}.{probe}.{key}", n, "must be greater than or equal to 1")
        for action in ("httpGet", "tcpSocket", "grpc"):
            a = v.dict_(p, action, f"{path}.{probe}.{action}")
            if a is not None and action != "grpc":
                if a.get("port") is None:
                    v.required(f"{path}.{probe}.{action}.port")
                else:
                    _port_or_name(v, a["port"], f"{path}.{probe}.{action}.port")


def _tolerations(v: _Errors, spec: Obj, path: str) -> None:
    for i, tol in v.dicts(spec, "tolerations", f"{path}.tolerations"):
        tpath = f"{path}.tolerations[{i}]"
        key = v.str_(tol, "key", f"{tpath}.key") or ""
        if key:
            v.format(f"{tpath}.key", key, names.qualified_name(key))
        op = v.one_of(tol, "operator", f"{tpath}.operator", ("Exists", "Equal")) or "Equal"
        value = v.str_(tol, "value", f"{tpath}.value") or ""
        if not key and op != "Exists":
            v.invalid(f"{tpath}.operator", op, "operator must be Exists when `key` is empty")
        if op == "Exists" and value:
            v.invalid(f"{tpath}.operator", value, "value must be empty when `operator` is 'Exists'")
        elif op == "Equal" and value:
            v.format(f"{tpath}.value", value, names.label_value(value))
        effect = v.one_of(tol, "effect", f"{tpath}.effect", ("NoSchedule", "PreferNoSchedule", "NoExecute"))
        seconds = v.int_(tol, "tolerationSeconds", f"{tpath}.tolerationSeconds")
        if seconds is not None and tol.get("effect") in (None, "", "NoSchedule", "PreferNoSchedule"):
            v.invalid(f"{tpath}.effect", effect or "", "effect must be 'NoExecute' when `tolerationSeconds` is set")


POD_UPDATE_MESSAGE = (
    "pod updates may not change fields other than `spec.containers[*].image`, "
    "`spec.initContainers[*].image`, `spec.activeDeadlineSeconds`, `spec.tolerations` "
    "(only additions to existing tolerations) and `spec.nodeName` (only from empty, for binding)"
)


def _pod_update(v: _Errors, obj: Obj, old: Obj) -> None:
    spec, old_spec = obj.get("spec"), old.get("spec")
    if not isinstance(spec, dict) or not isinstance(old_spec, dict):
        return
    # Compare copies in which every change kube allows has been made to match the old spec.
    new_c, old_c = copy.deepcopy(spec), copy.deepcopy(old_spec)
    for kind in ("containers", "initContainers"):
        new_list, old_list = new_c.get(kind), old_c.get(kind)
        if isinstance(new_list, list) and isinstance(old_list, list) and len(new_list) == len(old_list):
            for n, o in zip(new_list, old_list, strict=True):
                if isinstance(n, dict) and isinstance(o, dict) and "image" in o:
                    n["image"] = o["image"]
    new_deadline, old_deadline = spec.get("activeDeadlineSeconds"), old_spec.get("activeDeadlineSeconds")
    if old_deadline is not None and new_deadline is None:
        v.invalid("spec.activeDeadlineSeconds", None, "must not update from a positive integer to nil value")
    elif _is_int(old_deadline) and _is_int(new_deadline) and new_deadline > old_deadline:
        v.invalid("spec.activeDeadlineSeconds", new_deadline, "must be less than or equal to the previous value")
    _copy_key(old_c, new_c, "activeDeadlineSeconds")
    new_tols = spec.get("tolerations") or []
    old_tols = old_spec.get("tolerations") or []
    if isinstance(new_tols, list) and isinstance(old_tols, list):
        missing = [t for t in old_tols if t not in new_tols]
        if missing:
            v.forbidden("spec.tolerations", "existing toleration can not be modified except its tolerationSeconds")
        _copy_key(old_c, new_c, "tolerations")
    if not old_spec.get("nodeName"):
        _copy_key(old_c, new_c, "nodeName")
    # kube allows scheduling gates to be removed, never added.
    new_gates, old_gates = spec.get("schedulingGates") or [], old_spec.get("schedulingGates") or []
    if isinstance(new_gates, list) and isinstance(old_gates, list) and all(g in old_gates for g in new_gates):
        _copy_key(old_c, new_c, "schedulingGates")
    if new_c != old_c:
        v.forbidden("spec", POD_UPDATE_MESSAGE)


def _copy_key(src: Obj, dst: Obj, key: str) -> None:
    if key in src:
        dst[key] = src[key]
    else:
        dst.pop(key, None)


# -- Deployment and ReplicaSet ---------------------------------------------------


def _replicaset(v: _Errors, obj: Obj) -> None:
    spec = _spec(v, obj)
    _workload_common(v, spec, "replicaset")


def _deployment(v: _Errors, obj: Obj) -> None:
    spec = _spec(v, obj)
    _workload_common(v, spec, "deployment")
    strategy = v.dict_(spec, "strategy", "spec.strategy") or {}
    stype = v.one_of(strategy, "type", "spec.strategy.type", ("Recreate", "RollingUpdate"))
    rolling = v.dict_(strategy, "rollingUpdate", "spec.strategy.rollingUpdate")
    if stype == "Recreate" and rolling is not None:
        v.forbidden("spec.strategy.rollingUpdate", "may not be specified when strategy `type` is 'Recreate'")
    elif rolling is not None:
        path = "spec.strategy.rollingUpdate"
        surge = _int_or_percent(v, rolling, "maxSurge", f"{path}.maxSurge")
        unavailable = _int_or_percent(v, rolling, "maxUnavailable", f"{path}.maxUnavailable")
        if unavailable is not None and unavailable[1] and unavailable[0] > 100:
            v.invalid(f"{path}.maxUnavailable", rolling["maxUnavailable"], "must not be greater than 100%")
        if surge is not None and unavailable is not None and surge[0] == 0 and unavailable[0] == 0:
            v.invalid(f"{path}.maxUnavailable", rolling["maxUnavailable"], "may not be 0 when `maxSurge` is 0")
    for key in ("revisionHistoryLimit", "progressDeadlineSeconds"):
        n = v.int_(spec, key, f"spec.{key}")
        if n is not None and n < 0:
            v.invalid(f"spec.{key}", n, "must be greater than or equal to 0")
    deadline = spec.get("progressDeadlineSeconds")
    min_ready = spec.get("minReadySeconds") or 0
    if _is_int(deadline) and _is_int(min_ready) and deadline <= min_ready:
        v.invalid("spec.progressDeadlineSeconds", deadline, "must be greater than minReadySeconds")
    v.bool_(spec, "paused", "spec.paused")


_PERCENT = re.compile(r"([0-9]+)%")


def _int_or_percent(v: _Errors, d: Obj, key: str, field: str) -> tuple[int, bool] | None:
    """(amount, is_percent) of an IntOrString such as maxSurge: a count >= 0 or 'N%'."""
    value = d.get(key)
    if value is None:
        return None
    if _is_int(value):
        if value < 0:
            v.invalid(field, value, "must be greater than or equal to 0")
            return None
        return value, False
    if isinstance(value, str):
        m = _PERCENT.fullmatch(value)
        if m:
            return int(m.group(1)), True
    v.invalid(field, value, "must be an integer or a percentage (e.g. '25%')")
    return None


def _workload_common(v: _Errors, spec: Obj, what: str) -> None:
    replicas = v.int_(spec, "replicas", "spec.replicas")
    if replicas is not None and replicas < 0:
        v.invalid("spec.replicas", replicas, "must be greater than or equal to 0")
    min_ready = v.int_(spec, "minReadySeconds", "spec.minReadySeconds")
    if min_ready is not None and min_ready < 0:
        v.invalid("spec.minReadySeconds", min_ready, "must be greater than or equal to 0")
    sel = v.dict_(spec, "selector", "spec.selector")
    selector = None
    if sel is None:
        v.required("spec.selector")
    else:
        selector = _label_selector(v, sel, "spec.selector")
        if selector is not None and selector.empty():
            v.invalid("spec.selector", sel, f"empty selector is invalid for {what}")
            selector = None
    template = v.dict_(spec, "template", "spec.template")
    if template is None:
        v.required("spec.template")
        return
    tmeta = v.dict_(template, "metadata", "spec.template.metadata") or {}
    labels = _labels(v, tmeta, "labels", "spec.template.metadata.labels")
    if selector is not None and not selector.matches(labels):
        v.invalid("spec.template.metadata.labels", labels, "`selector` does not match template `labels`")
    tspec = v.dict_(template, "spec", "spec.template.spec")
    if tspec is None:
        v.required("spec.template.spec")
    else:
        _pod_spec(v, tspec, "spec.template.spec", template=True)


def _selector_update(v: _Errors, obj: Obj, old: Obj) -> None:
    spec, old_spec = obj.get("spec"), old.get("spec")
    if isinstance(spec, dict) and isinstance(old_spec, dict) and spec.get("selector") != old_spec.get("selector"):
        v.immutable("spec.selector", spec.get("selector"))


# -- Ingress and IngressClass ------------------------------------------------------

PATH_TYPES = ("Exact", "ImplementationSpecific", "Prefix")
_BAD_PATH_SEQUENCES = ("//", "/./", "/../", "%2f", "%2F")
_BAD_PATH_SUFFIXES = ("/..", "/.")


def _ingress_host(v: _Errors, host: str, field: str) -> None:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        v.format(field, host, names.host_name(host))
    else:
        v.invalid(field, host, "must be a DNS name, not an IP address")


def _ingress(v: _Errors, obj: Obj) -> None:
    spec = _spec(v, obj)
    rules = v.dicts(spec, "rules", "spec.rules")
    default_backend = v.dict_(spec, "defaultBackend", "spec.defaultBackend")
    if not rules and default_backend is None:
        v.invalid("spec", "", "either `defaultBackend` or `rules` must be specified")
    if default_backend is not None:
        _ingress_backend(v, default_backend, "spec.defaultBackend")
    for i, rule in rules:
        rpath = f"spec.rules[{i}]"
        host = v.str_(rule, "host", f"{rpath}.host")
        if host:
            _ingress_host(v, host, f"{rpath}.host")
        http = v.dict_(rule, "http", f"{rpath}.http")
        if http is None:
            continue
        paths = v.dicts(http, "paths", f"{rpath}.http.paths")
        if not paths:
            v.required(f"{rpath}.http.paths")
        for j, p in paths:
            _ingress_path(v, p, f"{rpath}.http.paths[{j}]")
    for i, tls in v.dicts(spec, "tls", "spec.tls"):
        for j, host in v.strs(tls, "hosts", f"spec.tls[{i}].hosts"):
            _ingress_host(v, host, f"spec.tls[{i}].hosts[{j}]")
        secret = v.str_(tls, "secretName", f"spec.tls[{i}].secretName")
        if secret:
            v.format(f"spec.tls[{i}].secretName", secret, names.dns1123_subdomain(secret))
    cls = v.str_(spec, "ingressClassName", "spec.ingressClassName")
    if cls:
        v.format("spec.ingressClassName", cls, names.dns1123_subdomain(cls))


def _ingress_path(v: _Errors, p: Obj, path: str) -> None:
    value = v.str_(p, "path", f"{path}.path") or ""
    ptype = v.one_of(p, "pathType", f"{path}.pathType", PATH_TYPES, required=True)
    if ptype in ("Exact", "Prefix"):
        if not value.startswith("/"):
            v.invalid(f"{path}.path", value, "must be an absolute path")
        for seq in _BAD_PATH_SEQUENCES:
            if seq in value:
                v.invalid(f"{path}.path", value, f"must not contain '{seq}'")
        for suffix in _BAD_PATH_SUFFIXES:
            if value.endswith(suffix):
                v.invalid(f"{path}.path", value, f"cannot end with '{suffix}'")
    elif ptype == "ImplementationSpecific" and value and not value.startswith("/"):
        v.invalid(f"{path}.path", value, "must be an absolute path")
    backend = v.dict_(p, "backend", f"{path}.backend")
    if backend is None:
        v.required(f"{path}.backend")
    else:
        _ingress_backend(v, backend, f"{path}.backend")


def _ingress_backend(v: _Errors, backend: Obj, path: str) -> None:
    service = v.dict_(backend, "service", f"{path}.service")
    resource = v.dict_(backend, "resource", f"{path}.resource")
    if service is not None and resource is not None:
        v.invalid(path, "", "cannot set both resource and service backends")
    elif resource is not None:
        for key in ("kind", "name"):
            if not v.str_(resource, key, f"{path}.resource.{key}"):
                v.required(f"{path}.resource.{key}")
        group = v.str_(resource, "apiGroup", f"{path}.resource.apiGroup")
        if group:
            v.format(f"{path}.resource.apiGroup", group, names.dns1123_subdomain(group))
    elif service is not None:
        spath = f"{path}.service"
        name = v.str_(service, "name", f"{spath}.name")
        if not name:
            v.required(f"{spath}.name")
        else:
            v.format(f"{spath}.name", name, names.dns1035_label(name))
        port = v.dict_(service, "port", f"{spath}.port") or {}
        pname = v.str_(port, "name", f"{spath}.port.name")
        number = v.int_(port, "number", f"{spath}.port.number")
        if pname and number:
            v.invalid(f"{spath}.port", port, "cannot set both port name & port number")
        elif pname:
            v.format(f"{spath}.port.name", pname, names.iana_svc_name(pname))
        elif number:  # 0 means unset, as in kube
            _port_range(v, number, f"{spath}.port.number")
        elif port.get("number") in (None, 0) and port.get("name") in (None, ""):
            v.required(f"{spath}.port", "port name or number is required")
    else:
        v.invalid(path, "", "resource or service backend is required")


_DOMAIN_PATH_CHARS = re.compile(r"[A-Za-z0-9/\-._~%!$&'()*+,;=:]+")


def _ingress_class(v: _Errors, obj: Obj) -> None:
    spec = _spec(v, obj)
    controller = v.str_(spec, "controller", "spec.controller")
    if not controller:
        v.required("spec.controller")
        return
    if len(controller) > 250:
        v.too_long("spec.controller", 250)
    domain, slash, rest = controller.partition("/")
    if not slash or not domain or not rest:
        v.invalid("spec.controller", controller, "must be a domain-prefixed path (such as \"acme.io/foo\")")
    else:
        v.format("spec.controller", controller, names.dns1123_subdomain(domain))
        if not _DOMAIN_PATH_CHARS.fullmatch(rest):
            v.invalid("spec.controller", controller, "the path part has characters a path may not contain")


def _ingress_class_update(v: _Errors, obj: Obj, old: Obj) -> None:
    new_c = _as_dict(obj.get("spec")).get("controller")
    old_c = _as_dict(old.get("spec")).get("controller")
    if new_c != old_c:
        v.immutable("spec.controller", new_c)


# -- EndpointSlice -----------------------------------------------------------------

ADDRESS_TYPES = ("IPv4", "IPv6", "FQDN")


def _endpoint_address(address_type: str, address: str) -> list[str]:
    if address_type == "FQDN":
        return names.dns1123_subdomain(address)
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return [f"must be a valid {address_type} address"]
    if (ip.version == 4) != (address_type == "IPv4"):
        return [f"must be a valid {address_type} address"]
    return names.non_special_ip(address)


def _endpointslice(v: _Errors, obj: Obj) -> None:
    address_type = v.one_of(obj, "addressType", "addressType", ADDRESS_TYPES, required=True)
    endpoints = v.dicts(obj, "endpoints", "endpoints")
    if len(endpoints) > MAX_ENDPOINTS:
        v.too_many("endpoints", len(endpoints), MAX_ENDPOINTS)
    for i, ep in endpoints:
        path = f"endpoints[{i}]"
        addresses = v.strs(ep, "addresses", f"{path}.addresses")
        if not addresses:
            v.required(f"{path}.addresses", "must contain at least 1 address")
        elif len(addresses) > MAX_ADDRESSES:
            v.too_many(f"{path}.addresses", len(addresses), MAX_ADDRESSES)
        if address_type:
            for j, address in addresses:
                v.format(f"{path}.addresses[{j}]", address, _endpoint_address(address_type, address))
        conditions = v.dict_(ep, "conditions", f"{path}.conditions") or {}
        for key in ("ready", "serving", "terminating"):
            v.bool_(conditions, key, f"{path}.conditions.{key}")
        hostname = v.str_(ep, "hostname", f"{path}.hostname")
        if hostname:
            v.format(f"{path}.hostname", hostname, names.dns1123_label(hostname))
        node = v.str_(ep, "nodeName", f"{path}.nodeName")
        if node:
            v.format(f"{path}.nodeName", node, names.dns1123_subdomain(node))
        v.str_(ep, "zone", f"{path}.zone")
    ports = v.dicts(obj, "ports", "ports")
    if len(ports) > MAX_ENDPOINT_PORTS:
        v.too_many("ports", len(ports), MAX_ENDPOINT_PORTS)
    seen: set[str] = set()
    for i, port in ports:
        path = f"ports[{i}]"
        name = v.str_(port, "name", f"{path}.name") or ""
        if name:
            v.format(f"{path}.name", name, names.dns1123_label(name))
        # Unnamed ports count too: a slice has at most one port without a name.
        if name in seen:
            v.duplicate(f"{path}.name", name)
        seen.add(name)
        _port_range(v, v.int_(port, "port", f"{path}.port"), f"{path}.port", low=0)
        _protocol(v, port, f"{path}.protocol")
        v.str_(port, "appProtocol", f"{path}.appProtocol")


def _endpointslice_update(v: _Errors, obj: Obj, old: Obj) -> None:
    if obj.get("addressType") != old.get("addressType"):
        v.immutable("addressType", obj.get("addressType"))


# -- Node, Lease, Namespace ------------------------------------------------------------


def _node(v: _Errors, obj: Obj) -> None:
    spec = _spec(v, obj)
    pod_cidr = v.str_(spec, "podCIDR", "spec.podCIDR")
    if pod_cidr:
        v.format("spec.podCIDR", pod_cidr, names.cidr(pod_cidr))
    cidrs = v.strs(spec, "podCIDRs", "spec.podCIDRs")
    for i, c in cidrs:
        v.format(f"spec.podCIDRs[{i}]", c, names.cidr(c))
    if cidrs and pod_cidr and cidrs[0][1] != pod_cidr:
        v.invalid("spec.podCIDRs[0]", cidrs[0][1], "must match `spec.podCIDR`")
    if len(cidrs) > 2:
        v.too_many("spec.podCIDRs", len(cidrs), 2)
    v.bool_(spec, "unschedulable", "spec.unschedulable")
    seen: set[tuple[str, str]] = set()
    for i, taint in v.dicts(spec, "taints", "spec.taints"):
        path = f"spec.taints[{i}]"
        key = v.str_(taint, "key", f"{path}.key")
        if not key:
            v.required(f"{path}.key")
        else:
            v.format(f"{path}.key", key, names.qualified_name(key))
        value = v.str_(taint, "value", f"{path}.value")
        if value:
            v.format(f"{path}.value", value, names.label_value(value))
        effect = v.one_of(taint, "effect", f"{path}.effect", ("NoSchedule", "PreferNoSchedule", "NoExecute"),
                          required=True)
        if key and effect:
            if (key, effect) in seen:
                v.duplicate(path, {"key": key, "effect": effect})
            seen.add((key, effect))


def _node_update(v: _Errors, obj: Obj, old: Obj) -> None:
    spec, old_spec = obj.get("spec"), old.get("spec")
    if not isinstance(spec, dict) or not isinstance(old_spec, dict):
        return
    # The pod CIDR may be set once (by the allocator), never changed.
    old_cidr = old_spec.get("podCIDR")
    if old_cidr and spec.get("podCIDR") != old_cidr:
        v.forbidden("spec.podCIDR", "node updates may not change podCIDR except from \"\" to valid")
    old_cidrs = old_spec.get("podCIDRs")
    if old_cidrs and spec.get("podCIDRs") != old_cidrs:
        v.forbidden("spec.podCIDRs", "node updates may not change podCIDRs except from \"\" to valid")


def _lease(v: _Errors, obj: Obj) -> None:
    spec = _spec(v, obj)
    duration = v.int_(spec, "leaseDurationSeconds", "spec.leaseDurationSeconds")
    if duration is not None and duration <= 0:
        v.invalid("spec.leaseDurationSeconds", duration, "must be greater than 0")
    transitions = v.int_(spec, "leaseTransitions", "spec.leaseTransitions")
    if transitions is not None and transitions < 0:
        v.invalid("spec.leaseTransitions", transitions, "must be greater than or equal to 0")
    for key in ("holderIdentity", "acquireTime", "renewTime"):
        v.str_(spec, key, f"spec.{key}")


def _namespace(v: _Errors, obj: Obj) -> None:
    spec = _spec(v, obj)
    for i, fin in v.strs(spec, "finalizers", "spec.finalizers"):
        problems = names.qualified_name(fin)
        if not problems and "/" not in fin and fin not in STANDARD_FINALIZERS:
            problems = ["name is neither a standard finalizer name nor is it fully qualified"]
        v.format(f"spec.finalizers[{i}]", fin, problems)
    status = v.dict_(obj, "status", "status") or {}
    v.one_of(status, "phase", "status.phase", ("Active", "Terminating"))


# -- ConfigMap and Secret --------------------------------------------------------------

_CONFIG_KEY = re.compile(r"[-._a-zA-Z0-9]+")


def _config_key(key: str) -> list[str]:
    errs = []
    if len(key) > names.DNS1123_SUBDOMAIN_MAX:
        errs.append(f"must be no more than {names.DNS1123_SUBDOMAIN_MAX} characters")
    if not _CONFIG_KEY.fullmatch(key):
        errs.append("a valid config key must consist of alphanumeric characters, '-', '_' or '.'")
    if key in (".", "..") or key.startswith(".."):
        errs.append("must not be '.' or '..' or start with '..'")
    return errs


def _base64_size(v: _Errors, value: str, field: str) -> int:
    try:
        return len(base64.b64decode(value, validate=True))
    except (binascii.Error, ValueError):
        v.invalid(field, "<value omitted>", "must be base64-encoded bytes")
        return 0


def _configmap(v: _Errors, obj: Obj) -> None:
    data = v.str_map(obj, "data", "data")
    binary = v.str_map(obj, "binaryData", "binaryData")
    total = 0
    for k, val in data.items():
        v.format(f"data[{k}]", k, _config_key(k))
        total += len(val.encode())
    for k, val in binary.items():
        v.format(f"binaryData[{k}]", k, _config_key(k))
        if k in data:
            v.duplicate(f"data[{k}]", k)
        total += _base64_size(v, val, f"binaryData[{k}]")
    if total > MAX_CONFIG_SIZE:
        v.too_long("data", MAX_CONFIG_SIZE)
    v.bool_(obj, "immutable", "immutable")


_SECRET_REQUIRED_KEYS: dict[str, tuple[str, ...]] = {
    "kubernetes.io/tls": ("tls.crt", "tls.key"),
    "kubernetes.io/dockerconfigjson": (".dockerconfigjson",),
    "kubernetes.io/dockercfg": (".dockercfg",),
    "kubernetes.io/ssh-auth": ("ssh-privatekey",),
}


def _secret(v: _Errors, obj: Obj) -> None:
    data = v.str_map(obj, "data", "data")
    total = 0
    for k, val in data.items():
        v.format(f"data[{k}]", k, _config_key(k))
        total += _base64_size(v, val, f"data[{k}]")
    # Undefaulted input may still carry stringData; defaulting folds it into data.
    for k in v.str_map(obj, "stringData", "stringData"):
        v.format(f"stringData[{k}]", k, _config_key(k))
    if total > MAX_CONFIG_SIZE:
        v.too_long("data", MAX_CONFIG_SIZE)
    stype = v.str_(obj, "type", "type") or "Opaque"
    keys = set(data) | set(obj.get("stringData") or {})
    for required_key in _SECRET_REQUIRED_KEYS.get(stype, ()):
        if required_key not in keys:
            v.required(f"data[{required_key}]")
    if stype == "kubernetes.io/basic-auth" and not keys & {"username", "password"}:
        v.required("data[username]", "one of `username` or `password` is required for basic-auth secrets")
    v.bool_(obj, "immutable", "immutable")


def _immutable_data_update(v: _Errors, obj: Obj, old: Obj) -> None:
    if old.get("immutable") is not True:
        return
    if obj.get("immutable") is not True:
        v.forbidden("immutable", "field is immutable when `immutable` is set")
    for key in ("data", "binaryData"):
        if (obj.get(key) or {}) != (old.get(key) or {}):
            v.forbidden(key, "field is immutable when `immutable` is set")


def _secret_update(v: _Errors, obj: Obj, old: Obj) -> None:
    if (obj.get("type") or "Opaque") != (old.get("type") or "Opaque"):
        v.immutable("type", obj.get("type"))
    _immutable_data_update(v, obj, old)


_KINDS: dict[str, Callable[[_Errors, Obj], None]] = {
    "Service": _service,
    "Pod": _pod,
    "Deployment": _deployment,
    "ReplicaSet": _replicaset,
    "Ingress": _ingress,
    "IngressClass": _ingress_class,
    "EndpointSlice": _endpointslice,
    "Node": _node,
    "Lease": _lease,
    "Namespace": _namespace,
    "ConfigMap": _configmap,
    "Secret": _secret,
}

_UPDATES: dict[str, Callable[[_Errors, Obj, Obj], None]] = {
    "Service": _service_update,
    "Pod": _pod_update,
    "Deployment": _selector_update,
    "ReplicaSet": _selector_update,
    "IngressClass": _ingress_class_update,
    "EndpointSlice": _endpointslice_update,
    "Node": _node_update,
    "ConfigMap": _immutable_data_update,
    "Secret": _secret_update,
}
