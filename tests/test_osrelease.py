# SPDX-License-Identifier: LGPL-2.1-or-later
from __future__ import annotations

import errno
import os
import socket
import tempfile
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Callable, Optional

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pyfakefs.fake_filesystem import FakeFilesystem

from sysextpy.discover import discover
from sysextpy.errors import ImageError, SysextError
from sysextpy.model import ImageClass, Verdict
from sysextpy.osrelease import (
    RELEASE_LIMIT,
    find_extension_release,
    image_base_name,
    image_has_os_release,
    image_name_is_valid,
    is_initrd_root,
    load_host_release,
    parse_os_release,
    parse_os_release_verbose,
)
from sysextpy.plan import host_info, judge
from sysextpy.view import FileTooLarge, LiveView, NotRegularFile, read_text

# --------------------------------------------------------------------------------------------------
# parse_os_release


@pytest.mark.parametrize(
    "text, expected",
    [
        pytest.param("", {}, id="empty"),
        pytest.param("ID=debian\n", {"ID": "debian"}, id="plain"),
        pytest.param("ID=debian", {"ID": "debian"}, id="no-final-newline"),
        pytest.param('NAME="Debian GNU/Linux"\n', {"NAME": "Debian GNU/Linux"}, id="double-quoted"),
        pytest.param("NAME='it''s'\n", {"NAME": "its"}, id="adjacent-single-quotes"),
        pytest.param("A='$HOME \\n \"x\"'\n", {"A": '$HOME \\n "x"'}, id="single-quotes-literal"),
        pytest.param('A="a\\"b\\\\c\\$d\\`e"\n', {"A": 'a"b\\c$d`e'}, id="double-quote-escapes"),
        pytest.param('A="a\\nb\\x"\n', {"A": "a\\nb\\x"}, id="double-quote-other-backslash-kept"),
        pytest.param("A=a\\ b\\$c\n", {"A": "a b$c"}, id="unquoted-escapes"),
        pytest.param("A=one\\\ntwo\n", {"A": "onetwo"}, id="unquoted-continuation"),
        pytest.param('A="one\\\ntwo"\n', {"A": "onetwo"}, id="quoted-continuation"),
        pytest.param('A="one\ntwo"\nB=1\n', {"A": "one\ntwo", "B": "1"}, id="quoted-newline-kept"),
        pytest.param("A=pre'mid dle'post\n", {"A": "premid dlepost"}, id="mixed-quoting"),
        pytest.param("  A  =   spaced  out   \n", {"A": "spaced  out"}, id="whitespace-trimmed"),
        pytest.param("A=\t\n", {"A": ""}, id="empty-value"),
        pytest.param("A=' kept '  \n", {"A": " kept "}, id="quoted-whitespace-kept"),
        pytest.param("A=x\\ \n", {"A": "x "}, id="escaped-trailing-space-kept"),
        pytest.param("A=x # not a comment\n", {"A": "x # not a comment"}, id="hash-inside-value"),
        pytest.param("# ID=fedora\nID=debian\n", {"ID": "debian"}, id="hash-comment"),
        pytest.param("  ; ID=fedora\nID=debian\n", {"ID": "debian"}, id="semicolon-comment"),
        pytest.param(
            "# comment \\\nID=fedora\nVERSION_ID=1\n", {"VERSION_ID": "1"}, id="comment-continuation"
        ),
        pytest.param("\n\n  \n\t\nID=x\n\n", {"ID": "x"}, id="blank-lines"),
        pytest.param("ID=debian\r\nVERSION_ID=12\r\n", {"ID": "debian", "VERSION_ID": "12"}, id="crlf"),
        pytest.param('A="x"\r\n', {"A": "x"}, id="crlf-after-quote"),
        pytest.param("ID=fedora\nID=debian\n", {"ID": "debian"}, id="last-duplicate-wins"),
        pytest.param("A=1=2\n", {"A": "1=2"}, id="equals-in-value"),
        pytest.param("garbage\nID=x\n", {"ID": "x"}, id="line-without-equals"),
        pytest.param("9A=1\nA-B=2\nA B=3\n=4\nOK_1=5\n", {"OK_1": "5"}, id="invalid-keys"),
        pytest.param("_x=1\n", {"_x": "1"}, id="underscore-key"),
        pytest.param('A="never closed\nB=2\n', {"A": "never closed\nB=2\n"}, id="unterminated-double"),
        pytest.param("A='never closed", {"A": "never closed"}, id="unterminated-single"),
        pytest.param("A=x\\", {"A": "x"}, id="dangling-backslash"),
        pytest.param("A=\u00e9t\u00e9\n", {"A": "\u00e9t\u00e9"}, id="unicode"),
    ],
)
def test_parse_os_release(text: str, expected: dict[str, str]) -> None:
    assert parse_os_release(text) == expected


@pytest.mark.parametrize(
    "text, fragments",
    [
        ("ID=x\n", []),
        ("# just a comment\n\n", []),
        ("garbage here\nID=x\n", ["line 1", "'garbage here'", "not a KEY=value"]),
        ("ID=x\n9X=1\n", ["line 2", "'9X'", "not a valid name"]),
        ('A="a\nb"\nbad\n', ["line 3", "'bad'"]),
        ("A=one\\\ntwo\nbad\n", ["line 3"]),
        ('A="open\n', ["line 1", "unterminated quote"]),
        ("A B=1\n", ["'A B'"]),
    ],
)
def test_parse_os_release_warnings(text: str, fragments: list[str]) -> None:
    _, warnings = parse_os_release_verbose(text)
    joined = "\n".join(warnings)
    if not fragments:
        assert warnings == []
    for fragment in fragments:
        assert fragment in joined


@settings(max_examples=300)
@given(st.text(alphabet=st.sampled_from("AZ_=09'\"\\#; \t\r\nxé$`"), max_size=80) | st.text(max_size=80))
def test_parse_os_release_never_raises(text: str) -> None:
    fields, warnings = parse_os_release_verbose(text)
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in fields.items())
    assert all(isinstance(w, str) for w in warnings)


# --------------------------------------------------------------------------------------------------
# Small files through a view: view.read() (typed errors) and view.read_text() (SysextError)

HOST = LiveView("/", {})


def _in_thread(func: Callable[[], object], timeout: float = 5.0) -> Optional[BaseException]:
    """Run func in a daemon thread; fail if it blocks. Returns the exception it raised, if any."""
    outcome: list[Optional[BaseException]] = []

    def target() -> None:
        try:
            func()
        except BaseException as e:  # handed back to the test
            outcome.append(e)
        else:
            outcome.append(None)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), "reading blocked"
    return outcome[0]


def test_read_regular_file(fake_fs: FakeFilesystem) -> None:
    fake_fs.create_file("/f", contents="ID=x\n")
    assert read_text(HOST, "/f") == "ID=x\n"
    assert HOST.read("/f", 100) == b"ID=x\n"


def test_read_replaces_invalid_utf8(fake_fs: FakeFilesystem) -> None:
    fake_fs.create_file("/f", contents=b"A=\xff\xfe\n")
    assert read_text(HOST, "/f") == "A=\ufffd\ufffd\n"


def test_read_follows_symlink_to_regular_file(fake_fs: FakeFilesystem) -> None:
    fake_fs.create_file("/d/real", contents="x")
    os.symlink("real", "/d/link")
    assert read_text(HOST, "/d/link") == "x"


# FIFOs, sockets and devices cannot be made in pyfakefs: these are real files.


def test_read_refuses_fifo_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    error = _in_thread(lambda: read_text(HOST, str(fifo)))
    assert isinstance(error, SysextError)
    assert "it is a FIFO, not a regular file" in str(error) and repr(str(fifo)) in str(error)
    typed = _in_thread(lambda: HOST.read(str(fifo), 100))
    assert isinstance(typed, NotRegularFile) and typed.kind == "a FIFO"


def test_read_refuses_fifo_behind_symlink(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "link").symlink_to("fifo")
    error = _in_thread(lambda: read_text(HOST, str(tmp_path / "link")))
    assert isinstance(error, SysextError) and "FIFO" in str(error)


def test_read_refuses_directory(fake_fs: FakeFilesystem) -> None:
    fake_fs.create_dir("/d")
    with pytest.raises(SysextError, match="'/d': it is a directory, not a regular file"):
        read_text(HOST, "/d")
    with pytest.raises(NotRegularFile):
        HOST.read("/d", 100)


def test_read_refuses_character_device() -> None:
    with pytest.raises(SysextError, match="character device"):
        read_text(HOST, "/dev/null")


@pytest.fixture
def short_dir() -> Iterator[Path]:
    # AF_UNIX paths are limited to ~108 bytes; tmp_path can be longer than that.
    with tempfile.TemporaryDirectory(prefix="sx") as d:
        yield Path(d)


def test_read_refuses_socket(short_dir: Path) -> None:
    path = short_dir / "s"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(path))
        error = _in_thread(lambda: read_text(HOST, str(path)))
    finally:
        sock.close()
    assert isinstance(error, SysextError) and "socket" in str(error)


def test_read_missing_file(fake_fs: FakeFilesystem) -> None:
    with pytest.raises(SysextError, match="Failed to read '/nope': No such file"):
        read_text(HOST, "/nope")
    with pytest.raises(FileNotFoundError):
        HOST.read("/nope", 100)


@pytest.mark.parametrize("size, ok", [(100, True), (101, False), (0, True)])
def test_read_size_limit(fake_fs: FakeFilesystem, size: int, ok: bool) -> None:
    fake_fs.create_file("/f", contents=b"x" * size)
    if ok:
        assert len(read_text(HOST, "/f", limit=100)) == size
        return
    with pytest.raises(SysextError, match="101 bytes, more than the limit of 100"):
        read_text(HOST, "/f", limit=100)
    with pytest.raises(FileTooLarge) as info:
        HOST.read("/f", 100)
    assert info.value.size == 101


def test_read_default_limit_is_64k(fake_fs: FakeFilesystem) -> None:
    fake_fs.create_file("/f", contents=b"x" * (64 * 1024 + 1))
    with pytest.raises(SysextError, match="more than the limit"):
        read_text(HOST, "/f")


# --------------------------------------------------------------------------------------------------
# Host data

ROOT = "/srv/root"


def view_of(root: Path, env: Optional[Mapping[str, str]] = None) -> LiveView:
    return LiveView(os.fspath(root), env or {})


@pytest.fixture
def root(fake_fs: FakeFilesystem) -> Path:
    """An empty OS tree at ROOT on a fake file system whose own host files say ID=host: a
    resolution that left the root would read them."""
    fake_fs.create_file("/etc/os-release", contents="ID=host\n")
    fake_fs.create_file("/usr/lib/os-release", contents="ID=host\n")
    fake_fs.create_file("/etc/initrd-release", contents="")
    fake_fs.create_file("/usr/lib/initrd-release", contents="")
    root = Path(ROOT)  # made while pyfakefs is active: module-level paths are real ones
    fake_fs.create_dir(root / "etc")
    fake_fs.create_dir(root / "usr/lib")
    return root


def test_host_release_prefers_etc(root: Path) -> None:
    (root / "etc/os-release").write_text("ID=etc\nVERSION_ID=1\n")
    (root / "usr/lib/os-release").write_text("ID=usr\n")
    release = load_host_release(view_of(root))
    assert (release.id, release.version_id, release.source) == ("etc", "1", "/etc/os-release")


def test_host_release_falls_back_to_usr_lib(root: Path) -> None:
    (root / "usr/lib/os-release").write_text(
        'ID=debian\nID_LIKE="ubuntu  mint"\nVERSION_ID="12"\nSYSEXT_LEVEL=1.2\nCONFEXT_LEVEL=3\n'
    )
    release = load_host_release(view_of(root))
    assert release.id == "debian"
    assert release.id_like == ("ubuntu", "mint")
    assert release.version_id == "12"
    assert release.level(ImageClass.SYSEXT) == "1.2"
    assert release.level(ImageClass.CONFEXT) == "3"
    assert release.source == "/usr/lib/os-release"


def test_host_release_missing(root: Path) -> None:
    with pytest.raises(SysextError, match="Failed to acquire 'os-release' data") as info:
        load_host_release(view_of(root))
    assert "'/etc/os-release' or '/usr/lib/os-release'" in str(info.value)
    assert repr(str(root)) in str(info.value)


def test_host_release_env_override_is_resolved_in_root(root: Path) -> None:
    (root / "etc/os-release").write_text("ID=etc\n")
    (root / "srv").mkdir()
    (root / "srv/my-release").write_text("ID=custom\n")
    release = load_host_release(view_of(root, {"SYSTEMD_OS_RELEASE": "/srv/my-release"}))
    assert release.id == "custom"
    assert release.source == "/srv/my-release"


def test_host_release_env_override_has_no_fallback(root: Path) -> None:
    (root / "etc/os-release").write_text("ID=etc\n")
    with pytest.raises(SysextError, match="Failed to acquire 'os-release' data.*'/nope'"):
        load_host_release(view_of(root, {"SYSTEMD_OS_RELEASE": "/nope"}))


def test_host_release_env_override_cannot_escape_root(root: Path) -> None:
    outside = root.parent / "outside-release"
    outside.write_text("ID=outside\n")
    with pytest.raises(SysextError, match="Failed to acquire"):
        load_host_release(view_of(root, {"SYSTEMD_OS_RELEASE": str(outside)}))


def test_host_release_absolute_symlink_is_rerooted(root: Path) -> None:
    # The fake host's /usr/lib/os-release says ID=host: it must not be what is read.
    (root / "usr/lib/os-release").write_text("ID=inside\n")
    (root / "etc/os-release").symlink_to("/usr/lib/os-release")
    release = load_host_release(view_of(root))
    assert release.id == "inside"
    assert release.source == "/usr/lib/os-release"


def test_host_release_dangling_symlink_falls_back(root: Path) -> None:
    outside = root.parent / "outside"
    outside.write_text("ID=outside\n")
    (root / "etc/os-release").symlink_to(outside)  # re-rooted, so it dangles inside root
    (root / "usr/lib/os-release").write_text("ID=inside\n")
    assert load_host_release(view_of(root)).id == "inside"


@pytest.mark.parametrize("text", ["VERSION_ID=1\n", "ID=\n", "ID=''\n", "# ID=x\n"])
def test_host_release_needs_id(root: Path, text: str) -> None:
    (root / "etc/os-release").write_text(text)
    with pytest.raises(SysextError, match="'ID' field not found or empty in '/etc/os-release'"):
        load_host_release(view_of(root))


def test_host_release_fifo_is_an_error_not_a_hang(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    os.mkfifo(tmp_path / "etc/os-release")
    error = _in_thread(lambda: load_host_release(view_of(tmp_path)))
    assert isinstance(error, SysextError)
    assert "Failed to acquire 'os-release' data" in str(error) and "FIFO" in str(error)


def test_is_initrd_root(root: Path) -> None:
    assert not is_initrd_root(view_of(root))  # the fake host's /etc/initrd-release does not count
    (root / "usr/lib/initrd-release").write_text("")
    (root / "etc/initrd-release").symlink_to("/usr/lib/initrd-release")
    assert is_initrd_root(view_of(root))


def test_is_initrd_root_ignores_host_target(root: Path) -> None:
    outside = root.parent / "host-initrd-release"
    outside.write_text("")
    (root / "etc/initrd-release").symlink_to(outside)
    assert not is_initrd_root(view_of(root))


def test_image_has_os_release(fake_fs: FakeFilesystem) -> None:
    fake_fs.create_file("/usr/lib/os-release", contents="ID=host\n")  # the fake host's, not the image's
    image = Path("/img")
    (image / "usr/lib").mkdir(parents=True)
    assert not image_has_os_release(view_of(image))
    (image / "etc").mkdir()
    (image / "etc/os-release").write_text("ID=x\n")
    (image / "usr/lib/os-release").symlink_to("/etc/os-release")
    assert image_has_os_release(view_of(image))


# --------------------------------------------------------------------------------------------------
# extension-release lookup


@pytest.mark.parametrize(
    "name, base",
    [
        ("foo", "foo"),
        ("foo.raw", "foo"),
        ("foo.sysext.raw", "foo"),
        ("foo.confext.raw", "foo"),
        ("foo_1.2", "foo"),
        ("foo+3-1", "foo"),
        ("foo_1+2.raw", "foo"),
        ("foo-bar_x", "foo-bar"),
        ("_foo", None),
        ("+x", None),
    ],
)
def test_image_base_name(name: str, base: Optional[str]) -> None:
    assert image_base_name(name) == base


@pytest.mark.parametrize(
    "name, valid",
    [("foo", True), ("", False), (".", False), ("..", False), ("a/b", False), (".#foo", False),
     ("a\x01b", False), ("x" * 255, True), ("x" * 256, False), (".hidden", True)],
)  # fmt: skip
def test_image_name_is_valid(name: str, valid: bool) -> None:
    assert image_name_is_valid(name) is valid


STRICT = "user.extension-release.strict"
IMAGE = "/img"


@pytest.fixture
def image(fake_fs: FakeFilesystem) -> Path:
    """An image tree at IMAGE on a fake file system, whose host has release files of its own."""
    for cls in ImageClass:
        fake_fs.create_file(f"/{cls.release_dir}/extension-release.foo", contents="ID=host\n")
    fake_fs.create_dir(IMAGE)
    return Path(IMAGE)


def make_release(
    image: Path,
    image_class: ImageClass,
    file_name: str,
    text: str = "ID=_any\n",
    strict: Optional[bytes] = None,
) -> Path:
    """A release file in the image; `strict`: its user.extension-release.strict xattr."""
    path = image / image_class.release_dir / file_name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    if strict is not None:
        os.setxattr(path, STRICT, strict)
    return path


@pytest.mark.parametrize("image_class", [ImageClass.SYSEXT, ImageClass.CONFEXT])
def test_primary_release_file(image: Path, image_class: ImageClass) -> None:
    path = make_release(image, image_class, "extension-release.foo", "ID=debian\nVERSION_ID=12\n")
    make_release(image, image_class, "extension-release.other")
    lookup = find_extension_release(view_of(image), "foo", image_class)
    assert lookup.found and lookup.path == str(path)
    assert lookup.as_dict() == {"ID": "debian", "VERSION_ID": "12"}
    assert lookup.fields == (("ID", "debian"), ("VERSION_ID", "12"))
    assert image_class.release_dir in lookup.reason


def test_release_file_of_the_other_class_is_not_used(image: Path) -> None:
    make_release(image, ImageClass.CONFEXT, "extension-release.foo")
    lookup = find_extension_release(view_of(image), "foo", ImageClass.SYSEXT)
    assert not lookup.found
    assert "no usr/lib/extension-release.d/ directory" in lookup.reason


def test_primary_absolute_symlink_is_rerooted(image: Path, fake_fs: FakeFilesystem) -> None:
    fake_fs.create_file("/usr/lib/extension-release.d/real", contents="ID=host\n")
    make_release(image, ImageClass.SYSEXT, "real", "ID=inside\n")
    link = image / "usr/lib/extension-release.d/extension-release.foo"
    link.symlink_to("/usr/lib/extension-release.d/real")
    lookup = find_extension_release(view_of(image), "foo", ImageClass.SYSEXT)
    assert lookup.as_dict() == {"ID": "inside"}
    assert lookup.path == str(image / "usr/lib/extension-release.d/real")


def test_parse_warnings_are_reported(image: Path) -> None:
    make_release(image, ImageClass.SYSEXT, "extension-release.foo", "ID=_any\nnonsense\n")
    lookup = find_extension_release(view_of(image), "foo", ImageClass.SYSEXT)
    assert lookup.found and len(lookup.warnings) == 1 and "nonsense" in lookup.warnings[0]


@pytest.mark.parametrize("name", ["foo_1.2", "foo+3", "foo_1.2+3.sysext.raw"])
def test_fallback_accepts_base_name(image: Path, name: str) -> None:
    path = make_release(image, ImageClass.SYSEXT, "extension-release.foo")
    lookup = find_extension_release(view_of(image), name, ImageClass.SYSEXT)
    assert lookup.path == str(path)
    assert "base name 'foo'" in lookup.reason


def test_fallback_rejects_other_name_without_xattr(image: Path) -> None:
    make_release(image, ImageClass.SYSEXT, "extension-release.foo-1.2")
    lookup = find_extension_release(view_of(image), "foo", ImageClass.SYSEXT)
    assert not lookup.found and not lookup.ambiguous
    assert lookup.reason == (
        "extension-release.foo missing; found extension-release.foo-1.2 "
        "(set user.extension-release.strict=0 on it to accept it)"
    )


@pytest.mark.parametrize(
    "value, accepted, fragment",
    [
        (b"0", True, "user.extension-release.strict=0"),
        (b"false", True, "user.extension-release.strict=false"),
        (b"no\0", True, "user.extension-release.strict=no"),
        (b"1", False, "is true"),
        (b"yes", False, "is true"),
        (b"maybe", False, "'maybe' is not a boolean"),
        (b"", False, "'' is not a boolean"),
    ],
)
def test_fallback_strict_xattr(image: Path, value: bytes, accepted: bool, fragment: str) -> None:
    path = make_release(image, ImageClass.CONFEXT, "extension-release.renamed", strict=value)
    lookup = find_extension_release(view_of(image), "foo", ImageClass.CONFEXT)
    assert lookup.found is accepted
    assert lookup.path == (str(path) if accepted else None)
    assert fragment in lookup.reason


class UnreadableXattrs(LiveView):
    """A view whose file system refuses to give extended attributes."""

    def getxattr(self, path: str, name: str) -> Optional[bytes]:
        raise OSError(errno.EACCES, "Permission denied", path)


def test_fallback_xattr_read_error_rejects(image: Path) -> None:
    make_release(image, ImageClass.SYSEXT, "extension-release.renamed", strict=b"0")
    lookup = find_extension_release(UnreadableXattrs(str(image), {}), "foo", ImageClass.SYSEXT)
    assert not lookup.found
    assert "cannot read its user.extension-release.strict xattr: Permission denied" in lookup.reason


def test_fallback_with_real_xattr(tmp_path: Path) -> None:
    # The kernel's xattrs, not pyfakefs's: LiveView.getxattr against a real file system.
    path = make_release(tmp_path, ImageClass.SYSEXT, "extension-release.renamed")
    try:
        os.setxattr(path, STRICT, b"0")
    except OSError as e:
        pytest.skip(f"the file system of {tmp_path} does not take user xattrs ({e.strerror})")
    lookup = find_extension_release(view_of(tmp_path), "foo", ImageClass.SYSEXT)
    assert lookup.path == str(path)
    os.setxattr(path, STRICT, b"1")
    assert not find_extension_release(view_of(tmp_path), "foo", ImageClass.SYSEXT).found


def test_fallback_ambiguous(image: Path) -> None:
    make_release(image, ImageClass.SYSEXT, "extension-release.a", strict=b"0")
    make_release(image, ImageClass.SYSEXT, "extension-release.b", strict=b"0")
    lookup = find_extension_release(view_of(image), "foo", ImageClass.SYSEXT)
    assert not lookup.found and lookup.ambiguous
    assert "extension-release.a" in lookup.reason and "extension-release.b" in lookup.reason
    assert "keep only one" in lookup.reason


def test_fallback_base_name_plus_xattr_is_ambiguous(image: Path) -> None:
    make_release(image, ImageClass.SYSEXT, "extension-release.foo")
    make_release(image, ImageClass.SYSEXT, "extension-release.other", strict=b"0")
    lookup = find_extension_release(view_of(image), "foo_2", ImageClass.SYSEXT)
    assert lookup.ambiguous


def test_only_one_accepted_among_rejected(image: Path) -> None:
    make_release(image, ImageClass.SYSEXT, "extension-release.a")
    path = make_release(image, ImageClass.SYSEXT, "extension-release.b", "ID=b\n", strict=b"off")
    lookup = find_extension_release(view_of(image), "foo", ImageClass.SYSEXT)
    assert lookup.path == str(path) and lookup.as_dict() == {"ID": "b"}


def test_relaxed_accepts_any_single_file(image: Path) -> None:
    path = make_release(image, ImageClass.SYSEXT, "extension-release.whatever")
    lookup = find_extension_release(view_of(image), "foo", ImageClass.SYSEXT, strict=False)
    assert lookup.path == str(path) and "relaxed" in lookup.reason
    make_release(image, ImageClass.SYSEXT, "extension-release.second")
    relaxed = find_extension_release(view_of(image), "foo", ImageClass.SYSEXT, strict=False)
    assert relaxed.ambiguous


def test_fallback_skips_symlinks_and_invalid_names(image: Path) -> None:
    target = make_release(image, ImageClass.SYSEXT, "target-file", strict=b"0")
    directory = target.parent
    (directory / "extension-release.link").symlink_to("target-file")  # its target's xattr says 0
    (directory / "extension-release..#tmp").write_text("ID=x\n")
    (directory / "extension-release.").write_text("ID=x\n")
    (directory / "extension-release.subdir").mkdir()
    os.setxattr(directory / "extension-release.subdir", STRICT, b"0")
    lookup = find_extension_release(view_of(image), "foo", ImageClass.SYSEXT)
    assert not lookup.found
    assert "extension-release.link (not a regular file)" in lookup.reason
    assert "extension-release.subdir (not a regular file)" in lookup.reason
    assert ".#tmp" not in lookup.reason


def test_empty_release_dir(image: Path) -> None:
    (image / "usr/lib/extension-release.d").mkdir(parents=True)
    lookup = find_extension_release(view_of(image), "foo", ImageClass.SYSEXT)
    assert not lookup.found
    assert lookup.reason == (
        "extension-release.foo missing and no other extension-release.* file in usr/lib/extension-release.d/"
    )


def test_invalid_image_name(image: Path) -> None:
    lookup = find_extension_release(view_of(image), "../x", ImageClass.SYSEXT)
    assert not lookup.found and "not a valid image name" in lookup.reason


def test_release_file_fifo_raises_instead_of_blocking(tmp_path: Path) -> None:
    directory = tmp_path / "usr/lib/extension-release.d"
    directory.mkdir(parents=True)
    os.mkfifo(directory / "extension-release.foo")
    error = _in_thread(lambda: find_extension_release(view_of(tmp_path), "foo", ImageClass.SYSEXT))
    assert isinstance(error, ImageError)
    assert str(error) == (
        "release file '/usr/lib/extension-release.d/extension-release.foo' is a FIFO, not a regular file"
    )


def test_release_file_too_large(image: Path) -> None:
    make_release(image, ImageClass.SYSEXT, "extension-release.foo", "#" * RELEASE_LIMIT + "\nID=x\n")
    with pytest.raises(ImageError, match=f"has {RELEASE_LIMIT + 6} bytes, more than the limit"):
        find_extension_release(view_of(image), "foo", ImageClass.SYSEXT)


def test_release_file_symlink_loop_is_an_image_error(image: Path) -> None:
    directory = image / "usr/lib/extension-release.d"
    directory.mkdir(parents=True)
    (directory / "extension-release.foo").symlink_to("extension-release.foo")
    with pytest.raises(ImageError, match="Cannot read the release data of image 'foo'"):
        find_extension_release(view_of(image), "foo", ImageClass.SYSEXT)


# A release file is refused whole when any byte of it is NUL or not UTF-8, like upstream does: what
# comes before the bad byte is not read as a partial file.
BAD_BYTES = [
    pytest.param(b"ID=debian\nVERSION_ID=12\0\n", "holds a NUL byte at offset 23", id="nul"),
    pytest.param(b"\0ID=debian\n", "holds a NUL byte at offset 0", id="nul-first"),
    pytest.param(b"ID=debian\n# caf\xe9\n", "holds bytes that are not UTF-8 at offset 15", id="latin-1"),
    pytest.param(b"ID=debian\nVERSION_ID=\xff\n", "holds bytes that are not UTF-8 at offset 21", id="ff"),
    pytest.param(
        b"ID=debian\nX=\xed\xa0\x80\n", "holds bytes that are not UTF-8 at offset 12", id="surrogate"
    ),
    pytest.param(b"ID=debian\nX=\xe2\x82", "holds bytes that are not UTF-8 at offset 12", id="truncated"),
]


@pytest.mark.parametrize("data, message", BAD_BYTES)
@pytest.mark.parametrize("name", ["foo", "foo_1"])  # the file named after it, or after its base name
def test_release_file_with_bad_bytes_is_refused_whole(
    image: Path, data: bytes, message: str, name: str
) -> None:
    path = image / "usr/lib/extension-release.d/extension-release.foo"
    path.parent.mkdir(parents=True)
    path.write_bytes(data)
    with pytest.raises(ImageError) as info:
        find_extension_release(view_of(image), name, ImageClass.SYSEXT)
    assert str(info.value) == (
        f"release file '/usr/lib/extension-release.d/extension-release.foo' {message}: "
        "refusing the whole file"
    )


@pytest.mark.parametrize("data, message", BAD_BYTES)
def test_release_file_with_bad_bytes_rejects_the_image_in_the_plan(
    fake_fs: FakeFilesystem, data: bytes, message: str
) -> None:
    root = Path(ROOT)
    fake_fs.create_file(root / "etc/os-release", contents="ID=debian\nVERSION_ID=12\n")
    good = root / "var/lib/extensions/good/usr/lib/extension-release.d/extension-release.good"
    fake_fs.create_file(good, contents="ID=debian\nVERSION_ID=12\n")
    bad = root / "var/lib/extensions/bad/usr/lib/extension-release.d/extension-release.bad"
    fake_fs.create_file(bad, contents=data)
    view = view_of(root)
    host = host_info(view)
    good_one, bad_one = discover(view, ImageClass.SYSEXT, initrd=False).candidates[::-1]
    assert (good_one.name, bad_one.name) == ("good", "bad")
    assert judge(good_one, host, force=False, tree=view.image_view(os.fspath(good_one.path))).verdict is (
        Verdict.MERGE
    )
    # Not even --force merges it: the file cannot be read, so nothing says what the image is.
    for force in (False, True):
        verdict = judge(bad_one, host, force=force, tree=view.image_view(os.fspath(bad_one.path)))
        assert verdict.verdict is Verdict.REJECTED
        assert verdict.reason == (
            f"release file '/usr/lib/extension-release.d/extension-release.bad' {message}: "
            "refusing the whole file"
        )
