# SPDX-License-Identifier: LGPL-2.1-or-later
"""Faults: SIGKILL at every mount-related syscall of merge and unmerge, each of those syscalls
failing once (ENOMEM, EIO, EBUSY, EROFS), and a full handoff directory.

The invariant, after every injected fault: each hierarchy shows its old or its new merge (or a
complete merge of fewer images, reported as rejected), never nothing and never a mix; nothing is
mounted below the test root but the hierarchies' overlays and the submount; no loop device is
left without a merge using it; a failed run says why, without a traceback; and the next run
repairs: it ends in the new state with exactly one overlay per hierarchy.

The points are the mount-related syscalls (and loop device ioctls) a clean run of the verb
makes, in order. The bounded variants inject at each step of the code: every point, except that a
burst of one syscall (the per-layer fsconfig calls of one overlay) is cut to its first and last
call, the errno taking turns. The `slow` variants inject at every point, SIGKILL and each errno,
for refresh too (tests/test_refresh.py kills a simpler refresh at every step in the normal run).
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Callable

import pytest

from sysextpy import mountapi
from tests.faults import (
    ERRNOS,
    REPO,
    UNMERGED,
    World,
    clean_failure,
    describe_points,
    injection_points,
    report,
    run_injected,
    spread,
    sysextpy_env,
)

needs_strace = pytest.mark.tools("strace")  # injects the faults


@pytest.fixture
def world(mountns: None, fake_root: Path, tmp_path: Path) -> Iterator[World]:
    w = World(fake_root, tmp_path).build()
    try:
        yield w
    finally:
        w.teardown()


def _ok(proc: subprocess.CompletedProcess[str], what: str) -> None:
    assert proc.returncode == 0, f"{what}: exit {proc.returncode}\n{proc.stderr[-3000:]}"
    assert "Traceback" not in proc.stderr, proc.stderr


class Scenario:
    """One verb under faults: how to reach its starting state, what counts as old and new, and
    which run repairs after a fault."""

    def __init__(
        self,
        verb: str,
        setup: Callable[[World], None],
        old: Callable[[World], dict[str, str]],
        new: Callable[[World], dict[str, str]],
        repair: str,
    ) -> None:
        self.verb, self.setup, self.old, self.new, self.repair = verb, setup, old, new, repair


def _setup_refresh(w: World) -> None:
    w.point(1)
    _ok(w.run("refresh"), "setting up the old merge")
    w.point(2)


def _setup_merge(w: World) -> None:
    _ok(w.run("unmerge"), "unmerging before a merge")
    w.point(2)


def _setup_unmerge(w: World) -> None:
    w.point(2)
    _ok(w.run("refresh"), "setting up the merge to remove")


SCENARIOS = {
    "refresh": Scenario("refresh", _setup_refresh, lambda w: w.merged(1), lambda w: w.merged(2), "refresh"),
    "merge": Scenario("merge", _setup_merge, lambda w: w.unmerged(), lambda w: w.merged(2), "refresh"),
    "unmerge": Scenario("unmerge", _setup_unmerge, lambda w: w.merged(2), lambda w: w.unmerged(), "unmerge"),
}


def _acceptable(w: World, sc: Scenario, seen: dict[str, str], partial: bool) -> list[str]:
    """Hierarchies in a state other than old or new. With `partial` (exit 3: an image rejected),
    a complete merge of fewer images is fine too."""
    old, new = sc.old(w), sc.new(w)
    bad = []
    for h, state in seen.items():
        if state in (old[h], new[h]):
            continue
        if partial and not state.startswith("broken") and state != UNMERGED:
            continue
        bad.append(f"{h}: {state}")
    return bad


def _mount_problems(w: World, at_most_stacked: int) -> list[str]:
    problems = list(w.stray_mounts())
    overlays = w.overlays()
    for h, n in overlays.items():
        if n > at_most_stacked:
            problems.append(f"{n} overlays stacked on {h}")
    locale = sum(1 for i in mountapi.read_mountinfo() if i.mount_point == os.fspath(w.locale))
    if locale != 1 + overlays["/usr"]:
        problems.append(f"{locale} mounts on usr/lib/locale with {overlays['/usr']} overlays on /usr")
    return problems


def _check_repaired(w: World, sc: Scenario, where: str, completed: bool) -> None:
    proc = w.run(sc.repair)
    _ok(proc, f"the repair after {where}")
    if not completed:
        # A run that did not finish (or rejected an image for a passing reason) must not be
        # confirmed by the next one.
        assert "Skipping extension refresh" not in proc.stderr, f"{where}: the repair skipped"
    assert w.observe() == sc.new(w), f"{where}: after the repair"
    expected = 0 if sc.verb == "unmerge" else 1
    assert w.overlays() == dict.fromkeys(w.overlays(), expected), f"{where}: after the repair"
    assert not _mount_problems(w, expected), f"{where}: {_mount_problems(w, expected)}"
    loops = 0 if sc.verb == "unmerge" or not w.raw else 1
    assert w.loops(loops) == loops, f"{where}: loop devices leaked after the repair"


def _walk(w: World, sc: Scenario, actions: Callable[[int], list[str]], every: bool) -> Counter[str]:
    """Inject the actions at every point of a clean run of the scenario's verb (`every`), or at
    its spread (bursts of one syscall cut to their first and last call)."""
    sc.setup(w)
    env = sysextpy_env()
    reached = injection_points(w.argv(sc.verb), env)
    assert w.observe() == sc.new(w), "the clean run did not reach the new state"
    assert len(reached) >= (3 if sc.verb == "unmerge" else 20), reached
    points = reached if every else spread(reached)
    outcomes: Counter[str] = Counter()
    index = 0
    for name, nth in points:
        for action in actions(index):
            index += 1
            where = f"{sc.verb} with {name}#{nth} {action}"
            sc.setup(w)
            assert w.observe() == sc.old(w), f"{where}: the old state was not set up"
            proc = run_injected(w.argv(sc.verb), name, nth, action, env)
            killed = action.startswith("signal")
            if killed:
                assert proc.returncode != 0, f"{where}: not killed"
            else:
                problem = clean_failure(proc)
                assert problem is None, f"{where}: {problem}\n{proc.stderr[-3000:]}"
            seen = w.observe()
            bad = _acceptable(w, sc, seen, partial=proc.returncode == 3)
            assert not bad, f"{where}: {bad}\n{proc.stderr[-3000:]}"
            # A fault between mounting the new tree beneath the old one and detaching the old
            # one leaves both stacked; the next run must clear that.
            problems = _mount_problems(w, at_most_stacked=2)
            assert not problems, f"{where}: {problems}"
            # Each overlay on /usr holds the raw image's loop device; nothing else may.
            in_use = w.overlays()["/usr"] if w.raw else 0
            assert w.loops(in_use) <= in_use, f"{where}: loop devices leaked"
            state = "old" if seen == sc.old(w) else "new" if seen == sc.new(w) else "other"
            outcomes[f"{'killed' if killed else 'failed' if proc.returncode else 'ok'}->{state}"] += 1
            if max(w.overlays().values()) > 1:
                outcomes["stacked until the repair"] += 1
            _check_repaired(w, sc, where, completed=not killed and proc.returncode == 0)
    report(
        "faults",
        f"{sc.verb}: {'SIGKILL' if actions(0)[0].startswith('signal') else 'syscall errors'}"
        f" ({'every point' if every else 'each step'}{', every errno' if len(actions(0)) > 1 else ''})",
        reached=len(reached),
        points=len(points),
        runs=index,
        by_syscall=describe_points(points),
        outcomes=dict(outcomes),
        lost_hierarchies=0,
        leaks=0,
    )
    return outcomes


def _kill(_: int) -> list[str]:
    return ["signal=KILL"]


def _one_errno(i: int) -> list[str]:
    return [f"error={ERRNOS[i % len(ERRNOS)]}"]


def _every_errno(_: int) -> list[str]:
    return [f"error={e}" for e in ERRNOS]


@needs_strace
@pytest.mark.parametrize("verb", ["merge", "unmerge"])
def test_sigkill_at_each_step(world: World, verb: str) -> None:
    outcomes = _walk(world, SCENARIOS[verb], _kill, every=False)
    assert outcomes


@needs_strace
@pytest.mark.parametrize(
    "verb",
    [
        "refresh",
        # A merge builds exactly as a refresh does; only its swap differs, and SIGKILL walks it.
        pytest.param("merge", marks=pytest.mark.slow),
        "unmerge",
    ],
)
def test_each_syscall_failing_once(world: World, verb: str) -> None:
    _walk(world, SCENARIOS[verb], _one_errno, every=False)


@needs_strace
@pytest.mark.slow
@pytest.mark.parametrize("verb", ["refresh", "merge", "unmerge"])
def test_sigkill_at_every_syscall(world: World, verb: str) -> None:
    _walk(world, SCENARIOS[verb], _kill, every=True)


@needs_strace
@pytest.mark.slow
@pytest.mark.parametrize("verb", ["refresh", "merge", "unmerge"])
def test_every_errno_at_every_syscall(world: World, verb: str) -> None:
    _walk(world, SCENARIOS[verb], _every_errno, every=True)


# --------------------------------------------------------------------------------------------
# A full or unusable handoff directory


def _fill(directory: Path) -> None:
    """Fill the file system of `directory` up to the last block."""
    try:
        with open(directory / "filler", "wb") as f:
            while True:
                f.write(b"\0" * 4096)
                f.flush()
    except OSError as e:
        assert e.errno == errno.ENOSPC, e


def _no_inodes(directory: Path) -> None:
    n = 0
    try:
        while True:
            (directory / f"inode{n}").touch()
            n += 1
    except OSError as e:
        assert e.errno == errno.ENOSPC, e


def _read_only(directory: Path) -> None:
    mountapi.mount(None, directory, None, mountapi.MS_REMOUNT | mountapi.MS_RDONLY)


@pytest.mark.parametrize(
    "damage, message",
    [
        (_fill, "No space left on device"),
        (_no_inodes, "No space left on device"),
        (_read_only, "Read-only file system"),
    ],
)
def test_unusable_handoff_directory(world: World, damage: Callable[[Path], None], message: str) -> None:
    state_dir = world.state.parent
    world.point(1)
    _ok(world.run("refresh"), "the first merge")
    record = world.state.read_bytes()
    # A small tmpfs of its own on the state directory, holding the record of the first merge.
    mountapi.mount("tmpfs", state_dir, "tmpfs", 0, "size=64k,nr_inodes=8,mode=0755")
    try:
        world.state.write_bytes(record)
        damage(state_dir)
        world.point(2)
        proc = world.run("refresh")
        assert proc.returncode == 1, proc.stderr
        assert "Traceback" not in proc.stderr and "unexpectedly" not in proc.stderr, proc.stderr
        assert message in proc.stderr, proc.stderr
        assert str(state_dir) in proc.stderr, proc.stderr
        # Nothing lost: the old merge is still there, whole, and the record was not replaced.
        assert world.observe() == world.merged(1)
        assert not _mount_problems(world, 1)
        assert world.state.read_bytes() == record
        proc = world.run("status")
        assert proc.returncode == 0, proc.stderr
    finally:
        mountapi.umount2(state_dir, mountapi.MNT_DETACH)
    # With room again, the next run refreshes.
    world.state.write_bytes(record)
    proc = world.run("refresh")
    _ok(proc, "the refresh with room again")
    assert world.observe() == world.merged(2)
    report("faults", f"handoff directory: {damage.__name__.strip('_').replace('_', ' ')}", runs=2, lost=0)


def test_first_run_on_a_pristine_root(mountns: None, tmp_path: Path) -> None:
    """Nothing exists yet: no search directories, no mutable directories, no handoff record or
    its directory. Every verb succeeds, and a later image is picked up."""
    from tests.merge_support import HOST_RELEASE, sysext_tree, write

    root = tmp_path / "root"
    write(root / "usr/lib/os-release", HOST_RELEASE)
    state = tmp_path / "run/sysextpy/state.json"

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [sys.executable, "-m", "sysextpy", f"--root={root}", f"--state={state}", *args],
            cwd=REPO,
            env=sysextpy_env(),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert "Traceback" not in proc.stderr, proc.stderr
        return proc

    verbs = [
        ("status",),
        ("list",),
        ("plan",),
        ("refresh",),
        ("unmerge",),
        ("--mutable=auto", "refresh"),
        ("unmerge",),
        ("merge",),
        ("unmerge",),
    ]
    for args in verbs:
        proc = run(*args)
        assert proc.returncode == 0, f"{args}: {proc.stderr}"
    sysext_tree(root / "var/lib/extensions/late", "late", {"usr/share/late": "late\n"})
    assert run("refresh").returncode == 0
    assert (root / "usr/share/late").read_text() == "late\n"
    assert run("unmerge").returncode == 0
    report("faults", "first run on a pristine root", runs=len(verbs) + 2, failures=0)
