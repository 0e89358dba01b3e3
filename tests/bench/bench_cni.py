"""Benchmark: netplane's CNI plugin beside the reference bridge + host-local, in one run.

    .venv/bin/python -m tests.bench.bench_cni [--cycles 100] [--pods 110] [--callers 4]
                                              [--bulk-rounds 3] [--leak-cycles 1000] [--ip-masq]

Each call is an exec of the plugin executable with the runtime's environment and
stdin, made from inside a throwaway "host" namespace (np-cni-bench-*), so the
executable's start-up is included exactly as a runtime would pay it. Modes,
measured side by side (interleaved call by call, so machine noise hits all of
them alike):

- reference:   /usr/lib/cni/bridge with host-local IPAM;
- in-process:  the Python executable doing the work itself (no agent listening);
- fast/script: the Python executable forwarding to `netplane cni serve`;
- fast path:   what `netplane cni install` puts in place where a C compiler is
               present: the compiled launcher, forwarding to the same server.

Reported: ADD, DEL and ADD+DEL latency p50/p99 for single pods; the total time
to bring 110 pods up (and down) with 4 parallel callers (the median of
--bulk-rounds rounds, modes alternating round by round); ratios to the reference.
Then --leak-cycles ADD/DEL cycles through the fast path, after which no IP
reservation, link, ipMasq entry or stray file may remain.
Goal (issue 3): no slower than the reference plugins, start-up included.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from netplane.cni.install import install_executables
from netplane.kernel import netns

REFERENCE_DIR = "/usr/lib/cni"
REPO = Path(__file__).resolve().parents[2]
VENV_BIN = REPO / ".venv" / "bin"
PREFIX = f"np-cni-bench-{os.getpid() % 100000}"


def sh(*cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(cmd), check=check, capture_output=True, text=True, timeout=120)


class Mode:
    def __init__(self, label: str, plugin: Path, conf: dict[str, Any], env: dict[str, str]) -> None:
        self.label = label
        self.plugin = plugin
        self.stdin = json.dumps(conf).encode()
        self.env = env
        self.add: list[float] = []
        self.dele: list[float] = []
        self.cycle: list[float] = []
        self.bulk_up = 0.0
        self.bulk_down = 0.0

    def call(self, command: str, container_id: str, pod: str) -> float:
        env = {**self.env, "CNI_COMMAND": command, "CNI_CONTAINERID": container_id,
               "CNI_NETNS": f"/run/netns/{pod}", "CNI_IFNAME": "eth0"}
        start = time.perf_counter()
        proc = subprocess.run([str(self.plugin)], input=self.stdin, capture_output=True, env=env, timeout=120)
        elapsed = time.perf_counter() - start
        if proc.returncode != 0:
            raise RuntimeError(f"{self.label} {command} {container_id}: {proc.stdout!r} {proc.stderr!r}")
        return elapsed


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] * 1000


def make_ns(name: str) -> str:
    sh("ip", "netns", "add", name)
    sh("ip", "-n", name, "link", "set", "lo", "up")
    return name


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cycles", type=int, default=100, help="single-pod ADD+DEL cycles per mode")
    ap.add_argument("--pods", type=int, default=110)
    ap.add_argument("--callers", type=int, default=4)
    ap.add_argument("--bulk-rounds", type=int, default=3, help="rounds of the parallel bring-up per mode")
    ap.add_argument("--leak-cycles", type=int, default=1000)
    ap.add_argument("--ip-masq", action="store_true", help="turn ipMasq on in both plugins")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("bench_cni: needs root (network namespaces)", file=sys.stderr)
        return 2

    tmp = Path(tempfile.mkdtemp(prefix="np-cni-bench-"))
    namespaces: list[str] = []
    server: subprocess.Popen[bytes] | None = None
    try:
        bin_dir, script_dir = tmp / "bin", tmp / "bin-script"
        sh(str(VENV_BIN / "netplane"), "cni", "install", "--bin-dir", str(bin_dir))
        install_executables(str(script_dir), compiled=False)
        compiled = (bin_dir / "netplane").read_bytes()[:4] == b"\x7fELF"
        host = make_ns(f"{PREFIX}-host")
        namespaces.append(host)
        pods = [make_ns(f"{PREFIX}-p{n}") for n in range(max(args.pods, 1))]
        namespaces.extend(pods)
        sock = tmp / "run" / "cni.sock"
        server = subprocess.Popen(["nsenter", f"--net=/run/netns/{host}", str(VENV_BIN / "netplane"), "cni",
                                   "serve", "--socket", str(sock)], stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while not sock.is_socket():
            if time.monotonic() > deadline or server.poll() is not None:
                raise RuntimeError("the CNI server did not start")
            time.sleep(0.05)

        def conf(plugin: str, ipam: str, bridge: str, subnet: str, data: str) -> dict[str, Any]:
            return {"cniVersion": "1.0.0", "name": f"bench-{bridge}", "type": plugin, "bridge": bridge,
                    "isGateway": True, "isDefaultGateway": True, "hairpinMode": True, "ipMasq": args.ip_masq,
                    "ipam": {"type": ipam, "ranges": [[{"subnet": subnet}]], "dataDir": str(tmp / data)}}

        base_env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
                    "CNI_PATH": f"{bin_dir}:{REFERENCE_DIR}", "XTABLES_LOCKFILE": str(tmp / "xtables.lock")}
        fast_env = {**base_env, "NETPLANE_CNI_SOCKET": str(sock)}
        modes = [
            Mode("reference", Path(REFERENCE_DIR) / "bridge",
                 conf("bridge", "host-local", "np-bref", "10.81.0.0/16", "ref"), base_env),
            Mode("in-process", script_dir / "netplane",
                 conf("netplane", "netplane-ipam", "np-bnp", "10.82.0.0/16", "np"),
                 {**base_env, "NETPLANE_CNI_SOCKET": ""}),
            Mode("fast/script", script_dir / "netplane",
                 conf("netplane", "netplane-ipam", "np-bscr", "10.84.0.0/16", "script"), fast_env),
            Mode("fast path", bin_dir / "netplane",
                 conf("netplane", "netplane-ipam", "np-bfast", "10.83.0.0/16", "fast"), fast_env),
        ]
        fast = modes[-1]
        # Measure from inside the host namespace, as a runtime on that host would call.
        with netns.entered(f"/run/netns/{host}"):
            run_benchmark(modes, pods, args)
            leaks = leak_check(fast, pods[0], args.leak_cycles, tmp / "fast")
        report(modes, args)
        print(f"\n(fast path executable: {'compiled launcher' if compiled else 'Python script (no C compiler)'})")
        print(f"leak check: {args.leak_cycles} ADD/DEL cycles through the fast path -> "
              + ("no leaks" if not leaks else "LEAKS: " + "; ".join(leaks)))
        return 1 if leaks else 0
    finally:
        if server is not None and server.poll() is None:
            server.terminate()
            server.wait(timeout=30)
        for name in namespaces:
            sh("ip", "netns", "del", name, check=False)
        shutil.rmtree(tmp, ignore_errors=True)


def run_benchmark(modes: list[Mode], pods: list[str], args: argparse.Namespace) -> None:
    for mode in modes:  # warm-up: bridges created, server warm, page cache hot
        mode.call("ADD", "warm", pods[0])
        mode.call("DEL", "warm", pods[0])
    for n in range(args.cycles):
        for mode in modes:
            a = mode.call("ADD", f"c{n}", pods[0])
            d = mode.call("DEL", f"c{n}", pods[0])
            mode.add.append(a)
            mode.dele.append(d)
            mode.cycle.append(a + d)

    def bulk(mode: Mode, command: str) -> float:
        def one(n: int) -> float:
            return mode.call(command, f"bulk{n}", pods[n])

        start = time.perf_counter()
        with ThreadPoolExecutor(max_workers=args.callers) as pool:
            list(pool.map(one, range(args.pods)))
        return time.perf_counter() - start

    # Rounds alternate the modes (and their order), so a burst of load elsewhere on
    # the machine does not land on one mode only; the median round is reported.
    ups: dict[str, list[float]] = {m.label: [] for m in modes}
    downs: dict[str, list[float]] = {m.label: [] for m in modes}
    for r in range(args.bulk_rounds):
        for mode in modes if r % 2 == 0 else list(reversed(modes)):
            ups[mode.label].append(bulk(mode, "ADD"))
            downs[mode.label].append(bulk(mode, "DEL"))
    for mode in modes:
        mode.bulk_up = statistics.median(ups[mode.label])
        mode.bulk_down = statistics.median(downs[mode.label])


def leak_check(mode: Mode, pod: str, cycles: int, data_dir: Path) -> list[str]:
    from netplane.kernel.links import Netlink

    for n in range(cycles):
        mode.call("ADD", f"leak{n}", pod)
        mode.call("DEL", f"leak{n}", pod)
    leaks = []
    net_dir = data_dir / "bench-np-bfast"
    stray = sorted(p.name for p in net_dir.iterdir() if p.name not in ("lock", "last_reserved_ip.0"))
    if stray:
        leaks.append(f"IPAM files {stray[:5]}")
    with Netlink() as nl:
        veths = [link.name for link in nl.links() if link.kind == "veth"]
    if veths:
        leaks.append(f"host veths {veths[:5]}")
    with Netlink(f"/run/netns/{pod}") as nl:
        extra = [link.name for link in nl.links() if link.name != "lo"]
    if extra:
        leaks.append(f"pod links {extra}")
    masq = sh("nft", "list", "map", "inet", "netplane_cni", "pods4", check=False).stdout
    if "elements" in masq:
        leaks.append("ipMasq entries")
    return leaks


def report(modes: list[Mode], args: argparse.Namespace) -> None:
    ref = modes[0]
    print(f"\nCNI ADD/DEL latency, {args.cycles} single-pod cycles per mode (ms; ratio = mode / reference)")
    print(f"{'mode':<12} {'ADD p50':>8} {'ADD p99':>8} {'DEL p50':>8} {'DEL p99':>8} {'cycle p50':>10} "
          f"{'cycle p99':>10} {'ratio p50':>10} {'ratio p99':>10}")
    for m in modes:
        print(f"{m.label:<12} {pct(m.add, .5):8.1f} {pct(m.add, .99):8.1f} {pct(m.dele, .5):8.1f} "
              f"{pct(m.dele, .99):8.1f} {pct(m.cycle, .5):10.1f} {pct(m.cycle, .99):10.1f} "
              f"{pct(m.cycle, .5) / pct(ref.cycle, .5):10.2f} {pct(m.cycle, .99) / pct(ref.cycle, .99):10.2f}")
    print(f"\n{args.pods} pods with {args.callers} parallel callers, median of {args.bulk_rounds} rounds "
          "(s; ratio = mode / reference)")
    print(f"{'mode':<12} {'up':>8} {'down':>8} {'up ratio':>9} {'down ratio':>11}")
    for m in modes:
        print(f"{m.label:<12} {m.bulk_up:8.2f} {m.bulk_down:8.2f} {m.bulk_up / ref.bulk_up:9.2f} "
              f"{m.bulk_down / ref.bulk_down:11.2f}")
    mean: Callable[[list[float]], float] = statistics.fmean
    print(f"\n(mean ADD: reference {mean(ref.add) * 1000:.1f} ms, fast path {mean(modes[-1].add) * 1000:.1f} ms)")


if __name__ == "__main__":
    sys.exit(main())
