"""What `lab status` prints and how `lab exec` finds a pod's namespace."""

from __future__ import annotations

import subprocess
from typing import Any

from netplane.api import resources as res
from netplane.kernel import labnet
from netplane.lab.cluster import Lab, LabError

PODS = res.must("", "v1", "pods")
NODES = res.must("", "v1", "nodes")
SERVICES = res.must("", "v1", "services")


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("   ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)


def render_status(lab: Lab) -> str:
    p = lab.plan
    out = [f"lab {p.prefix.rstrip('-')}: {len(p.nodes)} nodes, backend {p.backend}, proxy {p.proxy_mode}",
           f"API {p.api_url} (inside namespace {p.control_plane.netns})", ""]
    rows = [["DAEMON", "NAMESPACE", "PID", "STATE"]]
    for d in lab.procs.daemons.values():
        rows.append([d.name, d.netns, str(d.pid), "running" if d.alive() else "EXITED"])
    out += [_table(rows), ""]

    async def fetch(client: Any) -> tuple[Any, Any, Any]:
        return (await client.list(NODES), await client.list(PODS), await client.list(SERVICES))

    try:
        nodes, pods, svcs = lab.api(fetch)
    except Exception as e:
        out.append(f"state server unreachable: {e}")
        return "\n".join(out)
    rows = [["NODE", "STATUS", "ADDRESS", "POD CIDR"]]
    for n in nodes["items"]:
        ready = any(c.get("type") == "Ready" and c.get("status") == "True"
                    for c in (n.get("status") or {}).get("conditions") or [])
        addr = next((a["address"] for a in (n.get("status") or {}).get("addresses") or []
                     if a.get("type") == "InternalIP"), "")
        status = "Ready" if ready else "NotReady"
        if (n.get("spec") or {}).get("unschedulable"):
            status += ",SchedulingDisabled"
        rows.append([n["metadata"]["name"], status, addr, (n.get("spec") or {}).get("podCIDR", "")])
    out += [_table(rows), ""]
    rows = [["NAMESPACE", "POD", "PHASE", "IP", "NODE"]]
    for pod in pods["items"]:
        rows.append([pod["metadata"]["namespace"], pod["metadata"]["name"],
                     (pod.get("status") or {}).get("phase", ""), (pod.get("status") or {}).get("podIP", ""),
                     (pod.get("spec") or {}).get("nodeName", "")])
    out += [_table(rows), ""]
    rows = [["NAMESPACE", "SERVICE", "TYPE", "CLUSTER-IP", "PORTS"]]
    for s in svcs["items"]:
        spec = s.get("spec") or {}
        ports = ",".join(f"{pt['port']}" + (f":{pt['nodePort']}" if pt.get("nodePort") else "")
                         + f"/{pt.get('protocol', 'TCP')}" for pt in spec.get("ports") or [])
        rows.append([s["metadata"]["namespace"], s["metadata"]["name"], spec.get("type", ""),
                     spec.get("clusterIP", ""), ports])
    out.append(_table(rows))
    return "\n".join(out)


def pod_netns(lab: Lab, name: str, namespace: str) -> str:
    """The sandbox namespace of a running pod: the lab namespace that holds the pod's IP."""

    async def get(client: Any) -> Any:
        return await client.get(PODS, name, namespace)

    try:
        pod = lab.api(get)
    except Exception as e:
        raise LabError(f"pod {namespace}/{name}: {e}") from None
    ip = (pod.get("status") or {}).get("podIP")
    if not ip:
        raise LabError(f"pod {namespace}/{name} has no IP yet (phase {(pod.get('status') or {}).get('phase')})")
    for ns in labnet.list_netns(lab.plan.pod_netns_prefix):
        out = subprocess.run(["ip", "-n", ns, "-4", "-o", "addr", "show"], capture_output=True, text=True,
                             timeout=10, check=False).stdout
        if f" {ip}/" in out:
            return ns
    raise LabError(f"pod {namespace}/{name} ({ip}) has no sandbox namespace on this machine")


def pod_exec_argv(lab: Lab, name: str, namespace: str, command: list[str]) -> list[str]:
    return labnet.netns_exec_argv(pod_netns(lab, name, namespace), command)
