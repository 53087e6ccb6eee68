#!/usr/bin/python3
# SPDX-License-Identifier: LGPL-2.1-or-later
"""End-to-end harness: boot a real kernel with a dracut initramfs that carries sysextpy.

Everything expensive is built once and cached (default /var/cache/sysextpy-e2e, or
$SYSEXTPY_E2E_CACHE), each artefact under a key made of its inputs, so it is rebuilt only when
those change:

  kernels/<flavour>/<package>_<version>/   Debian's kernel package unpacked (never installed):
                                           vmlinux (uncompressed: boots faster under TCG) and
                                           lib/modules/<kver> with modules.dep
  roots/<key>/tree                         a minimal Debian root (mmdebstrap), same release as
                                           the host because dracut copies the host's binaries
  stage/<key>/root                         sysextpy installed as a user would (make install
                                           DESTDIR=...), shared by the initrd and the root
  initrds/<flavour>/<key>/initrd.img       dracut --add sysextpy for one kernel, built with the
                                           staged installation laid over /usr (see build_initrd)
  roots-sid/<key>/tree                     the second guest's root: Debian sid (its systemd,
                                           dracut and python3), see build_sid_root
  stage-for-root/<key>/root                the staged sysextpy with byte code of that root's python
  initrds/root-<root key>/<key>/initrd.img that root's initrd, built inside it by its own dracut
                                           (see build_root_initrd)

Each boot copies the root tree, adds sysextpy, the guest-side report unit, the kernel's modules
and the scenario's extension images, makes an ext4 image of it and boots QEMU (software
emulation) with a bounded timeout. The guest writes its report to a second serial port and
powers off; `BootResult` holds the report and the console, and says why when a boot failed.

As a script:  harness.py tools | kernel [--new] | root | initrd [--new] | build [--new|--sid] |
              smoke [--new|--sid] [--no-module]    (timings are printed at the end)
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import lzma
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

REPO_ROOT = Path(__file__).resolve().parents[2]
GUEST_DIR = Path(__file__).resolve().parent / "guest"
DEFAULT_CACHE = Path("/var/cache/sysextpy-e2e")
DEFAULT_TIMEOUT = 180.0

# Packages of the guest root. python3 runs sysextpy; cryptsetup-bin (veritysetup) and openssl
# (signature checks) are what it needs for signed verity images; the rest is what a systemd boot
# to multi-user.target needs.
ROOT_PACKAGES = (
    "systemd",
    "systemd-sysv",
    "udev",
    "kmod",
    "python3",
    "e2fsprogs",
    "util-linux",
    "cryptsetup-bin",
    "openssl",
)
# Bumped whenever the recipe below changes in a way the package list does not show.
ROOT_RECIPE = 3
# Units that only slow a throw-away test boot down or wait for input on the console.
MASKED_UNITS = (
    "systemd-firstboot.service",
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
    "dpkg-db-backup.timer",
    "e2scrub_all.timer",
    "e2scrub_reap.service",
    "fstrim.timer",
    "getty@tty1.service",
    "getty-static.service",
    "systemd-pstore.service",
)
# Modules the guest root carries for its kernel (with their dependencies): what sysextpy and
# its tests may load after switch-root. A real system has them all; copying only these keeps the
# root image small.
GUEST_MODULES = (
    "loop",
    "overlay",
    "squashfs",
    "erofs",
    "dm_mod",
    "dm_verity",
    "ext4",
    "virtio_blk",
    "virtio_pci",
    "autofs4",
    "binfmt_misc",
)
# Drivers of the initrd: the boot disk and its file system. Listing them replaces dracut's
# "every storage driver" default, which makes the initrd several times larger and the boot slower.
INITRD_DRIVERS = ("virtio_pci", "virtio_blk", "ext4")
# dracut modules that a no-hostonly build would pull in and this boot does not need (nothing
# sysextpy's module might depend on: dm, crypt, systemd-veritysetup, systemd-sysext stay).
INITRD_OMIT = (
    "plymouth",
    "i18n",
    "btrfs",
    "dmraid",
    "lvm",
    "mdraid",
    "multipath",
    "nvdimm",
    "nvmf",
    "resume",
    "qemu",
    "virtfs",
    "virtiofs",
    "fido2",
    "pkcs11",
    "tpm2-tss",
    "pcsc",
    "rngd",
    "biosdevname",
    "memstrack",
    "systemd-coredump",
    "systemd-pstore",
    "systemd-portabled",
    "systemd-repart",
    "systemd-resolved",
    "systemd-timesyncd",
    "systemd-hostnamed",
    "systemd-timedated",
    "systemd-rfkill",
    "systemd-pcrphase",
    "watchdog",
    "watchdog-modules",
    "lunmask",
    "bluetooth",
)
KERNEL_CMDLINE = (
    "root=/dev/vda",
    "rw",
    "console=ttyS0",
    "panic=-1",
    "mitigations=off",
    # Under multi-threaded TCG, a guest CPU can run stale code while another patches a static key.
    # A 6.12 kernel that finds its TSC stable patches sched_clock_cpu() at its late initcalls
    # ("sched_clock: Marking stable"), and about one boot in a hundred oopsed there ("int3" at
    # sched_clock_cpu+0x9) before /init ran. With the TSC unstable that key is never flipped;
    # the clock source is the HPET, as the 6.1 kernel picks by itself here.
    "tsc=unstable",
    # A failure in the initrd powers off instead of waiting for a shell nobody can type into.
    "rd.shell=0",
    "rd.emergency=poweroff",
    "systemd.firstboot=no",
)
NEW_KERNEL_MIN = (6, 5)  # MOVE_MOUNT_BENEATH
# The host tools the harness runs; tests/packages says which packages bring them.
TOOLS = (
    "qemu-system-x86_64",
    "mmdebstrap",
    "dracut",
    "lsinitrd",
    "mksquashfs",
    "mkfs.erofs",
    "mkfs.ext4",
    "veritysetup",
    "depmod",
    "cpio",
)

PathLike = Union[str, "os.PathLike[str]"]


class HarnessError(Exception):
    """Something the harness needs could not be built or run; the message says what."""


# --------------------------------------------------------------------------- small helpers


TIMINGS: dict[str, float] = {}


def log(message: str) -> None:
    print(f"e2e: {message}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def timed(name: str) -> Iterator[None]:
    started = time.monotonic()
    try:
        yield
    finally:
        TIMINGS[name] = round(TIMINGS.get(name, 0.0) + time.monotonic() - started, 2)


def run(
    argv: Sequence[PathLike],
    *,
    env: Optional[Mapping[str, str]] = None,
    cwd: Optional[PathLike] = None,
    timeout: float = 1800,
    input: Optional[str] = None,
) -> subprocess.CompletedProcess[str]:
    """Run a command, capture its output; fail with the command's own words when it fails."""
    args = [os.fspath(a) for a in argv]
    full_env = dict(os.environ)
    full_env.update(env or {})
    try:
        proc = subprocess.run(
            args,
            env=full_env,
            cwd=cwd,
            input=input,
            stdin=None if input is not None else subprocess.DEVNULL,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=timeout,
            check=False,
        )
    except FileNotFoundError as e:
        raise HarnessError(f"{args[0]!r} is not installed") from e
    except subprocess.TimeoutExpired as e:
        raise HarnessError(f"{' '.join(args)} did not finish within {timeout:.0f} s") from e
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-40:])
        raise HarnessError(f"{' '.join(args)} failed with exit status {proc.returncode}:\n{tail}")
    return proc


def digest(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:20]


def tree_digest(paths: Iterable[Path], base: Path) -> dict[str, str]:
    """Content digest of every file below `paths` (relative names, symlink targets included)."""
    out: dict[str, str] = {}
    for top in paths:
        if not top.exists():
            continue
        files = (
            [top] if not top.is_dir() else sorted(p for p in top.rglob("*") if "__pycache__" not in p.parts)
        )
        for path in files:
            rel = os.fspath(path.relative_to(base))
            if path.is_symlink():
                out[rel] = "link:" + os.readlink(path)
            elif path.is_file():
                mode = "x" if os.access(path, os.X_OK) else "-"
                out[rel] = mode + hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def cache_dir() -> Path:
    path = Path(os.environ.get("SYSEXTPY_E2E_CACHE") or DEFAULT_CACHE)
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextlib.contextmanager
def cache_lock(cache: Path) -> Iterator[None]:
    """Serialise builds of concurrent runs sharing one cache."""
    with open(cache / ".lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def prune(kind_dir: Path, keep: Path, count: int = 2) -> None:
    """Drop old cached artefacts of one kind, newest `count` (including `keep`) stay."""
    entries = sorted(
        (p for p in kind_dir.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime, reverse=True
    )
    kept = [keep]
    for entry in entries:
        if entry == keep:
            continue
        if len(kept) < count and (entry / ".complete").exists():
            kept.append(entry)
            continue
        shutil.rmtree(entry, ignore_errors=True)


def host_os_release() -> dict[str, str]:
    out = {}
    for line in Path("/etc/os-release").read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep:
            out[key.strip()] = value.strip().strip("\"'")
    return out


def host_package_versions(names: Iterable[str]) -> dict[str, str]:
    proc = subprocess.run(
        ["dpkg-query", "-W", "-f=${Package} ${Version}\\n", *names],
        capture_output=True,
        text=True,
        check=False,
    )
    return dict(line.split(" ", 1) for line in proc.stdout.splitlines() if " " in line)


# --------------------------------------------------------------------------- host tools


def apt_install(packages: Sequence[str]) -> None:
    """Install host packages, refusing when apt would remove anything to do so."""
    base = ["apt-get", "-o", "DPkg::Lock::Timeout=600", "--no-install-recommends", "-y"]
    env = {"DEBIAN_FRONTEND": "noninteractive"}
    try:
        sim = run([*base, "-s", "install", *packages], env=env)
    except HarnessError:
        run(["apt-get", "-o", "DPkg::Lock::Timeout=600", "update", "-qq"], env=env)
        sim = run([*base, "-s", "install", *packages], env=env)
    removals = [line for line in sim.stdout.splitlines() if line.startswith("Remv ")]
    if removals:
        raise HarnessError(
            f"installing {', '.join(packages)} would remove packages (install by hand if that is fine):\n"
            + "\n".join(removals)
        )
    run([*base, "-qq", "install", *packages], env=env)


def ensure_tools() -> None:
    """The harness installs nothing: `make test` and `make e2e` install tests/packages as root."""
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        raise HarnessError(
            f"missing host tools: {' '.join(missing)}; as root, `make prerequisites` installs "
            f"the packages of {REPO_ROOT / 'tests/packages'}"
        )


# --------------------------------------------------------------------------- apt (read-only use)


@dataclass(frozen=True)
class Apt:
    """apt-get/apt-cache, either with the host's configuration or with a private one.

    A private configuration (its own sources.list, lists and cache directories) reaches another
    suite without touching the host's apt sources or state.
    """

    options: tuple[str, ...] = ()
    private_dir: Optional[Path] = None

    @classmethod
    def private(cls, directory: Path, sources: Sequence[str]) -> Apt:
        for sub in ("lists/partial", "cache/archives/partial", "etc/sources.list.d", "etc/preferences.d"):
            (directory / sub).mkdir(parents=True, exist_ok=True)
        sources_list = directory / "etc/sources.list"
        text = "".join(line + "\n" for line in sources)
        if not sources_list.exists() or sources_list.read_text() != text:
            sources_list.write_text(text)
            (directory / "lists/.updated").unlink(missing_ok=True)
        options = (
            f"-oDir::Etc::sourcelist={sources_list}",
            f"-oDir::Etc::sourceparts={directory / 'etc/sources.list.d'}",
            f"-oDir::Etc::preferences={directory / 'etc/preferences'}",
            f"-oDir::Etc::preferencesparts={directory / 'etc/preferences.d'}",
            f"-oDir::State::Lists={directory / 'lists'}",
            f"-oDir::Cache={directory / 'cache'}",
            "-oAPT::Sandbox::User=root",
        )
        return cls(options=options, private_dir=directory)

    def update(self) -> None:
        run(["apt-get", *self.options, "-o", "DPkg::Lock::Timeout=600", "update", "-qq"])
        if self.private_dir is not None:
            (self.private_dir / "lists/.updated").write_text(f"{time.time()}\n")

    def ensure_lists(self, max_age_days: float = 7) -> None:
        if self.private_dir is None:
            return
        stamp = self.private_dir / "lists/.updated"
        if not stamp.exists() or time.time() - stamp.stat().st_mtime > max_age_days * 86400:
            self.update()

    def candidates(self, packages: Sequence[str]) -> dict[str, Optional[str]]:
        """The version apt would install of each package (None: not available); one apt-cache run."""
        proc = subprocess.run(
            ["apt-cache", *self.options, "policy", *packages], capture_output=True, text=True, check=False
        )
        found = dict(re.findall(r"^(\S+):\n\s*Installed:.*\n\s*Candidate:\s*(\S+)", proc.stdout, re.M))
        return {p: (found.get(p) if found.get(p) != "(none)" else None) for p in packages}

    def candidate(self, package: str) -> Optional[str]:
        return self.candidates([package])[package]

    def depends(self, package: str) -> list[str]:
        proc = run(["apt-cache", *self.options, "depends", package])
        return re.findall(r"^\s*Depends:\s*(\S+)", proc.stdout, re.M)

    def download(self, package: str, version: str, dest: Path) -> Path:
        """Fetch one .deb into `dest`; a stale package list gets one update and a retry."""
        argv = ["apt-get", *self.options, "-oAPT::Sandbox::User=root", "download", f"{package}={version}"]
        try:
            run(argv, cwd=dest)
        except HarnessError:
            self.update()
            run(argv, cwd=dest)
        debs = sorted(dest.glob(f"{package}_*.deb"))
        if not debs:
            raise HarnessError(f"apt-get download {package}={version} left no .deb in {dest}")
        return debs[-1]


def debian_mirror() -> str:
    """The Debian mirror the host uses (first deb822 or one-line source ending in /debian)."""
    candidates: list[str] = []
    for path in [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]:
        try:
            text = path.read_text()
        except OSError:
            continue
        candidates += re.findall(r"^URIs:\s*(\S+)", text, re.M | re.I)
        candidates += re.findall(r"^deb\s+(?:\[[^\]]*\]\s+)?(\S+)", text, re.M)
    for uri in candidates:
        if uri.rstrip("/").endswith("/debian"):
            return uri.rstrip("/")
    return "http://deb.debian.org/debian"


def root_sources(codename: str) -> list[str]:
    mirror = debian_mirror()
    security = mirror[: -len("/debian")] + "/debian-security"
    return [
        f"deb {mirror} {codename} main",
        f"deb {mirror} {codename}-updates main",
        f"deb {security} {codename}-security main",
    ]


# --------------------------------------------------------------------------- kernel


@dataclass(frozen=True)
class Kernel:
    flavour: str  # "stable" (the host release's kernel) or "new" (>= 6.5)
    package: str
    version: str
    kver: str  # uname -r of the kernel
    directory: Path

    @property
    def vmlinux(self) -> Path:
        return self.directory / "vmlinux"

    @property
    def moddir(self) -> Path:
        return self.directory / "lib/modules" / self.kver

    @property
    def release(self) -> tuple[int, int]:
        major, minor = re.match(r"(\d+)\.(\d+)", self.kver).groups()  # type: ignore[union-attr]
        return int(major), int(minor)


# Compressed-payload magics inside a bzImage, as the kernel's extract-vmlinux looks for them.
_MAGICS = (
    ("gzip", b"\x1f\x8b\x08"),
    ("xz", b"\xfd7zXZ\x00"),
    ("zstd", b"\x28\xb5\x2f\xfd"),
    ("lz4", b"\x02\x21\x4c\x18"),
    ("bzip2", b"BZh"),
    ("lzma", b"\x5d\x00\x00\x00"),
)


def _decompress(method: str, data: bytes) -> bytes:
    """Decompress the stream at the start of `data`, ignoring whatever trails it."""
    if method == "gzip":
        return zlib.decompressobj(wbits=31).decompress(data)
    if method == "xz":
        return lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(data)
    if method == "lzma":
        return lzma.LZMADecompressor(format=lzma.FORMAT_ALONE).decompress(data)
    if method == "bzip2":
        import bz2

        return bz2.BZ2Decompressor().decompress(data)
    # No zstd/lz4 in the standard library: the command-line tools, which stop with an error at
    # the trailing bytes after having written the whole first frame.
    tool = {"zstd": ["zstd", "-d", "-c", "-q"], "lz4": ["lz4", "-d", "-c", "-q"]}[method]
    if shutil.which(tool[0]) is None:
        raise HarnessError(f"{tool[0]} is needed to unpack a {method}-compressed kernel")
    proc = subprocess.run(tool, input=data, capture_output=True, check=False)
    return proc.stdout


def extract_vmlinux(image: bytes) -> bytes:
    """The uncompressed ELF kernel inside a bzImage (what scripts/extract-vmlinux does)."""
    if image[:4] == b"\x7fELF":
        return image
    for method, magic in _MAGICS:
        start = image.find(magic)
        while start != -1:
            try:
                out = _decompress(method, image[start:])
            except (OSError, EOFError, ValueError, lzma.LZMAError, zlib.error):
                out = b""
            if out[:4] == b"\x7fELF":
                return out
            start = image.find(magic, start + 1)
    raise HarnessError("no compressed ELF kernel found inside the vmlinuz image")


def _resolve_kernel_package(apt: Apt) -> tuple[str, str]:
    versioned = [d for d in apt.depends("linux-image-amd64") if d.startswith("linux-image-")]
    if not versioned:
        raise HarnessError("linux-image-amd64 depends on no versioned linux-image package")
    package = versioned[0]
    version = apt.candidate(package)
    if version is None:
        raise HarnessError(f"no installable version of {package}")
    return package, version


def _new_kernel_apts(cache: Path) -> list[Apt]:
    """Private apt configurations of the suites that may hold a kernel >= 6.5, in preference order."""
    codename = host_os_release().get("VERSION_CODENAME", "bookworm")
    mirror = debian_mirror()
    suites = (
        [os.environ["SYSEXTPY_E2E_NEW_KERNEL_SUITE"]]
        if os.environ.get("SYSEXTPY_E2E_NEW_KERNEL_SUITE")
        else []
    )
    suites += [f"{codename}-backports", "trixie"]
    keyring = "/usr/share/keyrings/debian-archive-keyring.gpg"
    return [
        Apt.private(cache / "apt" / suite, [f"deb [signed-by={keyring}] {mirror} {suite} main"])
        for suite in dict.fromkeys(suites)
    ]


def fetch_kernel(flavour: str = "stable") -> Kernel:
    """Debian's kernel, downloaded and unpacked into the cache (never installed on the host)."""
    cache = cache_dir()
    with cache_lock(cache):
        if flavour == "stable":
            apt = Apt()
            package, version = _resolve_kernel_package(apt)
        elif flavour == "new":
            for apt in _new_kernel_apts(cache):
                apt.ensure_lists()
                package, version = _resolve_kernel_package(apt)
                if tuple(int(x) for x in re.findall(r"\d+", version)[:2]) >= NEW_KERNEL_MIN:
                    break
            else:
                raise HarnessError(f"no Debian kernel >= {NEW_KERNEL_MIN} found in backports or trixie")
        else:
            raise HarnessError(f"unknown kernel flavour {flavour!r}")
        kind_dir = cache / "kernels" / flavour
        directory = kind_dir / f"{package}_{version}"
        kver = package[len("linux-image-") :]
        kernel = Kernel(flavour, package, version, kver, directory)
        if (directory / ".complete").exists():
            return kernel
        log(f"fetching kernel {package} {version}")
        with timed(f"kernel fetch ({flavour})"):
            shutil.rmtree(directory, ignore_errors=True)
            directory.mkdir(parents=True)
            with tempfile.TemporaryDirectory(dir=cache) as tmp:
                deb = apt.download(package, version, Path(tmp))
                run(["dpkg-deb", "-x", deb, directory])
            vmlinuz = next((directory / "boot").glob("vmlinuz-*"))
            kernel.vmlinux.write_bytes(extract_vmlinux(vmlinuz.read_bytes()))
            # The package ships no modules.dep (its postinst would run depmod); dracut and the
            # guest root need it.
            run(["depmod", "-b", directory, kver])
            (directory / ".complete").write_text(f"{package} {version}\n")
        prune(kind_dir, directory)
        return kernel


def module_closure(kernel: Kernel, names: Iterable[str]) -> list[str]:
    """Relative paths of the named modules and everything they depend on (missing ones skipped:
    built into this kernel)."""
    deps: dict[str, list[str]] = {}
    by_name: dict[str, str] = {}
    for line in (kernel.moddir / "modules.dep").read_text().splitlines():
        path, _, rest = line.partition(":")
        deps[path] = rest.split()
        base = os.path.basename(path).split(".ko")[0].replace("-", "_")
        by_name[base] = path
    todo = [by_name[n.replace("-", "_")] for n in names if n.replace("-", "_") in by_name]
    seen: set[str] = set()
    while todo:
        path = todo.pop()
        if path not in seen:
            seen.add(path)
            todo.extend(deps.get(path, []))
    return sorted(seen)


# --------------------------------------------------------------------------- root file system


@dataclass(frozen=True)
class BaseRoot:
    key: str
    tree: Path


# What neither guest needs of its packages: documentation (but the copyright files) and
# translations; mmdebstrap passes these to dpkg.
SLIM_ROOT = (
    "--dpkgopt=path-exclude=/usr/share/man/*",
    "--dpkgopt=path-exclude=/usr/share/doc/*",
    "--dpkgopt=path-include=/usr/share/doc/*/copyright",
    "--dpkgopt=path-exclude=/usr/share/locale/*",
    "--dpkgopt=path-exclude=/usr/share/info/*",
)


def build_base_root() -> BaseRoot:
    """A minimal Debian root of the host's release with systemd and python3 (no sysextpy yet)."""
    cache = cache_dir()
    with cache_lock(cache):
        release = host_os_release()
        codename = release.get("VERSION_CODENAME", "bookworm")
        apt = Apt()
        versions = apt.candidates(ROOT_PACKAGES)
        sources = root_sources(codename)
        key = digest(ROOT_RECIPE, codename, sources, versions, MASKED_UNITS)
        # Without the hook the root pulls in usrmerge and with it perl.
        options = ["--hook-dir=/usr/share/mmdebstrap/hooks/merged-usr"]
        return _debootstrapped(
            cache / "roots", key, codename, ROOT_PACKAGES, options, sources, versions, "root build"
        )


# The second guest: Debian's development suite, with the systemd, dracut and Python that image-based
# systems ship now (the host release's are years older). Its initrd is built by its own dracut,
# inside the root (build_root_initrd), with dracut's systemd-sysext module as a distribution adds
# it: dracut-core and systemd-cryptsetup (systemd-veritysetup, which that module depends on) are
# there for the build.
SID_SUITE = "sid"
SID_PACKAGES = (*ROOT_PACKAGES, "dracut-core", "systemd-cryptsetup")
# Bumped whenever the recipe below changes in a way the package list does not show.
SID_RECIPE = 1
DEBIAN_KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
# sid's Release file is valid for a week only; a mirror that serves a snapshot of the archive (as
# the ones these machines use do) has it expired, while every package is still signed.
SID_APT_OPTION = "Acquire::Check-Valid-Until=false"


def sid_apt(cache: Path) -> Apt:
    """A private apt configuration for sid: candidate versions (the root's cache key), nothing else."""
    apt = Apt.private(
        cache / "apt" / SID_SUITE, [f"deb [signed-by={DEBIAN_KEYRING}] {debian_mirror()} {SID_SUITE} main"]
    )
    apt = Apt((*apt.options, f"-o{SID_APT_OPTION}"), apt.private_dir)
    apt.ensure_lists(max_age_days=1)
    return apt


def build_sid_root() -> BaseRoot:
    """A minimal Debian sid root with systemd, dracut and python3 (no sysextpy yet)."""
    cache = cache_dir()
    with cache_lock(cache):
        versions = sid_apt(cache).candidates(SID_PACKAGES)
        missing = sorted(name for name, version in versions.items() if version is None)
        if missing:
            raise HarnessError(f"{SID_SUITE} has no {', '.join(missing)}")
        # sid has no -updates or -security suites.
        sources = [f"deb {debian_mirror()} {SID_SUITE} main"]
        key = digest(SID_RECIPE, SID_SUITE, sources, versions, MASKED_UNITS)
        options = [f"--aptopt={SID_APT_OPTION.replace('=', ' ', 1)}"]
        # Apart from the host release's roots: pruning one kind must not drop the other.
        return _debootstrapped(
            cache / f"roots-{SID_SUITE}",
            key,
            SID_SUITE,
            SID_PACKAGES,
            options,
            sources,
            versions,
            f"root build ({SID_SUITE})",
        )


def _debootstrapped(
    kind_dir: Path,
    key: str,
    suite: str,
    packages: Sequence[str],
    options: Sequence[str],
    sources: Sequence[str],
    versions: Mapping[str, Optional[str]],
    timer: str,
) -> BaseRoot:
    """The cached root `kind_dir/key`, built with mmdebstrap from `suite` when it is not there yet
    (the caller holds the cache lock); older roots of that kind are pruned."""
    directory = kind_dir / key
    base = BaseRoot(key, directory / "tree")
    if (directory / ".complete").exists():
        return base
    ensure_tools()
    log(f"building the {suite} root (mmdebstrap)")
    with timed(timer):
        shutil.rmtree(directory, ignore_errors=True)
        directory.mkdir(parents=True)
        run(
            [
                "mmdebstrap",
                "--variant=minbase",
                "--include=" + ",".join(packages),
                *options,
                *SLIM_ROOT,
                suite,
                base.tree,
                *sources,
            ],
            timeout=1800,
        )
        _configure_root(base.tree, key)
        (directory / ".complete").write_text(json.dumps(versions) + "\n")
    prune(kind_dir, directory)
    return base


def _configure_root(tree: Path, key: str) -> None:
    # Not "sysextpy-...": the console and journal are searched for that name when a boot fails.
    (tree / "etc/hostname").write_text("guest\n")
    # A fixed machine id: no first-boot logic, and the initrd (told the same id on the kernel
    # command line) writes its journal where the real root's journalctl finds it.
    (tree / "etc/machine-id").write_text(machine_id(key) + "\n")
    (tree / "etc/fstab").write_text("# sysextpy-e2e: the root comes from root= on the kernel command line\n")
    shadow = tree / "etc/shadow"
    # A password-less root: someone debugging a guest by hand can log in on the console.
    shadow.write_text(re.sub(r"^root:[^:]*:", "root::", shadow.read_text(), flags=re.M))
    # A volatile journal (in /run, like the initrd's): no flush to disk slowing the boot down.
    shutil.rmtree(tree / "var/log/journal", ignore_errors=True)
    units = tree / "etc/systemd/system"
    for unit in MASKED_UNITS:
        for wants in units.glob(f"*.wants/{unit}"):
            wants.unlink()
        link = units / unit
        link.unlink(missing_ok=True)
        link.symlink_to("/dev/null")


def machine_id(key: str) -> str:
    return hashlib.sha256(f"sysextpy-e2e {key}".encode()).hexdigest()[:32]


# --------------------------------------------------------------------------- sysextpy, installed


def source_files() -> list[Path]:
    return [
        REPO_ROOT / "sysextpy",
        REPO_ROOT / "units",
        REPO_ROOT / "generators",
        REPO_ROOT / "dracut",
        REPO_ROOT / "Makefile",
        REPO_ROOT / "pyproject.toml",
    ]


def has_install_target() -> bool:
    return re.search(r"^install\s*:", (REPO_ROOT / "Makefile").read_text(), re.M) is not None


def stage_sysextpy() -> Path:
    """sysextpy installed into a staging directory, the way a user or image builder would."""
    cache = cache_dir()
    with cache_lock(cache):
        key = digest(tree_digest(source_files(), REPO_ROOT), has_install_target())
        kind_dir = cache / "stage"
        directory = kind_dir / key
        if (directory / ".complete").exists():
            return directory / "root"
        shutil.rmtree(directory, ignore_errors=True)
        dest = directory / "root"
        dest.mkdir(parents=True)
        if has_install_target():
            run(
                [
                    "make",
                    "-C",
                    REPO_ROOT,
                    "install",
                    f"DESTDIR={dest}",
                    "PREFIX=/usr",
                    "PYTHON=/usr/bin/python3",
                ]
            )
        else:
            _fallback_install(dest)
        merge_usr(dest)
        (directory / ".complete").write_text("")
        prune(kind_dir, directory)
        return dest


# Run a program chrooted into a root without writing into it: the root (with further layers over
# it) becomes the lower layers of an overlay whose upper directory is thrown away; /proc, /sys, /dev
# and a scratch /tmp as on a running system; "$binds" are "host-path:guest-path" pairs bound in.
_IN_ROOT = """set -eu
top=$1 layers=$2 binds=$3; shift 3
mkdir -p "$top/upper" "$top/work" "$top/root"
mount -t overlay sysextpy-e2e -o "lowerdir=$layers,upperdir=$top/upper,workdir=$top/work" "$top/root"
mount -t proc proc "$top/root/proc"
mount -t sysfs sysfs "$top/root/sys"
mount --rbind /dev "$top/root/dev"
mount -t tmpfs tmpfs "$top/root/tmp"
mount -t tmpfs tmpfs "$top/root/var/tmp"
for bind in $binds; do
    mkdir -p "$top/root${bind#*:}"
    mount --bind "${bind%%:*}" "$top/root${bind#*:}"
done
exec chroot "$top/root" "$@"
"""


def run_in_root(
    tree: Path,
    argv: Sequence[PathLike],
    *,
    layers: Sequence[Path] = (),
    binds: Optional[Mapping[str, Path]] = None,
    timeout: float = 1800,
) -> subprocess.CompletedProcess[str]:
    """`argv` run inside `tree` (with `layers` laid over it, first on top) in a private mount
    namespace; writes outside `binds` (guest path -> host directory) are discarded."""
    cache = cache_dir()
    with tempfile.TemporaryDirectory(dir=cache, prefix="in-root-") as top:
        return run(
            [
                "unshare",
                "--mount",
                "--propagation",
                "private",
                "sh",
                "-c",
                _IN_ROOT,
                "sh",
                top,
                ":".join(os.fspath(p) for p in (*layers, tree)),
                " ".join(f"{os.fspath(host)}:{guest}" for guest, host in (binds or {}).items()),
                *argv,
            ],
            timeout=timeout,
        )


PACKAGE_DIR = "/usr/lib/python3/dist-packages/sysextpy"


def stage_for_root(stage: Path, base: BaseRoot) -> Path:
    """The staged installation with its byte code compiled by `base`'s own python3: what `make
    install PYTHON=/usr/bin/python3` leaves on that root (the host's byte code is for another
    Python version, which that root's interpreter would ignore and recompile at every start)."""
    cache = cache_dir()
    with cache_lock(cache):
        key = digest(stage.parent.name, base.key)
        kind_dir = cache / "stage-for-root"
        directory = kind_dir / key
        if (directory / ".complete").exists():
            return directory / "root"
        shutil.rmtree(directory, ignore_errors=True)
        directory.mkdir(parents=True)
        dest = directory / "root"
        run(["cp", "-a", stage, dest])
        package = dest / PACKAGE_DIR.lstrip("/")
        for cached in package.glob("__pycache__"):
            shutil.rmtree(cached)
        run_in_root(
            base.tree,
            ["python3", "-I", "-m", "compileall", "-q", "--invalidation-mode", "checked-hash", PACKAGE_DIR],
            binds={PACKAGE_DIR: package},
        )
        (directory / ".complete").write_text("")
        prune(kind_dir, directory)
        return dest


def merge_usr(tree: Path) -> None:
    """Move /bin, /sbin, /lib, /lib64 of an installation into /usr, as on a merged-/usr system.

    Debian 12's systemd.pc names /lib/systemd/system, so `make install DESTDIR=` puts units there;
    on the guest (and the host) /lib is a symlink to usr/lib, which a copy must not replace.
    """
    for name in ("bin", "sbin", "lib", "lib64"):
        top = tree / name
        if top.is_symlink() or not top.is_dir():
            continue
        for path in sorted(top.rglob("*")):
            if path.is_dir() and not path.is_symlink():
                continue
            dest = tree / "usr" / path.relative_to(tree)
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, dest)
        shutil.rmtree(top)


def _fallback_install(dest: Path) -> None:
    """FALLBACK until `make install` exists: the same layout, copied by hand."""
    log("FALLBACK: the Makefile has no install target, installing sysextpy by hand")
    site = dest / "usr/lib/python3/dist-packages/sysextpy"
    site.mkdir(parents=True)
    for src in sorted((REPO_ROOT / "sysextpy").glob("*.py")):
        shutil.copy2(src, site / src.name)
    launcher = dest / "usr/bin/sysextpy"
    launcher.parent.mkdir(parents=True)
    launcher.write_text(
        "#!/usr/bin/python3\nimport sys\n\nfrom sysextpy.__main__ import main\n\nsys.exit(main())\n"
    )
    launcher.chmod(0o755)
    layout = {
        "units": "usr/lib/systemd/system",
        "generators": "usr/lib/systemd/system-generators",
        "dracut": "usr/lib/dracut/modules.d",
    }
    for src_name, dest_name in layout.items():
        src = REPO_ROOT / src_name
        if src.is_dir() and any(src.iterdir()):
            shutil.copytree(src, dest / dest_name, symlinks=True, dirs_exist_ok=True)


# --------------------------------------------------------------------------- initramfs


@dataclass(frozen=True)
class Initrd:
    key: str
    image: Path
    with_module: bool
    size: int


# dracut runs as on a host where sysextpy is installed: in a private mount namespace, the staged
# installation is laid over the host's /usr (an overlay, seen by nothing else), so the module finds
# its units, launcher, generator and package exactly where `make install` put them.
_WITH_STAGE_OVER_USR = (
    'set -e; mount -t overlay sysextpy-e2e -o "lowerdir=$1/usr:/usr" /usr; shift; exec "$@"'
)


def build_initrd(kernel: Kernel, with_module: bool = True) -> Initrd:
    """dracut --add sysextpy for `kernel`, from the host's binaries and the staged sysextpy."""
    stage = stage_sysextpy() if with_module else None
    if stage is not None and not (stage / "usr/lib/dracut/modules.d/90sysextpy/module-setup.sh").exists():
        raise HarnessError(
            f"`make install` put no dracut module into {stage}/usr/lib/dracut/modules.d/90sysextpy"
        )
    cache = cache_dir()
    dracut_argv = [
        "dracut",
        "--force",
        "--quiet",
        "--no-hostonly",
        "--no-hostonly-cmdline",
        "--no-early-microcode",
        # Uncompressed: unpacking a compressed cpio costs more under emulation than reading more bytes.
        "--no-compress",
        "--conf",
        "/dev/null",
        "--drivers",
        " ".join(INITRD_DRIVERS),
        "--omit",
        " ".join(INITRD_OMIT),
    ]
    if with_module:
        dracut_argv += ["--add", "sysextpy"]
    with cache_lock(cache):
        inputs = {
            "kernel": [kernel.package, kernel.version],
            "host": host_package_versions(
                ["dracut-core", "systemd", "udev", "python3", "python3.11", "libc6"]
            ),
            "stage": tree_digest([stage], stage) if stage is not None else None,
            "argv": dracut_argv,
        }
        key = digest(inputs)
        kind_dir = cache / "initrds" / kernel.flavour
        directory = kind_dir / key
        initrd = directory / "initrd.img"
        if (directory / ".complete").exists():
            return Initrd(key, initrd, with_module, initrd.stat().st_size)
        ensure_tools()
        log(f"building the initrd for {kernel.kver}{' with sysextpy' if with_module else ''}")
        with timed(f"initrd build ({kernel.flavour})"):
            shutil.rmtree(directory, ignore_errors=True)
            directory.mkdir(parents=True)
            with tempfile.TemporaryDirectory(dir=cache) as tmp:
                # No host configuration: the initrd must not depend on what this machine has set.
                confdir = Path(tmp) / "conf.d"
                confdir.mkdir()
                prefix: list[PathLike] = []
                if stage is not None:
                    prefix = [
                        "unshare",
                        "--mount",
                        "--propagation",
                        "private",
                        "sh",
                        "-c",
                        _WITH_STAGE_OVER_USR,
                    ]
                    prefix += ["sh", stage]
                proc = run(
                    [
                        *prefix,
                        *dracut_argv,
                        "--confdir",
                        confdir,
                        "--tmpdir",
                        tmp,
                        "--kver",
                        kernel.kver,
                        "--kmoddir",
                        kernel.moddir,
                        initrd,
                    ],
                )
                (directory / "dracut.log").write_text(proc.stdout + proc.stderr)
            (directory / "inputs.json").write_text(json.dumps(inputs, indent=1, sort_keys=True) + "\n")
            (directory / ".complete").write_text("")
        prune(kind_dir, directory, count=3)
        return Initrd(key, initrd, with_module, initrd.stat().st_size)


def build_root_initrd(kernel: Kernel, base: BaseRoot, stage: Path) -> Initrd:
    """The initrd of a root that is not the host's release, built inside that root by its own
    dracut, with sysextpy (`stage`) installed and dracut's systemd-sysext module added as a
    distribution adds it.

    Not the host's dracut with --sysroot: dracut's modules come from the dracut that runs, and the
    host's (059) predate the systemd this root has (no systemd-executor, no sysroot units in its
    systemd-sysext module), so that initrd's PID 1 could not start a single service."""
    dracut_argv = [
        "dracut",
        "--force",
        "--quiet",
        "--no-hostonly",
        "--no-hostonly-cmdline",
        "--no-early-microcode",
        "--no-compress",
        "--conf",
        "/dev/null",
        "--confdir",
        "/tmp/conf.d",
        "--drivers",
        " ".join(INITRD_DRIVERS),
        "--omit",
        " ".join(INITRD_OMIT),
        "--add",
        "sysextpy systemd-sysext",
        "--kver",
        kernel.kver,
    ]
    cache = cache_dir()
    with cache_lock(cache):
        inputs = {
            "kernel": [kernel.package, kernel.version],
            "root": base.key,
            "stage": tree_digest([stage], stage),
            "argv": dracut_argv,
        }
        key = digest(inputs)
        kind_dir = cache / "initrds" / f"root-{base.key}"
        directory = kind_dir / key
        initrd = directory / "initrd.img"
        if (directory / ".complete").exists():
            return Initrd(key, initrd, True, initrd.stat().st_size)
        log(f"building the initrd for {kernel.kver} inside the root {base.key}")
        with timed("initrd build (in root)"):
            shutil.rmtree(directory, ignore_errors=True)
            out = directory / "out"
            out.mkdir(parents=True)
            proc = run_in_root(
                base.tree,
                ["sh", "-c", 'mkdir -p /tmp/conf.d && exec "$@"', "sh", *dracut_argv, "/out/initrd.img"],
                layers=[stage],
                binds={f"/usr/lib/modules/{kernel.kver}": kernel.moddir, "/out": out},
            )
            os.replace(out / "initrd.img", initrd)
            out.rmdir()
            (directory / "dracut.log").write_text(proc.stdout + proc.stderr)
            (directory / "inputs.json").write_text(json.dumps(inputs, indent=1, sort_keys=True) + "\n")
            (directory / ".complete").write_text("")
        prune(kind_dir, directory, count=3)
        return Initrd(key, initrd, True, initrd.stat().st_size)


# --------------------------------------------------------------------------- extension images


def extension_release(
    os_release: Mapping[str, str], extra: Optional[Mapping[str, str]] = None, match_any: bool = False
) -> str:
    fields = {"ID": "_any"} if match_any else {"ID": os_release.get("ID", "debian")}
    if not match_any and "VERSION_ID" in os_release:
        fields["VERSION_ID"] = os_release["VERSION_ID"]
    fields.update(extra or {})
    return "".join(f"{k}={v}\n" for k, v in fields.items())


FileSpec = Mapping[str, Union[str, bytes, "Link"]]


@dataclass(frozen=True)
class Link:
    """A symlink in a FileSpec (e.g. a `.wants/` entry)."""

    target: str


def write_files(top: Path, files: FileSpec) -> None:
    """Create `files` (relative path -> text, bytes or Link) below `top`; executables under
    */bin/* and */libexec/* get mode 0755."""
    for rel, content in files.items():
        path = top / rel.lstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.is_symlink() or path.exists():
            path.unlink()  # never write through a link or into a file shared with another tree
        if isinstance(content, Link):
            path.symlink_to(content.target)
            continue
        path.write_bytes(content.encode() if isinstance(content, str) else content)
        executable = "/bin/" in f"/{rel}" or "/libexec/" in f"/{rel}" or "/sbin/" in f"/{rel}"
        path.chmod(0o755 if executable else 0o644)


def make_extension_tree(
    directory: Path,
    name: str,
    files: FileSpec,
    *,
    kind: str,
    os_release: Mapping[str, str],
    release_extra: Optional[Mapping[str, str]] = None,
    match_any: bool = False,
) -> Path:
    """A sysext (kind="sysext": files below usr/ or opt/) or confext (kind="confext": below etc/)
    tree with its extension-release file."""
    release_dir = "usr/lib/extension-release.d" if kind == "sysext" else "etc/extension-release.d"
    all_files = dict(files)
    all_files[f"{release_dir}/extension-release.{name}"] = extension_release(
        os_release, release_extra, match_any
    )
    write_files(directory, all_files)
    return directory


def make_squashfs(source: Path, image: Path) -> Path:
    run(["mksquashfs", source, image, "-noappend", "-quiet", "-no-progress", "-all-root"])
    return image


def make_erofs(source: Path, image: Path) -> Path:
    run(["mkfs.erofs", "--all-root", "-U", "clear", image, source])
    return image


def make_data_disk(label: str, files: FileSpec, size_mb: int = 8) -> Path:
    """A small ext4 disk image with `files` on it and the file system label `label`, built once and
    cached under its inputs (qemu opens every disk with snapshot=on, so the cached image is never
    written to)."""
    cache = cache_dir()
    contents = {
        rel: ("link:" + c.target) if isinstance(c, Link) else c if isinstance(c, str) else c.hex()
        for rel, c in files.items()
    }
    with cache_lock(cache):
        key = digest("data-disk", label, size_mb, contents)
        kind_dir = cache / "disks"
        directory = kind_dir / key
        image = directory / "disk.img"
        if (directory / ".complete").exists():
            return image
        shutil.rmtree(directory, ignore_errors=True)
        directory.mkdir(parents=True)
        tree = directory / "tree"
        write_files(tree, files)
        run(["mkfs.ext4", "-q", "-F", "-L", label, "-d", tree, image, f"{size_mb}M"])
        shutil.rmtree(tree)
        (directory / ".complete").write_text("")
        prune(kind_dir, directory, count=4)
        return image


# --------------------------------------------------------------------------- booting


@dataclass(frozen=True)
class UnitJob:
    """One job of a unit, from PID 1's messages in the report's timeline: its start (None when it
    logs no "Starting", as targets do), end, result, and whether it ran in the initrd."""

    unit: str
    start: Optional[int]
    end: int
    result: str
    in_initrd: bool

    @property
    def first(self) -> int:
        """When it began, or, without a start message, when it ended."""
        return self.start if self.start is not None else self.end


@dataclass
class BootResult:
    """What one boot produced: console text, the guest's report, and how it ended."""

    name: str
    console: str
    report: Optional[dict[str, Any]]
    results: dict[str, str]
    seconds: float
    returncode: Optional[int]
    timed_out: bool
    cmdline: str
    workdir: Path

    @property
    def ok(self) -> bool:
        return self.report is not None and "reportError" not in self.report

    def failure_context(self, lines: int = 200) -> str:
        """What a person needs to see why a boot failed: how it ended, the console's tail and every
        line that mentions sysextpy (console and, when there is a report, the journal)."""
        console = self.console.splitlines()
        ended = "timed out" if self.timed_out else f"qemu exit status {self.returncode}"
        parts = [
            f"=== boot {self.name!r}: {ended} after {self.seconds:.1f} s; workdir {self.workdir}",
            f"=== kernel command line: {self.cmdline}",
        ]
        oops = next((line for line in console if re.search(r"\] (Oops|BUG|Kernel panic)", line)), None)
        if oops is not None:
            parts.append(f"=== the guest kernel failed: {oops.strip()}")
        if self.report is None:
            parts.append("=== no report from the guest")
        elif "reportError" in self.report:
            parts.append(f"=== the report failed in the guest: {self.report['reportError']}")
        else:
            parts.append(f"=== failed units: {self.report.get('failedUnits')}")
            parts.append("=== journal lines about sysext/confext/sysextpy:")
            parts += self.report.get("sysextpyJournal", [])
        parts.append("=== console lines mentioning sysextpy:")
        parts += [line for line in console if "sysextpy" in line.lower()]
        parts.append(f"=== last {lines} console lines:")
        parts += console[-lines:]
        return "\n".join(parts)

    @contextlib.contextmanager
    def explain(self) -> Iterator[None]:
        """Assertions inside fail with the boot's failure context appended."""
        try:
            yield
        except AssertionError as e:
            raise AssertionError(f"{e}\n{self.failure_context()}") from None

    def require_report(self) -> dict[str, Any]:
        if not self.ok:
            raise AssertionError(f"the guest did not report\n{self.failure_context()}")
        assert self.report is not None
        return self.report

    # Convenience views on the report.

    def unit(self, name: str) -> dict[str, str]:
        return dict(self.require_report().get("units", {}).get(name, {}))

    def reached(self, target: str = "multi-user.target") -> bool:
        return self.unit(target).get("ActiveState") == "active"

    def mount(self, mount_point: str) -> Optional[dict[str, Any]]:
        """The topmost mount at `mount_point` in the guest after boot."""
        found = [m for m in self.require_report().get("mounts", []) if m["mountPoint"] == mount_point]
        return found[-1] if found else None

    def probe(self, name: str) -> dict[str, Any]:
        """What the probe unit `name` wrote (see add_read_probe/add_gap_probe)."""
        probes = self.require_report().get("probes", {})
        assert f"{name}.json" in probes, f"probe {name!r} left no result (ran? {sorted(probes)})"
        return dict(probes[f"{name}.json"])

    def probe_text(self, name: str, path: str) -> Optional[str]:
        """The text of `path` as the read probe `name` saw it (None: it could not be read)."""
        for entry in self.probe(name)["paths"]:
            if entry["path"] == path:
                text = entry.get("text")
                return text if isinstance(text, str) else None
        raise AssertionError(f"probe {name!r} did not look at {path!r}")

    def command(self, name: str) -> dict[str, Any]:
        return dict(self.require_report()["commands"][name])

    def path_text(self, path: str) -> Optional[str]:
        """The text of `path` in the guest at report time (added with report_paths)."""
        text = self.require_report()["paths"][path].get("text")
        return text if isinstance(text, str) else None

    def jobs(self, unit: str) -> list[UnitJob]:
        """The jobs of `unit` (listed in Guest.timeline_units), initrd and real root, in order. The
        real root's begin at UserspaceTimestampMonotonic, the manager's start after switch-root."""
        report = self.require_report()
        userspace = int(report["manager"]["UserspaceTimestampMonotonic"])
        out: list[UnitJob] = []
        start: Optional[int] = None
        for event in report.get("timeline", {}).get(unit, []):
            if event["kind"] == "starting":
                start = event["usec"]
            elif event["kind"] in ("done", "failed"):
                began = start if start is not None else event["usec"]
                out.append(UnitJob(unit, start, event["usec"], event["result"], began < userspace))
                start = None
        return out

    def phase_ms(self, unit: str) -> list[float]:
        runs = self.require_report().get("phases", {}).get(unit, {}).get("runs", [])
        return [r["ms"] for r in runs if "ms" in r]

    def timing_summary(self) -> str:
        parts = [f"boot {self.seconds:.1f} s"]
        if self.ok:
            manager = self.require_report().get("manager", {})
            try:
                initrd = int(manager["UserspaceTimestampMonotonic"]) - int(
                    manager["InitRDTimestampMonotonic"]
                )
                parts.append(f"initrd phase {initrd / 1e6:.1f} s")
            except (KeyError, ValueError):
                pass
            for unit in ("sysextpy-sysroot.service", "sysextpy.service"):
                ms = self.phase_ms(unit)
                if ms:
                    parts.append(f"{unit} {'+'.join(f'{x:.0f}' for x in ms)} ms")
        return ", ".join(parts)


def parse_mountinfo(text: str) -> list[dict[str, Any]]:
    """/proc/self/mountinfo as the guest report gives it (mount id, mount point, fstype, ...)."""
    mounts = []
    for line in text.splitlines():
        pre, _, post = line.partition(" - ")
        fields = pre.split()
        if len(fields) < 6:
            continue
        fstype, source, super_options = (post.split() + ["", "", ""])[:3]
        mounts.append(
            {
                "id": int(fields[0]),
                "parent": int(fields[1]),
                "root": fields[3],
                "mountPoint": fields[4].encode().decode("unicode_escape"),
                "options": fields[5],
                "fstype": fstype,
                "source": source,
                "superOptions": super_options,
            }
        )
    return mounts


def top_mounts(mounts: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Mount point -> the mount on top there (the last one in mount table order)."""
    return {m["mountPoint"]: dict(m) for m in mounts}


def parse_results(console: str, results_port: str) -> tuple[Optional[dict[str, Any]], dict[str, str]]:
    results = {}
    for line in console.splitlines():
        match = re.search(r"E2E-RESULT ([\w.@-]+)=(.*)$", line.rstrip("\r"))
        if match:
            results[match.group(1)] = match.group(2)
    report = None
    for text in (results_port, console):
        match = re.search(r"E2E-JSON-BEGIN\r?\n(.*?)\r?\nE2E-JSON-END", text, re.S)
        if match:
            try:
                report = json.loads(match.group(1))
            except ValueError:
                report = {"reportError": "the report's JSON could not be parsed"}
            break
    return report, results


def qemu_argv(
    kernel: Kernel,
    initrd: Initrd,
    disks: Sequence[Path],
    results_file: Path,
    cmdline: str,
    memory: int = 1024,
) -> list[str]:
    argv = [
        "qemu-system-x86_64",
        "-accel",
        "tcg",
        "-cpu",
        "qemu64",
        "-m",
        str(memory),
        "-smp",
        "2",
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-monitor",
        "none",
        "-no-reboot",
        "-serial",
        "stdio",  # ttyS0: the console
        "-serial",
        f"file:{results_file}",  # ttyS1: the report, and nothing else
        "-kernel",
        os.fspath(kernel.vmlinux),
        "-initrd",
        os.fspath(initrd.image),
        "-append",
        cmdline,
    ]
    for disk in disks:
        argv += ["-drive", f"file={disk},if=virtio,format=raw,snapshot=on"]
    return argv


def boot(
    name: str,
    kernel: Kernel,
    initrd: Initrd,
    disks: Sequence[Path],
    workdir: Path,
    cmdline: Sequence[str] = (),
    timeout: Optional[float] = None,
    echo: bool = False,
) -> BootResult:
    """Boot once; never raises for what happens inside the guest (the result says it)."""
    timeout = timeout or float(os.environ.get("SYSEXTPY_E2E_TIMEOUT") or DEFAULT_TIMEOUT)
    console_file = workdir / "console.log"
    results_file = workdir / "results.log"
    results_file.write_text("")
    full_cmdline = " ".join([*KERNEL_CMDLINE, *cmdline])
    argv = qemu_argv(kernel, initrd, disks, results_file, full_cmdline)
    (workdir / "qemu.argv").write_text(" ".join(argv) + "\n")
    started = time.monotonic()
    with open(console_file, "wb") as out:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )

        def pump() -> None:
            assert proc.stdout is not None
            fd = proc.stdout.fileno()
            while True:
                chunk = os.read(fd, 65536)
                if not chunk:
                    break
                out.write(chunk)
                out.flush()
                if echo:
                    sys.stderr.buffer.write(chunk)
                    sys.stderr.flush()

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        timed_out = False
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            proc.kill()
            proc.wait()
        reader.join(timeout=10)
    seconds = round(time.monotonic() - started, 1)
    # The tty turns the guest's "\r\n" into "\r\r\n": plain newlines read better.
    console = console_file.read_bytes().decode(errors="replace").replace("\r\n", "\n").replace("\r", "")
    report, results = parse_results(console, results_file.read_bytes().decode(errors="replace"))
    if report is not None:
        (workdir / "report.json").write_text(json.dumps(report, indent=1, sort_keys=True) + "\n")
    return BootResult(
        name, console, report, results, seconds, proc.returncode, timed_out, full_cmdline, workdir
    )


# --------------------------------------------------------------------------- one guest


@dataclass(frozen=True)
class Environment:
    """The cached artefacts one kind of boot needs."""

    kernel: Kernel
    initrd: Initrd
    base: BaseRoot
    stage: Optional[Path]


# The kinds of guest: "stable" and "new" are the host release's root and binaries with the host
# release's kernel or a newer one; "sid" is Debian sid's root, its own initrd and the newer kernel.
FLAVOURS = ("stable", "new", "sid")


def prepare(flavour: str = "stable", with_module: bool = True) -> Environment:
    ensure_tools()
    if flavour == SID_SUITE:
        if not with_module:
            raise HarnessError("the sid guest is built with the module only")
        # The newer kernel: nearer to what a system with this systemd runs, and it has
        # MOVE_MOUNT_BENEATH, which the scenarios on the "new" kernel need.
        kernel = fetch_kernel("new")
        base = build_sid_root()
        stage = stage_for_root(stage_sysextpy(), base)
        return Environment(kernel, build_root_initrd(kernel, base, stage), base, stage)
    kernel = fetch_kernel(flavour)
    base = build_base_root()
    initrd = build_initrd(kernel, with_module)
    stage = stage_sysextpy() if with_module else None
    return Environment(kernel, initrd, base, stage)


@dataclass
class Guest:
    """One boot's root (and optional separate /var) being put together, then booted.

    Paths given to the add_* methods are absolute paths inside the guest. Everything the
    scenario adds lands in the guest's root file system (or its /var disk after split_var())
    before the boot; nothing is copied in while it runs.
    """

    env: Environment
    workdir: Path
    name: str = "boot"
    report_paths: list[str] = field(default_factory=list)
    report_commands: dict[str, list[str]] = field(default_factory=dict)
    report_units: list[str] = field(default_factory=list)
    wait_for_probes: list[str] = field(default_factory=list)
    var_separate: bool = False
    # Further disks (add_disk): guest mount point -> the tree that becomes the disk, by label.
    disks: dict[str, tuple[str, Path]] = field(default_factory=dict)
    # Disks after the root (and the /var disk of split_var): /dev/vdb, /dev/vdc, ... in this order.
    extra_disks: list[Path] = field(default_factory=list)
    # Units whose every job message of PID 1 (initrd and real root) the report lists, with times.
    timeline_units: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.result: Optional[BootResult] = None
        self.tree = self.workdir / "root"
        self.var_tree = self.workdir / "var"
        self.ext_dir = self.workdir / "extensions"
        with timed("root copy"):
            run(["cp", "-a", self.env.base.tree, self.tree])
        self.os_release = dict(
            line.split("=", 1)
            for line in (self.tree / "usr/lib/os-release").read_text().replace('"', "").splitlines()
            if "=" in line
        )

    # -- where things go

    def host_path(self, guest_path: str) -> Path:
        """Where `guest_path` lives on the host while the guest is being put together."""
        rel = guest_path.lstrip("/")
        for mount_point, (_, tree) in sorted(self.disks.items(), key=lambda item: -len(item[0])):
            inner = mount_point.lstrip("/")
            if rel == inner or rel.startswith(inner + "/"):
                return tree / rel[len(inner) :].lstrip("/")
        if self.var_separate and (rel == "var" or rel.startswith("var/")):
            return self.var_tree / rel[len("var") :].lstrip("/")
        return self.tree / rel

    def add_files(self, files: FileSpec) -> None:
        """Add files to the guest (absolute guest paths -> text, bytes or Link)."""
        for guest_path, content in files.items():
            host = self.host_path(guest_path)
            write_files(host.parent, {host.name: content})

    def add_unit(self, name: str, text: str, wanted_by: Sequence[str] = ()) -> None:
        """An admin unit in /etc/systemd/system, enabled by links in `wanted_by`'s .wants."""
        files: dict[str, Union[str, bytes, Link]] = {f"/etc/systemd/system/{name}": text}
        for target in wanted_by:
            files[f"/etc/systemd/system/{target}.wants/{name}"] = Link(f"../{name}")
        self.add_files(files)
        self.report_units.append(name)

    # -- extensions

    def _place(self, source: Path, guest_dir: str, entry_name: str) -> str:
        dest = self.host_path(f"{guest_dir}/{entry_name}")
        dest.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, dest, symlinks=True)
        else:
            shutil.copy2(source, dest)
        return f"{guest_dir}/{entry_name}"

    def _tree(self, name: str, files: FileSpec, kind: str, **release: Any) -> Path:
        directory = self.ext_dir / f"{kind}-{name}"
        shutil.rmtree(directory, ignore_errors=True)
        return make_extension_tree(directory, name, files, kind=kind, os_release=self.os_release, **release)

    def add_dir_sysext(
        self, name: str, files: FileSpec, where: str = "/var/lib/extensions", **release: Any
    ) -> str:
        """A directory sysext; `files` are paths inside it (usr/..., opt/...). Returns its guest path."""
        return self._place(self._tree(name, files, "sysext", **release), where, name)

    def add_squashfs_sysext(
        self, name: str, files: FileSpec, where: str = "/var/lib/extensions", **release: Any
    ) -> str:
        image = make_squashfs(self._tree(name, files, "sysext", **release), self.ext_dir / f"{name}.raw")
        return self._place(image, where, f"{name}.raw")

    def add_erofs_sysext(
        self, name: str, files: FileSpec, where: str = "/var/lib/extensions", **release: Any
    ) -> str:
        image = make_erofs(self._tree(name, files, "sysext", **release), self.ext_dir / f"{name}.raw")
        return self._place(image, where, f"{name}.raw")

    def add_dir_confext(
        self, name: str, files: FileSpec, where: str = "/var/lib/confexts", **release: Any
    ) -> str:
        """A directory confext; `files` are paths inside it (etc/...)."""
        return self._place(self._tree(name, files, "confext", **release), where, name)

    def add_squashfs_confext(
        self, name: str, files: FileSpec, where: str = "/var/lib/confexts", **release: Any
    ) -> str:
        image = make_squashfs(
            self._tree(name, files, "confext", **release), self.ext_dir / f"{name}.confext.raw"
        )
        return self._place(image, where, f"{name}.raw")

    def add_raw(self, image: Path, guest_path: str) -> str:
        """An image built elsewhere (a broken one, a DDI), at `guest_path`."""
        return self._place(image, os.path.dirname(guest_path), os.path.basename(guest_path))

    # -- probes and report

    def add_read_probe(self, name: str, paths: Sequence[str], unit_options: str) -> None:
        """A unit that records once what `paths` look like when it runs; `unit_options` are its
        [Unit] ordering lines (e.g. "DefaultDependencies=no\\nBefore=sysextpy.service")."""
        self.add_unit(
            f"e2e-probe-{name}.service",
            f"[Unit]\n{unit_options}\n\n[Service]\nType=oneshot\nRemainAfterExit=yes\n"
            f"ExecStart=/usr/bin/python3 -I /usr/lib/sysextpy-e2e/probe.py read {name} {' '.join(paths)}\n",
            wanted_by=["sysinit.target"],
        )

    def add_gap_probe(self, name: str, paths: Sequence[str], unit_options: str) -> None:
        """A unit that reads `paths` in a loop from its start until the report, counting failures."""
        self.add_unit(
            f"e2e-probe-{name}.service",
            f"[Unit]\n{unit_options}\n\n[Service]\nType=notify\nNotifyAccess=main\n"
            f"ExecStart=/usr/bin/python3 -I /usr/lib/sysextpy-e2e/probe.py gap {name} {' '.join(paths)}\n",
            wanted_by=["sysinit.target"],
        )
        self.wait_for_probes.append(f"{name}.json")

    def split_var(self) -> None:
        """Move /var onto a second disk (/dev/vdb), mounted by fstab: invisible in the initrd."""
        if self.var_separate:
            return
        self.var_tree.mkdir()
        for entry in list((self.tree / "var").iterdir()):
            shutil.move(os.fspath(entry), os.fspath(self.var_tree / entry.name))
        self.var_separate = True
        fstab = self.tree / "etc/fstab"
        fstab.write_text(fstab.read_text() + "/dev/vdb /var ext4 defaults 0 2\n")

    def add_disk(self, mount_point: str, label: str, options: str = "defaults") -> None:
        """A further ext4 disk, mounted at `mount_point` by an fstab line (found by its label, with
        `options`): what the add_* methods put below the mount point goes onto it."""
        tree = self.workdir / f"disk-{label}"
        tree.mkdir()
        self.disks[mount_point] = (label, tree)
        (self.tree / mount_point.lstrip("/")).mkdir(parents=True, exist_ok=True)
        fstab = self.tree / "etc/fstab"
        fstab.write_text(fstab.read_text() + f"LABEL={label} {mount_point} ext4 {options} 0 2\n")

    def attach_disk(self, image: Path) -> None:
        """One more virtio disk (see make_data_disk); scenarios name it by its label, not by
        /dev/vdX, which depends on split_var."""
        self.extra_disks.append(image)

    # -- finishing and booting

    def _install(self) -> None:
        if self.env.stage is not None:
            run(["cp", "-a", "--no-preserve=ownership", f"{self.env.stage}/.", self.tree])
        guest_lib = self.tree / "usr/lib/sysextpy-e2e"
        guest_lib.mkdir(parents=True, exist_ok=True)
        for script in ("report.py", "probe.py"):
            shutil.copy2(GUEST_DIR / script, guest_lib / script)
            (guest_lib / script).chmod(0o755)
        config = {
            "paths": self.report_paths,
            "commands": self.report_commands,
            "units": self.report_units,
            "wait_for": self.wait_for_probes,
            "timeline": self.timeline_units,
            "name": self.name,
        }
        (guest_lib / "report.json").write_text(json.dumps(config, indent=1) + "\n")
        units = self.tree / "etc/systemd/system"
        shutil.copy2(GUEST_DIR / "sysextpy-e2e-report.service", units / "sysextpy-e2e-report.service")
        for target in ("multi-user.target", "emergency.target", "rescue.target"):
            wants = units / f"{target}.wants"
            wants.mkdir(exist_ok=True)
            link = wants / "sysextpy-e2e-report.service"
            link.unlink(missing_ok=True)
            link.symlink_to("../sysextpy-e2e-report.service")
        self._install_modules()

    def _install_modules(self) -> None:
        kernel = self.env.kernel
        dest = self.tree / "usr/lib/modules" / kernel.kver
        for rel in module_closure(kernel, GUEST_MODULES):
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(kernel.moddir / rel, dest / rel)
        for extra in ("modules.order", "modules.builtin", "modules.builtin.modinfo"):
            if (kernel.moddir / extra).exists():
                shutil.copy2(kernel.moddir / extra, dest / extra)
        run(["depmod", "-b", self.tree, kernel.kver])

    def image(self, tree: Path, image: Path, label: str, minimum_mb: int) -> Path:
        used = int(run(["du", "-s", "-B1M", tree]).stdout.split()[0])
        size_mb = max(minimum_mb, used * 3 // 2 + 64)
        image.unlink(missing_ok=True)
        run(["mkfs.ext4", "-q", "-F", "-L", label, "-d", tree, image, f"{size_mb}M"])
        return image

    def boot(
        self, cmdline: Sequence[str] = (), timeout: Optional[float] = None, echo: bool = False
    ) -> BootResult:
        with timed("guest image"):
            self._install()
            disks = [self.image(self.tree, self.workdir / "root.img", "root", 400)]
            if self.var_separate:
                disks.append(self.image(self.var_tree, self.workdir / "var.img", "var", 64))
            for label, tree in self.disks.values():
                disks.append(self.image(tree, self.workdir / f"{label}.img", label, 64))
            disks += self.extra_disks
        extra = [f"systemd.machine_id={machine_id(self.env.base.key)}", *cmdline]
        log(f"booting {self.name!r} ({self.env.kernel.kver})")
        with timed(f"boot {self.name}"):
            result = boot(
                self.name, self.env.kernel, self.env.initrd, disks, self.workdir, extra, timeout, echo
            )
        log(f"{self.name}: {result.timing_summary()}")
        self.result = result
        return result


# --------------------------------------------------------------------------- command line


def _smoke(args: argparse.Namespace) -> int:
    env = prepare(args.flavour, with_module=not args.no_module)
    with tempfile.TemporaryDirectory(prefix="sysextpy-e2e-") as tmp:
        workdir = Path(args.workdir) if args.workdir else Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        guest = Guest(env, workdir, name="smoke")
        result = guest.boot(echo=args.verbose)
        if not result.ok or not result.reached():
            print(result.failure_context(), file=sys.stderr)
            return 1
        print(f"smoke: reached multi-user.target; {result.timing_summary()}")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("step", choices=["tools", "kernel", "root", "stage", "initrd", "build", "smoke"])
    parser.add_argument("--new", dest="flavour", action="store_const", const="new", default="stable")
    parser.add_argument(
        "--sid", dest="flavour", action="store_const", const=SID_SUITE, help="the Debian sid guest"
    )
    parser.add_argument("--no-module", action="store_true", help="initrd without the sysextpy module")
    parser.add_argument("--workdir", help="keep the smoke boot's files here")
    parser.add_argument("-v", "--verbose", action="store_true", help="echo the guest console")
    args = parser.parse_args(argv)
    try:
        if args.step == "tools":
            ensure_tools()
        elif args.step == "kernel":
            print(fetch_kernel(args.flavour))
        elif args.step == "root":
            print(build_base_root())
        elif args.step == "stage":
            print(stage_sysextpy())
        elif args.step == "initrd":
            print(build_initrd(fetch_kernel(args.flavour), not args.no_module))
        elif args.step == "build":
            print(prepare(args.flavour, not args.no_module))
        else:
            return _smoke(args)
    except HarnessError as e:
        print(f"e2e: {e}", file=sys.stderr)
        return 1
    finally:
        if TIMINGS:
            print("timings (s): " + ", ".join(f"{k} {v}" for k, v in TIMINGS.items()), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
