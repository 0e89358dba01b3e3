"""CNI spec versions: which we speak, how they compare, which verbs each allows.

Results use the same field names from 0.3.0 on (0.1.0/0.2.0 used `ip4`/`ip6`
objects and are not supported). CHECK exists from 0.4.0, GC and STATUS from 1.1.0.
"""

from __future__ import annotations

from .errors import CODE_INCOMPATIBLE_VERSION, CNIError

CURRENT = "1.1.0"
SUPPORTED: tuple[str, ...] = ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")

# The first spec version in which each verb exists.
VERB_SINCE: dict[str, str] = {
    "ADD": "0.1.0",
    "DEL": "0.1.0",
    "VERSION": "0.1.0",
    "CHECK": "0.4.0",
    "GC": "1.1.0",
    "STATUS": "1.1.0",
}


def parse(version: str) -> tuple[int, int, int]:
    """'1.0.0' -> (1, 0, 0); raises ValueError on anything else."""
    parts = version.split(".")
    if len(parts) != 3 or not all(p.isdigit() for p in parts):
        raise ValueError(f"invalid version {version!r}")
    return int(parts[0]), int(parts[1]), int(parts[2])


def at_least(version: str, minimum: str) -> bool:
    return parse(version) >= parse(minimum)


def check_supported(version: str) -> None:
    """Raise code 1 unless the config's cniVersion is one this plugin speaks."""
    if version not in SUPPORTED:
        raise CNIError(
            CODE_INCOMPATIBLE_VERSION,
            "incompatible CNI versions",
            f"config is {version!r}, plugin supports {list(SUPPORTED)}",
        )


def check_verb_allowed(verb: str, version: str) -> None:
    """Raise code 1 when the config's version predates the verb (e.g. CHECK on 0.3.1)."""
    since = VERB_SINCE[verb]
    if not at_least(version, since):
        raise CNIError(
            CODE_INCOMPATIBLE_VERSION,
            f"config version does not allow {verb}",
            f"{verb} needs cniVersion >= {since}, config is {version!r}",
        )


def version_reply() -> bytes:
    """stdout of VERSION: the newest version we speak and all we support (any config version)."""
    import json

    return (json.dumps({"cniVersion": CURRENT, "supportedVersions": list(SUPPORTED)}, indent=4) + "\n").encode()
