# SPDX-License-Identifier: LGPL-2.1-or-later
"""Every source file says its license: the SPDX identifier of the project's, in its first lines."""

from __future__ import annotations

import subprocess

from conftest import REPO_ROOT

LICENSE = "LGPL-2.1-or-later"
# What is a source file: code, scripts, units, manual page sources, the build.
SOURCES = ("*.py", "*.sh", "*.service", "*.scd", "Makefile", "generators/*", ".ci/run")


def sources() -> list[str]:
    out = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "--", *SOURCES],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return sorted(set(out.split()))


def test_every_source_file_carries_the_spdx_identifier() -> None:
    files = sources()
    assert any(f.startswith("sysextpy/") for f in files) and "Makefile" in files
    missing = []
    for name in files:
        path = REPO_ROOT / name
        if not path.is_file():
            continue  # deleted in the work tree
        head = path.read_text(errors="replace").splitlines()[:3]
        if not any(f"SPDX-License-Identifier: {LICENSE}" in line for line in head):
            missing.append(name)
    assert missing == []


def test_the_license_file_is_the_declared_license() -> None:
    text = (REPO_ROOT / "LICENSE").read_text()
    assert "GNU LESSER GENERAL PUBLIC LICENSE" in text and "Version 2.1" in text
    assert f'license = {{ text = "{LICENSE}" }}' in (REPO_ROOT / "pyproject.toml").read_text()
