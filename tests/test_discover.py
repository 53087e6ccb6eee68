# SPDX-License-Identifier: LGPL-2.1-or-later
"""Discovery: search directories, names, suffixes, shadowing, masking, links.

The roots are on a fake file system (pyfakefs) whose host has files of its own where a link that
left the root would find them; devices, FIFOs and names that are not UTF-8, which pyfakefs cannot
make, are on tmp_path."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Optional, Union

import pytest
from pyfakefs import helpers
from pyfakefs.fake_filesystem import FakeFilesystem

from sysextpy.arch import native_architecture
from sysextpy.discover import Discovery, discover, invalid_name_reason
from sysextpy.model import Candidate, ImageClass, ImageType, Skipped, Verdict
from sysextpy.osrelease import is_initrd_root
from sysextpy.view import LiveView

SYSEXT = ImageClass.SYSEXT
CONFEXT = ImageClass.CONFEXT

# A tree is described as {path inside the root: spec}. Specs:
#   "dir"           an empty directory
#   "file"          a regular file with some bytes
#   ("link", T)     a symlink to T
#   "null"          a character device 1:3 (needs root)
Spec = Union[str, tuple[str, str]]


def build(root: Path, tree: dict[str, Spec]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for rel, spec in tree.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if spec == "dir":
            path.mkdir()
        elif spec == "file":
            path.write_bytes(b"not really an image\n")
        elif spec == "null":
            if os.geteuid() != 0:
                pytest.skip("creating a character device inside the fake root needs root")
            os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(1, 3))
        elif isinstance(spec, tuple) and spec[0] == "link":
            path.symlink_to(spec[1])
        else:
            raise AssertionError(f"bad spec {spec!r}")
    return root


def scan(root: Path, image_class: ImageClass = SYSEXT) -> Discovery:
    view = LiveView(os.fspath(root), {})
    return discover(view, image_class, initrd=is_initrd_root(view))


def found(d: Discovery) -> dict[str, tuple[str, str]]:
    """name -> (type, path inside the root)."""
    return {c.name: (c.type.value, _inner(d, c.path)) for c in d.candidates}


_ROOTS: dict[int, Path] = {}


def _inner(d: Discovery, path: Path) -> str:
    root = _ROOTS[id(d)]
    return "/" + os.path.relpath(path, root)


@pytest.fixture
def base(fake_fs: FakeFilesystem) -> Path:
    """Where scan_tree() puts the root ("root" below it), on a fake file system whose host has
    everything the links of these tests point to, and an initrd-release."""
    for path in (
        "/etc/os-release",
        "/etc/initrd-release",
        "/etc/hostname",
        "/srv/images/gone.raw",
        "/missing",
    ):
        fake_fs.create_file(path)
    for path in ("/usr/share", "/srv/x", "/srv/versions/app-two", "/data/var/lib/extensions/x"):
        fake_fs.create_dir(path)
    fake_fs.create_dir("/srv/store/app.v/app_9")
    return Path("/srv")


def scan_tree(base: Path, tree: dict[str, Spec], image_class: ImageClass = SYSEXT) -> Discovery:
    root = build(base / "root", tree)
    d = scan(root, image_class)
    _ROOTS[id(d)] = root
    return d


def skipped_by_entry(d: Discovery) -> dict[str, Skipped]:
    root = _ROOTS[id(d)]
    return {"/" + os.path.relpath(s.entry, root): s for s in d.skipped}


# --------------------------------------------------------------------------------------------------
# Search directories per class, with and without /etc/initrd-release

SYSEXT_DIRS = ("/etc/extensions", "/run/extensions", "/var/lib/extensions")
SYSEXT_INITRD_DIRS = SYSEXT_DIRS + ("/.extra/sysext", "/.extra/global_sysext")
CONFEXT_DIRS = ("/run/confexts", "/var/lib/confexts", "/usr/local/lib/confexts", "/usr/lib/confexts")
CONFEXT_INITRD_DIRS = (
    "/run/confexts",
    "/var/lib/confexts",
    "/usr/local/lib/confexts",
    "/.extra/confext",
    "/.extra/global_confext",
)
EVERY_DIR = sorted(set(SYSEXT_INITRD_DIRS + CONFEXT_DIRS + CONFEXT_INITRD_DIRS))


@pytest.mark.parametrize(
    "image_class, initrd, searched",
    [
        (SYSEXT, False, SYSEXT_DIRS),
        (SYSEXT, True, SYSEXT_INITRD_DIRS),
        (CONFEXT, False, CONFEXT_DIRS),
        (CONFEXT, True, CONFEXT_INITRD_DIRS),
    ],
)
def test_search_directories(
    base: Path, image_class: ImageClass, initrd: bool, searched: tuple[str, ...]
) -> None:
    # One image in every directory either class could search, named after the directory.
    tree: dict[str, Spec] = {f"{d.lstrip('/')}/img{d.replace('/', '-')}": "dir" for d in EVERY_DIR}
    if initrd:
        tree["etc/initrd-release"] = "file"
    d = scan_tree(base, tree, image_class)
    assert d.search_dirs == searched
    assert d.missing_dirs == ()
    assert [c.search_dir for c in d.candidates] == list(searched)
    assert [c.name for c in d.candidates] == [f"img{s.replace('/', '-')}" for s in searched]
    assert d.skipped == ()
    assert d.warnings == ()


def test_initrd_release_as_link_inside_root_counts(base: Path) -> None:
    d = scan_tree(
        base,
        {"usr/lib/initrd-release": "file", "etc/initrd-release": ("link", "/usr/lib/initrd-release")},
    )
    assert d.search_dirs == SYSEXT_INITRD_DIRS


def test_missing_search_directories_are_recorded(base: Path) -> None:
    d = scan_tree(base, {"run/extensions/a": "dir"})
    assert d.missing_dirs == ("/etc/extensions", "/var/lib/extensions")
    assert [c.name for c in d.candidates] == ["a"]


# --------------------------------------------------------------------------------------------------
# Shadowing and masking


@pytest.mark.parametrize(
    "tree, winner, loser",
    [
        pytest.param(
            {"etc/extensions/foo": "dir", "var/lib/extensions/foo": "dir"},
            "/etc/extensions/foo",
            "/var/lib/extensions/foo",
            id="etc-beats-var",
        ),
        pytest.param(
            {"run/extensions/foo.raw": "file", "var/lib/extensions/foo": "dir"},
            "/run/extensions/foo.raw",
            "/var/lib/extensions/foo",
            id="raw-in-run-beats-dir-in-var",
        ),
        pytest.param(
            {"etc/extensions/foo.sysext.raw": "file", "run/extensions/foo.raw": "file"},
            "/etc/extensions/foo.sysext.raw",
            "/run/extensions/foo.raw",
            id="class-suffix-same-name",
        ),
        pytest.param(
            {"etc/extensions/foo": "dir", "var/lib/extensions/foo.v/foo_1": "dir"},
            "/etc/extensions/foo",
            "/var/lib/extensions/foo.v",
            id="plain-beats-versioned",
        ),
        pytest.param(
            {"run/confexts/foo": "dir", "usr/lib/confexts/foo": "dir"},
            "/run/confexts/foo",
            "/usr/lib/confexts/foo",
            id="confext-run-beats-usr-lib",
        ),
    ],
)
def test_shadowing_by_name(base: Path, tree: dict[str, Spec], winner: str, loser: str) -> None:
    image_class = CONFEXT if any("confexts" in p for p in tree) else SYSEXT
    d = scan_tree(base, tree, image_class)
    assert [c.name for c in d.candidates] == ["foo"]
    assert _inner(d, d.candidates[0].entry) == winner
    skipped = skipped_by_entry(d)
    assert list(skipped) == [loser]
    assert skipped[loser].name == "foo"
    assert skipped[loser].verdict is Verdict.IGNORED
    assert skipped[loser].reason == f"shadowed by {os.fspath(d.candidates[0].entry)!r}"


def test_empty_directory_masks_lower_images(base: Path) -> None:
    d = scan_tree(base, {"etc/extensions/foo": "dir", "var/lib/extensions/foo.raw": "file"})
    assert found(d) == {"foo": ("directory", "/etc/extensions/foo")}
    assert "shadowed by" in skipped_by_entry(d)["/var/lib/extensions/foo.raw"].reason


@pytest.mark.parametrize("link_name", ["foo", "foo.raw"])
def test_dev_null_link_does_not_mask(tmp_path: Path, link_name: str) -> None:
    d = scan_tree(
        tmp_path,
        {
            "dev/null": "null",
            f"etc/extensions/{link_name}": ("link", "/dev/null"),
            "var/lib/extensions/foo.raw": "file",
        },
    )
    assert found(d) == {"foo": ("raw", "/var/lib/extensions/foo.raw")}
    reason = skipped_by_entry(d)[f"/etc/extensions/{link_name}"].reason
    assert reason.startswith("character device, not an image")
    assert "does not mask" in reason


def test_dev_null_link_without_dev_null_in_root_is_dangling(base: Path) -> None:
    d = scan_tree(base, {"etc/extensions/foo": ("link", "/dev/null"), "var/lib/extensions/foo": "dir"})
    assert found(d) == {"foo": ("directory", "/var/lib/extensions/foo")}
    assert (
        skipped_by_entry(d)["/etc/extensions/foo"].reason
        == "dangling symlink to '/dev/null' (inside the root)"
    )


# --------------------------------------------------------------------------------------------------
# Entry names, suffixes and types


@pytest.mark.parametrize(
    "image_class, search_dir, entry, spec, name, image_type",
    [
        (SYSEXT, "var/lib/extensions", "foo.raw", "file", "foo", "raw"),
        (SYSEXT, "var/lib/extensions", "foo.sysext.raw", "file", "foo", "raw"),
        (SYSEXT, "var/lib/extensions", "foo.confext.raw", "file", "foo.confext", "raw"),
        (CONFEXT, "var/lib/confexts", "foo.confext.raw", "file", "foo", "raw"),
        (CONFEXT, "var/lib/confexts", "foo.sysext.raw", "file", "foo.sysext", "raw"),
        (SYSEXT, "var/lib/extensions", "foo", "dir", "foo", "directory"),
        (SYSEXT, "var/lib/extensions", "foo.sysext", "dir", "foo", "directory"),
        (SYSEXT, "var/lib/extensions", "foo.raw", "dir", "foo.raw", "directory"),
        (SYSEXT, "var/lib/extensions", "foo.mstack", "dir", "foo", "mstack"),
        (SYSEXT, "var/lib/extensions", ".hidden", "dir", ".hidden", "directory"),
        (SYSEXT, "var/lib/extensions", "foo-1.2_x+y", "dir", "foo-1.2_x+y", "directory"),
        (CONFEXT, "run/confexts", "foo.confext", "dir", "foo", "directory"),
        (SYSEXT, "var/lib/extensions", ".raw", "file", ".raw", "raw"),
    ],
)
def test_entry_names_and_suffixes(
    base: Path,
    image_class: ImageClass,
    search_dir: str,
    entry: str,
    spec: Spec,
    name: str,
    image_type: str,
) -> None:
    d = scan_tree(base, {f"{search_dir}/{entry}": spec}, image_class)
    assert found(d) == {name: (image_type, f"/{search_dir}/{entry}")}
    assert d.skipped == ()
    candidate = d.candidates[0]
    assert candidate.image_class is image_class
    assert _inner(d, candidate.entry) == f"/{search_dir}/{entry}"
    assert candidate.search_dir == f"/{search_dir}"
    assert candidate.mtime_usec > 0


@pytest.mark.parametrize(
    "entry, spec, reason",
    [
        (".#foo.raw", "file", "invalid image name '.#foo': name starts with '.#'"),
        (".#foo", "dir", "invalid image name '.#foo': name starts with '.#'"),
        ("foo\x01.raw", "file", "invalid image name 'foo\\x01': name contains control characters"),
        ("foo\nbar", "dir", "name contains control characters"),
        ("foo\x7f", "dir", "name contains control characters"),
        ("notes.txt", "file", "regular file without the '.raw' suffix"),
        ("foo.raw.bak", "file", "regular file without the '.raw' suffix"),
        (
            "gone.raw",
            ("link", "/srv/images/gone.raw"),
            "dangling symlink to '/srv/images/gone.raw' (inside the root)",
        ),
        ("gone", ("link", "../nowhere"), "dangling symlink to '../nowhere' (inside the root)"),
    ],
)
def test_entries_that_are_not_images(base: Path, entry: str, spec: Spec, reason: str) -> None:
    d = scan_tree(base, {f"var/lib/extensions/{entry}": spec, "var/lib/extensions/ok": "dir"})
    assert found(d) == {"ok": ("directory", "/var/lib/extensions/ok")}
    skipped = skipped_by_entry(d)
    assert list(skipped) == [f"/var/lib/extensions/{entry}"]
    s = skipped[f"/var/lib/extensions/{entry}"]
    assert reason in s.reason
    assert s.verdict is Verdict.IGNORED
    assert s.image_class is SYSEXT
    assert d.warnings == ()  # entries that are not images are no problem


def test_non_utf8_name_is_invalid(tmp_path: Path) -> None:
    root = build(tmp_path / "root", {"var/lib/extensions/ok": "dir"})
    os.mkdir(os.path.join(os.fsencode(root / "var/lib/extensions"), b"bad\xff"))
    d = scan(root)
    assert [c.name for c in d.candidates] == ["ok"]
    assert len(d.skipped) == 1
    assert "name is not valid UTF-8" in d.skipped[0].reason


def test_invalid_entry_does_not_claim_the_name(base: Path) -> None:
    d = scan_tree(
        base,
        {"etc/extensions/foo.raw": ("link", "/missing"), "var/lib/extensions/foo": "dir"},
    )
    assert found(d) == {"foo": ("directory", "/var/lib/extensions/foo")}


@pytest.mark.parametrize(
    "name, reason",
    [
        ("", "empty name or '.'/'..'"),
        (".", "empty name or '.'/'..'"),
        ("..", "empty name or '.'/'..'"),
        ("a/b", "name contains '/'"),
        ("x" * 255, None),
        ("x" * 256, "name longer than 255 bytes"),
        ("é" * 127, None),
        ("é" * 128, "name longer than 255 bytes"),
        ("tab\there", "name contains control characters"),
        (".#lock", "name starts with '.#'"),
        (".hidden", None),
        ("foo#bar", None),
        ("bad\udcff", "name is not valid UTF-8"),
    ],
)
def test_invalid_name_reason(name: str, reason: Optional[str]) -> None:
    got = invalid_name_reason(name)
    if reason is None:
        assert got is None
    else:
        assert got is not None and reason in got


def test_sysupdate_temporaries_are_ignored_silently(base: Path) -> None:
    d = scan_tree(
        base,
        {
            "var/lib/extensions/.sysupdate.foo.raw": "file",
            "var/lib/extensions/.sysupdate.bar": "dir",
            "var/lib/extensions/foo.raw": "file",
        },
    )
    assert found(d) == {"foo": ("raw", "/var/lib/extensions/foo.raw")}
    assert d.skipped == ()


def test_other_file_types_are_skipped(tmp_path: Path) -> None:
    root = build(tmp_path / "root", {"var/lib/extensions/ok": "dir"})
    os.mkfifo(root / "var/lib/extensions/pipe.raw")
    d = scan(root)
    assert [c.name for c in d.candidates] == ["ok"]
    assert [s.reason for s in d.skipped] == ["FIFO, not an image"]


# --------------------------------------------------------------------------------------------------
# .v/ directories


def _foreign_arch() -> str:
    return "arm64" if native_architecture() != "arm64" else "x86-64"


def test_versioned_directory_picks_the_newest_usable(base: Path) -> None:
    d = scan_tree(
        base,
        {
            "var/lib/extensions/editor.v/editor_1.0": "dir",
            "var/lib/extensions/editor.v/editor_1.2": "dir",
            f"var/lib/extensions/editor.v/editor_2.0_{_foreign_arch()}": "dir",
            "var/lib/extensions/editor.v/editor_3.0.raw": "file",  # wrong suffix for a plain .v
            "var/lib/extensions/editor.v/other_9.0": "dir",
        },
    )
    assert found(d) == {"editor": ("directory", "/var/lib/extensions/editor.v/editor_1.2")}
    (candidate,) = d.candidates
    assert candidate.version == "1.2"
    assert _inner(d, candidate.entry) == "/var/lib/extensions/editor.v"


@pytest.mark.parametrize(
    "vdir, entries, name, picked, image_type",
    [
        ("foo.raw.v", {"foo_1.raw": "file", "foo_2.raw": "file", "foo_3": "dir"}, "foo", "foo_2.raw", "raw"),
        (
            "foo.sysext.raw.v",
            {"foo_1.sysext.raw": "file", "foo_2.raw": "file"},
            "foo",
            "foo_1.sysext.raw",
            "raw",
        ),
        ("foo.v", {"foo_1": "dir", "foo_1.1+0": "dir"}, "foo", "foo_1", "directory"),
        (
            "foo.v",
            {"foo_1": "dir", f"foo_1_{native_architecture()}": "dir"},
            "foo",
            f"foo_1_{native_architecture()}",
            "directory",
        ),
    ],
)
def test_versioned_directory_suffixes_and_ranking(
    base: Path, vdir: str, entries: dict[str, Spec], name: str, picked: str, image_type: str
) -> None:
    tree: dict[str, Spec] = {f"var/lib/extensions/{vdir}/{e}": s for e, s in entries.items()}
    d = scan_tree(base, tree)
    assert found(d) == {name: (image_type, f"/var/lib/extensions/{vdir}/{picked}")}


def test_versioned_directory_with_nothing_usable_is_skipped(base: Path) -> None:
    d = scan_tree(
        base,
        {
            f"var/lib/extensions/tool.v/tool_1_{_foreign_arch()}": "dir",
            "var/lib/extensions/tool.v/tool_2.raw": "file",
            "var/lib/extensions/tool": "dir",
        },
    )
    # The skipped .v does not claim the name: the plain directory is the image.
    assert found(d) == {"tool": ("directory", "/var/lib/extensions/tool")}
    s = skipped_by_entry(d)["/var/lib/extensions/tool.v"]
    assert s.name == "tool"
    assert "no usable tool_VERSION entry" in s.reason


def test_versioned_directory_via_absolute_link_inside_root(base: Path) -> None:
    d = scan_tree(
        base,
        {
            "srv/store/app.v/app_1": "dir",
            "srv/store/app.v/app_2": ("link", "/srv/versions/app-two"),
            "srv/versions/app-two": "dir",
            "var/lib/extensions/app.v": ("link", "/srv/store/app.v"),
        },
    )
    assert found(d) == {"app": ("directory", "/srv/versions/app-two")}
    assert d.candidates[0].version == "2"


# --------------------------------------------------------------------------------------------------
# Links: dangling, re-rooted, escaping


@pytest.mark.parametrize(
    "target, tree, expected",
    [
        # /usr/share and /etc/os-release exist on every host; inside the root they must be looked up.
        ("/usr/share", {"usr/share": "dir"}, ("directory", "/usr/share")),
        ("/usr/share", {}, None),
        ("/etc/os-release", {"etc/os-release": "file"}, ("raw", "/etc/os-release")),
        ("/etc/os-release", {}, None),
        ("../../../../../../../../usr/share", {"usr/share": "dir"}, ("directory", "/usr/share")),
        ("../../../../../../../../usr/share", {}, None),
        ("/srv/x", {"srv/x": "dir"}, ("directory", "/srv/x")),
        ("/srv/hop", {"srv/hop": ("link", "/srv/x"), "srv/x": "dir"}, ("directory", "/srv/x")),
        ("/srv/hop", {"srv/hop": ("link", "../../../../etc/os-release")}, None),
    ],
)
def test_links_resolve_inside_the_root(
    base: Path, target: str, tree: dict[str, Spec], expected: Optional[tuple[str, str]]
) -> None:
    entry = "img.raw" if expected is None or expected[0] == "raw" or target.endswith("os-release") else "img"
    full_tree: dict[str, Spec] = {**tree, f"var/lib/extensions/{entry}": ("link", target)}
    d = scan_tree(base, full_tree)
    if expected is None:
        assert d.candidates == ()
        assert "dangling symlink" in skipped_by_entry(d)[f"/var/lib/extensions/{entry}"].reason
    else:
        assert found(d) == {"img": expected}
        root = _ROOTS[id(d)]
        assert Path(d.candidates[0].path).is_relative_to(root)


def test_symlink_loop_is_rejected_and_scanning_goes_on(base: Path) -> None:
    d = scan_tree(
        base,
        {
            "var/lib/extensions/loop": ("link", "/var/lib/extensions/loop"),
            "var/lib/extensions/ok": "dir",
        },
    )
    assert [c.name for c in d.candidates] == ["ok"]
    s = skipped_by_entry(d)["/var/lib/extensions/loop"]
    assert s.verdict is Verdict.REJECTED
    assert "cannot resolve inside the root" in s.reason
    assert d.warnings == (f"/var/lib/extensions/loop: {s.reason}",)


@pytest.mark.parametrize(
    "tree",
    [
        pytest.param({"dev/null": "null", "etc/extensions": ("link", "/dev/null")}, id="dev-null"),
        pytest.param(
            {"etc/hostname": "file", "etc/extensions": ("link", "/etc/hostname")}, id="regular-file"
        ),
        pytest.param({"etc/extensions": "file"}, id="file-itself"),
    ],
)
def test_search_dir_that_is_not_a_directory_is_rejected(
    request: pytest.FixtureRequest, tree: dict[str, Spec]
) -> None:
    # A device node needs a real file system; the rest runs on the fake one.
    place = request.getfixturevalue("tmp_path" if "null" in tree.values() else "base")
    d = scan_tree(place, {**tree, "var/lib/extensions/ok": "dir", "run/extensions/early": "dir"})
    assert [c.name for c in d.candidates] == ["early", "ok"]
    (s,) = d.skipped
    assert s.entry == "/etc/extensions"
    assert s.verdict is Verdict.REJECTED
    assert "search directory cannot" in s.reason
    assert "/etc/extensions" not in d.missing_dirs
    # Said as a warning, for the caller to log: discovery itself logs nothing.
    assert d.warnings == (f"/etc/extensions: {s.reason}",)


def test_unreadable_search_dir_is_rejected_and_scanning_goes_on(base: Path) -> None:
    root = build(base / "root", {"etc/extensions/hidden": "dir", "var/lib/extensions/ok": "dir"})
    os.chmod(root / "etc/extensions", 0o311)  # can be passed through, not listed
    helpers.set_uid(1000)  # pyfakefs checks permissions for users other than root
    try:
        d = scan(root)
    finally:
        helpers.reset_ids()
    assert [c.name for c in d.candidates] == ["ok"]
    (s,) = d.skipped
    assert (s.entry, s.verdict) == ("/etc/extensions", Verdict.REJECTED)
    assert s.reason == "search directory cannot be read: Permission denied"
    assert d.warnings == ("/etc/extensions: search directory cannot be read: Permission denied",)


def test_search_dir_link_to_missing_dev_null_counts_as_missing(base: Path) -> None:
    d = scan_tree(base, {"etc/extensions": ("link", "/dev/null"), "var/lib/extensions/ok": "dir"})
    assert [c.name for c in d.candidates] == ["ok"]
    assert "/etc/extensions" in d.missing_dirs
    assert d.skipped == ()


def test_search_dir_reached_through_links_inside_root(base: Path) -> None:
    d = scan_tree(
        base,
        {
            "var": ("link", "/data/var"),
            "data/var/lib/extensions/foo": "dir",
        },
    )
    assert found(d) == {"foo": ("directory", "/data/var/lib/extensions/foo")}
    assert _inner(d, d.candidates[0].entry) == "/var/lib/extensions/foo"


def test_candidate_fields(base: Path) -> None:
    d = scan_tree(base, {"run/extensions/foo.raw": "file"})
    root = _ROOTS[id(d)]
    (c,) = d.candidates
    assert c == Candidate(
        name="foo",
        image_class=SYSEXT,
        type=ImageType.RAW,
        path=os.fspath(root / "run/extensions/foo.raw"),
        entry=os.fspath(root / "run/extensions/foo.raw"),
        search_dir="/run/extensions",
        mtime_usec=os.stat(root / "run/extensions/foo.raw").st_mtime_ns // 1000,
        crtime_usec=0,
        version=None,
    )


# --------------------------------------------------------------------------------------------------
# Deferred: in the initrd, a link onto a file system the initrd does not mount


class InitrdView(LiveView):
    """A live view in a process that runs in an initrd: the one fact that a test cannot make true of
    this machine without touching its /etc."""

    def in_initrd(self) -> bool:
        return True


def scan_in(root: Path, view: LiveView) -> dict[str, Skipped]:
    d = discover(view, SYSEXT, initrd=False)
    assert not d.candidates
    return {"/" + os.path.relpath(s.entry, root): s for s in d.skipped}


ESP_LINK = {"var/lib/extensions/a.raw": ("link", "/efi/EFI/extensions/a.raw")}


@pytest.mark.parametrize(
    ("tree", "fstab", "initrd", "owner"),
    [
        # The ESP and XBOOTLDR, whether or not their mount point exists, however the link is spelt.
        ({**ESP_LINK, "efi": "dir"}, "", True, "/efi"),
        (ESP_LINK, "", True, "/efi"),
        ({"var/lib/extensions/a.raw": ("link", "../../../boot/ext/a.raw")}, "", True, "/boot"),
        # An fstab mount point: the deepest one that holds the path.
        (
            {"var/lib/extensions/a.raw": ("link", "/srv/ext/a/a.raw"), "srv/ext": "dir"},
            "LABEL=srv /srv ext4 defaults 0 2\nLABEL=ext /srv/ext ext4 x-systemd.automount 0 2\n",
            True,
            "/srv/ext",
        ),
        # Through a link that leads onto the mount point.
        (
            {"var/lib/extensions/a.raw": ("link", "/images/a.raw"), "images": ("link", "/srv/ext")},
            "LABEL=ext /srv/ext ext4 defaults 0 2\n",
            True,
            "/srv/ext",
        ),
        # A dangling link anywhere else, or out of the initrd, stays one.
        ({"var/lib/extensions/a.raw": ("link", "/srv/gone/a.raw")}, "", True, None),
        ({"var/lib/extensions/a.raw": ("link", "/efix/a.raw")}, "", True, None),
        ({"var/lib/extensions/a.raw": ("link", "/opt/a.raw")}, "UUID=r / ext4 defaults 0 1\n", True, None),
        (ESP_LINK, "", False, None),
    ],
)
def test_deferred_in_the_initrd(
    tree: dict[str, Spec], fstab: str, initrd: bool, owner: Optional[str], tmp_path: Path
) -> None:
    root = build(tmp_path / "root", tree)
    if fstab:
        (root / "etc").mkdir(exist_ok=True)
        (root / "etc/fstab").write_text(fstab)
    view = (InitrdView if initrd else LiveView)(os.fspath(root), {})
    skipped = scan_in(root, view)["/var/lib/extensions/a.raw"]
    if owner is None:
        assert skipped.verdict is Verdict.IGNORED
        assert skipped.reason.startswith("dangling symlink to ")
    else:
        assert skipped.verdict is Verdict.DEFERRED
        assert f"lies on {owner}, which the initrd does not mount" in skipped.reason
        assert str(root) not in skipped.reason  # paths inside the root, as the real root sees them


def test_a_mounted_file_system_makes_no_deferral(mount_tmp_path: Path) -> None:
    """The ESP mounted in the initrd (an fstab entry with x-initrd.mount): a file missing on it is a
    dangling link, not something the real root will find."""
    from sysextpy import mountapi

    root = build(mount_tmp_path / "root", {**ESP_LINK, "efi": "dir"})
    mountapi.mount("tmpfs", os.fspath(root / "efi"), "tmpfs", 0, "mode=0755")
    try:
        skipped = scan_in(root, InitrdView(os.fspath(root), {}))["/var/lib/extensions/a.raw"]
    finally:
        mountapi.umount2(os.fspath(root / "efi"), mountapi.MNT_DETACH)
    assert skipped.verdict is Verdict.IGNORED and skipped.reason.startswith("dangling symlink")


def test_deferral_is_observed_only_where_it_decides(tmp_path: Path) -> None:
    """A recording view notes whether the process runs in an initrd only for a link onto an
    unmounted mount point: an ordinary dangling link must not make the real root's replay differ."""
    from sysextpy.recording import RecordingView

    root = build(tmp_path / "root", {"var/lib/extensions/a.raw": ("link", "/srv/gone/a.raw")})
    view = RecordingView(os.fspath(root), {})
    discover(view, SYSEXT, initrd=False)
    assert {o[0] for o in view.observations} & {"initrd", "mnt"} == set()

    (root / "var/lib/extensions/b.raw").symlink_to("/efi/b.raw")
    view = RecordingView(os.fspath(root), {})
    discover(view, SYSEXT, initrd=False)
    kinds = [o[0] for o in view.observations]
    assert "mnt" not in kinds  # the mount point does not exist: nothing to ask
    assert kinds.count("initrd") == 1
    assert [o for o in view.observations if o[0] == "initrd"] == [["initrd", False]]  # this machine
