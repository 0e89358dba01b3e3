"""ClusterIP, NodePort and pod-CIDR allocators (netplane.state.allocators)."""

from __future__ import annotations

import ipaddress
import random
import time
import tracemalloc

import pytest

from netplane.state.allocators import (
    AllocationError,
    CIDRAllocator,
    IPAllocator,
    PortAllocator,
    cidrs_overlap,
)

# ---------------------------------------------------------------- IPAllocator


def test_ip_range_excludes_network_and_broadcast() -> None:
    alloc = IPAllocator("10.96.0.0/12")
    assert alloc.size == 2**20 - 2
    assert alloc.free_count == 2**20 - 2
    assert not alloc.contains("10.96.0.0")
    assert alloc.contains("10.96.0.1")
    assert alloc.contains("10.111.255.254")
    assert not alloc.contains("10.111.255.255")
    assert not alloc.contains("10.112.0.1")
    assert not alloc.contains("fd00::1")
    assert not alloc.contains("not-an-ip")


def test_ip_allocate_specific_and_duplicate() -> None:
    alloc = IPAllocator("10.96.0.0/12")
    alloc.allocate_specific("10.96.0.5")
    assert alloc.in_use("10.96.0.5")
    assert not alloc.in_use("10.96.0.6")
    assert alloc.free_count == 2**20 - 3
    with pytest.raises(AllocationError) as excinfo:
        alloc.allocate_specific("10.96.0.5")
    assert str(excinfo.value) == "provided IP is already allocated"
    assert excinfo.value.reason == AllocationError.REASON_ALLOCATED
    assert alloc.free_count == 2**20 - 3


@pytest.mark.parametrize("ip", ["10.112.0.5", "10.96.0.0", "10.111.255.255", "fd00::5"])
def test_ip_allocate_specific_out_of_range(ip: str) -> None:
    alloc = IPAllocator("10.96.0.0/12")
    with pytest.raises(AllocationError) as excinfo:
        alloc.allocate_specific(ip)
    assert str(excinfo.value) == (
        "provided IP is not in the valid range. The range of valid IPs is 10.96.0.0/12"
    )
    assert excinfo.value.reason == AllocationError.REASON_NOT_IN_RANGE
    assert alloc.free_count == alloc.size


def test_ip_allocate_specific_rejects_garbage() -> None:
    alloc = IPAllocator("10.96.0.0/24")
    with pytest.raises(AllocationError) as excinfo:
        alloc.allocate_specific("10.96.0.300")
    assert excinfo.value.reason == AllocationError.REASON_INVALID


def test_ip_range_full_release_and_reuse() -> None:
    alloc = IPAllocator("10.0.0.0/29", rng=random.Random(7))
    got = {alloc.allocate() for _ in range(6)}
    assert got == {f"10.0.0.{i}" for i in range(1, 7)}
    assert alloc.free_count == 0
    with pytest.raises(AllocationError) as excinfo:
        alloc.allocate()
    assert str(excinfo.value) == "range is full"
    assert excinfo.value.reason == AllocationError.REASON_FULL

    alloc.release("10.0.0.4")
    assert not alloc.in_use("10.0.0.4")
    assert alloc.free_count == 1
    assert alloc.allocate() == "10.0.0.4"
    with pytest.raises(AllocationError):
        alloc.allocate()


def test_ip_release_is_idempotent_and_ignores_foreign_addresses() -> None:
    alloc = IPAllocator("10.0.0.0/24")
    alloc.allocate_specific("10.0.0.9")
    alloc.release("10.0.0.9")
    alloc.release("10.0.0.9")
    alloc.release("192.168.0.1")
    alloc.release("garbage")
    assert alloc.free_count == 254
    alloc.allocate_specific("10.0.0.9")  # free again, so this succeeds


def test_ip_dynamic_allocation_prefers_upper_band() -> None:
    # A /24 has a 16-address static band (10.0.0.1-10.0.0.16): kube hands out the rest
    # first and only then falls back to the static band.
    alloc = IPAllocator("10.0.0.0/24", rng=random.Random(3))
    static = {f"10.0.0.{i}" for i in range(1, 17)}
    first = [alloc.allocate() for _ in range(254 - 16)]
    assert len(set(first)) == len(first)
    assert not set(first) & static
    rest = {alloc.allocate() for _ in range(16)}
    assert rest == static
    with pytest.raises(AllocationError):
        alloc.allocate()


def test_ip_static_band_addresses_can_be_picked_explicitly() -> None:
    alloc = IPAllocator("10.96.0.0/12", rng=random.Random(1))
    alloc.allocate_specific("10.96.0.1")
    alloc.allocate_specific("10.96.0.10")
    assert alloc.in_use("10.96.0.1") and alloc.in_use("10.96.0.10")


def test_ip_allocation_is_random_but_reproducible_with_a_seed() -> None:
    a = IPAllocator("10.96.0.0/12", rng=random.Random(42))
    b = IPAllocator("10.96.0.0/12", rng=random.Random(42))
    seq_a = [a.allocate() for _ in range(20)]
    assert seq_a == [b.allocate() for _ in range(20)]
    # Random, not sequential: 20 consecutive addresses would be a sign of a linear scan.
    ints = sorted(int(ipaddress.ip_address(ip)) for ip in seq_a)
    assert ints[-1] - ints[0] > 1000


def test_ip_large_range_is_not_materialised() -> None:
    tracemalloc.start()
    try:
        started = time.perf_counter()
        alloc = IPAllocator("10.96.0.0/12", rng=random.Random(5))
        got = [alloc.allocate() for _ in range(1000)]
        elapsed = time.perf_counter() - started
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    print(f"1000 allocations in a /12: {elapsed * 1000:.1f} ms, peak {peak / 1024:.0f} KiB")
    assert len(set(got)) == 1000
    assert all(alloc.contains(ip) and alloc.in_use(ip) for ip in got)
    # None from the static band (the first 256 addresses) while the rest has room.
    low = int(ipaddress.ip_address("10.96.1.0"))
    assert all(int(ipaddress.ip_address(ip)) > low for ip in got)
    assert alloc.free_count == 2**20 - 2 - 1000
    # A million addresses as Python ints would take tens of MiB.
    assert peak < 2 * 1024 * 1024


def test_ip_nearly_full_large_range_finds_the_last_free_addresses() -> None:
    alloc = IPAllocator("10.96.0.0/20", rng=random.Random(9))
    total = alloc.size
    for _ in range(total - 3):
        alloc.allocate()
    last = {alloc.allocate() for _ in range(3)}
    assert len(last) == 3
    assert alloc.free_count == 0
    with pytest.raises(AllocationError):
        alloc.allocate()


@pytest.mark.parametrize("cidr", ["10.0.0.1/32", "10.0.0.0/31"])
def test_ip_degenerate_ranges_are_full(cidr: str) -> None:
    alloc = IPAllocator(cidr)
    assert alloc.size == 0
    with pytest.raises(AllocationError):
        alloc.allocate()


def test_ipv6_range_is_capped_like_kube() -> None:
    alloc = IPAllocator("fd00:10:96::/108")
    assert alloc.size == 65535
    assert alloc.contains("fd00:10:96::1")
    assert alloc.contains("fd00:10:96::ffff")
    assert not alloc.contains("fd00:10:96::1:0")
    ip = alloc.allocate()
    assert ipaddress.ip_address(ip).version == 6
    assert alloc.in_use(ip)


def test_ip_rejects_bad_cidr() -> None:
    with pytest.raises(ValueError):
        IPAllocator("10.96.0.0/33")


# -------------------------------------------------------------- PortAllocator


@pytest.mark.parametrize("text", ["30000-32767", "30000+2767", " 30000-32767 "])
def test_port_range_string(text: str) -> None:
    alloc = PortAllocator.from_range_string(text)
    assert (alloc.first, alloc.last) == (30000, 32767)
    assert alloc.size == alloc.free_count == 2768
    assert alloc.range_string == "30000-32767"


def test_port_single_port_range() -> None:
    alloc = PortAllocator.from_range_string("30080")
    assert alloc.allocate() == 30080
    with pytest.raises(AllocationError):
        alloc.allocate()


@pytest.mark.parametrize("text", ["abc", "32767-30000", "0-10", "30000-70000", ""])
def test_port_range_string_invalid(text: str) -> None:
    with pytest.raises(ValueError):
        PortAllocator.from_range_string(text)


def test_port_allocate_specific_duplicate_and_out_of_range() -> None:
    alloc = PortAllocator(30000, 32767)
    alloc.allocate_specific(30080)
    assert alloc.in_use(30080)
    with pytest.raises(AllocationError) as excinfo:
        alloc.allocate_specific(30080)
    assert str(excinfo.value) == "provided port is already allocated"
    assert excinfo.value.reason == AllocationError.REASON_ALLOCATED
    for port in (29999, 32768, 80):
        with pytest.raises(AllocationError) as excinfo:
            alloc.allocate_specific(port)
        assert str(excinfo.value) == (
            "provided port is not in the valid range. The range of valid ports is 30000-32767"
        )
        assert excinfo.value.reason == AllocationError.REASON_NOT_IN_RANGE
    assert alloc.free_count == 2767


def test_port_full_release_reuse() -> None:
    alloc = PortAllocator(30000, 32767, rng=random.Random(11))
    got = [alloc.allocate() for _ in range(2768)]
    assert sorted(got) == list(range(30000, 32768))
    with pytest.raises(AllocationError) as excinfo:
        alloc.allocate()
    assert str(excinfo.value) == "range is full"
    alloc.release(31000)
    alloc.release(31000)  # idempotent
    alloc.release(80)  # out of range: no-op
    assert alloc.free_count == 1
    assert alloc.allocate() == 31000


def test_port_dynamic_allocation_prefers_upper_band() -> None:
    # 100 ports: kube's static band is max(16, 100/32) = 16 ports (30000-30015).
    alloc = PortAllocator(30000, 30099, rng=random.Random(2))
    first = [alloc.allocate() for _ in range(84)]
    assert min(first) >= 30016
    rest = sorted(alloc.allocate() for _ in range(16))
    assert rest == list(range(30000, 30016))


def test_port_default_range_static_band() -> None:
    # 2768 ports / 32 = 86 static ports: 30000-30085 stay free while the rest has room.
    alloc = PortAllocator(30000, 32767, rng=random.Random(4))
    got = [alloc.allocate() for _ in range(2768 - 86)]
    assert min(got) == 30086
    assert not any(alloc.in_use(p) for p in range(30000, 30086))


# -------------------------------------------------------------- CIDRAllocator


def test_cidr_allocates_lowest_free_subnet_in_order() -> None:
    alloc = CIDRAllocator("10.244.0.0/16", 24)
    assert alloc.size == 256
    assert alloc.allocate() == "10.244.0.0/24"
    assert alloc.allocate() == "10.244.1.0/24"
    alloc.allocate_specific("10.244.2.0/24")
    assert alloc.allocate() == "10.244.3.0/24"
    alloc.release("10.244.0.0/24")
    assert not alloc.in_use("10.244.0.0/24")
    assert alloc.allocate() == "10.244.0.0/24"
    assert alloc.free_count == 252


def test_cidr_duplicate_out_of_range_invalid() -> None:
    alloc = CIDRAllocator("10.244.0.0/16", 24)
    alloc.allocate_specific("10.244.7.0/24")
    with pytest.raises(AllocationError) as excinfo:
        alloc.allocate_specific("10.244.7.0/24")
    assert excinfo.value.reason == AllocationError.REASON_ALLOCATED
    assert "10.244.7.0/24" in str(excinfo.value)
    with pytest.raises(AllocationError) as excinfo:
        alloc.allocate_specific("10.245.0.0/24")
    assert excinfo.value.reason == AllocationError.REASON_NOT_IN_RANGE
    with pytest.raises(AllocationError) as excinfo:
        alloc.allocate_specific("10.0.0.0/8")  # a supernet is not inside the cluster CIDR
    assert excinfo.value.reason == AllocationError.REASON_NOT_IN_RANGE
    with pytest.raises(AllocationError) as excinfo:
        alloc.allocate_specific("nonsense")
    assert excinfo.value.reason == AllocationError.REASON_INVALID
    assert alloc.free_count == 255


def test_cidr_larger_and_smaller_specific_cidrs_mark_covering_subnets() -> None:
    alloc = CIDRAllocator("10.244.0.0/16", 24)
    alloc.allocate_specific("10.244.0.0/23")
    assert alloc.in_use("10.244.0.0/24") and alloc.in_use("10.244.1.0/24")
    alloc.allocate_specific("10.244.2.128/25")
    assert alloc.in_use("10.244.2.0/24")
    assert alloc.allocate() == "10.244.3.0/24"
    alloc.release("10.244.0.0/23")
    assert alloc.allocate() == "10.244.0.0/24"


def test_cidr_full_and_release() -> None:
    alloc = CIDRAllocator("10.244.0.0/23", 24)
    assert [alloc.allocate(), alloc.allocate()] == ["10.244.0.0/24", "10.244.1.0/24"]
    with pytest.raises(AllocationError) as excinfo:
        alloc.allocate()
    assert excinfo.value.reason == AllocationError.REASON_FULL
    alloc.release("10.244.1.0/24")
    alloc.release("10.244.1.0/24")
    alloc.release("192.168.0.0/24")  # foreign: no-op
    assert alloc.allocate() == "10.244.1.0/24"


def test_cidr_whole_cluster_cidr_as_one_subnet() -> None:
    alloc = CIDRAllocator("10.244.0.0/16", 16)
    assert alloc.allocate() == "10.244.0.0/16"
    with pytest.raises(AllocationError):
        alloc.allocate()


@pytest.mark.parametrize(
    ("cluster", "mask"),
    [("10.244.0.0/16", 15), ("10.244.0.0/16", 33), ("10.0.0.0/8", 25), ("bogus", 24)],
)
def test_cidr_bad_configuration(cluster: str, mask: int) -> None:
    with pytest.raises(ValueError):
        CIDRAllocator(cluster, mask)


def test_cidr_ipv6() -> None:
    alloc = CIDRAllocator("fd00:10:244::/56", 64)
    assert alloc.allocate() == "fd00:10:244::/64"
    assert alloc.allocate() == "fd00:10:244:1::/64"


def test_cidr_large_cluster_is_cheap() -> None:
    alloc = CIDRAllocator("10.0.0.0/8", 24)
    assert alloc.size == 65536
    got = [alloc.allocate() for _ in range(500)]
    assert got[-1] == "10.1.243.0/24"
    assert len(set(got)) == 500


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ("10.244.0.0/16", "10.244.3.0/24", True),
        ("10.244.3.0/24", "10.244.0.0/16", True),
        ("10.96.0.0/12", "10.100.0.0/16", True),
        ("10.244.0.0/16", "10.96.0.0/12", False),
        ("10.244.0.0/24", "10.244.1.0/24", False),
        ("10.0.0.0/8", "fd00::/8", False),
        ("fd00::/64", "fd00::1/128", True),
    ],
)
def test_cidrs_overlap(a: str, b: str, expected: bool) -> None:
    assert cidrs_overlap(a, b) is expected
