"""The handoff record's file: what a crash mid-write leaves, and what the next write cleans up."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from sysextpy.state import write_record


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_dead_writers_temporary_record_is_removed(tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    stale = tmp_path / f".state.json.{_dead_pid()}.tmp"
    stale.write_text('{"phase": "merg')  # a crash between write and rename
    alive = tmp_path / f".state.json.{os.getppid()}.tmp"  # a live process's, however old
    alive.write_text("{}")
    other = tmp_path / ".other.json.1.tmp"
    other.write_text("{}")
    write_record(state, {"phase": "merged"})
    assert json.loads(state.read_text()) == {"phase": "merged"}
    assert not stale.exists()
    assert alive.exists() and other.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([state.name, alive.name, other.name])


def test_odd_names_are_left_alone(tmp_path: Path) -> None:
    names = [".state.json.tmp", ".state.json.x1.tmp", ".state.json.99999999999999999999999.tmp"]
    for name in names:
        (tmp_path / name).write_text("")
    write_record(tmp_path / "state.json", {})
    assert all((tmp_path / name).exists() for name in names)
