"""The Ingress controller on a lab node: an external client reaches two services by host and by path,
on the node's address and through the NodePorts on every node; TLS by SNI; status filled."""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest

from netplane.api import resources as res
from netplane.ingress import lab as ingress_lab
from netplane.ingress.fixtures import ingress, path, rule, tls_secret
from tests.integration.ingress.support import make_cert
from tests.lab.conftest import LabCluster, lab_cluster, wait_for

INGRESSES = res.must("networking.k8s.io", "v1", "ingresses")
SECRETS = res.must("", "v1", "secrets")


@pytest.fixture(scope="module")
def ing_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LabCluster, str]]:
    with lab_cluster("vxlan", "iptables", "np-ltig-", Path(tmp_path_factory.mktemp("lab-ingress"))) as c:
        # The demo's own step: starts the controller on n1, deploys blue and green, checks the routes.
        shown: list[str] = []
        ingress_lab.demo_step(c.lab, lambda _m: None, shown.append, wait_for)
        assert len(shown) == 5, shown
        yield c, c.lab.plan.node(ingress_lab.INGRESS_NODE).address


def served(c: LabCluster, url: str, host: str) -> str | None:
    status, body = ingress_lab.fetch(c.lab.plan.external.netns, url, host)
    return str(body["pod"]) if status == 200 and body else None


def test_hosts_and_paths_reach_blue_and_green_from_outside(ing_cluster: tuple[LabCluster, str]) -> None:
    c, address = ing_cluster
    for host, prefix in (("blue.lab.test", "blue-"), ("green.lab.test", "green-")):
        got = wait_for(f"{host} through {address}:80", partial(served, c, f"http://{address}/", host))
        assert got.startswith(prefix)
    for p, prefix in (("/blue/x", "blue-"), ("/green", "green-")):
        assert (served(c, f"http://{address}{p}", "anything.test") or "").startswith(prefix)
    status, _ = ingress_lab.fetch(c.lab.plan.external.netns, f"http://{address}/elsewhere", "anything.test")
    assert status == 404


def test_every_node_forwards_the_node_port_to_the_controller(ing_cluster: tuple[LabCluster, str]) -> None:
    c, _address = ing_cluster
    for node in c.lab.plan.nodes:
        url = f"http://{node.address}:{ingress_lab.HTTP_NODE_PORT}/"
        got = wait_for(f"green via {node.name}'s NodePort", partial(served, c, url, "green.lab.test"))
        assert got.startswith("green-")


def test_status_names_the_node_address(ing_cluster: tuple[LabCluster, str]) -> None:
    c, address = ing_cluster

    def lb() -> list[dict[str, str]]:
        obj = c.api(lambda cl: cl.get(INGRESSES, "blue-green", "default"))
        return list(((obj.get("status") or {}).get("loadBalancer") or {}).get("ingress") or [])

    assert wait_for("status.loadBalancer", lb) == [{"ip": address}]


def test_tls_by_sni_from_outside(ing_cluster: tuple[LabCluster, str], tmp_path: Path) -> None:
    c, address = ing_cluster
    crt, key = make_cert(tmp_path, ["secure.lab.test"])
    docs = [tls_secret("lab-cert", crt.read_bytes(), key.read_bytes()),
            ingress("secure", rule("secure.lab.test", path("/", "blue", "http")), class_name=None,
                    tls=[(["secure.lab.test"], "lab-cert")])]
    c.apply(docs)
    # curl in the external namespace: SNI and Host secure.lab.test, resolved to the node address.
    argv = ["curl", "-sS", "--cacert", str(crt), "--resolve", f"secure.lab.test:443:{address}",
            "https://secure.lab.test/tls"]

    def over_https() -> str | None:
        proc = c.run_in(c.lab.plan.external.netns, argv)
        return proc.stdout if proc.returncode == 0 and '"pod": "blue-' in proc.stdout else None

    body = wait_for("HTTPS to secure.lab.test", over_https)
    assert '"x-forwarded-proto": "https"' in body.lower().replace("'", '"')
    plain = c.run_in(c.lab.plan.external.netns, ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code} %{redirect_url}",
                                                 "-H", "Host: secure.lab.test", f"http://{address}/x"])
    assert plain.stdout == "308 https://secure.lab.test/x"
