"""A small cluster of network namespaces for node-agent tests: underlay, control plane, nodes.

    ul: bridge br0 (the underlay, in its own namespace)
     |-- cp  192.168.77.1   runs `netplane server --listen 192.168.77.1:6443`
     |-- n1  192.168.77.11  runs `netplane node` (inside its namespace)
     |-- n2  192.168.77.12  ...

Namespaces are `np-node-<role>-<random>`, pod sandboxes `np-node-p<random>-<uid8>`.
The test process reaches the server through a loopback forwarder whose upstream
sockets are created inside the cp namespace (a thread enters it for the socket()
call only). `destroy()` kills every process it started or that the agents started
for pods (found through the agents' state dirs), then deletes the namespaces,
even after a failure.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from netplane.kernel import netns as knetns
from tests.support.server import NETPLANE

CP_IP = "192.168.77.1"
NODE_IPS = {"n1": "192.168.77.11", "n2": "192.168.77.12", "n3": "192.168.77.13"}
SERVER_PORT = 6443
CNI_BIN = "/usr/lib/cni"

T = TypeVar("T")


def sh(*argv: str, check: bool = True, timeout: float = 30) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {proc.stderr.strip()}")
    return proc.stdout


def wait_for(what: str, fn: Callable[[], T | None], timeout: float = 20.0, interval: float = 0.1) -> T:
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = fn()
            if value:
                return value
        except Exception as e:  # keep polling; report the last error on timeout
            last_error = e
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}" + (f": {last_error!r}" if last_error else ""))


class Forwarder:
    """127.0.0.1:<port> in the test's namespace -> (host, port) inside netns `ns`."""

    def __init__(self, ns: str, host: str, port: int) -> None:
        self.ns_path = f"/run/netns/{ns}"
        self.target = (host, port)
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.port = self.listener.getsockname()[1]
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        with knetns.entered(self.ns_path):
            upstream = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            upstream.settimeout(5)
            upstream.connect(self.target)
            upstream.settimeout(None)
        except OSError:
            client.close()
            upstream.close()
            return

        def pipe(a: socket.socket, b: socket.socket) -> None:
            try:
                while data := a.recv(65536):
                    b.sendall(data)
            except OSError:
                pass
            finally:
                for s in (a, b):
                    try:
                        s.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass

        t = threading.Thread(target=pipe, args=(upstream, client), daemon=True)
        t.start()
        pipe(client, upstream)
        t.join(10)
        client.close()
        upstream.close()

    def close(self) -> None:
        self.closed = True
        self.listener.close()


class Api:
    """A few synchronous JSON calls to the state server (urllib: no event loop in the tests)."""

    def __init__(self, url: str) -> None:
        self.url = url

    def call(self, method: str, path: str, body: Any = None, ctype: str = "application/json") -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Content-Type": ctype, "Accept": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read() or b"{}")

    def get(self, path: str) -> Any:
        try:
            return self.call("GET", path)
        except urllib.error.HTTPError as e:
            if e.code == 404:
                return None
            raise

    def node(self, name: str) -> Any:
        return self.get(f"/api/v1/nodes/{name}")

    def pod(self, name: str, ns: str = "default") -> Any:
        return self.get(f"/api/v1/namespaces/{ns}/pods/{name}")

    def create_pod(self, pod: dict[str, Any], ns: str = "default") -> Any:
        return self.call("POST", f"/api/v1/namespaces/{ns}/pods", pod)

    def delete_pod(self, name: str, ns: str = "default", grace: int | None = None) -> Any:
        body = None if grace is None else {"kind": "DeleteOptions", "apiVersion": "v1", "gracePeriodSeconds": grace}
        return self.call("DELETE", f"/api/v1/namespaces/{ns}/pods/{name}", body)


@dataclass
class Agent:
    node: str
    proc: subprocess.Popen[bytes]
    state_dir: Path
    conf_dir: Path
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@dataclass
class Cluster:
    tmp: Path
    sfx: str = field(default_factory=lambda: secrets.token_hex(3))
    namespaces: list[str] = field(default_factory=list)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    agents: dict[str, Agent] = field(default_factory=dict)
    forwarder: Forwarder | None = None
    api: Api | None = None

    def ns(self, role: str) -> str:
        return f"np-node-{role}-{self.sfx}"

    @property
    def pod_prefix(self) -> str:
        return f"np-node-p{self.sfx}-"

    def pod_netns(self, uid: str) -> str:
        return self.pod_prefix + uid.replace("-", "")[:8]

    def exec_in(self, role_or_ns: str, *argv: str, check: bool = True, timeout: float = 30) -> str:
        ns = role_or_ns if role_or_ns.startswith("np-node-") else self.ns(role_or_ns)
        return sh("ip", "netns", "exec", ns, *argv, check=check, timeout=timeout)

    def create(self, nodes: tuple[str, ...] = ("n1", "n2")) -> None:
        roles = ["ul", "cp", *nodes]
        for role in roles:
            sh("ip", "netns", "add", self.ns(role))
            self.namespaces.append(self.ns(role))
        ul = self.ns("ul")
        sh("ip", "-n", ul, "link", "add", "br0", "type", "bridge")
        sh("ip", "-n", ul, "link", "set", "br0", "up")
        for role, ip in (("cp", CP_IP), *((n, NODE_IPS[n]) for n in nodes)):
            ns = self.ns(role)
            sh("ip", "-n", ul, "link", "add", f"u-{role}", "type", "veth", "peer", "name", "eth0", "netns", ns)
            sh("ip", "-n", ul, "link", "set", f"u-{role}", "master", "br0", "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
            sh("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", "eth0")
            sh("ip", "-n", ns, "link", "set", "eth0", "up")

    def start_server(self) -> str:
        data = self.tmp / "state"
        data.mkdir(parents=True, exist_ok=True)
        ready = self.tmp / "server.ready"
        logf = open(self.tmp / "server.log", "ab")  # noqa: SIM115 - the process keeps it
        proc = subprocess.Popen(
            ["nsenter", f"--net=/run/netns/{self.ns('cp')}", NETPLANE, "server", "--listen",
             f"{CP_IP}:{SERVER_PORT}", "--data-dir", str(data), "--ready-file", str(ready)],
            stdout=logf, stderr=logf, stdin=subprocess.DEVNULL, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self.procs.append(proc)
        wait_for("the state server", lambda: ready.exists() and ready.read_text().strip(), 30)
        self.forwarder = Forwarder(self.ns("cp"), CP_IP, SERVER_PORT)
        self.api = Api(f"http://127.0.0.1:{self.forwarder.port}")
        return f"http://{CP_IP}:{SERVER_PORT}"

    def start_agent(self, node: str, backend: str = "host-gw", plugin: str = "bridge", launcher: str = "nsenter",
                    extra: tuple[str, ...] = ()) -> Agent:
        base = self.tmp / node
        state, conf = base / "state", base / "net.d"
        state.mkdir(parents=True, exist_ok=True)
        bin_dirs = f"{base / 'bin'}:{CNI_BIN}"
        ns = self.ns(node)
        prefix = (["nsenter", f"--net=/run/netns/{ns}"] if launcher == "nsenter"
                  else ["ip", "netns", "exec", ns])
        log_path = base / "agent.log"
        logf = open(log_path, "ab")  # noqa: SIM115 - the process keeps it
        proc = subprocess.Popen(
            [*prefix, NETPLANE, "node", "--server", f"http://{CP_IP}:{SERVER_PORT}", "--node-name", node,
             "--address", NODE_IPS[node], "--backend", backend, "--cni-plugin", plugin,
             "--cni-bin-dir", bin_dirs, "--cni-conf-dir", str(conf), "--state-dir", str(state),
             "--heartbeat-interval", "1s", "--netns-prefix", self.pod_prefix, *extra],
            stdout=logf, stderr=logf, stdin=subprocess.DEVNULL, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self.procs.append(proc)
        agent = Agent(node, proc, state, conf, log_path)
        self.agents[node] = agent
        return agent

    def wait_ready(self, node: str, timeout: float = 30) -> dict[str, Any]:
        assert self.api is not None
        api = self.api

        def ready() -> Any:
            agent = self.agents[node]
            if agent.proc.poll() is not None:
                raise AssertionError(f"agent {node} exited {agent.proc.returncode}:\n{agent.log()}")
            obj = api.node(node)
            conds = (obj or {}).get("status", {}).get("conditions") or []
            return obj if any(c["type"] == "Ready" and c["status"] == "True" for c in conds) else None

        return wait_for(f"node {node} Ready", ready, timeout)

    def stop_agent(self, node: str) -> None:
        agent = self.agents[node]
        if agent.proc.poll() is None:
            agent.proc.send_signal(signal.SIGTERM)
            try:
                agent.proc.wait(10)
            except subprocess.TimeoutExpired:
                agent.proc.kill()
                agent.proc.wait(5)

    def _pod_pids(self) -> list[int]:
        """Container and pause processes the agents started, from their state dirs."""
        pids: list[int] = []
        for agent in self.agents.values():
            for meta in agent.state_dir.glob("pods/*/containers/*/*/meta.json"):
                try:
                    pid = json.loads(meta.read_text()).get("pid")
                except (OSError, ValueError):
                    continue
                if pid:
                    pids.append(int(pid))
            for podj in agent.state_dir.glob("pods/*/pod.json"):
                try:
                    pid = (json.loads(podj.read_text()).get("pause") or {}).get("pid")
                except (OSError, ValueError):
                    continue
                if pid:
                    pids.append(int(pid))
        return pids

    def destroy(self) -> None:
        for node in list(self.agents):
            self.stop_agent(node)
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
        for pid in self._pod_pids():
            for kill in (lambda p: os.killpg(p, signal.SIGKILL), lambda p: os.kill(p, signal.SIGKILL)):
                try:
                    # Only our own sandboxes' processes: check the pid still is in one of our pod netns
                    # or is the session leader we started (its pgid equals its pid).
                    if os.getpgid(pid) == pid:
                        kill(pid)
                except (ProcessLookupError, PermissionError):
                    pass
        if self.forwarder is not None:
            self.forwarder.close()
        pod_ns = [n for n in os.listdir("/run/netns") if n.startswith(self.pod_prefix)] \
            if os.path.isdir("/run/netns") else []
        for ns in [*pod_ns, *self.namespaces]:
            for text in sh("ip", "netns", "pids", ns, check=False).split():
                try:
                    os.kill(int(text), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
            sh("ip", "netns", "del", ns, check=False)
            shutil.rmtree(f"/etc/netns/{ns}", ignore_errors=True)


def pod_manifest(name: str, node: str, image: str = "netplane/echo-server", command: list[str] | None = None,
                 ports: list[int] | None = None, readiness: dict[str, Any] | None = None,
                 grace: int | None = None, restart_policy: str | None = None) -> dict[str, Any]:
    container: dict[str, Any] = {"name": "main", "image": image}
    if command:
        container["command"] = command
    if ports:
        container["ports"] = [{"containerPort": p, "name": f"p{p}"} for p in ports]
    if readiness:
        container["readinessProbe"] = readiness
    spec: dict[str, Any] = {"nodeName": node, "containers": [container]}
    if grace is not None:
        spec["terminationGracePeriodSeconds"] = grace
    if restart_policy:
        spec["restartPolicy"] = restart_policy
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec}
