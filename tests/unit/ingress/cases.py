"""The Kubernetes Ingress documentation's matching examples, as Ingress objects and requests.

Shared by the unit tests (the pure route table must give the documented answer) and the
integration tests (nginx, configured by the controller, must give the table's answer).

Source: https://kubernetes.io/docs/concepts/services-networking/ingress/#examples (path types) and
#hostname-wildcards (hosts). Each row of the path table is one Ingress on its own host
``rowN.paths.test``; its rules point at services ``svc-a``, ``svc-b``, ``svc-c`` in order, so the
expected service names which rule matched. ``None`` means "no match": 404 on its own, and
``svc-default`` once :data:`DEFAULT_INGRESS` (an Ingress with only a ``defaultBackend``) is added.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from netplane.ingress.fixtures import ingress, path, rule

SERVICES = ("svc-a", "svc-b", "svc-c", "svc-default")
PORT = 80


@dataclass(frozen=True)
class Row:
    paths: tuple[tuple[str, str], ...]  # (kind, path)
    requests: tuple[tuple[str, str | None], ...]  # (request path, expected service or None)
    note: str


# The documentation's table, row by row.
PATH_TABLE: tuple[Row, ...] = (
    Row((("Prefix", "/"),), (("/", "svc-a"), ("/anything", "svc-a"), ("/a/b/c/", "svc-a")), "(all paths)"),
    Row((("Exact", "/foo"),), (("/foo", "svc-a"),), "Exact /foo matches /foo"),
    Row((("Exact", "/foo"),), (("/bar", None),), "Exact /foo does not match /bar"),
    Row((("Exact", "/foo"),), (("/foo/", None),), "Exact /foo does not match /foo/"),
    Row((("Exact", "/foo/"),), (("/foo", None),), "Exact /foo/ does not match /foo"),
    Row((("Prefix", "/foo"),), (("/foo", "svc-a"), ("/foo/", "svc-a")), "Prefix /foo matches /foo, /foo/"),
    Row((("Prefix", "/foo/"),), (("/foo", "svc-a"), ("/foo/", "svc-a")), "Prefix /foo/ matches /foo, /foo/"),
    Row((("Prefix", "/aaa/bb"),), (("/aaa/bbb", None),), "Prefix /aaa/bb does not match /aaa/bbb"),
    Row((("Prefix", "/aaa/bbb"),), (("/aaa/bbb", "svc-a"),), "Prefix /aaa/bbb matches /aaa/bbb"),
    Row((("Prefix", "/aaa/bbb/"),), (("/aaa/bbb", "svc-a"),), "ignores the rule's trailing slash"),
    Row((("Prefix", "/aaa/bbb"),), (("/aaa/bbb/", "svc-a"),), "matches the request's trailing slash"),
    Row((("Prefix", "/aaa/bbb"),), (("/aaa/bbb/ccc", "svc-a"),), "matches a subpath"),
    Row((("Prefix", "/aaa/bbb"),), (("/aaa/bbbxyz", None),), "does not match a string prefix"),
    Row((("Prefix", "/"), ("Prefix", "/aaa")), (("/aaa/ccc", "svc-b"),), "matches the /aaa prefix"),
    Row((("Prefix", "/"), ("Prefix", "/aaa"), ("Prefix", "/aaa/bbb")), (("/aaa/bbb", "svc-c"),),
        "matches the /aaa/bbb prefix"),
    Row((("Prefix", "/"), ("Prefix", "/aaa"), ("Prefix", "/aaa/bbb")), (("/ccc", "svc-a"),), "matches the / prefix"),
    Row((("Prefix", "/aaa"),), (("/ccc", None),), "no match: uses the default backend"),
    Row((("Prefix", "/foo"), ("Exact", "/foo")), (("/foo", "svc-b"),), "Mixed: prefers Exact"),
    # Beyond the table: the conformance suite's case sensitivity, and ImplementationSpecific as Prefix.
    Row((("Exact", "/foo"), ("Prefix", "/bar")), (("/FOO", None), ("/BAR/x", None)), "case sensitive"),
    Row((("ImplementationSpecific", "/impl"),), (("/impl/x", "svc-a"), ("/implx", None)),
        "ImplementationSpecific is Prefix"),
)


def row_host(i: int) -> str:
    return f"row{i}.paths.test"


def path_table_ingresses() -> list[dict[str, Any]]:
    out = []
    for i, row in enumerate(PATH_TABLE):
        paths = [path(p, SERVICES[j], PORT, kind) for j, (kind, p) in enumerate(row.paths)]
        out.append(ingress(f"row{i}", rule(row_host(i), *paths), created=f"2024-01-01T00:00:{i:02d}Z"))
    return out


DEFAULT_INGRESS = ingress("default-backend", default=("svc-default", PORT), created="2024-01-04T00:00:00Z")


def path_table_requests() -> list[tuple[str, str, str | None]]:
    """(host, path, documented service) for every request of the table."""
    return [(row_host(i), req, want) for i, row in enumerate(PATH_TABLE) for req, want in row.requests]


# Host rules: the documentation's wildcard table plus an exact host, and a catch-all rule.
HOST_INGRESS = ingress("hosts", rule("*.foo.com", path("/", "svc-a", PORT)),
                       rule("foo.bar.com", path("/", "svc-b", PORT)), created="2024-01-02T00:00:00Z")
HOST_CATCH_ALL = ingress("catch-all", rule(None, path("/", "svc-c", PORT)), created="2024-01-03T00:00:00Z")
# (host, documented service without the catch-all Ingress, with it)
HOST_REQUESTS: tuple[tuple[str, str | None, str | None], ...] = (
    ("bar.foo.com", "svc-a", "svc-a"),  # matches based on the shared suffix
    ("baz.bar.foo.com", None, "svc-c"),  # no match: the wildcard covers a single label
    ("foo.com", None, "svc-c"),  # no match: the wildcard covers a single label
    ("foo.bar.com", "svc-b", "svc-b"),
    ("FOO.Bar.com", "svc-b", "svc-b"),  # host names are case-insensitive
    ("subdomain.bar.com", None, "svc-c"),  # exact host foo.bar.com does not match
)
