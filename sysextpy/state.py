# SPDX-License-Identifier: LGPL-2.1-or-later
"""Where the handoff record lives: its directory, the one writer, the one reader, and the lock.

The record itself (its schema, parsing and serialising) is handoff.py. Its directory,
/run/sysextpy by default (`--state=` moves the record and the lock with it), is created 0700 and
must be owned by us and writable by nobody else: a record that someone else could have put there
is never read as evidence, and never written to. The record is written atomically (a temporary
file created exclusively and without following links, fsync, rename), as one line of JSON; a
lock file beside it, opened without following links, serialises the runs that change anything.

This module imports no more than `os`, `stat`, `time` and `fcntl`: the confirming refresh uses it.
"""

from __future__ import annotations

import os
import stat
import time

from .errors import LockTimeout, SysextError
from .handoff import MAX_RECORD_BYTES, HandoffRecord, RecordCheck, parse_record

TYPE_CHECKING = False  # typing is not imported at run time: it costs start-up time
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Optional

    from .chase import StrPath
    from .handoff import Phase

STATE_PATH = "/run/sysextpy/state.json"
DEFAULT_LOCK_TIMEOUT = 60.0


_boot_id: list[str] = []


def boot_id() -> str:
    """This boot's id (32 hex digits), read once per process."""
    if not _boot_id:
        try:
            with open("/proc/sys/kernel/random/boot_id", "rb") as f:  # bytes: no codec to load
                _boot_id.append(f.read(64).decode("latin-1").strip().replace("-", ""))
        except OSError:
            _boot_id.append("")
    return _boot_id[0]


def now_usec() -> int:
    return time.time_ns() // 1000


def in_initrd(env: Optional[Mapping[str, str]] = None) -> bool:
    """Whether this process runs in an initrd (not whether --root is one): $SYSTEMD_IN_INITRD when
    it is a boolean, as systemd's own tools take it, else whether /etc/initrd-release exists."""
    if env is not None:
        from .util import parse_bool_or_none

        try:
            said = parse_bool_or_none(env.get("SYSTEMD_IN_INITRD"))
        except SysextError:  # not a boolean: as if unset, as systemd takes it
            said = None
        if said is not None:
            return said
    return os.path.exists("/etc/initrd-release")


def untrusted_directory(directory: str) -> Optional[str]:
    """Why `directory` may not hold the record (someone other than root or us owns it, others may
    write to it, it is not a directory), or None when it may. Links are not followed."""
    try:
        st = os.lstat(directory)
    except OSError as e:
        return f"it cannot be examined ({e.strerror})"
    if not stat.S_ISDIR(st.st_mode):
        return "it is not a directory" if not stat.S_ISLNK(st.st_mode) else "it is a symbolic link"
    if st.st_uid not in (os.geteuid(), 0):
        return f"it is owned by uid {st.st_uid}, neither root nor uid {os.geteuid()}"
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return f"others may write to it (mode {stat.S_IMODE(st.st_mode):04o})"
    return None


def state_directory(path: StrPath) -> str:
    """The directory of the record at `path`, created 0700 when missing; SysextError when it may
    not hold the record."""
    directory = os.path.dirname(os.fspath(path)) or "."
    try:
        os.makedirs(os.path.dirname(directory) or "/", mode=0o755, exist_ok=True)
        os.mkdir(directory, 0o700)
    except FileExistsError:
        pass
    except OSError as e:
        raise SysextError(
            f"Cannot create the handoff record's directory {directory!r}: {e.strerror}",
            hint="the directory of --state= must be writable",
        ) from e
    why = untrusted_directory(directory)
    if why is not None:
        raise SysextError(
            f"Refusing to keep the handoff record in {directory!r}: {why}",
            hint=f"use a directory owned by uid {os.geteuid()} that only it may write to (see --state=)",
        )
    return directory


def new_record(
    verb: str, root: StrPath, phase: Phase, started: int, env: Optional[Mapping[str, str]] = None
) -> HandoffRecord:
    """A record as a run starts it; the run fills in classes, errors, timings and the reload."""
    from . import __version__

    return HandoffRecord(
        boot_id=boot_id(),
        phase=phase,
        tool=f"sysextpy {__version__}",
        verb=verb,
        root=os.fspath(root),
        in_initrd=in_initrd(env),
        started=started,
    )


def write_record(path: StrPath, record: HandoffRecord) -> None:
    """Atomically replace the record at `path`: the one way a record is written."""
    path = os.fspath(path)
    directory = state_directory(path)
    name = os.path.basename(path)
    tmp = os.path.join(directory, f".{name}.{os.getpid()}.tmp")
    data = record.dumps().encode("utf-8", "surrogateescape")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        try:
            fd = os.open(tmp, flags, 0o600)
        except FileExistsError:
            # Left by an earlier process with our pid that died before its rename.
            os.unlink(tmp)
            fd = os.open(tmp, flags, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, path)
    except OSError as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass  # nothing was created
        raise SysextError(f"Cannot write the handoff record {path!r}: {e.strerror}") from e
    _remove_stale_temporaries(directory, name)


def _remove_stale_temporaries(directory: str, name: str) -> None:
    """Temporary records of writers that died before their rename (a crash, SIGKILL). A process
    that still lives, or whose pid now belongs to another process, keeps its file."""
    prefix = f".{name}."
    try:
        entries = os.listdir(directory)
    except OSError:
        return
    for entry in entries:
        pid = entry[len(prefix) : -len(".tmp")]
        if not (entry.startswith(prefix) and entry.endswith(".tmp") and pid.isdigit()):
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            try:
                os.unlink(os.path.join(directory, entry))
            except OSError:
                pass  # another run removed it, or the directory is read-only
        except (OSError, OverflowError):
            pass  # alive (EPERM), or not a pid at all


def read_record(path: StrPath) -> RecordCheck:
    """Read and judge the record at `path`. Never raises. A record in a directory that someone
    else could have written to is not evidence of anything."""
    path = os.fspath(path)
    why = untrusted_directory(os.path.dirname(path) or ".")
    if why is not None and os.path.lexists(path):
        return RecordCheck(None, False, f"handoff record not trusted: its directory {why}")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOFOLLOW)
    except FileNotFoundError:
        return RecordCheck(None, False, "no handoff record")
    except OSError as e:
        return RecordCheck(None, False, f"handoff record unreadable: {e.strerror}")
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return RecordCheck(None, False, "handoff record is not a regular file")
        data = os.read(fd, MAX_RECORD_BYTES + 1)
    except OSError as e:
        return RecordCheck(None, False, f"handoff record unreadable: {e.strerror}")
    finally:
        os.close(fd)
    if len(data) > MAX_RECORD_BYTES:
        return RecordCheck(None, False, "handoff record is too large")
    return parse_record(data.decode("utf-8", "surrogateescape"), boot_id())


class run_lock:  # noqa: N801 - used like a function: `with run_lock(state, root, env):`
    """Serialise mutating runs. A second run waits (bounded), then works on what the first left.

    Two locks, taken in this order: the lock file next to the handoff record, and the root
    directory itself, so that runs keeping their records in different places (--state=) still
    never work on the same hierarchies at once."""

    def __init__(
        self, state_path: StrPath, root: StrPath, env: Mapping[str, str], *, wait: bool = True
    ) -> None:
        self.wait = wait  # False: a held lock raises LockTimeout at once, without a word
        self.state_path = os.fspath(state_path)
        self.root = os.fspath(root)
        try:
            self.timeout = float(env.get("SYSEXTPY_LOCK_TIMEOUT", DEFAULT_LOCK_TIMEOUT))
        except ValueError:
            self.timeout = DEFAULT_LOCK_TIMEOUT
        self.fds: list[int] = []

    @property
    def path(self) -> str:
        return os.path.join(os.path.dirname(self.state_path) or ".", "lock")

    def __enter__(self) -> None:
        state_directory(self.state_path)
        try:
            flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW
            self.fds.append(os.open(self.path, flags, 0o600))
        except OSError as e:
            raise SysextError(
                f"Cannot take the lock {self.path!r}: {e.strerror}",
                hint="the handoff record's directory must be writable (see --state=)",
            ) from e
        try:
            self.fds.append(os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC))
        except OSError as e:
            self.__exit__()
            raise SysextError(f"Cannot open the root {self.root!r}: {e.strerror}") from e
        deadline = time.monotonic() + self.timeout
        for fd, what in zip(self.fds, (self.path, self.root)):
            self._wait(fd, what, deadline)

    def _wait(self, fd: int, what: str, deadline: float) -> None:
        import fcntl

        from .log import log

        announced = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if not self.wait:
                    self.__exit__()
                    raise LockTimeout(f"{what!r} is locked by another run") from None
                if not announced:
                    log.info("Waiting for another sysextpy run to finish (lock %s)...", what)
                    announced = True
                if time.monotonic() >= deadline:
                    self.__exit__()
                    raise LockTimeout(
                        f"Another sysextpy run held {what!r} for more than {self.timeout:g} s.",
                        hint="check for a hung sysextpy process",
                    ) from None
                time.sleep(0.05)

    def __exit__(self, *exc: object) -> None:
        while self.fds:
            os.close(self.fds.pop())
