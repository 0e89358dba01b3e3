"""OpenAPI documents: what kubectl 1.37 reads from them for apply, validation and patches."""

from __future__ import annotations

import json
from typing import Any

import pytest

from netplane.api.openapi import (
    all_schemas,
    openapi_v2,
    openapi_v3_document,
    openapi_v3_index,
    schema_name,
    unknown_fields,
)
from netplane.api.patch import PatchMeta
from netplane.api.resources import GROUPS, RESOURCES, ResourceInfo

REF = "#/components/schemas/"


def gv_path(info: ResourceInfo) -> str:
    return f"apis/{info.group}/{info.version}" if info.group else f"api/{info.version}"


def doc_for(info: ResourceInfo) -> dict[str, Any]:
    doc = openapi_v3_document(gv_path(info))
    assert doc is not None
    return doc


def patch_ops(doc: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [(path, item["patch"]) for path, item in doc["paths"].items() if "patch" in item]


def test_index_lists_every_group_version_with_a_hashed_url() -> None:
    index = openapi_v3_index()
    expected = {"api/v1"} | {f"apis/{g}/{v}" for g, v in GROUPS}
    assert set(index["paths"]) == expected
    for gv, entry in index["paths"].items():
        url = entry["serverRelativeURL"]
        assert url.startswith(f"/openapi/v3/{gv}?hash=")
        assert len(url.split("hash=", 1)[1]) >= 32


def test_unknown_group_version_is_none_and_slashes_are_tolerated() -> None:
    assert openapi_v3_document("apis/batch/v1") is None
    assert openapi_v3_document("/api/v1") is openapi_v3_document("api/v1")


@pytest.mark.parametrize("res", RESOURCES, ids=lambda r: f"{r.group or 'core'}.{r.kind}")
def test_every_resource_patch_operation_carries_gvk_and_field_validation(res: ResourceInfo) -> None:
    doc = doc_for(res)
    gvk = {"group": res.group, "version": res.version, "kind": res.kind}
    ops = [op for _, op in patch_ops(doc) if op["x-kubernetes-group-version-kind"] == gvk]
    assert ops, f"no PATCH operation for {gvk}"
    for op in ops:
        # kubectl's query-param verifier looks for exactly this parameter shape...
        assert any(p["name"] == "fieldValidation" and p["in"] == "query" for p in op["parameters"])
        # ...and its apply picks a strategic merge patch only when the body type is advertised.
        assert "application/strategic-merge-patch+json" in op["requestBody"]["content"]
        assert op["x-kubernetes-action"] == "patch"
    item_path = next(p for p, op in patch_ops(doc) if op in ops and p.endswith("{name}"))
    assert item_path.endswith(f"/{res.plural}/{{name}}")
    assert ("{namespace}" in item_path) == res.namespaced


def test_all_patch_operations_declare_field_validation() -> None:
    # kubectl stops at the first PATCH operation whose GVK matches, in map order: every one must agree.
    for gv in openapi_v3_index()["paths"]:
        doc = openapi_v3_document(gv)
        assert doc is not None
        for path, op in patch_ops(doc):
            assert "fieldValidation" in [p["name"] for p in op["parameters"]], path


def test_scale_subresource_speaks_autoscaling_v1_scale() -> None:
    for res in RESOURCES:
        if "scale" not in res.subresources:
            continue
        doc = doc_for(res)
        path = f"/apis/{res.group}/{res.version}/namespaces/{{namespace}}/{res.plural}/{{name}}/scale"
        op = doc["paths"][path]["patch"]
        assert op["x-kubernetes-group-version-kind"] == {"group": "autoscaling", "version": "v1", "kind": "Scale"}
        assert "io.k8s.api.autoscaling.v1.Scale" in doc["components"]["schemas"]


def test_kind_schemas_carry_a_gvk_list_and_every_ref_resolves() -> None:
    for gv in openapi_v3_index()["paths"]:
        doc = openapi_v3_document(gv)
        assert doc is not None
        schemas = doc["components"]["schemas"]
        refs = {part.split('"')[0] for part in json.dumps(doc).split('"$ref": "' + REF)[1:]}
        assert refs <= set(schemas), refs - set(schemas)
    for res in RESOURCES:
        schema = doc_for(res)["components"]["schemas"][schema_name(res)]
        assert schema["x-kubernetes-group-version-kind"] == [
            {"group": res.group, "version": res.version, "kind": res.kind}]
        assert {"apiVersion", "kind", "metadata"} <= set(schema["properties"])


def walk(info_kind: str, *path: str) -> tuple[PatchMeta, list[str], str]:
    """Follow field names through the schemas as kubectl's PatchMetaFromOpenAPIV3 does."""
    schemas = all_schemas()
    meta = PatchMeta(schemas[info_kind], schemas)
    strategies: list[str] = []
    merge_key = ""
    for i, key in enumerate(path):
        if key == "[]":
            meta = meta.items()
            continue
        meta, strategies, merge_key = meta.field(key)
        assert meta.schema is not None, f"{'.'.join(path[: i + 1])} is not described"
    return meta, strategies, merge_key


@pytest.mark.parametrize(("kind", "path", "strategies", "key"), [
    ("io.k8s.api.core.v1.Pod", ("spec", "containers"), ["merge"], "name"),
    ("io.k8s.api.core.v1.Pod", ("spec", "initContainers"), ["merge"], "name"),
    ("io.k8s.api.core.v1.Pod", ("spec", "ephemeralContainers"), ["merge"], "name"),
    ("io.k8s.api.core.v1.Pod", ("spec", "containers", "[]", "ports"), ["merge"], "containerPort"),
    ("io.k8s.api.core.v1.Pod", ("spec", "containers", "[]", "env"), ["merge"], "name"),
    ("io.k8s.api.core.v1.Pod", ("spec", "containers", "[]", "volumeMounts"), ["merge"], "mountPath"),
    ("io.k8s.api.core.v1.Pod", ("spec", "volumes"), ["merge", "retainKeys"], "name"),
    ("io.k8s.api.core.v1.Pod", ("spec", "imagePullSecrets"), ["merge"], "name"),
    ("io.k8s.api.core.v1.Pod", ("spec", "tolerations"), [], ""),
    ("io.k8s.api.core.v1.Pod", ("status", "conditions"), ["merge"], "type"),
    ("io.k8s.api.core.v1.Pod", ("metadata", "ownerReferences"), ["merge"], "uid"),
    ("io.k8s.api.core.v1.Pod", ("metadata", "finalizers"), ["merge"], ""),
    ("io.k8s.api.core.v1.Service", ("spec", "ports"), ["merge"], "port"),
    ("io.k8s.api.core.v1.Node", ("status", "addresses"), ["merge"], "type"),
    ("io.k8s.api.core.v1.Node", ("status", "conditions"), ["merge"], "type"),
    ("io.k8s.api.apps.v1.Deployment", ("spec", "template", "spec", "containers"), ["merge"], "name"),
    ("io.k8s.api.apps.v1.Deployment", ("spec", "strategy"), ["retainKeys"], ""),
    ("io.k8s.api.apps.v1.ReplicaSet", ("spec", "template", "spec", "containers", "[]", "env"), ["merge"], "name"),
    ("io.k8s.api.discovery.v1.EndpointSlice", ("endpoints",), [], ""),
    ("io.k8s.api.networking.v1.Ingress", ("spec", "rules"), [], ""),
])
def test_patch_metadata_kubectl_will_read(kind: str, path: tuple[str, ...], strategies: list[str],
                                          key: str) -> None:
    _, found_strategies, found_key = walk(kind, *path)
    assert (found_strategies, found_key) == (strategies, key)


@pytest.mark.parametrize("path", [
    # Maps and lists a typical manifest holds: kubectl diffs them, and an undescribed one makes
    # its OpenAPI patch fail ("unable to find api field") and fall back with a warning.
    ("spec", "template", "spec", "containers", "[]", "resources", "limits"),
    ("spec", "template", "spec", "containers", "[]", "readinessProbe", "httpGet", "httpHeaders"),
    ("spec", "template", "spec", "containers", "[]", "securityContext", "capabilities", "drop"),
    ("spec", "template", "spec", "containers", "[]", "env", "[]", "valueFrom", "secretKeyRef"),
    ("spec", "template", "spec", "affinity", "podAntiAffinity",
     "preferredDuringSchedulingIgnoredDuringExecution", "[]", "podAffinityTerm", "labelSelector"),
    ("spec", "template", "spec", "volumes", "[]", "configMap", "items"),
    ("spec", "template", "spec", "nodeSelector"),
    ("spec", "template", "metadata", "annotations"),
    ("spec", "selector", "matchExpressions", "[]", "values"),
    ("spec", "strategy", "rollingUpdate"),
])
def test_deployment_manifest_fields_are_described(path: tuple[str, ...]) -> None:
    walk("io.k8s.api.apps.v1.Deployment", *path)


def test_v2_document_has_definitions_and_gvk_operations() -> None:
    v2 = openapi_v2()
    assert v2["swagger"] == "2.0"
    text = json.dumps(v2)
    assert REF not in text
    assert "io.k8s.api.apps.v1.Deployment" in v2["definitions"]
    op = v2["paths"]["/apis/apps/v1/namespaces/{namespace}/deployments/{name}"]["patch"]
    assert "application/strategic-merge-patch+json" in op["consumes"]
    assert op["x-kubernetes-group-version-kind"]["kind"] == "Deployment"
    assert any(p["name"] == "fieldValidation" and p["in"] == "query" for p in op["parameters"])
    assert any(p["in"] == "body" for p in op["parameters"])


# ------------------------------------------------------------------ strict field validation

def res(kind: str) -> ResourceInfo:
    return next(r for r in RESOURCES if r.kind == kind)


def rich_deployment() -> dict[str, Any]:
    """A Deployment using a broad set of real fields: none may be reported as unknown."""
    container = {
        "name": "app", "image": "nginx", "imagePullPolicy": "IfNotPresent", "command": ["nginx"],
        "args": ["-g", "daemon off;"], "workingDir": "/", "ports": [{"name": "http", "containerPort": 80,
                                                                     "protocol": "TCP", "hostPort": 8080}],
        "env": [{"name": "A", "value": "1"},
                {"name": "B", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k", "optional": True}}},
                {"name": "C", "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "status.podIP"}}}],
        "envFrom": [{"prefix": "X_", "configMapRef": {"name": "cm"}}],
        "resources": {"limits": {"cpu": "1", "memory": "1Gi"}, "requests": {"cpu": "100m"}},
        "volumeMounts": [{"name": "data", "mountPath": "/data", "readOnly": True, "subPath": "x"}],
        "livenessProbe": {"httpGet": {"path": "/", "port": "http", "httpHeaders": [{"name": "a", "value": "b"}]},
                          "initialDelaySeconds": 3, "periodSeconds": 5, "failureThreshold": 3},
        "readinessProbe": {"tcpSocket": {"port": 80}}, "startupProbe": {"exec": {"command": ["true"]}},
        "lifecycle": {"preStop": {"sleep": {"seconds": 5}}},
        "securityContext": {"runAsNonRoot": True, "runAsUser": 1000, "capabilities": {"drop": ["ALL"]},
                            "allowPrivilegeEscalation": False, "seccompProfile": {"type": "RuntimeDefault"}},
        "terminationMessagePath": "/dev/termination-log", "terminationMessagePolicy": "File",
        "stdin": False, "tty": False,
    }
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "default", "labels": {"app": "web"},
                     "annotations": {"a": "b"}, "uid": "u", "resourceVersion": "5", "generation": 2,
                     "creationTimestamp": "2025-01-01T00:00:00Z"},
        "spec": {
            "replicas": 3, "revisionHistoryLimit": 10, "progressDeadlineSeconds": 600, "minReadySeconds": 0,
            "selector": {"matchLabels": {"app": "web"},
                         "matchExpressions": [{"key": "tier", "operator": "In", "values": ["a"]}]},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": 0}},
            "template": {
                "metadata": {"labels": {"app": "web"}, "annotations": {"x": "y"}},
                "spec": {
                    "containers": [container], "initContainers": [{"name": "init", "image": "busybox"}],
                    "restartPolicy": "Always", "terminationGracePeriodSeconds": 30, "dnsPolicy": "ClusterFirst",
                    "serviceAccountName": "default", "nodeSelector": {"kubernetes.io/os": "linux"},
                    "securityContext": {"fsGroup": 2000, "sysctls": [{"name": "net.core.somaxconn", "value": "1"}]},
                    "imagePullSecrets": [{"name": "regcred"}], "schedulerName": "default-scheduler",
                    "tolerations": [{"key": "k", "operator": "Exists", "effect": "NoSchedule"}],
                    "affinity": {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
                        {"weight": 100, "podAffinityTerm": {"topologyKey": "kubernetes.io/hostname",
                                                            "labelSelector": {"matchLabels": {"app": "web"}}}}]}},
                    "topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "zone",
                                                   "whenUnsatisfiable": "ScheduleAnyway"}],
                    "volumes": [{"name": "data", "emptyDir": {"sizeLimit": "1Gi"}},
                                {"name": "cfg", "configMap": {"name": "cm", "items": [{"key": "a", "path": "a"}]}},
                                {"name": "csi", "csi": {"driver": "some.csi.driver"}}],
                    "hostAliases": [{"ip": "127.0.0.1", "hostnames": ["foo.local"]}],
                    "dnsConfig": {"options": [{"name": "ndots", "value": "2"}]},
                },
            },
        },
        "status": {"observedGeneration": 2, "replicas": 3, "readyReplicas": 3, "availableReplicas": 3,
                   "updatedReplicas": 3, "conditions": [{"type": "Available", "status": "True",
                                                         "lastUpdateTime": "2025-01-01T00:00:00Z",
                                                         "lastTransitionTime": "2025-01-01T00:00:00Z",
                                                         "reason": "MinimumReplicasAvailable", "message": "ok"}]},
    }


def test_unknown_fields_none_for_a_realistic_deployment() -> None:
    assert unknown_fields(res("Deployment"), rich_deployment()) == []


def test_unknown_fields_reports_kube_style_paths() -> None:
    dep = rich_deployment()
    dep["spek"] = {}
    dep["spec"]["template"]["spec"]["containers"][0]["imagee"] = "x"
    dep["spec"]["template"]["spec"]["containers"][0]["ports"][0]["contianerPort"] = 1
    dep["metadata"]["lables"] = {}
    assert sorted(unknown_fields(res("Deployment"), dep)) == sorted([
        "spek", "metadata.lables", "spec.template.spec.containers[0].imagee",
        "spec.template.spec.containers[0].ports[0].contianerPort"])


def test_unknown_fields_other_kinds_and_scale() -> None:
    cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"any-key": "v"}}
    assert unknown_fields(res("ConfigMap"), cm) == []
    assert unknown_fields(res("ConfigMap"), {**cm, "spec": {}}) == ["spec"]
    svc = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"},
           "spec": {"type": "NodePort", "ports": [{"port": 80, "targetPort": "http", "nodePort": 30001}],
                    "selector": {"a": "b"}, "externalTrafficPolicy": "Local", "ipFamilies": ["IPv4"],
                    "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 10}}}}
    assert unknown_fields(res("Service"), svc) == []
    scale = {"apiVersion": "autoscaling/v1", "kind": "Scale", "metadata": {"name": "web"},
             "spec": {"replicas": 3, "replica": 1}}
    assert unknown_fields(res("Deployment"), scale, "io.k8s.api.autoscaling.v1.Scale") == ["spec.replica"]
