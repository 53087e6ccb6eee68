# SPDX-License-Identifier: LGPL-2.1-or-later
from __future__ import annotations

from typing import Optional

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sysextpy.errors import ParseError
from sysextpy.util import parse_bool, parse_bool_or_none


@pytest.mark.parametrize(
    "text, expected",
    [
        *[(t, True) for t in ("1", "yes", "y", "true", "t", "on", "YES", "True", "On", "Y", "T")],
        *[(t, False) for t in ("0", "no", "n", "false", "f", "off", "NO", "False", "OFF", "N", "F")],
    ],
)
def test_parse_bool(text: str, expected: bool) -> None:
    assert parse_bool(text) is expected


@pytest.mark.parametrize("text", ["", "2", "yess", " yes", "yes ", "enable", "-1", "nope"])
def test_parse_bool_rejects(text: str) -> None:
    with pytest.raises(ParseError, match="Invalid boolean") as info:
        parse_bool(text)
    assert repr(text) in str(info.value)


@pytest.mark.parametrize("text, expected", [(None, None), ("", None), ("yes", True), ("off", False)])
def test_parse_bool_or_none(text: Optional[str], expected: Optional[bool]) -> None:
    assert parse_bool_or_none(text) is expected


def test_parse_bool_or_none_still_rejects_garbage() -> None:
    with pytest.raises(ParseError):
        parse_bool_or_none("maybe")


@settings(max_examples=200)
@given(st.text(max_size=12))
def test_parse_bool_raises_only_parse_error(text: str) -> None:
    try:
        parse_bool(text)
    except ParseError:
        pass
