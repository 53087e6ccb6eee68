# SPDX-License-Identifier: LGPL-2.1-or-later
"""Execute a plan: the only module that mounts on the host.

Everything is assembled in a private Workspace first: images are mounted, each hierarchy's new
overlay is built detached, metadata is written, submounts are cloned into it, and the result is
captured as a detached mount tree. Only then, back in the host's namespace, is each tree moved
onto its hierarchy: beneath the old overlay (MOVE_MOUNT_BENEATH) when one is live, so that the
hierarchy is never missing, and the old one is detached afterwards. A failure before that point
leaves the host untouched.
"""

from __future__ import annotations

import errno
import os
import stat
import time

from . import mountapi as m
from .chase import normalize_root, resolve, resolve_in_root, root_relative
from .errors import MountError, ResolveError, SysextError
from .live import format_dev
from .log import log
from .model import (
    MUTABLE_BASE,
    ClassSettings,
    ExtensionVerdict,
    ImageClass,
    ImageType,
    MutableMode,
    component_name,
)
from .records import field, record
from .status import live_merge
from .view import TreeWalk, nonempty_dir

TYPE_CHECKING = False  # typing is not imported at run time: it costs start-up time
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from typing import Any, Optional

    from .chase import StrPath
    from .handoff import HookRun
    from .hooks import HookSearch
    from .images import Workspace

OVERLAY_MAX_LAYERS = 500  # the kernel's limit on lower layers (OVL_MAX_STACK)
DEFAULT_MUTABLE_OPTIONS = "redirect_dir=on,noatime,metacopy=off,index=off"


def c_escape(text: str) -> str:
    out = []
    for ch in text:
        if ch == "\\":
            out.append("\\\\")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(ch)
    return "".join(out)


@record
class Assembled:
    """One hierarchy ready to be swapped in (tree_fd set) or to be unmerged (tree_fd None)."""

    image_class: ImageClass
    hierarchy: str
    target: str
    tree_fd: Optional[int]
    contributing: tuple[str, ...] = ()
    was_merged: bool = False
    mount_id: Optional[int] = None
    notes: list[str] = field(default_factory=list)


@record(frozen=True)
class MutableLayout:
    upper: Optional[str]
    work: Optional[str]
    import_dirs: tuple[str, ...]
    recorded: Optional[str]  # what origin's mutableDirs records for this hierarchy
    host_is_upper: bool


def _mode_bits(path: Optional[str]) -> int:
    if path is None:
        return 0o755
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        return 0o755


def _ensure_mutable_dir(root: str, path: str, mode: int) -> None:
    """Create a missing mutable directory; parents 0755, the directory itself the hierarchy's mode."""
    rel = root_relative(root, path)
    current = root
    for part in [p for p in rel.split("/") if p]:
        current = os.path.join(current, part)
        if not os.path.exists(current):
            os.mkdir(current, 0o755)
    os.chmod(path, mode)


def mutable_layout(
    root: str, settings: ClassSettings, hierarchy: str, host_dir: Optional[str], ws: Workspace
) -> MutableLayout:
    mode = settings.mutable
    comp = component_name(hierarchy)
    want_mode = _mode_bits(host_dir)
    if mode is MutableMode.NO:
        return MutableLayout(None, None, (), None, False)

    persistent: Optional[str] = None
    if mode in (MutableMode.YES, MutableMode.AUTO, MutableMode.IMPORT, MutableMode.EPHEMERAL_IMPORT):
        try:
            persistent = resolve_in_root(root, f"{MUTABLE_BASE}/{comp}")
        except ResolveError as e:
            if e.errno != errno.ENOENT:
                raise SysextError(f"Cannot use mutable directory for {hierarchy!r}: {e}") from e
            if mode is MutableMode.YES:
                persistent = resolve_in_root(root, f"{MUTABLE_BASE}/{comp}", missing_ok=True)
                _ensure_mutable_dir(root, persistent, want_mode)
        if persistent is not None and not os.path.isdir(persistent):
            raise SysextError(f"Mutable directory {os.fspath(persistent)!r} is not a directory.")
    same_as_host = False
    if persistent is not None and host_dir is not None:
        a, b = os.stat(persistent), os.stat(host_dir)
        same_as_host = persistent == host_dir or (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)

    if mode.imports:
        if same_as_host:
            raise SysextError(
                f"Mutable directory {str(persistent)!r} points to the hierarchy {hierarchy!r} itself.",
                hint=f"'{mode.value}' mode imports it as a read-only layer; use 'yes' or 'auto' instead",
            )
        imports = (persistent,) if persistent is not None else ()
        if mode is MutableMode.IMPORT:
            # Recorded like upstream does, so that creating or moving it changes the origin.
            recorded = root_relative(root, persistent) if persistent is not None else None
            return MutableLayout(None, None, imports, recorded, False)
        upper = ws.scratch_dir("ephemeral", mode=want_mode, name=comp)
        work = ws.scratch_dir("ephemeral-work", mode=0o700, name=comp)
        return MutableLayout(upper, work, imports, os.fspath(upper), False)

    if mode.is_ephemeral:
        upper = ws.scratch_dir("ephemeral", mode=want_mode, name=comp)
        work = ws.scratch_dir("ephemeral-work", mode=0o700, name=comp)
        return MutableLayout(upper, work, (), os.fspath(upper), False)

    # yes / auto
    if persistent is None:
        return MutableLayout(None, None, (), None, False)
    have = stat.S_IMODE(os.stat(persistent).st_mode)
    if have != want_mode:
        raise SysextError(
            f"Mutable directory {os.fspath(persistent)!r} has mode {have:04o}, "
            f"ought to have mode {want_mode:04o}.",
            hint=f"chmod {want_mode:04o} it",
        )
    if os.statvfs(persistent).f_flag & os.ST_RDONLY:
        raise SysextError(f"Can't use {os.fspath(persistent)!r} as an upperdir as it is read-only.")
    parent = os.path.dirname(persistent)
    work = os.path.join(parent, f".systemd-{comp}-workdir")
    # Checked before the work directory is made, so that a refusal leaves nothing behind.
    if os.stat(parent).st_dev != os.stat(persistent).st_dev:
        raise SysextError(
            f"Work directory {os.fspath(work)!r} would not be on the same file system "
            f"as {os.fspath(persistent)!r}.",
            hint="overlayfs needs upperdir and workdir on one file system (EXDEV)",
        )
    if not os.path.exists(work):
        os.mkdir(work, 0o700)
    return MutableLayout(persistent, work, (), root_relative(root, persistent), same_as_host)


def hierarchy_in_image(tree: str, hierarchy: str, walk: Optional[TreeWalk] = None) -> Optional[str]:
    """The image's copy of the hierarchy (the image is its own root), if it is a non-empty directory.
    With `walk`, the tree is looked at as its digest saw it."""
    seen = TreeWalk() if walk is None else walk  # an empty walk looks at everything now
    try:
        inner = resolve(normalize_root(tree), hierarchy, lstat=seen.lstat)
        # resolve() followed any link: what `inner` names is no link
        is_dir = stat.S_ISDIR(seen.lstat(inner).st_mode)
    except (ResolveError, OSError):
        return None
    return inner if is_dir and seen.nonempty(inner) else None


def _overlay_options(settings: ClassSettings, mutable: bool) -> list[tuple[str, Optional[str]]]:
    text = settings.overlay_options
    if text is None:
        text = DEFAULT_MUTABLE_OPTIONS if mutable else ""
    return m.parse_mount_options(text) if text else []


def mount_attrs(settings: ClassSettings, read_only: bool) -> int:
    attrs = m.MOUNT_ATTR_NODEV
    noexec = settings.image_class is ImageClass.CONFEXT
    if settings.image_class is ImageClass.CONFEXT:
        attrs |= m.MOUNT_ATTR_NOSUID
    if settings.noexec is not None:
        noexec = settings.noexec
    if noexec:
        attrs |= m.MOUNT_ATTR_NOEXEC
    if read_only:
        attrs |= m.MOUNT_ATTR_RDONLY
    return attrs


_ATTR_TO_MS = (
    (m.MOUNT_ATTR_RDONLY, m.MS_RDONLY),
    (m.MOUNT_ATTR_NOSUID, m.MS_NOSUID),
    (m.MOUNT_ATTR_NODEV, m.MS_NODEV),
    (m.MOUNT_ATTR_NOEXEC, m.MS_NOEXEC),
)


def _mount_overlay(
    staging: str,
    lowers: Sequence[str],
    *,
    upperdir: Optional[str],
    workdir: Optional[str],
    source: str,
    options: Sequence[tuple[str, Optional[str]]],
    attrs: int,
) -> None:
    """Mount an overlay on a workspace directory: one layer per call where the kernel can (no
    option-length limit), else the classic one-page option string, refused clearly when too long."""
    if m.have_lowerdir_plus():
        fd = m.make_overlay_fd(
            lowers, upperdir=upperdir, workdir=workdir, source=source, options=options, attr_flags=attrs
        )
        try:
            m.move_mount(fd, "", m.AT_FDCWD, staging, m.MOVE_MOUNT_F_EMPTY_PATH)
        finally:
            os.close(fd)
        return
    vfs_flags, _, fs_options = m.split_vfs_options(options)
    data = m.classic_overlay_options(lowers, upperdir=upperdir, workdir=workdir, options=fs_options)
    flags = vfs_flags
    for attr, ms in _ATTR_TO_MS:
        if attrs & attr:
            flags |= ms
    log.debug("This kernel takes overlay layers in one option string (no lowerdir+, Linux < 6.8).")
    m.mount(source, staging, "overlay", flags, data)


def _write(path: str, text: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


@record
class Prepared:
    """A hierarchy with its old overlay detached (in the workspace only) and its layers known."""

    settings: ClassSettings
    hierarchy: str
    target: str
    host_dir: Optional[str]
    was_merged: bool
    layers: list[tuple[str, str]]
    layout: MutableLayout
    carried: list[tuple[str, int]]


def prepare_hierarchy(
    root: str, ws: Workspace, settings: ClassSettings, hierarchy: str, merged: Sequence[ExtensionVerdict]
) -> Prepared:
    """Call with the workspace entered. Detaches old overlays in the private namespace only, so
    that the new layers reach the hierarchy underneath, not the current merged view."""
    from .images import image_tree  # what builds: an unmerge loads none of it

    cls = settings.image_class
    target = resolve_in_root(root, hierarchy, missing_ok=True)
    exists = os.path.isdir(target)
    _, live = live_merge(root, cls, hierarchy)
    was_merged = live is not None
    carried: list[tuple[str, int]] = m.carry_submounts(target) if exists else []
    try:
        while live is not None:
            try:
                m.umount2(target, m.MNT_DETACH)
            except OSError as e:
                raise MountError(
                    f"Failed to set the old merge on {os.fspath(target)!r} aside: {e.strerror}"
                ) from e
            _, live = live_merge(root, cls, hierarchy)
        host_dir: Optional[str] = target if exists else None
        layers: list[tuple[str, str]] = []
        for v in merged:
            tree = image_tree(v.candidate, ws)
            inner = hierarchy_in_image(tree, hierarchy, ws.walk(tree))
            if inner is not None:
                layers.append((v.name, inner))
        layout = mutable_layout(root, settings, hierarchy, host_dir, ws)
    except BaseException:
        for _, fd in carried:
            os.close(fd)
        raise
    return Prepared(settings, hierarchy, target, host_dir, was_merged, layers, layout, carried)


def build_hierarchy(
    root: str,
    ws: Workspace,
    prep: Prepared,
    merged: Sequence[ExtensionVerdict],
    origin: Mapping[str, Any],
    extra: Optional[Mapping[str, str]] = None,
    hooks: Optional[HookSearch] = None,
    hook_runs: Optional[list[HookRun]] = None,
    tree_changes: Optional[Mapping[str, int]] = None,
) -> Assembled:
    """Build the hierarchy's overlay as a detached tree. Call with the workspace entered.

    With `hooks`, each generate hook is shown the merged tree as it will be and what it writes
    becomes a read-only layer above the extensions; a hook that fails raises HookFailed.
    `tree_changes` holds the newest change time of trees already walked (input_stamp)."""
    from .hooks import SHIPPED_FILE, shipped_hooks
    from .identity import format_origin
    from .images import image_tree

    settings, layout = prep.settings, prep.layout
    cls, hierarchy, host_dir = settings.image_class, prep.hierarchy, prep.host_dir
    result = Assembled(cls, hierarchy, prep.target, None, tuple(n for n, _ in prep.layers), prep.was_merged)
    try:
        if not prep.layers and settings.mutable is MutableMode.NO:
            return result  # nothing to mount here; an old merge (if any) goes away

        mode_bits = _mode_bits(host_dir)
        meta_top = ws.scratch_dir("meta", mode=mode_bits)
        meta = os.path.join(meta_top, cls.metadata_dir)
        os.mkdir(meta, 0o755)
        _write(os.path.join(meta, cls.list_file), "".join(f"{v.name}\n" for v in merged))
        _write(os.path.join(meta, "origin"), format_origin(origin))
        for filename, text in (extra or {}).items():
            # ours beyond upstream's files, e.g. the fingerprint
            _write(os.path.join(meta, filename), text)
        trees = [(v.name, image_tree(v.candidate, ws)) for v in merged]
        shipped = shipped_hooks(trees, hierarchy, ws.walk)
        if shipped:
            _write(os.path.join(meta, SHIPPED_FILE), "".join(f"{path}\t{name}\n" for path, name in shipped))

        lowers: list[str] = []
        lowers.extend(layout.import_dirs)
        lowers.extend(path for _, path in reversed(prep.layers))
        if host_dir is not None and nonempty_dir(host_dir) and not layout.host_is_upper:
            lowers.append(host_dir)
            host_dev = os.stat(host_dir).st_dev
            if os.major(host_dev) != 0:
                _write(os.path.join(meta, "backing"), format_dev(host_dev) + "\n")
        if hooks is not None and hooks.hooks:
            lowers[:0] = _generate(ws, settings, hierarchy, layout, lowers, hooks, hook_runs)
        lowers.insert(0, meta_top)
        if layout.work is not None and not settings.mutable.is_ephemeral:
            _write(
                os.path.join(meta, "work_dir"), c_escape(root_relative(root, layout.work).lstrip("/")) + "\n"
            )
        os.chmod(layout.upper if layout.upper is not None else meta_top, mode_bits)
        if layout.upper is None and len(lowers) < 2:
            # overlayfs wants two lower layers without an upper one; an empty layer changes nothing
            lowers.append(ws.scratch_dir("empty"))
        if len(lowers) > OVERLAY_MAX_LAYERS:
            others = len(lowers) - len(prep.layers)
            raise MountError(
                f"{len(prep.layers)} extensions contribute to {hierarchy!r}, but overlayfs stacks at "
                f"most {OVERLAY_MAX_LAYERS} layers and {others} are taken by the metadata and the host's "
                f"{hierarchy}.",
                hint=f"merge at most {OVERLAY_MAX_LAYERS - others} extensions with content in {hierarchy}",
            )

        read_only = layout.upper is None
        staging = ws.scratch_dir("staging")
        _mount_overlay(
            staging,
            lowers,
            upperdir=layout.upper,
            workdir=layout.work,
            source=cls.value,
            options=_overlay_options(settings, mutable=not read_only),
            attrs=mount_attrs(settings, read_only=read_only),
        )
        dev = os.stat(staging).st_dev
        _write(os.path.join(meta, "dev"), format_dev(dev) + "\n")
        stamp = input_stamp(root, ws, merged, host_dir, hooks, tree_changes)
        os.utime(meta_top, ns=(stamp, stamp))
        for rel, sub_fd in prep.carried:
            dest = os.path.join(staging, rel)
            if not os.path.lexists(dest):
                result.notes.append(f"submount {rel!r} dropped: the new overlay has no {rel!r}")
                log.warning(
                    "Submount %s not carried over: the new overlay has no such path.",
                    os.path.join(prep.target, rel),
                )
                continue
            m.move_mount(sub_fd, "", m.AT_FDCWD, dest, m.MOVE_MOUNT_F_EMPTY_PATH)
        if not read_only:
            # Keep the metadata read-only even though the overlay is writable.
            meta_view = os.path.join(staging, cls.metadata_dir)
            m.mount(meta_view, meta_view, None, m.MS_BIND)
            m.mount(None, meta_view, None, m.MS_BIND | m.MS_REMOUNT | m.MS_RDONLY | m.MS_NODEV | m.MS_NOSUID)
        result.tree_fd = m.open_tree(
            m.AT_FDCWD, staging, m.OPEN_TREE_CLONE | m.OPEN_TREE_CLOEXEC | m.AT_RECURSIVE
        )
        result.mount_id = m.statx(result.tree_fd, "", m.AT_EMPTY_PATH, m.STATX_MNT_ID_UNIQUE).mnt_id
        return result
    except OSError as e:
        raise MountError(f"Failed to assemble {hierarchy!r} for {cls.value}: {e}") from e
    finally:
        for _, sub_fd in prep.carried:
            os.close(sub_fd)
        prep.carried.clear()


def input_stamp(
    root: str,
    ws: Workspace,
    merged: Sequence[ExtensionVerdict],
    host_dir: Optional[str],
    hooks: Optional[HookSearch],
    tree_changes: Optional[Mapping[str, int]] = None,
) -> int:
    """The newest change time (ns) among what a merge is made of: every entry of each directory
    extension, each disk image, the search directories (an image added or removed), the
    hierarchy's own directory, the hooks and their directories. A merge's top carries it, so
    that ConditionNeedsUpdate= sees a real change and not every merge (a merge at each boot).

    A tree found in `tree_changes` (path -> newest change time, ns) was walked whole when its digest
    was taken for the inputs of this run (view.tree_digest_now): it is not walked again."""
    from .hooks import HOOK_DIRS
    from .images import image_tree

    newest = 0

    def take(path: StrPath) -> None:
        nonlocal newest
        try:
            newest = max(newest, os.lstat(path).st_ctime_ns)
        except OSError as e:
            log.debug("No change time of %s: %s", os.fspath(path), e.strerror)  # gone: nothing to take

    def walk(top: str) -> None:
        try:
            with os.scandir(top) as it:
                for entry in it:
                    take(entry.path)
                    if entry.is_dir(follow_symlinks=False):
                        walk(entry.path)
        except OSError as e:
            log.debug("No change times below %s: %s", top, e.strerror)

    for v in merged:
        c = v.candidate
        take(os.path.dirname(c.entry))
        take(c.entry)
        if c.type in (ImageType.DIRECTORY, ImageType.SUBVOLUME):
            known = tree_changes.get(c.path) if tree_changes is not None else None
            if known is not None:
                newest = max(newest, known)
                continue
            tree = image_tree(c, ws)
            take(tree)
            walk(tree)
        else:
            take(c.path)
    if host_dir is not None:
        take(host_dir)
    for hook in hooks.hooks if hooks is not None else ():
        take(hook.path)
    for inner in HOOK_DIRS:
        try:
            take(resolve_in_root(root, inner))
        except ResolveError:
            pass  # no such directory: nothing in it to have changed
    return newest or time.time_ns()


class HookFailed(SysextError):
    """A generate hook failed: the hierarchy's new merge is not built."""


def _generate(
    ws: Workspace,
    settings: ClassSettings,
    hierarchy: str,
    layout: MutableLayout,
    lowers: Sequence[str],
    hooks: HookSearch,
    runs: Optional[list[HookRun]],
) -> list[str]:
    """Run the generate hooks over a read-only preview of the merged tree; their non-empty
    outputs, the last hook's on top, as layers."""
    from .hooks import GENERATE, run_hook
    from .images import MERGED_INNER, OUT_INNER

    cls = settings.image_class.value
    below = ([layout.upper] if layout.upper is not None else []) + list(lowers)
    if len(below) < 2:
        below.append(ws.scratch_dir("empty"))
    preview = ws.scratch_dir("preview")
    _mount_overlay(
        preview,
        below,
        upperdir=None,
        workdir=None,
        source=cls,
        options=[],
        attrs=m.MOUNT_ATTR_RDONLY | m.MOUNT_ATTR_NODEV | m.MOUNT_ATTR_NOSUID,
    )
    outputs: list[str] = []
    # In place, so that tools reading absolute paths (ld.so.conf, depmod's defaults) read the merge;
    # a hierarchy the root has no directory for yet is shown at MERGED_INNER instead.
    merged = hierarchy if ws.hook_place(hierarchy) is not None else MERGED_INNER
    try:
        ws.show_to_hooks(preview, merged)
    except SysextError:
        m.umount2(preview, m.MNT_DETACH)
        raise
    try:
        env = {"SYSEXTPY_CLASS": cls, "SYSEXTPY_HIERARCHY": hierarchy}
        for hook in hooks.hooks:
            out = ws.scratch_dir("generated")
            ws.show_to_hooks(out, OUT_INNER, read_only=False)
            try:
                args = [cls, hierarchy, merged, OUT_INNER]
                done = run_hook(hooks, hook, GENERATE, args, f"{cls}:{hierarchy}", env)
            finally:
                ws.hide_from_hooks(OUT_INNER)
            if runs is not None:
                runs.append(done)
            if not done.ok:
                raise HookFailed(
                    f"{cls}: the new merge of {hierarchy!r} was not built: {done.reason()}",
                    hint="the merge that was there stays; the next refresh tries again",
                )
            if nonempty_dir(out):
                outputs.insert(0, out)
    finally:
        ws.hide_from_hooks(merged)
        m.umount2(preview, m.MNT_DETACH)
    return outputs


def _is_ours_on_top(root: str, cls: ImageClass, hierarchy: str, new_id: Optional[int]) -> bool:
    path, live = live_merge(root, cls, hierarchy)
    if live is None or path is None:
        return False
    if new_id is None:
        return True
    return m.unique_mount_id(path) != new_id


def detach_merge(root: str, cls: ImageClass, hierarchy: str, keep_id: Optional[int] = None) -> int:
    """Detach our overlay(s) on the hierarchy, stopping at `keep_id`. Returns how many."""
    count = 0
    while _is_ours_on_top(root, cls, hierarchy, keep_id):
        path = resolve_in_root(root, hierarchy)
        try:
            m.umount2(path, m.MNT_DETACH)
        except OSError as e:
            raise MountError(f"Failed to unmount {os.fspath(path)!r}: {e.strerror}") from e
        count += 1
        if count > 64:
            raise MountError(f"{os.fspath(path)!r}: more than 64 stacked merges, giving up")
    return count


def _merge_hidden_below(target: str, cls: ImageClass) -> bool:
    """Whether the visible mount on `target` sits right on another overlay merge of the class: one
    that a run left hidden when it died or failed between mounting beneath and detaching."""
    point = os.path.realpath(target)
    stack = [i for i in m.read_mountinfo() if i.mount_point == point]
    parents = {i.parent_id for i in stack}
    tops = [i for i in stack if i.mount_id not in parents]
    if len(tops) != 1:
        return False
    below = [i for i in stack if i.mount_id == tops[0].parent_id]
    return bool(below) and below[0].fstype == "overlay" and below[0].source == cls.value


def swap_in(root: str, item: Assembled) -> str:
    """Put an assembled tree onto its hierarchy (host namespace). Returns what happened."""
    cls, hierarchy = item.image_class, item.hierarchy
    if item.tree_fd is None:
        # Nothing to merge here any more: a full unmerge, which also keeps later submounts.
        if live_merge(root, cls, hierarchy)[1] is None:
            return "untouched"  # and nothing to unmerge: the unmerge path need not even be loaded
        from .unmerge import unmerge_hierarchy

        return "unmerged" if unmerge_hierarchy(root, cls, hierarchy) else "untouched"
    target = item.target
    if not os.path.exists(target):
        _ensure_mutable_dir(root, target, 0o755)
    _, live = live_merge(root, cls, hierarchy)
    try:
        if live is not None and m.have_move_mount_beneath():
            for _ in range(64):
                if not _merge_hidden_below(target, cls):
                    break
                # Detaching the visible merge shows the hidden one, itself a whole merge, so the
                # hierarchy is never missing; the new tree then replaces that one.
                log.info("Removing a merge left hidden below the one on '%s'.", os.fspath(target))
                m.umount2(target, m.MNT_DETACH)
            m.move_mount(
                item.tree_fd, "", m.AT_FDCWD, target, m.MOVE_MOUNT_F_EMPTY_PATH | m.MOVE_MOUNT_BENEATH
            )
            detach_merge(root, cls, hierarchy, keep_id=item.mount_id)
            action = "replaced"
            log.info(
                "Replaced the merge on '%s' in one step (mounted beneath the old one).", os.fspath(target)
            )
        else:
            if live is not None:
                log.warning(
                    "This kernel cannot mount beneath (MOVE_MOUNT_BENEATH, Linux >= 6.5): "
                    "'%s' is briefly missing while it is replaced.",
                    os.fspath(target),
                )
                detach_merge(root, cls, hierarchy)
            m.move_mount(item.tree_fd, "", m.AT_FDCWD, target, m.MOVE_MOUNT_F_EMPTY_PATH)
            action = "merged"
    except OSError as e:
        raise MountError(f"Failed to attach the new overlay on {os.fspath(target)!r}: {e.strerror}") from e
    finally:
        os.close(item.tree_fd)
        item.tree_fd = None
    if action == "merged":
        log.info("Merged extensions into '%s'.", os.fspath(target))
    return action


def discard(items: Sequence[Assembled]) -> None:
    for item in items:
        if item.tree_fd is not None:
            os.close(item.tree_fd)
            item.tree_fd = None
