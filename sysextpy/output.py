"""Tables and JSON on stdout. Human messages go through logging to stderr, never here."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from .model import JsonMode

TYPE_CHECKING = False  # typing is not imported at run time: it costs start-up time
if TYPE_CHECKING:
    from typing import Any


def emit_json(value: Any, mode: JsonMode) -> None:
    import json  # only JSON output pays for it: tables are the default on the boot path

    if mode is JsonMode.PRETTY:
        sys.stdout.write(json.dumps(value, indent=2, ensure_ascii=False) + "\n")
    else:
        sys.stdout.write(json.dumps(value, separators=(",", ":"), ensure_ascii=False) + "\n")


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
    sys.stdout.write(format_table(headers, rows, legend=legend))


def format_usec(usec: int) -> str:
    """A µs timestamp as local time, like systemd's tables ("Sun 2026-11-22 02:32:10 UTC")."""
    if usec <= 0:
        return "n/a"
    import time

    return time.strftime("%a %Y-%m-%d %H:%M:%S %Z", time.localtime(usec / 1_000_000))
