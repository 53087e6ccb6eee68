# SPDX-License-Identifier: LGPL-2.1-or-later
"""The command line contract: parsing tables through cli.parse_args, exit codes through the real program."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO_ROOT, RunSysextpy, require_tools

from sysextpy import __version__, cli
from sysextpy.errors import UsageError
from sysextpy.model import (
    ALL_CLASSES,
    DEFAULT_STATE_PATH,
    ImageClass,
    JsonMode,
    MutableMode,
    Options,
    Verb,
)

SYSEXT_ONLY = (ImageClass.SYSEXT,)
CONFEXT_ONLY = (ImageClass.CONFEXT,)
MUTABLE_LIST = ["no", "yes", "auto", "import", "ephemeral", "ephemeral-import"]


def parsed(*argv: str, argv0: str = "sysextpy") -> Options:
    opts, show = cli.parse_args(list(argv), argv0)
    assert show is None
    return opts


# --------------------------------------------------------------------------------------------------
# Verbs


@pytest.mark.parametrize("verb", list(Verb))
def test_every_verb_parses(verb: Verb) -> None:
    assert parsed(verb.value).verb is verb


def test_status_is_the_default_verb() -> None:
    assert parsed() == Options()
    assert parsed("--json=short").verb is Verb.STATUS


def test_double_dash_ends_options() -> None:
    assert parsed("--", "list").verb is Verb.LIST
    with pytest.raises(UsageError, match="unknown verb '--force'"):
        cli.parse_args(["--", "--force"])


# --------------------------------------------------------------------------------------------------
# Options: every spelling, before and after the verb


OPTION_CASES: list[tuple[list[str], dict[str, Any]]] = [
    (["--class=sysext"], {"classes": SYSEXT_ONLY}),
    (["--class", "confext"], {"classes": CONFEXT_ONLY}),
    (["--class=all"], {"classes": ALL_CLASSES}),
    (["--root=/srv/r"], {"root": "/srv/r", "root_given": True}),
    (["--root", "/srv/r/"], {"root": "/srv/r", "root_given": True}),
    (["--root=/srv//a/../r/."], {"root": "/srv/r", "root_given": True}),
    (["--root=/srv/r", "--root="], {"root": "/", "root_given": False}),
    (["--mutable=yes"], {"mutable": MutableMode.YES}),
    (["--mutable", "ephemeral-import"], {"mutable": MutableMode.EPHEMERAL_IMPORT}),
    (["--mutable=auto"], {"mutable": MutableMode.AUTO}),
    (["--mutable=import"], {"mutable": MutableMode.IMPORT}),
    (["--mutable=ephemeral"], {"mutable": MutableMode.EPHEMERAL}),
    (["--mutable=no"], {"mutable": MutableMode.NO}),
    (["--mutable=true"], {"mutable": MutableMode.YES}),
    (["--mutable=OFF"], {"mutable": MutableMode.NO}),
    (["--mutable=1"], {"mutable": MutableMode.YES}),
    (["--force"], {"force": True}),
    (["--no-reload"], {"no_reload": True}),
    (["--always-refresh=yes"], {"always_refresh": True}),
    (["--always-refresh", "no"], {"always_refresh": False}),
    # validated and stored in canonical spelling, like the configuration file's ImagePolicy=
    (["--image-policy=root=signed+verity:=ignore"], {"image_policy": "root=verity+signed"}),
    (["--image-policy", "*"], {"image_policy": "*"}),
    (["--image-policy=root=verity", "--image-policy="], {"image_policy": None}),
    (["--noexec=yes"], {"noexec": True}),
    (["--noexec", "off"], {"noexec": False}),
    (["--json=short"], {"json": JsonMode.SHORT}),
    (["--json", "pretty"], {"json": JsonMode.PRETTY}),
    (["--json=pretty", "--json=off"], {"json": JsonMode.OFF}),
    (["--no-legend"], {"legend": False}),
    (["--no-pager"], {}),
    (["--state=/tmp/s.json"], {"state": "/tmp/s.json"}),
    (["--state", "/run/x/../y.json"], {"state": "/run/y.json"}),
    (["--debug"], {"debug": True}),
    (
        ["--class=sysext", "--force", "--no-reload", "--json=short", "--no-legend"],
        {"classes": SYSEXT_ONLY, "force": True, "no_reload": True, "json": JsonMode.SHORT, "legend": False},
    ),
]


@pytest.mark.parametrize("args, fields", OPTION_CASES, ids=[" ".join(a) for a, _ in OPTION_CASES])
@pytest.mark.parametrize("where", ["before", "after"])
def test_option_parses_before_and_after_the_verb(
    where: str, args: list[str], fields: dict[str, Any]
) -> None:
    argv = [*args, "list"] if where == "before" else ["list", *args]
    opts = parsed(*argv)
    assert opts.verb is Verb.LIST
    expected = Options(verb=Verb.LIST, **fields)
    assert opts == expected


def test_relative_root_and_state_become_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    opts = parsed("--root=r/../sub", "--state=s.json")
    assert opts.root == os.fspath(tmp_path / "sub")
    assert opts.state == os.fspath(tmp_path / "s.json")
    assert parsed().state == DEFAULT_STATE_PATH


@pytest.mark.parametrize(
    "argv, reload_allowed",
    [([], True), (["--no-reload"], False), (["--root=/x"], False), (["--root=/x", "--root="], True)],
)
def test_root_implies_no_reload(argv: list[str], reload_allowed: bool) -> None:
    assert parsed(*argv).reload_allowed is reload_allowed


@pytest.mark.parametrize("text", ["1", "yes", "y", "true", "t", "on", "YES", "True", "On"])
@pytest.mark.parametrize("option, field", [("--noexec", "noexec"), ("--always-refresh", "always_refresh")])
def test_boolean_true_spellings(option: str, field: str, text: str) -> None:
    assert getattr(parsed(f"{option}={text}"), field) is True


@pytest.mark.parametrize("text", ["0", "no", "n", "false", "f", "off", "NO", "False"])
@pytest.mark.parametrize("option, field", [("--noexec", "noexec"), ("--always-refresh", "always_refresh")])
def test_boolean_false_spellings(option: str, field: str, text: str) -> None:
    assert getattr(parsed(f"{option}={text}"), field) is False


# --------------------------------------------------------------------------------------------------
# argv[0] selects the class, --class overrides it


@pytest.mark.parametrize(
    "argv0, classes",
    [
        ("sysextpy", ALL_CLASSES),
        ("/usr/bin/systemd-confext", CONFEXT_ONLY),
        ("/usr/bin/systemd-sysext", SYSEXT_ONLY),
        ("./my-systemd-confext-wrapper", CONFEXT_ONLY),
        ("/usr/lib/systemd-confext/sysextpy", ALL_CLASSES),  # only the basename counts
        ("systemd-sysextpy", SYSEXT_ONLY),
    ],
)
def test_argv0_selects_the_class(argv0: str, classes: tuple[ImageClass, ...]) -> None:
    assert parsed(argv0=argv0).classes == classes


def test_class_option_overrides_argv0() -> None:
    assert parsed("--class=all", argv0="systemd-confext").classes == ALL_CLASSES
    assert parsed("--class=sysext", argv0="systemd-confext").classes == SYSEXT_ONLY


# --------------------------------------------------------------------------------------------------
# What to show instead of a verb


@pytest.mark.parametrize(
    "argv, show",
    [
        (["--help"], "help"),
        (["-h"], "help"),
        (["help"], "help"),
        (["--version"], "version"),
        (["--mutable=help"], "mutable-help"),
        (["--mutable", "help"], "mutable-help"),
        (["--json=help"], "json-help"),
        (["list", "--help"], "help"),
        # The first of these stops the parse, so what follows is never looked at (like getopt).
        (["--version", "--help"], "version"),
        (["--help", "--bogus"], "help"),
        (["bogus-verb", "--help"], "help"),
        (["list", "list", "--version"], "version"),
        (["--mutable=help", "--noexec=maybe"], "mutable-help"),
    ],
)
def test_show_instead_of_verb(argv: list[str], show: str) -> None:
    assert cli.parse_args(argv)[1] == show


# --------------------------------------------------------------------------------------------------
# Usage errors (parser level)


USAGE_ERRORS = [
    (["--bogus"], "unknown option '--bogus'"),
    (["-x"], "unknown option '-x'"),
    (["--forc"], "unknown option '--forc'"),
    (["bogus"], "unknown verb 'bogus'"),
    (["list", "status"], "too many arguments: 'status'"),
    (["list", "--force", "plan"], "too many arguments: 'plan'"),
    (["help", "list"], "too many arguments"),
    (["--noexec=maybe"], "--noexec= takes a boolean, got 'maybe'"),
    (["--noexec="], "--noexec= takes a boolean, got ''"),
    (["--always-refresh=2"], "--always-refresh= takes a boolean"),
    (["--class=both"], "--class= takes sysext, confext or all, got 'both'"),
    (["--class=SYSEXT"], "--class= takes sysext, confext or all"),
    (["--mutable=sometimes"], "--mutable= takes one of no, yes, auto, import, ephemeral, ephemeral-import"),
    (["--mutable=Auto"], "--mutable= takes one of"),
    (["--json=long"], "--json= takes pretty, short or off, got 'long'"),
    (["--image-policy=root=bogus"], "--image-policy=: Unknown partition policy flag 'bogus'"),
    (["--image-policy=nonsense"], "--image-policy=: Missing '='"),
    (["--state="], "--state= needs a path"),
    (["--root"], "option --root needs a value"),
    (["list", "--json"], "option --json needs a value"),
    (["--class"], "option --class needs a value"),
    (["--force=yes"], "option --force takes no value"),
    (["--no-legend=1"], "option --no-legend takes no value"),
]


@pytest.mark.parametrize("argv, message", USAGE_ERRORS, ids=[" ".join(a) for a, _ in USAGE_ERRORS])
def test_usage_errors(argv: list[str], message: str) -> None:
    with pytest.raises(UsageError) as info:
        cli.parse_args(argv)
    assert message in str(info.value)
    assert info.value.exit_code == 2


# --------------------------------------------------------------------------------------------------
# The real program: exit codes and streams


@pytest.mark.parametrize(
    "argv",
    [
        ["--bogus"],
        ["bogus"],
        ["list", "status"],
        ["--noexec=maybe"],
        ["--class=both", "list"],
        ["--json"],
        ["--mutable=sometimes"],
    ],
    ids=lambda a: " ".join(a),
)
def test_usage_error_prints_one_line_and_exits_2(sysextpy_cmd: RunSysextpy, argv: list[str]) -> None:
    result = sysextpy_cmd(*argv)
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("sysextpy: ")


def test_help(sysextpy_cmd: RunSysextpy) -> None:
    for argv in (["--help"], ["-h"], ["help"], ["merge", "--help"]):
        result = sysextpy_cmd(*argv)
        assert result.returncode == 0
        assert result.stderr == ""
        assert result.stdout == cli.USAGE
    for word in [v.value for v in Verb] + ["--root=", "--mutable=", "--json=", "--state=", "--class="]:
        assert word in cli.USAGE


def test_version(sysextpy_cmd: RunSysextpy) -> None:
    result = sysextpy_cmd("--version")
    assert (result.returncode, result.stdout, result.stderr) == (0, f"sysextpy {__version__}\n", "")


@pytest.mark.parametrize(
    "argv, stdout",
    [
        (["--mutable=help"], "Known mutability modes:\n" + "\n".join(MUTABLE_LIST) + "\n"),
        (["--no-legend", "--mutable=help"], "\n".join(MUTABLE_LIST) + "\n"),
        # upstream prints and exits at --mutable=help, so a later --no-legend is not seen
        (["--mutable=help", "--no-legend"], "Known mutability modes:\n" + "\n".join(MUTABLE_LIST) + "\n"),
        (["--json=help"], "pretty\nshort\noff\n"),
        (["--no-legend", "--json=help"], "pretty\nshort\noff\n"),
    ],
)
def test_value_help(sysextpy_cmd: RunSysextpy, argv: list[str], stdout: str) -> None:
    result = sysextpy_cmd(*argv)
    assert (result.returncode, result.stdout, result.stderr) == (0, stdout, "")


def test_relative_hierarchy_env_is_a_runtime_error(sysextpy_cmd: RunSysextpy, tmp_path: Path) -> None:
    result = sysextpy_cmd(f"--root={tmp_path}", "status", env={"SYSTEMD_SYSEXT_HIERARCHIES": "usr"})
    assert result.returncode == 1
    assert result.stdout == ""
    assert "SYSTEMD_SYSEXT_HIERARCHIES" in result.stderr
    assert "'usr'" in result.stderr
    assert "Traceback" not in result.stderr


def _setpriv_nobody() -> list[str]:
    if os.geteuid() != 0:
        return []  # already unprivileged
    require_tools("setpriv")
    return ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


def _interpreter_for(prefix: list[str]) -> str:
    """This interpreter, or the system's where the unprivileged user cannot start it (one installed
    below root's private home, as pyenv's are: its shared library cannot be loaded)."""
    probe = subprocess.run([*prefix, sys.executable, "-c", ""], capture_output=True, check=False)
    return sys.executable if probe.returncode == 0 else "/usr/bin/python3"


@pytest.mark.parametrize("verb", ["merge", "unmerge", "refresh"])
def test_mutating_verb_as_non_root_exits_1(verb: str) -> None:
    prefix = _setpriv_nobody()
    # pytest's tmp_path is private to root; user nobody needs to reach this root.
    with tempfile.TemporaryDirectory(prefix="sysextpy-nobody-") as scratch:
        os.chmod(scratch, 0o755)
        root = Path(scratch) / "root"
        (root / "usr").mkdir(parents=True)
        env = {k: v for k, v in os.environ.items() if k != "SYSTEMD_LOG_LEVEL"}
        result = subprocess.run(
            [*prefix, _interpreter_for(prefix), "-m", "sysextpy", f"--root={root}", verb],
            cwd=REPO_ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert result.returncode == 1, result.stderr
    assert result.stdout == ""
    assert result.stderr == "Need to be privileged. (run as root)\n"


def test_argv0_systemd_confext_selects_confext(tmp_path: Path) -> None:
    """Installed as a systemd-confext symlink, only confexts are listed."""
    root = tmp_path / "root"
    for d in ("etc/extensions/sys1", "run/confexts/conf1"):
        (root / d).mkdir(parents=True)
    bindir = tmp_path / "bin"
    bindir.mkdir()
    launcher = bindir / "sysextpy"
    launcher.write_text(
        f"#!{sys.executable}\nimport sys\nfrom sysextpy.__main__ import main\nsys.exit(main())\n"
    )
    launcher.chmod(0o755)
    env = {**os.environ, "PYTHONPATH": os.fspath(REPO_ROOT)}
    env.pop("SYSTEMD_LOG_LEVEL", None)

    def names(program: str, *extra: str) -> list[tuple[str, str]]:
        link = bindir / program
        if not link.exists():
            link.symlink_to("sysextpy")
        result = subprocess.run(
            [os.fspath(link), f"--root={root}", "list", "--json=short", *extra],
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        return [(r["name"], r["class"]) for r in json.loads(result.stdout)]

    assert names("sysextpy") == [("conf1", "confext"), ("sys1", "sysext")]
    assert names("systemd-confext") == [("conf1", "confext")]
    assert names("systemd-sysext") == [("sys1", "sysext")]
    assert names("systemd-confext", "--class=all") == [("conf1", "confext"), ("sys1", "sysext")]
