# SPDX-License-Identifier: LGPL-2.1-or-later
"""The dracut module: build a real initramfs with Debian's dracut, list it, and run sysextpy from
inside the unpacked image against a fake /sysroot.

The module and everything it installs come from `make install` into a temporary DESTDIR, which a
child process lays over /usr with an overlay mount in its own private mount namespace: dracut
then finds the units, the generator, the launcher, the package and the module where a
distribution puts them, and nothing reaches the host's /usr. Needs root (mounts, chroot) and
Debian's dracut-core (tests/packages).

A second image is built the way an image builder builds one, for another root (`dracut
--sysroot`): a Debian 13 root whose Python is not this host's, made with mmdebstrap and cached
with the boot tests' artefacts (tests/e2e/harness.py), with the host's Python made unrunnable.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shlex
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Optional

import pytest
from conftest import REPO_ROOT, check_no_leftovers, require_tools
from e2e import harness
from sample_root import build_sample_root
from test_dissect import make_signer

# The interpreter the launcher names, and how its files are called.
_PY = subprocess.run(
    [
        "/usr/bin/python3",
        "-c",
        "import sys, sysconfig; print('%d.%d' % sys.version_info[:2],"
        " sysconfig.get_config_var('EXT_SUFFIX'), sys.implementation.cache_tag)",
    ],
    capture_output=True,
    text=True,
    check=True,
).stdout.split()
PY_VERSION, EXT_SUFFIX, CACHE_TAG = _PY
STDLIB = f"usr/lib/python{PY_VERSION}"
UNIT = "usr/lib/systemd/system/sysextpy-sysroot.service"
GENERATOR = "usr/lib/systemd/system-generators/sysextpy-generator"
PACKAGE = "usr/lib/python3/dist-packages/sysextpy"


def run(argv: list[str], timeout: float = 600, **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        **kwargs,  # type: ignore[arg-type]
    )


def host_journal_module() -> Optional[str]:
    """systemd-python's journal module as the launcher's interpreter finds it, None without it.
    It is optional: the module installs it, and the logging package it imports, only when the
    build host has it (Debian's python3-systemd), so what the image holds depends on that."""
    journal = run(["/usr/bin/python3", "-I", "-c", "import systemd.journal as j; print(j.__file__)"])
    return journal.stdout.strip() if journal.returncode == 0 else None


class Initramfs:
    def __init__(self, image: Path, listing: str, tree: Path, source: Path, installed: Path) -> None:
        self.image = image
        self.listing = listing
        self.tree = tree
        self.source = source  # the root it was built from: / or dracut's --sysroot
        self.installed = installed  # the `make install` DESTDIR laid over that root

    def source_bytes(self, path: str) -> bytes:
        """A file of the root the image was built from, sysextpy's installation laid over it."""
        if (self.installed / path.lstrip("/")).exists():
            return (self.installed / path.lstrip("/")).read_bytes()
        return read_in_root(self.source, path)

    def paths(self) -> set[str]:
        """The paths lsinitrd lists (its `ls -l`-like lines end with the path, or `path -> target`)."""
        found = set()
        for line in self.listing.splitlines():
            fields = line.split()
            if len(fields) >= 9 and fields[0][:1] in "-dlcbps":
                found.add(fields[8])
        return found


def q(path: Path | str) -> str:
    """`path` quoted for a shell script."""
    return shlex.quote(os.fspath(path))


def in_namespace(script: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """Run a shell script in a fresh private mount namespace: its mounts die with it."""
    return run(["unshare", "--mount", "--propagation", "private", "sh", "-euc", script], timeout=timeout)


def install_tree(dest: Path) -> None:
    make = run(
        [
            "make",
            "-s",
            "-C",
            os.fspath(REPO_ROOT),
            "install",
            f"DESTDIR={dest}",
            "PREFIX=/usr",
            "SYSTEMDSYSTEMUNITDIR=/usr/lib/systemd/system",
            "SYSTEMDSYSTEMGENERATORDIR=/usr/lib/systemd/system-generators",
        ]
    )
    assert make.returncode == 0, make.stderr


# Where the merger looks for the certificates it trusts (sysextpy.verity.CERTIFICATE_DIRS), and so
# where the module looks to decide on openssl.
VERITY_DIRS = ("/etc/verity.d", "/run/verity.d", "/usr/local/lib/verity.d", "/usr/lib/verity.d")


def build_image(
    dest: Path,
    image: Path,
    *,
    hostonly: bool = False,
    conf: str = "",
    certificate: Optional[Path] = None,
) -> subprocess.CompletedProcess[str]:
    """dracut with the module, on `dest` (a `make install` DESTDIR) laid over /usr, with `conf` as
    the only configuration. The build host's verity.d directories are hidden behind empty ones,
    and `certificate` (a PEM file) goes into /usr/lib/verity.d: what the module decides on openssl
    then depends on the test alone."""
    tmp = image.parent / f"{image.name}.tmp"
    tmp.mkdir()
    confdir = image.parent / f"{image.name}.conf.d"
    confdir.mkdir()
    (confdir / "test.conf").write_text(conf)
    # A directory to mount over: the overlay adds it to /usr when the host has none.
    (dest / "usr/lib/verity.d").mkdir(parents=True, exist_ok=True)
    script = f"mount -t overlay overlay -o lowerdir={q(dest / 'usr')}:/usr /usr\n"
    for directory in VERITY_DIRS:
        script += f"if [ -d {directory} ]; then mount -t tmpfs tmpfs {directory}; fi\n"
    if certificate is not None:
        script += f"cp {q(certificate)} /usr/lib/verity.d/sysextpy-test.crt\n"
    mode = "--hostonly" if hostonly else "--no-hostonly"
    return in_namespace(
        script + f"exec dracut {mode} --no-kernel --add sysextpy --force --conf /dev/null "
        f"--confdir {q(confdir)} --tmpdir {q(tmp)} {q(image)}\n"
    )


def needs_root_and_dracut() -> None:
    if os.geteuid() != 0:
        pytest.skip("builds an initramfs and chroots into it: needs root")
    require_tools("dracut", "lsinitrd", "cpio")


def unpack_image(image: Path, source: Path, installed: Path) -> Initramfs:
    listing = run(["lsinitrd", os.fspath(image)])
    assert listing.returncode == 0, listing.stderr
    tree = image.parent / "unpacked"
    tree.mkdir()
    unpack = run(["lsinitrd", "--unpack", os.fspath(image)], cwd=tree)
    assert unpack.returncode == 0, unpack.stderr
    return Initramfs(image, listing.stdout, tree, source, installed)


@pytest.fixture(scope="module")
def initramfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Initramfs]:
    needs_root_and_dracut()
    work = tmp_path_factory.mktemp("dracut")
    install_tree(work / "dest")
    image = work / "initramfs.img"
    build = build_image(work / "dest", image)
    assert build.returncode == 0, build.stdout[-4000:] + build.stderr[-4000:]
    assert "Including module: sysextpy" in build.stdout + build.stderr
    yield unpack_image(image, Path("/"), work / "dest")


# --------------------------------------------------------------------------- dracut --sysroot

SYSROOT_SUITE = "trixie"
# python3 and systemd for the module, openssl for signature checks, udev and kmod for dracut's
# systemd modules.
SYSROOT_PACKAGES = ("python3", "systemd", "udev", "kmod", "openssl")
# Bumped whenever the recipe below changes in a way the package list does not show.
SYSROOT_RECIPE = 1
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
# dracut 059 leaves its directory variables empty under --sysroot (its `-d $dracutsysrootdir$dir`
# test passes for an empty $dir), so an image builder names them: Debian's layout.
SYSROOT_DRACUT_CONF = """\
systemdutildir=/usr/lib/systemd
systemdutilconfdir=/etc/systemd
systemdsystemunitdir=/usr/lib/systemd/system
systemdsystemconfdir=/etc/systemd/system
systemduser=/usr/lib/systemd/user
systemduserconfdir=/etc/systemd/user
systemdcatalog=/usr/lib/systemd/catalog
systemdnetwork=/usr/lib/systemd/network
systemdnetworkconfdir=/etc/systemd/network
systemdntpunits=/usr/lib/systemd/ntp-units.d
systemdntpunitsconfdir=/etc/systemd/ntp-units.d
systemdportable=/usr/lib/systemd/portable
systemdportableconfdir=/etc/systemd/portable
udevdir=/usr/lib/udev
udevconfdir=/etc/udev
udevrulesdir=/usr/lib/udev/rules.d
udevrulesconfdir=/etc/udev/rules.d
tmpfilesdir=/usr/lib/tmpfiles.d
tmpfilesconfdir=/etc/tmpfiles.d
sysusers=/usr/lib/sysusers.d
sysusersconfdir=/etc/sysusers.d
sysctld=/usr/lib/sysctl.d
sysctlconfdir=/etc/sysctl.d
environment=/usr/lib/environment.d
environmentconfdir=/etc/environment.d
modulesload=/usr/lib/modules-load.d
modulesloadconfdir=/etc/modules-load.d
depmodd=/usr/lib/depmod.d
depmodconfdir=/etc/depmod.d
"""
HOST_PYTHON_RAN = "sysextpy-test: the build host's python ran"


def sysroot_tree() -> Path:
    """A minimal Debian 13 root, built once with mmdebstrap and cached with the boot tests' roots
    under a key made of its packages' versions (apt's view of the suite, refreshed weekly)."""
    cache = harness.cache_dir()
    with harness.cache_lock(cache):
        # The private apt configuration the boot tests fetch newer kernels with.
        apt = harness.Apt.private(
            cache / "apt" / SYSROOT_SUITE,
            [f"deb [signed-by={KEYRING}] {harness.debian_mirror()} {SYSROOT_SUITE} main"],
        )
        apt.ensure_lists()
        versions = apt.candidates(SYSROOT_PACKAGES)
        missing = sorted(name for name, version in versions.items() if version is None)
        if missing:
            raise harness.HarnessError(f"{SYSROOT_SUITE} has no {', '.join(missing)}")
        sources = harness.root_sources(SYSROOT_SUITE)
        kind_dir = cache / "sysroots"
        directory = kind_dir / harness.digest(SYSROOT_RECIPE, SYSROOT_SUITE, sources, versions)
        if not (directory / ".complete").exists():
            shutil.rmtree(directory, ignore_errors=True)
            directory.mkdir(parents=True)
            harness.run(
                [
                    "mmdebstrap",
                    "--variant=minbase",
                    "--include=" + ",".join(SYSROOT_PACKAGES),
                    "--hook-dir=/usr/share/mmdebstrap/hooks/merged-usr",
                    "--dpkgopt=path-exclude=/usr/share/man/*",
                    "--dpkgopt=path-exclude=/usr/share/doc/*",
                    "--dpkgopt=path-include=/usr/share/doc/*/copyright",
                    "--dpkgopt=path-exclude=/usr/share/locale/*",
                    SYSROOT_SUITE,
                    directory / "tree",
                    *sources,
                ],
                timeout=1800,
            )
            (directory / ".complete").write_text(json.dumps(versions) + "\n")
        harness.prune(kind_dir, directory)
        return directory / "tree"


def build_sysroot_image(root: Path, work: Path, image: Path) -> subprocess.CompletedProcess[str]:
    """dracut --sysroot, on `root` with sysextpy installed into it, as an image builder runs it.

    The root seen by dracut is a read-only overlay (nothing may be written into it): sysextpy's
    `make install`, on the running dracut's own files (under --sysroot dracut takes its modules
    from the root, and they must match the dracut that runs), on the cached root. The build host's
    python3 is replaced by a program that fails loudly, and PATH has nothing else.
    """
    install_tree(work / "sysextpy")
    shutil.copytree("/usr/lib/dracut", work / "dracut/usr/lib/dracut", symlinks=True)
    conf = work / "dracut.conf.d"
    conf.mkdir()
    (conf / "sysroot.conf").write_text(SYSROOT_DRACUT_CONF)
    sysroot = work / "sysroot"
    sysroot.mkdir()
    # DRACUT_LDD for --sysroot (dracut(8)): the root's ldd, on the root's files. The host's cannot
    # load programs built for a newer C library.
    ldd = work / "ldd"
    ldd.write_text(f'#!/bin/sh\nroot={q(sysroot)}\nexec chroot "$root" /usr/bin/ldd "${{1#"$root"}}"\n')
    ldd.chmod(0o755)
    host_python = work / "host-python"
    host_python.write_text(f'#!/bin/sh\necho "{HOST_PYTHON_RAN}: $0 $*" >&2\nexit 97\n')
    host_python.chmod(0o755)
    tmp = work / "tmp"
    tmp.mkdir()
    layers = ":".join(os.fspath(layer) for layer in (work / "sysextpy", work / "dracut", root))
    return in_namespace(
        f"mount -t overlay sysextpy-sysroot -o ro,lowerdir={q(layers)} {q(sysroot)}\n"
        f'for python in /usr/bin/python3*; do mount --bind {q(host_python)} "$python"; done\n'
        f"export PATH=/usr/sbin:/usr/bin:/sbin:/bin DRACUT_LDD={q(ldd)}\n"
        f"exec dracut --sysroot {q(sysroot)} --no-hostonly --no-kernel --add sysextpy --force \\\n"
        f"    --conf /dev/null --confdir {q(conf)} --tmpdir {q(tmp)} {q(image)}\n"
    )


@pytest.fixture(scope="module")
def sysroot_initramfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Initramfs]:
    needs_root_and_dracut()
    require_tools("mmdebstrap")
    try:
        root = sysroot_tree()
    except harness.HarnessError as e:
        pytest.fail(f"cannot build the {SYSROOT_SUITE} root for dracut --sysroot: {e}")
    work = tmp_path_factory.mktemp("dracut-sysroot")
    image = work / "initramfs.img"
    build = build_sysroot_image(root, work, image)
    output = build.stdout + build.stderr
    assert HOST_PYTHON_RAN not in output
    assert build.returncode == 0, output[-6000:]
    assert "Including module: sysextpy" in output
    yield unpack_image(image, root, work / "sysextpy")


@pytest.fixture(params=["host", pytest.param("sysroot", marks=pytest.mark.slow)])
def built_initramfs(request: pytest.FixtureRequest) -> Initramfs:
    """Each image in turn: the one for this system, and the one built for another root."""
    image = request.getfixturevalue("initramfs" if request.param == "host" else "sysroot_initramfs")
    assert isinstance(image, Initramfs)
    return image


def test_image_lists_the_module(initramfs: Initramfs) -> None:
    paths = initramfs.paths()
    for path in (
        UNIT,
        GENERATOR,
        "usr/bin/sysextpy",
        "usr/bin/python3",
        f"{PACKAGE}/cli.pyc",
        f"{PACKAGE}/generator.pyc",
        f"{STDLIB}/os.pyc",  # the interpreter's landmark for finding its prefix
        f"{STDLIB}/encodings/utf_8.pyc",
        f"{STDLIB}/lib-dynload/_ctypes{EXT_SUFFIX}",
    ):
        assert path in paths, f"{path} is not in the initramfs"
    # The libraries of extension modules are there too (dracut only resolves executables).
    assert any(p.startswith("usr/lib/") and "/libffi.so" in p for p in paths)
    # systemd-python (journal logging) comes along when the build host has it.
    journal = host_journal_module()
    if journal is not None:
        assert journal.lstrip("/") in paths
    # The unit is not enabled statically: the generator pulls it in.
    assert not any("initrd.target.wants/sysextpy" in p for p in paths)


def module_name(relative: str) -> str:
    """ "json/__init__.pyc" -> "json", "json/decoder.pyc" -> "json.decoder"."""
    parts = relative[: -len(".pyc")].split("/")
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def frozen_in_interpreter(python: str, names: list[str]) -> set[str]:
    """Which of `names` the interpreter has frozen into its binary, as imp says (Python >= 3.11
    freezes the modules its start-up needs, and loads them from itself)."""
    code = "import _imp, sys\nfor n in sys.argv[1:]:\n    print(n, _imp.is_frozen(n))"
    result = run([python, "-I", "-c", code, *names])
    assert result.returncode == 0, result.stderr
    return {
        name for name, frozen in (line.split() for line in result.stdout.splitlines()) if frozen == "True"
    }


def test_image_holds_the_import_closure_not_the_stdlib(initramfs: Initramfs) -> None:
    stdlib = f"{STDLIB}/"
    paths = initramfs.paths()
    compiled = [p for p in paths if p.startswith(stdlib) and p.endswith(".pyc")]
    assert 8 < len(compiled) < 250, len(compiled)
    names = {p[len(stdlib) :] for p in compiled}
    for needed in (
        "encodings/utf_8.pyc",
        "struct.pyc",  # the partition table and dm-verity superblock
        "os.pyc",  # frozen, but the interpreter finds its prefix by it
    ):
        assert needed in names, needed
    assert f"{STDLIB}/lib-dynload/_ctypes{EXT_SUFFIX}" in paths  # the syscalls (libc.py), without ctypes
    # run.py spawns without subprocess, cli.py prints tracebacks without traceback: what they
    # would bring (threading, locale, selectors, tokenize...) stays out.
    # The JSON, the disk images and the paths go without json, uuid and pathlib: what they would
    # bring (re, enum, collections, functools, platform, urllib, ipaddress) stays out too.
    for dropped in (
        "ctypes/__init__.pyc",
        "subprocess.pyc",
        "traceback.pyc",
        "threading.pyc",
        "locale.pyc",
        "tempfile.pyc",
        "shutil.pyc",
        "json/__init__.pyc",
        "re/__init__.pyc",
        "enum.pyc",
        "collections/__init__.pyc",
        "functools.pyc",
        "pathlib.pyc",
        "uuid.pyc",
        "platform.pyc",
    ):
        assert dropped not in names, dropped
    # sysextpy does not import logging; systemd.journal does, when the build host has it.
    with_journal = host_journal_module() is not None
    assert ("logging/__init__.pyc" in names) == with_journal, f"systemd.journal importable: {with_journal}"
    for unneeded in (
        "argparse.pyc",
        "unittest/__init__.pyc",
        "tkinter/__init__.pyc",
        "sqlite3/__init__.pyc",
        # Imported by the package only under "if TYPE_CHECKING:".
        "dataclasses.pyc",
        "inspect.pyc",
        # shutil's optional archive formats.
        "bz2.pyc",
        "lzma.pyc",
    ):
        assert unneeded not in names, unneeded
    assert not any(p.startswith(f"{stdlib}lib-dynload/_bz2.") for p in paths)
    # What the interpreter carries in itself is not installed again, but for the landmark.
    frozen = frozen_in_interpreter("/usr/bin/python3", sorted(module_name(n) for n in names))
    assert frozen <= {"os"}, sorted(frozen)


def test_image_holds_byte_code_and_no_sources(built_initramfs: Initramfs) -> None:
    """Only byte code, in the legacy layout the interpreter loads without a source; hash-based
    and marked checked (PEP 552), with the hash of the root's own source as its interpreter
    computes it; nothing in __pycache__."""
    image = built_initramfs
    paths = image.paths()
    python = root_python(image.source)
    python_dirs = (f"usr/lib/{python}/", f"{PACKAGE}/")
    assert not [p for p in paths if p.startswith(python_dirs) and (p.endswith(".py") or "__pycache__" in p)]
    pycs = sorted(p for p in paths if p.startswith(python_dirs) and p.endswith(".pyc"))
    assert f"{PACKAGE}/cli.pyc" in pycs
    # The root's interpreter, in the root, says what each header must hold, from the root's
    # sources (read here: sysextpy's are in its installation, laid over the root at build time).
    code = (
        "import base64, importlib.util, json, sys\n"
        "print(importlib.util.MAGIC_NUMBER.hex())\n"
        "for path, data in json.load(sys.stdin):\n"
        "    print(path, importlib.util.source_hash(base64.b64decode(data)).hex())\n"
    )
    sources = [["/" + p[: -len("c")]] for p in pycs]
    for source in sources:
        source.append(base64.b64encode(image.source_bytes(source[0])).decode())
    expected = subprocess.run(
        ["chroot", os.fspath(image.source), "/usr/bin/python3", "-I", "-c", code],
        input=json.dumps(sources),
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("\n")
    magic = bytes.fromhex(expected[0])
    hashes = dict(line.split() for line in expected[1:] if line)
    for pyc in pycs:
        header = (image.tree / pyc).read_bytes()[:16]
        assert header[:4] == magic, pyc
        assert int.from_bytes(header[4:8], "little") == 0b11, f"{pyc}: not hash-based and checked"
        assert header[8:16].hex() == hashes["/" + pyc[: -len("c")]], f"{pyc}: not the root's source"


def test_debug_traceback_names_file_and_line(built_initramfs: Initramfs) -> None:
    """Without sources, --debug still says where an error came from: each frame's file and line,
    which the root's own source confirms (the line of a frame calls the next frame's function, the
    last one raises)."""
    result = run(
        [
            "chroot",
            os.fspath(built_initramfs.tree),
            "/usr/bin/sysextpy",
            "--debug",
            "--root=/nonexistent",
            "merge",
        ]
    )
    assert result.returncode != 0
    frames = re.findall(r'File "([^"]+)", line (\d+), in (\S+)', result.stderr)
    frames = [
        (path, int(line), function) for path, line, function in frames if path.startswith(f"/{PACKAGE}/")
    ]
    assert len(frames) >= 2, result.stderr
    for n, (path, line, _) in enumerate(frames):
        text = built_initramfs.source_bytes(path).decode().splitlines()[line - 1]
        called = frames[n + 1][2] if n + 1 < len(frames) else "raise"
        assert called in text, f"{path}:{line} is {text.strip()!r}, not where {called} is"


def test_generator_runs_inside_the_initrd(built_initramfs: Initramfs) -> None:
    # No $SYSTEMD_IN_INITRD: the image's own /etc/initrd-release has to say it.
    out = "/tmp/generator-test"
    result = run(
        ["chroot", os.fspath(built_initramfs.tree), f"/{GENERATOR}", out], env={"PATH": os.environ["PATH"]}
    )
    assert result.returncode == 0, result.stderr
    link = built_initramfs.tree / out.lstrip("/") / "initrd.target.wants/sysextpy-sysroot.service"
    assert os.readlink(link) == "../sysextpy-sysroot.service"
    shutil.rmtree(built_initramfs.tree / out.lstrip("/"))


def test_plan_inside_the_initrd(built_initramfs: Initramfs, tmp_path: Path) -> None:
    sysroot = build_sample_root(tmp_path / "sysroot", broken=False)
    tree = shlex.quote(os.fspath(built_initramfs.tree))
    result = in_namespace(
        f"mount --bind {shlex.quote(os.fspath(sysroot))} {tree}/sysroot\n"
        f"mount -t proc proc {tree}/proc\n"
        f"exec chroot {tree} /usr/bin/sysextpy --root=/sysroot --json=short plan\n"
    )
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    verdicts = {image["name"]: image["verdict"] for image in plan["images"] if image["name"]}
    assert verdicts["tools"] == "merge"
    assert verdicts["motd"] == "merge"
    assert verdicts["fedora-only"] == "ignored"
    assert all(image["entry"].startswith("/sysroot/") for image in plan["images"])


@pytest.mark.mounts
def test_refresh_inside_the_initrd(built_initramfs: Initramfs, tmp_path: Path) -> None:
    """The initrd's real job, from inside the image: merge into /sysroot, write the record; then
    the generator, as the real root runs it, finds the record good and asks for no full refresh."""
    sysroot = build_sample_root(tmp_path / "sysroot", broken=False)
    tree = shlex.quote(os.fspath(built_initramfs.tree))
    result = in_namespace(
        f"mount --bind {shlex.quote(os.fspath(sysroot))} {tree}/sysroot\n"
        f"mount -t proc proc {tree}/proc\n"
        f"mount -t sysfs sysfs {tree}/sys\n"
        f"mount --rbind /dev {tree}/dev\n"
        f"mount -t tmpfs tmpfs {tree}/run\n"
        f"chroot {tree} /usr/bin/sysextpy --root=/sysroot refresh\n"
        f"echo '--- record'; cat {tree}/run/sysextpy/state.json\n"
        f"echo '--- mounts'; cut -d' ' -f5 /proc/self/mountinfo\n"
        f"echo '--- usr/bin'; ls {tree}/sysroot/usr/bin\n"
        f"echo '--- generator'; SYSTEMD_IN_INITRD=0 chroot {tree} /{GENERATOR} /tmp/real-root\n"
        f"cd {tree}/tmp/real-root && find . | sort && cd / && rm -rf {tree}/tmp/real-root\n"
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    sections = dict(part.split("\n", 1) for part in result.stdout.split("--- ")[1:])
    record = json.loads(sections["record"])
    assert record["phase"] == "merged"
    assert record["classes"]["sysext"]["hierarchies"]["/usr"]["result"] == "merged"
    assert "tools" in record["classes"]["sysext"]["merged"]
    assert f"{built_initramfs.tree}/sysroot/usr" in sections["mounts"].split()
    assert "hello-tools" in sections["usr/bin"].split()
    assert sections["generator"].split() == [
        ".",
        "./sysinit.target.wants",
        "./sysinit.target.wants/sysextpy.service",
    ]
    # The namespace is gone, and with it every mount; the loop devices went with them.
    check_no_leftovers(tmp_path)


def root_python(root: Path) -> str:
    """The interpreter a root's /usr/bin/python3 is, e.g. "python3.13"."""
    return os.readlink(root / "usr/bin/python3")


def read_in_root(root: Path, path: str) -> bytes:
    """The bytes at `path` as a process chrooted into `root` reads them: an absolute symlink (Debian's
    sitecustomize.py -> /etc/python3.13/...) points into `root`, not into the build host."""
    for _ in range(40):
        full = root / path.lstrip("/")
        if not full.is_symlink():
            return full.read_bytes()
        target = os.readlink(full)
        path = target if target.startswith("/") else os.path.join(os.path.dirname(path), target)
    raise AssertionError(f"{path!r}: too many symbolic links in {root}")


def same_in_image(image: Initramfs, path: str) -> bool:
    return read_in_root(image.tree, path) == read_in_root(image.source, path)


@pytest.mark.slow
def test_sysroot_image_runs_the_roots_interpreter(sysroot_initramfs: Initramfs) -> None:
    image = sysroot_initramfs
    python = root_python(image.source)
    assert python != f"python{PY_VERSION}", f"the {SYSROOT_SUITE} root has this host's Python: no test"
    assert os.readlink(image.tree / "usr/bin/python3") == python
    libc = next(image.source.glob("usr/lib/*/libc.so.6")).relative_to(image.source)
    for path in (f"usr/bin/{python}", os.fspath(libc), "usr/bin/openssl"):
        assert same_in_image(image, path), f"{path} is not the root's"
    tree = os.fspath(image.tree)
    version = run(["chroot", tree, "/usr/bin/sysextpy", "--version"])
    assert version.returncode == 0, version.stderr
    assert version.stdout.startswith("sysextpy ")
    # -v: the interpreter says which byte code it takes, and it has to be the image's own.
    code = "import sys, sysextpy.cli; print('python%d.%d' % sys.version_info[:2], sysextpy.cli.__file__)"
    probe = run(["chroot", tree, "/usr/bin/python3", "-I", "-v", "-c", code])
    assert probe.returncode == 0, probe.stderr[-3000:]
    assert probe.stdout.split() == [python, f"/{PACKAGE}/cli.pyc"]
    loaded = {
        line.split()[-1].strip("'")
        for line in probe.stderr.splitlines()
        if line.startswith("# code object from ")
    }
    assert f"/{PACKAGE}/cli.pyc" in loaded
    assert any(path.startswith(f"/usr/lib/{python}/") for path in loaded)
    assert "bad magic" not in probe.stderr


@pytest.mark.slow
def test_sysroot_image_holds_the_roots_stdlib(sysroot_initramfs: Initramfs) -> None:
    image = sysroot_initramfs
    python = root_python(image.source)
    stdlib = f"usr/lib/{python}/"
    paths = image.paths()
    compiled = sorted(p for p in paths if p.startswith(stdlib) and p.endswith(".pyc"))
    extensions = sorted(p for p in paths if p.startswith(f"{stdlib}lib-dynload/"))
    assert 8 < len(compiled) < 250, len(compiled)
    for needed in ("os", "encodings/utf_8", "struct", "__future__"):
        assert f"{stdlib}{needed}.pyc" in paths, needed
        assert (image.source / f"{stdlib}{needed}.py").exists(), f"{needed}.py is not the root's"
    assert any("/_ctypes." in p for p in extensions), extensions
    for path in extensions:
        assert same_in_image(image, path), f"{path} is not the root's"
    # Nothing of the build host's Python (the byte code is the root's: see
    # test_image_holds_byte_code_and_no_sources).
    assert not [p for p in paths if f"python{PY_VERSION}" in p or CACHE_TAG in p]


@pytest.mark.parametrize(
    "hostonly, conf, certificate, expected",
    [
        # A hostonly image decides from the root it is built for.
        (True, "", False, False),
        (True, "", True, True),
        (True, "sysextpy_openssl=yes\n", False, True),
        # A generic one may boot any root: it keeps openssl unless told otherwise.
        (False, "sysextpy_openssl=no\n", False, False),
    ],
    ids=["hostonly", "hostonly-certificate", "hostonly-asked", "generic-declined"],
)
def test_openssl_only_when_a_signature_can_be_checked(
    tmp_path: Path, hostonly: bool, conf: str, certificate: bool, expected: bool
) -> None:
    """openssl (and libssl, which only it needs) by the rule of sysextpy_wants_openssl; the
    generic image with openssl is the one the other tests build."""
    needs_root_and_dracut()
    require_tools("openssl")
    install_tree(tmp_path / "dest")
    pem = make_signer(tmp_path / "keys").cert if certificate else None
    image = tmp_path / "initramfs.img"
    build = build_image(tmp_path / "dest", image, hostonly=hostonly, conf=conf, certificate=pem)
    assert build.returncode == 0, build.stdout[-4000:] + build.stderr[-4000:]
    paths = unpack_image(image, Path("/"), tmp_path / "dest").paths()
    assert ("usr/bin/openssl" in paths) == expected
    assert any("/libssl.so" in p for p in paths) == expected
    assert f"{PACKAGE}/verity.pyc" in paths


def test_generic_image_keeps_openssl(initramfs: Initramfs) -> None:
    paths = initramfs.paths()
    assert "usr/bin/openssl" in paths
    assert any("/libssl.so" in p for p in paths)


def test_closure_helper_follows_every_import(tmp_path: Path) -> None:
    """python-closure.py on an installed tree: the package, the stdlib modules it and the generator
    import (also those imported inside functions), and nothing they do not import."""
    prefix = tmp_path / "usr"
    dirs = [f"SYSTEMDSYSTEMUNITDIR={tmp_path}/units", f"SYSTEMDSYSTEMGENERATORDIR={tmp_path}/generators"]
    make = run(["make", "-s", "-C", os.fspath(REPO_ROOT), "install", f"PREFIX={prefix}", *dirs])
    assert make.returncode == 0, make.stderr
    helper = REPO_ROOT / "dracut/90sysextpy/python-closure.py"
    launcher = prefix / "bin/sysextpy"
    result = run(
        [
            "/usr/bin/python3",
            "-I",
            os.fspath(helper),
            os.fspath(launcher),
            f"{tmp_path}/generators/sysextpy-generator",
        ]
    )
    assert result.returncode == 0, result.stderr
    files = result.stdout.splitlines()
    package = prefix / "lib/python3/dist-packages/sysextpy"
    assert sorted(f for f in files if f.startswith(f"{package}/")) == sorted(
        map(os.fspath, package.glob("*.py"))
    )
    names = {f[len(STDLIB) + 2 :] for f in files if f.startswith(f"/{STDLIB}/")}
    # JSON through _json alone (jsonlite.py), in the package and the generator.
    for needed in (
        "struct.py",
        "os.py",
        f"lib-dynload/_json{EXT_SUFFIX}",
        f"lib-dynload/_ctypes{EXT_SUFFIX}",
    ):
        assert needed in names, needed
    # records.py imports dataclasses only for the type checker; shutil imports bz2 and lzma only
    # when they are there.
    for unneeded in (
        "subprocess.py",
        "traceback.py",
        "argparse.py",
        "unittest/__init__.py",
        "asyncio/__init__.py",
        "dataclasses.py",
        "json/__init__.py",
        "re/__init__.py",
        "enum.py",
        "pathlib.py",
        "uuid.py",
        "bz2.py",
        "lzma.py",
        f"lib-dynload/_bz2{EXT_SUFFIX}",
    ):
        assert unneeded not in names, unneeded
    sources = sorted(
        n[: -len(".py")].replace("/", ".").removesuffix(".__init__") for n in names if n.endswith(".py")
    )
    assert frozen_in_interpreter("/usr/bin/python3", sources) <= {"os"}
    assert all(os.path.isabs(f) and os.path.exists(f) for f in files)


def test_self_check_stops_a_broken_build(tmp_path: Path) -> None:
    """A module the package imports but the image lacks must fail the build, not the boot."""
    needs_root_and_dracut()
    install_tree(tmp_path / "dest")
    helper = tmp_path / "dest/usr/lib/dracut/modules.d/90sysextpy/python-closure.py"
    text = helper.read_text()
    broken = text.replace(
        "        print(path)", '        if path.name != "struct.py":\n            print(path)'
    )
    assert broken != text
    helper.write_text(broken)
    image = tmp_path / "broken.img"
    build = build_image(tmp_path / "dest", image)
    assert build.returncode != 0
    assert "cannot be imported inside the initrd" in build.stdout + build.stderr
    assert not image.exists()
