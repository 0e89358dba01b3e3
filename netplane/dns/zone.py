"""The precomputed answer index and the object cache that feeds it (pure, no I/O).

:class:`ZoneIndex` maps each owner name to its records by type. Records come from *owners* (one
Service with its EndpointSlices, one Pod, the zone apex); replacing an owner's contribution touches
only the names it had or has, and returns the set of names whose answers may have changed, which
is what the response cache invalidates. Ancestors of every name with records exist as empty
non-terminals (``default.svc.cluster.local``, ``_tcp.web...``): they answer NOERROR without data,
not NXDOMAIN (RFC 8020).

:class:`ClusterModel` holds the Services, EndpointSlices and Pods the informers deliver, and
recomputes an owner's contribution on each event for it. A malformed object is logged and
contributes nothing; the rest keeps serving.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from netplane.dns.records import RR, Contribution, pod_records, service_records, zone_apex_records

log = logging.getLogger(__name__)

Owner = tuple[str, ...]
Obj = Mapping[str, Any]
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
# Reverse zones that are indexed (for PTR) but not authoritative: unknown names there are forwarded
# (CoreDNS's `fallthrough in-addr.arpa ip6.arpa`).
REVERSE_SUFFIXES = (".in-addr.arpa", ".ip6.arpa")


def ancestors(name: str) -> list[str]:
    """'a.b.c' -> ['b.c', 'c']."""
    out = []
    while "." in name:
        name = name.split(".", 1)[1]
        out.append(name)
    return out


class ZoneIndex:
    def __init__(self) -> None:
        # name -> rtype -> records, merged over owners (what the resolver reads)
        self.records: dict[str, dict[int, tuple[RR, ...]]] = {}
        self._owners: dict[Owner, Contribution] = {}
        self._by_name: dict[str, dict[Owner, tuple[RR, ...]]] = {}
        # name -> how many names with records lie below it (> 0: an empty non-terminal, or more)
        self._below: dict[str, int] = {}

    def exists(self, name: str) -> bool:
        return name in self.records or name in self._below

    def owners(self) -> int:
        return len(self._owners)

    def replace(self, owner: Owner, contribution: Contribution) -> set[str]:
        """Set one owner's records (empty: remove it); the names whose answers may have changed."""
        old = self._owners.get(owner, {})
        if old == contribution:
            return set()
        if contribution:
            self._owners[owner] = contribution
        else:
            self._owners.pop(owner, None)
        changed: set[str] = set()
        for name in old.keys() - contribution.keys():
            by = self._by_name.get(name)
            if by is not None:
                by.pop(owner, None)
                if not by:
                    del self._by_name[name]
            changed |= self._merge(name)
        for name, rrs in contribution.items():
            if old.get(name) == rrs:
                continue
            self._by_name.setdefault(name, {})[owner] = rrs
            changed |= self._merge(name)
        return changed

    def _merge(self, name: str) -> set[str]:
        by = self._by_name.get(name)
        existed = name in self.records
        changed = {name}
        if not by:
            if existed:
                del self.records[name]
                changed |= self._count_below(name, -1)
            return changed
        merged: dict[int, list[RR]] = {}
        for owner in sorted(by):
            for rr in by[owner]:
                rrs = merged.setdefault(rr.rtype, [])
                if rr not in rrs:
                    rrs.append(rr)
        self.records[name] = {t: tuple(v) for t, v in merged.items()}
        if not existed:
            changed |= self._count_below(name, +1)
        return changed

    def _count_below(self, name: str, delta: int) -> set[str]:
        """Adjust the ancestors' counts; the ancestors that appeared or disappeared."""
        flipped = set()
        for parent in ancestors(name):
            n = self._below.get(parent, 0) + delta
            if n <= 0:
                self._below.pop(parent, None)
                flipped.add(parent)
            else:
                if n == 1 and delta > 0:
                    flipped.add(parent)
                self._below[parent] = n
        return flipped


def _key(obj: Obj) -> tuple[str, str]:
    meta = obj.get("metadata") or {}
    return (str(meta.get("namespace") or "default"), str(meta.get("name") or ""))


class ClusterModel:
    """Services, EndpointSlices and Pods as the informers deliver them, kept in a :class:`ZoneIndex`.

    Each ``on_*`` method takes ``(old, new)`` (None for an add's old or a delete's new) and returns
    the names whose answers may have changed.
    """

    def __init__(self, zone: str = "cluster.local") -> None:
        self.zone = zone.rstrip(".").lower()
        self.index = ZoneIndex()
        self.services: dict[tuple[str, str], Obj] = {}
        # (namespace, service name) -> slice name -> slice
        self.slices: dict[tuple[str, str], dict[str, Obj]] = {}
        self.index.replace(("zone",), zone_apex_records(self.zone))
        self.invalid = 0  # objects skipped because they could not be turned into records

    def _rebuild_service(self, key: tuple[str, str]) -> set[str]:
        svc = self.services.get(key)
        contribution: Contribution = {}
        if svc is not None:
            try:
                contribution = service_records(svc, self.slices.get(key, {}).values(), self.zone)
            except (ValueError, TypeError, KeyError, AttributeError) as e:
                self.invalid += 1
                log.warning("dns skipped invalid service=%s/%s error=%r", key[0], key[1], str(e))
        return self.index.replace(("svc", *key), contribution)

    def on_service(self, old: Obj | None, new: Obj | None) -> set[str]:
        key = _key(new if new is not None else old or {})
        if new is None:
            self.services.pop(key, None)
        else:
            self.services[key] = new
        return self._rebuild_service(key)

    @staticmethod
    def _slice_service(slc: Obj) -> tuple[str, str] | None:
        meta = slc.get("metadata") or {}
        svc = (meta.get("labels") or {}).get(SERVICE_NAME_LABEL)
        return (str(meta.get("namespace") or "default"), str(svc)) if svc else None

    def on_slice(self, old: Obj | None, new: Obj | None) -> set[str]:
        changed: set[str] = set()
        touched: set[tuple[str, str]] = set()
        if old is not None:
            svc_key = self._slice_service(old)
            if svc_key is not None:
                self.slices.get(svc_key, {}).pop(_key(old)[1], None)
                if not self.slices.get(svc_key, True):
                    del self.slices[svc_key]
                touched.add(svc_key)
        if new is not None:
            svc_key = self._slice_service(new)
            if svc_key is not None:
                self.slices.setdefault(svc_key, {})[_key(new)[1]] = new
                touched.add(svc_key)
        for svc_key in touched:
            # Only headless services publish endpoints; a ClusterIP service's answers do not depend on them.
            svc = self.services.get(svc_key)
            if svc is not None and (svc.get("spec") or {}).get("clusterIP") == "None":
                changed |= self._rebuild_service(svc_key)
        return changed

    def on_pod(self, old: Obj | None, new: Obj | None) -> set[str]:
        obj = new if new is not None else old or {}
        key = _key(obj)
        contribution: Contribution = {}
        if new is not None:
            try:
                contribution = pod_records(new, self.zone)
            except (ValueError, TypeError, KeyError, AttributeError) as e:
                self.invalid += 1
                log.warning("dns skipped invalid pod=%s/%s error=%r", key[0], key[1], str(e))
        return self.index.replace(("pod", *key), contribution)
