"""`netplane server`: run the state server."""

from __future__ import annotations

import logging

import click

from netplane.cli.logs import run_loop, setup_logging
from netplane.state.config import ConfigError, ServerConfig, parse_duration


def _listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        raise click.BadParameter(f"{value!r} is not HOST:PORT")
    return host.strip("[]") or "127.0.0.1", int(port)


@click.command()
@click.option("--listen", default="127.0.0.1:6443", show_default=True, help="HOST:PORT to serve HTTP on.")
@click.option("--data-dir", required=True, type=click.Path(file_okay=False), help="Where the SQLite store lives.")
@click.option("--service-cidr", default="10.96.0.0/12", show_default=True)
@click.option("--cluster-cidr", default="10.244.0.0/16", show_default=True)
@click.option("--node-cidr-mask-size", default=24, show_default=True, type=int)
@click.option("--service-node-port-range", default="30000-32767", show_default=True)
@click.option("--watch-history", default=100000, show_default=True, type=int,
              help="Changes kept for watch resume; older resourceVersions get 410 Gone.")
@click.option("--compaction-interval", default=60.0, show_default=True, type=float, help="Seconds.")
@click.option("--ready-file", default=None, type=click.Path(dir_okay=False),
              help="Write the server's URL here once it serves (for scripts and tests).")
@click.option("--node-monitor-grace-period", default="40s", show_default=True,
              help="How long a node may go without heartbeating before it is marked NotReady (40s, 1m, 10).")
@click.option("--pod-eviction-timeout", default="5m", show_default=True,
              help="How long a node stays NotReady before its pods are deleted and recreated elsewhere.")
@click.option("--controllers", "controllers_text", default="*", show_default=True,
              help="Controllers to run, comma-separated: '*' for all, 'name' to enable, '-name' to disable "
                   "(endpointslice, replicaset, deployment, scheduler, nodelifecycle).")
@click.option("-v", "--verbose", is_flag=True, help="Log every request.")
def server(listen: str, data_dir: str, service_cidr: str, cluster_cidr: str, node_cidr_mask_size: int,
           service_node_port_range: str, watch_history: int, compaction_interval: float,
           ready_file: str | None, node_monitor_grace_period: str, pod_eviction_timeout: str,
           controllers_text: str, verbose: bool) -> None:
    """Run the state server: the Kubernetes API subset the data plane needs."""
    from netplane.state.app import serve_forever

    setup_logging(logging.DEBUG if verbose else logging.INFO)
    host, port = _listen(listen)
    try:
        grace = parse_duration(node_monitor_grace_period)
        eviction = parse_duration(pod_eviction_timeout)
    except ConfigError as e:
        raise click.ClickException(str(e)) from None
    config = ServerConfig(
        data_dir=data_dir, listen_host=host, listen_port=port, service_cidr=service_cidr,
        cluster_cidr=cluster_cidr, node_cidr_mask_size=node_cidr_mask_size,
        node_port_range=service_node_port_range, watch_history=watch_history,
        compaction_interval=compaction_interval, node_monitor_grace_period=grace,
        pod_eviction_timeout=eviction,
        controllers=tuple(c.strip() for c in controllers_text.split(",") if c.strip()),
    )
    try:
        config.check()
    except ConfigError as e:
        raise click.ClickException(str(e)) from None
    run_loop(serve_forever(config, ready_file))
