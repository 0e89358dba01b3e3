"""Controllers that run inside the state server (kube-controller-manager's part the data plane needs).

The EndpointSlice controller follows the watch cache: a Service or Pod change
marks the affected services dirty; after a short coalescing delay each dirty
service is reconciled with the pure `desired_endpoint_slices`, and only the
slices that differ are written. The life cycle and the work queue are the
shared ones in controllerbase.
"""

from __future__ import annotations

import contextlib
import logging

from netplane.api.errors import APIError
from netplane.api.selectors import LabelSelector
from netplane.state.controllerbase import Controller, Key, key_parts
from netplane.state.endpointslices import desired_endpoint_slices
from netplane.state.objects import Obj, key_prefix
from netplane.state.registry import ENDPOINTSLICES, PODS, SERVICES, Registry
from netplane.state.watchcache import Change

log = logging.getLogger(__name__)

SERVICE_NAME_LABEL = "kubernetes.io/service-name"
MANAGED_BY_LABEL = "endpointslice.kubernetes.io/managed-by"
MANAGED_BY = "endpointslice-controller.k8s.io"



class EndpointSliceController(Controller):
    name = "endpointslices"
    prefixes = (key_prefix(SERVICES), key_prefix(PODS), key_prefix(ENDPOINTSLICES))

    def __init__(self, registry: Registry, delay: float = 0.01) -> None:
        super().__init__(registry, delay)
        self._selectors: dict[Key, dict[str, str]] = {}

    async def _initial(self) -> None:
        lst = await self.registry.list(SERVICES, None)
        for svc in lst["items"]:
            key = (svc["metadata"]["namespace"], svc["metadata"]["name"])
            self._selectors[key] = (svc.get("spec") or {}).get("selector") or {}
            self.queue.add(key)
        # Slices whose service is gone (deleted while we were down) are reconciled too.
        slices = await self.registry.list(ENDPOINTSLICES, None)
        for s in slices["items"]:
            labels = s["metadata"].get("labels") or {}
            if labels.get(MANAGED_BY_LABEL) == MANAGED_BY and labels.get(SERVICE_NAME_LABEL):
                self.queue.add((s["metadata"]["namespace"], labels[SERVICE_NAME_LABEL]))

    def observe(self, change: Change) -> None:
        key = change.key
        if key.startswith("/registry/core/services/"):
            sk = key_parts(key)
            if change.type == "DELETED":
                self._selectors.pop(sk, None)
            else:
                self._selectors[sk] = (change.object.get("spec") or {}).get("selector") or {}
            self.queue.add(sk)
        elif key.startswith("/registry/core/pods/"):
            ns, _ = key_parts(key)
            label_sets = [(change.object.get("metadata") or {}).get("labels") or {}]
            if change.previous is not None:
                label_sets.append((change.previous.get("metadata") or {}).get("labels") or {})
            for sk, selector in self._selectors.items():
                if sk[0] != ns or not selector:
                    continue
                if any(all(labels.get(k) == v for k, v in selector.items()) for labels in label_sets):
                    self.queue.add(sk)
        elif key.startswith("/registry/discovery.k8s.io/endpointslices/"):
            labels = (change.object.get("metadata") or {}).get("labels") or {}
            if labels.get(MANAGED_BY_LABEL) == MANAGED_BY and labels.get(SERVICE_NAME_LABEL):
                # Someone else edited or removed one of our slices: put it right.
                ns, _ = key_parts(key)
                self.queue.add((ns, labels[SERVICE_NAME_LABEL]))

    async def sync(self, namespace: str, name: str) -> float | None:
        await self.reconcile(namespace, name)
        return None

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
