"""The Ingress controller in a lab cluster, and the demo's blue/green routing (used by `netplane lab`).

The controller runs as a node daemon on one node (n1 by default), listening on that node's address
on ports 80 and 443, with ClusterIP upstreams (the node's service proxy balances over the pods).
Like an ingress-nginx installation exposed on NodePorts, it is also published by a Service
``kube-system/netplane-ingress`` of type NodePort (30880 for HTTP, 30443 for HTTPS) whose
EndpointSlice points at the controller's node address, so every node forwards those ports to it.
The IngressClass ``netplane`` is created as the cluster default.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from functools import partial
from typing import Any

from netplane.ingress.fixtures import endpoint_slice, ingress, ingress_class, path, rule

INGRESS_NODE = "n1"
HTTP_NODE_PORT = 30880
HTTPS_NODE_PORT = 30443
NAMESPACE = "kube-system"
SERVICE = "netplane-ingress"

# A GET with a Host header from inside a namespace; prints the status and the (JSON) body.
FETCH = (
    "import sys, urllib.request\n"
    "req = urllib.request.Request(sys.argv[1], headers={'Host': sys.argv[2]})\n"
    "try:\n"
    "    r = urllib.request.urlopen(req, timeout=3)\n"
    "except urllib.error.HTTPError as e:\n"
    "    r = e\n"
    "print(r.status); sys.stdout.write(r.read().decode())\n"
)


def publishing_objects(node_address: str) -> list[dict[str, Any]]:
    """The default IngressClass and the NodePort Service (with its EndpointSlice) for the controller."""
    svc = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": SERVICE, "namespace": NAMESPACE},
           "spec": {"type": "NodePort", "ports": [
               {"name": "http", "port": 80, "targetPort": 80, "nodePort": HTTP_NODE_PORT, "protocol": "TCP"},
               {"name": "https", "port": 443, "targetPort": 443, "nodePort": HTTPS_NODE_PORT, "protocol": "TCP"}]}}
    eps = endpoint_slice(SERVICE, [node_address], [("http", 80), ("https", 443)], namespace=NAMESPACE,
                         name=f"{SERVICE}-node")
    return [ingress_class("netplane", default=True), svc, eps]


def start(lab: Any, progress: Callable[[str], None] = print, node_name: str = INGRESS_NODE,
          timeout: float = 30.0) -> str:
    """Start the controller on ``node_name`` (a daemon of the lab); return the address it serves on."""
    from netplane.client.apply import apply_objects
    from netplane.lab.cluster import LabError, netplane_argv
    from netplane.lab.processes import tail

    node = lab.plan.node(node_name)
    state = lab.state_dir / node_name / "ingress"
    ready = lab.state_dir / node_name / "ingress.ready"
    ready.unlink(missing_ok=True)
    progress(f"starting the ingress controller on {node_name} ({node.address}:80/443, NodePorts "
             f"{HTTP_NODE_PORT}/{HTTPS_NODE_PORT})")
    lab.api(lambda c: apply_objects(c, publishing_objects(node.address), NAMESPACE))
    d = lab.procs.start(f"{node_name}/ingress", node.netns, [
        *netplane_argv(), "--server", lab.plan.api_url, "ingress", "--address", node.address,
        "--http-port", "80", "--https-port", "443", "--state-dir", str(state), "--ready-file", str(ready),
    ])
    lab.procs.wait_started(d)
    deadline = time.monotonic() + timeout
    while not ready.exists():
        if not d.alive():
            raise LabError(f"the ingress controller exited; last lines of {d.log}:\n{tail(d.log)}")
        if time.monotonic() > deadline:
            raise LabError(f"the ingress controller did not sync within {timeout:.0f}s:\n{tail(d.log)}")
        time.sleep(0.05)
    return str(node.address)


def fetch(netns: str, url: str, host: str, timeout: float = 10.0) -> tuple[int, dict[str, Any] | None]:
    """GET url with a Host header from inside netns: (status, JSON body or None)."""
    from netplane.kernel.labnet import netns_exec_argv

    proc = subprocess.run(netns_exec_argv(netns, [sys.executable, "-c", FETCH, url, host]), capture_output=True,
                          text=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"GET {url} (Host {host}) from {netns}: {proc.stderr.strip().splitlines()[-1:]}")
    status, _, body = proc.stdout.partition("\n")
    try:
        return int(status), json.loads(body)
    except ValueError:
        return int(status), None


def blue_green_manifests() -> list[dict[str, Any]]:
    """Two echo Deployments and Services, and one Ingress routing two hosts and two paths to them."""
    docs: list[dict[str, Any]] = []
    for color in ("blue", "green"):
        labels = {"app": color}
        container = {"name": "echo", "image": "netplane/echo-server",
                     "ports": [{"name": "http", "containerPort": 8080}],
                     "readinessProbe": {"httpGet": {"path": "/", "port": "http"}, "periodSeconds": 1}}
        docs.append({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": color, "labels": labels},
                     "spec": {"replicas": 1, "selector": {"matchLabels": labels},
                              "template": {"metadata": {"labels": labels}, "spec": {"containers": [container]}}}})
        docs.append({"apiVersion": "v1", "kind": "Service", "metadata": {"name": color},
                     "spec": {"selector": labels, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}})
    docs.append(ingress("blue-green",
                        rule("blue.lab.test", path("/", "blue", "http")),
                        rule("green.lab.test", path("/", "green", "http")),
                        rule(None, path("/blue", "blue", "http"), path("/green", "green", "http")),
                        class_name=None))  # the default IngressClass picks it up
    return docs


def demo_step(lab: Any, progress: Callable[[str], None], ok: Callable[[str], None],
              wait: Callable[..., Any]) -> None:
    """The lab demo's Ingress step: start the controller, deploy blue and green, show the routing.

    ``wait(what, check, timeout)`` polls ``check`` until it returns something truthy (the demo's own
    waiter, which fails the step with a clear message)."""
    from netplane.client.apply import apply_objects

    address = start(lab, progress)
    for line in lab.api(lambda c: apply_objects(c, blue_green_manifests(), "default")):
        progress(line)
    ext = lab.plan.external.netns

    def pod_for(url: str, host: str, prefix: str) -> str | None:
        status, body = fetch(ext, url, host)
        pod = str((body or {}).get("pod") or "")
        return pod if status == 200 and pod.startswith(prefix) else None

    for host, color in (("blue.lab.test", "blue"), ("green.lab.test", "green")):
        pod = wait(f"{host} to be served by {color}", partial(pod_for, f"http://{address}/", host, color + "-"), 60)
        ok(f"external client -> http://{address}/ with Host {host}: answered by {pod}")
    for p, color in (("/blue/page", "blue"), ("/green", "green")):
        pod = wait(f"{p} to be served by {color}", partial(pod_for, f"http://{address}{p}", "x.test", color + "-"))
        ok(f"external client -> http://{address}{p} (any host): answered by {pod}")
    other = next((n for n in lab.plan.nodes if n.address != address), lab.plan.nodes[0])
    url = f"http://{other.address}:{HTTP_NODE_PORT}/"
    pod = wait("the NodePort to reach the controller", lambda: pod_for(url, "green.lab.test", "green-"))
    ok(f"external client -> {other.name}'s NodePort {other.address}:{HTTP_NODE_PORT}, Host green.lab.test: "
       f"answered by {pod}")
