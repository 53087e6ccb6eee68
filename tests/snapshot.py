# SPDX-License-Identifier: LGPL-2.1-or-later
"""The state a merge leaves in a fake root, in a form two runs can be compared by.

A snapshot holds, for every hierarchy of both classes inside the root (/usr and /opt for sysext,
/etc for confext): whether it is a live merge of that class (a mount point whose metadata names
its own device), whether it is writable, the merged extension list, and every entry visible in
the hierarchy (relative path, file type, mode, sha256 of a file's content, a link's target).
Inside the metadata directories only the extension list is kept: `dev`, `backing`, `origin` and
`sysextpy.json` name devices, mount ids, file handles and times that differ between two builds of
the same state.
Plus, per row of `status --json=short`, the `rejected` list and the `mutable` mode.

Only the fake root's own hierarchies are walked, never the machine's.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path
from typing import Any, Callable

# class -> (its hierarchies, its metadata directory, the extension list in it)
CLASS_LAYOUT: dict[str, tuple[tuple[str, ...], str, str]] = {
    "sysext": (("usr", "opt"), ".systemd-sysext", "extensions"),
    "confext": (("etc",), ".systemd-confext", "confexts"),
}
METADATA_DIRS = {meta for _, meta, _ in CLASS_LAYOUT.values()}
LIST_FILES = {meta: name for _, meta, name in CLASS_LAYOUT.values()}

Entry = tuple[str, str, int, str]


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISDIR, "dir"),
        (stat.S_ISREG, "file"),
        (stat.S_ISLNK, "link"),
        (stat.S_ISCHR, "chr"),
        (stat.S_ISBLK, "blk"),
        (stat.S_ISFIFO, "fifo"),
        (stat.S_ISSOCK, "sock"),
    ):
        if test(mode):
            return name
    return "other"


def _entry(full: str, rel: str) -> Entry:
    st = os.lstat(full)
    kind = _kind(st.st_mode)
    if kind == "link":
        detail = os.readlink(full)
    elif kind == "file":
        with open(full, "rb") as f:
            detail = hashlib.sha256(f.read()).hexdigest()
    elif kind in ("chr", "blk"):
        detail = f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"
    else:
        detail = ""
    return (rel, kind, stat.S_IMODE(st.st_mode), detail)


def walk(top: Path) -> list[Entry]:
    """Every entry visible below `top`, symlinks not followed; of a metadata directory at the top
    only the directory and its extension list."""
    out: list[Entry] = []
    if not top.is_dir():
        return out
    for dirpath, dirnames, filenames in os.walk(top):
        rel_dir = os.path.relpath(dirpath, top)
        dirnames.sort()
        if rel_dir == ".":
            metas = [d for d in dirnames if d in METADATA_DIRS]
            dirnames[:] = [d for d in dirnames if d not in METADATA_DIRS]
            for meta in metas:
                out.append(_entry(os.path.join(dirpath, meta), meta))
                listed = os.path.join(dirpath, meta, LIST_FILES[meta])
                if os.path.lexists(listed):
                    out.append(_entry(listed, os.path.join(meta, LIST_FILES[meta])))
        for name in dirnames + sorted(filenames):
            full = os.path.join(dirpath, name)
            out.append(_entry(full, os.path.normpath(os.path.join(rel_dir, name))))
    return sorted(out)


def _format_dev(dev: int) -> str:
    return f"{os.major(dev)}:{os.minor(dev)}"


def live_merge(hierarchy: Path, metadata_dir: str) -> bool:
    """A mount point whose metadata directory's `dev` names the mount's own device."""
    if not os.path.ismount(hierarchy):
        return False
    try:
        named = (hierarchy / metadata_dir / "dev").read_text().strip()
    except OSError:
        return False
    return named == _format_dev(os.stat(hierarchy).st_dev)


def hierarchies(root: Path) -> dict[str, dict[str, Any]]:
    """Per class and hierarchy: live or not, the extension list (None: no list file), the tree."""
    out: dict[str, dict[str, Any]] = {}
    for cls, (names, meta, list_file) in CLASS_LAYOUT.items():
        for name in names:
            path = root / name
            try:
                listed = (path / meta / list_file).read_text().splitlines()
            except OSError:
                listed = None
            out[f"{cls}:/{name}"] = {
                "live": live_merge(path, meta),
                "extensions": listed,
                "writable": path.is_dir() and not os.statvfs(path).f_flag & os.ST_RDONLY,
            }
    for name in sorted({n for names, _, _ in CLASS_LAYOUT.values() for n in names}):
        out[f"tree:/{name}"] = {"entries": walk(root / name)}
    return out


def status_rows(status_json: str) -> dict[str, Any]:
    """{class:hierarchy: its rejected list and mutable mode} from `status --json=short` output."""
    rows = json.loads(status_json) if status_json.strip() else []
    return {
        f"{row.get('class')}:{row.get('hierarchy')}": {
            "rejected": row.get("rejected"),
            "mutable": row.get("mutable"),
        }
        for row in rows
    }


def snapshot(root: Path, status: Callable[[], str]) -> dict[str, Any]:
    """The state of `root`; `status` returns the output of `status --json=short` for it."""
    return {"hierarchies": hierarchies(root), "status": status_rows(status())}


def differences(a: dict[str, Any], b: dict[str, Any], limit: int = 12) -> list[str]:
    """Where two snapshots differ, for a failure message a person can read."""
    out: list[str] = []
    for key in sorted(set(a["hierarchies"]) | set(b["hierarchies"])):
        x, y = a["hierarchies"].get(key), b["hierarchies"].get(key)
        if x == y:
            continue
        if key.startswith("tree:") and x and y:
            ex, ey = set(map(tuple, x["entries"])), set(map(tuple, y["entries"]))
            for entry in sorted(ex - ey)[:limit]:
                out.append(f"{key}: only in the first: {entry}")
            for entry in sorted(ey - ex)[:limit]:
                out.append(f"{key}: only in the second: {entry}")
        else:
            out.append(f"{key}: {x} != {y}")
    for key in sorted(set(a["status"]) | set(b["status"])):
        x, y = a["status"].get(key), b["status"].get(key)
        if x != y:
            out.append(f"status {key}: {x} != {y}")
    return out
