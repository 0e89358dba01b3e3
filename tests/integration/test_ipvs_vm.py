"""IPVS mode on a real kernel: this machine's kernel has no IPVS, so these tests boot Debian's kernel
under qemu (tests/vm/harness.py), run tests/vm/test_ipvs_in_vm.py inside it once, and report each of
its tests here as one ordinary test. The VM run takes a few minutes under TCG; the kernel and the
initramfs are cached under /var/cache/netplane-vm after the first run.

Also here, on this machine's kernel: the pieces of IPVS mode that need no IPVS (the service device's
bridge fallback, address binding, the ipset restore and netlink paths).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest

from netplane.kernel.ipset import Ipset, parse_save
from netplane.kernel.ipvs import IpvsNode
from netplane.proxy import ipvs
from tests.vm import test_ipvs_in_vm as inner

pytestmark = [
    pytest.mark.root,
    pytest.mark.prerequisite_missing(os.geteuid() != 0,
                                     reason="needs root (qemu's 9p export of /, network namespaces)"),
]

INNER_TESTS = [name for name, obj in vars(inner).items() if name.startswith("test_") and callable(obj)]
VM_TIMEOUT = 1500.0  # seconds; a run takes 4-8 minutes on a loaded 2-core machine


@pytest.fixture(scope="module")
def vm_report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[str, str]]:
    """Boot once, run the in-VM tests, and map each test name to (outcome, details)."""
    from tests.vm.harness import prepare, run_in_vm

    missing = [tool for tool in ("qemu-system-x86_64", "depmod", "cpio", "busybox", "apt-get")
               if shutil.which(tool) is None]
    if missing:
        pytest.fail(f"missing tools for the test VM: {', '.join(missing)} (./run setup installs them)")
    share = tmp_path_factory.mktemp("ipvs-vm")
    kernel = prepare()
    result = run_in_vm(
        ".venv/bin/python -m pytest -p no:cacheprovider -q -o addopts= "
        "--junitxml=$NETPLANE_VM_RESULTS/junit.xml tests/vm/test_ipvs_in_vm.py",
        share, timeout=VM_TIMEOUT, kernel=kernel)
    output = (share / "output.log").read_text(errors="replace") if (share / "output.log").exists() else ""
    junit = share / "junit.xml"
    if not junit.exists():
        pytest.fail(f"the in-VM pytest left no report (exit {result.returncode}):\n{output[-4000:]}\n"
                    f"console tail:\n{result.console[-2000:]}")
    report: dict[str, tuple[str, str]] = {}
    for case in ET.parse(junit).getroot().iter("testcase"):
        name = case.get("name", "")
        outcome, details = "passed", ""
        for child in case:
            if child.tag in ("failure", "error", "skipped"):
                outcome = child.tag
                details = (child.get("message") or "") + "\n" + (child.text or "")
                break
        report[name] = (outcome, details)
    print(f"in-VM run on {kernel.package}: exit {result.returncode} after {result.seconds:.0f}s")
    return report


@pytest.mark.timeout(VM_TIMEOUT + 300)
@pytest.mark.parametrize("name", INNER_TESTS)
def test_ipvs_mode_in_vm(vm_report: dict[str, tuple[str, str]], name: str) -> None:
    assert name in vm_report, f"{name} did not run in the VM (collected: {sorted(vm_report)})"
    outcome, details = vm_report[name]
    assert outcome == "passed", f"in the VM, {name}: {outcome}\n{details[-3000:]}"


# -- what needs no IPVS: on this machine's kernel ---------------------------------------------------
@pytest.fixture
def netns() -> Iterator[str]:
    name = f"np-ipvsh-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def _dummy_supported(netns: str) -> bool:
    probe = subprocess.run(["ip", "-n", netns, "link", "add", "np-probe0", "type", "dummy"], capture_output=True)
    subprocess.run(["ip", "-n", netns, "link", "del", "np-probe0"], capture_output=True)
    return probe.returncode == 0


def test_service_device_is_a_dummy_or_else_a_bridge_and_holds_addresses(netns: str) -> None:
    node = IpvsNode(ipvs.DEVICE, netns)
    expected = "dummy" if _dummy_supported(netns) else "bridge"
    assert node.ensure_device() == expected and node.ensure_device() == expected
    node.bind(["10.96.0.10", "10.96.0.11"])
    node.bind(["10.96.0.10"])  # idempotent
    node.unbind(["10.96.0.11", "10.96.0.99"])  # an absent address is fine
    assert node.bound_addresses() == {"10.96.0.10"}
    # A local address on a device that stays down still makes the node accept the address.
    local = subprocess.run(["ip", "-n", netns, "route", "get", "10.96.0.10"], capture_output=True, text=True).stdout
    assert local.startswith("local 10.96.0.10")
    state = subprocess.run(["ip", "-n", netns, "-br", "link", "show", ipvs.DEVICE], capture_output=True,
                           text=True).stdout
    assert "DOWN" in state
    assert (ipvs.DEVICE, "10.96.0.10") in node.local_addresses()


def test_ipset_restore_and_save_round_trip(netns: str) -> None:
    ipset = Ipset(netns)
    lines = [ipvs.create_line(name) for name in sorted(ipvs.SET_TYPES)]
    lines += ["add NPV-CLUSTER-IP 10.96.0.10,tcp:80", "add NPV-LB-SOURCE-CIDR 203.0.113.10,tcp:443,198.51.100.7/32",
              "add NPV-NODE-PORT-UDP 30053", "add NPV-LOOP-BACK 10.244.1.2,sctp:9999,10.244.1.2"]
    ipset.restore("\n".join(lines) + "\n")
    ipset.restore("\n".join(lines) + "\ndel NPV-NODE-PORT-UDP 30053\ndel NPV-NODE-PORT-UDP 30054\n")
    saved = parse_save(ipset.save(), ipvs.PREFIX)
    assert set(saved) == set(ipvs.SET_TYPES)
    assert all(saved[n].type == t for n, t in ipvs.SET_TYPES.items())
    assert saved["NPV-CLUSTER-IP"].members == {"10.96.0.10,tcp:80"}
    assert saved["NPV-LB-SOURCE-CIDR"].members == {"203.0.113.10,tcp:443,198.51.100.7"}
    assert saved["NPV-NODE-PORT-UDP"].members == set()
    assert saved["NPV-LOOP-BACK"].members == {"10.244.1.2,sctp:9999,10.244.1.2"}


def test_ipset_netlink_on_this_machines_kernel(netns: str) -> None:
    # The same checks as in the VM (Debian's 6.1 kernel), on this machine's newer one.
    inner.check_ipset_netlink(netns)


def test_vm_harness_names_the_kernel_package() -> None:
    from tests.vm.harness import kernel_package

    package = kernel_package()
    assert package.startswith("linux-image-") and package.endswith("-amd64") and package != "linux-image-amd64"
    assert Path("/usr/bin/apt-cache").exists()
