# SPDX-License-Identifier: LGPL-2.1-or-later
"""refresh: the skip, what counts as a change, the handoff record, the gap, crashes, reloads.

All real mounts, inside the test session's private mount namespace, against fake roots.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Callable

import pytest

from sysextpy import mountapi
from tests.faults import report, run_injected, syscall_counts
from tests.merge_support import HOST_RELEASE, add_confext, add_sysext, sysext_tree, write

RunSysextpy = Callable[..., "subprocess.CompletedProcess[str]"]
REPO = Path(__file__).resolve().parent.parent
CHROOT = shutil.which("chroot") or "/usr/sbin/chroot"


@pytest.fixture
def world(mountns: None, fake_root: Path, tmp_path: Path, sysextpy_cmd: RunSysextpy) -> Iterator[World]:
    w = World(fake_root, tmp_path / "state.json", sysextpy_cmd)
    add_sysext(fake_root, "alpha", {"usr/bin/alpha": "alpha 1\n", "opt/alpha/data": "a\n"})
    add_sysext(fake_root, "beta", {"usr/share/beta/data": "beta 1\n"})
    add_confext(fake_root, "conf", {"etc/conf.d/setting": "value 1\n"})
    write(fake_root / "etc/base.conf", "base\n")
    write(fake_root / "usr/bin/base-tool", "base\n")
    yield w
    w.run("unmerge")


class World:
    """A fake root with two sysexts and a confext, and helpers to run verbs against it."""

    def __init__(self, root: Path, state: Path, cmd: RunSysextpy) -> None:
        self.root = root
        self.state = state
        self.cmd = cmd

    def run(self, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return self.cmd(f"--root={self.root}", f"--state={self.state}", *args, env=env)

    def refresh(self, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        proc = self.run(*args, "refresh", env=env)
        assert proc.returncode == 0, proc.stderr
        assert "Traceback" not in proc.stderr
        return proc

    def mountinfo(self) -> str:
        with open("/proc/self/mountinfo", encoding="utf-8") as f:
            return f.read()


SKIPPED = "Skipping extension refresh because no change was found"


def test_unchanged_refresh_skips_and_touches_no_mount(world: World) -> None:
    world.refresh()
    before = world.mountinfo()
    proc = world.refresh()
    assert SKIPPED in proc.stderr
    assert world.mountinfo() == before
    record = json.loads(world.state.read_text())
    assert record["phase"] == "merged" and record["reload"] == {"done": False, "reason": "nothing changed"}
    assert {h["result"] for c in record["classes"].values() for h in c["hierarchies"].values()} <= {
        "unchanged",
        "untouched",
    }


def test_merge_then_refresh_skips(world: World) -> None:
    assert world.run("merge").returncode == 0
    before = world.mountinfo()
    assert SKIPPED in world.refresh().stderr
    assert world.mountinfo() == before


def _add(w: World) -> str:
    add_sysext(w.root, "gamma", {"usr/bin/gamma": "gamma\n"})
    return "usr/bin/gamma"


def _remove(w: World) -> str:
    shutil.rmtree(w.root / "var/lib/extensions/beta")
    return "!usr/share/beta/data"


def _replace(w: World) -> str:
    src = w.root / "var/lib/extensions/alpha"
    copy = w.root / "var/lib/alpha.new"
    shutil.copytree(src, copy, symlinks=True)  # same names, sizes and mtimes: only the inode is new
    shutil.rmtree(src)
    os.rename(copy, src)
    return "usr/bin/alpha"


def _move(w: World) -> str:
    os.makedirs(w.root / "run/extensions", exist_ok=True)
    os.rename(w.root / "var/lib/extensions/beta", w.root / "run/extensions/beta")
    return "usr/share/beta/data"


def _retarget(w: World) -> str:
    sysext_tree(w.root / "srv/a", "linked", {"usr/share/linked": "from a\n"})
    sysext_tree(w.root / "srv/b", "linked", {"usr/share/linked": "from b\n"})
    link = w.root / "var/lib/extensions/linked"
    link.symlink_to("/srv/a")
    w.refresh()
    link.unlink()
    link.symlink_to("/srv/b")
    return "usr/share/linked=from b\n"


def _new_version(w: World) -> str:
    vdir = w.root / "var/lib/extensions/editor.v"
    sysext_tree(vdir / "editor_1.0", "editor", {"usr/bin/editor": "editor 1.0\n"})
    w.refresh()
    sysext_tree(vdir / "editor_1.1", "editor", {"usr/bin/editor": "editor 1.1\n"})
    return "usr/bin/editor=editor 1.1\n"


def _edit_same_size(w: World) -> str:
    target = w.root / "var/lib/extensions/alpha/usr/bin/alpha"
    st = target.stat()
    target.write_text("alpha 2\n")  # same length as before
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    return "usr/bin/alpha=alpha 2\n"


def _edit_confext(w: World) -> str:
    (w.root / "var/lib/confexts/conf/etc/conf.d/setting").write_text("value 22\n")
    return "etc/conf.d/setting=value 22\n"


CHANGES: dict[str, Callable[[World], str]] = {
    "added": _add,
    "removed": _remove,
    "replaced": _replace,
    "moved-to-another-search-dir": _move,
    "retargeted-symlink": _retarget,
    "new-vpick-version": _new_version,
    "edited-file-same-size": _edit_same_size,
    "edited-confext-file": _edit_confext,
}


def _check_expectation(root: Path, expect: str) -> None:
    if expect.startswith("!"):
        assert not (root / expect[1:]).exists(), expect
    elif "=" in expect:
        rel, text = expect.split("=", 1)
        assert (root / rel).read_text() == text
    else:
        assert (root / expect).exists(), expect


@pytest.mark.parametrize("change", sorted(CHANGES))
def test_each_change_refreshes(world: World, change: str) -> None:
    world.refresh()
    expect = CHANGES[change](world)
    proc = world.refresh()
    assert SKIPPED not in proc.stderr
    assert "refreshing: inputs changed" in proc.stderr
    _check_expectation(world.root, expect)
    assert SKIPPED in world.refresh().stderr  # and the new state is confirmed next time


@pytest.mark.parametrize(
    "args, env, expect",
    [
        (("--mutable=ephemeral",), {}, "mutable changed"),
        ((), {"SYSTEMD_SYSEXT_OVERLAYFS_MOUNT_OPTIONS": "xino=off"}, "overlayOptions changed"),
        (("--noexec=yes",), {}, "noexec changed"),
    ],
)
def test_setting_changes_refresh(
    world: World, args: tuple[str, ...], env: dict[str, str], expect: str
) -> None:
    world.refresh()
    proc = world.refresh(*args, env=env)
    assert expect in proc.stderr
    assert SKIPPED not in proc.stderr


def _corrupt(w: World) -> None:
    w.state.write_text("{not json")


def _missing(w: World) -> None:
    w.state.unlink()


def _other_boot(w: World) -> None:
    record = json.loads(w.state.read_text())
    record["bootId"] = "0" * 32
    w.state.write_text(json.dumps(record))


def _still_merging(w: World) -> None:
    record = json.loads(w.state.read_text())
    record["phase"] = "merging"
    w.state.write_text(json.dumps(record))


def _wrong_type(w: World) -> None:
    w.state.write_text("[1, 2, 3]")


def _fifo(w: World) -> None:
    w.state.unlink()
    os.mkfifo(w.state)


@pytest.mark.parametrize(
    "damage, reason",
    [
        (_corrupt, "corrupt record"),
        (_missing, "no handoff record"),
        (_other_boot, "another boot"),
        (_still_merging, "phase 'merging'"),
        (_wrong_type, "corrupt record"),
        (_fifo, "not a regular file"),
    ],
)
def test_untrusted_record_means_full_refresh(
    world: World, damage: Callable[[World], None], reason: str
) -> None:
    world.refresh()
    damage(world)
    if world.state.is_fifo():
        world.state.unlink()  # the run replaces it; keep the fixture's unmerge from blocking
        os.mkfifo(world.state)
    proc = world.refresh()
    assert reason in proc.stderr
    assert SKIPPED not in proc.stderr
    assert (world.root / "usr/bin/alpha").exists()
    assert json.loads(world.state.read_text())["phase"] == "merged"
    assert SKIPPED in world.refresh().stderr


def test_live_merge_must_match_the_record(world: World) -> None:
    world.refresh()
    mountapi.umount2(world.root / "opt", mountapi.MNT_DETACH)  # someone unmounted one hierarchy
    proc = world.refresh()
    assert "/opt is no longer merged" in proc.stderr
    assert (world.root / "opt/alpha/data").exists()


def test_force_refresh_environment(world: World) -> None:
    world.refresh()
    proc = world.refresh(env={"SYSEXTPY_FORCE_REFRESH": "1"})
    assert "SYSEXTPY_FORCE_REFRESH" in proc.stderr
    assert SKIPPED not in proc.stderr


GAP_READER = str(Path(__file__).with_name("gap_reader.py"))


@pytest.mark.skipif(not mountapi.have_move_mount_beneath(), reason="kernel lacks MOVE_MOUNT_BENEATH (< 6.5)")
def test_forced_refresh_leaves_no_gap(world: World, tmp_path: Path) -> None:
    world.refresh()
    stop = tmp_path / "stop"
    files = [world.root / "etc/conf.d/setting", world.root / "etc/base.conf", world.root / "usr/bin/alpha"]
    reader = subprocess.Popen(
        [sys.executable, GAP_READER, *map(str, files), str(stop)], stdout=subprocess.PIPE, text=True
    )
    try:
        time.sleep(0.1)
        for i in range(5):
            (world.root / "var/lib/confexts/conf/etc/conf.d/setting").write_text(f"value {i}\n")
            proc = world.refresh("--always-refresh=yes")
            assert "in one step" in proc.stderr
    finally:
        stop.touch()
        out, _ = reader.communicate(timeout=30)
    reads, misses = map(int, out.split())
    print(f"reader: {reads} opens during 5 forced refreshes, {misses} failures")
    assert reads > 1000
    assert misses == 0


# --- crashes -----------------------------------------------------------------------------------

CRASH_SYSCALLS = ("unshare", "setns", "mount", "umount2", "move_mount", "fsmount", "open_tree", "rename")


def _hierarchy_state(root: Path) -> tuple[str, str]:
    """('old'|'new'|'broken', detail) from what a reader sees."""
    try:
        alpha = (root / "usr/bin/alpha").read_text()
        setting = (root / "etc/conf.d/setting").read_text()
        base = (root / "usr/bin/base-tool").read_text() + (root / "etc/base.conf").read_text()
    except OSError as e:
        return "broken", str(e)
    if base != "base\nbase\n":
        return "broken", "host files missing"
    states = {("alpha 1\n", "value 1\n"): "old", ("alpha 2\n", "value 2\n"): "new"}
    usr = "old" if alpha == "alpha 1\n" else "new" if alpha == "alpha 2\n" else "broken"
    etc = "old" if setting == "value 1\n" else "new" if setting == "value 2\n" else "broken"
    if "broken" in (usr, etc):
        return "broken", f"usr={alpha!r} etc={setting!r}"
    return states.get((alpha, setting), "mixed"), f"usr={usr} etc={etc}"


def _point_at(w: World, version: int) -> None:
    """Retarget the `alpha` sysext and the `conf` confext links to version 1 or 2 of their trees:
    only a new merge shows the other version (edits inside a merged tree would show at once)."""
    for link, target in (
        (w.root / "var/lib/extensions/alpha", f"/srv/alpha{version}"),
        (w.root / "var/lib/confexts/conf", f"/srv/conf{version}"),
    ):
        if link.is_symlink():
            link.unlink()
        elif link.exists():
            shutil.rmtree(link)
        link.symlink_to(target)


@pytest.mark.tools("strace")  # injects SIGKILL at syscalls
def test_sigkill_at_every_step_loses_nothing(world: World) -> None:
    for v in (1, 2):
        sysext_tree(world.root / f"srv/alpha{v}", "alpha", {"usr/bin/alpha": f"alpha {v}\n"})
        write(world.root / f"srv/conf{v}/etc/extension-release.d/extension-release.conf", HOST_RELEASE)
        write(world.root / f"srv/conf{v}/etc/conf.d/setting", f"value {v}\n")
    _point_at(world, 1)
    world.refresh()
    assert _hierarchy_state(world.root)[0] == "old"
    env = {k: v for k, v in os.environ.items() if k != "SYSTEMD_LOG_LEVEL"}
    base_cmd = [sys.executable, "-m", "sysextpy", f"--root={world.root}", f"--state={world.state}"]
    _point_at(world, 2)
    counts = syscall_counts([*base_cmd, "refresh"], CRASH_SYSCALLS, env)
    assert _hierarchy_state(world.root)[0] == "new"
    points = [(name, n) for name, c in counts.items() for n in range(1, c + 1)]
    assert len(points) >= 10, counts
    outcomes: dict[str, int] = {}
    for name, n in points:
        _point_at(world, 1)
        world.refresh()
        _point_at(world, 2)
        killed = run_injected([*base_cmd, "refresh"], name, n, "signal=KILL", env)
        assert killed.returncode != 0, f"not killed at {name}#{n}"
        state, detail = _hierarchy_state(world.root)
        assert state in ("old", "new", "mixed"), f"killed at {name}#{n}: {detail}\n{killed.stderr[-2000:]}"
        # the next run repairs: it never skips after a crash and ends in the new state
        repaired = world.refresh()
        assert SKIPPED not in repaired.stderr, f"killed at {name}#{n}: skipped after a crash"
        after, detail = _hierarchy_state(world.root)
        assert after == "new", f"after a crash at {name}#{n} and a refresh: {detail}"
        outcomes[state] = outcomes.get(state, 0) + 1
    print(f"crash points: {len(points)} ({counts}); state right after the crash: {outcomes}")
    report(
        "faults",
        "refresh: SIGKILL (tests/test_refresh.py)",
        reached=len(points),
        points=len(points),
        runs=len(points),
        by_syscall={k: v for k, v in counts.items() if v},
        outcomes={f"killed->{k}": v for k, v in outcomes.items()},
        lost_hierarchies=0,
    )


# --- the one reload ----------------------------------------------------------------------------

FAKE_SYSTEMCTL = """#!/bin/sh
echo "$@" >> /run/systemctl.log
"""


@pytest.fixture
def chroot_world(mountns: None, tmp_path: Path) -> Iterator[Path]:
    """A root to chroot into, so that sysextpy runs without --root: the host's /usr (read-only
    bind, in this private namespace only; the overlays land on the bind mount), a /etc of its own,
    the source tree at /src and a fake systemctl first on PATH."""
    root = tmp_path / "chroot"
    for d in ("usr", "etc", "proc", "dev", "run", "src", "fakebin", "var/lib/extensions", "tmp", "opt"):
        (root / d).mkdir(parents=True, exist_ok=True)
    for link, target in (
        ("bin", "usr/bin"),
        ("lib", "usr/lib"),
        ("lib64", "usr/lib64"),
        ("sbin", "usr/sbin"),
    ):
        (root / link).symlink_to(target)
    write(root / "etc/os-release", HOST_RELEASE)
    write(root / "fakebin/systemctl", FAKE_SYSTEMCTL, 0o755)
    m = mountapi
    m.mount("/usr", root / "usr", None, m.MS_BIND | m.MS_REC)
    m.mount(None, root / "usr", None, m.MS_BIND | m.MS_REMOUNT | m.MS_RDONLY)
    m.mount("/dev", root / "dev", None, m.MS_BIND | m.MS_REC)
    m.mount("proc", root / "proc", "proc", 0)
    m.mount("tmpfs", root / "run", "tmpfs", 0, "mode=0755")
    m.mount(os.fspath(REPO), root / "src", None, m.MS_BIND)
    try:
        yield root
    finally:
        subprocess.run(
            [CHROOT, os.fspath(root), "/usr/bin/python3", "-m", "sysextpy", "unmerge"],
            cwd=root / "src",
            env={"PATH": "/fakebin:/usr/bin", "PYTHONPATH": "/src"},
            capture_output=True,
            check=False,
        )
        for sub in ("src", "run", "proc", "dev", "usr"):
            m.umount2(root / sub, m.MNT_DETACH)


def _chroot_run(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [CHROOT, os.fspath(root), "/usr/bin/python3", "-m", "sysextpy", *args],
        env={"PATH": "/fakebin:/usr/bin", "PYTHONPATH": "/src"},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        check=False,
    )
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def _reloads(root: Path) -> int:
    log = root / "run/systemctl.log"
    return log.read_text().count("daemon-reload") if log.exists() else 0


def test_one_reload_for_both_classes(chroot_world: Path) -> None:
    root = chroot_world
    flagged = HOST_RELEASE + "EXTENSION_RELOAD_MANAGER=1\n"
    sysext_tree(
        root / "var/lib/extensions/svc", "svc", {"usr/lib/systemd/system/svc-demo.service": "x\n"}, flagged
    )
    write(root / "run/confexts/cfg/etc/extension-release.d/extension-release.cfg", flagged)
    write(root / "run/confexts/cfg/etc/cfg.conf", "x\n")
    proc = _chroot_run(root, "refresh")
    assert proc.returncode == 0, proc.stderr
    assert (root / "etc/cfg.conf").exists() and (root / "usr/lib/systemd/system/svc-demo.service").exists()
    # the overlays landed inside the chroot, never on this namespace's own /usr or /etc
    assert not [i for i in mountapi.read_mountinfo() if i.mount_point in ("/usr", "/etc")]
    assert _reloads(root) == 1, proc.stderr
    assert "Reloading the service manager" in proc.stderr

    proc = _chroot_run(root, "refresh")  # unchanged: no reload
    assert SKIPPED in proc.stderr
    assert _reloads(root) == 1

    write(root / "var/lib/extensions/svc/usr/lib/systemd/system/svc-demo.service", "changed\n")
    proc = _chroot_run(root, "--no-reload", "refresh")
    assert "--no-reload given" in proc.stderr
    assert _reloads(root) == 1

    shutil.rmtree(root / "var/lib/extensions/svc")  # the flagged extension goes away: reload once
    proc = _chroot_run(root, "refresh")
    assert _reloads(root) == 2, proc.stderr


def test_no_reload_without_the_flag(chroot_world: Path) -> None:
    root = chroot_world
    sysext_tree(root / "var/lib/extensions/plain", "plain", {"usr/share/plain-ext": "x\n"})
    proc = _chroot_run(root, "refresh")
    assert proc.returncode == 0, proc.stderr
    assert _reloads(root) == 0
    assert "no changed extension sets EXTENSION_RELOAD_MANAGER=1" in proc.stderr
