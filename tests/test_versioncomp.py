# SPDX-License-Identifier: LGPL-2.1-or-later
from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sysextpy.versioncomp import compare_versions, version_key

# The spec's example (§2.6), oldest first.
SPEC_ORDER = [
    "122.1",
    "123~rc1-1",
    "123",
    "123-a",
    "123-a.1",
    "123-1",
    "123-1.1",
    "123^post1",
    "123.a-1",
    "123.1-1",
    "123a-1",
    "124-1",
]

# A longer chain, oldest first, exercising "~" against the end of string, alpha vs numeric
# segments, leading zeros and every separator prefix.
LONG_ORDER = [
    "~1",
    "",
    "ab",
    "abb",
    "abc",
    "0001",
    "002",
    "12",
    "122",
    "122.9",
    "123~rc1",
    "123",
    "123-a",
    "123-a.1",
    "123-a1",
    "123-a1.1",
    "123-3",
    "123-3.1",
    "123^patch1",
    "123^1",
    "123.a-1",
    "123.1-1",
    "123a-1",
    "124",
]


def _chain_pairs(chain: list[str]) -> list[tuple[str, str]]:
    return list(itertools.combinations(chain, 2))


@pytest.mark.parametrize("older,newer", _chain_pairs(SPEC_ORDER) + _chain_pairs(LONG_ORDER))
def test_chain_is_ordered(older: str, newer: str) -> None:
    assert compare_versions(older, newer) == -1
    assert compare_versions(newer, older) == 1


@pytest.mark.parametrize(
    "older,newer",
    [
        ("123.45-67.88", "123.45-67.89"),
        ("123.45-67.89", "123.45-67.89a"),
        ("123.45-67.ab", "123.45-67.89"),
        ("123.45-67.9", "123.45-67.89"),
        ("123.45-67", "123.45-67.89"),
        ("123.45-66.89", "123.45-67.89"),
        ("123.45-9.99", "123.45-67.89"),
        ("123.42-99.99", "123.45-67.89"),
        ("123-99.99", "123.45-67.89"),
        # "~": pre-releases
        ("123~rc1-99.99", "123.45-67.89"),
        ("123~rc1-99.99", "123-45.67.89"),
        ("123~rc1-99.99", "123~rc2-67.89"),
        ("123~rc1-99.99", "123^aa2-67.89"),
        ("123~rc1-99.99", "123aa2-67.89"),
        # Only one "~" is consumed before the end-of-string check: "1~~a" has more left, so it is
        # newer than "1~" although "~a" alone would be older than "".
        ("1~", "1~~a"),
        ("~", ""),  # "~" is older even than the end of the string
        # "-": version/release separator
        ("123-99.99", "123^aa2-67.89"),
        ("123-99.99", "123aa2-67.89"),
        # "^": patch releases
        ("123^45-67.89", "123.45-67.89"),
        ("123^aa1-99.99", "123^aa2-67.89"),
        ("123^aa2-67.89", "123aa2-67.89"),
        # ".": point releases
        ("123.aa2-67.89", "123aa2-67.89"),
        ("123.aa2-67.89", "123.ab2-67.89"),
        # more segments are newer; "." before a digit is older than the digit
        ("123", "123."),
        ("12_3", "123"),
        ("12", "12_3"),
        ("12.3", "12_3"),
        ("123", "123.0"),
        ("123", "123_0"),
        ("123..0", "123.0"),
        # numbers: by value, then longer wins; alpha: ASCII, uppercase first
        ("9", "10"),
        ("099", "100"),
        ("A", "a"),
        ("abc", "abcd"),
        ("1", "1a"),  # the end of a string is checked before segment types: more segments win
    ],
)
def test_pairs(older: str, newer: str) -> None:
    assert compare_versions(older, newer) == -1
    assert compare_versions(newer, older) == 1


@pytest.mark.parametrize(
    "a,b",
    [
        ("123_aa2-67.89", "123aa+2-67.89"),  # characters outside [A-Za-z0-9~^.-] are ignored
        ("0_", "0"),
        ("_0_", "0"),
        ("_0", "0"),
        ("0", "0___"),
        ("", ""),
        ("", "_"),
        ("_", "_"),
        ("~", "~"),
        ("00123", "123"),  # leading zeros do not count
        ("1.007", "1.7"),
        ("0", "000"),
        ("1٠١", "1"),  # non-ASCII digits are not digits
        ("1.2+b3", "1.2b3"),
        ("same-1.0", "same-1.0"),
    ],
)
def test_equal(a: str, b: str) -> None:
    assert compare_versions(a, b) == 0
    assert compare_versions(b, a) == 0


def test_version_key_sorts_oldest_first() -> None:
    shuffled = list(reversed(SPEC_ORDER))
    assert sorted(shuffled, key=version_key) == SPEC_ORDER


_ALPHABET = "0123456789abz.-~^_+"
_versions = st.text(alphabet=_ALPHABET, max_size=8)


@settings(max_examples=300, deadline=None)
@given(_versions, _versions)
def test_antisymmetric(a: str, b: str) -> None:
    r = compare_versions(a, b)
    assert r in (-1, 0, 1)
    assert compare_versions(b, a) == -r


@settings(max_examples=300, deadline=None)
@given(_versions)
def test_reflexive(a: str) -> None:
    assert compare_versions(a, a) == 0


@settings(max_examples=300, deadline=None)
@given(_versions, _versions, _versions)
def test_transitive(a: str, b: str, c: str) -> None:
    ab, bc, ac = compare_versions(a, b), compare_versions(b, c), compare_versions(a, c)
    if ab <= 0 and bc <= 0:
        assert ac <= 0
        if ab < 0 or bc < 0:
            assert ac < 0
    if ab == 0:
        assert ac == bc


@settings(max_examples=200, deadline=None)
@given(st.lists(_versions, min_size=2, max_size=12))
def test_sorted_lists_are_consistent(items: list[str]) -> None:
    # A sort only compares neighbours-ish; checking every pair afterwards catches non-transitivity
    # that random triples rarely hit.
    ordered = sorted(items, key=version_key)
    for i, j in itertools.combinations(range(len(ordered)), 2):
        assert compare_versions(ordered[i], ordered[j]) <= 0
