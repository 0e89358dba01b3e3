"""PATCH bodies: JSON merge patch (RFC 7386), JSON patch (RFC 6902) and strategic merge patch.

Strategic merge patch (SMP) is what kubectl sends for `apply` (client-side, a three-way diff
against the last-applied annotation), `edit`, `label`, `annotate` and `patch` by default. Its
rules, as kube-apiserver's strategicpatch package applies them:

- maps merge recursively; a null value deletes the key;
- a list whose schema says `x-kubernetes-patch-strategy: merge` merges element by element: maps
  by their `x-kubernetes-patch-merge-key` (containers by name, ports by containerPort...),
  scalars as a set union; every other list is replaced whole;
- directives: `$patch: replace|delete` in a map; `{"$patch": "replace"}` or
  `{<key>: v, "$patch": "delete"}` as list elements; `$retainKeys` (clear the keys not listed);
  `$deleteFromPrimitiveList/<field>` (remove scalars from a merged list);
  `$setElementOrder/<field>` (the final order of a merged list).

The merge keys and strategies come from the OpenAPI schemas we publish (netplane.api.openapi),
the same ones kubectl builds its patches from. Fields the schemas do not describe are treated
leniently (maps merge, lists are replaced) where kube-apiserver, decoding into Go structs,
would reject unknown fields. Directives never reach the stored object: every value taken from
a patch is cleaned of them (kube gets that for free by decoding into typed structs).

Server-side apply (application/apply-patch+yaml) is approximated: the applied configuration is
merged as a strategic merge patch. There is no field ownership (managedFields), so fields a
manager stops applying are not removed and conflicts are never reported.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import jsonpatch
import yaml

from netplane.api.errors import APIError, bad_request
from netplane.api.openapi import all_schemas, schema_name
from netplane.api.resources import ResourceInfo

MERGE_PATCH = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"
STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"
APPLY_PATCH = "application/apply-patch+yaml"
PATCH_TYPES = (MERGE_PATCH, JSON_PATCH, STRATEGIC_MERGE_PATCH, APPLY_PATCH)

DIRECTIVE = "$patch"
RETAIN_KEYS = "$retainKeys"
DELETE_FROM_PRIMITIVE_LIST = "$deleteFromPrimitiveList/"
SET_ELEMENT_ORDER = "$setElementOrder/"

_REF_PREFIX = "#/components/schemas/"


Obj = dict[str, Any]


def apply_patch(info: ResourceInfo, original: Obj, content_type: str, body: bytes) -> Obj:
    """Return the patched object (original untouched).

    APIError 400 for an undecodable or malformed patch, 422 (as kube-apiserver) when a JSON
    patch operation fails (a failed `test`, a missing path), 415 for an unsupported type.
    """
    media_type = content_type.split(";", 1)[0].strip().lower()
    if media_type == JSON_PATCH:
        return _json_patch(original, body)
    if media_type == MERGE_PATCH:
        return _merge_patch(original, _decode_object(body))
    if media_type == STRATEGIC_MERGE_PATCH:
        return strategic_merge_patch(info, original, _decode_object(body))
    if media_type == APPLY_PATCH:
        return strategic_merge_patch(info, original, _decode_object(body, allow_yaml=True))
    raise APIError(415, f"the body of the request was in an unknown format - accepted media types "
                        f"include: {', '.join(PATCH_TYPES)}", "UnsupportedMediaType")


def _decode_object(body: bytes, allow_yaml: bool = False) -> dict[str, Any]:
    try:
        value = yaml.safe_load(body) if allow_yaml else json.loads(body)
    except (ValueError, yaml.YAMLError) as e:
        raise bad_request(f"error decoding patch: {e}") from e
    if not isinstance(value, dict):
        raise bad_request(f"the patch must be a JSON object, not {type(value).__name__}")
    return value


# --------------------------------------------------------------------------- RFC 6902, RFC 7386

def _json_patch(original: dict[str, Any], body: bytes) -> dict[str, Any]:
    try:
        ops = json.loads(body)
    except ValueError as e:
        raise bad_request(f"error decoding patch: {e}") from e
    if not isinstance(ops, list) or not all(isinstance(op, dict) for op in ops):
        raise bad_request("a JSON patch must be a list of operations")
    try:
        patch = jsonpatch.JsonPatch(ops)
        result = patch.apply(original)  # copies; the original is untouched
    except jsonpatch.InvalidJsonPatch as e:
        raise bad_request(f"invalid JSON patch: {e}") from e
    except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as e:
        raise APIError(422, f"the JSON patch could not be applied: {e}", "Invalid") from e
    if not isinstance(result, dict):
        raise bad_request("the JSON patch replaced the whole object with a non-object")
    return result


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: objects merge recursively, null removes, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def _merge_patch(original: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = merge_patch(copy.deepcopy(original), patch)
    return result


# --------------------------------------------------------------------------- schema lookups

class PatchMeta:
    """A position in the published schemas: which merge key and strategy each field has."""

    __slots__ = ("_schemas", "schema")

    def __init__(self, schema: dict[str, Any] | None, schemas: dict[str, Any]) -> None:
        self._schemas = schemas
        self.schema = self._resolve(schema)

    def _resolve(self, schema: dict[str, Any] | None) -> dict[str, Any] | None:
        for _ in range(8):  # refs may chain; the bound keeps a malformed schema from looping
            if schema is None:
                return None
            if schema.get("allOf"):
                schema = schema["allOf"][0]
                continue
            target = schema.get("$ref")
            if isinstance(target, str) and target.startswith(_REF_PREFIX):
                schema = self._schemas.get(target[len(_REF_PREFIX):])
                continue
            return schema
        return schema

    def field(self, key: str) -> tuple[PatchMeta, list[str], str]:
        """The sub-schema of a field, its patch strategies and its merge key."""
        raw: dict[str, Any] | None = None
        if self.schema is not None:
            props = self.schema.get("properties")
            if isinstance(props, dict) and key in props:
                raw = props[key]
            elif isinstance(self.schema.get("additionalProperties"), dict):
                raw = self.schema["additionalProperties"]
        if raw is None:
            return PatchMeta(None, self._schemas), [], ""
        strategy = raw.get("x-kubernetes-patch-strategy", "")
        strategies = [s for s in strategy.split(",") if s] if isinstance(strategy, str) else []
        merge_key = raw.get("x-kubernetes-patch-merge-key", "")
        return PatchMeta(raw, self._schemas), strategies, merge_key if isinstance(merge_key, str) else ""

    def items(self) -> PatchMeta:
        items = self.schema.get("items") if self.schema is not None else None
        return PatchMeta(items if isinstance(items, dict) else None, self._schemas)


def patch_meta(info: ResourceInfo) -> PatchMeta:
    schemas = all_schemas()
    return PatchMeta(schemas.get(schema_name(info)), schemas)


# --------------------------------------------------------------------------- strategic merge

def strategic_merge_patch(info: ResourceInfo, original: Obj, patch: Obj) -> Obj:
    """Apply a strategic merge patch to `original` (not modified) and return the result."""
    return _merge_map(copy.deepcopy(original), patch, patch_meta(info))


def _kind(value: Any) -> str:
    if isinstance(value, dict):
        return "map"
    if isinstance(value, list):
        return "list"
    return "scalar"


def _merge_map(original: dict[str, Any], patch: dict[str, Any], meta: PatchMeta) -> dict[str, Any]:
    """Merge `patch` into `original` (a private copy, mutated and returned)."""
    directive = patch.get(DIRECTIVE)
    if directive is not None:
        if directive == "replace":
            return _merge_map({}, {k: v for k, v in patch.items() if k != DIRECTIVE}, meta)
        if directive == "delete":
            return {}
        if directive != "merge":
            raise bad_request(f"unknown patch type {directive!r} in {DIRECTIVE}")

    retain = patch.get(RETAIN_KEYS)
    if retain is not None:
        _apply_retain_keys(original, patch, retain)

    orders = {k[len(SET_ELEMENT_ORDER):]: v for k, v in patch.items() if k.startswith(SET_ELEMENT_ORDER)}
    deletions = {k[len(DELETE_FROM_PRIMITIVE_LIST):]: v for k, v in patch.items()
                 if k.startswith(DELETE_FROM_PRIMITIVE_LIST)}
    for key, value in patch.items():
        if key.startswith("$"):
            continue  # directives: handled around this loop, never stored
        if value is None:
            original.pop(key, None)
        else:
            sub, strategies, merge_key = meta.field(key)
            current: Any = original.get(key)
            if key not in original or _kind(current) != _kind(value):
                original[key] = _fresh(value, sub, strategies, merge_key, orders.get(key))
            elif isinstance(value, dict):
                original[key] = (_fresh(value, sub, strategies, merge_key) if "replace" in strategies
                                 else _merge_map(current, value, sub))
            elif isinstance(value, list):
                if "merge" in strategies:
                    original[key] = _merge_list(current, value, sub.items(), merge_key, orders.get(key))
                else:
                    original[key] = _clean_list(value, sub.items())
            else:
                original[key] = value

    for key, doomed in deletions.items():
        if not isinstance(doomed, list):
            raise bad_request(f"{DELETE_FROM_PRIMITIVE_LIST}{key} must be a list")
        if isinstance(original.get(key), list):
            original[key] = [v for v in original[key] if v not in doomed]

    for key, order in orders.items():
        if not isinstance(order, list):
            raise bad_request(f"{SET_ELEMENT_ORDER}{key} must be a list")
        current = original.get(key)
        if isinstance(current, list) and key not in patch:
            # The list itself did not change: only its order is set.
            _, _, merge_key = meta.field(key)
            original[key] = _ordered(current, order, current, merge_key)
    return original


def _apply_retain_keys(original: dict[str, Any], patch: dict[str, Any], retain: Any) -> None:
    if not isinstance(retain, list):
        raise bad_request(f"{RETAIN_KEYS} must be a list of field names")
    keep = set(retain)
    for key, value in patch.items():
        if value is None or key.startswith("$"):
            continue
        if key not in keep:
            raise bad_request(f"field {key!r} is in the patch but not in its {RETAIN_KEYS} list")
    for key in list(original):
        if key not in keep:
            del original[key]


def _fresh(value: Any, meta: PatchMeta, strategies: list[str], merge_key: str, order: Any = None) -> Any:
    """A value from the patch stored where there was none: cleaned of directives and nulls."""
    if isinstance(value, dict):
        return _merge_map({}, value, meta)
    if isinstance(value, list):
        if "merge" in strategies:
            return _merge_list([], value, meta.items(), merge_key, order)
        return _clean_list(value, meta.items())
    return value


def _clean_list(values: list[Any], item_meta: PatchMeta) -> list[Any]:
    out: list[Any] = []
    for v in values:
        if isinstance(v, dict):
            if v.get(DIRECTIVE) in ("replace", "delete") and len(v) == 1:
                continue  # a bare directive element means nothing in a replaced list
            out.append(_merge_map({}, v, item_meta))
        elif isinstance(v, list):
            out.append(_clean_list(v, PatchMeta(None, {})))
        else:
            out.append(v)
    return out


def _merge_key_of(item: Any, merge_key: str) -> Any:
    if not merge_key:
        return item
    if not isinstance(item, dict) or merge_key not in item:
        raise bad_request(f"list element {json.dumps(item)[:200]} has no merge key {merge_key!r}")
    return item[merge_key]


def _merge_list(original: list[Any], patch: list[Any], item_meta: PatchMeta, merge_key: str,
                order: Any) -> list[Any]:
    """Merge a patch list into a list with patchStrategy=merge."""
    maps = any(isinstance(v, dict) for v in patch) or any(isinstance(v, dict) for v in original)
    if not maps:
        merged = list(original)
        for v in patch:
            if v not in merged:
                merged.append(v)
        patch_items = patch
    else:
        if not merge_key:
            # kube refuses to merge maps without a key; replacing keeps the request useful.
            return _clean_list(patch, item_meta)
        replace = False
        patch_items = []
        for v in patch:
            if not isinstance(v, dict):
                raise bad_request(f"list element {json.dumps(v)[:200]} is not an object")
            directive = v.get(DIRECTIVE)
            if directive is None:
                patch_items.append(v)
            elif directive == "delete":
                doomed = _merge_key_of(v, merge_key)
                original = [o for o in original if not (isinstance(o, dict) and o.get(merge_key) == doomed)]
            elif directive == "replace":
                replace = True
            else:
                raise bad_request(f"unknown or unsupported {DIRECTIVE} {directive!r} in a list")
        if replace:
            original = []
        merged = list(original)
        for v in patch_items:
            wanted = _merge_key_of(v, merge_key)
            for i, existing in enumerate(merged):
                if isinstance(existing, dict) and existing.get(merge_key) == wanted:
                    merged[i] = _merge_map(existing, v, item_meta)
                    break
            else:
                merged.append(_merge_map({}, v, item_meta))
    order_list = order if isinstance(order, list) else patch_items
    return _ordered(merged, order_list, original, merge_key)


def _ordered(merged: list[Any], order: list[Any], server: list[Any], merge_key: str) -> list[Any]:
    """Order a merged list as kube does: items named in `order` follow it; the others keep their
    place relative to the live (`server`) list, interleaved by live position where both are known."""
    def key(v: Any) -> Any:
        return v.get(merge_key) if merge_key and isinstance(v, dict) else v

    def position(seq: list[Any], v: Any) -> int:
        k = key(v)
        for i, candidate in enumerate(seq):
            if key(candidate) == k:
                return i
        return -1

    wanted = [key(v) for v in order if not (isinstance(v, dict) and DIRECTIVE in v)]
    in_order = [v for v in merged if key(v) in wanted]
    others = [v for v in merged if key(v) not in wanted]
    in_order.sort(key=lambda v: wanted.index(key(v)))
    others.sort(key=lambda v: (position(server, v) < 0, position(server, v)))

    out: list[Any] = []
    i = j = 0
    while i < len(others) or j < len(in_order):
        if j >= len(in_order):
            out.append(others[i])
            i += 1
        elif i >= len(others):
            out.append(in_order[j])
            j += 1
        else:
            left, right = position(server, others[i]), position(server, in_order[j])
            if left >= 0 and right >= 0 and left < right:
                out.append(others[i])
                i += 1
            else:
                out.append(in_order[j])
                j += 1
    return out
