# SPDX-License-Identifier: LGPL-2.1-or-later
"""Per-extension identity and the `origin` record, with upstream's keys and rules.

Computed in the host's mount namespace and without mounting anything, so that the same inputs
give the same record in every run (and the same record systemd-sysext writes).
"""

from __future__ import annotations

import errno
import os

from .chase import root_relative
from .model import Candidate, ImageType, MutableMode

TYPE_CHECKING = False  # typing is not imported at run time: it costs start-up time
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from typing import Any, Optional

    from .chase import StrPath
    from .view import LiveView


def crtime_usec(path: StrPath, fd: Optional[int] = None) -> int:
    """The birth time of `path` (or of the file open as `fd`), in microseconds, or 0."""
    from . import mountapi as m

    best = 0
    try:
        if fd is None:
            st = m.statx(m.AT_FDCWD, path, 0, m.STATX_BTIME)
        else:
            st = m.statx(fd, "", m.AT_EMPTY_PATH, m.STATX_BTIME)
        if st.btime is not None:
            best = st.btime[0] * 1_000_000 + st.btime[1] // 1000
    except OSError:
        pass  # best effort: no birth time is recorded as 0, like upstream
    try:
        text = os.getxattr(path if fd is None else fd, "user.crtime_usec")
        xval = int.from_bytes(text[:8], "little") if len(text) == 8 else int(text.decode().strip() or 0)
        if xval and (best == 0 or xval < best):
            best = xval
    except (OSError, ValueError):
        pass  # the xattr is optional
    return best


def extension_identity(view: LiveView, candidate: Candidate) -> dict[str, Any]:
    """The `origin` entry of one extension, upstream's identity of it."""
    from . import mountapi as m

    path = candidate.path
    entry: dict[str, Any] = {"path": root_relative(view.root, path)}
    if candidate.type is ImageType.RAW:
        from .dissect import image_root_hash

        verity = image_root_hash(view, candidate)
        if verity is not None:
            entry["verityHash"] = verity
            return entry
    # A pinned image (pins.py) is identified through its pin, on the mount its path was on then.
    pin = view.file_pin(os.fspath(path))
    fd = pin.fd if pin is not None else None
    entry["onMountId"] = pin.where[0] if pin is not None else m.unique_mount_id(path)
    handle = None
    try:
        handle = m.file_handle(path, fd)
    except OSError as e:
        if e.errno not in (errno.ENOENT, errno.ESTALE):
            raise
    st = os.stat(path) if fd is None else os.fstat(fd)
    if handle is not None:
        entry["fileHandle"] = {"type": handle[0], "handle": handle[1].hex()}
    else:
        entry["inode"] = st.st_ino
    entry["crtime"] = crtime_usec(path, fd)
    entry["mtime"] = st.st_mtime_ns // 1000 if candidate.type is ImageType.RAW else 0
    return entry


def origin_record(
    view: LiveView,
    extensions: Sequence[Candidate],
    mutable: MutableMode,
    mutable_dirs: Mapping[str, str],
    overlay_options: Optional[str],
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
            entries[c.name] = known[key] if known and key in known else extension_identity(view, c)
        record["extensions"] = entries
    return record


def format_origin(record: Mapping[str, Any]) -> str:
    """Upstream's on-disk layout: tab indentation, `"key" : value`, one trailing newline.

    A path that is not valid UTF-8 reaches us with its odd bytes as lone surrogates; they are
    written as JSON escapes, so the text stays valid UTF-8 and reads back the same."""
    from .jsonlite import dump_json_indented

    text = dump_json_indented(record, indent="\t", key_separator=" : ", ascii_only=False)
    if not text.isascii():
        text = "".join(f"\\u{ord(c):04x}" if "\ud800" <= c <= "\udfff" else c for c in text)
    return text + "\n"
