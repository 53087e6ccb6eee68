"""Logging setup: stderr for people, the journal when we run under systemd and systemd-python exists."""

from __future__ import annotations

import logging
import os
import sys
from typing import Optional

log = logging.getLogger("sysextpy")

# systemd's log level names, as accepted in $SYSTEMD_LOG_LEVEL, mapped onto stdlib levels.
_SYSTEMD_LEVELS = {
    "emerg": logging.CRITICAL,
    "alert": logging.CRITICAL,
    "crit": logging.CRITICAL,
    "err": logging.ERROR,
    "warning": logging.WARNING,
    "notice": logging.INFO,
    "info": logging.INFO,
    "debug": logging.DEBUG,
}
_NUMERIC = ("emerg", "alert", "crit", "err", "warning", "notice", "info", "debug")


def level_from_env(value: Optional[str]) -> Optional[int]:
    """Map a $SYSTEMD_LOG_LEVEL value ("debug", "7", ...) to a logging level; None when unusable."""
    if not value:
        return None
    value = value.strip().lower()
    if value.isdigit() and int(value) < len(_NUMERIC):
        value = _NUMERIC[int(value)]
    return _SYSTEMD_LEVELS.get(value)


class _KmsgStyleFormatter(logging.Formatter):
    """Prefix lines with the sd-daemon level so journald files them at the right priority."""

    _PRIO = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}

    def format(self, record: logging.LogRecord) -> str:
        prio = self._PRIO.get(record.levelno, 6)
        return f"<{prio}>{super().format(record)}"


def _stderr_is_journal() -> bool:
    stream = os.environ.get("JOURNAL_STREAM", "")
    if not stream or ":" not in stream:
        return False
    try:
        st = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError):
        return False
    dev, _, ino = stream.partition(":")
    return f"{st.st_dev}" == dev and f"{st.st_ino}" == ino


def setup_logging(debug: bool = False) -> None:
    level = logging.DEBUG if debug else (level_from_env(os.environ.get("SYSTEMD_LOG_LEVEL")) or logging.INFO)
    handler: logging.Handler
    if _stderr_is_journal():
        try:
            from systemd.journal import JournalHandler  # optional dependency

            handler = JournalHandler(SYSLOG_IDENTIFIER="sysextpy")
        except ImportError:
            handler = logging.StreamHandler(sys.stderr)
            handler.setFormatter(_KmsgStyleFormatter("%(message)s"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
    log.handlers[:] = [handler]
    log.setLevel(level)
    log.propagate = False
