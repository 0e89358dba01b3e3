"""Benchmark: the service proxy's iptables and nftables modes side by side in one run.

    .venv/bin/python -m tests.bench.bench_proxy [--sizes 1000,5000,10000] [--endpoints 10]
        [--changes 5] [--connections 300] [--latency-changes 3]
        [--modes iptables,ipt-nft,nftables,nft-cli]

Modes: `iptables` (the legacy binaries), `ipt-nft` (iptables mode through Debian's
iptables-nft), `nftables` (libnftables in the proxy process) and `nft-cli` (nftables
mode through the `nft` binary, the fallback when the binding is missing).

For each size (services x endpoints) and each mode, in a fresh forked process and a
fresh network namespace topology (tests/integration/proxy/topology.py: a node, pods,
real servers):

1. full sync: Proxier.sync() from nothing (render + apply);
2. one endpoint change: an EndpointSlice update of one service (one endpoint swapped),
   then the partial sync (median of --changes);
3. network programming latency: a real state server holds one more service; the
   proxier also follows it through the client informers and the sync runner (as the
   daemon does, --min-sync-period 0), and the time from the HTTP write of its changed
   EndpointSlice to the end of the sync that put it in the kernel is measured (median
   of --latency-changes). kube-proxy's default min-sync-period (1 s) would add up to
   that much when changes come faster than it;
4. new-connection latency to the last service's ClusterIP compared with a direct
   connection to the pod IP (median of --connections TCP connects from another pod,
   in alternating rounds with the anchor: the same number straight to the pod IP);
5. the proxy's memory: the resident size of that process after the full sync
   (renderer state, trackers and the kernel library's cache included).

MACHINE-NOTES: two noisy shared cores, so ratios measured side by side are what count.
Goals (issue 4): one change <= 100 ms at 10k services; nftables connection latency
within 1.2x of a direct pod IP at 10k services; proxy memory <= 300 MB at 10k.
Namespaces are named np-px-<random>-*, removed in a finally block; the state server
runs on loopback in a temporary directory.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import resource
import statistics
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from netplane.kernel.iptables import Iptables
from netplane.kernel.nftables import LibNft, Nft
from netplane.proxy.fixtures import endpoint_slice, service
from netplane.proxy.model import NamespacedName
from netplane.proxy.proxier import Backend, IptablesBackend, NftablesBackend, Proxier
from netplane.proxy.state import ProxyConfig, ProxyState
from tests.integration.proxy.topology import CLUSTER_CIDR, NODE1_IP, PODS, Topology

REAL_POD = PODS["a"][1]  # the last service's endpoint: a pod with a real server on 8080
CLIENT_POD = "pb"
MODES = ("iptables", "ipt-nft", "nftables", "nft-cli")
LATENCY_SERVICE = "np-bench-latency"
LATENCY_IP = "10.100.0.1"  # in the service CIDR, outside the generated services' 10.96.x.y


def objects(n: int, eps: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    services, slices = [], []
    for i in range(1, n + 1):
        name = f"svc-{i}"
        services.append(service(name, f"10.96.{i // 250}.{i % 250 + 1}", ports=(("", 80, "TCP"),)))
        if i == n:
            endpoints = [(REAL_POD, "n1")]
        else:
            endpoints = [(f"10.{245 + (i * eps + k) // 65536}.{((i * eps + k) // 256) % 256}.{(i * eps + k) % 256}",
                          "n2") for k in range(eps)]
        slices.append(endpoint_slice(name, endpoints, ports=(("", 8080, "TCP"),)))
    return services, slices


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def connect_ms(topo: Topology, service_ip: str, count: int, rounds: int = 5) -> tuple[float, float]:
    """Median TCP connect times (ms) to the service and, as the anchor, straight to its pod.

    The two alternate in rounds, so that load from other work on the machine hits both alike.
    """
    times: dict[str, list[float]] = {REAL_POD: [], service_ip: []}
    for _ in range(rounds):
        for host, port in ((REAL_POD, 8080), (service_ip, 80)):
            results = topo.burst(CLIENT_POD, "tcp", host, port, max(1, count // rounds))
            ok = [r["ms"] for r in results if r["ok"]]
            if len(ok) < len(results) * 0.9:
                raise RuntimeError(f"connections to {host} failed: {results[:3]}")
            times[host].extend(ok)
    return statistics.median(times[service_ip]), statistics.median(times[REAL_POD])


def make_backend(mode: str, netns: str) -> Backend:
    if mode == "iptables":
        return IptablesBackend(Iptables(netns=netns, backend="legacy"))
    if mode == "ipt-nft":
        return IptablesBackend(Iptables(netns=netns, backend="nft"))
    if mode == "nftables":
        return NftablesBackend(LibNft(netns=netns))
    return NftablesBackend(Nft(netns=netns))


# -- network programming latency ----------------------------------------------------------

def _http(url: str, method: str = "GET", body: dict[str, Any] | None = None) -> dict[str, Any]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return dict(json.loads(r.read() or b"{}"))


def _latency_slice(ip: str) -> dict[str, Any]:
    return endpoint_slice(LATENCY_SERVICE, [(ip, "n2")], ports=(("", 8080, "TCP"),), slice_name=f"{LATENCY_SERVICE}-1")


def seed_latency_objects(server: str) -> None:
    """The one service the proxier follows through the server (created once per bench run)."""
    _http(f"{server}/api/v1/namespaces/default/services", "POST", service(LATENCY_SERVICE, LATENCY_IP))
    _http(f"{server}/apis/discovery.k8s.io/v1/namespaces/default/endpointslices", "POST",
          _latency_slice("10.249.0.1"))


def put_latency_slice(server: str, ip: str) -> None:
    url = f"{server}/apis/discovery.k8s.io/v1/namespaces/default/endpointslices/{LATENCY_SERVICE}-1"
    obj = _latency_slice(ip)
    obj["metadata"]["resourceVersion"] = _http(url)["metadata"]["resourceVersion"]
    _http(url, "PUT", obj)


class _SyncWatch:
    """A proxier listener: when did a sync first program the latency service with a given endpoint?"""

    def __init__(self) -> None:
        self.want: str | None = None
        self.done = threading.Event()
        self.at = 0.0

    def queued(self) -> None:
        pass

    def synced(self, state: ProxyState) -> None:
        key = NamespacedName("default", LATENCY_SERVICE)
        ips = {ep.ip for spn, eps in state.endpoints.items() if spn.service == key for ep in eps}
        if self.want is not None and self.want in ips and not self.done.is_set():
            self.at = time.perf_counter()
            self.done.set()


async def programming_latency(proxier: Proxier, server: str, changes: int) -> float:
    """Median seconds from an EndpointSlice write at the state server to the end of the sync that applied it."""
    from netplane.api.resources import lookup
    from netplane.client.informer import Informer
    from netplane.client.kubeconfig import ClusterConfig
    from netplane.client.rest import APIClient
    from netplane.proxy.runner import AsyncRunner

    watch = _SyncWatch()
    proxier.listeners.append(watch)
    runner = AsyncRunner(proxier.sync, 0.0, 3600.0)
    proxier.set_sync_requester(runner.run)
    stop = asyncio.Event()
    loop_task = asyncio.create_task(runner.loop(stop))
    times: list[float] = []
    async with APIClient(ClusterConfig(server=server)) as client:
        services = Informer(client, lookup("", "v1", "services"))  # type: ignore[arg-type]
        slices = Informer(client, lookup("discovery.k8s.io", "v1", "endpointslices"))  # type: ignore[arg-type]
        services.add_handler(lambda o: proxier.on_service(None, o), proxier.on_service,
                             lambda o: proxier.on_service(o, None))
        slices.add_handler(lambda o: proxier.on_endpoint_slice(None, o), proxier.on_endpoint_slice,
                           lambda o: proxier.on_endpoint_slice(o, None))
        tasks = [asyncio.create_task(i.run()) for i in (services, slices)]
        try:
            await asyncio.wait_for(asyncio.gather(services.wait_synced(), slices.wait_synced()), 30)
            for k in range(changes + 1):  # the first one only makes sure the service is programmed
                ip = f"10.249.{os.getpid() % 250}.{k + 2}"
                watch.want, watch.at = ip, 0.0
                watch.done.clear()
                t0 = time.perf_counter()
                await asyncio.to_thread(put_latency_slice, server, ip)
                if not await asyncio.to_thread(watch.done.wait, 60):
                    raise RuntimeError("the endpoint change never reached the kernel")
                if k:
                    times.append(watch.at - t0)
        finally:
            stop.set()
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, loop_task, return_exceptions=True)
    return statistics.median(times)


# -- one measurement -------------------------------------------------------------------------

def run_mode(mode: str, n: int, eps: int, changes: int, connections: int, server: str | None,
             latency_changes: int) -> dict[str, float]:
    topo = Topology()
    try:
        topo.create()
        topo.start_servers()
        cfg = ProxyConfig(node_name="n1", cluster_cidr=CLUSTER_CIDR, node_ips=(NODE1_IP,))
        proxier = Proxier(cfg, make_backend(mode, topo.node1), check_rules_period=3600.0)
        services, slices = objects(n, eps)
        for s in services:
            proxier.on_service(None, s)
        for e in slices:
            proxier.on_endpoint_slice(None, e)
        t0 = time.perf_counter()
        if not proxier.sync():
            raise RuntimeError("full sync failed")
        full = time.perf_counter() - t0
        memory = rss_mb()
        change_times = []
        victim = slices[-2]  # a service with fake endpoints, so the real one stays reachable
        for k in range(changes):
            eps_now = [(ep["addresses"][0], ep["nodeName"]) for ep in victim["endpoints"]]
            eps_now[0] = (f"10.250.0.{k + 1}", "n2")
            victim = endpoint_slice(victim["metadata"]["labels"]["kubernetes.io/service-name"], eps_now,
                                    ports=(("", 8080, "TCP"),))
            proxier.on_endpoint_slice(None, victim)
            t0 = time.perf_counter()
            if not proxier.sync():
                raise RuntimeError("partial sync failed")
            change_times.append(time.perf_counter() - t0)
        latency = (asyncio.run(programming_latency(proxier, server, latency_changes))
                   if server and latency_changes else float("nan"))
        via_service, direct = connect_ms(topo, services[-1]["spec"]["clusterIP"], connections)
        return {"full_s": full, "change_ms": statistics.median(change_times) * 1000,
                "latency_ms": latency * 1000, "direct_ms": direct, "service_ms": via_service, "memory_mb": memory}
    finally:
        topo.destroy()


def run_isolated(*args: Any) -> dict[str, float]:
    """run_mode in a forked child, so each measurement's memory is its own."""
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(1, maxtasksperchild=1) as pool:
        return pool.apply(run_mode, args)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", "--scales", dest="sizes", default="1000,5000,10000",
                    help="services per run, comma separated")
    ap.add_argument("--endpoints", type=int, default=10)
    ap.add_argument("--changes", type=int, default=5)
    ap.add_argument("--connections", type=int, default=300)
    ap.add_argument("--latency-changes", type=int, default=3, help="0: skip the state server and the latency")
    ap.add_argument("--modes", default=",".join(MODES), help=f"any of {', '.join(MODES)}")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("bench_proxy: needs root (network namespaces)")
        return 1
    modes = [m for m in args.modes.split(",") if m]
    unknown = set(modes) - set(MODES)
    if unknown:
        ap.error(f"unknown modes: {', '.join(sorted(unknown))}")
    os.environ.setdefault("XTABLES_LOCKFILE", f"/tmp/np-px-bench-{os.getpid()}.lock")
    server_proc = None
    with tempfile.TemporaryDirectory(prefix="np-px-bench-") as tmp:
        try:
            server: str | None = None
            if args.latency_changes:
                from tests.support.server import start_server

                server_proc = start_server(Path(tmp) / "state")
                server = server_proc.url
                seed_latency_objects(server)
            print(f"{'services':>8} {'mode':>9} {'full sync':>10} {'1 change':>9} {'write->kernel':>13} "
                  f"{'conn svc':>9} {'conn pod':>9} {'svc/pod':>8} {'mem MB':>7}", flush=True)
            for n in (int(x) for x in args.sizes.split(",")):
                rows: dict[str, dict[str, float]] = {}
                for mode in modes:
                    r = run_isolated(mode, n, args.endpoints, args.changes, args.connections, server,
                                     args.latency_changes)
                    rows[mode] = r
                    ratio = r["service_ms"] / r["direct_ms"]
                    print(f"{n:>8} {mode:>9} {r['full_s']:>9.2f}s {r['change_ms']:>7.1f}ms {r['latency_ms']:>11.1f}ms "
                          f"{r['service_ms']:>7.3f}ms {r['direct_ms']:>7.3f}ms {ratio:>7.2f}x "
                          f"{r['memory_mb']:>7.0f}", flush=True)
                nft = rows.get("nftables")
                if nft:
                    for label, other in rows.items():
                        if label != "nftables":
                            print(f"{n:>8} {'nft/' + label[:7]:>9} {nft['full_s'] / other['full_s']:>9.2f}x "
                                  f"{nft['change_ms'] / other['change_ms']:>8.2f}x "
                                  f"{nft['latency_ms'] / other['latency_ms']:>12.2f}x "
                                  f"{nft['service_ms'] / other['service_ms']:>8.2f}x", flush=True)
        finally:
            if server_proc is not None:
                server_proc.kill()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
