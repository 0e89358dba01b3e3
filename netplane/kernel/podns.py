"""Named network namespaces for pod sandboxes (iproute2's conventions), and running commands inside them.

- A sandbox is a named netns, ``/run/netns/<name>``, made with ``ip netns add``
  (it bind-mounts the namespace so it lives without a process in it).
- ``ip netns exec <name> cmd`` runs a command inside it, in a fresh mount
  namespace where ``/etc/netns/<name>/<file>`` is bind-mounted over
  ``/etc/<file>``: that is how each pod gets its own resolv.conf and hosts.
  The daemon never calls setns itself (its threads must stay where they are).

`ip netns add` and `del` are idempotent here: adding one that exists and
deleting one that is gone both succeed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence

NETNS_DIR = "/run/netns"
ETC_NETNS_DIR = "/etc/netns"
IP = "ip"


class PodNetnsError(Exception):
    pass


def path(name: str) -> str:
    return os.path.join(NETNS_DIR, name)


def _check_name(name: str) -> None:
    if not name or "/" in name or name in (".", "..") or len(name) > 200:
        raise PodNetnsError(f"invalid netns name {name!r}")


def exists(name: str) -> bool:
    return os.path.exists(path(name))


def create(name: str) -> str:
    _check_name(name)
    if exists(name):
        return path(name)
    proc = subprocess.run([IP, "netns", "add", name], capture_output=True, text=True, timeout=30)
    if proc.returncode != 0 and not exists(name):
        raise PodNetnsError(f"cannot create netns {name}: {proc.stderr.strip()}")
    return path(name)


def delete(name: str) -> None:
    _check_name(name)
    if exists(name):
        proc = subprocess.run([IP, "netns", "del", name], capture_output=True, text=True, timeout=30)
        if proc.returncode != 0 and exists(name):
            raise PodNetnsError(f"cannot delete netns {name}: {proc.stderr.strip()}")
    shutil.rmtree(os.path.join(ETC_NETNS_DIR, name), ignore_errors=True)


def names(prefix: str) -> list[str]:
    try:
        return sorted(n for n in os.listdir(NETNS_DIR) if n.startswith(prefix))
    except FileNotFoundError:
        return []


def write_etc_file(name: str, filename: str, text: str) -> str:
    """/etc/netns/<name>/<filename>, seen as /etc/<filename> by commands run with exec_argv."""
    _check_name(name)
    d = os.path.join(ETC_NETNS_DIR, name)
    os.makedirs(d, exist_ok=True)
    target = os.path.join(d, filename)
    tmp = target + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, target)
    return target


def exec_argv(name: str, argv: Sequence[str]) -> list[str]:
    """The command line that runs argv inside netns `name` (exec'd, so the pid is argv's)."""
    _check_name(name)
    return [IP, "netns", "exec", name, *argv]


def is_netns(name: str) -> bool:
    """Whether /run/netns/<name> is a live namespace here (a bind mount of nsfs, not just the empty file).

    Bind mounts made inside another mount namespace (e.g. by an agent started with
    `ip netns exec`, which unshares one) leave only the empty file behind for everyone else.
    """
    try:
        return os.stat(path(name)).st_dev == os.stat("/proc/self/ns/net").st_dev
    except OSError:
        return False


def attach(name: str, pid: int) -> str:
    """Give the netns of process `pid` the name `name` again (`ip netns attach`), replacing a stale file."""
    _check_name(name)
    if is_netns(name):
        return path(name)
    try:
        os.unlink(path(name))
    except FileNotFoundError:
        pass
    except OSError as e:
        raise PodNetnsError(f"cannot replace stale netns file {path(name)}: {e}") from e
    proc = subprocess.run([IP, "netns", "attach", name, str(pid)], capture_output=True, text=True, timeout=30)
    if proc.returncode != 0:
        raise PodNetnsError(f"cannot attach netns {name} to pid {pid}: {proc.stderr.strip()}")
    return path(name)
