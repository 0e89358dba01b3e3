"""Probes as the kubelet runs them: a pure result state machine, and the three probe actions.

State machine (per container and probe): until ``initialDelaySeconds`` have passed
since the container started, a readiness probe reports not ready and a liveness
probe reports alive; then every ``periodSeconds`` one probe runs, and the result
flips only after ``successThreshold`` consecutive successes or ``failureThreshold``
consecutive failures. Readiness starts as not ready; liveness starts as alive.

Actions: httpGet (a GET to podIP:port/path from the node; 200 <= code < 400 is
success), tcpSocket (a connection opens), exec (the command, run inside the pod's
network namespace, exits 0). Each has ``timeoutSeconds``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

SUCCESS = "success"
FAILURE = "failure"


@dataclass(frozen=True, slots=True)
class ProbeSpec:
    kind: str  # httpGet | tcpSocket | exec
    action: Mapping[str, Any]
    initial_delay: float = 0.0
    period: float = 10.0
    timeout: float = 1.0
    success_threshold: int = 1
    failure_threshold: int = 3

    @staticmethod
    def parse(probe: Mapping[str, Any] | None) -> ProbeSpec | None:
        if not probe:
            return None
        for kind in ("httpGet", "tcpSocket", "exec", "grpc"):
            if kind in probe and probe[kind] is not None:
                return ProbeSpec(
                    kind=kind, action=probe[kind],
                    initial_delay=float(probe.get("initialDelaySeconds") or 0),
                    period=float(probe.get("periodSeconds") or 10),
                    timeout=float(probe.get("timeoutSeconds") or 1),
                    success_threshold=max(1, int(probe.get("successThreshold") or 1)),
                    failure_threshold=max(1, int(probe.get("failureThreshold") or 3)),
                )
        return None


class ProbeState:
    """Consecutive-result counting; `value` is the probe's verdict (ready / alive)."""

    def __init__(self, spec: ProbeSpec, initial: bool) -> None:
        self.spec = spec
        self.value = initial
        self.successes = 0
        self.failures = 0

    def observe(self, result: str) -> bool:
        """Feed one result; True when the verdict changed."""
        if result == SUCCESS:
            self.successes += 1
            self.failures = 0
            if not self.value and self.successes >= self.spec.success_threshold:
                self.value = True
                return True
        else:
            self.failures += 1
            self.successes = 0
            if self.value and self.failures >= self.spec.failure_threshold:
                self.value = False
                return True
        return False

    def due(self, started_at: float, last_run: float | None, now: float) -> bool:
        """Whether a probe should run now (monotonic times)."""
        if now < started_at + self.spec.initial_delay:
            return False
        return last_run is None or now >= last_run + self.spec.period


def resolve_port(port: Any, container_ports: Sequence[Mapping[str, Any]]) -> int:
    """A probe's port: a number, or the name of one of the container's ports."""
    if isinstance(port, int):
        return port
    text = str(port)
    if text.isdigit():
        return int(text)
    for p in container_ports:
        if p.get("name") == text and isinstance(p.get("containerPort"), int):
            return int(p["containerPort"])
    raise ValueError(f"port {text!r} is not a port of the container")


async def http_get(host: str, port: int, path: str, headers: Sequence[Mapping[str, Any]], timeout: float,
                   scheme: str = "HTTP") -> str:
    if scheme.upper() != "HTTP":
        return FAILURE  # HTTPS probes: not in the lab
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except (OSError, TimeoutError):
        return FAILURE
    try:
        hdrs = {"Host": f"{host}:{port}" if ":" not in host else f"[{host}]:{port}",
                "User-Agent": "kube-probe/1.30", "Accept": "*/*", "Connection": "close"}
        for h in headers:
            if h.get("name"):
                hdrs[str(h["name"])] = str(h.get("value") or "")
        req = f"GET {path or '/'} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in hdrs.items()) + "\r\n"
        writer.write(req.encode("latin-1"))
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), timeout)
        parts = line.decode("latin-1").split(" ", 2)
        if len(parts) < 2 or not parts[1].isdigit():
            return FAILURE
        return SUCCESS if 200 <= int(parts[1]) < 400 else FAILURE
    except (OSError, TimeoutError, asyncio.IncompleteReadError):
        return FAILURE
    finally:
        writer.close()


async def tcp_socket(host: str, port: int, timeout: float) -> str:
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except (OSError, TimeoutError):
        return FAILURE
    writer.close()
    return SUCCESS


async def exec_command(argv: Sequence[str], timeout: float, env: Mapping[str, str] | None = None) -> str:
    try:
        proc = await asyncio.create_subprocess_exec(*argv, stdin=asyncio.subprocess.DEVNULL,
                                                    stdout=asyncio.subprocess.DEVNULL,
                                                    stderr=asyncio.subprocess.DEVNULL,
                                                    env=dict(env) if env is not None else None)
    except OSError:
        return FAILURE
    try:
        code = await asyncio.wait_for(proc.wait(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return FAILURE
    return SUCCESS if code == 0 else FAILURE


async def run_probe(spec: ProbeSpec, pod_ip: str, container_ports: Sequence[Mapping[str, Any]],
                    exec_argv: Callable[[Sequence[str]], list[str]],
                    env: Mapping[str, str] | None = None) -> str:
    """One probe run; exec_argv wraps an exec probe's command so it runs inside the pod."""
    a = spec.action
    try:
        if spec.kind == "httpGet":
            port = resolve_port(a.get("port"), container_ports)
            return await http_get(str(a.get("host") or pod_ip), port, str(a.get("path") or "/"),
                                  a.get("httpHeaders") or [], spec.timeout, str(a.get("scheme") or "HTTP"))
        if spec.kind == "tcpSocket":
            port = resolve_port(a.get("port"), container_ports)
            return await tcp_socket(str(a.get("host") or pod_ip), port, spec.timeout)
        if spec.kind == "exec":
            command = [str(c) for c in a.get("command") or []]
            if not command:
                return FAILURE
            return await exec_command(exec_argv(command), spec.timeout, env)
    except ValueError:
        return FAILURE
    return FAILURE  # grpc: not supported in the lab
