# SPDX-License-Identifier: LGPL-2.1-or-later
"""sysextpy-generator: golden fake-root trees, the pure decisions, and the start-up budget.

Golden cases live in tests/generator/NN-name/: `root/` is the fake root the generator reads
(proc/cmdline, proc/sys/kernel/random/boot_id, etc/initrd-release or not, run/sysextpy/state.json),
an optional `env` file adds KEY=VALUE lines to the environment, and `expected/` is exactly what it
must write (`expected/.empty` alone: nothing). The generator runs as installed: the script itself,
through its `#!/usr/bin/python3 -IS` line, with a clean environment.

Some golden records hold bytes that are not UTF-8 (27-*, 30-*), as a damaged record may.
"""

from __future__ import annotations

import io
import json
import os
import posixpath
import resource
import shlex
import subprocess
import tempfile
from collections.abc import Mapping
from contextlib import redirect_stderr
from pathlib import Path
from typing import Any, Optional

import pytest
from conftest import REPO_ROOT, require_tools
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sysextpy import generator as gen
from sysextpy import handoff
from sysextpy.jsonlite import load_json

GENERATOR = REPO_ROOT / "generators" / "sysextpy-generator"
CASES_DIR = Path(__file__).resolve().parent / "generator"
CASES = sorted(p.name for p in CASES_DIR.iterdir() if p.is_dir())
BOOT_ID = "2f0c8f3d6b1e4a579c3e0d4f5a6b7c8d"  # the boot_id file of every golden root, without dashes


def run_generator(
    root: Optional[Path], *dirs: Path, env: Optional[Mapping[str, str]] = None
) -> subprocess.CompletedProcess[str]:
    full_env = {"PATH": "/usr/bin:/bin"}
    if root is not None:
        full_env["SYSEXTPY_ROOT"] = os.fspath(root)
    full_env.update(env or {})
    return subprocess.run(
        [os.fspath(GENERATOR), *map(os.fspath, dirs)],
        env=full_env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def snapshot(top: Path) -> dict[str, str]:
    """Every entry below `top`: 'dir', 'link -> TARGET' or the file's text."""
    found: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(top):
        for name in dirnames + filenames:
            path = Path(dirpath, name)
            rel = os.fspath(path.relative_to(top))
            if path.is_symlink():
                found[rel] = f"link -> {os.readlink(path)}"
            elif path.is_dir():
                found[rel] = "dir"
            else:
                found[rel] = path.read_text()
    return found


def case_env(case: Path) -> dict[str, str]:
    env_file = case / "env"
    if not env_file.exists():
        return {}
    return dict(line.split("=", 1) for line in env_file.read_text().splitlines() if line)


def expected_tree(case: Path) -> dict[str, str]:
    expected = snapshot(case / "expected")
    if expected == {".empty": ""}:
        return {}
    assert ".empty" not in expected, f"{case.name}: expected/.empty beside other files"
    return expected


# ---------------------------------------------------------------------------------------------
# Golden trees


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("ndirs", [1, 3])
def test_golden(name: str, ndirs: int, tmp_path: Path) -> None:
    case = CASES_DIR / name
    dirs = [tmp_path / d for d in ("normal", "early", "late")][:ndirs]
    for d in dirs:
        d.mkdir()
    result = run_generator(case / "root", *dirs, env=case_env(case))
    assert result.returncode == 0, result.stderr
    assert "internal error" not in result.stderr
    assert snapshot(dirs[0]) == expected_tree(case)
    for other in dirs[1:]:
        assert snapshot(other) == {}, "only the normal directory is written"


def test_golden_cases_cover_the_contract() -> None:
    """The issue asks for these situations; make sure a case for each stays in the tree."""
    wanted = [
        "initrd",
        "merged",
        "failed",
        "merging",
        "corrupt",
        "other-boot",
        "unreachable-var",
        "schema-3",
        "unreachable-not-utf8",
        "unreachable-lone-surrogate",
        "automount-wants",
        "automount-before-256",
        "automount-esp",
    ]
    for word in wanted:
        assert any(word in name for name in CASES), word
    # The fake roots must not depend on this machine's boot id.
    for name in CASES:
        boot_id = (CASES_DIR / name / "root/proc/sys/kernel/random/boot_id").read_text()
        assert boot_id.strip().replace("-", "") == BOOT_ID


# Golden records that are meant not to be records of this schema; every other one must be one, or
# a case named "failed" would pass because its record is corrupt rather than because it failed.
NOT_RECORDS = (
    "09-initrd-record-ignored",
    "14-host-corrupt",
    "22-host-schema-3",
    "25-host-not-an-object",
    "30-host-not-utf8",
)
NOT_MERGED = {
    "12-host-failed": "failed",
    "13-host-merging": "merging",
    "19-host-off": "failed",
    "23-host-failed-unreachable": "failed",
}
WITH_RECORD = [name for name in CASES if (CASES_DIR / name / "root/run/sysextpy/state.json").exists()]


def read_record(path: Path) -> str:
    return path.read_bytes().decode("utf-8", "surrogateescape")  # as the generator reads it


@pytest.mark.parametrize("name", WITH_RECORD)
def test_golden_records_are_what_their_case_says(name: str) -> None:
    check = handoff.parse_record(read_record(CASES_DIR / name / "root/run/sysextpy/state.json"), BOOT_ID)
    if name in NOT_RECORDS:
        assert check.record is None, check
        return
    record = check.record
    assert record is not None, check
    assert (record.boot_id == BOOT_ID) == (name != "15-host-other-boot")
    assert record.phase == NOT_MERGED.get(name, "merged")
    for entry in record.classes.values():
        assert entry.fingerprint is None or entry.bound(), "a fingerprint binds its digests"


# ---------------------------------------------------------------------------------------------
# Behaviour of the program


@pytest.mark.parametrize("args", [[], ["a", "b"], ["a", "b", "c", "d"]])
def test_wrong_argument_count_writes_nothing(args: list[str], tmp_path: Path) -> None:
    result = subprocess.run(
        [os.fspath(GENERATOR), *args], cwd=tmp_path, capture_output=True, text=True, check=False, timeout=60
    )
    assert result.returncode == 2
    assert "usage:" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_second_run_into_same_dir_keeps_first_output(tmp_path: Path) -> None:
    case = CASES_DIR / "23-host-failed-unreachable"
    out = tmp_path / "out"
    assert run_generator(case / "root", out).returncode == 0
    first = snapshot(out)
    result = run_generator(case / "root", out)
    assert result.returncode == 0
    assert "already exists" in result.stderr
    assert snapshot(out) == first


def test_creates_missing_output_dir(tmp_path: Path) -> None:
    out = tmp_path / "not" / "there"
    assert run_generator(CASES_DIR / "01-initrd-default/root", out).returncode == 0
    assert snapshot(out) == expected_tree(CASES_DIR / "01-initrd-default")


def write_root(root: Path, cmdline: str = "", record: Optional[str] = None, initrd: bool = False) -> Path:
    (root / "proc/sys/kernel/random").mkdir(parents=True)
    (root / "proc/sys/kernel/random/boot_id").write_text("2f0c8f3d-6b1e-4a57-9c3e-0d4f5a6b7c8d\n")
    (root / "proc/cmdline").write_text(cmdline + "\n")
    if initrd:
        (root / "etc").mkdir()
        (root / "etc/initrd-release").write_text("")
    if record is not None:
        (root / "run/sysextpy").mkdir(parents=True)
        (root / "run/sysextpy/state.json").write_text(record)
    return root


def merged_record(**changes: Any) -> str:
    record: dict[str, Any] = {
        "schema": 2,
        "bootId": BOOT_ID,
        "phase": "merged",
        "classes": {
            "sysext": {"unreachable": [], "hierarchies": {"/usr": {"result": "merged"}}},
            "confext": {"unreachable": [], "hierarchies": {"/etc": {"result": "unchanged"}}},
        },
    }
    record.update(changes)
    return json.dumps(record)


HANDOFF = "sysextpy.service.d/50-handoff.conf"


@pytest.mark.parametrize(
    ("env", "cmdline_file", "wants"),
    [
        # $SYSTEMD_PROC_CMDLINE replaces proc/cmdline entirely.
        ({"SYSTEMD_PROC_CMDLINE": "quiet"}, "sysextpy=0", True),
        ({"SYSTEMD_PROC_CMDLINE": "sysextpy=0"}, "quiet", False),
        # $SYSTEMD_IN_INITRD beats etc/initrd-release, both ways; an invalid value falls back.
        ({"SYSTEMD_IN_INITRD": "0", "SYSTEMD_PROC_CMDLINE": "rd.sysextpy=0"}, "", True),
        ({"SYSTEMD_IN_INITRD": "yes", "SYSTEMD_PROC_CMDLINE": "rd.sysextpy=0"}, "", False),
        ({"SYSTEMD_IN_INITRD": "maybe", "SYSTEMD_PROC_CMDLINE": "rd.sysextpy=0"}, "", True),
    ],
)
def test_environment_overrides(env: dict[str, str], cmdline_file: str, wants: bool, tmp_path: Path) -> None:
    root = write_root(tmp_path / "root", cmdline_file, merged_record())
    out = tmp_path / "out"
    assert run_generator(root, out, env=env).returncode == 0
    tree = snapshot(out)
    pulled_in = "sysinit.target.wants/sysextpy.service" in tree or (
        "initrd.target.wants/sysextpy-sysroot.service" in tree
    )
    assert pulled_in == wants, tree


def test_state_path_override(tmp_path: Path) -> None:
    root = write_root(tmp_path / "root", record="{broken")
    (root / "srv").mkdir()
    (root / "srv/record.json").write_text(merged_record())
    out = tmp_path / "out"
    assert run_generator(root, out, env={"SYSEXTPY_STATE": "/srv/record.json"}).returncode == 0
    assert HANDOFF not in snapshot(out)
    out2 = tmp_path / "out2"
    assert run_generator(root, out2).returncode == 0
    assert "Environment=SYSEXTPY_FORCE_REFRESH=1" in snapshot(out2)[HANDOFF]


@pytest.mark.parametrize("kind", ["directory", "symlink", "too-large"])
def test_unusable_record_file_forces_refresh(kind: str, tmp_path: Path) -> None:
    root = write_root(tmp_path / "root")
    state = root / "run/sysextpy/state.json"
    state.parent.mkdir(parents=True)
    if kind == "directory":
        state.mkdir()
    elif kind == "symlink":
        # A link is not followed even when it points at a good record.
        (root / "run/sysextpy/real.json").write_text(merged_record())
        state.symlink_to("real.json")
    else:
        state.write_text(merged_record(padding="x" * handoff.MAX_RECORD_BYTES))
    out = tmp_path / "out"
    result = run_generator(root, out)
    assert result.returncode == 0
    text = snapshot(out)[HANDOFF]
    assert "unreadable" in text and "Environment=SYSEXTPY_FORCE_REFRESH=1" in text


def test_no_boot_id_means_no_trust(tmp_path: Path) -> None:
    root = write_root(tmp_path / "root", record=merged_record())
    (root / "proc/sys/kernel/random/boot_id").unlink()
    out = tmp_path / "out"
    assert run_generator(root, out).returncode == 0
    assert "the current boot id is unknown" in snapshot(out)[HANDOFF]


def test_debug_log_level_explains_decision(tmp_path: Path) -> None:
    root = write_root(tmp_path / "root", "root=/dev/vda", merged_record(), initrd=True)
    quiet = run_generator(root, tmp_path / "a")
    loud = run_generator(root, tmp_path / "b", env={"SYSTEMD_LOG_LEVEL": "debug"})
    assert quiet.stderr == ""
    assert "initrd: pulling in sysextpy-sysroot.service for sysext, confext" in loud.stderr


def imported_modules(*args: str, env: Optional[Mapping[str, str]] = None) -> set[str]:
    result = subprocess.run(
        ["/usr/bin/python3", "-IS", "-X", "importtime", *args],
        env=env or {},
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    return {line.split("|")[-1].strip() for line in lines if line.startswith("import time:")}


def test_start_up_imports_stay_small(tmp_path: Path) -> None:
    """The generator runs on every boot before any unit: beyond what `os` needs it imports only
    itself, the record's parser and the C parts of json and sha256; never the merger, json's
    regular-expression machinery, typing or dataclasses (each costs milliseconds)."""
    # What the interpreter and `os` load anyway, whatever this Python's version.
    baseline = imported_modules("-c", "import os")
    assert "os" in baseline  # the trace works
    allowed = {"__future__", "generator", "handoff", "fstab", "jsonlite", "_json", "_sha256", "_sha2"}
    for root in (
        write_root(tmp_path / "initrd", "quiet", initrd=True),
        write_root(tmp_path / "host", "quiet", merged_record()),
        write_root(tmp_path / "failed", "quiet", merged_record(phase="failed")),
    ):
        imported = imported_modules(
            os.fspath(GENERATOR), os.fspath(root / "out"), env={"SYSEXTPY_ROOT": os.fspath(root)}
        )
        assert imported - baseline <= allowed, sorted(imported - baseline - allowed)
        forbidden = {"sysextpy", "json", "re", "enum", "typing", "dataclasses", "argparse", "pathlib"}
        assert not imported & forbidden, sorted(imported & forbidden)
        assert (root / "out").exists()


def limit_file_size() -> None:
    resource.setrlimit(resource.RLIMIT_FSIZE, (64, 64))  # Python ignores SIGXFSZ: writes fail with EFBIG


def test_failed_write_leaves_no_partial_file(tmp_path: Path) -> None:
    """A drop-in that cannot be written whole (here: the file size limit cuts the first write short
    and refuses the next) is removed again: systemd would take a partial one as valid."""
    case = CASES_DIR / "23-host-failed-unreachable"
    expected = expected_tree(case)
    assert len(expected[HANDOFF]) > 64
    out = tmp_path / "out"
    result = subprocess.run(
        [os.fspath(GENERATOR), os.fspath(out)],
        env={"SYSEXTPY_ROOT": os.fspath(case / "root")},
        preexec_fn=limit_file_size,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0
    assert f"cannot write {out / HANDOFF}: File too large" in result.stderr
    assert snapshot(out) == {k: v for k, v in expected.items() if k != HANDOFF}


# ---------------------------------------------------------------------------------------------
# The pure parts


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("", []),
        ("  a  b\tc\n", ["a", "b", "c"]),
        ('foo="a b" bar', ["foo=a b", "bar"]),
        ("x='1 2'y z", ["x=1 2y", "z"]),
        ('""', [""]),
        ('unterminated="a b', ["unterminated=a b"]),
    ],
)
def test_split_cmdline(text: str, words: list[str]) -> None:
    assert gen.split_cmdline(text) == words


@pytest.mark.parametrize(
    ("cmdline", "in_initrd", "value", "warned"),
    [
        ("", True, None, False),
        ("sysextpy=0", True, False, False),
        ("sysextpy=0", False, False, False),
        ("rd.sysextpy=0", True, False, False),
        ("rd.sysextpy=0", False, None, False),  # rd. forms are for the initrd only
        ("sysextpy", True, True, False),  # a bare switch is true
        ("rd.sysextpy=0 sysextpy=yes", True, True, False),  # the last one wins
        ("sysextpy=no rd.sysextpy", True, True, False),
        ("sysextpy=0 sysextpy=maybe", True, False, True),  # an invalid value is skipped
        ("sysextpy_x=0 xsysextpy=0 sysextpy.x=0", True, None, False),
    ],
)
def test_find_switch(cmdline: str, in_initrd: bool, value: Optional[bool], warned: bool) -> None:
    warnings: list[str] = []
    found = gen.find_switch(gen.split_cmdline(cmdline), "sysextpy", in_initrd, warnings)
    assert (None if found is None else found.value) == value
    assert bool(warnings) == warned


def test_switch_keys_treat_dash_and_underscore_alike() -> None:
    warnings: list[str] = []
    found = gen.find_switch(["rd.systemd.conf-ext=0"], "systemd.conf_ext", True, warnings)
    assert found is not None and found.value is False


@pytest.mark.parametrize(
    ("cmdline", "in_initrd", "enabled", "classes"),
    [
        ("", False, True, ("sysext", "confext")),
        ("systemd.sysext=0", False, True, ("confext",)),
        ("rd.systemd.sysext=0", False, True, ("sysext", "confext")),
        ("rd.systemd.sysext=0", True, True, ("confext",)),
        ("systemd.confext=off systemd.sysext=1", True, True, ("sysext",)),
        ("systemd.confext=0 systemd.sysext=0", True, True, ()),
        ("sysextpy=0 systemd.confext=1", True, False, ()),
    ],
)
def test_read_switches(cmdline: str, in_initrd: bool, enabled: bool, classes: tuple[str, ...]) -> None:
    switches = gen.read_switches(cmdline, in_initrd, [])
    assert (switches.enabled, switches.classes) == (enabled, classes)


CLASSES = ("sysext", "confext")


@pytest.mark.parametrize(
    ("text", "force", "mounts"),
    [
        (None, "", ()),
        ("", "corrupt record (Expecting value", ()),
        ("null", "corrupt record (the record is not an object)", ()),
        ("[" * 100_000, "corrupt record (nested too deeply)", ()),
        (merged_record(), "", ()),
        (merged_record(schema=1), "record schema 1, expected 2", ()),
        (merged_record(schema=3), "record schema 3, expected 2", ()),
        (merged_record(bootId="f" * 32), "record is from another boot", ()),
        (merged_record(phase="merging"), "record says phase 'merging'", ()),
        (merged_record(phase="failed"), "record says phase 'failed'", ()),
        (merged_record(phase=None), "corrupt record (phase is None", ()),
        (merged_record(phase="done"), "corrupt record (phase is 'done'", ()),
        (merged_record(classes=[]), "corrupt record (classes is not an object)", ()),
        (merged_record(classes={"sysext": {}}), "record has no confext entry", ()),
        (
            merged_record(classes={"sysext": {"unreachable": "/var"}, "confext": {}}),
            "corrupt record (classes.sysext.unreachable is not a list)",
            (),
        ),
        (
            merged_record(classes={"sysext": {"hierarchies": {"/usr": "failed"}}, "confext": {}}),
            "corrupt record (classes.sysext.hierarchies./usr is not an object)",
            (),
        ),
        (
            merged_record(
                classes={"sysext": {"hierarchies": {"/usr": {"result": "exploded"}}}, "confext": {}}
            ),
            "corrupt record (classes.sysext.hierarchies./usr.result is 'exploded'",
            (),
        ),
        (
            merged_record(
                phase="failed",
                classes={
                    "sysext": {"unreachable": ["/var/lib/extensions", "/var/lib//extensions/"]},
                    "confext": {
                        "unreachable": ["/var/lib/confexts", "//var/lib/confexts", "relative"],
                        "hierarchies": {"/etc": {"result": "failed"}},
                    },
                },
            ),
            "record says phase 'failed'; confext failed on /etc",
            ("/var/lib/confexts", "/var/lib/extensions", "relative"),
        ),
    ],
)
def test_judge_record(text: Optional[str], force: str, mounts: tuple[str, ...]) -> None:
    handoff_ = gen.judge_record(text, BOOT_ID, CLASSES)
    if force:
        assert handoff_.force_reason.startswith(force)
    else:
        assert handoff_.force_reason == ""
    assert handoff_.requires_mounts == mounts


def test_judge_record_only_looks_at_enabled_classes() -> None:
    record = merged_record(classes={"sysext": {"hierarchies": {"/usr": {"result": "failed"}}}})
    assert gen.judge_record(record, BOOT_ID, ("confext",)).force_reason == "record has no confext entry"
    assert gen.judge_record(record, BOOT_ID, ("sysext",)).force_reason == "sysext failed on /usr"


@pytest.mark.parametrize("boot", ["", "f" * 32])
def test_unreachable_dirs_only_from_a_record_of_this_boot(boot: str) -> None:
    record = merged_record(classes={"sysext": {"unreachable": ["/var/lib/extensions"]}, "confext": {}})
    handoff_ = gen.judge_record(record, boot, CLASSES)
    assert handoff_.requires_mounts == () and handoff_.force_reason


# ---------------------------------------------------------------------------------------------
# From record bytes to written files: whatever the record holds, the generator writes a complete
# drop-in that systemd reads as written, or none, and never raises.


class Recorder(gen.Log):
    """The generator's log to stderr, and the level of each message."""

    def __init__(self) -> None:
        super().__init__(to_kmsg=False, max_level=gen.LOG_DEBUG)
        self.levels: list[int] = []

    def __call__(self, level: int, message: str) -> None:
        self.levels.append(level)
        super().__call__(level, message)


def generate(record: bytes, cmdline: str) -> tuple[dict[str, bytes], Recorder, str]:
    """Run the generator's decision and writing in this process (exceptions propagate) on a fake
    root of the real root with `record`: every file it wrote, as bytes, and its log."""
    log = Recorder()
    files: dict[str, bytes] = {}
    with tempfile.TemporaryDirectory(prefix="sysextpy-gen-") as tmp, redirect_stderr(io.StringIO()) as err:
        root = write_root(Path(tmp, "root"), cmdline)
        (root / "run/sysextpy").mkdir(parents=True)
        (root / "run/sysextpy/state.json").write_bytes(record)
        out = Path(tmp, "out")
        outputs = gen.decide(os.fspath(root), {"SYSTEMD_IN_INITRD": "0"}, log)
        gen.write_outputs(os.fspath(out), outputs, log)
        for path in out.rglob("*"):
            if path.is_file() and not path.is_symlink():
                files[os.fspath(path.relative_to(out))] = path.read_bytes()
    return files, log, err.getvalue()


def read_unit_file(data: bytes) -> list[tuple[str, str, str]]:
    """(section, key, value) of every setting, read as systemd.syntax(7) says, refusing anything
    systemd would refuse or read differently than it is written."""
    assert data, "an empty file"
    assert data.endswith(b"\n"), "a partial last line"
    text = data.decode("utf-8")  # systemd refuses a unit file that is not UTF-8
    found = []
    section = ""
    for line in text.split("\n")[:-1]:
        assert len(line.encode()) < 1 << 14, "a line that grows with the record"  # systemd: 1 MiB
        assert "\r" not in line and "\0" not in line, "a line break systemd sees"
        assert not line.endswith("\\"), "a line that would continue onto the next"
        stripped = line.strip()
        if not stripped or stripped[0] in "#;":
            continue
        if stripped.startswith("["):
            assert stripped.endswith("]"), line
            section = stripped[1:-1]
            continue
        key, eq, value = stripped.partition("=")
        assert eq and section, line
        found.append((section, key.strip(), value.strip()))
    return found


def mounts_waited_for(settings: list[tuple[str, str, str]]) -> set[str]:
    paths = set()
    for section, key, value in settings:
        if key != "RequiresMountsFor":
            continue
        assert section == "Unit"
        for word in shlex.split(value):  # systemd unquotes the words as a shell does
            assert "%" not in word.replace("%%", ""), "a unit specifier"
            paths.add(word.replace("%%", "%"))
    return paths


def normalised(path: str) -> str:
    return "/" + posixpath.normpath(path).lstrip("/") if path.startswith("/") else path


def distrust(text: str, classes: tuple[str, ...]) -> tuple[str, set[str]]:
    """Independently of the generator: why a record cannot vouch for the merge by the plain rules
    of the schema ("" when it can), and the unreachable directories its enabled classes list."""
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):
        return "not JSON", set()
    if not isinstance(data, dict) or data.get("schema") != 2 or data.get("bootId") != BOOT_ID:
        return "not a schema 2 record of this boot", set()
    why = "" if data.get("phase") == "merged" else "phase"
    entries = data.get("classes")
    if not isinstance(entries, dict):
        return "classes", set()
    listed = set()
    for image_class in classes:
        entry = entries.get(image_class)
        if not isinstance(entry, dict):
            why = why or f"no {image_class}"
            continue
        unreachable = entry.get("unreachable", [])
        if isinstance(unreachable, list):
            listed |= {normalised(p) for p in unreachable if isinstance(p, str)}
        else:
            why = why or "unreachable"
        hierarchies = entry.get("hierarchies", {})
        if not isinstance(hierarchies, dict) or any(
            not isinstance(r, dict) or r.get("result") == "failed" for r in hierarchies.values()
        ):
            why = why or "a failed hierarchy"
    return why, listed


FORCE = ("Service", "Environment", "SYSEXTPY_FORCE_REFRESH=1")
CMDLINE_CLASSES = {"": CLASSES, "systemd.sysext=0": ("confext",), "systemd.confext=0": ("sysext",)}


def check_generated(record: bytes, cmdline: str) -> None:
    files, log, err = generate(record, cmdline)
    assert all(level > gen.LOG_ERR for level in log.levels), err
    assert err.count("\n") == len(log.levels), "a message that spans lines"
    assert all(len(line) < 2000 for line in err.splitlines())
    assert all(data for data in files.values()), "an empty file"
    settings = read_unit_file(files[HANDOFF]) if HANDOFF in files else []
    assert set(files) <= {HANDOFF, "sysextpy.service.d/50-class.conf"}
    assert all(s == FORCE or s[:2] == ("Unit", "RequiresMountsFor") for s in settings), settings
    assert HANDOFF not in files or settings, "a drop-in that says nothing"
    why, listed = distrust(record.decode("utf-8", "surrogateescape"), CMDLINE_CLASSES[cmdline])
    waited = mounts_waited_for(settings)
    assert waited <= listed, "a directory the record does not name"
    if FORCE not in settings:
        # The record vouches for the merge: it must, and no directory may have been left out.
        assert why == "", why
        assert waited == listed


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)
paths = st.one_of(
    st.sampled_from(
        [
            "/var/lib/extensions",
            "/var/lib//extensions/",
            "//srv/x",
            "/srv/a b",
            "/srv/100%",
            "/srv/%n",
            "/",
            "",
            "relative",
            "/a\nb",
            '/a"b',
            "/a\\",
            "/x\udc80",
            "/x\u2028y",
            "/" + "n" * 256,
            "/d" * 2100,
        ]
    ),
    st.text(max_size=12).map(lambda t: "/" + t),
    st.binary(max_size=12).map(lambda b: "/" + b.decode("utf-8", "surrogateescape")),
    st.text(max_size=12),
)
hierarchy_results = st.fixed_dictionaries(
    {"result": st.sampled_from([*handoff.RESULTS, "bogus"])},
    optional={"mountId": st.none() | st.integers(), "dev": st.none() | st.text(max_size=5)},
)
class_entries = st.fixed_dictionaries(
    {"unreachable": st.lists(paths, max_size=4)},
    optional={
        "hierarchies": st.dictionaries(
            st.sampled_from(["/usr", "/etc"]) | st.text(max_size=8), hierarchy_results, max_size=3
        ),
        "fingerprint": st.none() | st.text(max_size=4),
    },
)
# Mostly records of this schema and boot, so that what lies deeper is reached.
records = st.fixed_dictionaries(
    {
        "schema": st.sampled_from([2, 2, 2, 2, 2, 2, 2.0, 1, 3, "2"]),
        "bootId": st.sampled_from([BOOT_ID, BOOT_ID, BOOT_ID, BOOT_ID, BOOT_ID, "f" * 32]),
        "phase": st.sampled_from(["merged", "merged", "merged", "merged", "merging", "failed", "bogus"]),
        "classes": st.fixed_dictionaries({"sysext": class_entries, "confext": class_entries})
        | st.fixed_dictionaries({}, optional={"sysext": class_entries, "confext": class_entries}),
    },
    optional={
        "messages": st.lists(st.tuples(st.integers(0, 7), st.text(max_size=8)), max_size=2),
        "confirm": st.none() | json_values,
    },
)


def one_field_of_any_type(record: dict[str, Any]) -> Any:
    return st.tuples(st.sampled_from(sorted(record)), json_values).map(lambda kv: {**record, kv[0]: kv[1]})


def encode_record(record: object, how: str) -> bytes:
    if how == "ascii":  # lone surrogates as \udcXX escapes
        return json.dumps(record).encode()
    text = json.dumps(record, ensure_ascii=False)
    try:
        return text.encode("utf-8", how)  # surrogateescape: the byte each one stands for
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogatepass")  # bytes that are not UTF-8 either


record_bytes = st.builds(
    encode_record,
    st.one_of(records, records, records, records.flatmap(one_field_of_any_type), json_values),
    st.sampled_from(["ascii", "surrogateescape", "surrogatepass"]),
)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.one_of(
        record_bytes,
        record_bytes,
        record_bytes,
        record_bytes.flatmap(lambda b: st.integers(0, len(b)).map(lambda n: b[:n])),  # cut short
        st.binary(max_size=64),
    ),
    st.sampled_from(sorted(CMDLINE_CLASSES)),
)
def test_any_record_gives_a_complete_dropin_or_none(record: bytes, cmdline: str) -> None:
    check_generated(record, cmdline)


@settings(max_examples=300, deadline=None)
@given(st.one_of(json_values.map(json.dumps), st.text(max_size=40)))
def test_load_json_agrees_with_json_loads(text: str) -> None:
    """The record's parser reads JSON as the json package does, without importing it."""
    try:
        expected: object = json.loads(text)
    except json.JSONDecodeError as theirs:
        with pytest.raises(ValueError) as ours:
            load_json(text)
        # Where it can tell, the same message and position; elsewhere no position (the scanner
        # builds those errors from json.decoder, which the package does not import).
        if ours.value.pos is not None:  # type: ignore[attr-defined]
            assert str(ours.value) == str(theirs)
            assert (ours.value.msg, ours.value.lineno) == (theirs.msg, theirs.lineno)  # type: ignore[attr-defined]
        else:
            assert theirs.msg not in ("Expecting value", "Extra data")
        return
    assert repr(load_json(text)) == repr(expected)  # repr: NaN equals itself


def big_record(**changes: Any) -> bytes:
    return merged_record(**changes).encode()


@pytest.mark.parametrize(
    "record",
    [
        pytest.param(b"[" * 1_000_000, id="nested"),
        pytest.param(b"\xff" * 1000, id="not-utf8"),
        pytest.param(
            big_record(classes={"sysext": {"hierarchies": {"x" * 2_000_000: {"result": "failed"}}}}),
            id="long-hierarchy-name",
        ),
        pytest.param(big_record(phase="x" * 2_000_000), id="long-phase"),
        pytest.param(
            big_record(
                classes={"sysext": {"unreachable": [f"/srv/{i:04}/" + "d" * 250 for i in range(5000)]}}
            ),
            id="many-unreachable",
        ),
        pytest.param(
            big_record(classes={"sysext": {"unreachable": ["/" + "d/" * 5000]}, "confext": {}}),
            id="long-path",
        ),
    ],
)
def test_records_larger_than_a_unit_file_line(record: bytes) -> None:
    check_generated(record, "")


@pytest.mark.parametrize(
    ("path", "word", "problem"),
    [
        ("/var/lib/extensions", "/var/lib/extensions", ""),
        ("/", "/", ""),
        ("/srv/my images", '"/srv/my images"', ""),
        ("/srv/100%", "/srv/100%%", ""),
        ("/srv/é", "/srv/é", ""),
        ("relative", None, "not an absolute path"),
        ("", None, "not an absolute path"),
        ("/a\udcffb", None, "not valid UTF-8"),
        ("/a\nb", None, "control or unprintable characters"),
        ("/a\tb", None, "control or unprintable characters"),
        ("/a\x85b", None, "control or unprintable characters"),
        ("/a\u2028b", None, "control or unprintable characters"),
        ('/a"b', None, "quotes or backslashes"),
        ("/a\\b", None, "quotes or backslashes"),
        ("/a'b", None, "quotes or backslashes"),
        ("/" + "n" * 255, "/" + "n" * 255, ""),
        ("/" + "n" * 256, None, "too long for a path"),
        ("/" + "é" * 128, None, "too long for a path"),  # 256 bytes
        ("/d" * 2047, "/d" * 2047, ""),
        ("/d" * 2048, None, "too long for a path"),
    ],
)
def test_unit_path_word(path: str, word: Optional[str], problem: str) -> None:
    assert gen.unit_path_word(path) == word
    assert gen.unit_path_problem(path) == problem


def test_comment_text_cannot_start_a_setting() -> None:
    assert gen.comment_text("a\n[Service]\nExecStart=x") == "a?[Service]?ExecStart=x"
    assert gen.comment_text("lone \udc80 surrogate") == "lone ? surrogate"
    assert len(gen.comment_text("x" * 10_000)) < 2000


def test_log_messages_are_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    gen.Log(to_kmsg=False, max_level=gen.LOG_DEBUG)(gen.LOG_ERR, "a\nb\udc80" + "c" * 10_000)
    err = capsys.readouterr().err
    assert err.startswith("sysextpy-generator: a?b?c") and err.count("\n") == 1 and len(err) < 2000


def test_internal_error_falls_back_to_running_the_service(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(root: str, env: Mapping[str, str], log: gen.Log) -> list[gen.Output]:
        raise KeyError("bug")

    monkeypatch.setattr(gen, "decide", broken)
    root = write_root(tmp_path / "root", "sysextpy=0", merged_record())
    out = tmp_path / "out"
    assert gen.run([os.fspath(out)], {"SYSEXTPY_ROOT": os.fspath(root)}) == 0
    tree = snapshot(out)
    assert tree["sysinit.target.wants/sysextpy.service"] == "link -> ../sysextpy.service"
    assert "sysextpy-generator could not judge it" in tree[HANDOFF]


# ---------------------------------------------------------------------------------------------
# Extensions on automount points


def test_search_dirs_are_the_package_s() -> None:
    """The generator cannot import the package: its copy of the real root's search directories must
    stay what discovery searches."""
    from sysextpy.model import ALL_CLASSES

    assert gen.SEARCH_DIRS == {c.value: c.search_dirs(False) for c in ALL_CLASSES}


@pytest.mark.parametrize(
    "path",
    [
        "/",
        "/efi",
        "/boot/",
        "/srv/ext",
        "/srv//my-ext/./x",
        "/srv/a b",
        "/.hidden/x.y",
        "/srv/é",
        "/a:b_c\\d%",
    ],
)
def test_unit_name_from_path_is_systemd_escape(path: str) -> None:
    require_tools("systemd-escape")
    upstream = subprocess.run(
        ["systemd-escape", "--path", "--suffix=automount", path], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert gen.unit_name_from_path(path, "automount") == upstream


@pytest.mark.parametrize(
    ("text", "version"),
    [
        ("libsystemd-shared-256.so", 256),
        ("libsystemd-shared-257.9-1.fc42.so", 257),
        ("libsystemd-shared-255.4-1ubuntu8.so", 255),
        ("7f3c r-xp 00000000 fd:00 42 /usr/lib/x86_64-linux-gnu/systemd/libsystemd-shared-252.so\n", 252),
        ("/usr/lib/libsystemd-core-258.so\n/usr/lib/libsystemd-shared-258.so (deleted)\n", 258),
        ("libsystemd-shared-.so libsystemd-shared-x.so", None),
        ("libsystemd-shared-253x.so libsystemd-shared-254.so", 254),
        ("libsystemd.so.0", None),
        ("", None),
    ],
)
def test_shared_library_version(text: str, version: Optional[int]) -> None:
    assert gen.shared_library_version(text) == version


def automount_root(root: Path, fstab: str, links: dict[str, str], cmdline: str = "") -> Path:
    write_root(root, cmdline, merged_record())
    (root / "etc").mkdir()
    (root / "etc/fstab").write_text(fstab)
    for entry, target in links.items():
        (root / entry.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
        (root / entry.lstrip("/")).symlink_to(target)
    return root


AUTOMOUNT = "sysextpy.service.d/50-automount.conf"
SRV_EXT = "LABEL=ext /srv/ext ext4 x-systemd.automount,x-systemd.idle-timeout=2 0 2\n"


def automount_settings(root: Path, tmp_path: Path) -> list[tuple[str, str, str]]:
    out = tmp_path / "out"
    result = run_generator(root, out)
    assert result.returncode == 0 and "internal error" not in result.stderr, result.stderr
    tree = snapshot(out)
    return read_unit_file(tree[AUTOMOUNT].encode()) if AUTOMOUNT in tree else []


@pytest.mark.parametrize(
    ("maps", "library", "wants"),
    [
        # The running manager's library decides, over the one on disk (an upgrade not re-executed).
        (
            "/usr/lib/systemd/libsystemd-shared-255.so\n",
            "usr/lib/systemd/libsystemd-shared-256.so",
            False,
        ),
        ("/usr/lib/systemd/libsystemd-shared-256.so\n", "usr/lib/systemd/libsystemd-shared-255.so", True),
        (None, "usr/lib64/systemd/libsystemd-shared-256.1-1.fc40.so", True),
        (None, "usr/lib/systemd/libsystemd-shared-255.so", False),
        # Unknown: what every version reads.
        (None, None, False),
        ("no library here\n", None, False),
    ],
)
def test_systemd_version_picks_the_mount_setting(
    maps: Optional[str], library: Optional[str], wants: bool, tmp_path: Path
) -> None:
    """WantsMountsFor= from systemd 256 on; before (and when the version is unknown) the automount
    point's mount unit is wanted and waited for: never RequiresMountsFor=, whose stop propagates."""
    root = automount_root(tmp_path / "root", SRV_EXT, {"/etc/extensions/a.raw": "/srv/ext/a.raw"})
    if maps is not None:
        (root / "proc/1").mkdir(parents=True)
        (root / "proc/1/maps").write_text(maps)
    if library is not None:
        (root / library).parent.mkdir(parents=True)
        (root / library).write_text("")
    settings = automount_settings(root, tmp_path)
    after = ("Unit", "After", "srv-ext.automount")
    if wants:
        assert settings == [after, ("Unit", "WantsMountsFor", "/srv/ext")]
    else:
        assert settings == [after, ("Unit", "Wants", "srv-ext.mount"), ("Unit", "After", "srv-ext.mount")]


@pytest.mark.parametrize(
    ("fstab", "links", "cmdline", "efivar", "expected"),
    [
        # No automount point: nothing, whatever the links.
        (
            "LABEL=ext /srv/ext ext4 defaults 0 2\n",
            {"/etc/extensions/a.raw": "/srv/ext/a.raw"},
            "",
            False,
            [],
        ),
        # A search directory on the automount itself, and one linked into a deeper directory.
        (
            "LABEL=v /var/lib/confexts ext4 x-systemd.automount 0 2\n" + SRV_EXT,
            {"/etc/extensions/a.raw": "/srv/ext/deep/a.raw", "/run/extensions/b": "../../srv/ext/b"},
            "",
            False,
            [
                ("srv-ext", "/srv/ext"),
                ("srv-ext", "/srv/ext/deep"),
                ("var-lib-confexts", "/var/lib/confexts"),
            ],
        ),
        # A search directory that is itself a link onto the automount.
        (
            SRV_EXT,
            {"/var/lib/extensions": "../../srv/ext/sysext"},
            "",
            False,
            [("srv-ext", "/srv/ext/sysext")],
        ),
        # Links elsewhere, or to a path that only starts like the mount point.
        (SRV_EXT, {"/etc/extensions/a.raw": "/srv/extra/a.raw"}, "", False, []),
        # The ESP: only when the boot loader named the disk and gpt-auto is not switched off, and
        # never for a mount point fstab names.
        ("", {"/etc/extensions/a.raw": "/efi/a.raw"}, "", True, [("efi", "/efi")]),
        ("", {"/etc/extensions/a.raw": "/efi/a.raw"}, "", False, []),
        ("", {"/etc/extensions/a.raw": "/efi/a.raw"}, "systemd.gpt_auto=0", True, []),
        ("", {"/etc/extensions/a.raw": "/efi/a.raw"}, "rd.systemd.gpt_auto=0", True, [("efi", "/efi")]),
        ("LABEL=esp /efi vfat umask=077 0 2\n", {"/etc/extensions/a.raw": "/efi/a.raw"}, "", True, []),
        (
            "LABEL=esp /boot vfat x-systemd.automount 0 2\n",
            {"/etc/extensions/a": "/boot/a"},
            "",
            False,
            [("boot", "/boot")],
        ),
        # Only the enabled classes' directories count.
        (SRV_EXT, {"/run/confexts/c": "/srv/ext/c"}, "systemd.confext=0", False, []),
    ],
)
def test_automount_sources(
    fstab: str,
    links: dict[str, str],
    cmdline: str,
    efivar: bool,
    expected: list[tuple[str, str]],
    tmp_path: Path,
) -> None:
    root = automount_root(tmp_path / "root", fstab, links, cmdline)
    (root / "usr/lib/systemd").mkdir(parents=True)
    (root / "usr/lib/systemd/libsystemd-shared-256.so").write_text("")
    if efivar:
        var = root / gen.LOADER_DEVICE_VARIABLE.lstrip("/")
        var.parent.mkdir(parents=True)
        var.write_text("")
    settings = automount_settings(root, tmp_path)
    after = {v for _, k, v in settings if k == "After"}
    wants = {v for _, k, v in settings if k == "WantsMountsFor"}
    assert after == {f"{unit}.automount" for unit, _ in expected}
    assert wants == {source for _, source in expected}
    assert all(k in ("After", "WantsMountsFor") for _, k, _ in settings), settings


def test_unreachable_directory_on_an_automount_is_not_required(tmp_path: Path) -> None:
    """The record's unreachable directory on an automount point is waited for as any source on it,
    and no longer required by the handoff drop-in; the others stay required."""
    root = write_root(
        tmp_path / "root",
        record=merged_record(
            classes={
                "sysext": {"unreachable": ["/var/lib/extensions"], "hierarchies": {}},
                "confext": {"unreachable": ["/var/lib/confexts"], "hierarchies": {}},
            }
        ),
    )
    (root / "etc").mkdir()
    (root / "etc/fstab").write_text("LABEL=c /var/lib/confexts ext4 x-systemd.automount 0 2\n")
    (root / "usr/lib/systemd").mkdir(parents=True)
    (root / "usr/lib/systemd/libsystemd-shared-256.so").write_text("")
    out = tmp_path / "out"
    assert run_generator(root, out).returncode == 0
    tree = snapshot(out)
    assert read_unit_file(tree[HANDOFF].encode()) == [("Unit", "RequiresMountsFor", "/var/lib/extensions")]
    assert read_unit_file(tree[AUTOMOUNT].encode()) == [
        ("Unit", "After", "var-lib-confexts.automount"),
        ("Unit", "WantsMountsFor", "/var/lib/confexts"),
    ]
