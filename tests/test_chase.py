# SPDX-License-Identifier: LGPL-2.1-or-later
from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path
from typing import Optional

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sysextpy.chase import (
    MISSING,
    canonical_root,
    exists_in_root,
    is_within_root,
    join_root,
    normalize_root,
    resolve,
    resolve_in_root,
    root_relative,
)
from sysextpy.errors import ResolveError

# name -> None (directory), str (file contents) or ("->", target) (symlink)
TREE: dict[str, object] = {
    "etc": None,
    "etc/passwd": "root-local passwd\n",
    "etc/rel_up": ("->", "../usr/lib"),
    "usr": None,
    "usr/lib": None,
    "usr/lib/os-release": "ID=test\n",
    "abs_passwd": ("->", "/etc/passwd"),
    "rel_passwd": ("->", "etc/passwd"),
    "escape": ("->", "../../../../etc"),
    "escape_outside": ("->", "../outside/secret"),
    "escape_abs_outside": ("->", "/../outside/secret"),
    "dotdot_root": ("->", "/.."),
    "self": ("->", "self"),
    "a": ("->", "b"),
    "b": ("->", "a"),
    "dangling": ("->", "/nonexistent"),
    "dangling_deep": ("->", "etc/nothere/deeper"),
    "file_link": ("->", "etc/passwd"),
    "file_link_slash": ("->", "etc/passwd/"),
    "usr_link": ("->", "usr"),
    "usr_link_abs": ("->", "/usr/"),
    "via_dot": ("->", "./etc/../usr/./lib"),
}


def build(base: Path, tree: dict[str, object]) -> None:
    for rel, kind in tree.items():
        p = base / rel
        if kind is None:
            p.mkdir(parents=True, exist_ok=True)
        elif isinstance(kind, str):
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(kind)
        else:
            assert isinstance(kind, tuple)
            p.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(kind[1], p)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    base = Path(canonical_root(tmp_path))
    r = base / "root"
    r.mkdir()
    build(r, TREE)
    # Something worth stealing next to the root: no resolution may ever reach it.
    (base / "outside").mkdir()
    (base / "outside/secret").write_text("host secret\n")
    return r


@pytest.mark.parametrize(
    "path,expected",
    [
        ("/etc/passwd", "etc/passwd"),
        ("etc/passwd", "etc/passwd"),
        ("//etc//./passwd", "etc/passwd"),
        ("/", ""),
        ("", ""),
        (".", ""),
        ("..", ""),
        ("/../../..", ""),
        ("/usr/lib/../..", ""),
        ("/usr/", "usr"),
        ("/usr/.", "usr"),
        ("/usr/lib/..", "usr"),
        ("/usr/lib/../lib/os-release", "usr/lib/os-release"),
        # absolute link targets restart at the root, never at the host's "/"
        ("/abs_passwd", "etc/passwd"),
        ("/rel_passwd", "etc/passwd"),
        ("/etc/rel_up/os-release", "usr/lib/os-release"),
        ("/via_dot/os-release", "usr/lib/os-release"),
        # ".." chains and "/.." targets are clamped at the root
        ("/escape/passwd", "etc/passwd"),
        ("/../../../../etc/passwd", "etc/passwd"),
        ("/dotdot_root", ""),
        ("/dotdot_root/etc/passwd", "etc/passwd"),
        ("/dotdot_root/../../etc", "etc"),
        # directory links, with trailing slashes
        ("/usr_link", "usr"),
        ("/usr_link/", "usr"),
        ("/usr_link/.", "usr"),
        ("/usr_link_abs/lib", "usr/lib"),
        ("/usr_link/lib/../../abs_passwd", "etc/passwd"),
    ],
)
def test_resolves(root: Path, path: str, expected: str) -> None:
    want = root / expected if expected else root
    assert resolve_in_root(root, path) == os.fspath(want)
    assert resolve_in_root(root, path, missing_ok=True) == os.fspath(want)
    assert exists_in_root(root, path)
    # The pure resolver that resolve_in_root wraps: strings in, a string out.
    assert resolve(normalize_root(root), path) == os.fspath(want)


@pytest.mark.parametrize(
    "path,err",
    [
        ("/missing", errno.ENOENT),
        ("/missing/x", errno.ENOENT),
        ("/etc/missing", errno.ENOENT),
        ("/dangling", errno.ENOENT),
        ("/dangling_deep", errno.ENOENT),
        # the targets exist on the host side of the root, but inside the root they do not
        ("/escape_outside", errno.ENOENT),
        ("/escape_abs_outside", errno.ENOENT),
        ("/../outside/secret", errno.ENOENT),
        ("/self", errno.ELOOP),
        ("/self/x", errno.ELOOP),
        ("/a", errno.ELOOP),
        ("/b/x/y", errno.ELOOP),
        ("/etc/passwd/", errno.ENOTDIR),
        ("/etc/passwd/.", errno.ENOTDIR),
        ("/etc/passwd/..", errno.ENOTDIR),
        ("/etc/passwd/x", errno.ENOTDIR),
        ("/file_link/", errno.ENOTDIR),
        ("/file_link_slash", errno.ENOTDIR),
        ("/abs_passwd/x", errno.ENOTDIR),
    ],
)
def test_errors(root: Path, path: str, err: int) -> None:
    with pytest.raises(ResolveError) as exc:
        resolve_in_root(root, path)
    assert exc.value.errno == err
    assert repr(path) in str(exc.value)
    with pytest.raises(ResolveError) as pure:
        resolve(normalize_root(root), path)
    assert pure.value.errno == err
    if err in MISSING:  # "not there", like os.path.exists
        assert not exists_in_root(root, path)
    else:
        with pytest.raises(ResolveError):
            exists_in_root(root, path)


@pytest.mark.parametrize(
    "path,expected",
    [
        ("/missing", "missing"),
        ("/missing/x/y", "missing/x/y"),
        ("/missing/./y//", "missing/y"),
        ("/etc/missing/../../../../x", "x"),
        ("/etc/new/", "etc/new"),
        ("/dangling", "nonexistent"),
        ("/dangling_deep", "etc/nothere/deeper"),
        ("/dangling/../etc/passwd", "etc/passwd"),
        ("/escape_outside", "outside/secret"),
        ("/escape_abs_outside", "outside/secret"),
        ("/usr_link/lib/new/../x", "usr/lib/x"),
    ],
)
def test_missing_ok(root: Path, path: str, expected: str) -> None:
    assert resolve_in_root(root, path, missing_ok=True) == os.fspath(root / expected)
    assert not exists_in_root(root, path)


@pytest.mark.parametrize(
    "path,err",
    [("/etc/passwd/x", errno.ENOTDIR), ("/self", errno.ELOOP), ("/a/missing", errno.ELOOP)],
)
def test_missing_ok_still_fails_on_other_errors(root: Path, path: str, err: int) -> None:
    with pytest.raises(ResolveError) as exc:
        resolve_in_root(root, path, missing_ok=True)
    assert exc.value.errno == err


def test_exists_in_root_raises_on_loops(root: Path) -> None:
    assert not exists_in_root(root, "/etc/passwd/x")  # ENOTDIR counts as "does not exist"
    with pytest.raises(ResolveError):
        exists_in_root(root, "/self")


def _chain(root: Path, n: int) -> str:
    """Links l0 -> l1 -> ... -> l{n-1} -> /etc; returns the first one's path."""
    for i in range(n):
        target = f"/l{i + 1}" if i + 1 < n else "/etc"
        os.symlink(target, root / f"l{i}")
    return "/l0"


def test_short_chain_resolves(root: Path) -> None:
    assert resolve_in_root(root, _chain(root, 30) + "/passwd") == os.fspath(root / "etc/passwd")


def test_long_chain_is_a_loop(root: Path) -> None:
    with pytest.raises(ResolveError) as exc:
        resolve_in_root(root, _chain(root, 100))
    assert exc.value.errno == errno.ELOOP


def test_root_reached_through_a_symlink(root: Path, tmp_path: Path) -> None:
    alias = tmp_path / "alias"
    os.symlink(root, alias)
    # The root is used as spelled, so results keep the alias; canonical_root gives the real one.
    assert resolve_in_root(alias, "/abs_passwd") == os.fspath(alias / "etc/passwd")
    assert resolve_in_root(alias, "/escape/passwd") == os.fspath(alias / "etc/passwd")
    assert canonical_root(alias) == os.fspath(root)
    assert resolve_in_root(canonical_root(alias), "/abs_passwd") == os.fspath(root / "etc/passwd")


def test_root_spelling_is_normalised(root: Path) -> None:
    assert resolve_in_root(Path(f"{root}/./"), "abs_passwd") == os.fspath(root / "etc/passwd")
    assert resolve_in_root(Path(f"{root}/etc/.."), "abs_passwd") == os.fspath(root / "etc/passwd")


def test_host_root_is_plain_resolution(root: Path) -> None:
    assert resolve_in_root(Path("/"), "/") == os.fspath(Path("/"))
    assert resolve_in_root(Path("/"), root / "rel_passwd") == os.fspath(root / "etc/passwd")
    assert resolve_in_root(Path("/"), root / "usr_link/lib") == os.fspath(root / "usr/lib")


@pytest.mark.parametrize("name,err", [("nonexistent", errno.ENOENT), ("etc/passwd", errno.ENOTDIR)])
def test_unusable_root(root: Path, name: str, err: int) -> None:
    with pytest.raises(ResolveError) as exc:
        resolve_in_root(root / name, "/")
    assert exc.value.errno == err


def test_permission_error_keeps_its_errno(root: Path) -> None:
    def denying_lstat(p: str) -> os.stat_result:
        if p.endswith("/usr/lib"):
            raise PermissionError(errno.EACCES, "Permission denied", p)
        return os.lstat(p)

    with pytest.raises(ResolveError) as exc:
        resolve(normalize_root(root), "/usr/lib/os-release", lstat=denying_lstat)
    assert exc.value.errno == errno.EACCES
    assert "cannot look at '/usr/lib' (Permission denied)" in str(exc.value)
    # Below the unreadable component nothing is "missing": missing_ok does not hide it.
    with pytest.raises(ResolveError):
        resolve(normalize_root(root), "/usr/lib/nothing", missing_ok=True, lstat=denying_lstat)


def test_unreadable_link_keeps_its_errno(root: Path) -> None:
    def denying_readlink(p: str) -> str:
        raise PermissionError(errno.EACCES, "Permission denied", p)

    with pytest.raises(ResolveError) as exc:
        resolve(normalize_root(root), "/usr_link/lib", readlink=denying_readlink)
    assert exc.value.errno == errno.EACCES
    assert "cannot read link '/usr_link' (Permission denied)" in str(exc.value)


def test_resolve_reads_only_through_what_it_is_given(root: Path) -> None:
    seen: list[str] = []

    def lstat(p: str) -> os.stat_result:
        seen.append(p)
        return os.lstat(p)

    def readlink(p: str) -> str:
        seen.append(f"readlink {p}")
        return os.readlink(p)

    r = normalize_root(root)
    assert resolve(r, "/abs_passwd", lstat=lstat, readlink=readlink) == f"{r}/etc/passwd"
    assert seen == [f"{r}/abs_passwd", f"readlink {r}/abs_passwd", f"{r}/etc", f"{r}/etc/passwd"]


def test_resolve_does_not_check_the_root(root: Path) -> None:
    # resolve() takes the root as given; a root that is a file fails at its first component.
    assert resolve(normalize_root(root / "etc/passwd"), "/") == os.fspath(root / "etc/passwd")
    with pytest.raises(ResolveError) as exc:
        resolve(normalize_root(root / "etc/passwd"), "/x")
    assert exc.value.errno == errno.ENOTDIR


@pytest.mark.parametrize(
    "spelled, normal",
    [
        ("", "/"),
        ("/", "/"),
        ("//", "/"),
        ("/r", "/r"),
        ("/r/", "/r"),
        ("//r//s/", "/r/s"),
        ("/r/./s/..", "/r"),
        ("/r/../..", "/"),
    ],
)
def test_normalize_root(spelled: str, normal: str) -> None:
    assert normalize_root(spelled) == normal
    if spelled:  # Path("") is ".", the working directory
        assert normalize_root(Path(spelled)) == normal


def test_normalize_root_of_a_relative_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert normalize_root("sub/./root/") == os.path.join(os.getcwd(), "sub/root")


@pytest.mark.parametrize(
    "root_s, inner, joined",
    [
        ("/", "/x/y", "/x/y"),
        ("/", "x", "/x"),
        ("/", "/", "/"),
        ("/r", "/x/y", "/r/x/y"),
        ("/r", "x", "/r/x"),
        ("/r", "/", "/r"),
        ("/r", "", "/r"),
        ("/r", "/x/../y", "/r/x/../y"),  # lexical: nothing is resolved or tidied
    ],
)
def test_join_root(root_s: str, inner: str, joined: str) -> None:
    assert join_root(root_s, inner) == joined


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_permission_error_real(root: Path) -> None:
    locked = root / "usr"
    locked.chmod(0)
    try:
        with pytest.raises(ResolveError) as exc:
            resolve_in_root(root, "/usr/lib/os-release")
        assert exc.value.errno == errno.EACCES
    finally:
        locked.chmod(0o755)


@pytest.mark.parametrize(
    "root_s,path,expected",
    [
        ("/r", "/r/x/y", "/x/y"),
        ("/r", "/r", "/"),
        ("/r/", "/r/x", "/x"),
        ("/r", "/rx/y", "/rx/y"),  # not below the root: kept whole
        ("/r", "/other", "/other"),
        ("/", "/x/y", "/x/y"),
        ("/", "/", "/"),
    ],
)
def test_root_relative(root_s: str, path: str, expected: str) -> None:
    assert root_relative(Path(root_s), Path(path)) == expected


@pytest.mark.parametrize(
    "root_s,path,inside",
    [
        ("/r", "/r", True),
        ("/r", "/r/x", True),
        ("/r", "/rx", False),
        ("/r", "/", False),
        ("/", "/anything", True),
    ],
)
def test_is_within_root(root_s: str, path: str, inside: bool) -> None:
    assert is_within_root(Path(root_s), Path(path)) is inside


# --- property: whatever the tree, resolution never leaves the root ---------------------------------

_NAMES = ["a", "b", "c"]
_TARGETS = [
    "/",
    "/..",
    "..",
    "../..",
    "../../..",
    "../outside",
    "/../outside",
    ".",
    "a",
    "b/c",
    "/a/b",
    "../a",
    "./b/",
    "c/../..",
    "/c/../../outside",
    "missing",
]
_component = st.sampled_from(_NAMES + ["..", ".", "", "outside"])
_rel_path = st.lists(st.sampled_from(_NAMES), min_size=1, max_size=3).map("/".join)
_node = st.one_of(st.none(), st.just("file"), st.sampled_from(_TARGETS))


def _materialise(base: Path, nodes: dict[str, Optional[str]]) -> None:
    for rel in sorted(nodes, key=lambda s: s.count("/")):
        kind = nodes[rel]
        p = base / rel
        if not p.parent.is_dir() or os.path.lexists(p):
            continue  # parent is a file/link or name taken: the tree simply does not have it
        if kind is None:
            p.mkdir()
        elif kind == "file":
            p.write_text("x")
        else:
            os.symlink(kind, p)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.dictionaries(_rel_path, _node, max_size=8),
    st.lists(_component, max_size=6).map("/".join),
    st.booleans(),
)
def test_never_leaves_the_root(nodes: dict[str, Optional[str]], path: str, missing_ok: bool) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(canonical_root(tmp))
        root = base / "root"
        root.mkdir()
        (base / "outside").mkdir()
        (base / "outside/a").mkdir()
        _materialise(root, nodes)
        try:
            got = resolve_in_root(root, path, missing_ok=missing_ok)
        except ResolveError:
            return
        assert os.path.commonpath([root, got]) == str(root)
        if not missing_ok:
            # Fully resolved: it exists and nothing below the root is a symlink any more.
            assert os.path.lexists(got)
            assert os.path.realpath(got) == str(got)
