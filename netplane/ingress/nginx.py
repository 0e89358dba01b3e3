"""The controller's own nginx: start, check a configuration, swap it in, reload gracefully, stop.

Everything lives under the controller's state directory (``nginx.conf``, pid, error log, temp
paths, certificates) and nginx is started with ``-c``, ``-p`` and ``-e`` pointing there, so the
machine's own nginx, ``/etc/nginx`` and ``/var/log/nginx`` are never touched. nginx runs in the
foreground (``daemon off``) as our child: its PID is the master's, and the controller restarts it
if it dies.

A reload is ``SIGHUP`` to the master, which starts new workers on the new configuration while the
old ones finish their requests (``worker_shutdown_timeout``), so no connection is refused or cut.
:meth:`Nginx.reload` returns once the new workers serve and every old one has stopped accepting.

Two ways to validate a configuration:

* ``nginx -t`` on a candidate file beside the live one (:meth:`Nginx.check`): a second nginx parses
  it. Used when no master runs (a refused configuration would leave nothing serving).
* The reload itself (:meth:`Nginx.reload` raising :class:`NginxRejected`): a master that cannot load
  a new configuration logs ``[emerg]`` and keeps its old workers on the old one, so the reload is the
  check, and a change costs one parse instead of two. The file is installed *unverified* first (a
  marker file says so, so that a controller restarted in that moment does not take it for the
  configuration nginx runs) and put back at once if nginx refuses it.

nginx's master waits a fixed 100 ms after starting new workers before it tells the old ones to
stop (``ngx_msleep(100)`` in ``ngx_master_process_cycle``), and until then the old workers take most
new connections on the old configuration. :meth:`Nginx.reload` (``retire_early``) sends the old
workers the same graceful shutdown signal (SIGQUIT) itself as soon as every new worker serves; the
master's own signal then finds them already shutting down. Old workers are addressed through
pidfds opened while they were still the master's children, so a recycled PID is never signalled.
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


class NginxRejected(NginxError):
    """The master refused a reload's configuration and keeps serving the previous one."""

    def __init__(self, check: CheckResult) -> None:
        super().__init__(f"nginx refused the configuration: {check.message}")
        self.check = check


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
    """Gone, exited (a zombie has an empty command line until the master reaps it, which nginx's master
    does only between its own steps), or shutting down: nginx retitles a worker just before it closes
    its listening sockets."""
    title = _title(worker)
    return not title or b"shutting down" in title


class InstalledConf:
    """The live configuration file and its "not yet accepted by nginx" marker, for a class that sets
    ``conf`` and ``unverified`` (the real Nginx, and the tests' fake, which must behave alike)."""

    conf: Path
    unverified: Path

    def install(self, text: str, verified: bool = True) -> None:
        """Make ``text`` the live configuration (atomic rename; nginx reads it on start or reload).

        ``verified=False``: nginx has not accepted it yet (the reload is the check); the marker stays
        until :meth:`mark_verified` or a verified install."""
        if not verified:
            self.unverified.touch()
        tmp = self.conf.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(self.conf)
        if verified:
            self.mark_verified()

    def mark_verified(self) -> None:
        self.unverified.unlink(missing_ok=True)

    @property
    def conf_verified(self) -> bool:
        """Whether the installed file is a configuration nginx accepted (see :meth:`install`)."""
        return not self.unverified.exists()


class Nginx(InstalledConf):
    def __init__(self, state_dir: Path, binary: str = DEFAULT_BINARY, netns: str | None = None) -> None:
        self.state_dir = state_dir
        self.binary = binary
        self.netns = netns  # run nginx in this named network namespace (tests, benchmarks)
        self.conf = state_dir / "nginx.conf"
        self.candidate = state_dir / "nginx.conf.candidate"
        self.unverified = state_dir / "nginx.conf.unverified"  # exists while nginx.conf is not known good
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

    def reload(self, timeout: float = 10.0, retire_early: bool = True) -> None:
        """Graceful reload (SIGHUP); returns once new workers serve the new configuration and every old
        worker has stopped accepting. Raises :class:`NginxRejected` when the master refuses the
        configuration (it logs ``[emerg]`` and goes on serving the old one)."""
        pid = self.pid
        if not self.running() or pid is None:
            self.start(timeout)
            return
        before = _children(pid) | self._workers
        # As many new workers as old ones serve now (workers of an earlier generation still finishing
        # requests, or exited and not yet reaped, do not count: nginx starts worker_processes).
        want = max(1, sum(1 for w in before if _serving(w)))
        pidfds = self._open_pidfds(pid, before) if retire_early else {}
        offset = self._log_size()
        try:
            os.kill(pid, signal.SIGHUP)
            self.reloads += 1
            deadline = time.monotonic() + timeout
            retiring = False
            while time.monotonic() < deadline:
                fresh = _children(pid) - before
                if len(fresh) >= want and all(_serving(w) for w in fresh):
                    if pidfds and not retiring:
                        self._retire(pidfds)
                        retiring = True
                    # Done when every old worker has stopped accepting: until an old worker handles
                    # its shutdown signal it still takes new connections on the old configuration.
                    if all(_retired(w) for w in before):
                        self._workers = fresh
                        return
                else:
                    refused = self._refusal(offset)
                    if refused is not None:
                        raise NginxRejected(refused)
                if not self.running():
                    raise NginxError(f"nginx exited during a reload: {self.tail_log()}")
                time.sleep(0.002)
            raise NginxError(f"nginx did not start new workers within {timeout:.0f}s of a reload: {self.tail_log()}")
        finally:
            for fd in pidfds.values():
                os.close(fd)

    @staticmethod
    def _open_pidfds(master: int, workers: set[int]) -> dict[int, int]:
        """pidfds for the workers still the master's children (checked after opening: a pidfd opened
        on a PID that was recycled in between would name another process)."""
        fds: dict[int, int] = {}
        for w in workers:
            with contextlib.suppress(OSError):
                fds[w] = os.pidfd_open(w)
        alive = _children(master)
        for w in [w for w in fds if w not in alive]:
            os.close(fds.pop(w))
        return fds

    @staticmethod
    def _retire(pidfds: dict[int, int]) -> None:
        for w, fd in pidfds.items():
            if not _retired(w):
                with contextlib.suppress(ProcessLookupError):  # exited meanwhile: nothing to stop
                    signal.pidfd_send_signal(fd, signal.SIGQUIT)

    def _log_size(self) -> int:
        try:
            return self.error_log.stat().st_size
        except OSError:
            return 0

    def _refusal(self, offset: int) -> CheckResult | None:
        """The error a refused reload logged after ``offset`` of the error log, if any.

        A master that cannot load a configuration logs it at ``emerg`` (config syntax, unreadable or
        mismatched certificates, binds) and keeps its old cycle; workers never log at ``emerg``."""
        try:
            if self.error_log.stat().st_size <= offset:
                return None
            with open(self.error_log, "rb") as f:
                f.seek(offset)
                text = f.read().decode(errors="replace")
        except OSError:
            return None
        if "[emerg]" not in text:
            return None
        # From the [emerg] on: workers may have logged other errors (an upstream refusing ...) before it.
        return parse_check_output(text[text.index("[emerg]"):], str(self.conf))

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
