"""The verbs' dispatcher without a kernel: env and config errors, VERSION, the IPAM plugin,
and the fast path (socket server) giving the same answers as the in-process path."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from netplane.cni import main as cnimain
from netplane.cni.plugin import PLUGIN_IPAM, dispatch, parse_cni_args
from netplane.cni.service import CNIService, decode_request


def stdin(**over: Any) -> bytes:
    raw: dict[str, Any] = {"cniVersion": "1.0.0", "name": "net1", "type": "netplane",
                           "ipam": {"type": "netplane-ipam", "subnet": "10.1.0.0/24"}}
    raw.update(over)
    return json.dumps(raw).encode()


ENV = {"CNI_CONTAINERID": "ctr1", "CNI_NETNS": "/run/netns/nope", "CNI_IFNAME": "eth0", "CNI_PATH": "/nowhere"}


def run(env: dict[str, str], data: bytes, plugin: str = "bridge") -> tuple[int, dict[str, Any] | None]:
    resp = dispatch(env, data, plugin=plugin)
    return resp.exit_code, (json.loads(resp.stdout) if resp.stdout else None)


def test_version_needs_nothing() -> None:
    code, out = run({"CNI_COMMAND": "VERSION"}, b"")
    assert code == 0 and out is not None and "1.1.0" in out["supportedVersions"]


@pytest.mark.parametrize("env,data,code", [
    ({"CNI_COMMAND": "FROB"}, stdin(), 4),
    ({}, stdin(), 4),
    ({**ENV, "CNI_COMMAND": "ADD", "CNI_CONTAINERID": ""}, stdin(), 4),
    ({**ENV, "CNI_COMMAND": "ADD", "CNI_NETNS": ""}, stdin(), 4),
    ({**ENV, "CNI_COMMAND": "ADD", "CNI_NETNS": "relative"}, stdin(), 4),
    ({**ENV, "CNI_COMMAND": "ADD", "CNI_IFNAME": "way-too-long-name0"}, stdin(), 4),
    ({**ENV, "CNI_COMMAND": "ADD", "CNI_CONTAINERID": "../x"}, stdin(), 4),
    ({**ENV, "CNI_COMMAND": "ADD", "CNI_ARGS": "novalue"}, stdin(), 4),
    ({**ENV, "CNI_COMMAND": "ADD", "CNI_PATH": ""}, stdin(), 4),
    ({**ENV, "CNI_COMMAND": "ADD"}, b"not json", 6),
    ({**ENV, "CNI_COMMAND": "ADD"}, stdin(cniVersion="0.2.0"), 1),
    ({**ENV, "CNI_COMMAND": "CHECK"}, stdin(cniVersion="0.3.1"), 1),
    ({"CNI_COMMAND": "GC"}, stdin(cniVersion="1.0.0"), 1),
    ({"CNI_COMMAND": "STATUS"}, stdin(cniVersion="1.0.0"), 1),
    ({**ENV, "CNI_COMMAND": "ADD"}, stdin(ipam={"type": "netplane-ipam"}), 7),
    ({**ENV, "CNI_COMMAND": "ADD"}, stdin(vlan=5), 2),
    ({**ENV, "CNI_COMMAND": "CHECK"}, stdin(), 7),  # no prevResult
    ({"CNI_COMMAND": "GC"}, stdin(cniVersion="1.1.0"), 7),  # no valid-attachments
])
def test_errors_have_the_spec_shape_and_code(env: dict[str, str], data: bytes, code: int) -> None:
    exit_code, out = run(env, data)
    assert exit_code == 1 and out is not None
    assert out["code"] == code and out["msg"]
    assert out["cniVersion"] in ("1.0.0", "1.1.0", "0.3.1")


def test_error_is_in_the_configs_version() -> None:
    _, out = run({**ENV, "CNI_COMMAND": "CHECK"}, stdin(cniVersion="0.3.1"))
    assert out is not None and out["cniVersion"] == "0.3.1"


def test_missing_netns_on_add_is_code_3() -> None:
    _, out = run({**ENV, "CNI_COMMAND": "ADD"}, stdin())
    assert out is not None and out["code"] == 3


def test_cni_args() -> None:
    assert parse_cni_args("IgnoreUnknown=1;K8S_POD_NAME=web;IP=10.1.0.5") == {
        "IgnoreUnknown": "1", "K8S_POD_NAME": "web", "IP": "10.1.0.5"}
    assert parse_cni_args("") == {}


# -- the IPAM plugin (type netplane-ipam): no kernel involved -----------------------


def ipam_stdin(data_dir: Path, version: Any = "1.1.0", **over: Any) -> bytes:
    return stdin(cniVersion=version, ipam={"type": "netplane-ipam", "subnet": "10.1.0.0/29",
                                           "dataDir": str(data_dir), "routes": [{"dst": "0.0.0.0/0"}]}, **over)


def test_ipam_plugin_add_del_check_gc_status(tmp_path: Path) -> None:
    env = dict(ENV)
    code, out = run({**env, "CNI_COMMAND": "ADD"}, ipam_stdin(tmp_path), PLUGIN_IPAM)
    assert code == 0 and out == {"cniVersion": "1.1.0", "ips": [{"address": "10.1.0.2/29", "gateway": "10.1.0.1"}],
                                 "routes": [{"dst": "0.0.0.0/0"}], "dns": {}}
    assert run({**env, "CNI_COMMAND": "CHECK", "CNI_NETNS": "/x"}, ipam_stdin(tmp_path, prevResult=out),
               PLUGIN_IPAM) == (0, None)
    assert run({"CNI_COMMAND": "STATUS"}, ipam_stdin(tmp_path), PLUGIN_IPAM) == (0, None)
    # GC with an empty valid list collects the reservation.
    gc = ipam_stdin(tmp_path, **{"cni.dev/valid-attachments": []})
    assert run({"CNI_COMMAND": "GC"}, gc, PLUGIN_IPAM) == (0, None)
    assert not (tmp_path / "net1" / "10.1.0.2").exists()
    code, out = run({**env, "CNI_COMMAND": "CHECK", "CNI_NETNS": "/x"}, ipam_stdin(tmp_path, prevResult={
        "ips": [{"address": "10.1.0.2/29"}]}), PLUGIN_IPAM)
    assert code == 1 and out is not None and out["code"] == 105
    # DEL of something already gone succeeds.
    assert run({**env, "CNI_COMMAND": "DEL"}, ipam_stdin(tmp_path), PLUGIN_IPAM) == (0, None)


def test_gc_keeps_valid_attachments(tmp_path: Path) -> None:
    env = dict(ENV)
    for cid in ("keep", "drop"):
        assert run({**env, "CNI_COMMAND": "ADD", "CNI_CONTAINERID": cid}, ipam_stdin(tmp_path), PLUGIN_IPAM)[0] == 0
    gc = ipam_stdin(tmp_path, **{"cni.dev/valid-attachments": [{"containerID": "keep", "ifname": "eth0"}]})
    assert run({"CNI_COMMAND": "GC"}, gc, PLUGIN_IPAM) == (0, None)
    owners = {p.read_bytes() for p in (tmp_path / "net1").iterdir() if p.name.startswith("10.")}
    assert owners == {b"keep\r\neth0"}


def test_status_50_when_exhausted_or_unwritable(tmp_path: Path) -> None:
    env = dict(ENV)
    for n in range(5):  # a /29 has 5 addresses besides the gateway
        assert run({**env, "CNI_COMMAND": "ADD", "CNI_CONTAINERID": f"c{n}"}, ipam_stdin(tmp_path), PLUGIN_IPAM)[0] == 0
    code, out = run({"CNI_COMMAND": "STATUS"}, ipam_stdin(tmp_path), PLUGIN_IPAM)
    assert code == 1 and out is not None and out["code"] == 50
    (tmp_path / "afile").write_text("")
    code, out = run({"CNI_COMMAND": "STATUS"}, ipam_stdin(tmp_path / "afile"), PLUGIN_IPAM)
    assert code == 1 and out is not None and out["code"] == 50


def test_result_shape_follows_the_requested_version(tmp_path: Path) -> None:
    env = {**ENV, "CNI_COMMAND": "ADD"}
    _, out = run(env, ipam_stdin(tmp_path, version="0.3.1"), PLUGIN_IPAM)
    assert out is not None and out["cniVersion"] == "0.3.1" and out["ips"][0]["version"] == "4"


# -- fast path --------------------------------------------------------------------


@pytest.fixture
def service(tmp_path: Path) -> Iterator[str]:
    path = str(tmp_path / "sock" / "cni.sock")
    svc = CNIService(path, workers=4)
    svc.start()
    try:
        yield path
    finally:
        svc.stop()
    assert not os.path.exists(path)


def test_request_wire_format_round_trips() -> None:
    data = cnimain.encode_request("ipam", {"CNI_COMMAND": "ADD", "X": "a=b"}, b'{"a": "\x00"}')
    plugin, env, net_id, nsfile, body = decode_request(data)
    assert (plugin, env["X"], body, nsfile) == ("ipam", "a=b", b'{"a": "\x00"}', "-")
    assert net_id == cnimain.file_id("/proc/self/ns/net")


def test_fast_path_and_in_process_give_identical_results(service: str, tmp_path: Path) -> None:
    env = {**ENV, "CNI_COMMAND": "ADD"}
    fast = cnimain.forward(service, "ipam", {**env, "CNI_CONTAINERID": "fast"}, ipam_stdin(tmp_path / "a"))
    slow = dispatch({**env, "CNI_CONTAINERID": "slow"}, ipam_stdin(tmp_path / "b"), plugin="ipam")
    assert fast == (slow.exit_code, slow.stdout)
    assert (tmp_path / "a" / "net1" / "10.1.0.2").read_bytes() == b"fast\r\neth0"
    # Errors too.
    bad = cnimain.forward(service, "ipam", {**env, "CNI_COMMAND": "ADD"}, b"{")
    assert bad == (1, dispatch(env, b"{", plugin="ipam").stdout)


def test_no_server_means_in_process(tmp_path: Path) -> None:
    assert cnimain.forward(str(tmp_path / "missing.sock"), "ipam", {}, b"") is None
    assert cnimain.forward("", "ipam", {}, b"") is None
    env = {**ENV, "CNI_COMMAND": "ADD", "NETPLANE_CNI_SOCKET": str(tmp_path / "missing.sock")}
    code, out = cnimain.run("ipam", env, ipam_stdin(tmp_path))
    assert code == 0 and json.loads(out)["ips"][0]["address"] == "10.1.0.2/29"


def test_server_declines_a_caller_whose_netns_file_differs(service: str, tmp_path: Path) -> None:
    env = {**ENV, "CNI_NETNS": str(tmp_path / "gone-on-server"), "CNI_COMMAND": "DEL"}
    data = cnimain.encode_request("ipam", env, ipam_stdin(tmp_path)).replace(b"nsfile=-", b"nsfile=1:2")
    import socket

    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(service)
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        assert s.recv(100).startswith(b"DECLINE")


def test_socket_path_choice() -> None:
    assert cnimain.socket_path({"NETPLANE_CNI_SOCKET": ""}, b'{"agentSocket": "/x"}') == ""
    assert cnimain.socket_path({}, b'{"agentSocket": "/x"}') == "/x"
    assert cnimain.socket_path({}, b"{}") == cnimain.DEFAULT_SOCKET
