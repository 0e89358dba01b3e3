"""The lab pod runtime (the kubelet's role for pods bound to this node).

One worker task per pod. A pod's life:

1. sandbox: a named netns (``<prefix><uid8>``), pinned by a tiny "pause" process
   (as Kubernetes' pause container does), with /etc/netns/<ns>/resolv.conf and
   hosts; networked by invoking the CNI plugins of the node's conflist exactly as
   a runtime does (loopback first, as dockershim did, then the pod network);
2. containers: each runs inside the sandbox as ``ip netns exec <ns> busybox sh -c SHIM``,
   a few-line shell "shim" (conmon's role) that starts the command in its own
   session with stdout/stderr appended to the container's log file, records its
   pid, waits for it and records its exit code. The shim and the container
   outlive the agent, so an agent restart does not touch them; the next agent
   adopts them from the files (pid + start time guard against pid reuse);
3. status: podIP(s), phase, conditions and containerStatuses are written to
   pods/<name>/status whenever they change; readiness comes from probes;
4. restarts: per restartPolicy, with kubelet's crash-loop backoff (10 s doubling, 5 min cap);
5. deletion (deletionTimestamp set), per container and all at once, as kubelet's
   killContainer: the ``lifecycle.preStop`` hook (exec inside the pod with the
   container's env, httpGet, or sleep), bounded by the grace period
   (``deletionGracePeriodSeconds``, else ``terminationGracePeriodSeconds``, default
   30) and skipped when that is 0; then SIGTERM to the container's process group
   and SIGKILL once the rest of the grace period (at least 2 s) has passed.
   Readiness probes keep running meanwhile (liveness probes stop), so a pod in
   its preStop delay stays Ready and its endpoint ``serving`` + ``terminating``.
   Then CNI DEL (prevResult from the ADD's cache), the netns and the state
   removed, then DELETE with gracePeriodSeconds=0 (the kubelet's confirmation),
   preconditioned on the pod's UID.

State dir layout: ``pods/<uid>/pod.json`` (sandbox record) and
``pods/<uid>/containers/<name>/<restart count>/{pid,exit,log,meta.json}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from netplane.api.resources import must
from netplane.client.informer import Informer
from netplane.client.rest import APIClient, APIConnectionError, APIStatusError
from netplane.kernel import podns
from netplane.node import pods as P
from netplane.node import probes
from netplane.node.cni import (
    LOOPBACK_CONF,
    Attachment,
    CNIInvokeError,
    CNIInvoker,
    find_plugin,
    load_network,
    result_ips,
)
from netplane.node.config import AgentConfig

log = logging.getLogger(__name__)

PODS = must("", "v1", "pods")

# conmon's job in a few lines of busybox sh: run the command in its own session, log, record pid and exit.
SHIM = (
    'log=$1; dir=$2; shift 2\n'
    '/bin/busybox setsid "$@" </dev/null >>"$log" 2>&1 &\n'
    'pid=$!\n'
    'echo "$pid" >"$dir/pid.tmp" && mv -f "$dir/pid.tmp" "$dir/pid"\n'
    'wait "$pid"\n'
    'code=$?\n'
    'echo "$code" >"$dir/exit.tmp" && mv -f "$dir/exit.tmp" "$dir/exit"\n'
)
PAUSE_ARGV = [P.BUSYBOX, "sleep", "2147483647"]
TICK = 0.5  # how often a pod worker looks at its containers' exit files
RESET_BACKOFF_AFTER = 600.0  # a container that ran this long restarts without delay


def rfc3339(t: float | None = None) -> str:
    return datetime.fromtimestamp(time.time() if t is None else t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def proc_start_ticks(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (field 22 of /proc/<pid>/stat), None if gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            data = f.read()
    except OSError:
        return None
    fields = data[data.rfind(")") + 2:].split()
    if len(fields) < 20 or fields[0] == "Z":
        return None  # gone or a zombie
    return int(fields[19])


def alive(pid: int | None, ticks: int | None) -> bool:
    return bool(pid) and ticks is not None and proc_start_ticks(int(pid or 0)) == ticks


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except OSError:
        return None


def _write_json(path: str, doc: Mapping[str, Any]) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(doc, f)
    os.replace(tmp, path)


@dataclass
class Instance:
    """One run of a container."""

    n: int
    dir: str
    pid: int | None = None
    ticks: int | None = None
    started: float | None = None  # wall clock
    finished: float | None = None
    exit_code: int | None = None
    reason: str | None = None
    proc: subprocess.Popen[bytes] | None = None  # the shim, when this agent started it

    @property
    def running(self) -> bool:
        return self.exit_code is None and self.pid is not None

    def meta(self) -> dict[str, Any]:
        return {"n": self.n, "pid": self.pid, "ticks": self.ticks, "started": self.started}


@dataclass
class ContainerState:
    spec: Mapping[str, Any]
    dir: str
    plan: P.ContainerPlan | None = None
    plan_error: str | None = None
    current: Instance | None = None
    previous: Instance | None = None
    next_start: float = 0.0  # monotonic
    waiting_reason: str | None = None
    waiting_message: str | None = None
    readiness: probes.ProbeState | None = None
    liveness: probes.ProbeState | None = None
    prestop: P.PreStopHook | None = None
    prestop_error: str | None = None  # a preStop the runtime cannot run: reported when it would run
    ready: bool = False
    started_mono: float = 0.0
    probe_task: asyncio.Task[None] | None = None

    @property
    def name(self) -> str:
        return str(self.spec.get("name"))

    @property
    def restart_count(self) -> int:
        return self.current.n if self.current else 0


@dataclass
class Sandbox:
    uid: str
    namespace: str
    name: str
    netns: str | None  # None for hostNetwork pods
    ips: list[str] = field(default_factory=list)
    pause_pid: int | None = None
    pause_ticks: int | None = None
    created: float = 0.0
    network: str | None = None  # the CNI network name used for ADD
    grace: int = 30

    def doc(self) -> dict[str, Any]:
        return {"uid": self.uid, "namespace": self.namespace, "name": self.name, "netns": self.netns,
                "ips": self.ips, "pause": {"pid": self.pause_pid, "ticks": self.pause_ticks},
                "created": self.created, "network": self.network, "grace": self.grace}

    @staticmethod
    def load(doc: Mapping[str, Any]) -> Sandbox:
        pause = doc.get("pause") or {}
        return Sandbox(uid=str(doc["uid"]), namespace=str(doc.get("namespace") or ""), name=str(doc.get("name") or ""),
                       netns=doc.get("netns"), ips=list(doc.get("ips") or []), pause_pid=pause.get("pid"),
                       pause_ticks=pause.get("ticks"), created=float(doc.get("created") or 0),
                       network=doc.get("network"), grace=int(doc.get("grace") or 30))


class PodWorker:
    def __init__(self, runtime: PodRuntime, uid: str, pod: Mapping[str, Any] | None,
                 sandbox: Sandbox | None = None) -> None:
        self.rt = runtime
        self.uid = uid
        self.pod: Mapping[str, Any] | None = pod
        self.gone = pod is None
        self.sandbox = sandbox
        self.adopted = sandbox is not None
        self.dir = os.path.join(runtime.config.pods_dir, uid)
        self.wake = asyncio.Event()
        self.containers: dict[str, ContainerState] = {}
        self.sandbox_error: tuple[str, str] | None = None
        self.failed: tuple[str, str] | None = None
        self.last_status: dict[str, Any] | None = None
        self.task: asyncio.Task[None] | None = None
        self.done = False

    # -- helpers ------------------------------------------------------------------

    @property
    def key(self) -> str:
        meta = (self.pod or {}).get("metadata") or {}
        if meta:
            return f"{meta.get('namespace')}/{meta.get('name')}"
        return f"{self.sandbox.namespace}/{self.sandbox.name}" if self.sandbox else self.uid

    @property
    def deleting(self) -> bool:
        return self.gone or bool(((self.pod or {}).get("metadata") or {}).get("deletionTimestamp"))

    @property
    def host_network(self) -> bool:
        return bool(((self.pod or {}).get("spec") or {}).get("hostNetwork"))

    def update(self, pod: Mapping[str, Any] | None) -> None:
        if pod is None:
            self.gone = True
        else:
            self.pod = pod
        self.wake.set()

    def exec_argv(self, argv: list[str]) -> list[str]:
        if self.sandbox is None or self.sandbox.netns is None:
            return list(argv)
        return podns.exec_argv(self.sandbox.netns, argv)

    def _init_containers(self) -> None:
        spec = (self.pod or {}).get("spec") or {}
        for c in spec.get("containers") or []:
            name = str(c.get("name"))
            if name in self.containers:
                continue
            cs = ContainerState(spec=c, dir=os.path.join(self.dir, "containers", name))
            try:
                cs.plan = P.plan_container(c)
            except P.ImageNotSupported as e:
                cs.plan_error = str(e)
                cs.waiting_reason, cs.waiting_message = "ImageNotSupported", str(e)
            rp = probes.ProbeSpec.parse(c.get("readinessProbe"))
            cs.readiness = probes.ProbeState(rp, initial=False) if rp else None
            lp = probes.ProbeSpec.parse(c.get("livenessProbe"))
            cs.liveness = probes.ProbeState(lp, initial=True) if lp else None
            try:
                cs.prestop = P.PreStopHook.parse(c)
            except P.HookError as e:
                cs.prestop_error = str(e)
            self.containers[name] = cs
        if any(cs.plan_error for cs in self.containers.values()):
            bad = next(cs for cs in self.containers.values() if cs.plan_error)
            self.failed = ("ImageNotSupported", f"container {bad.name}: {bad.plan_error}")

    # -- sandbox ------------------------------------------------------------------

    async def setup_sandbox(self) -> None:
        cfg = self.rt.config
        pod = self.pod or {}
        meta, spec = pod.get("metadata") or {}, pod.get("spec") or {}
        ns_name = None if self.host_network else P.netns_name(cfg.netns_prefix, self.uid)
        sb = Sandbox(uid=self.uid, namespace=str(meta.get("namespace") or "default"), name=str(meta.get("name")),
                     netns=ns_name, created=time.time(),
                     grace=int(spec.get("terminationGracePeriodSeconds", 30) or 0))
        os.makedirs(self.dir, exist_ok=True)
        self.sandbox = sb
        if ns_name is None:
            sb.ips = [cfg.address]
            _write_json(os.path.join(self.dir, "pod.json"), sb.doc())
            return
        await asyncio.to_thread(podns.create, ns_name)
        # Record the sandbox before networking it, so a crash in between is cleaned up by the next agent.
        _write_json(os.path.join(self.dir, "pod.json"), sb.doc())
        host_resolv = _read("/etc/resolv.conf") or ""
        await asyncio.to_thread(podns.write_etc_file, ns_name, "resolv.conf", P.resolv_conf(
            sb.namespace, cfg.cluster_dns, cfg.cluster_domain, str(spec.get("dnsPolicy") or "ClusterFirst"),
            spec.get("dnsConfig"), host_resolv))
        pause = self.rt.popen(podns.exec_argv(ns_name, PAUSE_ARGV), stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        sb.pause_pid, sb.pause_ticks = pause.pid, await self._ticks_of(pause.pid)
        _write_json(os.path.join(self.dir, "pod.json"), sb.doc())
        att = self.rt.attachment(sb, spec)
        if self.rt.has_loopback:
            await self.rt.cni.add(LOOPBACK_CONF, Attachment(att.container_id, att.netns, "lo", att.pod_namespace,
                                                           att.pod_name, att.pod_uid))
        net = load_network(cfg.cni_conf_dir)
        if net is None:
            raise CNIInvokeError(f"no CNI network configuration in {cfg.cni_conf_dir}")
        result = await self.rt.cni.add(net, att)
        sb.network = str(net["name"])
        sb.ips = result_ips(result)
        _write_json(os.path.join(self.dir, "pod.json"), sb.doc())
        await asyncio.to_thread(podns.write_etc_file, ns_name, "hosts", P.hosts_file(
            sb.name, sb.ips, spec.get("hostname"), spec.get("subdomain"), sb.namespace, cfg.cluster_domain))
        log.info("pod sandbox ready pod=%s netns=%s ips=%s", self.key, ns_name, ",".join(sb.ips))

    async def _ticks_of(self, pid: int) -> int | None:
        for _ in range(50):
            t = proc_start_ticks(pid)
            if t is not None:
                return t
            await asyncio.sleep(0.01)
        return None

    async def teardown_sandbox(self) -> None:
        sb = self.sandbox
        if sb is None:
            return
        cfg = self.rt.config
        if sb.netns is not None:
            att = self.rt.attachment(sb, (self.pod or {}).get("spec") or {})
            net = load_network(cfg.cni_conf_dir)
            for attempt in range(3):
                try:
                    await self.rt.cni.delete(net, att, sb.network)
                    break
                except CNIInvokeError as e:
                    log.warning("pod CNI DEL failed pod=%s attempt=%d error=%s", self.key, attempt + 1, e)
                    await asyncio.sleep(0.5 * (attempt + 1))
            if self.rt.has_loopback:
                with contextlib.suppress(CNIInvokeError):
                    await self.rt.cni.delete(LOOPBACK_CONF, Attachment(att.container_id, att.netns, "lo"))
            if alive(sb.pause_pid, sb.pause_ticks):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(int(sb.pause_pid or 0), signal.SIGKILL)
            await asyncio.to_thread(podns.delete, sb.netns)
        shutil.rmtree(self.dir, ignore_errors=True)
        log.info("pod sandbox removed pod=%s netns=%s", self.key, sb.netns)

    # -- adoption -------------------------------------------------------------------

    async def adopt(self) -> None:
        """Take over a sandbox and containers a previous agent started, without touching them."""
        sb = self.sandbox
        assert sb is not None
        if sb.netns is not None and not await asyncio.to_thread(podns.is_netns, sb.netns):
            if alive(sb.pause_pid, sb.pause_ticks):
                # The name's bind mount lived in the previous agent's private mount namespace.
                await asyncio.to_thread(podns.attach, sb.netns, int(sb.pause_pid or 0))
            else:
                raise CNIInvokeError(f"sandbox netns {sb.netns} of an adopted pod is gone")
        self._init_containers()
        for cs in self.containers.values():
            insts = sorted(int(d) for d in _listdir(cs.dir) if d.isdigit())
            if not insts:
                continue
            cs.current = self._load_instance(cs, insts[-1])
            if len(insts) > 1:
                cs.previous = self._load_instance(cs, insts[-2])
            if cs.current.running:
                cs.started_mono = time.monotonic() - max(0.0, time.time() - (cs.current.started or time.time()))
                # Keep the readiness last reported, so an agent restart does not flap the pod's endpoints;
                # the probes take over from there.
                was_ready = self._reported_ready(cs.name)
                cs.ready = was_ready if cs.readiness is not None else True
                if cs.readiness is not None:
                    cs.readiness = probes.ProbeState(cs.readiness.spec, initial=was_ready)
        log.info("pod adopted pod=%s netns=%s running=%s", self.key, sb.netns,
                 ",".join(n for n, c in self.containers.items() if c.current and c.current.running) or "-")

    def _reported_ready(self, name: str) -> bool:
        for st in ((self.pod or {}).get("status") or {}).get("containerStatuses") or []:
            if st.get("name") == name:
                return bool(st.get("ready"))
        return False

    def _load_instance(self, cs: ContainerState, n: int) -> Instance:
        d = os.path.join(cs.dir, str(n))
        meta = json.loads(_read(os.path.join(d, "meta.json")) or "{}")
        inst = Instance(n=n, dir=d, pid=meta.get("pid"), ticks=meta.get("ticks"), started=meta.get("started"))
        self._check_exit(inst)
        return inst

    # -- containers -------------------------------------------------------------------

    def _check_exit(self, inst: Instance) -> bool:
        """Notice that an instance ended; True when it just did."""
        if inst.exit_code is not None:
            return False
        text = _read(os.path.join(inst.dir, "exit"))
        if text is not None and text.strip().lstrip("-").isdigit():
            inst.exit_code = int(text.strip())
            try:
                inst.finished = os.stat(os.path.join(inst.dir, "exit")).st_mtime
            except OSError:
                inst.finished = time.time()
            return True
        # Gone without the shim recording it (the shim was killed): the code is unknown.
        if (inst.pid is not None and not alive(inst.pid, inst.ticks)
                and _read(os.path.join(inst.dir, "exit")) is None and not self._shim_alive(inst)):
            inst.exit_code, inst.reason, inst.finished = 255, "Unknown", time.time()
            return True
        return False

    def _shim_alive(self, inst: Instance) -> bool:
        return inst.proc is not None and inst.proc.poll() is None

    def _container_env(self, cs: ContainerState) -> dict[str, str]:
        """The environment a container's command (and its exec hooks) run with."""
        assert cs.plan is not None and self.sandbox is not None
        env = dict(P.container_env(self.pod or {}, cs.spec, self.sandbox.ips, self.rt.config.address,
                                   self.rt.config.kubernetes_service))
        env.update(dict(cs.plan.env))
        env.setdefault("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
        return env

    async def start_container(self, cs: ContainerState) -> None:
        assert cs.plan is not None and self.sandbox is not None
        n = 0 if cs.current is None else cs.current.n + 1
        d = os.path.join(cs.dir, str(n))
        os.makedirs(d, exist_ok=True)
        for stale in ("pid", "exit"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(d, stale))
        logfile = os.path.join(d, "log")
        env = self._container_env(cs)
        argv = [P.expand(a, env) for a in cs.plan.argv]
        cmd = self.exec_argv([P.BUSYBOX, "sh", "-c", SHIM, "shim", logfile, d, *argv])
        cwd = str(cs.spec.get("workingDir") or "/")
        if not os.path.isdir(cwd):
            cwd = "/"
        with open(logfile, "ab") as lf:
            proc = self.rt.popen(cmd, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=lf, stderr=lf)
        inst = Instance(n=n, dir=d, started=time.time(), proc=proc)
        if cs.current is not None:
            cs.previous = cs.current
        cs.current = inst
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            text = _read(os.path.join(d, "pid"))
            if text and text.strip().isdigit():
                inst.pid = int(text.strip())
                inst.ticks = proc_start_ticks(inst.pid)
                break
            if proc.poll() is not None:
                break
            await asyncio.sleep(0.01)
        _write_json(os.path.join(d, "meta.json"), inst.meta())
        cs.started_mono = time.monotonic()
        cs.waiting_reason = cs.waiting_message = None
        cs.ready = cs.readiness is None
        if cs.readiness is not None:
            cs.readiness = probes.ProbeState(cs.readiness.spec, initial=False)
        if cs.liveness is not None:
            cs.liveness = probes.ProbeState(cs.liveness.spec, initial=True)
        if inst.pid is None:
            self._check_exit(inst)
            if inst.exit_code is None:
                inst.exit_code, inst.reason, inst.finished = 128, "StartError", time.time()
        log.info("container started pod=%s container=%s restart=%d pid=%s", self.key, cs.name, n, inst.pid)

    def _restart_policy(self) -> str:
        return str(((self.pod or {}).get("spec") or {}).get("restartPolicy") or "Always")

    async def step_containers(self) -> None:
        now = time.monotonic()
        for cs in self.containers.values():
            if cs.plan is None:
                continue
            inst = cs.current
            if inst is not None and inst.running:
                if self._check_exit(inst):
                    cs.ready = False
                    ran = (inst.finished or time.time()) - (inst.started or 0)
                    delay = 0.0 if ran >= RESET_BACKOFF_AFTER else P.restart_delay(inst.n + 1)
                    cs.next_start = now + delay
                    log.info("container exited pod=%s container=%s code=%s", self.key, cs.name, inst.exit_code)
                continue
            if inst is None:
                await self.start_container(cs)
                continue
            if not P.should_restart(self._restart_policy(), int(inst.exit_code or 0)):
                cs.waiting_reason = None
                continue
            if now >= cs.next_start:
                await self.start_container(cs)
            else:
                cs.waiting_reason = "CrashLoopBackOff"
                cs.waiting_message = (f"back-off {cs.next_start - now:.0f}s restarting failed "
                                      f"container={cs.name} pod={self.key}")

    async def kill_containers(self, grace: float) -> None:
        """Stop every running container as the kubelet does, all at once: preStop, SIGTERM, SIGKILL."""
        running = [cs for cs in self.containers.values() if cs.current and cs.current.running]
        await asyncio.gather(*(self.stop_container(cs, grace) for cs in running))
        for cs in running:
            cs.ready = False
            if cs.current and cs.current.exit_code is None:
                cs.current.exit_code, cs.current.finished = 137, time.time()

    async def stop_container(self, cs: ContainerState, grace: float) -> None:
        """kubelet's killContainer: the preStop hook (bounded by the grace period; skipped when it is 0),
        then SIGTERM, then SIGKILL once what is left of the grace period (at least 2 s) has passed."""
        inst = cs.current
        assert inst is not None
        took = 0.0
        if grace > 0 and (cs.prestop is not None or cs.prestop_error is not None):
            started = time.monotonic()
            await self.run_prestop(cs, grace)
            took = time.monotonic() - started
        self._check_exit(inst)
        if inst.running and alive(inst.pid, inst.ticks):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(int(inst.pid or 0), signal.SIGTERM)
        deadline = time.monotonic() + P.stop_grace(grace, took)
        while inst.running and time.monotonic() < deadline:
            if not self._check_exit(inst):
                await asyncio.sleep(0.05)
        if inst.running and alive(inst.pid, inst.ticks):
            log.info("container killed after grace period pod=%s container=%s", self.key, cs.name)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(int(inst.pid or 0), signal.SIGKILL)
        deadline = time.monotonic() + 5
        while inst.running and time.monotonic() < deadline:
            if not self._check_exit(inst):
                await asyncio.sleep(0.05)
        cs.ready = False
        self.wake.set()  # report the stopped container now, not when the pod's last one has stopped

    async def run_prestop(self, cs: ContainerState, grace: float) -> None:
        """Run the container's preStop hook for at most `grace` seconds. A failing hook is logged
        (the kubelet's FailedPreStopHook event) and termination goes on."""
        hook = cs.prestop
        if hook is None:
            log.warning("FailedPreStopHook pod=%s container=%s error=%s", self.key, cs.name, cs.prestop_error)
            return
        log.info("container preStop hook pod=%s container=%s action=%s", self.key, cs.name, hook.kind)
        if hook.kind == "sleep":
            await asyncio.sleep(min(hook.sleep_seconds(), grace))
            return
        assert self.sandbox is not None
        ip = self.sandbox.ips[0] if self.sandbox.ips else "127.0.0.1"
        spec = probes.ProbeSpec(kind=hook.kind, action=hook.action, timeout=grace)
        env = self._container_env(cs) if hook.kind == "exec" and cs.plan is not None else None
        result = await probes.run_probe(spec, ip, cs.spec.get("ports") or [], self._probe_argv, env)
        if result != probes.SUCCESS:
            log.warning("FailedPreStopHook pod=%s container=%s action=%s", self.key, cs.name, hook.kind)

    # -- probes ---------------------------------------------------------------------------

    async def probe_loop(self, cs: ContainerState) -> None:
        last: dict[str, float | None] = {"readiness": None, "liveness": None}
        while True:
            await asyncio.sleep(0.1)
            inst = cs.current
            if inst is None or not inst.running or self.sandbox is None:
                continue
            now = time.monotonic()
            ip = self.sandbox.ips[0] if self.sandbox.ips else "127.0.0.1"
            ports = cs.spec.get("ports") or []
            for kind in ("readiness", "liveness"):
                state: probes.ProbeState | None = getattr(cs, kind)
                if kind == "liveness" and self.deleting:
                    continue  # the kubelet stops liveness probes at deletion; readiness keeps going
                if state is None or not state.due(cs.started_mono, last[kind], now):
                    continue
                last[kind] = now
                result = await probes.run_probe(state.spec, ip, ports, self._probe_argv)
                if cs.current is not inst:
                    break  # restarted meanwhile: this result is about the old instance
                if state.observe(result):
                    if kind == "readiness":
                        cs.ready = state.value
                        log.info("container readiness pod=%s container=%s ready=%s", self.key, cs.name,
                                 state.value)
                    elif not state.value:
                        log.info("container liveness failed pod=%s container=%s: restarting", self.key, cs.name)
                        with contextlib.suppress(ProcessLookupError, PermissionError):
                            os.killpg(int(inst.pid or 0), signal.SIGKILL)
                    self.wake.set()

    def _probe_argv(self, cmd: Sequence[str]) -> list[str]:
        command = list(cmd)
        first = command[0]
        if not first.startswith("/") and shutil.which(first) is None:
            command = [P.BUSYBOX, *command]  # busybox applets (cat, test, wget, ...)
        return self.exec_argv(command)

    # -- status -----------------------------------------------------------------------------

    def view(self) -> P.PodView:
        sb = self.sandbox
        v = P.PodView(pod_ips=list(sb.ips) if sb else [], host_ip=self.rt.config.address,
                      start_time=rfc3339(sb.created) if sb else None,
                      sandbox_ready=sb is not None and bool(sb.ips))
        if self.failed:
            v.failed_reason, v.failed_message = self.failed
        for name, cs in self.containers.items():
            image = str(cs.spec.get("image") or "")
            c = P.ContainerView(name=name, image=image, restart_count=cs.restart_count, ready=cs.ready)
            inst = cs.current
            if inst is not None:
                c.container_id = f"netplane://{self.uid[:8]}-{name}-{inst.n}"
                c.running = inst.running
                c.started_at = rfc3339(inst.started) if inst.started else None
                if not inst.running:
                    c.exit_code = inst.exit_code
                    c.finished_at = rfc3339(inst.finished) if inst.finished else None
                    c.terminated_reason = inst.reason
                    if cs.waiting_reason == "CrashLoopBackOff":
                        c.waiting_reason, c.waiting_message = cs.waiting_reason, cs.waiting_message
                        c.last_exit_code, c.last_started_at, c.last_finished_at = \
                            c.exit_code, c.started_at, c.finished_at
                elif cs.previous is not None and cs.previous.exit_code is not None:
                    c.last_exit_code = cs.previous.exit_code
                    c.last_started_at = rfc3339(cs.previous.started) if cs.previous.started else None
                    c.last_finished_at = rfc3339(cs.previous.finished) if cs.previous.finished else None
            else:
                c.waiting_reason = cs.waiting_reason or ("ContainerCreating" if not self.sandbox_error
                                                         else self.sandbox_error[0])
                c.waiting_message = cs.waiting_message or (self.sandbox_error[1] if self.sandbox_error else None)
            v.containers.append(c)
        return v

    async def report(self) -> None:
        if self.gone or self.pod is None:
            return
        st = P.pod_status(self.pod, self.view(), rfc3339())
        comparable = _strip_times(st)
        if self.last_status is not None and comparable == self.last_status:
            return
        meta = self.pod.get("metadata") or {}
        try:
            await self.rt.client.patch(PODS, str(meta.get("name")), {"status": st},
                                       namespace=str(meta.get("namespace")), subresource="status")
            self.last_status = comparable
        except APIStatusError as e:
            if e.not_found:
                self.gone = True
                return
            log.warning("pod status update failed pod=%s error=%s", self.key, e)
        except APIConnectionError as e:
            log.warning("pod status update failed pod=%s error=%s", self.key, e)

    # -- the worker ---------------------------------------------------------------------------

    async def run(self) -> None:
        try:
            await self._run()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("pod worker failed pod=%s", self.key)
        finally:
            for cs in self.containers.values():
                if cs.probe_task is not None:
                    cs.probe_task.cancel()
            self.done = True

    async def _run(self) -> None:
        if self.adopted:
            try:
                await self.adopt()
            except (CNIInvokeError, podns.PodNetnsError) as e:
                log.warning("pod adoption failed pod=%s error=%s: recreating its sandbox", self.key, e)
                await self.teardown_sandbox()
                self.sandbox, self.adopted, self.containers = None, False, {}
        if self.pod is not None:
            self._init_containers()
        backoff = 1.0
        while self.sandbox is None or (self.sandbox.netns is not None and not self.sandbox.ips):
            if self.deleting or self.failed:
                break
            try:
                await self.setup_sandbox()
                self.sandbox_error = None
            except (CNIInvokeError, podns.PodNetnsError, OSError) as e:
                log.warning("pod sandbox failed pod=%s error=%s", self.key, e)
                self.sandbox_error = ("ContainerCreating", f"failed to set up the sandbox: {e}")
                await self.report()
                await self.teardown_sandbox_quietly()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.wake.wait(), backoff)
                self.wake.clear()
                backoff = min(backoff * 2, 30.0)
        for cs in self.containers.values():
            if cs.readiness or cs.liveness:
                cs.probe_task = asyncio.create_task(self.probe_loop(cs), name=f"probe-{self.key}-{cs.name}")
            elif cs.current is not None and cs.current.running:
                cs.ready = True
        while not self.deleting:
            if not self.failed:
                await self.step_containers()
            await self.report()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), TICK)
            self.wake.clear()
        await self.terminate()

    async def teardown_sandbox_quietly(self) -> None:
        with contextlib.suppress(Exception):
            await self.teardown_sandbox()
        self.sandbox = None

    async def _report_until(self, done: asyncio.Event) -> None:
        while not done.is_set():
            await self.report()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), TICK)
            self.wake.clear()

    def grace_period(self) -> float:
        meta = (self.pod or {}).get("metadata") or {}
        if meta.get("deletionGracePeriodSeconds") is not None:
            return float(meta["deletionGracePeriodSeconds"])
        if self.sandbox is not None and self.gone:
            return float(min(self.sandbox.grace, 30))
        return float(((self.pod or {}).get("spec") or {}).get("terminationGracePeriodSeconds", 30) or 0)

    async def terminate(self) -> None:
        grace = self.grace_period()
        log.info("pod terminating pod=%s grace=%.0fs", self.key, grace)
        # Status keeps flowing while the containers stop (a preStop delay can be long): readiness
        # probes still run, and a container that exits shows up at once.
        # Stopped by an event, not cancelled: a cancellation landing inside the API client's request
        # can be turned into a timeout there and swallowed, and the loop would never end.
        stopped = asyncio.Event()
        reporter = asyncio.create_task(self._report_until(stopped), name=f"report-{self.key}")
        try:
            await self.kill_containers(grace)
        finally:
            stopped.set()
            self.wake.set()
            await reporter
        await self.report()
        await self.teardown_sandbox()
        if not self.gone and self.pod is not None:
            meta = self.pod.get("metadata") or {}
            try:
                await self.rt.client.request(
                    "DELETE", f"/api/v1/namespaces/{meta.get('namespace')}/pods/{meta.get('name')}",
                    body={"kind": "DeleteOptions", "apiVersion": "v1", "gracePeriodSeconds": 0,
                          "preconditions": {"uid": self.uid}})
            except APIStatusError as e:
                if not e.not_found and e.code != 409:
                    log.warning("pod final delete failed pod=%s error=%s", self.key, e)
            except APIConnectionError as e:
                log.warning("pod final delete failed pod=%s error=%s", self.key, e)
        log.info("pod terminated pod=%s", self.key)


def _strip_times(st: Mapping[str, Any]) -> dict[str, Any]:
    out = json.loads(json.dumps(st))
    for c in out.get("conditions") or []:
        c.pop("lastTransitionTime", None)
    return dict(out)


def _listdir(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except OSError:
        return []


class PodRuntime:
    def __init__(self, config: AgentConfig, client: APIClient, pod_cidr: str | None = None) -> None:
        self.config = config
        self.client = client
        self.pod_cidr = pod_cidr
        self.pods = Informer(client, PODS, field_selector=f"spec.nodeName={config.node_name}")
        self.cni = CNIInvoker(config.cni_bin_dirs, config.cni_cache_dir)
        self.workers: dict[str, PodWorker] = {}
        self._children: list[subprocess.Popen[bytes]] = []
        self._wake = asyncio.Event()
        self.log_server: Any = None
        try:
            find_plugin("loopback", config.cni_bin_dirs)
            self.has_loopback = True
        except CNIInvokeError:
            self.has_loopback = False
            log.warning("no CNI loopback plugin in %s: pods' lo stays down", config.cni_path)

    def popen(self, argv: list[str], **kw: Any) -> subprocess.Popen[bytes]:
        """Start a pod process (pause or shim) that must outlive this agent.

        subprocess.Popen rather than asyncio's: an asyncio subprocess transport kills its
        child when it is closed or collected, which would take pods down with the agent.
        Its own session keeps signals meant for the agent's process group away from it.
        Children are reaped by `reap_children`; adopted ones by whoever inherits them.
        """
        proc = subprocess.Popen(argv, start_new_session=True, **kw)
        self._children.append(proc)
        return proc

    def reap_children(self) -> None:
        self._children = [p for p in self._children if p.poll() is None]

    def attachment(self, sb: Sandbox, spec: Mapping[str, Any]) -> Attachment:
        mappings = []
        for c in spec.get("containers") or []:
            for p in c.get("ports") or []:
                if p.get("hostPort"):
                    mappings.append({"hostPort": p["hostPort"], "containerPort": p.get("containerPort"),
                                     "protocol": str(p.get("protocol") or "TCP").lower(),
                                     "hostIP": p.get("hostIP") or ""})
        caps: dict[str, Any] = {"portMappings": mappings} if mappings else {}
        return Attachment(container_id=hashlib.sha256(sb.uid.encode()).hexdigest(),
                          netns=podns.path(sb.netns or ""), ifname="eth0", pod_namespace=sb.namespace,
                          pod_name=sb.name, pod_uid=sb.uid, capability_args=caps)

    def load_sandboxes(self) -> dict[str, Sandbox]:
        out = {}
        for uid in _listdir(self.config.pods_dir):
            text = _read(os.path.join(self.config.pods_dir, uid, "pod.json"))
            if not text:
                continue
            try:
                out[uid] = Sandbox.load(json.loads(text))
            except (ValueError, KeyError) as e:
                log.warning("unreadable sandbox record uid=%s error=%s", uid, e)
        return out

    async def start(self) -> list[asyncio.Task[Any]]:
        os.makedirs(self.config.pods_dir, exist_ok=True)
        adopted = self.load_sandboxes()
        self.pods.add_handler(on_add=self._changed, on_update=lambda old, new: self._changed(new),
                              on_delete=self._deleted)
        tasks = [asyncio.create_task(self.pods.run(), name="pods-informer")]
        await self.pods.wait_synced()
        current = {str(p["metadata"].get("uid")): p for p in self.pods.list()}
        for uid, sb in adopted.items():
            worker = PodWorker(self, uid, current.get(uid), sb)
            self.workers[uid] = worker
            worker.task = asyncio.create_task(worker.run(), name=f"pod-{uid[:8]}")
        tasks.append(asyncio.create_task(self._loop(), name="pods-sync"))
        if self.config.logs_port:
            from netplane.node.podlogs import LogServer

            self.log_server = LogServer(self.config.state_dir, self.config.address, self.config.logs_port)
            try:
                await self.log_server.start()
            except OSError as e:
                log.warning("container log server not started: %s", e)
                self.log_server = None
        self._wake.set()
        return tasks

    async def stop(self) -> None:
        """Stop watching; leave every pod running (a restarted agent adopts them)."""
        if self.log_server is not None:
            await self.log_server.stop()
        for w in self.workers.values():
            if w.task is not None:
                w.task.cancel()

    def _changed(self, pod: dict[str, Any]) -> None:
        uid = str((pod.get("metadata") or {}).get("uid"))
        w = self.workers.get(uid)
        if w is not None:
            w.update(pod)
        self._wake.set()

    def _deleted(self, pod: dict[str, Any]) -> None:
        uid = str((pod.get("metadata") or {}).get("uid"))
        w = self.workers.get(uid)
        if w is not None:
            w.update(None)
        self._wake.set()

    async def _loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), 1.0)
            self._wake.clear()
            self.reap_children()
            self.sync()

    def sync(self) -> None:
        for uid in [u for u, w in self.workers.items() if w.done]:
            del self.workers[uid]
        current = {str(p["metadata"].get("uid")): p for p in self.pods.list()}
        plan = P.plan_sync(current, set(self.workers))
        for uid in plan.start:
            worker = PodWorker(self, uid, current[uid])
            self.workers[uid] = worker
            worker.task = asyncio.create_task(worker.run(), name=f"pod-{uid[:8]}")
            log.info("pod admitted pod=%s/%s uid=%s", current[uid]["metadata"].get("namespace"),
                     current[uid]["metadata"].get("name"), uid)
        for uid in plan.terminate:
            self.workers[uid].update(current.get(uid))
