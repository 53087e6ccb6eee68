"""Reading small files safely: regular files only, never blocking on a FIFO or a device, bounded.

Used for release, configuration and metadata files, including by the confirming refresh
(quick.py): this module imports only `os` and `stat`.
"""

from __future__ import annotations

import errno
import os
import stat

from .errors import SysextError

TYPE_CHECKING = False  # typing is not imported at run time: it costs start-up time
if TYPE_CHECKING:
    from typing import Optional

    from .chase import StrPath

DEFAULT_READ_LIMIT = 64 * 1024


_FILE_TYPES = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISLNK, "a symlink"),
)


def _describe_type(mode: int) -> str:
    for check, name in _FILE_TYPES:
        if check(mode):
            return name
    return f"of unknown type (mode {stat.S_IFMT(mode):#o})"


def _refuse_unless_regular(path: StrPath, mode: int) -> None:
    if not stat.S_ISREG(mode):
        raise SysextError(
            f"Refusing to read {str(path)!r}: it is {_describe_type(mode)}, not a regular file",
            hint="release and configuration files must be regular files",
        )


def read_text_bounded(path: StrPath, limit: int = DEFAULT_READ_LIMIT) -> str:
    """Read a small regular file as UTF-8 (invalid bytes replaced); refuse anything else.

    FIFOs, devices, sockets and directories are refused without blocking and without reading, and
    so are files larger than `limit` bytes.
    """
    # stat() first so that devices are never opened at all; fstat() after open closes the race.
    try:
        _refuse_unless_regular(path, os.stat(path).st_mode)
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as e:
        raise SysextError(f"Failed to open {str(path)!r}: {e.strerror}") from e
    try:
        st = os.fstat(fd)
        _refuse_unless_regular(path, st.st_mode)
        if st.st_size > limit:
            raise SysextError(
                f"Refusing to read {str(path)!r}: it has {st.st_size} bytes, more than the limit of {limit}",
                hint="release and configuration files are expected to be small text files",
            )
        parts: list[bytes] = []
        total = 0
        while True:
            # The file may grow after fstat(); read at most one byte past the limit to notice.
            chunk = os.read(fd, limit + 1 - total)
            if not chunk:
                break
            parts.append(chunk)
            total += len(chunk)
            if total > limit:
                raise SysextError(
                    f"Refusing to read {str(path)!r}: it grew past {limit} bytes while being read"
                )
    except OSError as e:
        raise SysextError(f"Failed to read {str(path)!r}: {e.strerror}") from e
    finally:
        os.close(fd)
    return b"".join(parts).decode("utf-8", errors="replace")


def read_regular_bytes(path: StrPath, limit: int) -> bytes:
    """Up to `limit` bytes of a regular file, opened without blocking (a FIFO put in its place
    after a stat() never hangs the run). OSError when it cannot be read or is not a regular file."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", os.fspath(path))
        parts: list[bytes] = []
        total = 0
        while total < limit:
            chunk = os.read(fd, limit - total)
            if not chunk:
                break
            parts.append(chunk)
            total += len(chunk)
        return b"".join(parts)
    finally:
        os.close(fd)


def read_small(path: StrPath, limit: int = 1 << 20) -> Optional[str]:
    """A small regular file's text; None when missing, unreadable or not a regular file (a FIFO
    in a copied tree's metadata directory must not hang the run)."""
    try:
        return read_regular_bytes(path, limit).decode("utf-8", "replace")
    except OSError:
        return None
