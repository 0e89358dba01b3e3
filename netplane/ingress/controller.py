"""`netplane ingress`: watch Ingresses, render nginx, reload it safely, report status and Events.

The shape of every netplane agent: informers (Ingresses, IngressClasses, Services, EndpointSlices,
TLS Secrets) -> a snapshot -> :func:`plan` (pure: class selection, parsing, route table, upstreams,
certificates, rendered text) -> :meth:`IngressController.apply` (thin I/O: certificate files,
install, SIGHUP) -> Events and ``status.loadBalancer``.

The controller keeps a :class:`PlanCache` between syncs: an Ingress or Secret object the informer
has not replaced is not parsed again, and a ``server`` block whose inputs are unchanged is not
rendered again, so one change among 1,000 Ingresses costs a few milliseconds of planning.

A bad Ingress never takes good routes down with it:

* what parsing rejects (an unsupported annotation value, a resource backend ...) is left out of
  the configuration and reported as a Warning Event ``Rejected`` on that Ingress;
* when nginx refuses a configuration (for instance a certificate whose key does not match), the
  error's line (or the certificate file it names) is traced back to the Ingresses that produced it;
  they are rejected the same way and the rest is tried again. nginx never serves a configuration it
  refused; if an error cannot be attributed, the last good configuration keeps serving and the sync
  is retried.

How a configuration is validated (see nginx.py): while nginx runs a known-good configuration, the
reload itself is the check. A master that cannot load the new file logs ``[emerg]`` and keeps its
old workers serving the old configuration, so nothing stops serving; the controller puts the good
file back and attributes the error as above. This parses each change once instead of twice
(``nginx -t``, then the reload). When nginx is not running, or the installed file is not known to
be good (a controller restarted mid-reload), ``nginx -t`` on a candidate file comes first, as a
refused start would leave nothing serving.

nginx is reloaded only when the rendered text differs from the live one (certificate files are
named by their content hash, so a changed certificate is a changed text).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ipaddress
import logging
import os
import signal
import socket
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from netplane.ingress.backends import Resolved, resolve, slices_by_service
from netplane.ingress.model import (
    IngressInvalid,
    IngressKey,
    IngressSource,
    ServiceRef,
    default_classes,
    is_ours,
    parse_ingress,
)
from netplane.ingress.nginx import DEFAULT_BINARY, CheckResult, Nginx, NginxError, NginxRejected
from netplane.ingress.render import Rendered, RenderOptions, ServerCache, render
from netplane.ingress.routes import Problem, RouteTable, build_table
from netplane.ingress.tls import CertBundle, bundle_from_secret

log = logging.getLogger("netplane.ingress")
Obj = dict[str, Any]
COMPONENT = "netplane-ingress"
MAX_ATTRIBUTION_ROUNDS = 20


@dataclass(frozen=True)
class ControllerOptions:
    state_dir: Path
    class_name: str = "netplane"
    http_port: int = 80
    https_port: int = 443
    address: str = ""  # listen address; "" = all
    publish_address: str | None = None  # written to status.loadBalancer; None: worked out
    nginx_binary: str = DEFAULT_BINARY
    upstream_mode: str = "service"
    worker_processes: str = "auto"
    min_sync_interval: float = 0.05  # at most one nginx reload per this interval (bursts coalesce)
    resync_period: float = 60.0
    ready_file: Path | None = None
    report_status: bool = True
    netns: str | None = None  # run nginx in this named network namespace (tests, benchmarks)
    access_log: bool = False
    validate_by_reload: bool = True  # False: always nginx -t before a reload (two parses per change)


@dataclass
class Snapshot:
    """The informers' caches at one moment (plain lists, so planning needs no I/O)."""

    ingresses: list[Obj] = field(default_factory=list)
    ingress_classes: list[Obj] = field(default_factory=list)
    services: list[Obj] = field(default_factory=list)
    slices: list[Obj] = field(default_factory=list)
    secrets: list[Obj] = field(default_factory=list)


@dataclass(frozen=True)
class Plan:
    rendered: Rendered
    table: RouteTable
    accepted: dict[IngressKey, Obj]  # served (possibly with Problems)
    rejected: dict[IngressKey, str]  # left out, with the reason
    problems: tuple[Problem, ...]
    certs: dict[str, bytes]  # file name under certs/ -> PEM
    ignored_annotations: dict[IngressKey, tuple[str, ...]]


def _key(obj: Obj) -> IngressKey:
    meta = obj.get("metadata") or {}
    return (str(meta.get("namespace") or "default"), str(meta.get("name") or ""))


def _routing_view(obj: Obj) -> Obj:
    """An object without the fields that never affect the configuration (status, bookkeeping)."""
    meta = {k: v for k, v in (obj.get("metadata") or {}).items()
            if k not in ("resourceVersion", "managedFields", "generation")}
    return {k: v for k, v in obj.items() if k not in ("status", "metadata")} | {"metadata": meta}


def select(snapshot: Snapshot, class_name: str) -> list[Obj]:
    defaults = default_classes(snapshot.ingress_classes)
    return [i for i in snapshot.ingresses if is_ours(i, class_name, defaults)]


class PlanCache:
    """What :func:`plan` may reuse from the previous sync: parses of the very same Ingress and Secret
    objects (the informer replaces an object on every change and never edits one in place, so
    identity means "unchanged") and rendered server blocks (keyed by value, see render.py)."""

    def __init__(self) -> None:
        self.parsed: dict[IngressKey, tuple[Obj, IngressSource | str]] = {}
        self.bundles: dict[tuple[str, str], tuple[Obj | None, CertBundle | str]] = {}
        self.servers = ServerCache()


def _parse(obj: Obj, key: IngressKey, cache: PlanCache | None,
           seen: dict[IngressKey, tuple[Obj, IngressSource | str]]) -> IngressSource | str:
    hit = cache.parsed.get(key) if cache is not None else None
    if hit is not None and hit[0] is obj:
        result = hit[1]
    else:
        try:
            result = parse_ingress(obj)
        except IngressInvalid as e:
            result = str(e)
    seen[key] = (obj, result)
    return result


def plan(snapshot: Snapshot, opts: ControllerOptions, extra_rejected: Mapping[IngressKey, str] | None = None,
         cache: PlanCache | None = None) -> Plan:
    """Everything the controller will do for this snapshot, computed without I/O. ``cache`` (owned by
    one controller) only saves work: the plan is the same with or without it."""
    extra_rejected = extra_rejected or {}
    parsed: dict[IngressKey, tuple[Obj, IngressSource | str]] = {}
    sources: list[IngressSource] = []
    accepted: dict[IngressKey, Obj] = {}
    rejected: dict[IngressKey, str] = {}
    ignored: dict[IngressKey, tuple[str, ...]] = {}
    for obj in select(snapshot, opts.class_name):
        key = _key(obj)
        if key in extra_rejected:
            rejected[key] = extra_rejected[key]
            continue
        src = _parse(obj, key, cache, parsed)
        if isinstance(src, str):
            rejected[key] = src
            continue
        sources.append(src)
        accepted[key] = obj
        if src.ignored_annotations:
            ignored[key] = src.ignored_annotations
    secrets = {_key(s): s for s in snapshot.secrets}
    bundles: dict[tuple[str, str], CertBundle | str] = {}
    decoded: dict[tuple[str, str], tuple[Obj | None, CertBundle | str]] = {}

    def tls_usable(secret: tuple[str, str]) -> str | None:
        if secret not in bundles:
            obj = secrets.get(secret)
            hit = cache.bundles.get(secret) if cache is not None else None
            bundles[secret] = hit[1] if hit is not None and hit[0] is obj else bundle_from_secret(obj)
            decoded[secret] = (obj, bundles[secret])
        b = bundles[secret]
        return b if isinstance(b, str) else None

    table = build_table(sources, tls_usable)
    services = {_key(s): s for s in snapshot.services}
    by_service = slices_by_service(snapshot.slices)
    refs: set[ServiceRef] = set()
    for vhost in table.vhosts.values():
        for r in (*vhost.routes, vhost.fallback):
            if r is not None:
                refs.add(r.backend)
    upstreams: dict[ServiceRef, Resolved] = {ref: resolve(ref, services, by_service, opts.upstream_mode)
                                             for ref in refs}
    cert_dir = opts.state_dir / "certs"
    cert_paths: dict[tuple[str, str], str] = {}
    certs: dict[str, bytes] = {}
    for secret, b in bundles.items():
        if isinstance(b, CertBundle):
            cert_paths[secret] = str(cert_dir / b.file_name)
            certs[b.file_name] = b.pem
    rendered = render(table, upstreams, cert_paths, RenderOptions(
        state_dir=str(opts.state_dir), http_port=opts.http_port, https_port=opts.https_port, address=opts.address,
        worker_processes=opts.worker_processes, access_log=opts.access_log),
        cache.servers if cache is not None else None)
    if cache is not None:
        # Keep only what this snapshot has (gone objects drop out); an Ingress left out by
        # extra_rejected keeps its entry for when it comes back.
        cache.parsed = {k: v for k, v in cache.parsed.items() if k in extra_rejected} | parsed
        cache.bundles = decoded
    return Plan(rendered, table, accepted, rejected, table.problems, certs, ignored)


def culprits(rendered: Rendered, line: int | None, message: str) -> frozenset[IngressKey]:
    """The Ingresses behind an ``nginx -t`` error: the line's owners, or the owners of every line that
    mentions a file the message quotes (certificate errors name the file, not the line)."""
    owners = rendered.owners_of_line(line) if line is not None else frozenset()
    if owners:
        return owners
    found: set[IngressKey] = set()
    for quoted in message.split('"')[1::2]:
        if not quoted.startswith("/"):
            continue
        for i, text in enumerate(rendered.text.splitlines(), start=1):
            if quoted in text:
                found |= rendered.owners_of_line(i)
    return frozenset(found)


def _fingerprint(obj: Obj, secrets: Mapping[IngressKey, Obj]) -> str:
    """What an nginx-level rejection depends on: the Ingress and the Secrets it names."""
    meta = obj.get("metadata") or {}
    parts = [str(meta.get("resourceVersion") or ""), str(meta.get("uid") or "")]
    ns = str(meta.get("namespace") or "default")
    for t in (obj.get("spec") or {}).get("tls") or []:
        s = secrets.get((ns, str(t.get("secretName") or "")))
        parts.append(str(((s or {}).get("metadata") or {}).get("resourceVersion") or "-"))
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


def publish_address(opts: ControllerOptions) -> str:
    """The address for status.loadBalancer: explicit, else the listen address, else the address the
    host would use to reach the outside (no packet is sent), else loopback."""
    if opts.publish_address:
        return opts.publish_address
    if opts.address and opts.address not in ("0.0.0.0", "::"):
        return opts.address
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(("192.0.2.1", 9))  # TEST-NET-1: routing lookup only
        return str(s.getsockname()[0])
    return "127.0.0.1"


def lb_status(address: str) -> list[Obj]:
    try:
        ipaddress.ip_address(address)
    except ValueError:
        return [{"hostname": address}]
    return [{"ip": address}]


@dataclass
class SyncResult:
    changed: bool = False
    ok: bool = True
    error: str = ""
    plan: Plan | None = None


class IngressController:
    """Owns the nginx process and the sync; I/O happens here, decisions in :func:`plan`."""

    def __init__(self, opts: ControllerOptions, nginx: Nginx | None = None) -> None:
        self.opts = opts
        self.nginx = nginx or Nginx(opts.state_dir, opts.nginx_binary, opts.netns)
        self.live_text: str | None = None
        # Ingresses nginx refused: key -> (fingerprint, reason); retried when the fingerprint changes.
        self.nginx_rejects: dict[IngressKey, tuple[str, str]] = {}
        self.cache = PlanCache()
        self.syncs = 0
        self.last_sync_seconds = 0.0
        self.last_plan_seconds = 0.0
        self.checks = 0  # nginx -t runs
        self.refused_reloads = 0  # reloads nginx refused (it went on serving the previous configuration)

    def start(self) -> None:
        self.nginx.prepare()
        if self.nginx.adopt():
            # An unverified file is one a previous controller was trying out when it stopped: nginx
            # may be running the one before, so nothing is known to be live and the first sync reloads.
            if self.nginx.conf_verified:
                with contextlib.suppress(OSError):
                    self.live_text = self.nginx.conf.read_text()
            log.info("adopted running nginx pid=%s", self.nginx.pid)

    def apply(self, snapshot: Snapshot) -> SyncResult:
        """Plan, validate, install and reload as needed (blocking: run it in a worker thread)."""
        started = time.monotonic()
        self.syncs += 1
        secrets = {_key(s): s for s in snapshot.secrets}
        ingresses = {_key(i): i for i in snapshot.ingresses}
        extra = {}
        for key, (fp, reason) in list(self.nginx_rejects.items()):
            obj = ingresses.get(key)
            if obj is None or _fingerprint(obj, secrets) != fp:
                del self.nginx_rejects[key]  # changed or gone: give it another chance
            else:
                extra[key] = reason
        result = SyncResult()
        for _ in range(MAX_ATTRIBUTION_ROUNDS):
            t0 = time.monotonic()
            p = plan(snapshot, self.opts, extra, self.cache)
            self.last_plan_seconds = time.monotonic() - t0
            result.plan = p
            if p.rendered.text == self.live_text and self.nginx.running():
                break
            self._write_certs(p.certs)
            try:
                check = self._try(p.rendered.text)
            except NginxError as e:
                result.ok, result.error = False, str(e)
                break
            if check is None:
                result.changed = True
                self._gc_certs(p.certs)
                break
            blamed = culprits(p.rendered, check.line, check.message)
            if not blamed:
                result.ok, result.error = False, f"nginx: {check.message}"
                log.error("nginx rejected the configuration and the error names no Ingress; keeping the last good "
                          "one: %s", check.message)
                if not self.nginx.running() and self.live_text is not None:
                    self._restart_live()
                break
            for key in blamed:
                reason = f"nginx rejected the configuration it produces: {check.message}"
                extra[key] = reason
                if key in ingresses:
                    self.nginx_rejects[key] = (_fingerprint(ingresses[key], secrets), reason)
        else:
            result.ok, result.error = False, "too many nginx rejections in one sync"
        if result.ok and not self.nginx.running():
            self._restart_live()
        self.last_sync_seconds = time.monotonic() - started
        return result

    def _try(self, text: str) -> CheckResult | None:
        """Make ``text`` live: None when nginx serves it, else nginx's error (the previous
        configuration keeps serving). NginxError: nginx failed for another reason."""
        if self.opts.validate_by_reload and self.live_text is not None and self.nginx.running():
            self.nginx.install(text, verified=False)
            try:
                self.nginx.reload()
            except NginxRejected as e:
                self.refused_reloads += 1
                self.nginx.install(self.live_text)  # nginx still runs this one: the file says so again
                return e.check
            self.nginx.mark_verified()
            self.live_text = text
            return None
        self.checks += 1
        check = self.nginx.check(text)
        if not check.ok:
            return check
        self.nginx.install(text)
        try:
            self.nginx.reload()
        except NginxRejected as e:  # accepted by nginx -t, refused by the master: the same treatment
            self.refused_reloads += 1
            if self.live_text is not None:
                self.nginx.install(self.live_text)
            else:
                self.nginx.install(text, verified=False)  # what nginx runs is unknown
            return e.check
        self.live_text = text
        return None

    def _restart_live(self) -> None:
        log.warning("nginx is not running: starting it")
        try:
            self.nginx.start()
        except NginxError as e:
            log.error("cannot start nginx: %s", e)

    def _write_certs(self, certs: Mapping[str, bytes]) -> None:
        d = self.opts.state_dir / "certs"
        d.mkdir(mode=0o700, parents=True, exist_ok=True)
        for name, pem in certs.items():
            path = d / name
            if path.exists():
                continue
            tmp = path.with_suffix(".tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(pem)
            tmp.replace(path)

    def _gc_certs(self, keep: Iterable[str]) -> None:
        wanted = set(keep)
        for path in (self.opts.state_dir / "certs").glob("*.pem"):
            if path.name not in wanted:
                path.unlink(missing_ok=True)

    def stop(self) -> None:
        self.nginx.stop()


class Reporter:
    """Events and status, written only when they change (so a resync writes nothing)."""

    def __init__(self, client: Any, address: str) -> None:
        self.client = client
        self.status = lb_status(address)
        self.reported: dict[IngressKey, set[tuple[str, str]]] = {}
        self.instance = socket.gethostname()

    async def report(self, p: Plan, ingresses: Mapping[IngressKey, Obj]) -> None:
        from netplane.api.resources import lookup

        ing_info = lookup("networking.k8s.io", "v1", "ingresses")
        wanted: dict[IngressKey, set[tuple[str, str, str]]] = {}
        for key, reason in p.rejected.items():
            wanted.setdefault(key, set()).add(("Warning", "Rejected", reason))
        for prob in p.problems:
            wanted.setdefault(prob.ingress, set()).add(("Warning", prob.reason, prob.message))
        for key, names in p.ignored_annotations.items():
            wanted.setdefault(key, set()).add(("Normal", "IgnoredAnnotations",
                                               "not supported, ignored: " + ", ".join(names)))
        for key in p.accepted:
            wanted.setdefault(key, set()).add(("Normal", "Sync", "scheduled for sync"))
        for key, events in wanted.items():
            obj = ingresses.get(key)
            if obj is None:
                continue
            seen = self.reported.setdefault(key, set())
            for kind, reason, message in sorted(events):
                if (reason, message) in seen:
                    continue
                with contextlib.suppress(Exception):
                    await self._event(obj, kind, reason, message)
                    seen.add((reason, message))
                    log.info("event ingress=%s/%s type=%s reason=%s message=%r", key[0], key[1], kind, reason,
                             message)
        for key in [k for k in self.reported if k not in ingresses]:
            del self.reported[key]
        if ing_info is None:
            return
        for key, obj in p.accepted.items():
            current = (((obj.get("status") or {}).get("loadBalancer") or {}).get("ingress")) or []
            if current == self.status:
                continue
            try:
                await self.client.patch(ing_info, key[1], {"status": {"loadBalancer": {"ingress": self.status}}},
                                        key[0], subresource="status")
            except Exception as e:  # the Ingress may be gone; the next sync retries otherwise
                log.warning("cannot update status of ingress %s/%s: %s", key[0], key[1], e)

    async def _event(self, obj: Obj, kind: str, reason: str, message: str) -> None:
        from netplane.api.resources import lookup

        info = lookup("", "v1", "events")
        if info is None:
            return
        meta = obj.get("metadata") or {}
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        name = f"{meta.get('name')}.{hashlib.sha256(f'{reason}{message}{time.time_ns()}'.encode()).hexdigest()[:16]}"
        event = {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"name": name, "namespace": meta.get("namespace") or "default"},
            "involvedObject": {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "name": meta.get("name"),
                               "namespace": meta.get("namespace") or "default", "uid": meta.get("uid"),
                               "resourceVersion": meta.get("resourceVersion")},
            "type": kind, "reason": reason, "message": message[:1024],
            "source": {"component": COMPONENT}, "reportingComponent": COMPONENT, "reportingInstance": self.instance,
            "firstTimestamp": now, "lastTimestamp": now, "count": 1,
        }
        await self.client.create(info, event)


async def run(opts: ControllerOptions, cluster: Any, stop: asyncio.Event,
              synced: asyncio.Event | None = None) -> None:
    """The daemon: informers, the coalescing sync loop, reporting; stops nginx gracefully on the way out."""
    from netplane.api.resources import lookup
    from netplane.client.informer import Informer
    from netplane.client.rest import APIClient

    controller = IngressController(opts)
    await asyncio.to_thread(controller.start)
    dirty = asyncio.Event()
    dirty.set()

    def mark(*_a: object) -> None:
        dirty.set()

    def mark_update(old: Obj, new: Obj) -> None:
        # Our own status writes (and resourceVersion-only churn) change nothing we render.
        if _routing_view(old) != _routing_view(new):
            dirty.set()

    async with APIClient(cluster) as client:
        specs = {
            "ingresses": ("networking.k8s.io", "ingresses", None),
            "ingress_classes": ("networking.k8s.io", "ingressclasses", None),
            "services": ("", "services", None),
            "slices": ("discovery.k8s.io", "endpointslices", None),
            "secrets": ("", "secrets", "type=kubernetes.io/tls"),
        }
        informers: dict[str, Informer] = {}
        for attr, (group, plural, fields) in specs.items():
            info = lookup(group, "v1", plural)
            if info is None:
                raise RuntimeError(f"unknown resource {group}/{plural}")
            inf = Informer(client, info, field_selector=fields)
            inf.add_handler(mark, mark_update, mark)
            informers[attr] = inf
        reporter = Reporter(client, publish_address(opts))
        tasks = [asyncio.create_task(i.run()) for i in informers.values()]
        # Reporting (Events, status) runs beside the sync loop on the latest plan, so a slow API
        # server never delays the next nginx update.
        latest: list[tuple[Plan, dict[IngressKey, Obj]]] = []
        report_wanted = asyncio.Event()

        async def report_loop() -> None:
            while True:
                await report_wanted.wait()
                report_wanted.clear()
                if latest:
                    p, ings = latest.pop()
                    latest.clear()
                    try:
                        await reporter.report(p, ings)
                    except Exception as e:
                        log.warning("reporting failed: %s", e)

        if opts.report_status:
            tasks.append(asyncio.create_task(report_loop()))
        try:
            waiter: asyncio.Future[Any] = asyncio.ensure_future(
                asyncio.gather(*(i.wait_synced() for i in informers.values())))
            stopper: asyncio.Future[Any] = asyncio.ensure_future(stop.wait())
            await asyncio.wait([waiter, stopper], return_when=asyncio.FIRST_COMPLETED)
            stopper.cancel()
            if stop.is_set():
                waiter.cancel()
                return
            log.info("caches synced: ingresses=%d services=%d secrets=%d mode=%s", len(informers["ingresses"].list()),
                     len(informers["services"].list()), len(informers["secrets"].list()), opts.upstream_mode)
            last = float("-inf")
            last_reload = float("-inf")
            failures = 0
            while not stop.is_set():
                # Wake on a change, on stop, or every second to look after nginx and the periodic resync.
                waiters = [asyncio.ensure_future(dirty.wait()), asyncio.ensure_future(stop.wait())]
                await asyncio.wait(waiters, timeout=1.0, return_when=asyncio.FIRST_COMPLETED)
                for w in waiters:
                    w.cancel()
                if stop.is_set():
                    break
                period = opts.resync_period if failures == 0 else min(opts.resync_period, 0.5 * 2 ** min(failures, 6))
                since = time.monotonic() - last
                if not (dirty.is_set() or since >= period or not controller.nginx.running()):
                    continue
                # A change is picked up at once, also one that landed during the previous sync (changes
                # arriving meanwhile coalesce into this one); only reloads are spaced, so a burst of
                # writes cannot make nginx start a generation of workers every few milliseconds.
                hold = last_reload + opts.min_sync_interval - time.monotonic()
                if hold > 0:
                    await asyncio.sleep(hold)
                dirty.clear()
                snap = Snapshot(ingresses=informers["ingresses"].list(),
                                ingress_classes=informers["ingress_classes"].list(),
                                services=informers["services"].list(), slices=informers["slices"].list(),
                                secrets=informers["secrets"].list())
                last = time.monotonic()
                result = await asyncio.to_thread(controller.apply, snap)
                if result.changed:
                    last_reload = last
                    log.info("nginx reloaded in %.3fs (plan %.3fs): ingresses=%d rejected=%d",
                             controller.last_sync_seconds, controller.last_plan_seconds,
                             len(result.plan.accepted) if result.plan else 0,
                             len(result.plan.rejected) if result.plan else 0)
                failures = 0 if result.ok else failures + 1
                if not result.ok:
                    log.error("sync failed (retrying): %s", result.error)
                if result.ok and opts.ready_file is not None and not opts.ready_file.exists():
                    opts.ready_file.write_text(f"http={opts.http_port} https={opts.https_port}\n")
                if result.ok and synced is not None:
                    synced.set()
                if result.plan is not None and opts.report_status:
                    latest[:] = [(result.plan, {_key(i): i for i in snap.ingresses})]
                    report_wanted.set()
        finally:
            for t in tasks:
                t.cancel()
            for t in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await t
            await asyncio.to_thread(controller.stop)


def run_forever(opts: ControllerOptions, cluster: Any) -> None:
    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await run(opts, cluster, stop)

    asyncio.run(main())
