"""Loading manifests: multi-document YAML or JSON from a file, a directory, or stdin ('-').

What kubectl's ``-f`` accepts: a file of one or more YAML documents (``---`` separated) or a JSON
object; a directory, whose ``*.yaml``, ``*.yml`` and ``*.json`` files are read in sorted order (not
recursively); ``-`` for standard input. Empty documents are skipped, and a ``kind: List`` (or any
``*List`` kind carrying ``items``) is replaced by its items.

YAML is read as Kubernetes reads it (via JSON): timestamps stay strings and mapping keys become
strings, so every document is plain JSON data. Every error names the file and, for multi-document
files, the document number (1-based), and nothing is returned when any document is bad.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import yaml

MANIFEST_SUFFIXES = (".yaml", ".yml", ".json")


class ManifestError(ValueError):
    """A manifest that cannot be used; the message names the file and document."""


@dataclass(frozen=True)
class Document:
    """One object from a manifest, with where it came from (for error messages)."""

    obj: dict[str, Any]
    source: str
    index: int  # 1-based document number within the source

    def where(self) -> str:
        return f"{self.source} (document {self.index})"


class _KubeLoader(yaml.SafeLoader):
    """SafeLoader without implicit timestamps: Kubernetes keeps '2024-01-01' as a string."""


_KubeLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def load_manifests(source: str | Path, stdin: IO[str] | None = None) -> list[Document]:
    """Every object in a file, a directory's manifest files, or stdin ('-')."""
    if str(source) == "-":
        stream = stdin if stdin is not None else sys.stdin
        return parse_manifest_text(stream.read(), "<stdin>")
    path = Path(source)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in MANIFEST_SUFFIXES)
        if not files:
            raise ManifestError(f"{path}: no *.yaml, *.yml or *.json files in this directory")
        docs: list[Document] = []
        for f in files:
            docs.extend(_load_file(f))
        return docs
    if not path.exists():
        raise ManifestError(f"{path}: no such file or directory")
    return _load_file(path)


def load_objects(source: str | Path, stdin: IO[str] | None = None) -> list[dict[str, Any]]:
    return [d.obj for d in load_manifests(source, stdin)]


def _load_file(path: Path) -> list[Document]:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ManifestError(f"{path}: not UTF-8 text") from e
    except OSError as e:
        raise ManifestError(f"{path}: {e.strerror or e}") from e
    if path.suffix.lower() == ".json":
        return _parse_json(text, str(path))
    return parse_manifest_text(text, str(path))


def _parse_json(text: str, source: str) -> list[Document]:
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise ManifestError(f"{source}: invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}") from e
    return _documents([doc], source)


def parse_manifest_text(text: str, source: str) -> list[Document]:
    """Documents from YAML text (JSON is YAML too); ``source`` names it in errors."""
    raw: list[Any] = []
    try:
        for doc in yaml.load_all(text, Loader=_KubeLoader):
            raw.append(doc)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        problem = getattr(e, "problem", None) or str(e)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise ManifestError(f"{source} (document {len(raw) + 1}): invalid YAML{at}: {problem}") from e
    return _documents(raw, source)


def _documents(raw: list[Any], source: str) -> list[Document]:
    out: list[Document] = []
    for index, doc in enumerate(raw, start=1):
        if doc is None:
            continue
        where = f"{source} (document {index})" if len(raw) > 1 else source
        obj = _jsonable(doc, where, "")
        if not isinstance(obj, dict):
            raise ManifestError(f"{where}: expected an object (a mapping), got {_type_name(obj)}")
        kind = obj.get("kind")
        if isinstance(kind, str) and kind.endswith("List") and "items" in obj:
            items = obj["items"] if obj["items"] is not None else []
            if not isinstance(items, list):
                raise ManifestError(f"{where}: {kind}.items must be a list")
            for n, item in enumerate(items):
                if not isinstance(item, dict):
                    raise ManifestError(f"{where}: items[{n}]: expected an object, got {_type_name(item)}")
                _check_object(item, f"{where}: items[{n}]")
                out.append(Document(item, source, index))
            continue
        _check_object(obj, where)
        out.append(Document(obj, source, index))
    return out


def _check_object(obj: dict[str, Any], where: str) -> None:
    for field in ("apiVersion", "kind"):
        value = obj.get(field)
        if not value:
            raise ManifestError(f"{where}: {field} is missing")
        if not isinstance(value, str):
            raise ManifestError(f"{where}: {field} must be a string")
    meta = obj.get("metadata")
    if meta is not None and not isinstance(meta, dict):
        raise ManifestError(f"{where}: metadata must be a mapping")


def _jsonable(value: Any, where: str, path: str) -> Any:
    """Turn YAML data into JSON data: string keys; anything JSON cannot hold is an error."""
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            if isinstance(k, bool):
                key = "true" if k else "false"
            elif isinstance(k, str | int | float):
                key = str(k)
            elif k is None:
                key = "null"
            else:
                raise ManifestError(f"{where}: {path or '<root>'}: a mapping key of type {_type_name(k)}")
            out[key] = _jsonable(v, where, f"{path}.{key}" if path else key)
        return out
    if isinstance(value, list):
        return [_jsonable(v, where, f"{path}[{i}]") for i, v in enumerate(value)]
    if value is None or isinstance(value, str | int | float | bool):
        return value
    raise ManifestError(f"{where}: {path or '<root>'}: a value of type {_type_name(value)} has no JSON form")


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    return {str: "a string", int: "a number", float: "a number", bool: "a boolean", list: "a list",
            dict: "a mapping"}.get(type(value), type(value).__name__)
