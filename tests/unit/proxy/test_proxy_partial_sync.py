"""Partial syncs must leave exactly what a full sync of the same state leaves (both modes)."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from netplane.proxy import tracer
from netplane.proxy.changes import EndpointsChangeTracker, ServiceChangeTracker
from netplane.proxy.fixtures import endpoint_slice, service
from netplane.proxy.iptables import JUMPS, IptablesRenderer
from netplane.proxy.nftables import NftablesRenderer
from netplane.proxy.state import ProxyState
from tests.unit.proxy.proxy_scenarios import CONFIG, NODE, objects

NAMES = ["web", "np", "np-local", "lb", "aff", "itp", "empty", "term"]
EPS = [("10.244.1.2", NODE), ("10.244.1.3", NODE), ("10.244.2.2", "n2"), ("10.244.2.3", "n2")]

op_strategy = st.one_of(
    st.tuples(st.just("endpoints"), st.sampled_from(NAMES),
              st.lists(st.tuples(st.sampled_from(EPS), st.sampled_from(["ready", "terminating", "gone"])),
                       max_size=4)),
    st.tuples(st.just("delete-service"), st.sampled_from(NAMES), st.just(None)),
    st.tuples(st.just("restore-service"), st.sampled_from(NAMES), st.just(None)),
    st.tuples(st.just("variant"), st.sampled_from(NAMES),
              st.sampled_from(["affinity", "local", "itp", "nodeport", "lb-ranges"])),
)


def _variant(name: str, kind: str) -> dict[str, Any]:
    ip = f"10.96.1.{NAMES.index(name) + 1}"
    if kind == "affinity":
        return service(name, ip, affinity_timeout=30)
    if kind == "local":
        return service(name, ip, ports=(("", 80, "TCP", 31000 + NAMES.index(name)),), type="NodePort",
                       external_policy="Local")
    if kind == "itp":
        return service(name, ip, internal_policy="Local")
    if kind == "nodeport":
        return service(name, ip, ports=(("", 80, "TCP", 31000 + NAMES.index(name)),), type="NodePort")
    return service(name, ip, ports=(("", 80, "TCP", 31000 + NAMES.index(name)),), type="LoadBalancer",
                   lb_ips=[f"203.0.113.{NAMES.index(name) + 1}"], source_ranges=["198.51.100.0/24"])


def _apply_op(op: tuple, svcs: ServiceChangeTracker, eps: EndpointsChangeTracker,
              originals: dict[str, dict[str, Any]]) -> None:
    kind, name, arg = op
    if kind == "endpoints":
        chosen: list[Any] = []
        for (ip, node), cond in arg:
            if cond == "ready":
                chosen.append((ip, node))
            elif cond == "terminating":
                chosen.append((ip, node, False, True, True))
        eps.update(None, endpoint_slice(name, chosen, ports=(("", 80, "TCP"), ("http", 8080, "TCP"),
                                                             ("dns", 5353, "UDP"))))
    elif kind == "delete-service":
        svcs.update(originals[name], None)
    elif kind == "restore-service":
        svcs.update(None, originals[name])
    else:
        svcs.update(None, _variant(name, arg))


def _snapshot_ipt(m: tracer.IptablesModel) -> dict:
    return {t: {c: list(r) for c, r in chains.items()} for t, chains in m.tables.items()}


def _snapshot_nft(m: tracer.NftModel) -> tuple:
    return (m.chains, m.maps, m.sets, m.base)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(op_strategy, min_size=1, max_size=4), min_size=1, max_size=5))
def test_partial_syncs_converge_to_the_full_ruleset(batches: list[list[tuple]]) -> None:
    services, slices = objects()
    originals = {s["metadata"]["name"]: s for s in services}
    state = ProxyState(CONFIG)
    svcs, eps = ServiceChangeTracker(), EndpointsChangeTracker()
    for s in services:
        svcs.update(None, s)
    for e in slices:
        eps.update(None, e)
    svcs.apply(state.services)
    eps.apply(state.endpoints)
    ipt, nft = IptablesRenderer(), NftablesRenderer()
    ipt_plan, nft_plan = ipt.plan(state), nft.plan(state)
    ipt.commit(ipt_plan)
    nft.commit(nft_plan)
    ipt_model = tracer.load_iptables([ipt_plan.text], JUMPS)
    nft_model = tracer.load_nft([nft_plan.text])
    for batch in batches:
        for op in batch:
            _apply_op(op, svcs, eps, originals)
        changed = svcs.apply(state.services).updated | eps.apply(state.endpoints).updated
        p1, p2 = ipt.plan(state, changed), nft.plan(state, changed)
        assert not p1.full and not p2.full
        ipt_model.restore(p1.text)
        nft_model.apply(p2.text)
        ipt.commit(p1)
        nft.commit(p2)
        fresh_ipt_plan, fresh_nft_plan = IptablesRenderer().plan(state), NftablesRenderer().plan(state)
        fresh_ipt = tracer.load_iptables([fresh_ipt_plan.text], JUMPS)
        fresh_nft = tracer.load_nft([fresh_nft_plan.text])
        assert _snapshot_ipt(ipt_model) == _snapshot_ipt(fresh_ipt)
        assert _snapshot_nft(nft_model) == _snapshot_nft(fresh_nft)
        assert ipt_model.undefined_targets() == [] and nft_model.undefined_targets() == []
        # Counts kept by difference in partial plans match a recount.
        assert p1.rule_counts == fresh_ipt_plan.rule_counts and p2.rule_counts == fresh_nft_plan.rule_counts


def test_full_sync_after_restart_removes_stale_chains_without_flushing_first() -> None:
    services, slices = objects()
    state = ProxyState(CONFIG)
    svcs, eps = ServiceChangeTracker(), EndpointsChangeTracker()
    for s in services:
        svcs.update(None, s)
    for e in slices:
        eps.update(None, e)
    svcs.apply(state.services)
    eps.apply(state.endpoints)
    ipt_model = tracer.load_iptables([IptablesRenderer().plan(state).text], JUMPS)
    nft_model = tracer.load_nft([NftablesRenderer().plan(state).text])
    # While the proxy was down, a service went away.
    svcs.update(services[0], None)
    svcs.apply(state.services)
    # A new process: no memory, but the kernel still has the old chains.
    ipt_plan = IptablesRenderer().plan(state, existing=ipt_model.user_chains())
    nft_plan = NftablesRenderer().plan(state, existing={
        "chains": set(nft_model.chains), "maps": set(nft_model.maps), "sets": set(nft_model.sets)})
    # No flush of the whole table: the text only declares, rewrites and deletes our own chains.
    assert "-F" not in ipt_plan.text.split() and "flush ruleset" not in nft_plan.text
    assert "delete table" not in nft_plan.text
    ipt_model.restore(ipt_plan.text)
    nft_model.apply(nft_plan.text)
    fresh_ipt = tracer.load_iptables([IptablesRenderer().plan(state).text], JUMPS)
    fresh_nft = tracer.load_nft([NftablesRenderer().plan(state).text])
    assert _snapshot_ipt(ipt_model) == _snapshot_ipt(fresh_ipt)
    assert _snapshot_nft(nft_model) == _snapshot_nft(fresh_nft)


def test_partial_sync_touches_only_the_changed_service() -> None:
    services, slices = objects()
    state = ProxyState(CONFIG)
    svcs, eps = ServiceChangeTracker(), EndpointsChangeTracker()
    for s in services:
        svcs.update(None, s)
    for e in slices:
        eps.update(None, e)
    svcs.apply(state.services)
    eps.apply(state.endpoints)
    ipt, nft = IptablesRenderer(), NftablesRenderer()
    ipt.commit(ipt.plan(state))
    nft.commit(nft.plan(state))
    eps.update(None, endpoint_slice("aff", [("10.244.1.50", NODE), ("10.244.2.51", "n2")]))
    changed = eps.apply(state.endpoints).updated
    p1, p2 = ipt.plan(state, changed), nft.plan(state, changed)
    # The dispatch chain is unchanged, so it is not rewritten; only aff's chains are.
    assert ":NP-SERVICES" not in p1.text
    assert "10.244.2.51" in p1.text and "10.244.1.10" not in p1.text
    assert "service-ips" not in p2.text and "10.244.2.51" in p2.text and "10.244.1.10" not in p2.text
    # An endpoint change that does not change the programmed endpoints writes nothing.
    eps.update(None, endpoint_slice("aff", [("10.244.1.50", NODE), ("10.244.2.51", "n2"),
                                            ("10.244.2.99", "n2", False)]))
    ipt.commit(p1)
    nft.commit(p2)
    changed = eps.apply(state.endpoints).updated
    assert changed
    assert ipt.plan(state, changed).text == "" and nft.plan(state, changed).text == ""


def test_hairpin_pairs_are_counted_across_services() -> None:
    # One pod behind two services: removing it from one keeps its hairpin pair for the other.
    state = ProxyState(CONFIG)
    svcs, eps = ServiceChangeTracker(), EndpointsChangeTracker()
    for name, ip in (("a", "10.96.1.1"), ("b", "10.96.1.2")):
        svcs.update(None, service(name, ip))
        eps.update(None, endpoint_slice(name, [("10.244.1.5", NODE)]))
    svcs.apply(state.services)
    eps.apply(state.endpoints)
    renderer = NftablesRenderer()
    plan = renderer.plan(state)
    renderer.commit(plan)
    model = tracer.load_nft([plan.text])
    assert model.sets["hairpin-endpoints"] == {"10.244.1.5 . 10.244.1.5"}
    eps.update(None, endpoint_slice("a", [("10.244.1.6", NODE)]))
    plan = renderer.plan(state, eps.apply(state.endpoints).updated)
    renderer.commit(plan)
    model.apply(plan.text)
    assert "delete element ip netplane hairpin-endpoints" not in plan.text
    assert model.sets["hairpin-endpoints"] == {"10.244.1.5 . 10.244.1.5", "10.244.1.6 . 10.244.1.6"}
    eps.update(None, endpoint_slice("b", []))
    plan = renderer.plan(state, eps.apply(state.endpoints).updated)
    renderer.commit(plan)
    model.apply(plan.text)
    assert model.sets["hairpin-endpoints"] == {"10.244.1.6 . 10.244.1.6"}
    assert plan.rule_counts == NftablesRenderer().plan(state).rule_counts
