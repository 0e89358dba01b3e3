"""Client-side apply, as ``kubectl apply`` does it: create, or merge into the live object.

For each object: GET the live one; when there is none, POST it (``service/web created``). Otherwise
compute a three-way merge of

* ``original`` - what was applied last time, from the ``kubectl.kubernetes.io/last-applied-configuration``
  annotation (so a field removed from the manifest is removed from the object),
* ``modified`` - the manifest now,
* ``current`` - the live object (so fields set by the server or by others, such as a Service's
  clusterIP and nodePorts, are kept),

and when the result equals the live object print ``unchanged``; otherwise PUT the result with the
live resourceVersion, re-reading and re-merging on ``409 Conflict`` (``configured``).

Why a merged PUT instead of a strategic-merge PATCH: the merge is done here, identically against any
server, and it is pure (tested without a server). Lists are merged like strategic merge patch does
for the lists the data plane cares about - by merge key (containers, env, volumes by name; Service
and container ports by port+protocol, which also fixes kubectl's known port-53 TCP/UDP clash); other
lists are replaced as a whole unless the live list already contains the manifest's (server
defaults inside list items are kept).

Where this differs from kubectl: ``status`` and server-owned metadata (resourceVersion, uid,
creationTimestamp, generation, managedFields) in a manifest are ignored rather than sent, so applying
the output of ``get -o yaml`` works. The last-applied annotation is written byte for byte the way
kubectl writes it (compact JSON, sorted keys, ``"annotations":{}`` left inside, a trailing newline),
so kubectl and netplane can take turns and each sees the other's apply as ``unchanged``.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from netplane.api.manifests import Document
from netplane.api.resources import RESOURCES, ResourceInfo, lookup_kind
from netplane.client.rest import APIClient, APIStatusError

LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"
SERVER_OWNED_METADATA = ("resourceVersion", "uid", "creationTimestamp", "generation", "managedFields",
                         "selfLink", "deletionTimestamp", "deletionGracePeriodSeconds")
MAX_CONFLICT_RETRIES = 5

# Lists merged element by element, keyed by these fields (strategic merge patch's patchMergeKey).
MERGE_KEYS: dict[str, tuple[str, ...]] = {
    "containers": ("name",),
    "initContainers": ("name",),
    "ephemeralContainers": ("name",),
    "env": ("name",),
    "volumes": ("name",),
    "volumeMounts": ("mountPath",),
    "volumeDevices": ("devicePath",),
    "imagePullSecrets": ("name",),
    "hostAliases": ("ip",),
    "ownerReferences": ("uid",),
    "resourceClaims": ("name",),
}


class ApplyError(Exception):
    """Applying one object failed; the message names the manifest document when known."""

    def __init__(self, message: str, done: list[str] | None = None) -> None:
        super().__init__(message)
        self.done = done or []


@dataclass(frozen=True)
class Target:
    """Which API object a manifest document addresses."""

    info: ResourceInfo
    name: str
    namespace: str | None
    obj: dict[str, Any]  # the manifest with its namespace settled


def display_ref(info: ResourceInfo, name: str) -> str:
    """kubectl's 'kind.group/name', e.g. service/web, deployment.apps/web."""
    return f"{qualified_kind(info)}/{name}"


def qualified_kind(info: ResourceInfo) -> str:
    return f"{info.kind.lower()}.{info.group}" if info.group else info.kind.lower()


def resolve_target(doc: Mapping[str, Any] | Document, default_namespace: str,
                   namespace_override: str | None = None) -> Target:
    """The resource, name and namespace of a manifest document (unknown kinds are an error)."""
    obj, where = (doc.obj, doc.where()) if isinstance(doc, Document) else (dict(doc), "")
    prefix = f"{where}: " if where else ""
    api_version = str(obj.get("apiVersion") or "")
    kind = str(obj.get("kind") or "")
    info = lookup_kind(api_version, kind)
    if info is None:
        others = [r.api_version for r in RESOURCES if r.kind == kind]
        hint = f" (known as {', '.join(others)})" if others else ""
        raise ApplyError(f'{prefix}no kind "{kind}" is registered for version "{api_version}"{hint}')
    meta = obj.get("metadata") or {}
    name = meta.get("name")
    if not name or not isinstance(name, str):
        raise ApplyError(f"{prefix}{kind}: metadata.name is required")
    obj = copy.deepcopy(obj)
    obj.setdefault("metadata", {})
    namespace: str | None = None
    if info.namespaced:
        own = meta.get("namespace")
        if own and namespace_override and own != namespace_override:
            raise ApplyError(
                f'{prefix}the namespace from the provided object "{own}" does not match the namespace '
                f'"{namespace_override}". You must pass \'--namespace={own}\' to perform this operation.'
            )
        namespace = str(own or namespace_override or default_namespace)
        obj["metadata"]["namespace"] = namespace
    else:
        # A namespace on a cluster-scoped object means nothing; keeping it would make every apply
        # look like a change.
        obj["metadata"].pop("namespace", None)
    return Target(info, name, namespace, obj)


def desired_object(manifest: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """The object to apply (with its last-applied annotation) and that annotation's value."""
    desired = copy.deepcopy(manifest)
    desired.pop("status", None)
    meta = desired.setdefault("metadata", {})
    for field in SERVER_OWNED_METADATA:
        meta.pop(field, None)
    annotations = dict(meta.get("annotations") or {})
    annotations.pop(LAST_APPLIED, None)
    # kubectl serialises the object after taking the annotation out of the map, which leaves an
    # empty "annotations": {} behind; doing the same makes the two tools' annotations identical.
    meta["annotations"] = annotations
    last_applied = json.dumps(desired, sort_keys=True, separators=(",", ":")) + "\n"
    meta["annotations"] = {**annotations, LAST_APPLIED: last_applied}
    return desired, last_applied


def _last_applied_of(live: Mapping[str, Any]) -> dict[str, Any]:
    raw = ((live.get("metadata") or {}).get("annotations") or {}).get(LAST_APPLIED)
    if not raw:
        return {}
    try:
        doc = json.loads(raw)
    except ValueError:
        return {}  # an unreadable annotation: behave as kubectl does for objects without one
    return doc if isinstance(doc, dict) else {}


def merged_object(live: dict[str, Any], desired: dict[str, Any], last_applied: str) -> dict[str, Any]:
    """The live object with the manifest applied (three-way merge; see the module docstring)."""
    original = _last_applied_of(live)
    merged = three_way_merge(original, desired, live)
    # The annotation is semantically unchanged when its JSON is: keep the live string then, so an
    # object last applied by kubectl (same content, other spelling) stays 'unchanged'.
    live_raw = ((live.get("metadata") or {}).get("annotations") or {}).get(LAST_APPLIED)
    if live_raw and original == json.loads(last_applied):
        merged["metadata"]["annotations"][LAST_APPLIED] = live_raw
    return merged


def three_way_merge(original: Any, modified: Any, current: Any, field: str = "") -> Any:
    if isinstance(modified, dict):
        if not isinstance(current, dict):
            return _without_nulls(modified)
        orig = original if isinstance(original, dict) else {}
        result = dict(current)
        for key, value in modified.items():
            if value is None:  # an explicit null in a manifest removes the field
                result.pop(key, None)
            elif key in current:
                result[key] = three_way_merge(orig.get(key), value, current[key], key)
            else:
                result[key] = _without_nulls(value)
        for key in orig:
            if key not in modified:
                result.pop(key, None)
        return result
    if isinstance(modified, list) and isinstance(current, list):
        return _merge_list(original if isinstance(original, list) else [], modified, current, field)
    return copy.deepcopy(modified)


def _merge_list(original: list[Any], modified: list[Any], current: list[Any], field: str) -> list[Any]:
    keyf = _list_key(field, modified, current)
    if keyf is None:
        if contains(current, modified):
            return current  # the same list, plus what the server filled in
        return _without_nulls(modified)
    cur_by = {keyf(e): e for e in current}
    orig_by = {keyf(e): e for e in original if isinstance(e, dict) and _has_key(e, field)}
    result = []
    seen = set()
    for elem in modified:
        k = keyf(elem)
        seen.add(k)
        if k in cur_by:
            result.append(three_way_merge(orig_by.get(k), elem, cur_by[k], field))
        else:
            result.append(_without_nulls(elem))
    for elem in current:
        k = keyf(elem)
        if k not in seen and k not in orig_by:
            result.append(elem)  # added by someone else: strategic merge keeps it
    return result


def _has_key(elem: dict[str, Any], field: str) -> bool:
    return all(f in elem for f in _key_fields(field, [elem]) or ())


def _key_fields(field: str, elems: list[Any]) -> tuple[str, ...] | None:
    if field == "ports":
        if all(isinstance(e, dict) and "containerPort" in e for e in elems):
            return ("containerPort",)
        if all(isinstance(e, dict) and "port" in e for e in elems):
            return ("port",)
        return None
    return MERGE_KEYS.get(field)


def _list_key(field: str, modified: list[Any], current: list[Any]) -> Any:
    """A function giving each element's merge key, or None when the list is merged as a whole."""
    fields = _key_fields(field, modified + current)
    if fields is None or not all(isinstance(e, dict) for e in modified + current):
        return None

    def key(elem: dict[str, Any]) -> tuple[Any, ...]:
        k = tuple(json.dumps(elem.get(f), sort_keys=True) for f in fields)
        if field == "ports":
            # port+protocol, the real identity of a port (DNS serves 53 over TCP and UDP).
            k += (elem.get("protocol") or "TCP",)
        return k

    for elems in (modified, current):
        if len({key(e) for e in elems}) != len(elems):
            return None  # duplicate keys: no safe element-wise merge
    return key


def contains(live: Any, wanted: Any) -> bool:
    """Whether ``live`` has everything ``wanted`` asks for (dicts may hold more; lists match by position)."""
    if isinstance(wanted, dict):
        if not isinstance(live, dict):
            return False
        return all((v is None and k not in live) or (k in live and contains(live[k], v))
                   for k, v in wanted.items())
    if isinstance(wanted, list):
        if not isinstance(live, list) or len(live) != len(wanted):
            return False
        return all(contains(a, b) for a, b in zip(live, wanted, strict=True))
    return bool(live == wanted and type(live) is type(wanted))


def _without_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nulls(v) for v in value]
    return value


async def apply_object(client: APIClient, doc: Mapping[str, Any] | Document, default_namespace: str,
                       namespace_override: str | None = None) -> str:
    """Create or update one object; returns kubectl's line, e.g. 'service/web configured'."""
    target = resolve_target(doc, default_namespace, namespace_override)
    where = f"{doc.where()}: " if isinstance(doc, Document) else ""
    ref = display_ref(target.info, target.name)
    desired, last_applied = desired_object(target.obj)
    try:
        for _ in range(MAX_CONFLICT_RETRIES):
            try:
                live = await client.get(target.info, target.name, target.namespace)
            except APIStatusError as e:
                if not e.not_found:
                    raise
                try:
                    await client.create(target.info, desired, target.namespace)
                    return f"{ref} created"
                except APIStatusError as ce:
                    if ce.code == 409 and ce.reason == "AlreadyExists":
                        continue  # created by someone else meanwhile: merge into theirs
                    raise
            merged = merged_object(live, desired, last_applied)
            if merged == live:
                return f"{ref} unchanged"
            try:
                await client.update(target.info, merged, target.namespace)
                return f"{ref} configured"
            except APIStatusError as ue:
                if ue.code == 409 and ue.reason != "AlreadyExists":
                    continue  # stale resourceVersion: read again and redo the merge
                raise
        raise ApplyError(f"{where}{ref}: still conflicting after {MAX_CONFLICT_RETRIES} attempts")
    except APIStatusError as e:
        raise ApplyError(f"{where}{e.message}") from e


async def apply_objects(client: APIClient, docs: Iterable[Mapping[str, Any] | Document],
                        default_namespace: str = "default") -> list[str]:
    """Apply documents in order; stops at the first failure (ApplyError.done holds the lines so far)."""
    done: list[str] = []
    for doc in docs:
        try:
            done.append(await apply_object(client, doc, default_namespace))
        except ApplyError as e:
            raise ApplyError(str(e), done) from e
    return done
