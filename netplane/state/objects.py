"""Small helpers over Kubernetes-shaped objects: keys, metadata, encoding."""

from __future__ import annotations

import copy
import secrets
import uuid
from datetime import UTC, datetime
from typing import Any

from netplane.api import jsonbytes
from netplane.api.errors import bad_request
from netplane.api.resources import ResourceInfo

Obj = dict[str, Any]

# kube's generateName alphabet: no vowels (no words), no look-alike characters.
_NAME_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"


def now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_rfc3339(text: str) -> datetime:
    return datetime.strptime(text.replace(".000000", ""), "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)


def new_uid() -> str:
    return str(uuid.uuid4())


def generate_name(prefix: str) -> str:
    return prefix + "".join(secrets.choice(_NAME_ALPHABET) for _ in range(5))


def key_prefix(info: ResourceInfo, namespace: str | None = None) -> str:
    base = f"/registry/{info.key}/"
    if info.namespaced and namespace:
        return f"{base}{namespace}/"
    return base


def object_key(info: ResourceInfo, namespace: str | None, name: str) -> str:
    if info.namespaced:
        return f"/registry/{info.key}/{namespace}/{name}"
    return f"/registry/{info.key}/{name}"


def encode(obj: Obj) -> bytes:
    """Stored form: the object without its resourceVersion (derived from the revision on read)."""
    meta = obj.get("metadata", {})
    if "resourceVersion" in meta:
        obj = {**obj, "metadata": {k: v for k, v in meta.items() if k != "resourceVersion"}}
    try:
        return jsonbytes.dumps(obj)
    except ValueError as e:  # e.g. a lone surrogate from a YAML body: never store what cannot be read
        raise bad_request(f"the object cannot be stored as JSON: {e}") from None


def decode(value: bytes, revision: int) -> Obj:
    obj: Obj = jsonbytes.loads(value)
    obj.setdefault("metadata", {})["resourceVersion"] = str(revision)
    return obj


def meta(obj: Obj) -> dict[str, Any]:
    m = obj.get("metadata")
    if not isinstance(m, dict):
        m = {}
        obj["metadata"] = m
    return m


def labels(obj: Obj) -> dict[str, str]:
    return obj.get("metadata", {}).get("labels") or {}


def spec_equal_ignoring(a: Obj, b: Obj, ignore: tuple[str, ...] = ("metadata", "status")) -> bool:
    # Compared in place, without building two filtered copies (this runs once per update).
    return all(a.get(k, _MISSING) == b.get(k, _MISSING) for k in a.keys() | b.keys() if k not in ignore)


_MISSING = object()


def deep_copy(obj: Obj) -> Obj:
    return copy.deepcopy(obj)
