"""`netplane cordon`, `uncordon` and `drain`: kubectl's node maintenance verbs.

cordon/uncordon set spec.unschedulable (the scheduler then places no new pod there). drain
cordons, deletes the node's pods gracefully and waits until they are gone, printing what kubectl
prints. Unlike kubectl, pods are deleted directly instead of through the Eviction API: netplane's
state server has no PodDisruptionBudgets, so an eviction could never be refused anyway.
kubectl's refusals are kept: pods with no controller (nothing would recreate them) need --force,
pods with emptyDir volumes (their data is lost) need --delete-emptydir-data, DaemonSet pods are
skipped with --ignore-daemonsets; mirror pods are never touched.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import click

from netplane.api import resources as res
from netplane.cli.clientctx import cluster_config, run_with_client
from netplane.client.rest import APIClient, APIStatusError
from netplane.state.config import ConfigError, parse_duration

NODES = res.must("", "v1", "nodes")
PODS = res.must("", "v1", "pods")
MIRROR_ANNOTATION = "kubernetes.io/config.mirror"
POLL_INTERVAL = 0.25
T = TypeVar("T")




async def set_unschedulable(client: APIClient, node: str, value: bool) -> bool:
    """Set spec.unschedulable; False when it already had that value (nothing written)."""
    obj = await client.get(NODES, node)
    if bool((obj.get("spec") or {}).get("unschedulable")) == value:
        return False
    await client.patch(NODES, node, {"spec": {"unschedulable": True if value else None}})
    return True


def _pod_ref(pod: dict[str, Any]) -> str:
    m = pod.get("metadata") or {}
    return f"{m.get('namespace')}/{m.get('name')}"


@dataclass
class DrainPlan:
    delete: list[dict[str, Any]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # kubectl's "cannot delete ..." lines
    warnings: list[str] = field(default_factory=list)  # kubectl's "Warning: ..." lines


def plan_drain(pods: list[dict[str, Any]], force: bool = False, ignore_daemonsets: bool = False,
               delete_emptydir_data: bool = False) -> DrainPlan:
    """kubectl drain's pod filters, in its words."""
    plan = DrainPlan()
    unmanaged: list[str] = []
    daemonsets: list[str] = []
    emptydir: list[str] = []
    ignored_ds: list[str] = []
    for pod in pods:
        m = pod.get("metadata") or {}
        if MIRROR_ANNOTATION in (m.get("annotations") or {}):
            continue
        finished = (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed")
        controller = next((r for r in m.get("ownerReferences") or [] if r.get("controller")), None)
        if controller is not None and controller.get("kind") == "DaemonSet" and not finished:
            (ignored_ds if ignore_daemonsets else daemonsets).append(_pod_ref(pod))
            continue
        if controller is None and not finished:
            unmanaged.append(_pod_ref(pod))
            if not force:
                continue
        volumes = (pod.get("spec") or {}).get("volumes") or []
        if not finished and any(isinstance(v, dict) and "emptyDir" in v for v in volumes) \
                and not delete_emptydir_data:
            emptydir.append(_pod_ref(pod))
            continue
        plan.delete.append(pod)
    if unmanaged and not force:
        plan.errors.append("cannot delete Pods declare no controller (use --force to override): "
                           + ", ".join(unmanaged))
    elif unmanaged:
        plan.warnings.append("deleting Pods that declare no controller: " + ", ".join(unmanaged))
    if daemonsets:
        plan.errors.append("cannot delete DaemonSet-managed Pods (use --ignore-daemonsets to ignore): "
                           + ", ".join(daemonsets))
    if ignored_ds:
        plan.warnings.append("ignoring DaemonSet-managed Pods: " + ", ".join(ignored_ds))
    if emptydir:
        plan.errors.append("cannot delete Pods with local storage (use --delete-emptydir-data to override): "
                           + ", ".join(emptydir))
    return plan


def _duration(value: str) -> float:
    try:
        return parse_duration(value)
    except ConfigError as e:
        raise click.BadParameter(str(e)) from None


@click.command()
@click.argument("node")
@click.pass_context
def cordon(ctx: click.Context, node: str) -> None:
    """Mark NODE unschedulable: no new pods are placed on it."""

    async def body(client: APIClient) -> bool:
        return await set_unschedulable(client, node, True)

    changed = run_with_client(cluster_config(ctx), body)
    click.echo(f"node/{node} cordoned" if changed else f"node/{node} already cordoned")


@click.command()
@click.argument("node")
@click.pass_context
def uncordon(ctx: click.Context, node: str) -> None:
    """Mark NODE schedulable again."""

    async def body(client: APIClient) -> bool:
        return await set_unschedulable(client, node, False)

    changed = run_with_client(cluster_config(ctx), body)
    click.echo(f"node/{node} uncordoned" if changed else f"node/{node} already uncordoned")


@click.command()
@click.argument("node")
@click.option("--grace-period", default=-1, show_default=True, type=int,
              help="Seconds each pod gets to terminate; negative uses the pod's own.")
@click.option("--timeout", "timeout_text", default="0s", show_default=True,
              help="Give up after this long (e.g. 60, 90s, 5m); 0 waits forever.")
@click.option("--force", is_flag=True, help="Also delete pods that no controller will recreate.")
@click.option("--ignore-daemonsets", is_flag=True, help="Leave DaemonSet-managed pods alone.")
@click.option("--delete-emptydir-data", is_flag=True, help="Also delete pods with emptyDir volumes.")
@click.pass_context
def drain(ctx: click.Context, node: str, grace_period: int, timeout_text: str, force: bool,
          ignore_daemonsets: bool, delete_emptydir_data: bool) -> None:
    """Cordon NODE, delete its pods (their controllers recreate them elsewhere) and wait until they are gone.

    Pods are deleted directly, not through the Eviction API (no PodDisruptionBudgets here).
    """
    timeout = _duration(timeout_text)
    config = cluster_config(ctx)

    async def body(client: APIClient) -> None:
        changed = await set_unschedulable(client, node, True)
        click.echo(f"node/{node} cordoned" if changed else f"node/{node} already cordoned")
        pods = (await client.list(PODS, None, field_selector=f"spec.nodeName={node}")).get("items") or []
        plan = plan_drain(pods, force, ignore_daemonsets, delete_emptydir_data)
        if plan.errors:
            raise click.ClickException(
                f'unable to drain node "{node}" due to error: {"; ".join(plan.errors)}\n'
                f"There are pending nodes to be drained:\n {node}")
        for warning in plan.warnings:
            click.echo(f"Warning: {warning}", err=True)
        waiting: dict[tuple[str, str], str] = {}
        for pod in plan.delete:
            m = pod["metadata"]
            click.echo(f"evicting pod {_pod_ref(pod)}")
            try:
                await client.delete(PODS, m["name"], m.get("namespace"),
                                    grace_period_seconds=grace_period if grace_period >= 0 else None)
            except APIStatusError as e:
                if not e.not_found:
                    raise
            waiting[(str(m.get("namespace")), str(m["name"]))] = str(m.get("uid"))
        await _wait_gone(client, waiting, timeout, lambda ns, name: click.echo(f"pod/{name} evicted"))
        click.echo(f"node/{node} drained")

    run_with_client(config, body)


async def _wait_gone(client: APIClient, waiting: dict[tuple[str, str], str], timeout: float,
                     report: Callable[[str, str], None]) -> None:
    """Poll until every pod is gone (or replaced by a new pod of the same name), bounded by timeout."""
    deadline = time.monotonic() + timeout if timeout > 0 else None
    while waiting:
        for (ns, name), uid in list(waiting.items()):
            try:
                pod = await client.get(PODS, name, ns)
            except APIStatusError as e:
                if not e.not_found:
                    raise
                pod = None
            if pod is None or (pod.get("metadata") or {}).get("uid") != uid:
                del waiting[(ns, name)]
                report(ns, name)
        if not waiting:
            return
        if deadline is not None and time.monotonic() >= deadline:
            left = ", ".join(f"{ns}/{name}" for ns, name in sorted(waiting))
            raise click.ClickException(f"drain did not complete within {timeout:g}s; still terminating: {left}")
        await asyncio.sleep(POLL_INTERVAL)
