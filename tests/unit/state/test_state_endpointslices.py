"""The EndpointSlice controller's reconcile (netplane.state.endpointslices)."""

from __future__ import annotations

import copy
import itertools
from typing import Any

import pytest

from netplane.state.endpointslices import (
    CONTROLLER_NAME,
    LABEL_HEADLESS,
    LABEL_MANAGED_BY,
    LABEL_SERVICE_NAME,
    SliceChanges,
    desired_endpoint_slices,
)

JSON = dict[str, Any]


def make_service(
    name: str = "web",
    *,
    namespace: str = "default",
    selector: dict[str, str] | None = None,
    ports: list[JSON] | None = None,
    labels: dict[str, str] | None = None,
    cluster_ip: str = "10.96.0.20",
    **spec: Any,
) -> JSON:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "uid": f"uid-svc-{name}",
            "labels": labels if labels is not None else {},
        },
        "spec": {
            "selector": {"app": "web"} if selector is None else selector,
            "ports": ports if ports is not None else [{"name": "http", "port": 80, "targetPort": 8080}],
            "clusterIP": cluster_ip,
            **spec,
        },
    }


def make_pod(
    name: str,
    ip: str | None,
    *,
    namespace: str = "default",
    labels: dict[str, str] | None = None,
    ready: bool = True,
    terminating: bool = False,
    phase: str = "Running",
    node: str = "node-1",
    container_ports: list[JSON] | None = None,
    **spec: Any,
) -> JSON:
    status: JSON = {
        "phase": phase,
        "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
    }
    if ip is not None:
        status["podIP"] = ip
        status["podIPs"] = [{"ip": ip}]
    metadata: JSON = {
        "name": name,
        "namespace": namespace,
        "uid": f"uid-{name}",
        "labels": {"app": "web"} if labels is None else labels,
    }
    if terminating:
        metadata["deletionTimestamp"] = "2024-01-01T00:00:00Z"
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": metadata,
        "spec": {
            "nodeName": node,
            "containers": [{"name": "main", "ports": container_ports or []}],
            **spec,
        },
        "status": status,
    }


def pods_range(count: int, start: int = 1) -> list[JSON]:
    return [make_pod(f"web-{i}", f"10.244.{i // 250}.{i % 250 + 1}") for i in range(start, start + count)]


class FakeStore:
    """Applies SliceChanges the way the state server does, checking resourceVersions."""

    def __init__(self) -> None:
        self.slices: dict[str, JSON] = {}
        self._names = itertools.count(1)
        self._rv = itertools.count(100)

    def apply(self, changes: SliceChanges) -> None:
        for created in changes.create:
            assert "name" not in created["metadata"]
            obj = copy.deepcopy(created)
            name = f"{obj['metadata']['generateName']}{next(self._names):05d}"
            obj["metadata"].update(name=name, uid=f"uid-{name}", resourceVersion=str(next(self._rv)))
            self.slices[name] = obj
        for updated in changes.update:
            name = updated["metadata"]["name"]
            stored = self.slices[name]
            assert updated["metadata"]["resourceVersion"] == stored["metadata"]["resourceVersion"]
            assert updated["metadata"]["uid"] == stored["metadata"]["uid"]
            obj = copy.deepcopy(updated)
            obj["metadata"]["resourceVersion"] = str(next(self._rv))
            self.slices[name] = obj
        for deleted in changes.delete:
            del self.slices[deleted["metadata"]["name"]]

    @property
    def existing(self) -> list[JSON]:
        return copy.deepcopy(list(self.slices.values()))

    def sync(self, service: JSON, pods: list[JSON], max_endpoints: int = 100) -> SliceChanges:
        changes = desired_endpoint_slices(service, pods, self.existing, max_endpoints)
        self.apply(changes)
        return changes


def endpoint_ips(endpoint_slice: JSON) -> list[str]:
    return [e["addresses"][0] for e in endpoint_slice["endpoints"]]


def only_created(changes: SliceChanges) -> JSON:
    assert len(changes.create) == 1, changes
    assert changes.update == [] and changes.delete == []
    return changes.create[0]


def by_pod(endpoint_slice: JSON) -> dict[str, JSON]:
    return {e["targetRef"]["name"]: e for e in endpoint_slice["endpoints"]}


# ------------------------------------------------------------- slice contents


def test_new_slice_shape() -> None:
    service = make_service(labels={"team": "a"})
    pods = [make_pod("web-2", "10.244.0.12"), make_pod("web-1", "10.244.0.11", node="node-2")]
    created = only_created(desired_endpoint_slices(service, pods, []))
    assert created["apiVersion"] == "discovery.k8s.io/v1"
    assert created["kind"] == "EndpointSlice"
    assert created["metadata"] == {
        "generateName": "web-",
        "namespace": "default",
        "labels": {
            "team": "a",
            LABEL_SERVICE_NAME: "web",
            LABEL_MANAGED_BY: CONTROLLER_NAME,
        },
        "ownerReferences": [
            {
                "apiVersion": "v1",
                "kind": "Service",
                "name": "web",
                "uid": "uid-svc-web",
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ],
    }
    assert created["addressType"] == "IPv4"
    assert created["ports"] == [{"name": "http", "protocol": "TCP", "port": 8080}]
    assert created["endpoints"] == [
        {
            "addresses": ["10.244.0.11"],
            "conditions": {"ready": True, "serving": True, "terminating": False},
            "targetRef": {"kind": "Pod", "namespace": "default", "name": "web-1", "uid": "uid-web-1"},
            "nodeName": "node-2",
        },
        {
            "addresses": ["10.244.0.12"],
            "conditions": {"ready": True, "serving": True, "terminating": False},
            "targetRef": {"kind": "Pod", "namespace": "default", "name": "web-2", "uid": "uid-web-2"},
            "nodeName": "node-1",
        },
    ]


def test_unnamed_single_port_and_defaults() -> None:
    # No name -> "", no protocol -> TCP, no targetPort -> the service port.
    service = make_service(ports=[{"port": 53, "protocol": "UDP"}, {"port": 9153, "appProtocol": "http"}])
    created = only_created(desired_endpoint_slices(service, [make_pod("p", "10.244.0.5")], []))
    assert created["ports"] == [
        {"name": "", "protocol": "UDP", "port": 53},
        {"name": "", "protocol": "TCP", "port": 9153, "appProtocol": "http"},
    ]


def test_not_ready_pod() -> None:
    created = only_created(
        desired_endpoint_slices(make_service(), [make_pod("p", "10.244.0.5", ready=False)], [])
    )
    assert created["endpoints"][0]["conditions"] == {"ready": False, "serving": False, "terminating": False}


def test_pod_without_ready_condition_is_not_ready() -> None:
    pod = make_pod("p", "10.244.0.5")
    pod["status"]["conditions"] = [{"type": "PodScheduled", "status": "True"}]
    created = only_created(desired_endpoint_slices(make_service(), [pod], []))
    assert created["endpoints"][0]["conditions"]["ready"] is False


def test_terminating_pods() -> None:
    pods = [
        make_pod("ready-term", "10.244.0.5", terminating=True),
        make_pod("unready-term", "10.244.0.6", terminating=True, ready=False),
    ]
    eps = by_pod(only_created(desired_endpoint_slices(make_service(), pods, [])))
    assert eps["ready-term"]["conditions"] == {"ready": False, "serving": True, "terminating": True}
    assert eps["unready-term"]["conditions"] == {"ready": False, "serving": False, "terminating": True}


def test_publish_not_ready_addresses() -> None:
    service = make_service(publishNotReadyAddresses=True)
    pods = [
        make_pod("unready", "10.244.0.5", ready=False),
        make_pod("term", "10.244.0.6", terminating=True),
    ]
    eps = by_pod(only_created(desired_endpoint_slices(service, pods, [])))
    # kube: ready is forced true; serving still reflects the pod's readiness.
    assert eps["unready"]["conditions"] == {"ready": True, "serving": False, "terminating": False}
    assert eps["term"]["conditions"] == {"ready": True, "serving": True, "terminating": True}


def test_pods_that_are_not_endpoints() -> None:
    pods = [
        make_pod("other-ns", "10.244.0.5", namespace="other"),
        make_pod("other-app", "10.244.0.6", labels={"app": "db"}),
        make_pod("no-labels", "10.244.0.7", labels={}),
        make_pod("no-ip", None),
        make_pod("done", "10.244.0.8", phase="Succeeded"),
        make_pod("failed", "10.244.0.9", phase="Failed"),
        make_pod("good", "10.244.0.10", labels={"app": "web", "extra": "x"}),
    ]
    created = only_created(desired_endpoint_slices(make_service(), pods, []))
    assert [e["targetRef"]["name"] for e in created["endpoints"]] == ["good"]


def test_selector_needs_every_label() -> None:
    service = make_service(selector={"app": "web", "tier": "front"})
    pods = [
        make_pod("both", "10.244.0.5", labels={"app": "web", "tier": "front"}),
        make_pod("one", "10.244.0.6", labels={"app": "web"}),
    ]
    created = only_created(desired_endpoint_slices(service, pods, []))
    assert [e["targetRef"]["name"] for e in created["endpoints"]] == ["both"]


def test_pod_ip_only_in_pod_ip_field() -> None:
    pod = make_pod("p", "10.244.0.5")
    del pod["status"]["podIPs"]
    created = only_created(desired_endpoint_slices(make_service(), [pod], []))
    assert endpoint_ips(created) == ["10.244.0.5"]


def test_hostname_only_when_subdomain_is_the_service() -> None:
    pods = [
        make_pod("match", "10.244.0.5", hostname="web-0", subdomain="web"),
        make_pod("other-sub", "10.244.0.6", hostname="web-1", subdomain="elsewhere"),
        make_pod("no-sub", "10.244.0.7", hostname="web-2"),
        make_pod("no-hostname", "10.244.0.8", subdomain="web"),
    ]
    eps = by_pod(only_created(desired_endpoint_slices(make_service(), pods, [])))
    assert eps["match"]["hostname"] == "web-0"
    for name in ("other-sub", "no-sub", "no-hostname"):
        assert "hostname" not in eps[name]


def test_headless_service_gets_headless_label() -> None:
    service = make_service(cluster_ip="None")
    created = only_created(desired_endpoint_slices(service, [make_pod("p", "10.244.0.5")], []))
    assert created["metadata"]["labels"][LABEL_HEADLESS] == ""
    assert created["addressType"] == "IPv4"


def test_reserved_service_labels_are_not_copied() -> None:
    service = make_service(labels={LABEL_MANAGED_BY: "someone-else", LABEL_SERVICE_NAME: "x", "keep": "y"})
    created = only_created(desired_endpoint_slices(service, [make_pod("p", "10.244.0.5")], []))
    assert created["metadata"]["labels"] == {
        "keep": "y",
        LABEL_SERVICE_NAME: "web",
        LABEL_MANAGED_BY: CONTROLLER_NAME,
    }


def test_endpoints_sorted_numerically_by_address() -> None:
    pods = [make_pod(f"p{i}", f"10.244.0.{i}") for i in (10, 9, 100, 2)]
    created = only_created(desired_endpoint_slices(make_service(), pods, []))
    assert endpoint_ips(created) == ["10.244.0.2", "10.244.0.9", "10.244.0.10", "10.244.0.100"]


def test_output_is_deterministic() -> None:
    service = make_service()
    pods = pods_range(230)
    first = desired_endpoint_slices(service, pods, [])
    second = desired_endpoint_slices(service, list(reversed(pods)), [])
    assert first == second


# ---------------------------------------------------------------------- ports


def web_port(number: int, protocol: str = "TCP") -> JSON:
    return {"name": "web", "containerPort": number, "protocol": protocol}


def test_named_target_port_resolved_per_pod_into_separate_slices() -> None:
    service = make_service(ports=[{"name": "http", "port": 80, "targetPort": "web"}])
    pods = [
        make_pod("a", "10.244.0.5", container_ports=[web_port(8080)]),
        make_pod("b", "10.244.0.6", container_ports=[web_port(9090)]),
        make_pod("c", "10.244.0.7", container_ports=[web_port(8080)]),
    ]
    changes = desired_endpoint_slices(service, pods, [])
    assert changes.update == [] and changes.delete == []
    by_port = {s["ports"][0]["port"]: s for s in changes.create}
    assert sorted(by_port) == [8080, 9090]
    assert endpoint_ips(by_port[8080]) == ["10.244.0.5", "10.244.0.7"]
    assert endpoint_ips(by_port[9090]) == ["10.244.0.6"]
    assert by_port[8080]["ports"] == [{"name": "http", "protocol": "TCP", "port": 8080}]


def test_unresolved_named_port_is_left_out_of_that_pods_port_set() -> None:
    service = make_service(
        ports=[
            {"name": "http", "port": 80, "targetPort": "web"},
            {"name": "metrics", "port": 9100, "targetPort": 9100},
        ]
    )
    pods = [
        make_pod("has-web", "10.244.0.5", container_ports=[web_port(8080)]),
        make_pod("no-web", "10.244.0.6"),
        # The name matches but the protocol does not, so it does not resolve either.
        make_pod("udp-web", "10.244.0.7", container_ports=[web_port(8080, "UDP")]),
    ]
    changes = desired_endpoint_slices(service, pods, [])
    assert len(changes.create) == 2
    by_ports = {tuple(p["name"] for p in s["ports"]): s for s in changes.create}
    assert endpoint_ips(by_ports[("http", "metrics")]) == ["10.244.0.5"]
    assert by_ports[("http", "metrics")]["ports"] == [
        {"name": "http", "protocol": "TCP", "port": 8080},
        {"name": "metrics", "protocol": "TCP", "port": 9100},
    ]
    assert endpoint_ips(by_ports[("metrics",)]) == ["10.244.0.6", "10.244.0.7"]


def test_named_port_found_in_sidecar_init_container() -> None:
    service = make_service(ports=[{"name": "http", "port": 80, "targetPort": "proxy"}])
    pod = make_pod("p", "10.244.0.5")
    pod["spec"]["initContainers"] = [
        {"name": "once", "ports": [{"name": "proxy", "containerPort": 1111}]},
        {"name": "sidecar", "restartPolicy": "Always", "ports": [{"name": "proxy", "containerPort": 15001}]},
    ]
    created = only_created(desired_endpoint_slices(service, [pod], []))
    assert created["ports"] == [{"name": "http", "protocol": "TCP", "port": 15001}]


# ---------------------------------------------------------------- slice sizes


def test_250_pods_make_three_slices_of_at_most_100() -> None:
    pods = pods_range(250)
    changes = desired_endpoint_slices(make_service(), pods, [])
    assert changes.update == [] and changes.delete == []
    assert sorted(len(s["endpoints"]) for s in changes.create) == [50, 100, 100]
    all_ips = [ip for s in changes.create for ip in endpoint_ips(s)]
    assert sorted(all_ips) == sorted(p["status"]["podIP"] for p in pods)
    for created in changes.create:
        assert endpoint_ips(created) == sorted(
            endpoint_ips(created), key=lambda ip: tuple(map(int, ip.split(".")))
        )


def test_max_endpoints_is_configurable_and_validated() -> None:
    changes = desired_endpoint_slices(make_service(), pods_range(5), [], max_endpoints=2)
    assert sorted(len(s["endpoints"]) for s in changes.create) == [1, 2, 2]
    with pytest.raises(ValueError):
        desired_endpoint_slices(make_service(), [], [], max_endpoints=0)


# ----------------------------------------------------------- minimal churn


def test_unchanged_input_gives_no_changes() -> None:
    store = FakeStore()
    service = make_service()
    pods = pods_range(250)
    store.sync(service, pods)
    assert len(store.slices) == 3
    assert desired_endpoint_slices(service, pods, store.existing).empty


def test_endpoint_order_in_existing_slices_does_not_matter() -> None:
    store = FakeStore()
    service = make_service()
    pods = pods_range(30)
    store.sync(service, pods)
    for stored in store.slices.values():
        stored["endpoints"].reverse()
    assert desired_endpoint_slices(service, pods, store.existing).empty


def test_one_pod_added_is_one_update() -> None:
    store = FakeStore()
    service = make_service()
    pods = pods_range(10)
    store.sync(service, pods)
    (name,) = store.slices
    changes = store.sync(service, [*pods, make_pod("new", "10.244.9.9")])
    assert changes.create == [] and changes.delete == []
    assert [u["metadata"]["name"] for u in changes.update] == [name]
    assert "10.244.9.9" in endpoint_ips(store.slices[name])
    assert len(store.slices[name]["endpoints"]) == 11


def test_one_pod_added_to_a_large_service_touches_only_the_slice_with_room() -> None:
    store = FakeStore()
    service = make_service()
    pods = pods_range(250)
    store.sync(service, pods)
    changes = store.sync(service, [*pods, make_pod("new", "10.244.9.9")])
    assert changes.create == [] and changes.delete == []
    assert len(changes.update) == 1
    assert len(changes.update[0]["endpoints"]) == 51
    assert sorted(len(s["endpoints"]) for s in store.slices.values()) == [51, 100, 100]


def test_update_keeps_metadata_of_the_existing_slice() -> None:
    store = FakeStore()
    service = make_service()
    pods = pods_range(3)
    store.sync(service, pods)
    (stored,) = store.existing
    pods[0]["status"]["conditions"][0]["status"] = "False"
    changes = desired_endpoint_slices(service, pods, [stored])
    (updated,) = changes.update
    for key in ("name", "uid", "resourceVersion", "generateName", "namespace", "ownerReferences"):
        assert updated["metadata"][key] == stored["metadata"][key]
    assert updated["endpoints"][0]["conditions"]["ready"] is False
    assert changes.create == [] and changes.delete == []


def test_pod_removed_is_one_update() -> None:
    store = FakeStore()
    service = make_service()
    pods = pods_range(5)
    store.sync(service, pods)
    changes = store.sync(service, pods[1:])
    assert changes.create == [] and changes.delete == [] and len(changes.update) == 1
    assert len(changes.update[0]["endpoints"]) == 4


def test_readiness_change_updates_only_the_slice_that_holds_the_pod() -> None:
    store = FakeStore()
    service = make_service()
    pods = pods_range(250)
    store.sync(service, pods)
    holder = next(n for n, s in store.slices.items() if "10.244.0.10" in endpoint_ips(s))
    target = next(p for p in pods if p["status"]["podIP"] == "10.244.0.10")
    target["status"]["conditions"][0]["status"] = "False"
    changes = store.sync(service, pods)
    assert changes.create == [] and changes.delete == []
    assert [u["metadata"]["name"] for u in changes.update] == [holder]


def test_removed_pods_across_slices_then_refilled_without_new_slices() -> None:
    store = FakeStore()
    service = make_service()
    pods = pods_range(200)
    store.sync(service, pods)
    names = set(store.slices)
    # Replace 10 pods with 10 new ones: the freed room is reused.
    changes = store.sync(service, [*pods[10:], *pods_range(10, start=500)])
    assert changes.create == [] and changes.delete == []
    assert set(store.slices) == names
    assert sum(len(s["endpoints"]) for s in store.slices.values()) == 200


def test_service_label_change_updates_labels_only() -> None:
    store = FakeStore()
    pods = pods_range(3)
    store.sync(make_service(labels={"v": "1"}), pods)
    changes = store.sync(make_service(labels={"v": "2"}), pods)
    assert changes.create == [] and changes.delete == []
    (updated,) = changes.update
    assert updated["metadata"]["labels"]["v"] == "2"
    assert len(updated["endpoints"]) == 3


def test_target_port_change_recycles_the_slice() -> None:
    store = FakeStore()
    pods = pods_range(3)
    store.sync(make_service(), pods)
    (name,) = store.slices
    moved = make_service(ports=[{"name": "http", "port": 80, "targetPort": 9090}])
    changes = store.sync(moved, pods)
    # kube turns "delete the old port set + create the new one" into one update.
    assert changes.create == [] and changes.delete == []
    assert [u["metadata"]["name"] for u in changes.update] == [name]
    assert store.slices[name]["ports"] == [{"name": "http", "protocol": "TCP", "port": 9090}]
    assert len(store.slices[name]["endpoints"]) == 3
    assert desired_endpoint_slices(moved, pods, store.existing).empty


# ------------------------------------------------------------ empty services


def test_selector_without_pods_gets_one_empty_placeholder() -> None:
    created = only_created(desired_endpoint_slices(make_service(), [], []))
    assert created["endpoints"] == []
    # kube's placeholder carries no ports (kubectl shows <unset>).
    assert created["ports"] == []
    assert created["addressType"] == "IPv4"
    assert created["metadata"]["labels"][LABEL_SERVICE_NAME] == "web"


def test_placeholder_is_kept_while_there_are_no_pods() -> None:
    store = FakeStore()
    store.sync(make_service(), [])
    assert desired_endpoint_slices(make_service(), [], store.existing).empty


def test_placeholder_becomes_the_first_real_slice() -> None:
    store = FakeStore()
    store.sync(make_service(), [])
    (name,) = store.slices
    changes = store.sync(make_service(), pods_range(2))
    assert changes.create == [] and changes.delete == []
    assert [u["metadata"]["name"] for u in changes.update] == [name]
    assert store.slices[name]["ports"] == [{"name": "http", "protocol": "TCP", "port": 8080}]
    assert len(store.slices[name]["endpoints"]) == 2


def test_last_pod_gone_leaves_one_placeholder() -> None:
    store = FakeStore()
    pods = pods_range(150)
    store.sync(make_service(), pods)
    assert len(store.slices) == 2
    store.sync(make_service(), [])
    (remaining,) = store.slices.values()
    assert remaining["endpoints"] == [] and remaining["ports"] == []
    assert desired_endpoint_slices(make_service(), [], store.existing).empty


def test_service_without_selector_deletes_managed_slices_only() -> None:
    store = FakeStore()
    store.sync(make_service(), pods_range(150))
    foreign = {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": "web-manual",
            "namespace": "default",
            "labels": {LABEL_SERVICE_NAME: "web", LABEL_MANAGED_BY: "someone-else"},
        },
        "addressType": "IPv4",
        "endpoints": [],
        "ports": [],
    }
    changes = desired_endpoint_slices(make_service(selector={}), [], [*store.existing, foreign])
    assert changes.create == [] and changes.update == []
    assert sorted(d["metadata"]["name"] for d in changes.delete) == sorted(store.slices)
    assert desired_endpoint_slices(make_service(selector={}), [], []).empty


def test_external_name_service_gets_no_slices() -> None:
    store = FakeStore()
    store.sync(make_service(), pods_range(3))
    external = make_service(type="ExternalName", externalName="example.com")
    changes = desired_endpoint_slices(external, pods_range(3), store.existing)
    assert changes.create == [] and changes.update == []
    assert [d["metadata"]["name"] for d in changes.delete] == list(store.slices)


# ---------------------------------------------------------- ownership, families


def test_slice_owned_by_an_older_service_of_the_same_name_is_replaced() -> None:
    store = FakeStore()
    pods = pods_range(3)
    store.sync(make_service(), pods)
    (old_name,) = store.slices
    reborn = make_service()
    reborn["metadata"]["uid"] = "uid-svc-web-2"
    changes = desired_endpoint_slices(reborn, pods, store.existing)
    # Not recycled: the garbage collector may be deleting it on the old owner's behalf.
    assert [d["metadata"]["name"] for d in changes.delete] == [old_name]
    assert changes.update == []
    (created,) = changes.create
    assert created["metadata"]["ownerReferences"][0]["uid"] == "uid-svc-web-2"
    assert len(created["endpoints"]) == 3


def test_dual_stack_service_gets_a_slice_per_family() -> None:
    service = make_service(ipFamilies=["IPv4", "IPv6"])
    pod = make_pod("p", "10.244.0.5")
    pod["status"]["podIPs"] = [{"ip": "10.244.0.5"}, {"ip": "fd00:10:244::5"}]
    changes = desired_endpoint_slices(service, [pod], [])
    by_type = {s["addressType"]: s for s in changes.create}
    assert endpoint_ips(by_type["IPv4"]) == ["10.244.0.5"]
    assert endpoint_ips(by_type["IPv6"]) == ["fd00:10:244::5"]


def test_ipv6_service_from_cluster_ip() -> None:
    service = make_service(cluster_ip="fd00:10:96::20")
    pod = make_pod("p", "fd00:10:244::5")
    created = only_created(desired_endpoint_slices(service, [pod], []))
    assert created["addressType"] == "IPv6"
    assert endpoint_ips(created) == ["fd00:10:244::5"]


def test_slices_of_a_dropped_family_are_deleted() -> None:
    store = FakeStore()
    service = make_service(ipFamilies=["IPv4", "IPv6"])
    pod = make_pod("p", "10.244.0.5")
    pod["status"]["podIPs"] = [{"ip": "10.244.0.5"}, {"ip": "fd00:10:244::5"}]
    store.sync(service, [pod])
    v6 = [n for n, s in store.slices.items() if s["addressType"] == "IPv6"]
    changes = desired_endpoint_slices(make_service(ipFamilies=["IPv4"]), [pod], store.existing)
    assert changes.create == [] and changes.update == []
    assert [d["metadata"]["name"] for d in changes.delete] == v6


def test_deleting_service_creates_nothing() -> None:
    service = make_service()
    service["metadata"]["deletionTimestamp"] = "2024-01-01T00:00:00Z"
    assert desired_endpoint_slices(service, pods_range(3), []).empty


def test_inputs_are_not_mutated() -> None:
    store = FakeStore()
    service = make_service()
    pods = pods_range(120)
    store.sync(service, pods)
    existing = store.existing
    snapshot = (copy.deepcopy(service), copy.deepcopy(pods), copy.deepcopy(existing))
    changes = desired_endpoint_slices(service, [*pods[5:], *pods_range(20, start=400)], existing)
    assert not changes.empty
    assert (service, pods, existing) == snapshot
