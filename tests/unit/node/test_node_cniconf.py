"""Conflist rendering for both plugin flavours, and its atomic, change-only writing."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from netplane.cni.config import parse
from netplane.node.cniconf import conflist_text, render_conflist, write_if_changed


def test_netplane_conflist_is_accepted_by_the_netplane_plugin() -> None:
    conf = render_conflist("10.244.3.0/24", plugin="netplane", mtu=1450, ipam_data_dir="/var/lib/np/ipam",
                           agent_socket="/var/lib/np/cni.sock")
    assert conf["cniVersion"] == "1.0.0" and conf["name"] == "netplane"
    main, portmap = conf["plugins"]
    assert main == {"type": "netplane", "bridge": "cni0", "isGateway": True, "isDefaultGateway": True,
                    "ipMasq": False, "hairpinMode": True, "mtu": 1450, "agentSocket": "/var/lib/np/cni.sock",
                    "ipam": {"type": "netplane-ipam", "ranges": [[{"subnet": "10.244.3.0/24"}]],
                             "dataDir": "/var/lib/np/ipam"}}
    assert portmap == {"type": "portmap", "capabilities": {"portMappings": True}, "snat": True}
    netconf = parse(dict(main, name=conf["name"], cniVersion=conf["cniVersion"]))
    assert netconf.mtu == 1450 and not netconf.ip_masq and netconf.is_default_gateway
    assert [str(r.subnet) for rs in netconf.ipam.range_sets for r in rs] == ["10.244.3.0/24"]  # type: ignore[union-attr]


def test_reference_bridge_conflist_uses_host_local() -> None:
    conf = render_conflist("10.244.3.0/24", plugin="bridge", portmap=False)
    assert len(conf["plugins"]) == 1
    main = conf["plugins"][0]
    assert main["type"] == "bridge" and main["ipam"]["type"] == "host-local"
    assert "mtu" not in main and "agentSocket" not in main


def test_bad_inputs() -> None:
    with pytest.raises(ValueError):
        render_conflist("10.244.3.1/24")
    with pytest.raises(ValueError, match="unknown CNI plugin"):
        render_conflist("10.244.3.0/24", plugin="calico")


def test_write_only_when_changed(tmp_path: Path) -> None:
    path = str(tmp_path / "net.d" / "10-netplane.conflist")
    text = conflist_text(render_conflist("10.244.3.0/24"))
    assert write_if_changed(path, text)
    mtime = os.stat(path).st_mtime_ns
    assert not write_if_changed(path, text)
    assert os.stat(path).st_mtime_ns == mtime
    assert write_if_changed(path, conflist_text(render_conflist("10.244.4.0/24")))
    assert [p.name for p in (tmp_path / "net.d").iterdir()] == ["10-netplane.conflist"]  # no temp files left
