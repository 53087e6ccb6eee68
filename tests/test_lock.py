# SPDX-License-Identifier: LGPL-2.1-or-later
"""Mutating runs are serialised by a lock next to the state file; a waiter gives up after
SYSEXTPY_LOCK_TIMEOUT seconds, and a run that waited works on what the first one left."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.merge_support import REPO_ROOT, Runner, RunSysextpy, add_confext, add_sysext, mounts_at


@pytest.fixture
def run(mountns: None, fake_root: Path, tmp_path: Path, sysextpy_cmd: RunSysextpy) -> Runner:
    add_sysext(fake_root, "tools", {"usr/share/tools/file": "ext\n"})
    add_confext(fake_root, "conf", {"etc/conf": "x\n"})
    return Runner(sysextpy_cmd, fake_root, tmp_path / "state.json")


@pytest.fixture
def held_lock(tmp_path: Path) -> Iterator[int]:
    """The run lock (<state dir>/lock), held by the test; `_release` lets go early."""
    fd = os.open(tmp_path / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    yield fd
    os.close(fd)


def _release(fd: int) -> None:
    fcntl.flock(fd, fcntl.LOCK_UN)


def _popen(runner: Runner, verb: str, timeout: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if k != "SYSTEMD_LOG_LEVEL"}
    env["SYSEXTPY_LOCK_TIMEOUT"] = timeout
    return subprocess.Popen(
        [sys.executable, "-m", "sysextpy", "--root", str(runner.root), "--state", str(runner.state), verb],
        cwd=REPO_ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_lock_timeout(run: Runner, fake_root: Path, tmp_path: Path, held_lock: int) -> None:
    start = time.monotonic()
    res = run("merge", env={"SYSEXTPY_LOCK_TIMEOUT": "1"})
    elapsed = time.monotonic() - start
    assert res.returncode == 1, res.stderr
    assert str(tmp_path / "lock") in res.stderr
    assert 1 <= elapsed < 30
    assert not mounts_at(fake_root / "usr") and not mounts_at(fake_root / "etc")


def test_waiter_proceeds_when_lock_is_released(run: Runner, fake_root: Path, held_lock: int) -> None:
    timer = threading.Timer(0.5, _release, (held_lock,))
    start = time.monotonic()
    timer.start()
    try:
        res = run("merge", env={"SYSEXTPY_LOCK_TIMEOUT": "30"})
    finally:
        timer.cancel()
    assert res.returncode == 0, res.stderr
    assert time.monotonic() - start >= 0.5
    assert (fake_root / "usr/share/tools/file").read_text() == "ext\n"
    run.ok("unmerge")


def test_lock_of_a_killed_holder_is_free(run: Runner, fake_root: Path, tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, os, sys, time\n"
            "fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)\n"
            "fcntl.flock(fd, fcntl.LOCK_EX)\n"
            "print('locked', flush=True)\n"
            "time.sleep(120)\n",
            str(tmp_path / "lock"),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
        res = run("merge", env={"SYSEXTPY_LOCK_TIMEOUT": "1"})
        assert res.returncode == 1, "the holder is alive: the lock is taken"
        holder.kill()
        holder.wait()
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
        if holder.stdout is not None:
            holder.stdout.close()
    run.ok("merge", env={"SYSEXTPY_LOCK_TIMEOUT": "5"})
    run.ok("unmerge")


@pytest.mark.parametrize(
    "verbs, codes",
    [
        (("merge", "merge"), [0, 1]),  # the second finds the first's merge
        (("refresh", "refresh"), [0, 0]),
    ],
)
def test_concurrent_runs_are_serialised(
    run: Runner, fake_root: Path, held_lock: int, verbs: tuple[str, str], codes: list[int]
) -> None:
    procs = [_popen(run, verb, "30") for verb in verbs]
    try:
        time.sleep(0.5)  # both are waiting for the lock now
        assert all(p.poll() is None for p in procs), "a run did not wait for the lock"
        _release(held_lock)
        results = [p.communicate(timeout=120) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
    got = sorted(p.returncode for p in procs)
    assert got == codes, results
    for p, (_, err) in zip(procs, results):
        if p.returncode == 1:
            assert "already merged" in err, err
    for h in ("usr", "etc"):
        assert len(mounts_at(fake_root / h)) == 1, f"{h}: merged more than once"
    assert (fake_root / "usr/share/tools/file").read_text() == "ext\n"
    run.ok("unmerge")
    assert not mounts_at(fake_root / "usr") and not mounts_at(fake_root / "etc")
