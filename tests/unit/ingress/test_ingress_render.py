"""The nginx renderer, the planner and nginx -t error attribution (pure, no nginx needed)."""

from __future__ import annotations

import base64
import re
from pathlib import Path

from netplane.ingress.backends import Resolved, resolve, slices_by_service, upstream_name
from netplane.ingress.controller import ControllerOptions, Snapshot, culprits, plan
from netplane.ingress.fixtures import endpoint_slice, ingress, ingress_class, path, rule, service, tls_secret
from netplane.ingress.model import ServiceRef, parse_ingress
from netplane.ingress.nginx import parse_check_output
from netplane.ingress.render import RenderOptions, render, server_name
from netplane.ingress.routes import build_table
from netplane.ingress.tls import bundle_from_secret

CERT = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
KEY = b"-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----\n"
OPTS = RenderOptions(state_dir="/run/np-test", http_port=80, https_port=443)


def rendered(*objs: dict, upstreams: dict | None = None, certs: dict | None = None) -> str:
    table = build_table([parse_ingress(o) for o in objs])
    ups = upstreams if upstreams is not None else {
        r.backend: Resolved(("10.0.0.1:8080",)) for v in table.vhosts.values() for r in (*v.routes, v.fallback) if r}
    return render(table, ups, certs or {}, OPTS).text


def server_block(text: str, name: str, port: int = 80) -> str:
    """The text of the server block with this server_name listening on this port."""
    blocks = re.findall(r"\n    server \{\n(.*?)\n    \}", text, re.S)
    for b in blocks:
        if f"server_name {name};" in b and re.search(rf"listen \S*{port}\b", b):
            return b
    raise AssertionError(f"no server {name} on {port} in:\n{text}")


def test_prefix_becomes_exact_plus_element_prefix_location() -> None:
    b = server_block(rendered(ingress("a", rule("h.test", path("/foo", "svc")))), "h.test")
    assert 'location = "/foo" {' in b and 'location ^~ "/foo/" {' in b
    assert "location / {\n            return 404;" in b


def test_exact_with_trailing_slash_gets_a_location_for_the_bare_path() -> None:
    # Without "= /foo" nginx would answer /foo with a 301 to /foo/.
    b = server_block(rendered(ingress("a", rule("h.test", path("/foo/", "svc", kind="Exact")))), "h.test")
    assert re.search(r'location = "/foo" \{\n\s+return 404;', b)


def test_exact_wins_the_shared_exact_location() -> None:
    text = rendered(ingress("a", rule("h.test", path("/p", "pre"), path("/p", "ex", kind="Exact"))))
    b = server_block(text, "h.test")
    assert re.search(r'location = "/p" \{\n\s+proxy_pass http://np.default.ex.80;', b)
    assert re.search(r'location \^~ "/p/" \{\n\s+proxy_pass http://np.default.pre.80;', b)


def test_paths_are_quoted() -> None:
    text = rendered(ingress("a", rule("h.test", path('/we"ird\\ {path}', "svc", kind="Exact"))))
    assert 'location = "/we\\"ird\\\\ {path}" {' in text


def test_wildcard_host_is_a_one_label_regex() -> None:
    assert server_name("*.foo.com") == '"~^[^.]+\\\\.foo\\\\.com$"'
    assert server_name("") == "_"
    assert server_name("a.b") == "a.b"


def test_unresolved_backend_answers_503() -> None:
    table_objs = ingress("a", rule("h.test", path("/", "missing")))
    text = rendered(table_objs, upstreams={ServiceRef("default", "missing", 80): Resolved(reason="not found")})
    assert "return 503;" in text and "upstream np.default.missing" not in text


def test_https_servers_only_for_hosts_with_a_certificate() -> None:
    objs = ingress("t", rule("s.test", path("/", "svc")), rule("p.test", path("/", "svc")), tls=[(["s.test"], "c")])
    table = build_table([parse_ingress(objs)])
    text = render(table, {ServiceRef("default", "svc", 80): Resolved(("10.0.0.1:80",))},
                  {("default", "c"): "/run/np-test/certs/x.pem"}, OPTS).text
    s_https = server_block(text, "s.test", 443)
    assert 'ssl_certificate "/run/np-test/certs/x.pem";' in s_https
    assert "return 308 https://$host$request_uri;" in server_block(text, "s.test", 80)
    assert "proxy_pass" in server_block(text, "p.test", 80)
    assert "ssl_reject_handshake on;" in server_block(text, "_", 443)
    assert not re.search(r"server_name p\.test;\n\s+ssl", text)


def test_backend_protocol_https_and_timeouts() -> None:
    text = rendered(ingress("b", rule("h.test", path("/", "svc")), annotations={
        "nginx.ingress.kubernetes.io/backend-protocol": "HTTPS",
        "nginx.ingress.kubernetes.io/proxy-read-timeout": "120",
        "nginx.ingress.kubernetes.io/proxy-body-size": "8m"}))
    b = server_block(text, "h.test")
    assert "proxy_pass https://np.default.svc.80;" in b
    assert "proxy_read_timeout 120s;" in b and "client_max_body_size 8m;" in b


def test_every_path_lives_under_the_state_dir() -> None:
    text = rendered(ingress("a", rule("h.test", path("/", "svc"))))
    for line in text.splitlines():
        for p in re.findall(r"(/[\w./-]+)", line):
            if p.startswith(("/run/", "/etc", "/var")) and "proxy_pass" not in line:
                assert p.startswith("/run/np-test"), line


def test_line_owners_name_the_ingress() -> None:
    table = build_table([parse_ingress(ingress("one", rule("h.test", path("/a", "svc")))),
                         parse_ingress(ingress("two", rule("h.test", path("/b", "svc"))))])
    r = render(table, {ServiceRef("default", "svc", 80): Resolved(("10.0.0.1:80",))}, {}, OPTS)
    lines = r.text.splitlines()
    n = next(i for i, line in enumerate(lines, 1) if '"/b/"' in line)
    assert r.owners_of_line(n) == {("default", "two")}
    assert culprits(r, n, "whatever") == {("default", "two")}


# -- backends ------------------------------------------------------------------------------


def test_service_mode_uses_the_cluster_ip_and_endpoint_churn_changes_nothing() -> None:
    svc = service("web", [("http", 80, 8080)], cluster_ip="10.96.0.20")
    ref = ServiceRef("default", "web", "http")
    one = slices_by_service([endpoint_slice("web", ["10.244.1.2"], [("http", 8080)])])
    two = slices_by_service([endpoint_slice("web", ["10.244.1.3", "10.244.2.4"], [("http", 8080)])])
    services = {("default", "web"): svc}
    assert resolve(ref, services, one, "service") == resolve(ref, services, two, "service") == Resolved(
        ("10.96.0.20:80",))
    assert resolve(ref, services, two, "endpoints").servers == ("10.244.1.3:8080", "10.244.2.4:8080")


def test_endpoints_mode_skips_not_ready_and_matches_port_names() -> None:
    svc = service("web", [("http", 80, 8080), ("admin", 81, 9090)], cluster_ip="None")
    slices = slices_by_service([
        endpoint_slice("web", ["10.244.1.2"], [("http", 8080), ("admin", 9090)], name="s1"),
        endpoint_slice("web", ["10.244.1.9"], [("http", 8080)], name="s2", ready=False),
    ])
    services = {("default", "web"): svc}
    assert resolve(ServiceRef("default", "web", 81), services, slices, "service").servers == ("10.244.1.2:9090",)
    assert resolve(ServiceRef("default", "web", 80), services, slices, "endpoints").servers == ("10.244.1.2:8080",)
    assert "no TCP port 82" in resolve(ServiceRef("default", "web", 82), services, slices).reason
    assert "not found" in resolve(ServiceRef("default", "nope", 80), services, slices).reason


def test_upstream_names_are_distinct_per_service_port() -> None:
    refs = [ServiceRef("a", "b", 80), ServiceRef("a", "b", "http"), ServiceRef("a", "c", 80), ServiceRef("b", "b", 80)]
    names = {upstream_name(r) for r in refs}
    assert len(names) == 4


# -- TLS secrets -----------------------------------------------------------------------------


def test_secret_bundles() -> None:
    b = bundle_from_secret(tls_secret("s", CERT, KEY))
    assert not isinstance(b, str) and b.pem.startswith(CERT) and b.pem.endswith(KEY)
    assert bundle_from_secret(None) == "not found"
    bad = tls_secret("s", b"not a cert", KEY)
    assert bundle_from_secret(bad) == "tls.crt is not a PEM certificate"
    bad["data"]["tls.key"] = "%%%"
    assert bundle_from_secret(bad) == "tls.key is not base64"
    assert bundle_from_secret({"data": {"tls.crt": base64.b64encode(CERT).decode()}}) == "has no tls.key"


# -- the planner -----------------------------------------------------------------------------


def snap(*objs: dict) -> Snapshot:
    s = Snapshot()
    for o in objs:
        {"Ingress": s.ingresses, "IngressClass": s.ingress_classes, "Service": s.services,
         "EndpointSlice": s.slices, "Secret": s.secrets}[o["kind"]].append(o)
    return s


def test_plan_rejects_bad_ingresses_and_serves_the_rest(tmp_path: Path) -> None:
    opts = ControllerOptions(state_dir=tmp_path)
    p = plan(snap(ingress("good", rule("g.test", path("/", "svc"))),
                  ingress("bad", rule("b.test", path("/", "svc")),
                          annotations={"nginx.ingress.kubernetes.io/backend-protocol": "FCGI"}),
                  ingress("other", rule("o.test", path("/", "svc")), class_name="other")), opts)
    assert set(p.accepted) == {("default", "good")}
    assert "backend-protocol" in p.rejected[("default", "bad")]
    assert "g.test" in p.rendered.text and "b.test" not in p.rendered.text and "o.test" not in p.rendered.text


def test_plan_default_class_and_legacy_annotation(tmp_path: Path) -> None:
    opts = ControllerOptions(state_dir=tmp_path)
    unclassed = ingress("u", rule("u.test", path("/", "svc")), class_name=None)
    legacy = ingress("l", rule("l.test", path("/", "svc")), class_name="other",
                     annotations={"kubernetes.io/ingress.class": "netplane"})
    assert set(plan(snap(unclassed, legacy), opts).accepted) == {("default", "l")}
    p = plan(snap(unclassed, legacy, ingress_class("netplane", default=True)), opts)
    assert set(p.accepted) == {("default", "l"), ("default", "u")}


def test_plan_writes_certificates_named_by_content(tmp_path: Path) -> None:
    opts = ControllerOptions(state_dir=tmp_path)
    objs = [ingress("t", rule("s.test", path("/", "svc")), tls=[(["s.test"], "c")]), tls_secret("c", CERT, KEY)]
    p1 = plan(snap(*objs), opts)
    assert len(p1.certs) == 1
    name = next(iter(p1.certs))
    assert f"{tmp_path}/certs/{name}" in p1.rendered.text
    assert plan(snap(*objs), opts).rendered.text == p1.rendered.text  # stable: no reload
    objs[1] = tls_secret("c", CERT.replace(b"MIIB", b"MIIC"), KEY)
    assert plan(snap(*objs), opts).rendered.text != p1.rendered.text  # a new certificate is a change


def test_plan_in_service_mode_ignores_endpoint_churn(tmp_path: Path) -> None:
    opts = ControllerOptions(state_dir=tmp_path, upstream_mode="service")
    base = [ingress("a", rule("h.test", path("/", "web"))), service("web", [("", 80, 8080)], cluster_ip="10.96.0.9")]
    t1 = plan(snap(*base, endpoint_slice("web", ["10.244.1.2"], [("", 8080)])), opts).rendered.text
    t2 = plan(snap(*base, endpoint_slice("web", ["10.244.1.3"], [("", 8080)])), opts).rendered.text
    assert t1 == t2 and "server 10.96.0.9:80" in t1
    opts_ep = ControllerOptions(state_dir=tmp_path, upstream_mode="endpoints")
    t3 = plan(snap(*base, endpoint_slice("web", ["10.244.1.3"], [("", 8080)])), opts_ep).rendered.text
    assert "server 10.244.1.3:8080" in t3


def test_nginx_check_output_parsing() -> None:
    out = ('2024/01/01 00:00:00 [emerg] 123#123: unknown directive "x" in /s/nginx.conf.candidate:17\n'
           "nginx: configuration file /s/nginx.conf.candidate test failed\n")
    r = parse_check_output(out, "/s/nginx.conf.candidate")
    assert (r.ok, r.line, r.message) == (False, 17, 'unknown directive "x" in /s/nginx.conf.candidate:17')
    r2 = parse_check_output('[emerg] 1#1: SSL_CTX_use_PrivateKey("/s/certs/a.pem") failed (key values mismatch)',
                            "/s/nginx.conf.candidate")
    assert r2.line is None and r2.message.startswith('SSL_CTX_use_PrivateKey("/s/certs/a.pem")')
