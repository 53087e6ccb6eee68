# SPDX-License-Identifier: LGPL-2.1-or-later
"""sysextpy and systemd-sysext v262 keep each other's merges.

A refresh of either, after the other merged exactly what it would merge, changes no mount: v262
compares the `origin` sysextpy writes with its own; sysextpy adopts a merge upstream made when its
`origin` is the one sysextpy computes and nothing it decides from changed since (adopt.py).

Runs where upstream's tool is unpacked under /opt/sysext-oracle (`setup.sh` of the project's
upstream tools; not a prerequisite of the suite: the Debian suite it comes from changes).
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.common import TOOL_ENV, Tool, oracle_tool
from sysextpy import mountapi
from sysextpy.actions import live_merge_requests
from sysextpy.model import ImageClass
from tests.conftest import RunSysextpy
from tests.merge_support import Runner, add_confext, add_sysext, top_mount, write
from tests.snapshot import differences, snapshot

UPSTREAM = oracle_tool()
pytestmark = pytest.mark.skipif(
    UPSTREAM is None,
    reason="needs systemd-sysext v262 unpacked under /opt/sysext-oracle (no package has it)",
)
SKIPPED = "Skipping extension refresh because no change was found"


def upstream(tool: Tool, cls: str, root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        tool.argv(cls, f"--root={root}", "--no-reload", *args),
        env=TOOL_ENV,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture
def shared_root(mountns: None, fake_root: Path) -> Iterator[Path]:
    """The fake root on a shared tmpfs of its own: upstream merges in a child mount namespace and
    hands the overlays back by propagation."""
    import shutil

    saved = fake_root.parent / "saved-root"
    fake_root.rename(saved)
    fake_root.mkdir()
    mountapi.mount("tmpfs", fake_root, "tmpfs", 0, "mode=0755")
    mountapi.mount(None, fake_root, None, mountapi.MS_SHARED)
    shutil.copytree(saved, fake_root, dirs_exist_ok=True, symlinks=True)
    add_sysext(fake_root, "alpha", {"usr/bin/alpha": "alpha 1\n"})
    add_confext(fake_root, "conf", {"etc/conf.d/setting": "value 1\n"})
    try:
        yield fake_root
    finally:
        for h in ("usr", "opt", "etc"):
            while os.path.ismount(fake_root / h):
                mountapi.umount2(fake_root / h, mountapi.MNT_DETACH)
        mountapi.umount2(fake_root, mountapi.MNT_DETACH)


def _mount_ids(root: Path) -> dict[str, int]:
    return {h: top_mount(root / h).mount_id for h in ("usr", "etc")}


def test_an_upstream_merge_is_adopted_and_ours_kept_by_upstream(
    shared_root: Path, tmp_path: Path, sysextpy_cmd: RunSysextpy
) -> None:
    assert UPSTREAM is not None
    run = Runner(sysextpy_cmd, shared_root, tmp_path / "state" / "state.json")

    # Upstream merges; our refresh keeps its merge: no mount changes, our record says why.
    for cls in ("sysext", "confext"):
        proc = upstream(UPSTREAM, cls, shared_root, "merge")
        assert proc.returncode == 0, proc.stderr
    before = _mount_ids(shared_root)
    said = run.ok("refresh")
    assert "adopted the merge systemd-sysext made on /usr" in said, said
    assert "adopted the merge systemd-confext made on /etc" in said, said
    assert _mount_ids(shared_root) == before
    record = json.loads(run.state.read_text())
    assert record["confirmedBy"] == "adoption"
    assert record["classes"]["sysext"]["hierarchies"]["/usr"]["result"] == "adopted"
    # The next refresh confirms the adopted merges on its observations.
    said = run.ok("refresh")
    assert SKIPPED in said and json.loads(run.state.read_text())["confirmedBy"] == "observations"
    assert _mount_ids(shared_root) == before
    # The skip rule holds: a forced refresh builds the same state.
    kept = snapshot(shared_root, lambda: run("--json=short", "status").stdout)
    run.ok("refresh", "--always-refresh=yes")
    assert differences(kept, snapshot(shared_root, lambda: run("--json=short", "status").stdout)) == []

    # Ours merged: upstream's refresh keeps it.
    ours = _mount_ids(shared_root)
    for cls in ("sysext", "confext"):
        proc = upstream(UPSTREAM, cls, shared_root, "refresh")
        assert proc.returncode == 0, proc.stderr
        assert SKIPPED in proc.stderr, proc.stderr
    assert _mount_ids(shared_root) == ours

    # Upstream merges again, then an input changes: not adopted, refreshed, and said why.
    run.ok("unmerge")
    for cls in ("sysext", "confext"):
        assert upstream(UPSTREAM, cls, shared_root, "merge").returncode == 0
    write(
        shared_root / "var/lib/extensions/alpha/usr/lib/extension-release.d/extension-release.alpha",
        "ID=_any\n",
    )
    said = run.ok("refresh")
    assert (
        "not adopting the merge systemd-sysext made on /usr" in said and "changed after that merge" in said
    )
    assert "adopted the merge systemd-confext made on /etc" in said
    assert _mount_ids(shared_root)["usr"] != before["usr"]
    run.ok("unmerge")


# --------------------------------------------------------------------------------------------------
# What a merge systemd-sysext made asked for (actions.py)


def test_units_of_an_upstream_merge_are_read_from_the_merged_tree(shared_root: Path) -> None:
    """Upstream writes no sysextpy.json: what its extensions name is read where upstream reads
    it, from the release files in the merged tree, so their removal still acts on them."""
    assert UPSTREAM is not None
    beta = add_sysext(shared_root, "beta", {"usr/bin/beta": "beta\n"})
    write(
        beta / "usr/lib/extension-release.d/extension-release.beta",
        'ID=_any\nEXTENSION_RESTART_UNITS="b.service bad/x"\nEXTENSION_RELOAD_OR_RESTART_UNITS=c.socket\n',
    )
    proc = upstream(UPSTREAM, "sysext", shared_root, "merge")
    assert proc.returncode == 0, proc.stderr
    found, inputs = live_merge_requests(shared_root, ImageClass.SYSEXT, ("/usr", "/opt"))
    assert inputs is None
    assert {n: (r.restart, r.reload_or_restart) for n, r in found.items()} == {
        "alpha": ([], []),
        "beta": (["b.service"], ["c.socket"]),
    }
