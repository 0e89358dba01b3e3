"""The cluster DNS as the lab (and kubeadm) deploys it: a Deployment behind the `kube-dns` Service.

Names follow kubeadm's: Deployment `coredns` and Service `kube-dns` in kube-system, label
`k8s-app: kube-dns`, ports `dns` (53/UDP) and `dns-tcp` (53/TCP), the Service at the DNS address
every pod's resolv.conf names. The image `netplane/dns` runs `netplane dns` in the lab (see
netplane/node/pods.py). The pod uses `dnsPolicy: Default`, as CoreDNS does, so that given upstreams
from a resolv.conf they would be the node's resolvers rather than itself.
"""

from __future__ import annotations

import socket
from typing import Any

CLUSTER_DNS = "10.96.0.10"
LABELS = {"k8s-app": "kube-dns"}


def kube_dns_manifests(api_url: str, cluster_ip: str = CLUSTER_DNS, zone: str = "cluster.local",
                       replicas: int = 1, image: str = "netplane/dns",
                       upstreams: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """Without upstreams the server forwards nothing: names outside the zone get REFUSED at once.
    That is the lab's case: its namespaces have no path to the machine's resolvers, and forwarding
    into the void would make every search-path miss wait for an upstream timeout."""
    forward = [a for u in upstreams for a in ("--upstream", u)] or ["--resolv-conf", ""]
    container = {
        "name": "coredns", "image": image,
        "args": ["--server", api_url, "--zone", zone, "--listen", "0.0.0.0:53", *forward],
        "ports": [{"name": "dns", "containerPort": 53, "protocol": "UDP"},
                  {"name": "dns-tcp", "containerPort": 53, "protocol": "TCP"}],
        # The TCP socket opens once the caches have synced: only then does the pod take traffic.
        "readinessProbe": {"tcpSocket": {"port": 53}, "periodSeconds": 1},
    }
    deployment = {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "coredns", "namespace": "kube-system", "labels": dict(LABELS)},
        "spec": {"replicas": replicas, "selector": {"matchLabels": dict(LABELS)},
                 "template": {"metadata": {"labels": dict(LABELS)},
                              "spec": {"containers": [container], "dnsPolicy": "Default"}}},
    }
    service = {
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "kube-dns", "namespace": "kube-system", "labels": dict(LABELS)},
        "spec": {"selector": dict(LABELS), "clusterIP": cluster_ip,
                 "ports": [{"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53},
                           {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": 53}]},
    }
    return [deployment, service]


def answers(server: str = CLUSTER_DNS, zone: str = "cluster.local", timeout: float = 0.5, port: int = 53) -> bool:
    """Whether a DNS server answers the zone's dns-version TXT (in whatever netns the caller is in)."""
    import dns.exception
    import dns.message

    q = dns.message.make_query(f"dns-version.{zone}", "TXT")
    family = socket.AF_INET6 if ":" in server else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        try:
            s.sendto(q.to_wire(), (server, port))
            data, _ = s.recvfrom(65535)
            r = dns.message.from_wire(data)
        except (OSError, ValueError, dns.exception.DNSException):
            return False
    return q.is_response(r) and bool(r.answer)
