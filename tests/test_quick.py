# SPDX-License-Identifier: LGPL-2.1-or-later
"""The confirming refresh (quick.py) on real mounts: which path a refresh takes, what it records,
and that no record, however it was altered, confirms a root that changed.

Whether a skip leaves what a forced refresh builds is judged against the forced refresh itself in
test_skip_soundness.py; here the question is which of the two ways to decide a refresh takes, and
that the record it rests on cannot vouch for more than it proves.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Optional

import pytest

from sysextpy import cli
from tests.faults import report
from tests.merge_support import Runner, add_confext, add_sysext, make_raw, sysext_tree, write

RunSysextpy = Callable[..., "subprocess.CompletedProcess[str]"]
SKIPPED = "Skipping extension refresh because no change was found"


class World(Runner):
    """merge_support's Runner, with a refresh that must succeed and returns its record too."""

    def refresh(self, *args: str, env: Optional[dict[str, str]] = None) -> tuple[str, dict[str, Any]]:
        said = self.ok("refresh", *args, env=env)
        assert "Traceback" not in said
        return said, self.record()

    def record(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.state.read_text())
        return data

    def rewrite(self, edit: Callable[[dict[str, Any]], None]) -> None:
        record = self.record()
        edit(record)
        self.state.write_text(json.dumps(record))


@pytest.fixture
def merged(mountns: None, fake_root: Path, tmp_path: Path, sysextpy_cmd: RunSysextpy) -> Iterator[World]:
    w = World(sysextpy_cmd, fake_root, tmp_path / "state" / "state.json")
    add_sysext(fake_root, "alpha", {"usr/bin/alpha": "alpha 1\n"})
    add_confext(fake_root, "conf", {"etc/conf.d/setting": "value 1\n"})
    proc = w("merge")
    assert proc.returncode == 0, proc.stderr
    yield w
    w("unmerge")


def _mountinfo() -> str:
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        return f.read()


# --------------------------------------------------------------------------------------------------
# Which way a refresh is decided


def test_the_confirming_options_are_a_subset_of_the_one_table() -> None:
    confirming = {name for name, option in cli.OPTIONS.items() if option.confirming}
    assert confirming == {
        "--class",
        "--root",
        "--state",
        "--always-refresh",
        "--no-reload",
        "--no-legend",
        "--no-pager",
    }
    assert cli.confirmable(cli.read_argv(["--root=/x", "refresh", "--no-pager"]))
    assert not cli.confirmable(cli.read_argv(["refresh", "--always-refresh=yes"]))
    assert not cli.confirmable(cli.read_argv(["refresh", "--mutable=no"]))
    assert not cli.confirmable(cli.read_argv(["status"]))


def test_after_a_merge_the_observations_confirm(merged: World) -> None:
    before = _mountinfo()
    said, record = merged.refresh()
    assert said.strip().splitlines() == [SKIPPED + ", use --always-refresh=yes to always do a refresh."]
    assert record["confirmedBy"] == "observations"
    assert _mountinfo() == before
    said, again = merged.refresh()
    assert again["confirmedBy"] == "observations" and SKIPPED in said
    assert again["confirm"] == record["confirm"]


def test_the_confirming_record_equals_the_full_runs(merged: World) -> None:
    _, quick_record = merged.refresh()
    _, full_record = merged.refresh(env={"SYSTEMD_LOG_LEVEL": "debug"})  # debug: the full run
    assert full_record["confirmedBy"] == "inputs"
    assert full_record["quickDeclined"].startswith("debug logging")
    drop = ("started", "finished", "timings", "confirmedBy", "quickDeclined")
    a = {k: v for k, v in quick_record.items() if k not in drop}
    b = {k: v for k, v in full_record.items() if k not in drop}
    assert a == b


def test_a_change_goes_to_the_full_run_then_confirms_again(merged: World) -> None:
    merged.refresh()
    write(merged.root / "var/lib/extensions/alpha/usr/bin/alpha", "alpha 2, longer\n")
    said, record = merged.refresh()
    assert "refreshing: inputs changed" in said and record["confirmedBy"] is None
    assert "extension 'alpha' changed: tree" in said
    assert (merged.root / "usr/bin/alpha").read_text() == "alpha 2, longer\n"
    _, record = merged.refresh()
    assert record["confirmedBy"] == "observations"


def test_a_harmless_difference_is_confirmed_by_the_inputs(merged: World) -> None:
    write(merged.root / "var/lib/extensions/.sysupdate.alpha.partial", "")  # never an image
    said, record = merged.refresh()
    assert SKIPPED in said and record["confirmedBy"] == "inputs"
    assert record["quickDeclined"] == "observation ls '/var/lib/extensions' changed"
    # The live merge is bound to the observations it was made from: the record's new ones cannot
    # confirm it, so every later refresh of this boot recomputes (and skips).
    said, record = merged.refresh()
    assert SKIPPED in said and record["confirmedBy"] == "inputs"
    assert "not those its fingerprint was made from" in record["quickDeclined"]


@pytest.mark.parametrize(
    "args, env, reason",
    [
        (("--class=sysext",), {}, "other options or classes"),
        (("--always-refresh=yes",), {}, None),  # not even tried
        ((), {"SYSEXTPY_FORCE_REFRESH": "1"}, "SYSEXTPY_FORCE_REFRESH"),
        (("--mutable=no",), {}, None),
    ],
)
def test_declines_what_it_cannot_vouch_for(
    merged: World, args: tuple[str, ...], env: dict[str, str], reason: Optional[str]
) -> None:
    _, record = merged.refresh(*args, env=env)
    assert record.get("confirmedBy") != "observations"
    if reason is None:
        assert record.get("quickDeclined") is None
    else:
        assert reason in record["quickDeclined"]


def test_unmounted_hierarchy_is_not_confirmed(merged: World) -> None:
    from sysextpy import mountapi

    merged.refresh()
    mountapi.umount2(merged.root / "etc", mountapi.MNT_DETACH)
    said, record = merged.refresh()
    assert "/etc is no longer merged" in said
    assert (merged.root / "etc/conf.d/setting").exists()


def test_a_held_lock_is_not_waited_for_twice(merged: World) -> None:
    import fcntl

    fd = os.open(merged.state.parent / "lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        t0 = time.monotonic()
        proc = merged("refresh", env={"SYSEXTPY_LOCK_TIMEOUT": "0.3"})
        elapsed = time.monotonic() - t0
    finally:
        os.close(fd)
    assert proc.returncode != 0 and "Another sysextpy run held" in proc.stderr
    assert proc.stderr.count("Waiting for another sysextpy run") == 1
    assert elapsed < 5


def test_confirming_refresh_loads_no_heavy_module(merged: World) -> None:
    repo = os.fspath(Path(__file__).resolve().parent.parent)
    heavy = (
        "pathlib",
        "json",
        "re",
        "enum",
        "typing",
        "ctypes",
        "hashlib",
        "sysextpy.model",
        "sysextpy.merge",
    )
    code = (
        f"import sys; sys.path.insert(0, {repo!r}); sys.argv[0] = 'sysextpy'; "
        "from sysextpy.__main__ import main; rc = main(); "
        f"print(sorted(m for m in sys.modules if m in {heavy!r}))"
    )
    argv = [
        sys.executable,
        "-I",
        "-S",
        "-c",
        code,
        f"--root={merged.root}",
        f"--state={merged.state}",
        "refresh",
    ]
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    assert SKIPPED in proc.stderr, proc.stderr
    assert proc.stdout.strip() == "[]"
    assert merged.record()["confirmedBy"] == "observations"


# What a merge, a forced refresh and an unmerge of directory extensions may load beyond what the
# interpreter and `os` load anyway: _ctypes (the mount syscalls, without the ctypes package), fcntl (the
# lock), errno, gc, the C parts of json and sha256, and functools' C half (cmp_to_key). Never ctypes,
# pathlib, re, enum, json, typing, collections, functools or dataclasses: each costs milliseconds of
# every merge on the boot path.
MUTATING_STDLIB = {
    "__future__",
    "errno",
    "fcntl",
    "gc",
    "_json",
    "_sha256",
    "_sha2",
    "_functools",
    "_ctypes",
}
# An unmerge reads the record and the live merges, unmounts and writes the record: none of the
# modules that discover, judge, fingerprint or build is loaded.
NOT_FOR_UNMERGE = {
    "sysextpy.merge",
    "sysextpy.apply",
    "sysextpy.decide",
    "sysextpy.view",
    "sysextpy.plan",
    "sysextpy.discover",
    "sysextpy.osrelease",
    "sysextpy.compat",
    "sysextpy.config",
    "sysextpy.fingerprint",
    "sysextpy.recording",
    "sysextpy.pins",
    "sysextpy.images",
    "sysextpy.identity",
    "sysextpy.hooks",
    "sysextpy.versioncomp",
    "sysextpy.dissect",
}


def _loaded_by(world: World, *args: str) -> set[str]:
    """The modules a run of the command line loads beyond what `import os` loads, started as the
    boot path starts it (isolated, without site)."""
    repo = os.fspath(Path(__file__).resolve().parent.parent)
    before = (
        "import sys; import os; before = set(sys.modules); "
        f"sys.path.insert(0, {repo!r}); sys.argv[0] = 'sysextpy'; "
        "from sysextpy.__main__ import main; rc = main(); "
        "print(' '.join(sorted(set(sys.modules) - before))); sys.exit(rc)"
    )
    argv = [
        sys.executable,
        "-I",
        "-S",
        "-c",
        before,
        f"--root={world.root}",
        f"--state={world.state}",
        *args,
    ]
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    return set(proc.stdout.split())


def test_merge_refresh_and_unmerge_load_only_their_modules(merged: World) -> None:
    loaded = {
        "forced refresh": _loaded_by(merged, "--always-refresh=yes", "refresh"),
        "unmerge": _loaded_by(merged, "unmerge"),
        "merge": _loaded_by(merged, "merge"),
    }
    for verb, modules in loaded.items():
        assert "sysextpy.mountapi" in modules, verb  # the trace works
        foreign = {m for m in modules if not m.startswith("sysextpy")} - MUTATING_STDLIB
        assert foreign == set(), verb
    assert "sysextpy.plan" in loaded["merge"] and "sysextpy.unmerge" in loaded["unmerge"]
    assert loaded["unmerge"] & NOT_FOR_UNMERGE == set()
    # What only lists, shows or prints tables stays out of all three.
    for verb, modules in loaded.items():
        assert modules & {"sysextpy.verbs", "sysextpy.output"} == set(), verb
    assert "sysextpy.unmerge" not in loaded["merge"] | loaded["forced refresh"]


def test_warnings_of_the_merge_are_said_again(
    mountns: None, fake_root: Path, tmp_path: Path, sysextpy_cmd: RunSysextpy
) -> None:
    w = World(sysextpy_cmd, fake_root, tmp_path / "state" / "state.json")
    add_sysext(fake_root, "alpha", {"usr/bin/alpha": "alpha 1\n"})
    write(fake_root / "etc/systemd/sysext.conf", "[SysExt]\nBogus=1\n")
    try:
        assert "unknown key Bogus=" in w.ok("merge")
        said, record = w.refresh()
        assert record["confirmedBy"] == "observations"
        assert "unknown key Bogus=" in said and SKIPPED in said
    finally:
        w("unmerge")


def test_writes_into_a_mutable_directory_are_no_change(
    mountns: None, fake_root: Path, tmp_path: Path, sysextpy_cmd: RunSysextpy
) -> None:
    """A mutable /etc takes writes (systemd-sysusers adding a user at boot, say) in its persistent
    directory: that is no input, so the observations still confirm; its mode is one."""
    w = World(sysextpy_cmd, fake_root, tmp_path / "state" / "state.json")
    add_confext(fake_root, "conf", {"etc/conf.d/setting": "value 1\n"})
    upper = fake_root / "var/lib/extensions.mutable/etc"
    upper.mkdir(parents=True, mode=0o755)
    write(fake_root / "etc/systemd/confext.conf", "[ConfExt]\nMutable=auto\n")
    try:
        assert w("merge").returncode == 0
        write(fake_root / "etc/passwd-like", "written after the merge\n")
        assert (upper / "passwd-like").exists(), "the write went to the persistent directory"
        said, record = w.refresh()
        assert SKIPPED in said and record["confirmedBy"] == "observations"
        os.chmod(upper, 0o700)  # its mode is an input: the refresh sees it, and refuses it
        proc = w("refresh")
        assert proc.returncode == 1 and SKIPPED not in proc.stderr
        assert "mutableDirs changed" in proc.stderr and "has mode 0700" in proc.stderr
        os.chmod(upper, 0o755)
    finally:
        w("unmerge")


@pytest.mark.tools("mksquashfs")
def test_raw_images_are_confirmed_too(
    mountns: None, fake_root: Path, tmp_path: Path, sysextpy_cmd: RunSysextpy
) -> None:
    w = World(sysextpy_cmd, fake_root, tmp_path / "state" / "state.json")
    src = sysext_tree(tmp_path / "src", "packed", {"usr/lib/packed/file": "packed 1\n"})
    image = make_raw("squashfs", src, fake_root / "var/lib/extensions/packed.raw")
    try:
        assert w("merge").returncode == 0
        said, record = w.refresh()
        assert SKIPPED in said and record["confirmedBy"] == "observations"
        src2 = sysext_tree(tmp_path / "src2", "packed", {"usr/lib/packed/file": "packed 2\n"})
        make_raw("squashfs", src2, tmp_path / "packed2.raw")
        os.replace(tmp_path / "packed2.raw", image)
        said, record = w.refresh()
        assert SKIPPED not in said and record["confirmedBy"] is None
        assert (fake_root / "usr/lib/packed/file").read_text() == "packed 2\n"
    finally:
        w("unmerge")


# --------------------------------------------------------------------------------------------------
# An altered record never confirms a changed root


def _observations(record: dict[str, Any]) -> list[Any]:
    observations: list[Any] = record["confirm"]["observations"]
    return observations


def _set_observations(record: dict[str, Any], value: list[Any]) -> None:
    record["confirm"]["observations"] = value


TAMPER: dict[str, Callable[[dict[str, Any]], None]] = {
    "observations emptied": lambda r: _set_observations(r, []),
    "observations truncated": lambda r: _set_observations(r, _observations(r)[: len(_observations(r)) // 3]),
    "observations reordered": lambda r: _set_observations(r, list(reversed(_observations(r)))),
    "last observations dropped": lambda r: _set_observations(r, _observations(r)[:-5]),
    "tree observations dropped": lambda r: _set_observations(
        r, [o for o in _observations(r) if o[0] != "tree"]
    ),
    "listings dropped": lambda r: _set_observations(r, [o for o in _observations(r) if o[0] != "ls"]),
    "observations removed": lambda r: r.__setitem__("confirm", None),
    "hierarchies dropped from the classes": lambda r: [
        e.__setitem__("hierarchies", {}) for e in r["classes"].values()
    ],
    "hierarchies dropped from the observations": lambda r: r["confirm"].__setitem__(
        "hierarchies", {c: [] for c in r["confirm"]["hierarchies"]}
    ),
    "another boot": lambda r: r.__setitem__("bootId", "0" * 32),
    "phase merging": lambda r: r.__setitem__("phase", "merging"),
    "phase failed": lambda r: r.__setitem__("phase", "failed"),
    "phase unknown": lambda r: r.__setitem__("phase", "done"),
    "fingerprints swapped": lambda r: (
        r["classes"]["sysext"].__setitem__("fingerprint", r["classes"]["confext"]["fingerprint"]),
    ),
    "digests swapped": lambda r: [
        e.__setitem__("inputsDigest", e["observationsDigest"]) for e in r["classes"].values()
    ],
    "schema": lambda r: r.__setitem__("schema", 1),
}

ROOT_CHANGES: dict[str, tuple[Callable[[Path], Any], Callable[[Path], bool]]] = {
    "sysext added": (
        lambda root: add_sysext(root, "beta", {"usr/bin/beta": "beta\n"}),
        lambda root: (root / "usr/bin/beta").exists(),
    ),
    "confext file edited in place": (
        lambda root: _edit_keeping_size_and_mtime(
            root / "var/lib/confexts/conf/etc/conf.d/setting", "value 2\n"
        ),
        lambda root: (root / "etc/conf.d/setting").read_text() == "value 2\n",
    ),
}


def _edit_keeping_size_and_mtime(path: Path, text: str) -> None:
    st = path.stat()
    assert len(text.encode()) == st.st_size
    path.write_text(text)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


@pytest.mark.parametrize("change", sorted(ROOT_CHANGES))
@pytest.mark.parametrize("tamper", sorted(TAMPER))
def test_an_altered_record_never_confirms_a_changed_root(merged: World, tamper: str, change: str) -> None:
    merged.refresh()  # the record of a confirming run: observations and all
    apply_change, changed_is_visible = ROOT_CHANGES[change]
    apply_change(merged.root)
    merged.rewrite(TAMPER[tamper])
    proc = merged("refresh")
    assert proc.returncode == 0, proc.stderr
    skipped = SKIPPED in proc.stderr
    report("record tampering", tamper, roots=1, changed=1, confirmed_though_changed=int(skipped))
    assert not skipped, proc.stderr
    assert changed_is_visible(merged.root)
    # and nothing of the altered record survives into the new one
    _, record = merged.refresh()
    assert record["confirmedBy"] == "observations"


@pytest.mark.parametrize("tamper", sorted(TAMPER))
def test_an_altered_record_is_never_confirmed_by_its_observations(merged: World, tamper: str) -> None:
    """Nothing changed in the root: an altered record may lead to a full run that finds nothing to
    do, but never to a confirmation on its own observations."""
    merged.refresh()
    merged.rewrite(TAMPER[tamper])
    proc = merged("refresh")
    assert proc.returncode == 0, proc.stderr
    assert merged.record()["confirmedBy"] != "observations"


# What a merge of disk images may load beyond MUTATING_STDLIB: the C modules that read partition
# tables and dm-verity data (struct, zlib, binascii). Never pathlib, uuid, json, hashlib or what they
# bring (re, enum, collections, functools, platform, urllib, OpenSSL's _hashlib): together some
# 10 ms of every boot that merges a raw image.
IMAGE_STDLIB = {"struct", "_struct", "zlib", "binascii"}


def test_a_merge_of_a_disk_image_loads_no_heavy_stdlib(
    mountns: None, fake_root: Path, tmp_path: Path, sysextpy_cmd: RunSysextpy
) -> None:
    """A squashfs image is dissected, attached to a loop device and mounted: the image code runs,
    on the interpreter's built-in modules only."""
    src = sysext_tree(tmp_path / "src" / "packed", "packed", {"usr/bin/packed": "packed\n"})
    make_raw("squashfs", src, fake_root / "var/lib/extensions/packed.raw")
    repo = os.fspath(Path(__file__).resolve().parent.parent)
    code = (
        "import sys; import os; before = set(sys.modules); "
        f"sys.path.insert(0, {repo!r}); from sysextpy.cli import main; rc = main(); "
        "print(' '.join(sorted(set(sys.modules) - before))); sys.exit(rc)"
    )
    state = tmp_path / "state" / "state.json"
    argv = [sys.executable, "-I", "-S", "-c", code, f"--root={fake_root}", f"--state={state}", "merge"]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, check=False)
        assert proc.returncode == 0, proc.stderr
        loaded = set(proc.stdout.split())
        assert {"sysextpy.dissect", "sysextpy.loopdev"} <= loaded  # the image code ran
        assert (fake_root / "usr/bin/packed").read_text() == "packed\n"
        foreign = {m for m in loaded if not m.startswith("sysextpy")} - MUTATING_STDLIB - IMAGE_STDLIB
        assert foreign == set()
    finally:
        sysextpy_cmd(f"--root={fake_root}", f"--state={state}", "unmerge")


def test_a_merge_of_trees_loads_no_image_code(
    mountns: None, fake_root: Path, tmp_path: Path, sysextpy_cmd: RunSysextpy
) -> None:
    """Directory extensions need no dissecting: a merge of trees alone loads none of the code for
    disk images (and none of what it imports: hashlib, uuid, tempfile)."""
    add_sysext(fake_root, "alpha", {"usr/bin/alpha": "alpha\n"})
    repo = os.fspath(Path(__file__).resolve().parent.parent)
    images = ("sysextpy.dissect", "sysextpy.verity", "sysextpy.gpt", "sysextpy.loopdev", "hashlib", "uuid")
    code = (
        f"import sys; sys.path.insert(0, {repo!r}); from sysextpy.cli import main; rc = main(); "
        f"print(sorted(m for m in sys.modules if m in {images!r})); sys.exit(rc)"
    )
    state = tmp_path / "state" / "state.json"
    argv = [sys.executable, "-I", "-S", "-c", code, f"--root={fake_root}", f"--state={state}", "merge"]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, check=False)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.strip() == "[]"
    finally:
        sysextpy_cmd(f"--root={fake_root}", f"--state={state}", "unmerge")
