# SPDX-License-Identifier: LGPL-2.1-or-later
"""Linters are tests too: ruff (check and format), mypy --strict, shellcheck."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from conftest import REPO_ROOT, missing_prerequisite, require_tools

# The virtual environment's tools, next to the interpreter running the tests (not resolved: the
# venv's python is a symlink to the system one).
VENV_BIN = Path(sys.executable).parent
SKIP_DIRS = {".venv", ".git", ".mypy_cache", ".ruff_cache", ".pytest_cache", "__pycache__", "build"}


def tool(name: str) -> str:
    path = VENV_BIN / name
    if not path.exists():
        missing_prerequisite(f"{name} is not installed next to {sys.executable} (run `make venv`)")
    return os.fspath(path)


def run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv,
        cwd=REPO_ROOT,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def test_ruff_check() -> None:
    result = run([tool("ruff"), "check", "--no-cache", "."])
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_format() -> None:
    result = run([tool("ruff"), "format", "--check", "--no-cache", "."])
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_strict() -> None:
    # The configuration in pyproject.toml says strict and which files.
    result = run([tool("mypy")])
    assert result.returncode == 0, result.stdout + result.stderr


def _is_shell_script(path: Path) -> bool:
    if path.suffix == ".sh":
        return True
    try:
        with open(path, "rb") as f:
            first = f.readline(200)
    except OSError:
        return False
    if not first.startswith(b"#!"):
        return False
    interpreter = first[2:].split()
    words = [os.path.basename(w) for w in interpreter[:2]]
    return any(w in (b"sh", b"bash", b"dash") for w in words)


def shell_files() -> list[Path]:
    found: set[Path] = set()
    for dirpath, dirnames, filenames in os.walk(REPO_ROOT):
        dirnames[:] = [d for d in dirnames if d not in SKIP_DIRS]
        for name in filenames:
            if name.endswith(".sh"):
                found.add(Path(dirpath, name))
    for pattern in ("generators/*", "dracut/90sysextpy/*", ".ci/*"):
        for path in REPO_ROOT.glob(pattern):
            if path.is_file() and _is_shell_script(path):
                found.add(path)
    return sorted(found)


def test_shellcheck() -> None:
    require_tools("shellcheck")
    files = shell_files()
    assert files, "no shell scripts found: is shell_files() looking in the right places?"
    result = run(["shellcheck", "--external-sources", *(os.fspath(f.relative_to(REPO_ROOT)) for f in files)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_shell_file_detection(tmp_path: Path) -> None:
    cases = {
        "a.sh": b"echo\n",
        "gen-sh": b"#!/bin/sh\n",
        "gen-bash": b"#!/usr/bin/env bash\n",
        "gen-py": b"#!/usr/bin/python3 -I -S\n",
        "plain": b"no shebang\n",
    }
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
    detected = {name for name in cases if _is_shell_script(tmp_path / name)}
    assert detected == {"a.sh", "gen-sh", "gen-bash"}
