"""The node agent's control loop against an in-memory API server and a fake kernel (no root)."""

from __future__ import annotations

import asyncio
import copy
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from netplane.api.resources import must
from netplane.client.fake import FakeAPIServer
from netplane.client.kubeconfig import ClusterConfig
from netplane.client.rest import APIClient
from netplane.kernel.routes import Route
from netplane.kernel.vxlan import FdbEntry, VtepInfo, VxlanConfig
from netplane.node.agent import NodeAgent
from netplane.node.config import AgentConfig
from netplane.node.network import DesiredNetwork

NODES = must("", "v1", "nodes")
LEASES = must("coordination.k8s.io", "v1", "leases")


class FakeKernel:
    def __init__(self) -> None:
        self.calls: list[str] = []
        self.synced: list[DesiredNetwork] = []
        self.masq = ""

    def enable_forwarding(self) -> None:
        self.calls.append("forwarding")

    def ensure_vtep(self, cfg: VxlanConfig, gateway_cidr: str) -> VtepInfo:
        self.calls.append(f"vtep {cfg.name} local={cfg.local} vni={cfg.vni} port={cfg.port} addr={gateway_cidr}")
        return VtepInfo(7, cfg.name, "0a:00:00:00:00:01", 1450)

    def remove_vtep(self, name: str) -> bool:
        self.calls.append(f"remove {name}")
        return False

    def sync_network(self, desired: DesiredNetwork, vxlan_device: str | None) -> list[str]:
        self.synced.append(desired)
        return []

    def apply_masquerade(self, nft_text: str) -> None:
        self.masq = nft_text


async def until(what: str, check: Callable[[], Any], timeout: float = 5.0) -> Any:
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        value = check()
        if value:
            return value
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


def remote(name: str, ip: str, cidr: str, mac: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "annotations": {"netplane.io/backend-data": json.dumps({"VtepMAC": mac})}},
            "spec": {"podCIDR": cidr}, "status": {"addresses": [{"type": "InternalIP", "address": ip}]}}


def run_agent(tmp_path: Path, body: Callable[[FakeAPIServer, NodeAgent, FakeKernel], Awaitable[None]]) -> None:
    async def main() -> None:
        fake = FakeAPIServer()
        await fake.start()
        fake.put_object(NODES, remote("n2", "192.168.1.2", "10.244.1.0/24", "0a:00:00:00:00:02"))
        kernel = FakeKernel()
        cfg = AgentConfig(node_name="n1", address="192.168.1.1", backend="vxlan", state_dir=str(tmp_path / "state"),
                          cni_conf_dir=str(tmp_path / "net.d"), cni_bin_dirs=(str(tmp_path / "bin"),),
                          cni_plugin="bridge", heartbeat_interval=0.05, run_pods=False, resync_interval=60)
        stop = asyncio.Event()
        async with APIClient(ClusterConfig(server=fake.url)) as client:
            agent = NodeAgent(cfg, client, kernel)
            task = asyncio.create_task(agent.run(stop))
            try:
                await body(fake, agent, kernel)
            finally:
                stop.set()
                await asyncio.wait_for(task, 5)
                await fake.stop()

    asyncio.run(main())


def test_registers_waits_for_cidr_sets_up_vxlan_and_routes(tmp_path: Path) -> None:
    async def body(fake: FakeAPIServer, agent: NodeAgent, kernel: FakeKernel) -> None:
        # The fake server allocates nothing: the agent waits until someone sets our podCIDR.
        n1 = await until("registration", lambda: fake.objects.get((NODES.key, "", "n1")))
        assert n1["status"]["addresses"][0] == {"type": "InternalIP", "address": "192.168.1.1"}
        await asyncio.sleep(0.1)
        assert agent.pod_cidr is None and not kernel.synced
        n1 = copy.deepcopy(n1)
        n1["spec"]["podCIDR"] = "10.244.0.0/24"
        fake.put_object(NODES, n1)
        await until("the first route sync", lambda: kernel.synced)
        assert "vtep np.vxlan local=192.168.1.1 vni=1 port=8472 addr=10.244.0.0/32" in kernel.calls
        assert kernel.synced[-1].routes == {Route("10.244.1.0/24", "10.244.1.0", "np.vxlan", onlink=True)}
        assert "ip saddr 10.244.0.0/16 masquerade" in kernel.masq
        conf = json.loads((tmp_path / "net.d" / "10-netplane.conflist").read_text())
        assert conf["plugins"][0]["mtu"] == 1450 and conf["plugins"][0]["type"] == "bridge"

        def published() -> Any:
            obj = fake.objects[(NODES.key, "", "n1")]
            ann = obj["metadata"].get("annotations") or {}
            conds = {c["type"]: c["status"] for c in obj["status"].get("conditions") or []}
            return ann.get("netplane.io/backend-data") and conds.get("Ready") == "True" and ann

        ann = await until("the VTEP MAC and Ready", published)
        assert json.loads(ann["netplane.io/backend-data"]) == {"VtepMAC": "0a:00:00:00:00:01"}
        assert ann["netplane.io/public-ip"] == "192.168.1.1"
        lease = await until("the lease", lambda: fake.objects.get((LEASES.key, "kube-node-lease", "n1")))
        first = lease["spec"]["renewTime"]
        await until("a renewal", lambda: fake.objects[(LEASES.key, "kube-node-lease", "n1")]["spec"]["renewTime"]
                    != first)
        # A readdressed remote node moves its FDB entry; our own heartbeats do not trigger syncs.
        before = len(kernel.synced)
        await asyncio.sleep(0.2)
        assert len(kernel.synced) == before
        fake.put_object(NODES, remote("n2", "192.168.1.22", "10.244.1.0/24", "0a:00:00:00:00:02"))
        await until("a resync", lambda: kernel.synced[-1].fdb == {FdbEntry("0a:00:00:00:00:02", "192.168.1.22")})
        fake.remove_object(NODES, "n2")
        await until("n2's removal", lambda: not kernel.synced[-1].routes)

    run_agent(tmp_path, body)


def test_restart_adopts_the_node_without_flapping_ready(tmp_path: Path) -> None:
    async def first(fake: FakeAPIServer, agent: NodeAgent, kernel: FakeKernel) -> None:
        n1 = await until("registration", lambda: fake.objects.get((NODES.key, "", "n1")))
        n1 = copy.deepcopy(n1)
        n1["spec"]["podCIDR"] = "10.244.0.0/24"
        fake.put_object(NODES, n1)
        def reported_ready() -> bool:
            conds = fake.objects[(NODES.key, "", "n1")]["status"]["conditions"]
            return any(c["type"] == "Ready" and c["status"] == "True" for c in conds)

        await until("Ready reported", reported_ready)
        # Same server, agent restarted: the node object (with its CIDR) exists already.
        writes: list[str] = []
        stop2 = asyncio.Event()
        kernel2 = FakeKernel()
        cfg = agent.config
        async with APIClient(ClusterConfig(server=fake.url)) as client:
            agent2 = NodeAgent(cfg, client, kernel2)
            task = asyncio.create_task(agent2.run(stop2))
            await until("second agent ready", lambda: agent2.network_ready and kernel2.synced)
            stop2.set()
            await asyncio.wait_for(task, 5)
        for rec in fake.requests:
            if rec.method in ("PATCH", "PUT") and rec.path.endswith("/nodes/n1/status"):
                writes.extend(c["status"] for c in rec.body["status"]["conditions"] if c["type"] == "Ready")
        assert writes and "False" not in writes  # registered NotReady (POST), never reported NotReady again
        assert agent2.pod_cidr == "10.244.0.0/24"

    run_agent(tmp_path, first)
