"""Benchmark: the service proxy's iptables and nftables modes side by side in one run.

    .venv/bin/python -m tests.bench.bench_proxy [--scales 1000,5000,10000] [--endpoints 10]
                                                [--changes 5] [--connections 300]

For each scale (services x endpoints) and each mode, in a fresh network namespace
topology (tests/integration/proxy/topology.py: a node, pods, real servers):

1. full sync: Proxier.sync() from nothing (render + one iptables-restore / nft call);
2. one endpoint change: an EndpointSlice update of the last service, then the
   partial sync (median of --changes);
3. new-connection latency to the last service's ClusterIP compared with a direct
   connection to the pod IP (median of --connections TCP connects from another pod;
   the anchor is the direct pod IP, measured in the same run);
4. the proxy's memory: the resident size of a fresh process (one per mode and scale,
   forked) holding the synced state, renderer memory included.

MACHINE-NOTES: two noisy shared cores, so ratios measured side by side are what count.
Goals (issue 4): one change <= 100 ms at 10k services; nftables connection latency
within 1.2x of a direct pod IP at 10k services; proxy memory <= 300 MB at 10k.
Namespaces are named np-px-<random>-* and removed in a finally block.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import resource
import statistics
import time
from typing import Any

from netplane.kernel.iptables import Iptables
from netplane.kernel.nftables import Nft
from netplane.proxy.fixtures import endpoint_slice, service
from netplane.proxy.proxier import Backend, IptablesBackend, NftablesBackend, Proxier
from netplane.proxy.state import ProxyConfig
from tests.integration.proxy.topology import CLUSTER_CIDR, NODE1_IP, PODS, Topology

REAL_POD = PODS["a"][1]  # the last service's endpoint: a pod with a real server on 8080
CLIENT_POD = "pb"


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


def connect_ms(topo: Topology, host: str, count: int) -> float:
    results = topo.burst(CLIENT_POD, "tcp", host, 80 if host.startswith("10.96.") else 8080, count)
    ok = [r["ms"] for r in results if r["ok"]]
    if len(ok) < count * 0.9:
        raise RuntimeError(f"connections to {host} failed: {results[:3]}")
    return statistics.median(ok)


def run_mode(mode: str, n: int, eps: int, changes: int, connections: int,
             iptables_backend: str = "nft") -> dict[str, float]:
    topo = Topology()
    try:
        topo.create()
        topo.start_servers()
        backend: Backend = (IptablesBackend(Iptables(netns=topo.node1, backend=iptables_backend)) if mode == "iptables"
                            else NftablesBackend(Nft(netns=topo.node1)))
        cfg = ProxyConfig(node_name="n1", cluster_cidr=CLUSTER_CIDR, node_ips=(NODE1_IP,))
        proxier = Proxier(cfg, backend, check_rules_period=3600.0)
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
        last_ip = services[-1]["spec"]["clusterIP"]
        direct = connect_ms(topo, REAL_POD, connections)
        via_service = connect_ms(topo, last_ip, connections)
        return {"full_s": full, "change_ms": statistics.median(change_times) * 1000, "direct_ms": direct,
                "service_ms": via_service, "memory_mb": memory}
    finally:
        topo.destroy()


def run_isolated(*args: Any) -> dict[str, float]:
    """run_mode in a forked child, so each measurement's memory is its own."""
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(1) as pool:
        return pool.apply(run_mode, args)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scales", default="1000,5000,10000")
    ap.add_argument("--endpoints", type=int, default=10)
    ap.add_argument("--changes", type=int, default=5)
    ap.add_argument("--connections", type=int, default=300)
    ap.add_argument("--iptables-backends", default="legacy,nft",
                    help="iptables binaries to measure in iptables mode (legacy, nft or both)")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("bench_proxy: needs root (network namespaces)")
        return 1
    os.environ.setdefault("XTABLES_LOCKFILE", f"/tmp/np-px-bench-{os.getpid()}.lock")
    print(f"{'services':>8} {'mode':>9} {'full sync':>10} {'1 change':>9} {'conn svc':>9} {'conn pod':>9} "
          f"{'svc/pod':>8} {'mem MB':>7}")
    for n in (int(x) for x in args.scales.split(",")):
        rows: dict[str, dict[str, float]] = {}
        for backend in args.iptables_backends.split(","):
            label = "iptables" if backend == "legacy" else f"ipt-{backend}"
            rows[label] = run_isolated("iptables", n, args.endpoints, args.changes, args.connections, backend)
        rows["nftables"] = run_isolated("nftables", n, args.endpoints, args.changes, args.connections)
        for mode, r in rows.items():
            print(f"{n:>8} {mode:>9} {r['full_s']:>9.2f}s {r['change_ms']:>7.1f}ms {r['service_ms']:>7.3f}ms "
                  f"{r['direct_ms']:>7.3f}ms {r['service_ms'] / r['direct_ms']:>7.2f}x {r['memory_mb']:>7.0f}")
        nft = rows["nftables"]
        for label, ipt in rows.items():
            if label != "nftables":
                print(f"{n:>8} {'nft/' + label[:5]:>9} {nft['full_s'] / ipt['full_s']:>9.2f}x "
                      f"{nft['change_ms'] / ipt['change_ms']:>8.2f}x {nft['service_ms'] / ipt['service_ms']:>8.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
