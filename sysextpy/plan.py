# SPDX-License-Identifier: LGPL-2.1-or-later
"""Plan: discover + read metadata + judge every image -> an immutable Plan. No side effects.

Everything is read through a view of the root (view.py): a directory extension's tree through the
view of that tree, which the view covers by the tree's digest; a raw image's through its mount in
the private workspace. `plan` prints the result; `merge`/`refresh` hand it to apply.py, the only
module that mounts.
"""

from __future__ import annotations

import os

from .discover import Discovery, discover
from .errors import ImageError, ResolveError, SysextError
from .log import log
from .model import (
    Candidate,
    ClassSettings,
    ExtensionVerdict,
    HostInfo,
    ImageClass,
    ImageType,
    Options,
    Skipped,
    Verdict,
)
from .records import record
from .view import LiveView

TYPE_CHECKING = False  # typing is not imported at run time: it costs start-up time
if TYPE_CHECKING:
    from typing import Optional

    from .handoff import HookRun
    from .hooks import HookSearch
    from .images import Workspace


@record(frozen=True)
class ImageMetadata:
    """What was read from inside one image, without merging it."""

    release: Optional[tuple[tuple[str, str], ...]]  # None: no usable extension-release
    release_file: Optional[str]  # path inside the image
    release_reason: str  # why `release` is None, or where it came from
    has_os_release: bool  # the image carries usr/lib/os-release: an OS tree, not an extension
    empty: bool = False  # an empty directory (the documented way to mask a name)


@record(frozen=True)
class ClassPlan:
    settings: ClassSettings
    discovery: Discovery
    verdicts: tuple[ExtensionVerdict, ...]

    @property
    def image_class(self) -> ImageClass:
        return self.settings.image_class

    @property
    def to_merge(self) -> tuple[ExtensionVerdict, ...]:
        """Images to merge, in upstream's order: ascending by name, version-compared."""
        from .versioncomp import version_key

        chosen = [v for v in self.verdicts if v.verdict is Verdict.MERGE]
        return tuple(sorted(chosen, key=lambda v: version_key(v.name)))

    @property
    def skipped(self) -> tuple[Skipped, ...]:
        return self.discovery.skipped

    @property
    def rejected(self) -> tuple[str, ...]:
        bad = [v.name for v in self.verdicts if v.verdict is Verdict.REJECTED]
        bad += [os.fspath(s.entry) for s in self.skipped if s.verdict is Verdict.REJECTED]
        return tuple(bad)


@record(frozen=True)
class Plan:
    root: str
    host: HostInfo
    initrd: bool  # the root is an initrd (has /etc/initrd-release)
    classes: tuple[ClassPlan, ...]
    hook_runs: tuple[HookRun, ...] = ()  # the check hooks run for it, in order

    @property
    def rejected(self) -> tuple[str, ...]:
        return tuple(r for c in self.classes for r in c.rejected)


def host_info(view: LiveView) -> HostInfo:
    from .arch import native_architecture
    from .osrelease import is_initrd_root, load_host_release

    scope = "initrd" if is_initrd_root(view) else "system"
    architecture = native_architecture(view.machine())
    try:
        release = load_host_release(view)
    except SysextError as e:
        return HostInfo(release=None, scope=scope, architecture=architecture, release_error=str(e))
    return HostInfo(release=release, scope=scope, architecture=architecture)


def read_metadata(candidate: Candidate, tree: LiveView) -> ImageMetadata:
    """Read an image's release data from the view of its tree. Raises ImageError when the image
    is broken."""
    from .images import other_class
    from .osrelease import find_extension_release, image_has_os_release

    if candidate.type is ImageType.MSTACK:
        raise ImageError(f"{candidate.name!r} is an .mstack image, which cannot be merged as an extension")
    cls = candidate.image_class
    try:
        has_os_release = cls is ImageClass.SYSEXT and image_has_os_release(tree)
        empty = not tree.listdir(tree.root)
    except (OSError, ResolveError) as e:
        what = e.strerror if isinstance(e, OSError) else str(e)
        raise ImageError(f"cannot read image tree {tree.root!r}: {what}") from e
    lookup = find_extension_release(tree, candidate.name, cls, strict=True)
    if lookup.path is None:
        reason = lookup.reason
        if candidate.type.is_file_backed:
            other = find_extension_release(tree, candidate.name, other_class(cls), strict=True)
            if other.path is None and not has_os_release:
                # Upstream refuses such a raw image outright; we reject it alone.
                raise ImageError(f"not an extension image: {reason}")
            if other.path is not None:
                reason = f"a {other_class(cls).value} image, not a {cls.value} image"
        return ImageMetadata(None, None, reason, has_os_release, empty)
    return ImageMetadata(
        release=lookup.fields,
        release_file="/" + os.path.relpath(lookup.path, tree.root),
        release_reason=lookup.reason,
        has_os_release=has_os_release,
        empty=empty,
    )


def judge(candidate: Candidate, host: HostInfo, *, force: bool, tree: LiveView) -> ExtensionVerdict:
    """The verdict for one image, read from the view of its tree, with a reason a person can act on."""
    from .compat import check_compatibility

    cls = candidate.image_class
    try:
        meta = read_metadata(candidate, tree)
    except ImageError as e:
        return ExtensionVerdict(candidate, Verdict.REJECTED, str(e))
    if meta.has_os_release:
        return ExtensionVerdict(
            candidate,
            Verdict.REJECTED,
            "contains usr/lib/os-release: this is an OS image, not an extension",
        )
    release = meta.release or ()
    if force:
        return ExtensionVerdict(
            candidate, Verdict.MERGE, "compatibility checks skipped (--force)", release, meta.release_file
        )
    if meta.release is None:
        if meta.empty:
            reason = f"empty directory: masks {candidate.name!r} in lower-precedence directories"
        else:
            reason = meta.release_reason
        return ExtensionVerdict(candidate, Verdict.IGNORED, reason)
    ok, reason = check_compatibility(dict(meta.release), host, cls)
    return ExtensionVerdict(
        candidate, Verdict.MERGE if ok else Verdict.IGNORED, reason, release, meta.release_file
    )


def is_tree(candidate: Candidate) -> bool:
    """Whether an image is a tree in the root (read through the view), not a disk image."""
    return candidate.type in (ImageType.DIRECTORY, ImageType.SUBVOLUME, ImageType.MSTACK)


@record(frozen=True)
class Survey:
    """What discovery found, before any image was opened."""

    root: str
    host: HostInfo
    initrd: bool
    settings: tuple[ClassSettings, ...]
    discoveries: tuple[Discovery, ...]

    @property
    def candidates(self) -> tuple[Candidate, ...]:
        return tuple(c for d in self.discoveries for c in d.candidates)


def survey(opts: Options, settings: tuple[ClassSettings, ...], view: LiveView) -> Survey:
    from .osrelease import is_initrd_root

    initrd = is_initrd_root(view)
    host = host_info(view)
    found = []
    for cs in settings:
        with view.scoped(cs.image_class.value):
            found.append(discover(view, cs.image_class, initrd=initrd))
    return Survey(root=opts.root, host=host, initrd=initrd, settings=settings, discoveries=tuple(found))


def stored_inside(view: LiveView, verdict: ExtensionVerdict, settings: ClassSettings) -> ExtensionVerdict:
    """Reject a directory image kept below a hierarchy it has content for (a link from
    /var/lib/extensions into /usr, say): overlayfs refuses a layer inside another layer of the
    same overlay (ELOOP), which would fail the merge of every image, not just this one."""
    c = verdict.candidate
    if verdict.verdict is not Verdict.MERGE or c.type not in (ImageType.DIRECTORY, ImageType.SUBVOLUME):
        return verdict
    path = os.fspath(c.path)
    tree = view.image_view(path)
    for h in settings.hierarchies:
        try:
            target = view.resolve(h)
            tree.resolve(h)  # the image's own copy of the hierarchy
        except ResolveError:
            continue
        if path.startswith(target.rstrip("/") + "/"):
            return ExtensionVerdict(
                c,
                Verdict.REJECTED,
                f"stored inside {h}, a hierarchy it extends: overlayfs cannot use a directory below "
                f"one of its own layers; keep it outside (e.g. in /var/lib/extensions)",
            )
    return verdict


def judge_tree(
    view: LiveView, candidate: Candidate, host: HostInfo, settings: ClassSettings, *, force: bool
) -> ExtensionVerdict:
    """The verdict for an image that is a tree in the root, read through the view."""
    verdict = judge(candidate, host, force=force, tree=view.image_view(os.fspath(candidate.path)))
    return stored_inside(view, verdict, settings)


def judge_all(
    opts: Options,
    found: Survey,
    view: LiveView,
    workspace: Optional[Workspace] = None,
    known: Optional[dict[tuple[str, str], ExtensionVerdict]] = None,
    hooks: Optional[HookSearch] = None,
) -> Plan:
    """Judge every image of a survey: trees through the view (or as `known`, keyed by class and
    name, already judged), disk images through their mounts in the workspace (without one: not
    inspected, which needs root). With `hooks`, each image that would be merged is then shown to
    every check hook, in the workspace."""
    class_plans = []
    hook_runs: list[HookRun] = []
    for cs, disc in zip(found.settings, found.discoveries):
        verdicts = []
        for c in disc.candidates:
            key = (c.image_class.value, c.name)
            if known is not None and key in known:
                verdicts.append(known[key])
            elif is_tree(c):
                verdicts.append(judge_tree(view, c, found.host, cs, force=opts.force))
            elif workspace is None or not workspace.inside:
                reason = f"raw image {c.name!r} not inspected: that needs root (a loop device)"
                verdicts.append(ExtensionVerdict(c, Verdict.REJECTED, reason))
            else:
                try:
                    tree = LiveView(os.fspath(workspace.mount_image(c)), {})
                except ImageError as e:
                    verdicts.append(ExtensionVerdict(c, Verdict.REJECTED, str(e)))
                    continue
                verdicts.append(judge(c, found.host, force=opts.force, tree=tree))
        if hooks is not None and hooks.hooks and workspace is not None and workspace.inside:
            verdicts = [check_image(v, hooks, workspace, hook_runs) for v in verdicts]
        for v in verdicts:
            # Rejections are named, as warnings, at the end of a run (decide.exit_status).
            level = log.info if v.verdict is Verdict.IGNORED else log.debug
            level("%s %s: %s (%s)", cs.image_class.value, v.name, v.verdict.value, v.reason)
        class_plans.append(ClassPlan(settings=cs, discovery=disc, verdicts=tuple(verdicts)))
    return Plan(
        root=found.root,
        host=found.host,
        initrd=found.initrd,
        classes=tuple(class_plans),
        hook_runs=tuple(hook_runs),
    )


def check_image(
    verdict: ExtensionVerdict, hooks: HookSearch, workspace: Workspace, runs: list[HookRun]
) -> ExtensionVerdict:
    """Show an image that would be merged to the check hooks; the first that refuses rejects it."""
    from .hooks import CHECK, release_env, run_hook
    from .images import IMAGE_INNER, image_tree

    if verdict.verdict is not Verdict.MERGE:
        return verdict
    c = verdict.candidate
    cls = c.image_class.value
    try:
        workspace.show_to_hooks(image_tree(c, workspace), IMAGE_INNER)
    except SysextError as e:
        return ExtensionVerdict(c, Verdict.REJECTED, str(e))
    try:
        env = release_env(cls, c.name, verdict.release)
        for hook in hooks.hooks:
            done = run_hook(hooks, hook, CHECK, [cls, c.name, IMAGE_INNER], f"{cls}:{c.name}", env)
            runs.append(done)
            if not done.ok:
                why = done.reason()
                return ExtensionVerdict(c, Verdict.REJECTED, why, verdict.release, verdict.release_file)
    finally:
        workspace.hide_from_hooks(IMAGE_INNER)
    return verdict
