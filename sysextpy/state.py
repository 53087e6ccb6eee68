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
      "reload": {"done": false, "reason": "..."}
    }

Written atomically (temporary file in the same directory, fsync, rename). Readers never trust a
record that is missing, unparsable, of another schema or boot, or still "merging".
"""

from __future__ import annotations

import json
import os
import stat
import time
from collections.abc import Mapping
from pathlib import Path

from .errors import SysextError
from .records import record

TYPE_CHECKING = False  # typing is not imported at run time: it costs start-up time
if TYPE_CHECKING:
    from typing import Any, Optional

SCHEMA = 1
MAX_RECORD_BYTES = 1 << 20


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


def write_record(path: Path, record: Mapping[str, Any]) -> None:
    """Atomically replace the record at `path` (directory created 0755)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    data = json.dumps(record, indent=2, sort_keys=True) + "\n"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            os.write(fd, data.encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, path)
    except OSError as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass  # nothing was created
        raise SysextError(f"Cannot write the handoff record {os.fspath(path)!r}: {e.strerror}") from e


@record(frozen=True)
class RecordCheck:
    record: Optional[dict[str, Any]]
    usable: bool
    reason: str  # why it is (not) usable, for logs and `plan`


def parse_record(text: str, current_boot: str) -> RecordCheck:
    """Pure: judge a record's text. Never raises."""
    try:
        record = json.loads(text)
    except json.JSONDecodeError as e:
        return RecordCheck(None, False, f"corrupt record ({e.msg} at line {e.lineno})")
    except ValueError as e:
        return RecordCheck(None, False, f"corrupt record ({e})")
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


def read_record(path: Path) -> RecordCheck:
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
