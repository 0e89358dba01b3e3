"""The lab as a guest on this machine: it changes nothing outside its own namespaces, and `lab down`
removes everything it made, also after the lab's daemons died without cleaning up."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

from netplane.kernel import labnet
from netplane.lab.cluster import Lab, LabError, remove_leftovers
from netplane.lab.topology import plan
from tests.lab.conftest import NODE_ARGS, SERVER_ARGS, LabCluster, echo_app, wait_for

PREFIX = "np-ltc-"


def root_state() -> dict[str, str]:
    """What the lab must not change in the machine's own network namespace."""

    def out(*argv: str) -> str:
        proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=30, check=False)
        return proc.stdout

    legacy = "\n".join(line for line in out("iptables-legacy-save").splitlines() if not line.startswith("#"))
    return {
        "links": out("ip", "-o", "link", "show"),
        "addresses": out("ip", "-o", "addr", "show"),
        "routes": out("ip", "route", "show", "table", "all"),
        "rules": out("ip", "rule", "show"),
        "nft": out("nft", "list", "ruleset"),
        "iptables-legacy": legacy,
        "ip_forward": Path("/proc/sys/net/ipv4/ip_forward").read_text(),
    }


def pod_pids(prefix: str) -> list[int]:
    return [pid for ns in labnet.list_netns(f"{prefix}pod-") for pid in labnet.netns_pids(ns)]


def test_lab_touches_only_its_namespaces_and_down_cleans_up_after_a_crash(
        tmp_path_factory: pytest.TempPathFactory) -> None:
    remove_leftovers(PREFIX, progress=lambda _m: None)
    state = Path(tmp_path_factory.mktemp("lab-crash"))
    before = root_state()
    lab = Lab(plan(2, "vxlan", "iptables", prefix=PREFIX), state_dir=state, server_args=SERVER_ARGS,
              node_args=NODE_ARGS)
    try:
        lab.up(progress=lambda _m: None)
        c = LabCluster(lab)
        c.apply(echo_app("guest", 2, node_port=30220))
        c.wait_ready("app=guest", 2)
        url = f"http://{lab.plan.nodes[0].address}:30220/"
        wait_for("the NodePort", lambda: c.fetch(lab.plan.external.netns, url), 20)
        after = root_state()
        changed = [k for k in before if before[k] != after[k]]
        assert not changed, f"lab up changed the root namespace's {changed}"

        with pytest.raises(LabError, match="already exists"):
            Lab(plan(2, "vxlan", "iptables", prefix=PREFIX), state_dir=state).up(progress=lambda _m: None)

        # A crash: every daemon dies at once, nothing cleans up; pods keep running in their namespaces.
        pids = pod_pids(PREFIX)
        assert pids, "the pods' processes should be running"
        for d in lab.procs.daemons.values():
            os.kill(d.pid, signal.SIGKILL)
        wait_for("the daemons to die", lambda: not any(d.alive() for d in lab.procs.daemons.values()), 10)
        assert all(labnet.running(p) for p in pids), "pods should outlive their node agent"
        netns = labnet.list_netns(PREFIX)
        assert any("-pod-" in n for n in netns)
    finally:
        # What `netplane lab down` does when the state dir is gone too: find everything by prefix.
        remove_leftovers(PREFIX, progress=lambda _m: None)
    assert labnet.list_netns(PREFIX) == []
    assert not [p for p in pids if labnet.running(p)], "pod processes survived lab down"
    etc_netns = os.listdir(labnet.ETC_NETNS) if labnet.ETC_NETNS.is_dir() else []
    assert not [n for n in etc_netns if n.startswith(PREFIX)], "per-pod /etc/netns files left behind"
    assert root_state() == before
    Lab(plan(2, prefix=PREFIX), state_dir=state).down(progress=lambda _m: None)  # and the state dir
    assert not state.exists()
