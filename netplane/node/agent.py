"""The node agent: register the Node, heartbeat, set up the pod network, route to other nodes, run pods.

Start-up, in order (each step converges, so a restart repeats it harmlessly):

1. register: create our Node, or adopt the existing one (its podCIDR stays);
2. watch Nodes; wait until ours has a podCIDR (the server allocates it);
3. backend: for vxlan, ensure the VXLAN device (an existing one with the right
   parameters is kept, MAC and all) and publish its MAC in our annotations;
4. enable forwarding, masquerade pod traffic leaving the cluster CIDR, write the conflist;
5. report Ready; from then on: renew the Lease every heartbeat interval, write
   the Node status when it changes (or every status report interval), and
   converge routes/neighbours/FDB whenever the Node list changes (plus a periodic
   resync that repairs drift);
6. run the pod runtime (pods bound to this node).

With --bpf-host-routing (host-gw only) step 4 also loads the fast-path programs, adopting
the maps a previous agent left (netplane/node/fastpath.py), and attaches the receive side
to the underlay device; each route sync also syncs the remote pod CIDRs map, and each pod
ADD/DEL (and each resync) the local pods map and the send side on the pods' host veths.

Stopping the agent (SIGTERM) leaves routes, the VXLAN device and running pods
in place: a restarted agent adopts them, so no traffic is disturbed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any, TypeVar

from netplane.api.resources import must
from netplane.client.informer import Informer
from netplane.client.rest import APIClient, APIConnectionError, APIStatusError
from netplane.kernel.vxlan import VtepInfo, VxlanConfig
from netplane.node import cniconf, fastpath, network, podlogs, status
from netplane.node.cni import read_cached_results
from netplane.node.config import AgentConfig
from netplane.node.kernel import LinuxNodeKernel, NodeKernel

log = logging.getLogger(__name__)

NODES = must("", "v1", "nodes")
LEASES = must("coordination.k8s.io", "v1", "leases")

T = TypeVar("T")


def _now() -> datetime:
    return datetime.now(UTC)


class NodeAgent:
    def __init__(self, config: AgentConfig, client: APIClient, kernel: NodeKernel | None = None,
                 now: Callable[[], datetime] = _now, bpf: fastpath.BPFKernel | None = None) -> None:
        config.check()
        self.config = config
        self.client = client
        self.kernel: NodeKernel = kernel or LinuxNodeKernel()
        self.now = now
        self.nodes = Informer(client, NODES)
        self.pod_cidr: str | None = None
        self.vtep: VtepInfo | None = None
        self.network_ready = False
        self.conflist_path = os.path.join(config.cni_conf_dir, cniconf.CONFLIST_FILE)
        self.last_sync: list[str] = []
        self.sync_count = 0
        self._dirty = asyncio.Event()
        # All kernel work on one thread: pyroute2's sync API cannot run on the event loop's thread,
        # and one thread keeps netlink calls ordered.
        self._kexec = ThreadPoolExecutor(1, thread_name_prefix="np-kernel")
        self._status_written: dict[str, Any] | None = None
        self._status_time = 0.0
        self._lease: dict[str, Any] | None = None
        self._node_uid: str | None = None
        self.runtime: Any = None  # the PodRuntime, once started
        self.cni_service: Any = None
        self.fastpath: fastpath.HostRouting | None = None
        # BPF access for --bpf-host-routing (and for removing its programs when the flag is off);
        # an agent given a fake NodeKernel gets none unless one is passed too.
        if bpf is None and kernel is None:
            from netplane.kernel.bpf import LinuxBPF

            bpf = LinuxBPF()
        self.bpf = bpf

    # -- helpers ---------------------------------------------------------------

    async def _k(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._kexec, fn, *args)

    async def _retry(self, what: str, fn: Callable[[], Awaitable[T]], stop: asyncio.Event | None = None) -> T:
        """Retry API calls while the server is unreachable (it may start after us)."""
        delay = 0.2
        while True:
            try:
                return await fn()
            except (APIConnectionError, APIStatusError) as e:
                if isinstance(e, APIStatusError) and e.code < 500 and e.code not in (409, 429):
                    raise
                log.warning("node step=%s error=%r retry_in=%.1fs", what, str(e), delay)
                if stop is not None and stop.is_set():
                    raise
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    @property
    def _vxlan(self) -> bool:
        return self.config.backend == network.BACKEND_VXLAN

    # -- registration ------------------------------------------------------------

    async def register(self) -> dict[str, Any]:
        cfg = self.config
        annotations = network.backend_annotations(cfg.backend, cfg.address, None)

        async def attempt() -> dict[str, Any]:
            try:
                node = await self.client.get(NODES, cfg.node_name)
            except APIStatusError as e:
                if not e.not_found:
                    raise
                node = await self.client.create(NODES, status.new_node(cfg.node_name, cfg.address, self.now(),
                                                                        annotations))
                log.info("node registered name=%s address=%s", cfg.node_name, cfg.address)
                return node
            log.info("node adopted name=%s podCIDR=%s", cfg.node_name, (node.get("spec") or {}).get("podCIDR"))
            return node

        node = await self._retry("register", attempt)
        self._node_uid = (node.get("metadata") or {}).get("uid")
        return node

    async def wait_pod_cidr(self, timeout: float | None = None) -> str:
        """Our podCIDR, once the server (or an operator) has set it."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        changed = asyncio.Event()
        self.nodes.add_handler(on_add=lambda o: changed.set(), on_update=lambda a, b: changed.set())
        while True:
            node = self.nodes.get(self.config.node_name)
            cidr = network.node_net(node).pod_cidr if node else None
            if cidr:
                return cidr
            changed.clear()
            left = None if deadline is None else max(0.0, deadline - loop.time())
            if left == 0.0:
                raise TimeoutError(f"node {self.config.node_name} got no podCIDR")
            log.info("node waiting for podCIDR name=%s", self.config.node_name)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), min(left or 5.0, 5.0))

    # -- network -----------------------------------------------------------------

    def vxlan_config(self) -> VxlanConfig:
        return VxlanConfig(name=network.VXLAN_DEVICE, local=self.config.address, vni=network.VXLAN_VNI,
                           port=network.VXLAN_PORT)

    async def setup_network(self) -> None:
        cfg = self.config
        assert self.pod_cidr is not None
        await self._k(self.kernel.enable_forwarding)
        if self._vxlan:
            self.vtep = await self._k(self.kernel.ensure_vtep, self.vxlan_config(),
                                      f"{network.vxlan_gateway(self.pod_cidr)}/32")
        else:
            # Switching from vxlan to host-gw: the old device would black-hole nothing, but tidy up.
            await self._k(self.kernel.remove_vtep, network.VXLAN_DEVICE)
            self.vtep = None
        await self.publish_annotations()
        await self._k(self.kernel.apply_masquerade, network.masquerade_rules(cfg.cluster_cidr))
        if cfg.bpf_host_routing and self.fastpath is None:
            if self.bpf is None:
                raise RuntimeError("--bpf-host-routing needs BPF access (none was given to this agent)")
            hr = fastpath.HostRouting(self.bpf, cfg.address)
            await self._k(hr.start)
            self.fastpath = hr
        elif not cfg.bpf_host_routing and self.bpf is not None:
            try:
                removed = await self._k(fastpath.disable, self.bpf, cfg.address)
            except Exception as e:  # a node without BPF or tc access still runs
                log.warning("node could not check for BPF host routing programs to remove: %s", e)
            else:
                if removed:
                    log.info("node bpf host routing is off: removed %s", "; ".join(removed))
        if self.cni_service is None:
            self.start_cni_service()
        self.write_conflist()
        self.network_ready = True

    async def publish_annotations(self) -> None:
        cfg = self.config
        want = network.backend_annotations(cfg.backend, cfg.address, self.vtep.mac if self.vtep else None)
        if cfg.run_pods:
            # Where `netplane logs` finds this node's container logs.
            want[podlogs.ANNOTATION_STATE_DIR] = os.path.abspath(cfg.state_dir)
            want[podlogs.ANNOTATION_LOGS_PORT] = str(cfg.logs_port)
        node = self.nodes.get(cfg.node_name) or {}
        have = (node.get("metadata") or {}).get("annotations") or {}
        patch: dict[str, Any] = {k: v for k, v in want.items() if have.get(k) != v}
        if not self._vxlan and network.ANNOTATION_BACKEND_DATA in have:
            patch[network.ANNOTATION_BACKEND_DATA] = None
        if patch:
            await self._retry("annotate", lambda: self.client.patch(NODES, cfg.node_name,
                                                                     {"metadata": {"annotations": patch}}))
            log.info("node annotations published %s", " ".join(f"{k}={v}" for k, v in sorted(patch.items())))

    def cni_socket_path(self) -> str | None:
        """The plugin's fast-path socket in our state dir (per node: lab nodes share /run), if it fits."""
        if self.config.cni_plugin != cniconf.PLUGIN_NETPLANE or not self.config.cni_fast_path:
            return None
        path = os.path.abspath(os.path.join(self.config.state_dir, "cni.sock"))
        return path if len(path.encode()) < 100 else None  # sun_path holds 108 bytes

    def start_cni_service(self) -> None:
        """Serve the netplane plugin's fast path (warm netlink sockets) from this agent, as DESIGN.md intends."""
        path = self.cni_socket_path()
        if path is None:
            return
        from netplane.cni.service import CNIService

        try:
            self.cni_service = CNIService(path)
            self.cni_service.start()
            log.info("node serving CNI fast path socket=%s", path)
        except OSError as e:
            log.warning("node CNI fast path not served (the plugin works in-process): %s", e)
            self.cni_service = None

    def conflist(self) -> dict[str, Any]:
        cfg = self.config
        assert self.pod_cidr is not None
        socket_path = None
        if cfg.cni_plugin == cniconf.PLUGIN_NETPLANE:
            # "" turns forwarding off: never the shared default /run/netplane/cni.sock of some other node.
            socket_path = self.cni_socket_path() or ""
        return cniconf.render_conflist(
            self.pod_cidr, plugin=cfg.cni_plugin, mtu=network.VXLAN_POD_MTU if self._vxlan else None,
            ipam_data_dir=cfg.ipam_dir, agent_socket=socket_path)

    def write_conflist(self) -> None:
        if self.config.cni_plugin == cniconf.PLUGIN_NETPLANE and self.config.install_cni:
            self._install_netplane_plugin()
        if cniconf.write_if_changed(self.conflist_path, cniconf.conflist_text(self.conflist())):
            log.info("node wrote conflist path=%s podCIDR=%s plugin=%s", self.conflist_path, self.pod_cidr,
                     self.config.cni_plugin)

    def _install_netplane_plugin(self) -> None:
        """Put `netplane`/`netplane-ipam` into the first CNI bin dir, as flannel's install-cni step does."""
        from netplane.cni import install

        bin_dir = self.config.cni_bin_dirs[0]
        if all(os.path.exists(os.path.join(bin_dir, name)) for name in install.EXECUTABLES):
            return
        for path in install.install_executables(bin_dir):
            log.info("node installed CNI plugin path=%s", path)

    def desired(self) -> network.DesiredNetwork:
        return network.desired_network(self.config.node_name, self.config.backend, self.nodes.list())

    async def sync_routes(self) -> list[str]:
        """One whole-state pass: the device (if vxlan), then neighbours, FDB and routes."""
        if self._vxlan and self.pod_cidr:
            vtep = await self._k(self.kernel.ensure_vtep, self.vxlan_config(),
                                 f"{network.vxlan_gateway(self.pod_cidr)}/32")
            if self.vtep is None or vtep.mac != self.vtep.mac:
                self.vtep = vtep
                await self.publish_annotations()
        desired = self.desired()
        done = await self._k(self.kernel.sync_network, desired, network.VXLAN_DEVICE if self._vxlan else None)
        if self.fastpath is not None:
            # The same CIDRs host-gw routes to: the programs' fib lookup then finds those routes.
            done = [*done, *await self._k(self.fastpath.sync_remote, [r.dst for r in desired.routes])]
            done = [*done, *await self._k(self._sync_fastpath_pods)]
        self.sync_count += 1
        self.last_sync = done
        if done:
            log.info("node routes synced changes=%d %s", len(done), "; ".join(done))
        for name, why in desired.skipped:
            log.debug("node route skipped node=%s reason=%s", name, why)
        return done

    def _sync_fastpath_pods(self) -> list[str]:
        """Local pods map and send-side filters := the pods in our CNI result cache (kernel thread)."""
        assert self.fastpath is not None and self.pod_cidr is not None
        pods = fastpath.local_pods_from_results(read_cached_results(self.config.cni_cache_dir), self.pod_cidr)
        return self.fastpath.sync_local(pods)

    async def fastpath_pods_changed(self) -> None:
        """After a pod's CNI ADD or DEL: before the pod is reported ready, its veth is on the fast path."""
        if self.fastpath is None:
            return
        done = await self._k(self._sync_fastpath_pods)
        if done:
            log.info("node fastpath synced %s", "; ".join(done))

    async def _route_loop(self) -> None:
        retry = 0.5
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._dirty.wait(), self.config.resync_interval)
            self._dirty.clear()
            try:
                await self.sync_routes()
                retry = 0.5
            except Exception as e:
                # Kernel errors are expected (a gateway not on-link, a device removed under us): one line,
                # and back off so a node that cannot be routed to does not flood the log.
                log.warning("node route sync failed error=%r retry_in=%.1fs", str(e), retry)
                await asyncio.sleep(retry)
                retry = min(retry * 2, 30.0)
                self._dirty.set()

    def _node_changed(self, *objs: dict[str, Any]) -> None:
        # Our own heartbeats do not change routes; anything about another node's network might.
        if len(objs) == 2 and network.node_net(objs[0]) == network.node_net(objs[1]):
            return
        self._dirty.set()

    # -- status and lease ----------------------------------------------------------

    def current_status(self) -> dict[str, Any]:
        cfg = self.config
        node = self.nodes.get(cfg.node_name) or {}
        ready = self.network_ready
        reason, message = (("NetplaneReady", "netplane node agent is ready") if ready else
                           ("NetworkNotReady", "pod network is not set up yet"))
        return status.node_status(cfg.node_name, cfg.address, ready, reason, message, self.now(),
                                  node.get("status"), network_ready=ready)

    async def report_status(self, force: bool = False) -> bool:
        loop = asyncio.get_running_loop()
        new = self.current_status()
        node = self.nodes.get(self.config.node_name) or {}
        due = loop.time() - self._status_time >= self.config.status_report_interval
        if not force and not due and not status.status_differs(node.get("status"), new):
            return False
        await self.client.patch(NODES, self.config.node_name, {"status": new}, subresource="status")
        self._status_written = new
        self._status_time = loop.time()
        return True

    async def renew_lease(self) -> dict[str, Any]:
        cfg = self.config
        name, ns = cfg.node_name, status.LEASE_NAMESPACE
        for _ in range(3):
            if self._lease is None:
                try:
                    self._lease = await self.client.get(LEASES, name, ns)
                except APIStatusError as e:
                    if not e.not_found:
                        raise
                    self._lease = await self.client.create(
                        LEASES, status.lease_object(name, self.now(), cfg.lease_duration, self._node_uid), ns)
                    return self._lease
            body = status.lease_object(name, self.now(), cfg.lease_duration, self._node_uid, self._lease)
            try:
                self._lease = await self.client.update(LEASES, body, ns)
                return self._lease
            except APIStatusError as e:
                if e.code not in (404, 409):
                    raise
                self._lease = None  # someone else wrote it, or it was deleted: read again
        raise RuntimeError(f"cannot renew lease {ns}/{name}: kept conflicting")

    async def _heartbeat_loop(self) -> None:
        while True:
            try:
                await self.renew_lease()
                await self.report_status()
            except (APIConnectionError, APIStatusError) as e:
                log.warning("node heartbeat failed error=%r", str(e))
                self._lease = None
            except Exception:
                log.exception("node heartbeat failed")
            await asyncio.sleep(self.config.heartbeat_interval)

    # -- run -------------------------------------------------------------------------

    async def start(self) -> list[asyncio.Task[Any]]:
        """Bring the node up; returns the background tasks (the caller cancels them to stop)."""
        cfg = self.config
        os.makedirs(cfg.state_dir, exist_ok=True)
        await self.register()
        tasks = [asyncio.create_task(self.nodes.run(), name="nodes-informer")]
        self.nodes.add_handler(on_add=self._node_changed, on_update=self._node_changed,
                               on_delete=self._node_changed)
        await self.nodes.wait_synced()
        self.pod_cidr = await self.wait_pod_cidr()
        log.info("node podCIDR name=%s cidr=%s backend=%s", cfg.node_name, self.pod_cidr, cfg.backend)
        await self.setup_network()
        await self.sync_routes()
        await self._retry("lease", self.renew_lease)
        await self._retry("status", lambda: self.report_status(force=True))
        tasks.append(asyncio.create_task(self._heartbeat_loop(), name="heartbeat"))
        tasks.append(asyncio.create_task(self._route_loop(), name="routes"))
        if cfg.run_pods:
            from netplane.node.runtime import PodRuntime

            self.runtime = PodRuntime(cfg, self.client, self.pod_cidr)
            self.runtime.cni.listeners.append(self.fastpath_pods_changed)
            tasks.extend(await self.runtime.start())
        log.info("node ready name=%s", cfg.node_name)
        return tasks

    async def run(self, stop: asyncio.Event) -> None:
        tasks: list[asyncio.Task[Any]] = []
        try:
            starting = asyncio.create_task(self.start())
            stopping = asyncio.create_task(stop.wait())
            done, _ = await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if starting in done:
                tasks = starting.result()
                await stop.wait()
            else:
                starting.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await starting
            stopping.cancel()
        finally:
            # The background tasks first: among them is the pod runtime's sync loop, which would
            # otherwise see the pod workers that runtime.stop() cancels as finished and admit the
            # pods again, and a new worker runs CNI ADD on a live sandbox, fails ("eth0 already
            # exists") and tears the pod's network down.
            for t in tasks:
                t.cancel()
            for t in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await t
            if self.runtime is not None:
                await self.runtime.stop()
            if self.cni_service is not None:
                await asyncio.to_thread(self.cni_service.stop, 10.0)
            self._kexec.shutdown(wait=False)
            log.info("node agent stopped name=%s (routes and pods left in place)", self.config.node_name)
