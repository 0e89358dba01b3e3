"""Controllers that run inside the state server (kube-controller-manager's part the data plane needs).

The EndpointSlice controller follows the watch cache: a Service or Pod change
marks the affected services dirty; after a short coalescing delay each dirty
service is reconciled with the pure `desired_endpoint_slices`, and only the
slices that differ are written.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from netplane.api.errors import APIError
from netplane.api.selectors import LabelSelector
from netplane.state.endpointslices import desired_endpoint_slices
from netplane.state.objects import Obj
from netplane.state.registry import ENDPOINTSLICES, PODS, SERVICES, Registry
from netplane.state.watchcache import Change

log = logging.getLogger(__name__)

SERVICE_NAME_LABEL = "kubernetes.io/service-name"
MANAGED_BY_LABEL = "endpointslice.kubernetes.io/managed-by"
MANAGED_BY = "endpointslice-controller.k8s.io"

ServiceKey = tuple[str, str]  # (namespace, name)


def _key_parts(key: str) -> tuple[str, str]:
    """(namespace, name) from /registry/<group>/<plural>/<ns>/<name>."""
    parts = key.split("/")
    return parts[-2], parts[-1]


class EndpointSliceController:
    def __init__(self, registry: Registry, delay: float = 0.01) -> None:
        self.registry = registry
        self.delay = delay
        self._selectors: dict[ServiceKey, dict[str, str]] = {}
        self._dirty: set[ServiceKey] = set()
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[Any]] = []

    async def start(self) -> None:
        sub = self.registry.cache.subscribe("/registry/")
        lst = await self.registry.list(SERVICES, None)
        for svc in lst["items"]:
            key = (svc["metadata"]["namespace"], svc["metadata"]["name"])
            self._selectors[key] = (svc.get("spec") or {}).get("selector") or {}
            self._dirty.add(key)
        # Slices whose service is gone (deleted while we were down) are reconciled too.
        slices = await self.registry.list(ENDPOINTSLICES, None)
        for s in slices["items"]:
            labels = s["metadata"].get("labels") or {}
            if labels.get(MANAGED_BY_LABEL) == MANAGED_BY and labels.get(SERVICE_NAME_LABEL):
                self._dirty.add((s["metadata"]["namespace"], labels[SERVICE_NAME_LABEL]))
        self._wake.set()
        self._tasks.append(asyncio.create_task(self._follow(sub), name="endpointslices-follow"))
        self._tasks.append(asyncio.create_task(self._work(), name="endpointslices-work"))

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t

    async def _follow(self, sub: Any) -> None:
        try:
            while True:
                change: Change = await sub.next()
                self._observe(change)
        finally:
            sub.close()

    def _observe(self, change: Change) -> None:
        key = change.key
        if key.startswith("/registry/core/services/"):
            sk = _key_parts(key)
            if change.type == "DELETED":
                self._selectors.pop(sk, None)
            else:
                self._selectors[sk] = (change.object.get("spec") or {}).get("selector") or {}
            self._mark(sk)
        elif key.startswith("/registry/core/pods/"):
            ns, _ = _key_parts(key)
            label_sets = [(change.object.get("metadata") or {}).get("labels") or {}]
            if change.previous is not None:
                label_sets.append((change.previous.get("metadata") or {}).get("labels") or {})
            for sk, selector in self._selectors.items():
                if sk[0] != ns or not selector:
                    continue
                if any(all(labels.get(k) == v for k, v in selector.items()) for labels in label_sets):
                    self._mark(sk)
        elif key.startswith("/registry/discovery.k8s.io/endpointslices/"):
            labels = (change.object.get("metadata") or {}).get("labels") or {}
            if labels.get(MANAGED_BY_LABEL) == MANAGED_BY and labels.get(SERVICE_NAME_LABEL):
                # Someone else edited or removed one of our slices: put it right.
                ns, _ = _key_parts(key)
                self._mark((ns, labels[SERVICE_NAME_LABEL]))

    def _mark(self, sk: ServiceKey) -> None:
        self._dirty.add(sk)
        self._wake.set()

    async def _work(self) -> None:
        while True:
            await self._wake.wait()
            await asyncio.sleep(self.delay)  # coalesce a burst of changes into one pass
            self._wake.clear()
            batch, self._dirty = self._dirty, set()
            for sk in sorted(batch):
                try:
                    await self.reconcile(*sk)
                except APIError as e:
                    if e.code == 409:
                        self._mark(sk)  # raced with another write: try again
                    else:
                        log.warning("endpointslice sync failed service=%s/%s error=%s", *sk, e.message)
                except Exception:
                    log.exception("endpointslice sync failed service=%s/%s", *sk)

    async def reconcile(self, namespace: str, name: str) -> None:
        reg = self.registry
        selector = LabelSelector.parse(f"{SERVICE_NAME_LABEL}={name},{MANAGED_BY_LABEL}={MANAGED_BY}")
        existing = (await reg.list(ENDPOINTSLICES, namespace, selector))["items"]
        try:
            svc: Obj | None = await reg.get(SERVICES, namespace, name)
        except APIError as e:
            if e.code != 404:
                raise
            svc = None
        if svc is None:
            for s in existing:
                with contextlib.suppress(APIError):
                    await reg.delete(ENDPOINTSLICES, namespace, s["metadata"]["name"])
            return
        pods: list[Obj] = []
        if (svc.get("spec") or {}).get("selector"):
            pods = (await reg.list(PODS, namespace))["items"]
        changes = desired_endpoint_slices(svc, pods, existing)
        for obj in changes.delete:
            with contextlib.suppress(APIError):
                await reg.delete(ENDPOINTSLICES, namespace, obj["metadata"]["name"])
        for obj in changes.update:
            await reg.update(ENDPOINTSLICES, namespace, obj["metadata"]["name"], obj)
        for obj in changes.create:
            await reg.create(ENDPOINTSLICES, namespace, obj)
