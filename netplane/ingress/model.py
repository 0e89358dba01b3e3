"""Ingress objects as the controller sees them: class selection, parsing, annotations (pure).

An Ingress is parsed once into an :class:`IngressSource`; anything the controller cannot honour
makes the whole Ingress *rejected* (it contributes no route, and an Event names the reason) so a
half-understood Ingress never serves half its intent. Things that are merely absent at the moment
(a Service, its endpoints, a TLS Secret) are not rejections: they can appear later, and the route
answers 503 (or serves without that certificate) meanwhile, as ingress-nginx does.

Annotations (``nginx.ingress.kubernetes.io/`` prefix, the names users already write for
ingress-nginx); supported ones are validated, a bad value rejects the Ingress:

==================================  =============================================================
``ssl-redirect``                     "true" (default) / "false": HTTP -> HTTPS (308) for TLS hosts
``force-ssl-redirect``               "true": redirect to HTTPS even for hosts without TLS here
``backend-protocol``                 "HTTP" (default) or "HTTPS" (others are rejected)
``proxy-body-size``                  nginx size ("8m", "0" = unlimited) -> client_max_body_size
``proxy-connect-timeout``            seconds -> proxy_connect_timeout
``proxy-read-timeout``               seconds -> proxy_read_timeout
``proxy-send-timeout``               seconds -> proxy_send_timeout
==================================  =============================================================

Every other annotation (``rewrite-target``, ``use-regex``, auth, rate limits, canary, snippets ...)
is ignored; :data:`IGNORED_ANNOTATIONS` lists the common ones so the controller can say so in its
log. Snippet annotations are ignored on purpose: they would let any Ingress author inject nginx
configuration.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

Obj = dict[str, Any]
IngressKey = tuple[str, str]  # (namespace, name)

PREFIX = "nginx.ingress.kubernetes.io/"
LEGACY_CLASS_ANNOTATION = "kubernetes.io/ingress.class"
DEFAULT_CLASS_ANNOTATION = "ingressclass.kubernetes.io/is-default-class"
DEFAULT_CONTROLLER = "netplane.io/ingress-nginx"

SUPPORTED_ANNOTATIONS = ("ssl-redirect", "force-ssl-redirect", "backend-protocol", "proxy-body-size",
                         "proxy-connect-timeout", "proxy-read-timeout", "proxy-send-timeout")
IGNORED_ANNOTATIONS = ("rewrite-target", "use-regex", "app-root", "auth-type", "auth-url", "auth-secret",
                       "limit-rps", "limit-connections", "canary", "configuration-snippet", "server-snippet",
                       "enable-cors", "whitelist-source-range", "affinity", "upstream-hash-by")

_SIZE = re.compile(r"^\d+[kKmMgG]?$")
_SECONDS = re.compile(r"^\d{1,5}$")


class IngressInvalid(ValueError):
    """The Ingress cannot be honoured; the message says why (it becomes the Event's message)."""


@dataclass(frozen=True, slots=True, order=True)
class ServiceRef:
    """An Ingress backend: a Service port in the Ingress's namespace (port by number or by name)."""

    namespace: str
    name: str
    port: int | str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}:{self.port}"


@dataclass(frozen=True, slots=True)
class RouteOptions:
    """Per-path behaviour taken from the owning Ingress's annotations."""

    ssl_redirect: bool = True
    force_ssl_redirect: bool = False
    backend_https: bool = False
    body_size: str | None = None
    connect_timeout: int | None = None
    read_timeout: int | None = None
    send_timeout: int | None = None


@dataclass(frozen=True, slots=True)
class PathSpec:
    path: str  # as written (percent-decoded); "" for an ImplementationSpecific path left empty
    exact: bool  # Exact; Prefix and ImplementationSpecific are matched as Prefix
    backend: ServiceRef


@dataclass(frozen=True, slots=True)
class RuleSpec:
    host: str  # "" = every host; "*.foo.com" = a one-label wildcard; lower case
    paths: tuple[PathSpec, ...]


@dataclass(frozen=True, slots=True)
class TLSSpec:
    hosts: tuple[str, ...]  # empty = the catch-all server (hosts without a rule of their own)
    secret: tuple[str, str] | None  # (namespace, name); None: no secretName given


@dataclass(frozen=True, slots=True)
class IngressSource:
    """One accepted Ingress, ready for the route table."""

    key: IngressKey
    created: str  # creationTimestamp (RFC 3339 sorts as text); "" sorts first
    default_backend: ServiceRef | None
    rules: tuple[RuleSpec, ...]
    tls: tuple[TLSSpec, ...]
    options: RouteOptions = field(default_factory=RouteOptions)
    ignored_annotations: tuple[str, ...] = ()

    @property
    def age_key(self) -> tuple[str, str, str]:
        """Oldest first; ties broken by namespace/name so the order never depends on arrival."""
        return (self.created, self.key[0], self.key[1])


# -- class selection ----------------------------------------------------------------


def default_classes(ingress_classes: Iterable[Obj]) -> set[str]:
    """Names of IngressClasses marked as the cluster default."""
    out = set()
    for ic in ingress_classes:
        meta = ic.get("metadata") or {}
        if str((meta.get("annotations") or {}).get(DEFAULT_CLASS_ANNOTATION, "")).lower() == "true":
            out.add(str(meta.get("name") or ""))
    return out


def is_ours(ingress: Obj, class_name: str, defaults: set[str]) -> bool:
    """Whether this controller (serving IngressClass ``class_name``) handles the Ingress.

    As ingress-nginx: the legacy ``kubernetes.io/ingress.class`` annotation, when present, decides;
    else ``spec.ingressClassName``; an Ingress naming no class is ours only when our class is the
    cluster's default IngressClass (kube-apiserver's admission would have filled the name in; the
    slim state server has no admission, so the controller applies the default itself).
    """
    annotations = (ingress.get("metadata") or {}).get("annotations") or {}
    legacy = annotations.get(LEGACY_CLASS_ANNOTATION)
    if legacy is not None:
        return str(legacy) == class_name
    cls = (ingress.get("spec") or {}).get("ingressClassName")
    if cls:
        return str(cls) == class_name
    return class_name in defaults


# -- parsing --------------------------------------------------------------------------


def _bool(value: str, name: str) -> bool:
    v = value.strip().lower()
    if v in ("true", "false"):
        return v == "true"
    raise IngressInvalid(f"annotation {PREFIX}{name}: {value!r} is not true or false")


def _seconds(value: str, name: str) -> int:
    if not _SECONDS.match(value.strip()):
        raise IngressInvalid(f"annotation {PREFIX}{name}: {value!r} is not a number of seconds")
    return int(value)


def parse_options(annotations: Mapping[str, str]) -> tuple[RouteOptions, tuple[str, ...]]:
    """RouteOptions from the annotations, and the names of ingress-nginx annotations that are ignored."""
    values = {k[len(PREFIX):]: str(v) for k, v in annotations.items() if k.startswith(PREFIX)}
    opts: dict[str, Any] = {}
    if "ssl-redirect" in values:
        opts["ssl_redirect"] = _bool(values["ssl-redirect"], "ssl-redirect")
    if "force-ssl-redirect" in values:
        opts["force_ssl_redirect"] = _bool(values["force-ssl-redirect"], "force-ssl-redirect")
    if "backend-protocol" in values:
        proto = values["backend-protocol"].strip().upper()
        if proto not in ("HTTP", "HTTPS"):
            raise IngressInvalid(f"annotation {PREFIX}backend-protocol: {values['backend-protocol']!r} is not "
                                 "supported (HTTP or HTTPS)")
        opts["backend_https"] = proto == "HTTPS"
    if "proxy-body-size" in values:
        size = values["proxy-body-size"].strip()
        if not _SIZE.match(size):
            raise IngressInvalid(f"annotation {PREFIX}proxy-body-size: {size!r} is not a size such as 8m")
        opts["body_size"] = size
    for name, attr in (("proxy-connect-timeout", "connect_timeout"), ("proxy-read-timeout", "read_timeout"),
                       ("proxy-send-timeout", "send_timeout")):
        if name in values:
            opts[attr] = _seconds(values[name], name)
    ignored = tuple(sorted(k for k in values if k not in SUPPORTED_ANNOTATIONS))
    return RouteOptions(**opts), ignored


def _backend(raw: Any, namespace: str, where: str) -> ServiceRef:
    if not isinstance(raw, dict):
        raise IngressInvalid(f"{where}: a backend is required")
    if raw.get("resource") is not None:
        raise IngressInvalid(f"{where}: resource backends are not supported (only service backends)")
    svc = raw.get("service")
    if not isinstance(svc, dict) or not svc.get("name"):
        raise IngressInvalid(f"{where}.service.name is required")
    port = svc.get("port") or {}
    number, pname = port.get("number"), port.get("name")
    if number and pname:
        raise IngressInvalid(f"{where}.service.port: cannot set both name and number")
    if isinstance(number, int) and not isinstance(number, bool) and 0 < number < 65536:
        return ServiceRef(namespace, str(svc["name"]), number)
    if isinstance(pname, str) and pname:
        return ServiceRef(namespace, str(svc["name"]), pname)
    raise IngressInvalid(f"{where}.service.port: a port name or a number in 1-65535 is required")


_HOST = re.compile(r"^(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def _host(raw: Any, where: str) -> str:
    host = str(raw or "").strip().lower()
    if host and not _HOST.match(host):
        raise IngressInvalid(f"{where}: {raw!r} is not a host name or a '*.' wildcard")
    return host


def _path(raw: Obj, namespace: str, where: str) -> PathSpec:
    ptype = raw.get("pathType")
    value = raw.get("path")
    value = "" if value is None else str(value)
    if ptype not in ("Exact", "Prefix", "ImplementationSpecific"):
        raise IngressInvalid(f"{where}.pathType: {ptype!r} is not Exact, Prefix or ImplementationSpecific")
    if value and not value.startswith("/"):
        raise IngressInvalid(f"{where}.path: {value!r} must be an absolute path")
    if ptype != "ImplementationSpecific" and not value:
        raise IngressInvalid(f"{where}.path: required for pathType {ptype}")
    # Characters nginx cannot take in a location even quoted, or that no request URI can carry.
    if any(c in value for c in "\x00\r\n") or any(ord(c) < 0x20 for c in value):
        raise IngressInvalid(f"{where}.path: {value!r} contains control characters")
    # nginx matches locations against the decoded URI, so the rule is decoded the same way.
    return PathSpec(unquote(value), ptype == "Exact", _backend(raw.get("backend"), namespace, f"{where}.backend"))


def parse_ingress(obj: Obj) -> IngressSource:
    """The Ingress as routes, or IngressInvalid naming the first thing that cannot be honoured."""
    meta = obj.get("metadata") or {}
    namespace = str(meta.get("namespace") or "default")
    name = str(meta.get("name") or "")
    spec = obj.get("spec") or {}
    options, ignored = parse_options(meta.get("annotations") or {})
    default = None
    if spec.get("defaultBackend") is not None:
        default = _backend(spec["defaultBackend"], namespace, "spec.defaultBackend")
    rules = []
    for i, rule in enumerate(spec.get("rules") or []):
        where = f"spec.rules[{i}]"
        host = _host(rule.get("host"), f"{where}.host")
        http = rule.get("http") or {}
        paths = tuple(_path(p, namespace, f"{where}.http.paths[{j}]") for j, p in enumerate(http.get("paths") or []))
        rules.append(RuleSpec(host, paths))
    tls = []
    for i, entry in enumerate(spec.get("tls") or []):
        hosts = tuple(_host(h, f"spec.tls[{i}].hosts") for h in entry.get("hosts") or [])
        secret = entry.get("secretName")
        tls.append(TLSSpec(hosts, (namespace, str(secret)) if secret else None))
    if default is None and not rules:
        raise IngressInvalid("spec: either defaultBackend or rules must be specified")
    return IngressSource((namespace, name), str(meta.get("creationTimestamp") or ""), default, tuple(rules),
                         tuple(tls), options, ignored)
