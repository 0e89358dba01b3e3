"""Network configuration: parse and validate what the runtime passes on stdin.

The shape follows the reference `bridge` plugin and `host-local` IPAM, so an
operator's conflist carries over; the built-in IPAM type is `netplane-ipam`
and any other `ipam.type` is delegated to that plugin (found in CNI_PATH).
Validation raises CNIError code 6 for undecodable input, 1 for an unsupported
cniVersion, 7 for an invalid config and 2 for a bridge feature we do not have.
"""

from __future__ import annotations

import ipaddress
import json
import re
from dataclasses import dataclass, field
from typing import Any

from . import version as cniversion
from .errors import CODE_DECODE, CODE_INVALID_CONFIG, CODE_UNSUPPORTED_FIELD, CNIError
from .result import DNS, IPAddress, IPNetwork, Result, Route, from_dict, parse_route

BUILTIN_IPAM = "netplane-ipam"
DEFAULT_BRIDGE = "cni0"
DEFAULT_DATA_DIR = "/var/lib/cni/networks"  # host-local's, so the on-disk layout is the familiar one

# libcni's rule for network names and container IDs; the name also becomes a directory.
_NAME_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$")

# Reference bridge options we do not implement: refusing them beats silently ignoring them.
_UNSUPPORTED_BRIDGE_FIELDS = {
    "vlan": 0, "vlanTrunk": None, "promiscMode": False, "macspoofchk": False,
    "enabledad": False, "preserveDefaultVlan": True, "disableContainerInterface": False,
    "portIsolation": False,
}


def valid_ifname(name: str) -> bool:
    """The kernel's dev_valid_name(): 1-15 bytes, not '.'/'..', no '/', ':' or whitespace."""
    return (0 < len(name.encode()) < 16 and name not in (".", "..")
            and not any(c in name for c in "/:") and not any(c.isspace() for c in name))


def valid_name(name: str) -> bool:
    return bool(_NAME_RE.match(name))


@dataclass(frozen=True, slots=True)
class Range:
    subnet: IPNetwork
    range_start: IPAddress
    range_end: IPAddress
    gateway: IPAddress

    def contains(self, ip: IPAddress) -> bool:
        return ip.version == self.subnet.version and self.range_start <= ip <= self.range_end  # type: ignore[operator]


# A range set holds the ranges one address is picked from (one family); one IP per set.
RangeSet = tuple[Range, ...]


@dataclass(frozen=True, slots=True)
class IpamConf:
    type: str
    raw: dict[str, Any]
    range_sets: tuple[RangeSet, ...] = ()
    routes: tuple[Route, ...] = ()
    data_dir: str = DEFAULT_DATA_DIR
    dns: DNS = field(default_factory=DNS)

    @property
    def builtin(self) -> bool:
        return self.type == BUILTIN_IPAM


@dataclass(frozen=True, slots=True)
class NetConf:
    cni_version: str
    name: str
    type: str
    raw: dict[str, Any]
    ipam: IpamConf | None
    bridge: str = DEFAULT_BRIDGE
    is_gateway: bool = False
    is_default_gateway: bool = False
    force_address: bool = False
    ip_masq: bool = False
    hairpin_mode: bool = True
    mtu: int | None = None
    dns: DNS = field(default_factory=DNS)
    prev_result: Result | None = None
    runtime_config: dict[str, Any] = field(default_factory=dict)
    # GC: the attachments the runtime still knows, as (containerID, ifname); None if not given.
    valid_attachments: frozenset[tuple[str, str]] | None = None


def decode(stdin: bytes) -> dict[str, Any]:
    """stdin -> JSON object, or CNIError code 6."""
    try:
        raw = json.loads(stdin)
    except (ValueError, UnicodeDecodeError) as e:
        raise CNIError(CODE_DECODE, "cannot decode the network configuration", str(e)) from e
    if not isinstance(raw, dict):
        raise CNIError(CODE_DECODE, "cannot decode the network configuration", "stdin is not a JSON object")
    return raw


def config_version(raw: dict[str, Any]) -> str:
    # libcni treats a missing cniVersion as 0.1.0, which we then refuse with code 1.
    value = raw.get("cniVersion") or "0.1.0"
    if not isinstance(value, str):
        raise CNIError(CODE_INVALID_CONFIG, "invalid cniVersion", "cniVersion must be a string")
    return value


def _invalid(msg: str, details: str = "") -> CNIError:
    return CNIError(CODE_INVALID_CONFIG, msg, details)


def _get(raw: dict[str, Any], key: str, kind: type | tuple[type, ...], default: Any, where: str = "") -> Any:
    value = raw.get(key)
    if value is None:
        return default
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        name = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise _invalid(f"invalid {where}{key}", f"{where}{key} must be of type {name}")
    return value


def _ip(value: Any, where: str) -> IPAddress:
    if not isinstance(value, str):
        raise _invalid(f"invalid {where}", "must be an IP address string")
    try:
        return ipaddress.ip_address(value)
    except ValueError as e:
        raise _invalid(f"invalid {where}", str(e)) from e


def parse_range(raw: Any, where: str) -> Range:
    """host-local's Range.Canonicalize: defaults and bounds for one range."""
    if not isinstance(raw, dict) or not isinstance(raw.get("subnet"), str):
        raise _invalid(f"invalid {where}", "a range is an object with a string 'subnet'")
    try:
        iface = ipaddress.ip_interface(raw["subnet"])
    except ValueError as e:
        raise _invalid(f"invalid {where}.subnet", str(e)) from e
    subnet = iface.network
    if iface.ip != subnet.network_address:
        raise _invalid(f"invalid {where}.subnet",
                       f"network {raw['subnet']} has host bits set; the network address is {subnet}")
    if subnet.max_prefixlen - subnet.prefixlen < 2:
        raise _invalid(f"invalid {where}.subnet", f"network {subnet} is too small to allocate from")
    first = subnet.network_address + 1
    # IPv4 keeps the broadcast address out; IPv6 has none.
    last = subnet.broadcast_address - 1 if subnet.version == 4 else subnet.broadcast_address
    start = _ip(raw["rangeStart"], f"{where}.rangeStart") if raw.get("rangeStart") else first
    end = _ip(raw["rangeEnd"], f"{where}.rangeEnd") if raw.get("rangeEnd") else last
    gateway = _ip(raw["gateway"], f"{where}.gateway") if raw.get("gateway") else first
    for label, ip in (("rangeStart", start), ("rangeEnd", end), ("gateway", gateway)):
        if ip.version != subnet.version or ip not in subnet:
            raise _invalid(f"invalid {where}.{label}", f"{ip} is not in network {subnet}")
    for label, ip in (("rangeStart", start), ("rangeEnd", end)):
        if ip == subnet.network_address or (subnet.version == 4 and ip == subnet.broadcast_address):
            raise _invalid(f"invalid {where}.{label}", f"{ip} is the network or broadcast address")
    if start > end:  # type: ignore[operator]
        raise _invalid(f"invalid {where}", f"rangeStart {start} is after rangeEnd {end}")
    return Range(subnet, start, end, gateway)


def _overlaps(a: Range, b: Range) -> bool:
    return a.subnet.version == b.subnet.version and a.range_start <= b.range_end and b.range_start <= a.range_end  # type: ignore[operator]


def parse_ipam(raw: Any) -> IpamConf:
    if not isinstance(raw, dict):
        raise _invalid("invalid ipam", "ipam must be an object")
    ipam_type = raw.get("type")
    if not isinstance(ipam_type, str) or not ipam_type:
        raise _invalid("invalid ipam.type", "ipam.type must be a non-empty string")
    if ipam_type != BUILTIN_IPAM:
        if not valid_name(ipam_type):
            raise _invalid("invalid ipam.type", f"{ipam_type!r} is not a plugin name")
        return IpamConf(type=ipam_type, raw=raw)
    sets_raw: list[Any] = []
    if raw.get("subnet") is not None:  # host-local's legacy single range
        sets_raw.append([{k: raw.get(k) for k in ("subnet", "rangeStart", "rangeEnd", "gateway")}])
    ranges = _get(raw, "ranges", list, [], "ipam.")
    sets_raw.extend(ranges)
    if not sets_raw:
        raise _invalid("invalid ipam", "ipam needs 'ranges' or a 'subnet'")
    range_sets: list[RangeSet] = []
    seen: list[Range] = []
    for i, set_raw in enumerate(sets_raw):
        if not isinstance(set_raw, list) or not set_raw:
            raise _invalid(f"invalid ipam.ranges[{i}]", "a range set is a non-empty list of ranges")
        rs = tuple(parse_range(r, f"ipam.ranges[{i}][{j}]") for j, r in enumerate(set_raw))
        if len({r.subnet.version for r in rs}) != 1:
            raise _invalid(f"invalid ipam.ranges[{i}]", "a range set mixes IP families")
        for r in rs:
            for other in seen:
                if _overlaps(r, other):
                    raise _invalid(f"invalid ipam.ranges[{i}]", f"range {r.subnet} overlaps {other.subnet}")
            seen.append(r)
        range_sets.append(rs)
    routes = tuple(parse_route(r, f"ipam.routes[{n}]") for n, r in enumerate(_get(raw, "routes", list, [], "ipam.")))
    data_dir = _get(raw, "dataDir", str, DEFAULT_DATA_DIR, "ipam.")
    if not data_dir.startswith("/"):
        raise _invalid("invalid ipam.dataDir", "dataDir must be an absolute path")
    dns = _resolv_conf(_get(raw, "resolvConf", str, "", "ipam."))
    return IpamConf(type=ipam_type, raw=raw, range_sets=tuple(range_sets), routes=routes,
                    data_dir=data_dir, dns=dns)


def _resolv_conf(path: str) -> DNS:
    """host-local's resolvConf: nameserver/domain/search/options lines of a resolv.conf."""
    if not path:
        return DNS()
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError as e:
        raise _invalid("invalid ipam.resolvConf", f"cannot read {path}: {e}") from e
    nameservers: list[str] = []
    domain = ""
    search: list[str] = []
    options: list[str] = []
    for line in lines:
        words = line.split("#", 1)[0].split()
        if len(words) < 2:
            continue
        key, values = words[0], words[1:]
        if key == "nameserver":
            nameservers.append(values[0])
        elif key == "domain":
            domain = values[0]
        elif key == "search":
            search = values
        elif key == "options":
            options.extend(values)
    return DNS(tuple(nameservers), domain, tuple(search), tuple(options))


def _attachments(raw: dict[str, Any]) -> frozenset[tuple[str, str]] | None:
    key = "cni.dev/valid-attachments" if "cni.dev/valid-attachments" in raw else "cni.dev/attachments"
    value = raw.get(key)
    if value is None:
        return None
    if not isinstance(value, list):
        raise _invalid(f"invalid {key}", "must be a list of {containerID, ifname}")
    out: set[tuple[str, str]] = set()
    for item in value:
        if (not isinstance(item, dict) or not isinstance(item.get("containerID"), str)
                or not isinstance(item.get("ifname"), str)):
            raise _invalid(f"invalid {key}", "each attachment is {containerID, ifname}")
        out.add((item["containerID"], item["ifname"]))
    return frozenset(out)


def parse(raw: dict[str, Any], *, need_ipam: bool = True, bridge: bool = True) -> NetConf:
    """A decoded config -> NetConf; bridge=False is the IPAM plugin's view (bridge fields not checked)."""
    version = config_version(raw)
    cniversion.check_supported(version)
    name = raw.get("name")
    if not isinstance(name, str) or not valid_name(name):
        raise _invalid("invalid name", f"name {name!r} must match {_NAME_RE.pattern}")
    plugin_type = raw.get("type")
    if not isinstance(plugin_type, str) or not plugin_type:
        raise _invalid("invalid type", "type must be a non-empty string")
    for key, default in _UNSUPPORTED_BRIDGE_FIELDS.items():
        if bridge and raw.get(key) not in (None, default):
            raise CNIError(CODE_UNSUPPORTED_FIELD, f"unsupported field {key!r}",
                           f"netplane's bridge does not implement {key}")
    bridge_name = _get(raw, "bridge", str, DEFAULT_BRIDGE)
    if not valid_ifname(bridge_name):
        raise _invalid("invalid bridge", f"{bridge_name!r} is not a valid interface name")
    mtu = _get(raw, "mtu", int, None)
    if mtu is not None and not 68 <= mtu <= 65535:
        raise _invalid("invalid mtu", f"mtu {mtu} is outside 68..65535")
    is_default_gateway = _get(raw, "isDefaultGateway", bool, False)
    ipam = parse_ipam(raw["ipam"]) if raw.get("ipam") is not None else None
    if ipam is None and need_ipam:
        raise _invalid("invalid ipam", "an ipam section is required")
    prev = raw.get("prevResult")
    runtime_config = _get(raw, "runtimeConfig", dict, {})
    return NetConf(
        cni_version=version, name=name, type=plugin_type, raw=raw, ipam=ipam, bridge=bridge_name,
        # The reference bridge: a default gateway implies a gateway address on the bridge.
        is_gateway=_get(raw, "isGateway", bool, False) or is_default_gateway,
        is_default_gateway=is_default_gateway,
        force_address=_get(raw, "forceAddress", bool, False),
        ip_masq=_get(raw, "ipMasq", bool, False),
        hairpin_mode=_get(raw, "hairpinMode", bool, True),
        mtu=mtu,
        dns=DNS.from_dict(raw.get("dns")),
        prev_result=from_dict(prev) if prev is not None else None,
        runtime_config=runtime_config,
        valid_attachments=_attachments(raw),
    )
