"""The pure route table against the Kubernetes Ingress documentation and the merge rules."""

from __future__ import annotations

import pytest

from netplane.ingress.fixtures import ingress, path, rule
from netplane.ingress.model import IngressInvalid, parse_ingress
from netplane.ingress.routes import RouteTable, build_table, normalize_path
from tests.unit.ingress.cases import (
    DEFAULT_INGRESS,
    HOST_CATCH_ALL,
    HOST_INGRESS,
    HOST_REQUESTS,
    PATH_TABLE,
    path_table_ingresses,
    path_table_requests,
    row_host,
)


def table(*objs: dict, tls_ok: bool = True) -> RouteTable:
    return build_table([parse_ingress(o) for o in objs],
                       (lambda _s: None) if tls_ok else (lambda _s: "no such secret"))


def served(t: RouteTable, host: str, p: str) -> str | None:
    r = t.route(host, p)
    return r.backend.name if r else None


@pytest.mark.parametrize(("host", "req", "want"), path_table_requests())
def test_documented_path_table(host: str, req: str, want: str | None) -> None:
    assert served(table(*path_table_ingresses()), host, req) == want
    # "No" in the table means the default backend serves it, once there is one.
    assert served(table(*path_table_ingresses(), DEFAULT_INGRESS), host, req) == (want or "svc-default")


def test_every_row_is_exercised() -> None:
    assert len(path_table_ingresses()) == len(PATH_TABLE)
    assert {h for h, _, _ in path_table_requests()} == {row_host(i) for i in range(len(PATH_TABLE))}


@pytest.mark.parametrize(("host", "without", "with_catch_all"), HOST_REQUESTS)
def test_documented_host_rules(host: str, without: str | None, with_catch_all: str | None) -> None:
    assert served(table(HOST_INGRESS), host, "/") == without
    assert served(table(HOST_INGRESS, HOST_CATCH_ALL), host, "/x") == with_catch_all


def test_host_header_port_and_trailing_dot_are_ignored() -> None:
    t = table(HOST_INGRESS)
    assert served(t, "foo.bar.com:8080", "/") == "svc-b"
    assert served(t, "foo.bar.com.", "/") == "svc-b"


def test_virtual_hosts_are_exclusive() -> None:
    # foo.bar.com has rules, none for /only-catch-all: no fall-through to the host-less rule.
    t = table(ingress("a", rule("foo.bar.com", path("/x", "svc-a"))),
              ingress("b", rule(None, path("/only-catch-all", "svc-c"))))
    assert served(t, "foo.bar.com", "/only-catch-all") is None
    assert served(t, "other.test", "/only-catch-all") == "svc-c"


def test_no_match_without_default_backend_is_404() -> None:
    t = table(ingress("a", rule("h.test", path("/x", "svc-a"))))
    d = t.decide("h.test", "/y")
    assert d.action == "not_found" and d.backend is None
    assert t.decide("unknown.test", "/x").action == "not_found"


def test_default_backend_only_ingress_serves_everything() -> None:
    t = table(ingress("d", default=("svc-default", 80)))
    assert served(t, "anything.test", "/a/b") == "svc-default"


def test_host_default_backend_comes_from_an_ingress_with_rules_for_it() -> None:
    t = table(ingress("old", rule("a.test", path("/x", "svc-a")), default=("def-old", 80),
                      created="2024-01-01T00:00:00Z"),
              ingress("new", rule("b.test", path("/x", "svc-b")), default=("def-new", 80),
                      created="2024-01-02T00:00:00Z"))
    assert served(t, "a.test", "/nope") == "def-old"
    assert served(t, "b.test", "/nope") == "def-new"
    assert served(t, "c.test", "/nope") == "def-old"  # catch-all: the oldest default backend


def test_ingresses_for_the_same_host_are_merged() -> None:
    t = table(ingress("one", rule("m.test", path("/a", "svc-a")), namespace="ns1"),
              ingress("two", rule("m.test", path("/b", "svc-b")), namespace="ns2"))
    a, b = t.route("m.test", "/a/1"), t.route("m.test", "/b")
    assert a is not None and (a.backend.namespace, a.backend.name) == ("ns1", "svc-a")
    assert b is not None and (b.backend.namespace, b.backend.name) == ("ns2", "svc-b")
    assert not t.problems


@pytest.mark.parametrize("reverse", [False, True])
def test_conflicts_oldest_wins_whatever_the_order(reverse: bool) -> None:
    old = ingress("zzz-old", rule("c.test", path("/p", "svc-old")), created="2024-01-01T00:00:00Z")
    new = ingress("aaa-new", rule("c.test", path("/p/", "svc-new")), created="2024-06-01T00:00:00Z")
    objs = [new, old] if reverse else [old, new]
    t = table(*objs)
    assert served(t, "c.test", "/p/x") == "svc-old"
    assert [(p.ingress, p.reason) for p in t.problems] == [(("default", "aaa-new"), "PathConflict")]


def test_conflict_tie_on_creation_time_is_broken_by_namespace_then_name() -> None:
    a = ingress("b", rule("c.test", path("/p", "svc-1")), namespace="ns-a", created="2024-01-01T00:00:00Z")
    b = ingress("a", rule("c.test", path("/p", "svc-2")), namespace="ns-b", created="2024-01-01T00:00:00Z")
    assert served(table(b, a), "c.test", "/p") == "svc-1"


def test_exact_and_prefix_of_the_same_path_do_not_conflict() -> None:
    t = table(ingress("a", rule("c.test", path("/p", "svc-prefix"))),
              ingress("b", rule("c.test", path("/p", "svc-exact", kind="Exact"))))
    assert served(t, "c.test", "/p") == "svc-exact"
    assert served(t, "c.test", "/p/q") == "svc-prefix"
    assert not t.problems


def test_longest_match_across_ingresses() -> None:
    t = table(ingress("a", rule("c.test", path("/", "root"), path("/x/y/z", "deep", kind="Exact"))),
              ingress("b", rule("c.test", path("/x/y", "mid"))))
    assert served(t, "c.test", "/x/y/z") == "deep"
    assert served(t, "c.test", "/x/y/z/") == "mid"
    assert served(t, "c.test", "/x/yz") == "root"


def test_request_paths_are_normalized_like_nginx() -> None:
    assert normalize_path("/a//b/./c/../d?q=1") == "/a/b/d"
    assert normalize_path("/fo%6F/") == "/foo/"
    assert normalize_path("/..") == "/"
    t = table(ingress("a", rule("n.test", path("/foo", "svc-a", kind="Exact"))))
    assert served(t, "n.test", "/fo%6F?x=1") == "svc-a"


def test_implementation_specific_empty_path_is_root() -> None:
    t = table(ingress("a", rule("i.test", path(None, "svc-a", kind="ImplementationSpecific"))))
    assert served(t, "i.test", "/anything") == "svc-a"


# -- TLS and redirects ------------------------------------------------------------------


def tls_ingress(**kw: object) -> dict:
    return ingress("t", rule("secure.test", path("/", "svc-a")), rule("plain.test", path("/", "svc-b")),
                   tls=[(["secure.test"], "cert")], **kw)  # type: ignore[arg-type]


def test_http_to_a_tls_host_is_redirected() -> None:
    t = table(tls_ingress())
    d = t.decide("secure.test", "/x?y=1", "http", https_port=8443)
    assert (d.action, d.location) == ("redirect", "https://secure.test:8443/x?y=1")
    assert t.decide("secure.test", "/x", "http").location == "https://secure.test/x"
    assert t.decide("secure.test", "/x", "https").action == "proxy"
    assert t.decide("plain.test", "/x", "http").action == "proxy"


def test_ssl_redirect_false_turns_the_redirect_off() -> None:
    t = table(tls_ingress(annotations={"nginx.ingress.kubernetes.io/ssl-redirect": "false"}))
    assert t.decide("secure.test", "/x", "http").action == "proxy"
    assert t.decide("secure.test", "/x", "https").action == "proxy"


def test_force_ssl_redirect_applies_without_tls() -> None:
    t = table(ingress("f", rule("plain.test", path("/", "svc-b")),
                      annotations={"nginx.ingress.kubernetes.io/force-ssl-redirect": "true"}))
    assert t.decide("plain.test", "/", "http").action == "redirect"


def test_https_to_a_host_without_certificate_is_refused_or_uses_the_catch_all() -> None:
    t = table(tls_ingress())
    assert t.decide("plain.test", "/", "https").action == "tls_refused"
    t2 = table(tls_ingress(), ingress("c", rule(None, path("/", "svc-c")), tls=[([], "default-cert")]))
    d = t2.decide("plain.test", "/", "https")
    assert d.action == "proxy" and d.backend is not None and d.backend.name == "svc-c"


def test_wildcard_tls_covers_one_label() -> None:
    t = table(ingress("w", rule("a.wild.test", path("/", "svc-a")), rule("a.b.wild.test", path("/", "svc-b")),
                      tls=[(["*.wild.test"], "wild")]))
    assert t.vhosts["a.wild.test"].tls is not None
    assert t.vhosts["a.b.wild.test"].tls is None


def test_unusable_secret_is_reported_and_host_served_over_http() -> None:
    t = table(tls_ingress(), tls_ok=False)
    assert t.decide("secure.test", "/", "http").action == "proxy"
    assert [p.reason for p in t.problems] == ["TLSSecret"]


# -- parsing: what makes an Ingress rejected ------------------------------------------------


@pytest.mark.parametrize(("annotations", "fragment"), [
    ({"nginx.ingress.kubernetes.io/backend-protocol": "GRPC"}, "backend-protocol"),
    ({"nginx.ingress.kubernetes.io/ssl-redirect": "maybe"}, "ssl-redirect"),
    ({"nginx.ingress.kubernetes.io/proxy-body-size": "lots"}, "proxy-body-size"),
    ({"nginx.ingress.kubernetes.io/proxy-read-timeout": "1m"}, "proxy-read-timeout"),
])
def test_bad_annotation_values_reject_the_ingress(annotations: dict, fragment: str) -> None:
    with pytest.raises(IngressInvalid, match=fragment):
        parse_ingress(ingress("bad", rule("x.test", path("/", "svc")), annotations=annotations))


def test_resource_backends_are_rejected() -> None:
    obj = ingress("r", rule("x.test", path("/", "svc")))
    obj["spec"]["rules"][0]["http"]["paths"][0]["backend"] = {"resource": {"kind": "Bucket", "name": "b"}}
    with pytest.raises(IngressInvalid, match="resource backends"):
        parse_ingress(obj)


def test_supported_annotations_are_parsed_and_others_listed_as_ignored() -> None:
    src = parse_ingress(ingress("o", rule("x.test", path("/", "svc")), annotations={
        "nginx.ingress.kubernetes.io/backend-protocol": "https",
        "nginx.ingress.kubernetes.io/proxy-body-size": "8m",
        "nginx.ingress.kubernetes.io/proxy-read-timeout": "120",
        "nginx.ingress.kubernetes.io/rewrite-target": "/",
        "unrelated/annotation": "x",
    }))
    assert src.options.backend_https and src.options.body_size == "8m" and src.options.read_timeout == 120
    assert src.ignored_annotations == ("rewrite-target",)
