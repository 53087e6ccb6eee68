# SPDX-License-Identifier: LGPL-2.1-or-later
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from sysextpy import mountapi
from sysextpy.loopdev import LoopDevice, count_attached_loops
from tests.conftest import loops_backed_below, require_tools


def _squashfs(base: Path, name: str = "img.raw") -> Path:
    require_tools("mksquashfs")
    tree = base / "tree"
    (tree / "usr/lib").mkdir(parents=True)
    (tree / "usr/lib/hello").write_text("hello from squashfs\n")
    image = base / name
    subprocess.run(
        ["mksquashfs", str(tree), str(image), "-quiet", "-noappend", "-no-progress"],
        check=True,
        stdin=subprocess.DEVNULL,
        capture_output=True,
    )
    return image


def _sysfs(loop: LoopDevice, attr: str) -> str:
    return (Path("/sys/block") / os.path.basename(loop.path) / attr).read_text().strip()


def test_attach_mount_detach(mount_tmp_path: Path) -> None:
    image = _squashfs(mount_tmp_path)
    target = mount_tmp_path / "mnt"
    target.mkdir()
    before = loops_backed_below(mount_tmp_path)
    with LoopDevice.attach(image) as loop:
        assert os.path.basename(loop.path).startswith("loop") and loop.fd >= 0
        assert loops_backed_below(mount_tmp_path) == before + 1
        assert count_attached_loops() >= 1
        assert _sysfs(loop, "loop/backing_file") == str(image)
        assert _sysfs(loop, "loop/autoclear") == "1"
        assert _sysfs(loop, "ro") == "1"
        mountapi.mount(loop.path, target, "squashfs", mountapi.MS_RDONLY)
        try:
            assert (target / "usr/lib/hello").read_text() == "hello from squashfs\n"
        finally:
            mountapi.umount2(target)
    assert loop.fd == -1
    assert loops_backed_below(mount_tmp_path) == before


def test_mount_keeps_detached_device_alive(mount_tmp_path: Path) -> None:
    image = _squashfs(mount_tmp_path)
    target = mount_tmp_path / "mnt"
    target.mkdir()
    before = loops_backed_below(mount_tmp_path)
    loop = LoopDevice.attach(image)
    mountapi.mount(loop.path, target, "squashfs", mountapi.MS_RDONLY)
    loop.detach()  # lazy: the mount still uses the device
    loop.detach()  # idempotent
    assert (target / "usr/lib/hello").exists()
    assert loops_backed_below(mount_tmp_path) == before + 1
    mountapi.umount2(target)
    assert loops_backed_below(mount_tmp_path) == before


def test_attach_with_offset(mount_tmp_path: Path) -> None:
    image = _squashfs(mount_tmp_path, "plain.raw")
    padded = mount_tmp_path / "padded.raw"
    padded.write_bytes(b"\0" * 8192 + image.read_bytes())
    target = mount_tmp_path / "mnt"
    target.mkdir()
    with LoopDevice.attach(padded, offset=8192, sizelimit=image.stat().st_size) as loop:
        assert _sysfs(loop, "loop/offset") == "8192"
        mountapi.mount(loop.path, target, "squashfs", mountapi.MS_RDONLY)
        try:
            assert (target / "usr/lib/hello").is_file()
        finally:
            mountapi.umount2(target)


def test_attach_read_write(mount_tmp_path: Path) -> None:
    backing = mount_tmp_path / "blank.raw"
    backing.write_bytes(b"\0" * 65536)
    with LoopDevice.attach(backing, read_only=False) as loop:
        assert _sysfs(loop, "ro") == "0"
        assert int(_sysfs(loop, "size")) == 65536 // 512


def test_close_lets_autoclear_detach(mount_tmp_path: Path) -> None:
    backing = mount_tmp_path / "blank.raw"
    backing.write_bytes(b"\0" * 4096)
    before = loops_backed_below(mount_tmp_path)
    loop = LoopDevice.attach(backing)
    assert loops_backed_below(mount_tmp_path) == before + 1
    loop.close()
    assert loops_backed_below(mount_tmp_path) == before


def test_attach_missing_file_raises(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as info:
        LoopDevice.attach(tmp_path / "missing.raw")
    assert info.value.filename == str(tmp_path / "missing.raw")
