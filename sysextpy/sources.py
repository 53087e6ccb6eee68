"""Which search directories cannot be seen yet: they lie below a file system the root's fstab
names but that is not mounted (a separate /var while the initrd runs). The handoff record lists
them, so the real-root run knows its view is more complete and must not skip."""

from __future__ import annotations

import os
import posixpath

from .errors import ResolveError, SysextError
from .view import LiveView, read_text

TYPE_CHECKING = False  # typing is not imported at run time: it costs start-up time
if TYPE_CHECKING:
    from collections.abc import Iterable
    from typing import Optional

    from .chase import StrPath
    from .live import MountCheck


def unescape_fstab(field: str) -> str:
    out, i = [], 0
    while i < len(field):
        if (
            field[i] == "\\"
            and len(field[i + 1 : i + 4]) == 3
            and all(c in "01234567" for c in field[i + 1 : i + 4])
        ):
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def parse_fstab_mount_points(text: str) -> list[str]:
    """Pure: the mount points of an fstab (normalised, swap and non-absolute entries dropped)."""
    points = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.split()
        if len(fields) < 2:
            continue
        where = unescape_fstab(fields[1])
        if not where.startswith("/"):
            continue
        points.append(posixpath.normpath(where))
    return points


def unreachable_dirs(
    root: StrPath, search_dirs: Iterable[str], mount_check: Optional[MountCheck] = None
) -> list[str]:
    """Search directories whose deepest fstab mount point (other than /) is not mounted in the root.
    `mount_check` (default: live.exact_mount_check) tells whether a directory is a mount point.
    Every path is resolved inside the root: a mount point that is a link never leads out of it."""
    if mount_check is None:
        from .live import exact_mount_check

        mount_check = exact_mount_check
    view = LiveView(os.fspath(root), {})
    try:
        fstab = read_text(view, view.resolve("/etc/fstab"))
    except (ResolveError, SysextError):
        return []
    points = [p for p in parse_fstab_mount_points(fstab) if p != "/"]
    result = []
    for d in search_dirs:
        owners = [p for p in points if d == p or d.startswith(p.rstrip("/") + "/")]
        if not owners:
            continue
        owner = max(owners, key=len)
        try:
            path = view.resolve(owner)
            mounted = mount_check(path, os.lstat(path))
        except (ResolveError, OSError):
            mounted = False
        if not mounted:
            result.append(d)
    return result
