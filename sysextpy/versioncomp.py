# SPDX-License-Identifier: LGPL-2.1-or-later
"""Version ordering exactly as systemd's `strverscmp_improved()` (UAPI version format specification).

Used to pick the newest entry of a `.v/` directory and to order extensions by name. Deliberately a
character-by-character port of the published rules rather than a tokenizer: the rules have corner
cases (separator prefixes, `~` before end of string, ignored characters acting as separators) that
a cleverer formulation would silently change.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing is not imported at run time: it costs start-up time
if TYPE_CHECKING:
    from functools import cmp_to_key
else:
    try:
        # The C function functools re-exports, without functools' own imports (collections...).
        from _functools import cmp_to_key
    except ImportError:  # an interpreter without it
        from functools import cmp_to_key

_DIGITS = frozenset("0123456789")
_ALPHA = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
# Everything else is skipped between segments, e.g. "123_a" == "123a". Only ASCII counts: upstream
# works on bytes and every byte of a multi-byte UTF-8 sequence is >= 0x80, hence ignored too.
_VALID = _DIGITS | _ALPHA | frozenset("~-^.")


def _sign(x: int) -> int:
    return (x > 0) - (x < 0)


def _at(s: str, i: int) -> str:
    """The character at `i`, or "" past the end (upstream's NUL terminator)."""
    return s[i] if i < len(s) else ""


def _run_end(s: str, i: int, charset: frozenset[str]) -> int:
    while i < len(s) and s[i] in charset:
        i += 1
    return i


def compare_versions(a: str, b: str) -> int:
    """-1 if `a` is older than `b`, 0 if equivalent, 1 if newer.

    Newest-last example ordering: 122.1 < 123~rc1-1 < 123 < 123-a < 123-a.1 < 123-1 < 123-1.1 <
    123^post1 < 123.a-1 < 123.1-1 < 123a-1 < 124-1.
    """
    i = j = 0
    while True:
        while i < len(a) and a[i] not in _VALID:
            i += 1
        while j < len(b) and b[j] not in _VALID:
            j += 1

        # "~" marks a pre-release: older than anything, including the end of the other string.
        ca, cb = _at(a, i), _at(b, j)
        if ca == "~" or cb == "~":
            if ca != cb:
                return -1 if ca == "~" else 1
            i += 1
            j += 1

        # Apart from "~" segments, the string with more segments is newer.
        ca, cb = _at(a, i), _at(b, j)
        if ca == "" or cb == "":
            return _sign((ca != "") - (cb != ""))

        # Separator prefixes, each older than "no such prefix": "-" (release), "^" (patch), "." (point).
        for sep in "-^.":
            ca, cb = _at(a, i), _at(b, j)
            if ca == sep or cb == sep:
                if ca != cb:
                    return -1 if ca == sep else 1
                i += 1
                j += 1

        ca, cb = _at(a, i), _at(b, j)
        if ca in _DIGITS or cb in _DIGITS:
            # A numeric segment is newer than a non-numeric one (which may be empty here).
            ea, eb = _run_end(a, i, _DIGITS), _run_end(b, j, _DIGITS)
            r = _sign((ea > i) - (eb > j))
            if r:
                return r
            # Leading zeros do not count; then the longer number is larger, then digit by digit.
            while i < ea and a[i] == "0":
                i += 1
            while j < eb and b[j] == "0":
                j += 1
            r = _sign((ea - i) - (eb - j))
            if r:
                return r
            da, db = a[i:ea], b[j:eb]
            if da != db:
                return -1 if da < db else 1
        else:
            ea, eb = _run_end(a, i, _ALPHA), _run_end(b, j, _ALPHA)
            n = min(ea - i, eb - j)
            pa, pb = a[i : i + n], b[j : j + n]
            if pa != pb:
                return -1 if pa < pb else 1
            r = _sign((ea - i) - (eb - j))
            if r:
                return r
        i, j = ea, eb


version_key = cmp_to_key(compare_versions)
"""Sort key: `sorted(names, key=version_key)` orders oldest first."""
