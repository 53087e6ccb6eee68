# SPDX-License-Identifier: LGPL-2.1-or-later
"""The six mutable modes on real overlay mounts: upper/work directories, imports, errors.

Reference: spec/sysext-behaviour.md §5.2-5.4. The persistent mutable directory of hierarchy H is
<root>/var/lib/extensions.mutable/<H without slashes>, its work directory sits next to it.
"""

from __future__ import annotations

import errno
import json
import os
import stat
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Callable, Optional

import pytest

from sysextpy import mountapi
from tests.merge_support import (
    Runner,
    RunSysextpy,
    add_confext,
    add_sysext,
    lower_dirs,
    mounts_at,
    read_meta,
    top_mount,
    vfs_options,
    write,
)

MUT = "var/lib/extensions.mutable"


@pytest.fixture
def run(mountns: None, fake_root: Path, tmp_path: Path, sysextpy_cmd: RunSysextpy) -> Runner:
    return Runner(sysextpy_cmd, fake_root, tmp_path / "state.json")


@pytest.fixture
def cleanup() -> Iterator[ExitStack]:
    with ExitStack() as stack:
        yield stack


def _unmount_later(stack: ExitStack, path: Path) -> None:
    def undo() -> None:
        while mounts_at(path):
            mountapi.umount2(path, mountapi.MNT_DETACH)

    stack.callback(undo)


def _write_fails_read_only(path: Path) -> bool:
    try:
        path.write_text("x\n")
    except OSError as e:
        assert e.errno == errno.EROFS, e
        return True
    return False


# mode, the mutable dir exists beforehand, merged /usr writable, writes persist in the mutable dir,
# the mutable dir's content is visible, `work_dir` recorded, what origin's mutableDirs holds
MODES = [
    ("no", True, False, False, False, False, "none"),
    ("yes", False, True, True, False, True, "persistent-all"),
    ("yes", True, True, True, True, True, "persistent-all"),
    ("auto", True, True, True, True, True, "persistent-usr"),
    ("auto", False, False, False, False, False, "none"),
    ("import", True, False, False, True, False, "persistent-usr"),
    ("import", False, False, False, False, False, "none"),
    ("ephemeral", True, True, False, False, False, "ephemeral"),
    ("ephemeral-import", True, True, False, True, False, "ephemeral"),
    ("ephemeral-import", False, True, False, False, False, "ephemeral"),
]


@pytest.mark.parametrize("mode, prepared, writable, persists, sees_dir, work_dir, dirs", MODES)
def test_mutable_modes(
    run: Runner,
    fake_root: Path,
    mode: str,
    prepared: bool,
    writable: bool,
    persists: bool,
    sees_dir: bool,
    work_dir: bool,
    dirs: str,
) -> None:
    add_sysext(fake_root, "tools", {"usr/share/tools/file": "ext\n", "usr/share/both": "ext\n"})
    mut_usr = fake_root / MUT / "usr"
    if prepared:
        write(mut_usr / "share/both", "mutable dir\n")
        write(mut_usr / "share/imported", "imported\n")
        os.chmod(mut_usr, 0o755)
        os.chmod(mut_usr / "share", 0o755)
    run.ok("merge", "--class=sysext", f"--mutable={mode}")
    usr = fake_root / "usr"

    assert (usr / "share/tools/file").read_text() == "ext\n"
    assert (usr / "lib/os-release").exists()
    assert (usr / "share/both").read_text() == ("mutable dir\n" if sees_dir else "ext\n")
    assert (usr / "share/imported").exists() == sees_dir
    options = vfs_options(top_mount(usr))
    assert ("rw" if writable else "ro") in options
    # with any mode but "no" every hierarchy is merged, even without content for it
    assert bool(mounts_at(fake_root / "opt")) == (mode != "no")

    new = usr / "share/new-file"
    assert _write_fails_read_only(new) == (not writable)
    if writable:
        assert new.read_text() == "x\n"
    assert (mut_usr / "share/new-file").exists() == persists
    if mode == "yes":
        assert stat.S_IMODE(os.stat(mut_usr).st_mode) == 0o755
        assert (fake_root / MUT / "opt").is_dir(), "'yes' creates the directory of every hierarchy"

    work = fake_root / MUT / ".systemd-usr-workdir"
    if work_dir:
        assert read_meta(usr, "work_dir") == f"{MUT}/.systemd-usr-workdir\n"
        assert stat.S_IMODE(os.stat(work).st_mode) == 0o700
    else:
        assert read_meta(usr, "work_dir") is None
    if writable:
        # the metadata stays read-only even on a writable overlay
        assert _write_fails_read_only(usr / ".systemd-sysext/extensions")
        assert "ro" in vfs_options(top_mount(usr / ".systemd-sysext"))

    origin = json.loads(read_meta(usr, "origin") or "")
    assert origin["mutable"]["mode"] == mode
    recorded = origin["mutable"].get("mutableDirs")
    if dirs == "none":
        assert recorded is None
    elif dirs == "persistent-usr":
        assert recorded == {"/usr": f"/{MUT}/usr"}
    elif dirs == "persistent-all":
        assert recorded == {"/usr": f"/{MUT}/usr", "/opt": f"/{MUT}/opt"}
    else:
        assert set(recorded) == {"/usr", "/opt"}
        assert not any(v.startswith(f"/{MUT}") for v in recorded.values())

    run.ok("unmerge")
    assert not mounts_at(usr) and not mounts_at(fake_root / "opt")
    assert not (usr / "share/new-file").exists(), "the host hierarchy itself was never written"
    assert (mut_usr / "share/new-file").exists() == persists
    assert not work.exists(), "unmerge removes the work directory"
    if mode.startswith("ephemeral"):
        run.ok("merge", "--class=sysext", f"--mutable={mode}")
        assert not (usr / "share/new-file").exists(), "ephemeral writes are gone after unmerge"
        run.ok("unmerge")


@pytest.mark.parametrize("mode", [0o750, 0o711])
def test_yes_creates_mutable_dir_with_hierarchy_mode(run: Runner, fake_root: Path, mode: int) -> None:
    os.chmod(fake_root / "usr", mode)
    add_sysext(fake_root, "tools", {"usr/share/tools/file": "ext\n"})
    run.ok("merge", "--class=sysext", "--mutable=yes")
    assert stat.S_IMODE(os.stat(fake_root / MUT / "usr").st_mode) == mode
    assert stat.S_IMODE(os.stat(fake_root / MUT).st_mode) == 0o755
    assert stat.S_IMODE(os.stat(fake_root / "usr").st_mode) == mode, "merged root keeps the host's mode"
    run.ok("unmerge")


@pytest.mark.parametrize(
    "args, env_mode, writable, warning",
    [
        ([], "yes", True, False),
        ([], "ephemeral", True, False),
        (["--mutable=no"], "yes", False, False),  # the command line wins
        (["--mutable=yes"], "no", True, False),
        (["--mutable=true"], None, True, False),  # boolean spellings
        (["--mutable=off"], "yes", False, False),
        ([], "bogus", False, True),  # ignored with a warning
    ],
)
def test_mutable_mode_from_environment(
    run: Runner, fake_root: Path, args: list[str], env_mode: Optional[str], writable: bool, warning: bool
) -> None:
    add_sysext(fake_root, "tools", {"usr/share/tools/file": "ext\n"})
    env = {"SYSTEMD_SYSEXT_MUTABLE_MODE": env_mode} if env_mode is not None else {}
    err = run.ok("merge", "--class=sysext", *args, env=env)
    assert ("SYSTEMD_SYSEXT_MUTABLE_MODE" in err) == warning, err
    assert ("rw" if writable else "ro") in vfs_options(top_mount(fake_root / "usr"))
    assert _write_fails_read_only(fake_root / "usr/new") == (not writable)
    run.ok("unmerge")


@pytest.mark.parametrize(
    "env_value, vfs_present, vfs_absent, super_present",
    [
        (None, {"noatime"}, set(), None),  # upstream's defaults for writable overlays
        ("", set(), {"noatime"}, None),  # set but empty: nothing extra
        ("uuid=off", set(), {"noatime"}, "uuid=null"),  # replaces the defaults
    ],
)
def test_mutable_overlay_options(
    run: Runner,
    fake_root: Path,
    env_value: Optional[str],
    vfs_present: set[str],
    vfs_absent: set[str],
    super_present: Optional[str],
) -> None:
    add_sysext(fake_root, "tools", {"usr/share/tools/file": "ext\n"})
    env = {"SYSTEMD_SYSEXT_OVERLAYFS_MOUNT_OPTIONS": env_value} if env_value is not None else {}
    run.ok("merge", "--class=sysext", "--mutable=yes", env=env)
    info = top_mount(fake_root / "usr")
    assert vfs_present <= vfs_options(info)
    assert not (vfs_absent & vfs_options(info))
    assert f"upperdir={fake_root / MUT / 'usr'}" in info.super_options.split(",")
    if super_present:
        assert super_present in info.super_options.split(",")
    run.ok("unmerge")


@pytest.mark.parametrize(
    "cls, hierarchy, add",
    [("confext", "etc", add_confext), ("sysext", "usr", add_sysext)],
)
def test_mutable_dir_symlinked_to_hierarchy(
    run: Runner, fake_root: Path, cls: str, hierarchy: str, add: Callable[..., Path]
) -> None:
    """extensions.mutable/etc -> /etc (inside the root): the hierarchy itself is the upper layer."""
    ext_file = f"{hierarchy}/from-ext"
    add(fake_root, "ext", {ext_file: "ext\n"})
    (fake_root / MUT).mkdir(parents=True)
    (fake_root / MUT / hierarchy).symlink_to(f"/{hierarchy}")
    host = fake_root / hierarchy
    run.ok("merge", f"--class={cls}", "--mutable=yes")

    info = top_mount(host)
    assert f"upperdir={host}" in info.super_options.split(",")
    assert str(host) not in lower_dirs(info), "the host hierarchy is the upper layer, not a lower one"
    assert (fake_root / ext_file).read_text() == "ext\n"
    write(host / "written", "through the overlay\n")
    assert read_meta(host, "work_dir", cls) == f".systemd-{hierarchy}-workdir\n"
    assert (fake_root / f".systemd-{hierarchy}-workdir").is_dir()
    origin = json.loads(read_meta(host, "origin", cls) or "")
    assert origin["mutable"]["mode"] == "yes"
    assert origin["mutable"]["mutableDirs"][f"/{hierarchy}"] == f"/{hierarchy}"

    run.ok("unmerge", f"--class={cls}")
    assert not mounts_at(host)
    assert (host / "written").read_text() == "through the overlay\n", "written into the hierarchy itself"
    assert not (fake_root / ext_file).exists()
    assert not (fake_root / f".systemd-{hierarchy}-workdir").exists()


def test_auto_with_dangling_symlink_is_read_only(run: Runner, fake_root: Path) -> None:
    add_sysext(fake_root, "tools", {"usr/share/tools/file": "ext\n"})
    (fake_root / MUT).mkdir(parents=True)
    (fake_root / MUT / "usr").symlink_to("/srv/nowhere")
    run.ok("merge", "--class=sysext", "--mutable=auto")
    assert "ro" in vfs_options(top_mount(fake_root / "usr"))
    assert not (fake_root / "srv/nowhere").exists()
    run.ok("unmerge")


# --------------------------------------------------------------------------------------------
# Errors: the merge fails as a whole and leaves everything as it was


def _wrong_mode(root: Path, stack: ExitStack) -> None:
    (root / MUT / "usr").mkdir(parents=True)
    os.chmod(root / MUT / "usr", 0o700)


def _read_only_upper(root: Path, stack: ExitStack) -> None:
    (root / MUT / "usr").mkdir(parents=True)
    mountapi.mount("tmpfs", root / MUT / "usr", "tmpfs", mountapi.MS_RDONLY, "mode=0755")
    _unmount_later(stack, root / MUT / "usr")


def _points_at_hierarchy(root: Path, stack: ExitStack) -> None:
    (root / MUT).mkdir(parents=True)
    (root / MUT / "usr").symlink_to("/usr")


def _other_file_system(root: Path, stack: ExitStack) -> None:
    (root / MUT / "usr").mkdir(parents=True)
    mountapi.mount("tmpfs", root / MUT / "usr", "tmpfs", 0, "mode=0755")
    _unmount_later(stack, root / MUT / "usr")


@pytest.mark.parametrize(
    "mode, setup, message",
    [
        ("yes", _wrong_mode, "has mode 0700, ought to have mode 0755"),
        ("auto", _wrong_mode, "has mode 0700, ought to have mode 0755"),
        ("yes", _read_only_upper, "as an upperdir as it is read-only"),
        ("auto", _read_only_upper, "as an upperdir as it is read-only"),
        ("import", _points_at_hierarchy, "points to the hierarchy"),
        ("ephemeral-import", _points_at_hierarchy, "points to the hierarchy"),
        ("yes", _other_file_system, "not be on the same file system"),
        ("auto", _other_file_system, "not be on the same file system"),
    ],
)
def test_mutable_errors(
    run: Runner,
    fake_root: Path,
    cleanup: ExitStack,
    mode: str,
    setup: Callable[[Path, ExitStack], None],
    message: str,
) -> None:
    add_sysext(fake_root, "tools", {"usr/share/tools/file": "ext\n"})
    setup(fake_root, cleanup)
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        before = f.read()
    entries_before = sorted(os.listdir(fake_root / MUT))

    res = run("merge", "--class=sysext", f"--mutable={mode}")
    assert res.returncode == 1, res.stderr
    assert message in res.stderr
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        assert f.read() == before
    assert not (fake_root / "usr/share/tools").exists()
    assert sorted(os.listdir(fake_root / MUT)) == entries_before, "no work directory left behind"


def test_refresh_keeps_writes_in_yes_mode(run: Runner, fake_root: Path) -> None:
    add_sysext(fake_root, "tools", {"usr/share/tools/file": "ext\n"})
    run.ok("merge", "--class=sysext", "--mutable=yes")
    write(fake_root / "usr/share/before-refresh", "1\n")
    add_sysext(fake_root, "more", {"usr/share/more/file": "more\n"})
    run.ok("refresh", "--class=sysext", "--mutable=yes")
    assert len(mounts_at(fake_root / "usr")) == 1
    assert (fake_root / "usr/share/more/file").read_text() == "more\n"
    assert (fake_root / "usr/share/before-refresh").read_text() == "1\n"
    write(fake_root / "usr/share/after-refresh", "2\n")
    assert read_meta(fake_root / "usr", "work_dir") == f"{MUT}/.systemd-usr-workdir\n"
    run.ok("unmerge")
    assert sorted(os.listdir(fake_root / MUT / "usr/share")) == ["after-refresh", "before-refresh"]
    assert not (fake_root / MUT / ".systemd-usr-workdir").exists()


def test_writes_of_yes_are_imported_later(run: Runner, fake_root: Path) -> None:
    """yes -> write -> unmerge; import shows it read-only; ephemeral-import on top of it."""
    add_sysext(fake_root, "tools", {"usr/share/tools/file": "ext\n"})
    run.ok("merge", "--class=sysext", "--mutable=yes")
    write(fake_root / "usr/share/kept", "kept\n")
    run.ok("unmerge")
    snapshot = sorted(os.listdir(fake_root / MUT / "usr/share"))

    run.ok("merge", "--class=sysext", "--mutable=import")
    assert (fake_root / "usr/share/kept").read_text() == "kept\n"
    assert _write_fails_read_only(fake_root / "usr/share/kept")
    run.ok("unmerge")

    run.ok("merge", "--class=sysext", "--mutable=ephemeral-import")
    assert (fake_root / "usr/share/kept").read_text() == "kept\n"
    write(fake_root / "usr/share/kept", "changed\n")
    assert (fake_root / "usr/share/kept").read_text() == "changed\n"
    run.ok("unmerge")
    assert (fake_root / MUT / "usr/share/kept").read_text() == "kept\n"
    assert sorted(os.listdir(fake_root / MUT / "usr/share")) == snapshot
