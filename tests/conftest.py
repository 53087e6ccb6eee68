# SPDX-License-Identifier: LGPL-2.1-or-later
"""Shared fixtures. Mounting tests run inside one private mount namespace for the whole session.

As root, pytest_configure moves the pytest process itself into a new mount namespace (pytest is
still single-threaded then), makes every mount private and puts a fresh tmpfs on /run. Nothing
a test mounts can reach the host, and everything vanishes when pytest exits. Set
SYSEXTPY_TEST_NO_UNSHARE=1 to skip this (mounting tests are then skipped).

Host tools (mksquashfs, sfdisk, dracut, ...) come from the Debian packages of tests/packages. A
test names the ones it runs with require_tools() or the `tools` marker: without them it skips,
unless SYSEXTPY_REQUIRE_TOOLS=1 (`make test` as root, CI), where it fails: there everything in
tests/packages was installed, so a missing tool is a missing install step, not a reason to skip.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Callable, NoReturn, Optional

import pytest

from sysextpy import mountapi

if TYPE_CHECKING:
    from pyfakefs.fake_filesystem import FakeFilesystem

REPO_ROOT = Path(__file__).resolve().parent.parent
PACKAGES = REPO_ROOT / "tests/packages"
REQUIRE_TOOLS = os.environ.get("SYSEXTPY_REQUIRE_TOOLS", "").lower() in ("1", "yes", "true")
# Where root's PATH finds mkfs.ext4, sfdisk, veritysetup: building an image into a file needs no
# privilege, but a user's PATH on Debian does not have these directories.
SBIN_DIRS = ("/usr/local/sbin", "/usr/sbin", "/sbin")

# Why the session is (not) in a private mount namespace; None once it is.
_no_mountns_reason: Optional[str] = "pytest_configure did not run"


def _enter_private_mount_namespace() -> Optional[str]:
    if os.geteuid() != 0:
        return "needs root for a private mount namespace"
    if os.environ.get("SYSEXTPY_TEST_NO_UNSHARE"):
        return "SYSEXTPY_TEST_NO_UNSHARE is set"
    try:
        mountapi.unshare(mountapi.CLONE_NEWNS)
    except OSError as exc:
        return f"unshare(CLONE_NEWNS) failed: {exc.strerror}"
    try:
        mountapi.mount(None, "/", None, mountapi.MS_REC | mountapi.MS_PRIVATE)
        mountapi.mount("tmpfs", "/run", "tmpfs", mountapi.MS_NOSUID | mountapi.MS_NODEV, "mode=0755")
    except OSError as exc:
        # We are in a new namespace but cannot isolate it: do not mount anything at all.
        return f"isolating the private mount namespace failed: {exc.strerror}"
    return None


def pytest_configure(config: pytest.Config) -> None:
    global _no_mountns_reason
    path = os.environ.get("PATH", os.defpath).split(os.pathsep)
    os.environ["PATH"] = os.pathsep.join(path + [d for d in SBIN_DIRS if d not in path])
    _no_mountns_reason = _enter_private_mount_namespace()


# ---------------------------------------------------------------------------------------------
# Host tools


def _packages_by_tool() -> dict[str, str]:
    """tests/packages: "package tool..." lines, read as tool -> package."""
    found = {}
    for line in PACKAGES.read_text().splitlines():
        words = line.split("#", 1)[0].split()
        found.update((tool, words[0]) for tool in words[1:])
    return found


def missing_prerequisite(what: str) -> NoReturn:
    """Skip the test for want of `what`; under SYSEXTPY_REQUIRE_TOOLS=1, fail it instead."""
    if REQUIRE_TOOLS:
        pytest.fail(f"{what} (SYSEXTPY_REQUIRE_TOOLS=1: a missing prerequisite fails)", pytrace=False)
    # Reported at the test, as a skip mark is, rather than at this line for every test.
    raise pytest.skip.Exception(what, _use_item_location=True)


def missing_tools(*names: str) -> list[str]:
    """The host tools of `names` that are not there: each a command on PATH or an absolute path,
    listed in tests/packages (so that `make test` installs it)."""
    packages = _packages_by_tool()
    unlisted = [name for name in names if name not in packages]
    if unlisted:
        pytest.fail(f"{', '.join(unlisted)}: not in {PACKAGES}; add its package there", pytrace=False)
    return [name for name in names if not _tool_exists(name)]


def _tool_exists(name: str) -> bool:
    return os.path.exists(name) if os.path.isabs(name) else shutil.which(name) is not None


def _lacking(missing: list[str]) -> NoReturn:
    packages = _packages_by_tool()
    wanted = " ".join(dict.fromkeys(packages[name] for name in missing))
    missing_prerequisite(f"needs {', '.join(missing)} (Debian: {wanted}; `make test` as root installs it)")


def require_tools(*names: str) -> None:
    """Skip the calling test unless every host tool of `names` is there (see the module's
    docstring); under SYSEXTPY_REQUIRE_TOOLS=1 fail it instead."""
    missing = missing_tools(*names)
    if missing:
        _lacking(missing)


def have_tools(*names: str) -> bool:
    """Whether every host tool of `names` is there, for a test that runs fewer variants without
    them. Under SYSEXTPY_REQUIRE_TOOLS=1 a missing one fails the test (at import: the module)."""
    missing = missing_tools(*names)
    if missing and REQUIRE_TOOLS:
        _lacking(missing)
    return not missing


@pytest.hookimpl(tryfirst=True)  # before the fixtures are set up
def pytest_runtest_setup(item: pytest.Item) -> None:
    """@pytest.mark.tools("strace", ...): require_tools() before the test and its fixtures."""
    for mark in item.iter_markers("tools"):
        require_tools(*mark.args)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if "mountns" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.mounts)


@pytest.fixture
def mountns() -> Iterator[None]:
    """The test mounts: skip unless the session runs in a private mount namespace."""
    if _no_mountns_reason is not None:
        pytest.skip(f"mounting test: {_no_mountns_reason}")
    yield


def _leftover_mounts(below: Path) -> list[mountapi.MountInfo]:
    return mountapi.submounts_below(os.path.realpath(below), mountapi.read_mountinfo())


def loops_backed_below(path: Path) -> int:
    """Loop devices whose backing file lies below `path`: scoped to this test, so that loop devices
    of other processes on the machine do not disturb the check."""
    prefix = os.path.realpath(path).rstrip("/") + "/"
    count = 0
    for backing in Path("/sys/block").glob("loop*/loop/backing_file"):
        try:
            if backing.read_text().strip().startswith(prefix):
                count += 1
        except OSError:
            pass  # detached while we looked
    return count


def _wait_for_loops(below: Path, timeout: float = 2.0) -> int:
    """Autoclear may finish a moment after the last close; give it that moment."""
    deadline = time.monotonic() + timeout
    count = loops_backed_below(below)
    while count and time.monotonic() < deadline:
        time.sleep(0.02)
        count = loops_backed_below(below)
    return count


def check_no_leftovers(below: Path) -> None:
    """Fail if mounts remain below `below` (unmounting them lazily) or loop devices backed by files
    below it are still attached."""
    leftovers = _leftover_mounts(below)
    for info in reversed(leftovers):
        try:
            mountapi.umount2(info.mount_point, mountapi.MNT_DETACH)
        except OSError:
            pass  # best effort: the test fails either way
    loops_after = _wait_for_loops(below)
    problems = []
    if leftovers:
        problems.append("mounts left behind: " + ", ".join(i.mount_point for i in leftovers))
    if loops_after:
        problems.append(f"loop devices leaked: {loops_after} still backed by files below {below}")
    if problems:
        pytest.fail("; ".join(problems), pytrace=False)


@pytest.fixture
def mount_tmp_path(mountns: None, tmp_path: Path) -> Iterator[Path]:
    """tmp_path for a mounting test, checked afterwards for leftover mounts and loop devices."""
    yield tmp_path
    check_no_leftovers(tmp_path)


@pytest.fixture
def fake_root(tmp_path: Path) -> Iterator[Path]:
    """A minimal Debian 12 root at tmp_path/"root" (tmp_path stays free for images and scratch).

    Teardown fails the test if anything is still mounted below tmp_path or loop devices leaked.
    """
    root = tmp_path / "root"
    for sub in ("etc", "usr/bin", "usr/lib", "usr/share", "opt", "var/lib"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    os_release = 'ID=debian\nVERSION_ID=12\nPRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\n'
    (root / "usr/lib/os-release").write_text(os_release)
    (root / "etc/os-release").write_text(os_release)
    yield root
    check_no_leftovers(tmp_path)


@pytest.fixture
def fake_fs(fs: FakeFilesystem, monkeypatch: pytest.MonkeyPatch) -> FakeFilesystem:
    """pyfakefs's `fs`, for the logic that only reads a root (LiveView and chase.resolve call `os`
    when they read, so they read the fake file system): no root, no tmp_path, nothing on disk.

    pyfakefs's stat results lack st_rdev (6.3), which view.Stat records; every kind of file
    pyfakefs can make (regular, directory, symlink) has 0 there on Linux, so that is what they get.
    Devices, FIFOs and sockets cannot be made in it: tests of those stay on tmp_path."""
    from pyfakefs.helpers import FakeStatResult

    monkeypatch.setattr(FakeStatResult, "st_rdev", 0, raising=False)
    return fs


RunSysextpy = Callable[..., "subprocess.CompletedProcess[str]"]


@pytest.fixture
def sysextpy_cmd() -> RunSysextpy:
    """Run `python -m sysextpy ARGS...` from the repository; returns the CompletedProcess."""

    def run(
        *args: str,
        env: Optional[Mapping[str, str]] = None,
        input: Optional[str] = None,
        timeout: float = 120,
    ) -> subprocess.CompletedProcess[str]:
        full_env = {k: v for k, v in os.environ.items() if k != "SYSTEMD_LOG_LEVEL"}
        if env:
            full_env.update(env)
        return subprocess.run(
            [sys.executable, "-m", "sysextpy", *args],
            cwd=REPO_ROOT,
            env=full_env,
            input=input,
            stdin=None if input is not None else subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    return run
