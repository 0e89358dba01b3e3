"""The route table: (host, path) -> backend with the Kubernetes Ingress v1 semantics (pure).

Rules, as https://kubernetes.io/docs/concepts/services-networking/ingress/ states them:

* Paths. ``Exact`` matches the URL path case-sensitively and exactly. ``Prefix`` matches element by
  element on ``/``: ``/foo`` matches ``/foo``, ``/foo/`` and ``/foo/bar`` but not ``/foobar``; a
  trailing slash in the rule is ignored (``/foo/`` is ``/foo``) and ``/`` matches everything.
  ``ImplementationSpecific`` is matched as ``Prefix`` here (an empty one as ``/``).
* Several matching paths: the longest wins; on a tie ``Exact`` beats ``Prefix``.
* Hosts. An exact host matches the Host header (lower-cased, port and a trailing dot removed); a
  wildcard ``*.foo.com`` matches exactly one more label (``bar.foo.com``, not ``baz.bar.foo.com``
  nor ``foo.com``); a rule without a host applies to every host.
* Nothing matches: the ``defaultBackend``, else 404.

Choices where the specification is silent (the same as ingress-nginx, whose nginx ``server``
blocks give these semantics; documented in the README):

* **Virtual hosts are exclusive.** A request is first given to one virtual host: the exact host if
  any Ingress has a rule for it, else the one-label wildcard that covers it, else the catch-all of
  rules without a host. Paths are then matched within that virtual host only: a request for
  ``foo.com/x`` where ``foo.com`` has rules but none for ``/x`` does not fall through to a
  host-less rule for ``/x``; it goes to the default backend.
* **Merging.** Rules of every Ingress for the same host (across namespaces) are merged into one
  virtual host. Two paths with the same normalised path and the same kind conflict; the oldest
  Ingress wins (``creationTimestamp``, then namespace, then name), within one Ingress the first
  listed wins. The loser is reported (an Event on the losing Ingress).
* **Default backend.** A virtual host's unmatched requests go to the ``defaultBackend`` of the
  oldest Ingress that has rules for that host and a default backend; failing that, to the oldest
  ``defaultBackend`` of all; failing that, 404.
* **TLS.** A virtual host serves HTTPS with the certificate of a ``spec.tls`` entry covering its
  host (an exact TLS host before a wildcard one, then the oldest Ingress); a TLS entry without
  hosts applies to the catch-all. Only usable Secrets count (the caller says which).
  Plain HTTP to a TLS host is redirected (308) to HTTPS unless the path's Ingress says
  ``ssl-redirect: "false"``; HTTPS to a host without a certificate is handed to the catch-all's
  certificate when it has one and otherwise refused during the handshake.
* **URLs** are matched after nginx's normalisation: query removed, percent-decoded, ``//`` merged,
  ``.``/``..`` segments resolved (:func:`normalize_path`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import unquote

from netplane.ingress.model import IngressKey, IngressSource, RouteOptions, ServiceRef

CATCH_ALL = ""


@dataclass(frozen=True, slots=True)
class Route:
    path: str  # Exact: as written; Prefix: without trailing slashes ("" = every path)
    exact: bool
    backend: ServiceRef
    source: IngressKey
    options: RouteOptions = field(default_factory=RouteOptions)

    def matches(self, path: str) -> bool:
        if self.exact:
            return path == self.path
        return path == self.path or path.startswith(self.path + "/") or not self.path

    @property
    def kind(self) -> str:
        return "Exact" if self.exact else "Prefix"

    def describe(self) -> str:
        return f"{self.kind} {self.path or '/'}"


@dataclass(frozen=True, slots=True)
class TLSBinding:
    secret: tuple[str, str]  # (namespace, name)
    source: IngressKey
    ssl_redirect: bool  # the owning Ingress's ssl-redirect (for requests that match no path)


@dataclass(frozen=True, slots=True)
class VirtualHost:
    host: str  # "" = catch-all; "*.foo.com" = one-label wildcard
    routes: tuple[Route, ...]  # in match order: longest path first, Exact before Prefix on a tie
    fallback: Route | None  # the default backend (path "" Prefix), or None: 404
    tls: TLSBinding | None

    def route_for(self, path: str) -> Route | None:
        for r in self.routes:
            if r.matches(path):
                return r
        return self.fallback

    def redirects(self, route: Route | None) -> bool:
        """Whether plain HTTP for this route is redirected to HTTPS."""
        if route is not None and route.options.force_ssl_redirect:
            return True
        if self.tls is None:
            return False
        if route is None or route is self.fallback:
            return self.tls.ssl_redirect
        return route.options.ssl_redirect

    @property
    def sources(self) -> set[IngressKey]:
        return {r.source for r in self.routes}


@dataclass(frozen=True, slots=True)
class Problem:
    """Something to report on an Ingress that is served anyway (a lost conflict, an unusable cert)."""

    ingress: IngressKey
    reason: str  # Event reason: "PathConflict", "TLSSecret"
    message: str


Action = Literal["proxy", "redirect", "not_found", "tls_refused"]


@dataclass(frozen=True, slots=True)
class Decision:
    action: Action
    route: Route | None = None
    vhost: str | None = None
    location: str | None = None  # the redirect target

    @property
    def backend(self) -> ServiceRef | None:
        return self.route.backend if self.route is not None and self.action == "proxy" else None


def normalize_host(host: str) -> str:
    h = host.strip().lower()
    if h.startswith("["):  # an IPv6 literal keeps its colons
        return h.split("]")[0] + "]"
    h = h.rsplit(":", 1)[0] if ":" in h else h
    return h.rstrip(".")


def normalize_path(raw: str) -> str:
    """A request target as nginx matches it against locations ($uri)."""
    path = raw.split("?", 1)[0].split("#", 1)[0]
    path = unquote(path)
    out: list[str] = []
    for seg in path.split("/")[1:]:
        if seg in ("", "."):
            continue
        if seg == "..":
            if out:
                out.pop()
            continue
        out.append(seg)
    trailing = path.endswith("/") or path.endswith("/.") or path.endswith("/..")
    result = "/" + "/".join(out)
    if trailing and out:
        result += "/"
    return result


def wildcard_covers(pattern: str, host: str) -> bool:
    """``*.foo.com`` covers ``bar.foo.com`` (one label) only."""
    if not pattern.startswith("*."):
        return False
    label, dot, rest = host.partition(".")
    return bool(label) and bool(dot) and label != "*" and rest == pattern[2:]


def _match_order(r: Route) -> tuple[int, bool]:
    return (-len(r.path), not r.exact)


@dataclass(frozen=True)
class RouteTable:
    vhosts: dict[str, VirtualHost]
    problems: tuple[Problem, ...] = ()

    def vhost_for(self, host: str) -> VirtualHost:
        h = normalize_host(host)
        if h in self.vhosts and not h.startswith("*"):
            return self.vhosts[h]
        label, dot, rest = h.partition(".")
        if dot and label:
            wild = self.vhosts.get("*." + rest)
            if wild is not None:
                return wild
        return self.vhosts[CATCH_ALL]

    def route(self, host: str, path: str) -> Route | None:
        """The Route serving (host, path), the default backend's included; None means 404."""
        return self.vhost_for(host).route_for(normalize_path(path))

    def decide(self, host: str, path: str, scheme: str = "http", https_port: int = 443) -> Decision:
        """What the rendered nginx does with a request: proxy, redirect to HTTPS, 404, or refuse TLS."""
        vhost = self.vhost_for(host)
        if scheme == "https" and vhost.tls is None:
            # nginx lets only servers with a certificate listen on the HTTPS port: the request lands
            # on the catch-all's HTTPS server, or the handshake is refused.
            vhost = self.vhosts[CATCH_ALL]
            if vhost.tls is None:
                return Decision("tls_refused", vhost=None)
        route = vhost.route_for(normalize_path(path))
        if scheme == "http" and vhost.redirects(route):
            port = "" if https_port == 443 else f":{https_port}"
            return Decision("redirect", route, vhost.host, f"https://{normalize_host(host)}{port}{path}")
        if route is None:
            return Decision("not_found", None, vhost.host)
        return Decision("proxy", route, vhost.host)


def _normalized(path: str, exact: bool) -> str:
    if exact:
        return path
    return path.rstrip("/")


def build_table(sources: Iterable[IngressSource],
                tls_usable: Callable[[tuple[str, str]], str | None] = lambda _s: None) -> RouteTable:
    """Merge accepted Ingresses into virtual hosts.

    ``tls_usable(secret)`` returns None when the Secret holds a usable certificate, else the reason
    it does not (reported on the Ingress, whose hosts are then served without that certificate).
    """
    ordered = sorted(sources, key=lambda s: s.age_key)
    problems: list[Problem] = []
    # host -> {(path, exact): Route}, in the order routes were accepted
    hosts: dict[str, dict[tuple[str, bool], Route]] = {CATCH_ALL: {}}
    fallbacks: dict[str, Route] = {}
    global_default: Route | None = None
    for src in ordered:
        if src.default_backend is not None and global_default is None:
            global_default = Route("", False, src.default_backend, src.key, src.options)
        for rule in src.rules:
            table = hosts.setdefault(rule.host, {})
            if src.default_backend is not None and rule.host not in fallbacks:
                fallbacks[rule.host] = Route("", False, src.default_backend, src.key, src.options)
            for p in rule.paths:
                route = Route(_normalized(p.path, p.exact), p.exact, p.backend, src.key, src.options)
                key = (route.path, route.exact)
                held = table.get(key)
                if held is None:
                    table[key] = route
                elif held.source != src.key:
                    problems.append(Problem(src.key, "PathConflict",
                                            f"host {rule.host or '*'} path {route.describe()} is already served by "
                                            f"Ingress {held.source[0]}/{held.source[1]} (older): this path is ignored"))
                elif held.backend != route.backend:
                    problems.append(Problem(src.key, "PathConflict",
                                            f"host {rule.host or '*'} path {route.describe()} is listed twice: "
                                            f"the first ({held.backend}) is used"))
    tls = _bind_tls(ordered, list(hosts), tls_usable, problems)
    vhosts = {}
    for host, table in hosts.items():
        routes = tuple(sorted(table.values(), key=_match_order))
        vhosts[host] = VirtualHost(host, routes, fallbacks.get(host, global_default), tls.get(host))
    return RouteTable(vhosts, tuple(problems))


def _bind_tls(ordered: list[IngressSource], hosts: list[str],
              tls_usable: Callable[[tuple[str, str]], str | None], problems: list[Problem]) -> dict[str, TLSBinding]:
    # Each usable TLS entry, in age order, as (pattern hosts, binding).
    entries: list[tuple[tuple[str, ...], TLSBinding]] = []
    for src in ordered:
        for t in src.tls:
            if t.secret is None:
                continue  # a TLS entry without a secret names hosts for another mechanism; nothing to serve
            reason = tls_usable(t.secret)
            if reason is not None:
                problems.append(Problem(src.key, "TLSSecret", f"secret {t.secret[0]}/{t.secret[1]}: {reason}; "
                                        f"hosts {', '.join(t.hosts) or '*'} are served without it"))
                continue
            entries.append((t.hosts, TLSBinding(t.secret, src.key, src.options.ssl_redirect)))
    out: dict[str, TLSBinding] = {}
    for host in hosts:
        if host == CATCH_ALL:
            chosen = next((b for hs, b in entries if not hs), None)
        else:
            chosen = next((b for hs, b in entries if host in hs), None)
            if chosen is None:
                chosen = next((b for hs, b in entries if any(wildcard_covers(h, host) for h in hs)), None)
        if chosen is not None:
            out[host] = chosen
    return out
