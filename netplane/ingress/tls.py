"""TLS Secrets to PEM files for nginx (pure).

A Secret is usable when it has base64 ``tls.crt`` and ``tls.key`` that look like a PEM certificate
and a PEM private key (``kubernetes.io/tls`` Secrets have exactly these keys; like ingress-nginx,
any Secret type carrying both is accepted). Whether key and certificate belong together is left
to ``nginx -t``, which reads them with the same OpenSSL that serves them; a failure there is
traced back to the Ingress that referenced the Secret.

The file name is the content's hash, so a changed certificate changes the rendered configuration
(and so triggers exactly one reload) while an unchanged one never does.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass
from typing import Any

Obj = dict[str, Any]


@dataclass(frozen=True, slots=True)
class CertBundle:
    pem: bytes  # certificate chain, then the key

    @property
    def file_name(self) -> str:
        return hashlib.sha256(self.pem).hexdigest()[:24] + ".pem"


def bundle_from_secret(secret: Obj | None) -> CertBundle | str:
    """The PEM bundle, or the reason the Secret cannot serve TLS."""
    if secret is None:
        return "not found"
    data = secret.get("data") or {}
    parts: dict[str, bytes] = {}
    for name in ("tls.crt", "tls.key"):
        raw = data.get(name)
        if not raw:
            return f"has no {name}"
        try:
            parts[name] = base64.b64decode(str(raw), validate=True)
        except (binascii.Error, ValueError):
            return f"{name} is not base64"
    crt, key = parts["tls.crt"], parts["tls.key"]
    if b"-----BEGIN CERTIFICATE-----" not in crt:
        return "tls.crt is not a PEM certificate"
    if b"PRIVATE KEY-----" not in key:
        return "tls.key is not a PEM private key"
    return CertBundle(crt.rstrip(b"\n") + b"\n" + key.rstrip(b"\n") + b"\n")
