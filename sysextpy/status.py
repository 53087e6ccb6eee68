# SPDX-License-Identifier: LGPL-2.1-or-later
"""What is merged where: read the metadata directories of live merges inside the root (live.py
tells a live merge from a copied tree)."""

from __future__ import annotations

import os

from .live import exact_mount_check, parse_dev, probe, read_metadata
from .records import record

TYPE_CHECKING = False  # typing is not imported at run time: it costs start-up time
if TYPE_CHECKING:
    from typing import Optional

    from .chase import StrPath
    from .model import ImageClass

__all__ = ["LiveMerge", "live_merge", "parse_dev"]


@record(frozen=True)
class LiveMerge:
    image_class: ImageClass
    hierarchy: str  # as configured, e.g. "/usr"
    path: str  # resolved, root-prefixed
    extensions: tuple[str, ...]
    since_usec: int
    metadata_dir: str
    dev: int  # st_dev of the merged hierarchy: the overlay's own device


def live_merge(
    root: StrPath, image_class: ImageClass, hierarchy: str
) -> tuple[Optional[str], Optional[LiveMerge]]:
    """Resolve `hierarchy` inside the root; return (resolved path or None if missing, live merge or None)."""
    path, st = probe(root, image_class.metadata_dir, hierarchy, exact_mount_check)
    if path is None:
        return None, None
    if st is None:
        return path, None
    meta = os.path.join(path, image_class.metadata_dir)
    names_text = read_metadata(path, image_class.metadata_dir, image_class.list_file) or ""
    names = tuple(n for n in names_text.splitlines() if n)
    try:
        # The metadata directory is made by the merge; the hierarchy's top carries the newest
        # change among the merge's inputs instead (apply.input_stamp).
        since_ns = os.lstat(meta).st_mtime_ns
    except OSError:
        since_ns = st.st_mtime_ns
    return path, LiveMerge(
        image_class=image_class,
        hierarchy=hierarchy,
        path=path,
        extensions=names,
        since_usec=since_ns // 1000,
        metadata_dir=meta,
        dev=st.st_dev,
    )
