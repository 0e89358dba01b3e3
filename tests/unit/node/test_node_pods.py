"""The lab runtime's pure decisions: image mapping, env, resolv.conf, restarts, status, sync."""

from __future__ import annotations

from typing import Any

import pytest

from netplane.node import pods as P


@pytest.mark.parametrize(("image", "name"), [
    ("nginx", "nginx"), ("nginx:1.25", "nginx"), ("docker.io/library/nginx:1.25", "library/nginx"),
    ("registry.k8s.io/e2e-test-images/agnhost:2.47", "e2e-test-images/agnhost"),
    ("localhost:5000/busybox@sha256:abc", "busybox"), ("hashicorp/http-echo", "hashicorp/http-echo"),
])
def test_image_name_ignores_registry_tag_and_digest(image: str, name: str) -> None:
    assert P.image_name(image) == name


def test_echo_images_serve_http_on_declared_ports() -> None:
    plan = P.plan_container({"name": "web", "image": "netplane/echo-server",
                             "ports": [{"containerPort": 8080}, {"containerPort": 9090},
                                       {"containerPort": 5353, "protocol": "UDP"}]}, python="/py")
    assert plan.kind == "echo"
    assert plan.argv == ("/py", "-m", "netplane.node.echo", "--http-port", "8080", "--http-port", "9090",
                         "--udp-port", "5353")
    assert dict(plan.env)["NETPLANE_ECHO_HTTP_PORTS"] == "8080,9090"


@pytest.mark.parametrize(("container", "port"), [
    ({"image": "nginx"}, "80"),
    ({"image": "docker.io/library/httpd:2.4"}, "80"),
    ({"image": "hashicorp/http-echo", "args": ["-text=hi", "-listen=:5678"]}, "5678"),
    ({"image": "registry.k8s.io/e2e-test-images/agnhost:2.47", "args": ["netexec", "--http-port=9376"]}, "9376"),
])
def test_echo_images_use_their_usual_or_flagged_port(container: dict[str, Any], port: str) -> None:
    plan = P.plan_container({"name": "c", **container}, python="/py")
    assert plan.argv[3:] == ("--http-port", port)


def test_busybox_runs_the_command_with_busybox() -> None:
    plan = P.plan_container({"name": "c", "image": "busybox:1.36", "command": ["sh", "-c"], "args": ["sleep 1"]})
    assert plan.argv == ("/bin/busybox", "sh", "-c", "sleep 1")
    plan = P.plan_container({"name": "c", "image": "alpine", "command": ["/bin/sleep", "3600"]})
    assert plan.argv == ("/bin/busybox", "sleep", "3600")


def test_unsupported_images_without_command_fail_clearly() -> None:
    with pytest.raises(P.ImageNotSupported, match="needs the container's command"):
        P.plan_container({"name": "c", "image": "busybox"})
    with pytest.raises(P.ImageNotSupported, match="no lab mapping"):
        P.plan_container({"name": "c", "image": "redis:7"})
    plan = P.plan_container({"name": "c", "image": "redis:7", "command": ["/usr/bin/env"]})
    assert plan.argv == ("/usr/bin/env",) and plan.kind == "command"


POD = {"metadata": {"name": "web-1", "namespace": "shop", "uid": "u-1", "labels": {"app": "web"}},
       "spec": {"nodeName": "n1"}}


def test_container_env_has_service_env_downward_values_and_expansion() -> None:
    container = {"name": "c", "env": [
        {"name": "MY_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
        {"name": "URL", "value": "http://$(MY_IP):8080/$(NOPE)/$$x"},
        {"name": "POD_NAME", "value": "overridden"},
    ]}
    env = dict(P.container_env(POD, container, ["10.244.0.5"], "192.168.1.1", ("10.96.0.1", 443)))
    assert env["MY_IP"] == "10.244.0.5" and env["APP"] == "web"
    assert env["URL"] == "http://10.244.0.5:8080/$(NOPE)/$x"
    assert env["POD_NAME"] == "overridden" and env["POD_NAMESPACE"] == "shop" and env["POD_IP"] == "10.244.0.5"
    assert env["NODE_NAME"] == "n1"
    assert env["KUBERNETES_SERVICE_HOST"] == "10.96.0.1" and env["KUBERNETES_SERVICE_PORT"] == "443"
    assert env["KUBERNETES_PORT_443_TCP_ADDR"] == "10.96.0.1"


def test_unsupported_env_sources_are_named() -> None:
    with pytest.raises(ValueError, match="SECRET"):
        P.container_env(POD, {"env": [{"name": "SECRET", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}]},
                        [], "")


def test_resolv_conf_cluster_first() -> None:
    assert P.resolv_conf("shop") == (
        "nameserver 10.96.0.10\nsearch shop.svc.cluster.local svc.cluster.local cluster.local\noptions ndots:5\n")
    custom = P.resolv_conf("shop", dns_policy="None", dns_config={
        "nameservers": ["1.1.1.1"], "searches": ["example.com"], "options": [{"name": "ndots", "value": "2"},
                                                                            {"name": "edns0"}]})
    assert custom == "nameserver 1.1.1.1\nsearch example.com\noptions ndots:2 edns0\n"
    assert P.resolv_conf("shop", dns_policy="Default", host_resolv="nameserver 9.9.9.9\n") == "nameserver 9.9.9.9\n"


@pytest.mark.parametrize(("policy", "code", "restart"), [
    ("Always", 0, True), ("Always", 1, True), ("OnFailure", 0, False), ("OnFailure", 2, True),
    ("Never", 1, False), ("Never", 0, False),
])
def test_restart_policy(policy: str, code: int, restart: bool) -> None:
    assert P.should_restart(policy, code) is restart


def test_crash_loop_backoff_doubles_to_five_minutes() -> None:
    assert [P.restart_delay(n) for n in range(8)] == [0, 10, 20, 40, 80, 160, 300, 300]


def _view(*containers: P.ContainerView, sandbox: bool = True) -> P.PodView:
    return P.PodView(containers=list(containers), pod_ips=["10.244.0.5"] if sandbox else [],
                     host_ip="192.168.1.1", start_time="2024-01-01T00:00:00Z", sandbox_ready=sandbox)


def test_pod_phase() -> None:
    running = P.ContainerView("a", "x", running=True)
    done0 = P.ContainerView("a", "x", exit_code=0)
    done1 = P.ContainerView("a", "x", exit_code=1)
    backoff = P.ContainerView("a", "x", exit_code=1, waiting_reason="CrashLoopBackOff", last_exit_code=1)
    creating = P.ContainerView("a", "x")
    assert P.pod_phase(_view(creating, sandbox=False), "Always") == "Pending"
    assert P.pod_phase(_view(running), "Always") == "Running"
    assert P.pod_phase(_view(backoff), "Always") == "Running"
    assert P.pod_phase(_view(done0), "Never") == "Succeeded"
    assert P.pod_phase(_view(done1), "Never") == "Failed"
    assert P.pod_phase(_view(done1), "OnFailure") == "Running"
    assert P.pod_phase(_view(done0), "Always") == "Running"
    assert P.pod_phase(P.PodView(failed_reason="ImageNotSupported"), "Always") == "Failed"


def test_pod_status_shape() -> None:
    c = P.ContainerView("main", "nginx", restart_count=2, running=True, started_at="2024-01-01T00:00:05Z",
                        ready=True, last_exit_code=1, last_started_at="t0", last_finished_at="t1")
    st = P.pod_status({"spec": {}, "status": {}}, _view(c), "2024-01-01T00:00:09Z")
    assert st["phase"] == "Running" and st["podIP"] == "10.244.0.5" and st["podIPs"] == [{"ip": "10.244.0.5"}]
    conds = {x["type"]: x["status"] for x in st["conditions"]}
    assert conds == {"PodReadyToStartContainers": "True", "Initialized": "True", "Ready": "True",
                     "ContainersReady": "True", "PodScheduled": "True"}
    cs = st["containerStatuses"][0]
    assert cs["restartCount"] == 2 and cs["ready"] is True and cs["started"] is True
    assert cs["state"] == {"running": {"startedAt": "2024-01-01T00:00:05Z"}}
    assert cs["lastState"]["terminated"]["exitCode"] == 1


def test_pod_status_keeps_transition_times_and_reports_not_ready() -> None:
    c = P.ContainerView("main", "nginx", running=True, ready=False)
    first = P.pod_status({"spec": {}, "status": {}}, _view(c), "T1")
    later = P.pod_status({"spec": {}, "status": first}, _view(c), "T2")
    ready = next(x for x in later["conditions"] if x["type"] == "Ready")
    assert ready["status"] == "False" and ready["reason"] == "ContainersNotReady"
    assert ready["lastTransitionTime"] == "T1"


def test_waiting_container_status() -> None:
    c = P.ContainerView("main", "redis", waiting_reason="ImageNotSupported", waiting_message="no mapping")
    st = P.pod_status({"spec": {}}, P.PodView(containers=[c], failed_reason="ImageNotSupported",
                                              failed_message="no mapping"), "T")
    assert st["phase"] == "Failed" and st["reason"] == "ImageNotSupported"
    assert st["containerStatuses"][0]["state"] == {"waiting": {"reason": "ImageNotSupported",
                                                               "message": "no mapping"}}


def test_plan_sync() -> None:
    pods: dict[str, dict[str, Any]] = {
        "new": {"metadata": {}, "status": {"phase": "Pending"}},
        "running": {"metadata": {}},
        "deleting": {"metadata": {"deletionTimestamp": "T"}},
        "finished": {"metadata": {}, "status": {"phase": "Succeeded"}},
        "deleted-before-start": {"metadata": {"deletionTimestamp": "T"}},
    }
    plan = P.plan_sync(pods, {"running", "deleting", "orphan"})
    assert plan.start == ("new",)
    assert plan.terminate == ("deleting", "orphan")


def test_netns_name() -> None:
    assert P.netns_name("np-pod-", "1234abcd-ef01-...") == "np-pod-1234abcd"


# -- termination ---------------------------------------------------------------------------------


def test_terminating_pod_stays_ready_while_its_containers_are() -> None:
    """The kubelet keeps probing readiness during termination: Ready follows the containers, so the
    endpoint is serving (and terminating) through a preStop delay."""
    deleting = {"metadata": {"deletionTimestamp": "T"}, "spec": {}, "status": {}}
    st = P.pod_status(deleting, _view(P.ContainerView("main", "nginx", running=True, ready=True)), "T")
    assert next(x for x in st["conditions"] if x["type"] == "Ready")["status"] == "True"
    exited = P.ContainerView("main", "nginx", exit_code=0, ready=False)
    st = P.pod_status(deleting, _view(exited), "T")
    assert next(x for x in st["conditions"] if x["type"] == "Ready")["status"] == "False"


@pytest.mark.parametrize(("lifecycle", "kind", "detail"), [
    ({"preStop": {"sleep": {"seconds": 5}}}, "sleep", 5.0),
    ({"preStop": {"sleep": {"seconds": 0}}}, "sleep", 0.0),
    ({"preStop": {"exec": {"command": ["sh", "-c", "sleep 1"]}}}, "exec", ["sh", "-c", "sleep 1"]),
    ({"preStop": {"httpGet": {"path": "/drain", "port": 8080}}}, "httpGet", None),
])
def test_prestop_hook_parse(lifecycle: dict[str, Any], kind: str, detail: Any) -> None:
    hook = P.PreStopHook.parse({"name": "c", "lifecycle": lifecycle})
    assert hook is not None and hook.kind == kind
    if kind == "sleep":
        assert hook.sleep_seconds() == detail
    if kind == "exec":
        assert hook.command() == detail


def test_no_prestop_hook() -> None:
    assert P.PreStopHook.parse({"name": "c"}) is None
    assert P.PreStopHook.parse({"name": "c", "lifecycle": {"postStart": {"sleep": {"seconds": 1}}}}) is None


@pytest.mark.parametrize(("pre_stop", "message"), [
    ({"sleep": {"seconds": -1}}, "non-negative integer"),
    ({"sleep": {"seconds": "5"}}, "non-negative integer"),
    ({"sleep": {}}, "non-negative integer"),
    ({"exec": {"command": []}}, "no command"),
    ({"tcpSocket": {"port": 80}}, "no supported action"),
])
def test_prestop_hooks_the_runtime_cannot_run_are_named(pre_stop: dict[str, Any], message: str) -> None:
    with pytest.raises(P.HookError, match=message):
        P.PreStopHook.parse({"name": "c", "lifecycle": {"preStop": pre_stop}})


@pytest.mark.parametrize(("grace", "took", "left"), [
    (30, 0, 30),  # no hook: the whole grace period
    (30, 5, 25),  # a 5 s preStop sleep comes off it
    (10, 10, 2),  # a hook that used it all up: kubelet's 2 s floor
    (5, 9, 2),
    (0, 0, 2),  # even a zero grace period gives SIGTERM 2 s before SIGKILL (as the kubelet does)
    (1, 0, 2),
])
def test_stop_grace(grace: float, took: float, left: float) -> None:
    assert P.stop_grace(grace, took) == left
