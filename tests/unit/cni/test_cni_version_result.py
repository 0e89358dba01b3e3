"""Version negotiation and result shapes per version (no root)."""

from __future__ import annotations

import ipaddress
import json

import pytest

from netplane.cni import version
from netplane.cni.errors import CODE_INCOMPATIBLE_VERSION, CNIError
from netplane.cni.result import DNS, Interface, IPConfig, Result, Route, from_dict, to_dict

RESULT = Result(
    interfaces=(Interface("cni0", "aa:bb:cc:dd:ee:01"), Interface("veth1", "aa:bb:cc:dd:ee:02"),
                Interface("eth0", "aa:bb:cc:dd:ee:03", mtu=1400, sandbox="/run/netns/p")),
    ips=(IPConfig(ipaddress.ip_interface("10.1.0.2/24"), ipaddress.ip_address("10.1.0.1"), 2),
         IPConfig(ipaddress.ip_interface("fd00::2/120"), ipaddress.ip_address("fd00::1"), 2)),
    routes=(Route(ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_address("10.1.0.1"), mtu=1300, priority=5),),
    dns=DNS(nameservers=("10.96.0.10",), search=("svc.cluster.local",)),
)


def test_supported_versions_and_verbs() -> None:
    assert version.SUPPORTED == ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
    assert json.loads(version.version_reply()) == {"cniVersion": "1.1.0", "supportedVersions": list(version.SUPPORTED)}
    version.check_verb_allowed("CHECK", "0.4.0")
    version.check_verb_allowed("GC", "1.1.0")
    for verb, v in [("CHECK", "0.3.1"), ("GC", "1.0.0"), ("STATUS", "1.0.0")]:
        with pytest.raises(CNIError) as e:
            version.check_verb_allowed(verb, v)
        assert e.value.code == CODE_INCOMPATIBLE_VERSION


def test_version_compare() -> None:
    assert version.at_least("1.0.0", "0.4.0") and not version.at_least("0.3.1", "0.4.0")
    assert version.at_least("0.10.0", "0.4.0")  # numeric, not lexical
    with pytest.raises(ValueError):
        version.parse("1.0")


def test_shape_0_3_1_and_0_4_0_carry_ip_version() -> None:
    for v in ("0.3.1", "0.4.0"):
        d = to_dict(RESULT, v)
        assert d["cniVersion"] == v
        assert [ip["version"] for ip in d["ips"]] == ["4", "6"]
        assert "mtu" not in d["interfaces"][2] and d["routes"] == [{"dst": "0.0.0.0/0", "gw": "10.1.0.1"}]


def test_shape_1_0_0_drops_ip_version_and_1_1_0_fields() -> None:
    d = to_dict(RESULT, "1.0.0")
    assert d == {
        "cniVersion": "1.0.0",
        "interfaces": [{"name": "cni0", "mac": "aa:bb:cc:dd:ee:01"}, {"name": "veth1", "mac": "aa:bb:cc:dd:ee:02"},
                       {"name": "eth0", "mac": "aa:bb:cc:dd:ee:03", "sandbox": "/run/netns/p"}],
        "ips": [{"interface": 2, "address": "10.1.0.2/24", "gateway": "10.1.0.1"},
                {"interface": 2, "address": "fd00::2/120", "gateway": "fd00::1"}],
        "routes": [{"dst": "0.0.0.0/0", "gw": "10.1.0.1"}],
        "dns": {"nameservers": ["10.96.0.10"], "search": ["svc.cluster.local"]},
    }


def test_shape_1_1_0_adds_mtu_and_route_attributes() -> None:
    d = to_dict(RESULT, "1.1.0")
    assert d["interfaces"][2]["mtu"] == 1400
    assert d["routes"] == [{"dst": "0.0.0.0/0", "gw": "10.1.0.1", "mtu": 1300, "priority": 5}]


def test_empty_result_prints_dns_only() -> None:
    assert to_dict(Result(), "1.0.0") == {"cniVersion": "1.0.0", "dns": {}}


@pytest.mark.parametrize("v", version.SUPPORTED)
def test_round_trip_through_every_version(v: str) -> None:
    back = from_dict(to_dict(RESULT, v))
    assert back.ips == RESULT.ips and back.dns == RESULT.dns
    assert [i.name for i in back.interfaces] == ["cni0", "veth1", "eth0"]
    if v == "1.1.0":
        assert back == RESULT
