"""Change trackers for Services and EndpointSlices (kube-proxy's ServiceChangeTracker/EndpointsChangeTracker).

Events arrive one by one; a sync happens later and wants to know *which services
changed* so that it can rewrite only their rules. Each tracker keeps, per service,
`{previous, current}`: `previous` is what the last sync programmed, `current` the
newest value seen. A change whose two sides are equal is dropped, so an object
that flaps back to what is programmed costs nothing. `apply()` moves the pending
values into the proxy's maps and returns the set of services that changed.

An invalid object is reported through `on_invalid` and otherwise ignored: the
service keeps whatever is programmed for it (rule 5 of the house: bad input
changes nothing).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import Any

from netplane.proxy.model import (
    Endpoint,
    InvalidObject,
    NamespacedName,
    ServicePort,
    ServicePortName,
    SliceInfo,
    merge_slices,
    parse_endpoint_slice,
    parse_service,
)

EndpointsMap = dict[ServicePortName, tuple[Endpoint, ...]]


class ServicePortMap(dict[ServicePortName, ServicePort]):
    """The service ports by name, plus which ports each service has.

    A partial sync must find the ports of a few changed services among 10k; scanning
    the whole map for them cost more than the rest of the sync. The index follows the
    mutations the trackers make (item assignment and deletion, pop, update, clear).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__()
        self._by_service: dict[NamespacedName, dict[ServicePortName, None]] = {}
        self.update(*args, **kwargs)

    def __setitem__(self, key: ServicePortName, value: ServicePort) -> None:
        super().__setitem__(key, value)
        self._by_service.setdefault(key.service, {})[key] = None

    def __delitem__(self, key: ServicePortName) -> None:
        super().__delitem__(key)
        self._forget(key)

    def _forget(self, key: ServicePortName) -> None:
        ports = self._by_service.get(key.service)
        if ports is not None:
            ports.pop(key, None)
            if not ports:
                del self._by_service[key.service]

    def pop(self, key: ServicePortName, *default: Any) -> Any:
        if key in self:
            self._forget(key)
        return super().pop(key, *default)

    def update(self, *args: Any, **kwargs: Any) -> None:
        for k, v in dict(*args, **kwargs).items():
            self[k] = v

    def clear(self) -> None:
        super().clear()
        self._by_service.clear()

    def popitem(self) -> tuple[ServicePortName, ServicePort]:
        key, value = super().popitem()
        self._forget(key)
        return key, value

    def setdefault(self, key: ServicePortName, default: ServicePort) -> ServicePort:
        if key not in self:
            self[key] = default
        return self[key]

    def ports_of(self, services: Iterable[NamespacedName]) -> list[ServicePortName]:
        """The port names of these services, in a stable (sorted) order."""
        return sorted(spn for svc in services for spn in self._by_service.get(svc, ()))
InvalidHandler = Callable[[InvalidObject], None]


@dataclass(slots=True)
class Change:
    previous: dict[ServicePortName, Any]
    current: dict[ServicePortName, Any]


@dataclass(slots=True)
class UpdateResult:
    updated: set[NamespacedName] = field(default_factory=set)
    # service -> the earliest change time (epoch seconds) among the applied changes, when known
    trigger_times: dict[NamespacedName, float] = field(default_factory=dict)


def _key(obj: Mapping[str, Any]) -> NamespacedName:
    meta = obj.get("metadata") or {}
    return NamespacedName(str(meta.get("namespace") or "default"), str(meta.get("name") or ""))


def _replace_service_entries(target: MutableMapping[ServicePortName, Any], applied: Mapping[ServicePortName, Any],
                             value: Mapping[ServicePortName, Any]) -> None:
    """Replace one service's entries: `applied` holds exactly the ones this tracker put into `target`.

    Removing them by key, not by scanning `target` for the service, keeps an apply
    linear in the changes: a scan per service made the first sync of 10k services
    quadratic (20 s here).
    """
    for spn in applied:
        target.pop(spn, None)
    target.update(value)


class ServiceChangeTracker:
    def __init__(self, on_invalid: InvalidHandler | None = None) -> None:
        self._applied: dict[NamespacedName, dict[ServicePortName, ServicePort]] = {}
        self._pending: dict[NamespacedName, Change] = {}
        self._on_invalid = on_invalid
        # Services whose newest object was invalid: reported once per bad version.
        self.invalid: dict[NamespacedName, str] = {}

    def update(self, previous: Mapping[str, Any] | None, current: Mapping[str, Any] | None) -> bool:
        """Record an add (None, obj), update (old, new) or delete (obj, None); True if a change is pending."""
        ref = current if current is not None else previous
        if ref is None:
            return False
        key = _key(ref)
        try:
            value = parse_service(current) if current is not None else {}
        except InvalidObject as e:
            self.invalid[key] = str(e)
            if self._on_invalid:
                self._on_invalid(e)
            return key in self._pending
        self.invalid.pop(key, None)
        change = self._pending.get(key)
        if change is None:
            change = Change(previous=self._applied.get(key, {}), current=value)
        else:
            change.current = value
        if change.previous == change.current:
            self._pending.pop(key, None)  # flapped back to what is programmed
            return False
        self._pending[key] = change
        return True

    def pending(self) -> set[NamespacedName]:
        return set(self._pending)

    def apply(self, services: MutableMapping[ServicePortName, ServicePort]) -> UpdateResult:
        """Move pending changes into `services` (all ports of a changed service are replaced)."""
        result = UpdateResult()
        for key, change in self._pending.items():
            _replace_service_entries(services, self._applied.get(key, {}), change.current)
            if change.current:
                self._applied[key] = change.current
            else:
                self._applied.pop(key, None)
            result.updated.add(key)
        self._pending.clear()
        return result


class EndpointsChangeTracker:
    """Tracks EndpointSlices, merged per service (a service may have several slices)."""

    def __init__(self, on_invalid: InvalidHandler | None = None) -> None:
        self._slices: dict[NamespacedName, dict[str, SliceInfo]] = {}  # service -> slice name -> info
        self._slice_owner: dict[NamespacedName, NamespacedName] = {}  # slice -> service
        self._applied: dict[NamespacedName, EndpointsMap] = {}
        self._pending: dict[NamespacedName, Change] = {}
        self._trigger_times: dict[NamespacedName, float] = {}
        self._on_invalid = on_invalid
        self.invalid: dict[NamespacedName, str] = {}

    def update(self, previous: Mapping[str, Any] | None, current: Mapping[str, Any] | None) -> bool:
        ref = current if current is not None else previous
        if ref is None:
            return False
        slice_key = _key(ref)
        try:
            info = parse_endpoint_slice(current) if current is not None else None
        except InvalidObject as e:
            self.invalid[slice_key] = str(e)
            if self._on_invalid:
                self._on_invalid(e)
            return False
        self.invalid.pop(slice_key, None)
        touched: set[NamespacedName] = set()
        old_owner = self._slice_owner.pop(slice_key, None)
        if old_owner is not None:
            self._slices.get(old_owner, {}).pop(slice_key.name, None)
            if not self._slices.get(old_owner):
                self._slices.pop(old_owner, None)
            touched.add(old_owner)
        if info is not None:
            self._slice_owner[slice_key] = info.service
            self._slices.setdefault(info.service, {})[slice_key.name] = info
            touched.add(info.service)
            if info.trigger_time is not None:
                known = self._trigger_times.get(info.service)
                first = min(known, info.trigger_time) if known else info.trigger_time
                self._trigger_times[info.service] = first
        changed = False
        for svc in touched:
            changed |= self._note(svc)
        return changed

    def _note(self, svc: NamespacedName) -> bool:
        value = merge_slices(self._slices.get(svc, {}))
        change = self._pending.get(svc)
        if change is None:
            change = Change(previous=self._applied.get(svc, {}), current=value)
        else:
            change.current = value
        if change.previous == change.current:
            self._pending.pop(svc, None)
            self._trigger_times.pop(svc, None)
            return False
        self._pending[svc] = change
        return True

    def pending(self) -> set[NamespacedName]:
        return set(self._pending)

    def previous_of(self, svc: NamespacedName) -> EndpointsMap:
        return dict(self._applied.get(svc, {}))

    def apply(self, endpoints: EndpointsMap) -> UpdateResult:
        result = UpdateResult()
        for svc, change in self._pending.items():
            _replace_service_entries(endpoints, self._applied.get(svc, {}), change.current)
            if change.current:
                self._applied[svc] = change.current
            else:
                self._applied.pop(svc, None)
            result.updated.add(svc)
            if svc in self._trigger_times:
                result.trigger_times[svc] = self._trigger_times[svc]
        self._pending.clear()
        self._trigger_times.clear()
        return result
