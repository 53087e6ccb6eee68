"""The fingerprint: every input that decides what a class's merge looks like, hashed.

Computed without mounting anything: upstream's per-image identity (path, verity hash or mount id
+ file handle + crtime + mtime), a digest of each directory extension's tree (names, types,
sizes, mtimes, link targets), the host inputs that decide compatibility, and the settings. Two
runs with equal fingerprints would produce the same merge, so `refresh` may skip.

The inputs themselves are kept (in `sysextpy.json` of the metadata directory) so that a refresh
that does happen can say which extension and which field changed.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from . import __version__
from .chase import resolve_in_root, root_relative
from .errors import ResolveError
from .files import read_regular_bytes
from .jsonlite import dump_json
from .live import EXTRA_FILE, read_live_extra
from .model import Candidate, ClassSettings, HostInfo, ImageType, Options
from .observe import TREE_ENTRY_LIMIT, decline, sha256, tree_digest
from .records import record

TYPE_CHECKING = False  # typing is not imported at run time: it costs start-up time
if TYPE_CHECKING:
    from pathlib import Path
    from typing import Any, Optional

__all__ = ["EXTRA_FILE", "TREE_ENTRY_LIMIT", "read_live_extra", "tree_digest"]


def _file_sha256(path: Path) -> str:
    try:
        return sha256(read_regular_bytes(path, 1 << 20)).hexdigest()
    except OSError:
        return ""


def host_inputs(root: Path, host: HostInfo, env: Mapping[str, str]) -> dict[str, Any]:
    """What of the host decides compatibility: its os-release (by content), scope, architecture."""
    release_path: Optional[Path] = None
    source = host.release.source if host.release else ""
    if source:
        try:
            release_path = resolve_in_root(root, source)
        except ResolveError:
            release_path = None
    return {
        "osRelease": source,
        "osReleaseSha256": _file_sha256(release_path) if release_path else "",
        "scope": host.scope,
        "architecture": host.architecture,
    }


def mutable_inputs(root: Path, settings: ClassSettings) -> dict[str, Any]:
    """Which persistent mutable directories exist (in `auto` mode that decides the layout)."""
    from .model import MUTABLE_BASE, component_name

    present = {}
    for h in settings.hierarchies:
        try:
            p = resolve_in_root(root, f"{MUTABLE_BASE}/{component_name(h)}")
            present[h] = root_relative(root, p)
        except ResolveError:
            continue
    return present


def image_inputs(root: Path, candidate: Candidate, env: Mapping[str, str]) -> dict[str, Any]:
    """What identifies an image for the skip decision.

    Unlike upstream's `origin` fields, this leaves out the mount id, the file handle and the
    inode: an image below a merged hierarchy (a sysext in /etc/extensions while /etc carries a
    confext) shows a different mount, handle and inode number through the overlay than before the
    merge, and the initrd's merge would never be confirmed after switch-root. Sizes and times are
    the real file's through the overlay: ctime catches a replaced file or directory (a new inode),
    mtime and size an edit, and for directories the tree digest every change inside.
    """
    path = candidate.path
    entry: dict[str, Any] = {"type": candidate.type.value, "path": os.fspath(path)}
    if candidate.version is not None:
        entry["version"] = candidate.version
    try:
        st = os.stat(path)
    except OSError as e:
        entry["error"] = e.errno
        return entry
    entry["ctime"] = st.st_ctime_ns
    if candidate.type in (ImageType.DIRECTORY, ImageType.SUBVOLUME):
        entry["treeDigest"] = tree_digest(path)
        return entry
    entry.update(size=st.st_size, mtime=st.st_mtime_ns)
    if candidate.type is ImageType.BLOCK:
        entry["rdev"] = st.st_rdev
        decline(f"{candidate.name!r} is a block device: its content is not observed")
    if candidate.type is ImageType.RAW:
        from .dissect import image_root_hash

        verity = image_root_hash(root, candidate, env)
        if verity is not None:
            entry["verityHash"] = verity
    return entry


def class_inputs(
    opts: Options,
    settings: ClassSettings,
    candidates: tuple[Candidate, ...],
    skipped: list[tuple[str, str]],
    host_part: Mapping[str, Any],
    env: Mapping[str, str],
) -> dict[str, Any]:
    """Everything that decides this class's merge. Paths are relative to the root, so the initrd's
    run (--root=/sysroot) and the real root's agree."""
    root = opts.root
    prefix = os.fspath(root) if os.fspath(root) != "/" else ""
    images: dict[str, Any] = {}
    for c in candidates:
        entry = image_inputs(root, c, env)
        entry["path"] = root_relative(root, c.path)
        images[c.name] = entry
    not_images = sorted(
        (entry, reason.replace(prefix, "") if prefix else reason) for entry, reason in skipped
    )
    return {
        "tool": __version__,
        "class": settings.image_class.value,
        "hierarchies": list(settings.hierarchies),
        "mutable": settings.mutable.value,
        "mutableDirs": mutable_inputs(root, settings),
        "overlayOptions": settings.overlay_options,
        "noexec": settings.noexec,
        "imagePolicy": settings.image_policy,
        "force": opts.force,
        "host": dict(host_part),
        "images": images,
        "notImages": not_images,
    }


def digest(inputs: Mapping[str, Any]) -> str:
    text = dump_json(inputs, ascii_only=False)
    return sha256(text.encode("utf-8", "surrogateescape")).hexdigest()


def _mapping(value: Any) -> Mapping[str, Any]:
    # The old inputs are read back from a merge's metadata, which another version of the tool
    # may have written in another shape: what is not a mapping counts as empty.
    return value if isinstance(value, dict) else {}


def _pairs(value: Any) -> set[tuple[str, str]]:
    items = value if isinstance(value, list) else []
    return {
        (x[0], x[1])
        for x in items
        if isinstance(x, (list, tuple)) and len(x) == 2 and isinstance(x[0], str) and isinstance(x[1], str)
    }


def describe_changes(old: Mapping[str, Any], new: Mapping[str, Any], limit: int = 8) -> list[str]:
    """Human-readable differences between two input sets: which extension, which field."""
    changes: list[str] = []
    old_images = _mapping(old.get("images"))
    new_images = _mapping(new.get("images"))
    for name in sorted(set(old_images) | set(new_images)):
        if name not in old_images:
            changes.append(f"extension {name!r} added")
        elif name not in new_images:
            changes.append(f"extension {name!r} removed")
        else:
            a, b = _mapping(old_images[name]), _mapping(new_images[name])
            fields = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
            if fields:
                detail = ", ".join(fields)
                if "path" in fields:
                    detail += f" ({a.get('path')!r} -> {b.get('path')!r})"
                changes.append(f"extension {name!r} changed: {detail}")
    for key in sorted(set(old) | set(new)):
        if key in ("images",):
            continue
        if old.get(key) != new.get(key):
            if key == "host":
                was, now = _mapping(old.get(key)), _mapping(new.get(key))
                fields = sorted(k for k in set(was) | set(now) if was.get(k) != now.get(k))
                changes.append(f"host changed: {', '.join(fields)}")
            elif key == "notImages":
                old_set, new_set = _pairs(old.get(key)), _pairs(new.get(key))
                for entry, reason in sorted(new_set - old_set):
                    changes.append(f"{entry}: {reason}")
                for entry, reason in sorted(old_set - new_set):
                    changes.append(f"{entry}: no longer {reason!r}")
            else:
                changes.append(f"{key} changed: {old.get(key)!r} -> {new.get(key)!r}")
    if len(changes) > limit:
        changes = changes[:limit] + [f"... and {len(changes) - limit} more"]
    return changes


@record(frozen=True)
class Decision:
    skip: bool
    reason: str
    changes: tuple[str, ...] = ()
