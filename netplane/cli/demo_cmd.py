"""`netplane demo`: the README's main job.

Until the lab exists (issue 5) it shows the control plane at work: it starts a
state server, applies the example app, plays the node agent's part (register a
node, report two running pods) and shows what the server's controllers made of
it: a ClusterIP and a NodePort, a pod CIDR, and EndpointSlices.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from importlib import resources as pkg_resources
from typing import Any

import click

from netplane.api import resources as res


def say(msg: str) -> None:
    click.echo(msg)
    sys.stdout.flush()


def step(n: int, msg: str) -> None:
    say(click.style(f"\n[{n}] {msg}", bold=True))


async def _wait_for(what: str, check: Any, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    spinner = "|/-\\"
    i = 0
    while True:
        got = await check()
        if got:
            if sys.stdout.isatty():
                click.echo("\r" + " " * (len(what) + 4) + "\r", nl=False)
            return got
        if time.monotonic() > deadline:
            raise click.ClickException(f"timed out waiting for {what}")
        if sys.stdout.isatty():
            click.echo(f"\r{spinner[i % 4]} {what}", nl=False)
        i += 1
        await asyncio.sleep(0.05)


async def run_demo(data_dir: str) -> None:
    from netplane.api.manifests import parse_manifest_text
    from netplane.client.apply import apply_objects
    from netplane.client.kubeconfig import ClusterConfig
    from netplane.client.rest import APIClient
    from netplane.state.app import StateServer
    from netplane.state.config import ServerConfig

    services = res.resolve_name("services")
    nodes = res.resolve_name("nodes")
    pods = res.resolve_name("pods")
    slices = res.resolve_name("endpointslices")
    assert services and nodes and pods and slices

    step(1, "Start a state server (the Kubernetes API subset, SQLite storage)")
    async with StateServer(ServerConfig(data_dir=data_dir, listen_port=0)) as server:
        say(f"    serving {server.url}, data in {data_dir}")
        async with APIClient(ClusterConfig(server=server.url)) as api:
            step(2, "Apply the example app (Deployment + Service + Ingress)")
            text = (pkg_resources.files("netplane.lab") / "manifests" / "demo-app.yaml").read_text()
            docs = parse_manifest_text(text, "demo-app.yaml")
            for line in await apply_objects(api, docs, "default"):
                say(f"    {line}")
            svc = await api.get(services, "web", "default")
            say(f"    service/web got ClusterIP {svc['spec']['clusterIP']} and NodePort "
                f"{svc['spec']['ports'][0]['nodePort']} from the server's allocators")

            step(3, "Register a node, as the node agent will")
            node = await api.create(nodes, {"metadata": {"name": "demo-node"}, "status": {
                "addresses": [{"type": "InternalIP", "address": "192.168.50.11"}],
                "conditions": [{"type": "Ready", "status": "True"}]}})
            cidr = node["spec"]["podCIDR"]
            say(f"    node/demo-node got pod CIDR {cidr}")

            step(4, "Report two running pods, as the lab runtime will")
            prefix = cidr.rsplit(".", 1)[0]
            for i in (1, 2):
                pod = await api.create(pods, {
                    "metadata": {"name": f"web-demo-{i}", "labels": {"app": "web"}},
                    "spec": {"nodeName": "demo-node", "containers": [{
                        "name": "web", "image": "netplane/echo-server",
                        "ports": [{"name": "http", "containerPort": 8080}]}]},
                }, "default")
                pod["status"] = {"phase": "Running", "podIP": f"{prefix}.{10 + i}",
                                 "podIPs": [{"ip": f"{prefix}.{10 + i}"}],
                                 "conditions": [{"type": "Ready", "status": "True"}]}
                await api.update(pods, pod, "default", subresource="status")
                say(f"    pod/web-demo-{i} Running at {prefix}.{10 + i}")

            step(5, "Watch the EndpointSlice controller pick them up")

            async def endpoints() -> list[str] | None:
                lst = await api.list(slices, "default", label_selector="kubernetes.io/service-name=web")
                addrs = sorted(a for s in lst["items"] for e in s.get("endpoints") or []
                               if (e.get("conditions") or {}).get("ready") for a in e["addresses"])
                return addrs if len(addrs) == 2 else None

            addrs = await _wait_for("endpointslice for service/web", endpoints)
            lst = await api.list(slices, "default", label_selector="kubernetes.io/service-name=web")
            ports = lst["items"][0]["ports"]
            say(f"    endpointslice {lst['items'][0]['metadata']['name']}: {', '.join(addrs)} "
                f"port {ports[0]['port']} ({ports[0]['name']} resolved from the pods' named port)")

            step(6, "Apply the same manifests again")
            for line in await apply_objects(api, docs, "default"):
                say(f"    {line}")
    say(click.style("\ndemo finished: every step checked", fg="green"))
    say("next: the CNI plugin, service proxy and lab will turn this into real packets (see README)")


@click.command()
@click.option("--data-dir", default=None, type=click.Path(file_okay=False),
              help="Keep the demo's state here (default: a temporary directory).")
def demo(data_dir: str | None) -> None:
    """Run the demo: a state server, the example app, and the controllers at work."""
    if data_dir:
        asyncio.run(run_demo(data_dir))
        return
    with tempfile.TemporaryDirectory(prefix="netplane-demo-") as tmp:
        asyncio.run(run_demo(tmp))
