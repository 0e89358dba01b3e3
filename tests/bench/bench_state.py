"""Benchmark: netplane's state server against Debian's etcd, side by side in one run.

    .venv/bin/python -m tests.bench.bench_state [--objects 2000] [--concurrency 1,8,32]
                                               [--watchers 100] [--fanout-writes 200] [--interval-ms 10]

Measures, for both systems in the same run (MACHINE-NOTES: two noisy shared cores,
so only side-by-side ratios mean anything):

1. Create and update throughput: N ConfigMap-sized JSON objects written by C
   concurrent writers. netplane: POST and PUT over keep-alive HTTP (aiohttp).
   etcd: what kube-apiserver sends etcd for the same verbs, through aetcd (one gRPC
   channel, as kube-apiserver uses): a create is a txn "create_revision == 0 -> put",
   an update is a txn "mod_revision == expected -> put" (`--etcd-plain-put` for bare puts).
2. Watch fan-out latency: `--watchers` independent watchers (netplane: one HTTP
   watch stream each; etcd: one gRPC client and connection each, watching the
   prefix), then W creates spaced `--interval-ms` apart. For every (write, watcher)
   pair: latency = time the watcher got the event - time just before the write was
   sent. p50 / p99 / max.

The server processes' CPU time (from /proc) is reported per write as well, since
the benchmark client shares the two cores with the server under test.
`--profile-netplane FILE` runs netplane's server under cProfile and writes its stats
there (that slows netplane down: use it to find where the time goes, not for numbers).

Every process the benchmark starts is stopped by PID in a finally block; HTTP
connections are closed with RST (SO_LINGER 0) so TIME_WAIT sockets do not pile up.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aetcd
import aiohttp

from netplane.api import jsonbytes
from tests.support.server import REPO

ETCD = "/usr/bin/etcd"
PYTHON = str(REPO / ".venv" / "bin" / "python")
CONFIGMAPS = "/api/v1/namespaces/default/configmaps"
ETCD_PREFIX = b"/registry/configmaps/default/"
CLK_TCK = os.sysconf("SC_CLK_TCK")

# Goals from issue 2, section 7.
GOAL_FANOUT_P99_MS = 50.0
GOAL_THROUGHPUT_RATIO = 0.5


# -- processes ---------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc (fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM by PID, then SIGKILL if it does not exit in time."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def wait_until(check: Callable[[], bool], what: str, proc: subprocess.Popen[bytes], log: Path,
               timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}:\n{log.read_text(errors='replace')[-3000:]}")
        with contextlib.suppress(OSError, ValueError):
            if check():
                return
        time.sleep(0.02)
    raise RuntimeError(f"{what} not ready in {timeout}s:\n{log.read_text(errors='replace')[-3000:]}")


@dataclass
class Server:
    name: str
    proc: subprocess.Popen[bytes]
    address: str  # netplane: base URL; etcd: host:port


def start_netplane(workdir: Path, profile: str | None) -> Server:
    data = workdir / "netplane"
    data.mkdir()
    ready = workdir / "netplane.ready"
    log = workdir / "netplane.log"
    prefix = [PYTHON, "-m", "cProfile", "-o", profile] if profile else [PYTHON]
    cmd = [*prefix, "-m", "netplane.cli.main", "server", "--listen", "127.0.0.1:0",
           "--data-dir", str(data), "--ready-file", str(ready)]
    with open(log, "ab") as logf:
        proc = subprocess.Popen(cmd, stdout=logf, stderr=logf, stdin=subprocess.DEVNULL, cwd=REPO)
    try:
        wait_until(lambda: bool(ready.read_text().strip()), "netplane server", proc, log)
        return Server("netplane", proc, ready.read_text().strip())
    except BaseException:
        stop_process(proc)
        raise


def start_etcd(workdir: Path) -> Server:
    client_port, peer_port = free_port(), free_port()
    client_url, peer_url = f"http://127.0.0.1:{client_port}", f"http://127.0.0.1:{peer_port}"
    log = workdir / "etcd.log"
    cmd = [ETCD, "--name", "bench", "--data-dir", str(workdir / "etcd"),
           "--listen-client-urls", client_url, "--advertise-client-urls", client_url,
           "--listen-peer-urls", peer_url, "--initial-advertise-peer-urls", peer_url,
           "--initial-cluster", f"bench={peer_url}", "--initial-cluster-state", "new",
           "--logger", "zap", "--log-level", "warn"]
    with open(log, "ab") as logf:
        proc = subprocess.Popen(cmd, stdout=logf, stderr=logf, stdin=subprocess.DEVNULL)
    try:
        def healthy() -> bool:
            with urllib.request.urlopen(client_url + "/health", timeout=1) as r:
                return bool(json.loads(r.read()).get("health") == "true")

        wait_until(healthy, "etcd", proc, log)
        return Server("etcd", proc, f"127.0.0.1:{client_port}")
    except BaseException:
        stop_process(proc)
        raise


# -- payloads ----------------------------------------------------------------------------


def configmap(name: str, payload_bytes: int, generation: int = 0) -> dict[str, Any]:
    """A ConfigMap whose JSON is about payload_bytes long."""
    obj: dict[str, Any] = {
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": "default", "labels": {"app": "bench", "tier": "state"}},
        "data": {"generation": str(generation), "config.yaml": ""},
    }
    pad = max(0, payload_bytes - len(json.dumps(obj, separators=(",", ":"))))
    obj["data"]["config.yaml"] = "x" * pad
    return obj


def dumps(obj: Any) -> bytes:
    # Both systems' clients encode (and netplane's decodes its answers) with the same fast codec,
    # so the benchmark client, which shares the two cores, takes as little from either as it can.
    return jsonbytes.dumps(obj)


# -- clients: one interface over both systems ----------------------------------------------


def _rst_socket(addr_info: Any) -> socket.socket:
    """Client sockets that close with RST: no TIME_WAIT pile-up between runs (MACHINE-NOTES)."""
    family, type_, proto, _, _ = addr_info
    sock = socket.socket(family, type_, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def http_session(connections: int) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(limit=connections, force_close=False, socket_factory=_rst_socket)
    return aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=None, sock_read=None))


class Writer:
    """One system's write path. create and update return a token (resourceVersion, mod
    revision) that the next update of the same object is made conditional on."""

    name: str

    async def create(self, name: str, body: dict[str, Any]) -> Any: ...

    async def update(self, name: str, body: dict[str, Any], token: Any) -> Any: ...

    async def close(self) -> None: ...


class NetplaneWriter(Writer):
    name = "netplane"

    def __init__(self, url: str, connections: int) -> None:
        self.url = url
        self.session = http_session(connections)
        self.headers = {"Content-Type": "application/json"}

    async def create(self, name: str, body: dict[str, Any]) -> Any:
        async with self.session.post(self.url + CONFIGMAPS, data=dumps(body), headers=self.headers) as r:
            data = await r.read()
            if r.status != 201:
                raise RuntimeError(f"netplane create {name}: {r.status} {data[:300]!r}")
        return jsonbytes.loads(data)["metadata"]["resourceVersion"]

    async def update(self, name: str, body: dict[str, Any], token: Any) -> Any:
        body["metadata"]["resourceVersion"] = token
        async with self.session.put(f"{self.url}{CONFIGMAPS}/{name}", data=dumps(body), headers=self.headers) as r:
            data = await r.read()
            if r.status != 200:
                raise RuntimeError(f"netplane update {name}: {r.status} {data[:300]!r}")
        return jsonbytes.loads(data)["metadata"]["resourceVersion"]

    async def close(self) -> None:
        await self.session.close()


class EtcdWriter(Writer):
    name = "etcd"

    def __init__(self, address: str, plain_put: bool) -> None:
        host, port = address.rsplit(":", 1)
        self.client = aetcd.Client(host=host, port=int(port))
        self.plain_put = plain_put

    async def _txn(self, key: bytes, compare: Any, value: bytes) -> int:
        tx = self.client.transactions
        ok, responses = await self.client.transaction(compare=[compare], success=[tx.put(key, value)], failure=[])
        if not ok:
            raise RuntimeError(f"etcd txn on {key!r} failed its comparison")
        return int(responses[0].response_put.header.revision)

    async def create(self, name: str, body: dict[str, Any]) -> Any:
        key = ETCD_PREFIX + name.encode()
        if self.plain_put:
            return (await self.client.put(key, dumps(body))).header.revision
        return await self._txn(key, self.client.transactions.create(key) == 0, dumps(body))

    async def update(self, name: str, body: dict[str, Any], token: Any) -> Any:
        key = ETCD_PREFIX + name.encode()
        if self.plain_put:
            return (await self.client.put(key, dumps(body))).header.revision
        return await self._txn(key, self.client.transactions.mod(key) == token, dumps(body))

    async def close(self) -> None:
        await self.client.close()


# -- throughput --------------------------------------------------------------------------


@dataclass
class Throughput:
    op: str
    concurrency: int
    per_second: float
    cpu_ms_per_write: float
    client_cpu_ms_per_write: float


async def run_workers(n: int, concurrency: int, work: Callable[[int], Awaitable[None]]) -> float:
    """Run work(0..n-1) with `concurrency` workers pulling from one shared counter; seconds taken."""
    indices: Iterator[int] = iter(range(n))

    async def worker() -> None:
        for i in indices:  # a shared iterator: each index is taken exactly once
            await work(i)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - started


async def throughput(writer: Writer, server: Server, n: int, concurrency: int, payload: int,
                     tag: str) -> list[Throughput]:
    names = [f"bench-{tag}-c{concurrency}-{i}" for i in range(n)]
    tokens: list[Any] = [None] * n

    async def create(i: int) -> None:
        tokens[i] = await writer.create(names[i], configmap(names[i], payload))

    async def update(i: int) -> None:
        tokens[i] = await writer.update(names[i], configmap(names[i], payload, generation=1), tokens[i])

    out = []
    for op, work in (("create", create), ("update", update)):
        cpu0, client_cpu0 = cpu_seconds(server.proc.pid), time.process_time()
        seconds = await run_workers(n, concurrency, work)
        cpu, client_cpu = cpu_seconds(server.proc.pid) - cpu0, time.process_time() - client_cpu0
        out.append(Throughput(op, concurrency, n / seconds, cpu * 1000 / n, client_cpu * 1000 / n))
    return out


# -- watch fan-out -----------------------------------------------------------------------


@dataclass
class FanOut:
    latencies_ms: list[float] = field(default_factory=list)
    missing: int = 0
    cpu_ms_per_write: float = 0.0
    client_cpu_ms_per_write: float = 0.0

    def pct(self, q: float) -> float:
        if not self.latencies_ms:
            return float("nan")
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]




# A watch stream yields (object name, time.perf_counter() when its event arrived).
Arrivals = AsyncIterator[tuple[str, float]]


async def fan_out(server: Server, watch_streams: list[Arrivals], write: Callable[[str], Awaitable[None]],
                  writes: int, interval: float, tag: str) -> FanOut:
    """Drive `writes` spaced creates past already-open watch streams."""
    sent: dict[str, float] = {}
    received: list[dict[str, float]] = [{} for _ in watch_streams]
    warm = f"fan-{tag}-warmup"
    names = [f"fan-{tag}-{i}" for i in range(writes)]
    expected = {warm, *names}
    all_seen = asyncio.Event()
    done_watchers = 0

    async def consume(k: int, stream: Arrivals) -> None:
        nonlocal done_watchers
        got = received[k]
        async for name, now in stream:
            if name in expected and name not in got:
                got[name] = now
                if len(got) == len(expected):
                    done_watchers += 1
                    if done_watchers == len(watch_streams):
                        all_seen.set()
                    return

    tasks = [asyncio.create_task(consume(k, s)) for k, s in enumerate(watch_streams)]
    try:
        # One write seen by every watcher proves all streams are live before timing starts.
        await write(warm)
        deadline = time.monotonic() + 20
        while any(warm not in got for got in received):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{server.name}: not every watcher saw the warm-up write")
            await asyncio.sleep(0.01)
        cpu0, client_cpu0 = cpu_seconds(server.proc.pid), time.process_time()
        start = time.perf_counter()
        for i, name in enumerate(names):
            delay = start + i * interval - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            sent[name] = time.perf_counter()
            await write(name)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(all_seen.wait(), 10)
        cpu = cpu_seconds(server.proc.pid) - cpu0
        client_cpu = time.process_time() - client_cpu0
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    result = FanOut(cpu_ms_per_write=cpu * 1000 / writes, client_cpu_ms_per_write=client_cpu * 1000 / writes)
    for got in received:
        for name in names:
            if name in got:
                result.latencies_ms.append((got[name] - sent[name]) * 1000)
            else:
                result.missing += 1
    return result


async def netplane_fan_out(server: Server, watchers: int, writes: int, interval: float, payload: int) -> FanOut:
    session = http_session(watchers + 1)
    writer = NetplaneWriter(server.address, 4)
    responses: list[aiohttp.ClientResponse] = []
    try:
        async with session.get(server.address + CONFIGMAPS, params={"limit": "1"}) as r:
            rv = (await r.json())["metadata"]["resourceVersion"]
        for _ in range(watchers):
            resp = await session.get(server.address + CONFIGMAPS,
                                     params={"watch": "true", "resourceVersion": rv})
            if resp.status != 200:
                raise RuntimeError(f"netplane watch: {resp.status} {await resp.text()}")
            responses.append(resp)

        async def names(resp: aiohttp.ClientResponse) -> Arrivals:
            async for line in resp.content:
                arrived = time.perf_counter()  # before decoding: the event is here
                if line.strip():
                    ev = jsonbytes.loads(line)
                    if ev.get("type") == "ADDED":
                        yield ev["object"]["metadata"]["name"], arrived

        async def write(name: str) -> None:
            await writer.create(name, configmap(name, payload))

        return await fan_out(server, [names(r) for r in responses], write, writes, interval, "np")
    finally:
        for resp in responses:
            resp.close()
        if responses:
            # netplane's watch handler notices a gone client only when it next writes to it,
            # and until then SIGTERM waits (aiohttp's 60 s shutdown timeout). One more event,
            # once the server has seen the connections close, ends those handlers.
            await asyncio.sleep(0.3)
            with contextlib.suppress(Exception):
                await writer.create("fan-np-close", configmap("fan-np-close", payload))
        await writer.close()
        await session.close()


async def etcd_fan_out(server: Server, watchers: int, writes: int, interval: float, payload: int) -> FanOut:
    host, port = server.address.rsplit(":", 1)
    # A local subchannel pool gives each client its own TCP connection and watch stream,
    # as `watchers` independent processes would have (gRPC shares connections otherwise).
    clients = [aetcd.Client(host=host, port=int(port), options={"grpc.use_local_subchannel_pool": 1})
               for _ in range(watchers)]
    writer = EtcdWriter(server.address, plain_put=False)
    watches: list[Any] = []
    try:
        for c in clients:
            watches.append(await c.watch_prefix(ETCD_PREFIX))

        async def names(w: Any) -> Arrivals:
            async for ev in w:
                arrived = time.perf_counter()
                if ev.kind == "PUT":
                    yield ev.kv.key[len(ETCD_PREFIX):].decode(), arrived

        async def write(name: str) -> None:
            await writer.create(name, configmap(name, payload))

        return await fan_out(server, [names(w) for w in watches], write, writes, interval, "etcd")
    finally:
        for w in watches:
            with contextlib.suppress(Exception):
                await w.cancel()
        for c in clients:
            with contextlib.suppress(Exception):
                await c.close()
        await writer.close()


# -- report ------------------------------------------------------------------------------


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}" if b else "-"


def report(args: argparse.Namespace, tput: dict[str, list[Throughput]], fan: dict[str, FanOut]) -> bool:
    np_t, etcd_t = tput["netplane"], tput["etcd"]
    print()
    print(f"netplane state server vs etcd {etcd_version()}: {args.objects} objects of ~{args.payload_bytes} B,"
          f" {args.watchers} watchers, {args.fanout_writes} writes every {args.interval_ms} ms")
    # Other jobs on this shared machine move both columns; the load says how much to trust a run.
    print(f"load average now: {' '.join(f'{x:.1f}' for x in os.getloadavg())} on {os.cpu_count()} CPUs")
    print(f"{'metric':<34}{'netplane':>12}{'etcd':>12}{'netplane/etcd':>15}")
    print("-" * 73)
    worst = float("inf")
    for a, b in zip(np_t, etcd_t, strict=True):
        label = f"{a.op} C={a.concurrency} (objects/s)"
        r = a.per_second / b.per_second
        worst = min(worst, r)
        print(f"{label:<34}{a.per_second:>12.0f}{b.per_second:>12.0f}{r:>15.2f}")
    for a, b in zip(np_t, etcd_t, strict=True):
        label = f"  server CPU/write {a.op} C={a.concurrency} (ms)"
        print(f"{label:<34}{a.cpu_ms_per_write:>12.3f}{b.cpu_ms_per_write:>12.3f}"
              f"{ratio(a.cpu_ms_per_write, b.cpu_ms_per_write):>15}")
    # Client and server share the two cores: a costlier client leaves less CPU to its server.
    for a, b in zip(np_t, etcd_t, strict=True):
        label = f"  client CPU/write {a.op} C={a.concurrency} (ms)"
        print(f"{label:<34}{a.client_cpu_ms_per_write:>12.3f}{b.client_cpu_ms_per_write:>12.3f}")
    f_np, f_etcd = fan["netplane"], fan["etcd"]
    for q, label in ((50, "p50"), (99, "p99"), (100, "max")):
        np_ms, etcd_ms = f_np.pct(q), f_etcd.pct(q)
        print(f"{'fan-out ' + label + ' (ms)':<34}{np_ms:>12.2f}{etcd_ms:>12.2f}{ratio(np_ms, etcd_ms):>15}")
    print(f"{'fan-out events missing':<34}{f_np.missing:>12}{f_etcd.missing:>12}")
    print(f"{'fan-out server CPU/write (ms)':<34}{f_np.cpu_ms_per_write:>12.2f}{f_etcd.cpu_ms_per_write:>12.2f}"
          f"{ratio(f_np.cpu_ms_per_write, f_etcd.cpu_ms_per_write):>15}")
    # The watchers live in this process: its CPU per write is part of every latency above.
    print(f"{'fan-out bench client CPU/write (ms)':<34}{f_np.client_cpu_ms_per_write:>12.2f}"
          f"{f_etcd.client_cpu_ms_per_write:>12.2f}")
    print()
    p99 = f_np.pct(99)
    fan_ok = p99 <= GOAL_FANOUT_P99_MS and f_np.missing == 0
    tput_ok = worst >= GOAL_THROUGHPUT_RATIO
    print(f"goal: fan-out p99 <= {GOAL_FANOUT_P99_MS:.0f} ms with {args.watchers} watchers:"
          f" netplane p99 {p99:.1f} ms -> {'MET' if fan_ok else 'MISSED'}")
    print(f"goal: write throughput >= {GOAL_THROUGHPUT_RATIO}x etcd (every row):"
          f" worst ratio {worst:.2f} -> {'MET' if tput_ok else 'MISSED'}")
    return fan_ok and tput_ok


def etcd_version() -> str:
    out = subprocess.run([ETCD, "--version"], capture_output=True, text=True, check=False).stdout
    return out.split()[2] if out.startswith("etcd Version:") else "?"


# -- main --------------------------------------------------------------------------------


async def bench(args: argparse.Namespace, servers: dict[str, Server]) -> tuple[dict[str, list[Throughput]],
                                                                               dict[str, FanOut]]:
    tput: dict[str, list[Throughput]] = {"netplane": [], "etcd": []}
    for c in args.concurrency:
        # Alternate the systems at each step, so slow drift on the shared machine hits both.
        for name in ("netplane", "etcd"):
            server = servers[name]
            writer: Writer = (NetplaneWriter(server.address, c) if name == "netplane"
                              else EtcdWriter(server.address, args.etcd_plain_put))
            try:
                rows = await throughput(writer, server, args.objects, c, args.payload_bytes, name)
            finally:
                await writer.close()
            tput[name].extend(rows)
            print(f"  {name:<9} C={c:<3} " + "  ".join(f"{r.op} {r.per_second:7.0f}/s" for r in rows), flush=True)
    interval = args.interval_ms / 1000
    fan = {
        "netplane": await netplane_fan_out(servers["netplane"], args.watchers, args.fanout_writes, interval,
                                           args.payload_bytes),
        "etcd": await etcd_fan_out(servers["etcd"], args.watchers, args.fanout_writes, interval,
                                   args.payload_bytes),
    }
    for name, f in fan.items():
        print(f"  {name:<9} fan-out p50 {f.pct(50):.2f} ms  p99 {f.pct(99):.2f} ms  missing {f.missing}", flush=True)
    return tput, fan


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m tests.bench.bench_state", description=__doc__.split("\n\n")[0])
    p.add_argument("--objects", type=int, default=2000, help="objects created then updated per concurrency level")
    p.add_argument("--concurrency", type=lambda s: [int(x) for x in s.split(",")], default=[1, 8, 32],
                   help="comma-separated numbers of concurrent writers")
    p.add_argument("--payload-bytes", type=int, default=1024, help="approximate JSON size of each object")
    p.add_argument("--watchers", type=int, default=100)
    p.add_argument("--fanout-writes", type=int, default=200)
    p.add_argument("--interval-ms", type=float, default=10.0, help="spacing of the fan-out writes")
    p.add_argument("--etcd-plain-put", action="store_true",
                   help="etcd writes as bare puts instead of kube-apiserver's compare-and-swap txns")
    p.add_argument("--profile-netplane", metavar="FILE", default=None,
                   help="run netplane's server under cProfile and write its stats to FILE")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (logs, data) for inspection")
    args = p.parse_args(argv)
    if min(args.objects, args.watchers, args.fanout_writes, *args.concurrency) < 1:
        p.error("--objects, --concurrency, --watchers and --fanout-writes must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not os.path.exists(ETCD):
        print(f"{ETCD} is missing: run ./run setup", file=sys.stderr)
        return 2
    # The same file system for both data dirs, so both pay the same fsync.
    workdir = Path(tempfile.mkdtemp(prefix="np-bench-state-", dir="/var/tmp"))
    servers: dict[str, Server] = {}
    started = time.monotonic()
    try:
        profile = os.path.abspath(args.profile_netplane) if args.profile_netplane else None
        servers["netplane"] = start_netplane(workdir, profile)
        servers["etcd"] = start_etcd(workdir)
        tput, fan = asyncio.run(bench(args, servers))
    finally:
        for s in servers.values():
            stop_process(s.proc)
        if args.keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    ok = report(args, tput, fan)
    print(f"(whole run: {time.monotonic() - started:.0f} s)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
