"""The handoff record (/run/sysextpy/state.json): what a run did, for the next run and the generator.

Schema (version 1), all keys camelCase:

    {
      "schema": 1,
      "bootId": "<32 hex>",            # /proc/sys/kernel/random/boot_id without dashes
      "phase": "merging" | "merged" | "failed",
      "tool": "sysextpy 0.1.0",
      "verb": "merge" | "refresh" | "unmerge",
      "root": "/sysroot",
      "inInitrd": true,                # the process ran in an initrd (/etc/initrd-release)
      "started": <usec CLOCK_REALTIME>, "finished": <usec> | null,
      "classes": {
        "sysext": {
          "fingerprint": "<sha256 hex>" | null,
          "merged": ["a", "b"],
          "rejected": [{"name": "c", "reason": "..."}],
          "ignored": [{"name": "d", "reason": "..."}],
          "unreachable": ["/var/lib/extensions"],   # search dirs below a file system not yet mounted
          "hierarchies": {
            "/usr": {"result": "merged" | "replaced" | "unchanged" | "unmerged" | "untouched" | "failed",
                     "mountId": <int> | null, "dev": "MAJ:MIN" | null, "error": "..." | null}
          }
        },
        "confext": {...}
      },
      "errors": ["..."],
      "timings": {"totalMs": <float>, ...},
      "reload": {"done": false, "reason": "..."},
      "confirmedBy": "fingerprints" | "observations",  # only when the run changed nothing
      "quickDeclined": "..."           # why the observations did not confirm (a refresh's full run)
    }

A record may also carry "confirm": {"key": {...}, "classes": [...], "hierarchies": {...},
"searchDirs": {...}, "trace": [...]}: what the fingerprints were computed from (observe.py), which
lets the next refresh confirm the merge without recomputing them (quick.py).

Written atomically (temporary file in the same directory, fsync, rename) as one line of JSON.
Readers never trust a record that is missing, unparsable, of another schema or boot, or still
"merging". A lock file beside the record serialises the runs that change anything.

This module imports no more than `os`, `stat`, `time` and `fcntl`: the confirming refresh uses it.
"""

from __future__ import annotations

import os
import stat
import time

from .errors import LockTimeout, SysextError
from .jsonlite import dump_json, load_json

TYPE_CHECKING = False  # typing is not imported at run time: it costs start-up time
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any, Optional

    from .chase import StrPath

SCHEMA = 1
STATE_PATH = "/run/sysextpy/state.json"
MAX_RECORD_BYTES = 4 << 20
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


def write_record(path: StrPath, record: Mapping[str, Any]) -> None:
    """Atomically replace the record at `path` (directory created 0755)."""
    path = os.fspath(path)
    directory, name = os.path.split(path)
    tmp = os.path.join(directory, f".{name}.{os.getpid()}.tmp")
    try:
        os.makedirs(directory, mode=0o755, exist_ok=True)
        data = (dump_json(record) + "\n").encode()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
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


def in_initrd() -> bool:
    """Whether this process runs in an initrd (not whether --root is one)."""
    return os.path.exists("/etc/initrd-release")


def new_record(verb: str, root: StrPath, phase: str, started: int) -> dict[str, Any]:
    """A record as a run starts it; the run fills in classes, errors, timings and the reload."""
    from . import __version__

    return {
        "schema": SCHEMA,
        "bootId": boot_id(),
        "phase": phase,
        "tool": f"sysextpy {__version__}",
        "verb": verb,
        "root": os.fspath(root),
        "inInitrd": in_initrd(),
        "started": started,
        "finished": None,
        "classes": {},
        "errors": [],
        "timings": {},
        "reload": {"done": False, "reason": ""},
    }


def confirmed_entry(prior_entry: Mapping[str, Any], unreachable: list[str]) -> dict[str, Any]:
    """A class's entry for a run that confirmed the prior run's merge: the same, now "unchanged"."""
    from .live import LIVE_RESULTS

    hierarchies = prior_entry.get("hierarchies")
    if isinstance(hierarchies, dict):
        hierarchies = {
            h: {**res, "result": "unchanged"}
            if isinstance(res, dict) and res.get("result") in LIVE_RESULTS
            else res
            for h, res in hierarchies.items()
        }
    return {**prior_entry, "hierarchies": hierarchies, "unreachable": unreachable}


def finish_confirmed(record: dict[str, Any], started_monotonic: float, how: str) -> None:
    """Complete the record of a run that changed nothing. `how` says what proved the merge
    current: "fingerprints" (recomputed) or "observations" (taken again: quick.py)."""
    record["confirmedBy"] = how
    record["phase"] = "merged"
    record["finished"] = now_usec()
    record["timings"] = {"totalMs": round((time.monotonic() - started_monotonic) * 1000, 3)}
    record["reload"] = {"done": False, "reason": "nothing changed"}


class run_lock:  # noqa: N801 - used like a function: `with run_lock(state, root, env):`
    """Serialise mutating runs. A second run waits (bounded), then works on what the first left.

    Two locks, taken in this order: the lock file next to the handoff record, and the root
    directory itself, so that runs keeping their records in different places (--state=) still
    never work on the same hierarchies at once."""

    def __init__(
        self, state_path: StrPath, root: StrPath, env: Mapping[str, str], *, wait: bool = True
    ) -> None:
        self.wait = wait  # False: a held lock raises LockTimeout at once, without a word
        self.path = os.path.join(os.path.dirname(os.fspath(state_path)), "lock")
        self.root = os.fspath(root)
        try:
            self.timeout = float(env.get("SYSEXTPY_LOCK_TIMEOUT", DEFAULT_LOCK_TIMEOUT))
        except ValueError:
            self.timeout = DEFAULT_LOCK_TIMEOUT
        self.fds: list[int] = []

    def __enter__(self) -> None:
        try:
            os.makedirs(os.path.dirname(self.path), mode=0o755, exist_ok=True)
            self.fds.append(os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600))
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


class RecordCheck:
    """A record as read, and whether a refresh may rely on it. (A plain class: this module is on
    the confirming refresh's path, where every import counts.)"""

    __slots__ = ("reason", "record", "usable")

    def __init__(self, record: Optional[dict[str, Any]], usable: bool, reason: str) -> None:
        self.record = record
        self.usable = usable
        self.reason = reason  # why it is (not) usable, for logs and `plan`

    def __repr__(self) -> str:
        return f"RecordCheck(usable={self.usable!r}, reason={self.reason!r})"


def parse_record(text: str, current_boot: str) -> RecordCheck:
    """Pure: judge a record's text. Never raises."""
    try:
        record = load_json(text)
    except ValueError as e:
        msg, lineno = getattr(e, "msg", None), getattr(e, "lineno", None)
        return RecordCheck(
            None, False, f"corrupt record ({msg} at line {lineno})" if msg else f"corrupt record ({e})"
        )
    except RecursionError:
        return RecordCheck(None, False, "corrupt record (nested too deeply)")
    if not isinstance(record, dict):
        return RecordCheck(None, False, "corrupt record (not a JSON object)")
    if record.get("schema") != SCHEMA:
        return RecordCheck(record, False, f"record schema {record.get('schema')!r}, expected {SCHEMA}")
    if not current_boot or record.get("bootId") != current_boot:
        return RecordCheck(record, False, "record is from another boot")
    phase = record.get("phase")
    if phase != "merged":
        return RecordCheck(record, False, f"record says phase {phase!r}")
    if not isinstance(record.get("classes"), dict):
        return RecordCheck(record, False, "corrupt record (no classes)")
    return RecordCheck(record, True, "record of this boot, phase 'merged'")


def read_record(path: StrPath) -> RecordCheck:
    """Read and judge the record at `path`. Never raises."""
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
    return parse_record(data.decode("utf-8", "replace"), boot_id())


def class_fingerprint(record: Mapping[str, Any], image_class: str) -> Optional[str]:
    classes = record.get("classes")
    if not isinstance(classes, dict):
        return None
    entry = classes.get(image_class)
    if not isinstance(entry, dict):
        return None
    value = entry.get("fingerprint")
    return value if isinstance(value, str) else None
