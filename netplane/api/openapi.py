"""OpenAPI documents for the resources the state server serves (/openapi/v3 and /openapi/v2).

Clients read these, not people: kubectl 1.37's `apply` looks up the PATCH operation of each
object's group/version/kind (operations carry `x-kubernetes-group-version-kind`) and, when it
declares the `fieldValidation` query parameter, leaves validation to the server (it sends
`?fieldValidation=Strict`); it also computes its three-way strategic merge patch from the
component schemas (`x-kubernetes-patch-merge-key` / `x-kubernetes-patch-strategy`, `$ref`s
resolved within the group-version document). A field kubectl diffs (a map or list whose value
changed) must therefore be described here, or kubectl warns and falls back to its compiled-in
types. The same schemas drive the server's own strategic merge patch (netplane.api.patch), so
client and server agree on every list's merge key.

The schemas are written compactly below and expanded into kube-apiserver's shapes (names like
`io.k8s.api.core.v1.PodSpec`, `$ref: #/components/schemas/...`). They cover the fields our
resources use, not every field Kubernetes has. The returned documents are cached: treat them as
read-only.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
from typing import Any

from netplane.api.resources import RESOURCES, ResourceInfo

JSON = dict[str, Any]

_META = "io.k8s.apimachinery.pkg.apis.meta.v1."
_CORE = "io.k8s.api.core.v1."
_APPS = "io.k8s.api.apps.v1."
_DISC = "io.k8s.api.discovery.v1."
_NET = "io.k8s.api.networking.v1."
_COORD = "io.k8s.api.coordination.v1."
_AUTOSCALING = "io.k8s.api.autoscaling.v1."
_INTSTR = "io.k8s.apimachinery.pkg.util.intstr.IntOrString"
_QTY = "io.k8s.apimachinery.pkg.api.resource.Quantity"
_REF_PREFIX = "#/components/schemas/"

# The Go package each API group's types live in, as kube-apiserver names its schemas.
_GROUP_PREFIX = {
    "": _CORE,
    "apps": _APPS,
    "discovery.k8s.io": _DISC,
    "networking.k8s.io": _NET,
    "coordination.k8s.io": _COORD,
    "autoscaling": _AUTOSCALING,
}

OPENAPI_VERSION = "3.0.0"
_INFO = {"title": "Kubernetes", "version": "v1.37.0-netplane"}

# --------------------------------------------------------------------------- schema helpers

STR: JSON = {"type": "string"}
INT: JSON = {"type": "integer", "format": "int32"}
I64: JSON = {"type": "integer", "format": "int64"}
BOOL: JSON = {"type": "boolean"}
BYTES: JSON = {"type": "string", "format": "byte"}


def ref(name: str, **extensions: Any) -> JSON:
    """A reference to a component; extensions need an allOf wrapper (siblings of $ref are ignored)."""
    target = {"$ref": _REF_PREFIX + name}
    if not extensions:
        return target
    return {"allOf": [target], **{_ext(k): v for k, v in extensions.items()}}


_EXTENSION_NAMES = {"strategy": "x-kubernetes-patch-strategy", "merge_key": "x-kubernetes-patch-merge-key"}


def _ext(key: str) -> str:
    return _EXTENSION_NAMES.get(key, key)


def arr(
    items: JSON,
    *,
    merge_key: str | None = None,
    strategy: str | None = None,
    list_type: str | None = None,
    map_keys: tuple[str, ...] = (),
) -> JSON:
    s: JSON = {"type": "array", "items": items}
    if merge_key:
        s["x-kubernetes-patch-merge-key"] = merge_key
    if strategy:
        s["x-kubernetes-patch-strategy"] = strategy
    if list_type:
        s["x-kubernetes-list-type"] = list_type
    if map_keys:
        s["x-kubernetes-list-map-keys"] = list(map_keys)
    return s


def keyed(items: JSON, key: str, *map_keys: str, retain: bool = False) -> JSON:
    """A list merged element by element on `key` (patchStrategy=merge, listType=map)."""
    return arr(items, merge_key=key, strategy="merge,retainKeys" if retain else "merge",
               list_type="map", map_keys=map_keys or (key,))


def atomic(items: JSON) -> JSON:
    return arr(items, list_type="atomic")


def mapof(values: JSON) -> JSON:
    return {"type": "object", "additionalProperties": values}


STRMAP: JSON = mapof(STR)
QTYMAP: JSON = mapof(ref(_QTY))
STRLIST: JSON = atomic(STR)


def obj(props: dict[str, JSON], required: tuple[str, ...] = (), description: str = "",
        partial: bool = False) -> JSON:
    """An object schema. `partial`: Kubernetes has more fields here than we describe, so unknown
    fields are kept and never reported (x-kubernetes-preserve-unknown-fields)."""
    s: JSON = {"type": "object", "properties": props}
    if required:
        s["required"] = list(required)
    if description:
        s["description"] = description
    if partial:
        s["x-kubernetes-preserve-unknown-fields"] = True
    return s


OPAQUE: JSON = {"type": "object", "x-kubernetes-preserve-unknown-fields": True}


def core(name: str, **ext: Any) -> JSON:
    return ref(_CORE + name, **ext)


def meta(name: str, **ext: Any) -> JSON:
    return ref(_META + name, **ext)


# --------------------------------------------------------------------------- the schemas

TIME = meta("Time")
MICROTIME = meta("MicroTime")
INTSTR = ref(_INTSTR)
OBJECT_META = meta("ObjectMeta")


def _condition(*extra: str) -> JSON:
    props: dict[str, JSON] = {"type": STR, "status": STR, "reason": STR, "message": STR,
                              "lastTransitionTime": TIME}
    for field in extra:
        props[field] = I64 if field == "observedGeneration" else TIME
    return obj(props, required=("type", "status"))


def _top(props: dict[str, JSON], description: str) -> JSON:
    base: dict[str, JSON] = {"apiVersion": STR, "kind": STR, "metadata": OBJECT_META}
    base.update(props)
    return obj(base, description=description)


_SCHEMAS: dict[str, JSON] = {
    # ---- apimachinery
    _META + "Time": {"type": "string", "format": "date-time"},
    _META + "MicroTime": {"type": "string", "format": "date-time"},
    _QTY: {"type": "string", "description": "A fixed-point number such as 100m, 2Gi or 1.5."},
    _INTSTR: {"type": "string", "format": "int-or-string", "x-kubernetes-int-or-string": True},
    _META + "ObjectMeta": obj({
        "name": STR, "generateName": STR, "namespace": STR, "selfLink": STR, "uid": STR,
        "resourceVersion": STR, "generation": I64, "creationTimestamp": TIME,
        "deletionTimestamp": TIME, "deletionGracePeriodSeconds": I64,
        "labels": STRMAP, "annotations": STRMAP,
        "ownerReferences": keyed(meta("OwnerReference"), "uid"),
        "finalizers": arr(STR, strategy="merge", list_type="set"),
        "managedFields": atomic(meta("ManagedFieldsEntry")),
    }),
    _META + "OwnerReference": obj({
        "apiVersion": STR, "kind": STR, "name": STR, "uid": STR, "controller": BOOL,
        "blockOwnerDeletion": BOOL,
    }, required=("apiVersion", "kind", "name", "uid")),
    _META + "ManagedFieldsEntry": obj({
        "manager": STR, "operation": STR, "apiVersion": STR, "time": TIME, "fieldsType": STR,
        "fieldsV1": {"type": "object"}, "subresource": STR,
    }),
    _META + "ListMeta": obj({"selfLink": STR, "resourceVersion": STR, "continue": STR,
                             "remainingItemCount": I64}),
    _META + "LabelSelector": obj({
        "matchLabels": STRMAP,
        "matchExpressions": atomic(meta("LabelSelectorRequirement")),
    }, description="A label query over a set of resources."),
    _META + "LabelSelectorRequirement": obj({"key": STR, "operator": STR, "values": STRLIST},
                                            required=("key", "operator")),
    _META + "Condition": _condition("observedGeneration"),
    _META + "Status": obj({
        "apiVersion": STR, "kind": STR, "metadata": meta("ListMeta"), "status": STR, "message": STR,
        "reason": STR, "code": INT,
        "details": obj({"name": STR, "group": STR, "kind": STR, "uid": STR, "retryAfterSeconds": INT,
                        "causes": atomic(obj({"reason": STR, "message": STR, "field": STR}))}),
    }),
    _META + "DeleteOptions": obj({
        "apiVersion": STR, "kind": STR, "gracePeriodSeconds": I64, "propagationPolicy": STR,
        "orphanDependents": BOOL, "dryRun": STRLIST,
        "preconditions": obj({"uid": STR, "resourceVersion": STR}),
    }),
    _META + "Patch": {"type": "object", "description": "The body of a PATCH request."},
    # ---- core/v1: shared pieces
    _CORE + "ObjectReference": obj({
        "kind": STR, "namespace": STR, "name": STR, "uid": STR, "apiVersion": STR,
        "resourceVersion": STR, "fieldPath": STR,
    }),
    _CORE + "LocalObjectReference": obj({"name": STR}),
    _CORE + "TypedLocalObjectReference": obj({"apiGroup": STR, "kind": STR, "name": STR},
                                             required=("kind", "name")),
    _CORE + "KeyToPath": obj({"key": STR, "path": STR, "mode": INT}, required=("key", "path")),
    _CORE + "ObjectFieldSelector": obj({"apiVersion": STR, "fieldPath": STR}, required=("fieldPath",)),
    _CORE + "ResourceFieldSelector": obj({"containerName": STR, "resource": STR, "divisor": ref(_QTY)},
                                         required=("resource",)),
    _CORE + "ConfigMapKeySelector": obj({"name": STR, "key": STR, "optional": BOOL}, required=("key",)),
    _CORE + "SecretKeySelector": obj({"name": STR, "key": STR, "optional": BOOL}, required=("key",)),
    # ---- containers
    _CORE + "Container": obj({
        "name": STR, "image": STR, "command": STRLIST, "args": STRLIST, "workingDir": STR,
        "ports": keyed(core("ContainerPort"), "containerPort", "containerPort", "protocol"),
        "envFrom": atomic(core("EnvFromSource")),
        "env": keyed(core("EnvVar"), "name"),
        "resources": core("ResourceRequirements"),
        "resizePolicy": atomic(core("ContainerResizePolicy")),
        "restartPolicy": STR, "restartPolicyRules": atomic(OPAQUE),
        "volumeMounts": keyed(core("VolumeMount"), "mountPath"),
        "volumeDevices": keyed(core("VolumeDevice"), "devicePath"),
        "livenessProbe": core("Probe"), "readinessProbe": core("Probe"), "startupProbe": core("Probe"),
        "lifecycle": core("Lifecycle"),
        "terminationMessagePath": STR, "terminationMessagePolicy": STR, "imagePullPolicy": STR,
        "securityContext": core("SecurityContext"),
        "stdin": BOOL, "stdinOnce": BOOL, "tty": BOOL,
    }, required=("name",), description="A single application container in a pod."),
    _CORE + "ContainerPort": obj({"name": STR, "hostPort": INT, "containerPort": INT, "protocol": STR,
                                  "hostIP": STR}, required=("containerPort",)),
    _CORE + "EnvVar": obj({"name": STR, "value": STR, "valueFrom": core("EnvVarSource")},
                          required=("name",)),
    _CORE + "EnvVarSource": obj({
        "fieldRef": core("ObjectFieldSelector"), "resourceFieldRef": core("ResourceFieldSelector"),
        "configMapKeyRef": core("ConfigMapKeySelector"), "secretKeyRef": core("SecretKeySelector"),
        "fileKeyRef": OPAQUE,
    }),
    _CORE + "EnvFromSource": obj({
        "prefix": STR,
        "configMapRef": obj({"name": STR, "optional": BOOL}),
        "secretRef": obj({"name": STR, "optional": BOOL}),
    }),
    _CORE + "ResourceRequirements": obj({
        "limits": QTYMAP, "requests": QTYMAP,
        "claims": keyed(obj({"name": STR, "request": STR}, required=("name",)), "name"),
    }),
    _CORE + "ContainerResizePolicy": obj({"resourceName": STR, "restartPolicy": STR}),
    _CORE + "VolumeMount": obj({
        "name": STR, "readOnly": BOOL, "recursiveReadOnly": STR, "mountPath": STR, "subPath": STR,
        "mountPropagation": STR, "subPathExpr": STR,
    }, required=("name", "mountPath")),
    _CORE + "VolumeDevice": obj({"name": STR, "devicePath": STR}, required=("name", "devicePath")),
    _CORE + "ExecAction": obj({"command": STRLIST}),
    _CORE + "HTTPGetAction": obj({
        "path": STR, "port": INTSTR, "host": STR, "scheme": STR,
        "httpHeaders": atomic(obj({"name": STR, "value": STR}, required=("name", "value"))),
    }, required=("port",)),
    _CORE + "TCPSocketAction": obj({"port": INTSTR, "host": STR}, required=("port",)),
    _CORE + "GRPCAction": obj({"port": INT, "service": STR}, required=("port",)),
    _CORE + "Probe": obj({
        "exec": core("ExecAction"), "httpGet": core("HTTPGetAction"), "tcpSocket": core("TCPSocketAction"),
        "grpc": core("GRPCAction"), "initialDelaySeconds": INT, "timeoutSeconds": INT,
        "periodSeconds": INT, "successThreshold": INT, "failureThreshold": INT,
        "terminationGracePeriodSeconds": I64,
    }),
    _CORE + "LifecycleHandler": obj({
        "exec": core("ExecAction"), "httpGet": core("HTTPGetAction"), "tcpSocket": core("TCPSocketAction"),
        "sleep": obj({"seconds": I64}, required=("seconds",)),
    }),
    _CORE + "Lifecycle": obj({"postStart": core("LifecycleHandler"), "preStop": core("LifecycleHandler"),
                              "stopSignal": STR}),
    _CORE + "SELinuxOptions": obj({"user": STR, "role": STR, "type": STR, "level": STR}),
    _CORE + "SeccompProfile": obj({"type": STR, "localhostProfile": STR}, required=("type",)),
    _CORE + "AppArmorProfile": obj({"type": STR, "localhostProfile": STR}, required=("type",)),
    _CORE + "SecurityContext": obj({
        "capabilities": obj({"add": STRLIST, "drop": STRLIST}),
        "privileged": BOOL, "seLinuxOptions": core("SELinuxOptions"), "runAsUser": I64,
        "runAsGroup": I64, "runAsNonRoot": BOOL, "readOnlyRootFilesystem": BOOL,
        "allowPrivilegeEscalation": BOOL, "procMount": STR, "seccompProfile": core("SeccompProfile"),
        "appArmorProfile": core("AppArmorProfile"), "windowsOptions": OPAQUE,
    }),
    _CORE + "PodSecurityContext": obj({
        "seLinuxOptions": core("SELinuxOptions"), "runAsUser": I64, "runAsGroup": I64,
        "runAsNonRoot": BOOL, "supplementalGroups": atomic(I64), "supplementalGroupsPolicy": STR,
        "fsGroup": I64, "fsGroupChangePolicy": STR,
        "sysctls": atomic(obj({"name": STR, "value": STR}, required=("name", "value"))),
        "seccompProfile": core("SeccompProfile"), "appArmorProfile": core("AppArmorProfile"),
        "windowsOptions": OPAQUE, "seLinuxChangePolicy": STR,
    }),
    # ---- volumes
    _CORE + "Volume": obj({
        "name": STR,
        "hostPath": obj({"path": STR, "type": STR}, required=("path",)),
        "emptyDir": obj({"medium": STR, "sizeLimit": ref(_QTY)}),
        "secret": obj({"secretName": STR, "items": atomic(core("KeyToPath")), "defaultMode": INT,
                       "optional": BOOL}),
        "configMap": obj({"name": STR, "items": atomic(core("KeyToPath")), "defaultMode": INT,
                          "optional": BOOL}),
        "persistentVolumeClaim": obj({"claimName": STR, "readOnly": BOOL}, required=("claimName",)),
        "projected": obj({"sources": atomic(core("VolumeProjection")), "defaultMode": INT}),
        "downwardAPI": obj({"items": atomic(core("DownwardAPIVolumeFile")), "defaultMode": INT}),
        "nfs": obj({"server": STR, "path": STR, "readOnly": BOOL}, required=("server", "path")),
    }, required=("name",), partial=True),
    _CORE + "DownwardAPIVolumeFile": obj({
        "path": STR, "fieldRef": core("ObjectFieldSelector"),
        "resourceFieldRef": core("ResourceFieldSelector"), "mode": INT,
    }, required=("path",)),
    _CORE + "VolumeProjection": obj({
        "secret": obj({"name": STR, "items": atomic(core("KeyToPath")), "optional": BOOL}),
        "configMap": obj({"name": STR, "items": atomic(core("KeyToPath")), "optional": BOOL}),
        "downwardAPI": obj({"items": atomic(core("DownwardAPIVolumeFile"))}),
        "serviceAccountToken": obj({"audience": STR, "expirationSeconds": I64, "path": STR},
                                   required=("path",)),
    }, partial=True),
    # ---- scheduling
    _CORE + "Toleration": obj({"key": STR, "operator": STR, "value": STR, "effect": STR,
                               "tolerationSeconds": I64}),
    _CORE + "Taint": obj({"key": STR, "value": STR, "effect": STR, "timeAdded": TIME},
                         required=("key", "effect")),
    _CORE + "NodeSelectorRequirement": obj({"key": STR, "operator": STR, "values": STRLIST},
                                           required=("key", "operator")),
    _CORE + "NodeSelectorTerm": obj({
        "matchExpressions": atomic(core("NodeSelectorRequirement")),
        "matchFields": atomic(core("NodeSelectorRequirement")),
    }),
    _CORE + "NodeSelector": obj({"nodeSelectorTerms": atomic(core("NodeSelectorTerm"))},
                                required=("nodeSelectorTerms",)),
    _CORE + "PreferredSchedulingTerm": obj({"weight": INT, "preference": core("NodeSelectorTerm")},
                                           required=("weight", "preference")),
    _CORE + "PodAffinityTerm": obj({
        "labelSelector": meta("LabelSelector"), "namespaces": STRLIST, "topologyKey": STR,
        "namespaceSelector": meta("LabelSelector"), "matchLabelKeys": STRLIST,
        "mismatchLabelKeys": STRLIST,
    }, required=("topologyKey",)),
    _CORE + "WeightedPodAffinityTerm": obj({"weight": INT, "podAffinityTerm": core("PodAffinityTerm")},
                                           required=("weight", "podAffinityTerm")),
    _CORE + "PodAffinity": obj({
        "requiredDuringSchedulingIgnoredDuringExecution": atomic(core("PodAffinityTerm")),
        "preferredDuringSchedulingIgnoredDuringExecution": atomic(core("WeightedPodAffinityTerm")),
    }),
    _CORE + "Affinity": obj({
        "nodeAffinity": obj({
            "requiredDuringSchedulingIgnoredDuringExecution": core("NodeSelector"),
            "preferredDuringSchedulingIgnoredDuringExecution": atomic(core("PreferredSchedulingTerm")),
        }),
        "podAffinity": core("PodAffinity"),
        "podAntiAffinity": core("PodAffinity"),
    }),
    _CORE + "TopologySpreadConstraint": obj({
        "maxSkew": INT, "topologyKey": STR, "whenUnsatisfiable": STR,
        "labelSelector": meta("LabelSelector"), "minDomains": INT, "nodeAffinityPolicy": STR,
        "nodeTaintsPolicy": STR, "matchLabelKeys": STRLIST,
    }, required=("maxSkew", "topologyKey", "whenUnsatisfiable")),
    # ---- pods
    _CORE + "PodSpec": obj({
        "volumes": keyed(core("Volume"), "name", retain=True),
        "initContainers": keyed(core("Container"), "name"),
        "containers": keyed(core("Container"), "name"),
        "ephemeralContainers": keyed(core("EphemeralContainer"), "name"),
        "restartPolicy": STR, "terminationGracePeriodSeconds": I64, "activeDeadlineSeconds": I64,
        "dnsPolicy": STR, "nodeSelector": {**STRMAP, "x-kubernetes-map-type": "atomic"},
        "serviceAccountName": STR, "serviceAccount": STR, "automountServiceAccountToken": BOOL,
        "nodeName": STR, "hostNetwork": BOOL, "hostPID": BOOL, "hostIPC": BOOL,
        "shareProcessNamespace": BOOL, "securityContext": core("PodSecurityContext"),
        "imagePullSecrets": keyed(core("LocalObjectReference"), "name"),
        "hostname": STR, "subdomain": STR, "setHostnameAsFQDN": BOOL, "hostnameOverride": STR,
        "affinity": core("Affinity"), "schedulerName": STR,
        "tolerations": atomic(core("Toleration")),
        "hostAliases": keyed(obj({"ip": STR, "hostnames": STRLIST}, required=("ip",)), "ip"),
        "priorityClassName": STR, "priority": INT, "preemptionPolicy": STR,
        "dnsConfig": obj({"nameservers": STRLIST, "searches": STRLIST,
                          "options": atomic(obj({"name": STR, "value": STR}))}),
        "readinessGates": atomic(obj({"conditionType": STR}, required=("conditionType",))),
        "runtimeClassName": STR, "enableServiceLinks": BOOL, "overhead": QTYMAP,
        "topologySpreadConstraints": keyed(core("TopologySpreadConstraint"), "topologyKey",
                                           "topologyKey", "whenUnsatisfiable"),
        "os": obj({"name": STR}, required=("name",)), "hostUsers": BOOL,
        "schedulingGates": keyed(obj({"name": STR}, required=("name",)), "name"),
        "resources": core("ResourceRequirements"),
        "resourceClaims": keyed(obj({"name": STR}, required=("name",), partial=True), "name", retain=True),
    }, required=("containers",), description="The specification of a pod."),
    _CORE + "PodTemplateSpec": obj({"metadata": OBJECT_META, "spec": core("PodSpec")}),
    _CORE + "ContainerState": obj({
        "waiting": obj({"reason": STR, "message": STR}),
        "running": obj({"startedAt": TIME}),
        "terminated": obj({"exitCode": INT, "signal": INT, "reason": STR, "message": STR,
                           "startedAt": TIME, "finishedAt": TIME, "containerID": STR},
                          required=("exitCode",)),
    }),
    _CORE + "ContainerStatus": obj({
        "name": STR, "state": core("ContainerState"), "lastState": core("ContainerState"),
        "ready": BOOL, "restartCount": INT, "image": STR, "imageID": STR, "containerID": STR,
        "started": BOOL,
    }, required=("name", "ready", "restartCount", "image", "imageID"), partial=True),
    _CORE + "PodCondition": _condition("lastProbeTime", "observedGeneration"),
    _CORE + "PodStatus": obj({
        "observedGeneration": I64, "phase": STR,
        "conditions": keyed(core("PodCondition"), "type"),
        "message": STR, "reason": STR, "nominatedNodeName": STR, "hostIP": STR,
        "hostIPs": keyed(obj({"ip": STR}, required=("ip",)), "ip"),
        "podIP": STR, "podIPs": keyed(obj({"ip": STR}, required=("ip",)), "ip"),
        "startTime": TIME,
        "initContainerStatuses": atomic(core("ContainerStatus")),
        "containerStatuses": atomic(core("ContainerStatus")),
        "ephemeralContainerStatuses": atomic(core("ContainerStatus")),
        "qosClass": STR,
    }, partial=True),
    _CORE + "Pod": _top({"spec": core("PodSpec"), "status": core("PodStatus")},
                        "A collection of containers that run on a host."),
    # ---- namespaces, nodes
    _CORE + "Namespace": _top({
        "spec": obj({"finalizers": STRLIST}),
        "status": obj({"phase": STR, "conditions": keyed(_condition(), "type")}),
    }, "A scope for names."),
    _CORE + "NodeCondition": _condition("lastHeartbeatTime"),
    _CORE + "NodeAddress": obj({"type": STR, "address": STR}, required=("type", "address")),
    _CORE + "NodeSystemInfo": obj({
        "machineID": STR, "systemUUID": STR, "bootID": STR, "kernelVersion": STR, "osImage": STR,
        "containerRuntimeVersion": STR, "kubeletVersion": STR, "kubeProxyVersion": STR,
        "operatingSystem": STR, "architecture": STR,
    }, partial=True),
    _CORE + "Node": _top({
        "spec": obj({
            "podCIDR": STR, "podCIDRs": arr(STR, strategy="merge", list_type="set"),
            "providerID": STR, "unschedulable": BOOL, "taints": atomic(core("Taint")),
            "externalID": STR, "configSource": OPAQUE,
        }),
        "status": obj({
            "capacity": QTYMAP, "allocatable": QTYMAP, "phase": STR,
            "conditions": keyed(core("NodeCondition"), "type"),
            "addresses": keyed(core("NodeAddress"), "type"),
            "daemonEndpoints": obj({"kubeletEndpoint": obj({"Port": INT}, required=("Port",))}),
            "nodeInfo": core("NodeSystemInfo"),
            "images": atomic(obj({"names": STRLIST, "sizeBytes": I64})),
            "volumesInUse": STRLIST,
        }, partial=True),
    }, "A worker node."),
    # ---- services
    _CORE + "ServicePort": obj({
        "name": STR, "protocol": STR, "appProtocol": STR, "port": INT, "targetPort": INTSTR,
        "nodePort": INT,
    }, required=("port",)),
    _CORE + "LoadBalancerStatus": obj({"ingress": atomic(obj({
        "ip": STR, "hostname": STR, "ipMode": STR,
        "ports": atomic(obj({"port": INT, "protocol": STR, "error": STR}, required=("port", "protocol"))),
    }))}),
    _CORE + "Service": _top({
        "spec": obj({
            "ports": keyed(core("ServicePort"), "port", "port", "protocol"),
            "selector": {**STRMAP, "x-kubernetes-map-type": "atomic"},
            "clusterIP": STR, "clusterIPs": STRLIST, "type": STR, "externalIPs": STRLIST,
            "sessionAffinity": STR, "loadBalancerIP": STR, "loadBalancerSourceRanges": STRLIST,
            "externalName": STR, "externalTrafficPolicy": STR, "healthCheckNodePort": INT,
            "publishNotReadyAddresses": BOOL,
            "sessionAffinityConfig": obj({"clientIP": obj({"timeoutSeconds": INT})}),
            "ipFamilies": STRLIST, "ipFamilyPolicy": STR, "allocateLoadBalancerNodePorts": BOOL,
            "loadBalancerClass": STR, "internalTrafficPolicy": STR, "trafficDistribution": STR,
        }),
        "status": obj({
            "loadBalancer": core("LoadBalancerStatus"),
            "conditions": keyed(meta("Condition"), "type"),
        }),
    }, "A named abstraction of software service: a port the proxy listens on and a pod selector."),
    # ---- secrets, config maps, events
    _CORE + "Secret": _top({"data": mapof(BYTES), "stringData": STRMAP, "type": STR, "immutable": BOOL},
                           "Secret data of a certain type."),
    _CORE + "ConfigMap": _top({"data": STRMAP, "binaryData": mapof(BYTES), "immutable": BOOL},
                              "Configuration data for pods to consume."),
    _CORE + "Event": _top({
        "involvedObject": core("ObjectReference"), "reason": STR, "message": STR,
        "source": obj({"component": STR, "host": STR}),
        "firstTimestamp": TIME, "lastTimestamp": TIME, "count": INT, "type": STR,
        "eventTime": MICROTIME, "series": obj({"count": INT, "lastObservedTime": MICROTIME}),
        "action": STR, "related": core("ObjectReference"), "reportingComponent": STR,
        "reportingInstance": STR,
    }, "A report of an event somewhere in the cluster."),
    # ---- discovery.k8s.io/v1
    _DISC + "Endpoint": obj({
        "addresses": arr(STR, list_type="set"),
        "conditions": obj({"ready": BOOL, "serving": BOOL, "terminating": BOOL}),
        "hostname": STR, "targetRef": core("ObjectReference"), "deprecatedTopology": STRMAP,
        "nodeName": STR, "zone": STR,
        "hints": obj({"forZones": atomic(obj({"name": STR}, required=("name",))),
                      "forNodes": atomic(obj({"name": STR}, required=("name",)))}),
    }, required=("addresses",)),
    _DISC + "EndpointPort": obj({"name": STR, "protocol": STR, "port": INT, "appProtocol": STR}),
    _DISC + "EndpointSlice": _top({
        "addressType": STR,
        "endpoints": atomic(ref(_DISC + "Endpoint")),
        "ports": atomic(ref(_DISC + "EndpointPort")),
    }, "A set of endpoints that implement a service."),
    # ---- networking.k8s.io/v1
    _NET + "IngressBackend": obj({
        "service": obj({"name": STR, "port": obj({"name": STR, "number": INT})}, required=("name",)),
        "resource": core("TypedLocalObjectReference"),
    }),
    _NET + "HTTPIngressPath": obj({"path": STR, "pathType": STR, "backend": ref(_NET + "IngressBackend")},
                                  required=("pathType", "backend")),
    _NET + "IngressRule": obj({
        "host": STR,
        "http": obj({"paths": atomic(ref(_NET + "HTTPIngressPath"))}, required=("paths",)),
    }),
    _NET + "Ingress": _top({
        "spec": obj({
            "ingressClassName": STR, "defaultBackend": ref(_NET + "IngressBackend"),
            "tls": atomic(obj({"hosts": STRLIST, "secretName": STR})),
            "rules": atomic(ref(_NET + "IngressRule")),
        }),
        "status": obj({"loadBalancer": obj({"ingress": atomic(obj({
            "ip": STR, "hostname": STR,
            "ports": atomic(obj({"port": INT, "protocol": STR, "error": STR},
                                required=("port", "protocol"))),
        }))})}),
    }, "A collection of rules that allow inbound connections to reach services."),
    _NET + "IngressClass": _top({
        "spec": obj({
            "controller": STR,
            "parameters": obj({"apiGroup": STR, "kind": STR, "name": STR, "scope": STR, "namespace": STR},
                              required=("kind", "name")),
        }),
    }, "The class of an Ingress: which controller implements it."),
    # ---- apps/v1
    _APPS + "DeploymentCondition": _condition("lastUpdateTime"),
    _APPS + "Deployment": _top({
        "spec": obj({
            "replicas": INT, "selector": meta("LabelSelector"), "template": core("PodTemplateSpec"),
            "strategy": ref(_APPS + "DeploymentStrategy", strategy="retainKeys"),
            "minReadySeconds": INT, "revisionHistoryLimit": INT, "paused": BOOL,
            "progressDeadlineSeconds": INT,
        }, required=("selector", "template")),
        "status": obj({
            "observedGeneration": I64, "replicas": INT, "updatedReplicas": INT, "readyReplicas": INT,
            "availableReplicas": INT, "unavailableReplicas": INT, "terminatingReplicas": INT,
            "conditions": keyed(ref(_APPS + "DeploymentCondition"), "type"), "collisionCount": INT,
        }),
    }, "Declarative updates for pods and replica sets."),
    _APPS + "DeploymentStrategy": obj({
        "type": STR,
        "rollingUpdate": obj({"maxUnavailable": INTSTR, "maxSurge": INTSTR}),
    }),
    _APPS + "ReplicaSetCondition": _condition(),
    _APPS + "ReplicaSet": _top({
        "spec": obj({
            "replicas": INT, "minReadySeconds": INT, "selector": meta("LabelSelector"),
            "template": core("PodTemplateSpec"),
        }, required=("selector",)),
        "status": obj({
            "replicas": INT, "fullyLabeledReplicas": INT, "readyReplicas": INT, "availableReplicas": INT,
            "terminatingReplicas": INT, "observedGeneration": I64,
            "conditions": keyed(ref(_APPS + "ReplicaSetCondition"), "type"),
        }),
    }, "Ensures that a specified number of pod replicas are running."),
    # ---- autoscaling/v1 (the /scale subresource)
    _AUTOSCALING + "Scale": _top({
        "spec": obj({"replicas": INT}),
        "status": obj({"replicas": INT, "selector": STR}, required=("replicas",)),
    }, "A scaling request for a resource."),
    # ---- coordination.k8s.io/v1
    _COORD + "Lease": _top({
        "spec": obj({
            "holderIdentity": STR, "leaseDurationSeconds": INT, "acquireTime": MICROTIME,
            "renewTime": MICROTIME, "leaseTransitions": INT, "strategy": STR, "preferredHolder": STR,
        }),
    }, "A lease concept."),
}

# An ephemeral container is a container (debugging aid) naming the container whose namespaces it joins.
_SCHEMAS[_CORE + "EphemeralContainer"] = {
    **_SCHEMAS[_CORE + "Container"],
    "properties": {**_SCHEMAS[_CORE + "Container"]["properties"], "targetContainerName": STR},
    "description": "A temporary container added to a running pod.",
}

SCALE_GVK = {"group": "autoscaling", "version": "v1", "kind": "Scale"}


def schema_name(info: ResourceInfo) -> str:
    """The component name of a resource's kind, e.g. io.k8s.api.apps.v1.Deployment."""
    return _GROUP_PREFIX[info.group] + info.kind


def _gvk(info: ResourceInfo, kind: str | None = None) -> dict[str, str]:
    return {"group": info.group, "version": info.version, "kind": kind or info.kind}


@functools.cache
def all_schemas() -> dict[str, JSON]:
    """Every component schema, kinds and lists carrying x-kubernetes-group-version-kind."""
    schemas = copy.deepcopy(_SCHEMAS)
    for info in RESOURCES:
        name = schema_name(info)
        schemas[name]["x-kubernetes-group-version-kind"] = [_gvk(info)]
        schemas[name + "List"] = {
            **obj({"apiVersion": STR, "kind": STR, "metadata": meta("ListMeta"),
                   "items": arr(ref(name))}, required=("items",)),
            "x-kubernetes-group-version-kind": [_gvk(info, info.kind + "List")],
        }
    schemas[_AUTOSCALING + "Scale"]["x-kubernetes-group-version-kind"] = [dict(SCALE_GVK)]
    schemas[_META + "Status"]["x-kubernetes-group-version-kind"] = [
        {"group": "", "version": "v1", "kind": "Status"}]
    return schemas


# --------------------------------------------------------------------------- operations

def _param(name: str, description: str, kind: str = "string", where: str = "query",
           required: bool = False) -> JSON:
    p: JSON = {"name": name, "in": where, "description": description,
               "schema": {"type": kind, "uniqueItems": True}}
    if required:
        p["required"] = True
    return p


_PRETTY = _param("pretty", "If 'true', the output is pretty printed.")
_DRY_RUN = _param("dryRun", "When present, modifications are not persisted (All).")
_FIELD_MANAGER = _param("fieldManager", "A name associated with the actor making these changes.")
_FIELD_VALIDATION = _param(
    "fieldValidation",
    "How the server treats unknown or duplicate fields in the request body: Ignore, Warn or Strict.")
_FORCE = _param("force", "Force an apply request, re-acquiring conflicting fields.", "boolean")
_LIST_PARAMS = [
    _param("allowWatchBookmarks", "Ask for BOOKMARK watch events.", "boolean"),
    _param("continue", "The continue token of a previous paginated list call."),
    _param("fieldSelector", "Restrict the returned objects by their fields."),
    _param("labelSelector", "Restrict the returned objects by their labels."),
    _param("limit", "The maximum number of objects to return.", "integer"),
    _param("resourceVersion", "Constrains which resource versions the request may be served from."),
    _param("resourceVersionMatch", "How resourceVersion is applied to list calls."),
    _param("sendInitialEvents", "Start a watch with synthetic ADDED events for the current state.",
           "boolean"),
    _param("timeoutSeconds", "Timeout for the list or watch call.", "integer"),
    _param("watch", "Watch for changes and stream them as add, update and remove notifications.",
           "boolean"),
]
_DELETE_PARAMS = [
    _DRY_RUN,
    _param("gracePeriodSeconds", "The duration in seconds before the object should be deleted.", "integer"),
    _param("orphanDependents", "Deprecated: use propagationPolicy.", "boolean"),
    _param("propagationPolicy", "Whether and how garbage collection is performed: Orphan, Background, "
                                "Foreground."),
]
_PATCH_TYPES = ("application/apply-patch+yaml", "application/json-patch+json",
                "application/merge-patch+json", "application/strategic-merge-patch+json")
_RESPONSE_TYPES = ("application/json", "application/yaml")


def _camel_group(info: ResourceInfo) -> str:
    group = info.group.split(".")[0] if info.group else "core"
    return group[:1].upper() + group[1:] + info.version[:1].upper() + info.version[1:]


def _body(schema: JSON, types: tuple[str, ...] = ("*/*",)) -> JSON:
    return {"content": {t: {"schema": schema} for t in types}, "required": True}


def _responses(schema: JSON, *codes: str) -> JSON:
    out: JSON = {}
    for code in codes:
        out[code] = {"description": {"200": "OK", "201": "Created", "202": "Accepted"}[code],
                     "content": {t: {"schema": schema} for t in _RESPONSE_TYPES}}
    out["401"] = {"description": "Unauthorized"}
    return out


def _op(action: str, op_id: str, tag: str, gvk: dict[str, str], params: list[JSON], responses: JSON,
        body: JSON | None = None, description: str = "") -> JSON:
    op: JSON = {"tags": [tag], "description": description or f"{action} {gvk['kind']}",
                "operationId": op_id, "responses": responses,
                "x-kubernetes-action": action, "x-kubernetes-group-version-kind": dict(gvk)}
    if params:
        op["parameters"] = params
    if body is not None:
        op["requestBody"] = body
    return op


def _paths_for(info: ResourceInfo) -> dict[str, JSON]:
    base = "/api/" + info.version if not info.group else f"/apis/{info.group}/{info.version}"
    tag = (info.group.split(".")[0] if info.group else "core") + "_" + info.version
    ns_part = "/namespaces/{namespace}" if info.namespaced else ""
    scope = "Namespaced" if info.namespaced else ""
    cg = _camel_group(info)
    kind_ref = ref(schema_name(info))
    list_ref = ref(schema_name(info) + "List")
    gvk = _gvk(info)
    verbs = set(info.verbs)
    path_params: list[JSON] = []
    if info.namespaced:
        path_params.append(_param("namespace", "object name and auth scope, such as for teams and projects",
                                  where="path", required=True))
    name_param = _param("name", f"name of the {info.kind}", where="path", required=True)
    paths: dict[str, JSON] = {}

    collection: JSON = {"parameters": [*path_params, _PRETTY]}
    if "list" in verbs:
        collection["get"] = _op("list", f"list{cg}{scope}{info.kind}", tag, gvk, list(_LIST_PARAMS),
                                _responses(list_ref, "200"))
    if "create" in verbs:
        collection["post"] = _op("post", f"create{cg}{scope}{info.kind}", tag, gvk,
                                 [_DRY_RUN, _FIELD_MANAGER, _FIELD_VALIDATION],
                                 _responses(kind_ref, "200", "201", "202"), _body(kind_ref))
    if "deletecollection" in verbs:
        collection["delete"] = _op("deletecollection", f"deleteCollection{cg}{scope}{info.kind}", tag, gvk,
                                   [*_LIST_PARAMS, *_DELETE_PARAMS],
                                   _responses(meta("Status"), "200"), _body(meta("DeleteOptions")))
    paths[f"{base}{ns_part}/{info.plural}"] = collection

    item: JSON = {"parameters": [name_param, *path_params, _PRETTY]}
    if "get" in verbs:
        item["get"] = _op("get", f"read{cg}{scope}{info.kind}", tag, gvk, [], _responses(kind_ref, "200"))
    if "update" in verbs:
        item["put"] = _op("put", f"replace{cg}{scope}{info.kind}", tag, gvk,
                          [_DRY_RUN, _FIELD_MANAGER, _FIELD_VALIDATION],
                          _responses(kind_ref, "200", "201"), _body(kind_ref))
    if "patch" in verbs:
        item["patch"] = _patch_op(f"patch{cg}{scope}{info.kind}", tag, gvk, kind_ref)
    if "delete" in verbs:
        item["delete"] = _op("delete", f"delete{cg}{scope}{info.kind}", tag, gvk, list(_DELETE_PARAMS),
                             _responses(meta("Status"), "200", "202"), _body(meta("DeleteOptions")))
    paths[f"{base}{ns_part}/{info.plural}/{{name}}"] = item

    for sub in info.subresources:
        sub_gvk = dict(SCALE_GVK) if sub == "scale" else gvk
        sub_ref = ref(_AUTOSCALING + "Scale") if sub == "scale" else kind_ref
        suffix = info.kind + sub.capitalize()
        paths[f"{base}{ns_part}/{info.plural}/{{name}}/{sub}"] = {
            "parameters": [_param("name", f"name of the {sub_gvk['kind']}", where="path", required=True),
                           *path_params, _PRETTY],
            "get": _op("get", f"read{cg}{scope}{suffix}", tag, sub_gvk, [], _responses(sub_ref, "200")),
            "put": _op("put", f"replace{cg}{scope}{suffix}", tag, sub_gvk,
                       [_DRY_RUN, _FIELD_MANAGER, _FIELD_VALIDATION],
                       _responses(sub_ref, "200", "201"), _body(sub_ref)),
            "patch": _patch_op(f"patch{cg}{scope}{suffix}", tag, sub_gvk, sub_ref),
        }

    if info.namespaced and "list" in verbs:
        paths[f"{base}/{info.plural}"] = {
            "parameters": [_PRETTY],
            "get": _op("list", f"list{cg}{info.kind}ForAllNamespaces", tag, gvk, list(_LIST_PARAMS),
                       _responses(list_ref, "200")),
        }
    return paths


def _patch_op(op_id: str, tag: str, gvk: dict[str, str], result: JSON) -> JSON:
    # kubectl reads two things here: fieldValidation among the parameters (server-side validation)
    # and application/strategic-merge-patch+json among the body types (client-side apply computes
    # a strategic merge patch rather than a JSON merge patch).
    return _op("patch", op_id, tag, gvk, [_DRY_RUN, _FIELD_MANAGER, _FIELD_VALIDATION, _FORCE],
               _responses(result, "200", "201"), _body(meta("Patch"), _PATCH_TYPES),
               description=f"partially update the specified {gvk['kind']}")


def _refs_in(node: Any, out: set[str]) -> None:
    if isinstance(node, dict):
        target = node.get("$ref")
        if isinstance(target, str) and target.startswith(_REF_PREFIX):
            out.add(target[len(_REF_PREFIX):])
        for value in node.values():
            _refs_in(value, out)
    elif isinstance(node, list):
        for value in node:
            _refs_in(value, out)


def _closure(roots: dict[str, JSON], schemas: dict[str, JSON]) -> dict[str, JSON]:
    """The schemas reachable from `roots` (a document carries only the components it references)."""
    pending: set[str] = set()
    _refs_in(roots, pending)
    seen: dict[str, JSON] = {}
    while pending:
        name = pending.pop()
        if name in seen:
            continue
        seen[name] = schemas[name]
        found: set[str] = set()
        _refs_in(schemas[name], found)
        pending |= found - seen.keys()
    return dict(sorted(seen.items()))


def _gv_path(group: str, version: str) -> str:
    return f"api/{version}" if not group else f"apis/{group}/{version}"


@functools.cache
def _documents() -> dict[str, JSON]:
    schemas = all_schemas()
    docs: dict[str, JSON] = {}
    group_versions = dict.fromkeys((r.group, r.version) for r in RESOURCES)
    for group, version in group_versions:
        paths: dict[str, JSON] = {}
        for info in RESOURCES:
            if (info.group, info.version) == (group, version):
                paths.update(_paths_for(info))
        docs[_gv_path(group, version)] = {
            "openapi": OPENAPI_VERSION,
            "info": dict(_INFO),
            "paths": paths,
            "components": {"schemas": _closure(paths, schemas)},
        }
    return docs


def _hash(doc: JSON) -> str:
    return hashlib.sha512(json.dumps(doc, sort_keys=True).encode()).hexdigest().upper()


@functools.cache
def openapi_v3_index() -> JSON:
    """The /openapi/v3 discovery document: one entry per group-version, with a content hash."""
    return {"paths": {gv: {"serverRelativeURL": f"/openapi/v3/{gv}?hash={_hash(doc)}"}
                      for gv, doc in _documents().items()}}


def openapi_v3_document(gv_path: str) -> JSON | None:
    """The document for "api/v1" or "apis/<group>/<version>" (leading slash optional); None if unknown."""
    return _documents().get(gv_path.strip("/"))


@functools.cache
def openapi_v2() -> JSON:
    """A Swagger 2.0 document with the same schemas and operations (older clients still ask)."""
    paths: dict[str, JSON] = {}
    for doc in _documents().values():
        for path, item in doc["paths"].items():
            paths[path] = {method: (_v2_op(op) if method != "parameters" else [_v2_param(p) for p in op])
                           for method, op in item.items()}
    doc = {"swagger": "2.0", "info": dict(_INFO), "paths": paths, "definitions": all_schemas()}
    # v2 keeps schemas under #/definitions; the rest of the shapes are compatible.
    text = json.dumps(doc).replace('"' + _REF_PREFIX, '"#/definitions/')
    result: JSON = json.loads(text)
    return result


def _v2_param(p: JSON) -> JSON:
    out = {k: v for k, v in p.items() if k != "schema"}
    out.update(p.get("schema", {}))
    return out


def _v2_op(op: JSON) -> JSON:
    out = {k: v for k, v in op.items() if k not in ("requestBody", "responses", "parameters")}
    params = [_v2_param(p) for p in op.get("parameters", [])]
    body = op.get("requestBody")
    if body is not None:
        types = list(body["content"])
        out["consumes"] = types
        params.append({"name": "body", "in": "body", "required": True,
                       "schema": next(iter(body["content"].values()))["schema"]})
    if params:
        out["parameters"] = params
    out["produces"] = list(_RESPONSE_TYPES)
    out["schemes"] = ["https"]
    responses: JSON = {}
    for code, resp in op["responses"].items():
        entry: JSON = {"description": resp["description"]}
        content = resp.get("content")
        if content:
            entry["schema"] = next(iter(content.values()))["schema"]
        responses[code] = entry
    out["responses"] = responses
    return out


# --------------------------------------------------------------------------- strict field validation

def unknown_fields(info: ResourceInfo, obj: Any, kind_schema: str | None = None) -> list[str]:
    """The paths of fields `obj` has that its schema does not know, as kube's strict decoding names
    them ("spek", "spec.template.spec.containers[0].imagee"), for fieldValidation=Strict (a 400
    "strict decoding error: unknown field ...") or Warn (a Warning header per field).

    `kind_schema` overrides the component to check against (the /scale subresource's Scale).
    Objects whose schema is partial (x-kubernetes-preserve-unknown-fields) are not checked.
    """
    schemas = all_schemas()
    found: list[str] = []
    _unknown(obj, schemas.get(kind_schema or schema_name(info)), schemas, "", found)
    return found


def _deref(schema: JSON | None, schemas: dict[str, JSON]) -> JSON | None:
    for _ in range(8):
        if schema is None:
            return None
        if schema.get("allOf"):
            schema = schema["allOf"][0]
        elif isinstance(schema.get("$ref"), str):
            schema = schemas.get(schema["$ref"][len(_REF_PREFIX):])
        else:
            return schema
    return schema


def _unknown(value: Any, schema: JSON | None, schemas: dict[str, JSON], path: str, found: list[str]) -> None:
    # Only objects and lists can hold unknown fields: scalars are never descended into (most of an
    # object's values), and a child's path is only spelled out when it is reported or walked.
    schema = _deref(schema, schemas)
    if schema is None or schema.get("x-kubernetes-preserve-unknown-fields"):
        return
    if value.__class__ is dict:
        props = schema.get("properties")
        if props.__class__ is not dict:
            props = None
        extra = schema.get("additionalProperties")
        if extra.__class__ is not dict:
            extra = None
        for key, child in value.items():
            if props is not None and key in props:
                sub = props[key]
            elif extra is not None:
                sub = extra
            else:
                if props is not None:
                    found.append(f"{path}.{key}" if path else key)
                continue
            if child.__class__ is dict or child.__class__ is list:
                _unknown(child, sub, schemas, f"{path}.{key}" if path else key, found)
    elif value.__class__ is list:
        items = schema.get("items")
        if items.__class__ is dict:
            for i, child in enumerate(value):
                if child.__class__ is dict or child.__class__ is list:
                    _unknown(child, items, schemas, f"{path}[{i}]", found)
