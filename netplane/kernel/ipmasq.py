"""ipMasq for pods: masquerade pod traffic that leaves the pod network (nftables).

One table, `inet netplane_cni`, in the namespace the plugin runs in:

    map pods4/pods6      pod IP -> goto net-<hash of network name>   (comment: net, id, ifname)
    chain postrouting    nat hook: ip saddr vmap @pods4; ip6 saddr vmap @pods6
    chain net-<hash>     return for the network's own subnets and multicast, else masquerade

as the reference bridge's per-container iptables chain does (`-d subnet -j
ACCEPT`, `! -d 224.0.0.0/4 -j MASQUERADE`). Each change is one nft
transaction, and every statement in it is idempotent, so repeated ADDs, DELs
and concurrent callers converge. This uses nftables directly rather than the
iptables front end: the service proxy owns the iptables rules, and an
nftables table of our own cannot collide with its chains.

Transactions go through the system's libnftables in this process (ctypes, one
context per thread and namespace) when it loads, which saves a fork and exec
of `nft` (~5-10 ms of CPU) per pod; otherwise through `nft -f -`. Both take
the same script and report the same errors.
"""

from __future__ import annotations

import ctypes
import hashlib
import ipaddress
import json
import os
import subprocess
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

TABLE = "netplane_cni"
NFT = "nft"

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class IPMasqError(Exception):
    pass


@dataclass(frozen=True, slots=True)
class MasqEntry:
    ip: IPAddress
    chain: str
    comment: str


def chain_name(network: str) -> str:
    return "net-" + hashlib.sha256(network.encode()).hexdigest()[:16]


def _map(ip: IPAddress) -> str:
    return "pods4" if ip.version == 4 else "pods6"


def _skeleton(chain: str) -> list[str]:
    t = f"inet {TABLE}"
    return [
        f"add table {t}",
        f"add map {t} pods4 {{ type ipv4_addr : verdict; }}",
        f"add map {t} pods6 {{ type ipv6_addr : verdict; }}",
        f"add chain {t} postrouting {{ type nat hook postrouting priority srcnat; policy accept; }}",
        f"flush chain {t} postrouting",
        f"add rule {t} postrouting ip saddr vmap @pods4",
        f"add rule {t} postrouting ip6 saddr vmap @pods6",
        f"add chain {t} {chain}",
    ]


NFT_CTX_OUTPUT_JSON = 1 << 4


class _LibNft:
    """One libnftables context; its netlink socket lives in the namespace of the thread that made it."""

    _lib: ctypes.CDLL | None = None
    _load_failed = False
    _load_lock = threading.Lock()

    @classmethod
    def load(cls) -> ctypes.CDLL | None:
        with cls._load_lock:
            if cls._lib is None and not cls._load_failed:
                try:
                    lib = ctypes.CDLL("libnftables.so.1")
                    lib.nft_ctx_new.restype = ctypes.c_void_p
                    lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
                    lib.nft_ctx_free.argtypes = [ctypes.c_void_p]
                    for name in ("nft_ctx_buffer_output", "nft_ctx_buffer_error"):
                        getattr(lib, name).argtypes = [ctypes.c_void_p]
                    lib.nft_ctx_output_set_flags.argtypes = [ctypes.c_void_p, ctypes.c_uint]
                    lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
                    lib.nft_run_cmd_from_buffer.restype = ctypes.c_int
                    for name in ("nft_ctx_get_output_buffer", "nft_ctx_get_error_buffer"):
                        getattr(lib, name).argtypes = [ctypes.c_void_p]
                        getattr(lib, name).restype = ctypes.c_char_p
                    cls._lib = lib
                except (OSError, AttributeError):
                    cls._load_failed = True
            return cls._lib

    def __init__(self, lib: ctypes.CDLL) -> None:
        self._api = lib
        self._ctx = lib.nft_ctx_new(0)
        if not self._ctx:
            raise OSError("nft_ctx_new failed")
        lib.nft_ctx_buffer_output(self._ctx)
        lib.nft_ctx_buffer_error(self._ctx)

    def close(self) -> None:
        if self._ctx:
            self._api.nft_ctx_free(self._ctx)
            self._ctx = None

    def run(self, script: str, json_out: bool = False) -> tuple[int, str, str]:
        api = self._api
        api.nft_ctx_output_set_flags(self._ctx, NFT_CTX_OUTPUT_JSON if json_out else 0)
        rc = api.nft_run_cmd_from_buffer(self._ctx, script.encode())
        out = api.nft_ctx_get_output_buffer(self._ctx) or b""
        err = api.nft_ctx_get_error_buffer(self._ctx) or b""
        return rc, out.decode(errors="replace"), err.decode(errors="replace")


_contexts = threading.local()


def _context() -> _LibNft | None:
    """This thread's libnftables context for its current namespace; None when the library is missing."""
    if os.environ.get("NETPLANE_NFT") == "exec":
        return None
    lib = _LibNft.load()
    if lib is None:
        return None
    try:
        st = os.stat("/proc/thread-self/ns/net")
    except OSError:
        return None
    key = (st.st_dev, st.st_ino)
    # One context per thread, for the namespace it is in now: a context holds a netlink
    # socket, which would keep a namespace alive after it was deleted, so an old one goes.
    held: tuple[tuple[int, int], _LibNft] | None = getattr(_contexts, "held", None)
    if held is not None and held[0] == key:
        return held[1]
    if held is not None:
        held[1].close()
        _contexts.held = None
    try:
        ctx = _LibNft(lib)
    except OSError:
        return None
    _contexts.held = (key, ctx)
    return ctx


def _nft(script: str, json_out: bool = False) -> tuple[int, str, str]:
    """(status, stdout, stderr) of one nft transaction (json_out: one listing command), in-process if possible."""
    ctx = _context()
    if ctx is not None:
        return ctx.run(script, json_out)
    # `nft -j -f -` answers a listing with nothing: JSON output wants the command as arguments.
    cmd = [NFT, "-j", *script.split()] if json_out else [NFT, "-f", "-"]
    try:
        proc = subprocess.run(cmd, input=None if json_out else script, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise IPMasqError(f"cannot run nft: {e}") from e
    return proc.returncode, proc.stdout, proc.stderr


def _run(script: str, what: str) -> str:
    rc, out, err = _nft(script)
    if rc != 0:
        raise IPMasqError(f"{what}: nft failed: {err.strip()}")
    return out


def ensure(network: str, subnets: Sequence[IPNetwork], ips: Iterable[IPAddress], comment: str) -> None:
    """Masquerade traffic from `ips` to anywhere outside `subnets` and multicast."""
    chain = chain_name(network)
    t = f"inet {TABLE}"
    lines = _skeleton(chain)
    lines.append(f"flush chain {t} {chain}")
    for subnet in subnets:
        family = "ip" if subnet.version == 4 else "ip6"
        lines.append(f"add rule {t} {chain} {family} daddr {subnet} return")
    lines.append(f"add rule {t} {chain} ip daddr 224.0.0.0/4 return")
    lines.append(f"add rule {t} {chain} ip6 daddr ff00::/8 return")
    lines.append(f"add rule {t} {chain} masquerade")
    safe_comment = comment.replace('"', "'")[:120]
    for ip in ips:
        # delete-then-add makes the element exactly this one, whatever was there.
        lines.append(f"add element {t} {_map(ip)} {{ {ip} : goto {chain} }}")
        lines.append(f"delete element {t} {_map(ip)} {{ {ip} }}")
        lines.append(f'add element {t} {_map(ip)} {{ {ip} comment "{safe_comment}" : goto {chain} }}')
    _run("\n".join(lines) + "\n", f"cannot set up ipMasq for {network}")


def remove(network: str, ips: Iterable[IPAddress]) -> None:
    """Stop masquerading `ips`; succeeds when they were never there."""
    ips = list(ips)
    if not ips:
        return
    chain = chain_name(network)
    t = f"inet {TABLE}"
    lines = _skeleton(chain)
    for ip in ips:
        lines.append(f"add element {t} {_map(ip)} {{ {ip} : goto {chain} }}")
        lines.append(f"delete element {t} {_map(ip)} {{ {ip} }}")
    _run("\n".join(lines) + "\n", f"cannot tear down ipMasq for {network}")


def entries() -> list[MasqEntry]:
    """Every masqueraded pod IP in this namespace (empty if the table does not exist)."""
    rc, stdout, stderr = _nft(f"list table inet {TABLE}", json_out=True)
    if rc != 0:
        if "No such file or directory" in stderr:
            return []
        raise IPMasqError(f"cannot list ipMasq entries: {stderr.strip()}")
    out: list[MasqEntry] = []
    for item in json.loads(stdout).get("nftables", []):
        m = item.get("map")
        if not m or m.get("name") not in ("pods4", "pods6"):
            continue
        for key, verdict in m.get("elem", []):
            if isinstance(key, dict):
                elem = key.get("elem", {})
                val, comment = elem.get("val"), elem.get("comment", "")
            else:
                val, comment = key, ""
            target = (verdict.get("goto") or verdict.get("jump") or {}).get("target", "")
            out.append(MasqEntry(ipaddress.ip_address(val), target, comment))
    return out


def remove_chain_if_unused(network: str) -> None:
    """Drop a network's chain once no pod IP points at it (GC)."""
    chain = chain_name(network)
    if any(e.chain == chain for e in entries()):
        return
    t = f"inet {TABLE}"
    try:
        _run(f"add chain {t} {chain}\nflush chain {t} {chain}\ndelete chain {t} {chain}\n",
             f"cannot remove chain {chain}")
    except IPMasqError:
        pass  # the table is gone or someone re-used the chain meanwhile: nothing to collect
