# SPDX-License-Identifier: LGPL-2.1-or-later
"""The one place that starts subprocesses."""

from __future__ import annotations

import os
import shlex
import subprocess
from collections.abc import Mapping, Sequence

from .errors import SysextError
from .log import log

TYPE_CHECKING = False  # typing is not imported at run time: it costs start-up time
if TYPE_CHECKING:
    from typing import Optional, Union

    PathString = Union[str, "os.PathLike[str]"]


def run(
    cmd: Sequence[PathString],
    *,
    check: bool = True,
    capture: bool = True,
    env: Optional[Mapping[str, str]] = None,
    timeout: Optional[float] = None,
) -> subprocess.CompletedProcess[str]:
    """Run argv (never through a shell), stdin from /dev/null; raise SysextError on failure when check."""
    argv = [os.fspath(a) for a in cmd]
    log.debug("+ %s", shlex.join(argv))
    full_env = dict(os.environ)
    full_env["LANG"] = "C.UTF-8"
    if env:
        full_env.update(env)
    try:
        proc = subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE if capture else None,
            stderr=subprocess.PIPE if capture else None,
            env=full_env,
            text=True,
            timeout=timeout,
            check=False,
        )
    except FileNotFoundError as e:
        raise SysextError(f"{argv[0]!r} not found", hint="install it or put it on PATH") from e
    except subprocess.TimeoutExpired as e:
        raise SysextError(f"{shlex.join(argv)!r} did not finish within {timeout} s") from e
    if check and proc.returncode != 0:
        detail = (proc.stderr or "").strip().splitlines()
        last = detail[-1] if detail else f"exit status {proc.returncode}"
        log.debug("%s failed: %s", argv[0], proc.stderr)
        raise SysextError(f"{shlex.join(argv)!r} failed: {last}")
    return proc
