"""`netplane ingress`: the Ingress controller (programs its own nginx). Parses flags, runs the library."""

from __future__ import annotations

import ipaddress
import os
import shutil
from pathlib import Path

import click

from netplane.client.kubeconfig import KubeconfigError, load_config


def _port(value: int, name: str, allow_zero: bool = False) -> int:
    if not (0 <= value < 65536) or (value == 0 and not allow_zero):
        raise click.BadParameter(f"{value} is not a port", param_hint=name)
    return value


@click.command("ingress")
@click.option("--server", "server_url", default=None, help="State server URL.")
@click.option("--kubeconfig", default=None, type=click.Path(dir_okay=False), help="Kubeconfig file.")
@click.option("--class", "class_name", default="netplane", show_default=True,
              help="The IngressClass this controller serves (spec.ingressClassName, the legacy "
                   "kubernetes.io/ingress.class annotation, or the default IngressClass).")
@click.option("--http-port", default=80, show_default=True, type=int)
@click.option("--https-port", default=443, show_default=True, type=int, help="0 turns HTTPS off.")
@click.option("--address", default="", help="Address nginx listens on (default: all).")
@click.option("--publish-address", default=None,
              help="Address written to status.loadBalancer (default: the listen address, else this host's).")
@click.option("--nginx", "nginx_binary", default="/usr/sbin/nginx", show_default=True, help="The nginx binary.")
@click.option("--upstream", "upstream_mode", type=click.Choice(["service", "endpoints"]), default="service",
              show_default=True, help="Proxy to the Service's ClusterIP (no reload on endpoint churn) or "
                                      "straight to the ready endpoints.")
@click.option("--state-dir", default="/run/netplane-ingress", show_default=True, type=click.Path(file_okay=False),
              help="nginx.conf, pid, logs, temp files and certificates of this controller's own nginx.")
@click.option("--workers", default="auto", show_default=True, help="nginx worker_processes.")
@click.option("--ready-file", default=None, type=click.Path(dir_okay=False), hidden=True,
              help="Written once nginx serves the first complete configuration (tests, labs).")
@click.option("--access-log", is_flag=True, help="Log every request to <state-dir>/access.log.")
@click.option("--netns", default=None, hidden=True,
              help="Run nginx inside this named network namespace (tests, benchmarks).")
@click.pass_context
def ingress(ctx: click.Context, server_url: str | None, kubeconfig: str | None, class_name: str, http_port: int,
            https_port: int, address: str, publish_address: str | None, nginx_binary: str, upstream_mode: str,
            state_dir: str, workers: str, ready_file: str | None, access_log: bool,
            netns: str | None) -> None:
    """Serve Ingresses of one class through a dedicated nginx (host/path routing, TLS)."""
    from netplane.cli.logs import setup_logging
    from netplane.ingress.controller import ControllerOptions, run_forever

    obj = ctx.obj or {}
    try:
        cluster = load_config(server=server_url or obj.get("server"), kubeconfig=kubeconfig or obj.get("kubeconfig"))
    except KubeconfigError as e:
        raise click.ClickException(str(e)) from e
    _port(http_port, "--http-port")
    _port(https_port, "--https-port", allow_zero=True)
    if address:
        try:
            ipaddress.ip_address(address)
        except ValueError as e:
            raise click.BadParameter(f"{address!r} is not an IP address", param_hint="--address") from e
    if not (os.path.isfile(nginx_binary) and os.access(nginx_binary, os.X_OK)) and not shutil.which(nginx_binary):
        raise click.ClickException(f"nginx binary {nginx_binary!r} not found (install Debian's nginx-light)")
    if workers != "auto" and not (workers.isdigit() and int(workers) > 0):
        raise click.BadParameter("must be 'auto' or a positive number", param_hint="--workers")
    opts = ControllerOptions(
        state_dir=Path(state_dir).absolute(), class_name=class_name, http_port=http_port, https_port=https_port,
        address=address, publish_address=publish_address, nginx_binary=shutil.which(nginx_binary) or nginx_binary,
        upstream_mode=upstream_mode, worker_processes=workers,
        ready_file=Path(ready_file) if ready_file else None, netns=netns,
        access_log=access_log,
    )
    setup_logging()
    run_forever(opts, cluster)
