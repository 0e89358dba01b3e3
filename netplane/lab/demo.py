"""`netplane lab demo`: Kubernetes networking shown step by step on a lab cluster.

Every step checks what it shows (a demo that prints success without looking
would teach nothing) and stops with a clear error naming the step otherwise.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from functools import partial
from importlib import resources as pkg_resources
from typing import Any, TypeVar

import click

from netplane.api import resources as res
from netplane.kernel import labnet
from netplane.lab.cluster import Lab, LabError, netplane_argv
from netplane.lab.status import pod_netns
from netplane.lab.topology import plan

PODS = res.must("", "v1", "pods")
SERVICES = res.must("", "v1", "services")
DEPLOYMENTS = res.must("apps", "v1", "deployments")
T = TypeVar("T")

# Fetch a URL from inside a namespace and print the JSON answer (the echo server's).
FETCH = (
    "import sys, urllib.request\n"
    "with urllib.request.urlopen(sys.argv[1], timeout=3) as r: sys.stdout.write(r.read().decode())\n"
)


class DemoFailure(Exception):
    pass


def _say(msg: str) -> None:
    click.echo(msg)
    sys.stdout.flush()


def _step(n: int, title: str) -> None:
    _say(click.style(f"\n[{n}] {title}", bold=True))


def _ok(msg: str) -> None:
    _say(click.style("    ok ", fg="green") + msg)


def fetch_in(netns: str, url: str) -> dict[str, Any]:
    proc = subprocess.run(labnet.netns_exec_argv(netns, [sys.executable, "-c", FETCH, url]), capture_output=True,
                          text=True, timeout=10, check=False)
    if proc.returncode != 0:
        raise DemoFailure(f"GET {url} from {netns} failed: {proc.stderr.strip().splitlines()[-1:]}")
    answer: dict[str, Any] = json.loads(proc.stdout)
    return answer


def wait_until(what: str, check: Callable[[], T | None], timeout: float = 60.0) -> T:
    spinner = "|/-\\"
    start = time.monotonic()
    i = 0
    last_error = ""
    while time.monotonic() - start < timeout:
        try:
            got = check()
        except (DemoFailure, LabError) as e:
            got, last_error = None, str(e)
        if got:
            if sys.stdout.isatty():
                click.echo("\r\033[K", nl=False)
            return got
        if sys.stdout.isatty():
            click.echo(f"\r    {spinner[i % 4]} waiting for {what} ({time.monotonic() - start:.0f}s)", nl=False)
        i += 1
        time.sleep(0.25)
    raise DemoFailure(f"timed out after {timeout:.0f}s waiting for {what}" + (f": {last_error}" if last_error else ""))


def running_pods(lab: Lab) -> list[dict[str, Any]]:
    async def get(client: Any) -> Any:
        return await client.list(PODS, "default", label_selector="app=echo")

    pods = lab.api(get)["items"]
    return [p for p in pods if (p.get("status") or {}).get("phase") == "Running"
            and not p["metadata"].get("deletionTimestamp")
            and any(c.get("type") == "Ready" and c.get("status") == "True"
                    for c in (p.get("status") or {}).get("conditions") or [])]


def run_demo(nodes: int, backend: str, proxy_mode: str, keep: bool) -> bool:
    from netplane.api.manifests import parse_manifest_text
    from netplane.client.apply import apply_objects

    lab = Lab(plan(nodes, backend, proxy_mode))
    try:
        _step(1, f"Bring up a {nodes}-node lab ({backend} between nodes, {proxy_mode} service proxy)")
        lab.up(progress=lambda m: _say(f"    {m}"))

        _step(2, "Deploy an app: 3 echo-server pods behind a NodePort Service")
        text = (pkg_resources.files("netplane.lab") / "manifests" / "lab-demo.yaml").read_text()
        docs = parse_manifest_text(text, "lab-demo.yaml")
        for line in lab.api(lambda c: apply_objects(c, docs, "default")):
            _say(f"    {line}")
        pods = wait_until("3 Ready pods", lambda: (lambda ps: ps if len(ps) == 3 else None)(running_pods(lab)))
        for p in pods:
            _ok(f"pod {p['metadata']['name']} Ready on {p['spec']['nodeName']} at {p['status']['podIP']}")

        _step(3, "Pod to pod across nodes, without NAT")
        a = pods[0]
        b = next((p for p in pods if p["spec"]["nodeName"] != a["spec"]["nodeName"]), None)
        if b is None:
            raise DemoFailure("all pods landed on one node: cannot show cross-node traffic")
        ans = fetch_in(pod_netns(lab, a["metadata"]["name"], "default"), f"http://{b['status']['podIP']}:8080/")
        if ans.get("client", "").split(":")[0] != a["status"]["podIP"]:
            raise DemoFailure(f"{b['metadata']['name']} saw the client as {ans.get('client')}, not "
                              f"{a['status']['podIP']}: traffic was NATed")
        _ok(f"{a['metadata']['name']} ({a['spec']['nodeName']}) -> {b['metadata']['name']} "
            f"({b['spec']['nodeName']}): the receiver saw {a['status']['podIP']}")

        _step(4, "Pod to Service through its ClusterIP")
        svc = lab.api(lambda c: c.get(SERVICES, "echo", "default"))
        cip = svc["spec"]["clusterIP"]
        src = pod_netns(lab, a["metadata"]["name"], "default")
        # The proxies program the service within their sync period of the endpoints turning ready.
        wait_until(f"the proxies to program {cip}", lambda: fetch_in(src, f"http://{cip}/"), 20)
        seen = {fetch_in(src, f"http://{cip}/")["pod"] for _ in range(30)}
        _ok(f"30 requests to {cip}:80 were answered by {len(seen)} pods: {', '.join(sorted(seen))}")

        _step(5, "From outside the cluster through a NodePort")
        for n in lab.plan.nodes:
            ans = wait_until(f"NodePort 30080 on {n.name}",
                             partial(fetch_in, lab.plan.external.netns, f"http://{n.address}:30080/"), 20)
            _ok(f"external client -> {n.name} {n.address}:30080 answered by {ans['pod']}")

        _step(6, "Scale up: traffic follows")
        lab.api(lambda c: c.patch(DEPLOYMENTS, "echo", {"spec": {"replicas": 5}}, "default"))
        pods = wait_until("5 Ready pods", lambda: (lambda ps: ps if len(ps) == 5 else None)(running_pods(lab)))
        names = {p["metadata"]["name"] for p in pods}

        def all_reached() -> set[str] | None:
            got = {fetch_in(src, f"http://{cip}/")["pod"] for _ in range(40)}
            return got if got == names else None

        wait_until("every pod to answer through the service", all_reached, 30)
        _ok(f"scaled to 5: all {len(names)} pods answer through {cip}")

        _step(7, "Ingress: nginx on n1 routes two hosts and two paths to two services (blue and green)")
        from netplane.ingress.lab import demo_step as ingress_demo_step

        ingress_demo_step(lab, lambda m: _say(f"    {m}"), _ok, wait_until)

        _step(8, "Drain a node: its pods move, the service keeps answering")
        victim = next(n.name for n in lab.plan.nodes if any(p["spec"]["nodeName"] == n.name for p in pods))
        proc = subprocess.run(labnet.netns_exec_argv(lab.plan.control_plane.netns, [
            *netplane_argv(), "--server", lab.plan.api_url, "drain", victim, "--timeout", "60"]),
            capture_output=True, text=True, timeout=90, check=False)
        if proc.returncode != 0:
            raise DemoFailure(f"drain {victim} failed: {proc.stderr.strip()}")
        _say("    " + "\n    ".join(proc.stdout.strip().splitlines()))
        moved = wait_until("5 Ready pods off the drained node", lambda: (lambda ps: ps if len(ps) == 5 and all(
            p["spec"]["nodeName"] != victim for p in ps) else None)(running_pods(lab)))
        answered = {fetch_in(lab.plan.external.netns, f"http://{lab.plan.nodes[0].address}:30080/")["pod"]
                    for _ in range(20)}
        if not answered <= {p["metadata"]["name"] for p in moved}:
            raise DemoFailure(f"answers came from pods that should be gone: {answered}")
        _ok(f"{victim} drained; {len(moved)} pods run elsewhere and the NodePort still answers")
        _say(click.style("\nlab demo finished: every step checked", fg="green"))
        return True
    except (DemoFailure, LabError) as e:
        _say(click.style(f"\nlab demo FAILED: {e}", fg="red"))
        return False
    finally:
        if keep:
            _say("\nthe lab is still up: `netplane lab status`, `netplane lab down`")
        else:
            lab.down(progress=lambda m: None)
            _say("\nlab removed (netplane lab down)")
