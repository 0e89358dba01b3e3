"""Manifest loading: files, directories, stdin, Lists, and errors that name the file and document."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from netplane.api.manifests import Document, ManifestError, load_manifests, load_objects

SVC = """\
apiVersion: v1
kind: Service
metadata:
  name: web
spec:
  ports:
  - port: 80
"""
CM = """\
apiVersion: v1
kind: ConfigMap
metadata:
  name: settings
data:
  when: 2024-01-01
  enabled: "true"
"""


def test_multi_document_yaml_skips_empty_documents(tmp_path: Path) -> None:
    f = tmp_path / "app.yaml"
    f.write_text("---\n" + SVC + "---\n# only a comment\n---\n" + CM)
    docs = load_manifests(f)
    assert [(d.obj["kind"], d.index) for d in docs] == [("Service", 1), ("ConfigMap", 3)]
    assert docs[1].where() == f"{f} (document 3)"


def test_timestamps_stay_strings_like_kubernetes_reads_them(tmp_path: Path) -> None:
    f = tmp_path / "cm.yaml"
    f.write_text(CM)
    (obj,) = load_objects(f)
    assert obj["data"] == {"when": "2024-01-01", "enabled": "true"}
    json.dumps(obj)  # plain JSON data


def test_integer_keys_become_strings(tmp_path: Path) -> None:
    f = tmp_path / "cm.yaml"
    f.write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\ndata:\n  80: http\n")
    assert load_objects(f)[0]["data"] == {"80": "http"}


def test_directory_reads_manifest_files_in_sorted_order(tmp_path: Path) -> None:
    (tmp_path / "b.yml").write_text(CM)
    (tmp_path / "a.yaml").write_text(SVC)
    (tmp_path / "c.json").write_text(json.dumps({"apiVersion": "v1", "kind": "Namespace",
                                                 "metadata": {"name": "shop"}}))
    (tmp_path / "notes.txt").write_text("not a manifest")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "z.yaml").write_text(SVC)  # not recursive, like kubectl without -R
    docs = load_manifests(tmp_path)
    assert [(Path(d.source).name, d.obj["kind"]) for d in docs] == [
        ("a.yaml", "Service"), ("b.yml", "ConfigMap"), ("c.json", "Namespace")]


def test_stdin() -> None:
    docs = load_manifests("-", io.StringIO(SVC + "---\n" + CM))
    assert [d.obj["metadata"]["name"] for d in docs] == ["web", "settings"]
    assert docs[0].source == "<stdin>"


def test_kind_list_is_replaced_by_its_items(tmp_path: Path) -> None:
    f = tmp_path / "list.json"
    f.write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "a"}},
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "b"}},
    ]}))
    assert [o["metadata"]["name"] for o in load_objects(f)] == ["a", "b"]
    typed = tmp_path / "svclist.yaml"
    typed.write_text("apiVersion: v1\nkind: ServiceList\nitems:\n- " + SVC.replace("\n", "\n  ").rstrip() + "\n")
    assert [o["kind"] for o in load_objects(typed)] == ["Service"]


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("bad.yaml", SVC + "---\nkind: [unclosed\n",
         r"bad.yaml \(document 2\): invalid YAML at line 10, column 1: expected .,. or .\]."),
        ("scalar.yaml", SVC + "---\njust text\n", r"scalar.yaml \(document 2\): expected an object \(a mapping\), "
                                                 r"got a string"),
        ("nokind.yaml", "apiVersion: v1\nmetadata: {name: x}\n", r"nokind.yaml: kind is missing"),
        ("noversion.yaml", SVC + "---\nkind: Service\n", r"noversion.yaml \(document 2\): apiVersion is missing"),
        ("badmeta.yaml", "apiVersion: v1\nkind: Service\nmetadata: [a]\n", "metadata must be a mapping"),
        ("bad.json", '{"apiVersion": "v1",\n "kind": }', r"bad.json: invalid JSON at line 2, column 10"),
        ("listitems.yaml", "apiVersion: v1\nkind: List\nitems:\n- 3\n",
         r"listitems.yaml: items\[0\]: expected an object, got a number"),
        ("listitem.yaml", "apiVersion: v1\nkind: List\nitems:\n- {kind: Service}\n",
         r"listitem.yaml: items\[0\]: apiVersion is missing"),
    ],
)
def test_errors_name_file_and_document(tmp_path: Path, name: str, text: str, message: str) -> None:
    f = tmp_path / name
    f.write_text(text)
    with pytest.raises(ManifestError, match=message):
        load_manifests(f)


def test_missing_path_and_empty_directory(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match=r"nothere.yaml: no such file or directory"):
        load_manifests(tmp_path / "nothere.yaml")
    with pytest.raises(ManifestError, match=r"no \*.yaml, \*.yml or \*.json files in this directory"):
        load_manifests(tmp_path)


def test_not_utf8(tmp_path: Path) -> None:
    f = tmp_path / "latin1.yaml"
    f.write_bytes(b"kind: Caf\xe9\n")
    with pytest.raises(ManifestError, match=r"latin1\.yaml: not UTF-8 text"):
        load_manifests(f)


def test_document_is_a_plain_value() -> None:
    d = Document({"kind": "Service"}, "x.yaml", 3)
    assert d.where() == "x.yaml (document 3)"
