# SPDX-License-Identifier: LGPL-2.1-or-later
"""sysextpy.run: the one subprocess helper, on real processes (sh, cat, ls, sleep)."""

from __future__ import annotations

import os
import shlex
import time
from pathlib import Path

import pytest

from sysextpy.errors import SysextError
from sysextpy.run import TimedOut, command_line, quote, run


@pytest.mark.parametrize(
    "word",
    ["plain", "", "with space", "it's", "$HOME", "a\nb", "semi;colon", "--opt=x,y", "ü", "*", "'"],
)
def test_quote_reads_back_as_one_word(word: str) -> None:
    assert shlex.split(quote(word)) == [word]


def test_command_line_reads_back() -> None:
    argv = ["openssl", "smime", "-in", "/tmp/a b/sig.p7s", "it's"]
    assert shlex.split(command_line(argv)) == argv


def test_output_and_status() -> None:
    done = run(["sh", "-c", "echo out; echo err >&2; exit 0"])
    assert (done.returncode, done.stdout, done.stderr) == (0, "out\n", "err\n")
    failed = run(["sh", "-c", "echo why >&2; exit 7"], check=False)
    assert failed.returncode == 7 and failed.stderr == "why\n"


def test_a_failure_names_the_command_and_the_last_line() -> None:
    with pytest.raises(SysextError) as e:
        run(["sh", "-c", "echo first >&2; echo last >&2; exit 3"])
    assert "failed: last" in str(e.value) and "'sh' -c" not in str(e.value)
    assert str(e.value).startswith("\"sh -c 'echo first")


def test_a_large_output_on_both_pipes_does_not_block() -> None:
    done = run(["sh", "-c", "head -c 300000 /dev/zero; head -c 300000 /dev/zero >&2"])
    assert len(done.stdout) == 300000 and len(done.stderr) == 300000


def test_stdin_is_dev_null() -> None:
    assert run(["cat"], timeout=10).stdout == ""


def test_the_child_gets_no_other_descriptor(tmp_path: Path) -> None:
    held = os.open(tmp_path, os.O_RDONLY)
    try:
        listed = run(["ls", "/proc/self/fd"]).stdout.split()
    finally:
        os.close(held)
    # 0-2, and the directory ls itself opened to list them
    assert len(listed) == 4 and {"0", "1", "2"} <= set(listed)


def test_a_timeout_kills_and_says_so() -> None:
    started = time.monotonic()
    with pytest.raises(TimedOut, match="did not finish within 0.3 s"):
        run(["sleep", "30"], timeout=0.3)
    assert time.monotonic() - started < 5


def test_a_timeout_also_covers_a_child_that_closed_its_output() -> None:
    with pytest.raises(SysextError, match="did not finish"):
        run(["sh", "-c", "exec >&- 2>&-; sleep 30"], timeout=0.3)


def test_killed_by_a_signal_is_a_negative_status() -> None:
    assert run(["sh", "-c", "kill -KILL $$"], check=False).returncode == -9


def test_the_program_is_looked_up_in_the_childs_path(tmp_path: Path) -> None:
    tool = tmp_path / "only-here"
    tool.write_text('#!/bin/sh\necho found "$1"\n')
    tool.chmod(0o755)
    assert run(["only-here", "x"], env={"PATH": f"{tmp_path}:/usr/bin:/bin"}).stdout == "found x\n"
    with pytest.raises(SysextError, match="'only-here' not found"):
        run(["only-here"], env={"PATH": "/nonexistent"})
    with pytest.raises(SysextError, match=f"'{tmp_path}/gone' not found"):
        run([tmp_path / "gone"])


def test_environment_and_no_capture(tmp_path: Path) -> None:
    out = tmp_path / "out"
    done = run(
        ["sh", "-c", f"echo $LANG $EXTRA > {shlex.quote(str(out))}"], env={"EXTRA": "yes"}, capture=False
    )
    assert (done.stdout, done.stderr) == ("", "")
    assert out.read_text() == "C.UTF-8 yes\n"


def test_a_timeout_in_a_session_kills_the_childrens_group_too() -> None:
    started = time.monotonic()
    with pytest.raises(SysextError, match="did not finish"):
        run(["sh", "-c", "sleep 30 & wait"], timeout=0.3, new_session=True)
    assert time.monotonic() - started < 5


def test_a_file_that_cannot_be_executed_says_so(tmp_path: Path) -> None:
    script = tmp_path / "not-executable"
    script.write_text("#!/bin/sh\n")
    with pytest.raises(SysextError, match="cannot be executed"):
        run([script])
