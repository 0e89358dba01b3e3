"""An asyncio client for the Kubernetes REST API (paths, verbs, Status errors, watch streams).

It speaks only the public API, so it works the same against netplane's state server and a real
kube-apiserver. One :class:`APIClient` holds one aiohttp session; use it as an async context manager.

Errors: a non-2xx answer raises :class:`APIStatusError` carrying the server's ``Status``; a server
that cannot be reached (refused, reset, timed out, TLS failure) raises :class:`APIConnectionError`.
A watch stream that ends with an ``ERROR`` event raises :class:`APIStatusError` from that event's
Status (for example code 410 when the requested resourceVersion is too old), so consumers handle one
kind of failure whether the server refused the request up front or in the stream.
"""

from __future__ import annotations

import asyncio
import builtins
from collections.abc import AsyncIterator, Mapping
from types import TracebackType
from typing import Any
from urllib.parse import quote

import aiohttp

from netplane.api import jsonbytes
from netplane.api.resources import ResourceInfo
from netplane.client.kubeconfig import ClusterConfig

JSON = "application/json"
MERGE_PATCH = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"
STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"
# Ask for the server-side Table rendering (kubectl get does the same), accepting plain JSON as fallback.
TABLE_ACCEPT = "application/json;as=Table;v=v1;g=meta.k8s.io, application/json"

USER_AGENT = "netplane/0.1"
# Ordinary requests: generous for a busy shared machine, but bounded so a hung server is reported.
REQUEST_TIMEOUT = 30.0


# What a broken or refused connection raises inside aiohttp.
NETWORK_ERRORS = (TimeoutError, aiohttp.ClientError, ConnectionError)


class APIStatusError(Exception):
    """The server answered with a failure ``Status`` (HTTP 4xx/5xx or a watch ERROR event)."""

    def __init__(self, status: dict[str, Any], code: int | None = None) -> None:
        self.status = status
        self.code: int = int(status.get("code") or code or 0)
        self.reason: str = str(status.get("reason") or "")
        self.message: str = str(status.get("message") or f"the server answered HTTP {self.code}")
        super().__init__(self.message)

    @property
    def not_found(self) -> bool:
        return self.code == 404

    @property
    def gone(self) -> bool:
        return self.code == 410


class APIConnectionError(Exception):
    """The server could not be reached, or the connection broke before a complete answer arrived."""


class WatchProtocolError(Exception):
    """A watch stream carried something that is not a watch event."""


def _status_from_body(code: int, body: bytes, http_reason: str | None) -> dict[str, Any]:
    """The Status in an error body, or one made up from the HTTP status when the body is not a Status."""
    try:
        doc = jsonbytes.loads(body)
    except ValueError:
        doc = None
    if isinstance(doc, dict) and doc.get("kind") == "Status":
        return doc
    text = body.decode("utf-8", "replace").strip()
    message = text[:500] if text else (http_reason or f"HTTP {code}")
    return {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": code,
            "reason": http_reason or "", "message": message}


class WatchDecoder:
    """Splits a watch body into events: bytes in, ``{"type", "object"}`` dicts out (no I/O).

    The API writes one JSON document per line; chunk boundaries fall anywhere, objects can be large
    (Secrets and ConfigMaps up to 1 MiB), so lines are assembled here rather than with a reader's
    bounded readline.
    """

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        self._buf += data
        events: list[dict[str, Any]] = []
        while True:
            nl = self._buf.find(b"\n")
            if nl < 0:
                break
            line = bytes(self._buf[:nl])
            del self._buf[: nl + 1]
            event = self._decode(line)
            if event is not None:
                events.append(event)
        return events

    def close(self) -> list[dict[str, Any]]:
        """The last event when the stream ended without a trailing newline."""
        line = bytes(self._buf)
        self._buf.clear()
        event = self._decode(line)
        return [event] if event is not None else []

    @staticmethod
    def _decode(line: bytes) -> dict[str, Any] | None:
        line = line.strip()
        if not line:
            return None
        try:
            event = jsonbytes.loads(line)
        except ValueError as e:
            raise WatchProtocolError(f"undecodable watch event: {line[:200]!r}") from e
        if not isinstance(event, dict) or not isinstance(event.get("type"), str) \
                or not isinstance(event.get("object"), dict):
            raise WatchProtocolError(f"not a watch event: {line[:200]!r}")
        return event


def resource_path(info: ResourceInfo, namespace: str | None = None, name: str | None = None,
                  subresource: str | None = None) -> str:
    """The API path of a collection or object, e.g. /apis/apps/v1/namespaces/ns/deployments/web/scale."""
    base = f"/apis/{info.group}/{info.version}" if info.group else f"/api/{info.version}"
    if info.namespaced and namespace:
        base += f"/namespaces/{quote(namespace, safe='')}"
    base += f"/{info.plural}"
    if name is not None:
        if not name:
            raise ValueError(f"an empty {info.singular} name")
        base += f"/{quote(name, safe='')}"
        if subresource:
            base += f"/{subresource}"
    return base


class WatchStream:
    """An open watch: iterate it for events; closing it closes the connection."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response
        self._decoder = WatchDecoder()
        self._pending: list[dict[str, Any]] = []
        self._eof = False

    def __aiter__(self) -> WatchStream:
        return self

    async def __anext__(self) -> dict[str, Any]:
        while not self._pending:
            if self._eof:
                self.close()
                raise StopAsyncIteration
            try:
                chunk = await self._response.content.readany()
            except NETWORK_ERRORS as e:
                self.close()
                raise APIConnectionError(f"watch stream broken: {_describe(e)}") from e
            if chunk:
                self._pending.extend(self._decoder.feed(chunk))
            else:
                self._eof = True
                self._pending.extend(self._decoder.close())
        event = self._pending.pop(0)
        if event["type"] == "ERROR":
            self.close()
            raise APIStatusError(event["object"])
        return event

    def close(self) -> None:
        self._response.close()

    async def __aenter__(self) -> WatchStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()


def _describe(e: BaseException) -> str:
    if isinstance(e, asyncio.TimeoutError):
        return "timed out"
    text = str(e)
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


class APIClient:
    """Async Kubernetes API client for the resources in netplane.api.resources."""

    def __init__(self, config: ClusterConfig, request_timeout: float = REQUEST_TIMEOUT) -> None:
        self.config = config
        self.request_timeout = request_timeout
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> APIClient:
        self._ensure_session()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _ensure_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            ssl_ctx = self.config.ssl_context()
            # No connection limit: every informer holds one long-lived watch connection.
            connector = aiohttp.TCPConnector(limit=0, ssl=ssl_ctx if ssl_ctx is not None else True)
            auth = None
            if self.config.username is not None and self.config.password is not None:
                auth = aiohttp.BasicAuth(self.config.username, self.config.password)
            self._session = aiohttp.ClientSession(
                base_url=None, connector=connector, auth=auth,
                headers={"User-Agent": USER_AGENT},
            )
        return self._session

    def _headers(self, accept: str = JSON, content_type: str | None = None) -> dict[str, str]:
        headers = {"Accept": accept}
        if content_type:
            headers["Content-Type"] = content_type
        token = self.config.current_token()
        if token:
            headers["Authorization"] = f"Bearer {token}"
        return headers

    def _unreachable(self, e: BaseException) -> APIConnectionError:
        return APIConnectionError(f"cannot reach the server at {self.config.server}: {_describe(e)}")

    def _url(self, path: str) -> str:
        return self.config.server.rstrip("/") + path

    async def request(
        self,
        method: str,
        path: str,
        params: Mapping[str, str] | None = None,
        body: Any = None,
        content_type: str = JSON,
        accept: str = JSON,
    ) -> dict[str, Any]:
        """One request to an API path; the decoded JSON answer, or APIStatusError / APIConnectionError."""
        session = self._ensure_session()
        data = None if body is None else jsonbytes.dumps(body)
        timeout = aiohttp.ClientTimeout(total=self.request_timeout)
        url = self._url(path)
        try:
            async with session.request(
                method, url, params=dict(params or {}), data=data, timeout=timeout,
                headers=self._headers(accept, content_type if data is not None else None),
            ) as resp:
                raw = await resp.read()
                if resp.status >= 400:
                    raise APIStatusError(_status_from_body(resp.status, raw, resp.reason), resp.status)
        except NETWORK_ERRORS as e:
            raise self._unreachable(e) from e
        if not raw:
            return {}
        try:
            doc = jsonbytes.loads(raw)
        except ValueError as e:
            raise APIConnectionError(f"{method} {path}: the answer is not JSON: {raw[:200]!r}") from e
        if not isinstance(doc, dict):
            raise APIConnectionError(f"{method} {path}: the server's answer is not a JSON object")
        return doc

    def _ns(self, info: ResourceInfo, namespace: str | None,
            obj: Mapping[str, Any] | None = None) -> str | None:
        """The namespace for a single-object request: explicit, else the object's, else the default."""
        if not info.namespaced:
            return None
        if namespace:
            return namespace
        if obj is not None:
            ns = (obj.get("metadata") or {}).get("namespace")
            if ns:
                return str(ns)
        return self.config.namespace

    async def get(self, info: ResourceInfo, name: str, namespace: str | None = None) -> dict[str, Any]:
        return await self.request("GET", resource_path(info, self._ns(info, namespace), name))

    async def list(
        self,
        info: ResourceInfo,
        namespace: str | None = None,
        label_selector: str | None = None,
        field_selector: str | None = None,
        limit: int | None = None,
        continue_token: str | None = None,
        accept: str = JSON,
    ) -> dict[str, Any]:
        """The List object. namespace=None lists across all namespaces.

        Items of a typed list carry no apiVersion/kind on a real kube-apiserver; they are filled in
        here so every object this client hands out is self-describing.
        """
        params: dict[str, str] = {}
        if label_selector:
            params["labelSelector"] = label_selector
        if field_selector:
            params["fieldSelector"] = field_selector
        if limit:
            params["limit"] = str(limit)
        if continue_token:
            params["continue"] = continue_token
        doc = await self.request("GET", resource_path(info, namespace), params=params, accept=accept)
        if doc.get("kind") != "Table":
            for item in doc.get("items") or []:
                if isinstance(item, dict):
                    item.setdefault("apiVersion", info.api_version)
                    item.setdefault("kind", info.kind)
        return doc

    async def create(self, info: ResourceInfo, obj: dict[str, Any],
                     namespace: str | None = None) -> dict[str, Any]:
        return await self.request("POST", resource_path(info, self._ns(info, namespace, obj)), body=obj)

    async def update(self, info: ResourceInfo, obj: dict[str, Any], namespace: str | None = None,
                     subresource: str | None = None) -> dict[str, Any]:
        name = (obj.get("metadata") or {}).get("name")
        if not name:
            raise ValueError(f"cannot update a {info.kind} without metadata.name")
        path = resource_path(info, self._ns(info, namespace, obj), str(name), subresource)
        return await self.request("PUT", path, body=obj)

    async def patch(self, info: ResourceInfo, name: str, patch: dict[str, Any] | builtins.list[Any],
                    namespace: str | None = None, patch_type: str = MERGE_PATCH,
                    subresource: str | None = None) -> dict[str, Any]:
        path = resource_path(info, self._ns(info, namespace), name, subresource)
        return await self.request("PATCH", path, body=patch, content_type=patch_type)

    async def delete(self, info: ResourceInfo, name: str, namespace: str | None = None,
                     grace_period_seconds: int | None = None,
                     propagation_policy: str | None = None) -> dict[str, Any]:
        """Delete one object; the answer is the deleted object or a Success Status, as the server chooses."""
        options: dict[str, Any] | None = None
        if grace_period_seconds is not None or propagation_policy is not None:
            # DeleteOptions in the body, as kubectl sends them.
            options = {"kind": "DeleteOptions", "apiVersion": "v1"}
            if grace_period_seconds is not None:
                options["gracePeriodSeconds"] = grace_period_seconds
            if propagation_policy is not None:
                options["propagationPolicy"] = propagation_policy
        path = resource_path(info, self._ns(info, namespace), name)
        return await self.request("DELETE", path, body=options)

    async def open_watch(
        self,
        info: ResourceInfo,
        namespace: str | None = None,
        resource_version: str | None = None,
        label_selector: str | None = None,
        field_selector: str | None = None,
        allow_bookmarks: bool = True,
        timeout_seconds: int | None = None,
    ) -> WatchStream:
        """Start a watch and return once the server has accepted it (so callers know they are connected)."""
        params: dict[str, str] = {"watch": "true"}
        if resource_version:
            params["resourceVersion"] = resource_version
        if label_selector:
            params["labelSelector"] = label_selector
        if field_selector:
            params["fieldSelector"] = field_selector
        if allow_bookmarks:
            params["allowWatchBookmarks"] = "true"
        if timeout_seconds is not None:
            params["timeoutSeconds"] = str(timeout_seconds)
        session = self._ensure_session()
        # No total timeout: a watch lives as long as the server keeps it. A read timeout slightly
        # longer than the server-side timeout detects a connection that died silently.
        read_timeout = None if timeout_seconds is None else timeout_seconds + 30.0
        timeout = aiohttp.ClientTimeout(total=None, connect=self.request_timeout, sock_read=read_timeout)
        url = self._url(resource_path(info, namespace))
        try:
            resp = await session.get(url, params=params, headers=self._headers(), timeout=timeout)
        except NETWORK_ERRORS as e:
            raise self._unreachable(e) from e
        if resp.status >= 400:
            try:
                raw = await resp.read()
            except NETWORK_ERRORS:
                raw = b""
            finally:
                resp.close()
            raise APIStatusError(_status_from_body(resp.status, raw, resp.reason), resp.status)
        return WatchStream(resp)

    async def watch(
        self,
        info: ResourceInfo,
        namespace: str | None = None,
        resource_version: str | None = None,
        label_selector: str | None = None,
        field_selector: str | None = None,
        allow_bookmarks: bool = True,
        timeout_seconds: int | None = None,
    ) -> AsyncIterator[dict[str, Any]]:
        """Yield watch events until the server ends the stream; ERROR events raise APIStatusError."""
        stream = await self.open_watch(info, namespace, resource_version, label_selector, field_selector,
                                       allow_bookmarks, timeout_seconds)
        async with stream:
            async for event in stream:
                yield event
