# SPDX-License-Identifier: LGPL-2.1-or-later
"""Pure fstab parsing: the mount points a root's /etc/fstab names, and which of them systemd mounts
on first access (`x-systemd.automount`).

Importable on its own (the generator loads it beside itself as a top-level module): it imports
nothing, not even `posixpath` (normalising is done here, as systemd's path_simplify() does it).
"""

from __future__ import annotations

AUTOMOUNT_OPTION = "x-systemd.automount"


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


def simplify_path(path: str) -> str:
    """An absolute path without empty, "." and ".." components ("/" for the root). ".." is
    dropped lexically, as normpath() drops it."""
    parts: list[str] = []
    for name in path.split("/"):
        if name in ("", "."):
            continue
        if name == "..":
            if parts:
                parts.pop()
            continue
        parts.append(name)
    return "/" + "/".join(parts)


class FstabEntry:
    __slots__ = ("options", "where")

    def __init__(self, where: str, options: tuple[str, ...]) -> None:
        self.where = where  # the mount point, simplified
        self.options = options

    @property
    def automount(self) -> bool:
        return AUTOMOUNT_OPTION in self.options


def parse_fstab(text: str) -> list[FstabEntry]:
    """Pure: the entries of an fstab with an absolute mount point (swap and the like dropped)."""
    entries = []
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
        options = tuple(unescape_fstab(fields[3]).split(",")) if len(fields) > 3 else ()
        entries.append(FstabEntry(simplify_path(where), options))
    return entries


def parse_fstab_mount_points(text: str) -> list[str]:
    """Pure: the mount points of an fstab (simplified, swap and non-absolute entries dropped)."""
    return [entry.where for entry in parse_fstab(text)]


def owning_mount_point(path: str, points: list[str]) -> str:
    """The deepest of `points` (other than "/") that is `path` or one of its parents, or ""."""
    best = ""
    for point in points:
        if point != "/" and (path == point or path.startswith(point + "/")) and len(point) > len(best):
            best = point
    return best
