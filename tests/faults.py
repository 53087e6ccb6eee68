# SPDX-License-Identifier: LGPL-2.1-or-later
"""Shared helpers for the reliability tests: syscall fault injection with strace, the census of
mounts and loop devices, and the figures the tests report.

Fault injection runs `python -m sysextpy` under `strace -f -e inject=NAME:ACTION:when=N`, which
makes the N-th call of syscall NAME (counted over the process and its children) fail with an errno
or kill the caller with a signal, once. `injection_points()` lists every (NAME, N) a clean run of
the same command reaches, so a test can walk all of them.

Figures: when SYSEXTPY_RELIABILITY_REPORT names a file, `report()` appends one JSON object per
line to it ({"section", "name", "figures": {...}}); tests/reliability_report.py renders them.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Optional

from sysextpy import mountapi
from sysextpy.model import ImageClass
from sysextpy.status import live_merge
from tests.conftest import loops_backed_below
from tests.merge_support import HOST_RELEASE, have_tool, make_raw, sysext_tree, write

REPO = Path(__file__).resolve().parent.parent
REPORT_ENV = "SYSEXTPY_RELIABILITY_REPORT"

# The syscalls through which sysextpy changes mounts, namespaces and the handoff record.
MOUNT_SYSCALLS = (
    "unshare",
    "setns",
    "mount",
    "umount2",
    "fsopen",
    "fsconfig",
    "fsmount",
    "move_mount",
    "open_tree",
    "mount_setattr",
    "rename",
)
# ioctl() is also called by the interpreter itself (terminal checks): only the loop device
# requests are injection points.
LOOP_IOCTLS = ("LOOP_CTL_GET_FREE", "LOOP_CONFIGURE", "LOOP_SET_FD", "LOOP_SET_STATUS64", "LOOP_CLR_FD")
ERRNOS = ("ENOMEM", "EIO", "EBUSY", "EROFS")


def sysextpy_env(extra: Optional[Mapping[str, str]] = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "SYSTEMD_LOG_LEVEL"}
    env.update(extra or {})
    return env


def sysextpy_argv(root: Path, state: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "sysextpy", f"--root={root}", f"--state={state}", *args]


# --------------------------------------------------------------------------------------------
# strace


def _syscall_name(line: str) -> str:
    # "1234  mount(...)" with -f, or "mount(...)"; resumed calls ("<... mount resumed>") are not
    # new calls.
    if "resumed>" in line:
        return ""
    head = line.split("(", 1)[0].split()
    return head[-1] if head else ""


def trace_syscalls(
    argv: Sequence[str], syscalls: Sequence[str], env: Mapping[str, str], timeout: float = 120
) -> tuple[subprocess.CompletedProcess[str], list[tuple[str, str]]]:
    """Run `argv` under strace -f and return (the process, [(syscall, trace line)] in order)."""
    out = subprocess.run(
        ["strace", "-f", "-qq", "-e", "trace=" + ",".join(syscalls), "-o", "/dev/stderr", *argv],
        cwd=REPO,
        env=dict(env),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    calls = []
    for line in out.stderr.splitlines():
        name = _syscall_name(line)
        if name in syscalls:
            calls.append((name, line))
    return out, calls


def syscall_counts(argv: Sequence[str], syscalls: Sequence[str], env: Mapping[str, str]) -> dict[str, int]:
    """How often a clean run of `argv` makes each of `syscalls`."""
    _, calls = trace_syscalls(argv, syscalls, env)
    counts = dict.fromkeys(syscalls, 0)
    for name, _ in calls:
        counts[name] += 1
    return counts


def injection_points(
    argv: Sequence[str], env: Mapping[str, str], syscalls: Sequence[str] = MOUNT_SYSCALLS
) -> list[tuple[str, int]]:
    """Every (syscall, n-th call) a clean run of `argv` reaches, in the order they happen: the
    mount syscalls, and the ioctl() calls that set up loop devices."""
    _, calls = trace_syscalls(argv, (*syscalls, "ioctl"), env)
    seen: Counter[str] = Counter()
    points = []
    for name, line in calls:
        seen[name] += 1
        if name != "ioctl" or any(req in line for req in LOOP_IOCTLS):
            points.append((name, seen[name]))
    return points


def spread(points: Sequence[tuple[str, int]]) -> list[tuple[str, int]]:
    """The points of a run with each burst of one syscall (the per-layer fsconfig calls of one
    overlay, say) cut to its first and last call: the bounded tests' sample, one or two points
    per step of the code."""
    kept = []
    for i, point in enumerate(points):
        first = i == 0 or points[i - 1][0] != point[0]
        last = i == len(points) - 1 or points[i + 1][0] != point[0]
        if first or last:
            kept.append(point)
    return kept


def run_injected(
    argv: Sequence[str], syscall: str, nth: int, action: str, env: Mapping[str, str], timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run `argv` with the `nth` call of `syscall` failing: `action` is "signal=KILL" or
    "error=ENOMEM" and the like (strace's inject syntax)."""
    return subprocess.run(
        ["strace", "-f", "-qq", "-o", "/dev/null", "-e", f"inject={syscall}:{action}:when={nth}", *argv],
        cwd=REPO,
        env=dict(env),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def run_paused(
    argv: Sequence[str],
    syscall: str,
    nth: int,
    env: Mapping[str, str],
    meanwhile: Callable[[], None],
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    """Run `argv`, stopped (SIGSTOP) right after the `nth` call of `syscall`; `meanwhile()` runs
    while it is stopped, then it goes on. A run that never makes that call is not stopped."""
    with tempfile.NamedTemporaryFile("r", prefix="strace-", suffix=".log") as trace:
        proc = subprocess.Popen(
            ["strace", "-f", "-qq", "-o", trace.name, "-e", f"trace={syscall}"]
            + ["-e", f"inject={syscall}:signal=SIGSTOP:when={nth}", *argv],
            cwd=REPO,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + timeout
        stopped: Optional[int] = None
        while stopped is None and proc.poll() is None and time.monotonic() < deadline:
            for line in open(trace.name, encoding="utf-8", errors="replace"):
                if "stopped by SIGSTOP" in line:
                    stopped = int(line.split()[0])
            time.sleep(0.01)
        try:
            if stopped is not None:
                meanwhile()
        finally:
            if stopped is not None:
                os.kill(stopped, signal.SIGCONT)
            out, err = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def clean_failure(proc: subprocess.CompletedProcess[str]) -> Optional[str]:
    """None when a run that was not killed ended the way the error model promises: exit 0, 1 or 3,
    and on failure an error message rather than a traceback. Else what is wrong."""
    if proc.returncode not in (0, 1, 3):
        return f"exit status {proc.returncode}"
    if "Traceback" in proc.stderr or "failed unexpectedly" in proc.stderr:
        return "an unexpected exception"
    if proc.returncode == 1 and not proc.stderr.strip():
        return "failed without saying why"
    return None


# --------------------------------------------------------------------------------------------
# Mounts and loop devices


def mount_census(below: Path) -> Counter[tuple[str, str]]:
    """(mount point relative to `below`, file system type) -> how many mounts, for every mount
    at or below `below` in this namespace."""
    base = os.path.realpath(below)
    census: Counter[tuple[str, str]] = Counter()
    for info in mountapi.read_mountinfo():
        if info.mount_point == base or info.mount_point.startswith(base.rstrip("/") + "/"):
            census[(os.path.relpath(info.mount_point, base), info.fstype)] += 1
    return census


def loops_below(path: Path, at_most: int, timeout: float = 3.0) -> int:
    """Loop devices backed by files below `path`, after giving autoclear up to `timeout` seconds
    to bring the count down to `at_most`."""
    deadline = time.monotonic() + timeout
    count = loops_backed_below(path)
    while count > at_most and time.monotonic() < deadline:
        time.sleep(0.02)
        count = loops_backed_below(path)
    return count


# --------------------------------------------------------------------------------------------
# A root whose every hierarchy state can be told apart by reading it

# Per hierarchy: (class, extension -> (file, text with {v} for the version)). alpha and conf come
# in versions 1 and 2 (directories behind symlinks, switched by `World.point`); beta is a plain
# directory, gamma a squashfs image (loop device) when mksquashfs is there.
EXTENSION_FILES: dict[str, tuple[ImageClass, dict[str, tuple[str, str]]]] = {
    "/usr": (
        ImageClass.SYSEXT,
        {
            "alpha": ("usr/bin/alpha", "alpha {v}\n"),
            "beta": ("usr/share/beta/data", "beta\n"),
            "gamma": ("usr/share/gamma/data", "gamma\n"),
        },
    ),
    "/opt": (ImageClass.SYSEXT, {"alpha": ("opt/alpha/data", "opt {v}\n")}),
    "/etc": (ImageClass.CONFEXT, {"conf": ("etc/conf.d/setting", "value {v}\n")}),
}
# Files of the root itself that must stay visible whatever is merged; usr/lib/locale is a
# submount (a tmpfs), which every merge must carry over.
HOST_FILES = {
    "/usr": (("usr/bin/base-tool", "base\n"), ("usr/lib/locale/data", "locale\n")),
    "/opt": (("opt/host-opt", "base\n"),),
    "/etc": (("etc/base.conf", "base\n"),),
}
UNMERGED = "unmerged"


class World:
    """A fake root for fault and concurrency tests: sysexts on /usr and /opt (one of them a raw
    image), a confext on /etc, and a submount below /usr. `observe()` says, per hierarchy, which
    merge a reader sees, or what is broken about it."""

    def __init__(self, root: Path, scratch: Path) -> None:
        self.root = root
        self.scratch = scratch
        self.state = scratch / "state" / "state.json"
        self.raw = have_tool("squashfs")
        self.locale = root / "usr/lib/locale"

    def build(self) -> World:
        root = self.root
        self.state.parent.mkdir(parents=True, exist_ok=True)
        write(root / "usr/bin/base-tool", "base\n")
        write(root / "etc/base.conf", "base\n")
        write(root / "opt/host-opt", "base\n")
        for v in (1, 2):
            sysext_tree(
                root / f"srv/alpha{v}",
                "alpha",
                {"usr/bin/alpha": f"alpha {v}\n", "opt/alpha/data": f"opt {v}\n"},
            )
            write(root / f"srv/conf{v}/etc/extension-release.d/extension-release.conf", HOST_RELEASE)
            write(root / f"srv/conf{v}/etc/conf.d/setting", f"value {v}\n")
        sysext_tree(root / "var/lib/extensions/beta", "beta", {"usr/share/beta/data": "beta\n"})
        if self.raw:
            src = sysext_tree(self.scratch / "gamma-src", "gamma", {"usr/share/gamma/data": "gamma\n"})
            make_raw("squashfs", src, root / "var/lib/extensions/gamma.raw")
        self.locale.mkdir(parents=True, exist_ok=True)
        mountapi.mount("tmpfs", self.locale, "tmpfs", 0, "mode=0755,size=1m")
        write(self.locale / "data", "locale\n")
        self.point(1)
        return self

    def teardown(self) -> None:
        self.run("unmerge")
        while any(i.mount_point == os.fspath(self.locale) for i in mountapi.read_mountinfo()):
            mountapi.umount2(self.locale, mountapi.MNT_DETACH)

    def point(self, version: int) -> None:
        """Switch alpha and conf to version 1 or 2 (a new merge is needed to see it)."""
        for link, target in (
            (self.root / "var/lib/extensions/alpha", f"/srv/alpha{version}"),
            (self.root / "var/lib/confexts/conf", f"/srv/conf{version}"),
        ):
            link.parent.mkdir(parents=True, exist_ok=True)
            # Made outside the search directory, so that no run ever sees it as an entry.
            tmp = link.parent.parent / f".{link.name}.{os.getpid()}.tmp"
            tmp.symlink_to(target)
            os.rename(tmp, link)  # atomic, like a sysupdate "current" link

    def argv(self, *args: str) -> list[str]:
        return sysextpy_argv(self.root, self.state, *args)

    def run(self, *args: str, env: Optional[Mapping[str, str]] = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.argv(*args),
            cwd=REPO,
            env=sysextpy_env(env),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    def names(self) -> dict[str, tuple[str, ...]]:
        """Per hierarchy, the extensions that contribute to it when everything is merged."""
        return {
            h: tuple(n for n in sorted(files) if self.raw or n != "gamma")
            for h, (_, files) in EXTENSION_FILES.items()
        }

    def merged(self, version: int) -> dict[str, str]:
        """What `observe()` returns when everything is merged at `version`."""
        classes: dict[ImageClass, set[str]] = {}
        for h, (cls, _) in EXTENSION_FILES.items():
            classes.setdefault(cls, set()).update(self.names()[h])
        return {h: "+".join(sorted(classes[cls])) + f"@{version}" for h, (cls, _) in EXTENSION_FILES.items()}

    def unmerged(self) -> dict[str, str]:
        return dict.fromkeys(EXTENSION_FILES, UNMERGED)

    def observe(self) -> dict[str, str]:
        return {h: self._observe(h) for h in EXTENSION_FILES}

    def _observe(self, hierarchy: str) -> str:
        cls, files = EXTENSION_FILES[hierarchy]
        for rel, text in HOST_FILES[hierarchy]:
            try:
                got = (self.root / rel).read_text()
            except OSError as e:
                return f"broken: {rel}: {e.strerror}"
            if got != text:
                return f"broken: {rel} reads {got!r}"
        _, live = live_merge(self.root, cls, hierarchy)
        names = set(live.extensions) if live is not None else set()
        versions = set()
        for name, (rel, pattern) in files.items():
            path = self.root / rel
            if name not in names:
                if os.path.lexists(path):
                    return f"broken: {rel} visible but {name} is not in the merge's list {sorted(names)}"
                continue
            try:
                got = path.read_text()
            except OSError as e:
                return f"broken: {name} is merged but {rel}: {e.strerror}"
            match = [v for v in (1, 2) if pattern.format(v=v) == got]
            if not match:
                return f"broken: {rel} reads {got!r}"
            if "{v}" in pattern:
                versions.add(match[0])
        if live is None:
            return UNMERGED
        if len(versions) > 1:
            return f"broken: versions {sorted(versions)} mixed in one merge"
        return "+".join(sorted(names)) + f"@{versions.pop() if versions else '-'}"

    def overlays(self) -> dict[str, int]:
        """Per hierarchy, how many overlays are stacked on it."""
        census = mount_census(self.root)
        return {h: census[(h.lstrip("/"), "overlay")] for h in EXTENSION_FILES}

    def stray_mounts(self) -> list[str]:
        """Mounts below the test's directory that are neither a hierarchy's overlay nor the
        locale submount (or its copies inside overlays)."""
        allowed = {h.lstrip("/") for h in EXTENSION_FILES}
        locale = os.path.relpath(self.locale, self.root)
        stray = []
        for (point, fstype), n in sorted(mount_census(self.root).items()):
            if (point in allowed and fstype == "overlay") or (point == locale and fstype == "tmpfs"):
                continue
            stray.append(f"{n} x {fstype} on {point}")
        return stray

    def loops(self, at_most: int) -> int:
        return loops_below(self.scratch, at_most)


# --------------------------------------------------------------------------------------------
# Figures for tests/RELIABILITY.md


def report(section: str, name: str, **figures: object) -> None:
    """Append one set of figures to the report file named by $SYSEXTPY_RELIABILITY_REPORT."""
    target = os.environ.get(REPORT_ENV)
    if not target:
        return
    line = json.dumps({"section": section, "name": name, "figures": figures}, sort_keys=True)
    with open(target, "a", encoding="utf-8") as f:
        f.write(line + "\n")


class Tally:
    """Counts kept in memory while a test module runs (property examples are too many to write
    one by one); `flush()` reports them, once per module."""

    def __init__(self, section: str) -> None:
        self.section = section
        self.counts: dict[str, Counter[str]] = {}

    def add(self, name: str, key: str = "examples", n: int = 1) -> None:
        self.counts.setdefault(name, Counter())[key] += n

    def flush(self) -> None:
        for name, counts in sorted(self.counts.items()):
            report(self.section, name, **dict(counts))
        self.counts.clear()


def describe_points(points: Iterable[tuple[str, int]]) -> dict[str, int]:
    """{syscall: number of injection points} for the report."""
    return dict(Counter(name for name, _ in points))
