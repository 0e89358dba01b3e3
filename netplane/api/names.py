"""Name and value formats of the Kubernetes API (k8s.io/apimachinery/pkg/util/validation).

Every check returns the list of problems with the value (empty when it is valid),
so callers can put each one into a field error, as kube-apiserver does.
"""

from __future__ import annotations

import ipaddress
import re

DNS1123_LABEL_MAX = 63
DNS1123_SUBDOMAIN_MAX = 253
QUALIFIED_NAME_MAX = 63
LABEL_VALUE_MAX = 63
IANA_SVC_NAME_MAX = 15

_LABEL = r"[a-z0-9](?:[-a-z0-9]*[a-z0-9])?"
_DNS1123_LABEL = re.compile(_LABEL)
_DNS1123_SUBDOMAIN = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")
_DNS1035_LABEL = re.compile(r"[a-z](?:[-a-z0-9]*[a-z0-9])?")
# Label keys' name part and label values: alphanumerics inside, '-', '_' and '.' allowed in the middle.
_QUALIFIED = re.compile(r"(?:[A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")
_IANA_CHARS = re.compile(r"[-a-z0-9]+")
_HAS_LETTER = re.compile(r"[a-z]")


def _too_long(value: str, limit: int) -> list[str]:
    return [f"must be no more than {limit} characters"] if len(value) > limit else []


def dns1123_label(value: str) -> list[str]:
    """RFC 1123 label: lower-case alphanumerics and '-', alphanumeric at both ends, at most 63."""
    errs = _too_long(value, DNS1123_LABEL_MAX)
    if not _DNS1123_LABEL.fullmatch(value):
        errs.append("a lowercase RFC 1123 label must contain only lower-case letters, digits and '-', "
                    "and start and end with a letter or digit (e.g. 'my-name' or '123-abc')")
    return errs


def dns1123_subdomain(value: str) -> list[str]:
    """RFC 1123 subdomain: dot-separated RFC 1123 labels, at most 253 characters."""
    errs = _too_long(value, DNS1123_SUBDOMAIN_MAX)
    if not _DNS1123_SUBDOMAIN.fullmatch(value):
        errs.append("a lowercase RFC 1123 subdomain must contain only lower-case letters, digits, '-' and '.', "
                    "and start and end with a letter or digit (e.g. 'example.com')")
    return errs


def dns1035_label(value: str) -> list[str]:
    """RFC 1035 label: like an RFC 1123 label but starting with a letter (Service names)."""
    errs = _too_long(value, DNS1123_LABEL_MAX)
    if not _DNS1035_LABEL.fullmatch(value):
        errs.append("a DNS-1035 label must contain only lower-case letters, digits and '-', "
                    "start with a letter and end with a letter or digit (e.g. 'my-name' or 'abc-123')")
    return errs


def wildcard_dns1123_subdomain(value: str) -> list[str]:
    """'*.' followed by an RFC 1123 subdomain: the wildcard is exactly the whole first label."""
    if not value.startswith("*."):
        return ["a wildcard DNS-1123 subdomain must start with '*.' followed by a valid subdomain "
                "(e.g. '*.example.com')"]
    return dns1123_subdomain(value[2:])


def host_name(value: str) -> list[str]:
    """A host name that may be a wildcard ('*.example.com'), as Ingress rules and TLS hosts accept."""
    return wildcard_dns1123_subdomain(value) if "*" in value else dns1123_subdomain(value)


def qualified_name(value: str) -> list[str]:
    """A label, annotation or finalizer key: an optional DNS subdomain prefix and '/', then a name <= 63."""
    prefix, slash, name = value.rpartition("/")
    errs: list[str] = []
    if slash:
        if not prefix:
            errs.append("prefix part must be non-empty")
        else:
            errs.extend(f"prefix part {m}" for m in dns1123_subdomain(prefix))
        if value.count("/") > 1:
            errs.append("a qualified name may contain at most one '/'")
    if not name:
        errs.append("name part must be non-empty")
        return errs
    if len(name) > QUALIFIED_NAME_MAX:
        errs.append(f"name part must be no more than {QUALIFIED_NAME_MAX} characters")
    if not _QUALIFIED.fullmatch(name):
        errs.append("name part must contain only letters, digits, '-', '_' or '.', "
                    "and start and end with a letter or digit (e.g. 'MyName', 'my.name' or '123-abc')")
    return errs


def label_value(value: str) -> list[str]:
    """A label value: empty, or at most 63 letters, digits, '-', '_' or '.', alphanumeric at both ends."""
    if value == "":
        return []
    errs = _too_long(value, LABEL_VALUE_MAX)
    if not _QUALIFIED.fullmatch(value):
        errs.append("a valid label value must be empty or contain only letters, digits, '-', '_' or '.', "
                    "and start and end with a letter or digit (e.g. 'MyValue' or 'my_value')")
    return errs


def iana_svc_name(value: str) -> list[str]:
    """An IANA service name (RFC 6335), as port names must be: <= 15, [-a-z0-9], a letter, no '--'."""
    errs = _too_long(value, IANA_SVC_NAME_MAX)
    if not _IANA_CHARS.fullmatch(value):
        errs.append("must contain only lower-case letters, digits and '-'")
    if "--" in value:
        errs.append("must not contain consecutive hyphens")
    if not _HAS_LETTER.search(value):
        errs.append("must contain at least one letter (a-z)")
    if value.startswith("-") or value.endswith("-"):
        errs.append("must not begin or end with a hyphen")
    return errs


def port_number(value: int) -> list[str]:
    return [] if 1 <= value <= 65535 else ["must be between 1 and 65535, inclusive"]


def ipv4_address(value: str) -> list[str]:
    try:
        ipaddress.IPv4Address(value)
    except ValueError:
        return ["must be a valid IPv4 address (e.g. 10.9.8.7)"]
    return []


def ip_address(value: str) -> list[str]:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return ["must be a valid IP address (e.g. 10.9.8.7 or 2001:db8::ffff)"]
    return []


def cidr(value: str) -> list[str]:
    """An IPv4 or IPv6 CIDR; host bits may be set, as kube's legacy parser accepts them."""
    if "/" not in value:
        return ["must be a valid CIDR value (e.g. 10.9.8.0/24 or 2001:db8::/64)"]
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError:
        return ["must be a valid CIDR value (e.g. 10.9.8.0/24 or 2001:db8::/64)"]
    return []


def non_special_ip(value: str) -> list[str]:
    """A usable unicast address: kube refuses unspecified, loopback and link-local ones where traffic goes."""
    try:
        ip = ipaddress.ip_address(value)
    except ValueError:
        return ["must be a valid IP address (e.g. 10.9.8.7 or 2001:db8::ffff)"]
    if ip.is_unspecified:
        return ["may not be unspecified (0.0.0.0 or ::)"]
    if ip.is_loopback:
        return ["may not be in the loopback range (127.0.0.0/8, ::1/128)"]
    if ip.is_link_local:
        return ["may not be in the link-local range (169.254.0.0/16, fe80::/10)"]
    if ip.is_multicast:
        return ["may not be a multicast address (224.0.0.0/4, ff00::/8)"]
    return []
