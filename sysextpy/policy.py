# SPDX-License-Identifier: LGPL-2.1-or-later
"""Image policy strings, systemd.image-policy(7): grammar, defaults and queries (pure).

    policy := "" | "-" | "*" | "~" | rule (":" rule)*
    rule   := [designator] "=" [flag ("+" flag)*]      (empty designator: the default rule)

Flags are protection levels (verity, signed, encrypted, encryptedwithintegrity, unprotected, unused,
absent, and the shortcuts open and ignore), GPT flag requirements (read-only-on/off, growfs-on/off) and
file system types (btrfs, erofs, ext4, f2fs, squashfs, vfat, xfs). A rule without protection flags
allows every protection; partitions without a rule follow the default rule, which is "ignore" unless
given. root-verity/usr-verity and their -sig partitions without a rule are derived from the data
partition they protect.
"""

from __future__ import annotations

import os

from .errors import ParseError
from .model import ImageClass
from .records import record

TYPE_CHECKING = False  # typing is not imported at run time: it costs start-up time
if TYPE_CHECKING:
    from collections.abc import Iterable
    from typing import Optional

    from .chase import StrPath

__all__ = [
    "DESIGNATORS",
    "PROTECTIONS",
    "ImagePolicy",
    "default_policy",
    "effective_policy",
    "format_image_policy",
    "initrd_extra_policy",
    "parse_image_policy",
    "partition_allowed",
    "policies_equivalent",
]

# In systemd's PartitionDesignator order, which is also the order rules are printed in.
DESIGNATORS = (
    "root",
    "usr",
    "home",
    "srv",
    "esp",
    "xbootldr",
    "swap",
    "root-verity",
    "usr-verity",
    "root-verity-sig",
    "usr-verity-sig",
    "tmp",
    "var",
)
_VERITY_OF = {"root": "root-verity", "usr": "usr-verity"}
_HASH_TO_DATA = {"root-verity": "root", "usr-verity": "usr"}
_SIG_TO_DATA = {"root-verity-sig": "root", "usr-verity-sig": "usr"}

# Protection levels, in the order systemd prints them.
PROTECTIONS = ("verity", "signed", "encrypted", "encryptedwithintegrity", "unprotected", "unused", "absent")
_READ_ONLY = ("read-only-on", "read-only-off")
_GROWFS = ("growfs-off", "growfs-on")
_FSTYPES = ("btrfs", "erofs", "ext4", "f2fs", "squashfs", "vfat", "xfs")
_FLAG_ORDER = PROTECTIONS + _READ_ONLY + _GROWFS + _FSTYPES

_USE = frozenset(PROTECTIONS)
OPEN = _USE
IGNORE = frozenset({"unused", "absent"})
ABSENT = frozenset({"absent"})
_SHORTCUTS = {"open": OPEN, "ignore": IGNORE}
_KNOWN_FLAGS = frozenset(_FLAG_ORDER)
_ENCRYPTION = frozenset({"encrypted", "encryptedwithintegrity"})
_VERITY = frozenset({"verity", "signed"})

Flags = frozenset[str]


@record(frozen=True)
class ImagePolicy:
    """A parsed policy: the flags written for each listed partition, and the default rule's flags.

    Flags are stored as written (shortcuts expanded), like systemd does; use flags_for() for the
    effective flags of a partition. Equality is "written the same way"; policies_equivalent() compares
    outcomes.
    """

    rules: tuple[tuple[str, Flags], ...] = ()  # sorted in DESIGNATORS order, each designator once
    default: Flags = IGNORE

    def rule(self, designator: str) -> Optional[Flags]:
        for name, flags in self.rules:
            if name == designator:
                return flags
        return None

    def flags_for(self, designator: str) -> Flags:
        """Effective flags for a partition: its rule, else derived from its data partition, else default."""
        _check_designator(designator)
        flags = self._explicit_or_derived(designator)
        if flags is None:
            return _normalize(self.default, designator)
        return flags

    def _explicit_or_derived(self, designator: str) -> Optional[Flags]:
        written = self.rule(designator)
        if written is not None:
            return _normalize(written, designator)
        data = _HASH_TO_DATA.get(designator)
        needed = _VERITY
        if data is None:
            data = _SIG_TO_DATA.get(designator)
            needed = frozenset({"signed"})
        if data is None:
            return None
        data_flags = self._explicit_or_derived(data)
        if data_flags is None or not (data_flags & needed):
            return None
        # The hash/signature partition is itself unprotected data; it may be unused/absent when the
        # data partition may be, and it follows the data partition's GPT flag requirements.
        inherited = data_flags & (IGNORE | frozenset(_READ_ONLY + _GROWFS))
        return _normalize(frozenset({"unprotected"}) | inherited, designator)


def _check_designator(designator: str) -> None:
    if designator not in DESIGNATORS:
        raise ValueError(f"unknown partition designator {designator!r}; known: {', '.join(DESIGNATORS)}")


def _extend(flags: Flags) -> Flags:
    """Fill unspecified groups with "any": no protection flag means all, no on/off flag means both."""
    if not flags & _USE:
        flags |= OPEN
    if not flags & frozenset(_READ_ONLY):
        flags |= frozenset(_READ_ONLY)
    if not flags & frozenset(_GROWFS):
        flags |= frozenset(_GROWFS)
    return flags


def _normalize(flags: Flags, designator: str) -> Flags:
    flags = _extend(flags)
    if designator in _HASH_TO_DATA or designator in _SIG_TO_DATA:
        # Hash and signature partitions are the protection; protecting them makes no sense.
        flags -= _VERITY | _ENCRYPTION
    if designator not in _VERITY_OF:
        flags -= _VERITY
    if flags & _USE == ABSENT:
        flags -= frozenset(_READ_ONLY + _GROWFS)
    return flags


# --------------------------------------------------------------------------------------------------
# Parsing


def _parse_flags(text: str, rule: str, policy: str, graceful: bool) -> Flags:
    text = text.strip()
    if text in ("", "-"):
        return frozenset()
    words = text.split("+")
    if words[-1] == "":
        words.pop()  # a trailing '+' is tolerated, like systemd's word splitting does
    flags: set[str] = set()
    for raw in words:
        word = raw.strip()
        if word in _SHORTCUTS:
            flags |= _SHORTCUTS[word]
        elif word in _KNOWN_FLAGS:
            flags.add(word)
        elif not graceful:
            raise ParseError(
                f"Unknown partition policy flag {word!r} in rule {rule!r} of image policy {policy!r}",
                hint="known flags: " + ", ".join(("open", "ignore") + _FLAG_ORDER),
            )
    return frozenset(flags)


def parse_image_policy(text: str, *, graceful: bool = False) -> ImagePolicy:
    """Parse an image policy string; ParseError quotes the offending word.

    graceful=True skips unknown designators and flags instead (what systemd does for configuration
    files, so newer policy words do not break older readers).
    """
    stripped = text.strip()
    if stripped in ("", "-"):
        return ImagePolicy(default=IGNORE)
    if stripped == "*":
        return ImagePolicy(default=OPEN)
    if stripped == "~":
        return ImagePolicy(default=ABSENT)

    elements = stripped.split(":")
    if elements[-1] == "":
        elements.pop()  # a trailing ':' is tolerated, like systemd's word splitting does
    rules: dict[str, Flags] = {}
    default: Optional[Flags] = None
    for element in elements:
        designator, sep, flag_text = element.partition("=")
        if not sep:
            raise ParseError(
                f"Missing '=' in rule {element!r} of image policy {text!r}",
                hint="rules look like PARTITION=FLAG+FLAG (root=verity+signed), or =FLAGS for the default",
            )
        designator = designator.strip()
        if not designator:
            if default is not None:
                raise ParseError(f"Default rule given more than once in image policy {text!r}")
            default = _parse_flags(flag_text, element, text, graceful)
            continue
        if designator not in DESIGNATORS:
            if graceful:
                continue
            raise ParseError(
                f"Unknown partition designator {designator!r} in image policy {text!r}",
                hint="known designators: " + ", ".join(DESIGNATORS),
            )
        if designator in rules:
            raise ParseError(f"Partition {designator!r} has more than one rule in image policy {text!r}")
        rules[designator] = _parse_flags(flag_text, element, text, graceful)
    ordered = tuple((d, rules[d]) for d in DESIGNATORS if d in rules)
    return ImagePolicy(rules=ordered, default=IGNORE if default is None else default)


# --------------------------------------------------------------------------------------------------
# Formatting and comparing


def _format_flags(flags: Flags) -> str:
    words: list[str] = []
    use = flags & _USE
    if use == OPEN:
        words.append("open")
    elif use == IGNORE:
        words.append("ignore")
    else:
        words.extend(f for f in PROTECTIONS if f in use)
    for pair in (_READ_ONLY, _GROWFS):
        present = [f for f in pair if f in flags]
        if len(present) == 1:  # both or neither means "don't care"
            words.extend(present)
    words.extend(f for f in _FSTYPES if f in flags)
    return "+".join(words) if words else "-"


def _matches_everywhere(policy: ImagePolicy, expected: Flags) -> bool:
    if _extend(policy.default) != _extend(expected):
        return False
    return all(policy.flags_for(d) == _normalize(expected, d) for d in DESIGNATORS)


def format_image_policy(policy: ImagePolicy) -> str:
    """The shortest spelling systemd would print: "*", "-", "~", or rules that differ from the default."""
    for word, flags in (("*", OPEN), ("-", IGNORE), ("~", ABSENT)):
        if _matches_everywhere(policy, flags):
            return word
    # Leave out every rule the policy means anyway (by default, or derived from the partition a
    # hash or signature partition protects), one at a time, checking the whole meaning each time.
    kept = list(policy.rules)
    for rule in policy.rules:
        trial = [r for r in kept if r != rule]
        if policies_equivalent(ImagePolicy(rules=tuple(trial), default=policy.default), policy):
            kept = trial
    parts = [f"{designator}={_format_flags(flags)}" for designator, flags in kept]
    if _extend(policy.default) != _extend(IGNORE):
        parts.append(f"={_format_flags(policy.default)}")
    return ":".join(parts) if parts else "-"


def policies_equivalent(a: ImagePolicy, b: ImagePolicy) -> bool:
    """Whether two policies decide every partition the same way, however they are written."""
    if _extend(a.default) != _extend(b.default):
        return False
    return all(a.flags_for(d) == b.flags_for(d) for d in DESIGNATORS)


# --------------------------------------------------------------------------------------------------
# Queries and built-in policies


def partition_allowed(policy: ImagePolicy, partition: str, protection: str) -> bool:
    """Whether `partition` may be in state `protection` (one of PROTECTIONS) under the policy."""
    if protection not in PROTECTIONS:
        raise ValueError(f"unknown protection {protection!r}; known: {', '.join(PROTECTIONS)}")
    return protection in policy.flags_for(partition)


def _rules(pairs: Iterable[tuple[str, Iterable[str]]]) -> tuple[tuple[str, Flags], ...]:
    return tuple((d, frozenset(f)) for d, f in pairs)


_EXTENSION_DATA = ("verity", "signed", "encrypted", "unprotected", "absent")
_STRICT_DATA = ("signed", "absent")

SYSEXT_POLICY = ImagePolicy(rules=_rules([("root", _EXTENSION_DATA), ("usr", _EXTENSION_DATA)]))
CONFEXT_POLICY = ImagePolicy(rules=_rules([("root", _EXTENSION_DATA)]))
SYSEXT_STRICT_POLICY = ImagePolicy(rules=_rules([("root", _STRICT_DATA), ("usr", _STRICT_DATA)]))
CONFEXT_STRICT_POLICY = ImagePolicy(rules=_rules([("root", _STRICT_DATA)]))
DENY_POLICY = ImagePolicy(default=ABSENT)


def default_policy(image_class: ImageClass) -> ImagePolicy:
    """The built-in policy (§7.4.1): root (and for sysext usr) in any protection or absent, rest ignored."""
    return SYSEXT_POLICY if image_class is ImageClass.SYSEXT else CONFEXT_POLICY


def _below_extra(image_path: StrPath) -> Optional[list[str]]:
    """The components of `image_path` below /.extra, or None when it is not there. Read as
    pathlib.PurePosixPath reads it: empty and "." components dropped, ".." kept as a name, and a
    path that starts with exactly two slashes has a root of its own (POSIX), so is not below it."""
    text = os.fspath(image_path)
    if not text.startswith("/") or (text.startswith("//") and not text.startswith("///")):
        return None
    parts = [p for p in text.split("/") if p not in ("", ".")]
    if not parts or parts[0] != ".extra":
        return None
    return parts[1:]


def initrd_extra_policy(image_path: StrPath) -> Optional[ImagePolicy]:
    """The stricter policy for images passed in from the ESP via /.extra/ (§7.4.2), or None.

    image_path is the resolved image path inside the root. /.extra/sysext and /.extra/global_sysext
    must be signed sysext images, /.extra/confext and /.extra/global_confext signed confext images,
    and anything else below /.extra/ is denied.
    """
    below = _below_extra(image_path)
    if below is None:
        return None
    if below and below[0] in ("sysext", "global_sysext"):
        return SYSEXT_STRICT_POLICY
    if below and below[0] in ("confext", "global_confext"):
        return CONFEXT_STRICT_POLICY
    return DENY_POLICY


def effective_policy(
    image_class: ImageClass,
    image_path: StrPath,
    *,
    explicit: Optional[ImagePolicy],
    initrd_without_root: bool,
) -> ImagePolicy:
    """The policy an image is dissected with at merge time (§7.4): explicit, /.extra rules, or default.

    initrd_without_root: the host is an initrd and no --root was given (only then do /.extra rules apply).
    """
    if explicit is not None:
        return explicit
    if initrd_without_root:
        extra = initrd_extra_policy(image_path)
        if extra is not None:
            return extra
    return default_policy(image_class)
