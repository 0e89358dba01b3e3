"""`netplane node`, `netplane logs`, `netplane echo-server`: the node agent and its two helpers."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

import click

from netplane.cli.logs import setup_logging


def _server_options(ctx: click.Context, server: str | None, kubeconfig: str | None) -> tuple[str | None, str | None]:
    """Command flags win over the group's --server/--kubeconfig."""
    obj = ctx.find_root().obj or {}
    return server or obj.get("server"), kubeconfig or obj.get("kubeconfig")


def _duration(ctx: click.Context, param: click.Parameter, value: str) -> float:
    from netplane.node.config import ConfigError, parse_duration

    try:
        return parse_duration(value)
    except ConfigError as e:
        raise click.BadParameter(str(e)) from None


@click.command()
@click.option("--server", default=None, help="State server / API server URL.")
@click.option("--kubeconfig", default=None, type=click.Path(dir_okay=False), help="Kubeconfig file.")
@click.option("--node-name", required=True, help="Name of this node's Node object.")
@click.option("--address", required=True, help="This node's InternalIP (underlay address, VXLAN endpoint).")
@click.option("--backend", type=click.Choice(["host-gw", "vxlan"]), default="vxlan", show_default=True)
@click.option("--cni-bin-dir", default="/opt/cni/bin:/usr/lib/cni", show_default=True,
              help="Where CNI plugins are looked up (':'-separated; the first also receives netplane's).")
@click.option("--cni-conf-dir", default="/etc/cni/net.d", show_default=True, help="Where the conflist is written.")
@click.option("--state-dir", default="/var/lib/netplane/node", show_default=True,
              help="IPAM store, pod sandboxes, container logs.")
@click.option("--heartbeat-interval", default="10s", show_default=True, callback=_duration,
              help="Lease renewal interval.")
@click.option("--status-report-interval", default="5m", show_default=True, callback=_duration,
              help="Node status is rewritten at least this often (and whenever it changes).")
@click.option("--cluster-cidr", default="10.244.0.0/16", show_default=True,
              help="Pod traffic leaving this range is masqueraded.")
@click.option("--cni-plugin", type=click.Choice(["netplane", "bridge"]), default="netplane", show_default=True,
              help="The conflist's main plugin: netplane's, or the reference bridge + host-local.")
@click.option("--netns-prefix", default="np-pod-", show_default=True, help="Prefix of pod sandbox netns names.")
@click.option("--logs-port", default=10250, show_default=True, type=int,
              help="Serve container logs on ADDRESS:PORT (0: off).")
@click.option("--cluster-dns", default="10.96.0.10", show_default=True, help="Nameserver in pods' resolv.conf.")
@click.option("--cluster-domain", default="cluster.local", show_default=True)
@click.option("--run-pods/--no-run-pods", default=True, show_default=True, help="Run the lab pod runtime.")
@click.option("--bpf-host-routing", is_flag=True,
              help="host-gw only: route cross-node pod-to-pod traffic with tc BPF programs, past the bridge, "
                   "IP forwarding and netfilter (NetworkPolicy in FORWARD does not see it).")
@click.option("-v", "--verbose", is_flag=True)
@click.pass_context
def node(ctx: click.Context, server: str | None, kubeconfig: str | None, node_name: str, address: str,
         backend: str, cni_bin_dir: str, cni_conf_dir: str, state_dir: str, heartbeat_interval: float,
         status_report_interval: float, cluster_cidr: str, cni_plugin: str, netns_prefix: str, logs_port: int,
         cluster_dns: str, cluster_domain: str, run_pods: bool, bpf_host_routing: bool, verbose: bool) -> None:
    """Run the node agent (inside the node's network namespace)."""
    from netplane.client.kubeconfig import load_config
    from netplane.client.rest import APIClient
    from netplane.node.agent import NodeAgent
    from netplane.node.config import AgentConfig, ConfigError

    server, kubeconfig = _server_options(ctx, server, kubeconfig)
    config = AgentConfig(
        node_name=node_name, address=address, backend=backend,
        cni_bin_dirs=tuple(d for d in cni_bin_dir.split(":") if d), cni_conf_dir=cni_conf_dir,
        state_dir=state_dir, heartbeat_interval=heartbeat_interval,
        status_report_interval=status_report_interval, cluster_cidr=cluster_cidr, cni_plugin=cni_plugin,
        netns_prefix=netns_prefix, logs_port=logs_port, cluster_dns=cluster_dns, cluster_domain=cluster_domain,
        run_pods=run_pods, bpf_host_routing=bpf_host_routing,
    )
    try:
        config.check()
    except ConfigError as e:
        raise click.ClickException(str(e)) from None
    cluster = load_config(server, kubeconfig)
    setup_logging(logging.DEBUG if verbose else logging.INFO)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        async with APIClient(cluster) as client:
            await NodeAgent(config, client).run(stop)

    asyncio.run(main())


@click.command()
@click.argument("pod")
@click.option("-c", "--container", default=None, help="Container name (default: the pod's only/first one).")
@click.option("-n", "--namespace", default=None, help="Pod namespace (default: from kubeconfig, else default).")
@click.option("-p", "--previous", is_flag=True, help="The previous instance of a restarted container.")
@click.option("--tail", default=-1, show_default=True, type=int, help="Last N lines (-1: all).")
@click.option("--state-dir", default=None, type=click.Path(file_okay=False),
              help="Read the node's state dir directly instead of asking the node over HTTP.")
@click.option("--server", default=None, help="API server URL (to find the pod's node).")
@click.option("--kubeconfig", default=None, type=click.Path(dir_okay=False))
@click.pass_context
def logs(ctx: click.Context, pod: str, container: str | None, namespace: str | None, previous: bool, tail: int,
         state_dir: str | None, server: str | None, kubeconfig: str | None) -> None:
    """Print a container's log (the lab runtime's `kubectl logs`)."""
    from netplane.node import podlogs

    server, kubeconfig = _server_options(ctx, server, kubeconfig)
    try:
        if state_dir:
            data = podlogs.read_local(state_dir, namespace or "default", pod, container, previous, tail)
        else:
            data = asyncio.run(podlogs.fetch_remote(server, kubeconfig, namespace, pod, container, previous, tail))
    except podlogs.LogsError as e:
        raise click.ClickException(str(e)) from None
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()


@click.command("echo-server")
@click.option("--http-port", "http_ports", multiple=True, type=int, help="Answer HTTP here (repeatable).")
@click.option("--tcp-port", "tcp_ports", multiple=True, type=int, help="Echo TCP here (repeatable).")
@click.option("--udp-port", "udp_ports", multiple=True, type=int, help="Echo UDP here (repeatable).")
@click.option("--host", default="", help="Address to bind (default: all).")
def echo_server(http_ports: tuple[int, ...], tcp_ports: tuple[int, ...], udp_ports: tuple[int, ...],
                host: str) -> None:
    """A small test server: HTTP answers with pod name, namespace, pod IP, node and the client's address."""
    from netplane.node import echo

    sys.exit(echo.main_with(list(http_ports), list(tcp_ports), list(udp_ports), host))
