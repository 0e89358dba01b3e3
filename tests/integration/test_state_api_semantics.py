"""State server semantics over raw HTTP: bad input, allocation, controllers, restarts."""

from __future__ import annotations

import json
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.support.server import NETPLANE, ServerProcess, start_server


def call(url: str, method: str = "GET", body: Any = None, ctype: str = "application/json",
         raw: bytes | None = None) -> tuple[int, Any]:
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": ctype})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def svc(name: str, **spec: Any) -> dict[str, Any]:
    spec.setdefault("ports", [{"port": 80}])
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name}, "spec": spec}


def test_garbage_bodies_get_400_and_store_nothing(state_server: ServerProcess) -> None:
    base = state_server.url + "/api/v1/namespaces/default/services"
    code, st = call(base, "POST", raw=b"{not json")
    assert code == 400 and st["kind"] == "Status" and st["reason"] == "BadRequest"
    code, st = call(base, "POST", raw=b"[1, 2]")
    assert code == 400
    # kubectl's typed commands send protobuf: a body without kube's envelope is a bad request.
    code, st = call(base, "POST", raw=b"\x00\x01", ctype="application/vnd.kubernetes.protobuf")
    assert code == 400 and st["reason"] == "BadRequest"
    code, st = call(base, "POST", raw=b"<svc/>", ctype="application/xml")
    assert code == 415 and st["reason"] == "UnsupportedMediaType"
    code, st = call(base, "POST", {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x"}})
    assert code == 400 and "kind" in st["message"]
    code, lst = call(base)
    assert [i["metadata"]["name"] for i in lst["items"]] == ["kubernetes"]


def test_bodies_over_the_size_limit_get_413_and_store_nothing(state_server: ServerProcess) -> None:
    base = state_server.url + "/api/v1/namespaces/default/configmaps"
    big = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "big"}, "data": {"x": "y" * (3 << 20)}}
    code, st = call(base, "POST", big)
    assert code == 413 and st["kind"] == "Status" and st["reason"] == "RequestEntityTooLarge"
    assert call(base + "/big")[0] == 404
    # Under kube-apiserver's 3 MiB request limit the body is read and validated: 2 MiB is past a
    # ConfigMap's own 1 MiB limit (422), not past the request limit (aiohttp's default is 1 MiB).
    big["data"]["x"] = "y" * (2 << 20)
    code, st = call(base, "POST", big)
    assert code == 422 and "1048576" in st["message"], st


def _raw_post(url: str, path: str, body: bytes, expect: str) -> tuple[bytes, bytes]:
    """POST with an Expect header over a raw socket: (what came before the body was sent, the rest)."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {len(body)}\r\nExpect: {expect}\r\nConnection: close\r\n\r\n".encode())
        interim = b""
        while b"\r\n\r\n" not in interim:
            chunk = sock.recv(4096)
            if not chunk:
                return interim, b""
            interim += chunk
        if not interim.startswith(b"HTTP/1.1 100"):
            return interim, b""
        sock.sendall(body)
        rest = b""
        while chunk := sock.recv(65536):
            rest += chunk
    return interim, rest


def test_expect_100_continue_is_answered_before_the_body(state_server: ServerProcess) -> None:
    # curl sends "Expect: 100-continue" for large bodies and waits for the 100 before sending them.
    body = json.dumps({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "expect"}}).encode()
    interim, rest = _raw_post(state_server.url, "/api/v1/namespaces/default/configmaps", body, "100-continue")
    assert interim.startswith(b"HTTP/1.1 100 Continue"), interim
    assert rest.startswith(b"HTTP/1.1 201"), rest[:200]
    status, _ = call(state_server.url + "/api/v1/namespaces/default/configmaps/expect")
    assert status == 200
    interim, _ = _raw_post(state_server.url, "/api/v1/namespaces/default/configmaps", body, "something-else")
    assert interim.startswith(b"HTTP/1.1 417"), interim


def test_unknown_paths_and_methods(state_server: ServerProcess) -> None:
    code, st = call(state_server.url + "/api/v1/widgets")
    assert code == 404 and st["kind"] == "Status"
    code, st = call(state_server.url + "/apis/nope.example.com/v1")
    assert code == 404
    code, st = call(state_server.url + "/version", "POST", {})
    assert code == 405 and st["reason"] == "MethodNotAllowed"


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"ports": [{"port": 0}]}, "spec.ports[0].port"),
        ({"ports": [{"port": 80, "protocol": "ICMP"}]}, "spec.ports[0].protocol"),
        ({"ports": [{"port": 80, "name": "a"}, {"port": 81, "name": "a"}]}, "spec.ports[1].name"),
        ({"ports": [{"port": 80}, {"port": 81}]}, "spec.ports[0].name"),
        ({"type": "Magic"}, "spec.type"),
        ({"sessionAffinity": "Sticky"}, "spec.sessionAffinity"),
        ({"clusterIP": "10.96.300.1"}, "spec.clusterIP"),
        ({"ports": [{"port": 80, "targetPort": "Not_A_Name"}]}, "spec.ports[0].targetPort"),
        ({"externalIPs": ["nope"]}, "spec.externalIPs[0]"),
    ],
)
def test_invalid_services_get_422_naming_the_field(state_server: ServerProcess, spec: dict[str, Any],
                                                    field: str) -> None:
    code, st = call(state_server.url + "/api/v1/namespaces/default/services", "POST", svc("bad", **spec))
    assert code == 422, st
    assert st["reason"] == "Invalid"
    assert field in [c["field"] for c in st["details"]["causes"]], st
    code, _ = call(state_server.url + "/api/v1/namespaces/default/services/bad")
    assert code == 404


def test_invalid_ingress_gets_422(state_server: ServerProcess) -> None:
    ing = {
        "apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": {"name": "i"},
        "spec": {"rules": [{"host": "Bad_Host", "http": {"paths": [
            {"path": "nope", "pathType": "Sideways", "backend": {"service": {"name": "s", "port": {"number": 80}}}}
        ]}}]},
    }
    code, st = call(state_server.url + "/apis/networking.k8s.io/v1/namespaces/default/ingresses", "POST", ing)
    assert code == 422
    fields = {c["field"] for c in st["details"]["causes"]}
    assert "spec.rules[0].host" in fields
    assert "spec.rules[0].http.paths[0].pathType" in fields


def test_cluster_ip_and_node_port_allocation(state_server: ServerProcess) -> None:
    base = state_server.url + "/api/v1/namespaces/default/services"
    code, a = call(base, "POST", svc("a", clusterIP="10.96.0.50", type="NodePort",
                                      ports=[{"port": 80, "nodePort": 30080}]))
    assert code == 201 and a["spec"]["clusterIP"] == "10.96.0.50" and a["spec"]["ports"][0]["nodePort"] == 30080
    code, st = call(base, "POST", svc("b", clusterIP="10.96.0.50"))
    assert code == 422 and "already allocated" in st["message"]
    code, st = call(base, "POST", svc("c", clusterIP="192.168.0.1"))
    assert code == 422 and "range" in st["message"]
    code, st = call(base, "POST", svc("d", type="NodePort", ports=[{"port": 80, "nodePort": 30080}]))
    assert code == 422 and "spec.ports[0].nodePort" in [c["field"] for c in st["details"]["causes"]]
    code, st = call(base, "POST", svc("e", type="NodePort", ports=[{"port": 80, "nodePort": 20000}]))
    assert code == 422
    code, auto = call(base, "POST", svc("f", type="LoadBalancer", externalTrafficPolicy="Local"))
    assert code == 201
    assert 30000 <= auto["spec"]["ports"][0]["nodePort"] <= 32767
    assert 30000 <= auto["spec"]["healthCheckNodePort"] <= 32767
    # Deleting frees the address and the port for the next taker.
    assert call(base + "/a", "DELETE")[0] == 200
    code, again = call(base, "POST", svc("g", clusterIP="10.96.0.50", type="NodePort",
                                          ports=[{"port": 80, "nodePort": 30080}]))
    assert code == 201, again
    # Headless and ExternalName services get no address.
    code, hl = call(base, "POST", svc("h", clusterIP="None"))
    assert code == 201 and hl["spec"]["clusterIP"] == "None"
    code, en = call(base, "POST", {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "x"},
                                   "spec": {"type": "ExternalName", "externalName": "example.com"}})
    assert code == 201 and "clusterIP" not in en["spec"]


def test_node_pod_cidrs(state_server: ServerProcess) -> None:
    base = state_server.url + "/api/v1/nodes"
    cidrs = []
    for n in ("n1", "n2"):
        code, node = call(base, "POST", {"apiVersion": "v1", "kind": "Node", "metadata": {"name": n}})
        assert code == 201
        cidrs.append(node["spec"]["podCIDR"])
    assert cidrs == ["10.244.0.0/24", "10.244.1.0/24"]
    call(base + "/n1", "DELETE")
    code, node = call(base, "POST", {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n3"}})
    assert node["spec"]["podCIDR"] == "10.244.0.0/24"


def _pod(name: str, ip: str, ready: bool, labels: dict[str, str], node: str = "n1") -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": labels},
            "spec": {"nodeName": node, "containers": [{"name": "c", "image": "bb",
                                                       "ports": [{"name": "http", "containerPort": 8080}]}]},
            "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
                       "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}}


def _slices(url: str, name: str) -> list[dict[str, Any]]:
    _, lst = call(url + "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices"
                  f"?labelSelector=kubernetes.io/service-name%3D{name}")
    return lst["items"]


def _wait(pred: Any, timeout: float = 5.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.02)


def test_endpointslice_controller(state_server: ServerProcess) -> None:
    url = state_server.url
    code, _ = call(url + "/api/v1/namespaces/default/services", "POST",
                   svc("web", selector={"app": "web"}, ports=[{"name": "http", "port": 80, "targetPort": "http"}]))
    assert code == 201
    for name, ip, ready in (("p1", "10.244.0.5", True), ("p2", "10.244.0.6", False)):
        pod = _pod(name, ip, ready, {"app": "web"})
        code, created = call(url + "/api/v1/namespaces/default/pods", "POST", pod)
        assert code == 201
        created["status"] = pod["status"]
        code, _ = call(url + f"/api/v1/namespaces/default/pods/{name}/status", "PUT", created)
        assert code == 200

    def ready_view() -> Any:
        sl = _slices(url, "web")
        eps = sorted((e["addresses"][0], e["conditions"]["ready"]) for s in sl for e in s["endpoints"])
        return sl if eps == [("10.244.0.5", True), ("10.244.0.6", False)] else None

    sl = _wait(ready_view)
    assert sl[0]["ports"] == [{"name": "http", "port": 8080, "protocol": "TCP"}]
    assert sl[0]["metadata"]["labels"]["endpointslice.kubernetes.io/managed-by"] == "endpointslice-controller.k8s.io"
    assert sl[0]["metadata"]["ownerReferences"][0]["kind"] == "Service"
    t0 = time.monotonic()
    call(url + "/api/v1/namespaces/default/pods/p1", "DELETE", {"gracePeriodSeconds": 0})
    _wait(lambda: [e["addresses"][0] for s in _slices(url, "web") for e in s["endpoints"]] == ["10.244.0.6"])
    assert time.monotonic() - t0 < 2.0
    call(url + "/api/v1/namespaces/default/services/web", "DELETE")
    _wait(lambda: _slices(url, "web") == [])


def test_namespace_deletion_removes_contents(state_server: ServerProcess) -> None:
    url = state_server.url
    assert call(url + "/api/v1/namespaces", "POST", {"metadata": {"name": "team"}})[0] == 201
    assert call(url + "/api/v1/namespaces/team/configmaps", "POST", {"metadata": {"name": "c"}})[0] == 201
    code, _ = call(url + "/api/v1/namespaces/team", "DELETE")
    assert code == 200
    assert call(url + "/api/v1/namespaces/team/configmaps/c")[0] == 404
    code, _ = call(url + "/api/v1/namespaces/default", "DELETE")
    assert code == 403


def test_owner_references_cascade(state_server: ServerProcess) -> None:
    url = state_server.url
    _, owner = call(url + "/api/v1/namespaces/default/configmaps", "POST", {"metadata": {"name": "owner"}})
    ref = {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner["metadata"]["uid"]}
    dep = {"metadata": {"name": "dep", "ownerReferences": [ref]}}
    call(url + "/api/v1/namespaces/default/configmaps", "POST", dep)
    call(url + "/api/v1/namespaces/default/configmaps/owner", "DELETE")
    _wait(lambda: call(url + "/api/v1/namespaces/default/configmaps/dep")[0] == 404)


def test_dependent_created_after_its_owner_is_gone_is_collected(state_server: ServerProcess) -> None:
    # A controller acting on a stale cache can create a dependent after its owner's deletion was
    # processed; kube's garbage collector deletes objects none of whose (known) owners exists.
    url = state_server.url + "/api/v1/namespaces/default/configmaps"
    _, owner = call(url, "POST", {"metadata": {"name": "gone-owner"}})
    ref = {"apiVersion": "v1", "kind": "ConfigMap", "name": "gone-owner", "uid": owner["metadata"]["uid"]}
    assert call(url + "/gone-owner", "DELETE")[0] == 200
    _, other = call(url, "POST", {"metadata": {"name": "live-owner"}})
    live = {"apiVersion": "v1", "kind": "ConfigMap", "name": "live-owner", "uid": other["metadata"]["uid"]}
    unknown = {"apiVersion": "example.com/v1", "kind": "Widget", "name": "w", "uid": "0000"}
    # Kept: one owner alive; an owner of a kind this server does not serve; a cluster-scoped object
    # with a namespaced owner (unresolvable in kube, never collected). Created before the orphan, so
    # their checks (reads only) are done by the time the orphan's deletion has committed.
    assert call(url, "POST", {"metadata": {"name": "kept-live", "ownerReferences": [live, ref]}})[0] == 201
    assert call(url, "POST", {"metadata": {"name": "kept-unknown", "ownerReferences": [unknown, ref]}})[0] == 201
    classes = state_server.url + "/apis/networking.k8s.io/v1/ingressclasses"
    assert call(classes, "POST", {"metadata": {"name": "kept-cluster", "ownerReferences": [ref]},
                                  "spec": {"controller": "example.com/x"}})[0] == 201
    assert call(url, "POST", {"metadata": {"name": "late-dep", "ownerReferences": [ref]}})[0] == 201
    _wait(lambda: call(url + "/late-dep")[0] == 404)
    assert call(url + "/kept-live")[0] == 200
    assert call(url + "/kept-unknown")[0] == 200
    assert call(classes + "/kept-cluster")[0] == 200


def test_yaml_bodies_json_cannot_carry_are_refused(state_server: ServerProcess) -> None:
    url = state_server.url + "/api/v1/namespaces/default/configmaps"
    nan = b"metadata: {name: nan-cm}\nbinaryData: {}\nimmutable: false\nextra: .nan\n"
    code, body = call(url, "POST", raw=nan, ctype="application/yaml")
    assert code == 400 and "nan" in body["message"].lower(), body
    surrogate = b'metadata: {name: sur-cm}\ndata: {a: "\\ud800"}\n'
    code, body = call(url, "POST", raw=surrogate, ctype="application/yaml")
    assert code == 400, body
    assert call(url + "/nan-cm")[0] == 404 and call(url + "/sur-cm")[0] == 404
    # The server keeps serving lists and watches of the kind.
    assert call(url)[0] == 200


def test_overlapping_cidrs_refused_at_startup(tmp_path: Path) -> None:
    r = subprocess.run([NETPLANE, "server", "--listen", "127.0.0.1:0", "--data-dir", str(tmp_path),
                        "--service-cidr", "10.0.0.0/8", "--cluster-cidr", "10.244.0.0/16"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode != 0
    assert "overlaps" in r.stderr and r.stderr.count("\n") <= 2


def test_watch_410_gone_after_compaction(tmp_path: Path) -> None:
    srv = start_server(tmp_path / "s", "--watch-history", "5", "--compaction-interval", "0.2")
    try:
        base = srv.url + "/api/v1/namespaces/default/configmaps"
        _, first = call(base, "POST", {"metadata": {"name": "c0"}})
        for i in range(1, 20):
            call(base, "POST", {"metadata": {"name": f"c{i}"}})
        time.sleep(0.6)
        with urllib.request.urlopen(f"{base}?watch=true&resourceVersion={first['metadata']['resourceVersion']}",
                                    timeout=5) as r:
            ev = json.loads(r.readline())
        assert ev["type"] == "ERROR" and ev["object"]["code"] == 410 and ev["object"]["reason"] == "Expired"
    finally:
        srv.kill()


def test_service_type_change_drops_what_the_new_type_cannot_have(state_server: ServerProcess) -> None:
    base = state_server.url + "/api/v1/namespaces/default/services"
    code, lb = call(base, "POST", svc("t", type="LoadBalancer", externalTrafficPolicy="Local"))
    assert code == 201
    port, hc = lb["spec"]["ports"][0]["nodePort"], lb["spec"]["healthCheckNodePort"]
    code, out = call(base + "/t", "PATCH", {"spec": {"type": "ClusterIP"}}, ctype="application/merge-patch+json")
    assert code == 200, out
    assert "nodePort" not in out["spec"]["ports"][0]
    assert "healthCheckNodePort" not in out["spec"] and "externalTrafficPolicy" not in out["spec"]
    assert out["spec"]["clusterIP"] == lb["spec"]["clusterIP"]
    # The freed ports can be taken again.
    code, again = call(base, "POST", svc("u", type="LoadBalancer", externalTrafficPolicy="Local",
                                          healthCheckNodePort=port, ports=[{"port": 80, "nodePort": hc}]))
    assert code == 201, again


def test_open_watches_do_not_hold_up_shutdown(tmp_path: Path) -> None:
    # Watches never end by themselves: a SIGTERM must end them, not wait out the 5 s shutdown timeout.
    srv = start_server(tmp_path / "s")
    streams = []
    try:
        for path in ("/api/v1/namespaces/default/configmaps", "/api/v1/pods", "/api/v1/services"):
            r = urllib.request.urlopen(f"{srv.url}{path}?watch=true&allowWatchBookmarks=true", timeout=10)
            streams.append(r)
        call(srv.url + "/api/v1/namespaces/default/configmaps", "POST", {"metadata": {"name": "seen"}})
        assert json.loads(streams[0].readline())["object"]["metadata"]["name"] == "seen"
        started = time.monotonic()
        srv.proc.terminate()
        assert srv.proc.wait(10) == 0
        assert time.monotonic() - started < 3.0
    finally:
        for r in streams:
            r.close()
        srv.kill()
