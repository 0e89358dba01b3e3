"""cni/30-netplane-chained.conflist run the way a runtime runs a conflist: netplane, then
Debian's reference portmap and bandwidth, each given the previous result; DEL in reverse.

Inside throwaway namespaces from the CNI tests' harness (even the "host" is a netns).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.cni.cni_harness import REFERENCE_DIR, Netns, Plugin, can_run, host_veths, install, ip_files

REPO = Path(__file__).resolve().parents[3]
CONFLIST = REPO / "cni" / "30-netplane-chained.conflist"

pytestmark = [pytest.mark.root, pytest.mark.prerequisite_missing(bool(can_run()), reason=can_run() or "ok")]


@pytest.fixture
def namespaces() -> Iterator[tuple[Netns, Netns]]:
    made: list[Netns] = []
    try:
        made.append(Netns())
        made.append(Netns())
        yield made[0], made[1]
    finally:
        for ns in made:
            ns.close()


def plugin_conf(conflist: dict[str, Any], index: int, runtime_config: dict[str, Any],
                prev: dict[str, Any] | None) -> dict[str, Any]:
    """What libcni hands plugin `index`: its entry plus name, cniVersion, its capabilities' runtimeConfig."""
    conf = dict(conflist["plugins"][index], name=conflist["name"], cniVersion=conflist["cniVersion"])
    wanted = {k: v for k, v in runtime_config.items() if conf.get("capabilities", {}).get(k)}
    if wanted:
        conf["runtimeConfig"] = wanted
    if prev is not None:
        conf["prevResult"] = prev
    return conf


def test_the_chained_example_works_with_the_reference_plugins(namespaces: tuple[Netns, Netns], tmp_path: Path) -> None:
    host, pod = namespaces
    conflist = json.loads(CONFLIST.read_text())
    assert [p["type"] for p in conflist["plugins"]] == ["netplane", "portmap", "bandwidth"]
    for p in conflist["plugins"][1:]:
        assert (Path(REFERENCE_DIR) / p["type"]).exists()
    # Only what must differ on a test machine: the bridge, subnet and IPAM dir.
    main = conflist["plugins"][0]
    main["bridge"] = "np-chain0"
    main["ipam"]["ranges"] = [[{"subnet": "10.79.0.0/24"}]]
    main["ipam"]["dataDir"] = str(tmp_path / "ipam")
    bin_dir = tmp_path / "bin"
    install(bin_dir)
    plugin = Plugin(bin_dir, tmp_path)
    runtime = {"portMappings": [{"hostPort": 18081, "containerPort": 80, "protocol": "tcp"}],
               "bandwidth": {"ingressRate": 8_000_000, "ingressBurst": 80_000}}

    prev: dict[str, Any] | None = None
    for i in range(len(conflist["plugins"])):
        res = plugin.exec(host, "ADD", plugin_conf(conflist, i, runtime, prev), container_id="c1", netns=pod.path)
        assert res.code == 0, (conflist["plugins"][i]["type"], res)
        prev = res.out
    assert prev is not None
    assert [ip["address"] for ip in prev["ips"]] == ["10.79.0.2/24"]
    assert pod.addrs("eth0") == ["10.79.0.2/24"]

    nat = host.run("iptables-save", "-t", "nat").stdout
    assert "--dport 18081" in nat and "10.79.0.2:80" in nat
    (veth,) = host_veths(host)
    qdiscs = host.run("tc", "qdisc", "show", "dev", veth).stdout
    assert "tbf" in qdiscs, qdiscs  # bandwidth shaped traffic towards the pod on the host end

    for i in reversed(range(len(conflist["plugins"]))):
        res = plugin.exec(host, "DEL", plugin_conf(conflist, i, runtime, prev), container_id="c1", netns=pod.path)
        assert res.code == 0, (conflist["plugins"][i]["type"], res)
    assert host_veths(host) == []
    assert ip_files(tmp_path / "ipam", "netplane") == {}
    assert "18081" not in host.run("iptables-save", "-t", "nat").stdout
