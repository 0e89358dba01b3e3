"""`netplane install` / `netplane uninstall`: thin wrappers over netplane.install.

The installer parses its own arguments (argparse), because the same code runs as
`python3 -m netplane.install` on a machine without click; these commands hand it argv.
"""

from __future__ import annotations

import sys

import click

_PASS_THROUGH = {"ignore_unknown_options": True, "allow_extra_args": True, "help_option_names": []}


@click.command(context_settings=_PASS_THROUGH, add_help_option=False)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def install(args: tuple[str, ...]) -> None:
    """Install or upgrade netplane on this machine: venv, CNI executables, /etc/netplane, systemd units."""
    from netplane.install.cli import install_main

    sys.exit(install_main(args))


@click.command(context_settings=_PASS_THROUGH, add_help_option=False)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def uninstall(args: tuple[str, ...]) -> None:
    """Remove what `netplane install` installed, and nothing else."""
    from netplane.install.cli import uninstall_main

    sys.exit(uninstall_main(args))
