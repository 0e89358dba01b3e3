"""The lab's DNS wiring (pure parts): the image mapping and the kube-dns manifests."""

from __future__ import annotations

from netplane.dns.lab import kube_dns_manifests
from netplane.node.pods import plan_container


def test_dns_images_run_netplane_dns() -> None:
    for image in ("netplane/dns", "netplane/dns:0.1", "coredns/coredns:1.11.1",
                  "registry.k8s.io/coredns/coredns:v1.11.1", "k8s.gcr.io/coredns:1.7.0"):
        plan = plan_container({"name": "dns", "image": image}, python="py")
        assert plan.kind == "dns" and plan.argv == ("py", "-m", "netplane.cli.main", "dns", "--listen", "0.0.0.0:53")


def test_netplane_dns_args_are_flags_and_coredns_args_are_ignored() -> None:
    plan = plan_container({"name": "dns", "image": "netplane/dns",
                           "args": ["--server", "http://cp:6443", "--ttl", "30"],
                           "ports": [{"containerPort": 5353, "protocol": "UDP"}]}, python="py")
    assert plan.argv[4:] == ("--server", "http://cp:6443", "--ttl", "30", "--listen", "0.0.0.0:5353")
    given = plan_container({"name": "dns", "image": "netplane/dns", "args": ["--listen=127.0.0.1:53"]}, python="py")
    assert given.argv[4:] == ("--listen=127.0.0.1:53",)
    core = plan_container({"name": "dns", "image": "coredns/coredns", "args": ["-conf", "/etc/coredns/Corefile"]},
                          python="py")
    assert "-conf" not in core.argv


def test_kube_dns_manifests_are_kubeadms_shape() -> None:
    dep, svc = kube_dns_manifests("http://192.168.50.10:6443")
    assert (dep["kind"], dep["metadata"]["namespace"], dep["metadata"]["name"]) == \
        ("Deployment", "kube-system", "coredns")
    assert (svc["metadata"]["name"], svc["spec"]["clusterIP"]) == ("kube-dns", "10.96.0.10")
    assert {(p["port"], p["protocol"]) for p in svc["spec"]["ports"]} == {(53, "UDP"), (53, "TCP")}
    assert svc["spec"]["selector"] == dep["spec"]["template"]["metadata"]["labels"] == {"k8s-app": "kube-dns"}
    pod = dep["spec"]["template"]["spec"]
    assert pod["dnsPolicy"] == "Default"
    args = pod["containers"][0]["args"]
    assert args[:2] == ["--server", "http://192.168.50.10:6443"] and args[-2:] == ["--resolv-conf", ""]
    plan = plan_container(pod["containers"][0], python="py")
    assert plan.kind == "dns" and "--server" in plan.argv
    dep_up, _ = kube_dns_manifests("http://cp:6443", upstreams=("192.0.2.53",))
    assert dep_up["spec"]["template"]["spec"]["containers"][0]["args"][-2:] == ["--upstream", "192.0.2.53"]
