"""The CNI verbs, implemented once for the executable and for the agent's socket server.

`dispatch(env, stdin)` is the whole plugin: it takes the runtime's environment
and stdin and returns what to print and the exit code, so the executable, the
socket server and tests all go through the same code. Two plugins live here:
`bridge` (type `netplane`: bridge + veth + IPAM) and `ipam` (type
`netplane-ipam`: the built-in allocator on its own, usable by other plugins).

ADD reads as a pipeline (the reference bridge's cmdAdd): config -> bridge ->
veth -> IPAM -> container addresses and routes -> gateway on the bridge ->
ipMasq -> result. Every step that creates something registers its undo on an
ExitStack, so a failure anywhere leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from . import config as cniconfig
from . import version as cniversion
from .errors import (
    CODE_CHECK_FAILED,
    CODE_IFACE_EXISTS,
    CODE_INTERNAL,
    CODE_INVALID_CONFIG,
    CODE_INVALID_ENV,
    CODE_IPMASQ,
    CODE_NETLINK,
    CODE_NOT_AVAILABLE,
    CODE_UNKNOWN_CONTAINER,
    CNIError,
)
from .result import DNS, Interface, IPAddress, IPConfig, Result, Route, to_dict

if TYPE_CHECKING:
    from ..kernel.links import LinkInfo, LinkReaper, Netlink
    from .ipam.store import DiskStore

PLUGIN_BRIDGE = "bridge"
PLUGIN_IPAM = "ipam"

# Which CNI_* variables each verb needs (the reference skel's table).
REQUIRED_ENV: dict[str, tuple[str, ...]] = {
    "ADD": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"),
    "CHECK": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"),
    "DEL": ("CNI_CONTAINERID", "CNI_IFNAME", "CNI_PATH"),
    "GC": (),
    "STATUS": (),
}

ALIAS_PREFIX = "netplane-cni"
LOOPBACK_IFINDEX = 1  # the kernel gives every namespace's lo ifindex 1


@dataclass(frozen=True, slots=True)
class Response:
    stdout: bytes
    exit_code: int


@dataclass(frozen=True, slots=True)
class Call:
    """One invocation: the CNI_* variables, the rest of the environment, stdin."""

    command: str
    container_id: str
    netns: str
    ifname: str
    args: dict[str, str]
    env: Mapping[str, str]
    stdin: bytes


def log(event: str, **fields: object) -> None:
    """key=value lines on stderr; stdout carries only the result or the error."""
    parts = [f"event={event}"] + [f"{k}={json.dumps(v) if isinstance(v, str) and ' ' in v else v}"
                                  for k, v in fields.items()]
    # One write per line, so lines from concurrent calls never interleave.
    sys.stderr.write("netplane-cni " + " ".join(parts) + "\n")
    sys.stderr.flush()


class Runtime:
    """What a caller may keep warm between calls: the host-side netlink socket (one per thread).

    The executable makes one per call; the socket server keeps one for its life.
    """

    def __init__(self, warm: bool = False) -> None:
        self.warm = warm
        self._local = threading.local()
        self._all: list[Netlink] = []
        self._all_lock = threading.Lock()
        self._reaper: LinkReaper | None = None

    def delete_pod_link(self, cont: Netlink, index: int) -> bool:
        """Delete the pod's veth; False if already gone.

        A warm runtime answers once the kernel has unlisted the link and lets the
        kernel's remaining teardown (~15 ms of RCU waits) finish in the background
        (see LinkReaper); a one-shot process would wait for it at exit anyway.
        """
        if not self.warm or cont.netns_path is None:
            return cont.delete_link(index)
        with self._all_lock:
            if self._reaper is None:
                from ..kernel.links import LinkReaper

                self._reaper = LinkReaper()
            reaper = self._reaper
        try:
            return reaper.delete(cont.netns_path, index)
        except OSError:
            # The reaper could not open its own sockets there (the netns file went away
            # meanwhile, fds exhausted...): delete through the socket we already hold.
            return cont.delete_link(index)

    @contextlib.contextmanager
    def host(self) -> Iterator[Netlink]:
        from ..kernel.links import Netlink

        if not self.warm:
            with Netlink() as fresh:
                yield fresh
            return
        cached: Netlink | None = getattr(self._local, "netlink", None)
        nl = cached if cached is not None else Netlink()
        if cached is None:
            self._local.netlink = nl
            with self._all_lock:
                self._all.append(nl)
        try:
            yield nl
        except BaseException:
            # A socket that saw an error may hold unread replies: start afresh next time.
            self._local.netlink = None
            with self._all_lock:
                self._all.remove(nl)
            nl.close()
            raise

    def close(self) -> None:
        """Close every thread's socket and wait for link deletions still finishing (no call in flight)."""
        with self._all_lock:
            sockets, self._all = self._all, []
            reaper, self._reaper = self._reaper, None
        if reaper is not None:
            reaper.close()
        for nl in sockets:
            nl.close()
        self._local = threading.local()


# -- entry point ---------------------------------------------------------------

def dispatch(env: Mapping[str, str], stdin: bytes, *, plugin: str = PLUGIN_BRIDGE,
             runtime: Runtime | None = None) -> Response:
    """Run one CNI call; never raises."""
    error_version = cniversion.CURRENT
    try:
        command = env.get("CNI_COMMAND", "")
        if command == "VERSION":
            return _version()
        if command not in REQUIRED_ENV:
            raise CNIError(CODE_INVALID_ENV, f"unknown CNI_COMMAND {command!r}",
                           f"one of {', '.join(sorted([*REQUIRED_ENV, 'VERSION']))}")
        decoded: dict[str, Any] | None = None
        decode_error: CNIError | None = None
        try:
            decoded = cniconfig.decode(stdin)
            v = decoded.get("cniVersion")
            if isinstance(v, str) and v in cniversion.SUPPORTED:
                error_version = v
        except CNIError as e:
            decode_error = e
        call = _call_from_env(command, env, stdin)
        if decode_error is not None:
            raise decode_error
        assert decoded is not None
        conf = cniconfig.parse(decoded, bridge=plugin == PLUGIN_BRIDGE)
        cniversion.check_verb_allowed(command, conf.cni_version)
        handler = (BRIDGE_VERBS if plugin == PLUGIN_BRIDGE else IPAM_VERBS)[command]
        rt = runtime or Runtime()
        try:
            result = handler(call, conf, rt)
        finally:
            if runtime is None:
                rt.close()
        if result is None:
            return Response(b"", 0)
        return Response(_json(to_dict(result, conf.cni_version)), 0)
    except CNIError as e:
        if e.code >= 100 or e.code in (CODE_NOT_AVAILABLE,):
            log("error", command=env.get("CNI_COMMAND", ""), code=e.code, msg=e.msg, details=e.details)
        return Response(_json(e.to_dict(error_version)), 1)
    except Exception as e:  # a bug: report it in the spec's shape, keep the traceback on stderr
        import traceback

        traceback.print_exc(file=sys.stderr)
        return Response(_json(CNIError(CODE_INTERNAL, "internal error", repr(e)).to_dict(error_version)), 1)


def error_response(err: CNIError, stdin: bytes) -> Response:
    """The spec's error JSON, in the config's cniVersion when stdin names a supported one."""
    version = cniversion.CURRENT
    try:
        v = json.loads(stdin).get("cniVersion")
        if isinstance(v, str) and v in cniversion.SUPPORTED:
            version = v
    except (ValueError, AttributeError):
        pass
    return Response(_json(err.to_dict(version)), 1)


def _json(obj: dict[str, Any]) -> bytes:
    return (json.dumps(obj, indent=4) + "\n").encode()


def _version() -> Response:
    return Response(cniversion.version_reply(), 0)


def parse_cni_args(text: str) -> dict[str, str]:
    """CNI_ARGS 'K=V;K2=V2' -> dict (code 4 when malformed)."""
    out: dict[str, str] = {}
    for pair in text.split(";"):
        if not pair:
            continue
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise CNIError(CODE_INVALID_ENV, "invalid CNI_ARGS", f"{pair!r} is not KEY=VALUE")
        out[key] = value
    return out


def _call_from_env(command: str, env: Mapping[str, str], stdin: bytes) -> Call:
    missing = [k for k in REQUIRED_ENV[command] if not env.get(k)]
    if missing:
        raise CNIError(CODE_INVALID_ENV, f"required env variables [{','.join(missing)}] missing",
                       f"{command} needs {', '.join(REQUIRED_ENV[command])}")
    container_id = env.get("CNI_CONTAINERID", "")
    if container_id and not cniconfig.valid_name(container_id):
        raise CNIError(CODE_INVALID_ENV, "invalid characters in CNI_CONTAINERID", container_id)
    ifname = env.get("CNI_IFNAME", "")
    if ifname and not cniconfig.valid_ifname(ifname):
        raise CNIError(CODE_INVALID_ENV, "invalid CNI_IFNAME", f"{ifname!r} is not a valid interface name")
    netns = env.get("CNI_NETNS", "")
    if netns and not netns.startswith("/"):
        raise CNIError(CODE_INVALID_ENV, "invalid CNI_NETNS", f"{netns!r} is not an absolute path")
    return Call(command, container_id, netns, ifname, parse_cni_args(env.get("CNI_ARGS", "")), env, stdin)


# -- IPAM (built-in or delegated) ------------------------------------------------

def _store(conf: cniconfig.NetConf, call: Call) -> DiskStore:
    from .ipam.store import DiskStore

    assert conf.ipam is not None
    try:
        timeout = float(call.env.get("NETPLANE_CNI_LOCK_TIMEOUT", "") or 30.0)
    except ValueError:
        timeout = 30.0
    return DiskStore(conf.ipam.data_dir, conf.name, lock_timeout=timeout)


def _requested_ips(conf: cniconfig.NetConf, call: Call) -> list[IPAddress]:
    """Static requests: runtimeConfig.ips (capability "ips") and CNI_ARGS IP=, as host-local takes them."""
    import ipaddress

    texts: list[str] = []
    rc_ips = conf.runtime_config.get("ips") or []
    if isinstance(rc_ips, list):
        texts.extend(str(x) for x in rc_ips)
    if call.args.get("IP"):
        texts.extend(call.args["IP"].split(","))
    out: list[IPAddress] = []
    for text in texts:
        try:
            out.append(ipaddress.ip_interface(text.strip()).ip)
        except ValueError as e:
            raise CNIError(CODE_INVALID_CONFIG, "invalid requested IP", str(e)) from e
    return out


def _ipam_add(conf: cniconfig.NetConf, call: Call, undo: contextlib.ExitStack) -> Result:
    assert conf.ipam is not None
    if conf.ipam.builtin:
        from .ipam import allocator

        store = _store(conf, call)
        allocations = allocator.allocate(store, conf.ipam, call.container_id, call.ifname,
                                         _requested_ips(conf, call))
        undo.callback(allocator.release, store, call.container_id, call.ifname)
        return allocator.to_result(conf.ipam, allocations)
    from .ipam import delegate
    from .result import from_dict

    raw = delegate.exec_plugin(conf.ipam.type, "ADD", call.stdin, call.env)
    # From here on the delegate holds an address: give it back if we fail later.
    undo.callback(_quiet, delegate.exec_plugin, conf.ipam.type, "DEL", call.stdin, call.env)
    return from_dict(raw or {}, f"result of IPAM plugin {conf.ipam.type!r}")


def _ipam_del(conf: cniconfig.NetConf, call: Call) -> list[IPAddress]:
    assert conf.ipam is not None
    if conf.ipam.builtin:
        from .ipam import allocator

        return allocator.release(_store(conf, call), call.container_id, call.ifname)
    from .ipam import delegate

    delegate.exec_plugin(conf.ipam.type, "DEL", call.stdin, call.env)
    return []


def _quiet(fn: Callable[..., Any], *args: Any) -> None:
    """Run an undo step; a failing undo must not hide the error that caused the rollback."""
    try:
        fn(*args)
    except Exception as e:
        log("rollback-step-failed", step=getattr(fn, "__name__", "?"), error=str(e))


# -- bridge plugin verbs ---------------------------------------------------------

def _kernel_error(e: Exception, what: str) -> CNIError:
    return CNIError(CODE_NETLINK, what, str(e))


def _alias(conf: cniconfig.NetConf, call: Call) -> str:
    return f"{ALIAS_PREFIX} {conf.name} {call.container_id} {call.ifname}"


def _masq_comment(conf: cniconfig.NetConf, container_id: str, ifname: str) -> str:
    return f"net={conf.name} id={container_id} if={ifname}"


@contextlib.contextmanager
def _container_netns(path: str) -> Iterator[tuple[Netlink, int]]:
    """(netlink in the pod's netns, an fd of it); code 3 if it does not exist."""
    from ..kernel import netns
    from ..kernel.links import Netlink

    try:
        fd = netns.open_netns(path)
    except FileNotFoundError as e:
        raise CNIError(CODE_UNKNOWN_CONTAINER, f"network namespace {path!r} does not exist", str(e)) from e
    except OSError as e:
        raise CNIError(CODE_UNKNOWN_CONTAINER, f"cannot open network namespace {path!r}", str(e)) from e
    try:
        if netns.identity(path) == netns.identity():
            raise CNIError(CODE_INVALID_ENV, "CNI_NETNS is the plugin's own network namespace",
                           "refusing to configure the host as a pod")
        try:
            nl = Netlink(fd)
        except OSError as e:
            raise CNIError(CODE_UNKNOWN_CONTAINER, f"{path!r} is not a network namespace", str(e)) from e
        with nl:
            yield nl, fd
    finally:
        os.close(fd)


def _calc_gateways(conf: cniconfig.NetConf, ipam_result: Result) -> Result:
    """The reference bridge's calcGateways: default gateways and the pod's default route."""
    import ipaddress

    ips = []
    for ipc in ipam_result.ips:
        gw = ipc.gateway
        if gw is None and conf.is_gateway:
            gw = ipc.address.network.network_address + 1
        ips.append(IPConfig(ipc.address, gw, 2))
    routes = list(ipam_result.routes)
    if conf.is_default_gateway:
        for family in sorted({ipc.address.version for ipc in ips}):
            default = ipaddress.ip_network("0.0.0.0/0" if family == 4 else "::/0")
            gw = next(ipc.gateway for ipc in ips if ipc.address.version == family)
            existing = [r for r in routes if r.dst == default]
            if any(r.gw is not None and r.gw != gw for r in existing):
                raise CNIError(CODE_INVALID_CONFIG, "isDefaultGateway ineffective",
                               f"IPAM sets a default route via another gateway than {gw}")
            if not any(r.gw is not None for r in existing):
                routes.append(Route(default, gw))
    return replace(ipam_result, ips=tuple(ips), routes=tuple(routes))


def _configure_container(cont: Netlink, index: int, result: Result) -> LinkInfo | None:
    """ipam.ConfigureIface: addresses, link up, lo up, routes (a route without gw goes via the family's
    gateway), all in one netlink round trip; returns the link as it is now."""
    from ..kernel.links import PodRoute

    gateways: dict[int, IPAddress] = {}
    for ipc in result.ips:
        if ipc.gateway is not None:
            gateways.setdefault(ipc.address.version, ipc.gateway)
    routes = [PodRoute(r.dst, r.gw if r.gw is not None else gateways.get(r.dst.version), mtu=r.mtu,
                       advmss=r.advmss, priority=r.priority, table=r.table, scope=r.scope)
              for r in result.routes]
    return cont.configure_pod(index, [ipc.address for ipc in result.ips], routes, loopback=LOOPBACK_IFINDEX)


def _announce(netns_fd: int, link: LinkInfo, result: Result) -> None:
    """Gratuitous ARP for the pod's IPv4 addresses, as the reference bridge does after ADD: an
    address released by a deleted pod and handed out again must not stay mapped to the old
    pod's MAC in the node's and the other pods' neighbour tables. Best effort (so is theirs)."""
    import ipaddress

    from ..kernel import links

    v4 = [ipc.address.ip for ipc in result.ips if isinstance(ipc.address.ip, ipaddress.IPv4Address)]
    if not v4:
        return
    try:
        links.send_gratuitous_arp(netns_fd, link.name, link.mac, v4)
    except (OSError, ValueError) as e:
        log("gratuitous-arp-failed", ifname=link.name, error=str(e))


def _ensure_bridge_addr(host: Netlink, bridge: int, bridge_name: str, gw: Any, force: bool) -> None:
    """The reference ensureAddr: one IPv4 address per bridge; IPv6 ones must not overlap.

    The address is added first: on every pod but a bridge's first it is already
    there (EEXIST, one round trip). Only a fresh add pays for the conflict check,
    and backs out again when the bridge turns out to carry another network.
    """
    if not host.ensure_address(bridge, gw):
        return
    for index, addr in host.addresses(bridge):
        if index != bridge or addr.version != gw.version or addr == gw:
            continue
        if addr.version == 6 and addr.ip.is_link_local:
            continue
        if gw.version == 4 or gw.ip in addr.network or addr.ip in gw.network:
            if force:
                host.delete_address(bridge, addr)
            else:
                from .errors import CODE_BRIDGE_CONFLICT

                host.delete_address(bridge, gw)
                raise CNIError(CODE_BRIDGE_CONFLICT, f"{bridge_name!r} already has an IP address different from {gw}",
                               f"it has {addr}; set forceAddress to replace it")


def bridge_add(call: Call, conf: cniconfig.NetConf, rt: Runtime) -> Result:
    from ..kernel import links
    from ..kernel.links import KernelError

    # The undo stack is innermost so rollback runs while the netlink sockets are still open.
    with rt.host() as host, _container_netns(call.netns) as (cont, fd), contextlib.ExitStack() as undo:
        if cont.link(call.ifname) is not None:
            raise CNIError(CODE_IFACE_EXISTS, f"container interface {call.ifname!r} already exists",
                           f"in {call.netns}")
        try:
            br = host.ensure_bridge(conf.bridge, conf.mtu)
        except KernelError as e:
            raise _kernel_error(e, f"cannot set up bridge {conf.bridge!r}") from e
        host_veth = _create_veth(host, cont, fd, call, conf, br.index, undo)

        ipam_result = _ipam_add(conf, call, undo)
        if not ipam_result.ips:
            raise CNIError(CODE_INVALID_CONFIG, "IPAM plugin returned missing IP config", "")
        result = _calc_gateways(conf, ipam_result)

        # The host end's IFLA_LINK is the pod end's ifindex (in the pod's namespace).
        pod_index = host_veth.peer_index
        if not pod_index:
            found = cont.link(call.ifname)
            if found is None:
                raise CNIError(CODE_NETLINK, f"container interface {call.ifname!r} vanished", call.netns)
            pod_index = found.index
        try:
            cont_link = _configure_container(cont, pod_index, result)
        except KernelError as e:
            raise _kernel_error(e, f"cannot configure {call.ifname!r} in {call.netns}") from e
        if cont_link is None or cont_link.name != call.ifname:
            raise CNIError(CODE_NETLINK, f"container interface {call.ifname!r} vanished", call.netns)
        _announce(fd, cont_link, result)

        if conf.is_gateway:
            try:
                for ipc in result.ips:
                    if ipc.gateway is None:
                        continue
                    import ipaddress

                    gw = ipaddress.ip_interface(f"{ipc.gateway}/{ipc.address.network.prefixlen}")
                    _ensure_bridge_addr(host, br.index, conf.bridge, gw, conf.force_address)
                    links.enable_ip_forward(gw.version)
            except KernelError as e:
                raise _kernel_error(e, f"cannot set the gateway address on {conf.bridge!r}") from e

        if conf.ip_masq:
            from ..kernel import ipmasq

            pod_ips = [ipc.address.ip for ipc in result.ips]
            try:
                ipmasq.ensure(conf.name, [ipc.address.network for ipc in result.ips], pod_ips,
                              _masq_comment(conf, call.container_id, call.ifname))
            except ipmasq.IPMasqError as e:
                raise CNIError(CODE_IPMASQ, "cannot set up ipMasq", str(e)) from e
            undo.callback(_quiet, ipmasq.remove, conf.name, pod_ips)

        br_now = host.link_by_index(br.index) or br
        if br_now.mac == host_veth.mac:
            # A bridge made elsewhere (or by an older netplane) whose MAC follows its ports': it
            # just took ours and would change again when this pod goes, leaving every pod on it
            # with a stale gateway MAC. Pin it, as the reference plugin does.
            try:
                host.set_mac(br.index, br_now.mac)
            except KernelError as e:
                log("bridge-mac-pin-failed", bridge=conf.bridge, error=str(e))
        interfaces = (
            Interface(br_now.name, br_now.mac),
            Interface(host_veth.name, host_veth.mac),
            Interface(call.ifname, cont_link.mac, mtu=cont_link.mtu if conf.mtu else 0, sandbox=call.netns),
        )
        dns = conf.dns if not conf.dns.is_empty() else result.dns
        undo.pop_all()
        return Result(interfaces, result.ips, result.routes, dns)


def _create_veth(host: Netlink, cont: Netlink, fd: int, call: Call, conf: cniconfig.NetConf, bridge: int,
                 undo: contextlib.ExitStack) -> LinkInfo:
    """The pod's veth pair, the host end up on the bridge, labelled and with its port flags set."""
    import errno

    from ..kernel.links import KernelError

    for _ in range(5):
        name = "veth" + os.urandom(4).hex()  # what secrets.token_hex does, without importing hashlib/hmac
        try:
            # Up and enslaved in the creating request: the kernel applies both before it answers.
            host.add_veth(name, call.ifname, fd, conf.mtu, up=True, master=bridge)
        except KernelError as e:
            if e.errno == errno.EEXIST:
                if cont.link(call.ifname) is not None:
                    raise CNIError(CODE_IFACE_EXISTS, f"container interface {call.ifname!r} already exists",
                                   f"in {call.netns}") from e
                continue  # our random host-side name was taken: pick another
            raise _kernel_error(e, f"cannot create veth pair for {call.ifname!r}") from e
        # Deleting the host end removes the pod end too. By name: the name is ours, it was just created.
        undo.callback(_quiet, host.delete_link_named, name)
        try:
            return host.configure_port(name, _alias(conf, call), conf.hairpin_mode)
        except KernelError as e:
            raise _kernel_error(e, f"cannot attach {name!r} to {conf.bridge!r}") from e
    raise CNIError(CODE_NETLINK, "cannot pick a free host veth name", "")


def _attachment_of(alias: str) -> tuple[str, str, str] | None:
    """'netplane-cni <network> <containerID> <ifname>' -> (network, containerID, ifname)."""
    parts = alias.split(" ")
    if len(parts) == 4 and parts[0] == ALIAS_PREFIX:
        return parts[1], parts[2], parts[3]
    return None


def bridge_del(call: Call, conf: cniconfig.NetConf, rt: Runtime) -> None:
    from ..kernel import netns
    from ..kernel.links import KernelError, Netlink

    pod_ips: set[IPAddress] = set()
    if conf.prev_result is not None:
        pod_ips.update(ipc.address.ip for ipc in conf.prev_result.ips)
    # Release the address first, whatever happens to the links (the reference does the same).
    pod_ips.update(_ipam_del(conf, call))

    removed = False
    if call.netns and netns.exists(call.netns) and netns.identity(call.netns) != netns.identity():
        try:
            cont = Netlink(call.netns)
        except OSError:
            cont = None  # gone meanwhile, or not a netns: nothing of ours lives there
        if cont is not None:
            with cont:
                link = cont.link(call.ifname)
                # Only a veth can be ours: never delete anything else (lo, a physical device...).
                if link is not None and link.kind == "veth":
                    if conf.ip_masq:  # the addresses only matter for finding ipMasq entries
                        pod_ips.update(a.ip for i, a in cont.addresses(link.index) if i == link.index)
                    try:
                        removed = rt.delete_pod_link(cont, link.index)
                    except KernelError as e:
                        raise _kernel_error(e, f"cannot delete {call.ifname!r} in {call.netns}") from e
    if not removed:
        # The pod end is gone or was never made; a host end of ours may remain (e.g. a crash mid-ADD).
        with rt.host() as host:
            for link in host.links():
                if link.kind == "veth" and _attachment_of(link.alias) == (conf.name, call.container_id,
                                                                          call.ifname):
                    host.delete_link(link.index)
    if pod_ips:
        _forget_neighbours(rt, conf, pod_ips)
    if conf.ip_masq:
        from ..kernel import ipmasq

        comment = _masq_comment(conf, call.container_id, call.ifname)
        try:
            if not pod_ips:
                # Nothing told us the pod's addresses (IPAM state lost, pod gone): find its
                # entries by their comment. Otherwise those addresses are the ones ADD masqueraded.
                pod_ips.update(e.ip for e in ipmasq.entries() if e.comment == comment)
            ipmasq.remove(conf.name, sorted(pod_ips, key=lambda ip: (ip.version, int(ip))))
        except ipmasq.IPMasqError as e:
            raise CNIError(CODE_IPMASQ, "cannot tear down ipMasq", str(e)) from e
    return None


def _forget_neighbours(rt: Runtime, conf: cniconfig.NetConf, pod_ips: set[IPAddress]) -> None:
    """Drop the node's neighbour entries for the pod's released addresses (on the bridge, where the
    node reaches its pods). The next pod given one of them has another MAC, and the node would
    otherwise keep sending its traffic (kubelet probes, proxied connections) to the old one until
    the entry expires, 30-60 s. Best effort: a leftover entry only delays, it never misroutes for good."""
    from ..kernel.links import KernelError

    try:
        with rt.host() as host:
            br = host.link(conf.bridge)
            if br is not None and br.kind == "bridge":
                host.delete_neighbours(br.index, sorted(pod_ips, key=lambda ip: (ip.version, int(ip))))
    except KernelError as e:
        log("neighbour-cleanup-failed", bridge=conf.bridge, error=str(e))


def _check_fail(msg: str, details: str = "") -> CNIError:
    return CNIError(CODE_CHECK_FAILED, msg, details)


def bridge_check(call: Call, conf: cniconfig.NetConf, rt: Runtime) -> None:
    prev = conf.prev_result
    if prev is None:
        raise CNIError(CODE_INVALID_CONFIG, "CHECK needs prevResult", "the config has no prevResult")
    # IPAM first: the reservation must still be ours.
    _ipam_check(conf, call, prev)
    with rt.host() as host, _container_netns(call.netns) as (cont, _fd):
        link = cont.link(call.ifname)
        if link is None or link.kind != "veth":
            raise _check_fail(f"interface {call.ifname!r} not found in {call.netns}")
        ours = [n for n, i in enumerate(prev.interfaces) if i.name == call.ifname and i.sandbox]
        for n in ours:
            want = prev.interfaces[n].mac
            if want and want.lower() != link.mac.lower():
                raise _check_fail(f"interface {call.ifname!r} has MAC {link.mac}, prevResult says {want}")
        have = {a for i, a in cont.addresses(link.index) if i == link.index}
        for ipc in prev.ips:
            if ipc.interface is not None and ipc.interface not in ours:
                continue
            if ipc.address not in have:
                raise _check_fail(f"address {ipc.address} missing on {call.ifname!r}")
        routes = cont.routes()
        for r in prev.routes:
            if not any(kr.dst == r.dst and (r.gw is None or kr.gw == r.gw) for kr in routes):
                raise _check_fail(f"route {r.dst} via {r.gw or 'link'} missing in {call.netns}")
        br = host.link(conf.bridge)
        if br is None or br.kind != "bridge":
            raise _check_fail(f"bridge {conf.bridge!r} not found")
        host_veths = [lk for lk in host.links() if lk.kind == "veth"
                      and _attachment_of(lk.alias) == (conf.name, call.container_id, call.ifname)]
        if not host_veths:
            raise _check_fail(f"host end of {call.ifname!r} not found")
        if host_veths[0].master != br.index:
            raise _check_fail(f"{host_veths[0].name!r} is not attached to {conf.bridge!r}")
        if conf.hairpin_mode and not host_veths[0].hairpin:
            raise _check_fail(f"hairpin is off on {host_veths[0].name!r}")
    if conf.ip_masq:
        from ..kernel import ipmasq

        masq = {e.ip for e in ipmasq.entries() if e.chain == ipmasq.chain_name(conf.name)}
        for ipc in prev.ips:
            if ipc.address.ip not in masq:
                raise _check_fail(f"ipMasq missing for {ipc.address.ip}")
    return None


def _ipam_check(conf: cniconfig.NetConf, call: Call, prev: Result) -> None:
    assert conf.ipam is not None
    if not conf.ipam.builtin:
        from .ipam import delegate

        delegate.exec_plugin(conf.ipam.type, "CHECK", call.stdin, call.env)
        return
    store = _store(conf, call)
    with store.lock():
        held = set(store.get_by_id(call.container_id, call.ifname))
    ranges = [r for rs in conf.ipam.range_sets for r in rs]
    wanted = {ipc.address.ip for ipc in prev.ips if any(r.contains(ipc.address.ip) for r in ranges)}
    if not held:
        raise _check_fail(f"no IP reservation for {call.container_id}/{call.ifname}")
    if wanted != held:
        raise _check_fail("IP reservation differs from prevResult",
                          f"reserved {sorted(map(str, held))}, prevResult {sorted(map(str, wanted))}")


def bridge_gc(call: Call, conf: cniconfig.NetConf, rt: Runtime) -> None:
    valid = _valid_attachments(conf)
    _ipam_gc(conf, call, valid)
    with rt.host() as host:
        for link in host.links():
            att = _attachment_of(link.alias) if link.kind == "veth" else None
            if att is not None and att[0] == conf.name and (att[1], att[2]) not in valid:
                log("gc-link", name=link.name, container=att[1], ifname=att[2])
                host.delete_link(link.index)
    if conf.ip_masq:
        from ..kernel import ipmasq

        chain = ipmasq.chain_name(conf.name)
        valid_comments = {_masq_comment(conf, cid, ifn) for cid, ifn in valid}
        try:
            stale = [e.ip for e in ipmasq.entries() if e.chain == chain and e.comment not in valid_comments]
            ipmasq.remove(conf.name, stale)
        except ipmasq.IPMasqError as e:
            raise CNIError(CODE_IPMASQ, "cannot collect ipMasq entries", str(e)) from e
    return None


def _valid_attachments(conf: cniconfig.NetConf) -> frozenset[tuple[str, str]]:
    if conf.valid_attachments is None:
        # Without the list every attachment would look stale: refuse rather than wipe the node.
        raise CNIError(CODE_INVALID_CONFIG, "GC needs cni.dev/valid-attachments", "")
    return conf.valid_attachments


def _ipam_gc(conf: cniconfig.NetConf, call: Call, valid: frozenset[tuple[str, str]]) -> list[IPAddress]:
    assert conf.ipam is not None
    if not conf.ipam.builtin:
        from .ipam import delegate

        delegate.exec_plugin(conf.ipam.type, "GC", call.stdin, call.env)
        return []
    store = _store(conf, call)
    released = []
    with store.lock():
        for ip, owner in store.reservations().items():
            if owner not in valid:
                store.release(ip)
                released.append(ip)
    for ip in released:
        log("gc-ip", ip=str(ip))
    return released


def bridge_status(call: Call, conf: cniconfig.NetConf, rt: Runtime) -> None:
    assert conf.ipam is not None
    if not conf.ipam.builtin:
        from .ipam import delegate

        delegate.exec_plugin(conf.ipam.type, "STATUS", call.stdin, call.env)
        return None
    from .ipam import allocator

    store = _store(conf, call)
    problem = store.writable()
    if problem:
        raise CNIError(CODE_NOT_AVAILABLE, "IPAM data dir is not writable", problem)
    with store.lock():
        free = allocator.free_count(store, conf.ipam)
    if any(n <= 0 for n in free):
        raise CNIError(CODE_NOT_AVAILABLE, "address pool exhausted", f"free addresses per range set: {free}")
    return None


# -- the IPAM plugin on its own (type netplane-ipam) -----------------------------

def _builtin_ipam(conf: cniconfig.NetConf) -> cniconfig.IpamConf:
    if conf.ipam is None or not conf.ipam.builtin:
        raise CNIError(CODE_INVALID_CONFIG, f"ipam.type must be {cniconfig.BUILTIN_IPAM!r}",
                       "this is the netplane IPAM plugin")
    return conf.ipam


def ipam_add(call: Call, conf: cniconfig.NetConf, rt: Runtime) -> Result:
    from .ipam import allocator

    ipam = _builtin_ipam(conf)
    allocations = allocator.allocate(_store(conf, call), ipam, call.container_id, call.ifname,
                                     _requested_ips(conf, call))
    return allocator.to_result(ipam, allocations)


def ipam_del(call: Call, conf: cniconfig.NetConf, rt: Runtime) -> None:
    _builtin_ipam(conf)
    _ipam_del(conf, call)
    return None


def ipam_check(call: Call, conf: cniconfig.NetConf, rt: Runtime) -> None:
    _builtin_ipam(conf)
    if conf.prev_result is None:
        raise CNIError(CODE_INVALID_CONFIG, "CHECK needs prevResult", "the config has no prevResult")
    _ipam_check(conf, call, conf.prev_result)
    return None


def ipam_gc(call: Call, conf: cniconfig.NetConf, rt: Runtime) -> None:
    _builtin_ipam(conf)
    _ipam_gc(conf, call, _valid_attachments(conf))
    return None


def ipam_status(call: Call, conf: cniconfig.NetConf, rt: Runtime) -> None:
    _builtin_ipam(conf)
    return bridge_status(call, conf, rt)


Handler = Callable[[Call, cniconfig.NetConf, Runtime], Result | None]

BRIDGE_VERBS: dict[str, Handler] = {
    "ADD": bridge_add, "DEL": bridge_del, "CHECK": bridge_check, "GC": bridge_gc, "STATUS": bridge_status,
}
IPAM_VERBS: dict[str, Handler] = {
    "ADD": ipam_add, "DEL": ipam_del, "CHECK": ipam_check, "GC": ipam_gc, "STATUS": ipam_status,
}

__all__ = ["DNS", "PLUGIN_BRIDGE", "PLUGIN_IPAM", "Call", "Response", "Runtime", "dispatch"]
