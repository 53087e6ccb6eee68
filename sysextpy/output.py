# SPDX-License-Identifier: LGPL-2.1-or-later
"""Tables and JSON on stdout. Human messages go through logging to stderr, never here."""

from __future__ import annotations

import sys

from .model import JsonMode

TYPE_CHECKING = False  # typing is not imported at run time: it costs start-up time
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Any


def _write(text: str) -> None:
    """Write to stdout; a path that is not UTF-8 (decoded with surrogateescape) goes out as the
    bytes it was, like ls and systemd's tables print it, instead of failing the run."""
    try:
        sys.stdout.write(text)
    except UnicodeEncodeError:
        buffer = getattr(sys.stdout, "buffer", None)
        if buffer is None:  # a text-only stream: say it as escapes rather than not at all
            sys.stdout.write(text.encode("utf-8", "backslashreplace").decode("ascii", "replace"))
            return
        sys.stdout.flush()
        buffer.write(text.encode("utf-8", "surrogateescape"))
        buffer.flush()


def _json_text(value: Any, mode: JsonMode, ascii_only: bool) -> str:
    """json.dumps(value, indent=2) for pretty, json.dumps(value, separators=(",", ":")) for short."""
    from .jsonlite import dump_json, dump_json_indented

    if mode is JsonMode.PRETTY:
        return dump_json_indented(value, indent="  ", ascii_only=ascii_only)
    return dump_json(value, ascii_only=ascii_only, sort_keys=False)


def emit_json(value: Any, mode: JsonMode) -> None:
    text = _json_text(value, mode, ascii_only=False)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        # A string that is not valid Unicode (a path that is not UTF-8): JSON must stay UTF-8, so
        # escape everything; "\udcXX" decodes back to the path's bytes with os.fsencode().
        text = _json_text(value, mode, ascii_only=True)
    _write(text + "\n")


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]], *, legend: bool = True) -> str:
    """Left-aligned columns; the last column is not padded. Headers upper-case, like systemd's tables."""
    all_rows = ([list(h.upper() for h in headers)] if legend else []) + [list(r) for r in rows]
    if not all_rows:
        return ""
    widths = [max(len(r[i]) for r in all_rows) for i in range(len(headers))]
    lines = []
    for row in all_rows:
        cells = [cell.ljust(widths[i]) if i < len(row) - 1 else cell for i, cell in enumerate(row)]
        lines.append(" ".join(cells).rstrip())
    return "\n".join(lines) + "\n"


def emit_table(headers: Sequence[str], rows: Sequence[Sequence[str]], *, legend: bool = True) -> None:
    _write(format_table(headers, rows, legend=legend))


def format_usec(usec: int) -> str:
    """A µs timestamp as local time, like systemd's tables ("Sun 2026-11-22 02:32:10 UTC")."""
    if usec <= 0:
        return "n/a"
    import time

    return time.strftime("%a %Y-%m-%d %H:%M:%S %Z", time.localtime(usec / 1_000_000))
