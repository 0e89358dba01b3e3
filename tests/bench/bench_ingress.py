"""Benchmark: the Ingress controller's nginx against nginx configured by hand, in one run.

    ./run bench ingress [--seconds 5] [--rounds 3] [--connections 32] [--ingresses 1000] [--samples 20]

Everything runs in a private network namespace (np-ingb-*): an echo backend, the controller's
nginx and the hand-written anchor nginx, and wrk as the client.

1. Serving: requests per second and p99 latency through the controller's nginx (a 1-Ingress
   configuration routing Host bench.test to the backend's EndpointSlice) and through an anchor
   nginx whose configuration is one ``proxy_pass`` to the same backend (with the same upstream
   keep-alive, and once more without it, as the plainest hand configuration). Rounds alternate
   between them; medians and the ratio ingress/anchor are printed (goal >= 0.95).
2. Render + reload at --ingresses Ingresses (each its own host, two paths): the planner (parse,
   route table, render: from scratch, and the controller's incremental plan with its cache), the
   whole sync (plan, validation, graceful reload) for the first full configuration and for a
   one-Ingress change; the anchor is what the controller used to do with nginx alone on the same
   file: ``nginx -t``, then nginx's own graceful reload (until its old workers stop accepting).
3. Write-to-serving latency: with the controller running against a state server holding
   --ingresses Ingresses, each sample creates one more Ingress and polls its host (a fresh
   connection every 2 ms, from inside the namespace, closed with RST) until the backend answers
   through the new route; p50/p99 over --samples (goal p99 <= 1 s).

Each part prints the load average before and after it: the machine is shared.

MACHINE-NOTES: two noisy shared cores; trust the ratios of side-by-side runs, not absolute numbers.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from netplane.ingress.controller import ControllerOptions, IngressController, Snapshot, plan
from netplane.ingress.fixtures import endpoint_slice, ingress, path, rule, service
from netplane.ingress.nginx import Nginx
from tests.integration.ingress.support import (
    Api,
    Backends,
    Netns,
    request,
    selectorless_service,
    start_controller,
    wait_for,
)
from tests.support.server import start_server

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
ANCHOR_CONF = """\
pid {d}/nginx.pid;
error_log {d}/error.log warn;
worker_processes {workers};
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {d}/tmp; proxy_temp_path {d}/tmp;
    fastcgi_temp_path {d}/tmp; uwsgi_temp_path {d}/tmp; scgi_temp_path {d}/tmp;
    {upstream}
    server {{
        listen {addr}:{port};
        location / {{
            {proxy}
        }}
    }}
}}
"""


def loadavg() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f}"


def _unit_seconds(value: str) -> float:
    m = re.match(r"([\d.]+)(us|ms|s|m)", value)
    if not m:
        raise ValueError(value)
    return float(m.group(1)) * {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}[m.group(2)]


def wrk(netns: Netns, url: str, host: str, seconds: float, connections: int) -> tuple[float, float, int]:
    """(requests/s, p99 seconds, socket errors + non-2xx) from one wrk run inside the namespace."""
    out = subprocess.run(netns.argv(["wrk", "-t2", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--latency",
                                     "-H", f"Host: {host}", url]), capture_output=True, text=True,
                         timeout=seconds + 60, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p99 = _unit_seconds(re.search(r"\s99%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    errors = 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if m:
        errors += sum(int(x) for x in m.groups())
    m2 = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if m2:
        errors += int(m2.group(1))
    return rps, p99, errors


def start_anchor(netns: Netns, d: Path, port: int, backend: str, keepalive: bool, workers: str) -> Nginx:
    d.mkdir(parents=True, exist_ok=True)
    (d / "tmp").mkdir(exist_ok=True)
    if keepalive:
        # What a careful hand configuration has: upstream keep-alive and the usual reverse-proxy
        # headers (the same ones the controller sets, so the backend does the same work per request).
        upstream = f"upstream backend {{ server {backend}; keepalive 64; }}"
        proxy = ('proxy_http_version 1.1; proxy_set_header Connection ""; proxy_set_header Host $http_host; '
                 "proxy_set_header X-Real-IP $remote_addr; proxy_set_header X-Forwarded-For $remote_addr; "
                 "proxy_set_header X-Forwarded-Proto $scheme; proxy_set_header X-Forwarded-Host $host; "
                 "proxy_set_header X-Forwarded-Port $server_port; proxy_pass http://backend;")
    else:
        upstream, proxy = "", f"proxy_pass http://{backend};"
    nginx = Nginx(d, NGINX, netns.name)
    nginx.prepare()
    nginx.install(ANCHOR_CONF.format(d=d, workers=workers, upstream=upstream, proxy=proxy, addr=netns.address,
                                     port=port))
    nginx.start()
    return nginx


def serving(netns: Netns, api: Api, server_url: str, tmp: Path, args: argparse.Namespace, backend_port: int) -> None:
    print(f"\n== 1. serving: wrk -c{args.connections}, {args.rounds} rounds x {args.seconds}s each, alternating "
          f"({loadavg()}) ==")
    api.apply(ingress("bench", rule("bench.test", path("/", "echo"))))
    ctl = start_controller(server_url, netns, tmp / "ctl-serve", "--upstream", "endpoints", "--workers", args.workers)
    anchors = {"anchor (keepalive)": start_anchor(netns, tmp / "anchor-ka", 8081, f"{netns.address}:{backend_port}",
                                                  True, args.workers),
               "anchor (plain)": start_anchor(netns, tmp / "anchor-plain", 8082, f"{netns.address}:{backend_port}",
                                              False, args.workers)}
    ports = {"ingress": 80, "anchor (keepalive)": 8081, "anchor (plain)": 8082}
    try:
        wait_for("the bench route", lambda: request(netns, 80, "bench.test", "/").served_by == "echo")
        results: dict[str, list[tuple[float, float, int]]] = {k: [] for k in ports}
        for port in ports.values():  # warm-up
            wrk(netns, f"http://{netns.address}:{port}/", "bench.test", 1, args.connections)
        for _ in range(args.rounds):
            for name, port in ports.items():
                results[name].append(wrk(netns, f"http://{netns.address}:{port}/", "bench.test", args.seconds,
                                         args.connections))
        med = {k: (statistics.median(r[0] for r in v), statistics.median(r[1] for r in v), sum(r[2] for r in v))
               for k, v in results.items()}
        print(f"{'':22} {'req/s':>10} {'p99 ms':>8} {'errors':>7}")
        for k, (rps, p99, errs) in med.items():
            print(f"{k:22} {rps:10.0f} {p99 * 1000:8.2f} {errs:7d}")
        for anchor in ("anchor (keepalive)", "anchor (plain)"):
            print(f"ratio ingress / {anchor}: throughput {med['ingress'][0] / med[anchor][0]:.3f}, "
                  f"p99 {med['ingress'][1] / med[anchor][1]:.3f} (lower is better)   goal: throughput >= 0.95")
        print(f"({loadavg()})")
    finally:
        ctl.stop()
        for a in anchors.values():
            a.stop()
        api.delete("Ingress", "bench")


def many(n: int, backend_port: int, address: str) -> list[dict[str, Any]]:
    objs: list[dict[str, Any]] = []
    for i in range(n):
        objs.append(ingress(f"ing-{i}", rule(f"h{i}.bench.test", path("/", f"svc-{i % 50}"),
                                             path(f"/api/v{i % 3}", f"svc-{(i + 1) % 50}", kind="Exact")),
                            created=f"2024-01-01T00:{i // 60 % 60:02d}:{i % 60:02d}Z"))
    for j in range(50):
        objs.append(service(f"svc-{j}", [("", 80, backend_port)]))
        objs.append(endpoint_slice(f"svc-{j}", [address], [("", backend_port)]))
    return objs


def render_reload(netns: Netns, tmp: Path, args: argparse.Namespace, backend_port: int) -> None:
    n = args.ingresses
    print(f"\n== 2. render + reload with {n} Ingresses ({loadavg()}) ==")
    opts = ControllerOptions(state_dir=tmp / "rr", http_port=80, https_port=0, address=netns.address,
                             upstream_mode="endpoints", worker_processes=args.workers, netns=netns.name,
                             report_status=False)
    objs = many(n, backend_port, netns.address)
    snap = Snapshot(ingresses=[o for o in objs if o["kind"] == "Ingress"],
                    services=[o for o in objs if o["kind"] == "Service"],
                    slices=[o for o in objs if o["kind"] == "EndpointSlice"])
    ctl = IngressController(opts)
    ctl.start()
    try:
        t0 = time.perf_counter()
        p = plan(snap, opts)
        t_plan = time.perf_counter() - t0
        t0 = time.perf_counter()
        ok = ctl.apply(snap)
        t_first = time.perf_counter() - t0
        assert ok.ok and ok.changed, ok.error
        print(f"config: {len(p.rendered.text) / 1024:.0f} KiB, {p.rendered.text.count(chr(10))} lines, "
              f"{len(p.table.vhosts)} servers")
        print(f"first full configuration: plan+render {t_plan * 1000:.0f} ms, whole sync (plan, nginx -t, start) "
              f"{t_first * 1000:.0f} ms")
        plans, incremental, syncs, checks, reloads = [], [], [], [], []
        checks_before = ctl.checks
        for k in range(args.changes):
            snap.ingresses[k] = ingress(f"ing-{k}", rule(f"h{k}.bench.test", path("/", "svc-1"),
                                                         path(f"/changed{k}", "svc-2")))
            t0 = time.perf_counter()
            plan(snap, opts)
            plans.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            r = ctl.apply(snap)
            syncs.append(time.perf_counter() - t0)
            incremental.append(ctl.last_plan_seconds)
            assert r.ok and r.changed, r.error
            # The anchor: nginx alone checking and reloading the same file, no controller around it,
            # with nginx's own reload (it stops the old workers 100 ms after starting the new ones).
            text = ctl.nginx.conf.read_text()
            t0 = time.perf_counter()
            assert ctl.nginx.check(text).ok
            checks.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            ctl.nginx.reload(retire_early=False)
            reloads.append(time.perf_counter() - t0)
        ms = lambda xs: statistics.median(xs) * 1000  # noqa: E731
        print(f"one Ingress changed (median of {args.changes}): plan+render from scratch {ms(plans):.0f} ms, "
              f"incremental (the controller's) {ms(incremental):.0f} ms; whole sync {ms(syncs):.0f} ms "
              f"(nginx -t runs: {ctl.checks - checks_before}: the reload is the check)")
        print(f"anchor, nginx alone on the same file: nginx -t {ms(checks):.0f} ms + graceful reload "
              f"{ms(reloads):.0f} ms = {ms(checks) + ms(reloads):.0f} ms")
        print(f"ratio whole sync / nginx alone: {ms(syncs) / (ms(checks) + ms(reloads)):.2f}   ({loadavg()})")
    finally:
        ctl.stop()


def served_through(address: str, host: str, timeout: float = 2.0) -> bool:
    """One GET / with this Host on a fresh connection (call it inside the namespace); True when the
    echo backend answered, i.e. the request went through a route (the catch-all answers 404). A
    failed request is only "not yet": the next poll tries again."""
    data = b""
    try:
        with socket.create_connection((address, 80), timeout=timeout) as s:
            # RST on close: thousands of polls must not leave TIME_WAIT sockets behind (MACHINE-NOTES).
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            s.sendall(f"GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
            while chunk := s.recv(65536):
                data += chunk
    except OSError:
        return False
    return data.startswith(b"HTTP/1.1 200") and b'"pod": "echo"' in data


def write_to_serving(netns: Netns, api: Api, server_url: str, tmp: Path, args: argparse.Namespace,
                     backend_port: int) -> None:
    n = args.ingresses
    print(f"\n== 3. Ingress write -> route serving, with {n} Ingresses in the cluster, {args.samples} samples "
          f"({loadavg()}) ==")
    for o in many(n, backend_port, netns.address):
        api.apply(o)
    ctl = start_controller(server_url, netns, tmp / "ctl-lat", "--upstream", "endpoints", "--workers", args.workers,
                           timeout=120)
    lat: list[float] = []
    try:
        wait_for("the background Ingresses", lambda: request(netns, 80, f"h{n - 1}.bench.test", "/").served_by,
                 120)
        for k in range(args.samples):
            host = f"new{k}.bench.test"
            with netns.inside():
                assert not served_through(netns.address, host)
            t0 = time.monotonic()
            api.apply(ingress(f"new-{k}", rule(host, path("/", "svc-0"))))
            deadline = t0 + 30
            with netns.inside():  # the poll stays in the namespace: no setns per request
                while not served_through(netns.address, host):
                    if time.monotonic() > deadline:
                        raise AssertionError(f"{host} not served within 30 s:\n{ctl.log()[-2000:]}")
                    time.sleep(0.002)
            lat.append(time.monotonic() - t0)
        lat.sort()
        p99 = lat[min(len(lat) - 1, round(0.99 * (len(lat) - 1)))]
        print(f"write -> serving: p50 {statistics.median(lat) * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms, "
              f"max {lat[-1] * 1000:.0f} ms   goal: p99 <= 1000 ms   ({loadavg()})")
        print(f"anchor: nginx alone re-checking and reloading is part 2's 'nginx alone' time at {n} Ingresses")
    finally:
        ctl.stop()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--ingresses", type=int, default=1000)
    ap.add_argument("--changes", type=int, default=5)
    ap.add_argument("--samples", type=int, default=20)
    ap.add_argument("--workers", default="auto", help="worker_processes for every nginx")
    ap.add_argument("--only", choices=["serving", "reload", "latency"], default=None)
    args = ap.parse_args(argv)
    if shutil.which("wrk") is None:
        print("wrk is not installed (./run setup installs it)", file=sys.stderr)
        return 2
    netns = Netns(prefix="np-ingb").create()
    with tempfile.TemporaryDirectory(prefix="np-ingb-") as d:
        tmp = Path(d)
        srv = None
        backends = Backends(netns)
        try:
            srv = start_server(tmp / "state")
            api = Api(srv.url)
            port = backends.start("echo")
            selectorless_service(api, "echo", port, (netns.address,))
            if args.only in (None, "serving"):
                serving(netns, api, srv.url, tmp, args, port)
            if args.only in (None, "reload"):
                render_reload(netns, tmp, args, port)
            if args.only in (None, "latency"):
                write_to_serving(netns, api, srv.url, tmp, args, port)
        finally:
            backends.stop()
            if srv is not None:
                srv.kill(signal.SIGTERM)
            netns.delete()
    return 0


if __name__ == "__main__":
    sys.exit(main())
