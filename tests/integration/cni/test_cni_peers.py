"""netplane beside its peers: chained portmap, delegated host-local, the fast path, and parity
with the reference bridge + host-local plugins (root, namespaces)."""

from __future__ import annotations

import copy
import os
import re
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.integration.cni.cni_harness import (
    Netns,
    Plugin,
    Server,
    bridge_conf,
    host_veths,
    ip_files,
    sh,
    snapshot,
    wait_for,
    with_prev,
)

pytestmark = pytest.mark.root

NET = "np-peers"


def test_chained_portmap_reaches_the_pod_through_a_host_port(plugin: Plugin, host: Netns,
                                                            make_pod: Callable[[], Netns],
                                                            tmp_path: Path) -> None:
    pod, client = make_pod(), make_pod()
    # An "uplink" between a client namespace and the host namespace.
    host.ip("link", "add", "np-up0", "type", "veth", "peer", "name", "np-up1", "netns", client.name)
    host.ip("addr", "add", "192.168.250.1/30", "dev", "np-up0")
    host.ip("link", "set", "np-up0", "up")
    client.ip("addr", "add", "192.168.250.2/30", "dev", "np-up1")
    client.ip("link", "set", "np-up1", "up")

    net = bridge_conf(NET, plugin.data_dir)
    portmap = {"cniVersion": "1.0.0", "name": NET, "type": "portmap", "capabilities": {"portMappings": True},
               "snat": True, "runtimeConfig": {"portMappings": [
                   {"hostPort": 18080, "containerPort": 80, "protocol": "tcp"}]}}
    add = plugin.exec(host, "ADD", net, container_id="web", netns=pod.path)
    assert add.code == 0
    chained = plugin.exec(host, "ADD", with_prev(portmap, add.out), container_id="web", netns=pod.path)
    assert chained.code == 0, chained
    # portmap passes our result on unchanged: prevResult went through intact.
    assert chained.out == add.out

    www = tmp_path / "www"
    www.mkdir()
    (www / "index.html").write_text("hello from the pod\n")
    httpd = pod.run("busybox", "httpd", "-p", "80", "-h", str(www))
    assert httpd.returncode == 0
    try:
        def fetched() -> bool:
            # busybox wget crashes on this machine (MACHINE-NOTES): curl it is.
            got = client.run("curl", "-s", "-m", "2", "http://192.168.250.1:18080/", check=False)
            return got.stdout == "hello from the pod\n"

        wait_for(fetched, 15, "the pod's web server through the host port")
    finally:
        # httpd daemonized inside the pod netns: end exactly the processes living there.
        for pid in sh("ip", "netns", "pids", pod.name).stdout.split():
            os.kill(int(pid), signal.SIGTERM)

    # The runtime deletes in reverse order.
    assert plugin.exec(host, "DEL", with_prev(portmap, add.out), container_id="web", netns=pod.path).code == 0
    assert plugin.exec(host, "DEL", with_prev(net, add.out), container_id="web", netns=pod.path).code == 0
    assert ip_files(plugin.data_dir, NET) == {} and host_veths(host) == ["np-up0"]
    assert "CNI-DN-" not in host.run("iptables-save", "-t", "nat").stdout


def test_delegated_ipam_host_local(plugin: Plugin, host: Netns, make_pod: Callable[[], Netns]) -> None:
    hl_dir = plugin.data_dir / "host-local"
    conf = bridge_conf(NET, plugin.data_dir)
    conf["ipam"] = {"type": "host-local", "ranges": [[{"subnet": "10.78.0.0/24"}]], "dataDir": str(hl_dir)}
    pod = make_pod()
    add = plugin.exec(host, "ADD", conf, container_id="ctr1", netns=pod.path)
    assert add.code == 0, add
    assert add.out is not None and add.out["ips"][0]["address"] == "10.78.0.2/24"
    assert ip_files(hl_dir, NET) == {"10.78.0.2": "ctr1\r\neth0"}
    assert pod.addrs("eth0") == ["10.78.0.2/24"]
    assert plugin.exec(host, "CHECK", with_prev(conf, add.out), container_id="ctr1", netns=pod.path).code == 0
    assert plugin.exec(host, "DEL", conf, container_id="ctr1", netns=pod.path).code == 0
    assert ip_files(hl_dir, NET) == {}

    # A failure after the delegate allocated gives the address back through its DEL.
    bad = copy.deepcopy(conf)
    bad["ipam"]["routes"] = [{"dst": "192.168.77.0/24", "gw": "172.31.255.1"}]
    res = plugin.exec(host, "ADD", bad, container_id="ctr2", netns=pod.path)
    assert res.error_code == 101
    assert ip_files(hl_dir, NET) == {} and host_veths(host) == []
    # A delegate that does not exist.
    missing = {**conf, "ipam": {"type": "no-such-ipam"}}
    assert plugin.exec(host, "ADD", missing, container_id="ctr3", netns=pod.path).error_code == 104


def test_reference_bridge_can_use_netplane_ipam(plugin: Plugin, host: Netns, make_pod: Callable[[], Netns]) -> None:
    """netplane-ipam is a plugin in its own right: the reference bridge delegates to it."""
    conf = {"cniVersion": "1.0.0", "name": NET, "type": "bridge", "bridge": "np-br1", "isGateway": True,
            "ipam": {"type": "netplane-ipam", "subnet": "10.79.0.0/24", "dataDir": str(plugin.data_dir)}}
    pod = make_pod()
    add = plugin.exec(host, "ADD", conf, container_id="ref1", netns=pod.path)
    assert add.code == 0, add
    assert pod.addrs("eth0") == ["10.79.0.2/24"]
    assert plugin.exec(host, "DEL", conf, container_id="ref1", netns=pod.path).code == 0
    assert ip_files(plugin.data_dir, NET) == {}


# -- parity --------------------------------------------------------------------------


def normalize(out: dict[str, Any] | None, veth: str, sandbox: str) -> Any:
    """A result with the random parts (host veth name, MACs, netns path) replaced by placeholders."""
    text = repr(out).replace(veth, "<veth>").replace(sandbox, "<sandbox>")
    return re.sub(r"([0-9a-f]{2}:){5}[0-9a-f]{2}", "<mac>", text)


def normalized_state(ns: Netns, veth: str | None) -> dict[str, Any]:
    snap = snapshot(ns)
    links = {("<veth>" if name == veth else name): (kind, master, mtu, up, hairpin)
             for name, (kind, master, mtu, up, _mac, hairpin) in snap["links"].items()}
    addrs = [("<veth>" if a[0] == veth else a[0], *a[1:]) for a in snap["addrs"]]
    routes = [r.replace(veth, "<veth>") if veth else r for r in snap["routes"]]
    return {"links": links, "addrs": addrs, "routes": routes}


def run_pair(plugin: Plugin, conf: dict[str, Any], make_pod: Callable[[], Netns]) -> tuple[Any, Any, Any]:
    """ADD in a fresh host + pod namespace; (normalized result, host state, pod state); then DEL."""
    host, pod = make_pod(), make_pod()
    pod.ip("link", "set", "lo", "down")  # as a runtime hands it over
    add = plugin.exec(host, "ADD", conf, container_id="parity", netns=pod.path)
    assert add.code == 0, add
    assert add.out is not None
    veth = add.out["interfaces"][1]["name"]
    state = (normalize(add.out, veth, pod.path), normalized_state(host, veth), normalized_state(pod, None))
    assert plugin.exec(host, "DEL", with_prev(conf, add.out), container_id="parity", netns=pod.path).code == 0
    return state


# Where netplane deliberately differs from bridge + host-local, for the same inputs:
#  - netplane brings the pod's `lo` up (the issue asks for it; with the reference that is the
#    separate `loopback` plugin's job);
#  - ipMasq lives in netplane's own nftables table instead of per-pod iptables chains (compared
#    by behaviour elsewhere, not here);
#  - hairpinMode defaults to true (the reference defaults to false): the configs below set it.
KNOWN_POD_DIFFERENCES = {"lo"}


def test_parity_with_reference_bridge_and_host_local(plugin: Plugin, make_pod: Callable[[], Netns]) -> None:
    common = {"cniVersion": "1.0.0", "name": NET, "bridge": "np-br2", "isGateway": True,
              "isDefaultGateway": True, "hairpinMode": True, "mtu": 1400, "dns": {"nameservers": ["10.96.0.10"]}}
    ipam = {"subnet": "10.80.0.0/24", "rangeStart": "10.80.0.10", "routes": [{"dst": "192.168.0.0/16"}]}
    ours = {**common, "type": "netplane",
            "ipam": {**ipam, "type": "netplane-ipam", "dataDir": str(plugin.data_dir / "ours")}}
    ref = {**common, "type": "bridge", "ipam": {**ipam, "type": "host-local", "dataDir": str(plugin.data_dir / "ref")}}
    our_result, our_host, our_pod = run_pair(plugin, ours, make_pod)
    ref_result, ref_host, ref_pod = run_pair(plugin, ref, make_pod)
    assert our_result == ref_result
    assert our_host == ref_host
    assert our_pod["links"]["lo"][3] is True and ref_pod["links"]["lo"][3] is False

    def without_lo(state: dict[str, Any]) -> dict[str, Any]:
        return {"links": {n: v for n, v in state["links"].items() if n not in KNOWN_POD_DIFFERENCES},
                "addrs": [a for a in state["addrs"] if a[0] not in KNOWN_POD_DIFFERENCES],
                "routes": state["routes"]}

    assert without_lo(our_pod) == without_lo(ref_pod)


def test_fast_path_matches_in_process(plugin: Plugin, host: Netns, make_pod: Callable[[], Netns],
                                      server: Server) -> None:
    conf = bridge_conf(NET, plugin.data_dir, version="1.1.0", bridge="np-br3", mtu=1450)
    # In-process in one host namespace ...
    slow = run_pair(plugin, {**conf, "ipam": {**conf["ipam"], "dataDir": str(plugin.data_dir / "slow")}}, make_pod)
    # ... and through the server, which lives in `host`.
    pod = make_pod()
    fast_conf = {**conf, "ipam": {**conf["ipam"], "dataDir": str(plugin.data_dir / "fast")}}
    env = {"NETPLANE_CNI_SOCKET": str(server.socket_path)}
    add = plugin.exec(host, "ADD", fast_conf, container_id="parity", netns=pod.path, env=env)
    assert add.code == 0 and add.out is not None
    veth = add.out["interfaces"][1]["name"]
    fast = (normalize(add.out, veth, pod.path), normalized_state(host, veth), normalized_state(pod, None))
    assert server.served("ADD") == 1
    assert fast == slow
    assert plugin.exec(host, "DEL", fast_conf, container_id="parity", netns=pod.path, env=env).code == 0
    assert server.served("DEL") == 1
    # A caller in another network namespace is declined and does the work itself.
    other_host = make_pod()
    res = plugin.exec(other_host, "ADD", fast_conf, container_id="other", netns=pod.path, env=env)
    assert res.code == 0 and server.served("ADD") == 1
    assert "np-br3" in other_host.links() and host_veths(host) == []
