"""Delegated IPAM: exec another IPAM plugin from CNI_PATH, as the spec describes.

The delegate gets the same environment (with CNI_COMMAND set to the verb) and
the same network config on stdin; its result or its error comes back as ours.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Mapping
from typing import Any

from ..errors import CODE_DECODE, CODE_INVALID_ENV, CODE_IPAM_DELEGATE, CNIError

TIMEOUT = 60.0


def find_plugin(plugin_type: str, cni_path: str) -> str:
    dirs = [d for d in cni_path.split(os.pathsep) if d]
    if not dirs:
        raise CNIError(CODE_INVALID_ENV, "CNI_PATH is empty", f"needed to find the IPAM plugin {plugin_type!r}")
    for d in dirs:
        path = os.path.join(d, plugin_type)
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    raise CNIError(CODE_IPAM_DELEGATE, f"failed to find plugin {plugin_type!r} in path", cni_path)


def exec_plugin(plugin_type: str, command: str, stdin: bytes, env: Mapping[str, str]) -> dict[str, Any] | None:
    """Run the delegate; its parsed stdout on success (None if empty), its error as CNIError."""
    path = find_plugin(plugin_type, env.get("CNI_PATH", ""))
    child_env = dict(env)
    child_env["CNI_COMMAND"] = command
    child_env.setdefault("PATH", os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"))
    try:
        proc = subprocess.run([path], input=stdin, capture_output=True, env=child_env, timeout=TIMEOUT)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise CNIError(CODE_IPAM_DELEGATE, f"cannot run IPAM plugin {plugin_type!r}", str(e)) from e
    out = proc.stdout.strip()
    parsed: Any = None
    if out:
        try:
            parsed = json.loads(out)
        except ValueError as e:
            if proc.returncode == 0:
                raise CNIError(CODE_DECODE, f"IPAM plugin {plugin_type!r} printed no JSON", out[:200].decode(
                    errors="replace")) from e
    if proc.returncode != 0:
        if isinstance(parsed, dict) and isinstance(parsed.get("code"), int):
            raise CNIError(parsed["code"], str(parsed.get("msg", "")), str(parsed.get("details", "")))
        detail = (proc.stderr or proc.stdout).decode(errors="replace").strip()[:500]
        raise CNIError(CODE_IPAM_DELEGATE, f"IPAM plugin {plugin_type!r} failed ({command})", detail)
    if parsed is not None and not isinstance(parsed, dict):
        raise CNIError(CODE_DECODE, f"IPAM plugin {plugin_type!r} printed a non-object", "")
    return parsed
