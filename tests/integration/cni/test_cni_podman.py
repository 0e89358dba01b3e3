"""A real runtime: Debian's podman 4.3 with its CNI backend runs busybox containers through netplane.

Podman runs inside a private network namespace (the "host") and a private mount
namespace whose /run and /var/lib are fresh tmpfs mounts, with its root, runroot
and tmp dir under the test's temp dir: its netns files, runc state, CNI result
cache and image caches all vanish with the test. Its configuration follows
MACHINE-NOTES (runc, cgroupfs, no default ulimits, the CNI backend, our own
plugin and config dirs only). One shell script drives podman so that every
podman process, and conmon's cleanup process, share that mount namespace.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.integration.cni.cni_harness import VENV_BIN, Netns, host_veths

pytestmark = pytest.mark.root

SCRIPT = r"""
set -eu
T="$1"
MODE="$2"
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /var/lib
mkdir -p /run/netns
export CONTAINERS_CONF="$T/containers.conf" CONTAINERS_STORAGE_CONF="$T/storage.conf"
export CONTAINERS_REGISTRIES_CONF="$T/registries.conf"
report() { echo "@@ $1 $2"; }
if [ "$MODE" = fast ]; then
  "$VENV_BIN/netplane" cni serve --socket "$T/cni.sock" 2> "$T/server.log" &
  SERVER=$!
  i=0; while [ ! -S "$T/cni.sock" ] && [ $i -lt 200 ]; do sleep 0.05; i=$((i+1)); done
fi
tar -C "$T/rootfs" -c . | podman import - localhost/npbb > /dev/null 2>&1
podman run -d --name a --network npnet localhost/npbb /bin/busybox sleep 120 > /dev/null
podman run -d --name b --network npnet localhost/npbb /bin/busybox sleep 120 > /dev/null
A=$(podman inspect -f '{{(index .NetworkSettings.Networks "npnet").IPAddress}}' a)
B=$(podman inspect -f '{{(index .NetworkSettings.Networks "npnet").IPAddress}}' b)
report ips "[\"$A\", \"$B\"]"
if podman exec a /bin/busybox ping -c 1 -W 3 "$B" > /dev/null; then report ping true; else report ping false; fi
report reserved "$(ls "$T/data/npnet" | grep -c '^10\.' || true)"
podman rm -f -t 0 a b > /dev/null
report reserved_after "$(ls "$T/data/npnet" | grep -c '^10\.' || true)"
report netns_after "$(ls /run/netns | wc -l)"
if [ "$MODE" = fast ]; then kill "$SERVER"; wait "$SERVER" || true; fi
"""


def write_config(tmp: Path, bin_dir: Path, agent_socket: str) -> None:
    (tmp / "root").mkdir()
    (tmp / "runroot").mkdir()
    (tmp / "tmp").mkdir()
    (tmp / "net.d").mkdir()
    (tmp / "data").mkdir()
    (tmp / "containers.conf").write_text(f"""
[containers]
default_ulimits = []
[engine]
cgroup_manager = "cgroupfs"
runtime = "runc"
events_logger = "none"
tmp_dir = "{tmp}/tmp"
[network]
network_backend = "cni"
cni_plugin_dirs = ["{bin_dir}", "/usr/lib/cni"]
network_config_dir = "{tmp}/net.d"
""")
    storage = f'[storage]\ndriver = "vfs"\ngraphroot = "{tmp}/root"\nrunroot = "{tmp}/runroot"\n'
    (tmp / "storage.conf").write_text(storage)
    (tmp / "registries.conf").write_text("")
    plugin: dict[str, Any] = {
        "type": "netplane", "bridge": "np-pbr0", "isGateway": True, "isDefaultGateway": True, "ipMasq": True,
        "ipam": {"type": "netplane-ipam", "subnet": "10.88.77.0/24", "dataDir": f"{tmp}/data"},
    }
    if agent_socket:
        plugin["agentSocket"] = agent_socket
    conflist = {"cniVersion": "1.0.0", "name": "npnet", "plugins": [plugin]}
    (tmp / "net.d" / "npnet.conflist").write_text(json.dumps(conflist))
    rootfs = tmp / "rootfs" / "bin"
    rootfs.mkdir(parents=True)
    shutil.copy2(shutil.which("busybox") or "/bin/busybox", rootfs / "busybox")


@pytest.mark.parametrize("mode", ["in-process", "fast"])
def test_podman_runs_containers_through_netplane(bin_dir: Path, host: Netns, tmp_path: Path, mode: str) -> None:
    for tool in ("podman", "runc", "busybox", "unshare"):
        if shutil.which(tool) is None:
            pytest.fail(f"needs {tool}")
    work = tmp_path / "podman"
    work.mkdir()
    write_config(work, bin_dir, str(work / "cni.sock") if mode == "fast" else "")
    # Where podman, runc and libcni keep state by default: none of it may appear on the machine.
    traces = ("/var/lib/cni", "/run/runc", "/var/lib/containers", "/run/containers", "/run/libpod")
    before = {p for p in traces if Path(p).exists()}
    script = work / "run.sh"
    script.write_text(SCRIPT)
    proc = subprocess.run(
        ["nsenter", f"--net={host.path}", "unshare", "--mount", "--propagation", "private",
         "sh", str(script), str(work), mode],
        capture_output=True, text=True, timeout=120, env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
                                                           "VENV_BIN": str(VENV_BIN)})
    reports = {line.split(" ", 2)[1]: line.split(" ", 2)[2] for line in proc.stdout.splitlines()
               if line.startswith("@@ ")}
    assert proc.returncode == 0, (proc.stdout, proc.stderr)
    ips = json.loads(reports["ips"])
    assert len(set(ips)) == 2 and all(ip.startswith("10.88.77.") for ip in ips)
    assert reports["ping"] == "true", "container a reaches container b across the bridge"
    assert reports["reserved"] == "2"
    assert reports["reserved_after"] == "0", "removing the containers released their addresses"
    assert reports["netns_after"] == "0"
    assert host_veths(host) == [] and "np-pbr0" in host.links()
    assert {p for p in traces if Path(p).exists()} <= before
    if mode == "fast":
        log = (work / "server.log").read_text()
        assert log.count("event=served command=ADD ") == 2, log
        assert log.count("event=served command=DEL ") >= 2, log
