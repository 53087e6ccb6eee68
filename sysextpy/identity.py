"""Per-extension identity and the `origin` record, with upstream's keys and rules.

Computed in the host's mount namespace and without mounting anything, so that the same inputs
give the same record in every run (and the same record systemd-sysext writes).
"""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Optional

from .chase import root_relative
from .model import Candidate, ImageType, MutableMode


def _hex_from_file(path: Path) -> Optional[str]:
    try:
        with open(path, "rb") as f:
            text = f.read(4096).decode("ascii", "replace").strip().lower()
    except OSError:
        return None
    if len(text) >= 32 and len(text) % 2 == 0 and all(c in "0123456789abcdef" for c in text):
        return text
    return None


def _hex_from_xattr(path: Path, name: str) -> Optional[str]:
    try:
        value = os.getxattr(path, name)
    except OSError:
        return None
    text = value.decode("ascii", "replace").strip().lower()
    if len(text) >= 32 and all(c in "0123456789abcdef" for c in text):
        return text
    return None


def sidecar_root_hash(image: Path, env: Mapping[str, str]) -> Optional[str]:
    """A dm-verity root hash for a raw image from its xattrs or `.roothash`/`.usrhash` side-cars."""
    if env.get("SYSTEMD_DISSECT_VERITY_SIDECAR", "1") in ("0", "no", "false"):
        return None
    path = os.fspath(image)
    stem = path[: -len(".raw")] if path.endswith(".raw") else None
    for attr, suffix in (("user.verity.roothash", ".roothash"), ("user.verity.usrhash", ".usrhash")):
        found = _hex_from_xattr(image, attr)
        if found is None and stem is not None:
            found = _hex_from_file(Path(stem + suffix))
        if found is not None:
            return found
    return None


def crtime_usec(path: Path) -> int:
    from . import mountapi as m

    best = 0
    try:
        st = m.statx(m.AT_FDCWD, path, 0, m.STATX_BTIME)
        if st.btime is not None:
            best = st.btime[0] * 1_000_000 + st.btime[1] // 1000
    except OSError:
        pass  # best effort: no birth time is recorded as 0, like upstream
    try:
        text = os.getxattr(path, "user.crtime_usec")
        xval = int.from_bytes(text[:8], "little") if len(text) == 8 else int(text.decode().strip() or 0)
        if xval and (best == 0 or xval < best):
            best = xval
    except (OSError, ValueError):
        pass  # the xattr is optional
    return best


def extension_identity(root: Path, candidate: Candidate, env: Mapping[str, str]) -> dict[str, Any]:
    """The `origin` entry of one extension."""
    from . import mountapi as m

    path = candidate.path
    entry: dict[str, Any] = {"path": root_relative(root, path)}
    if candidate.type is ImageType.RAW:
        verity = sidecar_root_hash(path, env)
        if verity is not None:
            entry["verityHash"] = verity
            return entry
    entry["onMountId"] = m.unique_mount_id(path)
    handle = None
    try:
        handle = m.file_handle(path)
    except OSError as e:
        if e.errno not in (errno.ENOENT, errno.ESTALE):
            raise
    if handle is not None:
        entry["fileHandle"] = {"type": handle[0], "handle": handle[1].hex()}
    else:
        entry["inode"] = os.stat(path).st_ino
    entry["crtime"] = crtime_usec(path)
    entry["mtime"] = os.stat(path).st_mtime_ns // 1000 if candidate.type is ImageType.RAW else 0
    return entry


def origin_record(
    root: Path,
    extensions: Sequence[Candidate],
    mutable: MutableMode,
    mutable_dirs: Mapping[str, str],
    overlay_options: Optional[str],
    env: Mapping[str, str],
    known: Optional[Mapping[tuple[str, str], dict[str, Any]]] = None,
) -> dict[str, Any]:
    """The whole `origin` record of one class. `known` holds identities taken earlier (in the host's
    mount namespace), keyed by (class, name)."""
    record: dict[str, Any] = {"mutable": {"mode": mutable.value}}
    if mutable_dirs:
        record["mutable"]["mutableDirs"] = dict(mutable_dirs)
    if overlay_options:
        record["mountOptions"] = overlay_options
    if extensions:
        entries = {}
        for c in extensions:
            key = (c.image_class.value, c.name)
            entries[c.name] = known[key] if known and key in known else extension_identity(root, c, env)
        record["extensions"] = entries
    return record


def format_origin(record: Mapping[str, Any]) -> str:
    """Upstream's on-disk layout: tab indentation, `"key" : value`, one trailing newline."""
    text = json.dumps(record, indent="\t", separators=(",", " : "), ensure_ascii=False)
    return text + "\n"
