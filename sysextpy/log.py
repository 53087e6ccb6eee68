# SPDX-License-Identifier: LGPL-2.1-or-later
"""Logging: stderr for people, `<N>`-prefixed lines or journal fields when running under systemd.

A small logger of our own rather than the stdlib's `logging`: importing that (with traceback,
threading, string and weakref) costs more than a whole no-op refresh should. The interface is
the familiar one: `log.debug/info/warning/error(fmt, *args)` with %-style formatting.
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False  # typing is not imported at run time: it costs start-up time
if TYPE_CHECKING:
    from typing import Any, Callable, Optional

DEBUG, INFO, NOTICE, WARNING, ERROR, CRITICAL = 7, 6, 5, 4, 3, 2

# $SYSTEMD_LOG_LEVEL names and numbers, mapped onto syslog priorities.
_NAMES = {
    "emerg": 0,
    "alert": 1,
    "crit": 2,
    "err": 3,
    "warning": 4,
    "notice": 5,
    "info": 6,
    "debug": 7,
}


def level_from_env(value: Optional[str]) -> Optional[int]:
    """Map a $SYSTEMD_LOG_LEVEL value ("debug", "7", ...) to a syslog priority; None when unusable."""
    if not value:
        return None
    value = value.strip().lower()
    if value.isdigit():
        number = int(value)
        return number if number <= 7 else None
    return _NAMES.get(value)


class Logger:
    def __init__(self) -> None:
        self.level = INFO
        self._emit: Callable[[int, str], None] = self._to_stderr

    def _to_stderr(self, priority: int, message: str) -> None:
        sys.stderr.write(message + "\n")
        sys.stderr.flush()

    def _to_stream_with_priority(self, priority: int, message: str) -> None:
        sys.stderr.write("".join(f"<{priority}>{line}\n" for line in message.splitlines() or [""]))
        sys.stderr.flush()

    def log(self, priority: int, fmt: str, *args: Any) -> None:
        if priority > self.level:
            return
        message = fmt % args if args else fmt
        self._emit(priority, message)

    def debug(self, fmt: str, *args: Any) -> None:
        self.log(DEBUG, fmt, *args)

    def info(self, fmt: str, *args: Any) -> None:
        self.log(INFO, fmt, *args)

    def warning(self, fmt: str, *args: Any) -> None:
        self.log(WARNING, fmt, *args)

    def error(self, fmt: str, *args: Any) -> None:
        self.log(ERROR, fmt, *args)

    def is_debug(self) -> bool:
        return self.level >= DEBUG


log = Logger()


def _stderr_is_journal() -> bool:
    stream = os.environ.get("JOURNAL_STREAM", "")
    dev, sep, ino = stream.partition(":")
    if not sep:
        return False
    try:
        st = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError):
        return False
    return f"{st.st_dev}" == dev and f"{st.st_ino}" == ino


class _JournalWhenItMatters:
    """Under journald: `<N>`-prefixed lines on stderr, which journald files with their priority;
    warnings and errors go through systemd-python's journal.send() when it is installed, with
    fields of their own. Importing it costs more than a whole no-op refresh, so only a run with
    something to warn about pays for it."""

    def __init__(self) -> None:
        self._send: Optional[Callable[..., Any]] = None
        self._tried = False

    def __call__(self, priority: int, message: str) -> None:
        if priority <= WARNING and not self._tried:
            self._tried = True
            try:
                from systemd import journal  # optional dependency

                self._send = journal.send
            except ImportError:
                self._send = None
        if priority <= WARNING and self._send is not None:
            self._send(message, PRIORITY=str(priority), SYSLOG_IDENTIFIER="sysextpy")
            return
        log._to_stream_with_priority(priority, message)


def setup_logging(debug: bool = False) -> None:
    log.level = DEBUG if debug else (level_from_env(os.environ.get("SYSTEMD_LOG_LEVEL")) or INFO)
    log._emit = _JournalWhenItMatters() if _stderr_is_journal() else log._to_stderr
