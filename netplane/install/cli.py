"""Command line of the installer (argparse: it must run before click is installed)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

from . import plan
from .installer import Installer, InstallError, Options
from .plan import PlanError, Settings

INSTALL_EPILOG = """\
examples:
  sudo python3 -m netplane.install --role all                        # one machine: server, node agent, proxy
  sudo python3 -m netplane.install --role control-plane --listen 0.0.0.0:6443
  sudo python3 -m netplane.install --role node --server http://10.0.0.10:6443 --address 10.0.0.11
  sudo netplane install --role node --kubeconfig /etc/netplane/kubeconfig   # agents of a kube-apiserver
  sudo netplane uninstall [--purge]

Re-running upgrades in place: the package is rebuilt from --source (default: the checkout
this runs from), units are rewritten, config files under /etc/netplane keep your edits
(only keys named by flags change), and the role's units are restarted.
"""


def build_parser(prog: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description="Install netplane on this Debian 12 machine (as root).",
                                epilog=INSTALL_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--role", choices=sorted(plan.ROLES), default="node",
                   help="control-plane: the state server; node: node agent + proxy; all: both (default: node)")
    p.add_argument("--with", dest="extras", action="append", choices=plan.OPTIONAL, default=[],
                   help="also enable this optional daemon (repeatable)")
    p.add_argument("--prefix", default=plan.DEFAULT_PREFIX, help="where the virtualenv goes (default: %(default)s)")
    p.add_argument("--source", help="checkout directory or wheel to install (default: the checkout this runs from; "
                                    "without one, the installed package is kept)")
    p.add_argument("--wheelhouse", help="install dependencies from this directory only (no index)")
    cfg = p.add_argument_group("configuration (written to /etc/netplane/*.env)")
    cfg.add_argument("--server", help="API server URL the agents use (NETPLANE_SERVER)")
    cfg.add_argument("--kubeconfig", help="kubeconfig the agents use (KUBECONFIG), e.g. for a kube-apiserver")
    cfg.add_argument("--node-name", help="this node's name (default on first install: the hostname)")
    cfg.add_argument("--address", help="this node's InternalIP (default on first install: the route's source)")
    cfg.add_argument("--listen", help="the state server's HOST:PORT")
    cfg.add_argument("--backend", choices=("vxlan", "host-gw"), help="pod network backend")
    cfg.add_argument("--proxy-mode", choices=("iptables", "nftables"), help="service proxy mode")
    cfg.add_argument("--cluster-cidr", help="pod CIDR (server, node agent and proxy)")
    cfg.add_argument("--service-cidr", help="service CIDR (server)")
    p.add_argument("--no-apt", dest="apt", action="store_false", help="fail instead of installing missing packages")
    p.add_argument("--no-start", dest="start", action="store_false", help="enable the units but do not (re)start")
    p.add_argument("--force", action="store_true", help="replace files at our paths that netplane did not install")
    return p


def uninstall_parser(prog: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description="Remove what `netplane install` installed, and nothing else.")
    p.add_argument("--prefix", default=plan.DEFAULT_PREFIX, help="the install's prefix (default: %(default)s)")
    p.add_argument("--purge", action="store_true",
                   help="also remove config files you edited and the daemons' state (/var/lib/netplane ...)")
    return p


def install_main(argv: Sequence[str], prog: str = "netplane install") -> int:
    a = build_parser(prog).parse_args(list(argv))
    settings = Settings(server=a.server, kubeconfig=a.kubeconfig, node_name=a.node_name, address=a.address,
                        listen=a.listen, backend=a.backend, proxy_mode=a.proxy_mode, cluster_cidr=a.cluster_cidr,
                        service_cidr=a.service_cidr)
    source = os.path.abspath(a.source) if a.source else None
    wheelhouse = os.path.abspath(a.wheelhouse) if a.wheelhouse else None
    opts = Options(role=a.role, extras=tuple(dict.fromkeys(a.extras)), prefix=a.prefix, source=source,
                   wheelhouse=wheelhouse, settings=settings, apt=a.apt, start=a.start, force=a.force)
    return _guard(lambda: Installer(a.prefix).install(opts))


def uninstall_main(argv: Sequence[str], prog: str = "netplane uninstall") -> int:
    a = uninstall_parser(prog).parse_args(list(argv))
    return _guard(lambda: Installer(a.prefix).uninstall(purge=a.purge))


def _guard(action: Callable[[], object]) -> int:
    try:
        action()
    except (InstallError, PlanError) as e:
        print(f"netplane-install: error: {e}", file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str]) -> int:
    """`python3 -m netplane.install [install] ARGS` or `python3 -m netplane.install uninstall ARGS`."""
    args = list(argv)
    if args[:1] == ["uninstall"]:
        return uninstall_main(args[1:], prog="python3 -m netplane.install uninstall")
    if args[:1] == ["install"]:
        args = args[1:]
    return install_main(args, prog="python3 -m netplane.install")
