# SPDX-License-Identifier: LGPL-2.1-or-later
"""The view of the root (view.py): what a recording view answers, and what taking its observations
again notices.

A recording view must answer the code with exactly what it writes down (so that nothing a decision
read escapes the record), and `replay` must see every change of something observed. Whether the
observations are *enough* — whether a skip leaves what a forced refresh builds — is not judged
here but against the forced refresh itself, in test_skip_soundness.py.
"""

from __future__ import annotations

import errno
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from sysextpy.errors import ResolveError
from sysextpy.merge import assess
from sysextpy.model import ALL_CLASSES, Options
from sysextpy.recording import RecordingView
from sysextpy.view import FileTooLarge, LiveView, NotRegularFile, Stat, replay
from tests.merge_support import add_confext, add_sysext, write

HOST_RELEASE = "ID=debian\nVERSION_ID=12\n"


def _root(base: Path) -> Path:
    root = base / "root"
    write(root / "etc/os-release", HOST_RELEASE)
    add_sysext(root, "alpha", {"usr/share/alpha/file": "alpha\n"})
    add_confext(root, "conf", {"etc/conf.d/setting": "value\n"})
    write(root / "etc/systemd/sysext.conf", "[SysExt]\nMutable=no\n")
    (root / "etc/extensions").mkdir(parents=True)
    (root / "etc/extensions/beta").symlink_to("/var/lib/extensions/alpha")
    return root


def _assess(root: Path, env: dict[str, str] | None = None) -> RecordingView:
    view = RecordingView(os.fspath(root), env or {})
    assess(Options(root=root, root_given=True, classes=ALL_CLASSES), view)
    return view


# --------------------------------------------------------------------------------------------------
# What a recording view answers


def test_a_stat_has_only_the_recorded_fields(tmp_path: Path) -> None:
    root = _root(tmp_path)
    view = RecordingView(os.fspath(root), {})
    st = view.stat(os.fspath(root / "etc/os-release"))
    assert isinstance(st, Stat) and st.is_reg and st.size == len(HOST_RELEASE)
    for unrecorded in ("st_ino", "st_dev", "st_uid", "ino", "dev", "uid", "atime_ns"):
        with pytest.raises(AttributeError):
            getattr(st, unrecorded)
    assert view.observations[-1][:2] == ["st", "/etc/os-release"]


def test_the_first_answer_stays_the_answer(tmp_path: Path) -> None:
    root = _root(tmp_path)
    view = RecordingView(os.fspath(root), {"A": "1"})
    path = os.fspath(root / "etc/os-release")
    first = view.read(path, 4096)
    write(root / "etc/os-release", "ID=fedora\n")
    assert view.read(path, 4096) == first == HOST_RELEASE.encode()
    assert view.env("A") == "1"
    assert len([o for o in view.observations if o[0] == "rd"]) == 1


def test_errors_are_recorded_and_raised_alike(tmp_path: Path) -> None:
    root = _root(tmp_path)
    (root / "fifo").parent.mkdir(exist_ok=True)
    os.mkfifo(root / "fifo")
    write(root / "big", "x" * 100)
    live, rec = LiveView(os.fspath(root), {}), RecordingView(os.fspath(root), {})
    cases: list[tuple[Callable[[LiveView], Any], type[BaseException]]] = [
        (lambda v: v.stat(os.fspath(root / "missing")), FileNotFoundError),
        (lambda v: v.listdir(os.fspath(root / "etc/os-release")), NotADirectoryError),
        (lambda v: v.read(os.fspath(root / "fifo"), 10), NotRegularFile),
        (lambda v: v.read(os.fspath(root / "big"), 10), FileTooLarge),
        (lambda v: v.readlink(os.fspath(root / "etc/os-release")), OSError),
        (lambda v: v.resolve("/nope/x"), ResolveError),
    ]
    for call, kind in cases:
        for view in (live, rec):
            with pytest.raises(kind):
                call(view)
    with pytest.raises(ResolveError) as e:
        rec.resolve("/nope/x")
    assert e.value.errno == errno.ENOENT


def test_a_tree_is_observed_as_a_whole(tmp_path: Path) -> None:
    root = _root(tmp_path)
    view = RecordingView(os.fspath(root), {})
    tree = view.image_view(os.fspath(root / "var/lib/extensions/alpha"))
    assert tree.exists("/usr/lib/extension-release.d/extension-release.alpha")
    assert [o[0] for o in view.observations] == ["tree"]


# --------------------------------------------------------------------------------------------------
# What taking the observations again notices


def _touch_keeping_times(path: Path, text: str) -> None:
    st = path.stat()
    path.write_text(text)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


CHANGES: dict[str, Callable[[Path], None]] = {
    "os-release edited": lambda r: write(r / "etc/os-release", "ID=debian\nVERSION_ID=13\n"),
    "release edited, size and mtime kept": lambda r: _touch_keeping_times(
        r / "var/lib/extensions/alpha/usr/lib/extension-release.d/extension-release.alpha",
        "ID=fedora\nVERSION_ID=1\n",
    ),
    "file in a tree edited, size and mtime kept": lambda r: _touch_keeping_times(
        r / "var/lib/extensions/alpha/usr/share/alpha/file", "ALPHA\n"
    ),
    "file renamed in a tree": lambda r: os.rename(
        r / "var/lib/extensions/alpha/usr/share/alpha/file",
        r / "var/lib/extensions/alpha/usr/share/alpha/other",
    ),
    "extension added": lambda r: add_sysext(r, "gamma", {"usr/share/gamma/x": "g\n"}),
    "extension removed": lambda r: shutil.rmtree(r / "var/lib/confexts/conf"),
    "link retargeted": lambda r: (
        os.unlink(r / "etc/extensions/beta"),
        (r / "etc/extensions/beta").symlink_to("/var/lib/confexts/conf"),
    ),
    "config edited": lambda r: write(r / "etc/systemd/sysext.conf", "[SysExt]\nMutable=yes\n"),
    "config masked": lambda r: (
        os.unlink(r / "etc/systemd/sysext.conf"),
        (r / "etc/systemd/sysext.conf").symlink_to("/dev/null"),
    ),
    "drop-in added": lambda r: write(
        r / "usr/lib/systemd/confext.conf.d/10-x.conf", "[ConfExt]\nMutable=auto\n"
    ),
    "initrd-release appeared": lambda r: write(r / "etc/initrd-release", HOST_RELEASE),
    "mutable directory appeared": lambda r: (r / "var/lib/extensions.mutable/usr").mkdir(parents=True),
}


@pytest.mark.parametrize("change", sorted(CHANGES))
def test_every_change_of_something_observed_is_seen(tmp_path: Path, change: str) -> None:
    root = _root(tmp_path)
    view = _assess(root)
    assert replay(os.fspath(root), view.observations, {}) == ""
    CHANGES[change](root)
    assert replay(os.fspath(root), view.observations, {}) != ""


@pytest.mark.parametrize(
    "name, value",
    [
        ("SYSTEMD_SYSEXT_HIERARCHIES", "/usr"),
        ("SYSTEMD_CONFEXT_MUTABLE_MODE", "yes"),
        ("SYSTEMD_SYSEXT_OVERLAYFS_MOUNT_OPTIONS", ""),
        ("SYSTEMD_OS_RELEASE", "/usr/lib/os-release"),
    ],
)
def test_every_environment_variable_looked_at_is_observed(tmp_path: Path, name: str, value: str) -> None:
    root = _root(tmp_path)
    view = _assess(root)
    assert ["env", name, None] in view.observations
    assert replay(os.fspath(root), view.observations, {name: value}) == f"env {name!r} changed"


def test_unrelated_changes_do_not_count(tmp_path: Path) -> None:
    root = _root(tmp_path)
    view = _assess(root)
    write(root / "home/user/notes", "hello\n")
    write(root / "etc/hostname", "other\n")
    assert replay(os.fspath(root), view.observations, {"HOME": "/root"}) == ""


def test_a_moved_root_checks_the_same(tmp_path: Path) -> None:
    root = _root(tmp_path)
    view = _assess(root)
    moved = tmp_path / "sysroot"
    os.rename(root, moved)
    assert replay(os.fspath(moved), view.observations, {}) == ""


def test_the_initrds_empty_run_and_the_real_run_agree(tmp_path: Path) -> None:
    """In the initrd /sysroot/run is an empty directory; after switch-root /run holds /run/systemd
    (and more): as long as neither has a configuration file or an image there, nothing differs."""
    root = _root(tmp_path)
    (root / "run").mkdir()
    view = _assess(root)
    (root / "run/systemd/system").mkdir(parents=True)
    (root / "run/systemd/generator").mkdir()
    assert replay(os.fspath(root), view.observations, {}) == ""
    write(root / "run/systemd/sysext.conf.d/50-x.conf", "[SysExt]\nMutable=yes\n")
    assert replay(os.fspath(root), view.observations, {}) != ""


def test_every_file_opened_while_assessing_is_observed(tmp_path: Path) -> None:
    root = _root(tmp_path)
    opened: list[str] = []
    prefix = os.fspath(root) + "/"

    def hook(event: str, args: tuple[Any, ...]) -> None:
        if event == "open" and isinstance(args[0], str) and args[0].startswith(prefix):
            opened.append(args[0])

    sys.addaudithook(hook)  # there is no removing it: it only collects below this test's root
    view = _assess(root)
    covered_files = {view.absolute(o[1]) for o in view.observations if o[0] in ("rd", "id")}
    covered_trees = [view.absolute(o[1]) + "/" for o in view.observations if o[0] == "tree"]
    assert opened
    for path in opened:
        assert path in covered_files or any(path.startswith(t) for t in covered_trees), path


@pytest.mark.parametrize(
    "observations",
    [None, {}, [1], [["st"]], [["nope", "/x", 1]], [["st", 5, [1]]], [["res", "/", 1, 2, 3]], [[]], "x"],
)
def test_malformed_observations_are_differences(observations: Any) -> None:
    assert replay("/", observations, {}) != ""
