"""Where the API server is and how to authenticate to it: --server, a kubeconfig file, or the default.

Resolution order (as the task asks, close to kubectl's):

1. ``server`` given and no kubeconfig: that URL, no credentials (plain HTTP to a local state server).
2. A kubeconfig file (the ``kubeconfig`` argument, else ``$KUBECONFIG``, else ``~/.kube/config`` when it
   exists): its current context's cluster and user. ``server`` still overrides the cluster's URL, as
   kubectl's ``--server`` does, while the credentials stay.
3. Nothing at all: ``http://127.0.0.1:6443``.

``$KUBECONFIG`` may list several files separated by ``:``; like kubectl, the first file that defines a
name (context, cluster, user) or the current context wins.

Not supported (a clear error rather than a silent anonymous request): exec credential plugins and
auth-provider plugins. Inline ``*-data`` fields are kept in memory; :meth:`ClusterConfig.ssl_context`
loads them without leaving files behind.
"""

from __future__ import annotations

import base64
import binascii
import os
import ssl
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

DEFAULT_SERVER = "http://127.0.0.1:6443"


class KubeconfigError(Exception):
    """A kubeconfig that is missing, unreadable or inconsistent; the message names the file and field."""


@dataclass(frozen=True)
class ClusterConfig:
    server: str
    token: str | None = None
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    insecure: bool = False
    namespace: str = "default"
    # Inline PEM data from *-data fields (kept in memory, never written to a lasting file).
    ca_data: str | None = None
    cert_data: str | None = None
    key_data: str | None = None
    # A bearer token that lives in a file (tokenFile, projected service-account tokens) is re-read
    # by the client, because such tokens rotate.
    token_file: str | None = None
    username: str | None = None
    password: str | None = None

    @property
    def is_https(self) -> bool:
        return self.server.lower().startswith("https://")

    def ssl_context(self) -> ssl.SSLContext | None:
        """The TLS settings for an https server (None for plain http)."""
        if not self.is_https:
            return None
        ctx = ssl.create_default_context(cafile=self.ca_file, cadata=self.ca_data)
        if self.insecure:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        if self.cert_file or self.cert_data:
            _load_client_cert(ctx, self)
        return ctx

    def current_token(self) -> str | None:
        if self.token_file:
            try:
                return Path(self.token_file).read_text().strip()
            except OSError:
                # Keep the token loaded at start-up, if any, rather than failing every request.
                return self.token
        return self.token


def _load_client_cert(ctx: ssl.SSLContext, cfg: ClusterConfig) -> None:
    # load_cert_chain only takes paths, so inline data goes through a private temporary
    # directory that is removed as soon as OpenSSL has read it.
    with tempfile.TemporaryDirectory(prefix="netplane-tls-") as tmp:
        cert = cfg.cert_file
        key = cfg.key_file
        if cfg.cert_data:
            cert = os.path.join(tmp, "client.crt")
            _write_private(cert, cfg.cert_data)
        if cfg.key_data:
            key = os.path.join(tmp, "client.key")
            _write_private(key, cfg.key_data)
        try:
            ctx.load_cert_chain(certfile=str(cert), keyfile=key)
        except (OSError, ssl.SSLError) as e:
            raise KubeconfigError(f"cannot load the client certificate: {e}") from e


def _write_private(path: str, data: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(data)


def load_config(server: str | None = None, kubeconfig: str | None = None) -> ClusterConfig:
    """The cluster to talk to; see the module docstring for the order of precedence."""
    paths: list[Path]
    if kubeconfig:
        paths = [Path(p) for p in kubeconfig.split(os.pathsep) if p]
        missing = [p for p in paths if not p.exists()]
        if missing and len(missing) == len(paths):
            raise KubeconfigError(f"kubeconfig {missing[0]}: no such file")
        paths = [p for p in paths if p.exists()]
    elif server:
        return ClusterConfig(server=_normalize_server(server, tls=False))
    else:
        env = os.environ.get("KUBECONFIG", "")
        paths = [Path(p) for p in env.split(os.pathsep) if p and Path(p).exists()]
        if not paths:
            default = Path.home() / ".kube" / "config"
            paths = [default] if default.exists() else []
    if not paths:
        return ClusterConfig(server=DEFAULT_SERVER)
    docs = [(p, _read_kubeconfig(p)) for p in paths]
    return config_from_kubeconfig(docs, server_override=server)


def _read_kubeconfig(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except OSError as e:
        raise KubeconfigError(f"kubeconfig {path}: {e.strerror or e}") from e
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise KubeconfigError(f"kubeconfig {path}: invalid YAML: {_yaml_problem(e)}") from e
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise KubeconfigError(f"kubeconfig {path}: expected a mapping at the top level")
    return doc


def _yaml_problem(e: yaml.YAMLError) -> str:
    mark = getattr(e, "problem_mark", None)
    problem = getattr(e, "problem", None) or str(e)
    if mark is not None:
        return f"{problem} at line {mark.line + 1}, column {mark.column + 1}"
    return str(problem)


def config_from_kubeconfig(
    docs: list[tuple[Path, dict[str, Any]]], server_override: str | None = None
) -> ClusterConfig:
    """Resolve the current context across one or more parsed kubeconfig files (first definition wins)."""
    current = next((d.get("current-context") for _, d in docs if d.get("current-context")), None)
    where = ", ".join(str(p) for p, _ in docs)
    if not current:
        if server_override:
            return ClusterConfig(server=_normalize_server(server_override, tls=False))
        raise KubeconfigError(f"kubeconfig {where}: no current-context is set")
    ctx_path, context = _named(docs, "contexts", "context", current, where)
    cluster_name = context.get("cluster")
    if not cluster_name:
        raise KubeconfigError(f"kubeconfig {ctx_path}: context {current!r} names no cluster")
    cl_path, cluster = _named(docs, "clusters", "cluster", str(cluster_name), where)
    user_name = context.get("user")
    user: dict[str, Any] = {}
    user_path = ctx_path
    if user_name:
        user_path, user = _named(docs, "users", "user", str(user_name), where)

    if "exec" in user or "auth-provider" in user:
        plugin = "exec" if "exec" in user else "auth-provider"
        raise KubeconfigError(
            f"kubeconfig {user_path}: user {user_name!r} uses an {plugin} credential plugin, "
            "which netplane does not support; use a token or a client certificate"
        )

    server = server_override or cluster.get("server")
    if not server:
        raise KubeconfigError(f"kubeconfig {cl_path}: cluster {cluster_name!r} has no server")

    token = user.get("token")
    token_file = user.get("tokenFile")
    if token_file:
        token_file = _resolve(user_path, str(token_file))
        if not token:
            try:
                token = Path(token_file).read_text().strip()
            except OSError as e:
                raise KubeconfigError(
                    f"kubeconfig {user_path}: user {user_name!r}: cannot read tokenFile {token_file}: "
                    f"{e.strerror or e}"
                ) from e

    ca_file = cluster.get("certificate-authority")
    cert_file = user.get("client-certificate")
    key_file = user.get("client-key")
    return ClusterConfig(
        server=_normalize_server(str(server), tls=bool(ca_file or cluster.get("certificate-authority-data"))),
        token=str(token) if token else None,
        token_file=token_file,
        ca_file=_checked_file(cl_path, f"cluster {cluster_name!r} certificate-authority", ca_file),
        ca_data=_b64(cl_path, f"cluster {cluster_name!r} certificate-authority-data",
                     cluster.get("certificate-authority-data")),
        cert_file=_checked_file(user_path, f"user {user_name!r} client-certificate", cert_file),
        cert_data=_b64(user_path, f"user {user_name!r} client-certificate-data",
                       user.get("client-certificate-data")),
        key_file=_checked_file(user_path, f"user {user_name!r} client-key", key_file),
        key_data=_b64(user_path, f"user {user_name!r} client-key-data", user.get("client-key-data")),
        insecure=bool(cluster.get("insecure-skip-tls-verify", False)),
        namespace=str(context.get("namespace") or "default"),
        username=user.get("username"),
        password=user.get("password"),
    )


def _named(
    docs: list[tuple[Path, dict[str, Any]]], section: str, field: str, name: str, where: str
) -> tuple[Path, dict[str, Any]]:
    for path, doc in docs:
        entries = doc.get(section) or []
        if not isinstance(entries, list):
            raise KubeconfigError(f"kubeconfig {path}: {section} must be a list")
        for entry in entries:
            if isinstance(entry, Mapping) and entry.get("name") == name:
                body = entry.get(field) or {}
                if not isinstance(body, dict):
                    raise KubeconfigError(
                        f"kubeconfig {path}: {section[:-1]} {name!r}: {field} must be a mapping")
                return path, body
    raise KubeconfigError(f"kubeconfig {where}: no {section[:-1]} named {name!r}")


def _resolve(kubeconfig_path: Path, file: str) -> str:
    # kubectl resolves relative paths against the directory of the kubeconfig that names them.
    p = Path(os.path.expanduser(file))
    if not p.is_absolute():
        p = kubeconfig_path.parent / p
    return str(p)


def _checked_file(kubeconfig_path: Path, what: str, file: Any) -> str | None:
    if not file:
        return None
    resolved = _resolve(kubeconfig_path, str(file))
    if not os.path.isfile(resolved):
        raise KubeconfigError(f"kubeconfig {kubeconfig_path}: {what} {resolved}: no such file")
    return resolved


def _b64(kubeconfig_path: Path, what: str, data: Any) -> str | None:
    if not data:
        return None
    try:
        return base64.b64decode(str(data), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError) as e:
        raise KubeconfigError(f"kubeconfig {kubeconfig_path}: {what} is not valid base64 PEM data") from e


def _normalize_server(server: str, tls: bool) -> str:
    server = server.strip().rstrip("/")
    if "://" not in server:
        # kubectl picks https when TLS settings exist and http otherwise; we do the same.
        server = ("https://" if tls else "http://") + server
    return server
