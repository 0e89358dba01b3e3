"""The CNI fast path's server side: answer `netplane-cni` calls over a unix socket.

A long-running process (for now `netplane cni serve`, later the node agent)
keeps warm netlink sockets and runs `plugin.dispatch` for each forwarded call,
so a pod's ADD costs a connect and the work, not a Python start-up and the
plugin's imports. One thread per call; each thread has its own netlink socket
(a socket is never shared between threads), and DEL answers once the pod's
veth is unlisted (plugin.Runtime.delete_pod_link). Calls from another network
namespace, or whose CNI_NETNS path names another file here than for the
caller, are declined (their "host" links or pod namespace are not what we
would act on), and the caller then does the work itself.
"""

from __future__ import annotations

import contextlib
import os
import socket
import socketserver
import stat
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

from .main import MAGIC, file_id
from .plugin import PLUGIN_BRIDGE, PLUGIN_IPAM, Runtime, dispatch, log

MAX_REQUEST = 16 * 1024 * 1024


def decode_request(data: bytes) -> tuple[str, dict[str, str], str, str, bytes]:
    """-> (plugin, env, caller's netns id, CNI_NETNS file id, stdin); ValueError if malformed."""
    if not data.startswith(MAGIC):
        raise ValueError("bad magic")
    head, sep, stdin = data[len(MAGIC):].partition(b"\0\0")
    if not sep:
        raise ValueError("unterminated header")
    fields = head.decode("utf-8", "surrogateescape").split("\0")
    if len(fields) < 3 or not fields[1].startswith("netns=") or not fields[2].startswith("nsfile="):
        raise ValueError("bad header")
    env: dict[str, str] = {}
    for item in fields[3:]:
        key, eq, value = item.partition("=")
        if eq:
            env[key] = value
    return fields[0], env, fields[1][6:], fields[2][7:], stdin


class _Handler(socketserver.BaseRequestHandler):
    server: _Server

    def handle(self) -> None:
        sock: socket.socket = self.request
        sock.settimeout(60)
        chunks = []
        size = 0
        try:
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                size += len(chunk)
                if size > MAX_REQUEST:
                    return
                chunks.append(chunk)
            try:
                plugin, env, net_id, nsfile_id, stdin = decode_request(b"".join(chunks))
            except ValueError as e:
                sock.sendall(f"DECLINE malformed request: {e}\n".encode())
                return
            if plugin not in (PLUGIN_BRIDGE, PLUGIN_IPAM):
                sock.sendall(b"DECLINE unknown plugin\n")
                return
            if net_id != self.server.netns_id:
                sock.sendall(b"DECLINE caller is in another network namespace\n")
                return
            if nsfile_id != file_id(env.get("CNI_NETNS", "")):
                sock.sendall(b"DECLINE CNI_NETNS is another file here (private mounts?)\n")
                return
            if self.server.draining:
                sock.sendall(b"DECLINE shutting down\n")
                return
            started = time.monotonic()
            with self.server.track():
                resp = dispatch(env, stdin, plugin=plugin, runtime=self.server.runtime)
            sock.sendall(f"{resp.exit_code}\n".encode() + resp.stdout)
            log("served", command=env.get("CNI_COMMAND", ""), container=env.get("CNI_CONTAINERID", ""),
                exit=resp.exit_code, ms=round((time.monotonic() - started) * 1000, 1))
        except OSError as e:
            log("serve-io-error", error=str(e))


class _Server(socketserver.UnixStreamServer):
    """Calls run on a fixed pool of threads, so each thread's netlink socket stays warm."""

    allow_reuse_address = False
    request_queue_size = 256  # a node brings many pods up at once

    def __init__(self, path: str, runtime: Runtime, workers: int) -> None:
        self.runtime = runtime
        self.netns_id = file_id("/proc/self/ns/net")
        self.draining = False
        self._active = 0
        self._cond = threading.Condition()
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="netplane-cni")
        super().__init__(path, _Handler)

    def process_request(self, request: socket.socket, client_address: object) -> None:  # type: ignore[override]
        self._pool.submit(self._work, request, client_address)

    def _work(self, request: socket.socket, client_address: object) -> None:
        try:
            self.finish_request(request, client_address)
        except Exception:
            self.handle_error(request, client_address)
        finally:
            self.shutdown_request(request)

    def server_close(self) -> None:
        super().server_close()
        self._pool.shutdown(wait=False)

    @contextlib.contextmanager
    def track(self) -> Iterator[None]:
        with self._cond:
            self._active += 1
        try:
            yield
        finally:
            with self._cond:
                self._active -= 1
                self._cond.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self._active == 0, timeout)


def _remove_stale(path: str) -> None:
    """Remove a socket file nobody listens on; refuse to replace a live server or a non-socket."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise OSError(f"{path} exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except OSError:
        os.unlink(path)
        return
    finally:
        probe.close()
    raise OSError(f"another server is listening on {path}")


class CNIService:
    """A reusable fast-path server: start(), then stop(); or serve_forever() in the foreground."""

    def __init__(self, socket_path: str, workers: int = 8) -> None:
        self.socket_path = socket_path
        self.runtime = Runtime(warm=True)
        os.makedirs(os.path.dirname(socket_path) or ".", mode=0o755, exist_ok=True)
        _remove_stale(socket_path)
        old = os.umask(0o077)  # root-only: whoever can talk to it can plumb pods
        try:
            self._server = _Server(socket_path, self.runtime, workers)
        finally:
            os.umask(old)
        self._thread: threading.Thread | None = None

    def serve_forever(self) -> None:
        log("serve", socket=self.socket_path)
        try:
            self._server.serve_forever(poll_interval=0.2)
        finally:
            self._cleanup()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="netplane-cni-service", daemon=True)
        self._thread.start()

    def stop(self, drain_timeout: float = 30.0) -> None:
        """Stop accepting, let calls in flight finish (their outcome must reach the caller)."""
        self._server.draining = True
        self._server.shutdown()
        self._server.wait_idle(drain_timeout)
        if self._thread is not None:
            self._thread.join(timeout=drain_timeout)
        self._cleanup()

    def _cleanup(self) -> None:
        self._server.server_close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.socket_path)
        self.runtime.close()
