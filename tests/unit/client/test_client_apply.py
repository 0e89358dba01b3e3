"""Client-side apply: the pure three-way merge, and create/configured/unchanged against the fake server."""

from __future__ import annotations

import asyncio
import copy
import json
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest

from netplane.api.manifests import Document
from netplane.api.resources import resolve_name
from netplane.client.apply import (
    LAST_APPLIED,
    ApplyError,
    apply_object,
    apply_objects,
    contains,
    desired_object,
    merged_object,
    resolve_target,
    three_way_merge,
)
from netplane.client.fake import FakeAPIServer
from netplane.client.kubeconfig import ClusterConfig
from netplane.client.rest import APIClient

T = TypeVar("T")


def service(**spec: Any) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
            "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}], **spec}}


def live_of(desired: dict[str, Any], **server_fields: Any) -> dict[str, Any]:
    """What a server would hold after creating ``desired`` (with defaults and allocations)."""
    live = copy.deepcopy(desired)
    live["metadata"].update({"namespace": "default", "uid": "u1", "resourceVersion": "7",
                             "creationTimestamp": "2024-01-01T00:00:00Z"})
    live["spec"].update({"clusterIP": "10.96.0.10", "type": "ClusterIP", "sessionAffinity": "None"})
    for p in live["spec"]["ports"]:
        p.setdefault("protocol", "TCP")
    live["spec"].update(server_fields)
    live["status"] = {"loadBalancer": {}}
    return live


def apply_to(live: dict[str, Any], manifest: dict[str, Any]) -> dict[str, Any]:
    target = resolve_target(manifest, "default")
    desired, last = desired_object(target.obj)
    return merged_object(live, desired, last)


# ------------------------------------------------------------------------------------- pure merge

def test_reapplying_the_same_manifest_changes_nothing() -> None:
    target = resolve_target(service(), "default")
    desired, _ = desired_object(target.obj)
    live = live_of(desired)
    assert apply_to(live, service()) == live


def test_last_applied_annotation_is_kubectls_compact_sorted_json() -> None:
    target = resolve_target(service(), "default")
    desired, last = desired_object(target.obj)
    assert last.endswith("}\n")
    assert json.loads(last) == {"apiVersion": "v1", "kind": "Service",
                                "metadata": {"annotations": {}, "name": "web", "namespace": "default"},
                                "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]}}
    assert last == json.dumps(json.loads(last), sort_keys=True, separators=(",", ":")) + "\n"
    assert desired["metadata"]["annotations"] == {LAST_APPLIED: last}


def test_a_changed_field_is_updated_and_server_fields_are_kept() -> None:
    desired, _ = desired_object(resolve_target(service(), "default").obj)
    live = live_of(desired)
    merged = apply_to(live, service(ports=[{"port": 80, "targetPort": 9090}]))
    assert merged["spec"]["ports"] == [{"port": 80, "targetPort": 9090, "protocol": "TCP"}]
    assert merged["spec"]["clusterIP"] == "10.96.0.10"
    assert merged["metadata"]["resourceVersion"] == "7"
    assert merged["status"] == live["status"]


def test_a_field_removed_from_the_manifest_is_removed_but_not_others_fields() -> None:
    first = service(sessionAffinity="ClientIP", externalIPs=["192.0.2.1"])
    desired, _ = desired_object(resolve_target(first, "default").obj)
    live = live_of(desired)
    live["spec"]["externalTrafficPolicy"] = "Local"  # set by someone else, never in the manifest
    merged = apply_to(live, service(sessionAffinity="ClientIP"))
    assert "externalIPs" not in merged["spec"]
    assert merged["spec"]["externalTrafficPolicy"] == "Local"


def test_node_ports_allocated_by_the_server_survive_a_port_change() -> None:
    first = service(type="NodePort", ports=[{"name": "http", "port": 80}, {"name": "dns", "port": 53,
                                                                           "protocol": "UDP"}])
    desired, _ = desired_object(resolve_target(first, "default").obj)
    live = live_of(desired, type="NodePort")
    live["spec"]["ports"][0].update({"nodePort": 30080, "targetPort": 80})
    live["spec"]["ports"][1].update({"nodePort": 30053, "targetPort": 53})
    # Same ports, one renamed, plus DNS over TCP on the same port number as the UDP one.
    second = service(type="NodePort", ports=[{"name": "web", "port": 80},
                                             {"name": "dns", "port": 53, "protocol": "UDP"},
                                             {"name": "dns-tcp", "port": 53, "protocol": "TCP"}])
    merged = apply_to(live, second)
    assert merged["spec"]["ports"] == [
        {"name": "web", "port": 80, "nodePort": 30080, "targetPort": 80, "protocol": "TCP"},
        {"name": "dns", "port": 53, "protocol": "UDP", "nodePort": 30053, "targetPort": 53},
        {"name": "dns-tcp", "port": 53, "protocol": "TCP"},
    ]


def test_keyed_list_drops_removed_elements_and_keeps_foreign_ones() -> None:
    original = {"containers": [{"name": "a", "image": "a:1"}, {"name": "b", "image": "b:1"}]}
    current = {"containers": [{"name": "a", "image": "a:1", "imagePullPolicy": "IfNotPresent"},
                              {"name": "b", "image": "b:1"}, {"name": "sidecar", "image": "s:1"}]}
    modified = {"containers": [{"name": "a", "image": "a:2"}]}
    assert three_way_merge(original, modified, current) == {"containers": [
        {"name": "a", "image": "a:2", "imagePullPolicy": "IfNotPresent"}, {"name": "sidecar", "image": "s:1"}]}


def test_atomic_lists_keep_server_defaults_when_unchanged_and_are_replaced_when_changed() -> None:
    rules: list[dict[str, Any]] = [{"host": "a.example", "http": {"paths": [{"path": "/", "pathType": "Prefix"}]}}]
    live_rules = copy.deepcopy(rules)
    live_rules[0]["http"]["paths"][0]["backend"] = {"service": {"name": "web", "port": {"number": 80}}}
    assert three_way_merge({}, {"rules": rules}, {"rules": live_rules}) == {"rules": live_rules}
    changed = [{"host": "b.example"}]
    assert three_way_merge({}, {"rules": changed}, {"rules": live_rules}) == {"rules": changed}


def test_explicit_null_removes_a_field() -> None:
    assert three_way_merge({}, {"spec": {"a": None, "b": 1}}, {"spec": {"a": 1, "c": 2}}) == {
        "spec": {"b": 1, "c": 2}}


def test_contains() -> None:
    assert contains({"a": 1, "b": [{"x": 1, "y": 2}]}, {"b": [{"x": 1}]})
    assert not contains({"a": 1}, {"a": 2})
    assert not contains({"b": [1, 2]}, {"b": [1]})
    assert not contains({"a": True}, {"a": 1})
    assert contains({}, {"gone": None})


def test_status_and_server_owned_metadata_in_a_manifest_are_ignored() -> None:
    manifest = service()
    manifest["metadata"].update({"resourceVersion": "1", "uid": "x", "creationTimestamp": "2020-01-01T00:00:00Z"})
    manifest["status"] = {"loadBalancer": {"ingress": [{"ip": "1.2.3.4"}]}}
    desired, last = desired_object(resolve_target(manifest, "default").obj)
    assert "status" not in desired and "resourceVersion" not in desired["metadata"]
    assert "uid" not in json.loads(last)["metadata"]


def test_an_object_last_applied_by_kubectl_stays_unchanged() -> None:
    desired, last = desired_object(resolve_target(service(), "default").obj)
    live = live_of(desired)
    # Same content, different spelling (pretty-printed, no trailing newline).
    live["metadata"]["annotations"][LAST_APPLIED] = json.dumps(json.loads(last), indent=2)
    assert apply_to(live, service()) == live


def test_resolve_target_namespaces() -> None:
    t = resolve_target(service(), "shop")
    assert (t.info.plural, t.name, t.namespace, t.obj["metadata"]["namespace"]) == (
        "services", "web", "shop", "shop")
    ns = resolve_target({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "x", "namespace": "y"}},
                        "default")
    assert ns.namespace is None and "namespace" not in ns.obj["metadata"]
    own = service()
    own["metadata"]["namespace"] = "a"
    with pytest.raises(ApplyError, match="does not match the namespace \"b\""):
        resolve_target(own, "default", namespace_override="b")


@pytest.mark.parametrize(
    ("obj", "message"),
    [
        ({"apiVersion": "v1", "kind": "Widget", "metadata": {"name": "w"}},
         'x.yaml \\(document 2\\): no kind "Widget" is registered for version "v1"'),
        ({"apiVersion": "v1", "kind": "Deployment", "metadata": {"name": "w"}},
         r'no kind "Deployment" is registered for version "v1" \(known as apps/v1\)'),
        ({"apiVersion": "v1", "kind": "Service", "metadata": {}}, "Service: metadata.name is required"),
    ],
)
def test_resolve_target_errors(obj: dict[str, Any], message: str) -> None:
    with pytest.raises(ApplyError, match=message):
        resolve_target(Document(obj, "x.yaml", 2), "default")


# ------------------------------------------------------------------------------------- against a server

def with_fake(body: Callable[[FakeAPIServer, APIClient], Awaitable[T]]) -> T:
    async def main() -> T:
        fake = FakeAPIServer()
        await fake.start()
        try:
            async with APIClient(ClusterConfig(server=fake.url)) as client:
                return await asyncio.wait_for(body(fake, client), 20)
        finally:
            await fake.stop()

    return asyncio.run(main())


def configmap(**data: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "settings"}, "data": data}


def test_created_unchanged_configured() -> None:
    async def body(fake: FakeAPIServer, client: APIClient) -> None:
        ns = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}}
        assert await apply_objects(client, [ns, configmap(a="1")]) == [
            "namespace/shop created", "configmap/settings created"]
        writes = len([r for r in fake.requests if r.method != "GET"])
        assert await apply_objects(client, [ns, configmap(a="1")]) == [
            "namespace/shop unchanged", "configmap/settings unchanged"]
        assert len([r for r in fake.requests if r.method != "GET"]) == writes  # no write at all
        assert await apply_objects(client, [configmap(b="2")]) == ["configmap/settings configured"]
        live = await client.get(resolve_name("cm"), "settings", "default")  # type: ignore[arg-type]
        assert live["data"] == {"b": "2"}  # 'a' was removed because the last apply had it
        assert json.loads(live["metadata"]["annotations"][LAST_APPLIED])["data"] == {"b": "2"}

    with_fake(body)


def test_group_resources_print_kind_dot_group() -> None:
    async def body(fake: FakeAPIServer, client: APIClient) -> None:
        deploy = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
                  "spec": {"replicas": 1}}
        ing = {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": {"name": "web"}}
        assert await apply_objects(client, [deploy, ing], "shop") == [
            "deployment.apps/web created", "ingress.networking.k8s.io/web created"]
        assert fake.requests[1].path == "/apis/apps/v1/namespaces/shop/deployments"

    with_fake(body)


def test_conflict_is_retried_with_a_fresh_read() -> None:
    async def body(fake: FakeAPIServer, client: APIClient) -> None:
        await apply_objects(client, [configmap(a="1")])
        info = resolve_name("cm")
        assert info is not None
        real_get = client.get
        raced = False

        async def racing_get(*args: Any, **kw: Any) -> dict[str, Any]:
            nonlocal raced
            live = await real_get(*args, **kw)
            if not raced:  # someone writes between our read and our update, once
                raced = True
                fake.put_object(info, {**live, "data": {"a": "1", "other": "x"}})
            return live

        client.get = racing_get  # type: ignore[method-assign]
        assert await apply_object(client, configmap(a="2"), "default") == "configmap/settings configured"
        puts = [r for r in fake.requests if r.method == "PUT"]
        assert len(puts) == 2  # the first PUT got 409 Conflict
        live = await real_get(info, "settings", "default")
        assert live["data"] == {"a": "2", "other": "x"}

    with_fake(body)


def test_api_errors_name_the_document_and_keep_what_was_done() -> None:
    async def body(fake: FakeAPIServer, client: APIClient) -> None:
        docs = [Document(configmap(a="1"), "app.yaml", 1),
                Document({"apiVersion": "v1", "kind": "Widget", "metadata": {"name": "w"}}, "app.yaml", 2)]
        with pytest.raises(ApplyError) as err:
            await apply_objects(client, docs)
        assert str(err.value).startswith("app.yaml (document 2): no kind \"Widget\"")
        assert err.value.done == ["configmap/settings created"]

    with_fake(body)
