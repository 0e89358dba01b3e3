"""A throwaway VM with Debian's kernel, for what this machine's kernel lacks (IPVS).

The recipe (MACHINE-NOTES, "A VM with IPVS"):
- Debian's kernel package, named at run time by `apt-cache depends linux-image-amd64`
  (the name changes with every security update), fetched with `apt-get download`,
  unpacked with `dpkg -x`, its modules indexed with `depmod -b`;
- a tiny initramfs: busybox-static plus the modules that reach the host's files
  (virtio-pci, 9p over virtio, overlayfs). Its /init mounts the host's `/`
  read-only over 9p, puts a tmpfs overlay on top (the guest may write anywhere,
  nothing reaches the host) and `switch_root`s into it (not chroot: module
  autoloading needs the real root), then runs tests/vm/guest.sh from the host's
  tree, which mounts the usual filesystems, binds the cached modules to
  /lib/modules and runs the job;
- qemu with TCG (KVM does not work on these machines), the job and its results
  in a second, read-write 9p share, the console on a file.

Kernel and initramfs are cached under $NETPLANE_VM_CACHE (default
/var/cache/netplane-vm), outside the repository, keyed by the package name: a
new Debian kernel is fetched once, then every run boots in seconds.

    python -m tests.vm [--timeout S] -- COMMAND...   # run one command in the VM
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import gzip
import os
import shlex
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
CACHE = Path(os.environ.get("NETPLANE_VM_CACHE", "/var/cache/netplane-vm"))
META_PACKAGE = "linux-image-amd64"
# What the initramfs needs to reach the host's files; modules.dep supplies their dependencies.
INITRAMFS_MODULES = ("virtio_pci", "9pnet_virtio", "9p", "overlay")
GUEST_SCRIPT = HERE / "guest.sh"

INIT = """#!/bin/busybox sh
# netplane test VM, stage 1: reach the host's root over 9p, overlay it, switch_root.
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in $(cat /modules.order); do insmod "/modules/$m" || echo "netplane-vm: insmod $m failed"; done
mkdir -p /lower /upper /newroot
i=0
until mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=512000,cache=loose hostroot /lower; do
  i=$((i+1)); [ $i -gt 50 ] && { echo "netplane-vm: cannot mount the host root"; poweroff -f; }
  sleep 0.1
done
mount -t tmpfs -o size=70% tmpfs /upper
mkdir -p /upper/data /upper/work
mount -t overlay -o lowerdir=/lower,upperdir=/upper/data,workdir=/upper/work overlay /newroot
mkdir -p /newroot/.netplane-vm
mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 results /newroot/.netplane-vm
umount /proc /sys
mount --move /dev /newroot/dev
exec switch_root /newroot /bin/sh /.netplane-vm/guest.sh
"""


class VMError(RuntimeError):
    pass


def run(argv: Sequence[str], cwd: Path | None = None, timeout: float = 600) -> str:
    proc = subprocess.run(list(argv), cwd=cwd, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise VMError(f"{shlex.join(argv)} exited {proc.returncode}: {proc.stderr.strip()[-2000:]}")
    return proc.stdout


def kernel_package() -> str:
    """The exact kernel package that Debian's `linux-image-amd64` points at today."""
    out = run(["apt-cache", "depends", META_PACKAGE])
    for line in out.splitlines():
        words = line.split()
        if len(words) == 2 and words[0] == "Depends:" and words[1].startswith("linux-image-"):
            return words[1]
    raise VMError(f"apt-cache depends {META_PACKAGE} names no kernel package:\n{out}")


@dataclasses.dataclass(frozen=True)
class Kernel:
    package: str
    version: str  # e.g. 6.1.0-56-amd64
    root: Path  # the unpacked package; modules under lib/modules/<version>

    @property
    def vmlinuz(self) -> Path:
        return self.root / "boot" / f"vmlinuz-{self.version}"

    @property
    def modules(self) -> Path:
        return self.root / "lib" / "modules" / self.version

    @property
    def initramfs(self) -> Path:
        return self.root / "netplane-initramfs.cpio.gz"


@contextlib.contextmanager
def _cache_lock() -> Iterator[None]:
    """Two test sessions preparing the cache at once would unpack over each other."""
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _module_order(modules: Path, wanted: Sequence[str]) -> list[str]:
    """Relative paths of the wanted modules and their dependencies, dependencies first."""
    deps: dict[str, list[str]] = {}
    for line in (modules / "modules.dep").read_text().splitlines():
        mod, _, rest = line.partition(":")
        deps[mod] = rest.split()
    by_name = {Path(m).name.removesuffix(".ko").replace("-", "_"): m for m in deps}
    order: list[str] = []

    def visit(mod: str) -> None:
        if mod in order:
            return
        for dep in deps[mod]:
            visit(dep)
        order.append(mod)

    for name in wanted:
        if name not in by_name:
            continue  # built into this kernel
        visit(by_name[name])
    return order


def _build_initramfs(kernel: Kernel) -> None:
    busybox = shutil.which("busybox")
    if busybox is None:
        raise VMError("busybox is missing (Debian busybox-static)")
    with tempfile.TemporaryDirectory(prefix="np-vm-initramfs-") as tmp:
        root = Path(tmp)
        for d in ("bin", "dev", "proc", "sys", "modules"):
            (root / d).mkdir()
        shutil.copy2(busybox, root / "bin" / "busybox")
        order = _module_order(kernel.modules, INITRAMFS_MODULES)
        for rel in order:
            shutil.copy2(kernel.modules / rel, root / "modules" / Path(rel).name)
        (root / "modules.order").write_text("".join(Path(rel).name + "\n" for rel in order))
        init = root / "init"
        init.write_text(INIT)
        init.chmod(0o755)
        files = "".join(str(p.relative_to(root)) + "\n" for p in sorted(root.rglob("*")))
        archive = subprocess.run(["cpio", "--quiet", "-o", "-H", "newc", "-R", "0:0"], cwd=root, input=files.encode(),
                                 capture_output=True, timeout=60)
        if archive.returncode != 0:
            raise VMError(f"cpio failed: {archive.stderr.decode(errors='replace')}")
        partial = kernel.initramfs.with_suffix(".tmp")
        partial.write_bytes(gzip.compress(archive.stdout, compresslevel=1))
        partial.rename(kernel.initramfs)


def prepare(package: str | None = None) -> Kernel:
    """The cached kernel + initramfs for today's Debian kernel; fetched and built on first use."""
    package = package or kernel_package()
    version = package.removeprefix("linux-image-")
    root = CACHE / package
    kernel = Kernel(package, version, root)
    with _cache_lock():
        if kernel.vmlinuz.exists() and (kernel.modules / "modules.dep").exists() and kernel.initramfs.exists():
            return kernel
        with tempfile.TemporaryDirectory(prefix="np-vm-dl-", dir=CACHE) as tmp:
            run(["apt-get", "download", package], cwd=Path(tmp), timeout=600)
            debs = sorted(Path(tmp).glob(f"{package}_*.deb"))
            if not debs:
                raise VMError(f"apt-get download {package} produced no .deb")
            unpack = Path(tmp) / "root"
            run(["dpkg", "-x", str(debs[0]), str(unpack)])
            shutil.rmtree(unpack / "usr", ignore_errors=True)  # documentation only
            run(["depmod", "-b", str(unpack), version])
            if root.exists():
                shutil.rmtree(root)
            unpack.rename(root)
        _build_initramfs(kernel)
    return kernel


@dataclasses.dataclass
class VMResult:
    returncode: int
    console: str
    results: Path  # the guest's read-write share (job outputs); removed by the caller's tempdir
    seconds: float


def _qemu_argv(kernel: Kernel, share: Path, memory_mb: int, cpus: int) -> list[str]:
    return [
        "qemu-system-x86_64", "-accel", "tcg", "-m", str(memory_mb), "-smp", str(cpus),
        "-nographic", "-monitor", "none", "-serial", f"file:{share / 'console.log'}",
        "-no-reboot", "-nic", "none",
        "-kernel", str(kernel.vmlinuz), "-initrd", str(kernel.initramfs),
        "-append", "console=ttyS0 quiet loglevel=3 panic=-1 rw",
        "-virtfs", "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap",
        "-virtfs", f"local,path={share},mount_tag=results,security_model=none",
    ]


def run_in_vm(command: str, share: Path, *, timeout: float = 900, memory_mb: int = 1536, cpus: int = 2,
              kernel: Kernel | None = None) -> VMResult:
    """Boot, run `command` (a shell line, in the repository, as root) and power off.

    The command's exit status comes back through the results share (`rc`); its
    output goes to the console log. `share`, an empty directory of the caller's, is
    where the guest can leave files (e.g. a junit report): $NETPLANE_VM_RESULTS inside.
    """
    kernel = kernel or prepare()
    tmp = share
    tmp.mkdir(parents=True, exist_ok=True)
    shutil.copy2(GUEST_SCRIPT, tmp / "guest.sh")
    (tmp / "job.sh").write_text(f"cd {shlex.quote(str(REPO))}\n{command}\n")
    (tmp / "env").write_text(f"NETPLANE_VM_MODULES={kernel.modules}\nNETPLANE_VM_VERSION={kernel.version}\n")
    start = time.monotonic()
    proc = subprocess.Popen(_qemu_argv(kernel, tmp, memory_mb, cpus), stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()  # by PID: the qemu this call started
        proc.wait(timeout=30)
        console = (tmp / "console.log").read_text(errors="replace") if (tmp / "console.log").exists() else ""
        raise VMError(f"the VM did not finish within {timeout:.0f}s; console tail:\n{console[-4000:]}") from None
    seconds = time.monotonic() - start
    console = (tmp / "console.log").read_text(errors="replace") if (tmp / "console.log").exists() else ""
    rc_file = tmp / "rc"
    if not rc_file.exists():
        raise VMError(f"the VM stopped without a result (qemu exit {proc.returncode}: "
                      f"{out.decode(errors='replace')[-1000:]}); console tail:\n{console[-4000:]}")
    return VMResult(int(rc_file.read_text().strip() or "255"), console, tmp, seconds)
