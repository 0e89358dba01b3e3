"""Install netplane on a Debian 12 machine, upgrade it in place, and uninstall exactly that.

Only the standard library is imported here, so `python3 -m netplane.install` runs from a
checkout with Debian's own python3 before any virtualenv exists.

Every path the install writes is recorded in `<prefix>/install-manifest.json` with its
kind, which decides what upgrade and uninstall do with it:

- ``file``: ours (units, CNI executables, shared artifacts): rewritten on upgrade, removed
  on uninstall;
- ``config``: written once from the default, then the operator's: an upgrade changes only
  the keys given on its command line; uninstall removes it only if it is unchanged since
  the install last wrote it (or with --purge); a file that existed before the first install
  is never removed;
- ``symlink``: removed on uninstall if it still points where we pointed it;
- ``tree``: a directory we created and own whole (the virtualenv, shared artifacts).

Directories the install had to create are recorded too and removed when empty. Debian
packages the install pulled in are left installed (other software may use them).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import urllib.parse
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import plan
from .plan import Settings

MANIFEST_FORMAT = 1
SYSTEM_PYTHON = "/usr/bin/python3"
CNI_MARKER = b"netplane CNI plugin"  # in the executables `netplane cni install` writes

Runner = Callable[[Sequence[str]], "subprocess.CompletedProcess[str]"]


class InstallError(Exception):
    """The install (or uninstall) cannot go on; the message says why and what to do."""


def run_command(argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
    """Run a command, capturing its output; the caller decides whether failure matters."""
    return subprocess.run(list(argv), capture_output=True, text=True, check=False)


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 16), b""):
            h.update(chunk)
    return h.hexdigest()


def find_checkout() -> Path | None:
    """The source checkout this module runs from (pyproject.toml, proxy/, cni/ beside netplane/), if any."""
    root = Path(__file__).resolve().parents[2]
    if (root / "pyproject.toml").is_file() and (root / "proxy" / plan.unit_name("node")).is_file():
        return root
    return None


def detect_address(server: str | None) -> str | None:
    """The local address the kernel would use towards the server (or towards the default route).

    A UDP connect sends nothing; it only asks the routing table.
    """
    targets = []
    if server:
        host = urllib.parse.urlsplit(server if "://" in server else f"//{server}").hostname
        if host and not host.startswith("127.") and host not in ("localhost", "::1"):
            targets.append(host)
    targets.append("192.0.2.1")  # TEST-NET-1: only the default route can reach it
    for host in targets:
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.connect((host, 9))
                addr: str = s.getsockname()[0]
        except OSError:
            continue
        if not addr.startswith("127.") and addr != "0.0.0.0":
            return addr
    return None


@dataclass
class Manifest:
    prefix: str
    role: str = ""
    extras: list[str] = field(default_factory=list)
    enabled: list[str] = field(default_factory=list)
    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    dirs: list[str] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps({"format": MANIFEST_FORMAT, "prefix": self.prefix, "role": self.role,
                           "with": self.extras, "enabled": self.enabled, "files": self.files,
                           "dirs": self.dirs}, indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        doc = json.loads(text)
        if doc.get("format") != MANIFEST_FORMAT:
            raise InstallError(f"unknown install manifest format {doc.get('format')!r}")
        return cls(prefix=doc["prefix"], role=doc.get("role", ""), extras=list(doc.get("with", [])),
                   enabled=list(doc.get("enabled", [])), files=dict(doc.get("files", {})),
                   dirs=list(doc.get("dirs", [])))


@dataclass
class Options:
    role: str = "node"
    extras: tuple[str, ...] = ()
    prefix: str = plan.DEFAULT_PREFIX
    source: str | None = None  # checkout dir or wheel; None: the checkout we run from, else keep the venv
    wheelhouse: str | None = None  # install dependencies from here only (offline)
    settings: Settings = field(default_factory=Settings)
    apt: bool = True
    start: bool = True
    force: bool = False


class Installer:
    """Install/uninstall against a file system root (`/` on a real machine; a temp dir in unit tests)."""

    def __init__(self, prefix: str = plan.DEFAULT_PREFIX, root: str = "/", run: Runner = run_command,
                 log: Callable[[str], None] | None = None) -> None:
        if not os.path.isabs(prefix):
            raise InstallError(f"--prefix must be an absolute path, not {prefix!r}")
        self.prefix = os.path.normpath(prefix)
        self.root = root
        self.run = run
        self.log = log or (lambda msg: print(f"netplane-install: {msg}", file=sys.stderr, flush=True))
        self.manifest_path = f"{self.prefix}/{plan.MANIFEST_NAME}"
        self.venv = f"{self.prefix}/venv"
        self.share = f"{self.prefix}/share/netplane"

    # -- paths under the root ----------------------------------------------------------------

    def host(self, path: str) -> str:
        """Where a target path is on this machine's file system."""
        return os.path.join(self.root, path.lstrip("/"))

    def exists(self, path: str) -> bool:
        return os.path.lexists(self.host(path))

    def booted(self) -> bool:
        """Whether systemd runs this system (sd_booted); false in a chroot or a container without it."""
        return os.path.isdir(self.host("/run/systemd/system"))

    def load_manifest(self) -> Manifest | None:
        try:
            text = Path(self.host(self.manifest_path)).read_text()
        except FileNotFoundError:
            return None
        return Manifest.from_json(text)

    def save_manifest(self, m: Manifest) -> None:
        self._write_bytes(self.manifest_path, m.to_json().encode(), 0o644)

    # -- small file operations ----------------------------------------------------------------

    def ensure_dir(self, path: str, m: Manifest, mode: int = 0o755) -> None:
        """Create path and missing parents, remembering each one created (for uninstall)."""
        missing: list[str] = []
        p = os.path.normpath(path)
        while p != "/" and not os.path.isdir(self.host(p)):
            missing.append(p)
            p = os.path.dirname(p)
        for d in reversed(missing):
            os.mkdir(self.host(d), mode)
            if d not in m.dirs:
                m.dirs.append(d)

    def _write_bytes(self, path: str, data: bytes, mode: int) -> None:
        # Atomic: a runtime may exec a CNI executable or systemd read a unit while we replace it.
        target = self.host(path)
        fd, tmp = tempfile.mkstemp(prefix=".netplane-", dir=os.path.dirname(target))
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.chmod(tmp, mode)
            os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    def _check_ours(self, path: str, m: Manifest, force: bool, adopt: Callable[[str], bool] | None = None) -> None:
        """Refuse to replace something at `path` that an earlier install did not put there."""
        if path in m.files or not self.exists(path) or force:
            return
        if adopt is not None and adopt(self.host(path)):
            return
        raise InstallError(f"{path} exists and was not installed by netplane; move it away or use --force")

    def put_file(self, path: str, data: bytes, m: Manifest, mode: int = 0o644, force: bool = False,
                 adopt: Callable[[str], bool] | None = None) -> bool:
        """Write one of our files; returns whether its content changed."""
        self._check_ours(path, m, force, adopt)
        self.ensure_dir(os.path.dirname(path), m)
        changed = not (os.path.isfile(self.host(path)) and Path(self.host(path)).read_bytes() == data)
        if changed or (os.stat(self.host(path)).st_mode & 0o7777) != mode:
            self._write_bytes(path, data, mode)
        m.files[path] = {"kind": "file", "sha256": hashlib.sha256(data).hexdigest()}
        return changed

    def put_config(self, path: str, default: str, edits: dict[str, str], m: Manifest) -> None:
        """Write a config file from its default the first time; afterwards apply only `edits`."""
        entry = m.files.get(path)
        host = self.host(path)
        modified = False
        if os.path.isfile(host):
            current = Path(host).read_text()
            preexisting = entry is None or bool(entry.get("preexisting"))
            # Edited by the operator since we last wrote it: from now on it is theirs to keep,
            # even after this install writes our keys into it.
            modified = bool(entry and (entry.get("modified") or entry.get("sha256") != sha256_file(host)))
        else:
            current, preexisting = default, False
        new = plan.set_env_values(current, edits) if edits else current
        self.ensure_dir(os.path.dirname(path), m)
        if new != current or not os.path.isfile(host):
            self._write_bytes(path, new.encode(), 0o644)
        m.files[path] = {"kind": "config", "sha256": hashlib.sha256(new.encode()).hexdigest(),
                         "preexisting": preexisting, "modified": modified}

    def put_symlink(self, path: str, target: str, m: Manifest, force: bool = False) -> None:
        host = self.host(path)
        if os.path.islink(host) and os.readlink(host) == target:
            m.files[path] = {"kind": "symlink", "target": target}
            return
        try:
            self._check_ours(path, m, force)
        except InstallError as e:
            self.log(f"skipping {path}: {e}")  # a convenience link: not worth failing the install
            return
        self.ensure_dir(os.path.dirname(path), m)
        tmp = host + ".netplane-new"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        os.symlink(target, tmp)
        os.replace(tmp, host)
        m.files[path] = {"kind": "symlink", "target": target}

    def remove_entry(self, path: str, entry: dict[str, Any], purge: bool) -> str | None:
        """Remove one manifest entry; returns a note when something is deliberately kept."""
        host = self.host(path)
        kind = entry.get("kind")
        if kind == "tree":
            shutil.rmtree(host, ignore_errors=True)
            return None
        if not os.path.lexists(host):
            return None
        if kind == "symlink":
            if os.path.islink(host) and os.readlink(host) == entry.get("target"):
                os.unlink(host)
                return None
            return f"kept {path}: it no longer points into the netplane install"
        if kind == "config" and not purge:
            if entry.get("preexisting"):
                return f"kept {path}: it existed before netplane was installed"
            if entry.get("modified") or sha256_file(host) != entry.get("sha256"):
                return f"kept {path}: you changed it (uninstall --purge removes it)"
        if os.path.isdir(host) and not os.path.islink(host):
            return f"kept {path}: a directory where netplane installed a file"
        os.unlink(host)
        return None

    # -- commands -------------------------------------------------------------------------------

    def systemctl(self, *args: str) -> bool:
        try:
            proc = self.run(["systemctl", *args])
        except FileNotFoundError:
            self.log("systemctl not found: units installed but not enabled")
            return False
        if proc.returncode != 0:
            self.log(f"systemctl {' '.join(args)} failed: {(proc.stderr or proc.stdout).strip()}")
            return False
        return True

    def must_run(self, argv: Sequence[str], what: str) -> subprocess.CompletedProcess[str]:
        try:
            proc = self.run(argv)
        except FileNotFoundError as e:
            raise InstallError(f"{what}: {argv[0]} not found") from e
        if proc.returncode != 0:
            out = (proc.stderr or "") + (proc.stdout or "")
            tail = "\n".join(out.strip().splitlines()[-15:])
            raise InstallError(f"{what} failed ({' '.join(argv[:4])} ... exit {proc.returncode}):\n{tail}")
        return proc

    def missing_packages(self, packages: Iterable[str]) -> list[str]:
        missing = []
        for p in packages:
            try:
                proc = self.run(["dpkg-query", "-W", "-f=${Status}", p])
            except FileNotFoundError as e:
                raise InstallError("dpkg-query not found: netplane installs on Debian (12) only") from e
            if proc.returncode != 0 or not proc.stdout.strip().endswith("install ok installed"):
                missing.append(p)
        return missing

    # -- install ------------------------------------------------------------------------------------

    def install(self, opts: Options) -> Manifest:
        daemons = plan.daemons_for(opts.role, opts.extras)
        if self.root == "/" and os.geteuid() != 0:
            raise InstallError("must run as root (it writes /etc, /opt and systemd units)")
        artifacts = self.artifacts_dir()
        old = self.load_manifest()
        m = Manifest(prefix=self.prefix)
        if old is not None:
            # Start from what is there, so a failure half-way still leaves an accurate manifest.
            m.files, m.dirs, m.enabled = dict(old.files), list(old.dirs), list(old.enabled)
        m.role, m.extras = opts.role, list(opts.extras)

        self.step_packages(daemons, opts.apt)
        self.ensure_dir(self.prefix, m)
        self.save_manifest(m)
        self.step_venv(opts, m)
        self.save_manifest(m)
        planned = self.step_files(artifacts, daemons, opts, m)
        for path in [p for p in list(m.files) if p not in planned]:
            # e.g. the role no longer runs the node agent: its CNI executables go
            note = self.remove_entry(path, m.files.pop(path), purge=False)
            if note:
                self.log(note)
        self.save_manifest(m)
        self.step_systemd(daemons, opts, m)
        self.save_manifest(m)
        self.log(f"installed netplane ({opts.role}) under {self.prefix}; enabled: {', '.join(m.enabled) or 'none'}")
        return m

    def artifacts_dir(self) -> str:
        """Where the units and default configs come from: the checkout we run from, else a previous install."""
        checkout = find_checkout()
        if checkout is not None:
            return str(checkout)
        installed = self.host(self.share)
        if os.path.isfile(os.path.join(installed, "proxy", plan.unit_name("node"))):
            return installed
        raise InstallError("cannot find the units (proxy/): run the install from a netplane checkout "
                           "(sudo python3 -m netplane.install ...)")

    def step_packages(self, daemons: Sequence[str], apt: bool) -> None:
        missing = self.missing_packages(plan.packages_for(daemons))
        if not missing:
            return
        if not apt:
            raise InstallError(f"missing Debian packages: {' '.join(missing)} (install them, or drop --no-apt)")
        self.log(f"installing Debian packages: {' '.join(missing)}")
        env = ["env", "DEBIAN_FRONTEND=noninteractive"]
        self.must_run([*env, "apt-get", "update", "-qq"], "apt-get update")
        self.must_run([*env, "apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing],
                      "apt-get install")

    def step_venv(self, opts: Options, m: Manifest) -> None:
        venv_python = f"{self.venv}/bin/python"
        have_venv = os.path.exists(self.host(venv_python))
        if have_venv and self.venv not in m.files and not opts.force:
            raise InstallError(f"{self.venv} exists and was not installed by netplane; move it away or use --force")
        if not have_venv or self._venv_python_changed():
            self.log(f"creating the virtualenv {self.venv}")
            self.must_run([SYSTEM_PYTHON, "-m", "venv", "--clear", self.venv], "creating the virtualenv")
        m.files[self.venv] = {"kind": "tree"}
        source = opts.source
        if source is None:
            checkout = find_checkout()
            source = str(checkout) if checkout is not None else None
        if source is None:
            if not os.path.exists(self.host(f"{self.venv}/bin/netplane")):
                raise InstallError("no netplane package to install: give --source CHECKOUT_OR_WHEEL")
            self.log("keeping the installed netplane package (no --source)")
            return
        self.install_package(source, opts.wheelhouse)

    def _venv_python_changed(self) -> bool:
        """Whether the venv was made by another Python than the system's (e.g. after a dist upgrade)."""
        cfg = self.host(f"{self.venv}/pyvenv.cfg")
        try:
            text = Path(cfg).read_text()
        except OSError:
            return True
        have = next((ln.split("=", 1)[1].strip() for ln in text.splitlines()
                     if ln.split("=", 1)[0].strip() in ("version", "version_info")), "")
        want = self.must_run([SYSTEM_PYTHON, "-c", "import platform; print(platform.python_version())"],
                             "asking python3 its version").stdout.strip()
        return bool(want) and have != want

    def install_package(self, source: str, wheelhouse: str | None) -> None:
        pip = [f"{self.venv}/bin/python", "-m", "pip", "--disable-pip-version-check", "--no-input"]
        index = ["--no-index", "--find-links", wheelhouse] if wheelhouse else []
        with tempfile.TemporaryDirectory(prefix="netplane-install-") as tmp:
            if os.path.isdir(source):
                # Build from a copy of just what the package needs: never write build/ or
                # *.egg-info into the operator's checkout (or a read-only synced folder).
                src = os.path.join(tmp, "src")
                os.mkdir(src)
                for name in ("pyproject.toml", "README.md"):
                    if os.path.exists(os.path.join(source, name)):
                        shutil.copy2(os.path.join(source, name), src)
                shutil.copytree(os.path.join(source, "netplane"), os.path.join(src, "netplane"),
                                ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
                self.log(f"building netplane from {source}")
                self.must_run([*pip, "wheel", "--no-deps", "-q", *index, "-w", tmp, src], "building the wheel")
                wheels = sorted(Path(tmp).glob("netplane-*.whl"))
                if not wheels:
                    raise InstallError(f"building {source} produced no netplane wheel")
                wheel = str(wheels[-1])
            else:
                wheel = source
            self.log(f"installing {os.path.basename(wheel)} and its dependencies into {self.venv}")
            self.must_run([*pip, "install", "-q", "--upgrade", *index, wheel], "pip install")
            # The same version number may carry new code (a checkout): replace the files regardless.
            self.must_run([*pip, "install", "-q", "--force-reinstall", "--no-deps", *index, wheel],
                          "pip install (reinstall)")

    def step_files(self, artifacts: str, daemons: Sequence[str], opts: Options, m: Manifest) -> set[str]:
        planned: set[str] = {self.venv}
        proxy_dir = os.path.join(artifacts, "proxy")

        def read(name: str) -> str:
            return Path(proxy_dir, name).read_text()

        # Shared artifacts: what later installs (and operators) read the defaults from.
        if os.path.realpath(artifacts) != os.path.realpath(self.host(self.share)):
            staged = f"{self.share}.new"
            shutil.rmtree(self.host(staged), ignore_errors=True)
            self.ensure_dir(os.path.dirname(self.share), m)
            os.mkdir(self.host(staged))
            for sub in ("proxy", "cni"):
                shutil.copytree(os.path.join(artifacts, sub), self.host(f"{staged}/{sub}"),
                                ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            shutil.rmtree(self.host(self.share), ignore_errors=True)
            os.replace(self.host(staged), self.host(self.share))
        m.files[self.share] = {"kind": "tree"}
        planned.add(self.share)

        changed_units = []
        for d in plan.DAEMONS:
            path = f"{plan.UNIT_DIR}/{plan.unit_name(d)}"
            if self.put_file(path, plan.render_unit(read(plan.unit_name(d)), self.prefix).encode(), m,
                             force=opts.force):
                changed_units.append(plan.unit_name(d))
            planned.add(path)

        settings = self._defaulted_settings(opts.settings, daemons, m)
        current: dict[str, dict[str, str]] = {}
        for name in ("netplane", *plan.DAEMONS):
            env_path = self.host(f"{plan.CONFIG_DIR}/{name}.env")
            if os.path.isfile(env_path):
                current[name] = plan.parse_env(Path(env_path).read_text())
        edits = plan.config_edits(settings, current)
        for name in ("netplane", *plan.DAEMONS):
            path = f"{plan.CONFIG_DIR}/{name}.env"
            self.put_config(path, read(f"{name}.env"), edits.get(name, {}), m)
            planned.add(path)

        self.put_symlink(plan.BIN_LINK, f"{self.venv}/bin/netplane", m, force=opts.force)
        if plan.BIN_LINK in m.files:
            planned.add(plan.BIN_LINK)

        if plan.runs_node_agent(daemons):
            self.put_file(plan.MODULES_LOAD, read("modules-load.conf").encode(), m, force=opts.force)
            planned.add(plan.MODULES_LOAD)
            planned |= self.install_cni(m, opts.force)
        if changed_units:
            self.log(f"units written: {', '.join(changed_units)}")
        return planned

    def _defaulted_settings(self, s: Settings, daemons: Sequence[str], m: Manifest) -> Settings:
        """Fill the node name and address on a node's first install (hostname; the route's source)."""
        if not plan.runs_node_agent(daemons):
            return s
        path = self.host(f"{plan.CONFIG_DIR}/netplane.env")
        present = plan.parse_env(Path(path).read_text()) if os.path.isfile(path) else {}
        node_name, address = s.node_name, s.address
        if node_name is None and not present.get("NETPLANE_NODE_NAME"):
            node_name = socket.gethostname().split(".")[0].lower()
        if address is None and not present.get("NETPLANE_NODE_ADDRESS"):
            address = detect_address(s.server or present.get("NETPLANE_SERVER"))
            if address is None:
                self.log("could not tell this node's address: set NETPLANE_NODE_ADDRESS in "
                         f"{plan.CONFIG_DIR}/netplane.env (or pass --address)")
        return dataclasses.replace(s, node_name=node_name, address=address)

    def install_cni(self, m: Manifest, force: bool) -> set[str]:
        """The CNI executables, written by the installed netplane itself (so they name its Python)."""
        names = [f"{plan.CNI_BIN_DIR}/netplane", f"{plan.CNI_BIN_DIR}/netplane-ipam"]
        for path in names:
            self._check_ours(path, m, force, adopt=_is_netplane_cni)
        self.ensure_dir(plan.CNI_BIN_DIR, m)
        self.must_run([f"{self.venv}/bin/netplane", "cni", "install", "--bin-dir", plan.CNI_BIN_DIR],
                      "installing the CNI executables")
        for path in names:
            if not os.path.isfile(self.host(path)):
                raise InstallError(f"`netplane cni install` did not write {path}")
            m.files[path] = {"kind": "file", "sha256": sha256_file(self.host(path))}
        return set(names)

    def step_systemd(self, daemons: Sequence[str], opts: Options, m: Manifest) -> None:
        want = [plan.unit_name(d) for d in daemons]
        booted = self.booted()
        if booted:
            self.systemctl("daemon-reload")
        stale = [u for u in m.enabled if u not in want]
        if stale:
            self.systemctl("disable", *(["--now"] if booted else []), *stale)
        wants_dir = f"{plan.UNIT_DIR}/multi-user.target.wants"
        if not self.exists(wants_dir):
            self.ensure_dir(wants_dir, m)  # recorded, so uninstall removes it once empty
        if self.systemctl("enable", *want):
            m.enabled = want
        else:
            m.enabled = [u for u in m.enabled if u in want]
        if not booted:
            self.log("systemd is not running here (chroot or container): units enabled, not started")
            return
        if plan.runs_node_agent(daemons):
            # Load br_netfilter & co. now, not only at the next boot.
            self.systemctl("restart", "systemd-modules-load.service")
        if opts.start and want:
            # restart = start when stopped; on an upgrade it picks up the new code and units.
            self.systemctl("restart", *want)

    # -- uninstall ------------------------------------------------------------------------------------

    def uninstall(self, purge: bool = False) -> list[str]:
        """Remove what the manifest lists; returns notes about what was deliberately kept."""
        if self.root == "/" and os.geteuid() != 0:
            raise InstallError("must run as root")
        m = self.load_manifest()
        if m is None:
            raise InstallError(f"nothing to uninstall: no {self.manifest_path}")
        booted = self.booted()
        units = [p.rsplit("/", 1)[1] for p, e in m.files.items()
                 if p.startswith(plan.UNIT_DIR + "/") and e.get("kind") == "file"]
        if units:
            self.systemctl("disable", *(["--now"] if booted else []), *units)
        notes: list[str] = []
        # The venv last: this process may be running from it.
        for path in sorted(m.files, key=lambda p: p == self.venv):
            note = self.remove_entry(path, m.files[path], purge)
            if note:
                notes.append(note)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.host(self.manifest_path))
        for d in sorted(m.dirs, key=lambda p: p.count("/"), reverse=True):
            with contextlib.suppress(OSError):  # not empty: someone else's files are in it
                os.rmdir(self.host(d))
        if purge:
            for path in plan.RUNTIME_LEFTOVERS:
                host = self.host(path)
                if os.path.isdir(host) and not os.path.islink(host):
                    shutil.rmtree(host, ignore_errors=True)
                elif os.path.lexists(host):
                    os.unlink(host)
        else:
            left = [p for p in plan.RUNTIME_LEFTOVERS if self.exists(p)]
            if left:
                notes.append(f"kept the daemons' state: {', '.join(left)} (uninstall --purge removes it)")
        if booted:
            self.systemctl("daemon-reload")
        for note in notes:
            self.log(note)
        self.log(f"uninstalled netplane from {self.prefix}")
        return notes


def _is_netplane_cni(path: str) -> bool:
    """An executable an earlier `netplane cni install` (or node agent) wrote: safe to take over."""
    try:
        with open(path, "rb") as f:
            return CNI_MARKER in f.read(512)
    except OSError:
        return False
