"""A fresh Debian 12 root for install tests: debootstrap'd once, cached as a tarball.

The cache lives outside the repository (NETPLANE_TEST_CACHE, default
/var/cache/netplane-test) so reruns unpack in seconds instead of bootstrapping for
minutes. debootstrap and every chroot run inside a private mount namespace
(`unshare --mount`), so their /proc mounts never reach the machine's mount table and
vanish with the process even if a test dies half-way.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
CACHE = Path(os.environ.get("NETPLANE_TEST_CACHE", "/var/cache/netplane-test"))
SUITE = "bookworm"
# What a Debian 12 node has before netplane: systemd, and the packages the install would
# otherwise fetch with apt (the test runs without network, so none may be missing).
INCLUDE = (
    "python3", "python3-venv", "ca-certificates", "systemd",
    "iproute2", "iptables", "nftables", "conntrack", "containernetworking-plugins", "busybox-static",
    "nginx-light",  # for netplane-ingress (its own nginx.service is masked where the root boots)
)
CHROOT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def apt_mirror() -> str:
    """The Debian mirror this machine's apt uses (deb822 or one-line sources), else deb.debian.org."""
    candidates = [*sorted(Path("/etc/apt/sources.list.d").glob("*.sources")), Path("/etc/apt/sources.list")]
    for path in candidates:
        try:
            text = path.read_text()
        except OSError:
            continue
        for stanza in text.split("\n\n"):
            fields = dict(line.split(":", 1) for line in stanza.splitlines()
                          if ":" in line and not line.startswith(("#", " ")))
            suites = fields.get("Suites", "").split()
            if SUITE in suites and "main" in fields.get("Components", "").split():
                return fields["URIs"].split()[0]
        for line in text.splitlines():
            words = line.split()
            if len(words) >= 4 and words[0] == "deb" and words[2] == SUITE and not words[1].startswith("["):
                return words[1]
    return "http://deb.debian.org/debian"


@contextlib.contextmanager
def _locked(name: str) -> Iterator[None]:
    # Parallel test runs share the cache: one builds, the others wait for it.
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def rootfs_tarball() -> Path:
    """The cached Debian 12 root as a tarball, bootstrapping it first when missing (a few minutes)."""
    key = hashlib.sha256(" ".join((SUITE, *INCLUDE)).encode()).hexdigest()[:12]
    tarball = CACHE / f"debian12-{key}.tar"
    with _locked("rootfs"):
        _drop_others(tarball, "debian12-*.tar")
        if tarball.exists():
            return tarball
        work = CACHE / f"debian12-{key}.building"
        shutil.rmtree(work, ignore_errors=True)
        try:
            proc = subprocess.run(
                ["unshare", "--mount", "--propagation", "private", "--",
                 "debootstrap", "--variant=minbase", f"--include={','.join(INCLUDE)}", SUITE, str(work), apt_mirror()],
                capture_output=True, text=True, timeout=1200, check=False)
            if proc.returncode != 0:
                out = proc.stdout[-3000:] + proc.stderr[-3000:]
                raise RuntimeError(f"debootstrap failed ({proc.returncode}):\n{out}")
            partial = tarball.with_suffix(".tar.partial")
            subprocess.run(["tar", "-C", str(work), "--exclude=./proc/*", "--exclude=./sys/*",
                            "-cf", str(partial), "."], check=True, timeout=300)
            os.replace(partial, tarball)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return tarball


def _drop_others(keep: Path, pattern: str) -> None:
    """Old cache entries (another package list, older dependencies) only take space."""
    for p in CACHE.glob(pattern):
        if p != keep:
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)


def wheelhouse() -> Path:
    """Wheels of netplane's dependencies and build requirements (cached), so the install runs offline."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    reqs = [*project["project"]["dependencies"], *project["build-system"]["requires"], "wheel"]
    key = hashlib.sha256("\n".join(reqs).encode()).hexdigest()[:12]
    out = CACHE / f"wheels-{key}"
    with _locked("wheels"):
        _drop_others(out, "wheels-*")
        if (out / ".complete").exists():
            return out
        shutil.rmtree(out, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--disable-pip-version-check", "-w", str(out),
                        *reqs], check=True, capture_output=True, timeout=600)
        (out / ".complete").write_text("\n".join(reqs))
    return out


def unpack(tarball: Path, root: Path) -> None:
    root.mkdir(parents=True)
    subprocess.run(["tar", "-C", str(root), "-xf", str(tarball)], check=True, timeout=300)


def chroot_run(root: Path, command: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run a shell command inside the root: private mount and network namespaces, clean environment.

    No network (a fresh netns has only a down loopback): the install must work offline from
    the wheelhouse, and cannot touch the machine's network even by mistake.
    """
    inner = (f"mount -t proc proc {root}/proc && exec chroot {root} "
             f"env -i PATH={CHROOT_PATH} HOME=/root LANG=C.UTF-8 sh -c \"$0\"")
    return subprocess.run(["unshare", "--mount", "--net", "--propagation", "private", "--", "sh", "-c", inner,
                           command], capture_output=True, text=True, timeout=timeout, check=False)


def snapshot(root: Path, skip: tuple[str, ...] = ("/proc", "/sys", "/dev", "/tmp", "/run")) -> dict[str, str]:
    """Every path under root with its type, size or link target (directories: type only)."""
    out: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = "/" + os.path.relpath(dirpath, root).lstrip(".")
        if rel_dir.rstrip("/") in skip:
            dirnames[:] = []
            continue
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            rel = os.path.join(rel_dir, name).replace("//", "/")
            st = os.lstat(p)
            if os.path.islink(p):
                out[rel] = f"link:{os.readlink(p)}"
            elif os.path.isdir(p):
                out[rel] = "dir"
            else:
                out[rel] = f"file:{st.st_size}:{oct(st.st_mode & 0o7777)}"
    return out


# -- booting the root with systemd (systemd-nspawn) ------------------------------------------------

def _cgroup_dirs() -> list[Path]:
    """This process's cgroup directories in the hierarchies nspawn uses (named systemd v1, and v2)."""
    dirs = []
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        hid, controllers, path = line.split(":", 2)
        if controllers == "name=systemd":
            base = Path("/sys/fs/cgroup/systemd")
        elif hid == "0" and controllers == "":
            base = Path("/sys/fs/cgroup/unified")
            if not (base / "cgroup.procs").exists():
                base = Path("/sys/fs/cgroup")  # pure cgroup v2
        else:
            continue
        if (base / "cgroup.procs").exists():
            dirs.append(base / path.lstrip("/"))
    return dirs


def _remove_cgroup_tree(top: Path) -> None:
    for dirpath, _dirnames, _files in sorted(os.walk(top), key=lambda t: -t[0].count("/")):
        try:
            os.rmdir(dirpath)
        except OSError:
            pass


def boot(root: Path, results: Path, name: str, timeout: float) -> subprocess.CompletedProcess[str]:
    """Boot the root with systemd as PID 1 until it powers itself off (or `timeout`).

    Contained: its own network namespace (--private-network: nothing reaches the machine's),
    a private mount namespace with a fresh /run (nspawn's runtime files vanish with it), and
    a cgroup of its own below ours, removed afterwards (nspawn makes payload/supervisor
    cgroups beside itself).
    """
    cgroups = [d / name for d in _cgroup_dirs()]
    for cg in cgroups:
        cg.mkdir()
    inner = ("mount -t tmpfs -o mode=0755 tmpfs /run && exec systemd-nspawn -q --boot --register=no --keep-unit "
             f"--private-network --machine={name} -D {root} --bind={results}:/results --console=pipe")
    moves = " && ".join(f"echo $$ > {cg}/cgroup.procs" for cg in cgroups) or "true"
    argv = ["sh", "-c", f"{moves} && exec unshare --mount --propagation private -- sh -c '{inner}'"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=timeout)
        return subprocess.CompletedProcess(argv, proc.returncode, out, err)
    except subprocess.TimeoutExpired:
        # Everything in our cgroups is the container we started: end exactly those processes.
        for cg in cgroups:
            for procs in cg.rglob("cgroup.procs"):
                for pid in procs.read_text().split():
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(int(pid), signal.SIGKILL)
        out, err = proc.communicate(timeout=30)
        return subprocess.CompletedProcess(argv, -signal.SIGKILL, out, err + "\n(timed out: killed)")
    finally:
        for cg in cgroups:
            _remove_cgroup_tree(cg)
