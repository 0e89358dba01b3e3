"""The built-in allocator: pure logic over a Store (host-local's algorithm).

For each range set one address is picked: round-robin starting after the last
reserved address (so a freed address is not reused at once), across the set's
ranges in order, wrapping around, skipping each range's gateway and anything
already reserved. Network and broadcast addresses are outside every range by
construction (config.parse_range). A requested address (runtimeConfig.ips or
CNI_ARGS IP=) is reserved as is, or the allocation fails.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from ..config import IpamConf, Range, RangeSet
from ..errors import CODE_INVALID_CONFIG, CODE_IPAM_EXHAUSTED, CODE_IPAM_STORE, CNIError
from ..result import DNS, IPAddress, IPConfig, Result
from .store import Store


@dataclass(frozen=True, slots=True)
class Allocation:
    ip: IPAddress
    range: Range
    range_set: int


def _fmt_set(rs: RangeSet) -> str:
    return ",".join(f"{r.range_start}-{r.range_end}" for r in rs)


def iterate(rs: RangeSet, last: IPAddress | None) -> Iterator[tuple[IPAddress, Range]]:
    """Every address of the set once, starting just after `last` if it is in the set."""
    start_range, start_ip = 0, rs[0].range_start
    if last is not None:
        for n, r in enumerate(rs):
            if r.contains(last):
                if last < r.range_end:  # type: ignore[operator]
                    start_range, start_ip = n, last + 1
                else:
                    start_range = (n + 1) % len(rs)
                    start_ip = rs[start_range].range_start
                break
    for step in range(len(rs) + 1):
        n = (start_range + step) % len(rs)
        r = rs[n]
        if step == 0:
            lo, hi = start_ip, r.range_end
        elif step == len(rs):
            # Back in the first range: the part before where we started.
            lo, hi = r.range_start, start_ip - 1
        else:
            lo, hi = r.range_start, r.range_end
        ip = lo
        while ip <= hi:  # type: ignore[operator]
            yield ip, r
            ip = ip + 1


def allocate_in_set(store: Store, rs: RangeSet, set_index: int, container_id: str, ifname: str,
                    requested: IPAddress | None = None) -> Allocation:
    """Reserve one address of range set `set_index`; the caller holds store.lock()."""
    if requested is not None:
        for r in rs:
            if r.contains(requested):
                if requested == r.gateway or not store.reserve(container_id, ifname, requested, set_index):
                    raise CNIError(CODE_IPAM_EXHAUSTED, f"requested IP address {requested} is not available",
                                   f"range set {_fmt_set(rs)}")
                return Allocation(requested, r, set_index)
        raise CNIError(CODE_INVALID_CONFIG, f"requested IP address {requested} is outside range set",
                       _fmt_set(rs))
    for ip, r in iterate(rs, store.last_reserved_ip(set_index)):
        if ip == r.gateway:
            continue
        if store.reserve(container_id, ifname, ip, set_index):
            return Allocation(ip, r, set_index)
    raise CNIError(CODE_IPAM_EXHAUSTED, "no IP addresses available in range set", _fmt_set(rs))


def allocate(store: Store, conf: IpamConf, container_id: str, ifname: str,
             requested: Sequence[IPAddress] = ()) -> list[Allocation]:
    """One address per range set, all or nothing."""
    pending = list(requested)
    with store.lock():
        held = store.get_by_id(container_id, ifname)
        if held:
            raise CNIError(CODE_IPAM_STORE, f"{container_id}/{ifname} already holds {', '.join(map(str, held))}",
                           "duplicate allocation is not allowed")
        done: list[Allocation] = []
        try:
            for n, rs in enumerate(conf.range_sets):
                want = next((ip for ip in pending if any(r.contains(ip) for r in rs)), None)
                if want is not None:
                    pending.remove(want)
                done.append(allocate_in_set(store, rs, n, container_id, ifname, want))
            if pending:
                raise CNIError(CODE_INVALID_CONFIG, "requested IP addresses are in no range set",
                               ", ".join(map(str, pending)))
        except BaseException:
            for a in done:
                store.release(a.ip)
            raise
        return done


def release(store: Store, container_id: str, ifname: str) -> list[IPAddress]:
    with store.lock():
        return store.release_by_id(container_id, ifname)


def to_result(conf: IpamConf, allocations: Sequence[Allocation]) -> Result:
    """The IPAM result (host-local's): IPs with their gateways, the configured routes and DNS."""
    import ipaddress

    ips = tuple(
        IPConfig(ipaddress.ip_interface(f"{a.ip}/{a.range.subnet.prefixlen}"), a.range.gateway)
        for a in allocations
    )
    return Result(ips=ips, routes=conf.routes, dns=conf.dns if not conf.dns.is_empty() else DNS())


def free_count(store: Store, conf: IpamConf) -> list[int]:
    """Free addresses per range set (for STATUS): range size minus gateways and reservations."""
    reserved = store.reservations()
    out = []
    for rs in conf.range_sets:
        total = 0
        for r in rs:
            total += int(r.range_end) - int(r.range_start) + 1
            if r.contains(r.gateway):
                total -= 1
        used = sum(1 for ip in reserved if any(r.contains(ip) and ip != r.gateway for r in rs))
        out.append(total - used)
    return out
