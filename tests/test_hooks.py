# SPDX-License-Identifier: LGPL-2.1-or-later
"""The administrator's hooks (sysextpy/hooks.py): where they are found and which count, `check`
vetoing one image, `generate` adding a layer, the timeout, that a confirming refresh runs none, and
that a hook runs chrooted in a read-only view of the root with the root's own tools.

The lookup is tested on plain directories; everything else with real mounts in the test session's
private mount namespace, against fake roots, with hooks that are shell scripts: each fake root gets
a shell and the tools its hooks call (merge_support.equip_root), as a real root has them.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional

import pytest

from sysextpy.hooks import HOOK_DIRS, find_hooks
from sysextpy.model import ImageClass
from sysextpy.view import LiveView
from tests.conftest import RunSysextpy, require_tools
from tests.merge_support import (
    HOST_RELEASE,
    Runner,
    add_confext,
    add_sysext,
    read_meta,
    write,
)
from tests.root_tools import equip_root

SKIPPED = "Skipping extension refresh because no change was found"
# What the hooks below call, copied from this machine into each fake root.
HOOK_TOOLS = ("sh", "touch", "ls", "mkdir", "mktemp", "cp", "rm", "basename", "sleep", "cat")
NO_HIERARCHIES = {ImageClass.SYSEXT: ("/usr", "/opt"), ImageClass.CONFEXT: ("/etc",)}


def hook(root: Path, where: str, name: str, body: str) -> Path:
    """An executable shell script as a hook of `root`, in the hooks.d directory `where`."""
    return write(root / where.lstrip("/") / name, "#!/bin/sh\n" + body, mode=0o755)


# --------------------------------------------------------------------------------------------------
# Which hooks count (no mounts)


def test_lookup_order_override_mask_and_what_is_no_hook(tmp_path: Path) -> None:
    etc, run, local, lib = HOOK_DIRS
    hook(tmp_path, lib, "20-b.hook", "exit 0\n")
    hook(tmp_path, lib, "10-a.hook", "echo lib\n")
    hook(tmp_path, etc, "10-a.hook", "echo etc\n")  # overrides lib's
    hook(tmp_path, local, "30-c.hook", "exit 0\n")
    (tmp_path / run.lstrip("/")).mkdir(parents=True)
    (tmp_path / run.lstrip("/") / "30-c.hook").symlink_to("/dev/null")  # masks local's
    write(tmp_path / lib.lstrip("/") / "40-d.hook", "#!/bin/sh\n", mode=0o644)  # not executable
    write(tmp_path / lib.lstrip("/") / "README", "not a hook\n")
    write(tmp_path / etc.lstrip("/") / "50-e.hook", "", mode=0o755)  # empty: masks
    # a link out of the root is resolved inside it
    (tmp_path / "usr/bin").mkdir(parents=True)
    write(tmp_path / "usr/bin/tool", "#!/bin/sh\nexit 0\n", mode=0o755)
    (tmp_path / etc.lstrip("/") / "60-f.hook").symlink_to("/usr/bin/tool")

    found = find_hooks(LiveView(os.fspath(tmp_path), {}), NO_HIERARCHIES)

    assert [h.name for h in found.hooks] == ["10-a", "20-b", "60-f"]
    first = found.hooks[0]
    assert first.inner == f"{etc}/10-a.hook"
    assert first.path == os.fspath(tmp_path / etc.lstrip("/") / "10-a.hook")
    assert found.hooks[2].path == os.fspath(tmp_path / "usr/bin/tool")
    assert first.sha256 == hashlib.sha256(b"#!/bin/sh\necho etc\n").hexdigest()
    why = dict(found.ignored)
    assert why[f"{lib}/10-a.hook"] == f"overridden by {etc}/10-a.hook"
    assert why[f"{run}/30-c.hook"] == "masked (link to /dev/null)"
    assert why[f"{local}/30-c.hook"] == f"overridden by {run}/30-c.hook"
    assert why[f"{lib}/40-d.hook"] == "not executable"
    assert why[f"{etc}/50-e.hook"] == "masked (empty file)"
    assert f"{lib}/README" not in why


def test_timeout_from_the_environment(tmp_path: Path) -> None:
    assert find_hooks(LiveView(os.fspath(tmp_path), {}), NO_HIERARCHIES).timeout == 30
    env = {"SYSEXTPY_HOOK_TIMEOUT": "2.5"}
    assert find_hooks(LiveView(os.fspath(tmp_path), env), NO_HIERARCHIES).timeout == 2.5
    for bad in ("0", "-1", "soon", "nan", "inf"):
        env = {"SYSEXTPY_HOOK_TIMEOUT": bad}
        assert find_hooks(LiveView(os.fspath(tmp_path), env), NO_HIERARCHIES).timeout == 30


# --------------------------------------------------------------------------------------------------
# Real mounts


@pytest.fixture
def world(mountns: None, fake_root: Path, tmp_path: Path, sysextpy_cmd: RunSysextpy) -> Iterator[Runner]:
    equip_root(fake_root, *HOOK_TOOLS)
    run = Runner(sysextpy_cmd, fake_root, tmp_path / "state.json")
    yield run
    run("unmerge")


def record(run: Runner) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(run.state.read_text())
    return data


def hook_runs(run: Runner) -> list[tuple[str, str, str, Optional[int]]]:
    return [(h["hook"], h["verb"], h["target"], h["status"]) for h in record(run)["hooks"]]


VETO = """\
[ "$1" = check ] || exit 0
[ "$SYSEXTPY_CLASS" = "$2" ] && [ "$SYSEXTPY_NAME" = "$3" ] || { echo "bad environment" >&2; exit 4; }
release=usr/lib/extension-release.d
[ "$2" = confext ] && release=etc/extension-release.d
[ -f "$4/$release/extension-release.$3" ] || { echo "no tree" >&2; exit 5; }
if touch "$4/written" 2>/dev/null; then echo "the tree is writable" >&2; exit 6; fi
if [ "$SYSEXTPY_RELEASE_VARIANT" = bad ]; then
  echo "$3 is not for this machine" >&2
  echo "second line" >&2
  exit 1
fi
"""


def test_a_check_hook_vetoes_one_of_three(world: Runner, fake_root: Path) -> None:
    for name in ("alpha", "beta", "gamma"):
        add_sysext(fake_root, name, {f"usr/share/{name}/data": f"{name}\n"})
    # beta says it is bad in its release data, which the hook is given in its environment
    write(
        fake_root / "var/lib/extensions/beta/usr/lib/extension-release.d/extension-release.beta",
        HOST_RELEASE + "VARIANT=bad\n",
    )
    add_confext(fake_root, "conf", {"etc/conf.d/setting": "1\n"})
    hook(fake_root, HOOK_DIRS[0], "50-veto.hook", VETO)

    res = world("merge")

    assert res.returncode == 3, res.stderr
    assert "sysext beta: rejected (hook 50-veto: beta is not for this machine)" in res.stderr
    usr = fake_root / "usr/share"
    assert (usr / "alpha/data").read_text() == "alpha\n"
    assert (usr / "gamma/data").read_text() == "gamma\n"
    assert not (usr / "beta").exists()
    assert read_meta(fake_root / "usr", "extensions") == "alpha\ngamma\n"
    assert hook_runs(world) == [
        ("50-veto", "check", "sysext:alpha", 0),
        ("50-veto", "check", "sysext:beta", 1),
        ("50-veto", "check", "sysext:gamma", 0),
        ("50-veto", "check", "confext:conf", 0),
        ("50-veto", "generate", "sysext:/usr", 0),  # the same hook, asked to generate: nothing
        ("50-veto", "generate", "confext:/etc", 0),
    ]
    assert record(world)["hooks"][1]["message"] == "beta is not for this machine"
    rejected = record(world)["classes"]["sysext"]["rejected"]
    assert rejected == [{"name": "beta", "reason": "hook 50-veto: beta is not for this machine"}]

    table = world("plan").stdout
    footer = "hooks: check each image, then generate each hierarchy"
    assert f"{footer}: 50-veto ({HOOK_DIRS[0]}/50-veto.hook)" in table
    plan = world("plan", "--json=short")
    assert plan.returncode == 3, plan.stderr
    shown = json.loads(plan.stdout)
    assert [h["name"] for h in shown["hooks"]["hooks"]] == ["50-veto"]
    assert [(c["target"], c["status"]) for c in shown["hooks"]["checks"]] == [
        ("sysext:alpha", 0),
        ("sysext:beta", 1),
        ("sysext:gamma", 0),
        ("confext:conf", 0),
    ]
    verdicts = {r["name"]: r["verdict"] for r in shown["images"]}
    assert verdicts == {"alpha": "merge", "beta": "rejected", "gamma": "merge", "conf": "merge"}

    # /etc is now a confext merge, mounted noexec: the hook found there still runs (as a copy)
    add_sysext(fake_root, "delta", {"usr/share/delta/data": "delta\n"})
    res = world("refresh")
    assert res.returncode == 3, res.stderr
    assert (usr / "delta/data").exists() and not (usr / "beta").exists()
    assert ("50-veto", "check", "sysext:beta", 1) in hook_runs(world)


def test_a_masked_hook_runs_not(world: Runner, fake_root: Path) -> None:
    add_sysext(fake_root, "alpha", {"usr/share/alpha/data": "alpha\n"})
    hook(fake_root, HOOK_DIRS[3], "50-veto.hook", 'echo "vetoed" >&2; exit 1\n')
    (fake_root / HOOK_DIRS[0].lstrip("/")).mkdir(parents=True)
    (fake_root / HOOK_DIRS[0].lstrip("/") / "50-veto.hook").symlink_to("/dev/null")

    world.ok("merge")

    assert (fake_root / "usr/share/alpha/data").read_text() == "alpha\n"
    assert hook_runs(world) == []
    shown = json.loads(world("plan", "--json=short").stdout)
    assert [f"{HOOK_DIRS[0]}/50-veto.hook", "masked (link to /dev/null)"] in shown["hooks"]["ignored"]
    assert shown["hooks"]["hooks"] == [] and shown["hooks"]["checks"] == []
    table = world("plan").stdout
    assert f"hook {HOOK_DIRS[0]}/50-veto.hook ignored: masked (link to /dev/null)" in table
    assert f"hook {HOOK_DIRS[3]}/50-veto.hook ignored: overridden by {HOOK_DIRS[0]}/50-veto.hook" in table


def test_a_hook_shipped_by_an_extension_is_ignored(world: Runner, fake_root: Path, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    body = f'touch "{marker}"\n[ "$1" = generate ] && echo evil > "$5/evil"\nexit 0\n'
    add_sysext(fake_root, "shipper", {"usr/lib/sysextpy/hooks.d/10-evil.hook": "#!/bin/sh\n" + body})
    os.chmod(fake_root / "var/lib/extensions/shipper/usr/lib/sysextpy/hooks.d/10-evil.hook", 0o755)
    add_confext(fake_root, "confshipper", {"etc/sysextpy/hooks.d/20-evil.hook": "#!/bin/sh\n" + body})
    os.chmod(fake_root / "var/lib/confexts/confshipper/etc/sysextpy/hooks.d/20-evil.hook", 0o755)
    world.ok("merge")
    # merged: the hooks are visible where an administrator's would be (a confext is mounted
    # noexec, which does not change the file's mode)
    for where in ("usr/lib/sysextpy/hooks.d/10-evil.hook", "etc/sysextpy/hooks.d/20-evil.hook"):
        assert (fake_root / where).stat().st_mode & 0o111

    add_sysext(fake_root, "more", {"usr/share/more/data": "more\n"})
    res = world("refresh")

    assert res.returncode == 0, res.stderr
    assert "sysext: refreshing" in res.stderr
    assert "Hook /etc/sysextpy/hooks.d/20-evil.hook ignored: shipped by confext confshipper" in res.stderr
    assert (fake_root / "usr/share/more/data").exists()
    assert not marker.exists()
    assert not (fake_root / "usr/evil").exists() and not (fake_root / "etc/evil").exists()
    assert hook_runs(world) == []
    shown = json.loads(world("plan", "--json=short").stdout)
    ignored = dict(map(tuple, shown["hooks"]["ignored"]))
    assert ignored["/usr/lib/sysextpy/hooks.d/10-evil.hook"] == "shipped by sysext shipper"


GENERATE = """\
[ "$1" = generate ] || exit 0
if touch "$4/written" 2>/dev/null; then echo "merged tree writable" >&2; exit 6; fi
ls "$4/share" > "$5/generated-VERSION" 2>/dev/null || echo none > "$5/generated-VERSION"
"""


def test_generate_changes_and_the_confirming_refresh(world: Runner, fake_root: Path) -> None:
    add_sysext(fake_root, "alpha", {"usr/share/alpha/data": "alpha\n", "opt/alpha/data": "a\n"})
    add_sysext(fake_root, "beta", {"usr/share/beta/data": "beta\n"})
    write(fake_root / "usr/share/base/data", "base\n")
    hook(fake_root, HOOK_DIRS[1], "50-gen.hook", GENERATE.replace("VERSION", "one"))

    world.ok("merge")

    # what the hook saw of /usr: the host's and both extensions' directories, merged
    assert (fake_root / "usr/generated-one").read_text() == "alpha\nbase\nbeta\n"
    assert (fake_root / "opt/generated-one").read_text() == "none\n"
    assert hook_runs(world) == [
        ("50-gen", "check", "sysext:alpha", 0),
        ("50-gen", "check", "sysext:beta", 0),
        ("50-gen", "generate", "sysext:/usr", 0),
        ("50-gen", "generate", "sysext:/opt", 0),
    ]
    # above the extensions, below the metadata: read-only, and the metadata still ours
    assert read_meta(fake_root / "usr", "extensions") == "alpha\nbeta\n"
    with pytest.raises(OSError):
        (fake_root / "usr/generated-one").write_text("x")

    res = world("refresh")
    assert SKIPPED in res.stderr, res.stderr
    assert hook_runs(world) == []

    hook(fake_root, HOOK_DIRS[1], "50-gen.hook", GENERATE.replace("VERSION", "two"))
    res = world("refresh")
    assert res.returncode == 0 and "sysext: refreshing" in res.stderr, res.stderr
    assert "hooks changed" in res.stderr
    assert (fake_root / "usr/generated-two").exists() and not (fake_root / "usr/generated-one").exists()

    os.unlink(fake_root / HOOK_DIRS[1].lstrip("/") / "50-gen.hook")
    res = world("refresh")
    assert res.returncode == 0 and "sysext: refreshing" in res.stderr, res.stderr
    assert not (fake_root / "usr/generated-two").exists()
    assert (fake_root / "usr/share/beta/data").exists()


def test_generate_over_a_mutable_merge(world: Runner, fake_root: Path) -> None:
    """The preview shows the upper layer too, and the merge that follows uses it as its upper."""
    add_sysext(fake_root, "alpha", {"usr/share/alpha/data": "alpha\n"})
    (fake_root / "var/lib/extensions.mutable/usr/share/local").mkdir(parents=True)
    hook(fake_root, HOOK_DIRS[1], "50-gen.hook", GENERATE.replace("VERSION", "one"))

    world.ok("merge", "--mutable=yes")

    assert (fake_root / "usr/generated-one").read_text() == "alpha\nlocal\n"
    write(fake_root / "usr/share/written", "into the upper layer\n")
    assert (fake_root / "var/lib/extensions.mutable/usr/share/written").exists()


def test_a_hanging_hook_is_killed_and_the_old_merge_stays(world: Runner, fake_root: Path) -> None:
    add_sysext(fake_root, "alpha", {"usr/share/alpha/data": "alpha\n"})
    world.ok("merge")
    add_sysext(fake_root, "beta", {"usr/share/beta/data": "beta\n"})
    # the shell waits for a child that holds its output open: the whole group is killed
    hook(fake_root, HOOK_DIRS[0], "50-hang.hook", '[ "$1" = generate ] || exit 0\nsleep 600 &\nwait\n')
    env = {"SYSEXTPY_HOOK_TIMEOUT": "1"}

    t0 = time.monotonic()
    res = world("refresh", env=env)
    took = time.monotonic() - t0

    assert res.returncode == 1, res.stderr
    assert took < 30, took
    assert "the new merge of '/usr' was not built: hook 50-hang: killed after 1 s" in res.stderr
    assert (fake_root / "usr/share/alpha/data").read_text() == "alpha\n"
    assert not (fake_root / "usr/share/beta").exists()
    rec = record(world)
    assert rec["phase"] == "failed"
    assert rec["classes"]["sysext"]["fingerprint"] is None
    assert rec["classes"]["sysext"]["hierarchies"]["/usr"]["result"] == "failed"
    assert [(h["target"], h["status"]) for h in rec["hooks"]] == [
        ("sysext:alpha", 0),
        ("sysext:beta", 0),
        ("sysext:/usr", None),
    ]
    gone = subprocess.run(["pgrep", "-f", "sleep 600"], capture_output=True, text=True)
    assert gone.stdout == "", gone.stdout

    # the next refresh tries again
    os.unlink(fake_root / HOOK_DIRS[0].lstrip("/") / "50-hang.hook")
    res = world("refresh", env=env)
    assert res.returncode == 0 and "sysext: refreshing" in res.stderr, res.stderr
    assert (fake_root / "usr/share/beta/data").read_text() == "beta\n"


# --------------------------------------------------------------------------------------------------
# Chrooted into a read-only view of the root

ROOT_TOOL = "usr/local/bin/hooktest-tool"  # in the root only, found on the hook's PATH
ROOT_ONLY = """\
command -v hooktest-tool >/dev/null || { echo "not in the root" >&2; exit 7; }
case "$1" in
check) hooktest-tool "$3" "$4" || exit 1 ;;
generate) hooktest-tool "$3" "$4" > "$5/by-the-root-tool" ;;
esac
"""


def test_a_hook_runs_the_tools_of_the_root(world: Runner, fake_root: Path) -> None:
    """The tool a hook calls exists only in the root being merged: the hook runs in the root."""
    add_sysext(fake_root, "alpha", {"usr/share/alpha/data": "alpha\n"})
    add_sysext(fake_root, "refused", {"usr/share/refused/data": "refused\n"})
    write(
        fake_root / ROOT_TOOL,
        '#!/bin/sh\n[ "$1" != refused ] || { echo "the root tool refuses $1" >&2; exit 1; }\n'
        'echo "root tool: $1 $2"; cat "$2/share/alpha/data" 2>/dev/null || ls "$2/usr/share"\n',
        mode=0o755,
    )
    assert shutil.which("hooktest-tool") is None and not (Path("/") / ROOT_TOOL).exists()
    hook(fake_root, HOOK_DIRS[0], "50-root.hook", ROOT_ONLY)

    res = world("merge")

    assert res.returncode == 3, res.stderr
    assert "sysext refused: rejected (hook 50-root: the root tool refuses refused)" in res.stderr
    assert (fake_root / "usr/share/alpha/data").exists() and not (fake_root / "usr/share/refused").exists()
    # check got the image at a fixed place inside the view; generate the merged /usr in place, at
    # /usr itself, so that the merged file is read by its absolute path
    assert (fake_root / "usr/by-the-root-tool").read_text() == "root tool: /usr /usr\nalpha\n"
    assert hook_runs(world)[:2] == [
        ("50-root", "check", "sysext:alpha", 0),
        ("50-root", "check", "sysext:refused", 1),
    ]


def test_a_hook_whose_interpreter_the_root_lacks(world: Runner, fake_root: Path) -> None:
    """The host has python3, the root has not: the hook cannot run there, and says why."""
    assert shutil.which("python3") is not None and not (fake_root / "usr/bin/python3").exists()
    add_sysext(fake_root, "alpha", {"usr/share/alpha/data": "alpha\n"})
    write(fake_root / HOOK_DIRS[0].lstrip("/") / "50-py.hook", "#!/usr/bin/python3\n", mode=0o755)

    res = world("merge")

    assert res.returncode == 3, res.stderr
    why = (
        "hook 50-py: '/run/sysextpy/hooks/000-50-py.hook' cannot be started: it, or the interpreter "
        "its first line names, is not in the root it runs in"
    )
    assert f"sysext alpha: rejected ({why})" in res.stderr
    assert not (fake_root / "usr/share/alpha").exists()
    assert hook_runs(world) == [("50-py", "check", "sysext:alpha", None)]


def test_a_root_without_run_cannot_run_hooks(world: Runner, fake_root: Path) -> None:
    add_sysext(fake_root, "alpha", {"usr/share/alpha/data": "alpha\n"})
    hook(fake_root, HOOK_DIRS[0], "50-any.hook", "exit 0\n")
    (fake_root / "run").rmdir()

    res = world("merge")

    assert res.returncode == 1, res.stderr
    assert f"{str(fake_root)!r} has no directory /run, where hooks are shown what they work on" in res.stderr
    assert not (fake_root / "usr/share/alpha").exists()


WRITES = """\
[ "$1" = generate ] && [ "$3" = /usr ] || exit 0
for path in /usr/written /etc/written /var/written /srv/below/written /written /run/written \\
        "$4/share/written" /tmp/written "$5/written"; do
    if touch "$path" 2>/dev/null; then echo "$path" >> "$5/writable"; fi
done
echo "$4 $5 $0" > "$5/where"
"""


def test_the_view_a_hook_runs_in_is_read_only(world: Runner, fake_root: Path) -> None:
    """Only /tmp and the output directory can be written; the root, what is mounted below it and
    the merged tree cannot."""
    add_sysext(fake_root, "alpha", {"usr/share/alpha/data": "alpha\n"})
    for sub in ("var", "srv/below"):
        (fake_root / sub).mkdir(parents=True, exist_ok=True)
    # a file system of its own below the root: read-only in the view too
    below = fake_root / "srv/below"
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", os.fspath(below)], check=True)
    try:
        hook(fake_root, HOOK_DIRS[0], "50-writes.hook", WRITES)
        world.ok("merge")
        assert not (below / "written").exists()
    finally:
        subprocess.run(["umount", os.fspath(below)], check=True)

    generated = fake_root / "usr"
    assert (generated / "writable").read_text().split() == ["/tmp/written", "/run/sysextpy/out/written"]
    assert (
        generated / "where"
    ).read_text() == "/usr /run/sysextpy/out /run/sysextpy/hooks/000-50-writes.hook\n"
    for path in ("written", "etc/written", "var/written", "run/written", "usr/share/written"):
        assert not (fake_root / path).exists(), path
    assert not (Path("/tmp") / "written").exists()


# --------------------------------------------------------------------------------------------------
# depmod over modules of two extensions

MODULE_A = """\
int hooktest_a_value(void) { return 1; }
static const char ksym[] __attribute__((section("__ksymtab_strings"), used)) = "hooktest_a_value";
static const char info[] __attribute__((section(".modinfo"), used)) = "license=GPL\\0name=hooka";
"""
MODULE_B = """\
extern int hooktest_a_value(void);
int hooktest_b(void) { return hooktest_a_value() + 1; }
static const char info[] __attribute__((section(".modinfo"), used)) = "license=GPL\\0name=hookb";
"""
DEPMOD = """\
set -e
[ "$1" = generate ] && [ "$3" = /usr ] || exit 0
for dir in "$4"/lib/modules/*/; do
  [ -d "$dir" ] || continue
  k=$(basename "$dir")
  tmp=$(mktemp -d)
  mkdir -p "$tmp/lib/modules"
  cp -rs "$4/lib/modules/$k" "$tmp/lib/modules/"
  depmod -b "$tmp" "$k" 2>/dev/null
  mkdir -p "$5/lib/modules/$k"
  cp "$tmp/lib/modules/$k"/modules.dep "$tmp/lib/modules/$k"/modules.symbols "$5/lib/modules/$k/"
  rm -rf "$tmp"
done
"""


def _module(work: Path, name: str, source: str) -> bytes:
    """A relocatable ELF object as depmod reads a kernel module: its .modinfo, the symbols it
    exports (__ksymtab_strings) and those it needs (undefined)."""
    src = work / f"{name}.c"
    src.write_text(source)
    subprocess.run(["gcc", "-c", "-O2", "-o", os.fspath(work / f"{name}.ko"), os.fspath(src)], check=True)
    return (work / f"{name}.ko").read_bytes()


@pytest.mark.tools("depmod", "gcc")
def test_generate_runs_depmod_over_modules_of_two_extensions(
    world: Runner, fake_root: Path, tmp_path: Path
) -> None:
    require_tools("depmod", "gcc")
    equip_root(fake_root, "depmod")
    kernel = platform.release()
    work = tmp_path / "modules"
    work.mkdir()
    extra = f"usr/lib/modules/{kernel}/extra"
    for ext, name, source in (("mod-a", "hooka", MODULE_A), ("mod-b", "hookb", MODULE_B)):
        tree = add_sysext(fake_root, ext, {})
        (tree / extra).mkdir(parents=True)
        (tree / extra / f"{name}.ko").write_bytes(_module(work, name, source))
    hook(fake_root, HOOK_DIRS[0], "50-depmod.hook", DEPMOD)

    world.ok("merge")

    modules = fake_root / f"usr/lib/modules/{kernel}"
    # hookb needs a symbol only hooka exports: depmod saw both extensions' modules at once
    deps = dict(line.split(":", 1) for line in (modules / "modules.dep").read_text().splitlines())
    resolved = {k: v.split() for k, v in deps.items()}
    assert resolved == {"extra/hookb.ko": ["extra/hooka.ko"], "extra/hooka.ko": []}
    assert "alias symbol:hooktest_a_value hooka" in (modules / "modules.symbols").read_text()
    assert (modules / "extra/hooka.ko").exists() and (modules / "extra/hookb.ko").exists()
    generated = [r for r in hook_runs(world) if r[1] == "generate"]
    assert generated == [("50-depmod", "generate", "sysext:/usr", 0)]


# --------------------------------------------------------------------------------------------------
# The time stamp on a merge's top


def test_the_top_carries_the_newest_change_among_the_inputs(world: Runner, fake_root: Path) -> None:
    add_sysext(fake_root, "alpha", {"usr/share/alpha/data": "alpha\n"})
    beta = add_sysext(fake_root, "beta", {"usr/share/beta/data": "beta\n"})
    hook(fake_root, HOOK_DIRS[1], "50-gen.hook", GENERATE.replace("VERSION", "one"))
    time.sleep(0.02)
    last = write(beta / "usr/share/beta/late", "written last\n")

    def top() -> int:
        return os.stat(fake_root / "usr").st_mtime_ns

    world.ok("merge")
    assert top() == last.stat().st_ctime_ns

    # merged again with nothing changed (a forced refresh, as every boot without a record):
    # ConditionNeedsUpdate= has nothing new to see
    time.sleep(0.02)
    world.ok("refresh", "--always-refresh=yes")
    assert top() == last.stat().st_ctime_ns

    time.sleep(0.02)
    write(last, "edited\n")
    world.ok("refresh")
    assert top() == last.stat().st_ctime_ns

    time.sleep(0.02)
    hook(fake_root, HOOK_DIRS[1], "50-gen.hook", GENERATE.replace("VERSION", "two"))
    world.ok("refresh")
    assert top() == (fake_root / HOOK_DIRS[1].lstrip("/") / "50-gen.hook").stat().st_ctime_ns

    # an extension removed: its search directory changed
    time.sleep(0.02)
    subprocess.run(["rm", "-rf", os.fspath(beta)], check=True)
    world.ok("refresh")
    assert top() == (fake_root / "var/lib/extensions").stat().st_ctime_ns
