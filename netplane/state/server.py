"""The state server's HTTP layer: Kubernetes REST paths over the registry.

Paths, verbs, JSON shapes and status codes follow kube-apiserver so that
kubectl and the official clients work unchanged. Authentication (tokens, TLS)
is a later layer: `make_app` takes the registry only, and a middleware slot is
where an authenticator will sit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

import yaml
from aiohttp import HttpVersion11, web

from netplane.api import jsonbytes, protobuf
from netplane.api import resources as res
from netplane.api.errors import APIError, bad_request
from netplane.api.resources import ResourceInfo
from netplane.api.selectors import FieldSelector, LabelSelector
from netplane.state import discovery
from netplane.state.registry import Registry, WatchEvent, request_warnings

log = logging.getLogger(__name__)

JSON = "application/json"
MAX_BODY = 3 * 1024 * 1024  # kube-apiserver's request size limit


@dataclass(frozen=True, slots=True)
class Target:
    info: ResourceInfo
    namespace: str | None
    name: str | None
    subresource: str | None


def _dumps(obj: Any) -> bytes:
    return jsonbytes.dumps(obj)


def json_response(obj: Any, status: int = 200) -> web.Response:
    return web.Response(body=_dumps(obj), status=status, content_type=JSON)


def status_response(err: APIError) -> web.Response:
    return json_response(err.status(), err.code)


def not_found_path() -> APIError:
    return APIError(404, "the server could not find the requested resource", "NotFound", {})


def parse_target(parts: list[str]) -> tuple[str, str, list[str]] | None:
    """Split /api/v1/... or /apis/g/v/... into (group, version, rest)."""
    if len(parts) >= 2 and parts[0] == "api":
        return "", parts[1], parts[2:]
    if len(parts) >= 3 and parts[0] == "apis":
        return parts[1], parts[2], parts[3:]
    return None


def resolve(group: str, version: str, rest: list[str]) -> tuple[Target, bool] | None:
    """The resource a path names, and whether it used the legacy /watch/ prefix."""
    legacy_watch = False
    if rest and rest[0] == "watch":
        legacy_watch = True
        rest = rest[1:]
    ns: str | None = None
    if len(rest) >= 3 and rest[0] == "namespaces":
        info = res.lookup(group, version, rest[2])
        if info is not None and info.namespaced:
            ns = rest[1]
            rest = rest[2:]
    if not rest or len(rest) > 3:
        return None
    info = res.lookup(group, version, rest[0])
    if info is None:
        return None
    name = rest[1] if len(rest) >= 2 else None
    sub = rest[2] if len(rest) == 3 else None
    if sub is not None and sub not in info.subresources:
        return None
    return Target(info, ns, name, sub), legacy_watch


class APIServer:
    def __init__(self, registry: Registry, advertise: str = "127.0.0.1:6443", bookmark_interval: float = 60.0):
        self.registry = registry
        self.advertise = advertise
        self.bookmark_interval = bookmark_interval
        self._watches: set[asyncio.Task[Any]] = set()

    def web_server(self, **kwargs: Any) -> web.Server:
        """aiohttp's low-level server: every path goes to `handle` (the API routes itself), so an
        Application's router, middleware chain and per-request app bookkeeping would only add cost
        to each request (about 7% of the server's CPU per write)."""
        return web.Server(self.handle, request_factory=self._make_request, **kwargs)

    @staticmethod
    def _make_request(message: Any, payload: Any, protocol: Any, writer: Any,
                      task: asyncio.Task[None]) -> web.BaseRequest:
        return web.BaseRequest(message, payload, protocol, writer, task, asyncio.get_running_loop(),
                               client_max_size=MAX_BODY)

    def end_watches(self) -> None:
        # Watches never finish by themselves: end them so shutdown does not wait for its timeout.
        for task in list(self._watches):
            task.cancel()

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        started = time.monotonic()
        try:
            if "Expect" in request.headers and request.version == HttpVersion11:
                await self._expect(request)
            resp = await self.dispatch(request)
        except APIError as e:
            resp = status_response(e)
        except web.HTTPRequestEntityTooLarge:
            resp = status_response(APIError(413, "the request body is too large", "RequestEntityTooLarge"))
        except Exception as e:
            log.exception("internal error method=%s path=%s", request.method, request.path)
            resp = status_response(APIError(500, f"internal error: {e}"))
        if log.isEnabledFor(logging.DEBUG):  # path_qs is built on demand: not for every request
            log.debug("request method=%s path=%s status=%s ms=%.1f", request.method, request.path_qs,
                      resp.status, (time.monotonic() - started) * 1000)
        return resp

    @staticmethod
    async def _expect(request: web.BaseRequest) -> None:
        # What aiohttp's Application router did for every route: a client that sends
        # "Expect: 100-continue" (curl does for large bodies) waits for the 100 before the body.
        expect = request.headers["Expect"]
        if expect.lower() != "100-continue":
            raise APIError(417, f"unknown expectation {expect!r}", "ExpectationFailed")
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0  # the response proper has not started

    async def dispatch(self, request: web.BaseRequest) -> web.StreamResponse:
        path = request.path.rstrip("/") or "/"
        parts = [unquote(p) for p in path.strip("/").split("/")] if path != "/" else []
        if request.method not in ("GET", "HEAD") and path in (
            "/version", "/api", "/apis", "/healthz", "/livez", "/readyz"):
            raise APIError(405, "the server does not allow this method on the requested resource")
        if path == "/version":
            return json_response(discovery.version_info())
        if path in ("/healthz", "/livez", "/readyz"):
            return web.Response(text="ok")
        if path == "/api":
            return json_response(discovery.core_versions(self.advertise))
        if path == "/apis":
            return json_response(discovery.group_list())
        if parts and parts[0] == "openapi":
            return self._openapi(request, parts)
        if len(parts) == 2 and parts[0] == "apis":
            g = discovery.group(parts[1])
            if g is None:
                raise not_found_path()
            return json_response(g)
        split = parse_target(parts)
        if split is None:
            raise not_found_path()
        group, version, rest = split
        if not rest:
            rl = discovery.resource_list(group, version)
            if rl is None:
                raise not_found_path()
            return json_response(rl)
        resolved = resolve(group, version, rest)
        if resolved is None:
            raise not_found_path()
        target, legacy_watch = resolved
        return await self._resource(request, target, legacy_watch)

    def _openapi(self, request: web.BaseRequest, parts: list[str]) -> web.Response:
        from netplane.api import openapi

        if parts == ["openapi", "v2"]:
            return json_response(openapi.openapi_v2())
        if parts == ["openapi", "v3"]:
            return json_response(openapi.openapi_v3_index())
        if len(parts) > 2 and parts[:2] == ["openapi", "v3"]:
            doc = openapi.openapi_v3_document("/".join(parts[2:]))
            if doc is not None:
                resp = json_response(doc)
                # The hash in the URL pins the content: clients may cache it for good.
                resp.headers["Cache-Control"] = "public, immutable"
                return resp
        raise not_found_path()

    # -- resources ------------------------------------------------------------------

    async def _resource(self, request: web.BaseRequest, t: Target, legacy_watch: bool) -> web.StreamResponse:
        q = request.query
        dry_run = q.get("dryRun") == "All"
        # kube's default is Warn; kubectl asks for Strict when the OpenAPI document offers it.
        fv = q.get("fieldValidation", "Warn")
        if fv not in ("Strict", "Warn", "Ignore"):
            raise bad_request(f'fieldValidation must be one of "Strict", "Warn" or "Ignore", not {fv!r}')
        warnings: list[str] = []
        token = request_warnings.set(warnings)
        try:
            resp = await self._resource_verb(request, t, legacy_watch, dry_run, fv)
        finally:
            request_warnings.reset(token)
        if warnings and not resp.prepared:
            for w in warnings:
                resp.headers.add("Warning", f'299 - "{w}"')
        return resp

    async def _resource_verb(
        self, request: web.BaseRequest, t: Target, legacy_watch: bool, dry_run: bool, fv: str
    ) -> web.StreamResponse:
        m = request.method
        q = request.query
        reg = self.registry
        info = t.info
        if t.name is None:
            if m == "GET":
                if legacy_watch or q.get("watch") in ("true", "1"):
                    return await self._watch(request, t)
                return await self._list(request, t)
            if m == "POST":
                body = await self._body(request)
                obj = await reg.create(info, t.namespace, body, dry_run, fv, owned=True)
                return json_response(obj, 201)
            if m == "DELETE":
                return await self._delete_collection(request, t)
            raise APIError(405, "the server does not allow this method on the requested resource")
        if legacy_watch:
            return await self._watch(request, t, name=t.name)
        if m == "GET":
            if t.subresource == "scale":
                return json_response(await reg.get_scale(info, t.namespace, t.name))
            obj = await reg.get(info, t.namespace, t.name)
            return self._render(request, info, obj)
        if m == "PUT":
            body = await self._body(request)
            obj = await reg.update(info, t.namespace, t.name, body, t.subresource, dry_run, fv, owned=True)
            return json_response(obj)
        if m == "PATCH":
            ctype = request.headers.get("Content-Type", "").split(";")[0].strip()
            raw = await request.read()
            obj = await reg.patch(info, t.namespace, t.name, ctype, raw, t.subresource, dry_run, fv)
            return json_response(obj)
        if m == "DELETE" and t.subresource is None:
            options = await self._delete_options(request)
            obj = await reg.delete(info, t.namespace, t.name, options, dry_run)
            gone_now = not obj.get("metadata", {}).get("deletionTimestamp")
            return json_response(obj, 200 if gone_now else 202)
        raise APIError(405, "the server does not allow this method on the requested resource")

    async def _body(self, request: web.BaseRequest) -> Any:
        ctype = request.headers.get("Content-Type", JSON).split(";")[0].strip().lower()
        raw = await request.read()
        if not raw:
            raise bad_request("the request body is empty")
        try:
            if ctype in ("application/json", ""):
                return jsonbytes.loads(raw)
            if ctype in ("application/yaml", "application/x-yaml", "text/yaml"):
                doc = yaml.safe_load(raw)
                jsonbytes.require_representable(doc)
                return doc
            if ctype == protobuf.MEDIA_TYPE:
                # kubectl's typed commands (create deployment, create secret, ...) send protobuf.
                return protobuf.decode_object(raw)
        except (ValueError, yaml.YAMLError) as e:  # protobuf.ProtobufError is a ValueError
            raise bad_request(f"the body of the request could not be decoded: {e}") from None
        raise APIError(415, f"the body of the request was in an unknown format - accepted media types include:"
                            f" application/json, application/yaml, {protobuf.MEDIA_TYPE} (got {ctype})",
                       "UnsupportedMediaType")

    async def _delete_options(self, request: web.BaseRequest) -> dict[str, Any]:
        options: dict[str, Any] = {}
        raw = await request.read()
        if raw:
            try:
                body = jsonbytes.loads(raw)
            except ValueError as e:
                raise bad_request(f"the DeleteOptions could not be decoded: {e}") from None
            if isinstance(body, dict):
                options.update(body)
        q = request.query
        if "gracePeriodSeconds" in q:
            try:
                options["gracePeriodSeconds"] = int(q["gracePeriodSeconds"])
            except ValueError:
                raise bad_request("gracePeriodSeconds must be an integer") from None
        if "propagationPolicy" in q:
            options["propagationPolicy"] = q["propagationPolicy"]
        pol = options.get("propagationPolicy")
        if pol not in (None, "Orphan", "Background", "Foreground"):
            raise bad_request(f"propagationPolicy {pol!r} is not one of Orphan, Background, Foreground")
        return options

    def _selectors(self, request: web.BaseRequest, info: ResourceInfo) -> tuple[LabelSelector | None,
                                                                             FieldSelector | None]:
        q = request.query
        ls = fs = None
        try:
            if q.get("labelSelector"):
                ls = LabelSelector.parse(q["labelSelector"])
            if q.get("fieldSelector"):
                fs = FieldSelector.parse(q["fieldSelector"], info)
        except ValueError as e:
            raise bad_request(str(e)) from None
        return ls, fs

    def _render(self, request: web.BaseRequest, info: ResourceInfo, obj: dict[str, Any]) -> web.Response:
        accept = request.headers.get("Accept", "")
        if "as=Table" in accept:
            from netplane.api import tables

            if tables.wants_table(accept):
                return json_response(tables.to_table(info, [obj], include_object=self._include(request)))
        return json_response(obj)

    @staticmethod
    def _include(request: web.BaseRequest) -> str:
        return request.query.get("includeObject", "Metadata")

    async def _list(self, request: web.BaseRequest, t: Target) -> web.Response:
        ls, fs = self._selectors(request, t.info)
        try:
            limit = int(request.query.get("limit", "0") or 0)
        except ValueError:
            raise bad_request("limit must be an integer") from None
        lst = await self.registry.list(t.info, t.namespace, ls, fs, limit, request.query.get("continue"))
        accept = request.headers.get("Accept", "")
        if "as=Table" in accept:
            from netplane.api import tables

            if tables.wants_table(accept):
                return json_response(tables.to_table(t.info, lst["items"], include_object=self._include(request),
                                                     list_meta=lst["metadata"]))
        return json_response(lst)

    async def _delete_collection(self, request: web.BaseRequest, t: Target) -> web.Response:
        ls, fs = self._selectors(request, t.info)
        options = await self._delete_options(request)
        lst = await self.registry.list(t.info, t.namespace, ls, fs)
        deleted = []
        for item in lst["items"]:
            m = item["metadata"]
            with contextlib.suppress(APIError):
                deleted.append(await self.registry.delete(t.info, m.get("namespace"), m["name"], options))
        lst["items"] = deleted
        return json_response(lst)

    async def _watch(self, request: web.BaseRequest, t: Target, name: str | None = None) -> web.StreamResponse:
        ls, fs = self._selectors(request, t.info)
        if name is not None:
            extra = FieldSelector.parse(f"metadata.name={name}", t.info)
            fs = extra if fs is None else FieldSelector.parse(
                f"{request.query['fieldSelector']},metadata.name={name}", t.info)
        rv = request.query.get("resourceVersion")
        bookmarks = request.query.get("allowWatchBookmarks") in ("true", "1")
        timeout = request.query.get("timeoutSeconds")
        deadline = time.monotonic() + float(timeout) if timeout else None
        accept = request.headers.get("Accept", "")
        table = False
        if "as=Table" in accept:
            from netplane.api import tables

            table = tables.wants_table(accept)
        include = self._include(request)

        if rv not in (None, "", "0") and not str(rv).isdigit():
            raise bad_request(f"invalid resourceVersion {rv!r}")
        initial = request.query.get("sendInitialEvents") in ("true", "1")
        if initial and not bookmarks:
            raise APIError(422, "sendInitialEvents requires allowWatchBookmarks=true", "Invalid")
        if initial and request.query.get("resourceVersionMatch") != "NotOlderThan":
            raise APIError(422, 'sendInitialEvents requires resourceVersionMatch "NotOlderThan"', "Invalid")
        events = self.registry.watch(t.info, t.namespace, rv, ls, fs, send_initial_events=initial)
        queue: asyncio.Queue[WatchEvent | APIError | None] = asyncio.Queue()

        async def pump() -> None:
            try:
                async for ev in events:
                    queue.put_nowait(ev)
            except APIError as e:  # 410 Gone: sent as an ERROR event, as kube does
                queue.put_nowait(e)
            finally:
                queue.put_nowait(None)

        task = asyncio.create_task(pump())
        me = asyncio.current_task()
        if me is not None:
            self._watches.add(me)
        resp = web.StreamResponse(status=200, headers={"Content-Type": JSON, "Cache-Control": "no-cache"})
        resp.enable_chunked_encoding()
        try:
            await resp.prepare(request)
            last_rv = int(rv) if rv and rv.isdigit() else 0
            while True:
                wait = self.bookmark_interval if bookmarks else None
                if deadline is not None:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    wait = left if wait is None else min(wait, left)
                try:
                    item = await asyncio.wait_for(queue.get(), wait)
                except TimeoutError:
                    if deadline is not None and time.monotonic() >= deadline:
                        break
                    last_rv = max(last_rv, self.registry.cache.revision)
                    bookmark = {"kind": t.info.kind, "apiVersion": t.info.group_version,
                                "metadata": {"resourceVersion": str(last_rv)}}
                    await resp.write(_dumps({"type": "BOOKMARK", "object": bookmark}) + b"\n")
                    continue
                if item is None:
                    break
                if isinstance(item, APIError):
                    await resp.write(_dumps({"type": "ERROR", "object": item.status()}) + b"\n")
                    break
                obj = item.object
                with contextlib.suppress(ValueError, TypeError):
                    last_rv = max(last_rv, int(obj["metadata"]["resourceVersion"]))
                if table:
                    from netplane.api import tables

                    obj = tables.to_table(t.info, [obj], include_object=include)
                    line = _dumps({"type": item.type, "object": obj}) + b"\n"
                elif item.change is not None:
                    line = item.change.line(item.type, obj)
                else:
                    line = _dumps({"type": item.type, "object": obj}) + b"\n"
                await resp.write(line)
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            if me is not None:
                self._watches.discard(me)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
            with contextlib.suppress(Exception):
                await events.aclose()
        with contextlib.suppress(Exception):
            await resp.write_eof()
        return resp
