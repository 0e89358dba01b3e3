"""Config parsing and validation (no root)."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest

from netplane.cni import config
from netplane.cni.errors import (
    CODE_DECODE,
    CODE_INCOMPATIBLE_VERSION,
    CODE_INVALID_CONFIG,
    CODE_UNSUPPORTED_FIELD,
    CNIError,
)


def conf(**over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "cniVersion": "1.0.0", "name": "net1", "type": "netplane",
        "ipam": {"type": "netplane-ipam", "subnet": "10.1.0.0/24"},
    }
    base.update(over)
    return base


def ipam(**over: Any) -> dict[str, Any]:
    return conf(ipam={"type": "netplane-ipam", **over})


def code_of(raw: dict[str, Any]) -> int:
    with pytest.raises(CNIError) as e:
        config.parse(raw)
    return e.value.code


def test_defaults_follow_the_reference_bridge() -> None:
    c = config.parse(conf())
    assert (c.bridge, c.is_gateway, c.is_default_gateway, c.ip_masq, c.hairpin_mode, c.mtu) == (
        "cni0", False, False, False, True, None)
    assert c.ipam is not None and c.ipam.builtin
    (r,) = c.ipam.range_sets[0]
    assert (str(r.range_start), str(r.range_end), str(r.gateway)) == ("10.1.0.1", "10.1.0.254", "10.1.0.1")
    assert c.ipam.data_dir == "/var/lib/cni/networks"


def test_default_gateway_implies_gateway() -> None:
    c = config.parse(conf(isDefaultGateway=True))
    assert c.is_gateway and c.is_default_gateway


def test_ranges_and_legacy_subnet_combine_in_host_local_order() -> None:
    c = config.parse(ipam(subnet="10.1.0.0/24", ranges=[[{"subnet": "fd00::/120", "rangeStart": "fd00::10"}]]))
    assert c.ipam is not None
    assert [rs[0].subnet.version for rs in c.ipam.range_sets] == [4, 6]
    six = c.ipam.range_sets[1][0]
    assert str(six.range_start) == "fd00::10" and str(six.range_end) == "fd00::ff"


@pytest.mark.parametrize("stdin", [b"", b"{", b"[1,2]", b"\xff\xfe", b'"text"'])
def test_undecodable_stdin_is_code_6(stdin: bytes) -> None:
    with pytest.raises(CNIError) as e:
        config.decode(stdin)
    assert e.value.code == CODE_DECODE


@pytest.mark.parametrize("version", ["0.1.0", "0.2.0", "2.0.0", "1.0", None])
def test_unsupported_or_missing_version_is_code_1(version: str | None) -> None:
    raw = conf()
    if version is None:
        del raw["cniVersion"]
    else:
        raw["cniVersion"] = version
    assert code_of(raw) == CODE_INCOMPATIBLE_VERSION


@pytest.mark.parametrize("raw", [
    conf(name="bad/name"),
    conf(name=""),
    conf(type=5),
    conf(bridge="a-bridge-name-too-long"),
    conf(bridge="has space"),
    conf(mtu=20),
    conf(mtu="1500"),
    conf(isGateway="yes"),
    conf(ipam=None),
    conf(ipam={"type": ""}),
    conf(ipam={"type": "../../bin/sh"}),
    ipam(),
    ipam(subnet="10.1.0.1/24"),            # host bits set
    ipam(subnet="10.1.0.0/31"),            # too small
    ipam(subnet="not-a-cidr"),
    ipam(subnet="10.1.0.0/24", rangeStart="10.2.0.5"),
    ipam(subnet="10.1.0.0/24", rangeStart="10.1.0.200", rangeEnd="10.1.0.100"),
    ipam(subnet="10.1.0.0/24", rangeEnd="10.1.0.255"),   # broadcast
    ipam(subnet="10.1.0.0/24", gateway="10.9.9.9"),
    ipam(ranges=[[{"subnet": "10.1.0.0/24"}, {"subnet": "fd00::/120"}]]),  # mixed families in one set
    ipam(ranges=[[{"subnet": "10.1.0.0/24"}], [{"subnet": "10.1.0.0/25"}]]),  # overlap
    ipam(ranges=[]),
    ipam(ranges=[[]]),
    ipam(subnet="10.1.0.0/24", routes=[{"gw": "10.1.0.1"}]),
    ipam(subnet="10.1.0.0/24", routes=[{"dst": "0.0.0.0/0", "gw": "fd00::1"}]),
    ipam(subnet="10.1.0.0/24", dataDir="relative/dir"),
    conf(dns={"nameservers": "10.0.0.10"}),
    conf(prevResult={"ips": [{"address": "10.1.0.2/24", "interface": 3}]}),
])
def test_invalid_config_is_code_7(raw: dict[str, Any]) -> None:
    assert code_of(raw) == CODE_INVALID_CONFIG


@pytest.mark.parametrize("field,value", [("vlan", 100), ("promiscMode", True), ("macspoofchk", True)])
def test_bridge_features_we_lack_are_code_2(field: str, value: object) -> None:
    assert code_of(conf(**{field: value})) == CODE_UNSUPPORTED_FIELD
    # ... but the IPAM plugin, called by someone else's bridge, does not care.
    assert config.parse(conf(**{field: value}), bridge=False).name == "net1"


def test_delegated_ipam_keeps_its_config_verbatim() -> None:
    raw = conf(ipam={"type": "host-local", "ranges": [[{"subnet": "10.5.0.0/16"}]], "extra": 1})
    c = config.parse(raw)
    assert c.ipam is not None and not c.ipam.builtin and c.ipam.raw["extra"] == 1 and c.ipam.range_sets == ()


def test_valid_attachments_both_keys() -> None:
    att = [{"containerID": "a", "ifname": "eth0"}]
    assert config.parse(conf(cniVersion="1.1.0", **{"cni.dev/valid-attachments": att})).valid_attachments == {
        ("a", "eth0")}
    assert config.parse(conf(cniVersion="1.1.0", **{"cni.dev/attachments": att})).valid_attachments == {
        ("a", "eth0")}
    assert config.parse(conf()).valid_attachments is None
    assert code_of(conf(**{"cni.dev/valid-attachments": [{"containerID": 1}]})) == CODE_INVALID_CONFIG


def test_prev_result_is_parsed() -> None:
    c = config.parse(conf(prevResult={
        "cniVersion": "1.0.0",
        "interfaces": [{"name": "eth0", "sandbox": "/run/netns/x"}],
        "ips": [{"address": "10.1.0.2/24", "gateway": "10.1.0.1", "interface": 0}],
        "routes": [{"dst": "0.0.0.0/0"}],
    }))
    assert c.prev_result is not None
    assert c.prev_result.ips[0].address == ipaddress.ip_interface("10.1.0.2/24")
    assert c.prev_result.routes[0].gw is None


def test_resolv_conf(tmp_path: Any) -> None:
    path = tmp_path / "resolv.conf"
    path.write_text("# comment\nnameserver 10.96.0.10\nsearch a.svc b.svc\noptions ndots:5\ndomain x\n")
    c = config.parse(ipam(subnet="10.1.0.0/24", resolvConf=str(path)))
    assert c.ipam is not None
    assert c.ipam.dns.to_dict() == {"nameservers": ["10.96.0.10"], "domain": "x",
                                    "search": ["a.svc", "b.svc"], "options": ["ndots:5"]}


@pytest.mark.parametrize("name,ok", [("eth0", True), ("a" * 15, True), ("a" * 16, False), ("", False),
                                     (".", False), ("a/b", False), ("a:b", False), ("a b", False)])
def test_ifname_rules(name: str, ok: bool) -> None:
    assert config.valid_ifname(name) is ok
