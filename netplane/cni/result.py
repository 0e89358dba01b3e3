"""CNI results: typed values, and their JSON shape for each spec version.

0.3.x and 0.4.0 carry `"version": "4"|"6"` on each IP; 1.0.0 dropped it; 1.1.0
added interface `mtu`/`socketPath`/`pciID` and route `mtu`/`advmss`/`priority`/
`table`/`scope`. Empty fields are omitted, as the reference Go types do
(`omitempty`), except `dns`, which is always printed.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any

from . import version as cniversion
from .errors import CODE_INVALID_CONFIG, CNIError

IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class Interface:
    name: str
    mac: str = ""
    mtu: int = 0
    sandbox: str = ""
    socket_path: str = ""
    pci_id: str = ""


@dataclass(frozen=True, slots=True)
class IPConfig:
    address: IPInterface
    gateway: IPAddress | None = None
    interface: int | None = None


@dataclass(frozen=True, slots=True)
class Route:
    dst: IPNetwork
    gw: IPAddress | None = None
    mtu: int = 0
    advmss: int = 0
    priority: int = 0
    table: int | None = None
    scope: int | None = None


@dataclass(frozen=True, slots=True)
class DNS:
    nameservers: tuple[str, ...] = ()
    domain: str = ""
    search: tuple[str, ...] = ()
    options: tuple[str, ...] = ()

    def is_empty(self) -> bool:
        return not (self.nameservers or self.domain or self.search or self.options)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.nameservers:
            out["nameservers"] = list(self.nameservers)
        if self.domain:
            out["domain"] = self.domain
        if self.search:
            out["search"] = list(self.search)
        if self.options:
            out["options"] = list(self.options)
        return out

    @classmethod
    def from_dict(cls, raw: Any, where: str = "dns") -> DNS:
        if raw is None:
            return cls()
        if not isinstance(raw, dict):
            raise CNIError(CODE_INVALID_CONFIG, f"invalid {where}", f"{where} must be an object")

        def strings(key: str) -> tuple[str, ...]:
            value = raw.get(key) or []
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise CNIError(CODE_INVALID_CONFIG, f"invalid {where}.{key}", "must be a list of strings")
            return tuple(value)

        domain = raw.get("domain") or ""
        if not isinstance(domain, str):
            raise CNIError(CODE_INVALID_CONFIG, f"invalid {where}.domain", "must be a string")
        return cls(strings("nameservers"), domain, strings("search"), strings("options"))


@dataclass(frozen=True, slots=True)
class Result:
    interfaces: tuple[Interface, ...] = ()
    ips: tuple[IPConfig, ...] = ()
    routes: tuple[Route, ...] = ()
    dns: DNS = field(default_factory=DNS)


def _interface_dict(iface: Interface, version: str) -> dict[str, Any]:
    out: dict[str, Any] = {"name": iface.name}
    if iface.mac:
        out["mac"] = iface.mac
    if cniversion.at_least(version, "1.1.0") and iface.mtu:
        out["mtu"] = iface.mtu
    if iface.sandbox:
        out["sandbox"] = iface.sandbox
    if cniversion.at_least(version, "1.1.0"):
        if iface.socket_path:
            out["socketPath"] = iface.socket_path
        if iface.pci_id:
            out["pciID"] = iface.pci_id
    return out


def _ip_dict(ipc: IPConfig, version: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if not cniversion.at_least(version, "1.0.0"):
        out["version"] = str(ipc.address.version)
    if ipc.interface is not None:
        out["interface"] = ipc.interface
    out["address"] = str(ipc.address)
    if ipc.gateway is not None:
        out["gateway"] = str(ipc.gateway)
    return out


def _route_dict(route: Route, version: str) -> dict[str, Any]:
    out: dict[str, Any] = {"dst": str(route.dst)}
    if route.gw is not None:
        out["gw"] = str(route.gw)
    if cniversion.at_least(version, "1.1.0"):
        if route.mtu:
            out["mtu"] = route.mtu
        if route.advmss:
            out["advmss"] = route.advmss
        if route.priority:
            out["priority"] = route.priority
        if route.table is not None:
            out["table"] = route.table
        if route.scope is not None:
            out["scope"] = route.scope
    return out


def to_dict(result: Result, version: str) -> dict[str, Any]:
    """The result in the JSON shape of `version` (one of version.SUPPORTED)."""
    out: dict[str, Any] = {"cniVersion": version}
    if result.interfaces:
        out["interfaces"] = [_interface_dict(i, version) for i in result.interfaces]
    if result.ips:
        out["ips"] = [_ip_dict(i, version) for i in result.ips]
    if result.routes:
        out["routes"] = [_route_dict(r, version) for r in result.routes]
    out["dns"] = result.dns.to_dict()
    return out


def _bad(where: str, detail: str) -> CNIError:
    return CNIError(CODE_INVALID_CONFIG, f"invalid {where}", detail)


def _int(raw: dict[str, Any], key: str, where: str) -> int:
    value = raw.get(key, 0) or 0
    if not isinstance(value, int) or isinstance(value, bool):
        raise _bad(f"{where}.{key}", "must be an integer")
    return value


def _opt_int(raw: dict[str, Any], key: str, where: str) -> int | None:
    if raw.get(key) is None:
        return None
    return _int(raw, key, where)


def parse_route(raw: Any, where: str) -> Route:
    if not isinstance(raw, dict) or not isinstance(raw.get("dst"), str):
        raise _bad(where, "a route is an object with a string 'dst'")
    try:
        dst = ipaddress.ip_network(raw["dst"], strict=False)
        gw = ipaddress.ip_address(raw["gw"]) if raw.get("gw") else None
    except ValueError as e:
        raise _bad(where, str(e)) from e
    if gw is not None and gw.version != dst.version:
        raise _bad(where, f"gateway {gw} and destination {dst} are of different IP families")
    return Route(dst, gw, _int(raw, "mtu", where), _int(raw, "advmss", where),
                 _int(raw, "priority", where), _opt_int(raw, "table", where), _opt_int(raw, "scope", where))


def from_dict(raw: Any, where: str = "prevResult") -> Result:
    """Parse a result of any supported version (a prevResult, or a delegated IPAM's answer)."""
    if not isinstance(raw, dict):
        raise _bad(where, "must be an object")
    interfaces: list[Interface] = []
    for n, item in enumerate(raw.get("interfaces") or []):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise _bad(f"{where}.interfaces[{n}]", "an interface is an object with a string 'name'")
        interfaces.append(Interface(
            name=item["name"], mac=str(item.get("mac") or ""), mtu=_int(item, "mtu", where),
            sandbox=str(item.get("sandbox") or ""), socket_path=str(item.get("socketPath") or ""),
            pci_id=str(item.get("pciID") or "")))
    ips: list[IPConfig] = []
    for n, item in enumerate(raw.get("ips") or []):
        w = f"{where}.ips[{n}]"
        if not isinstance(item, dict) or not isinstance(item.get("address"), str):
            raise _bad(w, "an IP config is an object with a string 'address'")
        try:
            address = ipaddress.ip_interface(item["address"])
            gateway = ipaddress.ip_address(item["gateway"]) if item.get("gateway") else None
        except ValueError as e:
            raise _bad(w, str(e)) from e
        index = item.get("interface")
        if index is not None and (not isinstance(index, int) or isinstance(index, bool) or index < 0):
            raise _bad(w, "'interface' must be a non-negative integer")
        if index is not None and index >= len(interfaces):
            raise _bad(w, f"'interface' {index} is out of range")
        ips.append(IPConfig(address, gateway, index))
    routes = tuple(parse_route(r, f"{where}.routes[{n}]") for n, r in enumerate(raw.get("routes") or []))
    return Result(tuple(interfaces), tuple(ips), routes, DNS.from_dict(raw.get("dns"), f"{where}.dns"))
