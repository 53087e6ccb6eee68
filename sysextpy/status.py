"""What is merged where: read the metadata directories of live merges inside the root.

The test is upstream's: the hierarchy is a mount point and `H/.systemd-<class>/dev` names the
hierarchy's own st_dev. A copied or untarred tree with a metadata directory is never mistaken for
a live merge.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from .chase import resolve_in_root
from .errors import ResolveError
from .model import ImageClass
from .records import record

TYPE_CHECKING = False  # typing is not imported at run time: it costs start-up time
if TYPE_CHECKING:
    from typing import Optional


@record(frozen=True)
class LiveMerge:
    image_class: ImageClass
    hierarchy: str  # as configured, e.g. "/usr"
    path: Path  # resolved, root-prefixed
    extensions: tuple[str, ...]
    since_usec: int
    metadata_dir: Path
    dev: int  # st_dev of the merged hierarchy: the overlay's own device


def _read_small(path: Path, limit: int = 1 << 20) -> Optional[str]:
    """A small regular file's text; None when missing, unreadable or not a regular file (a FIFO
    in a copied tree's metadata directory must not hang the run)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        data = os.read(fd, limit)
    except OSError:
        return None
    finally:
        os.close(fd)
    return data.decode("utf-8", "replace")


def parse_dev(text: str) -> Optional[int]:
    """`MAJOR:MINOR\\n` -> a dev_t, None when malformed."""
    major, sep, minor = text.strip().partition(":")
    if not sep or not (major.isascii() and major.isdigit() and minor.isascii() and minor.isdigit()):
        return None
    try:
        return os.makedev(int(major), int(minor))
    except OverflowError:  # numbers no device has: not a merge's record
        return None


def is_mount_point(path: Path, st: os.stat_result) -> bool:
    """A different device than the parent directory means a mount boundary, without loading the
    syscall wrappers; the same device needs the mount table to tell (a bind mount)."""
    try:
        if os.stat(os.path.dirname(os.fspath(path)) or "/").st_dev != st.st_dev:
            return True
    except OSError:
        pass  # let the mount table decide
    from .mountapi import is_mount_point as _is_mount_point

    return _is_mount_point(os.fspath(path))


def live_merge(
    root: Path, image_class: ImageClass, hierarchy: str
) -> tuple[Optional[Path], Optional[LiveMerge]]:
    """Resolve `hierarchy` inside the root; return (resolved path or None if missing, live merge or None)."""
    try:
        path = resolve_in_root(root, hierarchy)
    except ResolveError:
        return None, None
    try:
        st = os.lstat(path)
    except OSError:
        return None, None
    meta = path / image_class.metadata_dir
    dev_text = _read_small(meta / "dev")
    if dev_text is None or parse_dev(dev_text) != st.st_dev or not is_mount_point(path, st):
        return path, None
    names_text = _read_small(meta / image_class.list_file) or ""
    names = tuple(n for n in names_text.splitlines() if n)
    return path, LiveMerge(
        image_class=image_class,
        hierarchy=hierarchy,
        path=path,
        extensions=names,
        since_usec=st.st_mtime_ns // 1000,
        metadata_dir=meta,
        dev=st.st_dev,
    )
