# SPDX-License-Identifier: LGPL-2.1-or-later
"""Discovery: search directories inside the root -> named candidate images.

Follows upstream's rules (shadowing by name in precedence order, `.raw` and class suffixes, `.v/`
directories, dangling links skipped) and records *why* every entry that does not become an image
was left out, so that `plan` can say it.
"""

from __future__ import annotations

import errno
import os
import stat

from .chase import MISSING, join_root, root_relative
from .errors import ResolveError, SysextError
from .model import Candidate, ImageClass, ImageType, Skipped, Verdict
from .records import record

TYPE_CHECKING = False  # typing is not imported at run time: it costs start-up time
if TYPE_CHECKING:
    from typing import Optional

    from .view import LiveView

NAME_MAX = 255
# The ESP and XBOOTLDR: the real root mounts them (systemd-gpt-auto-generator, or fstab), the
# initrd does not; images are often kept there, linked from a search directory.
BOOT_MOUNT_POINTS = ("/efi", "/boot")


def invalid_name_reason(name: str) -> Optional[str]:
    """Why `name` cannot be an image name (upstream's rules), or None when it is fine."""
    if not name or name in (".", ".."):
        return "empty name or '.'/'..'"
    if "/" in name:
        return "name contains '/'"
    if len(name.encode("utf-8", "surrogateescape")) > NAME_MAX:
        return f"name longer than {NAME_MAX} bytes"
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in name):
        return "name contains control characters"
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return "name is not valid UTF-8"
    if name.startswith(".#"):
        return "name starts with '.#' (a lock or temporary file)"
    return None


def strip_suffix(name: str, suffix: str) -> str:
    return name[: -len(suffix)] if suffix and name.endswith(suffix) and len(name) > len(suffix) else name


@record(frozen=True)
class Discovery:
    image_class: ImageClass
    candidates: tuple[Candidate, ...]  # one per name, in precedence order
    skipped: tuple[Skipped, ...]  # entries that did not become (winning) images, with the reason
    search_dirs: tuple[str, ...]
    missing_dirs: tuple[str, ...]  # search directories that do not exist inside the root
    warnings: tuple[str, ...] = ()  # search directories and entries that could not be used, and why


def _usec(seconds_ns: int) -> int:
    return seconds_ns // 1000


class Deferral:
    """Which links that lead nowhere lead onto a file system the initrd does not mount, so that the
    real root is to merge what they name.

    Everything is asked of the view, and only for a link that leads nowhere: the root's fstab,
    whether the mount point is mounted, and last whether this process runs in an initrd (an
    observation that differs in the real root, so it is taken only where the verdict needs it)."""

    def __init__(self, view: LiveView) -> None:
        self.view = view
        self._points: Optional[list[str]] = None

    def mount_points(self) -> list[str]:
        if self._points is None:
            from .fstab import parse_fstab_mount_points
            from .view import read_text

            try:
                text = read_text(self.view, self.view.resolve("/etc/fstab"))
            except (ResolveError, SysextError):
                text = ""  # no fstab, or an unreadable one: only the ESP and XBOOTLDR count
            self._points = [*parse_fstab_mount_points(text), *BOOT_MOUNT_POINTS]
        return self._points

    def reason(self, inner: str) -> Optional[str]:
        """Why the entry `inner` (inside the root) is deferred, or None when it is not."""
        from .fstab import owning_mount_point

        view = self.view
        try:
            leads = root_relative(view.root, view.resolve(inner, missing_ok=True))
        except ResolveError:
            return None  # a loop or the like: not a matter of mounting
        owner = owning_mount_point(leads, self.mount_points())
        if not owner:
            return None
        try:
            mounted = view.is_mount_point(view.resolve(owner))
        except ResolveError:
            mounted = False  # not even the mount point is there
        except OSError:
            return None
        if mounted or not view.in_initrd():
            return None
        return (
            f"its source {leads!r} lies on {owner}, which the initrd does not mount: the real root merges it"
        )


def _entry_to_candidate(
    view: LiveView, image_class: ImageClass, search_dir: str, entry_name: str, deferral: Deferral
) -> tuple[Optional[Candidate], Optional[Skipped]]:
    entry = join_root(view.root, f"{search_dir}/{entry_name}")
    inner = f"{search_dir}/{entry_name}"

    def skip(reason: str, verdict: Verdict = Verdict.IGNORED, name: Optional[str] = None) -> Skipped:
        return Skipped(entry=entry, image_class=image_class, reason=reason, name=name, verdict=verdict)

    try:
        resolved = view.resolve(inner)
    except ResolveError as e:
        if e.errno == errno.ENOENT:
            deferred = deferral.reason(inner)
            if deferred is not None:
                return None, skip(deferred, Verdict.DEFERRED)
            try:
                target = view.readlink(entry)
            except OSError:
                target = "?"
            return None, skip(f"dangling symlink to {target!r} (inside the root)")
        return None, skip(f"cannot resolve inside the root: {e}", Verdict.REJECTED)
    try:
        st = view.stat(resolved)
    except OSError as e:
        return None, skip(f"cannot stat {resolved!r}: {e.strerror}", Verdict.REJECTED)

    version: Optional[str] = None
    mode = st.mode
    if stat.S_ISREG(mode):
        if not entry_name.endswith(".raw"):
            return None, skip("regular file without the '.raw' suffix")
        name = strip_suffix(strip_suffix(entry_name, ".raw"), image_class.suffix)
        image_type = ImageType.RAW
    elif stat.S_ISDIR(mode) and entry_name.endswith(".v"):
        from .arch import native_architecture
        from .vpick import pick_version, split_vdir_name

        split = split_vdir_name(entry_name, image_class)
        if split is None:
            return None, skip("not a valid '.v' directory name")
        basename, suffix = split
        try:
            picked = pick_version(
                view, resolved, basename, suffix, native=native_architecture(view.machine())
            )
        except ResolveError as e:
            return None, skip(f"'.v' directory has an unresolvable entry: {e}", name=basename)
        if picked is None:
            return None, skip(
                f"'.v' directory has no usable {basename}_VERSION{suffix} entry", name=basename
            )
        name = basename
        resolved = os.fspath(picked.path)
        version = picked.name.version
        st = view.stat(resolved)
        mode = st.mode
        image_type = ImageType.RAW if suffix.endswith(".raw") else ImageType.DIRECTORY
        if stat.S_ISBLK(mode):
            image_type = ImageType.BLOCK
    elif stat.S_ISDIR(mode):
        name = strip_suffix(strip_suffix(entry_name, ".mstack"), image_class.suffix)
        image_type = ImageType.MSTACK if resolved.endswith(".mstack") else ImageType.DIRECTORY
    elif stat.S_ISBLK(mode):
        name = entry_name
        image_type = ImageType.BLOCK
    else:
        kind = "character device" if stat.S_ISCHR(mode) else "FIFO" if stat.S_ISFIFO(mode) else "socket"
        note = ""
        if stat.S_ISCHR(mode):
            note = " (a link to /dev/null does not mask an image; use an empty directory of the same name)"
        return None, skip(f"{kind}, not an image{note}")

    bad = invalid_name_reason(name)
    if bad is not None:
        return None, skip(f"invalid image name {name!r}: {bad}")

    return (
        Candidate(
            name=name,
            image_class=image_class,
            type=image_type,
            path=resolved,
            entry=entry,
            search_dir=search_dir,
            mtime_usec=_usec(st.mtime_ns),
            crtime_usec=0,
            version=version,
        ),
        None,
    )


def discover(view: LiveView, image_class: ImageClass, *, initrd: bool) -> Discovery:
    """Scan the class's search directories inside the view's root. Never raises for a bad entry;
    a search directory that cannot be opened is recorded as a rejected entry and scanning goes on."""
    search_dirs = image_class.search_dirs(initrd)
    winners: dict[str, Candidate] = {}
    order: list[str] = []
    skipped: list[Skipped] = []
    missing: list[str] = []
    warnings: list[str] = []
    deferral = Deferral(view)
    for search_dir in search_dirs:
        try:
            names = view.listdir(view.resolve(search_dir))
        except ResolveError as e:
            if e.errno in MISSING:
                missing.append(search_dir)
                continue
            reason = f"search directory cannot be used: {e}"
            warnings.append(f"{search_dir}: {reason}")
            skipped.append(Skipped(search_dir, image_class, reason, verdict=Verdict.REJECTED))
            continue
        except FileNotFoundError:
            missing.append(search_dir)
            continue
        except OSError as e:
            reason = f"search directory cannot be read: {e.strerror}"
            warnings.append(f"{search_dir}: {reason}")
            skipped.append(Skipped(search_dir, image_class, reason, verdict=Verdict.REJECTED))
            continue
        for entry_name in names:
            if entry_name.startswith(".sysupdate."):
                continue  # a download in progress, never an image
            candidate, skip = _entry_to_candidate(view, image_class, search_dir, entry_name, deferral)
            if skip is not None:
                skipped.append(skip)
                if skip.verdict is Verdict.REJECTED:
                    warnings.append(f"{search_dir}/{entry_name}: {skip.reason}")
                continue
            assert candidate is not None
            winner = winners.get(candidate.name)
            if winner is not None:
                skipped.append(
                    Skipped(
                        entry=candidate.entry,
                        image_class=image_class,
                        reason=f"shadowed by {os.fspath(winner.entry)!r}",
                        name=candidate.name,
                    )
                )
                continue
            winners[candidate.name] = candidate
            order.append(candidate.name)
    return Discovery(
        image_class=image_class,
        candidates=tuple(winners[n] for n in order),
        skipped=tuple(skipped),
        search_dirs=search_dirs,
        missing_dirs=tuple(missing),
        warnings=tuple(warnings),
    )
