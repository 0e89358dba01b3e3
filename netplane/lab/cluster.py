"""Bring a lab cluster up and down: namespaces, then the state server, then each node's
agent and proxy, all started as ordinary daemons inside the lab's namespaces."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any, TypeVar

from netplane.api import resources as res
from netplane.kernel import labnet
from netplane.kernel.netns import entered
from netplane.lab.processes import ProcessTable, tail
from netplane.lab.topology import CLUSTER_CIDR, SERVICE_CIDR, LabPlan, plan, setup_batches, sysctls

STATE_ROOT = Path("/run/netplane-lab")
REFERENCE_PLUGINS = ("portmap", "bandwidth", "loopback", "bridge", "host-local")
NOT_READY_TAINTS = ("node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable")
T = TypeVar("T")
NODES = res.must("", "v1", "nodes")


class LabError(RuntimeError):
    pass


def netplane_argv() -> list[str]:
    """The netplane command of this installation (the venv's, whatever the caller's PATH)."""
    exe = Path(sys.executable).with_name("netplane")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "netplane.cli.main"]


class Lab:
    def __init__(self, p: LabPlan, state_dir: Path | None = None, server_args: tuple[str, ...] = (),
                 node_args: tuple[str, ...] = ()) -> None:
        self.plan = p
        self.state_dir = state_dir or STATE_ROOT / p.prefix.rstrip("-")
        self.procs = ProcessTable(self.state_dir)
        # Extra `netplane server` flags (tests shorten the node-failure timers with them).
        self.server_args = server_args
        # Extra `netplane node` flags (e.g. a heartbeat interval in step with a short grace period).
        self.node_args = node_args

    # -- persisted plan ------------------------------------------------------------

    @classmethod
    def load(cls, prefix: str = "np-lab-", state_dir: Path | None = None) -> Lab:
        sd = state_dir or STATE_ROOT / prefix.rstrip("-")
        path = sd / "plan.json"
        if not path.exists():
            raise LabError("no lab is up (run `netplane lab up` first)")
        raw = json.loads(path.read_text())
        p = plan(len(raw["nodes"]), raw["backend"], raw["proxy_mode"], raw["prefix"])
        return cls(p, sd)

    def _save_plan(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        (self.state_dir / "plan.json").write_text(json.dumps(asdict(self.plan), indent=1))

    # -- API access from the control plane's namespace --------------------------------

    def api(self, fn: Callable[[Any], Awaitable[T]]) -> T:
        """Run fn(APIClient) with this thread inside the control-plane namespace, where the server is."""
        from netplane.client.kubeconfig import ClusterConfig
        from netplane.client.rest import APIClient

        async def go() -> T:
            async with APIClient(ClusterConfig(server=self.plan.api_url)) as client:
                return await fn(client)

        with entered(f"/run/netns/{self.plan.control_plane.netns}"):
            return asyncio.run(go())

    # -- up / down ---------------------------------------------------------------------

    def up(self, progress: Callable[[str], None] = print, timeout: float = 60.0) -> None:
        p = self.plan
        if labnet.list_netns(p.prefix) or (self.state_dir / "plan.json").exists():
            raise LabError(f"a lab with prefix {p.prefix!r} already exists: run `netplane lab down` first")
        started = time.monotonic()
        try:
            progress(f"creating namespaces: underlay, cp, {', '.join(n.name for n in p.nodes)}, ext")
            for netns, lines in setup_batches(p):
                labnet.run_ip_batch(lines, netns)
            for ns, values in sysctls(p).items():
                for k, v in values.items():
                    labnet.set_sysctl(ns, k, v)
            self._save_plan()
            self._start_server(progress)
            for node in p.nodes:
                self._start_node(node.name, progress)
            progress("waiting for every node to register and become Ready")
            self._wait(lambda: self._nodes_ready(), timeout, "nodes to become Ready")
            self._start_dns(progress, timeout)
        except BaseException:
            with contextlib.suppress(Exception):
                self.down(progress=lambda _m: None)
            raise
        progress(f"lab up in {time.monotonic() - started:.1f}s: API {p.api_url} (inside {p.control_plane.netns})")

    def _start_server(self, progress: Callable[[str], None]) -> None:
        p = self.plan
        cp = p.control_plane
        progress(f"starting the state server in {cp.netns} on {cp.address}")
        d = self.procs.start("server", cp.netns, [
            *netplane_argv(), "server", "--listen", f"{cp.address}:6443",
            "--data-dir", str(self.state_dir / "cp"), "--service-cidr", SERVICE_CIDR,
            "--cluster-cidr", CLUSTER_CIDR, *self.server_args,
        ])
        self.procs.wait_started(d)

        async def version(client: Any) -> bool:
            try:
                await client.list(NODES)
                return True
            except Exception:
                return False

        self._wait(lambda: self.api(version), 20, "the state server", d.log)

    def _start_node(self, name: str, progress: Callable[[str], None]) -> None:
        p = self.plan
        node = p.node(name)
        nd = self.state_dir / name
        cni_bin, cni_conf = nd / "cni" / "bin", nd / "cni" / "net.d"
        progress(f"starting {name}: node agent ({p.backend}) and proxy ({p.proxy_mode}) in {node.netns}")
        import subprocess

        subprocess.run([*netplane_argv(), "cni", "install", "--bin-dir", str(cni_bin)], check=True,
                       capture_output=True, timeout=60)
        # The chained reference plugins (portmap for hostPorts), as a runtime's plugin dir would hold them.
        for plugin in REFERENCE_PLUGINS:
            src = Path("/usr/lib/cni") / plugin
            dst = cni_bin / plugin
            if src.exists() and not dst.exists():
                dst.symlink_to(src)
        env = {"XTABLES_LOCKFILE": str(nd / "xtables.lock")}
        agent = self.procs.start(f"{name}/node", node.netns, [
            *netplane_argv(), "--server", p.api_url, "node", "--node-name", name, "--address", node.address,
            "--backend", p.backend, "--cni-bin-dir", str(cni_bin), "--cni-conf-dir", str(cni_conf),
            "--state-dir", str(nd / "agent"), "--cluster-cidr", CLUSTER_CIDR,
            "--netns-prefix", p.pod_netns_prefix, *self.node_args,
        ], env)
        proxy = self.procs.start(f"{name}/proxy", node.netns, [
            *netplane_argv(), "--server", p.api_url, "proxy", "--node-name", name, "--mode", p.proxy_mode,
            "--cluster-cidr", CLUSTER_CIDR, "--healthz-bind-address", f"{node.address}:10256",
            "--metrics-bind-address", f"{node.address}:10249",
        ], env)
        self.procs.wait_started(agent)
        self.procs.wait_started(proxy)

    def _start_dns(self, progress: Callable[[str], None], timeout: float) -> None:
        """The cluster DNS (netplane dns) as a Deployment behind kube-dns at 10.96.0.10, as kubeadm
        deploys CoreDNS; up once every node reaches it through the Service (each node's proxy
        learns the endpoint on its own sync, up to its minimum sync period after the first)."""
        from netplane.client.apply import apply_objects
        from netplane.dns import lab as dns_lab

        progress(f"deploying the cluster DNS: kube-system/kube-dns at {dns_lab.CLUSTER_DNS}")
        self.api(lambda c: apply_objects(c, dns_lab.kube_dns_manifests(self.plan.api_url), "kube-system"))

        def answers() -> bool:
            for node in self.plan.nodes:
                with entered(f"/run/netns/{node.netns}"):
                    if not dns_lab.answers(dns_lab.CLUSTER_DNS):
                        return False
            return True

        self._wait(answers, timeout, "the cluster DNS to answer at 10.96.0.10")

    def _nodes_ready(self) -> bool:
        async def check(client: Any) -> bool:
            lst = await client.list(NODES)
            # Ready, and without the not-ready/unreachable taints the node lifecycle controller
            # lifts a moment later: until then the scheduler would place nothing there.
            ready = {n["metadata"]["name"] for n in lst["items"]
                     for c in (n.get("status") or {}).get("conditions") or []
                     if c.get("type") == "Ready" and c.get("status") == "True"
                     and not any(t.get("key") in NOT_READY_TAINTS for t in (n.get("spec") or {}).get("taints") or [])}
            return ready >= {n.name for n in self.plan.nodes}

        return self.api(check)

    def _wait(self, pred: Callable[[], bool], timeout: float, what: str, log: str | None = None) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            dead = [d for d in self.procs.daemons.values() if not d.alive()]
            if dead:
                d = dead[0]
                raise LabError(f"{d.name} exited while waiting for {what}; last lines of {d.log}:\n{tail(d.log)}")
            with contextlib.suppress(Exception):
                if pred():
                    return
            time.sleep(0.1)
        hint = f"\n{tail(log)}" if log else ""
        raise LabError(f"timed out after {timeout:.0f}s waiting for {what}{hint}")

    def down(self, progress: Callable[[str], None] = print) -> None:
        stopped = self.procs.stop_all()
        if stopped:
            progress(f"stopped {', '.join(stopped)}")
        remove_leftovers(self.plan.prefix, progress)
        if self.state_dir.exists():
            shutil.rmtree(self.state_dir, ignore_errors=True)


def remove_leftovers(prefix: str, progress: Callable[[str], None] = print) -> list[str]:
    """Delete every namespace with the lab's prefix (and end the processes inside): works after a crash."""
    gone = []
    names = labnet.list_netns(prefix)
    # Pods first, then nodes, then the underlay, so nothing is left holding a veth peer.
    names.sort(key=lambda n: (0 if "-pod-" in n else 2 if n.endswith("underlay") else 1, n))
    for name in names:
        labnet.kill_netns_processes(name)
        labnet.delete_netns(name)
        gone.append(name)
    if gone:
        progress(f"removed namespaces: {', '.join(gone)}")
    return gone


@contextlib.contextmanager
def in_netns(name: str) -> Iterator[None]:
    with entered(f"/run/netns/{name}"):
        yield
