"""The registry: kube-apiserver's semantics over the storage interface.

create / get / list / update / patch / delete / watch for every resource in
netplane.api.resources, with the metadata, status-subresource, optimistic
concurrency, allocation, graceful-deletion and garbage-collection rules that
clients of a real API server rely on. HTTP is elsewhere (server.py); this
module speaks dicts and raises APIError.
"""

from __future__ import annotations

import asyncio
import base64
import builtins
import contextlib
import json
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

from netplane.api import jsonbytes
from netplane.api import resources as res
from netplane.api.defaults import apply_defaults, drop_type_dependent_fields
from netplane.api.errors import (
    APIError,
    Cause,
    already_exists,
    bad_request,
    conflict,
    gone,
    invalid,
    not_found,
)
from netplane.api.openapi import unknown_fields
from netplane.api.patch import apply_patch
from netplane.api.resources import ResourceInfo
from netplane.api.selectors import FieldSelector, LabelSelector
from netplane.api.validation import validate
from netplane.state.allocators import AllocationError, CIDRAllocator, IPAllocator, PortAllocator
from netplane.state.config import ServerConfig
from netplane.state.objects import (
    Obj,
    decode,
    encode,
    generate_name,
    key_prefix,
    meta,
    new_uid,
    now_rfc3339,
    object_key,
    parse_rfc3339,
    spec_equal_ignoring,
)
from netplane.state.storage import Compacted, KeyExists, KeyNotFound, RevisionMismatch, Storage
from netplane.state.watchcache import Change, WatchCache

log = logging.getLogger(__name__)

SCALE_SCHEMA = "io.k8s.api.autoscaling.v1.Scale"

# Warnings for the current request (fieldValidation=Warn); the HTTP layer turns them into
# `Warning: 299 - "..."` headers, as kube-apiserver does.
request_warnings: ContextVar[list[str] | None] = ContextVar("request_warnings", default=None)

SYSTEM_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")
SERVER_MANAGED_METADATA = (
    "uid", "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds", "generation", "selfLink",
)
NAMESPACES = res.must("", "v1", "namespaces")
PODS = res.must("", "v1", "pods")
SERVICES = res.must("", "v1", "services")
NODES = res.must("", "v1", "nodes")
ENDPOINTSLICES = res.must("discovery.k8s.io", "v1", "endpointslices")


@dataclass(slots=True)
class WatchEvent:
    type: str
    object: Obj
    change: Change | None = None  # where it came from, for the shared encoding


@dataclass(slots=True)
class _Allocation:
    """What one write allocated (to undo on failure) and what it frees (to release on success)."""

    undo: list[Callable[[], None]] = field(default_factory=list)
    release: list[Callable[[], None]] = field(default_factory=list)

    def rollback(self) -> None:
        for f in self.undo:
            f()

    def commit(self) -> None:
        for f in self.release:
            f()


def _nf(info: ResourceInfo, name: str) -> APIError:
    return not_found(info.plural, name, info.group)


class Registry:
    def __init__(self, storage: Storage, config: ServerConfig) -> None:
        self.storage = storage
        self.config = config
        self.cache = WatchCache(storage)
        self.ips = IPAllocator(config.service_cidr)
        first, last = config.node_ports()
        self.node_ports = PortAllocator(first, last)
        self.pod_cidrs = CIDRAllocator(config.cluster_cidr, config.node_cidr_mask_size)
        # Allocation and the write that records it happen under one lock, so two
        # concurrent creates can never both take the same address or port.
        self._alloc_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._reaper_handles: dict[str, asyncio.TimerHandle] = {}
        # Deleted owners whose dependents the garbage collector still has to visit.
        self._gc_queue: asyncio.Queue[Obj] = asyncio.Queue()

    # -- life cycle -------------------------------------------------------------

    async def start(self) -> None:
        await self._load_allocations()
        await self.cache.start()
        await self._bootstrap()
        await self._schedule_pending_pod_deletions()
        self._spawn(self._compaction_loop())
        self._spawn(self._garbage_collector())

    async def stop(self) -> None:
        for h in self._reaper_handles.values():
            h.cancel()
        for t in list(self._tasks):
            t.cancel()
        for t in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        await self.cache.stop()

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _load_allocations(self) -> None:
        records, _ = await self.storage.list(key_prefix(SERVICES))
        for rec in records:
            spec = jsonbytes.loads(rec.value).get("spec", {})
            for ip in spec.get("clusterIPs") or ([spec["clusterIP"]] if spec.get("clusterIP") else []):
                if ip != "None" and self.ips.contains(ip) and not self.ips.in_use(ip):
                    self.ips.allocate_specific(ip)
            for port in spec.get("ports") or []:
                np = port.get("nodePort")
                if np and self.node_ports.contains(np) and not self.node_ports.in_use(np):
                    self.node_ports.allocate_specific(np)
            hc = spec.get("healthCheckNodePort")
            if hc and self.node_ports.contains(hc) and not self.node_ports.in_use(hc):
                self.node_ports.allocate_specific(hc)
        records, _ = await self.storage.list(key_prefix(NODES))
        for rec in records:
            cidr = jsonbytes.loads(rec.value).get("spec", {}).get("podCIDR")
            if cidr:
                with contextlib.suppress(AllocationError, ValueError):
                    self.pod_cidrs.allocate_specific(cidr)

    async def _bootstrap(self) -> None:
        for ns in SYSTEM_NAMESPACES:
            with contextlib.suppress(APIError):
                await self.create(NAMESPACES, None, {"metadata": {"name": ns}})
        svc = {
            "metadata": {
                "name": "kubernetes",
                "labels": {"component": "apiserver", "provider": "kubernetes"},
            },
            "spec": {
                "type": "ClusterIP",
                "clusterIP": self.config.kubernetes_service_ip(),
                "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": 6443}],
            },
        }
        with contextlib.suppress(APIError):
            await self.create(SERVICES, "default", svc)

    async def _compaction_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.compaction_interval)
            await self.compact()

    async def compact(self) -> None:
        rev = await self.storage.revision()
        target = rev - self.config.watch_history
        if target > 0:
            await self.storage.compact(target)
            self.cache.forget_until(target)

    # -- reads ------------------------------------------------------------------

    async def get(self, info: ResourceInfo, namespace: str | None, name: str) -> Obj:
        rec = await self.storage.get(object_key(info, namespace, name))
        if rec is None:
            raise _nf(info, name)
        return decode(rec.value, rec.mod_revision)

    async def list(
        self,
        info: ResourceInfo,
        namespace: str | None,
        label_selector: LabelSelector | None = None,
        field_selector: FieldSelector | None = None,
        limit: int = 0,
        continue_token: str | None = None,
    ) -> Obj:
        prefix = key_prefix(info, namespace)
        start_after = ""
        if continue_token:
            try:
                tok = jsonbytes.loads(base64.urlsafe_b64decode(continue_token.encode()))
                start_after = str(tok["start"])
            except (ValueError, KeyError, TypeError) as e:
                raise bad_request("continue key is not valid: " + str(e)) from e
        records, rev = await self.storage.list(prefix, start_after=start_after)
        items: builtins.list[Obj] = []
        next_token = None
        remaining = 0
        for rec in records:
            obj = decode(rec.value, rec.mod_revision)
            if not self._matches(obj, label_selector, field_selector):
                continue
            if limit and len(items) >= limit:
                remaining += 1
                continue
            items.append(obj)
            if limit and len(items) == limit:
                next_token = base64.urlsafe_b64encode(
                    json.dumps({"start": rec.key, "rv": rev}).encode()
                ).decode()
        list_meta: dict[str, Any] = {"resourceVersion": str(rev)}
        if next_token and remaining:
            list_meta["continue"] = next_token
            list_meta["remainingItemCount"] = remaining
        return {"kind": info.kind + "List", "apiVersion": info.group_version, "metadata": list_meta, "items": items}

    @staticmethod
    def _matches(obj: Obj, ls: LabelSelector | None, fs: FieldSelector | None) -> bool:
        if ls is not None and not ls.matches(obj.get("metadata", {}).get("labels") or {}):
            return False
        return not (fs is not None and not fs.matches(obj))

    # -- create -----------------------------------------------------------------

    def _check_type(self, info: ResourceInfo, obj: Any, owned: bool = False) -> Obj:
        """Check the body is this resource's kind; returns it to be filled in by the server —
        the body itself when the caller handed it over (owned, e.g. freshly parsed JSON),
        else a private copy."""
        if not isinstance(obj, dict):
            raise bad_request(f"the body of the request must be a {info.kind} object")
        api_version = obj.get("apiVersion")
        kind = obj.get("kind")
        if api_version is not None and api_version != info.group_version:
            raise bad_request(
                f"the API version in the data ({api_version}) does not match the expected API version"
                f" ({info.group_version})"
            )
        if kind is not None and kind != info.kind:
            raise bad_request(f"the kind in the data ({kind}) does not match the expected kind ({info.kind})")
        if "metadata" in obj and not isinstance(obj["metadata"], dict):
            raise bad_request("metadata must be an object")
        out = obj if owned else jsonbytes.clone(obj)
        out["apiVersion"] = info.group_version
        out["kind"] = info.kind
        return out

    @staticmethod
    def _check_fields(info: ResourceInfo, obj: Obj, mode: str, schema: str | None = None) -> None:
        """fieldValidation: Strict rejects unknown fields with 400, Warn reports them, Ignore drops them."""
        if mode not in ("Strict", "Warn"):
            return
        unknown = unknown_fields(info, obj, schema)
        if not unknown:
            return
        if mode == "Strict":
            names = ", ".join(f'unknown field "{u}"' for u in unknown)
            raise bad_request(f"strict decoding error: {names}")
        warnings = request_warnings.get()
        if warnings is not None:
            warnings.extend(f'unknown field "{u}"' for u in unknown)

    async def _ensure_namespace(self, namespace: str) -> None:
        if await self.storage.get(object_key(NAMESPACES, None, namespace)) is None:
            raise not_found("namespaces", namespace)

    async def create(
        self, info: ResourceInfo, namespace: str | None, body: Any, dry_run: bool = False,
        field_validation: str = "Ignore", owned: bool = False,
    ) -> Obj:
        obj = self._check_type(info, body, owned)
        self._check_fields(info, obj, field_validation)
        m = meta(obj)
        if info.namespaced:
            ns = namespace or m.get("namespace") or "default"
            if m.get("namespace") and m["namespace"] != ns:
                raise bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request"
                )
            m["namespace"] = ns
            await self._ensure_namespace(ns)
        else:
            m.pop("namespace", None)
            ns = None
        for k in (*SERVER_MANAGED_METADATA, "resourceVersion", "managedFields"):
            m.pop(k, None)
        if not m.get("name") and m.get("generateName"):
            m["name"] = generate_name(str(m["generateName"]))
        if not m.get("name"):
            raise invalid(info.kind, "", [Cause("metadata.name", "name or generateName is required",
                                                  "FieldValueRequired")], info.group)
        m["uid"] = new_uid()
        m["creationTimestamp"] = now_rfc3339()
        m["generation"] = 1
        self._reset_status_on_create(info, obj)
        apply_defaults(info, obj)
        name = str(m["name"])
        causes = validate(info, obj, None)
        if causes:
            raise invalid(info.kind, name, causes, info.group)
        key = object_key(info, ns, name)
        async def write() -> int:
            alloc = self._allocate(info, obj, None)
            try:
                rev = await self.storage.create(key, encode(obj))
            except KeyExists:
                alloc.rollback()
                raise already_exists(info.plural, name, info.group) from None
            except BaseException:
                alloc.rollback()
                raise
            alloc.commit()
            return rev

        if dry_run:
            async with self._locked(info):
                self._allocate(info, obj, None).rollback()
            return obj
        rev = await self._write_section(info, write)
        m["resourceVersion"] = str(rev)
        if m.get("ownerReferences"):
            # A controller acting on a cache that has not yet seen its owner's deletion can create a
            # dependent after the collector visited that owner's dependents: check it once it is in.
            self._spawn(self._collect_if_orphaned(info, obj))
        return obj

    def _locked(self, info: ResourceInfo) -> contextlib.AbstractAsyncContextManager[Any]:
        """Allocation and the write recording it happen under one lock, for the kinds that allocate."""
        return self._alloc_lock if info is SERVICES or info is NODES else contextlib.nullcontext()

    async def _write_section(self, info: ResourceInfo, write: Callable[[], Awaitable[int]]) -> int:
        """Run allocate + write + commit-or-rollback to the end even if the request is cancelled
        (its client went away): a write that commits must keep its allocation."""

        if info is not SERVICES and info is not NODES:
            # Nothing allocated, nothing to roll back: a cancelled request's staged write commits
            # all the same (the storage shields it), so no task of its own is needed.
            return await write()

        async def guarded() -> int:
            async with self._locked(info):
                return await write()

        return await asyncio.shield(asyncio.ensure_future(guarded()))

    @staticmethod
    def _reset_status_on_create(info: ResourceInfo, obj: Obj) -> None:
        # kube-apiserver's PrepareForCreate: clients cannot create status, except
        # for nodes (the kubelet registers with its status).
        if info.kind == "Pod":
            obj["status"] = {"phase": "Pending"}
        elif info.kind == "Namespace":
            obj["status"] = {"phase": "Active"}
        elif info.has_status and info.kind != "Node":
            obj["status"] = {}

    # -- update -----------------------------------------------------------------

    async def update(
        self,
        info: ResourceInfo,
        namespace: str | None,
        name: str,
        body: Any,
        subresource: str | None = None,
        dry_run: bool = False,
        field_validation: str = "Ignore",
        owned: bool = False,
    ) -> Obj:
        if subresource == "scale":
            if isinstance(body, dict):
                self._check_fields(info, body, field_validation, SCALE_SCHEMA)
            return await self._update_scale(info, namespace, name, body, dry_run)
        obj = self._check_type(info, body, owned)
        self._check_fields(info, obj, field_validation)
        m = meta(obj)
        if m.get("name") and m["name"] != name:
            raise bad_request(f"the name of the object ({m['name']}) does not match the name on the URL ({name})")
        if info.namespaced and m.get("namespace") and m["namespace"] != namespace:
            raise bad_request("the namespace of the provided object does not match the namespace sent on the request")
        key = object_key(info, namespace, name)
        rec = await self.storage.get(key)
        if rec is None:
            raise _nf(info, name)
        old = decode(rec.value, rec.mod_revision)
        want_rv = m.get("resourceVersion")
        if want_rv not in (None, "") and str(want_rv) != str(rec.mod_revision):
            raise conflict(info.plural, name, info.group)
        new = self._merge_for_update(info, old, obj, subresource)
        try:
            return await self._write_update(info, key, old, new, rec.mod_revision, dry_run, rec.value)
        except APIError as e:
            if e.code != 409 or e.reason != "Conflict" or want_rv not in (None, ""):
                raise
        # An unconditional update raced with a write not yet visible to reads: once that write is,
        # apply this one over it (kube retries such updates instead of answering 409).
        await self.storage.settle(key)
        return await self.update(info, namespace, name, body if not owned else obj, subresource, dry_run,
                                 field_validation, owned)

    def _merge_for_update(self, info: ResourceInfo, old: Obj, obj: Obj, subresource: str | None) -> Obj:
        om = old["metadata"]
        if subresource == "status":
            # Only the status changes through /status (and nothing but metadata.labels/annotations
            # in kube; we keep it strict: status only).
            new = jsonbytes.clone(old)
            new["status"] = obj.get("status", {})
            return new
        new = obj
        m = new["metadata"]
        for k in SERVER_MANAGED_METADATA:
            if k in om:
                m[k] = om[k]
            else:
                m.pop(k, None)
        m["name"] = om["name"]
        if "namespace" in om:
            m["namespace"] = om["namespace"]
        m.pop("managedFields", None)
        if info.has_status:
            if "status" in old:
                new["status"] = old["status"]
            else:
                new.pop("status", None)
        return new

    async def _write_update(
        self, info: ResourceInfo, key: str, old: Obj, new: Obj, expected: int, dry_run: bool,
        stored: bytes | None = None,
    ) -> Obj:
        """Write new over old; `stored` is old's stored form when the caller has it (saves an encode)."""
        name = old["metadata"]["name"]
        apply_defaults(info, new)
        if info is SERVICES:
            self._carry_service_allocations(old, new)
            drop_type_dependent_fields(new, old)
        if info is NODES:
            old_cidr = old.get("spec", {}).get("podCIDR")
            if old_cidr and not new.get("spec", {}).get("podCIDR"):
                new.setdefault("spec", {})["podCIDR"] = old_cidr
                new["spec"]["podCIDRs"] = old.get("spec", {}).get("podCIDRs") or [old_cidr]
        if not spec_equal_ignoring(old, new):
            new["metadata"]["generation"] = int(old["metadata"].get("generation") or 1) + 1
        causes = validate(info, new, old)
        if causes:
            raise invalid(info.kind, name, causes, info.group)
        new["metadata"].pop("resourceVersion", None)
        old_bytes = stored if stored is not None else encode(old)
        new_bytes = encode(new)
        if new_bytes == old_bytes:
            # Nothing changed: kube does not write (no new resourceVersion, no event).
            return old
        m = new["metadata"]
        if m.get("deletionTimestamp") and not m.get("finalizers") and info is not PODS:
            return await self._remove(info, key, old, expected, dry_run, "Background")
        async def write() -> int:
            alloc = self._allocate(info, new, old)
            try:
                rev = await self.storage.update(key, new_bytes, expected)
            except RevisionMismatch:
                alloc.rollback()
                raise conflict(info.plural, name, info.group) from None
            except KeyNotFound:
                alloc.rollback()
                raise _nf(info, name) from None
            except BaseException:
                alloc.rollback()
                raise
            alloc.commit()
            return rev

        if dry_run:
            async with self._locked(info):
                self._allocate(info, new, old).rollback()
            m["resourceVersion"] = str(expected)
            return new
        rev = await self._write_section(info, write)
        m["resourceVersion"] = str(rev)
        return new

    # -- scale subresource --------------------------------------------------------

    def scale_of(self, obj: Obj) -> Obj:
        m = obj["metadata"]
        sel = obj.get("spec", {}).get("selector") or {}
        match = sel.get("matchLabels") or {}
        return {
            "kind": "Scale",
            "apiVersion": "autoscaling/v1",
            "metadata": {
                "name": m["name"],
                "namespace": m.get("namespace"),
                "uid": m.get("uid"),
                "resourceVersion": m.get("resourceVersion"),
                "creationTimestamp": m.get("creationTimestamp"),
            },
            "spec": {"replicas": obj.get("spec", {}).get("replicas", 1)},
            "status": {
                "replicas": obj.get("status", {}).get("replicas", 0),
                "selector": ",".join(f"{k}={v}" for k, v in sorted(match.items())),
            },
        }

    async def get_scale(self, info: ResourceInfo, namespace: str | None, name: str) -> Obj:
        return self.scale_of(await self.get(info, namespace, name))

    async def _update_scale(
        self, info: ResourceInfo, namespace: str | None, name: str, body: Any, dry_run: bool
    ) -> Obj:
        if not isinstance(body, dict):
            raise bad_request("the body of the request must be a Scale object")
        key = object_key(info, namespace, name)
        rec = await self.storage.get(key)
        if rec is None:
            raise _nf(info, name)
        old = decode(rec.value, rec.mod_revision)
        want_rv = (body.get("metadata") or {}).get("resourceVersion")
        if want_rv not in (None, "") and str(want_rv) != str(rec.mod_revision):
            raise conflict(info.plural, name, info.group)
        replicas = (body.get("spec") or {}).get("replicas")
        if not isinstance(replicas, int) or isinstance(replicas, bool) or replicas < 0:
            raise invalid("Scale", name, [Cause("spec.replicas", "must be a non-negative integer")], "autoscaling")
        new = jsonbytes.clone(old)
        new["spec"]["replicas"] = replicas
        out = await self._write_update(info, key, old, new, rec.mod_revision, dry_run, rec.value)
        return self.scale_of(out)

    # -- patch --------------------------------------------------------------------

    async def patch(
        self,
        info: ResourceInfo,
        namespace: str | None,
        name: str,
        content_type: str,
        body: bytes,
        subresource: str | None = None,
        dry_run: bool = False,
        field_validation: str = "Ignore",
    ) -> Obj:
        for _attempt in range(8):
            current = await self.get(info, namespace, name)
            rv = current["metadata"]["resourceVersion"]
            if subresource == "scale":
                base = self.scale_of(current)
                patched = apply_patch(info, base, content_type, body)
            else:
                patched = apply_patch(info, current, content_type, body)
            if not isinstance(patched, dict):
                raise bad_request("the patch did not produce an object")
            pm = patched.setdefault("metadata", {}) if isinstance(patched.get("metadata"), dict) else None
            if pm is None:
                raise bad_request("the patch made metadata something other than an object")
            precondition = pm.get("resourceVersion") not in (None, rv)
            if not precondition:
                pm["resourceVersion"] = rv  # conditional on what we read; retried on a race
            try:
                # apply_patch returns a new object: handed over, no copy needed.
                return await self.update(info, namespace, name, patched, subresource, dry_run, field_validation,
                                         owned=True)
            except APIError as e:
                if e.code == 409 and e.reason == "Conflict" and not precondition:
                    await self.storage.settle(object_key(info, namespace, name))
                    continue
                raise
        raise conflict(info.plural, name, info.group, "too many concurrent updates; try again")

    # -- delete -----------------------------------------------------------------

    async def delete(
        self,
        info: ResourceInfo,
        namespace: str | None,
        name: str,
        options: dict[str, Any] | None = None,
        dry_run: bool = False,
    ) -> Obj:
        options = options or {}
        for _attempt in range(8):
            try:
                return await self._delete_once(info, namespace, name, options, dry_run)
            except APIError as e:
                # Without preconditions a delete must not fail because another write to the object
                # was still being committed: wait for it, then delete what is there.
                if e.code != 409 or e.reason != "Conflict" or options.get("preconditions"):
                    raise
                await self.storage.settle(object_key(info, namespace, name))
        raise conflict(info.plural, name, info.group, "too many concurrent updates; try again")

    async def _delete_once(
        self,
        info: ResourceInfo,
        namespace: str | None,
        name: str,
        options: dict[str, Any],
        dry_run: bool,
    ) -> Obj:
        key = object_key(info, namespace, name)
        rec = await self.storage.get(key)
        if rec is None:
            raise _nf(info, name)
        old = decode(rec.value, rec.mod_revision)
        pre = options.get("preconditions") or {}
        if pre.get("uid") and pre["uid"] != old["metadata"].get("uid"):
            raise conflict(info.plural, name, info.group,
                           f"Precondition failed: UID in precondition: {pre['uid']}, UID in object meta: "
                           f"{old['metadata'].get('uid')}")
        if pre.get("resourceVersion") and str(pre["resourceVersion"]) != str(rec.mod_revision):
            raise conflict(info.plural, name, info.group,
                           f"Precondition failed: ResourceVersion in precondition: {pre['resourceVersion']}, "
                           f"ResourceVersion in object meta: {rec.mod_revision}")
        policy = options.get("propagationPolicy") or ("Orphan" if options.get("orphanDependents") else "Background")
        if info is NAMESPACES:
            return await self._delete_namespace(old, rec.mod_revision, dry_run)
        grace = options.get("gracePeriodSeconds")
        m = old["metadata"]
        if info is PODS:
            spec = old.get("spec", {})
            if grace is None:
                grace = int(spec.get("terminationGracePeriodSeconds", 30))
            terminal = old.get("status", {}).get("phase") in ("Succeeded", "Failed")
            if grace > 0 and spec.get("nodeName") and not terminal:
                return await self._begin_graceful_pod_deletion(key, old, rec.mod_revision, int(grace), dry_run)
        if m.get("finalizers"):
            if m.get("deletionTimestamp"):
                return old
            new = jsonbytes.clone(old)
            new["metadata"]["deletionTimestamp"] = now_rfc3339()
            new["metadata"]["deletionGracePeriodSeconds"] = 0
            new["metadata"].pop("resourceVersion", None)
            if dry_run:
                return new
            rev = await self.storage.update(key, encode(new), rec.mod_revision)
            new["metadata"]["resourceVersion"] = str(rev)
            return new
        return await self._remove(info, key, old, rec.mod_revision, dry_run, policy)

    async def _begin_graceful_pod_deletion(
        self, key: str, old: Obj, expected: int, grace: int, dry_run: bool
    ) -> Obj:
        m = old["metadata"]
        deadline = datetime.now(UTC) + timedelta(seconds=grace)
        if m.get("deletionTimestamp"):
            # Already terminating: a shorter grace period may only bring the deadline forward.
            current = parse_rfc3339(m["deletionTimestamp"])
            if deadline >= current:
                return old
        new = jsonbytes.clone(old)
        new["metadata"]["deletionTimestamp"] = deadline.strftime("%Y-%m-%dT%H:%M:%SZ")
        new["metadata"]["deletionGracePeriodSeconds"] = grace
        new["metadata"].pop("resourceVersion", None)
        if dry_run:
            return new
        try:
            rev = await self.storage.update(key, encode(new), expected)
        except RevisionMismatch:
            raise conflict("pods", m["name"]) from None
        new["metadata"]["resourceVersion"] = str(rev)
        self._schedule_pod_reap(key, deadline)
        return new

    def _schedule_pod_reap(self, key: str, deadline: datetime) -> None:
        loop = asyncio.get_running_loop()
        delay = max(0.0, (deadline - datetime.now(UTC)).total_seconds())
        old = self._reaper_handles.pop(key, None)
        if old:
            old.cancel()
        self._reaper_handles[key] = loop.call_later(delay, lambda: self._spawn(self._reap_pod(key)))

    async def _reap_pod(self, key: str) -> None:
        self._reaper_handles.pop(key, None)
        rec = await self.storage.get(key)
        if rec is None:
            return
        obj = decode(rec.value, rec.mod_revision)
        ts = obj["metadata"].get("deletionTimestamp")
        if not ts:
            return
        if parse_rfc3339(ts) > datetime.now(UTC):
            self._schedule_pod_reap(key, parse_rfc3339(ts))
            return
        with contextlib.suppress(APIError, KeyNotFound, RevisionMismatch):
            await self._remove(PODS, key, obj, rec.mod_revision, False, "Background")

    async def _schedule_pending_pod_deletions(self) -> None:
        records, _ = await self.storage.list(key_prefix(PODS))
        for rec in records:
            ts = jsonbytes.loads(rec.value).get("metadata", {}).get("deletionTimestamp")
            if ts:
                self._schedule_pod_reap(rec.key, parse_rfc3339(ts))

    async def _remove(
        self, info: ResourceInfo, key: str, old: Obj, expected: int, dry_run: bool, policy: str
    ) -> Obj:
        if dry_run:
            return old
        try:
            rev, _ = await self.storage.delete(key, expected)
        except RevisionMismatch:
            raise conflict(info.plural, old["metadata"]["name"], info.group) from None
        except KeyNotFound:
            raise _nf(info, old["metadata"]["name"]) from None
        self._release_all(info, old)
        h = self._reaper_handles.pop(key, None)
        if h:
            h.cancel()
        if policy == "Orphan":
            self._spawn(self._orphan_dependents(old))
        else:
            self._gc_queue.put_nowait(old)
        old["metadata"]["resourceVersion"] = str(rev)
        return old

    async def _delete_namespace(self, ns_obj: Obj, expected: int, dry_run: bool) -> Obj:
        name = ns_obj["metadata"]["name"]
        if name in SYSTEM_NAMESPACES:
            raise APIError(403, f'namespaces "{name}" is forbidden: this namespace may not be deleted',
                           "Forbidden", {"name": name, "kind": "namespaces"})
        if dry_run:
            return ns_obj
        # kube's namespace controller empties a Terminating namespace; we do it at once.
        for info in res.RESOURCES:
            if not info.namespaced:
                continue
            records, _ = await self.storage.list(key_prefix(info, name))
            for rec in records:
                obj = decode(rec.value, rec.mod_revision)
                with contextlib.suppress(APIError, KeyNotFound, RevisionMismatch):
                    await self._remove(info, rec.key, obj, rec.mod_revision, False, "Background")
        return await self._remove(NAMESPACES, object_key(NAMESPACES, None, name), ns_obj, expected, False,
                                  "Background")

    # -- garbage collection (ownerReferences) ------------------------------------------

    async def _dependents(self, owner: Obj) -> builtins.list[tuple[ResourceInfo, Obj, int, str]]:
        uid = owner["metadata"].get("uid")
        ns = owner["metadata"].get("namespace")
        out = []
        for info in res.RESOURCES:
            if not info.namespaced and ns:
                continue
            records, _ = await self.storage.list(key_prefix(info, ns))
            for rec in records:
                if uid.encode() not in rec.value:
                    continue
                obj = decode(rec.value, rec.mod_revision)
                refs = obj["metadata"].get("ownerReferences") or []
                if any(r.get("uid") == uid for r in refs):
                    out.append((info, obj, rec.mod_revision, rec.key))
        return out

    async def _garbage_collector(self) -> None:
        while True:
            owner = await self._gc_queue.get()
            try:
                for info, obj, _rev, _key in await self._dependents(owner):
                    refs = [r for r in obj["metadata"].get("ownerReferences") or []
                            if r.get("uid") != owner["metadata"].get("uid")]
                    if refs and await self._any_owner_alive(obj, refs):
                        continue
                    with contextlib.suppress(APIError):
                        await self.delete(info, obj["metadata"].get("namespace"), obj["metadata"]["name"],
                                          {"preconditions": {"uid": obj["metadata"]["uid"]}})
            except Exception:
                log.exception("garbage collection of dependents failed owner=%s", owner["metadata"].get("name"))

    async def _collect_if_orphaned(self, info: ResourceInfo, obj: Obj) -> None:
        """kube's garbage collector deletes an object none of whose owners exists. Only when every
        owner is of a kind this server knows: an owner it cannot look up is not known to be gone."""
        refs = obj["metadata"].get("ownerReferences") or []
        kinds = [res.lookup_kind(r.get("apiVersion", ""), r.get("kind", "")) for r in refs]
        if any(k is None for k in kinds):
            return
        if not info.namespaced and any(k is not None and k.namespaced for k in kinds):
            # A cluster-scoped object cannot have a namespaced owner: kube (>= 1.20) treats such a
            # reference as unresolvable and never collects the object.
            return
        try:
            if await self._any_owner_alive(obj, refs):
                return
            with contextlib.suppress(APIError):
                await self.delete(info, obj["metadata"].get("namespace"), obj["metadata"]["name"],
                                  {"preconditions": {"uid": obj["metadata"]["uid"]}})
        except Exception:
            log.exception("garbage collection of an orphan failed name=%s", obj["metadata"].get("name"))

    async def _any_owner_alive(self, obj: Obj, refs: builtins.list[dict[str, Any]]) -> bool:
        for ref in refs:
            info = res.lookup_kind(ref.get("apiVersion", ""), ref.get("kind", ""))
            if info is None:
                continue
            ns = obj["metadata"].get("namespace") if info.namespaced else None
            rec = await self.storage.get(object_key(info, ns, ref.get("name", "")))
            if rec is not None and jsonbytes.loads(rec.value)["metadata"].get("uid") == ref.get("uid"):
                return True
        return False

    async def _orphan_dependents(self, owner: Obj) -> None:
        uid = owner["metadata"].get("uid")
        for info, obj, _rev, _key in await self._dependents(owner):
            refs = [r for r in obj["metadata"].get("ownerReferences") or [] if r.get("uid") != uid]
            patch = json.dumps({"metadata": {"ownerReferences": refs or None}}).encode()
            with contextlib.suppress(APIError):
                await self.patch(info, obj["metadata"].get("namespace"), obj["metadata"]["name"],
                                 "application/merge-patch+json", patch)

    # -- allocation ---------------------------------------------------------------

    def _allocate(self, info: ResourceInfo, new: Obj, old: Obj | None) -> _Allocation:
        if info is SERVICES:
            return self._allocate_service(new, old)
        if info is NODES:
            return self._allocate_node(new, old)
        return _Allocation()

    @staticmethod
    def _carry_service_allocations(old: Obj, new: Obj) -> None:
        """kube's patchAllocatedValues + dropTypeDependentFields: an update that does not
        mention allocated values keeps them; a type change drops what the type no longer uses."""
        ospec = old.get("spec", {})
        nspec = new.setdefault("spec", {})
        ntype = nspec.get("type", "ClusterIP")
        if ntype != "ExternalName" and ospec.get("type") != "ExternalName":
            if not nspec.get("clusterIP") and ospec.get("clusterIP"):
                nspec["clusterIP"] = ospec["clusterIP"]
            if not nspec.get("clusterIPs") and ospec.get("clusterIPs"):
                nspec["clusterIPs"] = list(ospec["clusterIPs"])
        if ntype == "ExternalName":
            nspec.pop("clusterIP", None)
            nspec.pop("clusterIPs", None)
        old_ports = {(p.get("port"), p.get("protocol", "TCP")): p.get("nodePort")
                     for p in ospec.get("ports") or []}
        needs_np = _needs_node_ports(nspec)
        for p in nspec.get("ports") or []:
            was = old_ports.get((p.get("port"), p.get("protocol", "TCP")))
            if needs_np and not p.get("nodePort") and was:
                p["nodePort"] = was
            if not needs_np and p.get("nodePort") and p.get("nodePort") == was:
                del p["nodePort"]
        if _needs_health_check_port(nspec):
            if not nspec.get("healthCheckNodePort") and ospec.get("healthCheckNodePort"):
                nspec["healthCheckNodePort"] = ospec["healthCheckNodePort"]
        elif nspec.get("healthCheckNodePort") == ospec.get("healthCheckNodePort"):
            nspec.pop("healthCheckNodePort", None)

    def _allocate_service(self, new: Obj, old: Obj | None) -> _Allocation:
        alloc = _Allocation()
        spec = new.setdefault("spec", {})
        ospec = (old or {}).get("spec", {})
        name = new["metadata"]["name"]
        causes: list[Cause] = []
        old_ip = ospec.get("clusterIP") if ospec.get("type") != "ExternalName" else None
        stype = spec.get("type", "ClusterIP")
        try:
            if stype == "ExternalName" or spec.get("clusterIP") == "None":
                if spec.get("clusterIP") == "None":
                    spec["clusterIPs"] = ["None"]
            else:
                ip = spec.get("clusterIP") or ""
                if ip and ip == old_ip:
                    pass
                elif ip:
                    self.ips.allocate_specific(ip)
                    alloc.undo.append(partial(self.ips.release, ip))
                else:
                    ip = self.ips.allocate()
                    alloc.undo.append(partial(self.ips.release, ip))
                spec["clusterIP"] = ip
                spec["clusterIPs"] = [ip]
        except (AllocationError, ValueError) as e:
            causes.append(Cause("spec.clusterIPs", f'Invalid value: ["{spec.get("clusterIP")}"]: failed to '
                                                   f"allocate IP {spec.get('clusterIP') or ''}: {e}"))
        if old_ip and old_ip not in ("None", spec.get("clusterIP")):
            alloc.release.append(partial(self.ips.release, old_ip))

        old_nps = {p.get("nodePort") for p in ospec.get("ports") or [] if p.get("nodePort")}
        if ospec.get("healthCheckNodePort"):
            old_nps.add(ospec["healthCheckNodePort"])
        kept: set[int] = set()
        seen: set[int] = set()
        wanted: list[tuple[str, dict[str, Any], str]] = []
        if _needs_node_ports(spec):
            wanted += [(f"spec.ports[{i}].nodePort", p, "nodePort") for i, p in enumerate(spec.get("ports") or [])]
        if _needs_health_check_port(spec):
            wanted.append(("spec.healthCheckNodePort", spec, "healthCheckNodePort"))
        for fld, holder, attr in wanted:
            np = holder.get(attr)
            try:
                if np and np in old_nps and np not in seen:
                    kept.add(np)
                elif np:
                    if np in seen:
                        raise AllocationError("provided port is already allocated")
                    self.node_ports.allocate_specific(int(np))
                    alloc.undo.append(partial(self.node_ports.release, int(np)))
                else:
                    np = self.node_ports.allocate()
                    alloc.undo.append(partial(self.node_ports.release, int(np)))
                    holder[attr] = np
                seen.add(int(np))
            except (AllocationError, ValueError) as e:
                causes.append(Cause(fld, f"Invalid value: {np}: {e}"))
        for np in old_nps - kept:
            alloc.release.append(partial(self.node_ports.release, int(np)))
        if causes:
            alloc.rollback()
            raise invalid("Service", name, causes)
        return alloc

    def _allocate_node(self, new: Obj, old: Obj | None) -> _Allocation:
        alloc = _Allocation()
        spec = new.setdefault("spec", {})
        old_cidr = (old or {}).get("spec", {}).get("podCIDR")
        cidr = spec.get("podCIDR")
        if cidr and cidr == old_cidr:
            return alloc
        if old_cidr and cidr != old_cidr:
            raise invalid("Node", new["metadata"]["name"], [
                Cause("spec.podCIDR", "node updates may not change podCIDR except from \"\" to valid",
                      "FieldValueForbidden")])
        try:
            if cidr:
                self.pod_cidrs.allocate_specific(cidr)
            else:
                cidr = self.pod_cidrs.allocate()
        except (AllocationError, ValueError) as e:
            if spec.get("podCIDR"):
                raise invalid("Node", new["metadata"]["name"], [Cause("spec.podCIDR", str(e))]) from e
            # kube's node IPAM controller leaves the node without a CIDR (and says so in an event).
            log.warning("no pod CIDR left for node=%s: %s", new["metadata"]["name"], e)
            return alloc
        alloc.undo.append(partial(self.pod_cidrs.release, cidr))
        spec["podCIDR"] = cidr
        spec["podCIDRs"] = [cidr]
        return alloc

    def _release_all(self, info: ResourceInfo, old: Obj) -> None:
        spec = old.get("spec", {})
        if info is SERVICES:
            ip = spec.get("clusterIP")
            if ip and ip != "None" and spec.get("type") != "ExternalName":
                self.ips.release(ip)
            for p in spec.get("ports") or []:
                if p.get("nodePort"):
                    self.node_ports.release(int(p["nodePort"]))
            if spec.get("healthCheckNodePort"):
                self.node_ports.release(int(spec["healthCheckNodePort"]))
        elif info is NODES and spec.get("podCIDR"):
            with contextlib.suppress(ValueError, AllocationError):
                self.pod_cidrs.release(spec["podCIDR"])

    # -- watch --------------------------------------------------------------------

    async def watch(
        self,
        info: ResourceInfo,
        namespace: str | None,
        resource_version: str | None,
        label_selector: LabelSelector | None = None,
        field_selector: FieldSelector | None = None,
        send_initial_events: bool = False,
    ) -> AsyncGenerator[WatchEvent, None]:
        """Changes as watch events. Without a resourceVersion (or with sendInitialEvents, kube's
        WatchList) the current state comes first as ADDED events; with sendInitialEvents a
        BOOKMARK annotated k8s.io/initial-events-end then marks where that state ends."""
        prefix = key_prefix(info, namespace)
        if send_initial_events or resource_version in (None, "", "0"):
            lst = await self.list(info, namespace, label_selector, field_selector)
            start = int(lst["metadata"]["resourceVersion"])
            for item in lst["items"]:
                yield WatchEvent("ADDED", item)
            if send_initial_events:
                yield WatchEvent("BOOKMARK", {
                    "kind": info.kind, "apiVersion": info.group_version,
                    "metadata": {"resourceVersion": str(start),
                                 "annotations": {"k8s.io/initial-events-end": "true"}},
                })
        else:
            try:
                start = int(str(resource_version))
            except ValueError:
                raise bad_request(f"invalid resourceVersion {resource_version!r}") from None
        try:
            async for change in self.cache.stream(start, prefix):
                ev = self._filter_change(change, label_selector, field_selector)
                if ev is not None:
                    yield ev
        except Compacted as e:
            raise gone(f"too old resource version: {start} ({e.compacted + 1})") from None

    def _filter_change(
        self, change: Change, ls: LabelSelector | None, fs: FieldSelector | None
    ) -> WatchEvent | None:
        if ls is None and fs is None:
            return WatchEvent(change.type, change.object, change)
        now = self._matches(change.object, ls, fs)
        if change.type != "MODIFIED" or change.previous is None:
            return WatchEvent(change.type, change.object, change) if now else None
        before = self._matches(change.previous, ls, fs)
        if now and before:
            return WatchEvent("MODIFIED", change.object, change)
        if now:
            return WatchEvent("ADDED", change.object, change)
        if before:
            return WatchEvent("DELETED", change.object, change)
        return None


def _needs_node_ports(spec: dict[str, Any]) -> bool:
    t = spec.get("type", "ClusterIP")
    if t == "NodePort":
        return True
    return t == "LoadBalancer" and spec.get("allocateLoadBalancerNodePorts", True) is not False


def _needs_health_check_port(spec: dict[str, Any]) -> bool:
    return spec.get("type") == "LoadBalancer" and spec.get("externalTrafficPolicy") == "Local"
