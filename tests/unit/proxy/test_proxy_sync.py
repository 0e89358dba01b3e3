"""The sync function, its runner, conntrack planning, health and metrics, against fake kernels."""

from __future__ import annotations

import asyncio
import json
import threading

import pytest

from netplane.kernel.conntrack import ConntrackFilterLike
from netplane.proxy import tracer
from netplane.proxy.conntrack import ConntrackFilter, plan_cleanup
from netplane.proxy.fixtures import endpoint_slice, service
from netplane.proxy.health import ProxierHealth, make_app, make_service_app
from netplane.proxy.iptables import CANARY
from netplane.proxy.metrics import ProxyMetrics
from netplane.proxy.model import Endpoint, NamespacedName, parse_service
from netplane.proxy.proxier import IptablesBackend, NftablesBackend, Proxier
from netplane.proxy.runner import AsyncRunner, RunnerCore
from tests.unit.proxy.proxy_scenarios import CONFIG, NODE, NODE_IP, objects


class FakeIptables:
    """An IptablesKernel over the tracer's model, so applied text is checked for consistency."""

    def __init__(self) -> None:
        self.model = tracer.IptablesModel()
        self.restores: list[str] = []
        self.fail_next = False

    def restore(self, text: str) -> None:
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("iptables-restore: line 3 failed")
        self.model.restore(text)
        self.restores.append(text)

    def save(self, table: str) -> str:
        chains = self.model.tables.get(table, {})
        lines = [f"*{table}", *(f":{c} - [0:0]" for c in chains)]
        lines += [r for rules in chains.values() for r in rules]
        return "\n".join([*lines, "COMMIT"]) + "\n"

    def chain_exists(self, table: str, chain: str) -> bool:
        return chain in self.model.tables.get(table, {})


class FakeNft:
    def __init__(self) -> None:
        self.model = tracer.NftModel()
        self.applied: list[str] = []

    def apply(self, text: str) -> None:
        self.model.apply(text)
        self.applied.append(text)

    def objects(self, family: str, table: str) -> dict[str, set[str]]:
        m = self.model
        return {"chains": set(m.chains), "maps": set(m.maps), "sets": set(m.sets)}

    def set_exists(self, family: str, table: str, name: str) -> bool:
        return name in self.model.sets


class FakeConntrack:
    def __init__(self) -> None:
        self.deleted: list = []

    def delete(self, flt: ConntrackFilterLike) -> int:
        self.deleted.append(flt)
        return 1


def make(mode: str = "iptables") -> tuple[Proxier, FakeIptables | FakeNft, FakeConntrack]:
    kernel: FakeIptables | FakeNft = FakeIptables() if mode == "iptables" else FakeNft()
    backend = IptablesBackend(kernel) if mode == "iptables" else NftablesBackend(kernel)  # type: ignore[arg-type]
    ct = FakeConntrack()
    proxier = Proxier(CONFIG, backend, conntrack=ct, check_rules_period=0.0)
    services, slices = objects()
    for s in services:
        proxier.on_service(None, s)
    for e in slices:
        proxier.on_endpoint_slice(None, e)
    return proxier, kernel, ct


def trace(kernel: FakeIptables | FakeNft, dst: str, port: int = 80, proto: str = "TCP") -> tracer.TraceResult:
    return kernel.model.trace(tracer.Packet("10.244.1.7", dst, port, proto), tracer.context([NODE_IP]))


@pytest.mark.parametrize("mode", ["iptables", "nftables"])
def test_first_sync_is_full_then_partial(mode: str) -> None:
    proxier, kernel, _ = make(mode)
    assert proxier.sync()
    assert proxier.metrics.full_sync_duration.count() == 1
    assert trace(kernel, "10.96.0.81").endpoints() == {"10.244.1.81:80": 1.0}
    proxier.on_endpoint_slice(None, endpoint_slice("term-ready", [("10.244.1.83", NODE)]))
    assert proxier.sync()
    assert proxier.metrics.partial_sync_duration.count() == 1
    assert trace(kernel, "10.96.0.81").endpoints() == {"10.244.1.83:80": 1.0}


def test_failed_apply_is_retried_as_a_full_sync() -> None:
    proxier, kernel, _ = make()
    assert proxier.sync()
    assert isinstance(kernel, FakeIptables)
    kernel.fail_next = True
    proxier.on_endpoint_slice(None, endpoint_slice("term-ready", [("10.244.1.83", NODE)]))
    assert not proxier.sync()
    assert proxier.metrics.sync_failures.value() == 1
    assert trace(kernel, "10.96.0.81").endpoints() == {"10.244.1.81:80": 1.0}  # nothing half-applied
    assert proxier.sync()
    assert proxier.metrics.full_sync_duration.count() == 2
    assert trace(kernel, "10.96.0.81").endpoints() == {"10.244.1.83:80": 1.0}


@pytest.mark.parametrize("mode", ["iptables", "nftables"])
def test_rules_removed_behind_our_back_trigger_a_full_resync(mode: str) -> None:
    proxier, kernel, _ = make(mode)
    assert proxier.sync()
    if isinstance(kernel, FakeIptables):
        kernel.model = tracer.IptablesModel()  # someone flushed everything
    else:
        kernel.model = tracer.NftModel()
    assert proxier.sync()
    assert proxier.metrics.full_sync_duration.count() == 2
    assert trace(kernel, "10.96.0.81").endpoints() == {"10.244.1.81:80": 1.0}
    if isinstance(kernel, FakeIptables):
        assert CANARY in kernel.model.tables["nat"]


def test_a_restarted_proxy_does_not_flush_and_removes_stale_chains() -> None:
    proxier, kernel, _ = make()
    assert proxier.sync()
    assert isinstance(kernel, FakeIptables)
    services, slices = objects()
    fresh = Proxier(CONFIG, IptablesBackend(kernel), check_rules_period=0.0)
    for s in services[1:]:  # "web" was deleted while the proxy was down
        fresh.on_service(None, s)
    for e in slices:
        fresh.on_endpoint_slice(None, e)
    assert fresh.sync()
    text = kernel.restores[-1]
    assert "-X NP-SVC-" in text and "-F" not in text.split()
    assert trace(kernel, "10.96.0.10").verdicts == {"accept"}
    assert kernel.model.undefined_targets() == []
    # The built-in-chain jumps are not duplicated by the second process.
    assert len(kernel.model.tables["nat"]["PREROUTING"]) == 1
    assert len(kernel.model.tables["filter"]["FORWARD"]) == 4


def test_invalid_objects_are_skipped_and_reported_while_the_rest_is_programmed() -> None:
    proxier, kernel, _ = make()
    bad = service("broken", "10.96.0.200")
    bad["spec"]["ports"][0]["port"] = -1
    proxier.on_service(None, bad)
    assert proxier.sync()
    assert proxier.metrics.invalid_objects.value() == 1
    assert trace(kernel, "10.96.0.81").verdicts == {"dnat"}


def test_udp_endpoint_removal_and_first_endpoint_clean_conntrack() -> None:
    proxier, _, ct = make()
    assert proxier.sync()
    # The first sync cleans every UDP/SCTP service (entries may predate the proxy).
    assert ConntrackFilter("udp", "10.96.0.10", 53) in ct.deleted
    ct.deleted.clear()
    proxier.on_endpoint_slice(None, endpoint_slice("web", [("10.244.1.2", NODE), ("10.244.1.3", NODE)],
                                                   ports=(("http", 8080, "TCP"), ("dns", 5353, "UDP"))))
    assert proxier.sync()
    assert ct.deleted == [ConntrackFilter("udp", "10.96.0.10", 53, "10.244.2.2")]
    ct.deleted.clear()
    proxier.on_service(None, service("newdns", "10.96.0.100", ports=(("", 53, "UDP", 30053),), type="NodePort"))
    assert proxier.sync()
    assert ct.deleted == []  # no endpoints yet: nothing to clean
    proxier.on_endpoint_slice(None, endpoint_slice("newdns", [("10.244.1.9", NODE)], ports=(("", 53, "UDP"),)))
    assert proxier.sync()
    assert set(ct.deleted) == {ConntrackFilter("udp", "10.96.0.100", 53), ConntrackFilter("udp", None, 30053)}


def _prog(obj: dict, *ips: str) -> dict:
    (spn, svc), = parse_service(obj).items()
    return {spn: (svc, tuple(Endpoint(ip, 53) for ip in ips))}


def test_plan_cleanup_rules() -> None:
    udp = service("d", "10.96.0.5", ports=(("", 53, "UDP", 30005),), type="NodePort", external_ips=["192.0.2.5"])
    tcp = service("t", "10.96.0.6")
    assert plan_cleanup(_prog(tcp, "10.0.0.1"), _prog(tcp)) == []  # TCP needs nothing
    assert set(plan_cleanup(_prog(udp, "10.0.0.1", "10.0.0.2"), _prog(udp, "10.0.0.2"))) == {
        ConntrackFilter("udp", "10.96.0.5", 53, "10.0.0.1"),
        ConntrackFilter("udp", "192.0.2.5", 53, "10.0.0.1"),
        ConntrackFilter("udp", None, 30005, "10.0.0.1"),
    }
    assert set(plan_cleanup(_prog(udp), _prog(udp, "10.0.0.1"))) == {
        ConntrackFilter("udp", "10.96.0.5", 53), ConntrackFilter("udp", "192.0.2.5", 53),
        ConntrackFilter("udp", None, 30005)}
    assert plan_cleanup({}, {}) == []
    assert len(plan_cleanup(_prog(udp, "10.0.0.1"), {})) == 3  # service deleted


def test_runner_core_bounds_frequency() -> None:
    core = RunnerCore(min_interval=1.0, max_interval=30.0, retry_interval=5.0)
    assert core.due() == float("-inf")  # first run at once
    core.started(100.0)
    core.finished(True, 100.1)
    assert core.due() == 130.0  # nothing requested: the periodic resync
    core.request()
    core.request()
    assert core.due() == 101.0  # coalesced, not before min_interval
    core.started(101.0)
    core.finished(False, 101.2)
    assert core.due() == 106.2  # retry after a failure
    with pytest.raises(ValueError):
        RunnerCore(min_interval=5, max_interval=1)


def test_async_runner_coalesces_requests() -> None:
    calls: list[int] = []
    started = threading.Event()

    def fn() -> bool:
        calls.append(1)
        started.set()
        return True

    async def main() -> None:
        runner = AsyncRunner(fn, min_interval=0.2, max_interval=60.0)
        stop = asyncio.Event()
        task = asyncio.create_task(runner.loop(stop))
        for _ in range(200):
            if calls:
                break
            await asyncio.sleep(0.01)
        for _ in range(10):
            runner.run()
        for _ in range(200):
            if len(calls) >= 2:
                break
            await asyncio.sleep(0.01)
        stop.set()
        await asyncio.wait_for(task, 5)

    asyncio.run(main())
    assert len(calls) == 2  # the first sync plus one for ten requests


def test_proxier_health_semantics() -> None:
    now = [1000.0]
    health = ProxierHealth(health_timeout=60.0, clock=lambda: now[0])
    assert health.answer()[0] == 200
    health.queued()
    now[0] += 61
    status, body = health.answer()
    assert status == 503 and body["nodeEligible"] is True
    proxier, _, _ = make()
    proxier.listeners.append(health)
    assert proxier.sync()
    assert health.answer()[0] == 200
    status, body = health.service_answer(NamespacedName("default", "lb-local"))
    assert status == 200 and body == {"service": {"namespace": "default", "name": "lb-local"},
                                      "localEndpoints": 1, "serviceProxyHealthy": True}
    proxier.on_endpoint_slice(None, endpoint_slice("lb-local", [("10.244.2.31", "n2")],
                                                   ports=(("", 8443, "TCP"),)))
    assert proxier.sync()
    assert health.service_answer(NamespacedName("default", "lb-local"))[0] == 503
    health.node_eligible = False
    assert health.answer()[0] == 503 and health.answer(check_node=False)[0] == 200


def test_health_and_metrics_http() -> None:
    from aiohttp.test_utils import TestClient, TestServer

    proxier, _, _ = make()
    health = ProxierHealth(60.0)
    proxier.listeners.append(health)
    assert proxier.sync()

    async def main() -> None:
        async with TestClient(TestServer(make_app(health, proxier.metrics.render))) as client:
            r = await client.get("/healthz")
            assert r.status == 200 and "lastUpdated" in json.loads(await r.text())
            text = await (await client.get("/metrics")).text()
            assert 'kubeproxy_sync_full_proxy_rules_duration_seconds_count 1' in text
            assert 'kubeproxy_sync_proxy_rules_total{kind="nat",mode="iptables"}' in text
        svc_app = make_service_app(health, NamespacedName("default", "lb-local"))
        async with TestClient(TestServer(svc_app)) as client:
            r = await client.get("/")
            assert r.status == 200 and json.loads(await r.text())["localEndpoints"] == 1

    asyncio.run(main())


def test_network_programming_latency_uses_the_trigger_time() -> None:
    proxier, _, _ = make()
    proxier.wall_clock = lambda: 1704067215.0
    assert proxier.sync()
    proxier.on_endpoint_slice(None, endpoint_slice("term-ready", [("10.244.1.83", NODE)],
                                                   trigger_time="2024-01-01T00:00:10Z"))
    assert proxier.sync()
    assert proxier.metrics.programming_latency.count() == 1
    text = proxier.metrics.render()
    assert "kubeproxy_network_programming_duration_seconds_sum 5" in text


def test_metrics_text_format() -> None:
    m = ProxyMetrics()
    m.sync_duration.observe(0.003)
    text = m.render()
    assert "# TYPE kubeproxy_sync_proxy_rules_duration_seconds histogram" in text
    assert 'kubeproxy_sync_proxy_rules_duration_seconds_bucket{le="0.002"} 0' in text
    assert 'kubeproxy_sync_proxy_rules_duration_seconds_bucket{le="0.004"} 1' in text
    assert 'kubeproxy_sync_proxy_rules_duration_seconds_bucket{le="+Inf"} 1' in text


def test_nft_kernel_falls_back_to_the_binary_without_the_binding(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from netplane.kernel.nftables import Nft, nft_kernel

    monkeypatch.setitem(sys.modules, "nftables", None)  # `import nftables` now raises ImportError
    kernel = nft_kernel("np-px-unit-nonexistent")
    assert isinstance(kernel, Nft) and kernel.netns == "np-px-unit-nonexistent"
