"""The compiled launcher (no root): it must behave exactly like main.py's forwarding path.

It is exec'd the way a runtime execs the plugin, against fake agents on unix
sockets: what it sends must be byte for byte what main.py sends, what it prints
must be the agent's answer, and every case it cannot answer (no agent, a
declined call, an unreadable agentSocket, a lost agent) must end in the Python
plugin with the same outcome the Python executable has.
"""

from __future__ import annotations

import json
import os
import select
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from netplane.cni import install, launcher
from netplane.cni import main as cnimain
from netplane.cni.plugin import dispatch
from netplane.cni.service import decode_request

pytestmark = pytest.mark.prerequisite_missing(launcher.compiler() is None, reason="no C compiler")


class FakeAgent:
    """Answers every call with `reply` (None: read the request, then hang up without answering)."""

    def __init__(self, path: Path, reply: bytes | None = b"0\n{}\n") -> None:
        self.path = str(path)
        self.reply = reply
        self.requests: list[bytes] = []
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.bind(self.path)
        self._sock.listen(16)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            ready, _, _ = select.select([self._sock], [], [], 0.05)
            if not ready:
                continue
            conn, _ = self._sock.accept()
            with conn:
                conn.settimeout(10)
                chunks = []
                while chunk := conn.recv(65536):
                    chunks.append(chunk)
                self.requests.append(b"".join(chunks))
                if self.reply is not None:
                    conn.sendall(self.reply)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self._sock.close()
        os.unlink(self.path)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(launcher for the bridge plugin, the socket path compiled in as its default)."""
    tmp = tmp_path_factory.mktemp("launcher")
    default = tmp / "default.sock"
    exe = tmp / "netplane"
    problem = launcher.build(str(exe), "bridge", sys.executable, install.import_paths(), default_socket=str(default))
    assert problem is None, problem
    return exe, default


@pytest.fixture
def agents(tmp_path: Path) -> Iterator[list[FakeAgent]]:
    made: list[FakeAgent] = []
    yield made
    for agent in made:
        agent.close()


def call(exe: Path, env: dict[str, str], stdin: bytes) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([str(exe)], input=stdin, env=env, capture_output=True, timeout=60)


BASE = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "ctr1", "CNI_IFNAME": "eth0", "CNI_PATH": "/nowhere"}
CONF = b'{"cniVersion": "0.4.0", "name": "n", "type": "netplane", "ipam": {"type": "netplane-ipam", ' \
       b'"subnet": "10.1.0.0/24"}}'


def test_sends_exactly_what_main_py_sends(built: tuple[Path, Path], agents: list[FakeAgent],
                                         tmp_path: Path) -> None:
    exe, _ = built
    agent = FakeAgent(tmp_path / "a.sock")
    agents.append(agent)
    netns_file = tmp_path / "netns"
    netns_file.write_text("")
    env = {**BASE, "CNI_NETNS": str(netns_file), "X": "a=b", "EMPTY": "", "NETPLANE_CNI_SOCKET": agent.path}
    stdin = b'{"a": "\x00\xff"}' + b"x" * 200_000  # larger than one socket buffer
    proc = call(exe, env, stdin)
    assert (proc.returncode, proc.stdout) == (0, b"{}\n")
    assert agent.requests == [cnimain.encode_request("bridge", env, stdin)]
    plugin, got_env, net_id, nsfile, body = decode_request(agent.requests[0])
    assert (plugin, got_env, body, nsfile) == ("bridge", env, stdin, cnimain.file_id(str(netns_file)))
    assert net_id == cnimain.file_id("/proc/self/ns/net")


def test_prints_the_answer_and_exits_with_its_code(built: tuple[Path, Path], agents: list[FakeAgent],
                                                   tmp_path: Path) -> None:
    exe, _ = built
    agent = FakeAgent(tmp_path / "a.sock", reply=b'7\n{"code": 7}\n')
    agents.append(agent)
    proc = call(exe, {**BASE, "NETPLANE_CNI_SOCKET": agent.path}, CONF)
    assert (proc.returncode, proc.stdout, proc.stderr) == (7, b'{"code": 7}\n', b"")


def test_a_declined_call_is_done_by_python_without_asking_again(built: tuple[Path, Path],
                                                                 agents: list[FakeAgent], tmp_path: Path) -> None:
    exe, _ = built
    agent = FakeAgent(tmp_path / "a.sock", reply=b"DECLINE caller is in another network namespace\n")
    agents.append(agent)
    env = {**BASE, "NETPLANE_CNI_SOCKET": agent.path}  # no CNI_NETNS: the in-process ADD answers code 4
    proc = call(exe, env, CONF)
    expected = dispatch(env, CONF)
    assert (proc.returncode, proc.stdout) == (1, expected.stdout)
    assert json.loads(proc.stdout)["code"] == 4
    assert len(agent.requests) == 1


@pytest.mark.parametrize("socket_value", ["missing", ""])
def test_without_an_agent_python_does_the_work(built: tuple[Path, Path], tmp_path: Path,
                                               socket_value: str) -> None:
    exe, _ = built
    env = {**BASE, "NETPLANE_CNI_SOCKET": str(tmp_path / socket_value) if socket_value else ""}
    data = json.dumps({"cniVersion": "1.0.0", "name": "n", "type": "netplane-ipam",
                       "ipam": {"type": "netplane-ipam", "subnet": "10.1.0.0/29",
                                "dataDir": str(tmp_path / "ipam")}}).encode()
    ipam = tmp_path / "netplane-ipam"
    assert launcher.build(str(ipam), "ipam", sys.executable, install.import_paths()) is None
    proc = call(ipam, {**env, "CNI_NETNS": "/run/netns/x"}, data)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert json.loads(proc.stdout)["ips"][0]["address"] == "10.1.0.2/29"
    assert (tmp_path / "ipam" / "n" / "10.1.0.2").read_bytes() == b"ctr1\r\neth0"
    # The bridge launcher's error path goes through Python too (no CNI_NETNS: code 4).
    proc = call(exe, env, CONF)
    assert (proc.returncode, proc.stdout) == (1, dispatch(env, CONF).stdout)


def test_an_agent_that_hangs_up_means_try_again(built: tuple[Path, Path], agents: list[FakeAgent],
                                                tmp_path: Path) -> None:
    exe, _ = built
    agent = FakeAgent(tmp_path / "a.sock", reply=None)
    agents.append(agent)
    proc = call(exe, {**BASE, "NETPLANE_CNI_SOCKET": agent.path}, CONF)
    out = json.loads(proc.stdout)
    assert proc.returncode == 1
    assert (out["cniVersion"], out["code"], out["msg"]) == ("0.4.0", 11, "the CNI agent did not answer")
    assert "incomplete answer from" in out["details"]
    assert len(agent.requests) == 1  # the outcome is unknown: never redone here


def _agent_socket_cases(other: str) -> list[bytes]:
    o = json.dumps(other)
    return [
        f'{{"agentSocket": {o}}}'.encode(),
        f'  {{ "type" : "netplane" ,\n "agentSocket"\t:\r{o} }}  \n'.encode(),
        f'{{"args": {{"agentSocket": "/nested"}}, "agentSocket": {o}, "x": [1, {{"y": "}}"}}]}}'.encode(),
        f'{{"agentSocket": "/first", "agentSocket": {o}}}'.encode(),  # json keeps the last
        f'{{"agentSocket": {o}, "agentSocket": 5}}'.encode(),  # not a string: the default
        b'{"args": {"agentSocket": "/nested"}}',  # not at the top: the default
        b'{"x": "\\"agentSocket\\": \\"/in-a-string\\""}',
        f'{{"agentSocket": {json.dumps(other.replace("/", "/"))}}}'.encode().replace(b"/", b"\\/"),  # escaped
        f'{{"agent\\u0053ocket": {o}}}'.encode(),  # an escaped key: Python decides
        b'{"agentSocket": null, "a": true, "b": -1.5e3, "c": []}',
    ]


@pytest.mark.parametrize("case", range(10))
def test_agent_socket_is_chosen_as_main_py_chooses_it(built: tuple[Path, Path], agents: list[FakeAgent],
                                                      tmp_path: Path, case: int) -> None:
    exe, default = built
    other = FakeAgent(tmp_path / "other.sock")
    agents.append(other)
    agents.append(FakeAgent(default))
    stdin = _agent_socket_cases(other.path)[case]
    want = cnimain.socket_path({}, stdin)
    want = str(default) if want == cnimain.DEFAULT_SOCKET else want
    proc = call(exe, {**BASE}, stdin)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    got = [a.path for a in agents if a.requests]
    assert got == [want]


def test_run_honours_the_launchers_note(agents: list[FakeAgent], tmp_path: Path) -> None:
    agent = FakeAgent(tmp_path / "a.sock")
    agents.append(agent)
    env = {**BASE, "NETPLANE_CNI_SOCKET": agent.path, cnimain.LAUNCHER_REASON: "declined"}
    code, out = cnimain.run("bridge", env, CONF)
    assert (code, out) == (1, dispatch(BASE, CONF).stdout) and agent.requests == []
    assert cnimain.LAUNCHER_REASON not in env  # never passed on to the verbs or a delegated plugin
    code, out = cnimain.run("bridge", {**BASE, cnimain.LAUNCHER_REASON: "error:boom"}, CONF)
    assert code == 1 and json.loads(out) == {"cniVersion": "0.4.0", "code": 11,
                                             "msg": "the CNI agent did not answer", "details": "boom"}
