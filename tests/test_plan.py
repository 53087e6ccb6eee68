# SPDX-License-Identifier: LGPL-2.1-or-later
"""`plan`, `list` and `status` on the built-in example root: every verdict, every reason, exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import pytest
from conftest import REPO_ROOT, RunSysextpy, check_no_leftovers, have_tools
from sample_root import build_sample_root, make_sysext

from sysextpy.arch import native_architecture

IS_ROOT = os.geteuid() == 0
HAVE_SQUASHFS = have_tools("mksquashfs")  # the example's raw image
# The example carries an arm64-only extension and an arm64-only editor version.
ON_ARM64 = native_architecture() == "arm64"

# our keys beside upstream's (hierarchy, extensions, since) for a hierarchy nothing is merged into
UNMERGED = {"mutable": None, "paths": {}, "rejected": []}


@dataclass(frozen=True)
class Expect:
    cls: str
    name: Optional[str]
    verdict: str
    entry: str  # inside the root
    path: Optional[str]  # inside the root; None for entries that did not become images
    reason: str  # a fragment of the reason
    version: Optional[str] = None


EXT = "/var/lib/extensions"
MATCH = "ID=debian VERSION_ID=12 matches host"

EXPECTED: list[Expect] = [
    Expect("sysext", "tools", "merge", f"{EXT}/tools", f"{EXT}/tools", MATCH),
    Expect("sysext", "anyext", "merge", f"{EXT}/anyext", f"{EXT}/anyext", "ID=_any"),
    Expect(
        "sysext",
        "fedora-only",
        "ignored",
        f"{EXT}/fedora-only",
        f"{EXT}/fedora-only",
        "ID=fedora but host ID=debian",
    ),
    Expect(
        "sysext",
        "old-debian",
        "ignored",
        f"{EXT}/old-debian",
        f"{EXT}/old-debian",
        "VERSION_ID=11 but host VERSION_ID=12",
    ),
    Expect(
        "sysext",
        "arm-only",
        "merge" if ON_ARM64 else "ignored",
        f"{EXT}/arm-only",
        f"{EXT}/arm-only",
        MATCH if ON_ARM64 else f"ARCHITECTURE=arm64 but host is {native_architecture()}",
    ),
    # /etc/extensions beats /var/lib/extensions
    Expect("sysext", "shadowed", "merge", "/etc/extensions/shadowed", "/etc/extensions/shadowed", MATCH),
    Expect(
        "sysext",
        "shadowed",
        "ignored",
        f"{EXT}/shadowed",
        None,
        "shadowed by '{root}/etc/extensions/shadowed'",
    ),
    # an empty directory masks the name
    Expect(
        "sysext",
        "masked",
        "ignored",
        "/etc/extensions/masked",
        "/etc/extensions/masked",
        "empty directory: masks 'masked' in lower-precedence directories",
    ),
    Expect(
        "sysext", "masked", "ignored", f"{EXT}/masked", None, "shadowed by '{root}/etc/extensions/masked'"
    ),
    # .v/ picks 1.2 (2.0 is for arm64 only)
    Expect(
        "sysext",
        "editor",
        "merge",
        f"{EXT}/editor.v",
        f"{EXT}/editor.v/editor_2.0_arm64" if ON_ARM64 else f"{EXT}/editor.v/editor_1.2",
        MATCH,
        version="2.0" if ON_ARM64 else "1.2",
    ),
    # invalid entries
    Expect(
        "sysext",
        None,
        "ignored",
        f"{EXT}/.#tools.lck.raw",
        None,
        "invalid image name '.#tools.lck': name starts with '.#'",
    ),
    Expect("sysext", None, "ignored", f"{EXT}/notes.txt", None, "regular file without the '.raw' suffix"),
    Expect(
        "sysext",
        None,
        "ignored",
        f"{EXT}/gone.raw",
        None,
        "dangling symlink to '/srv/images/gone.raw' (inside the root)",
    ),
    # a link climbing out with '..' is clamped at the root
    Expect("sysext", "linked", "merge", f"{EXT}/linked", "/srv/store/linked", MATCH),
    # added by the fixture: an absolute link, re-rooted
    Expect("sysext", "abslinked", "merge", f"{EXT}/abslinked", "/srv/store/abslinked", MATCH),
    Expect(
        "sysext",
        "misnamed",
        "ignored",
        f"{EXT}/misnamed",
        f"{EXT}/misnamed",
        "extension-release.misnamed missing; found extension-release.misnamed-1.2",
    ),
    Expect(
        "sysext",
        "osimage",
        "rejected",
        f"{EXT}/osimage",
        f"{EXT}/osimage",
        "contains usr/lib/os-release: this is an OS image, not an extension",
    ),
    Expect(
        "sysext",
        "empty",
        "rejected",
        f"{EXT}/empty.raw",
        f"{EXT}/empty.raw",
        "empty.raw' is empty (" if IS_ROOT else "not inspected: that needs root",
    ),
    Expect("confext", "motd", "merge", "/run/confexts/motd", "/run/confexts/motd", MATCH),
    Expect(
        "confext",
        "initrd-only",
        "ignored",
        "/var/lib/confexts/initrd-only",
        "/var/lib/confexts/initrd-only",
        "CONFEXT_SCOPE='initrd' does not include host scope 'system'",
    ),
]
if HAVE_SQUASHFS:
    EXPECTED.append(
        Expect(
            "sysext",
            "squashy",
            "merge" if IS_ROOT else "rejected",
            f"{EXT}/squashy.raw",
            f"{EXT}/squashy.raw",
            MATCH if IS_ROOT else "not inspected: that needs root",
        )
    )
BROKEN = {"osimage", "empty"}


def run(*args: str) -> subprocess.CompletedProcess[str]:
    """Like the sysextpy_cmd fixture, usable from module-scoped fixtures."""
    env = {k: v for k, v in os.environ.items() if k != "SYSTEMD_LOG_LEVEL"}
    return subprocess.run(
        [sys.executable, "-m", "sysextpy", *args],
        cwd=REPO_ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@dataclass
class Sample:
    root: Path
    plan_json: subprocess.CompletedProcess[str]
    plan_text: subprocess.CompletedProcess[str]
    list_json: subprocess.CompletedProcess[str]
    list_text: subprocess.CompletedProcess[str]


def _build(base: Path, broken: bool) -> Path:
    root = build_sample_root(base / "root", broken=broken, raw=HAVE_SQUASHFS)
    make_sysext(root / "srv/store/abslinked", "abslinked", "ID=debian\nVERSION_ID=12\n")
    (root / "var/lib/extensions/abslinked").symlink_to("/srv/store/abslinked")
    return root


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sample]:
    base = tmp_path_factory.mktemp("sample")
    root = _build(base, broken=True)
    yield Sample(
        root=root,
        plan_json=run(f"--root={root}", "plan", "--json=short"),
        plan_text=run("plan", f"--root={root}"),
        list_json=run(f"--root={root}", "--json=short", "list"),
        list_text=run("list", f"--root={root}"),
    )
    if IS_ROOT:
        check_no_leftovers(base)


def _fill(text: str, root: Path) -> str:
    return text.replace("{root}", os.fspath(root))


def _row_key(e: Expect) -> tuple[str, Optional[str], str]:
    return (e.cls, e.name, e.entry)


def _json_rows(sample: Sample) -> dict[tuple[str, Optional[str], str], dict[str, Any]]:
    doc = json.loads(sample.plan_json.stdout)
    rows: dict[tuple[str, Optional[str], str], dict[str, Any]] = {}
    for r in doc["images"]:
        entry = "/" + os.path.relpath(r["entry"], sample.root)
        key = (r["class"], r["name"], entry)
        assert key not in rows, f"duplicate plan row {key}"
        rows[key] = r
    return rows


@pytest.mark.parametrize("e", EXPECTED, ids=[f"{e.cls}-{e.name}-{e.entry}" for e in EXPECTED])
def test_plan_json_verdicts(sample: Sample, e: Expect) -> None:
    row = _json_rows(sample)[_row_key(e)]
    assert row["verdict"] == e.verdict
    assert _fill(e.reason, sample.root) in row["reason"]
    if e.path is None:
        assert row["path"] is None
        assert row["type"] is None
    else:
        assert row["path"] == os.fspath(sample.root) + e.path
        assert row["type"] in ("directory", "raw")
    assert row.get("version") == e.version


def test_plan_json_has_every_row_and_nothing_else(sample: Sample) -> None:
    assert sorted(_json_rows(sample), key=str) == sorted((_row_key(e) for e in EXPECTED), key=str)


def test_plan_json_document(sample: Sample) -> None:
    assert sample.plan_json.returncode == 3, sample.plan_json.stderr
    doc = json.loads(sample.plan_json.stdout)
    assert sample.plan_json.stdout.count("\n") == 1  # short: one line
    assert doc["root"] == os.fspath(sample.root)
    assert doc["scope"] == "system"
    assert "hostError" not in doc
    merged = {(e.cls, e.name) for e in EXPECTED if e.verdict == "merge"}
    classes = {c["class"]: c for c in doc["classes"]}
    assert set(classes) == {"sysext", "confext"}
    assert classes["sysext"]["hierarchies"] == ["/usr", "/opt"]
    assert classes["confext"]["hierarchies"] == ["/etc"]
    assert classes["sysext"]["mutable"] == classes["confext"]["mutable"] == "no"
    for cls, c in classes.items():
        want = sorted(name for k, name in merged if k == cls)
        assert sorted(c["merge"]) == want
        assert c["merge"] == sorted(c["merge"])  # upstream order: ascending by name
    for row in doc["images"]:
        assert {"name", "class", "path", "verdict", "reason"} <= set(row)
        assert row["verdict"] in ("merge", "ignored", "rejected")
        assert row["reason"]


def test_plan_text_table(sample: Sample) -> None:
    result = sample.plan_text
    assert result.returncode == 3, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["CLASS", "NAME", "VERDICT", "PATH", "REASON"]
    table: dict[tuple[str, str, str], str] = {}
    for line in lines[1:]:
        if not line:
            break
        cls, name, verdict, path, reason = line.split(None, 4)
        table[(cls, name, "/" + os.path.relpath(path, sample.root))] = f"{verdict} {reason}"
    assert len(table) == len(EXPECTED)
    for e in EXPECTED:
        shown = table[(e.cls, e.name or "-", e.path or e.entry)]
        assert shown.startswith(e.verdict + " ")
        assert _fill(e.reason, sample.root) in shown
    footer = result.stdout.split("\n\n", 1)[1]
    merged_sysext = sorted(e.name for e in EXPECTED if e.cls == "sysext" and e.verdict == "merge" and e.name)
    assert f"sysext: would merge {', '.join(merged_sysext)} into /usr, /opt" in footer
    assert "confext: would merge motd into /etc" in footer


def test_plan_logs_every_verdict_that_is_not_merge(sample: Sample) -> None:
    stderr = sample.plan_text.stderr
    for e in EXPECTED:
        if e.path is not None and e.verdict != "merge":
            assert f"{e.cls} {e.name}: {e.verdict} (" in stderr


@pytest.mark.parametrize("argv", [["--no-legend"], ["--json=off", "--no-legend"]])
def test_plan_no_legend(sample: Sample, argv: list[str]) -> None:
    result = run(f"--root={sample.root}", "plan", *argv)
    assert result.returncode == 3
    assert not result.stdout.startswith("CLASS")
    assert "would merge" not in result.stdout
    assert len(result.stdout.splitlines()) == len(EXPECTED)


def test_plan_pretty_json_is_the_same_document(sample: Sample) -> None:
    pretty = run(f"--root={sample.root}", "plan", "--json=pretty")
    assert pretty.returncode == 3
    assert pretty.stdout.count("\n") > 10
    assert json.loads(pretty.stdout) == json.loads(sample.plan_json.stdout)


def _listed(sample: Sample) -> list[tuple[str, str, str, str]]:
    """What list must show: every image that won its name, with its type."""
    rows = []
    for e in EXPECTED:
        if e.path is None or e.name is None:
            continue
        kind = "raw" if e.path.endswith(".raw") else "directory"
        rows.append((e.name, kind, os.fspath(sample.root) + e.path, e.cls))
    return sorted(rows)


def test_list_json(sample: Sample) -> None:
    result = sample.list_json
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("\n") == 1
    rows = json.loads(result.stdout)
    assert [(r["name"], r["type"], r["path"], r["class"]) for r in rows] == _listed(sample)
    for r in rows:
        assert set(r) == {"name", "type", "path", "time", "class"}
        assert r["time"] == os.stat(r["path"]).st_mtime_ns // 1000


def test_list_text(sample: Sample) -> None:
    result = sample.list_text
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["NAME", "TYPE", "PATH", "TIME", "CLASS"]
    body = [line.split() for line in lines[1:] if line.strip() and not line.endswith("images listed.")]
    assert [(r[0], r[1], r[2], r[-1]) for r in body] == _listed(sample)
    assert lines[-1] == f"{len(body)} images listed."


def test_list_no_legend(sample: Sample) -> None:
    result = run(f"--root={sample.root}", "list", "--no-legend")
    assert result.returncode == 0
    assert len(result.stdout.splitlines()) == len(_listed(sample))
    assert "NAME" not in result.stdout
    assert "listed" not in result.stdout


@pytest.mark.parametrize("cls", ["sysext", "confext"])
def test_list_one_class(sample: Sample, cls: str) -> None:
    result = run(f"--root={sample.root}", f"--class={cls}", "list", "--json=short")
    assert result.returncode == 0
    assert [r["name"] for r in json.loads(result.stdout)] == [r[0] for r in _listed(sample) if r[3] == cls]


def test_plan_exit_0_when_nothing_is_rejected(tmp_path: Path, sysextpy_cmd: RunSysextpy) -> None:
    root = _build(tmp_path, broken=False)
    result = sysextpy_cmd(f"--root={root}", "plan", "--json=short")
    if IS_ROOT:
        check_no_leftovers(tmp_path)
    rows = json.loads(result.stdout)["images"]
    if not IS_ROOT and HAVE_SQUASHFS:
        # raw images cannot be looked into without root: they are rejected, and say why
        assert result.returncode == 3
        return
    assert result.returncode == 0, result.stderr
    assert {r["verdict"] for r in rows} == {"merge", "ignored"}
    assert not {r["name"] for r in rows} & BROKEN


# --------------------------------------------------------------------------------------------------
# Empty roots


@pytest.mark.parametrize("mode", ["short", "pretty"])
def test_list_json_empty_is_an_empty_array(tmp_path: Path, sysextpy_cmd: RunSysextpy, mode: str) -> None:
    (tmp_path / "root/usr").mkdir(parents=True)
    result = sysextpy_cmd(f"--root={tmp_path / 'root'}", "list", f"--json={mode}")
    assert (result.returncode, result.stdout) == (0, "[]\n")


def test_list_text_empty_says_so(tmp_path: Path, sysextpy_cmd: RunSysextpy) -> None:
    (tmp_path / "root/usr").mkdir(parents=True)
    result = sysextpy_cmd(f"--root={tmp_path / 'root'}", "list")
    assert (result.returncode, result.stdout) == (0, "")
    assert "No OS extensions found." in result.stderr


def test_status_json_unmerged(sample: Sample) -> None:
    result = run(f"--root={sample.root}", "status", "--json=short")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == [
        {"hierarchy": "/etc", "extensions": [], "since": None, "class": "confext", **UNMERGED},
        {"hierarchy": "/opt", "extensions": [], "since": None, "class": "sysext", **UNMERGED},
        {"hierarchy": "/usr", "extensions": [], "since": None, "class": "sysext", **UNMERGED},
    ]


def test_status_omits_missing_hierarchies(tmp_path: Path, sysextpy_cmd: RunSysextpy) -> None:
    (tmp_path / "root/usr").mkdir(parents=True)
    result = sysextpy_cmd(f"--root={tmp_path / 'root'}", "--json=short")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == [
        {"hierarchy": "/usr", "extensions": [], "since": None, "class": "sysext", **UNMERGED}
    ]


def test_status_text_unmerged(sample: Sample) -> None:
    result = run(f"--root={sample.root}", "status")
    assert result.returncode == 0
    rows = [line.split() for line in result.stdout.splitlines()]
    assert rows == [
        ["HIERARCHY", "EXTENSIONS", "SINCE", "CLASS", "MUTABLE"],
        ["/etc", "none", "confext"],
        ["/opt", "none", "sysext"],
        ["/usr", "none", "sysext"],
    ]


def test_status_hierarchies_from_environment(tmp_path: Path, sysextpy_cmd: RunSysextpy) -> None:
    for d in ("usr", "srv/data", "etc"):
        (tmp_path / "root" / d).mkdir(parents=True)
    result = sysextpy_cmd(
        f"--root={tmp_path / 'root'}",
        "status",
        "--json=short",
        "--class=sysext",
        env={"SYSTEMD_SYSEXT_HIERARCHIES": "/srv/data:/usr"},
    )
    assert result.returncode == 0, result.stderr
    assert [r["hierarchy"] for r in json.loads(result.stdout)] == ["/srv/data", "/usr"]


def test_plan_rows_show_a_deferred_entry(tmp_path: Path) -> None:
    """In the initrd (a view that says so: this machine is not one), an image linked onto the ESP is
    a row of its own with the verdict `deferred` and its reason, beside the images merged; nothing
    of it counts as rejected."""
    from sysextpy.discover import discover
    from sysextpy.model import ImageClass, Options
    from sysextpy.plan import Survey, host_info, judge_all
    from sysextpy.settings import resolve_settings
    from sysextpy.verbs import plan_rows
    from sysextpy.view import LiveView

    class InitrdView(LiveView):
        def in_initrd(self) -> bool:
            return True

    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc/os-release").write_text("ID=debian\nVERSION_ID=12\n")
    make_sysext(root / "var/lib/extensions/tools", "tools", "ID=debian\nVERSION_ID=12\n")
    (root / "var/lib/extensions/esp.raw").symlink_to("/efi/EFI/Linux/esp.raw")
    view = InitrdView(os.fspath(root), {})
    opts = Options(root=root, root_given=True, classes=(ImageClass.SYSEXT,))
    settings = (resolve_settings(opts, ImageClass.SYSEXT, view),)
    found = Survey(
        root=root,
        host=host_info(view),
        initrd=False,
        settings=settings,
        discoveries=(discover(view, ImageClass.SYSEXT, initrd=False),),
    )
    plan = judge_all(opts, found, view)
    rows = {r["entry"]: r for r in plan_rows(plan)}
    esp = rows[os.fspath(root / "var/lib/extensions/esp.raw")]
    assert (esp["verdict"], esp["path"], esp["type"]) == ("deferred", None, None)
    assert esp["reason"].startswith("its source '/efi/EFI/Linux/esp.raw' lies on /efi")
    assert rows[os.fspath(root / "var/lib/extensions/tools")]["verdict"] == "merge"
    assert plan.rejected == ()
    assert [v.name for v in plan.classes[0].to_merge] == ["tools"]
