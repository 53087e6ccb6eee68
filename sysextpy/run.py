# SPDX-License-Identifier: LGPL-2.1-or-later
"""The one place that starts subprocesses.

Built on os.posix_spawn and poll rather than the subprocess module: subprocess brings threading,
selectors, locale, traceback and tokenize with it, which the initrd would carry and every run that
starts a tool (openssl, veritysetup, systemctl) would load. Every descriptor this package opens is
close-on-exec (Python's default, and the CLOEXEC flags of the mount calls), and those this process
inherited are closed in the child, so the child gets its standard input from /dev/null, its output
and error on two pipes (or ours), and nothing else.
"""

from __future__ import annotations

import errno
import os
import select
import time

from .errors import SysextError
from .log import log
from .records import record

TYPE_CHECKING = False  # typing is not imported at run time: it costs start-up time
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from typing import Optional, Union

    PathString = Union[str, "os.PathLike[str]"]

_SIGKILL = 9  # signal.SIGKILL on Linux; the signal module would bring enum-built tables
_SAFE = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789@%+=:,./-_")


class TimedOut(SysextError):
    """A command killed because it did not finish within its time."""


@record(frozen=True)
class Completed:
    """A finished command: its argv, exit status (negative: killed by that signal) and output."""

    args: list[str]
    returncode: int
    stdout: str
    stderr: str


def quote(word: str) -> str:
    """`word` as a POSIX shell would need it, for messages that show a command line."""
    if word and all(c in _SAFE for c in word):
        return word
    return "'" + word.replace("'", "'\"'\"'") + "'"


def command_line(argv: Sequence[str]) -> str:
    return " ".join(quote(a) for a in argv)


def _executable(name: str, env: Mapping[str, str]) -> str:
    """The file `name` runs, looked up in the PATH of the environment the child gets."""
    if "/" in name:
        return name
    for directory in os.get_exec_path(env):
        path = os.path.join(directory, name)
        if os.access(path, os.X_OK) and not os.path.isdir(path):
            return path
    raise FileNotFoundError(name)


def _inherited() -> list[int]:
    """Descriptors above 2 that would survive exec: ones this process was started with (ours are
    all close-on-exec). The child gets none of them, as with subprocess's close_fds."""
    found = []
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        try:
            if fd > 2 and os.get_inheritable(fd):
                found.append(fd)
        except OSError:
            pass  # the descriptor listdir itself used, closed by now
    return found


def _collect(pipes: dict[int, list[bytes]], deadline: Optional[float]) -> bool:
    """Read the child's pipes to their end; False when the deadline passed first."""
    poller = select.poll()
    for fd in pipes:
        poller.register(fd, select.POLLIN)
    open_fds = set(pipes)
    while open_fds:
        wait_ms = None
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            wait_ms = max(1, int(left * 1000))
        for fd, _ in poller.poll(wait_ms):
            chunk = os.read(fd, 65536)
            if chunk:
                pipes[fd].append(chunk)
            else:
                poller.unregister(fd)
                open_fds.discard(fd)
    return True


def _spawn_chrooted(
    root: str,
    path: str,
    argv: list[str],
    env: Mapping[str, str],
    actions: Sequence[tuple[int, ...]],
    new_session: bool,
) -> int:
    """posix_spawn() with a chroot first, which it cannot do: fork, apply the same file actions,
    chroot, exec. A failure before the exec comes back as its errno on a pipe that a successful
    exec closes, and is raised here as posix_spawn() would raise it."""
    report_r, report_w = os.pipe()  # close-on-exec: an exec that works closes it empty
    pid = os.fork()
    if pid == 0:
        code = errno.EIO  # what is said if something other than an OSError stops it
        try:
            for action in actions:
                if action[0] == os.POSIX_SPAWN_DUP2:
                    os.dup2(action[1], action[2])
                else:
                    try:
                        os.close(action[1])
                    except OSError:
                        pass  # closed already: what the action wants
            os.chroot(root)
            os.chdir("/")
            if new_session:
                os.setsid()
            os.execve(path, argv, env)
        except OSError as e:
            code = e.errno or errno.EIO
        finally:
            # Nothing of this copy of the parent may run on: no exception handler, no atexit.
            os.write(report_w, str(code).encode())
            os._exit(127)
    os.close(report_w)
    try:
        report = b""
        while True:
            chunk = os.read(report_r, 64)
            if not chunk:
                break
            report += chunk
    finally:
        os.close(report_r)
    if report:
        os.waitpid(pid, 0)
        code = int(report)
        raise OSError(code, os.strerror(code), path)
    return pid


_PR_SET_CHILD_SUBREAPER = 36


def _adopt_orphans() -> None:
    """Become the reaper of this process's orphaned descendants (PR_SET_CHILD_SUBREAPER): the
    children of a command run in a session of its own then stay ours to reap when it is killed,
    whatever reaps orphans on this machine, and how soon."""
    from . import libc

    libc.function("prctl")(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def _reap_group(pgid: int, limit: float = 5.0) -> None:
    """Reap what is left of a killed process group: its members orphaned by the kill are our
    children (_adopt_orphans), so once this returns none of them runs any more."""
    until = time.monotonic() + limit
    while True:
        try:
            got, _ = os.waitpid(-pgid, os.WNOHANG)
        except ChildProcessError:
            return  # none left
        if got == 0:
            if time.monotonic() >= until:
                return
            time.sleep(0.001)


def run(
    cmd: Sequence[PathString],
    *,
    check: bool = True,
    capture: bool = True,
    env: Optional[Mapping[str, str]] = None,
    timeout: Optional[float] = None,
    new_session: bool = False,
    chroot: Optional[str] = None,
) -> Completed:
    """Run argv (never through a shell), stdin from /dev/null; raise SysextError on failure when check.

    With `new_session` the command gets a session and process group of its own, which the timeout
    kills whole: a script's children (a `sleep` it waits for) hold its output open and would keep
    the run waiting. With `chroot` it runs with that directory as its root (and working directory):
    argv[0] is then a path inside it, and what it starts comes from there."""
    argv = [os.fspath(a) for a in cmd]
    shown = command_line(argv)
    log.debug("+ %s", shown)
    full_env = dict(os.environ)
    full_env["LANG"] = "C.UTF-8"
    if env:
        full_env.update(env)
    try:
        path = argv[0] if chroot is not None else _executable(argv[0], full_env)
    except FileNotFoundError:
        raise SysextError(f"{argv[0]!r} not found", hint="install it or put it on PATH") from None
    deadline = time.monotonic() + timeout if timeout is not None else None
    devnull = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    pipes: dict[int, list[bytes]] = {}
    ends: list[int] = []
    actions: list[tuple[int, ...]] = [(os.POSIX_SPAWN_DUP2, devnull, 0)]
    actions += [(os.POSIX_SPAWN_CLOSE, fd) for fd in _inherited()]
    try:
        if capture:
            for target in (1, 2):
                r, w = os.pipe()  # both ends close-on-exec; dup2 gives the child its own
                pipes[r] = []
                ends.append(w)
                actions.append((os.POSIX_SPAWN_DUP2, w, target))
        if new_session:
            _adopt_orphans()
        try:
            if chroot is None:
                pid = os.posix_spawn(path, argv, full_env, file_actions=actions, setsid=new_session)
            else:
                pid = _spawn_chrooted(chroot, path, argv, full_env, actions, new_session)
        except FileNotFoundError:
            if chroot is not None:
                # argv[0] is there (the caller put it there): what is missing is its #! interpreter
                raise SysextError(
                    f"{argv[0]!r} cannot be started: it, or the interpreter its first line names, "
                    "is not in the root it runs in"
                ) from None
            raise SysextError(f"{argv[0]!r} not found", hint="install it or put it on PATH") from None
        except PermissionError as e:
            raise SysextError(f"{argv[0]!r} cannot be executed: {e.strerror}") from e
        except OSError as e:
            raise SysextError(f"cannot start {shown!r}: {e.strerror}") from e
    finally:
        os.close(devnull)
        for w in ends:
            os.close(w)
    out_fd, err_fd = (list(pipes) + [-1, -1])[:2]
    status: Optional[int] = None
    try:
        finished = _collect(pipes, deadline)
        while finished:
            got, st = os.waitpid(pid, 0 if deadline is None else os.WNOHANG)
            if got:
                status = st
                break
            # Its output is closed, yet it runs on: wait for it, within the time it was given.
            if deadline is not None and time.monotonic() >= deadline:
                finished = False
            else:
                time.sleep(0.001)
        if not finished:
            try:
                if new_session:
                    os.killpg(pid, _SIGKILL)  # the session leader's group: it and its children
                else:
                    os.kill(pid, _SIGKILL)
            except ProcessLookupError:
                pass  # it ended meanwhile; reaped below all the same
            os.waitpid(pid, 0)
            if new_session:
                _reap_group(pid)
            raise TimedOut(f"{shown!r} did not finish within {timeout:g} s")
    finally:
        for fd in pipes:
            os.close(fd)
    assert status is not None
    code = os.waitstatus_to_exitcode(status)
    stdout = b"".join(pipes.get(out_fd, ())).decode("utf-8", "replace")
    stderr = b"".join(pipes.get(err_fd, ())).decode("utf-8", "replace")
    done = Completed(argv, code, stdout, stderr)
    if check and code != 0:
        detail = stderr.strip().splitlines()
        last = detail[-1] if detail else f"exit status {code}"
        log.debug("%s failed: %s", argv[0], stderr)
        raise SysextError(f"{shown!r} failed: {last}")
    return done
