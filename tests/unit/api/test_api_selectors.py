"""Label and field selectors: kube's syntax, matching rules and parse errors."""

from __future__ import annotations

from typing import Any

import pytest

from netplane.api.resources import lookup
from netplane.api.selectors import FieldSelector, LabelSelector

PODS = lookup("", "v1", "pods")
NODES = lookup("", "v1", "nodes")
EVENTS = lookup("", "v1", "events")
SECRETS = lookup("", "v1", "secrets")
REPLICASETS = lookup("apps", "v1", "replicasets")
CONFIGMAPS = lookup("", "v1", "configmaps")
NAMESPACES = lookup("", "v1", "namespaces")
assert PODS and NODES and EVENTS and SECRETS and REPLICASETS and CONFIGMAPS and NAMESPACES

WEB = {"app": "web", "tier": "frontend", "version": "3"}
DB = {"app": "db", "tier": "backend"}
BARE: dict[str, str] = {}

# selector text -> (matches WEB, matches DB, matches BARE)
LABEL_CASES: list[tuple[str, tuple[bool, bool, bool]]] = [
    ("", (True, True, True)),
    ("app=web", (True, False, False)),
    ("app==web", (True, False, False)),
    ("app!=web", (False, True, True)),  # != also matches objects without the label
    ("app in (web,db)", (True, True, False)),
    ("app in (web, cache)", (True, False, False)),
    ("app notin (web)", (False, True, True)),
    ("tier", (True, True, False)),
    ("!tier", (False, False, True)),
    ("app=web,tier=frontend", (True, False, False)),
    ("app=web,tier=backend", (False, False, False)),
    ("  app = web ,  tier  ", (True, False, False)),
    ("version>2", (True, False, False)),
    ("version<3", (False, False, False)),
    ("app.kubernetes.io/name!=x", (True, True, True)),
    ("app=", (False, False, False)),  # the empty value: only a label "app" with value "" matches
]


@pytest.mark.parametrize(("text", "expected"), LABEL_CASES, ids=[c[0] or "<empty>" for c in LABEL_CASES])
def test_label_selector_matching(text: str, expected: tuple[bool, bool, bool]) -> None:
    sel = LabelSelector.parse(text)
    assert (sel.matches(WEB), sel.matches(DB), sel.matches(BARE)) == expected


def test_empty_value_matches_empty_label() -> None:
    assert LabelSelector.parse("app=").matches({"app": ""})
    assert LabelSelector.parse("app in (a,)").matches({"app": ""})


def test_empty_selector_is_empty() -> None:
    assert LabelSelector.parse("").empty()
    assert LabelSelector.parse("   ").empty()
    assert not LabelSelector.parse("app").empty()


@pytest.mark.parametrize("text", [
    "app in ()",           # empty set
    "app in (a",           # unclosed
    "app in a",            # no parentheses
    "app=web,",            # dangling comma
    ",app=web",
    "app=web tier=x",      # missing comma
    "app=(web)",
    "!app=web",
    "app >",
    "version>x",           # gt needs an integer
    "bad key=web",
    "app=bad value!",
    "-app=web",            # invalid key
    "app=" + "v" * 64,     # value too long
    "app === web",
    "app in (a b)",
])
def test_label_selector_parse_errors(text: str) -> None:
    with pytest.raises(ValueError) as e:
        LabelSelector.parse(text)
    assert str(e.value)


def test_label_selector_str_is_canonical_and_reparses() -> None:
    sel = LabelSelector.parse("tier notin (b,a), app=web, !gone, has")
    assert str(sel) == "app=web,!gone,has,tier notin (a,b)"
    assert LabelSelector.parse(str(sel)) == sel


def test_from_object_match_labels_and_expressions() -> None:
    sel = LabelSelector.from_object({
        "matchLabels": {"app": "web"},
        "matchExpressions": [
            {"key": "tier", "operator": "In", "values": ["frontend", "edge"]},
            {"key": "canary", "operator": "DoesNotExist"},
            {"key": "version", "operator": "Exists"},
            {"key": "zone", "operator": "NotIn", "values": ["b"]},
        ],
    })
    assert sel.matches(WEB)
    assert not sel.matches({**WEB, "canary": "yes"})
    assert not sel.matches({**WEB, "zone": "b"})
    assert not sel.matches({"app": "web", "tier": "frontend"})  # no version label


def test_from_object_none_selects_nothing_and_empty_everything() -> None:
    nothing = LabelSelector.from_object(None)
    assert not nothing.matches(WEB) and not nothing.matches(BARE)
    assert not nothing.empty()
    everything = LabelSelector.from_object({})
    assert everything.matches(WEB) and everything.matches(BARE) and everything.empty()


@pytest.mark.parametrize("sel", [
    {"matchExpressions": [{"key": "app", "operator": "Equals", "values": ["x"]}]},
    {"matchExpressions": [{"key": "app", "operator": "In", "values": []}]},
    {"matchExpressions": [{"key": "app", "operator": "Exists", "values": ["x"]}]},
    {"matchExpressions": [{"key": "bad key", "operator": "Exists"}]},
    {"matchLabels": {"app": 3}},
    {"matchLabels": ["app"]},
    {"matchExpressions": {"key": "app"}},
])
def test_from_object_errors(sel: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        LabelSelector.from_object(sel)


def test_from_labels_is_a_service_selector() -> None:
    sel = LabelSelector.from_labels({"app": "web", "tier": "frontend"})
    assert sel.matches(WEB) and not sel.matches(DB)


# -- field selectors -------------------------------------------------------------

POD = {
    "metadata": {"name": "web-1", "namespace": "shop"},
    "spec": {"nodeName": "node-a", "restartPolicy": "Always", "schedulerName": "default-scheduler"},
    "status": {"phase": "Running", "podIP": "10.244.1.5", "podIPs": [{"ip": "10.244.1.5"}]},
}
PENDING_POD = {"metadata": {"name": "web-2", "namespace": "shop"}, "spec": {}, "status": {"phase": "Pending"}}

FIELD_CASES: list[tuple[str, bool, bool]] = [
    ("", True, True),
    ("metadata.name=web-1", True, False),
    ("metadata.name==web-1", True, False),
    ("metadata.name!=web-1", False, True),
    ("metadata.namespace=shop", True, True),
    ("spec.nodeName=node-a", True, False),
    ("spec.nodeName=", False, True),  # a missing field compares as ""
    ("spec.nodeName!=", True, False),
    ("status.phase!=Running,status.phase!=Succeeded", False, True),
    ("status.podIP=10.244.1.5", True, False),
    ("status.podIPs=10.244.1.5", True, False),
    ("spec.restartPolicy=Always", True, False),
    ("spec.schedulerName=default-scheduler", True, False),
    ("spec.hostNetwork=false", True, True),  # an absent boolean is "false", as kube renders it
    (" metadata.name = web-1 ", True, False),
]


@pytest.mark.parametrize(("text", "running", "pending"), FIELD_CASES, ids=[c[0] or "<empty>" for c in FIELD_CASES])
def test_field_selector_on_pods(text: str, running: bool, pending: bool) -> None:
    assert PODS is not None
    sel = FieldSelector.parse(text, PODS)
    assert (sel.matches(POD), sel.matches(PENDING_POD)) == (running, pending)


def test_field_selector_unsupported_field_names_it() -> None:
    assert PODS is not None and CONFIGMAPS is not None
    with pytest.raises(ValueError, match=r"^field label not supported: spec\.foo$"):
        FieldSelector.parse("metadata.name=x,spec.foo=bar", PODS)
    # Pod fields are not fields of other kinds.
    with pytest.raises(ValueError, match=r"field label not supported: spec\.nodeName"):
        FieldSelector.parse("spec.nodeName=a", CONFIGMAPS)


@pytest.mark.parametrize("text", ["metadata.name", "metadata.name=a,,x=y", "=x", "metadata.name=a=b",
                                  "metadata.name=a\\q"])
def test_field_selector_syntax_errors(text: str) -> None:
    assert PODS is not None
    with pytest.raises(ValueError):
        FieldSelector.parse(text, PODS)


def test_field_selector_escapes() -> None:
    assert CONFIGMAPS is not None
    sel = FieldSelector.parse(r"metadata.name=a\,b\=c", CONFIGMAPS)
    assert sel.matches({"metadata": {"name": "a,b=c"}})
    assert not sel.matches({"metadata": {"name": "a"}})


def test_field_selectors_per_kind() -> None:
    assert EVENTS and SECRETS and NODES and REPLICASETS and NAMESPACES
    event = {
        "metadata": {"name": "web.1", "namespace": "shop"},
        "involvedObject": {"kind": "Pod", "name": "web-1", "namespace": "shop", "uid": "u1",
                           "apiVersion": "v1", "resourceVersion": "7", "fieldPath": "spec.containers{web}"},
        "reason": "Started", "source": {"component": "kubelet"}, "type": "Normal",
    }
    text = ("involvedObject.kind=Pod,involvedObject.name=web-1,involvedObject.namespace=shop,"
            "involvedObject.uid=u1,involvedObject.apiVersion=v1,involvedObject.resourceVersion=7,"
            "involvedObject.fieldPath=spec.containers{web},reason=Started,source=kubelet,type=Normal")
    assert FieldSelector.parse(text, EVENTS).matches(event)
    assert not FieldSelector.parse("type=Warning", EVENTS).matches(event)
    assert FieldSelector.parse("type=kubernetes.io/tls", SECRETS).matches({"type": "kubernetes.io/tls"})
    assert FieldSelector.parse("spec.unschedulable=false", NODES).matches({"spec": {}})
    assert FieldSelector.parse("spec.unschedulable=true", NODES).matches({"spec": {"unschedulable": True}})
    assert FieldSelector.parse("status.replicas=0", REPLICASETS).matches({"status": {}})
    assert FieldSelector.parse("status.replicas!=0", REPLICASETS).matches({"status": {"replicas": 3}})
    assert FieldSelector.parse("status.phase=Active", NAMESPACES).matches({"status": {"phase": "Active"}})
    with pytest.raises(ValueError, match="field label not supported: type"):
        FieldSelector.parse("type=Opaque", CONFIGMAPS)


def test_cluster_scoped_namespace_is_empty() -> None:
    assert NODES is not None
    assert FieldSelector.parse("metadata.namespace=", NODES).matches({"metadata": {"name": "n1"}})
