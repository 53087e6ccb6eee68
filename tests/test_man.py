# SPDX-License-Identifier: LGPL-2.1-or-later
"""The manual pages: they build, man(1) renders them without a warning, sysextpy(8) documents
every option and verb the command line knows, and `make install` puts them where man(1) and
`systemd-analyze verify --man=yes` find the pages the units name in Documentation=.

The tools are prerequisites of the project, so a missing one fails these tests, it does not skip
them.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import REPO_ROOT
from test_units import INSTALLED_UNITS, install_into, make, values, verify

from sysextpy import cli
from sysextpy.model import Verb

MAN_SOURCES = REPO_ROOT / "man"
PAGES = ("sysextpy.8", "sysextpy-generator.8", "sysextpy.service.8")
ALIASES = {"sysextpy-sysroot.service.8": "sysextpy.service.8"}
PACKAGES = {"scdoc": "scdoc", "man": "man-db", "systemd-analyze": "systemd"}


def require(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.fail(f"{tool} is not installed (Debian package {PACKAGES[tool]})")
    return path


@pytest.fixture(scope="module")
def built() -> Path:
    """The pages built by `make man`, in the source tree as a user would build them."""
    require("scdoc")
    make("man")
    return MAN_SOURCES


def render(page: Path) -> subprocess.CompletedProcess[str]:
    """man -l, 80 columns wide, with every groff warning enabled (man(1) hides them otherwise)."""
    env = {**os.environ, "MANWIDTH": "80", "LC_ALL": "C.UTF-8", "MANPAGER": "cat"}
    return subprocess.run(
        [require("man"), "--warnings=w", "-l", os.fspath(page)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env,
    )


def test_every_source_is_a_page(built: Path) -> None:
    sources = sorted(p.name[: -len(".scd")] for p in MAN_SOURCES.glob("*.8.scd"))
    assert sources == sorted(PAGES)
    for name in PAGES:
        assert (built / name).stat().st_size > 0, name


@pytest.mark.parametrize("name", PAGES)
def test_page_renders_without_warnings(name: str, built: Path) -> None:
    result = render(built / name)
    assert result.returncode == 0, result.stderr
    assert result.stderr == "", result.stderr
    title = name.rsplit(".", 1)[0]
    assert result.stdout.startswith(f"{title}(8)"), result.stdout[:200]
    for heading in ("NAME", "SYNOPSIS", "DESCRIPTION", "SEE ALSO"):
        assert f"\n{heading}\n" in result.stdout, f"{name} has no {heading} section"


def test_render_check_can_fail(tmp_path: Path) -> None:
    """The check above sees what groff warns about."""
    page = tmp_path / "broken.8"
    page.write_text('.TH "broken" "8"\n.SH NAME\nbroken \\- a page\n.undefined-macro\n')
    result = render(page)
    assert "warning" in result.stderr, result.stderr


def section(text: str, title: str) -> list[str]:
    """The lines of one section of a rendered page (section titles start in column 0)."""
    lines = text.splitlines()
    start = lines.index(title) + 1
    end = next((i for i in range(start, len(lines)) if lines[i][:1].strip()), len(lines))
    return lines[start:end]


def entry_terms(lines: list[str]) -> list[str]:
    """The terms of a section's entries: a line indented 7 columns whose next line is indented
    further (the entry's description), as man(1) lays out a list of terms."""
    indent = re.compile(r"^( *)\S")
    terms = []
    for line, following in zip(lines, lines[1:]):
        here, below = indent.match(line), indent.match(following)
        if here and below and len(here.group(1)) == 7 and len(below.group(1)) > 7:
            terms.append(line.strip())
    return terms


OPTION = re.compile(r"(?<![\w-])(--?[a-z][a-z-]*)")


def test_sysextpy_documents_every_option(built: Path) -> None:
    """Each option of the one option table (cli.OPTIONS) is an entry of OPTIONS, and OPTIONS has no other."""
    text = render(built / "sysextpy.8").stdout
    documented = {m for term in entry_terms(section(text, "OPTIONS")) for m in OPTION.findall(term)}
    known = set(cli.OPTIONS)
    assert known - documented == set(), "options missing from sysextpy(8)"
    assert documented - known == set(), "sysextpy(8) documents options the parser does not know"


def test_sysextpy_documents_every_verb(built: Path) -> None:
    text = render(built / "sysextpy.8").stdout
    documented = set(entry_terms(section(text, "COMMANDS")))
    assert documented == {verb.value for verb in Verb}


def test_entry_terms_are_entries_only() -> None:
    """An option mentioned in running text is not an entry: the checks above can fail."""
    rendered = [
        "       Options may be given before or after the verb, as --option=value or as",
        "       --option value.",
        "",
        "       --root=PATH",
        "           Operate on the OS tree at PATH. Implies --no-reload.",
        "",
        "       -h, --help",
        "           Print a short help text and exit.",
    ]
    assert entry_terms(rendered) == ["--root=PATH", "-h, --help"]
    assert {m for t in entry_terms(rendered) for m in OPTION.findall(t)} == {"--root", "-h", "--help"}


# ---------------------------------------------------------------------------------------------
# Installed: man(1) finds every page and alias; the units' Documentation= resolves.


@pytest.fixture
def installed(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    require("scdoc")
    install_into(root)
    return root


def test_make_install_puts_pages_and_aliases(installed: Path) -> None:
    man8 = installed / "usr/share/man/man8"
    assert sorted(p.name for p in man8.iterdir()) == sorted([*PAGES, *ALIASES])
    for name in PAGES:
        assert (man8 / name).read_bytes() == (MAN_SOURCES / name).read_bytes()
    for alias, page in ALIASES.items():
        assert os.readlink(man8 / alias) == page


@pytest.mark.parametrize("name", [*PAGES, *ALIASES])
def test_man_finds_installed_page(name: str, installed: Path) -> None:
    mandir = installed / "usr/share/man"
    title = name.rsplit(".", 1)[0]
    env = {**os.environ, "MANPATH": os.fspath(mandir)}
    where = subprocess.run(
        [require("man"), "-w", "8", title], capture_output=True, text=True, env=env, timeout=60, check=False
    )
    assert where.returncode == 0, where.stderr
    target = ALIASES.get(name, name)
    assert Path(where.stdout.strip()).resolve() == (mandir / "man8" / target).resolve()
    shown = subprocess.run(
        [require("man"), "8", title],
        capture_output=True,
        text=True,
        env={**env, "MANWIDTH": "80", "LC_ALL": "C.UTF-8", "MANPAGER": "cat"},
        timeout=60,
        check=False,
    )
    assert shown.returncode == 0, shown.stderr
    assert title in shown.stdout


def documented_pages() -> set[str]:
    pages = set()
    for unit in ("sysextpy.service", "sysextpy-sysroot.service"):
        for doc in values(unit, "Unit", "Documentation"):
            found = re.fullmatch(r"man:(.+)\((\d)\)", doc)
            assert found, f"{unit}: Documentation={doc} is not a man page"
            pages.add(f"{found.group(1)}.{found.group(2)}")
    return pages


def test_units_name_the_pages() -> None:
    assert documented_pages() == {"sysextpy.8", "sysextpy.service.8", "sysextpy-generator.8"}


def test_systemd_analyze_finds_documentation(installed: Path) -> None:
    require("systemd-analyze")
    require("man")
    result = verify(installed, INSTALLED_UNITS, man_path=installed / "usr/share/man")
    assert result.returncode == 0, result.stderr
    assert result.stderr == "", result.stderr


def test_systemd_analyze_documentation_check_can_fail(installed: Path) -> None:
    """With one page missing from MANPATH, systemd-analyze says so for both units."""
    require("systemd-analyze")
    require("man")
    (installed / "usr/share/man/man8/sysextpy-generator.8").unlink()
    result = verify(installed, INSTALLED_UNITS, man_path=installed / "usr/share/man")
    assert result.returncode != 0
    missing = [line for line in result.stderr.splitlines() if "man sysextpy-generator(8)" in line]
    assert len(missing) == len(INSTALLED_UNITS), result.stderr
    assert "man sysextpy(8)" not in result.stderr
