# SPDX-License-Identifier: LGPL-2.1-or-later
"""Images pinned from discovery to the swap (sysextpy/pins.py), on real mounts.

The search directory of the sysexts is a file system of its own (a bind mount of a tmpfs kept
elsewhere), as the ESP or an `x-systemd.automount` entry would be. A forced refresh is stopped
after each of its mount syscalls in turn (tests/faults.run_paused); while it is stopped, that file
system goes away, as an automount that expires does, and when the run ended it comes back, the
same file system as before, as an automount triggered again. Whatever the moment, the run must
leave a state that its record describes: the plain refresh after it must build exactly what a
forced refresh builds (tests/snapshot.py), and the extensions must be merged in the end.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from sysextpy import mountapi
from sysextpy.images import Workspace
from sysextpy.model import Candidate, ImageClass, ImageType
from sysextpy.pins import Pins
from sysextpy.view import LiveView
from tests.conftest import RunSysextpy
from tests.faults import injection_points, run_paused, spread, sysextpy_argv, sysextpy_env
from tests.merge_support import Runner, have_tool, make_raw, sysext_tree, write
from tests.snapshot import differences, snapshot

pytestmark = pytest.mark.mounts


class Store:
    """The sysexts' search directory of a fake root, on a file system that can go and come back."""

    def __init__(self, root: Path, keep: Path, work: Path) -> None:
        self.root, self.keep = root, keep
        self.search = root / "var/lib/extensions"
        self.search.mkdir(parents=True, exist_ok=True)
        keep.mkdir()
        mountapi.mount("tmpfs", keep, "tmpfs", 0, "mode=0755")
        sysext_tree(keep / "alpha", "alpha", {"usr/share/alpha/data": "alpha\n", "opt/alpha/data": "opt\n"})
        if have_tool("squashfs"):
            src = sysext_tree(work / "gamma-src", "gamma", {"usr/share/gamma/data": "gamma\n"})
            make_raw("squashfs", src, keep / "gamma.raw")
        self.attach()

    def attach(self) -> None:
        mountapi.mount(self.keep, self.search, None, mountapi.MS_BIND)

    def detach(self) -> None:
        mountapi.umount2(self.search, mountapi.MNT_DETACH)

    def attached(self) -> bool:
        return any(i.mount_point == os.fspath(self.search) for i in mountapi.read_mountinfo())

    def close(self) -> None:
        while self.attached():
            self.detach()
        mountapi.umount2(self.keep, mountapi.MNT_DETACH)


@pytest.fixture
def store(mountns: None, fake_root: Path, tmp_path: Path) -> Iterator[Store]:
    write(fake_root / "usr/share/base", "base\n")
    s = Store(fake_root, tmp_path / "keep", tmp_path)
    yield s
    s.close()


def _status(run: Runner) -> str:
    res = run("status", "--json=short")
    assert res.returncode == 0, res.stderr
    return res.stdout


def test_every_pause_leaves_what_the_record_says(
    store: Store, fake_root: Path, tmp_path: Path, sysextpy_cmd: RunSysextpy
) -> None:
    state = tmp_path / "state.json"
    run = Runner(sysextpy_cmd, fake_root, state)
    run.ok("merge", "--class=sysext")
    expected = {"usr/share/alpha/data": "alpha\n", "opt/alpha/data": "opt\n"}
    if (store.keep / "gamma.raw").exists():
        expected["usr/share/gamma/data"] = "gamma\n"
    argv = sysextpy_argv(fake_root, state, "--class=sysext", "refresh", "--always-refresh=yes")
    env = sysextpy_env()
    points = spread(injection_points(argv, env))
    assert ("open_tree", 1) in points, "the directory is pinned with open_tree()"
    problems = []
    for syscall, nth in points:
        paused = run_paused(argv, syscall, nth, env, store.detach)
        if not store.attached():
            store.attach()
        if paused.returncode not in (0, 1) or "Traceback" in paused.stderr:
            problems.append(f"{syscall}#{nth}: exit {paused.returncode}: {paused.stderr[-400:]}")
            continue
        plain = run("refresh", "--class=sysext")
        after_plain = snapshot(fake_root, lambda: _status(run))
        forced = run("refresh", "--class=sysext", "--always-refresh=yes")
        after_forced = snapshot(fake_root, lambda: _status(run))
        diff = differences(after_plain, after_forced)
        if diff or plain.returncode != forced.returncode:
            problems.append(f"{syscall}#{nth}: the refresh after it differs from a forced one: {diff}")
        for rel, text in expected.items():
            if (fake_root / rel).read_text() != text:
                problems.append(f"{syscall}#{nth}: {rel} is not merged")
    assert not problems, "\n".join(problems)
    run.ok("unmerge")


def test_a_pinned_directory_is_merged_though_its_mount_went_away(
    store: Store, fake_root: Path, tmp_path: Path, sysextpy_cmd: RunSysextpy
) -> None:
    """Stopped once the workspace exists, the search directory's file system is gone: the merge
    is still that of the extensions discovered, and says so."""
    state = tmp_path / "state.json"
    run = Runner(sysextpy_cmd, fake_root, state)
    argv = sysextpy_argv(fake_root, state, "--class=sysext", "merge")
    paused = run_paused(argv, "unshare", 1, sysextpy_env(), store.detach)
    assert paused.returncode == 0, paused.stderr
    assert not store.attached()
    assert (fake_root / "usr/share/alpha/data").read_text() == "alpha\n"
    assert (fake_root / "opt/alpha/data").read_text() == "opt\n"
    if (store.keep / "gamma.raw").exists():
        assert (fake_root / "usr/share/gamma/data").read_text() == "gamma\n"
    # The search directory is empty now: a refresh takes the extensions away.
    run.ok("refresh", "--class=sysext")
    assert not (fake_root / "usr/share/alpha").exists()
    store.attach()
    run.ok("unmerge")


def _candidate(path: Path, kind: ImageType) -> Candidate:
    return Candidate(path.name, ImageClass.SYSEXT, kind, path, path, "/var/lib/extensions")


def test_moved_names_a_directory_that_leads_elsewhere(store: Store, tmp_path: Path) -> None:
    alpha = store.search / "alpha"
    candidates = [_candidate(alpha, ImageType.DIRECTORY)]
    with Pins() as pins:
        pins.take(candidates)
        assert len(pins) == 1
        assert pins.moved() == []
        store.detach()
        assert pins.moved() == [os.fspath(alpha)]
        store.attach()  # the same file system, mounted anew: another mount
        assert pins.moved() == [os.fspath(alpha)]
    with Pins() as pins:
        pins.take(candidates)
        other = tmp_path / "other"
        sysext_tree(other, "alpha", {"usr/share/alpha/data": "other\n"})
        mountapi.mount(other, alpha, None, mountapi.MS_BIND)  # another directory over the same path
        try:
            assert pins.moved() == [os.fspath(alpha)]
        finally:
            mountapi.umount2(alpha, mountapi.MNT_DETACH)
        assert pins.moved() == []


def test_a_disk_image_is_read_through_its_pin(store: Store, tmp_path: Path) -> None:
    """An image renamed over after it was pinned: its inputs and its origin identity still
    describe the image pinned, as read from another name of that same file."""
    gamma = store.search / "gamma.raw"
    if not gamma.exists():
        pytest.skip("needs mksquashfs")  # Store's have_tool() already failed if it is required
    old = store.search / "gamma-old.raw"
    os.link(gamma, old)
    candidate = _candidate(gamma, ImageType.RAW)
    with Pins() as pins:
        pins.take([candidate])
        new = store.search / "gamma-new.raw"
        new.write_bytes(b"\0" * 4096 + gamma.read_bytes())
        os.rename(new, gamma)
        view = LiveView(os.fspath(store.root), {}, pins=pins)
        by_pin = view.file_identity(os.fspath(gamma), True)
        assert pins.moved() == [], "a disk image is not looked up again"
    plain = LiveView(os.fspath(store.root), {})
    expected = plain.file_identity(os.fspath(old), True)
    assert by_pin == {**expected, "mount": by_pin["mount"]}
    assert by_pin["mount"] == mountapi.unique_mount_id(store.search), "the mount its path was on"
    assert plain.file_identity(os.fspath(gamma), True) != by_pin


def test_a_pin_is_refused_when_the_kind_differs(store: Store) -> None:
    with Pins() as pins:
        pins.take([_candidate(store.search / "alpha", ImageType.RAW)])
        assert len(pins) == 0


def test_the_workspace_sees_mounts_made_on_the_host_later(mountns: None, tmp_path: Path) -> None:
    """Slave propagation: an automount that triggers on the host while the workspace exists is
    visible in it; what the workspace mounts is not visible on the host."""
    # The host's mounts propagate, as systemd makes them (/ is shared); the test's are private.
    shared = tmp_path / "shared"
    shared.mkdir()
    mountapi.mount(shared, shared, None, mountapi.MS_BIND)
    mountapi.mount(None, shared, None, mountapi.MS_SHARED)
    later = shared / "later"
    later.mkdir()
    host_ns = os.open("/proc/self/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
    ws = Workspace(base=tmp_path / "ws")
    ws.enter()
    try:
        ws_ns = os.open("/proc/self/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
        try:
            mountapi.setns(host_ns, mountapi.CLONE_NEWNS)
            mountapi.mount("tmpfs", later, "tmpfs", 0, "mode=0755")
            write(later / "mark", "host\n")
            mountapi.setns(ws_ns, mountapi.CLONE_NEWNS)
        finally:
            os.close(ws_ns)
        assert (later / "mark").read_text() == "host\n"
        mine = ws.scratch_dir("probe")
        mountapi.mount("tmpfs", mine, "tmpfs", 0, "mode=0755")
    finally:
        ws.leave()
        os.close(host_ns)
    assert not any(i.mount_point.startswith(os.fspath(tmp_path / "ws")) for i in mountapi.read_mountinfo())
    mountapi.umount2(later, mountapi.MNT_DETACH)
    mountapi.umount2(shared, mountapi.MNT_DETACH)
