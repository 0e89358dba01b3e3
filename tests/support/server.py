"""Run a real state server process for tests: on a free loopback port, in a temp data dir."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
NETPLANE = str(REPO / ".venv" / "bin" / "netplane")


@dataclass
class ServerProcess:
    data_dir: Path
    proc: subprocess.Popen[bytes]
    url: str
    log_path: Path

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def kill(self, sig: int = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def start_server(data_dir: Path, *extra: str, port: int = 0, timeout: float = 20.0) -> ServerProcess:
    data_dir.mkdir(parents=True, exist_ok=True)
    ready = data_dir / f"ready-{time.monotonic_ns()}"
    log_path = data_dir / "server.log"
    cmd = [NETPLANE, "server", "--listen", f"127.0.0.1:{port}", "--data-dir", str(data_dir),
           "--ready-file", str(ready), *extra]
    with open(log_path, "ab") as logf:
        proc = subprocess.Popen(cmd, stdout=logf, stderr=logf, stdin=subprocess.DEVNULL,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"state server exited with {proc.returncode}:\n{log_path.read_text()}")
        if ready.exists() and ready.read_text().strip():
            url = ready.read_text().strip()
            ready.unlink()
            return ServerProcess(data_dir, proc, url, log_path)
        time.sleep(0.02)
    proc.kill()
    raise RuntimeError(f"state server did not become ready in {timeout}s:\n{log_path.read_text()}")


def wait_http(url: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url + "/version", timeout=1):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def write_kubeconfig(path: Path, url: str, namespace: str = "default") -> Path:
    path.write_text(
        "apiVersion: v1\nkind: Config\n"
        f"clusters:\n- name: np\n  cluster:\n    server: {url}\n"
        f"contexts:\n- name: np\n  context:\n    cluster: np\n    user: np\n    namespace: {namespace}\n"
        "current-context: np\n"
        "users:\n- name: np\n  user: {}\n"
    )
    return path


__all__ = ["NETPLANE", "REPO", "ServerProcess", "start_server", "sys", "wait_http", "write_kubeconfig"]
