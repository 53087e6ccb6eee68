# SPDX-License-Identifier: LGPL-2.1-or-later
"""Concurrency: eight runs at once on one root, and merges racing images being replaced.

Every run must exit cleanly (0, or a documented refusal), and afterwards each hierarchy carries
exactly one overlay, a whole merge of the current images, confirmed by the next refresh.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.faults import REPO, World, report, sysextpy_env

PARALLEL = 8
SKIPPED = "Skipping extension refresh because no change was found"


@pytest.fixture
def world(mountns: None, fake_root: Path, tmp_path: Path) -> Iterator[World]:
    w = World(fake_root, tmp_path).build()
    try:
        yield w
    finally:
        w.teardown()


def _all_at_once(w: World, argvs: list[list[str]]) -> list[subprocess.CompletedProcess[str]]:
    """Start every command before waiting for any."""
    env = sysextpy_env({"SYSEXTPY_LOCK_TIMEOUT": "120"})
    procs = [
        subprocess.Popen(
            argv,
            cwd=REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for argv in argvs
    ]
    results = []
    try:
        for argv, p in zip(argvs, procs):
            out, err = p.communicate(timeout=300)
            results.append(subprocess.CompletedProcess(argv, p.returncode, out, err))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
    return results


def _check_settled(w: World, version: int) -> None:
    assert w.observe() == w.merged(version)
    assert w.overlays() == dict.fromkeys(w.overlays(), 1), "a hierarchy carries more than one overlay"
    assert not w.stray_mounts(), w.stray_mounts()
    loops = 1 if w.raw else 0
    assert w.loops(loops) == loops, "loop devices leaked"
    proc = w.run("refresh")
    assert proc.returncode == 0 and SKIPPED in proc.stderr, proc.stderr


@pytest.mark.parametrize(
    "start, args",
    [
        ("unmerged", ()),  # the first run merges, the others find it done
        ("changed", ()),  # the first run swaps, the others find it done
        ("merged", ("--always-refresh=yes",)),  # every run swaps, one after the other
    ],
)
def test_parallel_refreshes(world: World, start: str, args: tuple[str, ...]) -> None:
    if start != "unmerged":
        world.point(1)
        assert world.run("refresh").returncode == 0
    version = 2 if start == "changed" else 1
    world.point(version)
    results = _all_at_once(world, [world.argv(*args, "refresh")] * PARALLEL)
    for r in results:
        assert r.returncode == 0, r.stderr
        assert "Traceback" not in r.stderr, r.stderr
    skipped = sum(SKIPPED in r.stderr for r in results)
    assert skipped == (0 if args else PARALLEL - 1), [r.stderr for r in results]
    _check_settled(world, version)
    report(
        "concurrency",
        f"{PARALLEL} parallel refresh, {start}{' ' if args else ''}{' '.join(args)}",
        runs=PARALLEL,
        clean_exits=PARALLEL,
        skipped=skipped,
        overlays_per_hierarchy=1,
        leaks=0,
    )


def test_parallel_mixed_verbs(world: World) -> None:
    """merge, unmerge and refresh all at once: each gets the lock in turn and finds what the
    previous one left; the only refusal allowed is merge's "already merged"."""
    verbs = ["merge", "refresh", "unmerge", "refresh", "merge", "unmerge", "refresh", "refresh"]
    results = _all_at_once(world, [world.argv(v) for v in verbs])
    codes: Counter[str] = Counter()
    for verb, r in zip(verbs, results):
        assert "Traceback" not in r.stderr, r.stderr
        if r.returncode == 1:
            assert verb == "merge" and "already merged" in r.stderr, r.stderr
        else:
            assert r.returncode == 0, r.stderr
        codes[f"{verb} -> {r.returncode}"] += 1
    state = world.observe()
    assert state in (world.merged(1), world.unmerged()), state
    assert all(n <= 1 for n in world.overlays().values()), world.overlays()
    assert not world.stray_mounts(), world.stray_mounts()
    proc = world.run("refresh")
    assert proc.returncode == 0, proc.stderr
    _check_settled(world, 1)
    report(
        "concurrency",
        "8 parallel runs of merge, unmerge and refresh",
        runs=len(verbs),
        exits=dict(codes),
        overlays_per_hierarchy=1,
        leaks=0,
    )


def test_parallel_refreshes_with_their_own_records(world: World, tmp_path: Path) -> None:
    """Runs that keep their handoff records in different places still act on the same
    hierarchies: they must be serialised as well."""
    argvs = []
    for i in range(PARALLEL):
        state = tmp_path / f"state{i}" / "state.json"
        argvs.append(
            [
                sys.executable,
                "-m",
                "sysextpy",
                f"--root={world.root}",
                f"--state={state}",
                "--always-refresh=yes",
                "refresh",
            ]
        )
    results = _all_at_once(world, argvs)
    for r in results:
        assert r.returncode == 0, r.stderr
        assert "Traceback" not in r.stderr, r.stderr
    assert world.observe() == world.merged(1)
    assert world.overlays() == dict.fromkeys(world.overlays(), 1), world.overlays()
    assert not world.stray_mounts(), world.stray_mounts()
    report(
        "concurrency",
        f"{PARALLEL} parallel forced refresh, one record each",
        runs=PARALLEL,
        clean_exits=PARALLEL,
        overlays_per_hierarchy=1,
        leaks=0,
    )


FLIPPER = r"""
import os, sys, time
root, stop = sys.argv[1], sys.argv[2]
links = [("var/lib/extensions/alpha", "/srv/alpha{}"), ("var/lib/confexts/conf", "/srv/conf{}")]
images = [os.path.join(root, "var/lib/gamma-a.raw"), os.path.join(root, "var/lib/gamma-b.raw")]
gamma = os.path.join(root, "var/lib/extensions/gamma.raw")
flips = 0
while not os.path.exists(stop):
    version = 1 + flips % 2
    for rel, target in links:
        tmp = os.path.join(root, "var/lib", ".flip.tmp")
        os.symlink(target.format(version), tmp)
        os.rename(tmp, os.path.join(root, rel))
    if os.path.exists(images[0]):
        tmp = os.path.join(root, "var/lib", ".gamma.tmp")
        os.link(images[(flips + 1) % 2], tmp)
        os.rename(tmp, gamma)
    flips += 1
    time.sleep(0.0005)
with open(stop + ".flips", "w") as f:
    f.write(f"{flips} {1 + (flips - 1) % 2}")
"""


@pytest.mark.parametrize("verb_args", [("refresh",), ("--always-refresh=yes", "refresh")])
def test_merge_racing_replaced_images(world: World, tmp_path: Path, verb_args: tuple[str, ...]) -> None:
    """sysupdate-style replacement (links retargeted, the raw image renamed over) while runs go
    on: every run ends cleanly with whole merges, and once the replacing stops the next refresh
    merges exactly what is there, and the one after confirms it."""
    if world.raw:
        gamma = world.root / "var/lib/extensions/gamma.raw"
        os.link(gamma, world.root / "var/lib/gamma-a.raw")
        data = gamma.read_bytes()
        (world.root / "var/lib/gamma-b.raw").write_bytes(data)  # same content, another inode
    world.point(1)
    assert world.run("refresh").returncode == 0
    stop = tmp_path / "stop"
    flipper = subprocess.Popen([sys.executable, "-c", FLIPPER, str(world.root), str(stop)])
    runs = 0
    outcomes: Counter[str] = Counter()
    try:
        deadline = time.monotonic() + 2.5
        while time.monotonic() < deadline or runs < 6:
            proc = world.run(*verb_args)
            runs += 1
            assert proc.returncode == 0, proc.stderr
            assert "Traceback" not in proc.stderr, proc.stderr
            outcomes["skipped" if SKIPPED in proc.stderr else "merged"] += 1
            seen = world.observe()
            assert not [s for s in seen.values() if s.startswith("broken")], seen
            assert all(n == 1 for n in world.overlays().values()), world.overlays()
    finally:
        stop.touch()
        flipper.wait(timeout=30)
    flips, final = (int(x) for x in Path(f"{stop}.flips").read_text().split())
    assert flips > runs, "the images were not replaced while the runs went on"
    proc = world.run("refresh")
    assert proc.returncode == 0, proc.stderr
    _check_settled(world, final)
    report(
        "concurrency",
        f"runs racing replaced images ({' '.join(verb_args)})",
        runs=runs + 2,
        replacements=flips,
        outcomes=dict(outcomes),
        broken=0,
        overlays_per_hierarchy=1,
    )


def test_busy_hierarchies(world: World, tmp_path: Path) -> None:
    """Processes with their working directory and open files in the merged trees: a forced
    refresh and an unmerge still succeed (the old trees are detached lazily), and the processes
    keep reading what they had."""
    world.point(1)
    assert world.run("refresh").returncode == 0
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import os, sys, time\n"
            "os.chdir(sys.argv[1])\n"
            "f = open(sys.argv[2])\n"
            "print('ready', flush=True)\n"
            "sys.stdin.readline()\n"
            "print(f.read() + open('alpha').read(), end='', flush=True)\n",
            str(world.root / "usr/bin"),
            str(world.root / "etc/conf.d/setting"),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "ready\n"
        world.point(2)
        for args in (("refresh",), ("--always-refresh=yes", "refresh"), ("unmerge",)):
            proc = world.run(*args)
            assert proc.returncode == 0, proc.stderr
        assert world.observe() == world.unmerged()
        out, _ = holder.communicate("go\n", timeout=30)
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.communicate()
    assert out == "value 1\nalpha 1\n"  # the trees it held stayed readable after they left
    assert not world.stray_mounts() and all(n == 0 for n in world.overlays().values())
