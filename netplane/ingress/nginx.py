"""The controller's own nginx: start, check a configuration, swap it in, reload gracefully, stop.

Everything lives under the controller's state directory (``nginx.conf``, pid, error log, temp
paths, certificates) and nginx is started with ``-c``, ``-p`` and ``-e`` pointing there, so the
machine's own nginx, ``/etc/nginx`` and ``/var/log/nginx`` are never touched. nginx runs in the
foreground (``daemon off``) as our child: its PID is the master's, and the controller restarts it
if it dies.

A configuration is only ever installed after ``nginx -t`` accepted it (checked as a candidate file
beside the live one); a reload is ``SIGHUP`` to the master, which starts new workers on the new
configuration while the old ones finish their requests (``worker_shutdown_timeout``), so no
connection is refused or cut. :meth:`Nginx.reload` returns once the new workers are running.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

DEFAULT_BINARY = "/usr/sbin/nginx"
_ERROR_AT = re.compile(r"\[(emerg|alert|crit|error)\][^\n]*? in (\S+):(\d+)")
_ERROR_LINE = re.compile(r"\[(emerg|alert|crit|error)\] (?:\d+#\d+: )?([^\n]*)")


class NginxError(RuntimeError):
    pass


@dataclass(frozen=True)
class CheckResult:
    ok: bool
    message: str = ""  # the first error, without nginx's prefix
    line: int | None = None  # where in the checked file, when nginx says


def parse_check_output(text: str, path: str) -> CheckResult:
    """The first error in ``nginx -t`` output, and its line when it is in the checked file."""
    m = _ERROR_AT.search(text)
    if m and m.group(2) == path:
        msg = _ERROR_LINE.search(text[m.start():])
        return CheckResult(False, (msg.group(2) if msg else m.group(0)).strip(), int(m.group(3)))
    m2 = _ERROR_LINE.search(text)
    return CheckResult(False, m2.group(2).strip() if m2 else (text.strip().splitlines() or ["nginx -t failed"])[-1])


def _children(pid: int) -> set[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return set()
    return {int(p) for p in text.split()}


def _title(pid: int) -> bytes | None:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None


def _serving(worker: int) -> bool:
    """A worker that finished starting: nginx retitles it "worker process" once it is set up (until
    then it carries the master's title and may not yet handle the master's commands)."""
    title = _title(worker)
    return title is not None and b"worker process" in title and b"shutting down" not in title


def _retired(worker: int) -> bool:
    """Gone, or shutting down: nginx retitles a worker just before it closes its listening sockets."""
    title = _title(worker)
    return title is None or b"shutting down" in title


class Nginx:
    def __init__(self, state_dir: Path, binary: str = DEFAULT_BINARY, netns: str | None = None) -> None:
        self.state_dir = state_dir
        self.binary = binary
        self.netns = netns  # run nginx in this named network namespace (tests, benchmarks)
        self.conf = state_dir / "nginx.conf"
        self.candidate = state_dir / "nginx.conf.candidate"
        self.error_log = state_dir / "error.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._workers: set[int] = set()
        self._adopted: int | None = None
        self.reloads = 0
        self.starts = 0

    def prepare(self) -> None:
        """The state directory and nginx's temp directories (writable by its unprivileged workers)."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        (self.state_dir / "certs").mkdir(mode=0o700, exist_ok=True)
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
            d = self.state_dir / "tmp" / kind
            d.mkdir(parents=True, exist_ok=True)
            if os.geteuid() == 0:
                # Workers run as nobody when the master is root (nginx's compiled-in default user).
                with contextlib.suppress(KeyError, OSError):
                    import pwd

                    pw = pwd.getpwnam("nobody")
                    os.chown(d, pw.pw_uid, pw.pw_gid)

    def _argv(self, conf: Path, *extra: str) -> list[str]:
        argv = [self.binary, "-c", str(conf), "-p", str(self.state_dir) + "/", *extra]
        if self.netns:
            from netplane.kernel.labnet import nsenter_argv

            # nsenter execs nginx, so a server's PID stays the master's; checks run there too,
            # because nginx -t binds the listen addresses, which exist only in that namespace.
            argv = nsenter_argv(self.netns, argv)
        return argv

    def check(self, text: str, timeout: float = 30.0) -> CheckResult:
        """``nginx -t`` on ``text`` as a candidate file (the live configuration is not touched)."""
        self.candidate.write_text(text)
        log = self.state_dir / "check.log"
        log.unlink(missing_ok=True)
        proc = subprocess.run(self._argv(self.candidate, "-t", "-q", "-e", str(log)), capture_output=True,
                              timeout=timeout, check=False)
        if proc.returncode == 0:
            return CheckResult(True)
        out = proc.stderr.decode(errors="replace")
        with contextlib.suppress(OSError):
            out = log.read_text(errors="replace") + "\n" + out
        return parse_check_output(out, str(self.candidate))

    def install(self, text: str) -> None:
        """Make ``text`` the live configuration (atomic rename; nginx reads it on start or reload)."""
        tmp = self.conf.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(self.conf)

    @property
    def pid(self) -> int | None:
        if self.proc is not None:
            return self.proc.pid
        return self._adopted

    def _is_ours(self, pid: int) -> bool:
        """Whether ``pid`` is an nginx master started on our configuration (PIDs get reused)."""
        try:
            raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return False
        # nginx rewrites its title ("nginx: master process /usr/sbin/nginx -c ..."), NULs or not.
        return b"nginx" in raw and re.search(re.escape(str(self.conf).encode()) + rb"(\s|\0|$)", raw) is not None

    def running(self) -> bool:
        if self.proc is not None:
            return self.proc.poll() is None
        return self._adopted is not None and self._is_ours(self._adopted)

    def adopt(self) -> bool:
        """Take over an nginx a previous controller left running on our configuration, so a
        controller restart neither drops connections nor fails on a busy port."""
        try:
            pid = int((self.state_dir / "nginx.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return False
        if not self._is_ours(pid):
            return False
        self._adopted = pid
        self._workers = _children(pid)
        return True

    def start(self, timeout: float = 10.0) -> None:
        """Start the master on the installed configuration and wait for its workers."""
        if self.running():
            return
        log = open(self.state_dir / "nginx.stderr", "ab")  # noqa: SIM115 (kept open by the child)
        try:
            argv = self._argv(self.conf, "-e", str(self.error_log), "-g", "daemon off;")
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        finally:
            log.close()
        self.starts += 1
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise NginxError(f"nginx exited with {self.proc.returncode}: {self.tail_log()}")
            workers = _children(self.proc.pid)
            if workers and all(_serving(w) for w in workers):
                self._workers = workers
                return
            time.sleep(0.01)
        raise NginxError(f"nginx started no workers within {timeout:.0f}s: {self.tail_log()}")

    def reload(self, timeout: float = 10.0) -> None:
        """Graceful reload (SIGHUP); returns once new workers serve the new configuration."""
        pid = self.pid
        if not self.running() or pid is None:
            self.start(timeout)
            return
        before = _children(pid) | self._workers
        want = max(1, len(self._workers))
        os.kill(pid, signal.SIGHUP)
        self.reloads += 1
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            fresh = _children(pid) - before
            # Done when the new workers run and every old one has stopped accepting: until an old
            # worker handles its shutdown signal it still takes new connections on the old config.
            if len(fresh) >= want and all(_serving(w) for w in fresh) and all(_retired(w) for w in before):
                self._workers = fresh
                return
            if not self.running():
                raise NginxError(f"nginx exited during a reload: {self.tail_log()}")
            time.sleep(0.005)
        raise NginxError(f"nginx did not start new workers within {timeout:.0f}s of a reload: {self.tail_log()}")

    def stop(self, timeout: float = 10.0) -> None:
        """Graceful stop (SIGQUIT: finish in-flight requests), then SIGKILL after ``timeout``."""
        proc, self.proc = self.proc, None
        adopted, self._adopted = self._adopted, None
        if proc is not None:
            if proc.poll() is not None:
                return
            proc.send_signal(signal.SIGQUIT)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        elif adopted is not None and self._is_ours(adopted):
            os.kill(adopted, signal.SIGQUIT)
            deadline = time.monotonic() + timeout
            while self._is_ours(adopted) and time.monotonic() < deadline:
                time.sleep(0.02)
            if self._is_ours(adopted):
                os.kill(adopted, signal.SIGKILL)

    def tail_log(self, lines: int = 5) -> str:
        try:
            text = self.error_log.read_text(errors="replace")
        except OSError:
            return ""
        return " | ".join(text.strip().splitlines()[-lines:])
