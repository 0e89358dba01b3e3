"""`netplane dns`: the cluster DNS server (the CoreDNS role). Parses flags, runs the library."""

from __future__ import annotations

import click

from netplane.client.kubeconfig import KubeconfigError, load_config


@click.command("dns")
@click.option("--server", "server_url", default=None, help="State server URL.")
@click.option("--kubeconfig", default=None, type=click.Path(dir_okay=False), help="Kubeconfig file.")
@click.option("--listen", default="0.0.0.0:53", show_default=True, help="ADDR:PORT to serve on (UDP and TCP).")
@click.option("--zone", default="cluster.local", show_default=True, help="The cluster domain.")
@click.option("--upstream", "upstreams", multiple=True, metavar="IP[:PORT]",
              help="Resolver for names outside the zone (repeatable; default: the nameservers in --resolv-conf).")
@click.option("--resolv-conf", default="/etc/resolv.conf", show_default=True,
              help="Where to take upstreams from when no --upstream is given ('' for none: REFUSED).")
@click.option("--ttl", type=click.IntRange(0, 3600), default=5, show_default=True,
              help="TTL of the zone's records (and its negative-caching TTL).")
@click.option("--pod-records", type=click.Choice(["verified", "disabled"]), default="verified", show_default=True,
              help="Answer <a-b-c-d>.<ns>.pod.<zone> for existing pods' addresses, or not at all.")
@click.option("--sync-timeout", type=click.FloatRange(0, 600), default=5.0, show_default=True,
              help="Seconds to wait for the caches before serving anyway.")
@click.option("--ready-file", default=None, hidden=True, help="Write ADDR:PORT here once serving (tests).")
@click.pass_context
def dns(ctx: click.Context, server_url: str | None, kubeconfig: str | None, listen: str, zone: str,
        upstreams: tuple[str, ...], resolv_conf: str, ttl: int, pod_records: str, sync_timeout: float,
        ready_file: str | None) -> None:
    """Serve the cluster zone (Services, EndpointSlices, Pods) over UDP and TCP; forward other names."""
    from netplane.cli.logs import setup_logging
    from netplane.dns.daemon import DNSOptions, run_forever
    from netplane.dns.forward import parse_upstream
    from netplane.dns.server import parse_listen

    obj = ctx.obj or {}
    try:
        cluster = load_config(server=server_url or obj.get("server"), kubeconfig=kubeconfig or obj.get("kubeconfig"))
    except KubeconfigError as e:
        raise click.ClickException(str(e)) from e
    try:
        parse_listen(listen)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--listen") from e
    for u in upstreams:
        try:
            parse_upstream(u)
        except ValueError as e:
            raise click.BadParameter(str(e), param_hint="--upstream") from e
    zone = zone.strip().rstrip(".").lower()
    if not zone:
        raise click.BadParameter("must not be empty", param_hint="--zone")
    setup_logging()
    run_forever(DNSOptions(cluster=cluster, listen=listen, zone=zone, upstreams=upstreams,
                           resolv_conf=resolv_conf or None, ttl=ttl, pod_records=pod_records == "verified",
                           sync_timeout=sync_timeout, ready_file=ready_file))
