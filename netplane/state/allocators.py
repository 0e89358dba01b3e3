"""Service ClusterIP, NodePort and node pod-CIDR allocators.

Pure, deterministic (given an injected ``random.Random``) and single-threaded: the
state server runs them on one asyncio loop and persists their results itself.

Behaviour follows kube-apiserver's ``ipallocator``/``portallocator`` and
kube-controller-manager's ``cidrset``:

* A service CIDR excludes its network address and, for IPv4, its broadcast address.
  An IPv6 range is capped to its first 65536 addresses, as kube does.
* Dynamic allocation picks a random start in the *upper* band of the range and scans
  forward to the first free value, falling back to the lower (static) band only when
  the upper one is full. The lower band is ``min(max(16, size/16), 256)`` addresses for
  IPs and ``min(max(16, size/32), 128)`` ports for NodePorts (kube's
  ServiceIPStaticSubrange / ServiceNodePortStaticSubrange), so users who pick fixed
  values from the bottom of the range rarely collide with dynamic ones.
* Error messages use kube's wording so the server can surface them unchanged.

Nothing here materialises the range: used values live in a sparse bitmap (a dict of
64-bit words, created on first use), so a /12 costs memory in proportion to what is
allocated and a free-value search skips 64 values per step.
"""

from __future__ import annotations

import ipaddress
import random
from typing import Final

__all__ = [
    "AllocationError",
    "CIDRAllocator",
    "IPAllocator",
    "PortAllocator",
    "cidrs_overlap",
]

_WORD_BITS: Final = 64
_WORD_FULL: Final = (1 << _WORD_BITS) - 1

# kube caps IPv6 service ranges because its allocator keeps a bitmap of the range.
_IPV6_MAX_RANGE: Final = 65536

# kube-controller-manager's cidrset refuses more than 2**16 node subnets.
_CLUSTER_SUBNET_MAX_DIFF: Final = 16


class AllocationError(Exception):
    """An allocation request that cannot be satisfied.

    ``reason`` is one of the ``REASON_*`` constants so callers can map it to an API
    status (e.g. 422 for not-in-range/allocated, 500-ish for a full range) without
    parsing the message.
    """

    REASON_FULL: Final = "full"
    REASON_ALLOCATED: Final = "allocated"
    REASON_NOT_IN_RANGE: Final = "not-in-range"
    REASON_INVALID: Final = "invalid"

    def __init__(self, message: str, reason: str = REASON_INVALID) -> None:
        super().__init__(message)
        self.reason = reason


class _SparseBitmap:
    """A bitmap over ``[0, size)`` storing only words that have a bit set."""

    __slots__ = ("_words", "count", "size")

    def __init__(self, size: int) -> None:
        self.size = size
        self.count = 0
        self._words: dict[int, int] = {}

    def test(self, index: int) -> bool:
        return bool(self._words.get(index >> 6, 0) >> (index & 63) & 1)

    def set(self, index: int) -> bool:
        """Set a bit; False when it was already set."""
        word_index, bit = index >> 6, 1 << (index & 63)
        word = self._words.get(word_index, 0)
        if word & bit:
            return False
        self._words[word_index] = word | bit
        self.count += 1
        return True

    def clear(self, index: int) -> bool:
        """Clear a bit; False when it was already clear."""
        word_index, bit = index >> 6, 1 << (index & 63)
        word = self._words.get(word_index, 0)
        if not word & bit:
            return False
        word &= ~bit
        if word:
            self._words[word_index] = word
        else:
            # Keep the dict proportional to what is in use.
            del self._words[word_index]
        self.count -= 1
        return True

    def first_clear(self, lo: int, hi: int) -> int | None:
        """Lowest clear index in ``[lo, hi)``, or None."""
        if lo >= hi:
            return None
        word_index = lo >> 6
        last_word = (hi - 1) >> 6
        # Bits below ``lo`` in the first word count as taken.
        below = (1 << (lo & 63)) - 1
        while word_index <= last_word:
            free = ~(self._words.get(word_index, 0) | below) & _WORD_FULL
            if free:
                index = (word_index << 6) + (free & -free).bit_length() - 1
                return index if index < hi else None
            below = 0
            word_index += 1
        return None


class _OffsetAllocator:
    """Offsets ``[0, size)`` split into a static band ``[0, static)`` and a dynamic band.

    Mirrors kube's ``randomScanStrategyWithOffset``: random start in the dynamic band,
    scan forward with wrap-around, then the same in the static band.
    """

    __slots__ = ("_bitmap", "_rng", "_static", "_static_used", "size")

    def __init__(self, size: int, static: int, rng: random.Random) -> None:
        self.size = size
        self._static = max(0, min(static, size))
        self._static_used = 0
        self._bitmap = _SparseBitmap(size)
        self._rng = rng

    @property
    def used(self) -> int:
        return self._bitmap.count

    def has(self, offset: int) -> bool:
        return self._bitmap.test(offset)

    def take(self, offset: int) -> bool:
        if not self._bitmap.set(offset):
            return False
        if offset < self._static:
            self._static_used += 1
        return True

    def release(self, offset: int) -> None:
        if self._bitmap.clear(offset) and offset < self._static:
            self._static_used -= 1

    def take_next(self) -> int | None:
        dynamic_size = self.size - self._static
        dynamic_used = self._bitmap.count - self._static_used
        # The counters tell which band has room, so the scan below never walks a full band.
        if dynamic_used < dynamic_size:
            offset = self._scan_from_random(self._static, self.size)
        elif self._static_used < self._static:
            offset = self._scan_from_random(0, self._static)
        else:
            return None
        assert offset is not None  # a band with room always has a clear bit
        self.take(offset)
        return offset

    def _scan_from_random(self, lo: int, hi: int) -> int | None:
        start = self._rng.randrange(lo, hi)
        found = self._bitmap.first_clear(start, hi)
        if found is None:
            found = self._bitmap.first_clear(lo, start)
        return found


def _calculate_range_offset(size: int, minimum: int, maximum: int, step: int) -> int:
    """kube's ``min(max(minimum, size/step), maximum)``, 0 for tiny ranges."""
    if size <= minimum:
        return 0
    return min(max(minimum, size // step), maximum)


class IPAllocator:
    """ClusterIP allocation over one service CIDR (kube-apiserver's ``ipallocator``)."""

    def __init__(self, cidr: str, rng: random.Random | None = None) -> None:
        try:
            self._network = ipaddress.ip_network(cidr, strict=False)
        except ValueError as e:
            raise ValueError(f"invalid service CIDR {cidr!r}: {e}") from e
        total = self._network.num_addresses
        # No network address in either family; IPv4 also loses its broadcast address.
        usable = min(total, _IPV6_MAX_RANGE) - 1 if self._network.version == 6 else total - 2
        size = max(usable, 0)
        self._base = int(self._network.network_address) + 1
        self._alloc = _OffsetAllocator(
            size, _calculate_range_offset(total, 16, 256, 16), rng or random.Random()
        )

    @property
    def cidr(self) -> str:
        return str(self._network)

    @property
    def size(self) -> int:
        """Number of allocatable addresses."""
        return self._alloc.size

    @property
    def free_count(self) -> int:
        return self._alloc.size - self._alloc.used

    @property
    def used_count(self) -> int:
        return self._alloc.used

    def _offset(self, ip: str) -> int | None:
        try:
            address = ipaddress.ip_address(ip)
        except ValueError:
            return None
        if address.version != self._network.version:
            return None
        offset = int(address) - self._base
        if 0 <= offset < self._alloc.size:
            return offset
        return None

    def contains(self, ip: str) -> bool:
        """True when ``ip`` is an allocatable address of this range."""
        return self._offset(ip) is not None

    def in_use(self, ip: str) -> bool:
        offset = self._offset(ip)
        return offset is not None and self._alloc.has(offset)

    def allocate(self) -> str:
        offset = self._alloc.take_next()
        if offset is None:
            raise AllocationError("range is full", AllocationError.REASON_FULL)
        return str(ipaddress.ip_address(self._base + offset))

    def allocate_specific(self, ip: str) -> None:
        try:
            ipaddress.ip_address(ip)
        except ValueError:
            raise AllocationError(
                f"provided IP {ip!r} is not a valid IP address", AllocationError.REASON_INVALID
            ) from None
        offset = self._offset(ip)
        if offset is None:
            raise AllocationError(
                f"provided IP is not in the valid range. The range of valid IPs is {self._network}",
                AllocationError.REASON_NOT_IN_RANGE,
            )
        if not self._alloc.take(offset):
            # kube's exact text; the caller prefixes "failed to allocate IP <ip>: ".
            raise AllocationError("provided IP is already allocated", AllocationError.REASON_ALLOCATED)

    def release(self, ip: str) -> None:
        """Free ``ip``; releasing a free, foreign or malformed address is a no-op (as in kube)."""
        offset = self._offset(ip)
        if offset is not None:
            self._alloc.release(offset)


class PortAllocator:
    """NodePort allocation over an inclusive port range (kube-apiserver's ``portallocator``)."""

    def __init__(self, first: int, last: int, rng: random.Random | None = None) -> None:
        if not 0 < first <= last <= 65535:
            raise ValueError(f"invalid port range {first}-{last}")
        self.first = first
        self.last = last
        size = last - first + 1
        self._alloc = _OffsetAllocator(
            size, _calculate_range_offset(size, 16, 128, 32), rng or random.Random()
        )

    @classmethod
    def from_range_string(cls, value: str, rng: random.Random | None = None) -> PortAllocator:
        """Parse kube's port-range syntax: ``30000-32767``, ``30000+2767`` or ``30000``."""
        text = value.strip()
        try:
            if "-" in text:
                low, high = text.split("-", 1)
                first, last = int(low), int(high)
            elif "+" in text:
                low, extra = text.split("+", 1)
                first = int(low)
                last = first + int(extra)
            else:
                first = last = int(text)
        except ValueError:
            raise ValueError(f"invalid port range {value!r}") from None
        return cls(first, last, rng)

    @property
    def range_string(self) -> str:
        return f"{self.first}-{self.last}"

    @property
    def size(self) -> int:
        return self._alloc.size

    @property
    def free_count(self) -> int:
        return self._alloc.size - self._alloc.used

    @property
    def used_count(self) -> int:
        return self._alloc.used

    def contains(self, port: int) -> bool:
        return self.first <= port <= self.last

    def in_use(self, port: int) -> bool:
        return self.contains(port) and self._alloc.has(port - self.first)

    def allocate(self) -> int:
        offset = self._alloc.take_next()
        if offset is None:
            raise AllocationError("range is full", AllocationError.REASON_FULL)
        return self.first + offset

    def allocate_specific(self, port: int) -> None:
        if not self.contains(port):
            raise AllocationError(
                f"provided port is not in the valid range. The range of valid ports is {self.range_string}",
                AllocationError.REASON_NOT_IN_RANGE,
            )
        if not self._alloc.take(port - self.first):
            raise AllocationError("provided port is already allocated", AllocationError.REASON_ALLOCATED)

    def release(self, port: int) -> None:
        """Free ``port``; releasing a free or out-of-range port is a no-op."""
        if self.contains(port):
            self._alloc.release(port - self.first)


class CIDRAllocator:
    """Node pod-CIDR allocation: fixed-size subnets carved out of the cluster CIDR.

    Differs from kube's ``cidrset`` in one respect, on purpose: kube hands out subnets
    round-robin (the one after the last allocated), this hands out the lowest free one,
    so a released subnet is reused first and allocations are easy to predict.
    """

    def __init__(self, cluster_cidr: str, mask_size: int) -> None:
        try:
            self._network = ipaddress.ip_network(cluster_cidr, strict=False)
        except ValueError as e:
            raise ValueError(f"invalid cluster CIDR {cluster_cidr!r}: {e}") from e
        if mask_size < self._network.prefixlen:
            raise ValueError(
                f"node CIDR mask size {mask_size} is smaller than the cluster CIDR's prefix "
                f"length {self._network.prefixlen}"
            )
        if mask_size > self._network.max_prefixlen:
            raise ValueError(f"node CIDR mask size {mask_size} is too large for {self._network}")
        if mask_size - self._network.prefixlen > _CLUSTER_SUBNET_MAX_DIFF:
            raise ValueError(
                f"node CIDR mask size {mask_size} is too large: at most "
                f"{_CLUSTER_SUBNET_MAX_DIFF} bits more than the cluster CIDR's /{self._network.prefixlen}"
            )
        self.mask_size = mask_size
        self._shift = self._network.max_prefixlen - mask_size
        self._base = int(self._network.network_address)
        self._count = 1 << (mask_size - self._network.prefixlen)
        self._bitmap = _SparseBitmap(self._count)

    @property
    def cluster_cidr(self) -> str:
        return str(self._network)

    @property
    def size(self) -> int:
        return self._count

    @property
    def free_count(self) -> int:
        return self._count - self._bitmap.count

    def _subnet(self, index: int) -> str:
        address = ipaddress.ip_address(self._base + (index << self._shift))
        return f"{address}/{self.mask_size}"

    def _indices(self, cidr: str) -> range:
        """The subnet indices ``cidr`` covers; it must lie inside the cluster CIDR.

        A CIDR larger than the mask size covers several subnets; a smaller one marks the
        subnet that contains it, as kube's ``Occupy`` does.
        """
        try:
            network = ipaddress.ip_network(cidr, strict=False)
        except ValueError:
            raise AllocationError(
                f"provided CIDR {cidr!r} is not a valid CIDR", AllocationError.REASON_INVALID
            ) from None
        if network.version != self._network.version or not network.subnet_of(self._network):  # type: ignore[arg-type]
            raise AllocationError(
                f"CIDR {cidr} is out of the range of cluster CIDR {self._network}",
                AllocationError.REASON_NOT_IN_RANGE,
            )
        first = (int(network.network_address) - self._base) >> self._shift
        last = (int(network.broadcast_address) - self._base) >> self._shift
        return range(first, last + 1)

    def allocate(self) -> str:
        index = self._bitmap.first_clear(0, self._count)
        if index is None:
            raise AllocationError(
                "CIDR allocation failed; there are no remaining CIDRs left to allocate in the accepted range",
                AllocationError.REASON_FULL,
            )
        self._bitmap.set(index)
        return self._subnet(index)

    def allocate_specific(self, cidr: str) -> None:
        indices = self._indices(cidr)
        taken = [i for i in indices if self._bitmap.test(i)]
        if taken:
            raise AllocationError(
                f"provided CIDR {cidr} is already allocated ({self._subnet(taken[0])} is in use)",
                AllocationError.REASON_ALLOCATED,
            )
        for index in indices:
            self._bitmap.set(index)

    def in_use(self, cidr: str) -> bool:
        """True when any subnet ``cidr`` covers is allocated; False for foreign CIDRs."""
        try:
            indices = self._indices(cidr)
        except AllocationError:
            return False
        return any(self._bitmap.test(i) for i in indices)

    def contains(self, cidr: str) -> bool:
        try:
            self._indices(cidr)
        except AllocationError:
            return False
        return True

    def release(self, cidr: str) -> None:
        """Free the subnets ``cidr`` covers; foreign or free CIDRs are a no-op."""
        try:
            indices = self._indices(cidr)
        except AllocationError:
            return
        for index in indices:
            self._bitmap.clear(index)


def cidrs_overlap(a: str, b: str) -> bool:
    """True when two CIDRs share at least one address (never across IP families)."""
    net_a = ipaddress.ip_network(a, strict=False)
    net_b = ipaddress.ip_network(b, strict=False)
    if net_a.version != net_b.version:
        return False
    return net_a.overlaps(net_b)
