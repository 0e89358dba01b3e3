"""Validation, table-driven: a valid object passes, and each broken field yields one Cause naming it.

Every case starts from a realistic, defaulted manifest, changes one thing, and expects exactly
the listed (field, reason) pairs: an extra or a missing Cause fails the case.
"""

from __future__ import annotations

import copy
import re
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from netplane.api.defaults import apply_defaults, drop_type_dependent_fields
from netplane.api.errors import Cause
from netplane.api.resources import RESOURCES, ResourceInfo
from netplane.api.validation import validate

KINDS = {r.kind: r for r in RESOURCES}
DELETE = object()

REQ, INV, NS, DUP, FORB = ("FieldValueRequired", "FieldValueInvalid", "FieldValueNotSupported",
                           "FieldValueDuplicate", "FieldValueForbidden")

_STEP = re.compile(r"([^.\[\]]+)|\[(\d+)\]")


def set_path(obj: Any, path: str, value: Any) -> None:
    """Set (or with DELETE remove) obj at 'a.b[0].c'; '/' in a key is fine, '.' is not."""
    steps: list[str | int] = [int(i) if i else k for k, i in _STEP.findall(path)]
    cur = obj
    for step in steps[:-1]:
        if isinstance(step, str) and isinstance(cur, dict) and step not in cur:
            cur[step] = {}
        cur = cur[step]
    last = steps[-1]
    if value is DELETE:
        del cur[last]
    elif isinstance(cur, list) and isinstance(last, int) and last == len(cur):
        cur.append(value)
    else:
        cur[last] = value


def load(kind: str, manifest: str) -> dict[str, Any]:
    obj = yaml.safe_load(manifest)
    apply_defaults(KINDS[kind], obj)
    return obj


def check(kind: str, obj: dict[str, Any], old: dict[str, Any] | None = None) -> list[tuple[str, str]]:
    causes = validate(KINDS[kind], obj, old)
    assert all(isinstance(c, Cause) and c.message for c in causes)
    return [(c.field, c.reason) for c in causes]


Change = tuple[str, Any]
Case = tuple[str, list[Change], list[tuple[str, str]]]


def run_case(kind: str, base: dict[str, Any], changes: list[Change], expected: list[tuple[str, str]],
             default_after: bool = True) -> None:
    obj = copy.deepcopy(base)
    for path, value in changes:
        set_path(obj, path, value)
    if default_after:
        apply_defaults(KINDS[kind], obj)
    assert check(kind, obj) == expected


def ids(cases: list[Case]) -> list[str]:
    return [c[0] for c in cases]


# -- metadata ----------------------------------------------------------------------

CONFIGMAP = load("ConfigMap", """
apiVersion: v1
kind: ConfigMap
metadata:
  name: app.config
  namespace: shop
  labels: {app.kubernetes.io/name: web, tier: frontend}
  annotations: {Example.COM/Owner: team-a}
  finalizers: [example.com/cleanup, kubernetes]
data: {nginx.conf: "worker_processes 1;", .env: "A=1"}
binaryData: {logo.png: aGVsbG8=}
""")

METADATA_CASES: list[Case] = [
    ("name missing", [("metadata.name", DELETE)], [("metadata.name", REQ)]),
    ("name empty", [("metadata.name", "")], [("metadata.name", REQ)]),
    ("name upper", [("metadata.name", "App")], [("metadata.name", INV)]),
    ("name underscore", [("metadata.name", "app_config")], [("metadata.name", INV)]),
    ("name too long", [("metadata.name", "a" * 254)], [("metadata.name", INV)]),
    ("name not string", [("metadata.name", 7)], [("metadata.name", INV), ("metadata.name", REQ)]),
    ("namespace bad", [("metadata.namespace", "Shop")], [("metadata.namespace", INV)]),
    ("label key bad", [("metadata.labels.bad key", "x")], [("metadata.labels", INV)]),
    ("label key prefix bad", [("metadata.labels.Example.com/x", "x")], [("metadata.labels", INV)]),
    ("label name too long", [("metadata.labels.example.com/" + "a" * 64, "x")], [("metadata.labels", INV)]),
    ("label value bad", [("metadata.labels.tier", "front end")], [("metadata.labels", INV)]),
    ("label value too long", [("metadata.labels.tier", "a" * 64)], [("metadata.labels", INV)]),
    ("label value not string", [("metadata.labels.tier", 3)], [("metadata.labels[tier]", INV)]),
    ("annotation key bad", [("metadata.annotations.no spaces", "x")], [("metadata.annotations", INV)]),
    ("annotations too large", [("metadata.annotations.big", "x" * (256 * 1024))],
     [("metadata.annotations", "FieldValueTooLong")]),
    ("finalizer unqualified", [("metadata.finalizers[2]", "cleanup")], [("metadata.finalizers[2]", INV)]),
    ("owner reference incomplete", [("metadata.ownerReferences", [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                                                                     "name": "web-1"}])],
     [("metadata.ownerReferences[0].uid", REQ)]),
    ("two controllers", [("metadata.ownerReferences", [
        {"apiVersion": "v1", "kind": "A", "name": "a", "uid": "1", "controller": True},
        {"apiVersion": "v1", "kind": "B", "name": "b", "uid": "2", "controller": True}])],
     [("metadata.ownerReferences", INV)]),
    ("data key bad", [("data.a/b", "x")], [("data[a/b]", INV)]),
    ("data key dot-dot", [("data...x", "x")], [("data[..x]", INV)]),
    ("data value not string", [("data.n", 1)], [("data[n]", INV)]),
    ("binary not base64", [("binaryData.logo.png", "%%%")], [("binaryData[logo.png]", INV)]),
    ("key in data and binaryData", [("binaryData.nginx.conf", "aGk=")], [("data[nginx.conf]", DUP)]),
    ("data too large", [("data.big", "x" * (1024 * 1024))], [("data", "FieldValueTooLong")]),
]


def test_valid_configmap() -> None:
    assert check("ConfigMap", CONFIGMAP) == []


@pytest.mark.parametrize(("name", "changes", "expected"), METADATA_CASES, ids=ids(METADATA_CASES))
def test_metadata_and_configmap(name: str, changes: list[Change], expected: list[tuple[str, str]]) -> None:
    del name
    obj = copy.deepcopy(CONFIGMAP)
    for path, value in changes:
        if path.startswith(("metadata.labels.", "metadata.annotations.", "data.", "binaryData.")):
            # Map keys may contain dots: set them directly.
            top, _, rest = path.partition(".")
            target = obj if top in ("data", "binaryData") else obj["metadata"]
            if top == "metadata":
                top, _, rest = rest.partition(".")
            target.setdefault(top, {})[rest] = value
        else:
            set_path(obj, path, value)
    assert check("ConfigMap", obj) == expected


def test_namespace_forbidden_for_cluster_scoped_kinds() -> None:
    node = load("Node", "{apiVersion: v1, kind: Node, metadata: {name: node-a, namespace: default}}")
    assert check("Node", node) == [("metadata.namespace", FORB)]
    node["metadata"]["namespace"] = ""
    assert check("Node", node) == []


def test_name_format_per_kind() -> None:
    # Pods, Deployments, ... take subdomains; Services and Namespaces take labels.
    pod = load("Pod", "{kind: Pod, metadata: {name: web.v2, namespace: a}, spec: {containers: [{name: w, image: x}]}}")
    assert check("Pod", pod) == []
    ns = load("Namespace", "{kind: Namespace, metadata: {name: team.a}}")
    assert check("Namespace", ns) == [("metadata.name", INV)]
    ns = load("Namespace", "{kind: Namespace, metadata: {name: 1team}}")
    assert check("Namespace", ns) == []  # DNS-1123 label: may start with a digit
    ev = load("Event", "{kind: Event, metadata: {name: web-1.17a2b3c4d5e6f7a8, namespace: a}}")
    assert check("Event", ev) == []


def test_metadata_update_immutable() -> None:
    new = copy.deepcopy(CONFIGMAP)
    old = copy.deepcopy(CONFIGMAP)
    old["metadata"]["uid"] = "u-1"
    assert check("ConfigMap", new, old) == []  # a client that omits the uid is fine
    new["metadata"]["uid"] = "u-2"
    new["metadata"]["name"] = "other"
    assert check("ConfigMap", new, old) == [("metadata.name", INV), ("metadata.uid", INV)]


def test_immutable_configmap() -> None:
    old = copy.deepcopy(CONFIGMAP)
    old["immutable"] = True
    new = copy.deepcopy(old)
    assert check("ConfigMap", new, old) == []
    new["data"]["nginx.conf"] = "changed"
    assert check("ConfigMap", new, old) == [("data", FORB)]
    new = copy.deepcopy(old)
    new["immutable"] = False
    assert check("ConfigMap", new, old) == [("immutable", FORB)]


# -- Service -------------------------------------------------------------------------

SERVICE = load("Service", """
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop, labels: {app: web}}
spec:
  selector: {app: web}
  ports:
  - {name: http, port: 80, targetPort: 8080}
  - {name: https, port: 443, targetPort: https}
""")

SERVICE_CASES: list[Case] = [
    ("name upper", [("metadata.name", "Web")], [("metadata.name", INV)]),
    ("name starts with digit", [("metadata.name", "1web")], [("metadata.name", INV)]),
    ("name subdomain", [("metadata.name", "web.shop")], [("metadata.name", INV)]),
    ("type", [("spec.type", "Internal")], [("spec.type", NS)]),
    ("no ports", [("spec.ports", [])], [("spec.ports", REQ)]),
    ("ports not a list", [("spec.ports", "80")], [("spec.ports", INV)]),
    ("port zero", [("spec.ports[0].port", 0)], [("spec.ports[0].port", INV)]),
    ("port too big", [("spec.ports[0].port", 65536)], [("spec.ports[0].port", INV)]),
    ("port a string", [("spec.ports[0].port", "80")], [("spec.ports[0].port", INV)]),
    ("port missing", [("spec.ports[0].port", DELETE), ("spec.ports[0].targetPort", 8080)],
     [("spec.ports[0].port", REQ)]),
    ("protocol", [("spec.ports[0].protocol", "ICMP")], [("spec.ports[0].protocol", NS)]),
    ("second port name missing", [("spec.ports[1].name", DELETE)], [("spec.ports[1].name", REQ)]),
    ("port name duplicate", [("spec.ports[1].name", "http")], [("spec.ports[1].name", DUP)]),
    ("port name format", [("spec.ports[0].name", "HTTP")], [("spec.ports[0].name", INV)]),
    ("port+protocol duplicate", [("spec.ports[1].port", 80)], [("spec.ports[1]", DUP)]),
    ("targetPort number", [("spec.ports[0].targetPort", 70000)], [("spec.ports[0].targetPort", INV)]),
    ("targetPort negative", [("spec.ports[0].targetPort", -1)], [("spec.ports[0].targetPort", INV)]),
    ("targetPort name upper", [("spec.ports[1].targetPort", "HTTPS")], [("spec.ports[1].targetPort", INV)]),
    ("targetPort name dashes", [("spec.ports[1].targetPort", "web--tls")], [("spec.ports[1].targetPort", INV)]),
    ("targetPort name long", [("spec.ports[1].targetPort", "a" * 16)], [("spec.ports[1].targetPort", INV)]),
    ("targetPort name digits", [("spec.ports[1].targetPort", "8443a-")], [("spec.ports[1].targetPort", INV)]),
    ("targetPort object", [("spec.ports[1].targetPort", {"port": 1})], [("spec.ports[1].targetPort", INV)]),
    ("nodePort on ClusterIP", [("spec.ports[0].nodePort", 30080)], [("spec.ports[0].nodePort", FORB)]),
    ("nodePort out of range", [("spec.type", "NodePort"), ("spec.ports[0].nodePort", 70000)],
     [("spec.ports[0].nodePort", INV)]),
    ("nodePort duplicate", [("spec.type", "NodePort"), ("spec.ports[0].nodePort", 30080),
                            ("spec.ports[1].nodePort", 30080)], [("spec.ports[1].nodePort", DUP)]),
    ("clusterIP bad", [("spec.clusterIP", "10.96.0.300")], [("spec.clusterIP", INV)]),
    ("clusterIP IPv6", [("spec.clusterIP", "fd00::10")], [("spec.clusterIP", INV)]),
    ("clusterIPs mismatch", [("spec.clusterIP", "10.96.0.10"), ("spec.clusterIPs", ["10.96.0.11"])],
     [("spec.clusterIPs[0]", INV)]),
    ("headless NodePort", [("spec.clusterIP", "None"), ("spec.type", "NodePort")], [("spec.clusterIP", INV)]),
    ("headless LoadBalancer", [("spec.clusterIP", "None"), ("spec.type", "LoadBalancer")],
     [("spec.clusterIP", INV)]),
    ("affinity", [("spec.sessionAffinity", "Sticky")], [("spec.sessionAffinity", NS)]),
    ("affinity timeout zero", [("spec.sessionAffinity", "ClientIP"),
                               ("spec.sessionAffinityConfig", {"clientIP": {"timeoutSeconds": 0}})],
     [("spec.sessionAffinityConfig.clientIP.timeoutSeconds", INV)]),
    ("affinity timeout too long", [("spec.sessionAffinity", "ClientIP"),
                                   ("spec.sessionAffinityConfig", {"clientIP": {"timeoutSeconds": 86401}})],
     [("spec.sessionAffinityConfig.clientIP.timeoutSeconds", INV)]),
    ("affinity config without ClientIP", [("spec.sessionAffinityConfig", {"clientIP": {"timeoutSeconds": 5}})],
     [("spec.sessionAffinityConfig", FORB)]),
    ("externalTrafficPolicy on ClusterIP", [("spec.externalTrafficPolicy", "Local")],
     [("spec.externalTrafficPolicy", INV)]),
    ("externalTrafficPolicy value", [("spec.type", "NodePort"), ("spec.externalTrafficPolicy", "Node")],
     [("spec.externalTrafficPolicy", NS)]),
    ("internalTrafficPolicy value", [("spec.internalTrafficPolicy", "Node")], [("spec.internalTrafficPolicy", NS)]),
    ("externalIP bad", [("spec.externalIPs", ["192.0.2.300"])], [("spec.externalIPs[0]", INV)]),
    ("externalIP unspecified", [("spec.externalIPs", ["192.0.2.1", "0.0.0.0"])], [("spec.externalIPs[1]", INV)]),
    ("externalIP loopback", [("spec.externalIPs", ["127.0.0.1"])], [("spec.externalIPs[0]", INV)]),
    ("externalIP link-local", [("spec.externalIPs", ["169.254.169.254"])], [("spec.externalIPs[0]", INV)]),
    ("externalIP multicast", [("spec.externalIPs", ["239.1.1.1"])], [("spec.externalIPs[0]", INV)]),
    ("source range bad", [("spec.type", "LoadBalancer"), ("spec.loadBalancerSourceRanges", ["10.0.0.0/33"])],
     [("spec.loadBalancerSourceRanges[0]", INV)]),
    ("source range no prefix", [("spec.type", "LoadBalancer"), ("spec.loadBalancerSourceRanges", ["10.0.0.1"])],
     [("spec.loadBalancerSourceRanges[0]", INV)]),
    ("source range on ClusterIP", [("spec.loadBalancerSourceRanges", ["10.0.0.0/8"])],
     [("spec.loadBalancerSourceRanges", FORB)]),
    ("healthCheckNodePort on NodePort", [("spec.type", "NodePort"), ("spec.healthCheckNodePort", 30001)],
     [("spec.healthCheckNodePort", INV)]),
    ("healthCheckNodePort with Cluster", [("spec.type", "LoadBalancer"), ("spec.healthCheckNodePort", 30001)],
     [("spec.healthCheckNodePort", INV)]),
    ("IPv6 family", [("spec.ipFamilies", ["IPv6"])], [("spec.ipFamilies[0]", NS)]),
    ("selector value bad", [("spec.selector", {"app": "web app"})], [("spec.selector", INV)]),
]


def test_valid_service() -> None:
    assert check("Service", SERVICE) == []


@pytest.mark.parametrize(("name", "changes", "expected"), SERVICE_CASES, ids=ids(SERVICE_CASES))
def test_service_invalid(name: str, changes: list[Change], expected: list[tuple[str, str]]) -> None:
    del name
    run_case("Service", SERVICE, changes, expected)


VALID_SERVICE_VARIANTS: list[tuple[str, list[Change]]] = [
    ("headless without ports", [("spec.clusterIP", "None"), ("spec.ports", DELETE)]),
    ("single unnamed port", [("spec.ports", [{"port": 53, "protocol": "UDP"}])]),
    ("same port two protocols", [("spec.ports", [{"name": "dns", "port": 53, "protocol": "UDP"},
                                                 {"name": "dns-tcp", "port": 53, "protocol": "TCP"}])]),
    ("cluster IP set", [("spec.clusterIP", "10.96.0.10")]),
    ("NodePort", [("spec.type", "NodePort"), ("spec.ports[0].nodePort", 30080)]),
    ("LoadBalancer local", [("spec.type", "LoadBalancer"), ("spec.externalTrafficPolicy", "Local"),
                            ("spec.healthCheckNodePort", 32000),
                            ("spec.loadBalancerSourceRanges", ["10.0.0.0/8", " 192.0.2.0/24 "])]),
    ("ClusterIP with external IPs and Local", [("spec.externalIPs", ["192.0.2.10"]),
                                               ("spec.externalTrafficPolicy", "Local")]),
    ("ClientIP affinity", [("spec.sessionAffinity", "ClientIP")]),
    ("nodePort 0 on ClusterIP", [("spec.ports[0].nodePort", 0)]),
    ("no selector", [("spec.selector", DELETE)]),
]


@pytest.mark.parametrize(("name", "changes"), VALID_SERVICE_VARIANTS, ids=[c[0] for c in VALID_SERVICE_VARIANTS])
def test_service_valid_variants(name: str, changes: list[Change]) -> None:
    del name
    run_case("Service", SERVICE, changes, [])


EXTERNAL_NAME = load("Service", """
kind: Service
metadata: {name: db, namespace: shop}
spec: {type: ExternalName, externalName: db.example.com.}
""")


def test_external_name_service() -> None:
    assert check("Service", EXTERNAL_NAME) == []
    run_case("Service", EXTERNAL_NAME, [("spec.externalName", DELETE)], [("spec.externalName", REQ)])
    run_case("Service", EXTERNAL_NAME, [("spec.externalName", "db_1.example.com")], [("spec.externalName", INV)])
    run_case("Service", EXTERNAL_NAME, [("spec.clusterIP", "10.96.0.5")], [("spec.clusterIP", FORB)])
    run_case("Service", EXTERNAL_NAME, [("spec.ipFamilies", ["IPv4"])], [("spec.ipFamilies", FORB)])
    # Ports are optional for ExternalName, and allowed.
    run_case("Service", EXTERNAL_NAME, [("spec.ports", [{"port": 5432}])], [])


def test_service_update_cluster_ip_immutable() -> None:
    old = copy.deepcopy(SERVICE)
    old["spec"]["clusterIP"] = "10.96.0.10"
    old["spec"]["clusterIPs"] = ["10.96.0.10"]
    new = copy.deepcopy(old)
    new["spec"]["ports"][0]["port"] = 8080
    assert check("Service", new, old) == []
    new["spec"]["clusterIP"] = "10.96.0.11"
    new["spec"]["clusterIPs"] = ["10.96.0.11"]
    assert check("Service", new, old) == [("spec.clusterIP", INV)]
    # Empty means "keep": the server carries the allocated IP over.
    new["spec"]["clusterIP"] = ""
    del new["spec"]["clusterIPs"]
    assert check("Service", new, old) == []
    # Changing to ExternalName drops the cluster IP: allowed.
    ext = copy.deepcopy(EXTERNAL_NAME)
    ext["metadata"]["name"] = "web"
    assert check("Service", ext, old) == []
    back = copy.deepcopy(old)
    back["spec"]["clusterIP"] = "10.96.0.99"
    back["spec"]["clusterIPs"] = ["10.96.0.99"]
    assert check("Service", back, ext) == []


# -- Pod -----------------------------------------------------------------------------

POD = load("Pod", """
apiVersion: v1
kind: Pod
metadata: {name: web-7d9c5b6f4-x2k8p, namespace: shop, labels: {app: web}}
spec:
  hostname: web-0
  subdomain: web
  nodeName: node-a.cluster.local
  volumes: [{name: config, configMap: {name: web-config}}]
  initContainers:
  - {name: init, image: "busybox:1.36", command: [sh, -c, "true"]}
  containers:
  - name: web
    image: nginx:1.25
    ports:
    - {name: http, containerPort: 80}
    - {name: metrics, containerPort: 9113, hostPort: 9113}
    env: [{name: MODE, value: prod}, {name: my.setting-1, value: x}]
    volumeMounts: [{name: config, mountPath: /etc/nginx/conf.d}]
    readinessProbe: {httpGet: {path: /healthz, port: http}}
  - name: sidecar
    image: registry.local:5000/sidecar@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef
    ports: [{name: metrics, containerPort: 9114, protocol: UDP}]
  tolerations:
  - {key: node.kubernetes.io/not-ready, operator: Exists, effect: NoExecute, tolerationSeconds: 300}
""")

POD_CASES: list[Case] = [
    ("no containers", [("spec.containers", [])], [("spec.containers", REQ)]),
    ("containers missing", [("spec.containers", DELETE)], [("spec.containers", REQ)]),
    ("container name missing", [("spec.containers[0].name", DELETE)], [("spec.containers[0].name", REQ)]),
    ("container name format", [("spec.containers[0].name", "Web")], [("spec.containers[0].name", INV)]),
    ("container name duplicate", [("spec.containers[1].name", "web")], [("spec.containers[1].name", DUP)]),
    ("container name clashes with init", [("spec.containers[1].name", "init")],
     [("spec.containers[1].name", DUP)]),
    ("image missing", [("spec.containers[1].image", DELETE)], [("spec.containers[1].image", REQ)]),
    ("image whitespace", [("spec.containers[0].image", " nginx")], [("spec.containers[0].image", INV)]),
    ("init image missing", [("spec.initContainers[0].image", "")], [("spec.initContainers[0].image", REQ)]),
    ("containerPort zero", [("spec.containers[0].ports[0].containerPort", 0)],
     [("spec.containers[0].ports[0].containerPort", INV)]),
    ("containerPort missing", [("spec.containers[0].ports[0].containerPort", DELETE)],
     [("spec.containers[0].ports[0].containerPort", REQ)]),
    ("containerPort too big", [("spec.containers[0].ports[0].containerPort", 65536)],
     [("spec.containers[0].ports[0].containerPort", INV)]),
    ("hostPort too big", [("spec.containers[0].ports[1].hostPort", 65536)],
     [("spec.containers[0].ports[1].hostPort", INV)]),
    ("port protocol", [("spec.containers[0].ports[0].protocol", "HTTP")],
     [("spec.containers[0].ports[0].protocol", NS)]),
    ("port name format", [("spec.containers[0].ports[0].name", "http_alt")],
     [("spec.containers[0].ports[0].name", INV)]),
    ("port name too long", [("spec.containers[0].ports[0].name", "http-alternative")],
     [("spec.containers[0].ports[0].name", INV)]),
    ("port name duplicate in container", [("spec.containers[0].ports[1].name", "http")],
     [("spec.containers[0].ports[1].name", DUP)]),
    ("hostPort duplicate", [("spec.containers[1].ports[0]", {"containerPort": 9113, "hostPort": 9113})],
     [("spec.containers[1].ports[0].hostPort", DUP)]),
    ("hostIP bad", [("spec.containers[0].ports[1].hostIP", "0.0.0.300")],
     [("spec.containers[0].ports[1].hostIP", INV)]),
    ("restartPolicy", [("spec.restartPolicy", "Sometimes")], [("spec.restartPolicy", NS)]),
    ("dnsPolicy", [("spec.dnsPolicy", "ClusterLast")], [("spec.dnsPolicy", NS)]),
    ("dnsPolicy None without config", [("spec.dnsPolicy", "None")], [("spec.dnsConfig", REQ)]),
    ("dns nameserver bad", [("spec.dnsConfig", {"nameservers": ["10.96.0.10", "dns"]})],
     [("spec.dnsConfig.nameservers[1]", INV)]),
    ("dns too many nameservers", [("spec.dnsConfig", {"nameservers": ["1.1.1.1", "1.0.0.1", "8.8.8.8", "9.9.9.9"]})],
     [("spec.dnsConfig.nameservers", INV)]),
    ("dns search bad", [("spec.dnsConfig", {"searches": ["svc.cluster.local", "bad_domain"]})],
     [("spec.dnsConfig.searches[1]", INV)]),
    ("hostname", [("spec.hostname", "web.0")], [("spec.hostname", INV)]),
    ("subdomain", [("spec.subdomain", "Web")], [("spec.subdomain", INV)]),
    ("nodeName", [("spec.nodeName", "Node_A")], [("spec.nodeName", INV)]),
    ("activeDeadlineSeconds", [("spec.activeDeadlineSeconds", 0)], [("spec.activeDeadlineSeconds", INV)]),
    ("imagePullPolicy", [("spec.containers[0].imagePullPolicy", "Sometimes")],
     [("spec.containers[0].imagePullPolicy", NS)]),
    ("env name missing", [("spec.containers[0].env[0].name", "")], [("spec.containers[0].env[0].name", REQ)]),
    ("env name with =", [("spec.containers[0].env[0].name", "A=B")], [("spec.containers[0].env[0].name", INV)]),
    ("volumeMount unknown", [("spec.containers[0].volumeMounts[0].name", "data")],
     [("spec.containers[0].volumeMounts[0].name", "FieldValueNotFound")]),
    ("volumeMount path missing", [("spec.containers[0].volumeMounts[0].mountPath", DELETE)],
     [("spec.containers[0].volumeMounts[0].mountPath", REQ)]),
    ("volume name duplicate", [("spec.volumes[1]", {"name": "config", "emptyDir": {}})],
     [("spec.volumes[1].name", DUP)]),
    ("probe port", [("spec.containers[0].readinessProbe.httpGet.port", 0)],
     [("spec.containers[0].readinessProbe.httpGet.port", INV)]),
    ("probe period", [("spec.containers[0].readinessProbe.periodSeconds", 0)],
     [("spec.containers[0].readinessProbe.periodSeconds", INV)]),
    ("toleration operator", [("spec.tolerations[0].operator", "Maybe")], [("spec.tolerations[0].operator", NS)]),
    ("toleration effect", [("spec.tolerations[0].effect", "NoRun")], [("spec.tolerations[0].effect", NS)]),
    ("toleration Exists with value", [("spec.tolerations[0].value", "x")], [("spec.tolerations[0].operator", INV)]),
    ("container not an object", [("spec.containers[1]", "sidecar")], [("spec.containers[1]", INV)]),
    ("hostNetwork port mismatch", [("spec.hostNetwork", True), ("spec.containers[0].ports[1].hostPort", 9000)],
     [("spec.containers[0].ports[1].hostPort", INV)]),
]


def test_valid_pod() -> None:
    assert check("Pod", POD) == []


@pytest.mark.parametrize(("name", "changes", "expected"), POD_CASES, ids=ids(POD_CASES))
def test_pod_invalid(name: str, changes: list[Change], expected: list[tuple[str, str]]) -> None:
    del name
    run_case("Pod", POD, changes, expected)


def test_pod_port_names_may_repeat_across_containers() -> None:
    # Both containers already name a port "metrics": kube checks names per container.
    names = [p["name"] for c in POD["spec"]["containers"] for p in c["ports"]]
    assert names.count("metrics") == 2
    assert check("Pod", POD) == []


def test_pod_update_rules() -> None:
    old = copy.deepcopy(POD)
    del old["spec"]["nodeName"]
    old["spec"]["activeDeadlineSeconds"] = 600

    def update(*changes: Change) -> list[tuple[str, str]]:
        new = copy.deepcopy(old)
        for path, value in changes:
            set_path(new, path, value)
        return check("Pod", new, old)

    assert update() == []
    assert update(("spec.containers[0].image", "nginx:1.26"), ("spec.initContainers[0].image", "busybox:1.37")) == []
    assert update(("spec.nodeName", "node-b")) == []  # binding: from empty to a node
    assert update(("spec.activeDeadlineSeconds", 300)) == []
    assert update(("spec.tolerations[1]", {"key": "dedicated", "operator": "Equal", "value": "web",
                                           "effect": "NoSchedule"})) == []
    assert update(("metadata.labels.version", "2")) == []
    assert update(("spec.containers[0].ports[0].containerPort", 8080)) == [("spec", FORB)]
    assert update(("spec.restartPolicy", "Never")) == [("spec", FORB)]
    assert update(("spec.containers[1]", DELETE)) == [("spec", FORB)]
    assert update(("spec.activeDeadlineSeconds", 900)) == [("spec.activeDeadlineSeconds", INV)]
    assert update(("spec.activeDeadlineSeconds", DELETE)) == [("spec.activeDeadlineSeconds", INV)]
    assert update(("spec.tolerations", [])) == [("spec.tolerations", FORB)]
    bound = copy.deepcopy(old)
    bound["spec"]["nodeName"] = "node-a"
    moved = copy.deepcopy(bound)
    moved["spec"]["nodeName"] = "node-b"
    assert check("Pod", moved, bound) == [("spec", FORB)]


# -- Deployment and ReplicaSet ----------------------------------------------------------

DEPLOYMENT = load("Deployment", """
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: shop, labels: {app: web}}
spec:
  replicas: 3
  selector:
    matchLabels: {app: web}
    matchExpressions: [{key: tier, operator: In, values: [frontend]}]
  strategy: {type: RollingUpdate, rollingUpdate: {maxSurge: 1, maxUnavailable: 0}}
  template:
    metadata: {labels: {app: web, tier: frontend}}
    spec:
      containers:
      - name: web
        image: nginx:1.25
        ports: [{name: http, containerPort: 80}]
""")

WORKLOAD_CASES: list[Case] = [
    ("no selector", [("spec.selector", DELETE)], [("spec.selector", REQ)]),
    ("empty selector", [("spec.selector", {})], [("spec.selector", INV)]),
    ("selector does not match", [("spec.template.metadata.labels.app", "api")],
     [("spec.template.metadata.labels", INV)]),
    ("selector operator", [("spec.selector.matchExpressions[0].operator", "Equals")],
     [("spec.selector.matchExpressions[0].operator", NS)]),
    ("selector In without values", [("spec.selector.matchExpressions[0].values", [])],
     [("spec.selector.matchExpressions[0].values", REQ)]),
    ("selector Exists with values", [("spec.selector.matchExpressions[0].operator", "Exists")],
     [("spec.selector.matchExpressions[0].values", FORB)]),
    ("selector label value", [("spec.selector.matchLabels.app", "web app")], [("spec.selector.matchLabels", INV)]),
    ("negative replicas", [("spec.replicas", -1)], [("spec.replicas", INV)]),
    ("replicas not int", [("spec.replicas", "3")], [("spec.replicas", INV)]),
    ("no template", [("spec.template", DELETE)], [("spec.template", REQ)]),
    ("template container name", [("spec.template.spec.containers[0].name", "Web")],
     [("spec.template.spec.containers[0].name", INV)]),
    ("template container image", [("spec.template.spec.containers[0].image", DELETE)],
     [("spec.template.spec.containers[0].image", REQ)]),
    ("template containerPort", [("spec.template.spec.containers[0].ports[0].containerPort", 0)],
     [("spec.template.spec.containers[0].ports[0].containerPort", INV)]),
    ("template restartPolicy", [("spec.template.spec.restartPolicy", "OnFailure")],
     [("spec.template.spec.restartPolicy", NS)]),
    ("template activeDeadlineSeconds", [("spec.template.spec.activeDeadlineSeconds", 60)],
     [("spec.template.spec.activeDeadlineSeconds", FORB)]),
    ("template label value", [("spec.template.metadata.labels.extra", "a b")],
     [("spec.template.metadata.labels", INV)]),
]

DEPLOYMENT_CASES: list[Case] = [
    ("strategy type", [("spec.strategy.type", "BlueGreen")], [("spec.strategy.type", NS)]),
    ("Recreate with rollingUpdate", [("spec.strategy.type", "Recreate")], [("spec.strategy.rollingUpdate", FORB)]),
    ("both zero", [("spec.strategy.rollingUpdate.maxSurge", 0)],
     [("spec.strategy.rollingUpdate.maxUnavailable", INV)]),
    ("maxSurge bad", [("spec.strategy.rollingUpdate.maxSurge", "1.5")],
     [("spec.strategy.rollingUpdate.maxSurge", INV)]),
    ("maxUnavailable over 100%", [("spec.strategy.rollingUpdate.maxUnavailable", "101%")],
     [("spec.strategy.rollingUpdate.maxUnavailable", INV)]),
    ("maxUnavailable negative", [("spec.strategy.rollingUpdate.maxUnavailable", -1)],
     [("spec.strategy.rollingUpdate.maxUnavailable", INV)]),
    ("revisionHistoryLimit", [("spec.revisionHistoryLimit", -1)], [("spec.revisionHistoryLimit", INV)]),
    ("progress deadline not above minReady", [("spec.minReadySeconds", 600)], [("spec.progressDeadlineSeconds", INV)]),
]


def test_valid_deployment_and_replicaset() -> None:
    assert check("Deployment", DEPLOYMENT) == []
    rs = load("ReplicaSet", yaml.safe_dump({**DEPLOYMENT, "kind": "ReplicaSet"}))
    del rs["spec"]["strategy"]
    assert check("ReplicaSet", rs) == []


@pytest.mark.parametrize(("name", "changes", "expected"), WORKLOAD_CASES + DEPLOYMENT_CASES,
                         ids=ids(WORKLOAD_CASES + DEPLOYMENT_CASES))
def test_deployment_invalid(name: str, changes: list[Change], expected: list[tuple[str, str]]) -> None:
    del name
    run_case("Deployment", DEPLOYMENT, changes, expected)


@pytest.mark.parametrize(("name", "changes", "expected"), WORKLOAD_CASES, ids=ids(WORKLOAD_CASES))
def test_replicaset_invalid(name: str, changes: list[Change], expected: list[tuple[str, str]]) -> None:
    del name
    rs = copy.deepcopy(DEPLOYMENT)
    rs["kind"] = "ReplicaSet"
    for key in ("strategy", "revisionHistoryLimit", "progressDeadlineSeconds"):
        del rs["spec"][key]
    run_case("ReplicaSet", rs, changes, expected)


def test_selector_immutable() -> None:
    new = copy.deepcopy(DEPLOYMENT)
    new["spec"]["replicas"] = 5
    new["spec"]["template"]["spec"]["containers"][0]["image"] = "nginx:1.26"
    assert check("Deployment", new, DEPLOYMENT) == []
    new["spec"]["selector"] = {"matchLabels": {"app": "web"}}
    assert check("Deployment", new, DEPLOYMENT) == [("spec.selector", INV)]


# -- Ingress ---------------------------------------------------------------------------

INGRESS = load("Ingress", """
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: shop, namespace: shop}
spec:
  ingressClassName: nginx
  defaultBackend: {service: {name: default-http, port: {number: 80}}}
  tls: [{hosts: [shop.example.com, "*.shop.example.com"], secretName: shop-tls}]
  rules:
  - host: shop.example.com
    http:
      paths:
      - {path: /, pathType: Prefix, backend: {service: {name: web, port: {number: 80}}}}
      - {path: /api/v1, pathType: Exact, backend: {service: {name: api, port: {name: http}}}}
      - {path: "/static/.+", pathType: ImplementationSpecific,
         backend: {resource: {apiGroup: k8s.example.com, kind: StorageBucket, name: static}}}
  - host: "*.shop.example.com"
    http:
      paths: [{path: /, pathType: Prefix, backend: {service: {name: web, port: {number: 80}}}}]
""")

P0 = "spec.rules[0].http.paths[0]"
INGRESS_CASES: list[Case] = [
    ("host upper", [("spec.rules[0].host", "Shop.example.com")], [("spec.rules[0].host", INV)]),
    ("host IP", [("spec.rules[0].host", "192.0.2.1")], [("spec.rules[0].host", INV)]),
    ("host with port", [("spec.rules[0].host", "shop.example.com:8080")], [("spec.rules[0].host", INV)]),
    ("wildcard inside", [("spec.rules[1].host", "shop.*.example.com")], [("spec.rules[1].host", INV)]),
    ("wildcard partial", [("spec.rules[1].host", "*shop.example.com")], [("spec.rules[1].host", INV)]),
    ("no paths", [("spec.rules[0].http.paths", [])], [("spec.rules[0].http.paths", REQ)]),
    ("relative path", [(f"{P0}.path", "shop")], [(f"{P0}.path", INV)]),
    ("no path with Prefix", [(f"{P0}.path", DELETE)], [(f"{P0}.path", INV)]),
    ("double slash", [(f"{P0}.path", "/a//b")], [(f"{P0}.path", INV)]),
    ("dot-dot segment", [(f"{P0}.path", "/a/../b")], [(f"{P0}.path", INV)]),
    ("dot suffix", [(f"{P0}.path", "/a/.")], [(f"{P0}.path", INV)]),
    ("encoded slash", [(f"{P0}.path", "/a%2Fb")], [(f"{P0}.path", INV)]),
    ("relative ImplementationSpecific", [("spec.rules[0].http.paths[2].path", "static")],
     [("spec.rules[0].http.paths[2].path", INV)]),
    ("no pathType", [(f"{P0}.pathType", DELETE)], [(f"{P0}.pathType", REQ)]),
    ("bad pathType", [(f"{P0}.pathType", "Regex")], [(f"{P0}.pathType", NS)]),
    ("no backend", [(f"{P0}.backend", DELETE)], [(f"{P0}.backend", REQ)]),
    ("empty backend", [(f"{P0}.backend", {})], [(f"{P0}.backend", INV)]),
    ("both backends", [(f"{P0}.backend.resource", {"kind": "Bucket", "name": "b"})], [(f"{P0}.backend", INV)]),
    ("service name missing", [(f"{P0}.backend.service.name", DELETE)], [(f"{P0}.backend.service.name", REQ)]),
    ("service name format", [(f"{P0}.backend.service.name", "web.shop")], [(f"{P0}.backend.service.name", INV)]),
    ("no port", [(f"{P0}.backend.service.port", {})], [(f"{P0}.backend.service.port", REQ)]),
    ("port name and number", [(f"{P0}.backend.service.port.name", "http")], [(f"{P0}.backend.service.port", INV)]),
    ("port number range", [(f"{P0}.backend.service.port.number", 70000)],
     [(f"{P0}.backend.service.port.number", INV)]),
    ("port name format", [("spec.rules[0].http.paths[1].backend.service.port.name", "HTTP")],
     [("spec.rules[0].http.paths[1].backend.service.port.name", INV)]),
    ("resource kind missing", [("spec.rules[0].http.paths[2].backend.resource.kind", DELETE)],
     [("spec.rules[0].http.paths[2].backend.resource.kind", REQ)]),
    ("defaultBackend port", [("spec.defaultBackend.service.port.number", 0)],
     [("spec.defaultBackend.service.port", REQ)]),
    ("tls host", [("spec.tls[0].hosts[1]", "*.*.example.com")], [("spec.tls[0].hosts[1]", INV)]),
    ("tls secretName", [("spec.tls[0].secretName", "Shop_TLS")], [("spec.tls[0].secretName", INV)]),
    ("ingressClassName", [("spec.ingressClassName", "Nginx")], [("spec.ingressClassName", INV)]),
    ("nothing to route", [("spec.rules", DELETE), ("spec.defaultBackend", DELETE)], [("spec", INV)]),
]


def test_valid_ingress() -> None:
    assert check("Ingress", INGRESS) == []
    # Rules alone, defaultBackend alone, a rule without http: all fine.
    run_case("Ingress", INGRESS, [("spec.defaultBackend", DELETE)], [])
    run_case("Ingress", INGRESS, [("spec.rules", DELETE)], [])
    run_case("Ingress", INGRESS, [("spec.rules[2]", {"host": "other.example.com"})], [])
    run_case("Ingress", INGRESS, [("spec.rules[0].host", DELETE)], [])


@pytest.mark.parametrize(("name", "changes", "expected"), INGRESS_CASES, ids=ids(INGRESS_CASES))
def test_ingress_invalid(name: str, changes: list[Change], expected: list[tuple[str, str]]) -> None:
    del name
    run_case("Ingress", INGRESS, changes, expected)


def test_ingress_class() -> None:
    cls = load("IngressClass", "{apiVersion: networking.k8s.io/v1, kind: IngressClass, metadata: {name: nginx},"
                               " spec: {controller: k8s.io/ingress-nginx}}")
    assert check("IngressClass", cls) == []
    run_case("IngressClass", cls, [("spec.controller", "ingress-nginx")], [("spec.controller", INV)])
    run_case("IngressClass", cls, [("spec.controller", DELETE)], [("spec.controller", REQ)])
    moved = copy.deepcopy(cls)
    moved["spec"]["controller"] = "netplane.io/ingress"
    assert check("IngressClass", moved, cls) == [("spec.controller", INV)]


# -- EndpointSlice -------------------------------------------------------------------------

SLICE = load("EndpointSlice", """
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-x7k2p
  namespace: shop
  labels: {kubernetes.io/service-name: web, endpointslice.kubernetes.io/managed-by: endpointslice-controller.k8s.io}
addressType: IPv4
endpoints:
- addresses: [10.244.1.5]
  conditions: {ready: true, serving: true, terminating: false}
  nodeName: node-a
  hostname: web-0
  targetRef: {kind: Pod, name: web-0, namespace: shop}
- addresses: [10.244.2.7]
  conditions: {ready: false}
ports:
- {name: http, port: 8080, protocol: TCP}
- {name: dns, port: 53, protocol: UDP}
""")

SLICE_CASES: list[Case] = [
    ("addressType missing", [("addressType", DELETE)], [("addressType", REQ)]),
    ("addressType bad", [("addressType", "IPv5")], [("addressType", NS)]),
    ("address bad", [("endpoints[0].addresses[0]", "10.244.1.500")], [("endpoints[0].addresses[0]", INV)]),
    ("address wrong family", [("endpoints[1].addresses[0]", "fd00::7")], [("endpoints[1].addresses[0]", INV)]),
    ("address loopback", [("endpoints[1].addresses[0]", "127.0.0.1")], [("endpoints[1].addresses[0]", INV)]),
    ("no addresses", [("endpoints[0].addresses", [])], [("endpoints[0].addresses", REQ)]),
    ("too many addresses", [("endpoints[0].addresses", [f"10.244.1.{i}" for i in range(1, 102)])],
     [("endpoints[0].addresses", "FieldValueTooMany")]),
    ("too many endpoints", [("endpoints", [{"addresses": [f"10.244.{i // 200}.{i % 200 + 1}"]}
                                            for i in range(1001)])],
     [("endpoints", "FieldValueTooMany")]),
    ("condition not bool", [("endpoints[0].conditions.ready", "yes")], [("endpoints[0].conditions.ready", INV)]),
    ("hostname", [("endpoints[0].hostname", "web.0")], [("endpoints[0].hostname", INV)]),
    ("port range", [("ports[0].port", 65536)], [("ports[0].port", INV)]),
    ("port negative", [("ports[0].port", -1)], [("ports[0].port", INV)]),
    ("port protocol", [("ports[0].protocol", "HTTP")], [("ports[0].protocol", NS)]),
    ("port name duplicate", [("ports[1].name", "http")], [("ports[1].name", DUP)]),
    ("two unnamed ports", [("ports[0].name", ""), ("ports[1].name", "")], [("ports[1].name", DUP)]),
    ("port name format", [("ports[0].name", "HTTP")], [("ports[0].name", INV)]),
]


def test_valid_endpointslice() -> None:
    assert check("EndpointSlice", SLICE) == []
    run_case("EndpointSlice", SLICE, [("ports[0].port", None)], [])  # a null port: all ports
    run_case("EndpointSlice", SLICE, [("ports[0].port", 0)], [])
    run_case("EndpointSlice", SLICE, [("endpoints", [])], [])
    run_case("EndpointSlice", SLICE, [("addressType", "IPv6"), ("endpoints", [{"addresses": ["fd00:10::5"]}])], [])
    run_case("EndpointSlice", SLICE, [("addressType", "FQDN"), ("endpoints", [{"addresses": ["db.example.com"]}])],
             [])
    run_case("EndpointSlice", SLICE, [("endpoints", [{"addresses": [f"10.244.{i // 200}.{i % 200 + 1}"]}
                                                     for i in range(1000)])], [])


@pytest.mark.parametrize(("name", "changes", "expected"), SLICE_CASES, ids=ids(SLICE_CASES))
def test_endpointslice_invalid(name: str, changes: list[Change], expected: list[tuple[str, str]]) -> None:
    del name
    run_case("EndpointSlice", SLICE, changes, expected)


def test_endpointslice_address_type_immutable() -> None:
    new = copy.deepcopy(SLICE)
    new["addressType"] = "FQDN"
    new["endpoints"] = [{"addresses": ["db.example.com"]}]
    assert check("EndpointSlice", new, SLICE) == [("addressType", INV)]


# -- Node, Lease, Namespace, Secret ----------------------------------------------------------

NODE = load("Node", """
apiVersion: v1
kind: Node
metadata: {name: node-a, labels: {kubernetes.io/hostname: node-a}}
spec:
  podCIDR: 10.244.1.0/24
  podCIDRs: [10.244.1.0/24]
  taints: [{key: node-role.kubernetes.io/control-plane, effect: NoSchedule}]
status: {capacity: {cpu: "2"}}
""")


def test_node() -> None:
    assert check("Node", NODE) == []
    run_case("Node", NODE, [("spec.podCIDR", "10.244.1.0/40"), ("spec.podCIDRs", DELETE)], [("spec.podCIDR", INV)])
    run_case("Node", NODE, [("spec.podCIDR", "10.244.1.0"), ("spec.podCIDRs", DELETE)], [("spec.podCIDR", INV)])
    run_case("Node", NODE, [("spec.podCIDRs", ["10.244.2.0/24"])], [("spec.podCIDRs[0]", INV)])
    run_case("Node", NODE, [("spec.taints[0].effect", "NoRun")], [("spec.taints[0].effect", NS)])
    run_case("Node", NODE, [("spec.taints[1]", {"key": "node-role.kubernetes.io/control-plane",
                                                "effect": "NoSchedule"})], [("spec.taints[1]", DUP)])
    run_case("Node", NODE, [("spec.unschedulable", "yes")], [("spec.unschedulable", INV)])
    # The pod CIDR is set once.
    bare = copy.deepcopy(NODE)
    bare["spec"] = {}
    assert check("Node", NODE, bare) == []
    moved = copy.deepcopy(NODE)
    moved["spec"]["podCIDR"] = "10.244.2.0/24"
    moved["spec"]["podCIDRs"] = ["10.244.2.0/24"]
    assert check("Node", moved, NODE) == [("spec.podCIDR", FORB), ("spec.podCIDRs", FORB)]


def test_lease() -> None:
    lease = load("Lease", """
apiVersion: coordination.k8s.io/v1
kind: Lease
metadata: {name: node-a, namespace: kube-node-lease}
spec: {holderIdentity: node-a, leaseDurationSeconds: 40, renewTime: "2024-05-01T10:00:00.000000Z"}
""")
    assert check("Lease", lease) == []
    run_case("Lease", lease, [("spec.leaseDurationSeconds", 0)], [("spec.leaseDurationSeconds", INV)])
    run_case("Lease", lease, [("spec.leaseDurationSeconds", -5)], [("spec.leaseDurationSeconds", INV)])
    run_case("Lease", lease, [("spec.leaseDurationSeconds", DELETE)], [])


def test_namespace() -> None:
    ns = load("Namespace", "{apiVersion: v1, kind: Namespace, metadata: {name: shop}}")
    assert check("Namespace", ns) == []
    # The name is also the kubernetes.io/metadata.name label, so a bad name is a bad label too.
    run_case("Namespace", ns, [("metadata.name", "Shop")], [("metadata.name", INV)])
    run_case("Namespace", ns, [("metadata.name", "a" * 64)], [("metadata.name", INV), ("metadata.labels", INV)])
    run_case("Namespace", ns, [("spec.finalizers[1]", "cleanup")], [("spec.finalizers[1]", INV)])
    run_case("Namespace", ns, [("status.phase", "Gone")], [("status.phase", NS)])


SECRET = load("Secret", """
apiVersion: v1
kind: Secret
metadata: {name: shop-tls, namespace: shop}
type: kubernetes.io/tls
data: {tls.crt: LS0tLS1CRUdJTg==, tls.key: LS0tLS1CRUdJTg==}
""")


def test_secret() -> None:
    assert check("Secret", SECRET) == []
    run_case("Secret", SECRET, [("data", {"tls.crt": "LS0tLS1CRUdJTg=="})], [("data[tls.key]", REQ)])
    run_case("Secret", SECRET, [("data", {"tls.crt": "not base64!", "tls.key": "LS0="})], [("data[tls.crt]", INV)])
    run_case("Secret", SECRET, [("type", "kubernetes.io/basic-auth"), ("data", {"other": "eA=="})],
             [("data[username]", REQ)])
    # stringData counts toward the required keys (it becomes data).
    run_case("Secret", SECRET, [("data", {"tls.crt": "LS0="}), ("stringData", {"tls.key": "pem"})], [])
    retyped = copy.deepcopy(SECRET)
    retyped["type"] = "Opaque"
    assert check("Secret", retyped, SECRET) == [("type", INV)]


# -- robustness ----------------------------------------------------------------------------

_KEYS = st.sampled_from([
    "metadata", "name", "namespace", "labels", "annotations", "spec", "ports", "port", "targetPort",
    "nodePort", "protocol", "type", "clusterIP", "clusterIPs", "selector", "matchLabels", "matchExpressions",
    "key", "operator", "values", "template", "containers", "initContainers", "image", "containerPort",
    "hostPort", "rules", "host", "http", "paths", "path", "pathType", "backend", "service", "number",
    "endpoints", "addresses", "addressType", "podCIDR", "leaseDurationSeconds", "data", "tls", "hosts",
    "sessionAffinity", "sessionAffinityConfig", "clientIP", "timeoutSeconds", "externalIPs", "strategy",
    "rollingUpdate", "maxSurge", "dnsConfig", "nameservers", "tolerations", "volumes", "volumeMounts",
    "env", "finalizers", "ownerReferences", "externalName", "defaultBackend", "replicas", "status", "phase",
])
_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-70000, 70000), st.text(max_size=12),
                     st.sampled_from(["None", "ClusterIP", "NodePort", "TCP", "In", "Prefix", "10.0.0.1", "web"]))
_JSON = st.recursive(_SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                       st.dictionaries(_KEYS, inner, max_size=5)), max_leaves=30)


@pytest.mark.parametrize("info", RESOURCES, ids=[r.kind for r in RESOURCES])
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(obj=st.dictionaries(_KEYS, _JSON, max_size=6), old=st.dictionaries(_KEYS, _JSON, max_size=4))
def test_garbage_never_raises(info: ResourceInfo, obj: dict[str, Any], old: dict[str, Any]) -> None:
    apply_defaults(info, obj)
    for cause in validate(info, obj, old):
        assert isinstance(cause, Cause) and cause.message


def test_service_type_change_after_dropping_type_dependent_fields() -> None:
    old = copy.deepcopy(SERVICE)
    old["spec"].update(type="LoadBalancer", clusterIP="10.96.0.20", clusterIPs=["10.96.0.20"],
                       externalTrafficPolicy="Local", healthCheckNodePort=32100)
    old["spec"]["ports"][0]["nodePort"] = 30080
    old["spec"]["ports"][1]["nodePort"] = 30443
    apply_defaults(KINDS["Service"], old)
    assert check("Service", old) == []
    new = copy.deepcopy(old)
    new["spec"]["type"] = "ClusterIP"
    # As stored, the fields of the old type make the new one invalid ...
    assert ("spec.externalTrafficPolicy", INV) in check("Service", new, old)
    # ... which is why the server drops them first, as kube does.
    drop_type_dependent_fields(new, old)
    apply_defaults(KINDS["Service"], new)
    assert check("Service", new, old) == []
