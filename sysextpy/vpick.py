# SPDX-License-Identifier: LGPL-2.1-or-later
"""`.v/` directories: pick the best `BASENAME_VERSION[_ARCH][+LEFT[-DONE]]SUFFIX` entry.

Name parsing and ranking are pure; only `pick_version` touches the file system. The rules follow
systemd's vpick as used by sysext discovery (spec §2.5), quirks included, because an image that
systemd-sysext would pick must be the image we pick.
"""

from __future__ import annotations

import errno
import os
import stat

from .arch import is_architecture, native_architecture, secondary_architectures
from .chase import is_within_root, root_relative
from .errors import ResolveError
from .model import ImageClass
from .records import record
from .versioncomp import compare_versions

TYPE_CHECKING = False  # typing is not imported at run time: it costs start-up time
if TYPE_CHECKING:
    from collections.abc import Iterable
    from typing import Optional

    from .view import LiveView

_UINT_MAX = 2**32 - 1  # upstream stores counters as `unsigned`; "no counter" is UINT_MAX
_NAME_MAX = 255
_VERSION_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789.,_-+")
_FORMAT_SUFFIXES = (".raw", ".mstack", "")  # tried in this order; "" always matches


def split_vdir_name(entry_name: str, image_class: ImageClass) -> Optional[tuple[str, str]]:
    """`foo.sysext.raw.v` -> ("foo", ".sysext.raw"): the basename and the suffix entries must carry.

    The class suffix is optional and kept in front of the format suffix; None if the name does not
    end in ".v" or nothing is left for a basename. Further name validity is the caller's business.
    """
    if not entry_name.endswith(".v"):
        return None
    stem = entry_name[: -len(".v")]
    fmt = ""
    for fmt in _FORMAT_SUFFIXES:
        if stem.endswith(fmt):
            stem = stem[: len(stem) - len(fmt)]
            break
    cls = image_class.suffix
    if stem.endswith(cls):
        stem = stem[: -len(cls)]
        fmt = cls + fmt
    if not stem:
        return None
    return stem, fmt


@record(frozen=True)
class VersionedName:
    """What a `.v/` entry name says about itself."""

    filename: str
    version: str
    architecture: Optional[str]  # None: no architecture suffix (fits any architecture)
    tries_left: Optional[int]  # None: no "+LEFT" counter (unlimited)
    tries_done: Optional[int]


def _parse_uint(digits: str) -> Optional[int]:
    if not digits or not all(c in "0123456789" for c in digits):
        return None
    value = int(digits)
    return value if value <= _UINT_MAX else None


def _parse_tries(text: str) -> Optional[tuple[int, int]]:
    """Parse "+LEFT" or "+LEFT-DONE" (decimal, each fitting an unsigned int) into (left, done)."""
    if not text.startswith("+"):
        return None
    left_s, dash, done_s = text[1:].partition("-")
    left = _parse_uint(left_s)
    if left is None:
        return None
    if not dash:
        return left, 0
    done = _parse_uint(done_s)
    if done is None:
        return None
    return left, done


def _version_is_valid(version: str) -> bool:
    return (
        version not in ("", ".", "..")
        and len(version.encode("utf-8", "surrogateescape")) <= _NAME_MAX
        and all(c in _VERSION_CHARS for c in version)
    )


def parse_versioned_name(filename: str, basename: str, suffix: str) -> Optional[VersionedName]:
    """Parse `BASENAME_REST SUFFIX`; None if the name does not match or its version is invalid.

    REST loses, in this order, a tries counter after its last "+" (only if it parses; otherwise the
    "+..." stays in the version) and whatever follows its last "_" (an architecture name, or cut off
    anyway: upstream's quirk). What remains is the version.
    """
    if basename:
        if not filename.startswith(basename + "_"):
            return None
        rest = filename[len(basename) + 1 :]
    else:
        rest = filename
    if suffix:
        if not rest.endswith(suffix):
            return None
        rest = rest[: -len(suffix)]

    tries_left: Optional[int] = None
    tries_done: Optional[int] = None
    plus = rest.rfind("+")
    if plus >= 0:
        tries = _parse_tries(rest[plus:])
        if tries is not None:
            tries_left, tries_done = tries
            rest = rest[:plus]

    architecture: Optional[str] = None
    underscore = rest.rfind("_")
    if underscore >= 0:
        tail = rest[underscore + 1 :]
        if is_architecture(tail):
            architecture = tail
        rest = rest[:underscore]

    if not _version_is_valid(rest):
        return None
    return VersionedName(filename, rest, architecture, tries_left, tries_done)


def _arch_rank(name: VersionedName, native: str, secondary: tuple[str, ...]) -> Optional[int]:
    """0 for native, then the secondaries in order, then "no architecture"; None: foreign, unusable."""
    if name.architecture is None:
        return 1 + len(secondary)
    if name.architecture == native:
        return 0
    if name.architecture in secondary:
        return 1 + secondary.index(name.architecture)
    return None


def _counter(value: Optional[int]) -> int:
    return _UINT_MAX if value is None else value


def _cmp(a: int, b: int) -> int:
    return (a > b) - (a < b)


def best_candidate(
    names: Iterable[VersionedName], native: str, secondary: tuple[str, ...]
) -> Optional[VersionedName]:
    """The entry upstream would pick, or None; entries for foreign architectures are dropped.

    First difference decides: tries left (or no counter) beats exhausted; newer version; native
    before secondary before no architecture; more tries left; fewer tries done; greater file name.
    """
    ranked = [(n, r) for n in names if (r := _arch_rank(n, native, secondary)) is not None]

    def compare(x: tuple[VersionedName, int], y: tuple[VersionedName, int]) -> int:
        (a, ra), (b, rb) = x, y
        left_a, left_b = _counter(a.tries_left), _counter(b.tries_left)
        return (
            _cmp(left_a != 0, left_b != 0)
            or compare_versions(a.version, b.version)
            or -_cmp(ra, rb)
            or _cmp(left_a, left_b)
            or -_cmp(_counter(a.tries_done), _counter(b.tries_done))
            # strcmp() on the raw bytes; str order differs for undecodable (surrogate-escaped) names
            or _cmp_bytes(os.fsencode(a.filename), os.fsencode(b.filename))
        )

    if not ranked:
        return None
    best = ranked[0]  # max() by compare: the first of equals stays (no functools on the boot path)
    for other in ranked[1:]:
        if compare(other, best) > 0:
            best = other
    return best[0]


def _cmp_bytes(a: bytes, b: bytes) -> int:
    return (a > b) - (a < b)


@record(frozen=True)
class Picked:
    path: str  # the chosen entry, fully resolved inside the root, root-prefixed
    name: VersionedName


def pick_version(
    view: LiveView, vdir: str, basename: str, suffix: str, *, native: Optional[str] = None
) -> Optional[Picked]:
    """Pick the best entry of the `.v` directory `vdir` (already resolved inside the view's root,
    root-prefixed). None if nothing fits.

    Every entry whose name fits and whose architecture is usable is resolved inside the root; one of
    the wrong inode type (a regular file or block device for ".raw" suffixes, else a directory) is
    dropped, but one that does not resolve at all, e.g. a dangling symlink, fails the whole pick
    with ResolveError, as upstream does.
    """
    root = view.root
    if not is_within_root(root, vdir):
        raise ResolveError(f"{vdir!r} is not below the root {root!r}", errno=errno.ECHRNG)
    if native is None:
        native = native_architecture(view.machine())
    secondary = secondary_architectures(native)
    want_file = suffix.endswith(".raw")

    try:
        entries = view.listdir(vdir)
    except OSError as e:
        raise ResolveError(
            f"Cannot read versioned directory {vdir!r}: {e.strerror}", errno=e.errno or errno.EIO
        ) from e

    usable: dict[str, tuple[VersionedName, str]] = {}
    for entry in entries:
        name = parse_versioned_name(entry, basename, suffix)
        if name is None or _arch_rank(name, native, secondary) is None:
            continue
        resolved = view.resolve(root_relative(root, f"{vdir.rstrip('/')}/{entry}"))
        try:
            mode = view.stat(resolved).mode
        except OSError as e:
            raise ResolveError(f"Cannot stat {resolved!r}: {e.strerror}", errno=e.errno or errno.EIO) from e
        right_type = (stat.S_ISREG(mode) or stat.S_ISBLK(mode)) if want_file else stat.S_ISDIR(mode)
        if right_type:
            usable[entry] = (name, resolved)

    best = best_candidate((n for n, _ in usable.values()), native, secondary)
    if best is None:
        return None
    return Picked(path=usable[best.filename][1], name=best)
