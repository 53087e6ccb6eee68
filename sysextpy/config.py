# SPDX-License-Identifier: LGPL-2.1-or-later
"""sysext.conf / confext.conf and their drop-ins (spec §8): `[SysExt]` or `[ConfExt]` with Mutable= and
ImagePolicy=. Nothing here raises for bad configuration: every problem becomes a warning.

Where the files are is the view's configuration search (view.search_config_files), observed as a
whole; what they say is parsed here.
"""

from __future__ import annotations

from .errors import ParseError, SysextError
from .model import ImageClass, MutableMode
from .records import record
from .util import parse_bool
from .view import CONFIG_DIRS, read_text

TYPE_CHECKING = False  # typing is not imported at run time: it costs start-up time
if TYPE_CHECKING:
    from collections.abc import Collection
    from typing import Optional

    from .view import LiveView

__all__ = [
    "CONFIG_DIRS",
    "CONFIG_KEYS",
    "ClassConfig",
    "load_config",
    "parse_config",
    "parse_mutable_mode",
]

# Highest precedence first.
CONFIG_KEYS = ("Mutable", "ImagePolicy")

_MUTABLE_NAMES = ", ".join(m.value for m in MutableMode)


def parse_mutable_mode(value: str) -> MutableMode:
    """A --mutable=/Mutable= value: a mode name or a boolean (true-ish is yes, false-ish is no)."""
    for mode in MutableMode:
        if value == mode.value:
            return mode
    try:
        return MutableMode.YES if parse_bool(value) else MutableMode.NO
    except ParseError:
        pass
    raise ParseError(f"Invalid mutable mode {value!r}", hint=f"use one of {_MUTABLE_NAMES}, or a boolean")


# --------------------------------------------------------------------------------------------------
# The file syntax


@record(frozen=True)
class _Assignment:
    key: str
    value: str
    where: str  # "file:line", for warnings


def _logical_lines(text: str) -> list[tuple[int, str]]:
    """(first line number, content) with backslash continuations joined and comments dropped."""
    result: list[tuple[int, str]] = []
    pending: Optional[tuple[int, str]] = None
    for number, raw in enumerate(text.removeprefix("\ufeff").splitlines(), start=1):
        line = raw.strip()
        if line.startswith(("#", ";")):
            continue
        if pending is not None:
            start, line = pending[0], pending[1] + line
            pending = None
        else:
            start = number
        if line.endswith("\\"):
            pending = (start, line[:-1] + " ")
            continue
        result.append((start, line))
    if pending is not None:
        result.append((pending[0], pending[1].rstrip()))
    return result


def _parse_assignments(
    text: str, section: str, *, source: str, known_keys: Collection[str]
) -> tuple[list[_Assignment], list[str]]:
    assignments: list[_Assignment] = []
    warnings: list[str] = []
    current: Optional[str] = None
    for number, line in _logical_lines(text):
        where = f"{source}:{number}"
        if not line:
            continue
        if line.startswith("["):
            if not line.endswith("]") or len(line) < 3:
                warnings.append(f"{where}: invalid section header {line!r}, ignoring the line")
                continue
            current = line[1:-1]
            if current != section and not current.startswith("X-"):
                warnings.append(f"{where}: unknown section [{current}], ignoring it (expected [{section}])")
            continue
        key, sep, value = line.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key:
            warnings.append(f"{where}: {line!r} is not a Key=Value assignment, ignoring it")
            continue
        if current is None:
            warnings.append(f"{where}: assignment {key}= outside of any section, ignoring it")
            continue
        if current != section:
            continue  # the section itself was already warned about
        if key not in known_keys:
            if not key.startswith("X-"):
                warnings.append(f"{where}: unknown key {key}= in [{section}], ignoring it")
            continue
        assignments.append(_Assignment(key, value, where))
    return assignments, warnings


def parse_config(
    text: str, section: str, *, source: str = "<config>", known_keys: Collection[str] = CONFIG_KEYS
) -> tuple[dict[str, str], list[str]]:
    """The known keys of `section` (later assignments win) and warnings about everything ignored.

    systemd unit-file syntax: `[Section]` headers (case-sensitive), `Key=Value` with whitespace
    trimmed, '#' and ';' comment lines, trailing backslash continues a line. Never raises.
    """
    assignments, warnings = _parse_assignments(text, section, source=source, known_keys=known_keys)
    return {a.key: a.value for a in assignments}, warnings


# --------------------------------------------------------------------------------------------------
# Finding and applying the files


@record(frozen=True)
class ClassConfig:
    mutable: Optional[MutableMode] = None
    image_policy: Optional[str] = None  # canonical spelling, already validated
    files: tuple[str, ...] = ()  # paths inside the root, in the order they were applied
    warnings: tuple[str, ...] = ()


def _parse_policy_setting(value: str) -> tuple[Optional[str], Optional[str]]:
    """(canonical policy or None, warning or None) for an ImagePolicy= value.

    Like systemd, words this version does not know are skipped rather than failing the setting; but
    since a rule left without flags allows everything, say so.
    """
    from .policy import format_image_policy, parse_image_policy  # only when the setting is there

    try:
        return format_image_policy(parse_image_policy(value)), None
    except ParseError as strict_error:
        try:
            lenient = format_image_policy(parse_image_policy(value, graceful=True))
        except ParseError as e:
            return None, f"ignoring ImagePolicy={value}: {e}"
        return lenient, f"ImagePolicy={value}: {strict_error}; skipping it, which leaves {lenient!r}"


def load_config(view: LiveView, image_class: ImageClass) -> ClassConfig:
    """The class's configuration inside the view's root: main file, then drop-ins; problems
    become warnings."""
    found, search_warnings = view.config_files(image_class.config_name)
    warnings: list[str] = list(search_warnings)
    files: list[str] = []
    mutable: Optional[MutableMode] = None
    image_policy: Optional[str] = None
    for shown, path in found:
        try:
            text = read_text(view, path)
        except SysextError as e:
            warnings.append(f"ignoring {shown!r}: {e}")
            continue
        files.append(shown)
        assignments, file_warnings = _parse_assignments(
            text, image_class.config_section, source=shown, known_keys=CONFIG_KEYS
        )
        warnings.extend(file_warnings)
        for a in assignments:
            if a.key == "Mutable":
                if not a.value:
                    mutable = None
                    continue
                try:
                    mutable = parse_mutable_mode(a.value)
                except ParseError as e:
                    warnings.append(f"{a.where}: ignoring Mutable={a.value}: {e}")
            elif a.key == "ImagePolicy":
                if not a.value:
                    image_policy = None
                    continue
                parsed, problem = _parse_policy_setting(a.value)
                if problem:
                    warnings.append(f"{a.where}: {problem}")
                if parsed is not None:
                    image_policy = parsed
    return ClassConfig(
        mutable=mutable, image_policy=image_policy, files=tuple(files), warnings=tuple(warnings)
    )
