# SPDX-License-Identifier: LGPL-2.1-or-later
"""Live merges and mounts: is a hierarchy merged right now, what does its metadata say, and which
search directories cannot be seen yet?

The test is upstream's: the hierarchy is a mount point and `H/.systemd-<class>/dev` names the
hierarchy's own st_dev. A copied or untarred tree with a metadata directory is never mistaken for
a live merge. The hierarchy is resolved inside the root, and the metadata directory and its files
are opened without following links: in a copied tree they may be links anywhere, out of the root
too.

A search directory below a file system the root's fstab names but that is not mounted yet (a
separate /var while the initrd runs) cannot be seen: the handoff record lists it, so the real
root's run knows its view is more complete (and the generator makes it wait for the mount).

Imports only `os` and `stat` and the package's light modules: the confirming refresh uses it.
"""

from __future__ import annotations

import os
import stat

from .chase import normalize_root, resolve
from .errors import ResolveError, SysextError
from .jsonlite import load_json

TYPE_CHECKING = False  # typing is not imported at run time: it costs start-up time
if TYPE_CHECKING:
    from collections.abc import Iterable
    from typing import Any, Callable, Optional

    from .chase import StrPath

    MountCheck = Callable[[str, os.stat_result], bool]

EXTRA_FILE = "sysextpy.json"


class Uncertain(Exception):
    """The quick checks cannot tell; the full run must decide."""


def parse_dev(text: str) -> Optional[int]:
    """`MAJOR:MINOR\\n` -> a dev_t, None when malformed."""
    major, sep, minor = text.strip().partition(":")
    if not sep or not (major.isascii() and major.isdigit() and minor.isascii() and minor.isdigit()):
        return None
    try:
        return os.makedev(int(major), int(minor))
    except OverflowError:  # numbers no device has: not a merge's record
        return None


def format_dev(dev: int) -> str:
    return f"{os.major(dev)}:{os.minor(dev)}"


def quick_mount_check(path: str, st: os.stat_result) -> bool:
    """A different device than the parent directory means a mount boundary. The same device
    needs the mount table to tell (a bind mount): raises Uncertain."""
    try:
        if os.stat(os.path.dirname(path) or "/").st_dev != st.st_dev:
            return True
    except OSError:
        pass
    raise Uncertain(f"{path!r} has its parent's device")


def exact_mount_check(path: str, st: os.stat_result) -> bool:
    """quick_mount_check(), with the mount table as the judge when it cannot tell."""
    try:
        return quick_mount_check(path, st)
    except Uncertain:
        from .mountapi import is_mount_point

        return is_mount_point(path)


def read_metadata(hierarchy: str, metadata_dir: str, name: str, limit: int = 1 << 20) -> Optional[str]:
    """The file `name` of the metadata directory of the (resolved) hierarchy path, or None when it
    is missing, unreadable, not a regular file, or reached only through a link."""
    flags = os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW
    try:
        dfd = os.open(f"{hierarchy.rstrip('/')}/{metadata_dir}", flags | os.O_DIRECTORY)
    except OSError:
        return None
    try:
        fd = os.open(name, flags | os.O_NONBLOCK | os.O_NOCTTY, dir_fd=dfd)
    except OSError:
        return None
    finally:
        os.close(dfd)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return None
        parts: list[bytes] = []
        total = 0
        while total < limit:
            # Sized by the file, not by the limit: a buffer of megabytes for a file of a few hundred
            # bytes costs more than reading it.
            chunk = os.read(fd, min(limit - total, max(st.st_size + 1 - total, 1 << 16)))
            if not chunk:
                break
            parts.append(chunk)
            total += len(chunk)
        return b"".join(parts).decode("utf-8", "replace")
    except OSError:
        return None
    finally:
        os.close(fd)


def probe(
    root: StrPath, metadata_dir: str, hierarchy: str, mount_check: MountCheck
) -> tuple[Optional[str], Optional[os.stat_result]]:
    """(resolved path or None when missing, the hierarchy's lstat() when a live merge of the class
    whose metadata directory is `metadata_dir` sits there, else None)."""
    try:
        path = resolve(normalize_root(root), hierarchy)
    except ResolveError:
        return None, None
    try:
        st = os.lstat(path)
    except OSError:
        return None, None
    dev_text = read_metadata(path, metadata_dir, "dev")
    if dev_text is None or parse_dev(dev_text) != st.st_dev or not mount_check(path, st):
        return path, None
    return path, st


def read_live_extra(hierarchy: str, metadata_dir: str) -> Optional[dict[str, Any]]:
    """The `sysextpy.json` of a merge's metadata directory, None when missing or unreadable."""
    text = read_metadata(hierarchy, metadata_dir, EXTRA_FILE, 8 << 20)
    if text is None:
        return None
    try:
        data = load_json(text)
    except (ValueError, RecursionError):
        return None
    return data if isinstance(data, dict) else None


# --------------------------------------------------------------------------------------------------
# Search directories not mounted yet


def unreachable_dirs(
    root: StrPath, search_dirs: Iterable[str], mount_check: Optional[MountCheck] = None
) -> list[str]:
    """Search directories whose deepest fstab mount point (other than /) is not mounted in the root.
    `mount_check` (default: exact_mount_check) tells whether a directory is a mount point.
    Every path is resolved inside the root: a mount point that is a link never leads out of it."""
    from .fstab import owning_mount_point, parse_fstab_mount_points  # not for an unmerge

    if mount_check is None:
        mount_check = exact_mount_check
    from .view import LiveView, read_text

    view = LiveView(os.fspath(root), {})
    try:
        fstab = read_text(view, view.resolve("/etc/fstab"))
    except (ResolveError, SysextError):
        return []
    points = parse_fstab_mount_points(fstab)
    result = []
    for d in search_dirs:
        owner = owning_mount_point(d, points)
        if not owner:
            continue
        try:
            path = view.resolve(owner)
            mounted = mount_check(path, os.lstat(path))
        except (ResolveError, OSError):
            mounted = False
        if not mounted:
            result.append(d)
    return result
