"""Label and field selectors with kube-apiserver's syntax and matching rules.

Label selectors (k8s.io/apimachinery/pkg/labels): comma-separated requirements

    key=value  key==value  key!=value  key in (a,b)  key notin (a,b)  key  !key  key>3  key<3

``!=`` and ``notin`` also match objects without the label, as in kube. A ``metav1.LabelSelector``
object (matchLabels + matchExpressions) converts to the same form; a missing (None) one selects
nothing, an empty one selects everything, as ``LabelSelectorAsSelector`` does.

Field selectors (k8s.io/apimachinery/pkg/fields): comma-separated ``field=value``, ``field==value``,
``field!=value`` over the fields each resource supports; ``\\`` escapes ``,``, ``=``, ``!`` and ``\\``
in values. Fields the object lacks compare as their kube zero value: "" for strings, "false" for
booleans, "0" for counts.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from netplane.api import names
from netplane.api.resources import ResourceInfo

IN, NOT_IN, EQUALS, DOUBLE_EQUALS, NOT_EQUALS = "in", "notin", "=", "==", "!="
EXISTS, DOES_NOT_EXIST, GREATER_THAN, LESS_THAN = "exists", "!", "gt", "lt"

_SET_OPERATORS = (IN, NOT_IN, EQUALS, DOUBLE_EQUALS, NOT_EQUALS)


@dataclass(frozen=True, slots=True)
class Requirement:
    key: str
    operator: str  # one of the constants above
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        present = self.key in labels
        if self.operator in (IN, EQUALS, DOUBLE_EQUALS):
            return present and labels[self.key] in self.values
        if self.operator in (NOT_IN, NOT_EQUALS):
            return not present or labels[self.key] not in self.values
        if self.operator == EXISTS:
            return present
        if self.operator == DOES_NOT_EXIST:
            return not present
        # Gt / Lt: both sides must be integers, else no match (kube logs and says no).
        if not present:
            return False
        try:
            have, want = int(labels[self.key]), int(self.values[0])
        except ValueError:
            return False
        return have > want if self.operator == GREATER_THAN else have < want

    def __str__(self) -> str:
        if self.operator == EXISTS:
            return self.key
        if self.operator == DOES_NOT_EXIST:
            return f"!{self.key}"
        if self.operator in (IN, NOT_IN):
            return f"{self.key} {self.operator} ({','.join(sorted(self.values))})"
        if self.operator == GREATER_THAN:
            return f"{self.key}>{self.values[0]}"
        if self.operator == LESS_THAN:
            return f"{self.key}<{self.values[0]}"
        return f"{self.key}{self.operator}{self.values[0]}"


def _requirement(key: str, operator: str, values: tuple[str, ...]) -> Requirement:
    """Build a requirement, with kube's checks on the key, the values and their number."""
    problems = names.qualified_name(key)
    if problems:
        raise ValueError(f"invalid label key {key!r}: {'; '.join(problems)}")
    if operator in (IN, NOT_IN) and not values:
        raise ValueError(f"for 'in' and 'notin' operators the set of values can't be empty (key {key!r})")
    if operator in (EQUALS, DOUBLE_EQUALS, NOT_EQUALS) and len(values) != 1:
        raise ValueError(f"exact-match operators need exactly one value (key {key!r})")
    if operator in (EXISTS, DOES_NOT_EXIST) and values:
        raise ValueError(f"values must be empty for exists and does-not-exist operators (key {key!r})")
    if operator in (GREATER_THAN, LESS_THAN):
        if len(values) != 1:
            raise ValueError(f"'gt' and 'lt' operators need exactly one value (key {key!r})")
        try:
            int(values[0])
        except ValueError:
            raise ValueError(f"for 'gt' and 'lt' operators the value must be an integer, "
                             f"not {values[0]!r} (key {key!r})") from None
    else:
        for v in values:
            problems = names.label_value(v)
            if problems:
                raise ValueError(f"invalid label value {v!r} for key {key!r}: {'; '.join(problems)}")
    return Requirement(key, operator, tuple(sorted(set(values))) if operator in (IN, NOT_IN) else values)


# -- the label selector lexer --------------------------------------------------

_SPECIAL = "!=,()<>"
_IDENT, _END = "identifier", "end of string"


def _tokens(text: str) -> Iterator[tuple[str, str]]:
    """(kind, text) pairs; kind is the operator text for operators, or _IDENT / _END."""
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c.isspace():
            i += 1
            continue
        two = text[i:i + 2]
        if two in ("==", "!="):
            yield two, two
            i += 2
        elif c in _SPECIAL:
            yield c, c
            i += 1
        else:
            j = i
            while j < n and not text[j].isspace() and text[j] not in _SPECIAL:
                j += 1
            yield _IDENT, text[i:j]
            i = j
    yield _END, ""


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.toks = list(_tokens(text))
        self.pos = 0

    def peek(self) -> tuple[str, str]:
        return self.toks[self.pos]

    def take(self) -> tuple[str, str]:
        tok = self.toks[self.pos]
        if tok[0] != _END:
            self.pos += 1
        return tok

    def fail(self, found: str, expected: str) -> ValueError:
        shown = found if found else "end of string"
        return ValueError(f"unable to parse label selector {self.text!r}: found {shown!r}, expected: {expected}")

    def parse(self) -> list[Requirement]:
        reqs: list[Requirement] = []
        if self.peek()[0] == _END:
            return reqs
        while True:
            reqs.append(self.requirement())
            kind, lit = self.take()
            if kind == _END:
                return reqs
            if kind != ",":
                raise self.fail(lit, "',' or 'end of string'")
            if self.peek()[0] not in (_IDENT, "!"):
                raise self.fail(self.peek()[1], "identifier after ','")

    def requirement(self) -> Requirement:
        kind, lit = self.take()
        negated = kind == "!"
        if negated:
            kind, lit = self.take()
        if kind != _IDENT:
            raise self.fail(lit, "!, identifier, or 'end of string'")
        key = lit
        nxt = self.peek()[0]
        if nxt in (_END, ","):
            return _requirement(key, DOES_NOT_EXIST if negated else EXISTS, ())
        if negated:
            raise self.fail(self.peek()[1], "',' or 'end of string' after '!key'")
        kind, lit = self.take()
        if kind == _IDENT and lit in (IN, NOT_IN):
            return _requirement(key, lit, self.value_set())
        if kind in (EQUALS, DOUBLE_EQUALS, NOT_EQUALS):
            return _requirement(key, kind, (self.exact_value(),))
        if kind in (">", "<"):
            vkind, value = self.take()
            if vkind != _IDENT:
                raise self.fail(value, "a number")
            return _requirement(key, GREATER_THAN if kind == ">" else LESS_THAN, (value,))
        raise self.fail(lit, "'=', '==', '!=', 'in', 'notin', '>' or '<'")

    def exact_value(self) -> str:
        # 'key=' with nothing after it means the empty value, as in kube.
        kind, lit = self.peek()
        if kind in (_END, ","):
            return ""
        if kind != _IDENT:
            raise self.fail(lit, "a value")
        self.take()
        return lit

    def value_set(self) -> tuple[str, ...]:
        kind, lit = self.take()
        if kind != "(":
            raise self.fail(lit, "'('")
        values: list[str] = []
        expect_value = True
        while True:
            kind, lit = self.take()
            if kind == ")":
                if values and expect_value:
                    values.append("")  # 'in (a,)' holds the empty value, as in kube
                return tuple(values)
            if expect_value and kind == _IDENT:
                values.append(lit)
                expect_value = False
            elif kind == ",":
                if expect_value:
                    values.append("")
                expect_value = True
            else:
                raise self.fail(lit, "a value, ',' or ')'")


class LabelSelector:
    """A conjunction of label requirements."""

    __slots__ = ("_nothing", "requirements")

    def __init__(self, requirements: tuple[Requirement, ...] = (), nothing: bool = False) -> None:
        self.requirements = tuple(sorted(requirements, key=lambda r: r.key))
        self._nothing = nothing

    @classmethod
    def parse(cls, text: str) -> LabelSelector:
        return cls(tuple(_Parser(text).parse()))

    @classmethod
    def everything(cls) -> LabelSelector:
        return cls()

    @classmethod
    def nothing(cls) -> LabelSelector:
        return cls(nothing=True)

    @classmethod
    def from_labels(cls, labels: Mapping[str, str]) -> LabelSelector:
        """The selector of a plain map (a Service's spec.selector): every pair must be present."""
        return cls(tuple(_requirement(str(k), EQUALS, (str(v),)) for k, v in labels.items()))

    @classmethod
    def from_object(cls, sel: dict[str, Any] | None) -> LabelSelector:
        """A metav1.LabelSelector: None selects nothing, {} selects everything."""
        if sel is None:
            return cls.nothing()
        if not isinstance(sel, dict):
            raise ValueError("a label selector must be an object with matchLabels and matchExpressions")
        reqs: list[Requirement] = []
        match_labels = sel.get("matchLabels") or {}
        if not isinstance(match_labels, dict):
            raise ValueError("matchLabels must be a map of strings")
        for k, v in match_labels.items():
            if not isinstance(v, str):
                raise ValueError(f"matchLabels value for {k!r} must be a string")
            reqs.append(_requirement(str(k), EQUALS, (v,)))
        exprs = sel.get("matchExpressions") or []
        if not isinstance(exprs, list):
            raise ValueError("matchExpressions must be a list")
        operators = {"In": IN, "NotIn": NOT_IN, "Exists": EXISTS, "DoesNotExist": DOES_NOT_EXIST}
        for e in exprs:
            if not isinstance(e, dict):
                raise ValueError("each matchExpressions entry must be an object")
            op = e.get("operator")
            if op not in operators:
                raise ValueError(f"{op!r} is not a valid label selector operator "
                                 "(In, NotIn, Exists, DoesNotExist)")
            values = e.get("values") or []
            if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
                raise ValueError("matchExpressions values must be a list of strings")
            reqs.append(_requirement(str(e.get("key") or ""), operators[op], tuple(values)))
        return cls(tuple(reqs))

    def matches(self, labels: Mapping[str, str] | None) -> bool:
        if self._nothing:
            return False
        labels = labels or {}
        return all(r.matches(labels) for r in self.requirements)

    def empty(self) -> bool:
        """True when the selector has no requirements and so matches everything."""
        return not self._nothing and not self.requirements

    def __str__(self) -> str:
        return ",".join(str(r) for r in self.requirements)

    def __repr__(self) -> str:
        return "LabelSelector(<nothing>)" if self._nothing else f"LabelSelector({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, LabelSelector) and self._nothing == other._nothing
                and self.requirements == other.requirements)

    def __hash__(self) -> int:
        return hash((self._nothing, self.requirements))


# -- field selectors -----------------------------------------------------------

FieldGetter = Callable[[dict[str, Any]], str]


def _path(*keys: str, zero: str = "") -> FieldGetter:
    def get(obj: dict[str, Any]) -> str:
        cur: Any = obj
        for k in keys:
            if not isinstance(cur, dict):
                return zero
            cur = cur.get(k)
        if cur is None:
            return zero
        if isinstance(cur, bool):
            return "true" if cur else "false"
        return str(cur)

    return get


def _pod_ips(obj: dict[str, Any]) -> str:
    ips = (obj.get("status") or {}).get("podIPs") or []
    return ",".join(str(p.get("ip", "")) for p in ips if isinstance(p, dict))


_COMMON: dict[str, FieldGetter] = {
    "metadata.name": _path("metadata", "name"),
    "metadata.namespace": _path("metadata", "namespace"),
}

# Per kind, beyond metadata.name and metadata.namespace: what kube-apiserver's field-label
# conversion functions accept for that resource.
_FIELDS: dict[str, dict[str, FieldGetter]] = {
    "Pod": {
        "spec.nodeName": _path("spec", "nodeName"),
        "spec.restartPolicy": _path("spec", "restartPolicy"),
        "spec.schedulerName": _path("spec", "schedulerName"),
        "spec.serviceAccountName": _path("spec", "serviceAccountName"),
        "spec.hostNetwork": _path("spec", "hostNetwork", zero="false"),
        "status.phase": _path("status", "phase"),
        "status.podIP": _path("status", "podIP"),
        "status.podIPs": _pod_ips,
        "status.nominatedNodeName": _path("status", "nominatedNodeName"),
    },
    "Event": {
        **{f"involvedObject.{f}": _path("involvedObject", f) for f in (
            "kind", "namespace", "name", "uid", "apiVersion", "resourceVersion", "fieldPath")},
        "reason": _path("reason"),
        "reportingComponent": _path("reportingComponent"),
        "source": _path("source", "component"),
        "type": _path("type"),
    },
    "Secret": {"type": _path("type")},
    "Namespace": {"status.phase": _path("status", "phase")},
    "Node": {"spec.unschedulable": _path("spec", "unschedulable", zero="false")},
    "ReplicaSet": {"status.replicas": _path("status", "replicas", zero="0")},
    "Service": {"spec.clusterIP": _path("spec", "clusterIP"), "spec.type": _path("spec", "type")},
}


def supported_fields(info: ResourceInfo) -> tuple[str, ...]:
    return (*_COMMON, *_FIELDS.get(info.kind, {}))


@dataclass(frozen=True, slots=True)
class _FieldTerm:
    field: str
    equal: bool
    value: str
    get: FieldGetter


def _split_unescaped(text: str, sep: str) -> list[str]:
    """Split on sep where it is not escaped by a backslash; escapes stay in the parts."""
    parts, cur, i = [], [], 0
    while i < len(text):
        c = text[i]
        if c == "\\" and i + 1 < len(text):
            cur.append(text[i:i + 2])
            i += 2
            continue
        if c == sep:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(c)
        i += 1
    parts.append("".join(cur))
    return parts


def _unescape(value: str) -> str:
    out, i = [], 0
    while i < len(value):
        c = value[i]
        if c == "\\":
            if i + 1 >= len(value) or value[i + 1] not in "\\,=!":
                raise ValueError(f"invalid field selector value {value!r}: bad escape")
            out.append(value[i + 1])
            i += 2
            continue
        if c in ",=":
            raise ValueError(f"invalid field selector value {value!r}: unescaped {c!r}")
        out.append(c)
        i += 1
    return "".join(out)


class FieldSelector:
    """A conjunction of field (in)equalities over a resource's supported fields."""

    __slots__ = ("terms",)

    def __init__(self, terms: tuple[_FieldTerm, ...]) -> None:
        self.terms = terms

    @classmethod
    def parse(cls, text: str, info: ResourceInfo) -> FieldSelector:
        fields = {**_COMMON, **_FIELDS.get(info.kind, {})}
        terms: list[_FieldTerm] = []
        if not text.strip():
            return cls(())
        for part in _split_unescaped(text, ","):
            term = part.strip()
            if not term:
                raise ValueError(f"invalid field selector {text!r}: empty term")
            idx, op = _find_operator(term)
            if idx < 0:
                raise ValueError(f"invalid field selector {text!r}: {term!r} is not field=value or field!=value")
            name, value = term[:idx].strip(), term[idx + len(op):].strip()
            if name not in fields:
                raise ValueError(f"field label not supported: {name}")
            terms.append(_FieldTerm(name, op != "!=", _unescape(value), fields[name]))
        return cls(tuple(terms))

    def matches(self, obj: dict[str, Any]) -> bool:
        return all((t.get(obj) == t.value) == t.equal for t in self.terms)

    def empty(self) -> bool:
        return not self.terms

    def requires(self, field: str) -> str | None:
        """The value an equality term demands of field, if any (lets a store narrow a scan)."""
        for t in self.terms:
            if t.field == field and t.equal:
                return t.value
        return None

    def __str__(self) -> str:
        return ",".join(f"{t.field}{'=' if t.equal else '!='}{t.value}" for t in self.terms)

    def __repr__(self) -> str:
        return f"FieldSelector({str(self)!r})"


def _find_operator(term: str) -> tuple[int, str]:
    """The first unescaped operator, scanning left to right ('!=' and '==' before '=' at one place)."""
    i = 0
    while i < len(term):
        if term[i] == "\\":
            i += 2
            continue
        for op in ("!=", "==", "="):
            if term.startswith(op, i):
                return i, op
        i += 1
    return -1, ""
