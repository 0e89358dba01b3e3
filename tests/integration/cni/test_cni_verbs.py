"""Every verb through the installed executable, as a runtime calls it (root, namespaces)."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.integration.cni.cni_harness import (
    Netns,
    Plugin,
    Server,
    bridge_conf,
    host_veths,
    ip_files,
    masq_ips,
    snapshot,
    with_prev,
)

pytestmark = pytest.mark.root

NET = "np-itest"


@pytest.mark.parametrize("version", ["0.3.1", "0.4.0", "1.0.0", "1.1.0"])
def test_add_builds_the_pod_network_and_del_removes_it(plugin: Plugin, host: Netns,
                                                       make_pod: Callable[[], Netns], version: str) -> None:
    pod = make_pod()
    conf = bridge_conf(NET, plugin.data_dir, version=version, mtu=1400)
    res = plugin.exec(host, "ADD", conf, container_id="ctr1", netns=pod.path)
    assert res.code == 0, res
    out = res.out
    assert out is not None and out["cniVersion"] == version
    bridge, veth, eth0 = out["interfaces"]
    assert bridge["name"] == "np-br0" and veth["name"].startswith("veth")
    assert eth0["name"] == "eth0" and eth0["sandbox"] == pod.path
    assert ("mtu" in eth0) == (version == "1.1.0")
    ip = out["ips"][0]
    assert ip["address"] == "10.77.0.2/24" and ip["gateway"] == "10.77.0.1" and ip["interface"] == 2
    assert ("version" in ip) == (version < "1.0.0")
    assert out["routes"] == [{"dst": "0.0.0.0/0", "gw": "10.77.0.1"}]

    # Kernel state on the host side.
    links = host.links()
    assert links["np-br0"]["linkinfo"]["info_kind"] == "bridge" and "UP" in links["np-br0"]["flags"]
    port = links[veth["name"]]
    assert port["master"] == "np-br0" and port["mtu"] == 1400 and "UP" in port["flags"]
    assert port["linkinfo"]["info_slave_data"]["hairpin"] is True
    assert port["address"] == veth["mac"]
    assert host.addrs("np-br0") == ["10.77.0.1/24"]
    assert host.run("cat", "/proc/sys/net/ipv4/ip_forward").stdout.strip() == "1"
    assert masq_ips(host) == {"10.77.0.2"}
    # ... and in the pod.
    plinks = pod.links()
    assert plinks["eth0"]["address"] == eth0["mac"] and plinks["eth0"]["mtu"] == 1400
    assert "UP" in plinks["lo"]["flags"]
    assert pod.addrs("eth0") == ["10.77.0.2/24"]
    assert any(r["dst"] == "default" and r["gateway"] == "10.77.0.1" for r in pod.routes())
    assert ip_files(plugin.data_dir, NET) == {"10.77.0.2": "ctr1\r\neth0"}

    res = plugin.exec(host, "DEL", with_prev(conf, out), container_id="ctr1", netns=pod.path)
    assert res.code == 0 and res.out is None, res
    assert "eth0" not in pod.links() and host_veths(host) == []
    assert ip_files(plugin.data_dir, NET) == {} and masq_ips(host) == set()


def test_two_pods_reach_each_other_and_the_gateway(plugin: Plugin, host: Netns,
                                                    make_pod: Callable[[], Netns]) -> None:
    conf = bridge_conf(NET, plugin.data_dir)
    a, b = make_pod(), make_pod()
    assert plugin.exec(host, "ADD", conf, container_id="a", netns=a.path).code == 0
    res_b = plugin.exec(host, "ADD", conf, container_id="b", netns=b.path)
    assert res_b.code == 0 and res_b.out is not None
    b_ip = res_b.out["ips"][0]["address"].split("/")[0]
    assert a.run("busybox", "ping", "-c", "1", "-W", "2", b_ip).returncode == 0
    assert a.run("busybox", "ping", "-c", "1", "-W", "2", "10.77.0.1").returncode == 0


def test_a_reused_address_is_announced_so_neighbours_forget_the_old_mac(plugin: Plugin, host: Netns,
                                                                        make_pod: Callable[[], Netns]) -> None:
    """An address a deleted pod had must not stay mapped to its MAC on the host: DEL drops the
    host's neighbour entry, and ADD announces the new pod's MAC with a gratuitous ARP (as the
    reference bridge does), so the host reaches the new pod at once, not after the entry expires."""
    conf = bridge_conf(NET, plugin.data_dir)
    a, b, keeper = make_pod(), make_pod(), make_pod()
    # A pod that stays: a bridge whose last port goes loses its carrier, which flushes its neighbours.
    assert plugin.exec(host, "ADD", conf, container_id="keeper", netns=keeper.path).code == 0
    res_a = plugin.exec(host, "ADD", conf, container_id="a", netns=a.path)
    assert res_a.code == 0 and res_a.out is not None
    ip = res_a.out["ips"][0]["address"].split("/")[0]
    assert host.run("busybox", "ping", "-c", "1", "-W", "2", ip).returncode == 0  # the host learns a's MAC

    def neighbour_mac() -> str:
        entries = host.ipj("neigh", "show", "to", ip)
        return str(entries[0].get("lladdr", "")) if entries else ""

    assert neighbour_mac() == res_a.out["interfaces"][2]["mac"]
    assert plugin.exec(host, "DEL", with_prev(conf, res_a.out), container_id="a", netns=a.path).code == 0
    assert neighbour_mac() == ""  # forgotten with the pod
    res_b = plugin.exec(host, "ADD", conf, container_id="b", netns=b.path, env={"CNI_ARGS": f"IP={ip}"})
    assert res_b.code == 0 and res_b.out is not None
    assert res_b.out["ips"][0]["address"].split("/")[0] == ip
    b_mac = res_b.out["interfaces"][2]["mac"]
    assert b_mac != res_a.out["interfaces"][2]["mac"]
    # The announcement may beat the new bridge port to the forwarding state (the kernel enables
    # the port when it processes the carrier event, a moment later); then no entry is left.
    assert neighbour_mac() in ("", b_mac)
    assert host.run("busybox", "ping", "-c", "1", "-W", "1", ip).returncode == 0
    assert neighbour_mac() == b_mac


@pytest.mark.parametrize("made_by", ["plugin", "someone else"])
def test_the_bridge_mac_stays_put_as_pods_come_and_go(plugin: Plugin, host: Netns,
                                                      make_pod: Callable[[], Netns], made_by: str) -> None:
    """A bridge whose MAC the kernel assigned takes its lowest port MAC and changes when that port
    goes, which leaves every pod with a stale gateway MAC; the plugin pins it (creating it with a MAC
    of its own, or pinning one made elsewhere at the first ADD), as the reference bridge does."""
    conf = bridge_conf(NET, plugin.data_dir)
    if made_by == "someone else":
        host.ip("link", "add", "np-br0", "type", "bridge")
    pods = {name: make_pod() for name in ("a", "b", "c")}
    results = {}
    for name, pod in pods.items():
        res = plugin.exec(host, "ADD", conf, container_id=name, netns=pod.path)
        assert res.code == 0 and res.out is not None
        results[name] = res.out
    bridge_mac = host.links()["np-br0"]["address"]
    # Remove the pods in the order that would move an unpinned bridge's MAC each time; the others
    # must keep reaching the gateway at the MAC they have cached.
    remaining = set(results)
    for name in sorted(results, key=lambda n: results[n]["interfaces"][1]["mac"]):
        assert plugin.exec(host, "DEL", with_prev(conf, results[name]), container_id=name,
                           netns=pods[name].path).code == 0
        remaining.discard(name)
        assert host.links()["np-br0"]["address"] == bridge_mac
        for other in sorted(remaining):
            assert pods[other].run("busybox", "ping", "-c", "1", "-W", "1", "10.77.0.1").returncode == 0


def test_add_with_an_existing_ifname_fails_and_leaves_the_first_alone(plugin: Plugin, host: Netns,
                                                                       make_pod: Callable[[], Netns]) -> None:
    pod = make_pod()
    conf = bridge_conf(NET, plugin.data_dir)
    first = plugin.exec(host, "ADD", conf, container_id="ctr1", netns=pod.path)
    assert first.code == 0
    again = plugin.exec(host, "ADD", conf, container_id="ctr2", netns=pod.path)
    assert again.error_code == 100
    assert pod.addrs("eth0") == ["10.77.0.2/24"]
    assert ip_files(plugin.data_dir, NET) == {"10.77.0.2": "ctr1\r\neth0"}
    assert len(host_veths(host)) == 1


def test_del_is_idempotent_and_tolerates_missing_netns(plugin: Plugin, host: Netns,
                                                       make_pod: Callable[[], Netns]) -> None:
    conf = bridge_conf(NET, plugin.data_dir)
    pod = make_pod()
    assert plugin.exec(host, "ADD", conf, container_id="ctr1", netns=pod.path).code == 0
    for _ in range(2):
        assert plugin.exec(host, "DEL", conf, container_id="ctr1", netns=pod.path).code == 0
    # The netns is already gone: DEL still releases the address.
    gone = make_pod()
    assert plugin.exec(host, "ADD", conf, container_id="ctr2", netns=gone.path).code == 0
    gone.close()
    assert plugin.exec(host, "DEL", conf, container_id="ctr2", netns=gone.path).code == 0
    # CNI_NETNS empty (the runtime lost it).
    third = make_pod()
    assert plugin.exec(host, "ADD", conf, container_id="ctr3", netns=third.path).code == 0
    assert plugin.exec(host, "DEL", conf, container_id="ctr3", netns="").code == 0
    assert ip_files(plugin.data_dir, NET) == {}
    assert masq_ips(host) == set()
    assert host_veths(host) == [], "the host end of ctr3 (pod netns still alive) must go too"
    # Never ADDed at all.
    assert plugin.exec(host, "DEL", conf, container_id="never", netns=third.path).code == 0


def test_del_never_touches_interfaces_it_did_not_create(plugin: Plugin, host: Netns,
                                                        make_pod: Callable[[], Netns]) -> None:
    conf = bridge_conf(NET, plugin.data_dir)
    # The host's own lo, named as the pod's namespace: refused as a pod, left alone.
    assert plugin.exec(host, "DEL", conf, container_id="x", netns=host.path, ifname="lo").code == 0
    assert "UP" in host.links()["lo"]["flags"]
    # A non-veth device called eth0 inside a pod namespace.
    pod = make_pod()
    pod.ip("link", "add", "eth0", "type", "bridge")
    assert plugin.exec(host, "DEL", conf, container_id="x", netns=pod.path).code == 0
    assert "eth0" in pod.links()
    # A veth on the host that is not ours.
    host.ip("link", "add", "vethforeign", "type", "veth", "peer", "name", "vethforeign1")
    assert plugin.exec(host, "DEL", conf, container_id="x", netns="").code == 0
    assert "vethforeign" in host.links()


def test_check_passes_then_reports_what_went_missing(plugin: Plugin, host: Netns,
                                                     make_pod: Callable[[], Netns]) -> None:
    conf = bridge_conf(NET, plugin.data_dir)
    pod = make_pod()
    add = plugin.exec(host, "ADD", conf, container_id="ctr1", netns=pod.path)
    assert add.code == 0
    checked = with_prev(conf, add.out)
    before = (snapshot(host), snapshot(pod), masq_ips(host))
    assert plugin.exec(host, "CHECK", checked, container_id="ctr1", netns=pod.path).code == 0
    after = (snapshot(host), snapshot(pod), masq_ips(host))
    assert before == after, "CHECK must change nothing"

    pod.ip("route", "del", "default")
    res = plugin.exec(host, "CHECK", checked, container_id="ctr1", netns=pod.path)
    assert res.error_code == 105 and res.out is not None and "route" in res.out["msg"]
    pod.ip("addr", "flush", "dev", "eth0")
    assert plugin.exec(host, "CHECK", checked, container_id="ctr1", netns=pod.path).error_code == 105
    assert plugin.exec(host, "CHECK", checked, container_id="ctr1", netns=pod.path, ifname="eth9").error_code == 105
    (plugin.data_dir / NET / "10.77.0.2").unlink()
    res = plugin.exec(host, "CHECK", checked, container_id="ctr1", netns=pod.path)
    assert res.error_code == 105 and res.out is not None and "reservation" in res.out["msg"]


def test_error_codes_from_the_executable(plugin: Plugin, host: Netns, make_pod: Callable[[], Netns]) -> None:
    conf = bridge_conf(NET, plugin.data_dir)
    pod = make_pod()
    assert plugin.exec(host, "ADD", {**conf, "cniVersion": "0.2.0"}, container_id="c",
                       netns=pod.path).error_code == 1
    assert plugin.exec(host, "ADD", conf, container_id="", netns=pod.path).error_code == 4
    assert plugin.exec(host, "ADD", {**conf, "ipam": {"type": "netplane-ipam"}}, container_id="c",
                       netns=pod.path).error_code == 7
    assert plugin.exec(host, "ADD", conf, container_id="c", netns="/run/netns/np-cni-does-not-exist").error_code == 3
    # 6: stdin that is not JSON (exec directly: the harness always sends JSON).
    import subprocess

    proc = subprocess.run(["nsenter", f"--net={host.path}", str(plugin.bin_dir / "netplane")], input=b"{oops",
                          capture_output=True, env={"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c",
                                                    "CNI_NETNS": pod.path, "CNI_IFNAME": "eth0",
                                                    "CNI_PATH": plugin.cni_path, "NETPLANE_CNI_SOCKET": ""})
    assert proc.returncode != 0 and b'"code": 6' in proc.stdout and proc.stderr == b""
    # 11: another holder keeps the IPAM lock.
    lock_dir = plugin.data_dir / NET
    lock_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_dir / "lock", os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        res = plugin.exec(host, "ADD", conf, container_id="c", netns=pod.path,
                          env={"NETPLANE_CNI_LOCK_TIMEOUT": "0.3"})
        assert res.error_code == 11
    finally:
        os.close(fd)
    assert "eth0" not in pod.links() and host_veths(host) == []  # the failed ADD left nothing


def test_rollback_when_a_late_step_fails(plugin: Plugin, host: Netns, make_pod: Callable[[], Netns]) -> None:
    pod = make_pod()
    # The gateway of this route is off-link: the kernel refuses it after IPAM and the veth are done.
    conf = bridge_conf(NET, plugin.data_dir)
    conf["ipam"]["routes"] = [{"dst": "192.168.77.0/24", "gw": "172.31.255.1"}]
    res = plugin.exec(host, "ADD", conf, container_id="ctr1", netns=pod.path)
    assert res.error_code == 101, res
    assert "eth0" not in pod.links() and host_veths(host) == []
    assert ip_files(plugin.data_dir, NET) == {} and masq_ips(host) == set()


@pytest.mark.parametrize("nft", ["library", "exec"])
def test_rollback_when_ipmasq_fails(plugin: Plugin, host: Netns, make_pod: Callable[[], Netns], nft: str) -> None:
    # A real failure: something else already owns the name of our map, as a set.
    host.run("nft", "add table inet netplane_cni; add set inet netplane_cni pods4 { type ipv4_addr; }")
    pod = make_pod()
    conf = bridge_conf(NET, plugin.data_dir)
    res = plugin.exec(host, "ADD", conf, container_id="ctr1", netns=pod.path,
                      env={"NETPLANE_NFT": "exec"} if nft == "exec" else None)
    assert res.error_code == 106, res
    assert "cannot set up ipMasq" in res.out["msg"] and "not a map" in res.out["details"]  # type: ignore[index]
    assert "eth0" not in pod.links() and host_veths(host) == []
    assert ip_files(plugin.data_dir, NET) == {}


def parallel_add_del(plugin: Plugin, host: Netns, pods: list[Netns]) -> None:
    count = len(pods)
    conf = bridge_conf(NET, plugin.data_dir, subnet="10.77.0.0/16")

    def add(n: int) -> str:
        res = plugin.exec(host, "ADD", conf, container_id=f"ctr{n}", netns=pods[n].path, timeout=120)
        assert res.code == 0, res
        assert res.out is not None
        return str(res.out["ips"][0]["address"])

    with ThreadPoolExecutor(max_workers=count) as pool:
        addresses = list(pool.map(add, range(count)))
    assert len(set(addresses)) == count
    assert len(ip_files(plugin.data_dir, NET)) == count and len(host_veths(host)) == count

    def delete(n: int) -> int:
        return plugin.exec(host, "DEL", conf, container_id=f"ctr{n}", netns=pods[n].path, timeout=120).code

    with ThreadPoolExecutor(max_workers=count) as pool:
        assert set(pool.map(delete, range(count))) == {0}
    assert ip_files(plugin.data_dir, NET) == {} and host_veths(host) == [] and masq_ips(host) == set()


def test_fifty_parallel_adds_through_the_fast_path(plugin: Plugin, host: Netns, make_pod: Callable[[], Netns],
                                                   server: Server) -> None:
    plugin.extra_env["NETPLANE_CNI_SOCKET"] = str(server.socket_path)
    parallel_add_del(plugin, host, [make_pod() for _ in range(50)])
    assert server.served("ADD") == 50 and server.served("DEL") == 50


def test_parallel_adds_in_process(plugin: Plugin, host: Netns, make_pod: Callable[[], Netns]) -> None:
    # Every caller imports and runs the plugin itself (no server): the same guarantees, fewer callers
    # because each costs a whole Python start-up on two shared cores.
    parallel_add_del(plugin, host, [make_pod() for _ in range(10)])


def test_gc_removes_what_the_runtime_no_longer_knows(plugin: Plugin, host: Netns,
                                                     make_pod: Callable[[], Netns]) -> None:
    conf = bridge_conf(NET, plugin.data_dir, version="1.1.0")
    pods = {cid: make_pod() for cid in ("keep", "stale1", "stale2")}
    for cid, pod in pods.items():
        assert plugin.exec(host, "ADD", conf, container_id=cid, netns=pod.path).code == 0
    gc = {**conf, "cni.dev/valid-attachments": [{"containerID": "keep", "ifname": "eth0"}]}
    assert plugin.exec(host, "GC", gc, ifname="").code == 0
    assert list(ip_files(plugin.data_dir, NET).values()) == ["keep\r\neth0"]
    assert masq_ips(host) == {"10.77.0.2"}
    assert len(host_veths(host)) == 1 and "eth0" in pods["keep"].links()
    assert "eth0" not in pods["stale1"].links()
    # The older key name works too, and GC is idempotent.
    gc_old = {**conf, "cni.dev/attachments": [{"containerID": "keep", "ifname": "eth0"}]}
    assert plugin.exec(host, "GC", gc_old, ifname="").code == 0
    assert len(ip_files(plugin.data_dir, NET)) == 1


def test_status(plugin: Plugin, host: Netns, make_pod: Callable[[], Netns], tmp_path: Path) -> None:
    conf = bridge_conf(NET, plugin.data_dir, version="1.1.0", subnet="10.77.0.0/30")
    assert plugin.exec(host, "STATUS", conf, ifname="").code == 0
    pod = make_pod()
    assert plugin.exec(host, "ADD", conf, container_id="only", netns=pod.path).code == 0  # the /30's one address
    assert plugin.exec(host, "STATUS", conf, ifname="").error_code == 50
    blocked = tmp_path / "not-a-dir"
    blocked.write_text("")
    conf["ipam"]["dataDir"] = str(blocked)
    assert plugin.exec(host, "STATUS", conf, ifname="").error_code == 50


def test_version(plugin: Plugin, host: Netns) -> None:
    res = plugin.exec(host, "VERSION", {"cniVersion": "1.0.0"}, ifname="")
    assert res.code == 0 and res.out == {"cniVersion": "1.1.0",
                                         "supportedVersions": ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]}


def test_a_bridge_carries_one_ipv4_network_unless_forced(plugin: Plugin, host: Netns,
                                                         make_pod: Callable[[], Netns]) -> None:
    first, second = make_pod(), make_pod()
    assert plugin.exec(host, "ADD", bridge_conf(NET, plugin.data_dir), container_id="a", netns=first.path).code == 0
    other = bridge_conf("np-other", plugin.data_dir, subnet="10.66.0.0/24")
    res = plugin.exec(host, "ADD", other, container_id="b", netns=second.path)
    assert res.error_code == 107, res
    assert host.addrs("np-br0") == ["10.77.0.1/24"]
    assert "eth0" not in second.links() and ip_files(plugin.data_dir, "np-other") == {}
    forced = {**other, "forceAddress": True}
    assert plugin.exec(host, "ADD", forced, container_id="b", netns=second.path).code == 0
    assert host.addrs("np-br0") == ["10.66.0.1/24"]


def test_dual_stack(plugin: Plugin, host: Netns, make_pod: Callable[[], Netns]) -> None:
    conf = bridge_conf(NET, plugin.data_dir, version="1.1.0")
    conf["ipam"] = {"type": "netplane-ipam", "dataDir": str(plugin.data_dir),
                    "ranges": [[{"subnet": "10.77.0.0/24"}], [{"subnet": "fd77::/64"}]]}
    a, b = make_pod(), make_pod()
    res = plugin.exec(host, "ADD", conf, container_id="a", netns=a.path)
    assert res.code == 0, res
    assert res.out is not None
    assert [ip["address"] for ip in res.out["ips"]] == ["10.77.0.2/24", "fd77::2/64"]
    assert {r["dst"] for r in res.out["routes"]} == {"0.0.0.0/0", "::/0"}
    assert plugin.exec(host, "ADD", conf, container_id="b", netns=b.path).code == 0
    assert sorted(host.addrs("np-br0")) == ["10.77.0.1/24", "fd77::1/64"]
    assert masq_ips(host) == {"10.77.0.2", "10.77.0.3", "fd77::2", "fd77::3"}
    assert a.run("busybox", "ping", "-c", "1", "-W", "3", "fd77::3").returncode == 0
    assert plugin.exec(host, "CHECK", with_prev(conf, res.out), container_id="a", netns=a.path).code == 0
    for cid, pod in (("a", a), ("b", b)):
        assert plugin.exec(host, "DEL", conf, container_id=cid, netns=pod.path).code == 0
    assert ip_files(plugin.data_dir, NET) == {} and masq_ips(host) == set()
