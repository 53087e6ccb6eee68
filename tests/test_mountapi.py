# SPDX-License-Identifier: LGPL-2.1-or-later
from __future__ import annotations

import errno
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from sysextpy import mountapi
from sysextpy.errors import MountError, ParseError
from sysextpy.mountapi import (
    AT_FDCWD,
    MNT_DETACH,
    MOVE_MOUNT_BENEATH,
    MOVE_MOUNT_F_EMPTY_PATH,
    MountInfo,
    classic_overlay_options,
    make_overlay_fd,
    parse_mountinfo,
)

# --- pure: mountinfo ------------------------------------------------------------------------

MOUNTINFO = (
    "22 1 253:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw\n"
    "36 22 98:0 /mnt1 /mnt\\040with\\040space rw,noatime master:1 propagate_from:2 - ext3 /dev/root rw\n"
    "40 22 0:39 / /usr ro,relatime - overlay sysext ro,lowerdir=/a\\134b:/c,redirect_dir=on\n"
    "41 40 0:40 / /usr/tab\\011line\\012 rw - tmpfs my\\040tmpfs rw,size=4k\n"
)


def test_parse_mountinfo_fields() -> None:
    infos = parse_mountinfo(MOUNTINFO)
    assert infos[0] == MountInfo(
        mount_id=22,
        parent_id=1,
        major=253,
        minor=1,
        root="/",
        mount_point="/",
        options="rw,relatime",
        fstype="ext4",
        source="/dev/vda1",
        super_options="rw",
        optional_fields=("shared:1",),
    )
    assert infos[1].root == "/mnt1"
    assert infos[1].mount_point == "/mnt with space"
    assert infos[1].optional_fields == ("master:1", "propagate_from:2")
    assert (infos[2].fstype, infos[2].source, infos[2].optional_fields) == ("overlay", "sysext", ())
    assert infos[2].super_options == "ro,lowerdir=/a\\b:/c,redirect_dir=on"
    assert infos[3].mount_point == "/usr/tab\tline\n"
    assert infos[3].source == "my tmpfs"
    assert (infos[3].major, infos[3].minor) == (0, 40)


@pytest.mark.parametrize(
    "line",
    [
        "22 1 253:1 / / rw shared:1 ext4 /dev/vda1 rw",  # no separator
        "x 1 253:1 / / rw - ext4 /dev/vda1 rw",
        "22 1 2531 / / rw - ext4 /dev/vda1 rw",
        "22 1 253:1 / / rw - ext4",
    ],
)
def test_parse_mountinfo_rejects_malformed(line: str) -> None:
    with pytest.raises(ParseError, match="line 1"):
        parse_mountinfo(line + "\n")


def test_parse_mountinfo_skips_blank_lines() -> None:
    assert len(parse_mountinfo("\n" + MOUNTINFO + "\n\n")) == 4


def test_read_mountinfo_has_root() -> None:
    assert any(info.mount_point == "/" for info in mountapi.read_mountinfo())


def test_submounts_below() -> None:
    infos = parse_mountinfo(
        "1 0 0:1 / / rw - x x rw\n"
        "2 1 0:2 / /usr rw - x x rw\n"
        "3 2 0:3 / /usr/share rw - x x rw\n"
        "4 1 0:4 / /usrx rw - x x rw\n"
        "5 3 0:5 / /usr/share/a\\040b rw - x x rw\n"
    )
    assert [i.mount_id for i in mountapi.submounts_below("/usr", infos)] == [3, 5]
    assert [i.mount_id for i in mountapi.submounts_below("/usr/", infos)] == [3, 5]
    assert [i.mount_id for i in mountapi.submounts_below("/", infos)] == [2, 3, 4, 5]
    assert mountapi.submounts_below("/opt", infos) == []


# --- pure: options --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("lowers", "kwargs", "expected"),
    [
        (["/a", "/b"], {}, "lowerdir=/a:/b"),
        (["/a,b", "/c:d", "/e\\f"], {}, "lowerdir=/a\\,b:/c\\:d:/e\\\\f"),
        (
            ["/m", "/x"],
            {
                "upperdir": "/u,1",
                "workdir": "/w:1",
                "options": [("redirect_dir", "on"), ("userxattr", None)],
            },
            "lowerdir=/m:/x,upperdir=/u\\,1,workdir=/w\\:1,redirect_dir=on,userxattr",
        ),
        (["/only"], {"upperdir": "/u", "workdir": "/w"}, "lowerdir=/only,upperdir=/u,workdir=/w"),
    ],
)
def test_classic_overlay_options(lowers: list[str], kwargs: dict[str, object], expected: str) -> None:
    assert classic_overlay_options(lowers, **kwargs) == expected  # type: ignore[arg-type]


def test_classic_overlay_options_page_limit() -> None:
    # "lowerdir=" + 2043 + ":" + 2042 = 4095 bytes: fits; one byte more does not.
    fits = ["/" + "a" * 2042, "/" + "b" * 2041]
    assert len(classic_overlay_options(fits)) == 4095
    with pytest.raises(MountError, match="4096 bytes, more than the 4095"):
        classic_overlay_options(["/" + "a" * 2042, "/" + "b" * 2042])
    # Escapes count: 500 layers of 7 characters fit unescaped, not with their commas escaped.
    layers = [f"/ex,{i:03}" for i in range(500)]
    assert len(":".join(layers)) < 4095
    with pytest.raises(MountError, match="500 layers"):
        classic_overlay_options(layers)


@pytest.mark.parametrize("lowers", [[], ["/only"]])
def test_read_only_overlay_needs_two_lowers(lowers: list[str]) -> None:
    with pytest.raises(MountError, match="lower directories|lower directory"):
        classic_overlay_options(lowers)
    with pytest.raises(MountError):
        make_overlay_fd(lowers)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", []),
        ("noatime", [("noatime", None)]),
        (
            "redirect_dir=on,noatime,metacopy=off",
            [("redirect_dir", "on"), ("noatime", None), ("metacopy", "off")],
        ),
        ("lowerdir=/a\\,b:/c,x", [("lowerdir", "/a\\,b:/c"), ("x", None)]),
        ("k=a=b", [("k", "a=b")]),
    ],
)
def test_parse_mount_options(text: str, expected: list[tuple[str, str | None]]) -> None:
    assert mountapi.parse_mount_options(text) == expected


def test_split_vfs_options() -> None:
    ms, attr, rest = mountapi.split_vfs_options(
        [
            ("redirect_dir", "on"),
            ("noatime", None),
            ("nosuid", None),
            ("ro", None),
            ("rw", None),
            ("index", "off"),
        ]
    )
    assert ms == mountapi.MS_NOATIME | mountapi.MS_NOSUID
    assert attr == mountapi.MOUNT_ATTR_NOATIME | mountapi.MOUNT_ATTR_NOSUID
    assert rest == [("redirect_dir", "on"), ("index", "off")]
    # The last atime option wins.
    _, attr, _ = mountapi.split_vfs_options([("noatime", None), ("strictatime", None)])
    assert attr == mountapi.MOUNT_ATTR_STRICTATIME


def test_escape_overlay_path() -> None:
    assert mountapi.escape_overlay_path(Path("/a,b:c\\d")) == "/a\\,b\\:c\\\\d"


# --- statx, handles (no mounting needed) ----------------------------------------------------


def test_statx_matches_stat(tmp_path: Path) -> None:
    f = tmp_path / "file"
    f.write_bytes(b"12345")
    st = mountapi.statx(AT_FDCWD, f, 0, mountapi.STATX_BASIC_STATS | mountapi.STATX_BTIME)
    ref = os.stat(f)
    assert (st.ino, st.size, st.mode, st.nlink) == (ref.st_ino, 5, ref.st_mode, 1)
    assert st.dev == ref.st_dev
    assert st.mtime == (int(ref.st_mtime_ns // 10**9), ref.st_mtime_ns % 10**9)


def test_statx_missing_raises_oserror(tmp_path: Path) -> None:
    with pytest.raises(OSError) as info:
        mountapi.statx(AT_FDCWD, tmp_path / "nope", 0, mountapi.STATX_INO)
    assert info.value.errno == errno.ENOENT
    assert info.value.filename == str(tmp_path / "nope")


def test_name_to_handle_at(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_text("a")
    b.write_text("b")
    handle_type, handle, mount_id = mountapi.name_to_handle_at(AT_FDCWD, a, 0)
    assert handle and handle_type != 0 and mount_id > 0
    assert mountapi.file_handle(a) == mountapi.file_handle(a)
    assert mountapi.file_handle(a) != mountapi.file_handle(b)
    (tmp_path / "link").symlink_to(a)
    assert mountapi.file_handle(tmp_path / "link") == mountapi.file_handle(a)
    with pytest.raises(FileNotFoundError):
        mountapi.file_handle(tmp_path / "nope")


def test_is_mount_point_basics(tmp_path: Path) -> None:
    assert mountapi.is_mount_point("/")
    assert mountapi.is_mount_point("/proc")
    assert not mountapi.is_mount_point(tmp_path)
    assert not mountapi.is_mount_point(tmp_path / "missing")


def test_probes_are_cached_bools() -> None:
    for probe in (
        mountapi.have_new_mount_api,
        mountapi.have_lowerdir_plus,
        mountapi.have_move_mount_beneath,
    ):
        assert isinstance(probe(), bool)
        assert probe() is probe()


# --- real mounts, inside the session's private mount namespace ------------------------------


def _layer(base: Path, name: str, files: dict[str, str]) -> Path:
    d = base / name
    d.mkdir(parents=True)
    for rel, text in files.items():
        (d / rel).parent.mkdir(parents=True, exist_ok=True)
        (d / rel).write_text(text)
    return d


def _attach(fd: int, target: Path, flags: int = 0) -> None:
    try:
        mountapi.move_mount(fd, "", AT_FDCWD, target, MOVE_MOUNT_F_EMPTY_PATH | flags)
    finally:
        os.close(fd)


@pytest.fixture
def need_lowerdir_plus(mountns: None) -> None:
    if not mountapi.have_lowerdir_plus():
        pytest.skip("overlayfs lacks lowerdir+ (Linux < 6.8)")


def test_overlay_fd_shows_union(mount_tmp_path: Path, need_lowerdir_plus: None) -> None:
    top = _layer(mount_tmp_path, "top", {"same": "top", "only-top": "t"})
    bottom = _layer(mount_tmp_path, "bottom", {"same": "bottom", "sub/only-bottom": "b"})
    target = mount_tmp_path / "merged"
    target.mkdir()
    _attach(make_overlay_fd([top, bottom], source="sysext"), target)
    try:
        assert sorted(os.listdir(target)) == ["only-top", "same", "sub"]
        assert (target / "same").read_text() == "top"
        assert (target / "sub/only-bottom").read_text() == "b"
        assert mountapi.is_mount_point(target)
        (info,) = [i for i in mountapi.read_mountinfo() if i.mount_point == str(target)]
        assert (info.fstype, info.source) == ("overlay", "sysext")
        with pytest.raises(OSError) as err:
            (target / "new").write_text("x")
        assert err.value.errno == errno.EROFS  # no upper layer
    finally:
        mountapi.umount2(target, MNT_DETACH)


def test_overlay_fd_500_layers(mount_tmp_path: Path, need_lowerdir_plus: None) -> None:
    # Long names on purpose: joined, they would be far beyond mount(2)'s page.
    layers = [
        _layer(mount_tmp_path, f"layer-with-a-rather-long-name-{i:03}", {f"f{i}": str(i)})
        for i in range(500)
    ]
    with pytest.raises(MountError):
        classic_overlay_options(layers)
    target = mount_tmp_path / "merged"
    target.mkdir()
    _attach(make_overlay_fd(layers), target)
    try:
        assert len(os.listdir(target)) == 500
        assert (target / "f0").read_text() == "0" and (target / "f499").read_text() == "499"
    finally:
        mountapi.umount2(target, MNT_DETACH)


def test_overlay_fd_mutable_special_paths(mount_tmp_path: Path, need_lowerdir_plus: None) -> None:
    weird = "a,b:c\\d"
    lower = _layer(mount_tmp_path, weird, {"f": "lower"})
    meta = _layer(mount_tmp_path, "meta", {})
    upper = mount_tmp_path / "u" / weird
    upper.mkdir(parents=True)
    work = mount_tmp_path / "u" / f"work{weird}"
    work.mkdir()
    target = mount_tmp_path / "merged"
    target.mkdir()
    fd = make_overlay_fd(
        [meta, lower],
        upperdir=upper,
        workdir=work,
        options=[("redirect_dir", "on"), ("noatime", None), ("metacopy", "off"), ("index", "off")],
    )
    _attach(fd, target)
    try:
        assert (target / "f").read_text() == "lower"
        (target / "new").write_text("up")
        assert (upper / "new").read_text() == "up"
        (info,) = [i for i in mountapi.read_mountinfo() if i.mount_point == str(target)]
        assert "noatime" in info.options.split(",")
    finally:
        mountapi.umount2(target, MNT_DETACH)


def test_overlay_fd_paths_longer_than_fsconfig_strings(
    mount_tmp_path: Path, need_lowerdir_plus: None
) -> None:
    deep = mount_tmp_path / ("x" * 200) / ("y" * 100)
    assert len(str(deep)) > mountapi.FSCONFIG_STRING_MAX
    deep.mkdir(parents=True)
    (deep / "f").write_text("deep")
    other = _layer(mount_tmp_path, "other", {})
    target = mount_tmp_path / "merged"
    target.mkdir()
    try:
        fd = make_overlay_fd([deep, other])
    except MountError as exc:
        pytest.skip(f"layers by fd need Linux >= 6.13: {exc}")
    _attach(fd, target)
    try:
        assert (target / "f").read_text() == "deep"
    finally:
        mountapi.umount2(target, MNT_DETACH)


def test_overlay_fd_errors_quote_the_layer(mount_tmp_path: Path, need_lowerdir_plus: None) -> None:
    other = _layer(mount_tmp_path, "other", {})
    with pytest.raises(MountError, match="nonexistent.*No such file"):
        make_overlay_fd([mount_tmp_path / "nonexistent", other])
    with pytest.raises(MountError, match="Unknown parameter 'bogus'"):
        make_overlay_fd([other, other], options=[("bogus", "1")])


def test_classic_mount_escapes_round_trip(mount_tmp_path: Path, mountns: None) -> None:
    a = _layer(mount_tmp_path, "a,b:c\\d", {"fa": "a"})
    b = _layer(mount_tmp_path, "plain", {"fb": "b"})
    target = mount_tmp_path / "merged"
    target.mkdir()
    mountapi.mount("sysext", target, "overlay", mountapi.MS_RDONLY, classic_overlay_options([a, b]))
    try:
        assert sorted(os.listdir(target)) == ["fa", "fb"]
    finally:
        mountapi.umount2(target)


def test_open_tree_clone_and_mount_ids(mount_tmp_path: Path, need_lowerdir_plus: None) -> None:
    l1 = _layer(mount_tmp_path, "l1", {"f": "1"})
    l2 = _layer(mount_tmp_path, "l2", {})
    first, second = mount_tmp_path / "first", mount_tmp_path / "second"
    first.mkdir()
    second.mkdir()
    _attach(make_overlay_fd([l1, l2]), first)
    try:
        clone = mountapi.open_tree(
            AT_FDCWD, first, mountapi.OPEN_TREE_CLONE | mountapi.OPEN_TREE_CLOEXEC | mountapi.AT_RECURSIVE
        )
        _attach(clone, second)
        try:
            assert (second / "f").read_text() == "1"
            ids = {mountapi.unique_mount_id(p) for p in (mount_tmp_path, first, second)}
            assert len(ids) == 3
            assert mountapi.unique_mount_id(first) == mountapi.unique_mount_id(first / "f")
            classic = {
                mountapi.statx(AT_FDCWD, p, 0, mountapi.STATX_MNT_ID).mnt_id
                for p in (mount_tmp_path, first, second)
            }
            assert len(classic) == 3
            assert os.stat(first).st_dev == os.stat(second).st_dev  # same super block, other mount
            assert mountapi.is_mount_point(second)
        finally:
            mountapi.umount2(second, MNT_DETACH)
    finally:
        mountapi.umount2(first, MNT_DETACH)


def test_mount_setattr_read_only(mount_tmp_path: Path, mountns: None) -> None:
    source = _layer(mount_tmp_path, "src", {})
    target = mount_tmp_path / "bind"
    target.mkdir()
    mountapi.mount(source, target, None, mountapi.MS_BIND)
    try:
        (target / "w1").write_text("ok")
        mountapi.mount_setattr(AT_FDCWD, target, mountapi.AT_RECURSIVE, mountapi.MOUNT_ATTR_RDONLY, 0)
        with pytest.raises(OSError) as err:
            (target / "w2").write_text("no")
        assert err.value.errno == errno.EROFS
    finally:
        mountapi.umount2(target)


def test_move_mount_beneath_swaps_without_gap(mount_tmp_path: Path, need_lowerdir_plus: None) -> None:
    if not mountapi.have_move_mount_beneath():
        pytest.skip("MOVE_MOUNT_BENEATH needs Linux >= 6.5")
    a = [_layer(mount_tmp_path, "a1", {"file": "A"}), _layer(mount_tmp_path, "a2", {})]
    b = [_layer(mount_tmp_path, "b1", {"file": "B"}), _layer(mount_tmp_path, "b2", {})]
    x = mount_tmp_path / "x"
    x.mkdir()
    _attach(make_overlay_fd(a), x)
    failures: list[OSError] = []
    reads = 0
    stop = threading.Event()

    def reader() -> None:
        nonlocal reads
        while not stop.is_set():
            try:
                os.stat(x / "file")
                reads += 1
            except OSError as exc:
                failures.append(exc)

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        time.sleep(0.02)
        _attach(make_overlay_fd(b), x, MOVE_MOUNT_BENEATH)
        assert (x / "file").read_text() == "A"  # B sits below A until A goes
        mountapi.umount2(x, MNT_DETACH)
        time.sleep(0.02)
    finally:
        stop.set()
        thread.join()
    try:
        assert (x / "file").read_text() == "B"
        assert failures == []
        assert reads > 0
    finally:
        mountapi.umount2(x, MNT_DETACH)


def test_leftover_check_fails_and_cleans_up(tmp_path: Path, mountns: None) -> None:
    from conftest import check_no_leftovers

    target = tmp_path / "forgotten"
    target.mkdir()
    mountapi.mount("tmpfs", target, "tmpfs", 0, "size=64k")
    with pytest.raises(pytest.fail.Exception, match="mounts left behind: .*forgotten"):
        check_no_leftovers(tmp_path)
    assert not mountapi.is_mount_point(target)
    check_no_leftovers(tmp_path)


def test_session_has_private_run(mountns: None) -> None:
    runs = [i for i in mountapi.read_mountinfo() if i.mount_point == "/run"]
    assert runs[-1].fstype == "tmpfs"
    assert all(not o.startswith("shared:") for i in mountapi.read_mountinfo() for o in i.optional_fields)


SETNS_CHILD = """
import os, sys
from sysextpy import mountapi as m
host = os.open("/proc/self/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
m.unshare(m.CLONE_NEWNS)
m.mount(None, "/", None, m.MS_REC | m.MS_PRIVATE)
m.mount("tmpfs", sys.argv[1], "tmpfs", 0, "size=64k")
inside = m.is_mount_point(sys.argv[1])
m.setns(host, m.CLONE_NEWNS)
print(inside, m.is_mount_point(sys.argv[1]))
"""


def test_unshare_and_setns_back(mount_tmp_path: Path) -> None:
    target = mount_tmp_path / "t"
    target.mkdir()
    out = subprocess.run(
        [sys.executable, "-c", SETNS_CHILD, str(target)],
        cwd=Path(__file__).resolve().parent.parent,
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.split() == ["True", "False"]
