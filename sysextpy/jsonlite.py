# SPDX-License-Identifier: LGPL-2.1-or-later
"""JSON in and out through the C parts of the standard `json` package, without importing it.

`import json` pulls in `re` and `enum`, which cost more than a whole confirming refresh should,
and the initrd holds none of them: nothing in the package imports `json`. The scanner and the
encoder in `_json` are what `json.loads` and `json.dumps` use themselves when no indentation is
asked for, so the text is the same.

This file imports nothing from the sysextpy package: the generator loads it as a top-level module.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing is not imported at run time: it costs start-up time
if TYPE_CHECKING:
    from typing import Any, Callable, Optional

_CONSTANTS = {"-Infinity": float("-inf"), "Infinity": float("inf"), "NaN": float("nan")}
_WHITESPACE = " \t\n\r"


class _Context:
    # What the C scanner reads from its context object (json.decoder.JSONDecoder's attributes).
    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = _CONSTANTS.__getitem__


_scan: list[Callable[[str, int], tuple[Any, int]]] = []


class JsonError(ValueError):
    """What load_json refuses: a ValueError with json.JSONDecodeError's `msg` and, where the
    position is known, its `pos`, `lineno` and `colno`."""

    def __init__(self, msg: str, text: str, pos: Optional[int] = None) -> None:
        self.msg = msg
        self.pos = pos
        if pos is None:
            self.lineno = self.colno = None
            super().__init__(msg)
            return
        self.lineno = text.count("\n", 0, pos) + 1
        self.colno = pos - text.rfind("\n", 0, pos)
        super().__init__(f"{msg}: line {self.lineno} column {self.colno} (char {pos})")


def load_json(text: str) -> Any:
    """json.loads(text). Raises ValueError for what json.loads refuses."""
    if not _scan:
        from _json import make_scanner

        # typeshed wants a JSONDecoder as the context; the C code only reads the attributes above.
        _scan.append(make_scanner(_Context()))  # type: ignore[arg-type]
    start = len(text) - len(text.lstrip(_WHITESPACE))
    try:
        value, end = _scan[0](text, start)
    except RecursionError:
        raise
    except StopIteration as e:  # no value where one must be
        raise JsonError("Expecting value", text, e.value) from None
    except Exception:
        # Any other error the scanner builds from json.decoder, which only a program that imported
        # json has; without it the scanner fails with a SystemError that says nothing more.
        raise JsonError("invalid JSON: a malformed string, object or array", text) from None
    rest = len(text) - len(text[end:].lstrip(_WHITESPACE))
    if rest < len(text):
        raise JsonError("Extra data", text, rest)
    return value


def _unsupported(value: object) -> Any:
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


_encoders: dict[tuple[bool, bool], Callable[[Any, int], Any]] = {}


def dump_json(value: Any, *, ascii_only: bool = True, sort_keys: bool = True) -> str:
    """json.dumps(value, sort_keys=sort_keys, separators=(",", ":"), ensure_ascii=ascii_only)."""
    encoder = _encoders.get((ascii_only, sort_keys))
    if encoder is None:
        from _json import encode_basestring, encode_basestring_ascii, make_encoder

        quote = encode_basestring_ascii if ascii_only else encode_basestring
        # markers=None: no cycle check (our values are trees); allow_nan like json.dumps.
        encoder = make_encoder(None, _unsupported, quote, None, ":", ",", sort_keys, False, True)
        _encoders[(ascii_only, sort_keys)] = encoder
    return "".join(encoder(value, 0))


def dump_json_indented(
    value: Any,
    *,
    indent: str,
    item_separator: str = ",",
    key_separator: str = ": ",
    sort_keys: bool = False,
    ascii_only: bool = True,
) -> str:
    """json.dumps(value, indent=indent, separators=(item_separator, key_separator),
    sort_keys=sort_keys, ensure_ascii=ascii_only), for dicts, lists, tuples, strings, numbers,
    booleans and None: the standard encoder writes indented text in Python only, through `re`."""
    from _json import encode_basestring, encode_basestring_ascii

    quote = encode_basestring_ascii if ascii_only else encode_basestring
    out: list[str] = []

    def scalar(v: Any) -> str:
        if isinstance(v, str):
            return quote(v)
        if v is None:
            return "null"
        if v is True:
            return "true"
        if v is False:
            return "false"
        if isinstance(v, int):
            return int.__repr__(v)
        if isinstance(v, float):
            if v != v:
                return "NaN"
            if v in (float("inf"), float("-inf")):
                return "Infinity" if v > 0 else "-Infinity"
            return float.__repr__(v)
        raise TypeError(f"Object of type {type(v).__name__} is not JSON serializable")

    def key_text(k: Any) -> str:
        if isinstance(k, str):
            return k
        if isinstance(k, (bool, int, float)) or k is None:
            return scalar(k)
        raise TypeError(f"keys must be str, int, float, bool or None, not {type(k).__name__}")

    def write(v: Any, level: int) -> None:
        if isinstance(v, dict):
            if not v:
                out.append("{}")
                return
            inner = "\n" + indent * (level + 1)
            out.append("{" + inner)
            items = sorted(v.items()) if sort_keys else v.items()
            for i, (k, item) in enumerate(items):
                if i:
                    out.append(item_separator + inner)
                out.append(quote(key_text(k)) + key_separator)
                write(item, level + 1)
            out.append("\n" + indent * level + "}")
        elif isinstance(v, (list, tuple)):
            if not v:
                out.append("[]")
                return
            inner = "\n" + indent * (level + 1)
            out.append("[" + inner)
            for i, item in enumerate(v):
                if i:
                    out.append(item_separator + inner)
                write(item, level + 1)
            out.append("\n" + indent * level + "]")
        else:
            out.append(scalar(v))

    write(value, 0)
    return "".join(out)
