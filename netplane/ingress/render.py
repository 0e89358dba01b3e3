"""The route table as one complete nginx configuration (pure: data in, text out).

How the Ingress semantics map onto nginx (see routes.py for the semantics themselves):

* One ``server`` per virtual host and scheme. Exact hosts are nginx exact ``server_name``\\ s; a
  wildcard ``*.foo.com`` becomes the regex ``~^[^.]+\\.foo\\.com$`` because nginx's own ``*.foo.com``
  would also match ``a.b.foo.com``; the catch-all is the ``default_server``. nginx tries exact names
  before regexes and regexes before the default server: the table's order exactly.
* Paths: ``Exact /p`` is ``location = /p``. ``Prefix /p`` is ``location = /p`` plus
  ``location ^~ /p/`` (element-wise matching; ``/pq`` matches neither); ``Prefix /`` is
  ``location /``. nginx picks an exact location first and otherwise the longest prefix location,
  which is "longest match wins, Exact beats Prefix on a tie". The ``= /p`` location also keeps
  nginx from answering ``/p`` with its automatic 301 to ``/p/``. ``location /`` is always present:
  the default backend, or 404.
* HTTPS: only virtual hosts with a certificate listen on the HTTPS port; the HTTPS default server
  refuses the handshake (``ssl_reject_handshake``) unless the catch-all has a certificate. Plain
  HTTP to a TLS host answers ``308`` to the same URL on HTTPS, per location.
* Upstreams are named per Service port (``np.<ns>.<svc>.<port>``) with keepalive connections; an
  unresolvable backend answers 503. The request URI is passed unchanged (``proxy_pass`` without a URI).
* Headers to the backend: ``Host`` as the client sent it, ``X-Forwarded-For`` = the client address
  (a client-supplied X-Forwarded-For is not trusted, as in ingress-nginx's default),
  ``X-Forwarded-Proto``, ``X-Forwarded-Host``, ``X-Forwarded-Port``, ``X-Real-IP``.

Every line remembers which Ingresses it came from, so an ``nginx -t`` error at ``file:line`` can be
traced back to the Ingress to reject.

A ``server`` block depends only on its virtual host, the resolution of the backends it names, its
certificate file and the options, so :func:`render` can take a :class:`ServerCache` and re-render
only the blocks whose inputs changed (one changed Ingress at 1,000 costs a few blocks, not 2,000).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from netplane.ingress.backends import Resolved, upstream_name
from netplane.ingress.model import IngressKey, ServiceRef
from netplane.ingress.routes import CATCH_ALL, Route, RouteTable, VirtualHost

Owners = frozenset[IngressKey]
NOBODY: Owners = frozenset()


@dataclass(frozen=True)
class RenderOptions:
    state_dir: str  # pid, logs and temp paths live here, never in nginx's compiled-in defaults
    http_port: int = 80
    https_port: int = 443  # 0: no HTTPS listener
    address: str = ""  # "" = every address
    worker_processes: str = "auto"
    worker_connections: int = 4096
    access_log: bool = False
    keepalive: int = 64  # idle upstream connections kept per worker and upstream


@dataclass(frozen=True)
class Rendered:
    text: str
    owners: tuple[Owners, ...] = field(repr=False)  # per line, line 1 first

    def owners_of_line(self, line: int) -> Owners:
        return self.owners[line - 1] if 0 < line <= len(self.owners) else NOBODY


class _Writer:
    def __init__(self, depth: int = 0) -> None:
        self.lines: list[str] = []
        self.owners: list[Owners] = []
        self.depth = depth

    def __call__(self, text: str, owners: Owners = NOBODY) -> None:
        self.lines.append("    " * self.depth + text if text else "")
        self.owners.append(owners)

    def open(self, text: str, owners: Owners = NOBODY) -> None:
        self(text + " {", owners)
        self.depth += 1

    def close(self, owners: Owners = NOBODY) -> None:
        self.depth -= 1
        self("}", owners)


def quote(value: str) -> str:
    """An nginx string literal: double-quoted, with backslash and double quote escaped."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def server_name(host: str) -> str:
    if host == CATCH_ALL:
        return "_"
    if host.startswith("*."):
        return quote("~^[^.]+" + re.escape("." + host[2:]) + "$")
    return host


def _listen(opts: RenderOptions, port: int) -> str:
    if not opts.address:
        return str(port)
    return f"[{opts.address}]:{port}" if ":" in opts.address else f"{opts.address}:{port}"


def _locations(vhost: VirtualHost) -> list[tuple[str, Route | None]]:
    """(location argument, route or None for 404), in a stable order."""
    locs: dict[tuple[str, str], Route | None] = {}  # (modifier, path) -> route
    for r in vhost.routes:
        if r.exact:
            locs[("=", r.path)] = r
    for r in vhost.routes:
        if r.exact:
            continue
        if not r.path:
            locs[("", "/")] = r
        else:
            locs.setdefault(("=", r.path), r)
            locs[("^~", r.path + "/")] = r
    locs.setdefault(("", "/"), vhost.fallback)
    # nginx answers /p with a 301 to /p/ when a proxying location "/p/" (exact or prefix) exists and
    # no location "= /p" does; Ingress semantics have no such redirect, so say what /p gets.
    for _mod, p in list(locs):
        if p.endswith("/") and p != "/":
            locs.setdefault(("=", p[:-1]), vhost.route_for(p[:-1]))
    ordered = sorted(locs.items(), key=lambda kv: (kv[0] != ("", "/"), kv[0][1], kv[0][0]))
    return [("/" if mod == "" else f"{mod} {quote(p)}", route) for (mod, p), route in ordered]


def _route_owners(route: Route | None) -> Owners:
    return frozenset({route.source}) if route is not None else NOBODY


def _location_body(w: _Writer, vhost: VirtualHost, route: Route | None, scheme: str, opts: RenderOptions,
                   upstreams: Mapping[ServiceRef, Resolved]) -> None:
    owners = _route_owners(route)
    if scheme == "http" and vhost.redirects(route):
        port = "" if opts.https_port == 443 else f":{opts.https_port}"
        w(f"return 308 https://$host{port}$request_uri;", owners)
        return
    if route is None:
        w("return 404;")
        return
    resolved = upstreams.get(route.backend)
    if resolved is None or not resolved.ok:
        w(f"# {route.backend}: {resolved.reason if resolved else 'unresolved'}", owners)
        w("return 503;", owners)
        return
    o = route.options
    if o.body_size is not None:
        w(f"client_max_body_size {o.body_size};", owners)
    for directive, value in (("proxy_connect_timeout", o.connect_timeout), ("proxy_read_timeout", o.read_timeout),
                             ("proxy_send_timeout", o.send_timeout)):
        if value is not None:
            w(f"{directive} {value}s;", owners)
    if o.backend_https:
        w("proxy_ssl_server_name on;", owners)
        w(f"proxy_ssl_name {route.backend.name}.{route.backend.namespace}.svc;", owners)
    w(f"proxy_pass {'https' if o.backend_https else 'http'}://{upstream_name(route.backend)};", owners)


def _server(w: _Writer, vhost: VirtualHost, scheme: str, opts: RenderOptions, upstreams: Mapping[ServiceRef, Resolved],
            cert_paths: Mapping[tuple[str, str], str]) -> None:
    default = " default_server" if vhost.host == CATCH_ALL else ""
    tls_owner = frozenset({vhost.tls.source}) if vhost.tls is not None else NOBODY
    w.open("server")
    if scheme == "http":
        w(f"listen {_listen(opts, opts.http_port)}{default};")
    else:
        w(f"listen {_listen(opts, opts.https_port)} ssl{default};")
    w(f"server_name {server_name(vhost.host)};", frozenset(vhost.sources))
    if scheme == "https":
        path = cert_paths.get(vhost.tls.secret) if vhost.tls is not None else None
        if path is None:
            w("ssl_reject_handshake on;")
        else:
            w(f"ssl_certificate {quote(path)};", tls_owner)
            w(f"ssl_certificate_key {quote(path)};", tls_owner)
    for arg, route in _locations(vhost):
        owners = _route_owners(route)
        w.open(f"location {arg}", owners)
        _location_body(w, vhost, route, scheme, opts, upstreams)
        w.close(owners)
    w.close()


_Block = tuple[tuple[str, ...], tuple[Owners, ...]]  # a server block's lines (indented) and their owners


class ServerCache:
    """Server blocks rendered by the previous :func:`render`, per (scheme, host), with the inputs
    they were rendered from.

    A block is reused when its inputs compare equal (values, not identities), that is exactly when
    it would render the same text; each render keeps only the blocks it used, so the cache never
    grows past one configuration. Comparing is cheaper than hashing the nested values."""

    def __init__(self) -> None:
        self.blocks: dict[tuple[str, str], tuple[tuple[object, ...], _Block]] = {}
        self.opts: RenderOptions | None = None
        self.hits = 0
        self.misses = 0


def _server_block(vhost: VirtualHost, scheme: str, opts: RenderOptions, upstreams: Mapping[ServiceRef, Resolved],
                  cert_paths: Mapping[tuple[str, str], str], depth: int, cache: ServerCache | None,
                  kept: dict[tuple[str, str], tuple[tuple[object, ...], _Block]] | None) -> _Block:
    if cache is None or kept is None:
        w = _Writer(depth)
        _server(w, vhost, scheme, opts, upstreams, cert_paths)
        return tuple(w.lines), tuple(w.owners)
    # The backends a block names follow from the vhost, so their resolutions in route order
    # (then the fallback's) identify the upstream inputs once the vhosts compare equal.
    inputs = (vhost, depth, tuple(upstreams.get(r.backend) for r in vhost.routes),
              upstreams.get(vhost.fallback.backend) if vhost.fallback is not None else None,
              cert_paths.get(vhost.tls.secret) if vhost.tls is not None else None)
    key = (scheme, vhost.host)
    held = cache.blocks.get(key)
    if held is not None and held[0] == inputs:
        cache.hits += 1
        block = held[1]
    else:
        cache.misses += 1
        w = _Writer(depth)
        _server(w, vhost, scheme, opts, upstreams, cert_paths)
        block = (tuple(w.lines), tuple(w.owners))
    kept[key] = (inputs, block)
    return block


def render(table: RouteTable, upstreams: Mapping[ServiceRef, Resolved], cert_paths: Mapping[tuple[str, str], str],
           opts: RenderOptions, cache: ServerCache | None = None) -> Rendered:
    """The whole nginx.conf. ``cert_paths`` maps usable TLS Secrets to their PEM files; ``cache``
    (optional) reuses server blocks from the previous call (the text is the same either way)."""
    sd = opts.state_dir.rstrip("/")
    w = _Writer()
    w("# Generated by netplane ingress: every change here is overwritten on the next sync.")
    w(f"pid {sd}/nginx.pid;")
    w(f"error_log {sd}/error.log notice;")  # notice: reloads and worker exits, for diagnosis
    w(f"worker_processes {opts.worker_processes};")
    w("worker_shutdown_timeout 60s;")  # old workers finish in-flight requests after a reload, then go
    w.open("events")
    w(f"worker_connections {opts.worker_connections};")
    w.close()
    w.open("http")
    if opts.access_log:
        w("log_format np '$remote_addr [$time_local] \"$request\" $status host=$host server=$server_name "
          "upstream=$upstream_addr pid=$pid rt=$request_time';")
        w(f"access_log {sd}/access.log np;")
    else:
        w("access_log off;")
    for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        w(f"{kind}_temp_path {sd}/tmp/{kind};")
    w("default_type application/octet-stream;")
    w("server_tokens off;")
    w("sendfile on;")
    w("tcp_nodelay on;")
    w("keepalive_timeout 75s;")
    w("keepalive_requests 10000;")
    w("server_names_hash_max_size 8192;")
    w("server_names_hash_bucket_size 128;")
    w("variables_hash_bucket_size 128;")
    w("proxy_http_version 1.1;")
    w("proxy_redirect off;")
    w("proxy_connect_timeout 5s;")
    w("proxy_read_timeout 60s;")
    w("proxy_send_timeout 60s;")
    w("client_max_body_size 1m;")
    w.open("map $http_host $np_host")  # the Host header as sent; HTTP/1.0 without one gets the server's
    w('"" $host;')
    w("default $http_host;")
    w.close()
    w("proxy_set_header Host $np_host;")
    w('proxy_set_header Connection "";')  # hop-by-hop; also lets upstream keepalive work
    w("proxy_set_header X-Real-IP $remote_addr;")
    w("proxy_set_header X-Forwarded-For $remote_addr;")
    w("proxy_set_header X-Forwarded-Proto $scheme;")
    w("proxy_set_header X-Forwarded-Host $host;")
    w("proxy_set_header X-Forwarded-Port $server_port;")
    if opts.https_port:
        w("ssl_protocols TLSv1.2 TLSv1.3;")
        w("ssl_session_cache shared:np_ssl:10m;")
        w("ssl_session_timeout 10m;")
    # Upstreams used by some route, each once, in a stable order.
    used: dict[ServiceRef, set[IngressKey]] = {}
    for vhost in table.vhosts.values():
        for r in (*vhost.routes, vhost.fallback):
            if r is not None:
                used.setdefault(r.backend, set()).add(r.source)
    for ref in sorted(used, key=upstream_name):
        resolved = upstreams.get(ref)
        if resolved is None or not resolved.ok:
            continue
        owners = frozenset(used[ref])
        w.open(f"upstream {upstream_name(ref)}", owners)
        for s in resolved.servers:
            w(f"server {s} max_fails=0;", owners)
        w(f"keepalive {opts.keepalive};", owners)
        w.close(owners)
    hosts = sorted(table.vhosts, key=lambda h: (h != CATCH_ALL, h))
    servers = [(table.vhosts[h], "http") for h in hosts]
    if opts.https_port:
        for host in hosts:
            vhost = table.vhosts[host]
            if host == CATCH_ALL or (vhost.tls is not None and vhost.tls.secret in cert_paths):
                servers.append((vhost, "https"))
    kept: dict[tuple[str, str], tuple[tuple[object, ...], _Block]] | None = None
    if cache is not None:
        kept = {}
        if cache.opts != opts:
            cache.blocks, cache.opts = {}, opts
    for vhost, scheme in servers:
        block_lines, block_owners = _server_block(vhost, scheme, opts, upstreams, cert_paths, w.depth, cache, kept)
        w.lines.extend(block_lines)
        w.owners.extend(block_owners)
    if cache is not None and kept is not None:
        cache.blocks = kept
    w.close()
    return Rendered("\n".join(w.lines) + "\n", tuple(w.owners))
