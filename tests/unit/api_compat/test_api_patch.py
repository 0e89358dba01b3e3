"""PATCH semantics: strategic merge patch as kubectl sends it, JSON merge patch, JSON patch."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from netplane.api.errors import APIError
from netplane.api.patch import (
    APPLY_PATCH,
    JSON_PATCH,
    MERGE_PATCH,
    STRATEGIC_MERGE_PATCH,
    apply_patch,
)
from netplane.api.resources import ResourceInfo, lookup


def resource(group: str, plural: str) -> ResourceInfo:
    found = lookup(group, "v1", plural)
    assert found is not None
    return found


DEPLOYMENT = resource("apps", "deployments")
SERVICE = resource("", "services")
POD = resource("", "pods")
NODE = resource("", "nodes")
INGRESS = resource("networking.k8s.io", "ingresses")
SLICE = resource("discovery.k8s.io", "endpointslices")


def smp(info: ResourceInfo, original: dict[str, Any], patch: Any) -> dict[str, Any]:
    return apply_patch(info, original, STRATEGIC_MERGE_PATCH, json.dumps(patch).encode())


def deployment() -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "default", "labels": {"app": "web", "tier": "front"},
                     "finalizers": ["a.example/one", "a.example/two"]},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "web"}},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": 1}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {
                    "containers": [
                        {"name": "app", "image": "nginx:1.25",
                         "ports": [{"containerPort": 80, "protocol": "TCP"}, {"containerPort": 443}],
                         "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]},
                        {"name": "sidecar", "image": "busybox", "command": ["sleep", "3600"]},
                    ],
                    "volumes": [{"name": "data", "emptyDir": {}}],
                    "tolerations": [{"key": "x", "operator": "Exists"}],
                },
            },
        },
    }


def containers(obj: dict[str, Any]) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = obj["spec"]["template"]["spec"]["containers"]
    return result


# ------------------------------------------------------------------ strategic merge patch

def test_smp_merges_containers_by_name_and_keeps_the_others() -> None:
    out = smp(DEPLOYMENT, deployment(),
              {"spec": {"template": {"spec": {"containers": [{"name": "app", "image": "nginx:1.27"}]}}}})
    app, sidecar = containers(out)
    assert app["name"] == "app" and app["image"] == "nginx:1.27"
    assert app["ports"] == deployment()["spec"]["template"]["spec"]["containers"][0]["ports"]
    assert sidecar == {"name": "sidecar", "image": "busybox", "command": ["sleep", "3600"]}


def test_smp_leaves_the_original_untouched() -> None:
    original = deployment()
    before = copy.deepcopy(original)
    smp(DEPLOYMENT, original, {"metadata": {"labels": {"app": None}},
                               "spec": {"template": {"spec": {"containers": [{"name": "app", "image": "x"}]}}}})
    assert original == before


def test_smp_null_deletes_a_key_and_maps_merge() -> None:
    out = smp(DEPLOYMENT, deployment(), {"metadata": {"labels": {"tier": None, "new": "yes"}}})
    assert out["metadata"]["labels"] == {"app": "web", "new": "yes"}
    assert out["metadata"]["name"] == "web"


def test_smp_patch_delete_directive_removes_a_container_and_a_port() -> None:
    patch = {"spec": {"template": {"spec": {"containers": [
        {"name": "sidecar", "$patch": "delete"},
        {"name": "app", "ports": [{"containerPort": 443, "$patch": "delete"}]},
    ]}}}}
    out = smp(DEPLOYMENT, deployment(), patch)
    assert [c["name"] for c in containers(out)] == ["app"]
    assert containers(out)[0]["ports"] == [{"containerPort": 80, "protocol": "TCP"}]


def test_smp_env_merges_by_name_and_null_inside_an_element_removes_a_field() -> None:
    patch = {"spec": {"template": {"spec": {"containers": [
        {"name": "app", "env": [{"name": "B", "value": None, "valueFrom": {"fieldRef": {"fieldPath": "x"}}},
                                {"name": "C", "value": "3"}]}]}}}}
    env = containers(smp(DEPLOYMENT, deployment(), patch))[0]["env"]
    by_name = {e["name"]: e for e in env}
    assert by_name["A"] == {"name": "A", "value": "1"}
    assert by_name["B"] == {"name": "B", "valueFrom": {"fieldRef": {"fieldPath": "x"}}}
    assert by_name["C"] == {"name": "C", "value": "3"}


def test_smp_kubectl_apply_patch_with_set_element_order_is_honoured_and_stripped() -> None:
    # What kubectl apply sends when a manifest adds a container "init-db" before "app" and
    # drops "sidecar" (three-way diff against the last-applied annotation).
    patch = {
        "metadata": {"annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}"}},
        "spec": {"template": {"spec": {
            "$setElementOrder/containers": [{"name": "init-db"}, {"name": "app"}],
            "containers": [{"name": "init-db", "image": "postgres"},
                           {"name": "sidecar", "$patch": "delete"}],
        }}},
    }
    out = smp(DEPLOYMENT, deployment(), patch)
    assert [c["name"] for c in containers(out)] == ["init-db", "app"]
    text = json.dumps(out)
    assert "$setElementOrder" not in text and "$patch" not in text


def test_smp_set_element_order_alone_reorders() -> None:
    patch = {"spec": {"template": {"spec": {
        "$setElementOrder/containers": [{"name": "sidecar"}, {"name": "app"}]}}}}
    out = smp(DEPLOYMENT, deployment(), patch)
    assert [c["name"] for c in containers(out)] == ["sidecar", "app"]


def test_smp_server_only_items_keep_their_place() -> None:
    # The live list has a container the patch author never knew about (added by someone else):
    # it stays, in its live position relative to the patched ones.
    original = deployment()
    containers(original).insert(1, {"name": "injected", "image": "proxy"})
    patch = {"spec": {"template": {"spec": {
        "$setElementOrder/containers": [{"name": "app"}, {"name": "sidecar"}],
        "containers": [{"name": "sidecar", "image": "busybox:2"}]}}}}
    out = smp(DEPLOYMENT, original, patch)
    assert [c["name"] for c in containers(out)] == ["app", "injected", "sidecar"]
    assert containers(out)[2]["image"] == "busybox:2"


def test_smp_list_replace_directive() -> None:
    patch = {"spec": {"template": {"spec": {"containers": [
        {"$patch": "replace"}, {"name": "only", "image": "alpine"}]}}}}
    out = smp(DEPLOYMENT, deployment(), patch)
    assert containers(out) == [{"name": "only", "image": "alpine"}]


def test_smp_map_replace_and_delete_directives() -> None:
    out = smp(DEPLOYMENT, deployment(), {"spec": {"template": {"metadata": {
        "labels": {"$patch": "replace", "only": "this"}}}}})
    assert out["spec"]["template"]["metadata"]["labels"] == {"only": "this"}
    out = smp(DEPLOYMENT, deployment(), {"spec": {"selector": {"$patch": "delete"}}})
    assert out["spec"]["selector"] == {}


def test_smp_retain_keys_clears_the_other_strategy_fields() -> None:
    # kubectl apply switching a Deployment from RollingUpdate to Recreate.
    patch = {"spec": {"strategy": {"$retainKeys": ["type"], "type": "Recreate", "rollingUpdate": None}}}
    out = smp(DEPLOYMENT, deployment(), patch)
    assert out["spec"]["strategy"] == {"type": "Recreate"}


def test_smp_retain_keys_rejects_a_field_outside_the_list() -> None:
    patch = {"spec": {"strategy": {"$retainKeys": ["type"], "type": "Recreate",
                                   "rollingUpdate": {"maxSurge": 1}}}}
    with pytest.raises(APIError) as e:
        smp(DEPLOYMENT, deployment(), patch)
    assert e.value.code == 400


def test_smp_primitive_merge_list_and_delete_from_primitive_list() -> None:
    patch = {"metadata": {"finalizers": ["b.example/three"],
                          "$deleteFromPrimitiveList/finalizers": ["a.example/one"],
                          "$setElementOrder/finalizers": ["a.example/two", "b.example/three"]}}
    out = smp(DEPLOYMENT, deployment(), patch)
    assert out["metadata"]["finalizers"] == ["a.example/two", "b.example/three"]


def test_smp_lists_without_merge_strategy_are_replaced() -> None:
    patch = {"spec": {"template": {"spec": {"tolerations": [{"key": "y", "operator": "Exists"}],
                                            "containers": [{"name": "sidecar", "command": ["true"]}]}}}}
    out = smp(DEPLOYMENT, deployment(), patch)
    assert out["spec"]["template"]["spec"]["tolerations"] == [{"key": "y", "operator": "Exists"}]
    assert containers(out)[1]["command"] == ["true"]  # command is a plain (atomic) list


def test_smp_service_ports_merge_by_port() -> None:
    svc = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"},
           "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"},
                              {"name": "https", "port": 443, "protocol": "TCP"}],
                    "selector": {"app": "a", "tier": "b"}}}
    out = smp(SERVICE, svc, {"spec": {"ports": [{"port": 80, "targetPort": 9090}],
                                      "selector": {"app": "z", "tier": None}}})
    assert out["spec"]["ports"][0] == {"name": "http", "port": 80, "targetPort": 9090, "protocol": "TCP"}
    assert out["spec"]["ports"][1]["port"] == 443
    assert out["spec"]["selector"] == {"app": "z"}


def test_smp_status_conditions_merge_by_type() -> None:
    node = {"metadata": {"name": "n1"}, "status": {
        "conditions": [{"type": "Ready", "status": "False"}, {"type": "DiskPressure", "status": "False"}],
        "addresses": [{"type": "InternalIP", "address": "10.0.0.1"}, {"type": "Hostname", "address": "n1"}]}}
    out = smp(NODE, node, {"status": {"conditions": [{"type": "Ready", "status": "True"}],
                                      "addresses": [{"type": "InternalIP", "address": "10.0.0.2"}]}})
    assert {c["type"]: c["status"] for c in out["status"]["conditions"]} == {
        "Ready": "True", "DiskPressure": "False"}
    assert {a["type"]: a["address"] for a in out["status"]["addresses"]} == {
        "InternalIP": "10.0.0.2", "Hostname": "n1"}


def test_smp_owner_references_merge_by_uid() -> None:
    pod = {"metadata": {"name": "p", "ownerReferences": [
        {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "rs", "uid": "u1"}]}}
    out = smp(POD, pod, {"metadata": {"ownerReferences": [
        {"apiVersion": "v1", "kind": "Node", "name": "n", "uid": "u2"}]}})
    assert [r["uid"] for r in out["metadata"]["ownerReferences"]] == ["u2", "u1"]


def test_smp_ingress_and_endpointslice_lists_are_replaced() -> None:
    ing = {"spec": {"rules": [{"host": "a.example"}, {"host": "b.example"}]}}
    out = smp(INGRESS, ing, {"spec": {"rules": [{"host": "c.example"}]}})
    assert out["spec"]["rules"] == [{"host": "c.example"}]
    es = {"endpoints": [{"addresses": ["10.0.0.1"]}, {"addresses": ["10.0.0.2"]}], "ports": [{"port": 80}]}
    out = smp(SLICE, es, {"endpoints": [{"addresses": ["10.0.0.3"]}]})
    assert out["endpoints"] == [{"addresses": ["10.0.0.3"]}]


def test_smp_new_fields_are_cleaned_of_directives_and_nulls() -> None:
    pod: dict[str, Any] = {"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "i"}]}}
    patch = {"spec": {"initContainers": [{"name": "init", "image": "i", "args": None},
                                         {"name": "gone", "$patch": "delete"}],
                      "affinity": {"nodeAffinity": {"$patch": "replace", "x": None}},
                      "$setElementOrder/initContainers": [{"name": "init"}]}}
    out = smp(POD, pod, patch)
    assert out["spec"]["initContainers"] == [{"name": "init", "image": "i"}]
    assert out["spec"]["affinity"] == {"nodeAffinity": {}}
    assert "$" not in json.dumps(out)


def test_smp_unknown_fields_merge_leniently() -> None:
    out = smp(POD, {"spec": {"x-extra": {"a": 1, "l": [1, 2]}}}, {"spec": {"x-extra": {"b": 2, "l": [3]}}})
    assert out["spec"]["x-extra"] == {"a": 1, "b": 2, "l": [3]}


def test_smp_type_change_replaces_the_value() -> None:
    out = smp(POD, {"metadata": {"labels": {"a": "b"}}}, {"metadata": {"labels": ["not", "a", "map"]}})
    assert out["metadata"]["labels"] == ["not", "a", "map"]


@pytest.mark.parametrize("body", [b"{not json", b"[1, 2]", b'"text"'])
def test_smp_rejects_a_body_that_is_not_a_json_object(body: bytes) -> None:
    with pytest.raises(APIError) as e:
        apply_patch(POD, {}, STRATEGIC_MERGE_PATCH, body)
    assert e.value.code == 400


def test_smp_element_without_merge_key_is_a_bad_request() -> None:
    with pytest.raises(APIError) as e:
        smp(DEPLOYMENT, deployment(), {"spec": {"template": {"spec": {"containers": [{"image": "x"}]}}}})
    assert e.value.code == 400
    assert "merge key" in e.value.message


def test_smp_unknown_directive_is_a_bad_request() -> None:
    with pytest.raises(APIError) as e:
        smp(DEPLOYMENT, deployment(), {"metadata": {"$patch": "explode"}})
    assert e.value.code == 400


def test_content_type_parameters_are_ignored() -> None:
    out = apply_patch(POD, {"a": 1}, STRATEGIC_MERGE_PATCH + "; charset=utf-8", b'{"b": 2}')
    assert out == {"a": 1, "b": 2}


# ------------------------------------------------------------------ JSON merge patch (RFC 7386)

def test_merge_patch_replaces_lists_and_deletes_nulls() -> None:
    out = apply_patch(DEPLOYMENT, deployment(), MERGE_PATCH, json.dumps({
        "metadata": {"labels": {"tier": None}},
        "spec": {"replicas": 5, "template": {"spec": {"containers": [{"name": "app", "image": "x"}]}}},
    }).encode())
    assert out["spec"]["replicas"] == 5
    assert out["metadata"]["labels"] == {"app": "web"}
    assert containers(out) == [{"name": "app", "image": "x"}]


def test_merge_patch_rfc7386_examples() -> None:
    original = {"a": "b", "c": {"d": "e", "f": "g"}}
    out = apply_patch(POD, original, MERGE_PATCH, b'{"a": "z", "c": {"f": null}}')
    assert out == {"a": "z", "c": {"d": "e"}}
    assert original == {"a": "b", "c": {"d": "e", "f": "g"}}
    assert apply_patch(POD, {"a": [1]}, MERGE_PATCH, b'{"a": {"b": null, "c": 1}}') == {"a": {"c": 1}}


# ------------------------------------------------------------------ JSON patch (RFC 6902)

def test_json_patch_operations() -> None:
    ops = [{"op": "replace", "path": "/spec/replicas", "value": 3},
           {"op": "add", "path": "/metadata/labels/new", "value": "x"},
           {"op": "remove", "path": "/spec/template/spec/containers/1"},
           {"op": "test", "path": "/metadata/name", "value": "web"}]
    original = deployment()
    out = apply_patch(DEPLOYMENT, original, JSON_PATCH, json.dumps(ops).encode())
    assert out["spec"]["replicas"] == 3
    assert out["metadata"]["labels"]["new"] == "x"
    assert [c["name"] for c in containers(out)] == ["app"]
    assert original == deployment()


def test_json_patch_failing_test_op_is_rejected_like_kube() -> None:
    ops = [{"op": "test", "path": "/metadata/name", "value": "other"}]
    with pytest.raises(APIError) as e:
        apply_patch(DEPLOYMENT, deployment(), JSON_PATCH, json.dumps(ops).encode())
    assert e.value.code == 422  # kube-apiserver answers 422 when a JSON patch cannot be applied


def test_json_patch_missing_path_is_rejected() -> None:
    ops = [{"op": "replace", "path": "/spec/nothing/here", "value": 1}]
    with pytest.raises(APIError) as e:
        apply_patch(DEPLOYMENT, deployment(), JSON_PATCH, json.dumps(ops).encode())
    assert e.value.code == 422


@pytest.mark.parametrize("body", [b"{]", b'{"op": "add"}', b'[{"op": "frobnicate", "path": "/a"}]'])
def test_json_patch_malformed_is_a_bad_request(body: bytes) -> None:
    with pytest.raises(APIError) as e:
        apply_patch(DEPLOYMENT, deployment(), JSON_PATCH, body)
    assert e.value.code == 400


# ------------------------------------------------------------------ others

def test_apply_patch_yaml_merges_as_a_strategic_merge_patch() -> None:
    body = b"""
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  replicas: 4
  template:
    spec:
      containers:
      - name: app
        image: nginx:1.27
"""
    out = apply_patch(DEPLOYMENT, deployment(), APPLY_PATCH, body)
    assert out["spec"]["replicas"] == 4
    assert [c["name"] for c in containers(out)] == ["app", "sidecar"]
    assert containers(out)[0]["image"] == "nginx:1.27"


def test_unsupported_content_type_is_415() -> None:
    with pytest.raises(APIError) as e:
        apply_patch(POD, {}, "application/json", b"{}")
    assert e.value.code == 415
    assert e.value.status()["reason"] == "UnsupportedMediaType"
