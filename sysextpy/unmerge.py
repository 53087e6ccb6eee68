# SPDX-License-Identifier: LGPL-2.1-or-later
"""Unmerge: detach our merges from their hierarchies, keeping the mounts made on them since.

Apart from the merge path (merge.py, apply.py), which an unmerge never needs: a run that only
unmerges loads neither, nor what they import.
"""

from __future__ import annotations

import os

from . import mountapi as m
from .errors import EXIT_FAILURE, EXIT_OK, MountError, SysextError
from .handoff import ClassEntry, HierarchyResult
from .live import read_metadata
from .log import log
from .model import ImageClass
from .status import live_merge

TYPE_CHECKING = False  # typing is not imported at run time: it costs start-up time
if TYPE_CHECKING:
    from collections.abc import Mapping

    from .actions import UnitRequest
    from .model import Options


def do_unmerge(opts: Options, env: Mapping[str, str]) -> int:
    from .actions import act, changed_requests, live_merge_requests
    from .reload import reload_once
    from .state import new_record, now_usec, write_record

    record = new_record(opts.verb.value, opts.root, "merging", now_usec(), env)
    requesting: set[str] = set()
    classes = [ImageClass(c.value) for c in opts.classes]
    hierarchies = hierarchies_of(opts, env)
    # what the extensions that go away asked for: read before their merges are gone
    going: dict[ImageClass, list[tuple[str, UnitRequest]]] = {}
    for cls in classes:
        old, _ = live_merge_requests(opts.root, cls, hierarchies[cls], requesting)
        going[cls] = changed_requests(cls.value, old, None, {}, {})
    failed: list[str] = []
    changed = False
    gone: list[tuple[str, UnitRequest]] = []
    for cls in classes:
        entry = ClassEntry()
        for h in hierarchies[cls]:
            try:
                did = unmerge_hierarchy(opts.root, cls, h)
                changed = changed or did
                if did:  # once per class, whichever of its hierarchies went first
                    gone += going.pop(cls, [])
                entry.hierarchies[h] = HierarchyResult("unmerged" if did else "untouched")
            except SysextError as e:
                log.error("%s", e)
                failed.append(str(e))
                entry.hierarchies[h] = HierarchyResult("failed", None, None, str(e))
        record.classes[cls.value] = entry
    reload_once(opts, changed, requesting, env, record, failed)
    if record.reload_done:
        record.actions = act(gone)
    record.phase = "failed" if failed else "merged"
    record.errors = failed
    record.finished = now_usec()
    write_record(opts.state, record)
    return EXIT_FAILURE if failed or any(a.result == "failed" for a in record.actions) else EXIT_OK


def hierarchies_of(opts: Options, env: Mapping[str, str]) -> dict[ImageClass, tuple[str, ...]]:
    """The hierarchies an unmerge looks at: the environment's, else the defaults (no configuration
    file is read: unmerging needs none)."""
    from .settings import class_hierarchies

    return {cls: class_hierarchies(cls, env.get) for cls in opts.classes}


def unmerge_hierarchy(root: str, cls: ImageClass, hierarchy: str) -> bool:
    """Detach every merge of ours on the hierarchy and remove its recorded work directory."""
    path, live = live_merge(root, cls, hierarchy)
    if live is None or path is None:
        return False
    work_dirs = []
    # Mounts made on the merged view since the merge stay, on the plain hierarchy.
    carried = m.carry_submounts(path)
    try:
        while live is not None:
            # Read-only merges have no work directory.
            text = (read_metadata(os.fspath(path), cls.metadata_dir, "work_dir") or "").strip()
            if text:
                work_dirs.append(text)
            try:
                m.umount2(path, m.MNT_DETACH)
            except OSError as e:
                raise MountError(f"Failed to unmount {os.fspath(path)!r}: {e.strerror}") from e
            _, live = live_merge(root, cls, hierarchy)
    finally:
        m.put_back_submounts(path, carried)
    for rel in work_dirs:
        wd = os.path.join(root, rel)
        name = os.path.basename(wd)
        if name.startswith(".systemd-") and name.endswith("-workdir"):
            remove_tree(wd)  # best effort, like upstream
    log.info("Unmerged '%s'.", os.fspath(path))
    return True


def remove_tree(top: str) -> None:
    """Remove a directory tree without following links; what cannot be removed stays (said at
    debug level)."""
    try:
        for parent, dirs, files in os.walk(top, topdown=False):
            for name in files:
                os.unlink(os.path.join(parent, name))
            for name in dirs:
                path = os.path.join(parent, name)
                if os.path.islink(path):
                    os.unlink(path)
                else:
                    os.rmdir(path)
        os.rmdir(top)
    except OSError as e:
        log.debug("Could not remove %s: %s", top, e)
