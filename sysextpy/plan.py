"""Plan: discover + read metadata + judge every image -> an immutable Plan. No side effects.

`plan` prints it; `merge`/`refresh` hand it to apply.py, the only module that mounts.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from pathlib import Path

from .discover import Discovery, discover
from .errors import ImageError, SysextError
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

TYPE_CHECKING = False  # typing is not imported at run time: it costs start-up time
if TYPE_CHECKING:
    from typing import Optional

if TYPE_CHECKING:
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
        from .versioncomp import compare_versions

        def by_name(a: ExtensionVerdict, b: ExtensionVerdict) -> int:
            return compare_versions(a.name, b.name)

        chosen = [v for v in self.verdicts if v.verdict is Verdict.MERGE]
        return tuple(sorted(chosen, key=functools.cmp_to_key(by_name)))

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
    root: Path
    host: HostInfo
    initrd: bool  # the root is an initrd (has /etc/initrd-release)
    classes: tuple[ClassPlan, ...]

    @property
    def rejected(self) -> tuple[str, ...]:
        return tuple(r for c in self.classes for r in c.rejected)


def host_info(root: Path, env: Mapping[str, str]) -> HostInfo:
    from .arch import native_architecture
    from .osrelease import is_initrd_root, load_host_release

    scope = "initrd" if is_initrd_root(root) else "system"
    try:
        release = load_host_release(root, env)
    except SysextError as e:
        return HostInfo(release=None, scope=scope, architecture=native_architecture(), release_error=str(e))
    return HostInfo(release=release, scope=scope, architecture=native_architecture())


def read_metadata(candidate: Candidate, workspace: Optional[Workspace]) -> ImageMetadata:
    """Read an image's release data. Raises ImageError when the image is broken."""
    from .images import image_tree, other_class
    from .osrelease import find_extension_release, image_has_os_release

    if candidate.type is ImageType.MSTACK:
        raise ImageError(f"{candidate.name!r} is an .mstack image, which cannot be merged as an extension")
    tree = image_tree(candidate, workspace)
    cls = candidate.image_class
    has_os_release = cls is ImageClass.SYSEXT and image_has_os_release(tree)
    try:
        empty = not any(True for _ in os.scandir(tree))
    except OSError as e:
        raise ImageError(f"cannot read image tree {os.fspath(tree)!r}: {e.strerror}") from e
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
        release=tuple(dict(lookup.fields).items()),
        release_file="/" + os.path.relpath(lookup.path, tree),
        release_reason=lookup.reason,
        has_os_release=has_os_release,
        empty=empty,
    )


def judge(
    candidate: Candidate, host: HostInfo, *, force: bool, workspace: Optional[Workspace] = None
) -> ExtensionVerdict:
    """The verdict for one image, with a reason a person can act on."""
    from .compat import check_compatibility

    cls = candidate.image_class
    try:
        meta = read_metadata(candidate, workspace)
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


@record(frozen=True)
class Survey:
    """What discovery found, before any image was opened."""

    root: Path
    host: HostInfo
    initrd: bool
    settings: tuple[ClassSettings, ...]
    discoveries: tuple[Discovery, ...]

    @property
    def candidates(self) -> tuple[Candidate, ...]:
        return tuple(c for d in self.discoveries for c in d.candidates)


def survey(opts: Options, settings: tuple[ClassSettings, ...], env: Mapping[str, str]) -> Survey:
    from .osrelease import is_initrd_root

    root = opts.root
    initrd = is_initrd_root(root)
    host = host_info(root, env)
    found = tuple(discover(root, cs.image_class, initrd=initrd) for cs in settings)
    return Survey(root=root, host=host, initrd=initrd, settings=settings, discoveries=found)


def stored_inside(root: Path, verdict: ExtensionVerdict, settings: ClassSettings) -> ExtensionVerdict:
    """Reject a directory image kept below a hierarchy it has content for (a link from
    /var/lib/extensions into /usr, say): overlayfs refuses a layer inside another layer of the
    same overlay (ELOOP), which would fail the merge of every image, not just this one."""
    from .chase import resolve_in_root
    from .errors import ResolveError

    c = verdict.candidate
    if verdict.verdict is not Verdict.MERGE or c.type not in (ImageType.DIRECTORY, ImageType.SUBVOLUME):
        return verdict
    path = os.fspath(c.path)
    for h in settings.hierarchies:
        try:
            target = os.fspath(resolve_in_root(root, h))
            resolve_in_root(c.path, h)  # the image's own copy of the hierarchy
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


def judge_all(opts: Options, found: Survey, workspace: Optional[Workspace] = None) -> Plan:
    class_plans = []
    for cs, disc in zip(found.settings, found.discoveries):
        verdicts = tuple(
            stored_inside(found.root, judge(c, found.host, force=opts.force, workspace=workspace), cs)
            for c in disc.candidates
        )
        for v in verdicts:
            level = {Verdict.MERGE: log.debug, Verdict.IGNORED: log.info}.get(v.verdict, log.warning)
            level("%s %s: %s (%s)", cs.image_class.value, v.name, v.verdict.value, v.reason)
        class_plans.append(ClassPlan(settings=cs, discovery=disc, verdicts=verdicts))
    return Plan(root=found.root, host=found.host, initrd=found.initrd, classes=tuple(class_plans))


def make_plan(
    opts: Options,
    settings: tuple[ClassSettings, ...],
    env: Mapping[str, str],
    workspace: Optional[Workspace] = None,
) -> Plan:
    return judge_all(opts, survey(opts, settings, env), workspace)
