# SPDX-License-Identifier: LGPL-2.1-or-later
"""Version ordering exactly as systemd's `strverscmp_improved()` (UAPI version format specification).

Used to pick the newest entry of a `.v/` directory and to order extensions by name. Upstream
walks two strings together, segment by segment, asking both the same questions in the same order
(a "~"? the end? a "-", "^", "." prefix? digits or letters, and which?); the first answer that
differs decides, and how far each string moves depends on that string alone. `version_key` writes
down one string's answers as tuples ordered like the outcomes, so that comparing two keys is the
same walk, done by the interpreter's tuple comparison: a sort computes one key per name instead of
calling a function per comparison. tests/test_versioncomp.py holds it to upstream's
`systemd-analyze compare-versions`.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing is not imported at run time: it costs start-up time
if TYPE_CHECKING:
    from typing import Union

    Step = tuple[Union[int, str], ...]

_DIGITS = frozenset("0123456789")
_ALPHA = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
# Everything else is skipped between segments, e.g. "123_a" == "123a". Only ASCII counts: upstream
# works on bytes and every byte of a multi-byte UTF-8 sequence is >= 0x80, hence ignored too.
_VALID = _DIGITS | _ALPHA | frozenset("~-^.")


def version_key(version: str) -> tuple[Step, ...]:
    """Sort key: `sorted(names, key=version_key)` orders oldest first.

    One tuple per segment, in upstream's order of checks; in each, what is older is smaller:
    - a "~" (pre-release) before it: older than anything, the end of the string included (0 < 1);
    - the end of the string: older than any further segment. It is the last tuple, `(tilde, 0)`;
    - a "-" (release), "^" (patch) and "." (point) prefix, each older than none (0 < 1);
    - the segment: numeric (1) is newer than alphabetic (0), which may be empty. Numbers compare
      by value without leading zeros (their length, then their digits), letters as ASCII strings.
    Characters that are none of these are skipped before each segment."""
    steps: list[Step] = []
    s = version
    n = len(s)
    i = 0
    while True:
        while i < n and s[i] not in _VALID:
            i += 1
        tilde = 1
        if i < n and s[i] == "~":
            tilde = 0
            i += 1
        if i >= n:
            steps.append((tilde, 0))
            return tuple(steps)
        dash = caret = dot = 1
        if s[i] == "-":
            dash = 0
            i += 1
        if i < n and s[i] == "^":
            caret = 0
            i += 1
        if i < n and s[i] == ".":
            dot = 0
            i += 1
        end = i
        if i < n and s[i] in _DIGITS:
            while end < n and s[end] in _DIGITS:
                end += 1
            while i < end and s[i] == "0":
                i += 1
            steps.append((tilde, 1, dash, caret, dot, 1, end - i, s[i:end]))
        else:
            while end < n and s[end] in _ALPHA:
                end += 1
            steps.append((tilde, 1, dash, caret, dot, 0, s[i:end]))
        i = end


def compare_versions(a: str, b: str) -> int:
    """-1 if `a` is older than `b`, 0 if equivalent, 1 if newer.

    Newest-last example ordering: 122.1 < 123~rc1-1 < 123 < 123-a < 123-a.1 < 123-1 < 123-1.1 <
    123^post1 < 123.a-1 < 123.1-1 < 123a-1 < 124-1.
    """
    ka, kb = version_key(a), version_key(b)
    return (ka > kb) - (ka < kb)
