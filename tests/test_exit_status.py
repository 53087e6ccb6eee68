# SPDX-License-Identifier: LGPL-2.1-or-later
"""Exit status 3 always names its culprits: every image or entry that made a run exit 3 is named
on stderr with its reason, by the run that rejected it and by every refresh that skips after it;
`list` warns about such entries too. And a release file that is not plain UTF-8 text is refused
whole, as systemd refuses it."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import RunSysextpy
from tests.merge_support import Runner, add_sysext, write

SKIPPED = "Skipping extension refresh because no change was found"


@pytest.fixture
def run(mountns: None, fake_root: Path, tmp_path: Path, sysextpy_cmd: RunSysextpy) -> Iterator[Runner]:
    r = Runner(sysextpy_cmd, fake_root, tmp_path / "state" / "state.json")
    add_sysext(fake_root, "good", {"usr/share/good/file": "good\n"})
    yield r
    r("unmerge")


def test_a_symlink_loop_in_a_search_directory_is_named(run: Runner, fake_root: Path) -> None:
    (fake_root / "var/lib/extensions/loop").symlink_to("loop")
    merge = run("merge")
    assert merge.returncode == 3
    assert "sysext /" in merge.stderr and "/var/lib/extensions/loop: rejected (" in merge.stderr
    assert "symlink loop" in merge.stderr
    again = run("refresh")
    assert again.returncode == 3 and SKIPPED in again.stderr
    assert json.loads(run.state.read_text())["confirmedBy"] == "observations"
    assert "/var/lib/extensions/loop: rejected (" in again.stderr
    listed = run("list")
    assert listed.returncode == 0
    assert "/var/lib/extensions/loop" in listed.stderr and "symlink loop" in listed.stderr


@pytest.mark.parametrize(
    "content, why",
    [
        (b"ID=debian\nVERSION_ID=12\0\n", "NUL byte at offset 23"),
        (b"ID=debian\nVERSION_ID=\xff12\n", "not UTF-8 at offset 21"),
        (b"ID=deb\xc3\n", "not UTF-8 at offset 6"),
    ],
)
def test_a_release_file_that_is_not_text_is_refused_whole(
    run: Runner, fake_root: Path, content: bytes, why: str
) -> None:
    ext = fake_root / "var/lib/extensions/odd"
    write(ext / "usr/share/odd/file", "odd\n")
    release = ext / "usr/lib/extension-release.d/extension-release.odd"
    release.parent.mkdir(parents=True)
    release.write_bytes(content)
    plan = run("--json=short", "plan")
    assert plan.returncode == 3
    row = next(r for r in json.loads(plan.stdout)["images"] if r["name"] == "odd")
    assert row["verdict"] == "rejected" and why in row["reason"], row
    merge = run("merge")
    assert merge.returncode == 3
    assert "sysext odd: rejected (" in merge.stderr and why in merge.stderr
    assert (fake_root / "usr/share/good/file").exists() and not (fake_root / "usr/share/odd").exists()
    assert os.path.exists(fake_root / "usr/.systemd-sysext/extensions")
