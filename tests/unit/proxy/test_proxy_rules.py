"""Golden rulesets and packet traces for both modes over one set of services (no kernel)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from netplane.proxy import tracer
from netplane.proxy.iptables import JUMPS, IptablesRenderer
from netplane.proxy.nftables import NftablesRenderer
from tests.unit.proxy.proxy_scenarios import CASES, CONFIG, NODE_IP, build_state

GOLDEN = Path(__file__).parent / "golden"
MODES = ("iptables", "nftables")


def render(mode: str) -> str:
    state = build_state()
    if mode == "iptables":
        return IptablesRenderer().plan(state).text
    return NftablesRenderer().plan(state).text


def model(mode: str) -> tracer.IptablesModel | tracer.NftModel:
    text = render(mode)
    return tracer.load_iptables([text], JUMPS) if mode == "iptables" else tracer.load_nft([text])


@pytest.mark.parametrize("mode", MODES)
def test_rendered_rules_match_golden(mode: str) -> None:
    # Compared as sorted lines (as kube-proxy's tests do): order inside a chain matters and is
    # checked by the traces below; the golden file makes every rule change visible in review.
    got = sorted(render(mode).splitlines())
    path = GOLDEN / f"{mode}.txt"
    if os.environ.get("NP_UPDATE_GOLDEN"):
        path.write_text("\n".join(got) + "\n")
    assert got == path.read_text().splitlines()


@pytest.mark.parametrize("mode", MODES)
def test_no_rule_jumps_to_an_undefined_chain(mode: str) -> None:
    assert model(mode).undefined_targets() == []


@pytest.mark.parametrize("mode", MODES)
def test_headless_and_externalname_get_no_rules(mode: str) -> None:
    text = render(mode)
    assert "headless" not in text and "extname" not in text and "10.244.1.99" not in text


def test_chain_names_fit_iptables_limit() -> None:
    for line in render("iptables").splitlines():
        if line.startswith(":"):
            assert len(line[1:].split()[0]) <= 28, line


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_trace(mode: str, case: tuple) -> None:
    _, src, dst, port, proto, origin, remembered, expected, masq = case
    ctx = tracer.context([NODE_IP, "127.0.0.1"], remembered)
    result = model(mode).trace(tracer.Packet(src, dst, port, proto, origin), ctx)
    if isinstance(expected, str):
        assert result.verdicts == {expected}, result
    else:
        assert result.verdicts == {"dnat"}, result
        assert result.endpoints() == pytest.approx(expected), result
    if masq is not None:
        assert result.masquerade == {masq}, result


@pytest.mark.parametrize("mode", MODES)
def test_masquerade_all_masquerades_pod_traffic(mode: str) -> None:
    from dataclasses import replace

    state = build_state(replace(CONFIG, masquerade_all=True))
    text = IptablesRenderer().plan(state).text if mode == "iptables" else NftablesRenderer().plan(state).text
    m = tracer.load_iptables([text], JUMPS) if mode == "iptables" else tracer.load_nft([text])
    result = m.trace(tracer.Packet("10.244.1.7", "10.96.0.81", 80), tracer.context([NODE_IP]))
    assert result.masquerade == {True}


@pytest.mark.parametrize("mode", MODES)
def test_nodeport_addresses_restrict_nodeports(mode: str) -> None:
    from dataclasses import replace

    config = replace(CONFIG, node_ips=(NODE_IP, "192.168.9.1"), nodeport_addresses=("192.168.0.0/24",))
    state = build_state(config)
    text = IptablesRenderer().plan(state).text if mode == "iptables" else NftablesRenderer().plan(state).text
    m = tracer.load_iptables([text], JUMPS) if mode == "iptables" else tracer.load_nft([text])
    ctx = tracer.context([NODE_IP, "192.168.9.1"])
    assert m.trace(tracer.Packet("172.16.0.5", NODE_IP, 30080), ctx).verdicts == {"dnat"}
    assert m.trace(tracer.Packet("172.16.0.5", "192.168.9.1", 30080), ctx).verdicts == {"accept"}
