"""A two-node cluster plus an outside client, built from network namespaces with `ip` batches.

    client (192.168.50.100, also 198.51.100.7)      all on the underlay bridge "br0"
       |                                            in its own namespace (ul)
    node1 eth0 192.168.50.1 ---- br0 ---- node2 eth0 192.168.50.2
       | cbr0 10.244.1.1/24                  | cbr0 10.244.2.1/24
     pod a 10.244.1.2, pod b 10.244.1.3     pod c 10.244.2.2

Pod CIDRs are routed between the nodes (host-gw). Pod ports have hairpin on and
bridge-nf-call-iptables is 1 in the nodes (MACHINE-NOTES). Everything lives in
namespaces named `np-px-<random>-<role>`, removed by `destroy()` even after a
failure. The proxy rules under test are applied only in node1.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

AGENT = str(Path(__file__).with_name("netns_agent.py"))

NODE1_IP = "192.168.50.1"
NODE2_IP = "192.168.50.2"
CLIENT_IP = "192.168.50.100"
CLIENT_ALT_IP = "198.51.100.7"  # a second client address, for loadBalancerSourceRanges
CLUSTER_CIDR = "10.244.0.0/16"
PODS = {  # pod -> (node, ip)
    "a": ("n1", "10.244.1.2"),
    "b": ("n1", "10.244.1.3"),
    "c": ("n2", "10.244.2.2"),
}
TCP_PORTS = (80, 8080, 8443)
UDP_PORTS = (53, 5353)


def sh(*argv: str, check: bool = True, input: str | None = None, timeout: float = 30) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, input=input, timeout=timeout)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {proc.stderr.strip()}")
    return proc.stdout


@dataclass
class Topology:
    prefix: str = field(default_factory=lambda: f"np-px-{secrets.token_hex(3)}")
    servers: list[subprocess.Popen] = field(default_factory=list)

    def ns(self, role: str) -> str:
        return f"{self.prefix}-{role}"

    @property
    def node1(self) -> str:
        return self.ns("n1")

    def create(self) -> None:
        roles = ["ul", "n1", "n2", "cl", *(f"p{p}" for p in PODS)]
        for role in roles:
            sh("ip", "netns", "add", self.ns(role))
        batch: dict[str, list[str]] = {}

        def cmd(role: str, line: str) -> None:
            batch.setdefault(role, []).append(line)

        cmd("ul", "link add br0 type bridge")
        cmd("ul", "link set br0 up")
        cmd("ul", "link set lo up")
        for role, ip in (("n1", NODE1_IP), ("n2", NODE2_IP), ("cl", CLIENT_IP)):
            # The veth is created in the underlay namespace; its peer goes straight into the node.
            cmd("ul", f"link add u-{role} type veth peer name eth0 netns {self.ns(role)}")
            cmd("ul", f"link set u-{role} master br0 up")
            cmd(role, "link set lo up")
            cmd(role, f"addr add {ip}/24 dev eth0")
            cmd(role, "link set eth0 up")
        cmd("cl", f"addr add {CLIENT_ALT_IP}/32 dev eth0")
        for node, cidr_ip, other_cidr, other_ip in (("n1", "10.244.1.1", "10.244.2.0/24", NODE2_IP),
                                                     ("n2", "10.244.2.1", "10.244.1.0/24", NODE1_IP)):
            cmd(node, "link add cbr0 type bridge")
            cmd(node, f"addr add {cidr_ip}/24 dev cbr0")
            cmd(node, "link set cbr0 up")
            cmd(node, f"route add {other_cidr} via {other_ip}")
            # A default route covers the service and external addresses before DNAT (MACHINE-NOTES).
            cmd(node, f"route add default via {CLIENT_IP}")
        cmd("n1", f"route add {CLIENT_ALT_IP}/32 via {CLIENT_IP}")
        cmd("n2", f"route add {CLIENT_ALT_IP}/32 via {CLIENT_IP}")
        # The client reaches service addresses through node1 (as a router or a cloud LB would).
        for dst in ("10.96.0.0/12", "192.0.2.0/24", "203.0.113.0/24", "10.244.0.0/16"):
            cmd("cl", f"route add {dst} via {NODE1_IP}")
        for pod, (node, ip) in PODS.items():
            role = f"p{pod}"
            cmd(node, f"link add v-{pod} type veth peer name eth0 netns {self.ns(role)}")
            cmd(node, f"link set v-{pod} master cbr0 up")
            cmd(node, f"link set v-{pod} type bridge_slave hairpin on")
            cmd(role, "link set lo up")
            cmd(role, f"addr add {ip}/24 dev eth0")
            cmd(role, "link set eth0 up")
            gw = "10.244.1.1" if node == "n1" else "10.244.2.1"
            cmd(role, f"route add default via {gw}")
        # Order matters: the underlay creates the node/client ends, the nodes create the pod ends.
        for role in ["ul", "n1", "n2", "cl", *(f"p{p}" for p in PODS)]:
            if role in batch:
                sh("ip", "-n", self.ns(role), "-b", "-", input="\n".join(batch[role]) + "\n")
        for node in ("n1", "n2"):
            # icmp_ratelimit 0: the tests make the node reject (ICMP port unreachable) many times
            # in a few seconds, and the default limit (a burst of 6, then 1 a second per client)
            # would turn a later reject into a client timeout.
            for key, value in (("net.ipv4.ip_forward", "1"), ("net.bridge.bridge-nf-call-iptables", "1"),
                               ("net.ipv4.conf.all.rp_filter", "0"), ("net.ipv4.icmp_ratelimit", "0")):
                sh("ip", "netns", "exec", self.ns(node), "sysctl", "-q", "-w", f"{key}={value}")

    def start_servers(self) -> None:
        tcp = ",".join(str(p) for p in TCP_PORTS)
        udp = ",".join(str(p) for p in UDP_PORTS)
        for pod in PODS:
            proc = subprocess.Popen(["ip", "netns", "exec", self.ns(f"p{pod}"), sys.executable, AGENT, "serve",
                                     tcp, udp], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            self.servers.append(proc)
        for proc in self.servers:
            assert proc.stdout is not None
            line = proc.stdout.readline()  # "ready": blocks until the sockets are bound
            if line.strip() != "ready":
                raise RuntimeError("a pod server did not start")

    def burst(self, role: str, proto: str, host: str, port: int, count: int = 1,
              src: str | None = None) -> list[dict]:
        argv = ["ip", "netns", "exec", self.ns(role), sys.executable, AGENT, "burst", proto, host, str(port),
                str(count)]
        if src:
            argv.append(src)
        return json.loads(sh(*argv, timeout=30 + count * 2))

    def one(self, role: str, proto: str, host: str, port: int, src: str | None = None) -> dict:
        return self.burst(role, proto, host, port, 1, src)[0]

    def session(self, role: str) -> Session:
        proc = subprocess.Popen(["ip", "netns", "exec", self.ns(role), sys.executable, AGENT, "session"],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        return Session(proc)

    def destroy(self) -> None:
        for proc in self.servers:
            proc.kill()  # by PID: only the processes this topology started
            proc.wait(timeout=10)
        self.servers.clear()
        for name in sh("ip", "netns", "list", check=False).split("\n"):
            name = name.split(" ")[0]
            if name.startswith(self.prefix + "-"):
                sh("ip", "netns", "del", name, check=False)


class Session:
    """A client process that keeps its sockets between commands (same source port)."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.proc = proc

    def ask(self, line: str) -> dict:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def close(self) -> None:
        try:
            if self.proc.stdin:
                self.proc.stdin.close()
            self.proc.wait(timeout=5)
        except Exception:
            self.proc.kill()
            self.proc.wait(timeout=5)


def lockfile_env(path: str) -> None:
    os.environ["XTABLES_LOCKFILE"] = path


def wait_for(predicate, timeout: float = 5.0, interval: float = 0.05):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval)
