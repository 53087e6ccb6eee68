# SPDX-License-Identifier: LGPL-2.1-or-later
"""Naked file system images (`NAME.raw`: squashfs, erofs, ext4) merged through loop devices.

Broken images are rejected one by one (exit 3) while the good ones merge; no loop device
outlives the merge that needed it.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Optional

import pytest

from tests.conftest import require_tools
from tests.merge_support import (
    RAW_TOOLS,
    Runner,
    RunSysextpy,
    add_sysext,
    confext_tree,
    expected_identity,
    have_tool,
    loops_backed_below,
    loops_settle,
    make_raw,
    mounts_at,
    read_meta,
    sysext_tree,
    write,
)

KINDS = ["squashfs", "erofs", "ext4"]
EXT = "var/lib/extensions"


@pytest.fixture
def run(mountns: None, fake_root: Path, tmp_path: Path, sysextpy_cmd: RunSysextpy) -> Runner:
    return Runner(sysextpy_cmd, fake_root, tmp_path / "state.json")


def _need(kind: str) -> None:
    require_tools(RAW_TOOLS[kind])


def _raw_sysext(tmp_path: Path, root: Path, kind: str, name: str, release: Optional[str] = None) -> Path:
    src = tmp_path / f"src-{name}"
    sysext_tree(
        src, name, {f"usr/share/{name}/file": f"{kind}\n"}, **({"release": release} if release else {})
    )
    return make_raw(kind, src, root / EXT / f"{name}.raw")


def _loop_of(image: Path) -> Optional[str]:
    """The loop device (sysfs directory) backed by `image`, if one is attached."""
    for backing in Path("/sys/block").glob("loop*/loop/backing_file"):
        if backing.read_text().strip() == os.fspath(image):
            return os.fspath(backing.parent.parent)
    return None


@pytest.mark.parametrize("kind", KINDS)
def test_raw_image_merges(run: Runner, fake_root: Path, tmp_path: Path, kind: str) -> None:
    _need(kind)
    name = f"r-{kind}"
    image = _raw_sysext(tmp_path, fake_root, kind, name)
    add_sysext(fake_root, "plain", {"usr/share/plain/file": "dir\n"})
    assert loops_backed_below(tmp_path) == 0
    identity = expected_identity(fake_root, image, raw=True)

    run.ok("merge", "--class=sysext")
    assert (fake_root / f"usr/share/{name}/file").read_text() == f"{kind}\n"
    assert (fake_root / "usr/share/plain/file").read_text() == "dir\n"
    assert read_meta(fake_root / "usr", "extensions") == f"plain\n{name}\n"
    loop = _loop_of(image)
    assert loop is not None, "the image is attached while merged"
    assert Path(loop, "ro").read_text().strip() == "1", "attached read-only"
    assert Path(loop, "loop/autoclear").read_text().strip() == "1"
    assert loops_backed_below(tmp_path) == 1

    entry = json.loads(read_meta(fake_root / "usr", "origin") or "")["extensions"][name]
    assert entry == identity
    assert entry["path"] == f"/{EXT}/{name}.raw"
    assert entry["mtime"] == os.stat(image).st_mtime_ns // 1000 > 0, "raw images record their mtime"

    listed = json.loads(run.cmd("--root", str(fake_root), "--class=sysext", "--json=short", "list").stdout)
    assert {row["name"]: row["type"] for row in listed} == {name: "raw", "plain": "directory"}

    run.ok("unmerge")
    assert not mounts_at(fake_root / "usr")
    assert loops_settle(tmp_path, 0) == 0, "loop device left attached after unmerge"
    assert _loop_of(image) is None


def test_raw_confext(run: Runner, fake_root: Path, tmp_path: Path) -> None:
    _need("erofs")
    confext_tree(tmp_path / "src", "conf", {"etc/conf.d/from-raw": "erofs\n"})
    make_raw("erofs", tmp_path / "src", fake_root / "var/lib/confexts/conf.raw")
    run.ok("merge", "--class=confext")
    assert loops_backed_below(tmp_path) == 1
    assert (fake_root / "etc/conf.d/from-raw").read_text() == "erofs\n"
    assert read_meta(fake_root / "etc", "confexts", "confext") == "conf\n"
    run.ok("unmerge", "--class=confext")
    assert loops_settle(tmp_path, 0) == 0


def _truncated_squashfs(tmp_path: Path, image: Path) -> None:
    src = tmp_path / "src-trunc"
    sysext_tree(src, "trunc", {})
    # incompressible content makes the image large enough that its tables lie past the cut
    (src / "usr/share/trunc").mkdir(parents=True)
    (src / "usr/share/trunc/blob").write_bytes(random.Random(1).randbytes(512 * 1024))
    make_raw("squashfs", src, image)
    with open(image, "r+b") as f:
        f.truncate(os.path.getsize(image) // 2)


def test_broken_raw_images_are_rejected(run: Runner, fake_root: Path, tmp_path: Path) -> None:
    require_tools("mksquashfs")  # for the truncated image
    good = [kind for kind in KINDS if have_tool(kind)]
    for kind in good:
        _raw_sysext(tmp_path, fake_root, kind, f"good-{kind}")
    add_sysext(fake_root, "good-dir", {"usr/share/good-dir/file": "dir\n"})
    write(fake_root / EXT / "zero.raw", "")
    (fake_root / EXT / "garbage.raw").write_bytes(random.Random(2).randbytes(1 << 20))
    _truncated_squashfs(tmp_path, fake_root / EXT / "trunc.raw")
    # an incompatible image is mounted to read its release file, then ignored (not an error)
    _raw_sysext(tmp_path, fake_root, "squashfs", "fedora", release="ID=fedora\nVERSION_ID=41\n")

    res = run("merge", "--class=sysext")
    assert res.returncode == 3, res.stderr
    reasons = {"zero": "empty", "garbage": "no recognised file system", "trunc": "cannot mount"}
    lines = res.stderr.splitlines()
    for broken, reason in reasons.items():
        verdict = [x for x in lines if x.startswith(f"sysext {broken}: rejected")]
        assert len(verdict) == 1 and reason in verdict[0], res.stderr
    assert "sysext fedora: ignored" in res.stderr
    good_names = sorted([f"good-{kind}" for kind in good] + ["good-dir"])
    assert read_meta(fake_root / "usr", "extensions") == "".join(f"{n}\n" for n in good_names)
    for kind in good:
        assert (fake_root / f"usr/share/good-{kind}/file").read_text() == f"{kind}\n"
    assert not (fake_root / "usr/share/fedora").exists()
    assert not (fake_root / "usr/share/trunc").exists()
    assert loops_settle(tmp_path, len(good)) == len(good), "only the merged images stay attached"

    run.ok("unmerge")
    assert loops_settle(tmp_path, 0) == 0, "loop devices leaked"
