"""Kubernetes protobuf request bodies -> the JSON objects kube would have seen.

The fixtures are real kubectl 1.37 bodies (fixtures/capture_protobuf.py records them through a
proxy in front of a real server), each next to the same command's `--dry-run=client -o json`
output: the decoding must equal what kubectl would have sent as JSON. Fields that no kubectl
command sends as protobuf (probes, volumes, env sources, times, ...) are checked against bodies
built here with field numbers written out from k8s.io/api's generated.proto files.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from netplane.api.protobuf import KINDS, MAGIC, ProtobufError, decode_object, parse_schema
from netplane.api.resources import RESOURCES

FIXTURES = Path(__file__).parent / "fixtures"
CAPTURED = sorted(p.stem for p in FIXTURES.glob("*.bin"))


# -- a tiny encoder, for bodies kubectl never sends ---------------------------------------------


def varint(n: int) -> bytes:
    n &= (1 << 64) - 1  # negative numbers are sign-extended to 64 bits, as Go writes them
    out = bytearray()
    while True:
        low, n = n & 0x7F, n >> 7
        out.append(low | (0x80 if n else 0))
        if not n:
            return bytes(out)


def vi(num: int, value: int) -> bytes:
    return varint(num << 3) + varint(value)


def ld(num: int, payload: bytes) -> bytes:
    return varint(num << 3 | 2) + varint(len(payload)) + payload


def s(num: int, text: str) -> bytes:
    return ld(num, text.encode())


def m(num: int, *parts: bytes) -> bytes:
    return ld(num, b"".join(parts))


def envelope(api_version: str, kind: str, *raw: bytes) -> bytes:
    return MAGIC + m(1, s(1, api_version), s(2, kind)) + m(2, *raw)


# -- real kubectl bodies ------------------------------------------------------------------------


def test_fixtures_cover_the_typed_commands() -> None:
    assert {"namespace", "configmap", "secret", "deployment", "deployment_zero_replicas", "service_clusterip",
            "service_nodeport", "ingress"} <= set(CAPTURED)


@pytest.mark.parametrize("case", CAPTURED)
def test_kubectl_body_decodes_to_what_kubectl_would_send_as_json(case: str) -> None:
    body = (FIXTURES / f"{case}.bin").read_bytes()
    expected = json.loads((FIXTURES / f"{case}.json").read_text())
    assert decode_object(body) == expected


def fixture(case: str) -> dict[str, Any]:
    return decode_object((FIXTURES / f"{case}.bin").read_bytes())


def test_explicit_zero_replicas_survives() -> None:
    # replicas is a pointer: Go writes it only when set, and 0 then means "scale to zero", not "default".
    assert fixture("deployment_zero_replicas")["spec"]["replicas"] == 0
    assert fixture("deployment")["spec"]["replicas"] == 3


def test_secret_data_is_base64_and_annotations_are_kept() -> None:
    assert fixture("secret")["data"] == {"k": "dg=="}
    secret = fixture("secret_docker_registry")
    assert secret["type"] == "kubernetes.io/dockerconfigjson"
    assert set(secret["data"]) == {".dockerconfigjson"}
    saved = fixture("configmap_save_config")["metadata"]["annotations"]
    assert json.loads(saved["kubectl.kubernetes.io/last-applied-configuration"])["data"] == {"k": "v"}


def test_empty_non_pointer_fields_are_left_out_like_kubes_json() -> None:
    # kubectl writes generateName, namespace, uid, ... as empty strings and generation as 0.
    assert fixture("namespace") == {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "x"},
                                    "spec": {}, "status": {}}


# -- bodies built here --------------------------------------------------------------------------

POD_META = m(1, s(1, "p"), s(2, "p-"), s(3, "team"), vi(7, 0),
             m(8, vi(1, 1_700_000_000), vi(2, 5)),
             m(11, s(1, "app"), s(2, "p")), m(12, s(1, "note"), s(2, "")),
             m(13, s(5, "apps/v1"), s(1, "ReplicaSet"), s(3, "rs"), s(4, "uid-1"), vi(6, 1), vi(7, 0)),
             s(14, "example.com/cleanup"))

CONTAINER = m(2, s(1, "app"), s(2, "busybox:1.36"), s(3, "sh"), s(3, "-c"), s(4, "sleep 1"), s(5, "/work"),
              m(6, s(1, "http"), vi(2, 0), vi(3, 8080), s(4, "TCP")),
              m(7, s(1, "A"), s(2, "1")),
              m(7, s(1, "NODE"), m(3, m(1, s(1, "v1"), s(2, "spec.nodeName")))),
              m(7, s(1, "CFG"), m(3, m(3, m(1, s(1, "settings")), s(2, "k"), vi(3, 0)))),
              m(7, s(1, "PW"), m(3, m(4, m(1, s(1, "creds")), s(2, "password")))),
              m(8, m(1, s(1, "cpu"), m(2, s(1, "500m"))), m(2, s(1, "memory"), m(2, s(1, "64Mi")))),
              m(9, s(1, "cache"), vi(2, 1), s(3, "/cache")),
              m(10, m(1, m(2, s(1, "/healthz"), m(2, vi(1, 1), s(3, "http")))), vi(2, 5), vi(6, 3)),
              m(11, m(1, m(3, m(1, vi(1, 0), vi(2, 8080)))), vi(4, 10)),
              m(22, m(1, m(1, s(1, "true")))),
              m(15, vi(4, 0), vi(5, 1)),
              vi(16, 0), vi(18, 0))

POD_SPEC = m(2,
             m(1, s(1, "cache"), m(2, m(2))),
             m(1, s(1, "cfg"), m(2, m(19, m(1, s(1, "settings")), m(2, s(1, "k"), s(2, "k.txt")), vi(3, 0)))),
             m(1, s(1, "sec"), m(2, m(6, s(1, "creds"), vi(4, 1)))),
             CONTAINER,
             s(3, "Never"), vi(4, 0), s(6, "ClusterFirst"), m(7, s(1, "disk"), s(2, "ssd")), s(8, "robot"),
             s(10, "node-1"), vi(11, 0), s(16, "p0"), s(17, "sub"),
             m(22, s(1, "k"), s(2, "Exists"), s(4, "NoExecute"), vi(5, 30)),
             m(14, ld(4, varint(1) + varint(2)), vi(4, 3), vi(5, 2000)))


def test_pod_with_probes_volumes_env_sources_and_resources() -> None:
    pod = decode_object(envelope("v1", "Pod", POD_META, POD_SPEC, m(3)))
    assert pod == {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "p", "generateName": "p-", "namespace": "team",
            "creationTimestamp": "2023-11-14T22:13:20Z",
            "labels": {"app": "p"}, "annotations": {"note": ""},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "rs", "uid": "uid-1",
                                 "controller": True, "blockOwnerDeletion": False}],
            "finalizers": ["example.com/cleanup"],
        },
        "spec": {
            "volumes": [
                {"name": "cache", "emptyDir": {}},
                {"name": "cfg", "configMap": {"name": "settings", "items": [{"key": "k", "path": "k.txt"}],
                                              "defaultMode": 0}},
                {"name": "sec", "secret": {"secretName": "creds", "optional": True}},
            ],
            "containers": [{
                "name": "app", "image": "busybox:1.36", "command": ["sh", "-c"], "args": ["sleep 1"],
                "workingDir": "/work",
                "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}],
                "env": [
                    {"name": "A", "value": "1"},
                    {"name": "NODE", "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "spec.nodeName"}}},
                    {"name": "CFG", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "k",
                                                                      "optional": False}}},
                    {"name": "PW", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "password"}}},
                ],
                "resources": {"limits": {"cpu": "500m"}, "requests": {"memory": "64Mi"}},
                "volumeMounts": [{"name": "cache", "readOnly": True, "mountPath": "/cache"}],
                "livenessProbe": {"httpGet": {"path": "/healthz", "port": "http"}, "initialDelaySeconds": 5,
                                  "failureThreshold": 3},
                "readinessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 10},
                "startupProbe": {"exec": {"command": ["true"]}},
                "securityContext": {"runAsUser": 0, "runAsNonRoot": True},
            }],
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 0,
            "dnsPolicy": "ClusterFirst",
            "nodeSelector": {"disk": "ssd"},
            "serviceAccountName": "robot",
            "nodeName": "node-1",
            "hostname": "p0",
            "subdomain": "sub",
            "tolerations": [{"key": "k", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 30}],
            "securityContext": {"supplementalGroups": [1, 2, 3], "fsGroup": 2000},
        },
        "status": {},
    }


def test_deployment_strategy_and_int_or_string() -> None:
    spec = m(2, vi(1, 2), m(2, m(1, s(1, "app"), s(2, "web"))),
             m(3, m(1, m(11, s(1, "app"), s(2, "web"))), m(2, m(2, s(1, "c"), s(2, "nginx")))),
             m(4, s(1, "RollingUpdate"), m(2, m(1, vi(1, 1), s(3, "25%")), m(2, vi(1, 0), vi(2, 1)))),
             vi(5, 0), vi(6, 0), vi(7, 0), vi(9, 600))
    deployment = decode_object(envelope("apps/v1", "Deployment", m(1, s(1, "web")), spec))
    assert deployment["spec"] == {
        "replicas": 2,
        "selector": {"matchLabels": {"app": "web"}},
        "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c",
                                                                                     "image": "nginx"}]}},
        "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "25%", "maxSurge": 1}},
        "revisionHistoryLimit": 0,
        "progressDeadlineSeconds": 600,
    }


def test_service_spec_fields() -> None:
    spec = m(2, m(1, s(1, "dns"), s(2, "UDP"), vi(3, 53), m(4, vi(1, 0), vi(2, 5353)), vi(5, 30053)),
             m(2, s(1, "app"), s(2, "dns")), s(3, "10.96.0.10"), s(18, "10.96.0.10"), s(4, "NodePort"),
             s(5, "192.0.2.7"), s(7, "ClientIP"), s(11, "Local"), vi(13, 1),
             m(14, m(1, vi(1, 600))), s(19, "IPv4"), s(17, "SingleStack"), s(22, "Cluster"))
    svc = decode_object(envelope("v1", "Service", m(1, s(1, "dns")), spec))
    assert svc["spec"] == {
        "ports": [{"name": "dns", "protocol": "UDP", "port": 53, "targetPort": 5353, "nodePort": 30053}],
        "selector": {"app": "dns"}, "clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"], "type": "NodePort",
        "externalIPs": ["192.0.2.7"], "sessionAffinity": "ClientIP", "externalTrafficPolicy": "Local",
        "publishNotReadyAddresses": True, "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 600}},
        "ipFamilies": ["IPv4"], "ipFamilyPolicy": "SingleStack", "internalTrafficPolicy": "Cluster",
    }


def test_event_times_and_negative_integers() -> None:
    event = decode_object(envelope(
        "v1", "Event", m(1, s(1, "e"), vi(7, -2)), m(2, s(1, "Pod"), s(3, "p")), s(3, "Failed"),
        m(6, vi(1, 0), vi(2, 0)), m(7, vi(1, 86_400), vi(2, 999_999_999)), vi(8, -1),
        m(10, vi(1, 86_400), vi(2, 123_456_789)), s(14, "kubelet"), s(15, "")))
    assert event == {
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"name": "e", "generation": -2},
        "involvedObject": {"kind": "Pod", "name": "p"},
        "reason": "Failed",
        # A zero Time is left out, as kube's JSON does; Time drops sub-seconds, MicroTime keeps microseconds.
        "lastTimestamp": "1970-01-02T00:00:00Z",
        "count": -1,
        "eventTime": "1970-01-02T00:00:00.123456Z",
        "reportingComponent": "kubelet",
        "reportingInstance": "",
    }


def test_pointer_zero_values_in_lease_and_endpointslice() -> None:
    lease = decode_object(envelope("coordination.k8s.io/v1", "Lease", m(1, s(1, "node-1")),
                                   m(2, s(1, ""), vi(2, 40), m(4, vi(1, 1), vi(2, 5000)), vi(5, 0))))
    assert lease["spec"] == {"holderIdentity": "", "leaseDurationSeconds": 40,
                             "renewTime": "1970-01-01T00:00:01.000005Z", "leaseTransitions": 0}
    eps = decode_object(envelope(
        "discovery.k8s.io/v1", "EndpointSlice", m(1, s(1, "web-abc")), s(4, "IPv4"),
        m(2, s(1, "10.244.1.5"), m(2, vi(1, 0), vi(2, 1)), s(6, "node-1"), m(4, s(1, "Pod"), s(3, "web-1"))),
        m(3, s(1, ""), s(2, "TCP"), vi(3, 80))))
    assert eps == {
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "metadata": {"name": "web-abc"},
        "addressType": "IPv4",
        "endpoints": [{"addresses": ["10.244.1.5"], "conditions": {"ready": False, "serving": True},
                       "nodeName": "node-1", "targetRef": {"kind": "Pod", "name": "web-1"}}],
        "ports": [{"name": "", "protocol": "TCP", "port": 80}],
    }


def test_configmap_binary_data_and_node_fields() -> None:
    cm = decode_object(envelope("v1", "ConfigMap", m(1, s(1, "c")), m(3, s(1, "bin"), ld(2, b"\x00\xff")),
                                vi(4, 1)))
    assert cm["binaryData"] == {"bin": "AP8="} and cm["immutable"] is True
    node = decode_object(envelope(
        "v1", "Node", m(1, s(1, "n1")),
        m(2, s(1, "10.244.1.0/24"), s(7, "10.244.1.0/24"), m(5, s(1, "dedicated"), s(3, "NoSchedule"))),
        m(3, m(1, s(1, "cpu"), m(2, s(1, "2"))), m(5, s(1, "InternalIP"), s(2, "192.0.2.1")),
          m(4, s(1, "Ready"), s(2, "True"), m(3, vi(1, 60))), m(6, m(1, vi(1, 10250))))))
    assert node["spec"] == {"podCIDR": "10.244.1.0/24", "podCIDRs": ["10.244.1.0/24"],
                            "taints": [{"key": "dedicated", "effect": "NoSchedule"}]}
    assert node["status"] == {
        "capacity": {"cpu": "2"}, "addresses": [{"type": "InternalIP", "address": "192.0.2.1"}],
        "conditions": [{"type": "Ready", "status": "True", "lastHeartbeatTime": "1970-01-01T00:01:00Z"}],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
    }


def test_unknown_fields_are_skipped_at_every_level() -> None:
    unknown = vi(99, 7) + varint(98 << 3 | 1) + b"\x00" * 8 + varint(97 << 3 | 5) + b"\x00" * 4 + s(96, "x")
    body = envelope("v1", "Namespace", m(1, s(1, "x"), unknown), m(2, unknown), unknown)
    assert decode_object(body + s(9, "trailing envelope field")) == {
        "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "x"}, "spec": {}}


def test_a_repeated_singular_message_is_merged() -> None:
    # Protobuf merges repeated occurrences of a singular message field; later scalars win.
    body = envelope("v1", "ConfigMap", m(1, s(1, "first")), m(1, s(1, "c"), m(11, s(1, "a"), s(2, "b"))))
    assert decode_object(body)["metadata"] == {"name": "c", "labels": {"a": "b"}}


def test_ingress_class_and_replicaset() -> None:
    ic = decode_object(envelope("networking.k8s.io/v1", "IngressClass", m(1, s(1, "nginx")),
                                m(2, s(1, "k8s.io/ingress-nginx"),
                                  m(2, s(1, "k8s.example.com"), s(2, "Params"), s(3, "p"), s(4, "Cluster")))))
    assert ic["spec"] == {"controller": "k8s.io/ingress-nginx", "parameters": {
        "apiGroup": "k8s.example.com", "kind": "Params", "name": "p", "scope": "Cluster"}}
    rs = decode_object(envelope("apps/v1", "ReplicaSet", m(1, s(1, "rs")), m(2, vi(1, 0), vi(4, 0)),
                                m(3, vi(1, 0), vi(3, 4))))
    assert rs["spec"] == {"replicas": 0}
    assert rs["status"] == {"replicas": 0, "observedGeneration": 4}


# -- malformed bodies ---------------------------------------------------------------------------

TYPE_META = m(1, s(1, "v1"), s(2, "ConfigMap"))


@pytest.mark.parametrize(("body", "message"), [
    (b"", "does not start with"),
    (b'{"kind": "ConfigMap"}', "does not start with"),
    (MAGIC + b"\x0a", "ends inside a varint"),
    (MAGIC + b"\x12\x05ab", "claims 5 bytes but only 2 remain"),
    (MAGIC + b"\x0b", "unsupported wire type 3"),
    (MAGIC + b"\x00\x00", "invalid field number 0"),
    (MAGIC + b"\x08" + b"\xff" * 11, "longer than 10 bytes"),
    (MAGIC + TYPE_META + b"\x11\x00", "field 2 is truncated"),
    (envelope("v1", "ConfigMap", m(1, ld(1, b"\xff\xfe"))), "not valid UTF-8"),
    (envelope("v1", "ConfigMap", vi(1, 5)), "ConfigMap.metadata: wire type 0 where 2 was expected"),
    (envelope("v1", "ConfigMap", m(1, vi(11, 1))), "ConfigMap.metadata.labels: wire type 0"),
    (envelope("v1", "Pod", m(2, m(2, vi(1, 5)))), "Pod.spec.containers.name: wire type 0 where 2 was expected"),
    (envelope("batch/v1", "Job"), "Job in batch/v1 cannot be sent as protobuf"),
    (MAGIC + m(2), "names no apiVersion and kind"),
    (MAGIC + TYPE_META + m(2) + s(3, "gzip"), "contentEncoding 'gzip' is not supported"),
    (MAGIC + TYPE_META + m(2) + s(4, "application/json"), "not protobuf"),
    (MAGIC + TYPE_META, "carries no object"),
])
def test_malformed_bodies_raise_a_clear_protobuf_error(body: bytes, message: str) -> None:
    with pytest.raises(ProtobufError, match=message.replace("(", r"\(")):
        decode_object(body)


def test_protobuf_error_is_a_value_error() -> None:
    # The server maps ValueErrors from body decoding to 400 Bad Request.
    assert issubclass(ProtobufError, ValueError)


# -- the schema table ---------------------------------------------------------------------------


def test_every_stored_kind_has_a_message() -> None:
    assert set(KINDS) == {(r.api_version, r.kind) for r in RESOURCES}


def test_schema_text_errors_are_caught_at_import() -> None:
    with pytest.raises(ValueError, match="unknown message type Nope"):
        parse_schema("A: 1 x Nope")
    with pytest.raises(ValueError, match="field 1 appears twice"):
        parse_schema("A: 1 x; 1 y")
    assert parse_schema("A: 1 x; 2 y []B; 3 - B\nB: 1 z int32!")["B"][1].keep_zero
