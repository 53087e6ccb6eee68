"""The confirming refresh (quick.py) and the observations it rests on (observe.py).

The property that matters: whenever the observations taken again agree with the recorded ones,
the fingerprints recomputed by the full run are the same. It is checked on fake roots against a
catalogue of changes (each alone and in random combinations); then on real mounts, that the
confirming refresh is what runs after a merge, that it declines whenever the full run would do
something else, and that its record equals the full run's.
"""

from __future__ import annotations

import builtins
import io
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable, Optional

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sysextpy import observe, quick
from sysextpy.cli import parse_args
from sysextpy.jsonlite import dump_json, load_json
from sysextpy.merge import class_inputs_of, confirm_data
from sysextpy.model import ALL_CLASSES, ImageClass, Options, Verb
from sysextpy.plan import survey
from sysextpy.recorder import Recorder
from sysextpy.verbs import class_settings
from tests.faults import report
from tests.merge_support import Runner, add_confext, add_sysext, have_tool, make_raw, sysext_tree, write

RunSysextpy = Callable[..., "subprocess.CompletedProcess[str]"]
SKIPPED = "Skipping extension refresh because no change was found"


# --------------------------------------------------------------------------------------------------
# The command line: the quick parser takes a refresh the way the full one does, or declines


@pytest.mark.parametrize(
    "argv",
    [
        ["refresh"],
        ["refresh", "--root=/tmp"],
        ["--root", "/tmp/x/../y", "refresh"],
        ["--class=sysext", "refresh"],
        ["refresh", "--class", "confext"],
        ["--class=all", "--no-reload", "--no-pager", "--no-legend", "refresh"],
        ["--state=/tmp/s.json", "refresh"],
        ["--state", "rel/s.json", "refresh"],
        ["--always-refresh=no", "refresh"],
        ["--always-refresh", "false", "refresh"],
        ["--root=", "refresh"],
        ["refresh", "--class=sysext", "--class=all"],
    ],
)
def test_quick_parse_agrees_with_the_command_line(argv: list[str]) -> None:
    req = quick.parse(argv, "sysextpy")
    assert req is not None
    opts, show = parse_args(argv, "sysextpy")
    assert show is None and opts.verb is Verb.REFRESH and not opts.always_refresh
    assert req.classes == tuple(c.value for c in opts.classes)
    assert req.root == os.fspath(opts.root) and req.root_given == opts.root_given
    assert req.state == os.fspath(opts.state)
    key = quick.options_key(
        force=opts.force,
        mutable=opts.mutable.value if opts.mutable else None,
        image_policy=opts.image_policy,
        noexec=opts.noexec,
    )
    assert key == quick.options_key()


@pytest.mark.parametrize(
    "argv, argv0",
    [
        (["merge"], "sysextpy"),
        (["status"], "sysextpy"),
        ([], "sysextpy"),
        (["refresh", "extra"], "sysextpy"),
        (["--force", "refresh"], "sysextpy"),
        (["--mutable=yes", "refresh"], "sysextpy"),
        (["--noexec=no", "refresh"], "sysextpy"),
        (["--image-policy=root=verity", "refresh"], "sysextpy"),
        (["--always-refresh=yes", "refresh"], "sysextpy"),
        (["--always-refresh=maybe", "refresh"], "sysextpy"),
        (["--debug", "refresh"], "sysextpy"),
        (["--json=short", "refresh"], "sysextpy"),
        (["--class=bogus", "refresh"], "sysextpy"),
        (["--class"], "sysextpy"),
        (["--state=", "refresh"], "sysextpy"),
        (["--no-reload=1", "refresh"], "sysextpy"),
        (["--", "refresh"], "sysextpy"),
        (["--help", "refresh"], "sysextpy"),
        (["refresh"], "/usr/bin/systemd-sysext"),
        (["refresh"], "systemd-confext"),
    ],
)
def test_quick_parse_declines_everything_else(argv: list[str], argv0: str) -> None:
    assert quick.parse(argv, argv0) is None


def test_metadata_directory_names_agree() -> None:
    for cls in ALL_CLASSES:
        assert f".systemd-{cls.value}" == cls.metadata_dir
    assert quick.CLASSES["all"] == tuple(c.value for c in ALL_CLASSES)


# --------------------------------------------------------------------------------------------------
# JSON without the json package

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(json_values, st.booleans())
def test_dump_json_is_json_dumps(value: Any, ascii_only: bool) -> None:
    expected = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=ascii_only)
    assert dump_json(value, ascii_only=ascii_only) == expected
    assert load_json(expected) == json.loads(expected)


# --------------------------------------------------------------------------------------------------
# Soundness on fake roots: equal observations mean equal fingerprints


def _base_root(root: Path) -> None:
    for sub in ("etc", "usr/bin", "usr/lib", "opt", "var/lib"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    write(root / "usr/lib/os-release", "ID=debian\nVERSION_ID=12\n")
    (root / "etc/os-release").symlink_to("../usr/lib/os-release")
    add_sysext(root, "alpha", {"usr/bin/alpha": "alpha 1\n", "opt/alpha/data": "a\n"})
    add_sysext(root, "beta", {"usr/share/beta/data": "beta 1\n"})
    add_confext(root, "conf", {"etc/conf.d/setting": "value 1\n"})
    sysext_tree(root / "srv/a", "linked", {"usr/share/linked": "from a\n"})
    sysext_tree(root / "srv/b", "linked", {"usr/share/linked": "from b\n"})
    (root / "var/lib/extensions/linked").symlink_to("/srv/a")
    vdir = root / "var/lib/extensions/editor.v"
    sysext_tree(vdir / "editor_1.0", "editor", {"usr/bin/editor": "editor 1.0\n"})


def _bump(path: Path) -> None:
    st_ = path.lstat()
    os.utime(path, ns=(st_.st_atime_ns, st_.st_mtime_ns + 1_000_000), follow_symlinks=False)


def _edit_same_size(root: Path) -> None:
    target = root / "var/lib/extensions/alpha/usr/bin/alpha"
    mtime = target.stat().st_mtime_ns
    target.write_text("alpha 2\n")  # same size; the mtime moves on by a millisecond
    os.utime(target, ns=(mtime, mtime + 1_000_000))


def _replace_by_copy(root: Path) -> None:
    src = root / "var/lib/extensions/beta"
    copy = root / "var/lib/beta.new"
    shutil.copytree(src, copy, symlinks=True)
    shutil.rmtree(src)
    os.rename(copy, src)


def _retarget(root: Path) -> None:
    link = root / "var/lib/extensions/linked"
    link.unlink()
    link.symlink_to("/srv/b")


def _edit_link_target(root: Path) -> None:
    write(root / "srv/a/usr/share/linked", "from a, longer now\n")


CHANGES: dict[str, Callable[[Path], Any]] = {
    "add-sysext": lambda r: add_sysext(r, "gamma", {"usr/bin/gamma": "g\n"}),
    "add-confext-in-etc": lambda r: add_confext(r, "c2", {"etc/c2": "x\n"}, "etc/extensions"),
    "remove": lambda r: shutil.rmtree(r / "var/lib/extensions/beta"),
    "rename": lambda r: os.rename(r / "var/lib/extensions/beta", r / "var/lib/extensions/beta2"),
    "move-dir": lambda r: (
        os.makedirs(r / "run/extensions", exist_ok=True),
        os.rename(r / "var/lib/extensions/beta", r / "run/extensions/beta"),
    ),
    "replace-by-copy": _replace_by_copy,
    "retarget-link": _retarget,
    "edit-through-link": _edit_link_target,
    "new-version": lambda r: sysext_tree(
        r / "var/lib/extensions/editor.v/editor_1.1", "editor", {"usr/bin/editor": "1.1\n"}
    ),
    "edit-file": lambda r: write(r / "var/lib/extensions/alpha/usr/bin/alpha", "alpha 1, longer\n"),
    "edit-same-size": _edit_same_size,
    "touch-file": lambda r: _bump(r / "var/lib/confexts/conf/etc/conf.d/setting"),
    "chmod-file": lambda r: os.chmod(r / "var/lib/extensions/alpha/usr/bin/alpha", 0o755),
    "new-file-in-extension": lambda r: write(r / "var/lib/extensions/alpha/usr/bin/alpha2", "2\n"),
    "extension-release-edit": lambda r: write(
        r / "var/lib/extensions/beta/usr/lib/extension-release.d/extension-release.beta", "ID=fedora\n"
    ),
    "os-release-content": lambda r: write(r / "usr/lib/os-release", "ID=debian\nVERSION_ID=13\n"),
    "os-release-relinked": lambda r: (
        (r / "etc/os-release").unlink(),
        write(r / "etc/os-release", "ID=debian\nVERSION_ID=12\n"),
    ),
    "config-mutable": lambda r: write(r / "etc/systemd/sysext.conf", "[SysExt]\nMutable=yes\n"),
    "config-in-run": lambda r: write(r / "run/systemd/sysext.conf", "[SysExt]\nMutable=import\n"),
    "config-drop-in": lambda r: write(
        r / "usr/lib/systemd/confext.conf.d/10-x.conf", "[ConfExt]\nMutable=ephemeral\n"
    ),
    "mutable-dir": lambda r: os.makedirs(r / "var/lib/extensions.mutable/usr"),
    "initrd-release": lambda r: write(r / "etc/initrd-release", "ID=debian\n"),
    "not-an-image": lambda r: write(r / "var/lib/extensions/notes.txt", "hello\n"),
    "dangling-link": lambda r: (r / "var/lib/extensions/ghost").symlink_to("/nowhere"),
    "masking-dir": lambda r: os.makedirs(r / "etc/extensions/beta"),
    "sysupdate-temp": lambda r: os.makedirs(r / "var/lib/extensions/.sysupdate.tmp"),
}
ENV_CHANGES: dict[str, dict[str, str]] = {
    "env-hierarchies": {"SYSTEMD_SYSEXT_HIERARCHIES": "/usr"},
    "env-mutable": {"SYSTEMD_CONFEXT_MUTABLE_MODE": "yes"},
    "env-overlay-options": {"SYSTEMD_SYSEXT_OVERLAYFS_MOUNT_OPTIONS": "xino=off"},
}


def _compute(root: Path, env: dict[str, str]) -> tuple[list[str], Optional[dict[str, Any]], str]:
    """The fingerprints of both classes, and what a full merge run would store to confirm them."""
    opts = Options(verb=Verb.REFRESH, classes=ALL_CLASSES, root=root, root_given=True)
    with Recorder(os.fspath(root), env) as rec:
        settings_ = class_settings(opts, rec.env)
        found = survey(opts, settings_, rec.env)
        computed = class_inputs_of(opts, found, rec.env)
    return [fp for _, fp in computed], confirm_data(opts, found, rec.trace()), rec.why_incomplete


def _fingerprints(root: Path, env: dict[str, str]) -> list[str]:
    opts = Options(verb=Verb.REFRESH, classes=ALL_CLASSES, root=root, root_given=True)
    found = survey(opts, class_settings(opts, env), env)
    return [fp for _, fp in class_inputs_of(opts, found, env)]


def _tally(name: str, verdict: str, fingerprint_changed: bool) -> None:
    """For tests/RELIABILITY.md: how the observations judged a changed root, against the truth."""
    report(
        "observations",
        name,
        roots=1,
        fingerprint_changed=int(fingerprint_changed),
        observations_differ=int(verdict != ""),
        confirmed_though_changed=int(verdict == "" and fingerprint_changed),
    )


@pytest.fixture
def obs_root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    _base_root(root)
    return root


def test_recording_changes_nothing_and_is_complete(obs_root: Path) -> None:
    real = (os.stat, os.lstat, os.listdir, os.scandir, os.open, os.environ, builtins.open, io.open)
    fps, confirm, why = _compute(obs_root, {})
    assert (os.stat, os.lstat, os.listdir, os.scandir, os.open, os.environ, builtins.open, io.open) == real
    assert why == "" and confirm is not None
    assert fps == _fingerprints(obs_root, {})  # recording does not change the result
    ops = {item[0] for item in confirm["trace"]}
    assert {"env", "uname", "res", "cfg", "st", "ls", "rd", "tree"} <= ops
    assert observe.replay(os.fspath(obs_root), confirm["trace"], {}) == ""


def test_observations_survive_the_json_record(obs_root: Path) -> None:
    _, confirm, _ = _compute(obs_root, {})
    assert confirm is not None
    trace = json.loads(json.dumps(confirm["trace"]))
    assert observe.replay(os.fspath(obs_root), trace, {}) == ""


def test_a_moved_root_checks_the_same(obs_root: Path, tmp_path: Path) -> None:
    """Paths are kept relative to the root: the initrd's /sysroot is / after switch-root."""
    _, confirm, _ = _compute(obs_root, {})
    assert confirm is not None
    moved = tmp_path / "elsewhere"
    os.rename(obs_root, moved)
    assert observe.replay(os.fspath(moved), confirm["trace"], {}) == ""


def test_run_filled_after_switch_root_still_confirms(obs_root: Path) -> None:
    """In the initrd, /sysroot/run is an empty directory; after switch-root /run holds
    /run/systemd (without sysext configuration). The configuration found is the same."""
    (obs_root / "run").mkdir()
    _, confirm, _ = _compute(obs_root, {})
    assert confirm is not None
    (obs_root / "run/systemd/system").mkdir(parents=True)
    assert observe.replay(os.fspath(obs_root), confirm["trace"], {}) == ""
    write(obs_root / "run/systemd/sysext.conf.d/10-x.conf", "[SysExt]\nMutable=yes\n")
    assert "cfg 'sysext.conf' changed" in observe.replay(os.fspath(obs_root), confirm["trace"], {})


@pytest.mark.parametrize("change", sorted(CHANGES) + sorted(ENV_CHANGES))
def test_every_change_is_seen_by_the_observations(obs_root: Path, change: str) -> None:
    before, confirm, _ = _compute(obs_root, {})
    assert confirm is not None
    env = ENV_CHANGES.get(change, {})
    if change in CHANGES:
        CHANGES[change](obs_root)
    after = _fingerprints(obs_root, env)
    verdict = observe.replay(os.fspath(obs_root), confirm["trace"], env)
    _tally("each change of the catalogue", verdict, after != before)
    if verdict == "":
        assert after == before, f"{change}: observations agree but the fingerprints differ"
    # Every change in the catalogue matters to the merge, and each is noticed.
    assert verdict != "", f"{change} went unnoticed"


HARMLESS: dict[str, Callable[[Path], Any]] = {
    "mask-a-config-that-is-not-there": lambda r: (
        os.makedirs(r / "etc/systemd", exist_ok=True),
        (r / "etc/systemd/sysext.conf").symlink_to("/dev/null"),
    ),
    "file-elsewhere": lambda r: write(r / "srv/unrelated", "x\n"),
    "var-lib-entry": lambda r: os.makedirs(r / "var/lib/something"),
    "etc-file": lambda r: write(r / "etc/hostname", "box\n"),
    "atime": lambda r: (r / "var/lib/extensions/alpha/usr/bin/alpha").read_text(),
}


def test_masking_a_config_is_seen(obs_root: Path) -> None:
    write(obs_root / "usr/lib/systemd/sysext.conf", "[SysExt]\nMutable=yes\n")
    before, confirm, _ = _compute(obs_root, {})
    assert confirm is not None
    (obs_root / "etc/systemd").mkdir()
    (obs_root / "etc/systemd/sysext.conf").symlink_to("/dev/null")
    assert observe.replay(os.fspath(obs_root), confirm["trace"], {}) != ""
    assert _fingerprints(obs_root, {}) != before


@pytest.mark.parametrize("change", sorted(HARMLESS))
def test_unrelated_changes_still_confirm(obs_root: Path, change: str) -> None:
    before, confirm, _ = _compute(obs_root, {})
    assert confirm is not None
    HARMLESS[change](obs_root)
    verdict = observe.replay(os.fspath(obs_root), confirm["trace"], {})
    _tally("changes that do not matter", verdict, _fingerprints(obs_root, {}) != before)
    assert verdict == ""


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.sampled_from(sorted(CHANGES)), min_size=1, max_size=4, unique=True))
def test_random_combinations_never_confirm_a_different_fingerprint(
    tmp_path_factory: pytest.TempPathFactory, changes: list[str]
) -> None:
    root = tmp_path_factory.mktemp("combo") / "root"
    _base_root(root)
    before, confirm, _ = _compute(root, {})
    assert confirm is not None
    for change in changes:
        try:
            CHANGES[change](root)
        except (FileNotFoundError, FileExistsError):
            pass  # an earlier change took away what this one works on
    verdict = observe.replay(os.fspath(root), confirm["trace"], {})
    changed = _fingerprints(root, {}) != before
    _tally("random combinations of 1-4 changes", verdict, changed)
    if verdict == "":
        assert not changed


def test_disk_images_are_known_by_their_stat(obs_root: Path) -> None:
    image = obs_root / "var/lib/extensions/disk.raw"
    with open(image, "wb") as f:
        f.truncate(observe.READ_LIMIT + 4096)
    before, confirm, why = _compute(obs_root, {})
    assert confirm is not None, why
    assert ["rd", "/var/lib/extensions/disk.raw", ["S", *observe.stat_value(image.stat())]] in confirm[
        "trace"
    ]
    assert observe.replay(os.fspath(obs_root), confirm["trace"], {}) == ""
    with open(image, "r+b") as f:
        f.seek(100)
        f.write(b"x")  # same size; the ctime and mtime move
    assert observe.replay(os.fspath(obs_root), confirm["trace"], {}) != ""
    assert _fingerprints(obs_root, {}) != before


def test_side_cars_and_xattrs_of_disk_images_are_observed(obs_root: Path) -> None:
    image = write(obs_root / "var/lib/extensions/disk.raw", "not really an image\n")
    sidecar = write(obs_root / "var/lib/extensions/disk.roothash", "ab" * 32 + "\n")
    before, confirm, why = _compute(obs_root, {})
    assert confirm is not None, why
    observed = {(item[0], item[1]) for item in confirm["trace"]}
    assert ("rd", "/var/lib/extensions/disk.roothash") in observed
    assert ("xa", "/var/lib/extensions/disk.raw") in observed  # the user.verity.* attributes
    assert observe.replay(os.fspath(obs_root), confirm["trace"], {}) == ""
    sidecar.write_text("cd" * 32 + "\n")
    assert observe.replay(os.fspath(obs_root), confirm["trace"], {}) != ""
    assert _fingerprints(obs_root, {}) != before
    sidecar.unlink()
    try:
        os.setxattr(image, "user.verity.roothash", b"ef" * 32)
    except OSError:
        pytest.skip("no user xattrs on this file system")
    assert observe.replay(os.fspath(obs_root), confirm["trace"], {}) != ""


def test_a_warning_makes_the_trace_incomplete(obs_root: Path) -> None:
    write(obs_root / "etc/systemd/sysext.conf", "[SysExt]\nMutable=sideways\n")
    _, confirm, why = _compute(obs_root, {})
    assert confirm is None and why == "messages were logged"


def test_reads_the_recorder_cannot_vouch_for(tmp_path: Path) -> None:
    target = write(tmp_path / "f", "x\n")
    for action, why in [
        (lambda: open(target).read(), "open()"),
        (lambda: os.listxattr(target), "listxattr"),
        (lambda: dict(os.environ), "environment"),
        (lambda: os.open(target, os.O_WRONLY), "writing"),
        (lambda: os.stat("relative"), "relative"),
    ]:
        with Recorder("/", {}) as rec:
            try:
                action()
            except OSError:
                pass
        assert rec.trace() is None and why in rec.why_incomplete, why


def test_the_recorder_answers_with_the_recorded_fields_only(tmp_path: Path) -> None:
    target = write(tmp_path / "f", "x\n")
    real = os.stat(target)
    with Recorder("/", {}) as rec:
        seen = os.stat(target)
        names = os.listdir(tmp_path)
    assert rec.trace() is not None
    assert seen.st_ino == seen.st_dev == seen.st_uid == seen.st_atime_ns == 0
    assert (seen.st_mode, seen.st_size, seen.st_mtime_ns, seen.st_ctime_ns, seen.st_rdev) == (
        real.st_mode,
        real.st_size,
        real.st_mtime_ns,
        real.st_ctime_ns,
        real.st_rdev,
    )
    assert names == ["f"]


def test_every_file_opened_is_observed(obs_root: Path) -> None:
    """An audit hook sees every open() and every ctypes call of the recorded computation."""
    opened: list[str] = []
    foreign: list[str] = []
    active = [False]

    def hook(event: str, args: tuple[Any, ...]) -> None:
        if not active[0]:
            return
        if event == "open" and isinstance(args[0], str):
            opened.append(args[0])
        elif event.startswith("ctypes") or event in ("os.system", "subprocess.Popen"):
            foreign.append(event)

    sys.addaudithook(hook)
    active[0] = True
    try:
        _, confirm, why = _compute(obs_root, {})
    finally:
        active[0] = False
    assert confirm is not None, why
    observed = {
        observe._absolute(os.fspath(obs_root), item[1]) for item in confirm["trace"] if item[0] == "rd"
    }
    assert opened and set(opened) <= observed
    assert foreign == []


def test_malformed_traces_are_differences() -> None:
    for trace in (None, {}, [1], [["st"]], [["nope", "/x", 1]], [["st", 5, [1]]], [["res", "/", 1, 2, 3]]):
        assert observe.replay("/", trace, {}) != ""


# --------------------------------------------------------------------------------------------------
# On real mounts: which path a refresh takes, and what it records


@pytest.fixture
def merged(mountns: None, fake_root: Path, tmp_path: Path, sysextpy_cmd: RunSysextpy) -> Iterator[World]:
    w = World(sysextpy_cmd, fake_root, tmp_path / "state.json")
    add_sysext(fake_root, "alpha", {"usr/bin/alpha": "alpha 1\n"})
    add_confext(fake_root, "conf", {"etc/conf.d/setting": "value 1\n"})
    proc = w("merge")
    assert proc.returncode == 0, proc.stderr
    yield w
    w("unmerge")


class World(Runner):
    """merge_support's Runner, with a refresh that must succeed and returns its record too."""

    def refresh(self, *args: str, env: Optional[dict[str, str]] = None) -> tuple[str, dict[str, Any]]:
        said = self.ok("refresh", *args, env=env)
        assert "Traceback" not in said
        return said, json.loads(self.state.read_text())


def _mountinfo() -> str:
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        return f.read()


def test_after_a_merge_the_observations_confirm(merged: World) -> None:
    before = _mountinfo()
    said, record = merged.refresh()
    assert said.strip().splitlines() == [SKIPPED + ", use --always-refresh=yes to always do a refresh."]
    assert record["confirmedBy"] == "observations"
    assert _mountinfo() == before
    said, again = merged.refresh()
    assert again["confirmedBy"] == "observations" and SKIPPED in said


def test_the_confirming_record_equals_the_full_runs(merged: World) -> None:
    _, quick_record = merged.refresh()
    _, full_record = merged.refresh(env={"SYSTEMD_LOG_LEVEL": "debug"})  # debug: the full run
    assert full_record["confirmedBy"] == "fingerprints"
    drop = ("started", "finished", "timings", "confirmedBy", "quickDeclined")
    a = {k: v for k, v in quick_record.items() if k not in drop}
    b = {k: v for k, v in full_record.items() if k not in drop}
    assert a == b


def test_a_change_goes_to_the_full_run_then_confirms_again(merged: World) -> None:
    merged.refresh()
    write(merged.root / "var/lib/extensions/alpha/usr/bin/alpha", "alpha 2, longer\n")
    said, record = merged.refresh()
    assert "refreshing: inputs changed" in said and "confirmedBy" not in record
    assert (merged.root / "usr/bin/alpha").read_text() == "alpha 2, longer\n"
    _, record = merged.refresh()
    assert record["confirmedBy"] == "observations"


def test_a_lost_trace_falls_back_to_the_fingerprints(merged: World) -> None:
    record = json.loads(merged.state.read_text())
    record["confirm"]["trace"] = [["st", "/nonexistent", [0, 0, 0, 0, 0]]]
    merged.state.write_text(json.dumps(record))
    said, record = merged.refresh()
    assert SKIPPED in said and record["confirmedBy"] == "fingerprints"
    assert record["quickDeclined"] == "observation lst '/nonexistent' changed" or record[
        "quickDeclined"
    ].startswith("observation st")
    _, record = merged.refresh()
    assert record["confirmedBy"] == "observations"  # the full run recorded fresh observations


@pytest.mark.parametrize(
    "args, env",
    [
        (("--class=sysext",), {}),  # another set of classes than recorded
        (("--always-refresh=yes",), {}),
        ((), {"SYSEXTPY_FORCE_REFRESH": "1"}),
        (("--mutable=no",), {}),
    ],
)
def test_declines_what_it_cannot_vouch_for(
    merged: World, args: tuple[str, ...], env: dict[str, str]
) -> None:
    said, record = merged.refresh(*args, env=env)
    assert record.get("confirmedBy") != "observations"


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
    code = (
        f"import sys; sys.path.insert(0, {repo!r}); sys.argv[0] = 'sysextpy'; "
        "from sysextpy.__main__ import main; rc = main(); "
        "print(sorted(m for m in sys.modules if m in ('pathlib', 'json', 're', 'enum', 'typing', "
        "'sysextpy.cli', 'sysextpy.model', 'sysextpy.merge', 'hashlib')))"
    )
    proc = subprocess.run(
        [
            sys.executable,
            "-I",
            "-S",
            "-c",
            code,
            f"--root={merged.root}",
            f"--state={merged.state}",
            "refresh",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert SKIPPED in proc.stderr, proc.stderr
    assert proc.stdout.strip() == "[]"
    _ = ImageClass  # the class names above are the model's


@pytest.mark.skipif(not have_tool("squashfs"), reason="mksquashfs is not installed")
def test_raw_images_are_confirmed_too(
    mountns: None, fake_root: Path, tmp_path: Path, sysextpy_cmd: RunSysextpy
) -> None:
    w = World(sysextpy_cmd, fake_root, tmp_path / "state.json")
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
        assert SKIPPED not in said and "confirmedBy" not in record
        assert (fake_root / "usr/lib/packed/file").read_text() == "packed 2\n"
    finally:
        w("unmerge")
