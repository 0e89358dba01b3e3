"""eBPF through bpf(2) and tc, without clang, libbpf or bpffs: maps, program loading, tc attachment.

The only module here (with btf.py) that talks to the kernel's BPF side. Programs arrive as
ready bytecode (netplane/node/fastpath.py assembles them); this module creates and fills
maps, loads programs (a verifier rejection raises with the verifier's log), and attaches
a program as a direct-action bpf filter on a device's clsact ingress hook.

Lifetimes, which make an agent restart harmless: a tc filter holds its program, a program
holds its maps, so nothing here needs a process or a pinned file to stay alive. A restarted
agent finds its maps again by name (MAP_GET_NEXT_ID + OBJ_GET_INFO_BY_FD), loads fresh
programs over them and replaces each filter in place (same prio and handle): the kernel
swaps the program atomically, so traffic never sees a gap. Map names carry the network
namespace's inode number, because several lab nodes share one kernel (and its BPF id space).
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass

SYS_BPF = {"x86_64": 321, "aarch64": 280}.get(os.uname().machine, 321)

# enum bpf_cmd
MAP_CREATE, MAP_LOOKUP_ELEM, MAP_UPDATE_ELEM, MAP_DELETE_ELEM, MAP_GET_NEXT_KEY, PROG_LOAD = 0, 1, 2, 3, 4, 5
MAP_GET_NEXT_ID, MAP_GET_FD_BY_ID, OBJ_GET_INFO_BY_FD = 12, 14, 15
# enum bpf_map_type / bpf_prog_type
MAP_TYPE_HASH, MAP_TYPE_LPM_TRIE = 1, 11
PROG_TYPE_SCHED_CLS = 3
F_NO_PREALLOC = 1  # required for LPM tries
OBJ_NAME_LEN = 16  # including the NUL

# tc: the clsact qdisc's ingress hook as a filter parent (TC_H_MAKE(TC_H_CLSACT, TC_H_MIN_INGRESS)).
TC_CLSACT_INGRESS = 0xFFFFFFF2
FILTER_PRIO = 1
FILTER_HANDLE = 1

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


class BPFError(OSError):
    pass


def _bpf(cmd: int, attr: bytearray, what: str) -> int:
    buf = (ctypes.c_char * len(attr)).from_buffer(attr)
    ret = _libc.syscall(SYS_BPF, cmd, buf, len(attr))
    if ret < 0:
        e = ctypes.get_errno()
        raise BPFError(e, f"{what}: {os.strerror(e)}")
    return int(ret)


def _name_bytes(name: str) -> bytes:
    raw = name.encode()
    if len(raw) >= OBJ_NAME_LEN or not all(c.isalnum() or c in "_." for c in name):
        raise ValueError(f"bad BPF object name {name!r} (at most 15 of [A-Za-z0-9_.])")
    return raw.ljust(OBJ_NAME_LEN, b"\0")


# -- maps ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MapSpec:
    name: str
    map_type: int
    key_size: int
    value_size: int
    max_entries: int
    flags: int = 0


def map_create(spec: MapSpec) -> int:
    attr = bytearray(72)
    struct.pack_into("<IIIII", attr, 0, spec.map_type, spec.key_size, spec.value_size, spec.max_entries,
                     spec.flags)
    attr[28:28 + OBJ_NAME_LEN] = _name_bytes(spec.name)  # map_name
    return _bpf(MAP_CREATE, attr, f"create map {spec.name}")


def _elem_attr(fd: int, key: ctypes.Array[ctypes.c_char], value: ctypes.Array[ctypes.c_char] | None,
               flags: int = 0) -> bytearray:
    attr = bytearray(32)
    struct.pack_into("<IIQQQ", attr, 0, fd, 0, ctypes.addressof(key),
                     ctypes.addressof(value) if value is not None else 0, flags)
    return attr


def map_update(fd: int, key: bytes, value: bytes) -> None:
    k, v = ctypes.create_string_buffer(key, len(key)), ctypes.create_string_buffer(value, len(value))
    _bpf(MAP_UPDATE_ELEM, _elem_attr(fd, k, v), "map update")


def map_delete(fd: int, key: bytes) -> bool:
    """Delete one key; False if it was not there (idempotent)."""
    k = ctypes.create_string_buffer(key, len(key))
    try:
        _bpf(MAP_DELETE_ELEM, _elem_attr(fd, k, None), "map delete")
    except BPFError as e:
        if e.errno == errno.ENOENT:
            return False
        raise
    return True


def map_items(fd: int, key_size: int, value_size: int) -> dict[bytes, bytes]:
    """The map's whole contents (keys listed with MAP_GET_NEXT_KEY, then each looked up)."""
    out: dict[bytes, bytes] = {}
    for key in _map_keys(fd, key_size):
        k = ctypes.create_string_buffer(key, key_size)
        v = ctypes.create_string_buffer(value_size)
        try:
            _bpf(MAP_LOOKUP_ELEM, _elem_attr(fd, k, v), "map lookup")
        except BPFError as e:
            if e.errno == errno.ENOENT:
                continue  # deleted meanwhile
            raise
        out[key] = v.raw
    return out


def _map_keys(fd: int, key_size: int) -> Iterator[bytes]:
    nxt = ctypes.create_string_buffer(key_size)
    cur: ctypes.Array[ctypes.c_char] | None = None
    for _ in range(1 << 20):  # bounded: a map never holds more
        attr = bytearray(32)
        struct.pack_into("<IIQQ", attr, 0, fd, 0, ctypes.addressof(cur) if cur is not None else 0,
                         ctypes.addressof(nxt))
        try:
            _bpf(MAP_GET_NEXT_KEY, attr, "map next key")
        except BPFError as e:
            if e.errno == errno.ENOENT:
                return
            raise
        yield nxt.raw
        cur = ctypes.create_string_buffer(nxt.raw, key_size)


def _map_info(fd: int) -> tuple[MapSpec, int]:
    """(shape and name, id) of a map fd: struct bpf_map_info's first fields."""
    info = ctypes.create_string_buffer(96)
    attr = bytearray(16)
    struct.pack_into("<IIQ", attr, 0, fd, len(info), ctypes.addressof(info))
    _bpf(OBJ_GET_INFO_BY_FD, attr, "map info")
    map_type, map_id, key_size, value_size, max_entries, flags = struct.unpack_from("<IIIIII", info.raw)
    name = info.raw[24:24 + OBJ_NAME_LEN].split(b"\0")[0].decode(errors="replace")
    return MapSpec(name, map_type, key_size, value_size, max_entries, flags), map_id


def find_map(spec: MapSpec) -> int | None:
    """An fd of an existing map with exactly this name and shape, or None."""
    map_id = 0
    while True:
        attr = bytearray(12)
        struct.pack_into("<I", attr, 0, map_id)
        try:
            _bpf(MAP_GET_NEXT_ID, attr, "map next id")
        except BPFError as e:
            if e.errno == errno.ENOENT:
                return None
            raise
        map_id = struct.unpack_from("<I", attr, 4)[0]
        attr = bytearray(12)
        struct.pack_into("<I", attr, 0, map_id)
        try:
            fd = _bpf(MAP_GET_FD_BY_ID, attr, "map fd by id")
        except BPFError as e:
            if e.errno == errno.ENOENT:
                continue  # freed meanwhile
            raise
        try:
            have, _ = _map_info(fd)
        except BPFError:
            os.close(fd)
            raise
        if have == spec:
            return fd
        os.close(fd)


def ensure_map(name: str, map_type: int, key_size: int, value_size: int, max_entries: int,
               flags: int = 0) -> tuple[int, bool]:
    """(fd, adopted): the existing map of this name and shape, else a new one."""
    spec = MapSpec(name, map_type, key_size, value_size, max_entries, flags)
    fd = find_map(spec)
    if fd is not None:
        return fd, True
    return map_create(spec), False


# -- programs ----------------------------------------------------------------------------------


def prog_load(insns: bytes, name: str, prog_type: int = PROG_TYPE_SCHED_CLS, license_: str = "GPL") -> int:
    """Load a program; a verifier rejection raises BPFError carrying the verifier's log.

    GPL: the fib lookup, redirect and conntrack kfuncs are GPL-only.
    """
    if not insns or len(insns) % 8:
        raise ValueError("program bytecode must be a non-empty multiple of 8 bytes")
    code = ctypes.create_string_buffer(insns, len(insns))
    lic = ctypes.create_string_buffer(license_.encode())
    log = ctypes.create_string_buffer(1 << 20)

    def attempt(log_level: int) -> int:
        attr = bytearray(144)
        struct.pack_into("<IIQQIIQ", attr, 0, prog_type, len(insns) // 8, ctypes.addressof(code),
                         ctypes.addressof(lic), log_level, len(log) if log_level else 0,
                         ctypes.addressof(log) if log_level else 0)
        attr[48:48 + OBJ_NAME_LEN] = _name_bytes(name)  # prog_name
        return _bpf(PROG_LOAD, attr, f"load program {name}")

    try:
        return attempt(0)  # no log on the normal path: logging slows the verifier down
    except BPFError:
        pass
    try:
        return attempt(1)
    except BPFError as e:
        text = log.value.decode(errors="replace").strip()
        raise BPFError(e.errno, f"the verifier rejected program {name}: {os.strerror(e.errno or 0)}\n"
                                f"{text[-4000:]}") from None


# -- tc attachment -------------------------------------------------------------------------------


def ensure_tc_ingress(ifindex: int, prog_fd: int, name: str) -> None:
    """Make `prog_fd` the direct-action bpf filter on `ifindex`'s clsact ingress (idempotent).

    The filter always sits at the same prio/handle, so a second call (a restarted agent, a new
    program version) replaces the program in place, without a moment with no filter.
    """
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError

    with IPRoute() as ipr:
        try:
            ipr.tc("add", "clsact", ifindex)
        except NetlinkError as e:
            if e.code != errno.EEXIST:
                raise BPFError(e.code, f"cannot add clsact on ifindex {ifindex}: {e}") from e
        try:
            ipr.tc("replace-filter", "bpf", ifindex, FILTER_HANDLE, fd=prog_fd, name=name,
                   parent=TC_CLSACT_INGRESS, prio=FILTER_PRIO, classid=1, direct_action=True)
        except NetlinkError as e:
            raise BPFError(e.code, f"cannot attach bpf program {name} on ifindex {ifindex}: {e}") from e


def tc_ingress_names(ifindex: int) -> list[str]:
    """Names of the bpf filters on a device's clsact ingress (for checks and tests)."""
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError

    with IPRoute() as ipr:
        try:
            filters = ipr.get_filters(ifindex, parent=TC_CLSACT_INGRESS)
        except NetlinkError:
            return []
        out = []
        for f in filters:
            opts = f.get_attr("TCA_OPTIONS")
            name = opts.get_attr("TCA_BPF_NAME") if opts is not None and hasattr(opts, "get_attr") else None
            if name:
                out.append(str(name))
        return out


def remove_tc_ingress(ifindex: int, name: str) -> bool:
    """Remove the bpf filters called `name` from a device's clsact ingress; False if there were none."""
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError

    removed = False
    with IPRoute() as ipr:
        try:
            filters = ipr.get_filters(ifindex, parent=TC_CLSACT_INGRESS)
        except NetlinkError:
            return False
        for f in filters:
            opts = f.get_attr("TCA_OPTIONS")
            if opts is None or not hasattr(opts, "get_attr") or opts.get_attr("TCA_BPF_NAME") != name:
                continue
            try:
                ipr.tc("del-filter", "bpf", ifindex, f["handle"], parent=TC_CLSACT_INGRESS, prio=f["info"] >> 16)
                removed = True
            except NetlinkError as e:
                if e.code not in (errno.ENOENT, errno.ENODEV, errno.EINVAL):
                    raise BPFError(e.code, f"cannot remove bpf program {name} from ifindex {ifindex}: {e}") from e
    return removed


# -- links and namespace ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LinkFacts:
    ifindex: int
    mac: str
    master_mac: str | None  # the bridge's MAC, for a bridge port


def link_facts() -> dict[str, LinkFacts]:
    """Every device of this namespace by name (one netlink dump)."""
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        links = list(ipr.get_links())
    macs = {int(link["index"]): str(link.get_attr("IFLA_ADDRESS")) for link in links}
    out = {}
    for link in links:
        master = link.get_attr("IFLA_MASTER")
        out[str(link.get_attr("IFLA_IFNAME"))] = LinkFacts(int(link["index"]), macs[int(link["index"])],
                                                           macs.get(int(master)) if master else None)
    return out


def ifindex_with_address(address: str) -> int | None:
    """The device holding `address` (the node's underlay device)."""
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        for a in ipr.get_addr(address=address):
            return int(a["index"])
    return None


def netns_inode() -> int:
    """Identifies this network namespace among all those sharing the kernel (and its BPF objects)."""
    return os.stat("/proc/thread-self/ns/net").st_ino


class LinuxBPF:
    """The kernel side of netplane/node/fastpath.py's BPFKernel protocol."""

    ensure_map = staticmethod(ensure_map)
    map_items = staticmethod(map_items)
    map_update = staticmethod(map_update)
    map_delete = staticmethod(map_delete)
    prog_load = staticmethod(prog_load)
    ensure_tc_ingress = staticmethod(ensure_tc_ingress)
    tc_ingress_names = staticmethod(tc_ingress_names)
    remove_tc_ingress = staticmethod(remove_tc_ingress)
    link_facts = staticmethod(link_facts)
    ifindex_with_address = staticmethod(ifindex_with_address)
    netns_inode = staticmethod(netns_inode)

    @staticmethod
    def kfunc_ids() -> tuple[int, int, int]:
        """(bpf_skb_ct_lookup id, bpf_ct_release id, offsetof(struct nf_conn, status))."""
        from netplane.kernel import btf

        b = btf.vmlinux()
        return (b.func_id("bpf_skb_ct_lookup"), b.func_id("bpf_ct_release"),
                b.member_offset("nf_conn", "status"))

    @staticmethod
    def close(fd: int) -> None:
        os.close(fd)
