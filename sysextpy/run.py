# SPDX-License-Identifier: LGPL-2.1-or-later
"""The one place that starts subprocesses."""

from __future__ import annotations

import os
import shlex
import signal
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
    new_session: bool = False,
) -> subprocess.CompletedProcess[str]:
    """Run argv (never through a shell), stdin from /dev/null; raise SysextError on failure when check.

    With `new_session` the command gets a process group of its own, which the timeout kills
    whole: a script's children (a `sleep` it waits for) hold its output open and would keep
    the run waiting."""
    argv = [os.fspath(a) for a in cmd]
    log.debug("+ %s", shlex.join(argv))
    full_env = dict(os.environ)
    full_env["LANG"] = "C.UTF-8"
    if env:
        full_env.update(env)
    try:
        if new_session:
            proc = _run_in_session(argv, capture, full_env, timeout)
        else:
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
    except (FileNotFoundError, PermissionError) as e:
        if isinstance(e, PermissionError):
            raise SysextError(f"{argv[0]!r} cannot be executed: {e.strerror}") from e
        raise SysextError(f"{argv[0]!r} not found", hint="install it or put it on PATH") from e
    except subprocess.TimeoutExpired as e:
        raise SysextError(f"{shlex.join(argv)!r} did not finish within {timeout} s") from e
    if check and proc.returncode != 0:
        detail = (proc.stderr or "").strip().splitlines()
        last = detail[-1] if detail else f"exit status {proc.returncode}"
        log.debug("%s failed: %s", argv[0], proc.stderr)
        raise SysextError(f"{shlex.join(argv)!r} failed: {last}")
    return proc


def _run_in_session(
    argv: list[str], capture: bool, env: Mapping[str, str], timeout: Optional[float]
) -> subprocess.CompletedProcess[str]:
    pipe = subprocess.PIPE if capture else None
    with subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=pipe, stderr=pipe, env=env, text=True, start_new_session=True
    ) as proc:
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass  # the group ended by itself meanwhile
            proc.communicate()
            raise
        return subprocess.CompletedProcess(argv, proc.returncode, out, err)
