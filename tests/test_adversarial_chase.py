# SPDX-License-Identifier: LGPL-2.1-or-later
"""Root-confined resolution against adversarial trees: directories, files, relative and absolute
symlinks, `..` chains that try to climb out, links to themselves and to each other.

Every generated tree lives in a root with a decoy `outside/` directory next to it (and one of the
same name inside). For every path tried:
  - the result never leaves the root (no escape, ever);
  - the result, or the errno, is what a reference model says: the resolution rules of the
    behaviour spec (§3), applied by this file to the tree as data, without the file system;
  - where the kernel can judge (openat2 with RESOLVE_IN_ROOT, at most 40 links followed), the
    kernel agrees too.

The bounded run tries a few hundred trees; the `slow` one tens of thousands.
"""

from __future__ import annotations

import ctypes
import errno
import os
import tempfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Optional, Union

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sysextpy.chase import MAX_STEPS, canonical_root, resolve_in_root
from sysextpy.errors import ResolveError
from tests.faults import Tally

tally = Tally("adversarial trees")


@pytest.fixture(scope="module", autouse=True)
def _report() -> Iterator[None]:
    yield
    tally.flush()


# --------------------------------------------------------------------------------------------
# The tree as data

Node = Union[str, tuple[str, str]]  # "dir", "file" or ("link", target)
Tree = dict[str, Node]  # "a/b" (relative to the root) -> node

NAMES = ("a", "b", "c", "outside")
TARGET_PARTS = ("a", "b", "c", "outside", "secret", "..", ".", "")


def effective_tree(entries: list[tuple[str, Node]]) -> Tree:
    """What materialising `entries` in order gives: an entry appears only if its parent is a
    directory of the tree (or the root) and its name is still free."""
    tree: Tree = {}
    for rel, node in sorted(entries, key=lambda e: e[0].count("/")):
        parent = rel.rpartition("/")[0]
        if (parent and tree.get(parent) != "dir") or rel in tree:
            continue
        tree[rel] = node
    return tree


def materialise(root: Path, tree: Tree) -> None:
    for rel in sorted(tree, key=lambda r: r.count("/")):
        node, path = tree[rel], root / rel
        if node == "dir":
            path.mkdir()
        elif node == "file":
            path.write_text("inside\n")
        else:
            os.symlink(node[1], path)


# --------------------------------------------------------------------------------------------
# The reference model (spec §3.1), recursive, on the tree as data


class Outcome:
    def __init__(self, path: Optional[str], err: int, links: int, steps: int) -> None:
        self.path, self.err, self.links, self.steps = path, err, links, steps

    def __repr__(self) -> str:
        return f"Outcome({self.path!r}, {errno.errorcode.get(self.err, self.err)})"


def _clamped(at: list[str], rest: list[str]) -> list[str]:
    out = list(at)
    for part in rest:
        if part == "..":
            out = out[:-1]
        elif part not in ("", "."):
            out.append(part)
    return out


def model(tree: Tree, path: str, missing_ok: bool, limit: int = MAX_STEPS) -> Outcome:
    """Resolve `path` in `tree`: components left to right from the root; '' and '.' ignored; '..'
    drops one resolved component, never more than there are; an absolute link target restarts at
    the root, a relative one at the link's directory, followed by what was left; a missing
    component is ENOENT (with missing_ok: the rest appended lexically); anything after a
    non-directory, even '' or '.', is ENOTDIR; more than `limit` components and link expansions
    together is ELOOP."""
    counts = {"steps": 0, "links": 0}

    def step(at: list[str], rest: list[str]) -> Outcome:
        if not rest:
            return Outcome("/" + "/".join(at), 0, counts["links"], counts["steps"])
        head, tail = rest[0], rest[1:]
        if head in ("", "."):
            return step(at, tail)
        counts["steps"] += 1
        if counts["steps"] > limit:
            return Outcome(None, errno.ELOOP, counts["links"], counts["steps"])
        if head == "..":
            return step(at[:-1], tail)
        node = tree.get("/".join([*at, head]))
        if node is None:
            if missing_ok:
                return Outcome("/" + "/".join(_clamped(at, rest)), 0, counts["links"], counts["steps"])
            return Outcome(None, errno.ENOENT, counts["links"], counts["steps"])
        if isinstance(node, tuple):
            counts["steps"] += 1
            counts["links"] += 1
            if counts["steps"] > limit:
                return Outcome(None, errno.ELOOP, counts["links"], counts["steps"])
            target = node[1]
            return step([] if target.startswith("/") else at, target.split("/") + tail)
        if node != "dir" and tail:
            return Outcome(None, errno.ENOTDIR, counts["links"], counts["steps"])
        return step([*at, head], tail)

    return step([], path.split("/"))


# --------------------------------------------------------------------------------------------
# The kernel's opinion: openat2(RESOLVE_IN_ROOT)


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


_libc = ctypes.CDLL(None, use_errno=True)
_SYS_OPENAT2 = 437  # the same number on every architecture
_RESOLVE_IN_ROOT = 0x10
KERNEL_MAX_LINKS = 40
LONG_LIMIT = 400


def kernel_resolve(root_fd: int, path: str) -> tuple[Optional[str], int]:
    """(path below the root, 0) or (None, errno), as the kernel resolves `path` inside root_fd."""
    how = _OpenHow(os.O_PATH | os.O_CLOEXEC, 0, _RESOLVE_IN_ROOT)
    encoded = (path or ".").encode()
    for _ in range(1000):
        fd = _libc.syscall(_SYS_OPENAT2, root_fd, encoded, ctypes.byref(how), ctypes.sizeof(how))
        # EAGAIN: a rename or mount anywhere on the machine raced a ".." in the lookup; the kernel
        # asks to try again rather than risk an escape.
        if fd >= 0 or ctypes.get_errno() != errno.EAGAIN:
            break
    if fd < 0:
        return None, ctypes.get_errno()
    try:
        return os.readlink(f"/proc/self/fd/{fd}"), 0
    finally:
        os.close(fd)


def _kernel_has_openat2() -> bool:
    fd = os.open("/", os.O_PATH | os.O_DIRECTORY)
    try:
        return kernel_resolve(fd, ".")[1] != errno.ENOSYS
    finally:
        os.close(fd)


HAVE_OPENAT2 = _kernel_has_openat2()


# --------------------------------------------------------------------------------------------
# The property


def check_tree(entries: list[tuple[str, Node]], paths: list[tuple[str, bool]]) -> None:
    tree = effective_tree(entries)
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(canonical_root(tmp))
        root = base / "root"
        root.mkdir()
        # Decoys a resolution would reach if it escaped: base/outside/secret, base/secret.
        (base / "outside").mkdir()
        (base / "outside/secret").write_text("outside\n")
        (base / "secret").write_text("outside\n")
        materialise(root, tree)
        root_fd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            for path, missing_ok in paths:
                check_path(tree, root, root_fd, path, missing_ok)
        finally:
            os.close(root_fd)
    tally.add("trees", "resolved")
    tally.add("trees", "entries", len(tree))
    tally.add("trees", "symlinks", sum(isinstance(n, tuple) for n in tree.values()))


def check_path(tree: Tree, root: Path, root_fd: int, path: str, missing_ok: bool) -> None:
    want = model(tree, path, missing_ok)
    try:
        got: Optional[str] = resolve_in_root(root, path, missing_ok=missing_ok)
        err = 0
    except ResolveError as e:
        got, err = None, e.errno
        assert str(e), "a ResolveError without a message"
    tally.add("paths", "resolved")
    tally.add("paths", errno.errorcode.get(err, "ok") if err else "ok")
    if got is not None:
        inside = os.path.commonpath([root, got]) == os.fspath(root)
        if not inside:
            tally.add("paths", "escapes")
        assert inside, f"{path!r} escaped the root: {got}"
    got_rel = None if got is None else "/" + os.path.relpath(got, root).lstrip(".")
    assert (got_rel, err) == (want.path, want.err), f"{path!r} (missing_ok={missing_ok}) in {tree}"
    tally.add("paths", "model agrees")

    if missing_ok or not HAVE_OPENAT2:
        return
    # The kernel follows at most 40 links however many components, we stop after MAX_STEPS of
    # both: compare with the model's answer without our limit. Within LONG_LIMIT steps at most
    # 7 + 40 * 7 are reachable with 40 links, so the model's ELOOP there is a loop for the kernel too.
    ref = want if want.err != errno.ELOOP else model(tree, path, False, limit=LONG_LIMIT)
    if ref.err != errno.ELOOP and ref.links > KERNEL_MAX_LINKS:
        return
    k_path, k_err = kernel_resolve(root_fd, path)
    k_rel = None if k_path is None else "/" + os.path.relpath(k_path, root).lstrip(".")
    if ref.err == errno.ELOOP:
        assert k_err == errno.ELOOP, f"kernel resolves the loop {path!r} in {tree}: {k_rel}"
    else:
        assert (k_rel, k_err) == (ref.path, ref.err), f"kernel disagrees on {path!r} in {tree}"
    tally.add("paths", "kernel agrees")


# --------------------------------------------------------------------------------------------
# Strategies

_rel = st.lists(st.sampled_from(NAMES), min_size=1, max_size=3).map("/".join)
_target = st.builds(
    lambda absolute, parts: ("/" if absolute else "") + "/".join(parts),
    st.booleans(),
    st.lists(st.sampled_from(TARGET_PARTS), min_size=1, max_size=6),
).filter(lambda t: t != "")
_node: st.SearchStrategy[Node] = st.one_of(
    st.just("dir"), st.just("dir"), st.just("file"), _target.map(lambda t: ("link", t))
)
_entries = st.lists(st.tuples(_rel, _node), min_size=1, max_size=14)
_path = st.tuples(
    st.builds(
        lambda absolute, parts: ("/" if absolute else "") + "/".join(parts),
        st.booleans(),
        st.lists(st.sampled_from((*NAMES, "secret", "..", ".", "")), max_size=7),
    ),
    st.booleans(),
)
_paths = st.lists(_path, min_size=4, max_size=16)

# Hand-picked classics, always tried.
CLASSIC: list[tuple[list[tuple[str, Node]], list[str]]] = [
    ([("a", ("link", "a"))], ["a", "a/", "a/b"]),  # a link to itself
    ([("a", ("link", "b")), ("b", ("link", "a"))], ["a", "b/c"]),  # two links to each other
    ([("a", ("link", "../../../../outside/secret"))], ["a", "a/.."]),  # climb out, relative
    ([("a", ("link", "/../../outside"))], ["a", "a/secret"]),  # climb out, absolute
    ([("a", "dir"), ("a/b", ("link", "../../..")), ("outside", "dir")], ["a/b/outside", "a/b/../secret"]),
    ([("a", ("link", "/")), ("b", ("link", "a/a/a/a/a/b"))], ["b", "a/a/a"]),  # deep but finite
    ([("a", "file")], ["a/", "a/.", "a/..", "a/b"]),  # through a file
    ([("a", ("link", "b/c")), ("b", "dir"), ("b/c", "dir")], ["a/..", "a/../.."]),  # '..' after a link
]


@pytest.mark.parametrize("case", range(len(CLASSIC)))
def test_classic_traps(case: int) -> None:
    entries, paths = CLASSIC[case]
    check_tree(entries, [(p, ok) for p in paths for ok in (False, True)])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_entries, _paths)
def test_random_trees(entries: list[tuple[str, Node]], paths: list[tuple[str, bool]]) -> None:
    check_tree(entries, paths)


@pytest.mark.slow
@settings(max_examples=20000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_entries, _paths)
def test_random_trees_long(entries: list[tuple[str, Node]], paths: list[tuple[str, bool]]) -> None:
    check_tree(entries, paths)


def test_model_agrees_with_itself_on_chains() -> None:
    """The model's ELOOP limit is the implementation's: a chain of links just under and just over
    MAX_STEPS."""
    # Each link is two steps (its name and its expansion), the final "a" one more.
    under = (MAX_STEPS - 3) // 2
    for length, expect in ((under, 0), (under + 1, errno.ELOOP)):
        entries: list[tuple[str, Node]] = [("a", "dir")]
        entries += [(f"l{i}", ("link", f"l{i + 1}")) for i in range(length)]
        entries.append((f"l{length}", ("link", "a")))
        check_tree(entries, [("l0", False)])
        assert model(effective_tree(entries), "l0", False).err == expect
    tally.add("link chains", "tried", 2)


def test_outcomes_seen() -> None:
    """The generator reaches every kind of outcome (run last in this file: the counts are the
    tests' above)."""
    seen = tally.counts.get("paths", Counter())
    if seen["resolved"] < 100:
        pytest.skip("counts the paths of the tests above; run with them")
    for kind in ("ok", "ENOENT", "ENOTDIR", "ELOOP"):
        assert seen[kind] > 0, dict(seen)
    assert seen["escapes"] == 0
