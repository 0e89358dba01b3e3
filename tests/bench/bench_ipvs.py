"""Benchmark: the proxy's IPVS mode beside its iptables and nftables modes, in one run of the test VM.

    .venv/bin/python -m tests.bench.bench_ipvs [--sizes 1000,5000,10000] [--endpoints 10]
        [--changes 3] [--connections 300] [--modes ipvs,iptables,nftables] [--run-timeout 600]

This machine's kernel has no IPVS, so the run boots Debian's kernel under qemu (tests/vm/harness.py)
and runs every mode inside that one VM, with `--inside`. Per size (services x endpoints) and mode,
in a fresh topology (tests/integration/proxy/topology.py) and the same objects as bench_proxy:

1. full sync: Proxier.sync() from nothing;
2. one endpoint change: one EndpointSlice update (one endpoint swapped), then the partial sync
   (median of --changes);
3. new-connection latency to the last service's ClusterIP vs a direct connection to its pod IP
   (median of --connections TCP connects from another pod).

TCG emulation slows every absolute number several times over, unevenly (process starts and
system calls suffer most): compare the ratios printed beside each row, measured in the same run.

Each size and mode runs in its own process with a time limit (--run-timeout): a mode that overruns
is printed as such and skipped at the larger sizes, so the run ends in bounded time. Below each
row, where the full sync's time went (kernel calls, cumulative).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

MODES = ("ipvs", "iptables", "nftables")


def make_backend(mode: str, netns: str):  # type: ignore[no-untyped-def]
    from netplane.kernel.ipset import Ipset
    from netplane.kernel.iptables import Iptables
    from netplane.kernel.ipvs import IpvsNode
    from netplane.kernel.nftables import nft_kernel
    from netplane.proxy.ipvs import DEVICE
    from netplane.proxy.ipvs_backend import IpvsBackend
    from netplane.proxy.proxier import IptablesBackend, NftablesBackend

    # Long kernel-tool timeouts: under TCG a 10k-service iptables-nft restore takes minutes. The run as a
    # whole is bounded by --run-timeout per size and mode instead.
    if mode == "ipvs":
        return IpvsBackend(IpvsNode(DEVICE, netns), Ipset(netns, timeout=3600), Iptables(netns=netns, timeout=3600))
    if mode == "iptables":
        return IptablesBackend(Iptables(netns=netns, backend="nft", timeout=3600))  # Debian's default iptables
    return NftablesBackend(nft_kernel(netns))


class StepTimes:
    """Cumulative seconds spent in some methods of the kernel objects, to say where a sync's time goes."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def wrap(self, obj: object, label: str, *methods: str) -> None:
        for name in methods:
            fn = getattr(obj, name)

            def timed(*args: Any, _fn: Any = fn, _key: str = f"{label}.{name}", **kwargs: Any) -> Any:
                t0 = time.perf_counter()
                try:
                    return _fn(*args, **kwargs)
                finally:
                    self.seconds[_key] = self.seconds.get(_key, 0.0) + time.perf_counter() - t0

            setattr(obj, name, timed)

    def take(self) -> dict[str, float]:
        out, self.seconds = self.seconds, {}
        return out


def instrument(backend: Any, steps: StepTimes) -> None:
    if backend.mode == "ipvs":
        steps.wrap(backend.ipset, "ipset", "save", "restore")
        steps.wrap(backend.iptables, "iptables", "save", "restore")
        steps.wrap(backend.ipvs, "ipvs", "observe", "apply", "bind", "unbind", "bound_addresses")
    elif backend.mode == "iptables":
        steps.wrap(backend.kernel, "iptables", "save", "restore")
    else:
        steps.wrap(backend.kernel, "nft", "apply", "objects")


def objects(n: int, eps: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """n ClusterIP services with `eps` endpoints each (bench_proxy's shape); the last one's endpoint is
    a real pod server, the others' are addresses nobody answers on."""
    from netplane.proxy.fixtures import endpoint_slice, service
    from tests.integration.proxy.topology import PODS

    services, slices = [], []
    for i in range(1, n + 1):
        name = f"svc-{i}"
        services.append(service(name, f"10.96.{i // 250}.{i % 250 + 1}", ports=(("", 80, "TCP"),)))
        if i == n:
            endpoints = [(PODS["a"][1], "n1")]
        else:
            endpoints = [(f"10.{245 + (i * eps + k) // 65536}.{((i * eps + k) // 256) % 256}.{(i * eps + k) % 256}",
                          "n2") for k in range(eps)]
        slices.append(endpoint_slice(name, endpoints, ports=(("", 8080, "TCP"),)))
    return services, slices


def connect_ms(topo: Any, service_ip: str, count: int, rounds: int = 5) -> tuple[float, float]:
    """Median TCP connect times (ms) to the service and, the anchor, straight to its pod; the two
    alternate in rounds so that other load on the machine hits both alike."""
    from tests.integration.proxy.topology import PODS

    pod = PODS["a"][1]
    times: dict[str, list[float]] = {pod: [], service_ip: []}
    for _ in range(rounds):
        # The pod's port 80, which no virtual server forwards to: a direct connection from a client port
        # that IPVS still remembers for a service connection to pod:8080 would have its reply rewritten
        # to the service address (IPVS matches replies by real server and client) and fail.
        for host, port in ((pod, 80), (service_ip, 80)):
            results = topo.burst("pb", "tcp", host, port, max(1, count // rounds))
            ok = [r["ms"] for r in results if r["ok"]]
            if len(ok) < len(results) * 0.9:
                raise RuntimeError(f"connections to {host} failed: {results[:3]}")
            times[host].extend(ok)
    return statistics.median(times[service_ip]), statistics.median(times[pod])


def run_mode(mode: str, n: int, eps: int, changes: int, connections: int) -> dict[str, Any]:
    from netplane.proxy.fixtures import endpoint_slice
    from netplane.proxy.proxier import Proxier
    from netplane.proxy.state import ProxyConfig
    from tests.integration.proxy.topology import CLUSTER_CIDR, NODE1_IP, Topology

    topo = Topology()
    try:
        topo.create()
        topo.start_servers()
        cfg = ProxyConfig(node_name="n1", cluster_cidr=CLUSTER_CIDR, node_ips=(NODE1_IP,))
        backend = make_backend(mode, topo.node1)
        steps = StepTimes()
        instrument(backend, steps)
        proxier = Proxier(cfg, backend, check_rules_period=3600.0)
        services, slices = objects(n, eps)
        for s in services:
            proxier.on_service(None, s)
        for e in slices:
            proxier.on_endpoint_slice(None, e)
        t0 = time.perf_counter()
        if not proxier.sync():
            raise RuntimeError(f"{mode}: full sync failed")
        full = time.perf_counter() - t0
        full_steps = steps.take()
        change_times = []
        victim = slices[-2]  # fake endpoints: the last service's real one stays reachable
        name = victim["metadata"]["labels"]["kubernetes.io/service-name"]
        for k in range(changes):
            eps_now = [(ep["addresses"][0], ep["nodeName"]) for ep in victim["endpoints"]]
            eps_now[0] = (f"10.250.0.{k + 1}", "n2")
            victim = endpoint_slice(name, eps_now, ports=(("", 8080, "TCP"),))
            proxier.on_endpoint_slice(None, victim)
            t0 = time.perf_counter()
            if not proxier.sync():
                raise RuntimeError(f"{mode}: partial sync failed")
            change_times.append(time.perf_counter() - t0)
        via_service, direct = connect_ms(topo, services[-1]["spec"]["clusterIP"], connections)
        return {"full_s": full, "change_ms": statistics.median(change_times) * 1000, "direct_ms": direct,
                "service_ms": via_service, "steps": full_steps}
    finally:
        topo.destroy()


def run_one(args: argparse.Namespace) -> int:
    """One size and mode, in its own process (the parent bounds its time); the result as one JSON line."""
    mode, _, size = args.one.partition(":")
    result = run_mode(mode, int(size), args.endpoints, args.changes, args.connections)
    print("RESULT " + json.dumps(result), flush=True)
    return 0


def measure(mode: str, n: int, args: argparse.Namespace) -> dict[str, Any] | str:
    """run_one in a child process; a string says why there is no result (timeout, failure)."""
    argv = [sys.executable, "-m", "tests.bench.bench_ipvs", "--inside", "--one", f"{mode}:{n}",
            "--endpoints", str(args.endpoints), "--changes", str(args.changes), "--connections", str(args.connections)]
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=args.run_timeout)
    except subprocess.TimeoutExpired:
        # SIGINT first: the child's `finally` removes its namespaces; then SIGKILL to its own process group.
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
        return f"not finished within {args.run_timeout:.0f}s"
    for line in out.splitlines():
        if line.startswith("RESULT "):
            result: dict[str, Any] = json.loads(line[len("RESULT "):])
            result["wall_s"] = time.monotonic() - t0
            return result
    tail = err.strip().splitlines()[-3:]
    return f"failed (exit {proc.returncode}): {' | '.join(tail)}"


def inside(args: argparse.Namespace) -> int:
    if args.one:
        return run_one(args)
    modes = [m for m in args.modes.split(",") if m]
    print(f"{'services':>8} {'mode':>9} {'full sync':>10} {'1 change':>9} {'conn svc':>9} {'conn pod':>9} "
          f"{'svc/pod':>8}", flush=True)
    given_up: dict[str, str] = {}
    failures = 0
    for n in (int(x) for x in args.sizes.split(",")):
        rows: dict[str, dict[str, Any]] = {}
        for mode in modes:
            if mode in given_up:
                print(f"{n:>8} {mode:>9}  skipped: {given_up[mode]} at a smaller size", flush=True)
                continue
            r = measure(mode, n, args)
            if isinstance(r, str):
                print(f"{n:>8} {mode:>9}  {r}", flush=True)
                given_up[mode] = r
                failures += not r.startswith("not finished")
                continue
            rows[mode] = r
            print(f"{n:>8} {mode:>9} {r['full_s']:>9.2f}s {r['change_ms']:>7.1f}ms {r['service_ms']:>7.3f}ms "
                  f"{r['direct_ms']:>7.3f}ms {r['service_ms'] / r['direct_ms']:>7.2f}x", flush=True)
            steps = ", ".join(f"{k} {v:.1f}s" for k, v in sorted(r["steps"].items(), key=lambda kv: -kv[1])
                              if v >= 0.05)
            print(f"{'':>8} {'':>9}  full sync time in: {steps} (whole run {r['wall_s']:.0f}s)", flush=True)
        base = rows.get("ipvs")
        if base:
            for label, other in rows.items():
                if label != "ipvs":
                    print(f"{n:>8} {'ipvs/' + label[:4]:>9} {base['full_s'] / other['full_s']:>9.2f}x "
                          f"{base['change_ms'] / other['change_ms']:>8.2f}x "
                          f"{base['service_ms'] / other['service_ms']:>8.2f}x", flush=True)
    return 1 if failures else 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1000,5000,10000", help="services per run, comma separated")
    ap.add_argument("--endpoints", type=int, default=10)
    ap.add_argument("--changes", type=int, default=3)
    ap.add_argument("--connections", type=int, default=300)
    ap.add_argument("--modes", default=",".join(MODES), help=f"any of {', '.join(MODES)}")
    ap.add_argument("--run-timeout", type=float, default=600.0,
                    help="seconds for one size and mode (a mode that overruns is reported and not run at larger "
                         "sizes)")
    ap.add_argument("--timeout", type=float, default=None,
                    help="seconds for the whole VM run (default: enough for every size and mode to use "
                         "--run-timeout, plus boot)")
    ap.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)  # set by the host side
    ap.add_argument("--one", default="", help=argparse.SUPPRESS)  # MODE:SIZE, in a child of --inside
    args = ap.parse_args(argv)
    if set(args.modes.split(",")) - set(MODES):
        ap.error(f"modes are {', '.join(MODES)}")
    if os.geteuid() != 0:
        print("bench_ipvs: needs root (qemu, network namespaces)")
        return 1
    if args.inside:
        return inside(args)
    from tests.vm.harness import prepare, run_in_vm

    kernel = prepare()
    forwarded = [a for a in (argv if argv is not None else sys.argv[1:]) if a != "--inside"]
    command = shlex.join([".venv/bin/python", "-m", "tests.bench.bench_ipvs", "--inside", *forwarded])
    with tempfile.TemporaryDirectory(prefix="np-vm-bench-") as tmp:
        runs = len(args.sizes.split(",")) * len(args.modes.split(","))
        # Each run may take --run-timeout plus 2 minutes of interrupting; boot and set-up take a few minutes.
        timeout = args.timeout or runs * (args.run_timeout + 150) + 600
        result = run_in_vm(command, Path(tmp), timeout=timeout, memory_mb=3072, kernel=kernel)
        sys.stdout.write((Path(tmp) / "output.log").read_text(errors="replace"))
        print(f"[in the {kernel.package} VM under TCG: exit {result.returncode} after {result.seconds:.0f}s]")
        return result.returncode


if __name__ == "__main__":
    sys.exit(main())
