# SPDX-License-Identifier: LGPL-2.1-or-later
"""The inputs of a class's merge: everything that decides what `refresh --always-refresh=yes`
would build, gathered through the view of the root (view.py) without mounting anything.

Per class: the settings (hierarchies, mutable mode and directories, overlay options, noexec,
image policy, --force), the host (its os-release by content, scope, architecture), every entry
of the search directories that did not become an image and why, and per image:

- a tree in the root (a directory extension): its path and type, the digest of its whole tree
  (names, modes, sizes, mtimes, ctimes, link targets), and the verdict with its reason and the
  release data that decided it, by content;
- a disk image: its path, and its identity (view.file_identity: stat fields, a digest of its first
  and last bytes and, outside the hierarchies, the unique id of its mount and its file handle), its
  root hash, the side-cars that vouch for it (signature by content, hash tree by identity) and the
  image policy rule that applies to it; and once per class, the trust material of the root (every
  certificate of its verity.d directories by digest) and what the machine can do (dm-verity,
  kernel signature checks, openssl);
- the administrator's hooks (hooks.py), by name, place and content, and their timeout, where
  the root has any;
- a block device cannot be observed by content: its class is never skipped.

Paths are relative to the root and nothing differs only because /sysroot became /, so the initrd's
inputs and the real root's agree. The inputs are kept in each merge's `sysextpy.json`, so that a
refresh that does happen can say which extension and which field changed.
"""

from __future__ import annotations

import os

from . import __version__
from .chase import MISSING, root_relative
from .errors import ResolveError, SysextError
from .jsonlite import dump_json
from .live import EXTRA_FILE, read_live_extra
from .model import ALL_CLASSES, Candidate, ClassSettings, ExtensionVerdict, HostInfo, ImageType, Options
from .view import sha256

TYPE_CHECKING = False  # typing is not imported at run time: it costs start-up time
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any, Optional

    from .discover import Discovery
    from .dissect import TrustContext
    from .hooks import HookSearch
    from .view import LiveView

__all__ = ["EXTRA_FILE", "read_live_extra"]

UNVERIFIABLE = "unverifiable"


def merged_hierarchies(view: LiveView) -> tuple[str, ...]:
    """Every hierarchy some class may merge over, whatever this run's classes: a disk image below
    one of them may be seen through an overlay, where its mount and file handle are not its own."""
    from .settings import class_hierarchies

    found: list[str] = []
    for cls in ALL_CLASSES:
        try:
            found += class_hierarchies(cls, view.env)
        except SysextError:
            found += cls.default_hierarchies  # the class's settings say what is wrong
    return tuple(found)


def _below(path: str, hierarchies: tuple[str, ...]) -> bool:
    return any(path == h or path.startswith(h.rstrip("/") + "/") for h in hierarchies)


def _strip_root(text: str, prefix: str) -> str:
    return text.replace(prefix, "") if prefix else text


def host_inputs(view: LiveView, host: HostInfo) -> dict[str, Any]:
    """What of the host decides compatibility: its os-release (by content), scope, architecture."""
    from .view import read_text

    source = host.release.source if host.release else ""
    digest = ""
    if source:
        # The same bytes the release was parsed from: the view answers a second read alike.
        digest = sha256(read_text(view, view.resolve(source)).encode("utf-8", "surrogateescape")).hexdigest()
    return {
        "osRelease": source,
        "osReleaseSha256": digest,
        "scope": host.scope,
        "architecture": host.architecture,
    }


def mutable_inputs(view: LiveView, settings: ClassSettings) -> dict[str, Any]:
    """Which persistent mutable directories exist and their modes (in `auto` mode their existence
    decides the layout, in every mode their permission bits must be the hierarchy's)."""
    from .model import MUTABLE_BASE, component_name

    present: dict[str, Any] = {}
    for h in settings.hierarchies:
        try:
            p = view.resolve(f"{MUTABLE_BASE}/{component_name(h)}")
            # the mode alone: what is written into the directory (the upper layer) is no input
            present[h] = [root_relative(view.root, p), view.mode(p)]
        except ResolveError as e:
            if e.errno not in MISSING:
                present[h] = ["error", e.errno]
        except OSError as e:
            present[h] = ["error", e.errno]
    return present


def _verdict_inputs(verdict: ExtensionVerdict, prefix: str) -> dict[str, Any]:
    entry: dict[str, Any] = {"verdict": verdict.verdict.value, "reason": _strip_root(verdict.reason, prefix)}
    if verdict.release_file is not None:
        entry["release"] = [list(pair) for pair in verdict.release]
        entry["releaseFile"] = verdict.release_file
    return entry


def _trust_inputs(
    view: LiveView, candidate: Candidate, trust: TrustContext, located: bool
) -> dict[str, Any]:
    """What decides how a disk image may be mounted, besides its own bytes."""
    from .dissect import image_root_hash, policy_words
    from .verity import find_sidecars

    entry: dict[str, Any] = {}
    policy, source = trust.policy_for(candidate)
    entry["policy"] = [":".join(policy_words(policy, d) for d in ("root", "usr")), source]
    path = os.fspath(candidate.path)
    try:
        side = find_sidecars(view, path)
    except SysextError as e:
        entry["sidecars"] = ["error", _strip_root(str(e), view.root if view.root != "/" else "")]
        return entry
    if side.root_hash is not None:
        entry["rootHash"] = [side.root_hash.hex, side.root_hash.designator]
    else:
        root_hash = image_root_hash(view, candidate)
        if root_hash is not None:
            entry["rootHash"] = [root_hash, "image"]
    if side.signature is not None:
        entry["signature"] = sha256(side.signature.data).hexdigest()
    if side.hash_tree is not None:
        tree = os.fspath(side.hash_tree)
        try:
            entry["hashTree"] = [root_relative(view.root, tree), view.file_identity(tree, located)]
        except OSError as e:
            entry["hashTree"] = [root_relative(view.root, tree), ["error", e.errno]]
    return entry


def image_inputs(
    view: LiveView,
    candidate: Candidate,
    verdict: Optional[ExtensionVerdict],
    trust: Optional[TrustContext],
    hierarchies: tuple[str, ...],
) -> dict[str, Any]:
    """What identifies one image and decides its verdict, as far as it can be known unmounted."""
    path = os.fspath(candidate.path)
    rel = root_relative(view.root, path)
    prefix = view.root if view.root != "/" else ""
    entry: dict[str, Any] = {"type": candidate.type.value, "path": rel}
    if candidate.version is not None:
        entry["version"] = candidate.version
    if candidate.type in (ImageType.DIRECTORY, ImageType.SUBVOLUME, ImageType.MSTACK):
        entry["tree"] = view.tree_digest(path)
        if verdict is not None:
            entry.update(_verdict_inputs(verdict, prefix))
        return entry
    located = candidate.type is ImageType.RAW and not _below(rel, hierarchies)
    try:
        entry["identity"] = view.file_identity(path, located)
    except OSError as e:
        entry["identity"] = ["error", e.errno]
        return entry
    if candidate.type is ImageType.BLOCK:
        entry[UNVERIFIABLE] = "a block device's content cannot be observed"
        return entry
    if trust is not None:
        entry.update(_trust_inputs(view, candidate, trust, located))
    return entry


def trust_inputs(view: LiveView, trust: TrustContext) -> dict[str, Any]:
    """The root's trust material and what the machine can do with it, once per class."""
    search = trust.certificates()
    return {
        "certificates": [[c.name, c.fingerprint.hex()] for c in search.certificates],
        "ignoredCertificates": [list(pair) for pair in search.ignored],
        "dmVerity": trust.dm_verity,
        "veritySignatures": trust.kernel_signatures,
        # openssl only ever checks a signature against a certificate (verity.verify_signature):
        # without one it decides nothing, and is not observed, so that a merge by an initrd built
        # without it (the dracut module leaves it out for a root without certificates) is
        # confirmed by the real root, which has it.
        "openssl": view.capability("openssl") if search.certificates else None,
    }


def class_inputs(
    opts: Options,
    settings: ClassSettings,
    discovery: Discovery,
    verdicts: Mapping[str, ExtensionVerdict],
    host_part: Mapping[str, Any],
    view: LiveView,
    trust: Optional[TrustContext],
    hooks: Optional[HookSearch] = None,
) -> dict[str, Any]:
    """Everything that decides this class's merge. `verdicts` holds those of the trees, by name."""
    prefix = view.root if view.root != "/" else ""
    hierarchies = merged_hierarchies(view)
    images: dict[str, Any] = {}
    disk_images = False
    for c in discovery.candidates:
        images[c.name] = image_inputs(view, c, verdicts.get(c.name), trust, hierarchies)
        disk_images = disk_images or c.type.is_file_backed
    not_images = sorted(
        (root_relative(view.root, s.entry), _strip_root(s.reason, prefix)) for s in discovery.skipped
    )
    inputs: dict[str, Any] = {
        "tool": __version__,
        "class": settings.image_class.value,
        "hierarchies": list(settings.hierarchies),
        "mutable": settings.mutable.value,
        "mutableDirs": mutable_inputs(view, settings),
        "overlayOptions": settings.overlay_options,
        "noexec": settings.noexec,
        "imagePolicy": settings.image_policy,
        "force": opts.force,
        "host": dict(host_part),
        "images": images,
        "notImages": [list(pair) for pair in not_images],
    }
    if disk_images and trust is not None:
        inputs["trust"] = trust_inputs(view, trust)
    if hooks is not None and (hooks.hooks or hooks.ignored):
        # Only where there are some: a root without hooks keeps the fingerprint it had before.
        inputs["hooks"] = hooks.inputs()
    return inputs


def digest(inputs: Mapping[str, Any]) -> str:
    text = dump_json(inputs, ascii_only=False)
    return sha256(text.encode("utf-8", "surrogateescape")).hexdigest()


def unverifiable(inputs: Mapping[str, Any]) -> Optional[str]:
    """Why a class's inputs cannot vouch for its merge (a block device as an image), or None."""
    images = inputs.get("images")
    for name, entry in sorted(images.items() if isinstance(images, dict) else ()):
        if isinstance(entry, dict) and entry.get(UNVERIFIABLE):
            return f"extension {name!r}: {entry[UNVERIFIABLE]}"
    return None


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
            if key in ("host", "trust", "hooks"):
                was, now = _mapping(old.get(key)), _mapping(new.get(key))
                fields = sorted(k for k in set(was) | set(now) if was.get(k) != now.get(k))
                changes.append(f"{key} changed: {', '.join(fields)}")
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
