"""A small in-memory Kubernetes API server for tests of API clients (informers, agents, the CLI).

It speaks the same wire protocol as kube-apiserver for the resources in netplane.api.resources:
create/get/list/update/merge-patch/delete, Status errors, ``?watch=true`` streams with bookmarks and
``410 Gone`` for a resourceVersion older than its (bounded) history, pagination with limit/continue,
and a Table rendering (NAME, DATA wide-only, AGE) when asked for one. It is deliberately dumb about
everything else (no validation, no defaulting beyond metadata): the point is controllable behaviour
for client tests - drop every watch connection, stop and restart on the same port, compact history,
send a bookmark, and count requests.

Run it on the caller's event loop (``await fake.start()``) or in its own thread for synchronous code
such as CLI tests (``with fake.running_in_thread(): ...``).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from netplane.api.resources import ResourceInfo, lookup

Obj = dict[str, Any]


def _status(code: int, reason: str, message: str) -> Obj:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code}


def _error(code: int, reason: str, message: str) -> web.Response:
    return web.json_response(_status(code, reason, message), status=code)


@dataclass
class _Event:
    rv: int
    type: str
    key: str
    namespace: str
    obj: Obj


@dataclass
class _Watcher:
    key: str
    namespace: str | None
    label_selector: dict[str, str]
    name: str | None
    queue: asyncio.Queue[_Event | None] = field(default_factory=asyncio.Queue)


@dataclass
class RequestRecord:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Any


class FakeAPIServer:
    def __init__(self, history: int = 1000, table_kinds: tuple[str, ...] = ("ConfigMap",),
                 watch_gone_as_event: bool = True) -> None:
        self.objects: dict[tuple[str, str, str], Obj] = {}  # (resource key, namespace, name)
        self.rv = 100
        self.history_size = history
        self.events: list[_Event] = []
        self.compacted_rv = self.rv
        self.table_kinds = table_kinds
        # kube-apiserver answers a too-old watch with 200 and an ERROR event; some servers send 410 up front.
        self.watch_gone_as_event = watch_gone_as_event
        self.requests: list[RequestRecord] = []
        self.port = 0
        self._watchers: list[_Watcher] = []
        self._runner: web.AppRunner | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._watch_requests: dict[int, web.Request] = {}

    # ------------------------------------------------------------------------ lifecycle

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True)
        await site.start()
        if not self.port:
            self.port = int(self._runner.addresses[0][1])
        self._loop = asyncio.get_running_loop()

    async def stop(self) -> None:
        """Stop serving (the data stays, like a restarted server with durable storage)."""
        self.drop_watches()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def drop_watches(self) -> None:
        """Cut every open watch connection, as a crashing server or a broken network would."""
        for w in self._watchers:
            w.queue.put_nowait(None)
        for request in list(self._watch_requests.values()):
            if request.transport is not None:
                request.transport.abort()

    @contextlib.contextmanager
    def running_in_thread(self) -> Iterator[FakeAPIServer]:
        """Serve from a background thread with its own event loop (for synchronous callers)."""
        started = threading.Event()
        loop = asyncio.new_event_loop()

        def serve() -> None:
            asyncio.set_event_loop(loop)
            loop.run_until_complete(self.start())
            started.set()
            loop.run_forever()
            loop.run_until_complete(self.stop())
            loop.close()

        thread = threading.Thread(target=serve, name="fake-apiserver", daemon=True)
        thread.start()
        if not started.wait(10):
            raise RuntimeError("the fake API server did not start")
        try:
            yield self
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(10)

    # ------------------------------------------------------------------------ direct manipulation

    def next_rv(self) -> int:
        self.rv += 1
        return self.rv

    def put_object(self, info: ResourceInfo, obj: Obj) -> Obj:
        """Create or replace an object directly (emits ADDED or MODIFIED)."""
        obj = copy.deepcopy(obj)
        meta = obj.setdefault("metadata", {})
        ns = str(meta.get("namespace") or "") if info.namespaced else ""
        if not info.namespaced:
            meta.pop("namespace", None)
        k = (info.key, ns, meta["name"])
        existing = self.objects.get(k)
        obj.setdefault("apiVersion", info.api_version)
        obj.setdefault("kind", info.kind)
        if existing is None:
            meta.setdefault("uid", str(uuid.uuid4()))
            meta.setdefault("creationTimestamp", datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
        else:
            meta["uid"] = existing["metadata"]["uid"]
            meta["creationTimestamp"] = existing["metadata"]["creationTimestamp"]
        meta["resourceVersion"] = str(self.next_rv())
        self.objects[k] = obj
        self._record("MODIFIED" if existing else "ADDED", info, ns, obj)
        return copy.deepcopy(obj)

    def remove_object(self, info: ResourceInfo, name: str, namespace: str = "") -> Obj | None:
        obj = self.objects.pop((info.key, namespace if info.namespaced else "", name), None)
        if obj is None:
            return None
        obj = copy.deepcopy(obj)
        obj["metadata"]["resourceVersion"] = str(self.next_rv())
        self._record("DELETED", info, namespace, obj)
        return obj

    def compact(self) -> None:
        """Forget all history: any watch from an older resourceVersion gets 410 Gone."""
        self.events.clear()
        self.compacted_rv = self.rv

    def send_bookmark(self) -> None:
        """Tell every watcher the current resourceVersion (a BOOKMARK event)."""
        for w in self._watchers:
            w.queue.put_nowait(_Event(self.rv, "BOOKMARK", w.key, "", {}))

    def call_threadsafe(self, fn: Any, *args: Any) -> Any:
        """Run a manipulation method on the server's loop from another thread and return its result."""
        assert self._loop is not None

        async def call() -> Any:
            return fn(*args)

        return asyncio.run_coroutine_threadsafe(call(), self._loop).result(10)

    def _record(self, etype: str, info: ResourceInfo, ns: str, obj: Obj) -> None:
        ev = _Event(int(obj["metadata"]["resourceVersion"]), etype, info.key, ns, copy.deepcopy(obj))
        self.events.append(ev)
        if len(self.events) > self.history_size:
            dropped = self.events.pop(0)
            self.compacted_rv = dropped.rv
        for w in self._watchers:
            if self._matches(w, ev):
                w.queue.put_nowait(ev)

    @staticmethod
    def _matches(w: _Watcher, ev: _Event) -> bool:
        if ev.key != w.key or (w.namespace and ev.namespace != w.namespace):
            return False
        if w.name and ev.obj["metadata"]["name"] != w.name:
            return False
        labels = ev.obj["metadata"].get("labels") or {}
        return all(labels.get(k) == v for k, v in w.label_selector.items())

    # ------------------------------------------------------------------------ HTTP

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        body: Any = None
        if raw:
            try:
                body = json.loads(raw)
            except ValueError:
                return _error(400, "BadRequest", "the body is not JSON")
        self.requests.append(RequestRecord(request.method, request.path, dict(request.query),
                                           dict(request.headers), body))
        parts = [p for p in request.path.split("/") if p]
        if parts == ["version"]:
            return web.json_response({"major": "1", "minor": "30", "gitVersion": "v1.30.0-fake"})
        if parts[:1] == ["api"] and len(parts) >= 2:
            group, version, rest = "", parts[1], parts[2:]
        elif parts[:1] == ["apis"] and len(parts) >= 3:
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            return _error(404, "NotFound", "the server could not find the requested resource")
        namespace = None
        if len(rest) >= 3 and rest[0] == "namespaces":
            namespace, rest = rest[1], rest[2:]
        if not rest:
            return _error(404, "NotFound", "the server could not find the requested resource")
        info = lookup(group, version, rest[0])
        if info is None:
            return _error(404, "NotFound", "the server could not find the requested resource")
        name = rest[1] if len(rest) > 1 else None
        ns = namespace or ""
        method = request.method
        if name is None:
            if method == "GET" and request.query.get("watch") in ("true", "1"):
                return await self._watch(request, info, namespace)
            if method == "GET":
                return self._list(request, info, namespace)
            if method == "POST":
                return self._create(info, ns, body)
            return _error(405, "MethodNotAllowed", f"{method} is not supported on a collection")
        k = (info.key, ns if info.namespaced else "", name)
        current = self.objects.get(k)
        if current is None:
            return _error(404, "NotFound", f'{info.plural} "{name}" not found')
        if method == "GET":
            if info.kind in self.table_kinds and "as=Table" in request.headers.get("Accept", ""):
                return web.json_response(self._table([current]))
            return web.json_response(current)
        if method == "PUT":
            if not isinstance(body, dict):
                return _error(400, "BadRequest", "the body must be an object")
            sent_rv = (body.get("metadata") or {}).get("resourceVersion")
            if sent_rv and sent_rv != current["metadata"]["resourceVersion"]:
                return _error(409, "Conflict", f'Operation cannot be fulfilled on {info.plural} "{name}": '
                              "the object has been modified; please apply your changes to the latest "
                              "version and try again")
            body.setdefault("metadata", {})["namespace"] = ns
            return web.json_response(self.put_object(info, body))
        if method == "PATCH":
            if request.content_type != "application/merge-patch+json":
                return _error(415, "UnsupportedMediaType", f"{request.content_type} is not supported")
            return web.json_response(self.put_object(info, _merge_patch(current, body)))
        if method == "DELETE":
            deleted = self.remove_object(info, name, ns)
            return web.json_response(deleted)
        return _error(405, "MethodNotAllowed", f"{method} is not supported")

    def _create(self, info: ResourceInfo, ns: str, body: Any) -> web.Response:
        if not isinstance(body, dict) or not (body.get("metadata") or {}).get("name"):
            return _error(422, "Invalid", "metadata.name: Required value")
        name = body["metadata"]["name"]
        if (info.key, ns, name) in self.objects:
            return _error(409, "AlreadyExists", f'{info.plural} "{name}" already exists')
        body["metadata"]["namespace"] = ns
        return web.json_response(self.put_object(info, body), status=201)

    def _selected(self, request: web.Request, info: ResourceInfo, namespace: str | None) -> list[Obj]:
        labels = _parse_selector(request.query.get("labelSelector", ""))
        name = _field_name(request.query.get("fieldSelector", ""))
        out = []
        for (key, ns, n), obj in sorted(self.objects.items()):
            if key != info.key or (namespace and ns != namespace) or (name and n != name):
                continue
            have = obj["metadata"].get("labels") or {}
            if all(have.get(k) == v for k, v in labels.items()):
                out.append(obj)
        return out

    def _list(self, request: web.Request, info: ResourceInfo, namespace: str | None) -> web.Response:
        items = self._selected(request, info, namespace)
        if info.kind in self.table_kinds and "as=Table" in request.headers.get("Accept", ""):
            return web.json_response(self._table(items))
        meta: Obj = {"resourceVersion": str(self.rv)}
        limit = int(request.query.get("limit") or 0)
        start = int(request.query.get("continue") or 0)
        if limit:
            page = items[start:start + limit]
            if start + limit < len(items):
                meta["continue"] = str(start + limit)
            items = page
        # Like kube-apiserver, list items carry no apiVersion/kind.
        bare = [{k: v for k, v in o.items() if k not in ("apiVersion", "kind")} for o in items]
        return web.json_response({"kind": f"{info.kind}List", "apiVersion": info.api_version,
                                  "metadata": meta, "items": bare})

    def _table(self, items: list[Obj]) -> Obj:
        return {
            "kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": {"resourceVersion": str(self.rv)},
            "columnDefinitions": [
                {"name": "Name", "type": "string", "format": "name", "priority": 0},
                {"name": "Data", "type": "integer", "format": "", "priority": 1},
                {"name": "Age", "type": "string", "format": "", "priority": 0},
            ],
            "rows": [{"cells": [o["metadata"]["name"], len(o.get("data") or {}), "5m"],
                      "object": {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
                                 "metadata": o["metadata"]}} for o in items],
        }

    async def _watch(self, request: web.Request, info: ResourceInfo,
                     namespace: str | None) -> web.StreamResponse:
        q = request.query
        rv_text = q.get("resourceVersion", "")
        w = _Watcher(info.key, namespace, _parse_selector(q.get("labelSelector", "")),
                     _field_name(q.get("fieldSelector", "")))
        backlog: list[_Event] = []
        if rv_text in ("", "0"):
            for obj in self._selected(request, info, namespace):
                backlog.append(_Event(int(obj["metadata"]["resourceVersion"]), "ADDED", info.key, "", obj))
        else:
            since = int(rv_text)
            if since < self.compacted_rv:
                status = _status(410, "Expired", f"too old resource version: {since} ({self.compacted_rv})")
                if not self.watch_gone_as_event:
                    return web.json_response(status, status=410)
                resp = web.StreamResponse(headers={"Content-Type": "application/json"})
                await resp.prepare(request)
                await resp.write(json.dumps({"type": "ERROR", "object": status}).encode() + b"\n")
                await resp.write_eof()
                return resp
            backlog = [e for e in self.events if e.rv > since and self._matches(w, e)]
        timeout = float(q["timeoutSeconds"]) if "timeoutSeconds" in q else None
        bookmarks = q.get("allowWatchBookmarks") == "true"
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        await resp.prepare(request)
        self._watchers.append(w)
        self._watch_requests[id(request)] = request
        try:
            for past in backlog:
                w.queue.put_nowait(past)
            loop = asyncio.get_running_loop()
            deadline = None if timeout is None else loop.time() + timeout
            while True:
                remaining = None if deadline is None else deadline - loop.time()
                if remaining is not None and remaining <= 0:
                    break
                try:
                    ev: _Event | None = await asyncio.wait_for(w.queue.get(), remaining)
                except TimeoutError:
                    break
                if ev is None:
                    break
                if ev.type == "BOOKMARK":
                    if not bookmarks:
                        continue
                    payload: Obj = {"type": "BOOKMARK", "object": {
                        "kind": info.kind, "apiVersion": info.api_version,
                        "metadata": {"resourceVersion": str(ev.rv)}}}
                else:
                    payload = {"type": ev.type, "object": ev.obj}
                await resp.write(json.dumps(payload).encode() + b"\n")
            await resp.write_eof()
        except ConnectionResetError:
            pass  # the client went away
        finally:
            self._watchers.remove(w)
            self._watch_requests.pop(id(request), None)
        return resp


def _parse_selector(text: str) -> dict[str, str]:
    """Equality-only label selectors (all a client test needs)."""
    out = {}
    for part in filter(None, text.split(",")):
        k, _, v = part.partition("=")
        out[k.strip()] = v.lstrip("=").strip()
    return out


def _field_name(text: str) -> str | None:
    for part in filter(None, text.split(",")):
        k, _, v = part.partition("=")
        if k.strip() == "metadata.name":
            return v.lstrip("=").strip()
    return None


def _merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = copy.deepcopy(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = _merge_patch(out.get(k), v)
    return out
