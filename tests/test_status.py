# SPDX-License-Identifier: LGPL-2.1-or-later
"""status.live_merge against real overlays in a fake root: only a mount point whose metadata names its
own device is a live merge."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

import pytest

from sysextpy import mountapi
from sysextpy.errors import EXIT_OK, EXIT_PARTIAL
from sysextpy.live import EXTRA_FILE, probe, read_live_extra, read_metadata
from sysextpy.model import ImageClass
from sysextpy.status import live_merge, parse_dev
from tests.conftest import RunSysextpy

SYSEXT = ImageClass.SYSEXT
CONFEXT = ImageClass.CONFEXT

# our keys beside upstream's (hierarchy, extensions, since) for a hierarchy nothing is merged into
UNMERGED = {"mutable": None, "paths": {}, "rejected": []}


@pytest.mark.parametrize(
    "text, dev",
    [
        ("259:3\n", os.makedev(259, 3)),
        ("0:45", os.makedev(0, 45)),
        (" 8:1 \n", os.makedev(8, 1)),
        ("", None),
        ("8", None),
        ("8:", None),
        (":1", None),
        ("8:1:2", None),
        ("-8:1", None),
        ("a:b", None),
        ("8.1", None),
    ],
)
def test_parse_dev(text: str, dev: Optional[int]) -> None:
    assert parse_dev(text) == dev


def dev_text(st_dev: int) -> str:
    return f"{os.major(st_dev)}:{os.minor(st_dev)}\n"


@contextmanager
def overlay(
    hierarchy: Path, meta_base: Path, image_class: ImageClass, names: list[str], dev: Optional[str] = None
) -> Iterator[Path]:
    """Mount a read-only overlay on `hierarchy`: a metadata layer on top of the original tree, like a
    merge. The dev file is written after mounting (the overlay's device is only known then); `dev`
    overrides its content."""
    meta = meta_base / image_class.metadata_dir
    meta.mkdir(parents=True)
    (meta / image_class.list_file).write_text("".join(f"{n}\n" for n in names))
    mountapi.mount(
        image_class.value, hierarchy, "overlay", mountapi.MS_RDONLY, f"lowerdir={meta_base}:{hierarchy}"
    )
    try:
        (meta / "dev").write_text(dev if dev is not None else dev_text(os.stat(hierarchy).st_dev))
        yield hierarchy
    finally:
        mountapi.umount2(hierarchy)


@pytest.mark.parametrize(
    "image_class, hierarchy, names",
    [
        (SYSEXT, "/usr", ["editor", "tools"]),
        (SYSEXT, "/opt", ["tools"]),
        (CONFEXT, "/etc", ["motd"]),
        (SYSEXT, "/usr", []),  # a mutable merge with no extensions still is a merge
    ],
)
def test_live_overlay_is_merged(
    fake_root: Path, mountns: None, tmp_path: Path, image_class: ImageClass, hierarchy: str, names: list[str]
) -> None:
    target = fake_root / hierarchy.lstrip("/")
    with overlay(target, tmp_path / "meta", image_class, names):
        path, merge = live_merge(fake_root, image_class, hierarchy)
        assert path == os.fspath(target)
        assert merge is not None
        assert merge.extensions == tuple(names)
        assert merge.hierarchy == hierarchy
        assert merge.path == os.fspath(target)
        assert merge.image_class is image_class
        assert merge.metadata_dir == os.fspath(target / image_class.metadata_dir)
        assert merge.since_usec == os.stat(target / image_class.metadata_dir).st_mtime_ns // 1000
        # The other class's metadata is not there: not its merge.
        other = CONFEXT if image_class is SYSEXT else SYSEXT
        assert live_merge(fake_root, other, hierarchy) == (os.fspath(target), None)
    assert live_merge(fake_root, image_class, hierarchy) == (os.fspath(target), None)


def test_copied_tree_is_not_merged(fake_root: Path) -> None:
    """A metadata directory naming the right device, but no mount point: a copy of a merge."""
    usr = fake_root / "usr"
    meta = usr / ".systemd-sysext"
    meta.mkdir()
    (meta / "extensions").write_text("tools\n")
    (meta / "dev").write_text(dev_text(os.stat(usr).st_dev))
    assert not mountapi.is_mount_point(usr)
    assert live_merge(fake_root, SYSEXT, "/usr") == (os.fspath(usr), None)


# --------------------------------------------------------------------------------------------------
# Metadata reached through a link is never read: in a copied tree `.systemd-sysext`, or a file in
# it, may be a link anywhere, out of the root too.

META = SYSEXT.metadata_dir


def metadata_tree(tmp_path: Path, hierarchy: Path, link: Optional[str]) -> Path:
    """A metadata directory for `hierarchy` whose files name its own device, list "outside" and
    hold a sysextpy.json. `link`: None (all inside), "dir" (the directory is an absolute link out of
    the root, to such a directory) or "files" (each file is an absolute link out of the root)."""
    outside = tmp_path / "outside" / META
    outside.mkdir(parents=True)
    files = {"dev": dev_text(os.stat(hierarchy).st_dev), "extensions": "outside\n", EXTRA_FILE: '{"x": 1}\n'}
    for name, text in files.items():
        (outside / name).write_text(text)
    meta = hierarchy / META
    if link == "dir":
        meta.symlink_to(outside)
    else:
        meta.mkdir()
        for name in files:
            if link == "files":
                (meta / name).symlink_to(outside / name)
            else:
                (meta / name).write_text((outside / name).read_text())
    # Followed, the links lead to what a live merge of this hierarchy would hold: the test can fail.
    assert parse_dev((meta / "dev").read_text()) == os.stat(hierarchy).st_dev
    return outside


def always_mounted(path: str, st: os.stat_result) -> bool:
    return True


@pytest.mark.parametrize("link", [None, "dir", "files"])
def test_metadata_through_a_link_is_never_read(tmp_path: Path, link: Optional[str]) -> None:
    root = tmp_path / "root"
    usr = root / "usr"
    usr.mkdir(parents=True)
    metadata_tree(tmp_path, usr, link)
    # The mount check says yes: only the metadata decides.
    path, st = probe(root, META, "/usr", always_mounted)
    assert path == os.fspath(usr)
    texts = [read_metadata(os.fspath(usr), META, name) for name in ("dev", "extensions")]
    if link is None:  # the control: the same files, not links, are read
        assert st is not None and st.st_dev == os.stat(usr).st_dev
        assert texts == [dev_text(os.stat(usr).st_dev), "outside\n"]
        assert read_live_extra(os.fspath(usr), META) == {"x": 1}
    else:
        assert st is None
        assert texts == [None, None]
        assert read_live_extra(os.fspath(usr), META) is None


@pytest.mark.parametrize("link", [None, "dir", "files"])
def test_live_merge_never_reads_metadata_through_a_link(
    fake_root: Path, mountns: None, tmp_path: Path, link: Optional[str]
) -> None:
    """A mount point (a tmpfs) whose metadata is reached through links out of the root that name
    its own device is not a merge."""
    usr = fake_root / "usr"
    mountapi.mount("tmpfs", usr, "tmpfs", 0, "mode=0755")
    try:
        metadata_tree(tmp_path, usr, link)
        path, merge = live_merge(fake_root, SYSEXT, "/usr")
        assert path == os.fspath(usr)
        if link is None:
            assert merge is not None and merge.extensions == ("outside",)
        else:
            assert merge is None
    finally:
        mountapi.umount2(usr)


@pytest.mark.parametrize("dev", ["0:1\n", "garbage\n", ""])
def test_dev_mismatch_is_not_merged(fake_root: Path, mountns: None, tmp_path: Path, dev: str) -> None:
    usr = fake_root / "usr"
    with overlay(usr, tmp_path / "meta", SYSEXT, ["tools"], dev=dev):
        assert mountapi.is_mount_point(usr)
        assert live_merge(fake_root, SYSEXT, "/usr") == (os.fspath(usr), None)


def test_mount_without_metadata_is_not_merged(fake_root: Path, mountns: None) -> None:
    usr = fake_root / "usr"
    mountapi.mount("tmpfs", usr, "tmpfs", 0, "mode=0755")
    try:
        assert live_merge(fake_root, SYSEXT, "/usr") == (os.fspath(usr), None)
    finally:
        mountapi.umount2(usr)


def test_missing_hierarchy(fake_root: Path) -> None:
    assert live_merge(fake_root, SYSEXT, "/nonexistent") == (None, None)


def test_hierarchy_link_is_resolved_inside_root(fake_root: Path, mountns: None, tmp_path: Path) -> None:
    (fake_root / "sysroot-opt").mkdir()
    (fake_root / "opt").rmdir()
    (fake_root / "opt").symlink_to("/sysroot-opt")
    with overlay(fake_root / "sysroot-opt", tmp_path / "meta", SYSEXT, ["a"]):
        path, merge = live_merge(fake_root, SYSEXT, "/opt")
        assert path == os.fspath(fake_root / "sysroot-opt")
        assert merge is not None and merge.extensions == ("a",)


def test_status_verb_reports_the_merge(
    fake_root: Path, mountns: None, tmp_path: Path, sysextpy_cmd: RunSysextpy
) -> None:
    with overlay(fake_root / "usr", tmp_path / "meta", SYSEXT, ["editor", "tools"]):
        since = os.stat(fake_root / "usr/.systemd-sysext").st_mtime_ns // 1000
        result = sysextpy_cmd(f"--root={fake_root}", "status", "--json=short")
        assert result.returncode == EXIT_OK, result.stderr
        assert json.loads(result.stdout) == [
            {"hierarchy": "/etc", "extensions": [], "since": None, "class": "confext", **UNMERGED},
            {"hierarchy": "/opt", "extensions": [], "since": None, "class": "sysext", **UNMERGED},
            {
                "hierarchy": "/usr",
                "extensions": ["editor", "tools"],
                "since": since,
                "class": "sysext",
                "mutable": None,
                "paths": {},
                "rejected": [],
            },
        ]
        text = sysextpy_cmd(f"--root={fake_root}", "status", "--class=sysext")
        assert text.returncode == EXIT_OK
        lines = text.stdout.splitlines()
        assert lines[0].split() == ["HIERARCHY", "EXTENSIONS", "SINCE", "CLASS", "MUTABLE"]
        assert lines[1].split() == ["/opt", "none", "sysext"]
        assert lines[2].startswith("/usr")
        assert "editor, tools" in lines[2]
        assert lines[2].split()[-1] == "sysext"


def test_status_names_paths_mode_and_rejected_images(
    mountns: None, tmp_path: Path, sysextpy_cmd: RunSysextpy
) -> None:
    from tests.conftest import check_no_leftovers
    from tests.sample_root import build_sample_root

    root = build_sample_root(tmp_path / "root")
    state = f"--state={tmp_path / 'state.json'}"
    try:
        merged = sysextpy_cmd(f"--root={root}", state, "merge")
        assert merged.returncode == EXIT_PARTIAL, merged.stderr  # the sample carries two broken images
        result = sysextpy_cmd(f"--root={root}", state, "status", "--json=short")
        rows = {r["hierarchy"]: r for r in json.loads(result.stdout)}
        usr = rows["/usr"]
        assert usr["mutable"] == "no"
        assert usr["paths"]["linked"] == "/srv/store/linked"  # the absolute link, resolved inside the root
        assert usr["paths"]["editor"] == "/var/lib/extensions/editor.v/editor_1.2"
        assert {r["name"] for r in usr["rejected"]} == {"empty", "osimage"}
        assert rows["/etc"]["rejected"] == []
        text = sysextpy_cmd(f"--root={root}", state, "status").stdout
        assert "rejected sysext image 'osimage': contains usr/lib/os-release" in text
    finally:
        sysextpy_cmd(f"--root={root}", state, "unmerge")
    check_no_leftovers(tmp_path)
