"""Name formats: the accept/reject boundaries of each check."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from netplane.api import names

Check = Callable[[str], list[str]]

CASES: list[tuple[Check, str, bool]] = [
    (names.dns1123_label, "web", True),
    (names.dns1123_label, "123-abc", True),
    (names.dns1123_label, "a" * 63, True),
    (names.dns1123_label, "a" * 64, False),
    (names.dns1123_label, "Web", False),
    (names.dns1123_label, "-web", False),
    (names.dns1123_label, "web-", False),
    (names.dns1123_label, "web.app", False),
    (names.dns1123_label, "", False),
    (names.dns1123_label, "web\n", False),  # a trailing newline must not slip past the pattern
    (names.dns1123_subdomain, "web.example.com", True),
    (names.dns1123_subdomain, "a" * 253, True),
    (names.dns1123_subdomain, "a" * 254, False),
    (names.dns1123_subdomain, "web..example", False),
    (names.dns1123_subdomain, ".web", False),
    (names.dns1123_subdomain, "web_app", False),
    (names.dns1035_label, "web1", True),
    (names.dns1035_label, "1web", False),
    (names.dns1035_label, "web.app", False),
    (names.wildcard_dns1123_subdomain, "*.example.com", True),
    (names.wildcard_dns1123_subdomain, "*example.com", False),
    (names.wildcard_dns1123_subdomain, "foo.*.example.com", False),
    (names.host_name, "*.example.com", True),
    (names.host_name, "www.*.com", False),
    (names.host_name, "example.com:80", False),
    (names.qualified_name, "app", True),
    (names.qualified_name, "app.kubernetes.io/name", True),
    (names.qualified_name, "MyKey_1.x", True),
    (names.qualified_name, "a" * 63, True),
    (names.qualified_name, "a" * 64, False),
    (names.qualified_name, "/name", False),
    (names.qualified_name, "Example.COM/name", False),
    (names.qualified_name, "a/b/c", False),
    (names.qualified_name, "example.com/", False),
    (names.qualified_name, "_app", False),
    (names.label_value, "", True),
    (names.label_value, "v1.2_x-y", True),
    (names.label_value, "a" * 64, False),
    (names.label_value, "-x", False),
    (names.label_value, "a b", False),
    (names.iana_svc_name, "http", True),
    (names.iana_svc_name, "h2c-8080", True),
    (names.iana_svc_name, "a" * 15, True),
    (names.iana_svc_name, "a" * 16, False),
    (names.iana_svc_name, "8080", False),
    (names.iana_svc_name, "a--b", False),
    (names.iana_svc_name, "-http", False),
    (names.iana_svc_name, "http-", False),
    (names.iana_svc_name, "HTTP", False),
    (names.ipv4_address, "10.96.0.1", True),
    (names.ipv4_address, "10.96.0.256", False),
    (names.ipv4_address, "010.96.0.1", False),
    (names.ipv4_address, "fd00::1", False),
    (names.ip_address, "fd00::1", True),
    (names.cidr, "10.244.0.0/24", True),
    (names.cidr, "10.244.0.1/24", True),  # host bits allowed, as kube's legacy parser does
    (names.cidr, "fd00::/64", True),
    (names.cidr, "10.244.0.0", False),
    (names.cidr, "10.244.0.0/33", False),
    (names.non_special_ip, "192.0.2.10", True),
    (names.non_special_ip, "0.0.0.0", False),
    (names.non_special_ip, "127.0.0.1", False),
    (names.non_special_ip, "169.254.1.1", False),
    (names.non_special_ip, "224.0.0.1", False),
    (names.non_special_ip, "::1", False),
]


@pytest.mark.parametrize(("check", "value", "ok"), CASES,
                         ids=[f"{c.__name__}-{v[:20]!r}-{ok}" for c, v, ok in CASES])
def test_name_check(check: Check, value: str, ok: bool) -> None:
    problems = check(value)
    assert (problems == []) == ok, problems
    assert all(isinstance(p, str) and p for p in problems)


def test_port_number_bounds() -> None:
    assert names.port_number(1) == [] and names.port_number(65535) == []
    assert names.port_number(0) and names.port_number(65536)
