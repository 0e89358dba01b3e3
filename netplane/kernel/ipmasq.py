"""ipMasq for pods: masquerade pod traffic that leaves the pod network (nftables).

One table, `inet netplane_cni`, in the namespace the plugin runs in:

    map pods4/pods6      pod IP -> goto net-<hash of network name>   (comment: net, id, ifname)
    chain postrouting    nat hook: ip saddr vmap @pods4; ip6 saddr vmap @pods6
    chain net-<hash>     return for the network's own subnets and multicast, else masquerade

as the reference bridge's per-container iptables chain does (`-d subnet -j
ACCEPT`, `! -d 224.0.0.0/4 -j MASQUERADE`). Each change is one `nft -f`
transaction, and every statement in it is idempotent, so repeated ADDs, DELs
and concurrent callers converge. This uses nftables directly rather than the
iptables front end: the service proxy owns the iptables rules, and an
nftables table of our own cannot collide with its chains.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import subprocess
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


def _run(script: str, what: str) -> str:
    try:
        proc = subprocess.run([NFT, "-f", "-"], input=script, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise IPMasqError(f"{what}: cannot run nft: {e}") from e
    if proc.returncode != 0:
        raise IPMasqError(f"{what}: nft failed: {proc.stderr.strip()}")
    return proc.stdout


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
    try:
        proc = subprocess.run([NFT, "-j", "list", "table", "inet", TABLE], capture_output=True, text=True,
                              timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise IPMasqError(f"cannot run nft: {e}") from e
    if proc.returncode != 0:
        if "No such file or directory" in proc.stderr:
            return []
        raise IPMasqError(f"cannot list ipMasq entries: {proc.stderr.strip()}")
    out: list[MasqEntry] = []
    for item in json.loads(proc.stdout).get("nftables", []):
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
