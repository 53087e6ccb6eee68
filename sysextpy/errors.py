# SPDX-License-Identifier: LGPL-2.1-or-later
"""The one error model: every expected failure is a SysextError with a message a person can act on."""

from __future__ import annotations

import errno as _errno

TYPE_CHECKING = False  # typing is not imported at run time: it costs start-up time
if TYPE_CHECKING:
    from typing import Optional


EXIT_OK = 0  # success, "nothing to merge", "refresh skipped", incompatible images ignored
EXIT_FAILURE = 1  # fatal error
EXIT_USAGE = 2  # usage error
EXIT_PARTIAL = 3  # some image was rejected as broken or untrusted while the others were handled
EXIT_INTERRUPTED = 130


class SysextError(Exception):
    """An expected failure. The message quotes the offending input and says what to do."""

    exit_code = EXIT_FAILURE

    def __init__(self, message: str, *, hint: Optional[str] = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message} ({self.hint})"
        return self.message


class UsageError(SysextError):
    """Bad command line: one line on stderr, exit 2."""

    exit_code = EXIT_USAGE


class ParseError(SysextError):
    """Text that does not follow its grammar (os-release, policy, config, JSON record...)."""


class ResolveError(SysextError):
    """A path could not be resolved inside the root. `errno` tells why (ENOENT, ELOOP, ENOTDIR...)."""

    def __init__(self, message: str, *, errno: int, hint: Optional[str] = None) -> None:
        super().__init__(message, hint=hint)
        self.errno = errno

    @property
    def is_missing(self) -> bool:
        return self.errno == _errno.ENOENT


class ImageError(SysextError):
    """One image is broken or untrusted. It is rejected; the others go on."""


class MountError(SysextError):
    """A mount operation failed."""


class LockTimeout(SysextError):
    """Another sysextpy run held the lock for too long."""
