"""The resources the state server serves: one table, read by discovery, routing and validation."""

from __future__ import annotations

from dataclasses import dataclass

ALL_VERBS = ("create", "delete", "deletecollection", "get", "list", "patch", "update", "watch")


@dataclass(frozen=True, slots=True)
class ResourceInfo:
    group: str  # "" for the core group
    version: str
    plural: str
    singular: str
    kind: str
    namespaced: bool
    short_names: tuple[str, ...] = ()
    subresources: tuple[str, ...] = ()  # "status", "scale"
    verbs: tuple[str, ...] = ALL_VERBS
    categories: tuple[str, ...] = ()

    @property
    def group_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def api_version(self) -> str:
        return self.group_version

    @property
    def key(self) -> str:
        """Storage key prefix for this resource: 'group/plural' ('core' for the core group)."""
        return f"{self.group or 'core'}/{self.plural}"

    @property
    def has_status(self) -> bool:
        return "status" in self.subresources


def _r(
    group: str,
    version: str,
    plural: str,
    kind: str,
    namespaced: bool,
    short: tuple[str, ...] = (),
    sub: tuple[str, ...] = (),
    verbs: tuple[str, ...] = ALL_VERBS,
    categories: tuple[str, ...] = (),
) -> ResourceInfo:
    return ResourceInfo(group, version, plural, kind.lower(), kind, namespaced, short, sub, verbs, categories)


RESOURCES: tuple[ResourceInfo, ...] = (
    _r("", "v1", "namespaces", "Namespace", False, ("ns",), ("status",)),
    _r("", "v1", "nodes", "Node", False, ("no",), ("status",)),
    _r("", "v1", "pods", "Pod", True, ("po",), ("status",), categories=("all",)),
    _r("", "v1", "services", "Service", True, ("svc",), ("status",), categories=("all",)),
    _r("", "v1", "secrets", "Secret", True),
    _r("", "v1", "configmaps", "ConfigMap", True, ("cm",)),
    _r("", "v1", "events", "Event", True, ("ev",)),
    _r("discovery.k8s.io", "v1", "endpointslices", "EndpointSlice", True),
    _r("networking.k8s.io", "v1", "ingresses", "Ingress", True, ("ing",), ("status",)),
    _r("networking.k8s.io", "v1", "ingressclasses", "IngressClass", False),
    _r("apps", "v1", "deployments", "Deployment", True, ("deploy",), ("status", "scale"), categories=("all",)),
    _r("apps", "v1", "replicasets", "ReplicaSet", True, ("rs",), ("status", "scale"), categories=("all",)),
    _r("coordination.k8s.io", "v1", "leases", "Lease", True),
)

GROUPS: tuple[tuple[str, str], ...] = tuple(
    dict.fromkeys((r.group, r.version) for r in RESOURCES if r.group)
)


def by_group_version(group: str, version: str) -> list[ResourceInfo]:
    return [r for r in RESOURCES if r.group == group and r.version == version]


def lookup(group: str, version: str, plural: str) -> ResourceInfo | None:
    for r in RESOURCES:
        if r.group == group and r.version == version and r.plural == plural:
            return r
    return None


def must(group: str, version: str, plural: str) -> ResourceInfo:
    """A resource the code names statically; a typo is a programming error."""
    info = lookup(group, version, plural)
    if info is None:
        raise KeyError(f"no resource {plural} in {group or 'core'}/{version}")
    return info


def lookup_kind(api_version: str, kind: str) -> ResourceInfo | None:
    group, _, version = api_version.rpartition("/")
    for r in RESOURCES:
        if r.group == group and r.version == version and r.kind == kind:
            return r
    return None


def resolve_name(name: str) -> ResourceInfo | None:
    """A resource from what a user types: plural, singular, kind, short name, or 'plural.group'."""
    lowered = name.lower()
    base, _, group = lowered.partition(".")
    for r in RESOURCES:
        if group and r.group != group:
            continue
        if base in (r.plural, r.singular, r.kind.lower()) or base in r.short_names:
            return r
    return None
