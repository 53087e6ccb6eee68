"""What a fingerprint was computed from, kept so that a later run can check it cheaply.

The fingerprint of a class (fingerprint.py) is a function of what the run read: the command line,
some environment variables, and the file system inside the root (configuration files, search
directories, links, the os-release file, the extensions' trees). While the full run computes it,
a `Recorder` stands between that code and the `os` module and writes down every observation at
the grain the code can see it:

    ["env", name, value or null]             an environment variable
    ["uname", machine]                       the machine name (the architecture derives from it)
    ["res", root, path, missing_ok, result]  chase.resolve_in_root(): the resolved path, or the
                                             error (errno and message); its own lstat()s and
                                             readlink()s are not listed, only the outcome
    ["cfg", root, name, [files, warnings]]   conffiles.config_files(): which configuration files
                                             were found (the steps of the search are not listed)
    ["st" | "lst", path, value]              stat/lstat: mode, size, mtime, ctime, rdev (or errno)
    ["ls", path, names]                      listdir, sorted
    ["sd", path, [[name, type], ...]]        scandir: names and d_type letters
    ["rl", path, target]                     readlink
    ["rd", path, value]                      a file opened for reading: sha256 of its content, or
                                             for one over READ_LIMIT (a disk image) its stat fields
    ["xa", path, name, value]                an extended attribute (hex), or errno
    ["tree", path, digest]                   tree_digest() of a directory extension

Paths are relative to the root ("/etc/extensions"), or "host:/proc/..." for a path outside it,
so the initrd's record (root /sysroot) is checked in the real root (root /) after switch-root.

The recorder hands the code exactly what it wrote down and nothing more: a stat result carries
only the five recorded fields (inode, device, owner and access time read as 0), a listing comes
sorted. So the fingerprint depends on the recorded values only, and `replay()` proves it
unchanged by taking every observation again: equal observations, equal fingerprint. Anything the
recorder cannot vouch for (an unknown file descriptor, a write, a block device, a warning
printed) makes the trace incomplete, and nothing is skipped on its word.

This module imports only `os` and `stat` at load time: the confirming refresh (quick.py) runs it
without the rest of the package.
"""

from __future__ import annotations

import os
import stat

TYPE_CHECKING = False  # typing is not imported at run time: it costs start-up time
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any, Callable, Optional

    from .errors import ResolveError
    from .recorder import Recorder

if TYPE_CHECKING:
    from hashlib import sha256 as sha256
else:
    try:  # the built-in module: importing hashlib loads OpenSSL, which costs more than it hashes here
        from _sha256 import sha256
    except ImportError:  # Python >= 3.12
        try:
            from _sha2 import sha256
        except ImportError:
            from hashlib import sha256

READ_LIMIT = 4 << 20  # a file opened for reading is hashed whole; a larger one is known by its stat
TREE_ENTRY_LIMIT = 200_000
HOST = "host:"

ACTIVE: list[Recorder] = []  # the recorder of this run, while one is recording


def recording() -> Optional[Recorder]:
    """The recorder, while one records and is not paused inside an observation of its own."""
    return ACTIVE[-1] if ACTIVE and not ACTIVE[-1].paused else None


# --------------------------------------------------------------------------------------------------
# Values: the same functions compute what is recorded and what is checked later


def stat_value(st: os.stat_result) -> list[int]:
    return [st.st_mode, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_rdev]


def error_value(e: OSError) -> list[Any]:
    return ["E", e.errno or 0]


def _entry_type(entry: os.DirEntry[str]) -> str:
    try:
        if entry.is_symlink():
            return "l"
        if entry.is_dir(follow_symlinks=False):
            return "d"
        if entry.is_file(follow_symlinks=False):
            return "f"
    except OSError:
        return "?"
    return "o"


def scandir_value(path: str) -> list[list[str]]:
    with _real["scandir"](path) as it:
        return sorted([e.name, _entry_type(e)] for e in it)


def content_value(fd: int) -> Any:
    """sha256 of a regular file's whole content (read with pread: the caller's offset stays), the
    file type for anything else. A file larger than READ_LIMIT (a disk image) is known by its
    stat() fields instead, as the fingerprint itself knows disk images: a write changes the ctime."""
    st = _real["fstat"](fd)
    if not stat.S_ISREG(st.st_mode):
        return ["T", stat.S_IFMT(st.st_mode)]
    if st.st_size > READ_LIMIT:
        return ["S", *stat_value(st)]
    h = sha256()
    offset = 0
    while True:
        chunk = _real["pread"](fd, 1 << 20, offset)
        if not chunk:
            return h.hexdigest()
        offset += len(chunk)
        if offset > READ_LIMIT:  # it grew while being read
            return ["S", *stat_value(_real["fstat"](fd))]
        h.update(chunk)


def tree_digest(top: Any) -> str:
    """sha256 over (relative path, type, mode, size, mtime, link target) of every entry below `top`.
    File contents are not read: an edit changes the size or the mtime."""
    path = os.fspath(top)
    rec = recording()
    if rec is None:
        return _tree_digest(path)
    with rec.pause():
        value = _tree_digest(path)
    rec.note("tree", rec.rel(path), value)
    return value


def _tree_digest(top: str) -> str:
    h = sha256()
    count = 0
    scandir = _real["scandir"]
    stack = [(top, "")]
    while stack:
        directory, rel = stack.pop()
        try:
            with scandir(directory) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as e:
            h.update(f"{rel}\0error:{e.errno}\n".encode())
            continue
        for entry in entries:
            count += 1
            if count > TREE_ENTRY_LIMIT:
                h.update(b"\0truncated\n")
                return h.hexdigest()
            path = f"{rel}/{entry.name}"
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError as e:
                h.update(f"{path}\0error:{e.errno}\n".encode("utf-8", "surrogateescape"))
                continue
            extra = ""
            if stat.S_ISLNK(st.st_mode):
                try:
                    extra = _real["readlink"](entry.path)
                except OSError:
                    extra = "?"
            elif stat.S_ISDIR(st.st_mode):
                stack.append((entry.path, path))
            line = f"{path}\0{st.st_mode:o}\0{st.st_size}\0{st.st_mtime_ns}\0{extra}\n"
            h.update(line.encode("utf-8", "surrogateescape"))
    return h.hexdigest()


def resolve_outcome(root_s: str, result: Optional[str], error: Optional[ResolveError]) -> Any:
    """How a resolution inside `root_s` is recorded: the path inside the root, or the error."""
    if error is not None:
        return ["E", error.errno, str(error).replace(repr(root_s), "<root>")]
    assert result is not None
    return _relative(root_s, result)


def resolve_value(root: str, path: str, missing_ok: bool) -> Any:
    """What chase.resolve_in_root() gives now."""
    from .chase import _resolve, _root_str
    from .errors import ResolveError

    root_s = _root_str(root)
    try:
        return resolve_outcome(root_s, _resolve(root_s, path, missing_ok), None)
    except ResolveError as e:
        return resolve_outcome(root_s, None, e)


def _relative(root: str, path: str) -> str:
    """chase.root_relative(), with paths outside the root marked as the host's."""
    from .chase import root_relative

    rel = root_relative(root, path)
    return HOST + path if root != "/" and rel == path else rel


def _absolute(root: str, rel: str) -> str:
    if rel.startswith(HOST):
        return rel[len(HOST) :]
    if root == "/":
        return rel
    return root if rel == "/" else root + rel


# The os functions a recorder replaces, as they were before any recorder.
_real: dict[str, Any] = {
    name: getattr(os, name)
    for name in (
        "stat",
        "listdir",
        "scandir",
        "readlink",
        "open",
        "fstat",
        "uname",
        "read",
        "pread",
        "getxattr",
    )
    if hasattr(os, name)
}

# How each plain observation of a path is taken, with the os functions as they were: the recorder
# writes the value down and answers the code with it, replay() takes it again and compares.
VALUE_OF: dict[str, Callable[..., Any]] = {
    "st": lambda path: stat_value(_real["stat"](path)),
    "lst": lambda path: stat_value(_real["stat"](path, follow_symlinks=False)),
    "ls": lambda path: sorted(_real["listdir"](path)),
    "sd": scandir_value,
    "rl": lambda path: _real["readlink"](path),
    "xa": lambda path, name: _real["getxattr"](path, name).hex(),
}


# --------------------------------------------------------------------------------------------------
# Recording


class Incomplete(Exception):
    pass


def decline(why: str) -> None:
    """Called by code whose inputs the trace cannot cover (a raw image's verity data...)."""
    if ACTIVE:
        ACTIVE[-1].incomplete(why)


# --------------------------------------------------------------------------------------------------
# Checking


def _check_one(root: str, item: list[Any], env: Mapping[str, str]) -> Any:
    """The current value of one observation."""
    op = item[0]
    if op == "env":
        return env.get(item[1])
    if op == "uname":
        return os.uname().machine
    if op == "res":
        return resolve_value(_absolute(root, item[1]), item[2], item[3])
    if op == "cfg":
        from .conffiles import search_now

        return search_now(_absolute(root, item[1]), item[2])
    path = _absolute(root, item[1])
    try:
        if op in VALUE_OF:
            return VALUE_OF[op](path, *item[2:-1])
        if op == "rd":
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY)
            try:
                return content_value(fd)
            finally:
                os.close(fd)
        if op == "tree":
            return _tree_digest(path)
    except OSError as e:
        return error_value(e)
    raise Incomplete(f"unknown observation {op!r}")


def replay(root: str, trace: Any, env: Mapping[str, str]) -> str:
    """Take every observation of `trace` again inside `root`. "" when all agree, else which one
    differs. A malformed trace is a difference, never an exception."""
    from .chase import _root_str

    root_s = _root_str(root)
    if not isinstance(trace, list):
        return "no observations recorded"
    for item in trace:
        if not isinstance(item, list) or len(item) < 2 or not isinstance(item[0], str):
            return "malformed observation"
        if item[0] not in ("env", "uname") and not isinstance(item[1], str):
            return "malformed observation"
        if item[0] == "res" and not (
            len(item) == 5 and isinstance(item[2], str) and isinstance(item[3], bool)
        ):
            return "malformed observation"
        if item[0] == "cfg" and not (len(item) == 4 and isinstance(item[2], str)):
            return "malformed observation"
        try:
            now = _check_one(root_s, item, env)
        except (Incomplete, IndexError, TypeError, ValueError, AttributeError) as e:
            return f"malformed observation ({e})"
        if now != item[-1]:
            what = item[2] if item[0] in ("res", "cfg") else item[1]
            return f"{item[0]} {what!r} changed"
    return ""
