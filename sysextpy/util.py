# SPDX-License-Identifier: LGPL-2.1-or-later
"""Small value parsers shared by the CLI, the config files and the release-file code."""

from __future__ import annotations

from .errors import ParseError

TYPE_CHECKING = False  # typing is not imported at run time: it costs start-up time
if TYPE_CHECKING:
    from typing import Optional

_TRUE = frozenset({"1", "yes", "y", "true", "t", "on"})
_FALSE = frozenset({"0", "no", "n", "false", "f", "off"})


def parse_bool(value: str) -> bool:
    """systemd's boolean spellings, case-insensitive: yes/no, true/false, 1/0, on/off, y/n, t/f."""
    folded = value.lower()
    if folded in _TRUE:
        return True
    if folded in _FALSE:
        return False
    raise ParseError(
        f"Invalid boolean {value!r}",
        hint="use one of yes/no, true/false, 1/0, on/off, y/n, t/f",
    )


def is_truthy(value: Optional[str]) -> bool:
    """An environment flag that is set to a true boolean spelling; unset, empty or anything else
    is false (never an error: a flag must not stop the run)."""
    return value is not None and value.strip().lower() in _TRUE


def parse_bool_or_none(value: Optional[str]) -> Optional[bool]:
    """Like parse_bool(), but an absent or empty value means "not set" and gives None."""
    if value is None or value == "":
        return None
    return parse_bool(value)
