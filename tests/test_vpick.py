# SPDX-License-Identifier: LGPL-2.1-or-later
from __future__ import annotations

import errno
import itertools
import os
import stat
from pathlib import Path
from typing import Optional

import pytest
from pyfakefs.fake_filesystem import FakeFilesystem

from sysextpy.errors import ResolveError
from sysextpy.model import ImageClass
from sysextpy.view import LiveView
from sysextpy.vpick import (
    Picked,
    VersionedName,
    best_candidate,
    parse_versioned_name,
    pick_version,
    split_vdir_name,
)

SYSEXT, CONFEXT = ImageClass.SYSEXT, ImageClass.CONFEXT


@pytest.mark.parametrize(
    "entry,image_class,expected",
    [
        ("foo.v", SYSEXT, ("foo", "")),
        ("foo.raw.v", SYSEXT, ("foo", ".raw")),
        ("foo.sysext.raw.v", SYSEXT, ("foo", ".sysext.raw")),
        ("foo.sysext.v", SYSEXT, ("foo", ".sysext")),
        ("foo.mstack.v", SYSEXT, ("foo", ".mstack")),
        ("foo.sysext.mstack.v", SYSEXT, ("foo", ".sysext.mstack")),
        ("foo.raw.raw.v", SYSEXT, ("foo.raw", ".raw")),
        # the other class's suffix is just part of the name
        ("foo.confext.raw.v", SYSEXT, ("foo.confext", ".raw")),
        ("foo.confext.raw.v", CONFEXT, ("foo", ".confext.raw")),
        ("foo.sysext.v", CONFEXT, ("foo.sysext", "")),
        ("foo.raw", SYSEXT, None),
        ("foo.v.raw", SYSEXT, None),
        ("foo.V", SYSEXT, None),
        ("foo", SYSEXT, None),
        (".v", SYSEXT, None),
        (".raw.v", SYSEXT, None),
        (".sysext.raw.v", SYSEXT, None),
    ],
)
def test_split_vdir_name(entry: str, image_class: ImageClass, expected: Optional[tuple[str, str]]) -> None:
    assert split_vdir_name(entry, image_class) == expected


# (filename, version, architecture, tries_left, tries_done) for basename "foo", suffix ".raw"
@pytest.mark.parametrize(
    "filename,version,arch,left,done",
    [
        ("foo_1.2.raw", "1.2", None, None, None),
        ("foo_1.2_x86-64.raw", "1.2", "x86-64", None, None),
        ("foo_1.2_arm64.raw", "1.2", "arm64", None, None),
        ("foo_1.2_s390.raw", "1.2", "s390", None, None),
        # whatever follows the last "_" is cut off, architecture or not
        ("foo_1.2_notarch.raw", "1.2", None, None, None),
        ("foo_1_2_3.raw", "1_2", None, None, None),
        ("foo_1.2_.raw", "1.2", None, None, None),
        # an architecture name with no "_" before it is the version
        ("foo_x86-64.raw", "x86-64", None, None, None),
        # tries counters
        ("foo_1.2+3.raw", "1.2", None, 3, 0),
        ("foo_1.2+2-1.raw", "1.2", None, 2, 1),
        ("foo_1.2+0.raw", "1.2", None, 0, 0),
        ("foo_1.2+007-010.raw", "1.2", None, 7, 10),
        ("foo_1.2_x86-64+0-5.raw", "1.2", "x86-64", 0, 5),
        ("foo_1+2+3.raw", "1+2", None, 3, 0),
        ("foo_1.2+4294967295.raw", "1.2", None, 4294967295, 0),
        # counters that do not parse stay in the version
        ("foo_1.2+x.raw", "1.2+x", None, None, None),
        ("foo_1.2+3-.raw", "1.2+3-", None, None, None),
        ("foo_1.2+-1.raw", "1.2+-1", None, None, None),
        ("foo_1.2+3-x.raw", "1.2+3-x", None, None, None),
        ("foo_1.2+3-2-1.raw", "1.2+3-2-1", None, None, None),
        ("foo_1.2+4294967296.raw", "1.2+4294967296", None, None, None),
        ("foo_1.2+.raw", "1.2+", None, None, None),
        # the counter is looked for before the architecture, so here it is no counter
        ("foo_1.2+3_x86-64.raw", "1.2+3", "x86-64", None, None),
        ("foo_1,2.raw", "1,2", None, None, None),
        ("foo_1.2.raw.raw", "1.2.raw", None, None, None),
        ("foo_foo_1.raw", "foo", None, None, None),
    ],
)
def test_parse(
    filename: str, version: str, arch: Optional[str], left: Optional[int], done: Optional[int]
) -> None:
    assert parse_versioned_name(filename, "foo", ".raw") == VersionedName(
        filename, version, arch, left, done
    )


@pytest.mark.parametrize(
    "filename",
    [
        "foo_.raw",  # empty version
        "foo__x86-64.raw",
        "foo_+3.raw",
        "foo_..raw",  # version "." and ".." are not file names
        "foo_...raw",
        "foo_1 2.raw",
        "foo_1:2.raw",
        "foo_1.2~rc1.raw",  # "~" and "^" sort fine but are not allowed in vpick versions
        "foo_1.2^p1.raw",
        "foo_1.2é.raw",
        "foo_" + "1" * 256 + ".raw",
        "foo_1.2.img",  # wrong suffix
        "foo-1.2.raw",  # no "_" after the basename
        "foobar_1.raw",
        "bar_1.raw",
        "foo.raw",
    ],
)
def test_parse_rejects(filename: str) -> None:
    assert parse_versioned_name(filename, "foo", ".raw") is None


@pytest.mark.parametrize(
    "filename,basename,suffix,version",
    [
        ("foo_1.2", "foo", "", "1.2"),
        ("foo_1.2.raw", "foo", "", "1.2.raw"),
        ("foo_1.sysext.raw", "foo", ".sysext.raw", "1"),
        ("1.2.raw", "", ".raw", "1.2"),
    ],
)
def test_parse_other_suffixes(filename: str, basename: str, suffix: str, version: str) -> None:
    parsed = parse_versioned_name(filename, basename, suffix)
    assert parsed is not None and parsed.version == version


def names(*filenames: str) -> list[VersionedName]:
    out = []
    for f in filenames:
        parsed = parse_versioned_name(f, "foo", ".raw")
        assert parsed is not None, f
        out.append(parsed)
    return out


X86_64 = ("x86-64", ("x86",))


@pytest.mark.parametrize(
    "candidates,winner",
    [
        # 1) tries left (or no counter) beats exhausted, whatever the version
        (["foo_2+0.raw", "foo_1.raw"], "foo_1.raw"),
        (["foo_2+0-3.raw", "foo_1+1.raw"], "foo_1+1.raw"),
        (["foo_2+0.raw", "foo_1+0.raw"], "foo_2+0.raw"),
        # 2) newer version
        (["foo_1.raw", "foo_2.raw"], "foo_2.raw"),
        (["foo_1.9.raw", "foo_1.10.raw"], "foo_1.10.raw"),
        (["foo_2_x86.raw", "foo_1_x86-64.raw"], "foo_2_x86.raw"),
        (["foo_2.raw", "foo_1_x86-64.raw"], "foo_2.raw"),
        # 3) native, then secondary, then no architecture
        (["foo_1_x86.raw", "foo_1_x86-64.raw", "foo_1.raw"], "foo_1_x86-64.raw"),
        (["foo_1_x86.raw", "foo_1.raw"], "foo_1_x86.raw"),
        # 4) more tries left; no counter counts as the most
        (["foo_1+1.raw", "foo_1+3.raw"], "foo_1+3.raw"),
        (["foo_1+3.raw", "foo_1.raw"], "foo_1.raw"),
        # 5) fewer tries done
        (["foo_1+2-3.raw", "foo_1+2-1.raw"], "foo_1+2-1.raw"),
        (["foo_1+2-1.raw", "foo_1+2.raw"], "foo_1+2.raw"),
        # 6) greater file name, for versions that compare equal
        (["foo_1.00.raw", "foo_1.0.raw"], "foo_1.00.raw"),
        (["foo_1_b.raw", "foo_1_a.raw"], "foo_1_b.raw"),
        # foreign architectures are never picked
        (["foo_9_arm64.raw", "foo_1.raw"], "foo_1.raw"),
        (["foo_9_arm64.raw", "foo_9_ppc64-le.raw"], None),
        ([], None),
    ],
)
def test_best_candidate(candidates: list[str], winner: Optional[str]) -> None:
    best = best_candidate(names(*candidates), *X86_64)
    assert (best.filename if best else None) == winner


@pytest.mark.parametrize(
    "native,secondary,winner",
    [
        ("arm64", ("arm",), "foo_2_arm.raw"),
        ("arm64-be", (), "foo_1.raw"),
        ("arm", (), "foo_2_arm.raw"),
        ("x86-64", ("x86",), "foo_1.raw"),
    ],
)
def test_best_candidate_secondary(native: str, secondary: tuple[str, ...], winner: str) -> None:
    best = best_candidate(names("foo_2_arm.raw", "foo_1.raw"), native, secondary)
    assert best is not None and best.filename == winner


def test_best_candidate_ignores_input_order() -> None:
    pool = names(
        "foo_1+0.raw", "foo_2_x86.raw", "foo_2.raw", "foo_2+5.raw", "foo_1.10_x86-64.raw", "foo_2_ia64.raw"
    )
    winners = {best_candidate(p, *X86_64) for p in itertools.permutations(pool)}
    assert {w.filename for w in winners if w} == {"foo_2_x86.raw"}


# --- pick_version on trees of a fake file system (block devices on a real one) ----------------------

ROOT = "/srv/root"


@pytest.fixture
def root(fake_fs: FakeFilesystem) -> Path:
    # The fake host has a /store of its own beside the root: a link that left the root would find it.
    fake_fs.create_file("/store/gone.img")
    fake_fs.create_file("/srv/outside.img")
    root = Path(ROOT)  # made while pyfakefs is active: module-level paths are real ones
    fake_fs.create_dir(root / "var/lib/extensions")
    fake_fs.create_dir(root / "store")
    return root


def pick(root: Path, vdir: Path, basename: str, suffix: str, native: str = "x86-64") -> Optional[Picked]:
    return pick_version(LiveView(os.fspath(root), {}), os.fspath(vdir), basename, suffix, native=native)


def vdir(root: Path, name: str, entries: dict[str, object]) -> Path:
    """entries: name -> None (directory), str (file contents) or ("->", target) (symlink)."""
    d = root / "var/lib/extensions" / name
    d.mkdir()
    for entry, kind in entries.items():
        p = d / entry
        if kind is None:
            p.mkdir()
        elif isinstance(kind, str):
            p.write_text(kind)
        else:
            assert isinstance(kind, tuple)
            os.symlink(kind[1], p)
    return d


def test_picks_newest_raw_file(root: Path) -> None:
    d = vdir(
        root,
        "foo.raw.v",
        {
            "foo_1.raw": "",
            "foo_2.raw": "",
            "foo_3.raw": None,  # a directory: wrong type for ".raw", dropped
            "foo_9_arm64.raw": "",  # foreign architecture
            "bar_9.raw": "",  # another basename
            "foo_8.img": "",  # another suffix
            "README": ("->", "/nowhere"),  # dangling, but not a candidate, so never resolved
        },
    )
    picked = pick(root, d, "foo", ".raw")
    assert picked is not None
    assert picked.path == os.fspath(d / "foo_2.raw")
    assert picked.name.version == "2"


def test_native_argument_changes_the_pick(root: Path) -> None:
    d = vdir(root, "foo.raw.v", {"foo_1.raw": "", "foo_9_arm64.raw": ""})
    picked = pick(root, d, "foo", ".raw", native="arm64")
    assert picked is not None and picked.name.filename == "foo_9_arm64.raw"


def test_native_defaults_to_the_machine_the_view_reports(root: Path) -> None:
    class Arm64(LiveView):
        def machine(self) -> str:
            return "aarch64"

    d = vdir(root, "foo.raw.v", {"foo_1.raw": "", "foo_9_arm64.raw": "", "foo_8_x86-64.raw": ""})
    picked = pick_version(Arm64(os.fspath(root), {}), os.fspath(d), "foo", ".raw")
    assert picked is not None and picked.name.filename == "foo_9_arm64.raw"


def test_symlinked_entries_resolve_inside_the_root(root: Path) -> None:
    (root / "store/foo-5.img").write_text("")
    (root / "store/foo-6.img").write_text("")
    d = vdir(
        root,
        "foo.raw.v",
        {"foo_5.raw": ("->", "/store/foo-5.img"), "foo_6.raw": ("->", "../../../../store/foo-6.img")},
    )
    picked = pick(root, d, "foo", ".raw")
    assert picked is not None
    assert picked.path == os.fspath(root / "store/foo-6.img")
    assert picked.name.filename == "foo_6.raw"


def test_symlinked_vdir(root: Path) -> None:
    real = root / "store/foo.raw.v"
    real.mkdir()
    (real / "foo_1.raw").write_text("")
    os.symlink("/store/foo.raw.v", root / "var/lib/extensions/foo.raw.v")
    picked = pick(root, real, "foo", ".raw")
    assert picked is not None and picked.path == os.fspath(real / "foo_1.raw")


def test_dangling_candidate_fails_the_whole_pick(root: Path) -> None:
    d = vdir(root, "foo.raw.v", {"foo_1.raw": "", "foo_2.raw": ("->", "/store/gone.img")})
    with pytest.raises(ResolveError) as exc:
        pick(root, d, "foo", ".raw")
    assert exc.value.errno == errno.ENOENT


def test_link_out_of_the_root_does_not_escape(root: Path) -> None:
    # The target exists on the host next to the root, but not inside it.
    d = vdir(root, "foo.raw.v", {"foo_1.raw": ("->", "../../../../../outside.img")})
    assert os.path.realpath(d / "foo_1.raw") == os.fspath(root.parent / "outside.img")
    assert os.path.exists(d / "foo_1.raw")
    with pytest.raises(ResolveError) as exc:
        pick(root, d, "foo", ".raw")
    assert exc.value.errno == errno.ENOENT


def test_directories(root: Path) -> None:
    (root / "store/foo-4").mkdir()
    d = vdir(
        root,
        "foo.v",
        {
            "foo_1": None,
            "foo_2": "",  # a regular file: wrong type without ".raw", dropped
            "foo_3": ("->", "/store/foo-4"),
            "foo_5": ("->", "/store"),  # fine as long as it is a directory
            "foo_6.raw": "",  # without a suffix this is version "6.raw"... and a file, dropped
        },
    )
    picked = pick(root, d, "foo", "")
    assert picked is not None
    assert picked.name.filename == "foo_5"
    assert picked.path == os.fspath(root / "store")


def test_wrong_types_only_gives_none(root: Path) -> None:
    d = vdir(root, "foo.raw.v", {"foo_1.raw": None, "foo_2.raw": None})
    assert pick(root, d, "foo", ".raw") is None


def test_empty_vdir_gives_none(root: Path) -> None:
    d = vdir(root, "foo.raw.v", {})
    assert pick(root, d, "foo", ".raw") is None


def test_tries_exhausted_loses(root: Path) -> None:
    d = vdir(root, "foo.raw.v", {"foo_3+0-3.raw": "", "foo_2+1-2.raw": ""})
    picked = pick(root, d, "foo", ".raw")
    assert picked is not None
    assert (picked.name.version, picked.name.tries_left, picked.name.tries_done) == ("2", 1, 2)


def test_block_device(tmp_path: Path) -> None:
    # A real device node: pyfakefs has none.
    root = tmp_path / "root"
    d = root / "var/lib/extensions/foo.raw.v"
    d.mkdir(parents=True)
    (d / "foo_1.raw").write_text("")
    try:
        os.mknod(d / "foo_2.raw", stat.S_IFBLK | 0o600, os.makedev(7, 0))
    except PermissionError:
        pytest.skip("creating a block device node needs root")
    picked = pick(root, d, "foo", ".raw")
    assert picked is not None and picked.name.filename == "foo_2.raw"


def test_vdir_must_be_below_the_root(root: Path) -> None:
    other = Path("/elsewhere.raw.v")
    other.mkdir()
    with pytest.raises(ResolveError) as exc:
        pick(root, other, "elsewhere", ".raw")
    assert exc.value.errno == errno.ECHRNG


def test_unreadable_vdir(root: Path) -> None:
    with pytest.raises(ResolveError) as exc:
        pick(root, root / "var/lib/extensions/missing.raw.v", "missing", ".raw")
    assert exc.value.errno == errno.ENOENT
