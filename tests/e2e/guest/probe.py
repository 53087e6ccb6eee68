#!/usr/bin/python3 -I
# SPDX-License-Identifier: LGPL-2.1-or-later
"""Guest-side probes for the end-to-end tests; results go to /run/sysextpy-e2e/NAME.json.

  probe.py read NAME PATH...   record once what PATH... look like right now (an early unit's view)
  probe.py gap NAME PATH...    read PATH... in a tight loop until the report asks to stop; count
                               every failed read (a refresh that leaves /etc or /usr missing for
                               a moment shows up here). Signals readiness (sd_notify) after the
                               first complete pass, so units ordered after it start only once it
                               is watching.

Python 3.9 compatible and stdlib only: it runs on the guest's own interpreter.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

OUT_DIR = Path("/run/sysextpy-e2e")
STOP = OUT_DIR / "stop"
GAP_LIMIT_SECONDS = 300


def write_result(name: str, data: dict[str, Any]) -> None:
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    tmp = OUT_DIR / f".{name}.json.tmp"
    tmp.write_text(json.dumps(data, sort_keys=True) + "\n")
    os.rename(tmp, OUT_DIR / f"{name}.json")  # the report never sees half a result


def look(path: str) -> dict[str, Any]:
    entry: dict[str, Any] = {"path": path}
    try:
        if os.path.isdir(path):
            entry["entries"] = sorted(os.listdir(path))
        else:
            with open(path, "rb") as f:
                entry["text"] = f.read(65536).decode(errors="replace")
    except OSError as e:
        entry["error"] = e.strerror
    return entry


def notify_ready() -> None:
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        sock.connect(address)
        sock.sendall(b"READY=1")


def read_once(paths: list[str]) -> dict[str, str]:
    """Errors of this pass, by path (empty when every path could be read)."""
    errors = {}
    for path in paths:
        try:
            if os.path.isdir(path):
                os.listdir(path)
            else:
                with open(path, "rb") as f:
                    f.read(4096)
        except OSError as e:
            errors[path] = e.strerror or str(e)
    return errors


def gap(name: str, paths: list[str]) -> None:
    started = time.monotonic()
    passes = 0
    failures: dict[str, dict[str, Any]] = {}
    ready = False
    while not STOP.exists() and time.monotonic() - started < GAP_LIMIT_SECONDS:
        now = time.monotonic()
        for path, error in read_once(paths).items():
            item = failures.setdefault(path, {"count": 0, "firstUsec": int(now * 1e6), "errors": {}})
            item["count"] += 1
            item["lastUsec"] = int(now * 1e6)
            item["errors"][error] = item["errors"].get(error, 0) + 1
        passes += 1
        if not ready:
            notify_ready()
            ready = True
    write_result(
        name,
        {
            "paths": paths,
            "passes": passes,
            "failures": failures,
            "startUsec": int(started * 1e6),
            "seconds": round(time.monotonic() - started, 3),
            "stopped": STOP.exists(),
        },
    )


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[0] not in ("read", "gap"):
        print(__doc__, file=sys.stderr)
        return 2
    verb, name, paths = argv[0], argv[1], argv[2:]
    if verb == "read":
        write_result(name, {"monotonicUsec": time.monotonic_ns() // 1000, "paths": [look(p) for p in paths]})
    else:
        gap(name, paths)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
