# SPDX-License-Identifier: LGPL-2.1-or-later
"""Tables and JSON on stdout."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sysextpy.model import JsonMode
from sysextpy.output import emit_json, emit_table, format_table, format_usec

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    "headers, rows, legend, expected",
    [
        pytest.param(
            ["name", "type"],
            [["a", "directory"], ["longer-name", "raw"]],
            True,
            "NAME        TYPE\na           directory\nlonger-name raw\n",
            id="aligned-with-legend",
        ),
        pytest.param(
            ["name", "type"],
            [["a", "directory"], ["longer-name", "raw"]],
            False,
            "a           directory\nlonger-name raw\n",
            id="aligned-without-legend",
        ),
        pytest.param(
            ["hierarchy", "extensions", "since"],
            [["/usr", "none", ""], ["/opt", "a, b", "Mon"]],
            True,
            "HIERARCHY EXTENSIONS SINCE\n/usr      none\n/opt      a, b       Mon\n",
            id="header-wider-than-cells-and-empty-last-cell",
        ),
        pytest.param(
            ["hierarchy", "extensions", "since"],
            [["/usr", "none", ""]],
            False,
            "/usr none\n",
            id="header-width-does-not-count-without-legend",
        ),
        pytest.param(
            ["a", "b", "c"],
            [["x", "", "z"]],
            True,
            "A B C\nx   z\n",
            id="empty-middle-cell-keeps-alignment",
        ),
        pytest.param(["name"], [], True, "NAME\n", id="legend-only"),
        pytest.param(["name"], [], False, "", id="nothing"),
        pytest.param(
            ["class", "reason"],
            [["sysext", "a long reason is never padded"], ["confext", "short"]],
            True,
            "CLASS   REASON\nsysext  a long reason is never padded\nconfext short\n",
            id="last-column-not-padded",
        ),
    ],
)
def test_format_table(headers: list[str], rows: list[list[str]], legend: bool, expected: str) -> None:
    assert format_table(headers, rows, legend=legend) == expected


def test_format_table_lines_have_no_trailing_space() -> None:
    text = format_table(["a", "b"], [["x", ""], ["yyyy", ""]])
    assert all(line == line.rstrip() for line in text.splitlines())


def test_emit_table_writes_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    emit_table(["name"], [["foo"]], legend=False)
    assert capsys.readouterr() == ("foo\n", "")


@pytest.mark.parametrize(
    "mode, expected",
    [
        (JsonMode.SHORT, '[{"name":"ä","n":[1,null]}]\n'),
        (JsonMode.PRETTY, '[\n  {\n    "name": "ä",\n    "n": [\n      1,\n      null\n    ]\n  }\n]\n'),
    ],
)
def test_emit_json(capsys: pytest.CaptureFixture[str], mode: JsonMode, expected: str) -> None:
    value = [{"name": "ä", "n": [1, None]}]
    emit_json(value, mode)
    out, err = capsys.readouterr()
    assert (out, err) == (expected, "")
    assert json.loads(out) == value


def test_emit_json_empty_list(capsys: pytest.CaptureFixture[str]) -> None:
    emit_json([], JsonMode.SHORT)
    emit_json([], JsonMode.PRETTY)
    assert capsys.readouterr().out == "[]\n[]\n"


def test_format_usec() -> None:
    assert format_usec(0) == "n/a"
    assert format_usec(-5) == "n/a"
    now = time.time()
    expected = time.strftime("%a %Y-%m-%d %H:%M:%S %Z", time.localtime(int(now)))
    assert format_usec(int(now) * 1_000_000) == expected


BAD_PATH = os.fsdecode(b"/var/lib/extensions/caf\xe9")  # not UTF-8: a lone surrogate inside


def test_json_with_a_path_that_is_not_utf8_stays_valid_json(tmp_path: Path) -> None:
    out = tmp_path / "out"
    code = (
        "import sys, os; from sysextpy.output import emit_json; from sysextpy.model import JsonMode; "
        f"emit_json({{'path': os.fsdecode({os.fsencode(BAD_PATH)!r})}}, JsonMode.SHORT)"
    )
    with open(out, "wb") as f:
        proc = subprocess.run(
            [sys.executable, "-c", code],
            stdout=f,
            stderr=subprocess.PIPE,
            env={"LANG": "C.UTF-8", "PYTHONIOENCODING": "utf-8:strict"},
            cwd=REPO,
            check=False,
        )
    assert proc.returncode == 0, proc.stderr
    value = json.loads(out.read_bytes().decode("utf-8"))
    assert os.fsencode(value["path"]) == os.fsencode(BAD_PATH)


def test_table_with_a_path_that_is_not_utf8_prints_its_bytes(tmp_path: Path) -> None:
    code = (
        "import os; from sysextpy.output import emit_table; "
        f"emit_table(['path'], [[os.fsdecode({os.fsencode(BAD_PATH)!r})]], legend=False)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        env={"LANG": "C.UTF-8", "PYTHONIOENCODING": "utf-8:strict"},
        cwd=REPO,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == os.fsencode(BAD_PATH) + b"\n"
