# SPDX-License-Identifier: LGPL-2.1-or-later
"""Root-confined path resolution, like systemd's chase() with a root ("resolve in root").

Everything sysext looks at inside `--root` (search directories, their entries, `.v/` entries,
hierarchies, os-release...) and inside an image is resolved this way: symlinks are followed
component by component, an absolute target restarts at the root instead of the host's "/", and
".." never climbs above the root. So a symlink in an image or a foreign root can never make us
read, mount or overlay something of the host.

A pure resolver: it reads the file system through the `lstat` and `readlink` it is given (the
`os` functions by default) and nothing else, and it observes nothing. What a run reads, and how
that is recorded, is the business of view.py.
"""

from __future__ import annotations

import errno
import os
import stat

from .errors import ResolveError

TYPE_CHECKING = False  # typing is not imported at run time: it costs start-up time
if TYPE_CHECKING:
    from typing import Callable, Optional, Union

    StrPath = Union[str, "os.PathLike[str]"]


MAX_STEPS = 128
"""Components walked plus symlinks expanded before giving up with ELOOP (the spec's limit)."""

MISSING = (errno.ENOENT, errno.ENOTDIR)
"""The errnos that mean "not there" rather than "cannot tell"."""


def normalize_root(root: StrPath) -> str:
    """The root as a tidy absolute string; "" and "/" both mean the host itself. The root is
    trusted as given (it may be reached through a symlink): only its spelling is tidied."""
    r = os.fspath(root)
    if r in ("", "/"):
        return "/"
    if r[0] == "/" and r[-1] != "/" and "//" not in r and "/." not in r:
        return r  # already tidy (a resolved path): the common case, spared normpath()
    r = os.path.normpath(os.path.abspath(r))
    # POSIX keeps a leading "//"; it means nothing special on Linux.
    return "/" + r.lstrip("/") if r != "/" else "/"


def canonical_root(root: StrPath) -> str:
    """The root with all its own symlinks resolved. Call it once at start: resolution does not
    resolve the root itself, and `root_relative` can only strip the root in the spelling it was given."""
    return os.path.realpath(os.fspath(root))


def join_root(root: str, inner: str) -> str:
    """`inner` (a path inside the root) as a host path, lexically: no resolution."""
    inner = inner.lstrip("/")
    if not inner:
        return root
    return "/" + inner if root == "/" else f"{root}/{inner}"


def _join(root: str, parts: list[str]) -> str:
    rel = "/".join(parts)
    if not rel:
        return root
    return root + rel if root == "/" else root + "/" + rel


def _clamp(parts: list[str], more: list[str]) -> list[str]:
    """Lexically append `more` to `parts`: "" and "." dropped, ".." pops but stops at the root."""
    out = list(parts)
    for p in more:
        if p in ("", "."):
            continue
        if p == "..":
            if out:
                out.pop()
            continue
        out.append(p)
    return out


def resolve(
    root: str,
    path: str,
    *,
    missing_ok: bool = False,
    lstat: Optional[Callable[[str], os.stat_result]] = None,
    readlink: Optional[Callable[[str], str]] = None,
) -> str:
    """Resolve `path` inside `root` (a `normalize_root()` spelling) and return the host path.

    `path` is taken relative to the root whether or not it starts with "/". Symlinks are followed
    with absolute targets re-rooted, ".." is clamped at the root, a trailing "/" or final "."/".."
    demands a directory. With `missing_ok`, a missing component is not an error: the unresolved rest
    is appended lexically (".." still clamped) and returned. The root itself is not checked: a root
    that is not a directory fails at its first component.

    Raises ResolveError with errno ENOENT, ENOTDIR, ELOOP, EACCES... when the path cannot be resolved.
    `lstat` and `readlink` default to the `os` functions of the moment.
    """
    if lstat is None:
        lstat = os.lstat
    if readlink is None:
        readlink = os.readlink

    def fail(err: int, what: str) -> ResolveError:
        return ResolveError(f"Cannot resolve {path!r} inside {root!r}: {what}", errno=err)

    # Resolved components below the root: each one an existing directory that is not a symlink, so
    # ".." may pop them lexically; `here` is the host path they spell. `todo` is a stack; its top
    # (end) is the next component.
    base = "" if root == "/" else root
    done: list[str] = []
    here = base
    todo = path.split("/")
    todo.reverse()
    steps = 0

    while todo:
        name = todo.pop()
        if name in ("", "."):
            continue
        steps += 1
        if steps > MAX_STEPS:
            raise fail(errno.ELOOP, f"more than {MAX_STEPS} steps (symlink loop?)")
        if name == "..":
            if done:
                here = here[: len(here) - len(done.pop()) - 1]
            continue

        candidate = f"{here}/{name}"
        try:
            st = lstat(candidate)
        except FileNotFoundError as e:
            if missing_ok:
                todo.append(name)
                todo.reverse()
                return _join(root, _clamp(done, todo))
            raise fail(errno.ENOENT, f"{candidate[len(base) :]!r} does not exist") from e
        except OSError as e:
            raise fail(
                e.errno or errno.EIO, f"cannot look at {candidate[len(base) :]!r} ({e.strerror})"
            ) from e

        if stat.S_ISLNK(st.st_mode):
            steps += 1
            if steps > MAX_STEPS:
                raise fail(errno.ELOOP, f"more than {MAX_STEPS} steps (symlink loop?)")
            try:
                target = readlink(candidate)
            except OSError as e:
                raise fail(
                    e.errno or errno.EIO, f"cannot read link {candidate[len(base) :]!r} ({e.strerror})"
                ) from e
            if target.startswith("/"):
                done = []  # absolute targets mean the root, never the host's "/"
                here = base
            # Relative targets continue from the link's directory, which is `done` as it stands.
            pieces = target.split("/")
            pieces.reverse()
            todo.extend(pieces)
            continue

        if not stat.S_ISDIR(st.st_mode) and todo:
            # Anything still to walk, even just a trailing "/" or ".", needs a directory here.
            raise fail(errno.ENOTDIR, f"{candidate[len(base) :]!r} is not a directory")
        done.append(name)
        here = candidate

    return here or "/"


def resolve_in_root(root: StrPath, path: StrPath, *, missing_ok: bool = False) -> str:
    """resolve() for callers with paths: the root is tidied and must be an accessible directory.

    `root` is used as spelled (absolute, normalised, not symlink-resolved); pass `canonical_root()`
    of it if results are later stripped with `root_relative`."""
    root_s = normalize_root(root)
    spelled = os.fspath(path)
    try:
        st = os.stat(root_s)
    except OSError as e:
        raise ResolveError(
            f"Cannot resolve {spelled!r} inside {root_s!r}: the root is not accessible ({e.strerror})",
            errno=e.errno or errno.EIO,
        ) from e
    if not stat.S_ISDIR(st.st_mode):
        raise ResolveError(
            f"Cannot resolve {spelled!r} inside {root_s!r}: the root is not a directory", errno=errno.ENOTDIR
        )
    return resolve(root_s, spelled, missing_ok=missing_ok)


def exists_in_root(root: StrPath, path: StrPath) -> bool:
    """Whether `path` resolves inside `root`. Missing (ENOENT) or through a non-directory (ENOTDIR) is
    False like os.path.exists; loops and permission problems are real errors and raise."""
    try:
        resolve_in_root(root, path)
    except ResolveError as e:
        if e.errno in MISSING:
            return False
        raise
    return True


def is_within_root(root: StrPath, path: StrPath) -> bool:
    """Whether `path` is `root` or lies below it, comparing spellings only (no resolution)."""
    r = normalize_root(root)
    p = os.fspath(path)
    if r == "/":
        return p.startswith("/")
    return p == r or p.startswith(r + "/")


def root_relative(root: StrPath, path: StrPath) -> str:
    """`path` as seen from inside `root`: "/x/y" for root + "/x/y", "/" for the root itself.

    A path not below the root is returned unchanged, as upstream keeps the full path in that case.
    """
    r = normalize_root(root)
    p = os.fspath(path)
    if r == "/":
        return p
    if p == r:
        return "/"
    if p.startswith(r + "/"):
        return p[len(r) :]
    return p
