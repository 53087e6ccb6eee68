# SPDX-License-Identifier: LGPL-2.1-or-later
"""The C library's functions and the few C types the syscall wrappers need, from `_ctypes` itself.

The `ctypes` package defines some forty types, byte-swapped structure classes and its library
loaders when it is imported: about 2 ms of every run, a fifth of what an unmerge does itself. The
wrappers (mountapi, loopdev) need a dozen names, all of which `_ctypes` provides or makes from a
type code: `_SimpleCData` subclasses by their `_type_`, `Structure`, arrays by `TYPE * N`, and
functions looked up by name in the handle `dlopen(None)` returns, called with errno saved.
"""

from __future__ import annotations

import os
from _ctypes import FUNCFLAG_CDECL, FUNCFLAG_USE_ERRNO, CFuncPtr, dlopen

TYPE_CHECKING = False  # typing is not imported at run time: it costs start-up time
if TYPE_CHECKING:
    # For the type checker they are ctypes' own: the same C types.
    from ctypes import (
        Structure,
        byref,
        c_char,
        c_char_p,
        c_int,
        c_int32,
        c_int64,
        c_long,
        c_uint,
        c_uint16,
        c_uint32,
        c_uint64,
        c_ulong,
        get_errno,
        sizeof,
    )
    from typing import Any
else:
    from _ctypes import Structure, _SimpleCData, byref, get_errno, sizeof

    class c_char(_SimpleCData):
        _type_ = "c"

    class c_char_p(_SimpleCData):
        _type_ = "z"

    class c_int(_SimpleCData):
        _type_ = "i"

    class c_uint(_SimpleCData):
        _type_ = "I"

    class c_long(_SimpleCData):
        _type_ = "l"

    class c_ulong(_SimpleCData):
        _type_ = "L"

    class c_uint16(_SimpleCData):
        _type_ = "H"

    class c_int64(_SimpleCData):
        _type_ = "q"

    class c_uint64(_SimpleCData):
        _type_ = "Q"

    # Linux's int is 32 bits on every architecture it runs on.
    c_int32 = c_int
    c_uint32 = c_uint


__all__ = [
    "Structure",
    "byref",
    "c_char",
    "c_char_p",
    "c_int",
    "c_int32",
    "c_int64",
    "c_long",
    "c_uint",
    "c_uint16",
    "c_uint32",
    "c_uint64",
    "c_ulong",
    "function",
    "get_errno",
    "sizeof",
    "string_buffer",
]


class _Function(CFuncPtr):
    """A C library function: C calling convention, errno saved for get_errno(), int result."""

    _flags_ = FUNCFLAG_CDECL | FUNCFLAG_USE_ERRNO
    _restype_ = c_int


class _Library:
    """What a function lookup reads: the handle of the process's own symbols (libc among them)."""

    def __init__(self) -> None:
        self._handle = dlopen(None, os.RTLD_NOW)  # type: ignore[arg-type]


_PROCESS = _Library()


def function(name: str, restype: Any = c_int) -> Any:
    """The C library's function `name`; AttributeError if it has none (an older libc)."""
    found = _Function((name, _PROCESS))  # type: ignore[arg-type]
    if restype is not c_int:
        found.restype = restype
    return found


def string_buffer(size: int) -> Any:
    """`size` zeroed bytes the C side may write into (`.raw` reads them back)."""
    return (c_char * size)()
