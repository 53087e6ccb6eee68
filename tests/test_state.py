# SPDX-License-Identifier: LGPL-2.1-or-later
"""Where the handoff record lives: its directory, the one writer, the reader, the lock file."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from sysextpy.errors import SysextError
from sysextpy.handoff import ClassEntry, HandoffRecord, HookRun, parse_record
from sysextpy.state import boot_id, read_record, run_lock, state_directory, untrusted_directory, write_record


def _record(phase: str = "merged") -> HandoffRecord:
    return HandoffRecord(
        boot_id=boot_id(),
        phase=phase,
        tool="sysextpy test",
        verb="refresh",
        root="/",
        in_initrd=False,
        started=1,
    )


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
    write_record(state, _record())
    assert json.loads(state.read_text())["phase"] == "merged"
    assert not stale.exists()
    assert alive.exists() and other.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([state.name, alive.name, other.name])


def test_odd_names_are_left_alone(tmp_path: Path) -> None:
    names = [".state.json.tmp", ".state.json.x1.tmp", ".state.json.99999999999999999999999.tmp"]
    for name in names:
        (tmp_path / name).write_text("")
    write_record(tmp_path / "state.json", _record())
    assert all((tmp_path / name).exists() for name in names)


def test_the_record_reads_back_as_written(tmp_path: Path) -> None:
    write_record(tmp_path / "state.json", _record())
    check = read_record(tmp_path / "state.json")
    assert check.usable and check.record is not None
    assert check.record.to_json() == _record().to_json()


def test_deferred_images_read_back_and_older_records_have_none(tmp_path: Path) -> None:
    """classes.*.deferred: written and read back as (entry, reason); a record of an older version,
    without the key, still reads, with nothing deferred; a malformed entry makes it corrupt."""
    record = _record()
    why = "its source '/efi/a.raw' lies on /efi, which the initrd does not mount: the real root merges it"
    record.classes["sysext"] = ClassEntry(deferred=[("/var/lib/extensions/a.raw", why)])
    write_record(tmp_path / "state.json", record)
    data = json.loads((tmp_path / "state.json").read_text())
    assert data["classes"]["sysext"]["deferred"] == [{"entry": "/var/lib/extensions/a.raw", "reason": why}]
    check = read_record(tmp_path / "state.json")
    assert check.usable and check.record is not None
    assert check.record.classes["sysext"].deferred == [("/var/lib/extensions/a.raw", why)]
    # A confirming run keeps what the initrd deferred.
    assert check.record.classes["sysext"].confirmed([]).deferred == [("/var/lib/extensions/a.raw", why)]

    del data["classes"]["sysext"]["deferred"]
    older = parse_record(json.dumps(data), boot_id())
    assert older.usable and older.record is not None and older.record.classes["sysext"].deferred == []

    data["classes"]["sysext"]["deferred"] = [{"name": "a", "reason": why}]
    broken = parse_record(json.dumps(data), boot_id())
    assert broken.record is None and "an entry path in classes.sysext.deferred" in broken.reason


def test_hook_runs_read_back_and_older_records_have_none(tmp_path: Path) -> None:
    """hooks: every hook run, written and read back; a record without the key (an older version)
    reads with none; a malformed entry makes the record corrupt."""
    record = _record()
    record.hooks = [
        HookRun("50-veto", "check", "sysext:beta", 1, 3.5, "beta is not for this machine"),
        HookRun("50-depmod", "generate", "sysext:/usr", None, 30000.0, "killed after 30 s"),
    ]
    write_record(tmp_path / "state.json", record)
    data = json.loads((tmp_path / "state.json").read_text())
    assert data["hooks"][0] == {
        "hook": "50-veto",
        "verb": "check",
        "target": "sysext:beta",
        "status": 1,
        "durationMs": 3.5,
        "message": "beta is not for this machine",
    }
    check = read_record(tmp_path / "state.json")
    assert check.usable and check.record is not None
    assert [h.to_json() for h in check.record.hooks] == [h.to_json() for h in record.hooks]
    assert check.record.hooks[1].reason() == "hook 50-depmod: killed after 30 s"

    del data["hooks"]
    older = parse_record(json.dumps(data), boot_id())
    assert older.usable and older.record is not None and older.record.hooks == []

    data["hooks"] = [{"hook": "x", "verb": "run", "target": "sysext:a", "status": 0, "durationMs": 1}]
    broken = parse_record(json.dumps(data), boot_id())
    assert broken.record is None and "hooks[0].verb" in broken.reason


def test_the_directory_is_created_private(tmp_path: Path) -> None:
    state = tmp_path / "run" / "sysextpy" / "state.json"
    write_record(state, _record())
    st = os.lstat(state.parent)
    assert stat.S_IMODE(st.st_mode) == 0o700 and st.st_uid == os.geteuid()
    assert stat.S_IMODE(os.lstat(state).st_mode) == 0o600


@pytest.mark.parametrize("mode", [0o777, 0o1777, 0o775, 0o757])
def test_a_directory_others_may_write_to_is_refused(tmp_path: Path, mode: int) -> None:
    directory = tmp_path / "d"
    directory.mkdir()
    os.chmod(directory, mode)
    with pytest.raises(SysextError, match="Refusing to keep the handoff record in .*others may write"):
        write_record(directory / "state.json", _record())
    assert list(directory.iterdir()) == []
    with pytest.raises(SysextError, match="others may write"):
        with run_lock(directory / "state.json", tmp_path, {}):
            pass
    assert list(directory.iterdir()) == []


def test_a_directory_of_another_owner_is_refused(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to give a directory away")
    directory = tmp_path / "d"
    directory.mkdir(mode=0o700)
    os.chown(directory, 4242, 4242)
    with pytest.raises(SysextError, match="owned by uid 4242"):
        state_directory(directory / "state.json")
    # Read as evidence? Never, even when the record itself looks fine.
    (directory / "state.json").write_text(_record().dumps())
    check = read_record(directory / "state.json")
    assert not check.usable and "not trusted" in check.reason


def test_a_link_as_the_directory_is_refused(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir(mode=0o700)
    (tmp_path / "link").symlink_to("real")
    assert untrusted_directory(os.fspath(tmp_path / "link")) == "it is a symbolic link"
    with pytest.raises(SysextError, match="symbolic link"):
        write_record(tmp_path / "link" / "state.json", _record())
    assert list((tmp_path / "real").iterdir()) == []


def test_the_temporary_file_is_never_followed(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    directory = tmp_path / "d"
    directory.mkdir(mode=0o700)
    # A link where the temporary file goes: a write through it would clobber the victim.
    (directory / f".state.json.{os.getpid()}.tmp").symlink_to(victim)
    write_record(directory / "state.json", _record())
    assert victim.read_text() == "precious\n"
    assert json.loads((directory / "state.json").read_text())["phase"] == "merged"


def test_the_lock_file_is_never_followed(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    directory = tmp_path / "d"
    directory.mkdir(mode=0o700)
    (directory / "lock").symlink_to(victim)
    with pytest.raises(SysextError, match="Cannot take the lock"):
        with run_lock(directory / "state.json", tmp_path, {}):
            pass
    assert victim.read_text() == "precious\n"


def test_a_record_that_is_a_link_is_not_read(tmp_path: Path) -> None:
    directory = tmp_path / "d"
    directory.mkdir(mode=0o700)
    (tmp_path / "elsewhere.json").write_text(_record().dumps())
    (directory / "state.json").symlink_to(tmp_path / "elsewhere.json")
    check = read_record(directory / "state.json")
    assert not check.usable and check.record is None
