# SPDX-License-Identifier: LGPL-2.1-or-later
"""The administrator's hooks on the boot path: run by the initrd's merge, inside the real root.

One boot of the host guest. The real root's /etc/sysextpy/hooks.d holds a `check` hook that refuses
an extension built for another kernel (its release data says which) and a `generate` hook that runs
`depmod` over the merged /usr. A squashfs sysext ships a kernel module of the guest's kernel that
the root itself does not have (dummy); another sysext says it is for another kernel. The initrd
merges: the hooks run chrooted into /sysroot with the root's tools (its shell, its depmod; the
initrd has no mktemp at all), the second sysext is refused by the hook, and the generated
modules.dep lies over the merged /usr. After switch-root the real root confirms that merge without
a remount or a reload, and `modprobe dummy` loads the module from the sysext. At the end, `sysextpy
plan` in the real root runs the check hooks once more, chrooted into / this time.
"""

from __future__ import annotations

import json
import os
from typing import Any

import pytest

from . import harness
from .conftest import REPORT_SECTIONS, MakeGuest
from .test_boot import EARLY, STATE, basic_checks, merged, record_of, reloads_after_switch_root

pytestmark = pytest.mark.e2e

MODULE = "dummy"  # a network driver nothing in the guest loads by itself, and that needs no other
RELEASE_KEY = "E2E_KERNEL"  # the kernel an extension is built for, in its release data
CHECK_HOOK = f"""#!/bin/sh
# Refuse an extension built for another kernel than the one that boots, or that lacks its modules.
[ "$1" = check ] || exit 0
want=${{SYSEXTPY_RELEASE_{RELEASE_KEY}:-}}
[ -n "$want" ] || exit 0
if [ "$want" != "$(uname -r)" ]; then
    echo "$3 is built for kernel $want, not $(uname -r)" >&2
    exit 1
fi
[ -d "$4/usr/lib/modules/$want" ] || {{ echo "$3 ships no modules for $want" >&2; exit 1; }}
"""
# depmod (kmod 30) has no output directory: it indexes a tree of links to the merged modules, and
# what it wrote (not what the links lead to) becomes the new layer.
DEPMOD_HOOK = """#!/bin/sh
# modules.dep and the other indexes over the modules of the root and of every merged sysext.
set -e
[ "$1" = generate ] && [ "$3" = /usr ] || exit 0
k=$(uname -r)
[ -d "$4/lib/modules/$k" ] || exit 0
tmp=$(mktemp -d)
mkdir -p "$tmp/lib/modules"
cp -rs "$4/lib/modules/$k" "$tmp/lib/modules/"
depmod -b "$tmp" "$k"
mkdir -p "$5/lib/modules/$k"
for f in "$tmp/lib/modules/$k"/modules.*; do
    [ -L "$f" ] || cp "$f" "$5/lib/modules/$k/"
done
rm -rf "$tmp"
mkdir -p "$5/share/e2e-hooks"
initrd=no
[ ! -e /etc/initrd-release ] || initrd=yes
echo "sh=$(readlink -f /bin/sh) initrd-release=$initrd" > "$5/share/e2e-hooks/seen"
"""
SEEN = "/usr/share/e2e-hooks/seen"


def _hook_runs(record: dict[str, Any]) -> list[tuple[str, str, str, Any]]:
    return [(h["hook"], h["verb"], h["target"], h["status"]) for h in record.get("hooks", [])]


def test_hooks_run_in_the_real_root_during_the_initrd_merge(make_guest: MakeGuest) -> None:
    guest = make_guest("hooks")
    kernel = guest.env.kernel
    kver = kernel.kver
    # The module and what it needs: nothing, and none of it among what the root carries.
    (module_rel,) = harness.module_closure(kernel, [MODULE])
    assert module_rel not in harness.module_closure(kernel, harness.GUEST_MODULES)
    suffix = os.path.basename(module_rel)[len(MODULE) :]  # .ko, or .ko.xz on kernels that compress
    shipped = f"usr/lib/modules/{kver}/extra/{MODULE}{suffix}"
    guest.add_squashfs_sysext(
        "e2e-hooks-mod",
        {shipped: (kernel.moddir / module_rel).read_bytes(), "usr/lib/e2e/mod.txt": "mod\n"},
        release_extra={RELEASE_KEY: kver},
    )
    guest.add_dir_sysext(
        "e2e-hooks-other", {"usr/lib/e2e/other.txt": "other\n"}, release_extra={RELEASE_KEY: "0.0.0-other"}
    )
    guest.add_files(
        {
            "/etc/sysextpy/hooks.d/40-kernel.hook": CHECK_HOOK,
            "/etc/sysextpy/hooks.d/50-depmod.hook": DEPMOD_HOOK,
        }
    )
    for name in ("40-kernel.hook", "50-depmod.hook"):
        os.chmod(guest.host_path(f"/etc/sysextpy/hooks.d/{name}"), 0o755)
    guest.add_read_probe("early", [STATE, "/proc/self/mountinfo"], EARLY)
    modules_dep = f"/usr/lib/modules/{kver}/modules.dep"
    guest.report_paths += [modules_dep, SEEN, "/usr/lib/e2e/mod.txt", "/usr/lib/e2e/other.txt"]
    guest.report_commands.update(
        {
            "modprobe": ["modprobe", "-v", MODULE],
            "lsmod": ["lsmod"],
            "modinfo": ["modinfo", "-n", MODULE],
            # the same check hooks, run by the real root itself (--root=/), changing nothing
            "plan": ["sysextpy", "plan", "--json=short"],
        }
    )
    result = guest.boot()
    # The refused extension makes both runs "partial" (exit status 3), nothing else may fail.
    report = basic_checks(result, partial=True)

    with result.explain():
        # The root's own modules.dep (as the harness made it, before the boot) lacks the module:
        # only the generated layer can tell modprobe where it is.
        base_dep = (guest.tree / modules_dep.lstrip("/")).read_text()
        assert MODULE not in base_dep

        initrd = record_of(result.probe_text("early", STATE))
        assert initrd["inInitrd"] is True and initrd["phase"] == "merged", initrd
        assert merged(initrd, "sysext") == ["e2e-hooks-mod"], initrd["classes"]["sysext"]
        rejected = {r["name"]: r["reason"] for r in initrd["classes"]["sysext"]["rejected"]}
        assert rejected == {
            "e2e-hooks-other": f"hook 40-kernel: e2e-hooks-other is built for kernel 0.0.0-other, not {kver}"
        }, rejected
        # each image to each hook until one refuses; the generate hooks over the merged /usr
        assert _hook_runs(initrd) == [
            ("40-kernel", "check", "sysext:e2e-hooks-mod", 0),
            ("50-depmod", "check", "sysext:e2e-hooks-mod", 0),
            ("40-kernel", "check", "sysext:e2e-hooks-other", 1),
            ("40-kernel", "generate", "sysext:/usr", 0),
            ("50-depmod", "generate", "sysext:/usr", 0),
        ], initrd["hooks"]
        # run with the real root's shell (the initrd's is bash), not in the initrd
        assert result.path_text(SEEN) == "sh=/usr/bin/dash initrd-release=no\n"

        # The real root confirmed the initrd's merge: no hook ran, nothing remounted or reloaded.
        final = report["state"]
        assert final["inInitrd"] is False, final
        assert final.get("confirmedBy") == "observations", final.get("quickDeclined")
        assert final["classes"]["sysext"]["hierarchies"]["/usr"]["result"] == "unchanged", final
        assert _hook_runs(final) == []
        assert final["reload"]["done"] is False
        assert reloads_after_switch_root(result) == []
        before = harness.top_mounts(
            harness.parse_mountinfo(result.probe_text("early", "/proc/self/mountinfo") or "")
        )
        after = harness.top_mounts(report["mounts"])
        assert before["/usr"]["fstype"] == "overlay", before["/usr"]
        assert after["/usr"]["id"] == before["/usr"]["id"], (before["/usr"], after["/usr"])

        # What merged: the module's sysext, the generated index; not the refused one.
        assert result.path_text("/usr/lib/e2e/mod.txt") == "mod\n"
        assert result.path_text("/usr/lib/e2e/other.txt") is None
        dep = result.path_text(modules_dep) or ""
        assert f"extra/{MODULE}{suffix}:" in dep.splitlines(), dep
        # ... and the kernel loads the module from it.
        modprobe = result.command("modprobe")
        assert modprobe["returncode"] == 0, modprobe
        assert result.command("modinfo")["stdout"].strip() in (
            f"/lib/modules/{kver}/extra/{MODULE}{suffix}",
            f"/usr/lib/modules/{kver}/extra/{MODULE}{suffix}",
        ), result.command("modinfo")
        loaded = [line.split()[0] for line in result.command("lsmod")["stdout"].splitlines()[1:]]
        assert MODULE in loaded, loaded

        # After switch-root, with / as the root, the hooks run chrooted into / as they ran in
        # /sysroot, and come to the same verdicts.
        plan = result.command("plan")
        assert plan["returncode"] == 3, plan
        checks = [
            (c["hook"], c["target"], c["status"]) for c in json.loads(plan["stdout"])["hooks"]["checks"]
        ]
        assert checks == [(h, t, s) for h, v, t, s in _hook_runs(initrd) if v == "check"], plan

    REPORT_SECTIONS.setdefault("hooks in the initrd merge", []).extend(
        f"{h['hook']} {h['verb']} {h['target']}: exit {h['status']}, {h['durationMs']:.0f} ms"
        for h in initrd["hooks"]
    )
