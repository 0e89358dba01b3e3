"""`netplane lab ...`: a multi-node cluster made of network namespaces on this machine."""

from __future__ import annotations

import os
import sys

import click


def _need_root() -> None:
    if os.geteuid() != 0:
        raise click.ClickException("the lab needs root (it creates network namespaces)")


def _say(msg: str) -> None:
    click.echo(f"  {msg}")
    sys.stdout.flush()


@click.group()
def lab() -> None:
    """A multi-node cluster of network namespaces on this machine, for demos and tests."""


@lab.command()
@click.option("--nodes", default=3, show_default=True, type=int)
@click.option("--backend", type=click.Choice(["vxlan", "host-gw"]), default="vxlan", show_default=True)
@click.option("--proxy-mode", type=click.Choice(["iptables", "nftables"]), default="iptables", show_default=True)
@click.option("--ingress", is_flag=True, help="Also run the Ingress controller (nginx) on n1, on its address and "
                                              "on NodePorts 30880/30443 of every node.")
@click.option("--bpf-host-routing", is_flag=True, help="host-gw only: start the node agents with --bpf-host-routing.")
def up(nodes: int, backend: str, proxy_mode: str, ingress: bool, bpf_host_routing: bool) -> None:
    """Create the namespaces and start the state server, node agents and proxies."""
    from netplane.lab.cluster import Lab, LabError
    from netplane.lab.topology import TopologyError, plan

    _need_root()
    try:
        if bpf_host_routing and backend != "host-gw":
            raise click.ClickException("--bpf-host-routing needs --backend host-gw")
        lab_ = Lab(plan(nodes, backend, proxy_mode), node_args=("--bpf-host-routing",) if bpf_host_routing else ())
        lab_.up(progress=_say)
        if ingress:
            from netplane.ingress.lab import start as start_ingress

            start_ingress(lab_, progress=_say)
    except (LabError, TopologyError) as e:
        raise click.ClickException(str(e)) from None


@lab.command()
def down() -> None:
    """Stop everything the lab started and remove its namespaces (also after a crash)."""
    from netplane.lab.cluster import Lab, LabError, remove_leftovers
    from netplane.lab.topology import DEFAULT_PREFIX

    _need_root()
    try:
        Lab.load().down(progress=_say)
    except LabError:
        remove_leftovers(DEFAULT_PREFIX, progress=_say)
    _say("lab is down")


@lab.command()
def status() -> None:
    """Daemons, nodes, pods and services of the running lab."""
    from netplane.lab.cluster import Lab, LabError
    from netplane.lab.status import render_status

    _need_root()
    try:
        lab_ = Lab.load()
    except LabError as e:
        raise click.ClickException(str(e)) from None
    click.echo(render_status(lab_))


@lab.command(name="apply")
@click.option("-f", "--filename", "source", required=True, help="File, directory, or - for stdin.")
@click.option("-n", "--namespace", default="default", show_default=True)
def apply_cmd(source: str, namespace: str) -> None:
    """Apply manifests to the lab's state server."""
    from netplane.api.manifests import ManifestError, load_manifests
    from netplane.client.apply import ApplyError, apply_objects
    from netplane.lab.cluster import Lab, LabError

    _need_root()
    try:
        docs = load_manifests(source)
        lab_ = Lab.load()
        for line in lab_.api(lambda c: apply_objects(c, docs, namespace)):
            click.echo(line)
    except (ManifestError, ApplyError, LabError) as e:
        raise click.ClickException(str(e)) from None


@lab.command(name="exec", context_settings={"ignore_unknown_options": True})
@click.argument("pod")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@click.option("-n", "--namespace", default="default", show_default=True)
def exec_cmd(pod: str, command: tuple[str, ...], namespace: str) -> None:
    """Run COMMAND inside POD's network namespace (netplane lab exec web-abc -- wget -qO- web)."""
    from netplane.lab.cluster import Lab, LabError
    from netplane.lab.status import pod_exec_argv

    _need_root()
    try:
        argv = pod_exec_argv(Lab.load(), pod, namespace, list(command))
    except LabError as e:
        raise click.ClickException(str(e)) from None
    os.execvp(argv[0], argv)


@lab.command()
@click.option("--nodes", default=3, show_default=True, type=int)
@click.option("--backend", type=click.Choice(["vxlan", "host-gw"]), default="vxlan", show_default=True)
@click.option("--proxy-mode", type=click.Choice(["iptables", "nftables"]), default="iptables", show_default=True)
@click.option("--keep", is_flag=True, help="Leave the lab up afterwards.")
def demo(nodes: int, backend: str, proxy_mode: str, keep: bool) -> None:
    """Bring up a lab, deploy an app and show Kubernetes networking step by step."""
    from netplane.lab.demo import run_demo

    _need_root()
    ok = run_demo(nodes, backend, proxy_mode, keep)
    if not ok:
        sys.exit(1)
