"""Container logs: where the runtime keeps them, how `netplane logs` gets them.

Each container run appends its stdout+stderr to
``<state-dir>/pods/<uid>/containers/<name>/<restart count>/log``.

`netplane logs POD [-c NAME] [-n NS] [--previous] [--tail N]` finds them in one of two ways:

- ``--state-dir DIR``: read the node's state dir directly (on the same machine, as in the lab);
- otherwise ask the API server for the pod, take its node, and fetch
  ``GET http://<node InternalIP>:<logs port>/containerLogs/<ns>/<pod>/<container>?previous=&tailLines=``
  (the kubelet's path) from the node agent; when the node advertises its state dir
  (annotation ``netplane.io/state-dir``) and that directory is visible here, it is read
  directly instead: in the lab the node addresses live in namespaces the CLI may not reach.
"""

from __future__ import annotations

import json
import os
from typing import Any

from aiohttp import web

ANNOTATION_STATE_DIR = "netplane.io/state-dir"
ANNOTATION_LOGS_PORT = "netplane.io/logs-port"


class LogsError(Exception):
    pass


def _tail(data: bytes, lines: int) -> bytes:
    if lines < 0:
        return data
    if lines == 0:
        return b""
    parts = data.splitlines(keepends=True)
    return b"".join(parts[-lines:])


def find_pod_dir(state_dir: str, namespace: str, pod: str) -> tuple[str, dict[str, Any]]:
    pods_dir = os.path.join(state_dir, "pods")
    try:
        uids = os.listdir(pods_dir)
    except OSError as e:
        raise LogsError(f"cannot read {pods_dir}: {e}") from None
    found: list[tuple[float, str, dict[str, Any]]] = []
    for uid in uids:
        try:
            with open(os.path.join(pods_dir, uid, "pod.json"), encoding="utf-8") as f:
                doc = json.load(f)
        except (OSError, ValueError):
            continue
        if doc.get("namespace") == namespace and doc.get("name") == pod:
            found.append((float(doc.get("created") or 0), os.path.join(pods_dir, uid), doc))
    if not found:
        raise LogsError(f'pod "{pod}" not found in namespace "{namespace}" on this node ({state_dir})')
    _, d, doc = max(found, key=lambda t: t[0])
    return d, doc


def read_local(state_dir: str, namespace: str, pod: str, container: str | None = None,
               previous: bool = False, tail: int = -1) -> bytes:
    pod_dir, _ = find_pod_dir(state_dir, namespace, pod)
    cdir = os.path.join(pod_dir, "containers")
    try:
        names = sorted(os.listdir(cdir))
    except OSError:
        names = []
    if container is None:
        if len(names) != 1:
            raise LogsError(f"a container name must be specified for pod {pod}, choose one of: [{' '.join(names)}]"
                            if names else f"pod {pod} has no container logs yet")
        container = names[0]
    if container not in names:
        raise LogsError(f"container {container} is not valid for pod {pod}")
    runs = sorted(int(n) for n in os.listdir(os.path.join(cdir, container)) if n.isdigit())
    if previous:
        if len(runs) < 2:
            raise LogsError(f'previous terminated container "{container}" in pod "{pod}" not found')
        run = runs[-2]
    elif runs:
        run = runs[-1]
    else:
        return b""
    try:
        with open(os.path.join(cdir, container, str(run), "log"), "rb") as f:
            return _tail(f.read(), tail)
    except FileNotFoundError:
        return b""


async def fetch_remote(server: str | None, kubeconfig: str | None, namespace: str | None, pod: str,
                       container: str | None, previous: bool, tail: int) -> bytes:
    import aiohttp

    from netplane.api.resources import must
    from netplane.client.kubeconfig import load_config
    from netplane.client.rest import APIClient, APIConnectionError, APIStatusError

    cfg = load_config(server, kubeconfig)
    ns = namespace or cfg.namespace
    async with APIClient(cfg) as client:
        try:
            obj = await client.get(must("", "v1", "pods"), pod, ns)
            node_name = (obj.get("spec") or {}).get("nodeName")
            if not node_name:
                raise LogsError(f"pod {pod} is not scheduled to a node yet")
            node = await client.get(must("", "v1", "nodes"), node_name)
        except APIStatusError as e:
            raise LogsError(e.message) from None
        except APIConnectionError as e:
            raise LogsError(str(e)) from None
    annotations = (node.get("metadata") or {}).get("annotations") or {}
    state_dir = annotations.get(ANNOTATION_STATE_DIR)
    if state_dir and os.path.isdir(os.path.join(state_dir, "pods")):
        return read_local(state_dir, ns, pod, container, previous, tail)
    address = next((a.get("address") for a in (node.get("status") or {}).get("addresses") or []
                    if a.get("type") == "InternalIP"), None)
    if not address:
        raise LogsError(f"node {node_name} has no InternalIP")
    port = annotations.get(ANNOTATION_LOGS_PORT, "10250")
    if not container:
        names = [c.get("name") for c in (obj.get("spec") or {}).get("containers") or []]
        if len(names) != 1:
            raise LogsError(f"a container name must be specified for pod {pod}, choose one of: [{' '.join(names)}]")
        container = names[0]
    host = f"[{address}]" if ":" in address else address
    url = f"http://{host}:{port}/containerLogs/{ns}/{pod}/{container}"
    params = {"previous": "true" if previous else "false"}
    if tail >= 0:
        params["tailLines"] = str(tail)
    try:
        async with aiohttp.ClientSession() as s, s.get(url, params=params,
                                                      timeout=aiohttp.ClientTimeout(total=30)) as resp:
            body = await resp.read()
            if resp.status != 200:
                raise LogsError(body.decode(errors="replace").strip() or f"HTTP {resp.status} from {url}")
            return body
    except (aiohttp.ClientError, TimeoutError, OSError) as e:
        raise LogsError(f"cannot reach node {node_name} at {url}: {e}") from None


class LogServer:
    """Serves /containerLogs/{ns}/{pod}/{container} from the state dir (the kubelet's endpoint, read-only)."""

    def __init__(self, state_dir: str, host: str, port: int) -> None:
        self.state_dir = state_dir
        self.host = host
        self.port = port
        self._runner: web.AppRunner | None = None

    async def _handle(self, request: web.Request) -> web.Response:
        q = request.query
        try:
            tail = int(q.get("tailLines", "-1"))
            data = read_local(self.state_dir, request.match_info["ns"], request.match_info["pod"],
                              request.match_info["container"], q.get("previous") == "true", tail)
        except LogsError as e:
            return web.Response(status=404, text=str(e) + "\n")
        except ValueError:
            return web.Response(status=400, text="tailLines must be an integer\n")
        return web.Response(body=data, content_type="text/plain")

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/containerLogs/{ns}/{pod}/{container}", self._handle)
        app.router.add_get("/healthz", self._healthz)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.host, self.port, reuse_address=True).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
