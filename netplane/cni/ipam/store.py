"""Where reservations live: the Store protocol, the disk store and an in-memory one.

The disk store uses the reference host-local layout, so operators' habits (and
tools) carry over: `<dataDir>/<network>/<ip>` holds "<containerID>\\r\\n<ifname>",
`last_reserved_ip.<rangeSet>` remembers where round-robin stopped, and every
change happens under flock() on `<dataDir>/<network>/lock`. A reservation is
created with O_EXCL, so two writers can never both own one address.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import os
import threading
import time
from collections.abc import Iterator
from typing import Protocol

from ..errors import CODE_IPAM_STORE, CODE_TRY_AGAIN, CNIError
from ..result import IPAddress

LINE_BREAK = "\r\n"  # host-local's separator between container ID and ifname
LAST_RESERVED_PREFIX = "last_reserved_ip."
LOCK_FILE = "lock"


class Store(Protocol):
    """Reservations of one network. Every method but lock() expects the lock to be held."""

    def lock(self) -> contextlib.AbstractContextManager[None]: ...

    def reserve(self, container_id: str, ifname: str, ip: IPAddress, range_set: int) -> bool:
        """Reserve `ip`; False if it is already taken."""
        ...

    def last_reserved_ip(self, range_set: int) -> IPAddress | None: ...

    def get_by_id(self, container_id: str, ifname: str) -> list[IPAddress]: ...

    def release_by_id(self, container_id: str, ifname: str) -> list[IPAddress]: ...

    def release(self, ip: IPAddress) -> None: ...

    def reservations(self) -> dict[IPAddress, tuple[str, str]]:
        """Every reservation: ip -> (containerID, ifname)."""
        ...


class MemoryStore:
    """A Store in a dict: for unit tests and for anything that needs no persistence."""

    def __init__(self) -> None:
        self._ips: dict[IPAddress, tuple[str, str]] = {}
        self._last: dict[int, IPAddress] = {}
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        with self._lock:
            yield

    def reserve(self, container_id: str, ifname: str, ip: IPAddress, range_set: int) -> bool:
        if ip in self._ips:
            return False
        self._ips[ip] = (container_id, ifname)
        self._last[range_set] = ip
        return True

    def last_reserved_ip(self, range_set: int) -> IPAddress | None:
        return self._last.get(range_set)

    def get_by_id(self, container_id: str, ifname: str) -> list[IPAddress]:
        return sorted((ip for ip, owner in self._ips.items() if owner == (container_id, ifname)), key=_sort_key)

    def release_by_id(self, container_id: str, ifname: str) -> list[IPAddress]:
        ips = self.get_by_id(container_id, ifname)
        for ip in ips:
            del self._ips[ip]
        return ips

    def release(self, ip: IPAddress) -> None:
        self._ips.pop(ip, None)

    def reservations(self) -> dict[IPAddress, tuple[str, str]]:
        return dict(self._ips)


def _sort_key(ip: IPAddress) -> tuple[int, int]:
    return ip.version, int(ip)


class DiskStore:
    """host-local's on-disk layout under `<data_dir>/<network>`."""

    def __init__(self, data_dir: str, network: str, lock_timeout: float = 30.0) -> None:
        self.dir = os.path.join(data_dir, network)
        self.lock_timeout = lock_timeout

    def _ensure_dir(self) -> None:
        try:
            os.makedirs(self.dir, mode=0o755, exist_ok=True)
        except OSError as e:
            raise CNIError(CODE_IPAM_STORE, f"cannot create IPAM data dir {self.dir!r}", str(e)) from e

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        self._ensure_dir()
        path = os.path.join(self.dir, LOCK_FILE)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as e:
            raise CNIError(CODE_IPAM_STORE, f"cannot open IPAM lock {path!r}", str(e)) from e
        try:
            self._flock(fd, path)
            try:
                yield
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def _flock(self, fd: int, path: str) -> None:
        # flock() has no timeout; a holder that never lets go must become "try again
        # later" (code 11) rather than a runtime call that hangs forever.
        deadline = time.monotonic() + self.lock_timeout
        pause = 0.0005
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise CNIError(CODE_TRY_AGAIN, "IPAM store is busy",
                                   f"could not lock {path!r} within {self.lock_timeout}s") from None
                time.sleep(pause)
                pause = min(pause * 2, 0.01)

    def _path(self, ip: IPAddress) -> str:
        return os.path.join(self.dir, str(ip))

    def reserve(self, container_id: str, ifname: str, ip: IPAddress, range_set: int) -> bool:
        path = self._path(ip)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        except FileExistsError:
            return False
        except OSError as e:
            raise CNIError(CODE_IPAM_STORE, f"cannot reserve {ip}", str(e)) from e
        try:
            os.write(fd, f"{container_id}{LINE_BREAK}{ifname}".encode())
        except OSError as e:
            os.close(fd)
            os.unlink(path)
            raise CNIError(CODE_IPAM_STORE, f"cannot reserve {ip}", str(e)) from e
        os.close(fd)
        try:
            _write_file(os.path.join(self.dir, f"{LAST_RESERVED_PREFIX}{range_set}"), str(ip))
        except OSError as e:
            os.unlink(path)
            raise CNIError(CODE_IPAM_STORE, f"cannot record the last reserved IP {ip}", str(e)) from e
        return True

    def last_reserved_ip(self, range_set: int) -> IPAddress | None:
        try:
            with open(os.path.join(self.dir, f"{LAST_RESERVED_PREFIX}{range_set}"), encoding="ascii") as f:
                return ipaddress.ip_address(f.read().strip())
        except (OSError, ValueError):
            return None

    def reservations(self) -> dict[IPAddress, tuple[str, str]]:
        out: dict[IPAddress, tuple[str, str]] = {}
        try:
            names = os.listdir(self.dir)
        except FileNotFoundError:
            return out
        for name in names:
            try:
                ip = ipaddress.ip_address(name)
            except ValueError:
                continue  # lock, last_reserved_ip.N, anything else
            try:
                with open(os.path.join(self.dir, name), encoding="utf-8", errors="replace", newline="") as f:
                    content = f.read().strip()
            except FileNotFoundError:
                continue
            container_id, _, ifname = content.partition(LINE_BREAK)
            out[ip] = (container_id.strip(), ifname.strip())
        return out

    def get_by_id(self, container_id: str, ifname: str) -> list[IPAddress]:
        return sorted((ip for ip, owner in self.reservations().items() if owner == (container_id, ifname)),
                      key=_sort_key)

    def release_by_id(self, container_id: str, ifname: str) -> list[IPAddress]:
        ips = self.get_by_id(container_id, ifname)
        for ip in ips:
            self.release(ip)
        return ips

    def release(self, ip: IPAddress) -> None:
        try:
            os.unlink(self._path(ip))
        except FileNotFoundError:
            pass
        except OSError as e:
            raise CNIError(CODE_IPAM_STORE, f"cannot release {ip}", str(e)) from e

    def writable(self) -> str:
        """'' when the store can take reservations, else why not (for STATUS)."""
        try:
            self._ensure_dir()
        except CNIError as e:
            return e.details or e.msg
        probe = os.path.join(self.dir, f".status-probe-{os.getpid()}-{threading.get_ident()}")
        try:
            fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            os.close(fd)
            os.unlink(probe)
        except OSError as e:
            return f"{self.dir} is not writable: {e}"
        return ""


def _write_file(path: str, text: str) -> None:
    # Rewritten in place, as host-local does: it is only read under the lock, and an
    # unreadable value just restarts round-robin at the range start. Not with O_TRUNC:
    # ext4 flushes a file truncated to zero and rewritten when it is closed
    # (auto_da_alloc), ~0.5-4 ms per ADD here; writing over the old bytes and then
    # cutting the file to length leaves the same content without the flush.
    data = text.encode("ascii")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        os.pwrite(fd, data, 0)
        os.ftruncate(fd, len(data))
    finally:
        os.close(fd)
