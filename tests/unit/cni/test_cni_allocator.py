"""The IPAM allocator over a fake store, and the disk store's host-local layout (no root)."""

from __future__ import annotations

import fcntl
import ipaddress
import os
import threading
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from netplane.cni import config
from netplane.cni.errors import CODE_IPAM_EXHAUSTED, CODE_IPAM_STORE, CODE_TRY_AGAIN, CNIError
from netplane.cni.ipam import allocator
from netplane.cni.ipam.store import DiskStore, MemoryStore


def ipam(**raw: Any) -> config.IpamConf:
    return config.parse_ipam({"type": "netplane-ipam", **raw})


def ip(text: str) -> Any:
    return ipaddress.ip_address(text)


def alloc(store: Any, conf: config.IpamConf, cid: str, requested: tuple[Any, ...] = ()) -> list[str]:
    return [str(a.ip) for a in allocator.allocate(store, conf, cid, "eth0", requested)]


def test_first_address_skips_network_and_gateway() -> None:
    store = MemoryStore()
    conf = ipam(subnet="10.1.0.0/24")
    assert alloc(store, conf, "a") == ["10.1.0.2"]
    assert alloc(store, conf, "b") == ["10.1.0.3"]


def test_round_robin_continues_after_the_last_reserved_address() -> None:
    store = MemoryStore()
    conf = ipam(subnet="10.1.0.0/24")
    assert alloc(store, conf, "a") == ["10.1.0.2"]
    assert alloc(store, conf, "b") == ["10.1.0.3"]
    allocator.release(store, "a", "eth0")
    # .2 is free again, but a just-freed address is not handed out at once.
    assert alloc(store, conf, "c") == ["10.1.0.4"]


def test_wraps_around_and_never_hands_out_broadcast() -> None:
    store = MemoryStore()
    conf = ipam(subnet="10.1.0.0/29")  # .1 gateway, .2-.6 usable, .7 broadcast
    got = [alloc(store, conf, f"c{i}")[0] for i in range(5)]
    assert got == ["10.1.0.2", "10.1.0.3", "10.1.0.4", "10.1.0.5", "10.1.0.6"]
    with pytest.raises(CNIError) as e:
        alloc(store, conf, "full")
    assert e.value.code == CODE_IPAM_EXHAUSTED
    allocator.release(store, "c1", "eth0")
    assert alloc(store, conf, "again") == ["10.1.0.3"]  # found by wrapping past the end


def test_gateway_inside_a_custom_range_is_skipped() -> None:
    store = MemoryStore()
    conf = ipam(subnet="10.1.0.0/24", rangeStart="10.1.0.10", rangeEnd="10.1.0.12", gateway="10.1.0.11")
    assert [alloc(store, conf, c)[0] for c in "ab"] == ["10.1.0.10", "10.1.0.12"]
    assert allocator.free_count(store, conf) == [0]


def test_multiple_ranges_in_one_set_are_walked_in_order() -> None:
    store = MemoryStore()
    conf = ipam(ranges=[[{"subnet": "10.1.0.0/30"}, {"subnet": "10.2.0.0/30"}]])
    # each /30 has .1 (gateway) and .2 usable
    assert [alloc(store, conf, c)[0] for c in "ab"] == ["10.1.0.2", "10.2.0.2"]


def test_dual_stack_gets_one_address_per_range_set() -> None:
    store = MemoryStore()
    conf = ipam(ranges=[[{"subnet": "10.1.0.0/24"}], [{"subnet": "fd00::/120"}]])
    assert alloc(store, conf, "a") == ["10.1.0.2", "fd00::2"]
    result = allocator.to_result(conf, allocator.allocate(store, conf, "b", "eth0"))
    assert [str(i.address) for i in result.ips] == ["10.1.0.3/24", "fd00::3/120"]
    assert [str(i.gateway) for i in result.ips] == ["10.1.0.1", "fd00::1"]


def test_failure_in_a_later_range_set_releases_the_earlier_ones() -> None:
    store = MemoryStore()
    conf = ipam(ranges=[[{"subnet": "10.1.0.0/24"}], [{"subnet": "10.2.0.0/30"}]])
    alloc(store, conf, "a")  # takes the only address of the second set
    with pytest.raises(CNIError):
        alloc(store, conf, "b")
    assert store.get_by_id("b", "eth0") == []


def test_duplicate_allocation_for_one_attachment_is_refused() -> None:
    store = MemoryStore()
    conf = ipam(subnet="10.1.0.0/24")
    alloc(store, conf, "a")
    with pytest.raises(CNIError) as e:
        alloc(store, conf, "a")
    assert e.value.code == CODE_IPAM_STORE


def test_requested_address() -> None:
    store = MemoryStore()
    conf = ipam(subnet="10.1.0.0/24")
    assert alloc(store, conf, "a", (ip("10.1.0.77"),)) == ["10.1.0.77"]
    for bad in ("10.1.0.77", "10.1.0.1"):  # taken, gateway
        with pytest.raises(CNIError) as e:
            alloc(store, conf, "b", (ip(bad),))
        assert e.value.code == CODE_IPAM_EXHAUSTED
    with pytest.raises(CNIError):
        alloc(store, conf, "c", (ip("10.9.0.5"),))


@settings(max_examples=60, deadline=None)
@given(ops=st.lists(st.tuples(st.booleans(), st.integers(0, 7)), max_size=60))
def test_property_never_duplicates_or_leaves_the_range(ops: list[tuple[bool, int]]) -> None:
    store = MemoryStore()
    conf = ipam(subnet="10.1.0.0/28", rangeStart="10.1.0.3", rangeEnd="10.1.0.12")
    held: dict[str, Any] = {}
    for add, n in ops:
        cid = f"c{n}"
        if add and cid not in held:
            try:
                held[cid] = allocator.allocate(store, conf, cid, "eth0")[0].ip
            except CNIError as e:
                assert e.code == CODE_IPAM_EXHAUSTED and len(held) == 10
        elif not add:
            allocator.release(store, cid, "eth0")
            held.pop(cid, None)
        assert len(set(held.values())) == len(held)
        assert all(ip("10.1.0.3") <= a <= ip("10.1.0.12") for a in held.values())
        assert store.reservations() == {a: (c, "eth0") for c, a in held.items()}


# -- disk store ---------------------------------------------------------------------


def test_disk_store_uses_the_host_local_layout(tmp_path: Path) -> None:
    store = DiskStore(str(tmp_path), "net1")
    conf = ipam(subnet="10.1.0.0/24")
    assert alloc(store, conf, "ctr-1") == ["10.1.0.2"]
    d = tmp_path / "net1"
    assert (d / "10.1.0.2").read_bytes() == b"ctr-1\r\neth0"
    assert (d / "last_reserved_ip.0").read_text() == "10.1.0.2"
    assert (d / "lock").exists()
    assert allocator.release(store, "ctr-1", "eth0") == [ip("10.1.0.2")]
    assert not (d / "10.1.0.2").exists()
    assert alloc(store, conf, "ctr-2") == ["10.1.0.3"]  # round-robin state survives on disk


def test_disk_store_reads_records_written_by_host_local(tmp_path: Path) -> None:
    d = tmp_path / "net1"
    d.mkdir()
    (d / "10.1.0.9").write_bytes(b"other\r\neth1\n")  # trailing whitespace as some writers leave it
    store = DiskStore(str(tmp_path), "net1")
    assert store.reservations() == {ip("10.1.0.9"): ("other", "eth1")}
    assert store.get_by_id("other", "eth1") == [ip("10.1.0.9")]


def test_reserve_is_exclusive(tmp_path: Path) -> None:
    store = DiskStore(str(tmp_path), "net1")
    with store.lock():
        assert store.reserve("a", "eth0", ip("10.1.0.5"), 0)
        assert not store.reserve("b", "eth0", ip("10.1.0.5"), 0)


def test_a_held_lock_becomes_try_again_later(tmp_path: Path) -> None:
    store = DiskStore(str(tmp_path), "net1", lock_timeout=0.2)
    os.makedirs(store.dir)
    fd = os.open(os.path.join(store.dir, "lock"), os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        with pytest.raises(CNIError) as e:
            alloc(store, ipam(subnet="10.1.0.0/24"), "a")
        assert e.value.code == CODE_TRY_AGAIN
    finally:
        os.close(fd)


def test_threads_with_separate_stores_get_distinct_addresses(tmp_path: Path) -> None:
    conf = ipam(subnet="10.1.0.0/24")
    got: list[str] = []
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        try:
            got.extend(alloc(DiskStore(str(tmp_path), "net1"), conf, f"c{n}"))
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not errors
    assert len(got) == 40 and len(set(got)) == 40


def test_writable_reports_a_read_only_dir(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    assert DiskStore(str(tmp_path / "file"), "net1").writable() != ""  # a file where a dir must go
    assert DiskStore(str(tmp_path), "net1").writable() == ""
