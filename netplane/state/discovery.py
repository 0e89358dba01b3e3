"""Discovery documents: /version, /api, /apis and the per-group-version resource lists."""

from __future__ import annotations

import hashlib
from typing import Any

from netplane import __version__
from netplane.api import resources as res

# The Kubernetes API level this subset follows; kubectl compares it with its own.
KUBE_MAJOR, KUBE_MINOR = "1", "31"


def version_info() -> dict[str, str]:
    return {
        "major": KUBE_MAJOR,
        "minor": KUBE_MINOR,
        "gitVersion": f"v{KUBE_MAJOR}.{KUBE_MINOR}.0-netplane.{__version__}",
        "gitCommit": "",
        "gitTreeState": "clean",
        "buildDate": "1970-01-01T00:00:00Z",
        "goVersion": "python",
        "compiler": "cpython",
        "platform": "linux/amd64",
    }


def _storage_hash(info: res.ResourceInfo) -> str:
    return hashlib.sha256(f"{info.group}/{info.version}/{info.kind}".encode()).hexdigest()[:11]


def resource_list(group: str, version: str) -> dict[str, Any] | None:
    infos = res.by_group_version(group, version)
    if not infos:
        return None
    out: list[dict[str, Any]] = []
    for info in infos:
        entry: dict[str, Any] = {
            "name": info.plural,
            "singularName": info.singular,
            "namespaced": info.namespaced,
            "kind": info.kind,
            "verbs": list(info.verbs),
            "storageVersionHash": _storage_hash(info),
        }
        if info.short_names:
            entry["shortNames"] = list(info.short_names)
        if info.categories:
            entry["categories"] = list(info.categories)
        out.append(entry)
        for sub in info.subresources:
            if sub == "scale":
                out.append({"name": f"{info.plural}/scale", "singularName": "", "namespaced": info.namespaced,
                            "group": "autoscaling", "version": "v1", "kind": "Scale",
                            "verbs": ["get", "patch", "update"]})
            else:
                out.append({"name": f"{info.plural}/{sub}", "singularName": "", "namespaced": info.namespaced,
                            "kind": info.kind, "verbs": ["get", "patch", "update"]})
    gv = f"{group}/{version}" if group else version
    return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": out}


def core_versions(server_address: str) -> dict[str, Any]:
    return {
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}],
    }


def _group(group: str) -> dict[str, Any]:
    versions = [v for g, v in res.GROUPS if g == group]
    gvs = [{"groupVersion": f"{group}/{v}", "version": v} for v in versions]
    return {"kind": "APIGroup", "apiVersion": "v1", "name": group, "versions": gvs, "preferredVersion": gvs[0]}


def group(name: str) -> dict[str, Any] | None:
    if not any(g == name for g, _ in res.GROUPS):
        return None
    return _group(name)


def group_list() -> dict[str, Any]:
    names = list(dict.fromkeys(g for g, _ in res.GROUPS))
    groups = []
    for n in names:
        g = _group(n)
        del g["kind"]
        del g["apiVersion"]
        groups.append(g)
    return {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}
