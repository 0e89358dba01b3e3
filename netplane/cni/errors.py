"""CNI error codes and the error type every verb raises.

Codes 1-99 are the spec's (CNI 1.1.0, "Error" section); codes >= 100 are ours.
The error is printed on stdout as the spec's JSON and the process exits non-zero.
"""

from __future__ import annotations

# No `typing` import: this module is on the executable's lean start-up path.

# The spec's well-known codes.
CODE_INCOMPATIBLE_VERSION = 1
CODE_UNSUPPORTED_FIELD = 2
CODE_UNKNOWN_CONTAINER = 3
CODE_INVALID_ENV = 4
CODE_IO = 5
CODE_DECODE = 6
CODE_INVALID_CONFIG = 7
CODE_TRY_AGAIN = 11
CODE_NOT_AVAILABLE = 50
CODE_LIMITED_CONNECTIVITY = 51

# netplane's own codes (the spec reserves >= 100 for plugins).
CODE_IFACE_EXISTS = 100
CODE_NETLINK = 101
CODE_IPAM_EXHAUSTED = 102
CODE_IPAM_STORE = 103
CODE_IPAM_DELEGATE = 104
CODE_CHECK_FAILED = 105
CODE_IPMASQ = 106
CODE_BRIDGE_CONFLICT = 107
CODE_INTERNAL = 199


class CNIError(Exception):
    """An error the plugin reports to the runtime with a code, message and details."""

    def __init__(self, code: int, msg: str, details: str = "") -> None:
        super().__init__(msg)
        self.code = code
        self.msg = msg
        self.details = details

    def to_dict(self, cni_version: str) -> dict[str, object]:
        out: dict[str, object] = {"cniVersion": cni_version, "code": self.code, "msg": self.msg}
        if self.details:
            out["details"] = self.details
        return out

    def __repr__(self) -> str:
        return f"CNIError({self.code}, {self.msg!r}, {self.details!r})"
