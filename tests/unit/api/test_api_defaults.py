"""Defaulting: what kube-apiserver fills in, and what it leaves alone."""

from __future__ import annotations

import base64
import copy
from typing import Any

import pytest
import yaml

from netplane.api.defaults import apply_defaults, drop_type_dependent_fields, image_pull_policy, sync_cluster_ips
from netplane.api.resources import RESOURCES, ResourceInfo

KINDS = {r.kind: r for r in RESOURCES}


def defaulted(kind: str, manifest: str) -> dict[str, Any]:
    obj = yaml.safe_load(manifest)
    apply_defaults(KINDS[kind], obj)
    return obj


def test_service_defaults() -> None:
    svc = defaulted("Service", """
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec:
  selector: {app: web}
  ports:
  - {name: http, port: 80}
  - {name: dns, port: 53, protocol: UDP, targetPort: dns}
""")
    spec = svc["spec"]
    assert spec["type"] == "ClusterIP"
    assert spec["sessionAffinity"] == "None"
    assert "sessionAffinityConfig" not in spec
    assert spec["ports"][0] == {"name": "http", "port": 80, "protocol": "TCP", "targetPort": 80}
    assert spec["ports"][1] == {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": "dns"}
    assert spec["internalTrafficPolicy"] == "Cluster"
    assert "externalTrafficPolicy" not in spec
    assert spec["ipFamilyPolicy"] == "SingleStack" and spec["ipFamilies"] == ["IPv4"]
    assert "allocateLoadBalancerNodePorts" not in spec


def test_service_client_ip_affinity_timeout() -> None:
    svc = defaulted("Service", """
kind: Service
metadata: {name: web}
spec: {type: NodePort, sessionAffinity: ClientIP, ports: [{port: 80, targetPort: 0}]}
""")
    spec = svc["spec"]
    assert spec["sessionAffinityConfig"] == {"clientIP": {"timeoutSeconds": 10800}}
    assert spec["externalTrafficPolicy"] == "Cluster"
    assert spec["ports"][0]["targetPort"] == 80  # 0 means unset, as in kube


def test_service_explicit_values_are_kept() -> None:
    svc = defaulted("Service", """
kind: Service
metadata: {name: web}
spec:
  type: LoadBalancer
  externalTrafficPolicy: Local
  internalTrafficPolicy: Local
  sessionAffinity: ClientIP
  sessionAffinityConfig: {clientIP: {timeoutSeconds: 60}}
  ports: [{port: 443, targetPort: 8443, protocol: SCTP}]
""")
    spec = svc["spec"]
    assert spec["externalTrafficPolicy"] == "Local"
    assert spec["internalTrafficPolicy"] == "Local"
    assert spec["sessionAffinityConfig"]["clientIP"]["timeoutSeconds"] == 60
    assert spec["ports"][0] == {"port": 443, "targetPort": 8443, "protocol": "SCTP"}
    assert spec["allocateLoadBalancerNodePorts"] is True


def test_external_name_service_gets_no_ip_fields() -> None:
    svc = defaulted("Service", """
kind: Service
metadata: {name: db}
spec: {type: ExternalName, externalName: db.example.com}
""")
    spec = svc["spec"]
    for key in ("internalTrafficPolicy", "externalTrafficPolicy", "ipFamilies", "ipFamilyPolicy", "clusterIPs"):
        assert key not in spec
    assert spec["sessionAffinity"] == "None"


def test_sync_cluster_ips() -> None:
    a: dict[str, Any] = {"spec": {"clusterIP": "10.96.0.10"}}
    sync_cluster_ips(a)
    assert a["spec"]["clusterIPs"] == ["10.96.0.10"]
    b: dict[str, Any] = {"spec": {"clusterIPs": ["10.96.0.11"]}}
    sync_cluster_ips(b)
    assert b["spec"]["clusterIP"] == "10.96.0.11"
    c: dict[str, Any] = {"spec": {"clusterIP": "None"}}
    sync_cluster_ips(c)
    assert c["spec"]["clusterIPs"] == ["None"]
    d: dict[str, Any] = {"spec": {}}
    sync_cluster_ips(d)
    assert d == {"spec": {}}


POD = """
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: default}
spec:
  containers:
  - name: web
    image: nginx:1.25
    ports: [{containerPort: 80, name: http}]
    readinessProbe: {httpGet: {port: http}}
    resources: {limits: {cpu: 500m, memory: 128Mi}, requests: {cpu: 100m}}
  - name: sidecar
    image: busybox
"""


def test_pod_defaults() -> None:
    pod = defaulted("Pod", POD)
    spec = pod["spec"]
    assert spec["restartPolicy"] == "Always"
    assert spec["dnsPolicy"] == "ClusterFirst"
    assert spec["terminationGracePeriodSeconds"] == 30
    assert spec["schedulerName"] == "default-scheduler"
    assert spec["enableServiceLinks"] is True
    assert spec["securityContext"] == {}
    web, sidecar = spec["containers"]
    assert web["imagePullPolicy"] == "IfNotPresent"
    assert sidecar["imagePullPolicy"] == "Always"
    assert web["terminationMessagePath"] == "/dev/termination-log"
    assert web["terminationMessagePolicy"] == "File"
    assert web["ports"] == [{"containerPort": 80, "name": "http", "protocol": "TCP"}]
    assert web["readinessProbe"] == {
        "httpGet": {"port": "http", "path": "/", "scheme": "HTTP"},
        "timeoutSeconds": 1, "periodSeconds": 10, "successThreshold": 1, "failureThreshold": 3,
    }
    # Limits fill in missing requests; set requests stay.
    assert web["resources"]["requests"] == {"cpu": "100m", "memory": "128Mi"}
    assert "hostPort" not in web["ports"][0]


def test_pod_host_network_ports() -> None:
    pod = defaulted("Pod", """
kind: Pod
metadata: {name: agent}
spec:
  hostNetwork: true
  containers: [{name: a, image: agent:v1, ports: [{containerPort: 9100}]}]
""")
    assert pod["spec"]["containers"][0]["ports"][0]["hostPort"] == 9100


def test_pod_explicit_values_are_kept() -> None:
    pod = defaulted("Pod", """
kind: Pod
metadata: {name: job}
spec:
  restartPolicy: Never
  dnsPolicy: Default
  terminationGracePeriodSeconds: 0
  enableServiceLinks: false
  containers: [{name: a, image: "busybox:latest", imagePullPolicy: Never}]
""")
    spec = pod["spec"]
    assert spec["restartPolicy"] == "Never"
    assert spec["dnsPolicy"] == "Default"
    assert spec["terminationGracePeriodSeconds"] == 0
    assert spec["enableServiceLinks"] is False
    assert spec["containers"][0]["imagePullPolicy"] == "Never"


@pytest.mark.parametrize(("image", "policy"), [
    ("nginx", "Always"),
    ("nginx:latest", "Always"),
    ("nginx:1.25", "IfNotPresent"),
    ("registry.local:5000/nginx", "Always"),  # the registry's port is not a tag
    ("registry.local:5000/nginx:1.25", "IfNotPresent"),
    ("nginx@sha256:" + "a" * 64, "IfNotPresent"),
    ("nginx:latest@sha256:" + "a" * 64, "Always"),
])
def test_image_pull_policy(image: str, policy: str) -> None:
    assert image_pull_policy(image) == policy


DEPLOYMENT = """
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: default}
spec:
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers: [{name: web, image: "nginx:1.25", ports: [{containerPort: 80}]}]
"""


def test_deployment_defaults() -> None:
    d = defaulted("Deployment", DEPLOYMENT)
    spec = d["spec"]
    assert spec["replicas"] == 1
    assert spec["strategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "25%", "maxSurge": "25%"}}
    assert spec["revisionHistoryLimit"] == 10
    assert spec["progressDeadlineSeconds"] == 600
    tspec = spec["template"]["spec"]
    assert tspec["restartPolicy"] == "Always" and tspec["dnsPolicy"] == "ClusterFirst"
    assert tspec["terminationGracePeriodSeconds"] == 30 and tspec["schedulerName"] == "default-scheduler"
    assert tspec["containers"][0]["imagePullPolicy"] == "IfNotPresent"
    assert tspec["containers"][0]["ports"][0]["protocol"] == "TCP"
    # As in kube, pod-only defaults stay off templates.
    assert "enableServiceLinks" not in tspec


def test_deployment_recreate_and_zero_replicas_kept() -> None:
    d = yaml.safe_load(DEPLOYMENT)
    d["spec"]["replicas"] = 0
    d["spec"]["strategy"] = {"type": "Recreate"}
    apply_defaults(KINDS["Deployment"], d)
    assert d["spec"]["replicas"] == 0
    assert d["spec"]["strategy"] == {"type": "Recreate"}


def test_deployment_partial_rolling_update() -> None:
    d = yaml.safe_load(DEPLOYMENT)
    d["spec"]["strategy"] = {"rollingUpdate": {"maxSurge": 1}}
    apply_defaults(KINDS["Deployment"], d)
    assert d["spec"]["strategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": "25%"}}


def test_replicaset_defaults() -> None:
    rs = yaml.safe_load(DEPLOYMENT)
    rs["kind"] = "ReplicaSet"
    apply_defaults(KINDS["ReplicaSet"], rs)
    assert rs["spec"]["replicas"] == 1
    assert "strategy" not in rs["spec"] and "revisionHistoryLimit" not in rs["spec"]
    assert rs["spec"]["template"]["spec"]["restartPolicy"] == "Always"


def test_ingress_path_type_is_not_defaulted() -> None:
    ing = defaulted("Ingress", """
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: web}
spec:
  rules:
  - host: shop.example.com
    http: {paths: [{path: /, backend: {service: {name: web, port: {number: 80}}}}]}
""")
    assert "pathType" not in ing["spec"]["rules"][0]["http"]["paths"][0]


def test_endpointslice_port_defaults() -> None:
    eps = defaulted("EndpointSlice", """
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-abc}
addressType: IPv4
endpoints: [{addresses: [10.244.1.5]}]
ports: [{port: 8080}, {name: dns, port: 53, protocol: UDP}]
""")
    assert eps["ports"] == [{"port": 8080, "name": "", "protocol": "TCP"},
                            {"name": "dns", "port": 53, "protocol": "UDP"}]


def test_namespace_defaults() -> None:
    ns = defaulted("Namespace", "{apiVersion: v1, kind: Namespace, metadata: {name: shop}}")
    assert ns["spec"]["finalizers"] == ["kubernetes"]
    assert ns["status"]["phase"] == "Active"
    assert ns["metadata"]["labels"] == {"kubernetes.io/metadata.name": "shop"}
    # The name label cannot be spoofed.
    ns2 = defaulted("Namespace", "{kind: Namespace, metadata: {name: shop, labels: "
                                 "{kubernetes.io/metadata.name: other, team: a}}}")
    assert ns2["metadata"]["labels"] == {"kubernetes.io/metadata.name": "shop", "team": "a"}


def test_secret_defaults() -> None:
    s = defaulted("Secret", """
apiVersion: v1
kind: Secret
metadata: {name: creds}
data: {user: YWRtaW4=}
stringData: {password: "s3cr3t", user: root}
""")
    assert s["type"] == "Opaque"
    assert "stringData" not in s
    # stringData wins over data for the same key, as in kube.
    assert s["data"] == {"user": base64.b64encode(b"root").decode(),
                         "password": base64.b64encode(b"s3cr3t").decode()}
    tls = defaulted("Secret", "{kind: Secret, metadata: {name: t}, type: kubernetes.io/tls}")
    assert tls["type"] == "kubernetes.io/tls"


def test_node_allocatable_from_capacity() -> None:
    n = defaulted("Node", "{kind: Node, metadata: {name: n1}, status: {capacity: {cpu: '2', pods: '110'}}}")
    assert n["status"]["allocatable"] == {"cpu": "2", "pods": "110"}


@pytest.mark.parametrize("info", RESOURCES, ids=[r.kind for r in RESOURCES])
def test_defaulting_is_idempotent_and_tolerates_garbage(info: ResourceInfo) -> None:
    for garbage in ({"spec": []}, {"spec": {"ports": "x", "containers": [1, None], "template": []}},
                    {"metadata": None, "ports": [3], "status": "x"}, {}):
        obj = copy.deepcopy(garbage)
        apply_defaults(info, obj)  # must not raise
    obj = yaml.safe_load(POD if info.kind == "Pod" else DEPLOYMENT)
    apply_defaults(info, obj)
    once = copy.deepcopy(obj)
    apply_defaults(info, obj)
    assert obj == once


LB_LIVE = """
kind: Service
metadata: {name: web}
spec:
  type: LoadBalancer
  clusterIP: 10.96.0.20
  clusterIPs: [10.96.0.20]
  externalTrafficPolicy: Local
  healthCheckNodePort: 32100
  allocateLoadBalancerNodePorts: true
  ipFamilies: [IPv4]
  ipFamilyPolicy: SingleStack
  ports: [{name: http, port: 80, nodePort: 30080}, {name: https, port: 443, nodePort: 30443}]
"""


def test_drop_type_dependent_fields_lb_to_cluster_ip() -> None:
    old = yaml.safe_load(LB_LIVE)
    new = copy.deepcopy(old)
    new["spec"]["type"] = "ClusterIP"  # what `kubectl apply` sends: the live object with a new type
    drop_type_dependent_fields(new, old)
    spec = new["spec"]
    for key in ("externalTrafficPolicy", "healthCheckNodePort", "allocateLoadBalancerNodePorts"):
        assert key not in spec
    assert all("nodePort" not in p for p in spec["ports"])
    assert spec["clusterIP"] == "10.96.0.20" and spec["ipFamilies"] == ["IPv4"]


def test_drop_type_dependent_fields_keeps_what_the_user_changed() -> None:
    old = yaml.safe_load(LB_LIVE)
    new = copy.deepcopy(old)
    new["spec"]["type"] = "ClusterIP"
    new["spec"]["externalTrafficPolicy"] = "Cluster"
    new["spec"]["ports"][0]["nodePort"] = 30099
    drop_type_dependent_fields(new, old)
    # Changed on purpose: left for validation to refuse.
    assert new["spec"]["externalTrafficPolicy"] == "Cluster"
    assert new["spec"]["ports"][0]["nodePort"] == 30099


def test_drop_type_dependent_fields_to_external_name() -> None:
    old = yaml.safe_load(LB_LIVE)
    new = copy.deepcopy(old)
    new["spec"]["type"] = "ExternalName"
    new["spec"]["externalName"] = "web.example.com"
    drop_type_dependent_fields(new, old)
    for key in ("clusterIP", "clusterIPs", "ipFamilies", "ipFamilyPolicy", "externalTrafficPolicy"):
        assert key not in new["spec"]
    same = copy.deepcopy(old)
    drop_type_dependent_fields(same, old)
    assert same == old  # no type change: nothing dropped
