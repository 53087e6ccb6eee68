# SPDX-License-Identifier: LGPL-2.1-or-later
"""Adopting a merge that systemd-sysext or systemd-confext made: keeping it, without a remount,
when it is what this run would build.

A hierarchy carries an upstream merge when it is a live merge of the class (its `dev` file names
its device) without sysextpy's `sysextpy.json`. A refresh keeps such a merge, writes its own record
and says so, only when all of this holds for the class:

- every live merge of the class is upstream's, they all carry the same `origin`, and its
  extensions are exactly the ones this run would merge, in the same order;
- the `origin` upstream wrote is the one this run computes (upstream's identity of every image:
  path, verity hash or mount id, file handle, birth and modification time; mutable mode and
  directories; overlay options);
- the hierarchies merged are the ones this run would merge (those some extension has content for,
  or all of them in a mutable mode), with the mount flags this run would give them;
- nothing this run reads to decide changed since that merge: the files it reads (configuration,
  os-release, side-cars, certificates), every entry of every directory extension, the disk images
  and hash trees, and every entry of the search directories all have a ctime older than the
  merge's time stamp (the mtime upstream gives its metadata directory when it writes it last).

Then the state a forced refresh would build has the same layers, in the same order, with the same
content and the same flags: the merge is kept. Anything less refreshes, saying which check failed.
"""

from __future__ import annotations

import os
import stat

from .handoff import HierarchyResult
from .jsonlite import load_json
from .live import EXTRA_FILE, exact_mount_check, format_dev, probe, read_metadata

TYPE_CHECKING = False  # typing is not imported at run time: it costs start-up time
if TYPE_CHECKING:
    from typing import Any, Optional

    from .images import Workspace
    from .model import ClassSettings, Options
    from .plan import ClassPlan
    from .recording import RecordingView

# What a read of each kind of observation (view.py) looked at, and whether it was a whole tree.
_FILE_KINDS = ("rd", "id")


def upstream_merges(root: str, settings: ClassSettings) -> dict[str, tuple[str, os.stat_result]]:
    """The class's hierarchies that carry a live merge without sysextpy's metadata: upstream's."""
    found: dict[str, tuple[str, os.stat_result]] = {}
    meta = settings.image_class.metadata_dir
    for h in settings.hierarchies:
        path, st = probe(root, meta, h, exact_mount_check)
        if path is not None and st is not None and read_metadata(path, meta, EXTRA_FILE) is None:
            found[h] = (path, st)
    return found


def _tree_newest(top: str) -> tuple[int, str]:
    """(newest ctime, where) of a directory and everything below it."""
    st = os.lstat(top)
    newest, where = st.st_ctime_ns, top
    stack = [top]
    while stack:
        directory = stack.pop()
        with os.scandir(directory) as it:
            for entry in it:
                est = entry.stat(follow_symlinks=False)
                if est.st_ctime_ns > newest:
                    newest, where = est.st_ctime_ns, entry.path
                if stat.S_ISDIR(est.st_mode):
                    stack.append(entry.path)
    return newest, where


def newest_input(view: RecordingView, image_class: str, entries: list[str]) -> tuple[int, str]:
    """(newest ctime, where) of what the class's inputs were read from: the files read, the disk
    images and hash trees, every entry of the directory extensions, and the search directories'
    entries (`entries`, host paths: a link retargeted is a new link)."""
    newest, where = 0, ""

    def note(ctime: int, path: str) -> None:
        nonlocal newest, where
        if ctime > newest:
            newest, where = ctime, path

    kept = view.kept()
    for n in view.observations_of(image_class, kept):
        kind, *args = view.observations[kept[n]]
        path = view.absolute(args[0]) if kind in (*_FILE_KINDS, "tree") else None
        if path is None:
            continue
        try:
            if kind == "tree":
                note(*_tree_newest(path))
            else:
                note(os.stat(path).st_ctime_ns, path)
        except OSError:
            continue  # what is missing now was missing then: the observation says so
    for entry in entries:
        try:
            note(os.lstat(entry).st_ctime_ns, entry)
        except OSError:
            continue
    return newest, where


def _first_difference(theirs: Any, ours: Any, where: str = "") -> str:
    """Where two JSON values first differ, for a person: "extensions.a.mtime: 1 here, 2 there"."""
    if isinstance(theirs, dict) and isinstance(ours, dict):
        for key in sorted(set(theirs) | set(ours)):
            if theirs.get(key) != ours.get(key):
                return _first_difference(theirs.get(key), ours.get(key), f"{where}.{key}" if where else key)
    return f"{where or 'the whole'}: {theirs!r} in the merge, {ours!r} now"


def _flags_differ(path: str, attrs: int) -> str:
    """How the mount at `path` differs from the mount attributes `attrs`, or ""."""
    from . import mountapi as m

    flags = os.statvfs(path).f_flag
    for attr, st_flag, word in (
        (m.MOUNT_ATTR_NOEXEC, os.ST_NOEXEC, "noexec"),
        (m.MOUNT_ATTR_NOSUID, os.ST_NOSUID, "nosuid"),
        (m.MOUNT_ATTR_NODEV, os.ST_NODEV, "nodev"),
        (m.MOUNT_ATTR_RDONLY, os.ST_RDONLY, "read-only"),
    ):
        if bool(attrs & attr) != bool(flags & st_flag):
            return word if flags & st_flag else f"not {word}"
    return ""


def _mutable_dirs(root: str, settings: ClassSettings) -> Optional[dict[str, str]]:
    """The mutable directories this run would record in `origin`, or None when that cannot be
    known without merging (ephemeral modes use a directory of the merging tool's own)."""
    from .chase import resolve_in_root, root_relative
    from .errors import ResolveError
    from .model import MUTABLE_BASE, MutableMode, component_name

    mode = settings.mutable
    if mode.is_ephemeral:
        return None
    found: dict[str, str] = {}
    if mode is MutableMode.NO:
        return found
    for h in settings.hierarchies:
        try:
            found[h] = root_relative(root, resolve_in_root(root, f"{MUTABLE_BASE}/{component_name(h)}"))
        except ResolveError:
            continue
    return found


def adoption(
    opts: Options,
    view: RecordingView,
    cp: ClassPlan,
    workspace: Workspace,
    live: dict[str, tuple[str, os.stat_result]],
    identities: dict[tuple[str, str], dict[str, Any]],
) -> tuple[Optional[dict[str, HierarchyResult]], str]:
    """(the hierarchies' results, why it is safe) when the class's upstream merge may be kept;
    (None, which check failed) otherwise. `identities` are upstream's identities of the class's
    images (identity.extension_identity), taken in the host's mount namespace: mount ids differ in
    the workspace."""
    from . import apply
    from .identity import origin_record
    from .images import image_tree
    from .view import LiveView

    cs = cp.settings
    meta = cs.image_class.metadata_dir
    tool = cs.image_class.upstream_tool
    origins = {h: read_metadata(path, meta, "origin", 8 << 20) for h, (path, _) in live.items()}
    if len(set(origins.values())) != 1 or None in origins.values():
        return None, f"the merges of {', '.join(live)} do not carry one readable origin"
    origin_text = next(iter(origins.values()))
    assert origin_text is not None
    try:
        theirs = load_json(origin_text)
    except ValueError as e:
        return None, f"its origin is not JSON ({e})"
    merged = list(cp.to_merge)
    names = [v.name for v in merged]
    for h, (path, _) in live.items():
        listed = (read_metadata(path, meta, cs.image_class.list_file) or "").split()
        if listed != names:
            have, want = ", ".join(listed) or "no extension", ", ".join(names) or "none"
            return None, f"{h} has {have} merged, this run would merge {want}"
    mutable_dirs = _mutable_dirs(opts.root, cs)
    if mutable_dirs is None:
        return None, f"a merge in mode {cs.mutable.value} keeps its upper layer in {tool}'s own workspace"
    plain = LiveView(os.fspath(opts.root), {})
    ours = origin_record(
        plain,
        [v.candidate for v in merged],
        cs.mutable,
        mutable_dirs,
        cs.overlay_options,
        identities,
    )
    if ours != theirs:
        return None, f"its origin is not the one this run computes ({_first_difference(theirs, ours)})"

    for h in cs.hierarchies:
        contributes = any(
            apply.hierarchy_in_image(image_tree(v.candidate, workspace), h) is not None for v in merged
        )
        wanted = contributes or cs.mutable.value != "no"
        if wanted != (h in live):
            would = "would merge" if wanted else "would not merge"
            return None, f"this run {would} {h}, which {tool} {'did not merge' if wanted else 'merged'}"
        if h in live:
            why = _flags_differ(
                live[h][0], apply.mount_attrs(cs, read_only=cs.mutable.value in ("no", "import"))
            )
            if why:
                return None, f"{h} is mounted {why}, unlike this run's merge"

    since = min(os.lstat(os.path.join(path, meta)).st_mtime_ns for path, _ in live.values())
    entries = [os.fspath(c.entry) for c in cp.discovery.candidates] + [
        os.fspath(s.entry) for s in cp.skipped
    ]
    newest, where = newest_input(view, cs.image_class.value, entries)
    if newest >= since:
        return None, f"{where!r} changed after that merge"

    from .handoff import UNTOUCHED, sha256_hex
    from .mountapi import unique_mount_id

    digest = sha256_hex(origin_text.encode("utf-8", "surrogateescape"))
    results = {
        h: HierarchyResult("adopted", unique_mount_id(path), format_dev(st.st_dev), None, digest)
        for h, (path, st) in live.items()
    }
    results.update({h: HierarchyResult(UNTOUCHED) for h in cs.hierarchies if h not in live})
    why = (
        "its origin is the one this run computes, it merged the same extensions into the same "
        "hierarchies with the same flags, and everything this run read is older than it"
    )
    return results, why
