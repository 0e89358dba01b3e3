"""API errors as Kubernetes Status objects."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

REASONS = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    406: "NotAcceptable",
    409: "Conflict",
    410: "Expired",
    415: "UnsupportedMediaType",
    422: "Invalid",
    429: "TooManyRequests",
    500: "InternalError",
    503: "ServiceUnavailable",
    504: "Timeout",
}


@dataclass(frozen=True, slots=True)
class Cause:
    """One problem with one field, as in Status.details.causes."""

    field: str
    message: str
    reason: str = "FieldValueInvalid"  # FieldValueRequired, FieldValueDuplicate, FieldValueNotSupported ...

    def to_dict(self) -> dict[str, str]:
        return {"reason": self.reason, "message": f"{self.field}: {self.message}", "field": self.field}


@dataclass
class APIError(Exception):
    code: int
    message: str
    reason: str = ""
    details: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.reason:
            self.reason = REASONS.get(self.code, "Unknown")
        Exception.__init__(self, self.message)

    def status(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }
        if self.details:
            out["details"] = self.details
        return out


def _details(kind: str, name: str, group: str = "") -> dict[str, Any]:
    d: dict[str, Any] = {"name": name, "kind": kind}
    if group:
        d["group"] = group
    return d


def not_found(plural: str, name: str, group: str = "") -> APIError:
    qual = f"{plural}.{group}" if group else plural
    return APIError(404, f'{qual} "{name}" not found', "NotFound", _details(plural, name, group))


def already_exists(plural: str, name: str, group: str = "") -> APIError:
    qual = f"{plural}.{group}" if group else plural
    return APIError(409, f'{qual} "{name}" already exists', "AlreadyExists", _details(plural, name, group))


def conflict(plural: str, name: str, group: str = "", why: str = "") -> APIError:
    qual = f"{plural}.{group}" if group else plural
    why = why or "the object has been modified; please apply your changes to the latest version and try again"
    return APIError(409, f'Operation cannot be fulfilled on {qual} "{name}": {why}', "Conflict",
                    _details(plural, name, group))


def invalid(kind: str, name: str, causes: list[Cause], group: str = "") -> APIError:
    qual = f"{kind}.{group}" if group else kind
    summary = ", ".join(c.to_dict()["message"] for c in causes)
    details = _details(kind, name, group)
    details["causes"] = [c.to_dict() for c in causes]
    return APIError(422, f'{qual} "{name}" is invalid: {summary}', "Invalid", details)


def bad_request(message: str) -> APIError:
    return APIError(400, message, "BadRequest")


def gone(message: str) -> APIError:
    return APIError(410, message, "Expired")
