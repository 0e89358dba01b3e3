"""`netplane cni ...`: install the plugin, serve its fast path."""

from __future__ import annotations

import signal
import sys

import click


@click.group()
def cni() -> None:
    """The CNI plugin: install it for a runtime, or serve its fast path."""


@cni.command()
@click.option("--bin-dir", default="/opt/cni/bin", show_default=True, help="Where the runtime looks for plugins.")
@click.option("--conf-dir", default="/etc/cni/net.d", show_default=True, help="Where the conflist goes.")
@click.option("--subnet", "subnets", multiple=True, help="Pod subnet (repeat for dual stack); writes a conflist.")
@click.option("--name", default="netplane", show_default=True, help="Network name in the conflist.")
@click.option("--bridge", default="cni0", show_default=True)
@click.option("--mtu", type=int, default=None)
@click.option("--ip-masq/--no-ip-masq", default=True, show_default=True)
@click.option("--portmap/--no-portmap", default=True, show_default=True, help="Chain the reference portmap.")
@click.option("--data-dir", default="/var/lib/cni/networks", show_default=True, help="IPAM state.")
@click.option("--cni-version", default=None, help="cniVersion of the conflist (default: the newest).")
@click.option("--agent-socket", default=None, help="Fast-path socket to name in the conflist.")
def install(bin_dir: str, conf_dir: str, subnets: tuple[str, ...], name: str, bridge: str, mtu: int | None,
            ip_masq: bool, portmap: bool, data_dir: str, cni_version: str | None,
            agent_socket: str | None) -> None:
    """Put the `netplane` and `netplane-ipam` executables into BIN_DIR (and a conflist with --subnet)."""
    from netplane.cni import install as inst
    from netplane.cni.config import parse
    from netplane.cni.errors import CNIError

    conf = None
    if subnets:
        conf = inst.conflist(name, list(subnets), bridge=bridge, cni_version=cni_version or inst.CHAIN_VERSION,
                             ip_masq=ip_masq, mtu=mtu, data_dir=data_dir, agent_socket=agent_socket,
                             portmap=portmap)
        first = dict(conf["plugins"][0], name=name, cniVersion=conf["cniVersion"])
        try:
            parse(first)  # the same validation the plugin will apply
        except CNIError as e:
            raise click.ClickException(f"{e.msg}: {e.details}") from e
    for path in inst.install_executables(bin_dir):
        click.echo(f"installed {path}")
    if conf is not None:
        click.echo(f"wrote {inst.write_conflist(conf_dir, conf)}")


@cni.command()
@click.option("--socket", "socket_path", default="/run/netplane/cni.sock", show_default=True,
              help="Unix socket the plugin executable forwards calls to.")
@click.option("--workers", default=8, show_default=True, help="Calls served at once.")
def serve(socket_path: str, workers: int) -> None:
    """Serve the plugin's fast path (warm netlink sockets) until SIGTERM/SIGINT."""
    from netplane.cni.service import CNIService

    service = CNIService(socket_path, workers=workers)

    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    click.echo(f"serving CNI calls on {socket_path}", err=True)
    service.start()
    try:
        signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        service.stop()
    sys.exit(0)
