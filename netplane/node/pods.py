"""The pure half of the lab pod runtime: images, env, resolv.conf, restart and status decisions.

Images: the lab has no container images. A container's image picks what runs
(the name is compared without registry, tag or digest):

- echo images (ECHO_IMAGES: netplane/echo-server, echo-server, agnhost, nginx,
  httpd, hashicorp/http-echo, traefik/whoami, ealen/echo-server, ...) run
  `netplane echo-server`: HTTP on the container's TCP ports (the image's usual
  port when none are declared; agnhost's --http-port and http-echo's -listen are
  honoured), UDP echo on its UDP ports; the container's command is ignored;
- DNS images (DNS_IMAGES: netplane/dns, coredns/coredns, coredns, and the same under any registry
  such as registry.k8s.io/coredns/coredns) run `netplane dns`: for netplane/dns the container's
  args are `netplane dns` flags; CoreDNS images' args are CoreDNS flags (`-conf ...`) and are
  ignored. `--listen 0.0.0.0:<port>` is added unless the args say otherwise, where the port is the
  container's first UDP port (53 when none). The state server comes from `--server` in the args
  or else the NETPLANE_SERVER variable in the container's env;
- busybox and alpine run the container's command + args with /bin/busybox
  (`sh`, `sleep`, `nc`, `wget`, ... are its applets); a command is required;
- any other image with a command runs that command as given, on the host's binaries;
- any other image without a command runs nothing: the container waits with reason
  ImageNotSupported and the pod is Failed with that reason.

There is no filesystem isolation: commands see the host's files (the pod's
/etc/resolv.conf and /etc/hosts are its own, through `ip netns exec`).
"""

from __future__ import annotations

import ipaddress
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

BUSYBOX = "/bin/busybox"

ECHO_IMAGES: dict[str, int] = {
    # image name -> the port it serves on when the container declares none
    "netplane/echo-server": 8080, "echo-server": 8080, "agnhost": 8080,
    "e2e-test-images/agnhost": 8080, "nginx": 80, "library/nginx": 80, "nginxinc/nginx-unprivileged": 8080,
    "httpd": 80, "library/httpd": 80, "hashicorp/http-echo": 5678, "traefik/whoami": 80,
    "ealen/echo-server": 80, "jmalloc/echo-server": 8080, "k8s.gcr.io/echoserver": 8080, "echoserver": 8080,
    "kicbase/echo-server": 8080, "mendhak/http-https-echo": 8080,
}
BUSYBOX_IMAGES = {"busybox", "library/busybox", "alpine", "library/alpine"}
# image name -> whether the container's args are `netplane dns` flags (CoreDNS's are its own)
DNS_IMAGES: dict[str, bool] = {"netplane/dns": True, "coredns/coredns": False, "coredns": False}


class ImageNotSupported(Exception):
    """The image has no lab mapping and the container has no command."""


@dataclass(frozen=True, slots=True)
class ContainerPlan:
    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...] = ()
    kind: str = "command"  # "echo", "dns", "busybox" or "command"


def image_name(image: str) -> str:
    """'docker.io/library/nginx:1.25@sha256:...' -> 'library/nginx'; 'busybox' -> 'busybox'."""
    name = image.split("@", 1)[0]
    last = name.rsplit("/", 1)[-1]
    if ":" in last:
        name = name[: len(name) - len(last)] + last.split(":", 1)[0]
    parts = name.split("/")
    if len(parts) > 1 and ("." in parts[0] or ":" in parts[0] or parts[0] == "localhost"):
        parts = parts[1:]  # a registry host
    return "/".join(parts).lower()


def _echo_key(name: str) -> str | None:
    if name in ECHO_IMAGES:
        return name
    tail = name.rsplit("/", 1)[-1]
    for key in ECHO_IMAGES:
        if key.rsplit("/", 1)[-1] == tail and tail in ("agnhost", "echo-server", "echoserver", "http-echo"):
            return key
    return None


def _is_busybox(name: str) -> bool:
    return name in BUSYBOX_IMAGES or name.rsplit("/", 1)[-1] in ("busybox", "alpine")


def _arg_port(args: Sequence[str], *flags: str) -> int | None:
    """A port from '--http-port=8080', '--http-port 8080' or '-listen=:5678' style args."""
    for i, a in enumerate(args):
        for flag in flags:
            value = None
            if a.startswith(flag + "="):
                value = a[len(flag) + 1:]
            elif a == flag and i + 1 < len(args):
                value = args[i + 1]
            if value is not None:
                m = re.search(r"(\d+)$", value)
                if m:
                    return int(m.group(1))
    return None


def plan_container(container: Mapping[str, Any], python: str = sys.executable) -> ContainerPlan:
    """What to run for one container (see the module docstring); ImageNotSupported if nothing fits."""
    image = str(container.get("image") or "")
    name = image_name(image)
    command = [str(c) for c in container.get("command") or []]
    args = [str(a) for a in container.get("args") or []]
    echo = _echo_key(name)
    if echo is not None:
        http: list[int] = []
        udp: list[int] = []
        for p in container.get("ports") or []:
            port = p.get("containerPort")
            if not isinstance(port, int):
                continue
            (udp if str(p.get("protocol") or "TCP").upper() == "UDP" else http).append(port)
        flag_http = _arg_port(args, "--http-port", "-listen", "--port", "-port")
        flag_udp = _arg_port(args, "--udp-port")
        if flag_http and flag_http not in http:
            http.append(flag_http)
        if flag_udp and flag_udp not in udp:
            udp.append(flag_udp)
        if not http and not udp:
            http = [ECHO_IMAGES[echo]]
        argv = [python, "-m", "netplane.node.echo"]
        for p in http:
            argv += ["--http-port", str(p)]
        for p in udp:
            argv += ["--udp-port", str(p)]
        env = (("NETPLANE_ECHO_HTTP_PORTS", ",".join(map(str, http))),
               ("NETPLANE_ECHO_UDP_PORTS", ",".join(map(str, udp))))
        return ContainerPlan(tuple(argv), env, "echo")
    if name in DNS_IMAGES:
        return _dns_plan(container, args if DNS_IMAGES[name] else [], python)
    full = command + args
    if _is_busybox(name):
        if not command:
            raise ImageNotSupported(
                f"image {image!r} runs /bin/busybox in the lab, which needs the container's command")
        first = full[0].rsplit("/", 1)[-1] if full[0].startswith("/") else full[0]
        if first == "busybox":
            return ContainerPlan((BUSYBOX, *full[1:]), (), "busybox")
        return ContainerPlan((BUSYBOX, first, *full[1:]), (), "busybox")
    if not command:
        raise ImageNotSupported(
            f"image {image!r} has no lab mapping and the container has no command "
            f"(lab images: {', '.join(sorted(ECHO_IMAGES))}; busybox/alpine with a command)")
    return ContainerPlan(tuple(full), (), "command")


def _dns_plan(container: Mapping[str, Any], flags: list[str], python: str) -> ContainerPlan:
    if not any(f == "--listen" or f.startswith("--listen=") for f in flags):
        port = next((p["containerPort"] for p in container.get("ports") or []
                     if str(p.get("protocol") or "TCP").upper() == "UDP" and isinstance(p.get("containerPort"), int)),
                    53)
        flags = [*flags, "--listen", f"0.0.0.0:{port}"]
    return ContainerPlan((python, "-m", "netplane.cli.main", "dns", *flags), (), "dns")


# -- env --------------------------------------------------------------------------

_VAR_REF = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_.\-]*)\)|\$\$")


def expand(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes' $(VAR) expansion: defined names are replaced, $$ escapes, undefined stay as written."""
    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        return env.get(m.group(1), m.group(0))

    return _VAR_REF.sub(sub, text)


def _field_ref(path: str, pod: Mapping[str, Any], pod_ips: Sequence[str], host_ip: str) -> str:
    meta = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    m = re.match(r"^metadata\.(labels|annotations)\['(.+)'\]$", path)
    if m:
        return str((meta.get(m.group(1)) or {}).get(m.group(2), ""))
    values = {
        "metadata.name": meta.get("name"), "metadata.namespace": meta.get("namespace"),
        "metadata.uid": meta.get("uid"), "spec.nodeName": spec.get("nodeName"),
        "spec.serviceAccountName": spec.get("serviceAccountName") or "default",
        "status.podIP": pod_ips[0] if pod_ips else "", "status.podIPs": ",".join(pod_ips),
        "status.hostIP": host_ip, "status.hostIPs": host_ip,
    }
    if path not in values:
        raise ValueError(f"unsupported fieldRef {path!r}")
    return str(values[path] or "")


def container_env(pod: Mapping[str, Any], container: Mapping[str, Any], pod_ips: Sequence[str], host_ip: str,
                  kubernetes_service: tuple[str, int] | None = None) -> list[tuple[str, str]]:
    """The container's environment in kubelet's order: service env first, then the container's own.

    Besides the declared env: KUBERNETES_SERVICE_HOST/PORT (and the docker-link style
    KUBERNETES_PORT*), and POD_NAME/POD_NAMESPACE/POD_IP/NODE_NAME unless declared,
    which the echo server reads. secretKeyRef/configMapKeyRef/resourceFieldRef and envFrom
    are not supported: ValueError names the variable.
    """
    meta = pod.get("metadata") or {}
    env: dict[str, str] = {}
    if kubernetes_service is not None:
        host, port = kubernetes_service
        env.update({
            "KUBERNETES_SERVICE_HOST": host, "KUBERNETES_SERVICE_PORT": str(port),
            "KUBERNETES_SERVICE_PORT_HTTPS": str(port), "KUBERNETES_PORT": f"tcp://{host}:{port}",
            f"KUBERNETES_PORT_{port}_TCP": f"tcp://{host}:{port}", f"KUBERNETES_PORT_{port}_TCP_PROTO": "tcp",
            f"KUBERNETES_PORT_{port}_TCP_PORT": str(port), f"KUBERNETES_PORT_{port}_TCP_ADDR": host,
        })
    if container.get("envFrom"):
        raise ValueError("envFrom is not supported by the lab runtime")
    declared: dict[str, str] = {}
    for item in container.get("env") or []:
        name = str(item.get("name") or "")
        if not name:
            continue
        if "valueFrom" in item and item["valueFrom"] is not None:
            src = item["valueFrom"]
            if "fieldRef" in src:
                declared[name] = _field_ref(str(src["fieldRef"].get("fieldPath") or ""), pod, pod_ips, host_ip)
            else:
                raise ValueError(f"env {name}: only fieldRef is supported by the lab runtime")
        else:
            declared[name] = expand(str(item.get("value") or ""), {**env, **declared})
    defaults = {"POD_NAME": meta.get("name"), "POD_NAMESPACE": meta.get("namespace"),
                "POD_IP": pod_ips[0] if pod_ips else "", "NODE_NAME": (pod.get("spec") or {}).get("nodeName"),
                "HOSTNAME": meta.get("name")}
    for k, v in defaults.items():
        if k not in declared:
            env[k] = str(v or "")
    env.update(declared)
    return list(env.items())


def resolv_conf(namespace: str, nameserver: str = "10.96.0.10", domain: str = "cluster.local",
                dns_policy: str = "ClusterFirst", dns_config: Mapping[str, Any] | None = None,
                host_resolv: str = "") -> str:
    """The pod's /etc/resolv.conf (kubelet's ClusterFirst layout; Default copies the node's)."""
    if dns_policy == "Default":
        return host_resolv
    servers = [nameserver] if dns_policy != "None" else []
    search = [f"{namespace}.svc.{domain}", f"svc.{domain}", domain] if dns_policy != "None" else []
    options: dict[str, str | None] = {"ndots": "5"} if dns_policy != "None" else {}
    cfg = dns_config or {}
    servers += [str(s) for s in cfg.get("nameservers") or [] if str(s) not in servers]
    search += [str(s) for s in cfg.get("searches") or [] if str(s) not in search]
    for o in cfg.get("options") or []:
        options[str(o.get("name"))] = None if o.get("value") is None else str(o.get("value"))
    lines = [f"nameserver {s}" for s in servers[:3]]
    if search:
        lines.append("search " + " ".join(search[:6]))
    if options:
        lines.append("options " + " ".join(k if v is None else f"{k}:{v}" for k, v in options.items()))
    return "\n".join(lines) + "\n"


def hosts_file(pod_name: str, pod_ips: Sequence[str], hostname: str | None = None,
               subdomain: str | None = None, namespace: str = "", domain: str = "cluster.local") -> str:
    """/etc/hosts as the kubelet writes it for a pod."""
    lines = ["# Kubernetes-managed hosts file (netplane lab).", "127.0.0.1\tlocalhost",
             "::1\tlocalhost ip6-localhost ip6-loopback"]
    host = hostname or pod_name
    names = [host]
    if subdomain:
        names.insert(0, f"{host}.{subdomain}.{namespace}.svc.{domain}")
    for ip in pod_ips:
        lines.append(f"{ip}\t{' '.join(names)}")
    return "\n".join(lines) + "\n"


# -- restarts -------------------------------------------------------------------------

BACKOFF_INITIAL = 10.0  # kubelet: 10 s doubling up to 5 min
BACKOFF_MAX = 300.0


def should_restart(restart_policy: str, exit_code: int) -> bool:
    if restart_policy == "Always":
        return True
    if restart_policy == "OnFailure":
        return exit_code != 0
    return False


def restart_delay(restart_count: int, initial: float = BACKOFF_INITIAL, maximum: float = BACKOFF_MAX) -> float:
    """Crash-loop backoff before restart number restart_count+1 (0 for the first restart after one run)."""
    if restart_count <= 0:
        return 0.0
    return float(min(maximum, initial * (2 ** (restart_count - 1))))


# -- termination ---------------------------------------------------------------------------

# kubelet's minimumGracePeriodInSeconds: however little of the grace period is left (a preStop
# hook used it up, or it was 0 to begin with), a container gets this long from SIGTERM to SIGKILL.
MIN_STOP_GRACE = 2.0


class HookError(ValueError):
    """A lifecycle hook the runtime cannot run (the kubelet records FailedPreStopHook and goes on)."""


@dataclass(frozen=True, slots=True)
class PreStopHook:
    """A container's ``lifecycle.preStop`` handler: exec, httpGet, or sleep (Kubernetes >= 1.29)."""

    kind: str  # "exec" | "httpGet" | "sleep"
    action: Mapping[str, Any]

    @staticmethod
    def parse(container: Mapping[str, Any]) -> PreStopHook | None:
        """The hook, None when the container has none; HookError when it names no runnable action.

        tcpSocket is accepted by the API for backward compatibility but never runs (kubelet
        fails it at run time), so it is an error here too.
        """
        handler = (container.get("lifecycle") or {}).get("preStop")
        if not handler:
            return None
        for kind in ("exec", "httpGet", "sleep"):
            action = handler.get(kind)
            if action is not None:
                hook = PreStopHook(kind, action)
                if kind == "sleep":
                    hook.sleep_seconds()  # validate now, not at deletion
                elif kind == "exec" and not hook.command():
                    raise HookError("preStop exec has no command")
                return hook
        raise HookError(f"preStop has no supported action (exec, httpGet, sleep): {sorted(handler)}")

    def sleep_seconds(self) -> float:
        seconds = self.action.get("seconds")
        if not isinstance(seconds, int) or isinstance(seconds, bool) or seconds < 0:
            raise HookError(f"preStop sleep.seconds must be a non-negative integer, not {seconds!r}")
        return float(seconds)

    def command(self) -> list[str]:
        return [str(c) for c in self.action.get("command") or []]


def stop_grace(grace: float, hook_took: float = 0.0) -> float:
    """Seconds from SIGTERM to SIGKILL when a preStop hook took `hook_took` of the `grace` period.

    kubelet's killContainer: the hook's time comes off the grace period, with a floor of
    MIN_STOP_GRACE (for a hook that used it all up, its "one-off 2 second extension").
    """
    return max(grace - hook_took, MIN_STOP_GRACE)


# -- status ------------------------------------------------------------------------------

@dataclass
class ContainerView:
    """The runtime's facts about one container, for status computation."""

    name: str
    image: str
    restart_count: int = 0
    running: bool = False
    started_at: str | None = None
    exit_code: int | None = None
    finished_at: str | None = None
    terminated_reason: str | None = None
    waiting_reason: str | None = None
    waiting_message: str | None = None
    ready: bool = False
    last_exit_code: int | None = None
    last_started_at: str | None = None
    last_finished_at: str | None = None
    container_id: str = ""


@dataclass
class PodView:
    containers: list[ContainerView] = field(default_factory=list)
    pod_ips: list[str] = field(default_factory=list)
    host_ip: str = ""
    start_time: str | None = None
    sandbox_ready: bool = False
    failed_reason: str | None = None
    failed_message: str | None = None


def _container_status(c: ContainerView) -> dict[str, Any]:
    st: dict[str, Any] = {"name": c.name, "image": c.image, "imageID": "", "restartCount": c.restart_count,
                          "ready": c.ready, "started": c.running}
    if c.container_id:
        st["containerID"] = c.container_id
    if c.running:
        st["state"] = {"running": {"startedAt": c.started_at}}
    elif c.exit_code is not None and c.waiting_reason is None:
        st["state"] = {"terminated": {"exitCode": c.exit_code,
                                      "reason": c.terminated_reason or ("Completed" if c.exit_code == 0 else "Error"),
                                      "startedAt": c.started_at, "finishedAt": c.finished_at}}
    else:
        waiting: dict[str, Any] = {"reason": c.waiting_reason or "ContainerCreating"}
        if c.waiting_message:
            waiting["message"] = c.waiting_message
        st["state"] = {"waiting": waiting}
    if c.last_exit_code is not None:
        st["lastState"] = {"terminated": {"exitCode": c.last_exit_code,
                                          "reason": "Completed" if c.last_exit_code == 0 else "Error",
                                          "startedAt": c.last_started_at, "finishedAt": c.last_finished_at}}
    else:
        st["lastState"] = {}
    return st


def pod_phase(view: PodView, restart_policy: str) -> str:
    """kubelet's getPhase, for regular containers."""
    if view.failed_reason:
        return "Failed"
    cs = view.containers
    if not cs or not view.sandbox_ready:
        return "Pending"
    running = sum(1 for c in cs if c.running)
    waiting = sum(1 for c in cs if not c.running and (c.exit_code is None or c.waiting_reason is not None)
                  and c.last_exit_code is None)
    stopped = sum(1 for c in cs if not c.running and c.exit_code is not None and c.waiting_reason is None)
    succeeded = sum(1 for c in cs if not c.running and c.exit_code == 0 and c.waiting_reason is None)
    restarting = sum(1 for c in cs if not c.running and c.waiting_reason is not None and c.last_exit_code is not None)
    if waiting:
        return "Pending"
    if running or restarting:
        return "Running"
    if stopped == len(cs):
        if restart_policy == "Always":
            return "Running"  # it will restart
        if succeeded == len(cs):
            return "Succeeded"
        if restart_policy == "OnFailure":
            return "Running"
        return "Failed"
    return "Pending"


def _condition(ctype: str, ok: bool, now: str, previous: Sequence[Mapping[str, Any]],
               reason: str | None = None) -> dict[str, Any]:
    status = "True" if ok else "False"
    transition = now
    for c in previous:
        if c.get("type") == ctype and c.get("status") == status and c.get("lastTransitionTime"):
            transition = str(c["lastTransitionTime"])
    cond: dict[str, Any] = {"type": ctype, "status": status, "lastProbeTime": None, "lastTransitionTime": transition}
    if reason and not ok:
        cond["reason"] = reason
    return cond


def pod_status(pod: Mapping[str, Any], view: PodView, now: str) -> dict[str, Any]:
    """The whole status the runtime reports for a pod (written with a merge patch to pods/status)."""
    spec = pod.get("spec") or {}
    previous = (pod.get("status") or {}).get("conditions") or []
    phase = pod_phase(view, str(spec.get("restartPolicy") or "Always"))
    containers_ready = bool(view.containers) and all(c.ready for c in view.containers)
    # Not forced false while the pod terminates: the kubelet keeps probing readiness then, so the
    # endpoint's `serving` stays true through a preStop delay (its `ready` is false from the moment
    # deletionTimestamp is set: the EndpointSlice controller sees to that).
    ready = containers_ready and phase == "Running"
    not_ready_reason = None if containers_ready else "ContainersNotReady"
    conditions = [
        _condition("PodReadyToStartContainers", view.sandbox_ready, now, previous),
        _condition("Initialized", True, now, previous),
        _condition("Ready", ready, now, previous, not_ready_reason),
        _condition("ContainersReady", containers_ready, now, previous, not_ready_reason),
        _condition("PodScheduled", True, now, previous),
    ]
    st: dict[str, Any] = {
        "phase": phase, "conditions": conditions, "hostIP": view.host_ip,
        "hostIPs": [{"ip": view.host_ip}] if view.host_ip else [],
        "containerStatuses": [_container_status(c) for c in view.containers],
        "qosClass": "BestEffort",
    }
    if view.pod_ips:
        st["podIP"] = view.pod_ips[0]
        st["podIPs"] = [{"ip": ip} for ip in view.pod_ips]
    if view.start_time:
        st["startTime"] = view.start_time
    if view.failed_reason:
        st["reason"] = view.failed_reason
        st["message"] = view.failed_message or ""
    return st


def status_changed(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> bool:
    return dict(old or {}) != dict(new)


# -- sync decisions ---------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class SyncPlan:
    start: tuple[str, ...] = ()  # pod UIDs to start workers for
    terminate: tuple[str, ...] = ()  # running sandboxes whose pod is being deleted or gone


def plan_sync(pods: Mapping[str, Mapping[str, Any]], running: set[str]) -> SyncPlan:
    """Which pods need a worker started, which sandboxes must go (pure).

    `pods`: uid -> Pod object bound to this node; `running`: uids with a sandbox or worker.
    A terminal pod (Succeeded/Failed) is not started again; a deleted one is not started at all.
    """
    start = []
    for uid, pod in sorted(pods.items()):
        if uid in running:
            continue
        if (pod.get("metadata") or {}).get("deletionTimestamp"):
            continue
        if (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
            continue
        start.append(uid)
    terminate = sorted(uid for uid in running if uid not in pods or
                       (pods[uid].get("metadata") or {}).get("deletionTimestamp"))
    return SyncPlan(tuple(start), tuple(terminate))


def netns_name(prefix: str, uid: str) -> str:
    return f"{prefix}{uid.replace('-', '')[:8]}"


def valid_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
        return True
    except ValueError:
        return False
