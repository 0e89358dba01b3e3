"""The `netplane` command: a click group whose subcommands load lazily.

Each subcommand lives in its own module (so `netplane get` never imports the
server, and the modules can grow independently); this file only dispatches.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from typing import Any

import click

# command name -> "module:attribute"
COMMANDS: dict[str, str] = {
    "server": "netplane.cli.server_cmd:server",
    "demo": "netplane.cli.demo_cmd:demo",
    "apply": "netplane.cli.objects_cmd:apply",
    "get": "netplane.cli.objects_cmd:get",
    "delete": "netplane.cli.objects_cmd:delete",
    "cni": "netplane.cli.cni_cmd:cni",
    "node": "netplane.cli.node_cmd:node",
    "logs": "netplane.cli.node_cmd:logs",
    "echo-server": "netplane.cli.node_cmd:echo_server",
    "cordon": "netplane.cli.nodes_cmd:cordon",
    "uncordon": "netplane.cli.nodes_cmd:uncordon",
    "drain": "netplane.cli.nodes_cmd:drain",
    "lab": "netplane.cli.lab_cmd:lab",
    "proxy": "netplane.cli.proxy_cmd:proxy",
    "dns": "netplane.cli.dns_cmd:dns",
    "ingress": "netplane.cli.ingress_cmd:ingress",
    "install": "netplane.cli.install_cmd:install", "uninstall": "netplane.cli.install_cmd:uninstall",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        # Only commands whose module is present: a partial install must still show its help.
        return sorted(n for n, t in COMMANDS.items() if importlib.util.find_spec(t.partition(":")[0]) is not None)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        module_name, _, attr = target.partition(":")
        module = importlib.import_module(module_name)
        cmd: click.Command = getattr(module, attr)
        return cmd


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--server", "server_url", envvar="NETPLANE_SERVER", default=None,
              help="State server URL (default: from kubeconfig, else http://127.0.0.1:6443).")
@click.option("--kubeconfig", envvar="KUBECONFIG", default=None, type=click.Path(dir_okay=False),
              help="Kubeconfig file to take the server, token and CA from.")
@click.version_option(package_name="netplane")
@click.pass_context
def cli(ctx: click.Context, server_url: str | None, kubeconfig: str | None) -> None:
    """netplane: the Linux data plane of a Kubernetes-style cluster."""
    ctx.ensure_object(dict)
    ctx.obj["server"] = server_url
    ctx.obj["kubeconfig"] = kubeconfig


def main(argv: list[str] | None = None) -> Any:
    """Entry point: expected errors become one line and exit 1; NETPLANE_DEBUG=1 shows tracebacks."""
    try:
        return cli.main(args=argv, standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(1)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except Exception as e:  # one clear line unless debugging
        if os.environ.get("NETPLANE_DEBUG"):
            raise
        click.echo(f"error: {e}", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
