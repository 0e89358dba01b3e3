"""Removing other proxy modes' state (netplane/proxy/cleanup.py) without a kernel: which iptables rules and
IPVS virtual servers are netplane's, the order of the steps, idempotence, errors, and the CLI flag."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from click.testing import CliRunner

from netplane.cli.proxy_cmd import proxy
from netplane.kernel.ipset import SavedSet
from netplane.proxy import cleanup as cl
from netplane.proxy import ipvs
from netplane.proxy.cleanup import Cleaner, CleanupReport, StartupCleanup, iptables_cleanup_text, owned_virtual_servers
from netplane.proxy.state import ProxyConfig

NAT = """*nat
:PREROUTING ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:NP-SERVICES - [0:0]
:NP-SVC-ABC - [0:0]
:NPV-SERVICES - [0:0]
:USER-NAT - [0:0]
-A PREROUTING -m comment --comment "netplane service portals" -j NP-SERVICES
-A PREROUTING -m comment --comment "netplane ipvs services" -j NPV-SERVICES
-A PREROUTING -j USER-NAT
-A OUTPUT -m comment --comment "netplane service portals" -j NP-SERVICES
-A USER-NAT -p tcp --dport 8080 -j DNAT --to-destination 10.0.0.1:80
-A USER-NAT -j NP-SVC-ABC
-A NP-SERVICES -d 10.96.0.10/32 -p tcp -m tcp --dport 80 -j NP-SVC-ABC
-A NP-SVC-ABC -j DNAT --to-destination 10.244.1.2:80
-A NPV-SERVICES -m set --match-set NPV-CLUSTER-IP dst,dst -j ACCEPT
COMMIT
"""


def test_iptables_text_removes_our_chains_and_every_jump_to_them_only() -> None:
    text, removed = iptables_cleanup_text({"nat": NAT, "filter": "*filter\n:INPUT ACCEPT [0:0]\nCOMMIT\n"}, "NP-")
    assert text.splitlines() == [
        "*nat",
        ":NP-SERVICES - [0:0]",
        ":NP-SVC-ABC - [0:0]",
        '-D PREROUTING -m comment --comment "netplane service portals" -j NP-SERVICES',
        '-D OUTPUT -m comment --comment "netplane service portals" -j NP-SERVICES',
        "-D USER-NAT -j NP-SVC-ABC",  # someone else's jump into our chain would keep it from being deleted
        "-X NP-SERVICES",
        "-X NP-SVC-ABC",
        "COMMIT",
    ]
    assert "iptables nat chain NP-SVC-ABC" in removed and len(removed) == 5


def test_iptables_text_for_the_ipvs_prefix_leaves_the_iptables_modes_chains() -> None:
    text, _ = iptables_cleanup_text({"nat": NAT}, "NPV-")
    assert text.splitlines() == ["*nat", ":NPV-SERVICES - [0:0]",
                                 '-D PREROUTING -m comment --comment "netplane ipvs services" -j NPV-SERVICES',
                                 "-X NPV-SERVICES", "COMMIT"]


def test_nothing_of_ours_means_no_text() -> None:
    clean = "*nat\n:PREROUTING ACCEPT [0:0]\n:USER - [0:0]\n-A PREROUTING -j USER\nCOMMIT\n"
    assert iptables_cleanup_text({"nat": clean, "filter": ""}, "NP-") == ("", [])


def test_the_iptables_modes_own_rules_are_removed_completely() -> None:
    # Whatever the iptables mode programs (its chains and every jump of JUMPS) is found by the cleaner.
    from netplane.proxy.fixtures import endpoint_slice, service
    from netplane.proxy.iptables import JUMPS
    from netplane.proxy.proxier import IptablesBackend, Proxier
    from tests.unit.proxy.ipvs_fakes import FakeIptables

    kernel = FakeIptables()
    p = Proxier(ProxyConfig(node_name="n1", cluster_cidr="10.244.0.0/16", node_ips=("192.168.0.1",)),
                IptablesBackend(kernel))
    p.on_service(None, service("web", "10.96.0.10", type="NodePort", ports=(("", 80, "TCP", 30080),)))
    p.on_endpoint_slice(None, endpoint_slice("web", [("10.244.1.2", "n1")]))
    assert p.sync()
    saved = {t: kernel.save(t) for t in ("filter", "nat")}
    assert len(kernel.jumps) == len(JUMPS)
    text, _ = iptables_cleanup_text(saved, "NP-")
    kernel.restore(text)  # the fake drops -X'd chains; the jumps are checked below
    assert text.count("\n-D ") == len(JUMPS)
    assert {c for t, c in kernel.chains if c.startswith("NP-")} == set()
    assert len([c for _, c in kernel.chains]) == 0


# -- IPVS: which virtual servers are ours ------------------------------------------------------------
def sets(**members: set[str]) -> dict[str, SavedSet]:
    return {name.replace("_", "-"): SavedSet(name.replace("_", "-"), "x", m) for name, m in members.items()}


def test_owned_virtual_servers() -> None:
    keys = [
        ("TCP", "10.96.0.10", 80),       # on the device
        ("UDP", "10.96.0.11", 53),       # not on the device, but listed in NPV-CLUSTER-IP
        ("TCP", "192.168.0.1", 30080),   # a node address and a port of our NodePort set
        ("UDP", "192.168.0.1", 30080),   # same port, other protocol: not ours
        ("TCP", "192.168.0.1", 8080),    # someone else's on a node address
        ("TCP", "203.0.113.5", 443),     # someone else's elsewhere
        ("TCP", "198.51.100.9", 443),    # listed as an external IP
        ("SCTP", "192.168.0.1", 30999),  # local-policy NodePort set
    ]
    saved = sets(NPV_CLUSTER_IP={"10.96.0.11,udp:53"}, NPV_NODE_PORT_TCP={"30080"},
                 NPV_EXTERNAL_IP={"198.51.100.9,tcp:443"}, NPV_NODE_PORT_LOCAL_SCTP={"30999"})
    assert owned_virtual_servers(keys, {"10.96.0.10"}, saved, {"192.168.0.1"}) == sorted([
        ("TCP", "10.96.0.10", 80), ("UDP", "10.96.0.11", 53), ("TCP", "192.168.0.1", 30080),
        ("TCP", "198.51.100.9", 443), ("SCTP", "192.168.0.1", 30999)])
    # Without the sets (ipset missing) the device's addresses still identify the service addresses.
    assert owned_virtual_servers(keys, {"10.96.0.10"}, {}, {"192.168.0.1"}) == [("TCP", "10.96.0.10", 80)]


# -- the cleaner against a fake kernel ------------------------------------------------------------
@dataclass
class FakeKernel:
    saved: dict[str, str] = field(default_factory=lambda: {"nat": NAT, "filter": "*filter\nCOMMIT\n"})
    nft_table: bool = True
    set_names: list[str] = field(default_factory=lambda: ["NPV-CLUSTER-IP", "NPV-NODE-PORT-TCP", "OTHER"])
    ipset_text: str = "create NPV-CLUSTER-IP hash:ip,port\nadd NPV-CLUSTER-IP 10.96.0.11,udp:53\n"
    loaded: bool = True
    services: list[tuple[str, str, int]] = field(default_factory=lambda: [
        ("TCP", "10.96.0.10", 80), ("UDP", "10.96.0.11", 53), ("TCP", "203.0.113.5", 443)])
    device: set[str] | None = field(default_factory=lambda: {"10.96.0.10"})
    calls: list[str] = field(default_factory=list)
    fail: set[str] = field(default_factory=set)

    def _call(self, what: str) -> None:
        self.calls.append(what)
        if what in self.fail:
            raise RuntimeError(f"{what} broke")

    def iptables_save(self, table: str) -> str:
        return self.saved.get(table, "")

    def iptables_restore(self, text: str) -> None:
        self._call("iptables-restore")
        # Apply the removal to the saved text, as the kernel would.
        removed_chains = {ln[3:] for ln in text.splitlines() if ln.startswith("-X ")}
        removed_rules = {"-A " + ln[3:] for ln in text.splitlines() if ln.startswith("-D ")}
        for table, body in self.saved.items():
            self.saved[table] = "\n".join(
                ln for ln in body.splitlines()
                if ln not in removed_rules and not (ln.startswith(":") and ln[1:].split()[0] in removed_chains)
                and not (ln.startswith("-A ") and ln.split()[1] in removed_chains)) + "\n"

    def nft_table_present(self) -> bool:
        return self.nft_table

    def nft_delete_table(self) -> None:
        self._call("nft-delete")
        self.nft_table = False

    def ipset_names(self, prefix: str) -> list[str]:
        return [n for n in self.set_names if n.startswith(prefix)]

    def ipset_save(self) -> str:
        return self.ipset_text

    def ipset_destroy(self, names: list[str]) -> None:
        self._call("ipset-destroy")
        if any("-A" in body and f"--match-set {n} " in body for body in self.saved.values() for n in names):
            raise RuntimeError("set in use")
        self.set_names = [n for n in self.set_names if n not in names]

    def ipvs_loaded(self) -> bool:
        return self.loaded

    def ipvs_services(self) -> list[tuple[str, str, int]]:
        return list(self.services)

    def ipvs_delete(self, keys: list[tuple[str, str, int]]) -> None:
        self._call("ipvs-delete")
        self.services = [k for k in self.services if k not in keys]

    def device_addresses(self) -> set[str] | None:
        return None if self.device is None else set(self.device)

    def node_addresses(self) -> set[str]:
        return {"127.0.0.1", "192.168.0.1", *(self.device or ())}

    def delete_device(self) -> None:
        self._call("device-delete")
        self.device = None


def test_starting_in_nftables_mode_removes_the_iptables_and_ipvs_modes_state() -> None:
    kernel = FakeKernel()
    report = Cleaner(kernel).clean_other_modes("nftables")
    assert report.ok, report.errors
    assert kernel.nft_table  # our own mode's table stays
    assert "NP-" not in kernel.saved["nat"] and "NPV-" not in kernel.saved["nat"]
    assert "-A USER-NAT -p tcp --dport 8080 -j DNAT --to-destination 10.0.0.1:80" in kernel.saved["nat"]
    assert kernel.services == [("TCP", "203.0.113.5", 443)]  # not ours: stays
    assert kernel.device is None and kernel.set_names == ["OTHER"]
    # Virtual servers are found through the sets and the device, which therefore go after them.
    assert kernel.calls == ["iptables-restore", "ipvs-delete", "iptables-restore", "device-delete", "ipset-destroy"]
    assert "IPVS virtual server udp:10.96.0.11:53" in report.removed and "ipset NPV-NODE-PORT-TCP" in report.removed


def test_a_second_cleanup_finds_nothing_and_changes_nothing() -> None:
    kernel = FakeKernel()
    assert Cleaner(kernel).clean(cl.MODES).ok
    kernel.calls.clear()
    again = Cleaner(kernel).clean(cl.MODES)
    assert again == CleanupReport() and kernel.calls == []


def test_each_mode_keeps_its_own_state() -> None:
    kernel = FakeKernel()
    assert Cleaner(kernel).clean_other_modes("ipvs").ok
    assert ":NPV-SERVICES" in kernel.saved["nat"] and ":NP-SERVICES" not in kernel.saved["nat"]
    assert kernel.device is not None and len(kernel.services) == 3 and not kernel.nft_table
    kernel = FakeKernel()
    assert Cleaner(kernel).clean_other_modes("iptables").ok
    assert ":NP-SERVICES" in kernel.saved["nat"] and ":NPV-SERVICES" not in kernel.saved["nat"]


def test_without_ip_vs_loaded_no_virtual_server_is_looked_for() -> None:
    kernel = FakeKernel(loaded=False)
    assert Cleaner(kernel).clean(["ipvs"]).ok
    assert "ipvs-delete" not in kernel.calls and kernel.device is None


def test_a_failed_step_is_reported_and_the_others_still_run() -> None:
    kernel = FakeKernel(fail={"nft-delete"})
    report = Cleaner(kernel).clean_other_modes("iptables")
    assert report.errors == ["nftables mode's table: nft-delete broke"]
    assert kernel.device is None and kernel.set_names == ["OTHER"]


def test_sets_are_not_destroyed_while_the_rules_using_them_could_not_be_removed() -> None:
    kernel = FakeKernel(fail={"iptables-restore"})
    report = Cleaner(kernel).clean(["ipvs"])
    assert [e.split(":")[0] for e in report.errors] == ["IPVS mode's rules"]
    assert "ipset-destroy" not in kernel.calls


def test_unknown_modes_are_refused() -> None:
    with pytest.raises(ValueError):
        Cleaner(FakeKernel()).clean_other_modes("userspace")
    with pytest.raises(ValueError):
        StartupCleanup("userspace")


def test_startup_cleanup_runs_once_after_a_successful_sync_and_retries_a_failure() -> None:
    kernel = FakeKernel(fail={"nft-delete"})
    listener = StartupCleanup("iptables", cleaner=Cleaner(kernel))
    listener.queued()
    assert kernel.calls == []  # nothing before the first sync
    listener.synced(object())
    assert not listener.done and kernel.nft_table
    kernel.fail.clear()
    listener.synced(object())
    assert listener.done and not kernel.nft_table
    kernel.calls.clear()
    listener.synced(object())
    assert kernel.calls == []


def test_startup_cleanup_gives_up_after_a_few_attempts() -> None:
    kernel = FakeKernel(fail={"nft-delete"})
    listener = StartupCleanup("iptables", cleaner=Cleaner(kernel))
    for _ in range(StartupCleanup.ATTEMPTS + 3):
        listener.synced(object())
    assert kernel.calls.count("nft-delete") == StartupCleanup.ATTEMPTS and not listener.done


# -- the CLI ---------------------------------------------------------------------------------------
def test_cleanup_flag_needs_no_node_or_server_and_prints_what_it_removed(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[str | None, str]] = []

    def fake(netns: str | None = None, iptables_backend: str = "nft", keep_mode: str | None = None) -> CleanupReport:
        seen.append((netns, iptables_backend))
        assert keep_mode is None
        return CleanupReport(removed=["nftables table ip netplane", "ipset NPV-CLUSTER-IP"])

    monkeypatch.setattr(cl, "cleanup", fake)
    result = CliRunner().invoke(proxy, ["--cleanup", "--netns", "np-x", "--iptables-backend", "legacy"],
                                catch_exceptions=False)
    assert result.exit_code == 0
    assert result.output == "removed nftables table ip netplane\nremoved ipset NPV-CLUSTER-IP\n"
    assert seen == [("np-x", "legacy")]


def test_cleanup_flag_fails_when_something_could_not_be_removed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cl, "cleanup", lambda *a, **k: CleanupReport(errors=["nftables mode's table: busy"]))
    result = CliRunner().invoke(proxy, ["--cleanup"])
    assert result.exit_code == 1 and "cleanup incomplete" in result.output and "busy" in result.output


def test_node_name_is_still_required_to_run_the_proxy() -> None:
    result = CliRunner().invoke(proxy, ["--server", "http://127.0.0.1:1"])
    assert result.exit_code == 2 and "--node-name" in result.output


def test_ipvs_prefix_matches_the_ipvs_modes() -> None:
    assert cl.IPVS_PREFIX == ipvs.PREFIX
    from netplane.proxy import iptables, nftables

    assert cl.IPTABLES_PREFIX == iptables.PREFIX and nftables.TABLE == "netplane"
    assert not ipvs.PREFIX.startswith(iptables.PREFIX)  # one prefix never matches the other's chains
