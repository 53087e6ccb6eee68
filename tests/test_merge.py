# SPDX-License-Identifier: LGPL-2.1-or-later
"""merge, unmerge and refresh of directory extensions on real overlay mounts in a fake root.

Every test runs inside the session's private mount namespace (`fake_root` checks that nothing is
left mounted afterwards). The tool is driven through its command line; the assertions look at
the merged tree, /proc/self/mountinfo and the metadata directory the merge writes.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import stat
import time
from pathlib import Path
from typing import Optional

import pytest

from sysextpy import mountapi
from tests.merge_support import (
    Runner,
    RunSysextpy,
    add_confext,
    add_sysext,
    expected_identity,
    have_tool,
    listing,
    loops_backed_below,
    loops_settle,
    lower_dirs,
    make_raw,
    mounts_at,
    pinned_layer,
    read_meta,
    sysext_tree,
    top_mount,
    vfs_options,
    write,
)


@pytest.fixture
def run(mountns: None, fake_root: Path, tmp_path: Path, sysextpy_cmd: RunSysextpy) -> Runner:
    return Runner(sysextpy_cmd, fake_root, tmp_path / "state.json")


def _backing_device(path: Path) -> Optional[int]:
    """The block device under the file system holding `path` (judged by sysfs), else None."""
    dev = os.stat(path).st_dev
    return dev if os.path.exists(f"/sys/dev/block/{os.major(dev)}:{os.minor(dev)}") else None


# --------------------------------------------------------------------------------------------
# The basic read-only merge


def test_readonly_merge_of_sysext_and_confext(run: Runner, fake_root: Path) -> None:
    write(fake_root / "usr/share/host-only", "host\n")
    add_sysext(fake_root, "tools", {"usr/bin/tool": "tool\n", "opt/tools/README": "opt\n"})
    add_confext(fake_root, "motd", {"etc/motd": "hello\n"})

    err = run.ok("merge")
    assert "Using extensions 'tools'." in err
    for h in ("usr", "opt", "etc"):
        assert f"Merged extensions into '{fake_root / h}'." in err

    assert (fake_root / "usr/bin/tool").read_text() == "tool\n"
    assert (fake_root / "usr/share/host-only").read_text() == "host\n"  # host /usr is the bottom layer
    assert (fake_root / "opt/tools/README").read_text() == "opt\n"
    assert (fake_root / "etc/motd").read_text() == "hello\n"
    assert (fake_root / "etc/os-release").exists()
    for h, source in (("usr", "sysext"), ("opt", "sysext"), ("etc", "confext")):
        info = top_mount(fake_root / h)
        assert (info.fstype, info.source) == ("overlay", source)
    with pytest.raises(OSError) as exc:
        (fake_root / "usr/new-file").write_text("x")
    assert exc.value.errno == errno.EROFS

    err = run.ok("unmerge")
    for h in ("usr", "opt", "etc"):
        assert f"Unmerged '{fake_root / h}'." in err
        assert not mounts_at(fake_root / h)
    assert not (fake_root / "usr/bin/tool").exists()
    assert not (fake_root / "etc/motd").exists()
    assert (fake_root / "usr/share/host-only").read_text() == "host\n"


@pytest.mark.parametrize(
    "names, top_first",
    [
        (["alpha", "beta"], ["beta", "alpha"]),
        (["beta", "gamma", "alpha"], ["gamma", "beta", "alpha"]),
        (["ext-2", "ext-10", "ext-9"], ["ext-10", "ext-9", "ext-2"]),  # version order, not byte order
        (["a1", "a"], ["a1", "a"]),
    ],
)
def test_layer_order_highest_name_on_top(
    run: Runner, fake_root: Path, names: list[str], top_first: list[str]
) -> None:
    write(fake_root / "usr/share/same/file", "host\n")
    write(fake_root / "usr/share/host-only", "host\n")
    for name in names:
        add_sysext(fake_root, name, {"usr/share/same/file": f"{name}\n", f"usr/share/{name}/own": name})
    run.ok("merge", "--class=sysext")

    assert (fake_root / "usr/share/same/file").read_text() == f"{top_first[0]}\n"
    assert (fake_root / "usr/share/host-only").read_text() == "host\n"
    for name in names:
        assert (fake_root / f"usr/share/{name}/own").read_text() == name
    layers = lower_dirs(top_mount(fake_root / "usr"))
    assert layers[1:] == [pinned_layer("sysext", n, "usr") for n in top_first] + [str(fake_root / "usr")], (
        "metadata on top, then the extensions highest name first, the host hierarchy at the bottom"
    )
    assert read_meta(fake_root / "usr", "extensions") == "".join(f"{n}\n" for n in reversed(top_first))
    run.ok("unmerge")


def test_missing_hierarchy_is_created(run: Runner, fake_root: Path) -> None:
    os.rmdir(fake_root / "opt")
    add_sysext(fake_root, "tools", {"usr/bin/tool": "x\n", "opt/tools/README": "opt\n"})
    run.ok("merge", "--class=sysext")

    assert stat.S_IMODE(os.stat(fake_root / "opt").st_mode) == 0o755
    assert (fake_root / "opt/tools/README").read_text() == "opt\n"
    layers = lower_dirs(top_mount(fake_root / "opt"))
    assert str(fake_root / "opt") not in layers
    assert layers[1:] == [pinned_layer("sysext", "tools", "opt")]
    assert read_meta(fake_root / "opt", "backing") is None, "no host layer, no backing device"

    run.ok("unmerge")
    assert not mounts_at(fake_root / "opt")
    assert (fake_root / "opt").is_dir() and not os.listdir(fake_root / "opt"), "left behind, empty"


def test_empty_hierarchy_is_not_a_layer(run: Runner, fake_root: Path) -> None:
    assert not os.listdir(fake_root / "opt")
    add_sysext(fake_root, "tools", {"opt/tools/README": "opt\n"})
    run.ok("merge", "--class=sysext")
    layers = lower_dirs(top_mount(fake_root / "opt"))
    assert str(fake_root / "opt") not in layers
    assert read_meta(fake_root / "opt", "backing") is None
    run.ok("unmerge")


@pytest.mark.parametrize("opt_exists", [True, False])
@pytest.mark.parametrize(
    "ext_opt, contributes",
    [
        (None, False),  # no opt/ in the extension
        ({}, False),  # an empty opt/
        ({"opt/.hidden": ""}, True),  # hidden files count
        ({"opt/tools/README": "x\n"}, True),
    ],
)
def test_opt_overlay_only_with_opt_content(
    run: Runner, fake_root: Path, opt_exists: bool, ext_opt: Optional[dict[str, str]], contributes: bool
) -> None:
    if not opt_exists:
        os.rmdir(fake_root / "opt")
    add_sysext(fake_root, "a", {"usr/share/a/file": "a\n"})
    b = add_sysext(fake_root, "b", {"usr/share/b/file": "b\n", **(ext_opt or {})})
    if ext_opt is not None:
        (b / "opt").mkdir(exist_ok=True)
    run.ok("merge", "--class=sysext")
    assert mounts_at(fake_root / "usr")
    assert bool(mounts_at(fake_root / "opt")) == contributes
    assert (fake_root / "opt").exists() == (opt_exists or contributes)
    run.ok("unmerge")
    assert not mounts_at(fake_root / "opt")


@pytest.mark.parametrize("mode", [0o755, 0o750, 0o711])
def test_merged_root_keeps_hierarchy_mode(run: Runner, fake_root: Path, mode: int) -> None:
    os.chmod(fake_root / "usr", mode)
    add_sysext(fake_root, "tools", {"usr/bin/tool": "x\n"})
    run.ok("merge", "--class=sysext")
    assert stat.S_IMODE(os.stat(fake_root / "usr").st_mode) == mode
    run.ok("unmerge")
    assert stat.S_IMODE(os.stat(fake_root / "usr").st_mode) == mode


# --------------------------------------------------------------------------------------------
# The metadata directory


def _check_metadata(
    hierarchy: Path,
    cls: str,
    names: list[str],
    host_backing: Optional[int],
) -> dict[str, object]:
    """Check the upstream files of a read-only merge; `host_backing`: the block device of the
    host hierarchy if that is a layer of the merge. Files of our own may sit next to them."""
    meta = hierarchy / f".systemd-{cls}"
    files = set(os.listdir(meta))
    list_file = "extensions" if cls == "sysext" else "confexts"
    other_list = "confexts" if cls == "sysext" else "extensions"
    assert stat.S_IMODE(os.stat(meta).st_mode) == 0o755
    assert (meta / list_file).read_text() == "".join(f"{n}\n" for n in names)
    assert other_list not in files
    assert "upper_dir" not in files
    assert "work_dir" not in files, "read-only merges have no work directory"
    dev = os.stat(hierarchy).st_dev
    assert (meta / "dev").read_text() == f"{os.major(dev)}:{os.minor(dev)}\n"
    if host_backing is not None:
        assert (meta / "backing").read_text() == f"{os.major(host_backing)}:{os.minor(host_backing)}\n"
    else:
        assert "backing" not in files
    text = (meta / "origin").read_text()
    assert text.endswith("}\n") and not text.endswith("\n\n")
    assert text.splitlines()[1] == '\t"mutable" : {'
    origin = json.loads(text)
    assert isinstance(origin, dict)
    return origin


def test_metadata_directory(run: Runner, fake_root: Path, tmp_path: Path) -> None:
    os.chmod(fake_root / "usr", 0o751)
    add_sysext(fake_root, "zeta", {"usr/share/zeta/file": "z\n", "opt/zeta/file": "z\n"})
    add_sysext(fake_root, "alpha", {"usr/share/alpha/file": "a\n"}, search_dir="etc/extensions")
    add_confext(fake_root, "motd", {"etc/motd": "hi\n"})
    usr_stat_before = os.stat(fake_root / "usr")
    # /opt of the host on a tmpfs: no block device behind it, so no `backing` there
    mountapi.mount("tmpfs", fake_root / "opt", "tmpfs", 0, "mode=0755")
    try:
        write(fake_root / "opt/host-file", "host\n")
        backing = {h: _backing_device(fake_root / h) for h in ("usr", "opt", "etc")}
        assert backing["opt"] is None
        identities = {
            "alpha": expected_identity(fake_root, fake_root / "etc/extensions/alpha", raw=False),
            "zeta": expected_identity(fake_root, fake_root / "var/lib/extensions/zeta", raw=False),
        }
        before = time.time()
        run.ok("merge")

        origin_usr = _check_metadata(fake_root / "usr", "sysext", ["alpha", "zeta"], backing["usr"])
        origin_opt = _check_metadata(fake_root / "opt", "sysext", ["alpha", "zeta"], None)
        assert read_meta(fake_root / "opt", "backing") is None
        assert origin_usr == origin_opt, "one origin record per class, the same in every hierarchy"
        assert (fake_root / "usr/.systemd-sysext/origin").read_text() == (
            fake_root / "opt/.systemd-sysext/origin"
        ).read_text()
        assert origin_usr["mutable"] == {"mode": "no"}
        assert "mountOptions" not in origin_usr
        assert origin_usr["extensions"] == identities

        origin_etc = _check_metadata(fake_root / "etc", "confext", ["motd"], backing["etc"])
        assert set(origin_etc["extensions"]) == {"motd"}  # type: ignore[arg-type]

        assert stat.S_IMODE(os.stat(fake_root / "usr").st_mode) == stat.S_IMODE(usr_stat_before.st_mode)
        # the merged top carries the newest change among the inputs, all older than the merge;
        # the metadata directory marks the merge
        assert os.stat(fake_root / "usr").st_mtime <= before
        since = os.stat(fake_root / "usr/.systemd-sysext").st_mtime
        assert before - 1 <= since <= time.time() + 1, "the metadata directory's mtime marks the merge"
        # `status` recognises the merge through the same files
        status = json.loads(run.cmd("--root", str(fake_root), "--json=short", "status").stdout)
        rows = {row["hierarchy"]: row for row in status}
        assert rows["/usr"]["extensions"] == ["alpha", "zeta"]
        assert rows["/etc"]["extensions"] == ["motd"]
        run.ok("unmerge")
    finally:
        mountapi.umount2(fake_root / "opt", mountapi.MNT_DETACH)


def test_copied_metadata_is_not_a_merge(run: Runner, fake_root: Path) -> None:
    """A metadata directory whose `dev` does not match is somebody's copy: merge goes ahead."""
    write(fake_root / "usr/.systemd-sysext/extensions", "old\n")
    dev = os.stat(fake_root / "usr").st_dev
    write(fake_root / "usr/.systemd-sysext/dev", f"{os.major(dev)}:{os.minor(dev)}\n")  # not a mount
    add_sysext(fake_root, "tools", {"usr/bin/tool": "x\n"})
    run.ok("merge", "--class=sysext")
    assert (fake_root / "usr/.systemd-sysext/extensions").read_text() == "tools\n"
    assert run("unmerge").returncode == 0
    assert (fake_root / "usr/.systemd-sysext/extensions").read_text() == "old\n"


# --------------------------------------------------------------------------------------------
# Mount flags and the environment variables


@pytest.mark.parametrize(
    "cls, args, present, absent",
    [
        ("sysext", [], {"ro", "nodev"}, {"nosuid", "noexec", "rw"}),
        ("sysext", ["--noexec=yes"], {"ro", "nodev", "noexec"}, {"nosuid", "rw"}),
        ("sysext", ["--noexec=no"], {"ro", "nodev"}, {"nosuid", "noexec", "rw"}),
        ("confext", [], {"ro", "nodev", "nosuid", "noexec"}, {"rw"}),
        ("confext", ["--noexec=no"], {"ro", "nodev", "nosuid"}, {"noexec", "rw"}),
        ("confext", ["--noexec=yes"], {"ro", "nodev", "nosuid", "noexec"}, {"rw"}),
    ],
)
def test_mount_flags(
    run: Runner, fake_root: Path, cls: str, args: list[str], present: set[str], absent: set[str]
) -> None:
    if cls == "sysext":
        ext = add_sysext(fake_root, "tools", {"usr/bin/tool": "#!/bin/sh\n"})
        target, rel = fake_root / "usr", "usr/bin/tool"
    else:
        ext = add_confext(fake_root, "conf", {"etc/hook": "#!/bin/sh\n"})
        target, rel = fake_root / "etc", "etc/hook"
    os.chmod(ext / rel, 0o755)
    run.ok("merge", f"--class={cls}", *args)
    options = vfs_options(top_mount(target))
    assert present <= options, options
    assert not (absent & options), options
    assert os.access(fake_root / rel, os.X_OK) == ("noexec" not in present)
    run.ok("unmerge", f"--class={cls}")


@pytest.mark.parametrize(
    "variable, value, where, expect_super, expect_vfs",
    [
        # (xino=off is the default here and not shown by the kernel; these options are shown)
        ("SYSTEMD_SYSEXT_OVERLAYFS_MOUNT_OPTIONS", "uuid=off", "usr", "uuid=null", None),
        ("SYSTEMD_SYSEXT_OVERLAYFS_MOUNT_OPTIONS", "noatime", "usr", None, "noatime"),
        (
            "SYSTEMD_CONFEXT_OVERLAYFS_MOUNT_OPTIONS",
            "redirect_dir=nofollow",
            "etc",
            "redirect_dir=nofollow",
            None,
        ),
        ("SYSTEMD_CONFEXT_OVERLAYFS_MOUNT_OPTIONS", "noatime,uuid=off", "etc", "uuid=null", "noatime"),
    ],
)
def test_overlay_options_variable(
    run: Runner,
    fake_root: Path,
    variable: str,
    value: str,
    where: str,
    expect_super: Optional[str],
    expect_vfs: Optional[str],
) -> None:
    add_sysext(fake_root, "tools", {"usr/bin/tool": "x\n"})
    add_confext(fake_root, "conf", {"etc/conf": "x\n"})
    run.ok("merge", env={variable: value})
    other = "etc" if where == "usr" else "usr"
    info, other_info = top_mount(fake_root / where), top_mount(fake_root / other)
    if expect_super:
        assert expect_super in info.super_options.split(",")
        assert expect_super not in other_info.super_options.split(",")
    if expect_vfs:
        assert expect_vfs in vfs_options(info)
        assert expect_vfs not in vfs_options(other_info)
    cls, other_cls = ("sysext", "confext") if where == "usr" else ("confext", "sysext")
    origin = json.loads(read_meta(fake_root / where, "origin", cls) or "")
    assert origin["mountOptions"] == value
    assert "mountOptions" not in json.loads(read_meta(fake_root / other, "origin", other_cls) or "")
    run.ok("unmerge")


def test_custom_hierarchies(run: Runner, fake_root: Path) -> None:
    add_sysext(
        fake_root, "tools", {"usr/bin/tool": "x\n", "foo/bar/data": "foo\n", "opt/tools/README": "opt\n"}
    )
    env = {"SYSTEMD_SYSEXT_HIERARCHIES": "/usr:/foo"}
    run.ok("merge", "--class=sysext", env=env)
    assert (fake_root / "foo/bar/data").read_text() == "foo\n"
    assert stat.S_IMODE(os.stat(fake_root / "foo").st_mode) == 0o755
    assert (fake_root / "usr/bin/tool").exists()
    assert not mounts_at(fake_root / "opt"), "/opt is not a configured hierarchy"
    assert not (fake_root / "opt/tools").exists()
    assert read_meta(fake_root / "foo", "extensions") == "tools\n"
    # status and unmerge only know the configured hierarchies
    res = run("unmerge", "--class=sysext")  # without the variable: /foo is not ours to touch
    assert res.returncode == 0, res.stderr
    assert mounts_at(fake_root / "foo")
    run.ok("unmerge", "--class=sysext", env=env)
    assert not mounts_at(fake_root / "foo") and not mounts_at(fake_root / "usr")
    assert (fake_root / "foo").is_dir()


# --------------------------------------------------------------------------------------------
# Shadowing between search directories


@pytest.mark.parametrize(
    "cls, winner, loser",
    [
        ("sysext", "etc/extensions", "var/lib/extensions"),
        ("sysext", "etc/extensions", "run/extensions"),
        ("sysext", "run/extensions", "var/lib/extensions"),
        ("confext", "run/confexts", "var/lib/confexts"),
        ("confext", "var/lib/confexts", "usr/local/lib/confexts"),
    ],
)
def test_shadowing_between_search_dirs(
    run: Runner, fake_root: Path, cls: str, winner: str, loser: str
) -> None:
    add = add_sysext if cls == "sysext" else add_confext
    rel = "usr/share/dup/from" if cls == "sysext" else "etc/dup.conf"
    add(fake_root, "dup", {rel: f"{winner}\n"}, search_dir=winner)
    add(fake_root, "dup", {rel: f"{loser}\n"}, search_dir=loser)
    run.ok("merge", f"--class={cls}")
    assert (fake_root / rel).read_text() == f"{winner}\n"
    hierarchy = fake_root / rel.split("/")[0]
    layers = lower_dirs(top_mount(hierarchy))
    assert pinned_layer(cls, "dup", rel.split("/")[0]) in layers
    origin = json.loads(read_meta(hierarchy, "origin", cls) or "")
    assert origin["extensions"]["dup"]["path"] == f"/{winner}/dup"
    run.ok("unmerge", f"--class={cls}")


# --------------------------------------------------------------------------------------------
# Many extensions

# overlayfs takes at most 500 lower layers; the metadata layer and the host /usr take two.
MAX_WITH_HOST = 498


def test_many_extensions(run: Runner, fake_root: Path) -> None:
    count = MAX_WITH_HOST
    for i in range(count):
        add_sysext(fake_root, f"ext{i}", {f"usr/share/ext{i}/file": f"{i}\n"})
    start = time.monotonic()
    run.ok("merge", "--class=sysext")
    merged = time.monotonic()
    missing = [i for i in range(count) if (fake_root / f"usr/share/ext{i}/file").read_text() != f"{i}\n"]
    assert not missing
    assert len(lower_dirs(top_mount(fake_root / "usr"))) == count + 2
    assert len((read_meta(fake_root / "usr", "extensions") or "").splitlines()) == count
    before_unmerge = time.monotonic()
    run.ok("unmerge")
    done = time.monotonic()
    print(
        f"\n{count} directory extensions: merge {merged - start:.2f} s, "
        f"unmerge {done - before_unmerge:.2f} s"
    )
    assert not mounts_at(fake_root / "usr")


def test_498_extensions_fill_the_overlay(run: Runner, fake_root: Path) -> None:
    """overlayfs stacks at most 500 lower layers; the metadata layer and the host's /usr take two,
    so 498 extensions with /usr content is the most one merge can hold. All of them are merged,
    through the new mount API (one layer per call), far beyond the one-page option limit."""
    count = 498
    for i in range(count):
        add_sysext(fake_root, f"ext{i}", {f"usr/share/ext{i}/file": f"{i}\n"})
    start = time.monotonic()
    run.ok("merge", "--class=sysext")
    print(f"\n{count} directory extensions: merge {time.monotonic() - start:.2f} s")
    assert all((fake_root / f"usr/share/ext{i}/file").read_text() == f"{i}\n" for i in range(count))
    assert len(lower_dirs(top_mount(fake_root / "usr"))) == 500
    t0 = time.monotonic()
    run.ok("unmerge")
    print(f"unmerge {time.monotonic() - t0:.2f} s")


def test_more_layers_than_overlayfs_stacks_fail_whole(run: Runner, fake_root: Path) -> None:
    for i in range(499):
        add_sysext(fake_root, f"ext{i}", {f"usr/share/ext{i}/file": f"{i}\n"})
    before = listing(fake_root / "usr")
    res = run("merge", "--class=sysext")
    assert res.returncode == 1, res.stderr
    assert "overlayfs stacks at most 500 layers" in res.stderr
    assert "merge at most 498 extensions" in res.stderr
    assert not mounts_at(fake_root / "usr") and not mounts_at(fake_root / "opt")
    assert listing(fake_root / "usr") == before


# --------------------------------------------------------------------------------------------
# Submounts


def test_submounts_survive_merge_refresh_unmerge(run: Runner, fake_root: Path, tmp_path: Path) -> None:
    write(tmp_path / "xsrc/data", "bound directory\n")
    write(tmp_path / "machine-id", "0123456789abcdef0123456789abcdef\n")
    (fake_root / "usr/share/x").mkdir()
    write(fake_root / "etc/machine-id", "")
    add_sysext(fake_root, "tools", {"usr/bin/tool": "x\n", "usr/share/x/from-ext": "hidden\n"})
    add_confext(fake_root, "conf", {"etc/conf": "x\n"})
    x, mid = fake_root / "usr/share/x", fake_root / "etc/machine-id"
    mountapi.mount(tmp_path / "xsrc", x, None, mountapi.MS_BIND)
    mountapi.mount(tmp_path / "machine-id", mid, None, mountapi.MS_BIND)

    def check(stage: str, stacked: int) -> None:
        assert (x / "data").read_text() == "bound directory\n", stage
        assert not (x / "from-ext").exists(), f"{stage}: the submount covers the extension's directory"
        assert mid.read_text() == "0123456789abcdef0123456789abcdef\n", stage
        assert mountapi.is_mount_point(x) and mountapi.is_mount_point(mid), stage
        # the original below the hierarchy plus at most one copy inside the live overlay
        assert len(mounts_at(x)) == stacked and len(mounts_at(mid)) == stacked, stage

    try:
        run.ok("merge")
        assert (fake_root / "usr/bin/tool").exists() and (fake_root / "etc/conf").exists()
        check("merge", 2)
        run.ok("refresh", "--always-refresh=yes")  # a real re-merge, not a skip
        assert (fake_root / "usr/bin/tool").exists() and (fake_root / "etc/conf").exists()
        check("refresh", 2)
        run.ok("unmerge")
        assert not (fake_root / "usr/bin/tool").exists()
        check("unmerge", 1)
    finally:
        for path in (mid, x):
            while mounts_at(path):
                mountapi.umount2(path, mountapi.MNT_DETACH)


# --------------------------------------------------------------------------------------------
# Verbs and their refusals


def test_verbs_merge_refresh_unmerge(run: Runner, fake_root: Path) -> None:
    assert run.ok("unmerge") is not None  # nothing merged: fine

    res = run("merge", "--class=sysext")
    assert res.returncode == 0 and "No extensions found." in res.stderr
    assert not mounts_at(fake_root / "usr")

    add_sysext(fake_root, "one", {"usr/share/one/file": "1\n"})
    run.ok("merge", "--class=sysext")
    first = top_mount(fake_root / "usr")

    res = run("merge", "--class=sysext")
    assert res.returncode == 1
    assert "Hierarchy '/usr' is already merged." in res.stderr
    assert len(mounts_at(fake_root / "usr")) == 1, "nothing stacked twice"
    assert top_mount(fake_root / "usr").mount_id == first.mount_id

    add_sysext(fake_root, "two", {"usr/share/two/file": "2\n"})
    run.ok("refresh", "--class=sysext")
    assert (fake_root / "usr/share/two/file").read_text() == "2\n"
    assert (fake_root / "usr/share/one/file").read_text() == "1\n"
    assert read_meta(fake_root / "usr", "extensions") == "one\ntwo\n"
    assert len(mounts_at(fake_root / "usr")) == 1, "refresh replaces, it does not stack"

    run.ok("refresh", "--class=sysext")  # nothing changed: still correct, still one overlay
    assert len(mounts_at(fake_root / "usr")) == 1
    assert read_meta(fake_root / "usr", "extensions") == "one\ntwo\n"

    for name in ("one", "two"):
        for p in sorted((fake_root / "var/lib/extensions" / name).rglob("*"), reverse=True):
            p.rmdir() if p.is_dir() else p.unlink()
        (fake_root / "var/lib/extensions" / name).rmdir()
    run.ok("refresh", "--class=sysext")  # nothing left to merge: refresh unmerges
    assert not mounts_at(fake_root / "usr")
    assert not (fake_root / "usr/share/one").exists()

    run.ok("unmerge")


def test_refresh_without_merge_merges(run: Runner, fake_root: Path) -> None:
    add_sysext(fake_root, "one", {"usr/share/one/file": "1\n"})
    run.ok("refresh", "--class=sysext")
    assert (fake_root / "usr/share/one/file").read_text() == "1\n"
    run.ok("unmerge")
    assert not mounts_at(fake_root / "usr")


# --------------------------------------------------------------------------------------------
# A failure after assembly leaves the target exactly as it was


def _snapshot(root: Path) -> tuple[str, list[object]]:
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        mountinfo = f.read()
    trees: list[object] = [listing(root / h) for h in ("usr", "opt", "etc")]
    return mountinfo, trees


@pytest.mark.parametrize(
    "variable",
    [
        "SYSTEMD_SYSEXT_OVERLAYFS_MOUNT_OPTIONS",  # fails while assembling /usr, the first
        "SYSTEMD_CONFEXT_OVERLAYFS_MOUNT_OPTIONS",  # fails after /usr and /opt were assembled
    ],
)
@pytest.mark.parametrize("verb", ["merge", "refresh"])
def test_failed_assembly_leaves_target_untouched(
    run: Runner, fake_root: Path, tmp_path: Path, variable: str, verb: str
) -> None:
    add_sysext(fake_root, "tools", {"usr/bin/tool": "x\n", "opt/tools/README": "opt\n"})
    add_confext(fake_root, "conf", {"etc/conf": "x\n"})
    have_raw = have_tool("squashfs")
    if have_raw:
        sysext_tree(tmp_path / "raw-src", "squashy", {"usr/share/squashy/file": "raw\n"})
        make_raw("squashfs", tmp_path / "raw-src", fake_root / "var/lib/extensions/squashy.raw")
    if verb == "merge":
        os.rmdir(fake_root / "opt")  # a missing hierarchy must not be created by a failed run
    else:
        run.ok("merge")  # the live merge that must survive the failed refresh
        if have_raw:
            assert (fake_root / "usr/share/squashy/file").read_text() == "raw\n"
    loops_before = loops_backed_below(tmp_path)
    assert loops_before == (1 if have_raw and verb == "refresh" else 0)
    before = _snapshot(fake_root)

    add_sysext(fake_root, "newer", {"usr/share/newer/file": "n\n"})
    res = run(verb, env={variable: "bogus_option"})
    assert res.returncode == 1, res.stderr
    assert "bogus_option" in res.stderr
    after = _snapshot(fake_root)
    assert after[0] == before[0], "mount table changed"
    assert after[1] == before[1], "hierarchy contents changed"
    assert not (fake_root / "usr/share/newer").exists()
    assert (fake_root / "opt").exists() == (verb == "refresh")
    assert loops_settle(tmp_path, loops_before) == loops_before, "loop devices leaked by the failed run"
    workspace = "/run/sysextpy/workspace"
    assert not os.path.exists(workspace) or not os.listdir(workspace), "workspace visible on the host"

    if verb == "refresh":
        run.ok("unmerge")
    assert not mounts_at(fake_root / "usr") and not mounts_at(fake_root / "etc")
    assert loops_settle(tmp_path, 0) == 0


@pytest.mark.parametrize("ending", ["unmerge", "refresh with nothing left"])
def test_submount_made_while_merged_survives_unmerge(
    run: Runner, fake_root: Path, tmp_path: Path, ending: str
) -> None:
    """A mount made on the merged view (e.g. by a service) is put back on the plain hierarchy."""
    write(tmp_path / "ysrc/data", "mounted later\n")
    (fake_root / "usr/share/y").mkdir()
    ext = add_sysext(fake_root, "tools", {"usr/bin/tool": "x\n"})
    y = fake_root / "usr/share/y"
    run.ok("merge", "--class=sysext")
    mountapi.mount(tmp_path / "ysrc", y, None, mountapi.MS_BIND)
    try:
        run.ok("refresh", "--class=sysext", "--always-refresh=yes")
        assert (y / "data").read_text() == "mounted later\n"
        assert len(mounts_at(y)) == 1
        if ending == "unmerge":
            run.ok("unmerge")
        else:
            shutil.rmtree(ext)
            run.ok("refresh", "--class=sysext")
        assert not mounts_at(fake_root / "usr")
        assert (y / "data").read_text() == "mounted later\n"
        assert len(mounts_at(y)) == 1
    finally:
        while mounts_at(y):
            mountapi.umount2(y, mountapi.MNT_DETACH)


# --------------------------------------------------------------------------------------------
# An image the initrd deferred


@pytest.mark.parametrize(
    ("in_initrd", "same_boot", "said"),
    [(True, True, True), (False, True, False), (True, False, False)],
)
def test_the_real_root_says_which_images_the_initrd_deferred(
    run: Runner, fake_root: Path, tmp_path: Path, in_initrd: bool, same_boot: bool, said: bool
) -> None:
    """The initrd's record of this boot lists an entry as deferred: the real root merges the image
    and says why the initrd left it. A record of another run or boot says nothing of this one."""
    from sysextpy.handoff import ClassEntry, HandoffRecord
    from sysextpy.state import boot_id, write_record

    sysext_tree(fake_root / "efi/extensions/esp", "esp", {"usr/lib/esp/file": "from the ESP\n"})
    (fake_root / "var/lib/extensions").mkdir(parents=True)
    (fake_root / "var/lib/extensions/esp").symlink_to("/efi/extensions/esp")
    why = "its source '/efi/extensions/esp' lies on /efi, which the initrd does not mount"
    initrd_record = HandoffRecord(
        boot_id=boot_id() if same_boot else "0" * 32,
        phase="merged",
        tool="sysextpy test",
        verb="refresh",
        root="/sysroot",
        in_initrd=in_initrd,
        started=1,
        classes={
            "sysext": ClassEntry(deferred=[("/var/lib/extensions/esp", why)]),
            "confext": ClassEntry(),
        },
    )
    write_record(run.state, initrd_record)
    err = run.ok("refresh")
    try:
        assert "Using extensions 'esp'." in err
        assert (f"sysext esp: deferred in the initrd: {why}" in err) == said, err
        assert (fake_root / "usr/lib/esp/file").read_text() == "from the ESP\n"
    finally:
        run.ok("unmerge")
