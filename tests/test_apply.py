# SPDX-License-Identifier: LGPL-2.1-or-later
"""apply's overlay mounting on kernels without `lowerdir+` (Linux < 6.8): the classic option string."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sysextpy import apply, mountapi
from sysextpy.errors import MountError


def _layers(tmp_path: Path, count: int) -> list[str]:
    layers = []
    for i in range(count):
        d = tmp_path / f"layer{i:03d}"
        d.mkdir()
        (d / f"file{i}").write_text(f"{i}\n")
        layers.append(os.fspath(d))
    return layers


@pytest.mark.parametrize("one_by_one", [True, False])
def test_mount_overlay_both_ways(
    mount_tmp_path: Path, monkeypatch: pytest.MonkeyPatch, one_by_one: bool
) -> None:
    if one_by_one and not mountapi.have_lowerdir_plus():
        pytest.skip("kernel lacks lowerdir+")
    monkeypatch.setattr(mountapi, "have_lowerdir_plus", lambda: one_by_one)
    staging = mount_tmp_path / "staging"
    staging.mkdir()
    layers = _layers(mount_tmp_path, 3)
    attrs = mountapi.MOUNT_ATTR_RDONLY | mountapi.MOUNT_ATTR_NODEV | mountapi.MOUNT_ATTR_NOEXEC
    apply._mount_overlay(
        staging,
        layers,
        upperdir=None,
        workdir=None,
        source="sysext",
        options=[("noatime", None)],
        attrs=attrs,
    )
    try:
        assert sorted(os.listdir(staging)) == ["file0", "file1", "file2"]
        info = [i for i in mountapi.read_mountinfo() if i.mount_point == os.fspath(staging)][-1]
        assert info.fstype == "overlay" and info.source == "sysext"
        assert {"ro", "nodev", "noexec", "noatime"} <= set(info.options.split(","))
    finally:
        mountapi.umount2(staging, mountapi.MNT_DETACH)


def test_classic_option_string_too_long_is_refused(
    mount_tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(mountapi, "have_lowerdir_plus", lambda: False)
    staging = mount_tmp_path / "staging"
    staging.mkdir()
    layers = _layers(mount_tmp_path, 120)  # ~120 long paths: more than one page of options
    with pytest.raises(MountError, match="more than the 4095 bytes"):
        apply._mount_overlay(
            staging, layers, upperdir=None, workdir=None, source="sysext", options=[], attrs=0
        )
    assert not mountapi.is_mount_point(staging)
