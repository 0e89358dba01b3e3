"""Server-side printing: Accept negotiation, kube's columns and cell formats, includeObject."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from netplane.api.resources import RESOURCES, lookup
from netplane.api.tables import (
    format_label_selector,
    human_duration,
    parse_time,
    to_table,
    wants_table,
)

NOW = datetime(2025, 1, 10, 12, 0, 0, tzinfo=UTC)


def ago(**delta: float) -> str:
    return (NOW - timedelta(**delta)).strftime("%Y-%m-%dT%H:%M:%SZ")


def info(group: str, plural: str) -> Any:
    found = lookup(group, "v1", plural)
    assert found is not None
    return found


def table(group: str, plural: str, objs: list[dict[str, Any]], **kw: Any) -> dict[str, Any]:
    return to_table(info(group, plural), objs, now=NOW, **kw)


def names(t: dict[str, Any], wide: bool = True) -> list[str]:
    return [c["name"] for c in t["columnDefinitions"] if wide or c["priority"] == 0]


def cells(t: dict[str, Any]) -> dict[str, Any]:
    """The first row as {column name: cell}."""
    return dict(zip(names(t), t["rows"][0]["cells"], strict=True))


# ------------------------------------------------------------------ negotiation

def test_wants_table_for_kubectl_get_accept_header() -> None:
    kubectl = ("application/json;as=Table;v=v1;g=meta.k8s.io,"
               "application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json")
    assert wants_table(kubectl)
    assert wants_table("application/json; as=Table; g=meta.k8s.io; v=v1")


@pytest.mark.parametrize("accept", [
    "application/json", "", "*/*", "application/yaml",
    "application/json;as=Table;v=v1beta1;g=meta.k8s.io",
    "application/json;as=PartialObjectMetadata;v=v1;g=meta.k8s.io",
    "application/vnd.kubernetes.protobuf;as=Table;v=v1;g=meta.k8s.io",
])
def test_does_not_want_table(accept: str) -> None:
    assert not wants_table(accept)


# ------------------------------------------------------------------ ages

@pytest.mark.parametrize(("seconds", "text"), [
    (-5, "<invalid>"), (-0.5, "0s"), (0, "0s"), (5, "5s"), (119, "119s"), (120, "2m"),
    (182, "3m2s"), (599, "9m59s"), (600, "10m"), (3 * 3600 - 1, "179m"), (3 * 3600, "3h"),
    (5 * 3600 + 120, "5h2m"), (8 * 3600, "8h"), (47 * 3600, "47h"), (48 * 3600, "2d"),
    (51 * 3600, "2d3h"), (8 * 86400, "8d"), (729 * 86400, "729d"), (730 * 86400, "2y"),
    (800 * 86400, "2y70d"), (9 * 365 * 86400, "9y"),
])
def test_human_duration_matches_kube(seconds: float, text: str) -> None:
    assert human_duration(seconds) == text


def test_parse_time_accepts_time_and_microtime() -> None:
    assert parse_time("2025-01-10T12:00:00Z") == NOW
    micro = parse_time("2025-01-10T11:59:59.123456Z")
    assert micro is not None and (NOW - micro).total_seconds() == pytest.approx(0.876544)
    assert parse_time("") is None and parse_time(None) is None and parse_time("yesterday") is None


def test_missing_creation_timestamp_prints_unknown() -> None:
    t = table("", "configmaps", [{"metadata": {"name": "c"}}])
    assert cells(t)["Age"] == "<unknown>"


# ------------------------------------------------------------------ shape

def test_table_shape_and_first_column_format() -> None:
    t = table("", "namespaces", [{"metadata": {"name": "default", "creationTimestamp": ago(days=3)},
                                  "status": {"phase": "Active"}}], list_meta={"resourceVersion": "42"})
    assert t["kind"] == "Table" and t["apiVersion"] == "meta.k8s.io/v1"
    assert t["metadata"] == {"resourceVersion": "42"}
    first = t["columnDefinitions"][0]
    assert first["name"] == "Name" and first["format"] == "name" and first["priority"] == 0
    for column in t["columnDefinitions"]:
        assert set(column) == {"name", "type", "format", "description", "priority"}
    assert t["rows"][0]["cells"] == ["default", "Active", "3d"]


def test_include_object_variants() -> None:
    obj: dict[str, Any] = {"apiVersion": "v1", "kind": "ConfigMap",
                           "metadata": {"name": "c", "namespace": "ns", "resourceVersion": "7"}, "data": {"a": "1"}}
    meta_row = table("", "configmaps", [obj])["rows"][0]
    assert meta_row["object"] == {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
                                  "metadata": obj["metadata"]}
    assert table("", "configmaps", [obj], include_object="Object")["rows"][0]["object"] == obj
    assert "object" not in table("", "configmaps", [obj], include_object="None")["rows"][0]
    # The row carries a copy: editing it never reaches the stored object.
    meta_row["object"]["metadata"]["name"] = "changed"
    assert obj["metadata"]["name"] == "c"


def test_every_resource_has_a_printer_whose_row_matches_its_columns() -> None:
    for res in RESOURCES:
        t = to_table(res, [{"metadata": {"name": "x", "creationTimestamp": ago(seconds=30)}}], now=NOW)
        assert len(t["rows"][0]["cells"]) == len(t["columnDefinitions"]), res.kind
        assert names(t) != ["Name", "Created At"], f"{res.kind} fell back to the default printer"


# ------------------------------------------------------------------ kinds

def test_pod_columns_and_cells() -> None:
    pod = {
        "metadata": {"name": "web-1", "creationTimestamp": ago(minutes=3, seconds=2)},
        "spec": {"nodeName": "node-a", "containers": [{"name": "a"}, {"name": "b"}]},
        "status": {
            "phase": "Running", "podIP": "10.244.1.5", "podIPs": [{"ip": "10.244.1.5"}],
            "conditions": [{"type": "Ready", "status": "False"}],
            "containerStatuses": [
                {"name": "a", "ready": True, "restartCount": 2, "state": {"running": {}},
                 "lastState": {"terminated": {"exitCode": 1, "finishedAt": ago(minutes=5)}}},
                {"name": "b", "ready": False, "restartCount": 0,
                 "state": {"waiting": {"reason": "CrashLoopBackOff"}}},
            ],
        },
    }
    t = table("", "pods", [pod])
    assert names(t, wide=False) == ["Name", "Ready", "Status", "Restarts", "Age"]
    assert names(t)[5:] == ["IP", "Node", "Nominated Node", "Readiness Gates"]
    assert cells(t) == {"Name": "web-1", "Ready": "1/2", "Status": "CrashLoopBackOff",
                        "Restarts": "2 (5m ago)", "Age": "3m2s", "IP": "10.244.1.5", "Node": "node-a",
                        "Nominated Node": "<none>", "Readiness Gates": "<none>"}


def test_pod_pending_terminating_and_init_states() -> None:
    pending = {"metadata": {"name": "p"}, "spec": {"containers": [{"name": "a"}]}, "status": {"phase": "Pending"}}
    row = cells(table("", "pods", [pending]))
    assert (row["Ready"], row["Status"], row["Restarts"], row["IP"], row["Node"]) == (
        "0/1", "Pending", "0", "<none>", "<none>")
    terminating = {**pending, "metadata": {"name": "p", "deletionTimestamp": ago(seconds=1)},
                   "status": {"phase": "Running"}}
    assert cells(table("", "pods", [terminating]))["Status"] == "Terminating"
    init = {"metadata": {"name": "p"},
            "spec": {"initContainers": [{"name": "i1"}, {"name": "i2"}], "containers": [{"name": "a"}]},
            "status": {"phase": "Pending", "initContainerStatuses": [
                {"name": "i1", "restartCount": 0, "state": {"terminated": {"exitCode": 0}}},
                {"name": "i2", "restartCount": 0, "state": {"running": {}}}]}}
    assert cells(table("", "pods", [init]))["Status"] == "Init:1/2"


def test_service_ports_external_ip_and_selector() -> None:
    svc = {"metadata": {"name": "web", "creationTimestamp": ago(hours=5, minutes=2)},
           "spec": {"type": "NodePort", "clusterIP": "10.96.0.20", "clusterIPs": ["10.96.0.20"],
                    "ports": [{"port": 80, "nodePort": 30080, "protocol": "TCP"},
                              {"port": 53, "protocol": "UDP"}],
                    "selector": {"tier": "front", "app": "web"}}}
    t = table("", "services", [svc])
    assert names(t) == ["Name", "Type", "Cluster-IP", "External-IP", "Port(s)", "Age", "Selector"]
    assert cells(t) == {"Name": "web", "Type": "NodePort", "Cluster-IP": "10.96.0.20", "External-IP": "<none>",
                        "Port(s)": "80:30080/TCP,53/UDP", "Age": "5h2m", "Selector": "app=web,tier=front"}
    assert t["columnDefinitions"][6]["priority"] == 1
    lb = {"metadata": {"name": "lb"}, "spec": {"type": "LoadBalancer", "ports": [{"port": 443}]}}
    row = cells(table("", "services", [lb]))
    assert (row["External-IP"], row["Port(s)"], row["Cluster-IP"]) == ("<pending>", "443/TCP", "<none>")
    lb["status"] = {"loadBalancer": {"ingress": [{"ip": "192.0.2.7"}]}}
    assert cells(table("", "services", [lb]))["External-IP"] == "192.0.2.7"


def test_deployment_and_replicaset() -> None:
    dep = {"metadata": {"name": "web", "creationTimestamp": ago(days=2, hours=3)},
           "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web"}},
                    "template": {"spec": {"containers": [{"name": "app", "image": "nginx:1.27"},
                                                         {"name": "log", "image": "busybox"}]}}},
           "status": {"readyReplicas": 2, "updatedReplicas": 3, "availableReplicas": 2}}
    t = table("apps", "deployments", [dep])
    assert names(t, wide=False) == ["Name", "Ready", "Up-to-date", "Available", "Age"]
    assert cells(t) == {"Name": "web", "Ready": "2/3", "Up-to-date": 3, "Available": 2, "Age": "2d3h",
                        "Containers": "app,log", "Images": "nginx:1.27,busybox", "Selector": "app=web"}
    rs = {"metadata": {"name": "web-abc"}, "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web"}}},
          "status": {"replicas": 3, "readyReplicas": 1}}
    t = table("apps", "replicasets", [rs])
    assert names(t, wide=False) == ["Name", "Desired", "Current", "Ready", "Age"]
    assert t["rows"][0]["cells"][:4] == ["web-abc", 3, 3, 1]


def test_label_selector_formatting() -> None:
    sel = {"matchLabels": {"b": "2", "a": "1"},
           "matchExpressions": [{"key": "c", "operator": "In", "values": ["y", "x"]},
                                {"key": "d", "operator": "DoesNotExist"},
                                {"key": "aa", "operator": "Exists"}]}
    assert format_label_selector(sel) == "a=1,aa,b=2,c in (x,y),!d"
    assert format_label_selector({}) == "<none>"
    assert format_label_selector(None, empty="") == ""


def test_node_columns() -> None:
    node = {"metadata": {"name": "n1", "creationTimestamp": ago(minutes=42),
                         "labels": {"node-role.kubernetes.io/control-plane": "", "kubernetes.io/role": "edge"}},
            "spec": {"unschedulable": True},
            "status": {"conditions": [{"type": "MemoryPressure", "status": "False"},
                                      {"type": "Ready", "status": "True"}],
                       "addresses": [{"type": "Hostname", "address": "n1"},
                                     {"type": "InternalIP", "address": "10.0.0.4"}],
                       "nodeInfo": {"kubeletVersion": "v1.31.0-netplane", "osImage": "Debian 12",
                                    "kernelVersion": "6.1", "containerRuntimeVersion": "podman://4.3"}}}
    t = table("", "nodes", [node])
    assert names(t, wide=False) == ["Name", "Status", "Roles", "Age", "Version"]
    assert cells(t) == {"Name": "n1", "Status": "Ready,SchedulingDisabled", "Roles": "control-plane,edge",
                        "Age": "42m", "Version": "v1.31.0-netplane", "Internal-IP": "10.0.0.4",
                        "External-IP": "<none>", "OS-Image": "Debian 12", "Kernel-Version": "6.1",
                        "Container-Runtime": "podman://4.3"}
    bare = cells(table("", "nodes", [{"metadata": {"name": "n2"}}]))
    assert (bare["Status"], bare["Roles"], bare["OS-Image"]) == ("Unknown", "<none>", "<unknown>")


def test_endpointslice_ingress_ingressclass_lease() -> None:
    es = {"metadata": {"name": "web-x"}, "addressType": "IPv4",
          "ports": [{"name": "http", "port": 8080}, {"name": "named"}, {"port": 1}, {"port": 2}],
          "endpoints": [{"addresses": ["10.244.1.2"]}, {"addresses": ["10.244.2.2"]}]}
    row = cells(table("discovery.k8s.io", "endpointslices", [es]))
    assert (row["AddressType"], row["Ports"], row["Endpoints"]) == (
        "IPv4", "8080,named,1 + 1 more...", "10.244.1.2,10.244.2.2")
    empty = cells(table("discovery.k8s.io", "endpointslices", [{"metadata": {"name": "e"}, "addressType": "IPv4"}]))
    assert (empty["Ports"], empty["Endpoints"]) == ("<unset>", "<unset>")

    ing = {"metadata": {"name": "web"},
           "spec": {"ingressClassName": "nginx", "tls": [{"hosts": ["a.example"]}],
                    "rules": [{"host": "a.example"}, {"host": "b.example"}]},
           "status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.1"}]}}}
    t = table("networking.k8s.io", "ingresses", [ing])
    assert names(t) == ["Name", "Class", "Hosts", "Address", "Ports", "Age"]
    assert t["rows"][0]["cells"][:5] == ["web", "nginx", "a.example,b.example", "192.0.2.1", "80, 443"]
    plain = cells(table("networking.k8s.io", "ingresses", [{"metadata": {"name": "i"}, "spec": {"rules": [{}]}}]))
    assert (plain["Class"], plain["Hosts"], plain["Address"], plain["Ports"]) == ("<none>", "*", "", "80")

    ic = {"metadata": {"name": "nginx"}, "spec": {"controller": "netplane.io/ingress",
                                                  "parameters": {"apiGroup": "k8s.example", "kind": "Params",
                                                                 "name": "p"}}}
    assert table("networking.k8s.io", "ingressclasses", [ic])["rows"][0]["cells"][:3] == [
        "nginx", "netplane.io/ingress", "Params.k8s.example/p"]
    lease = {"metadata": {"name": "n1"}, "spec": {"holderIdentity": "n1"}}
    assert table("coordination.k8s.io", "leases", [lease])["rows"][0]["cells"][:2] == ["n1", "n1"]


def test_event_secret_configmap() -> None:
    ev = {"metadata": {"name": "web.1"}, "type": "Normal", "reason": "Scheduled",
          "message": "assigned to n1 \n", "involvedObject": {"kind": "Pod", "name": "web", "fieldPath": ""},
          "source": {"component": "scheduler"}, "firstTimestamp": ago(minutes=10), "lastTimestamp": ago(seconds=30),
          "count": 4}
    t = table("", "events", [ev])
    assert names(t, wide=False) == ["Last Seen", "Type", "Reason", "Object", "Message"]
    assert cells(t) == {"Last Seen": "30s", "Type": "Normal", "Reason": "Scheduled", "Object": "pod/web",
                        "Subobject": "", "Source": "scheduler", "Message": "assigned to n1",
                        "First Seen": "10m", "Count": 4, "Name": "web.1"}
    assert t["columnDefinitions"][-1]["format"] == "name"
    new_style = {"metadata": {"name": "e"}, "eventTime": "2025-01-10T11:59:00.000000Z",
                 "involvedObject": {"kind": "Node"}, "reportingComponent": "agent", "reportingInstance": "n1"}
    row = cells(table("", "events", [new_style]))
    assert (row["Last Seen"], row["Count"], row["Object"], row["Source"]) == ("60s", 1, "node", "agent, n1")

    secret = {"metadata": {"name": "s"}, "type": "Opaque", "data": {"a": "eA==", "b": "eQ=="}}
    assert table("", "secrets", [secret])["rows"][0]["cells"][:3] == ["s", "Opaque", 2]
    cm = {"metadata": {"name": "c"}, "data": {"a": "1"}, "binaryData": {"b": "eQ=="}}
    assert table("", "configmaps", [cm])["rows"][0]["cells"][:2] == ["c", 2]
