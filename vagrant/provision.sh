#!/bin/sh
# Provision a netplane machine from a checkout: the one documented install command, run
# from the source tree. The Vagrantfile runs it on every VM; the install test runs it in a
# fresh Debian 12 root. All arguments go to `python3 -m netplane.install` (see its --help).
#
#   NETPLANE_SRC=/path/to/checkout sh provision.sh --role node --server http://cp:6443 --address 10.0.0.11
set -eu
SRC=${NETPLANE_SRC:-/vagrant}
if ! command -v python3 >/dev/null 2>&1; then
    # A minimal image may lack Python; everything else the install fetches itself.
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3
fi
cd "$SRC"
exec python3 -m netplane.install "$@"
