"""`netplane proxy`: the service proxy daemon (the kube-proxy role). Parses flags, runs the library."""

from __future__ import annotations

import ipaddress
import re

import click

from netplane.client.kubeconfig import KubeconfigError, load_config

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h)?$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_duration(text: str) -> float:
    """Go-style durations as kube-proxy's flags take them: 500ms, 1s, 30s, 1m (a bare number is seconds)."""
    match = _DURATION.match(text.strip())
    if not match:
        raise click.BadParameter(f"{text!r} is not a duration (e.g. 1s, 500ms, 1m)")
    return float(match.group(1)) * _UNITS[match.group(2)]


def _cidrs(text: str) -> tuple[str, ...]:
    out = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        try:
            out.append(str(ipaddress.ip_network(part, strict=False)))
        except ValueError as e:
            raise click.BadParameter(f"{part!r} is not a CIDR") from e
    return tuple(out)


def _bind(text: str) -> str:
    _, sep, port = text.rpartition(":")
    if text and (not sep or not port.isdigit() or not 0 < int(port) < 65536):
        raise click.BadParameter(f"{text!r} is not HOST:PORT")
    return text


@click.command("proxy")
@click.option("--server", "server_url", default=None, help="State server URL.")
@click.option("--kubeconfig", default=None, type=click.Path(dir_okay=False), help="Kubeconfig file.")
@click.option("--node-name", default=None,
              help="This node's name (selects local endpoints); required unless --cleanup.")
@click.option("--mode", type=click.Choice(["iptables", "nftables", "ipvs"]), default="iptables", show_default=True)
@click.option("--ipvs-scheduler", type=click.Choice(["rr", "wrr", "lc", "wlc", "sh", "dh", "sed", "nq"]),
              default="rr", show_default=True, help="IPVS scheduler of every virtual server (--mode ipvs).")
@click.option("--cluster-cidr", default="10.244.0.0/16", show_default=True,
              help="Pod CIDR: traffic from elsewhere to a ClusterIP is masqueraded.")
@click.option("--masquerade-all", is_flag=True, help="Masquerade all service traffic.")
@click.option("--nodeport-addresses", default="", help="CIDRs whose node addresses accept NodePorts "
              "(default: every local address except loopback).")
@click.option("--min-sync-period", default="1s", show_default=True, help="Minimum time between syncs.")
@click.option("--sync-period", default="30s", show_default=True, help="Maximum time between syncs.")
@click.option("--healthz-bind-address", default="0.0.0.0:10256", show_default=True)
@click.option("--metrics-bind-address", default="127.0.0.1:10249", show_default=True)
@click.option("--iptables-backend", type=click.Choice(["nft", "legacy"]), default="nft", show_default=True,
              help="Which iptables binaries to use in iptables mode.")
@click.option("--netns", default=None, hidden=True, help="Program rules in this named netns (labs, tests).")
@click.option("--cleanup", is_flag=True, help="Remove every proxy mode's rules, sets, virtual servers and "
              "service device from this node, then exit (as kube-proxy --cleanup).")
@click.pass_context
def proxy(ctx: click.Context, server_url: str | None, kubeconfig: str | None, node_name: str | None, mode: str,
          cluster_cidr: str, masquerade_all: bool, nodeport_addresses: str, min_sync_period: str,
          sync_period: str, healthz_bind_address: str, metrics_bind_address: str, iptables_backend: str,
          netns: str | None, ipvs_scheduler: str, cleanup: bool) -> None:
    """Program Services and EndpointSlices into iptables, nftables or IPVS on this node.

    Starting in one mode removes what the other modes left on the node (after the first sync)."""
    from netplane.cli.logs import setup_logging

    if cleanup:
        from netplane.proxy.cleanup import cleanup as clean_all

        report = clean_all(netns, iptables_backend)
        for item in report.removed:
            click.echo(f"removed {item}")
        if not report.ok:
            raise click.ClickException("cleanup incomplete:\n  " + "\n  ".join(report.errors))
        return
    if not node_name:
        raise click.UsageError("Missing option '--node-name'.")
    from netplane.proxy.daemon import DaemonOptions, run_forever

    obj = ctx.obj or {}
    try:
        cluster = load_config(server=server_url or obj.get("server"), kubeconfig=kubeconfig or obj.get("kubeconfig"))
    except KubeconfigError as e:
        raise click.ClickException(str(e)) from e
    try:
        ipaddress.ip_network(cluster_cidr, strict=False)
    except ValueError as e:
        raise click.BadParameter(f"{cluster_cidr!r} is not a CIDR", param_hint="--cluster-cidr") from e
    min_period, period = parse_duration(min_sync_period), parse_duration(sync_period)
    if min_period > period or period <= 0:
        raise click.BadParameter("must be > 0 and >= --min-sync-period", param_hint="--sync-period")
    opts = DaemonOptions(
        cluster=cluster, node_name=node_name, mode=mode, cluster_cidr=cluster_cidr, masquerade_all=masquerade_all,
        nodeport_addresses=_cidrs(nodeport_addresses), min_sync_period=min_period, sync_period=period,
        healthz_bind_address=_bind(healthz_bind_address), metrics_bind_address=_bind(metrics_bind_address),
        netns=netns, iptables_backend=iptables_backend, ipvs_scheduler=ipvs_scheduler,
    )
    setup_logging()
    run_forever(opts)
