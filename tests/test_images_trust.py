# SPDX-License-Identifier: LGPL-2.1-or-later
"""Raw images end to end: every kind discovered, identified and merged; untrusted and broken images
rejected alone (exit 3); certificates only from the root; no loop device or mount left behind.

These run the real command in the test session's private mount namespace against a fake root.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Optional

import pytest

from sysextpy import mountapi
from sysextpy.dissect import TrustContext
from sysextpy.errors import EXIT_OK, EXIT_PARTIAL, ImageError
from sysextpy.images import Workspace
from sysextpy.model import ClassSettings, ImageClass, MutableMode, Options, Verb, Verdict
from sysextpy.view import LiveView, dm_verity_available
from tests.conftest import RunSysextpy, have_tools, require_tools
from tests.test_dissect import (
    MiB,
    PartSpec,
    Signer,
    build_ddi,
    build_gpt,
    candidate,
    extension_tree,
    make_fs,
    make_signer,
    naked_image,
    sign,
    trust,
)

EXT = "var/lib/extensions"


def loops_below(path: Path) -> list[str]:
    """Loop devices backed by files below `path` (scoped: other loop users on the machine don't count)."""
    prefix = os.path.realpath(path).rstrip("/") + "/"
    found = []
    for backing in Path("/sys/block").glob("loop*/loop/backing_file"):
        try:
            if backing.read_text().strip().startswith(prefix):
                found.append(backing.read_text().strip())
        except OSError:
            pass  # detached while we looked
    return found


def settle(path: Path, at_most: int = 0, timeout: float = 3.0) -> list[str]:
    """Autoclear detaches a moment after the last user goes."""
    deadline = time.monotonic() + timeout
    found = loops_below(path)
    while len(found) > at_most and time.monotonic() < deadline:
        time.sleep(0.02)
        found = loops_below(path)
    return found


class Run:
    def __init__(self, cmd: RunSysextpy, root: Path, state: Path) -> None:
        self.cmd, self.root, self.state = cmd, root, state

    def __call__(
        self, *args: str, env: Optional[Mapping[str, str]] = None
    ) -> subprocess.CompletedProcess[str]:
        return self.cmd("--root", str(self.root), "--state", str(self.state), *args, env=env)

    def plan(self, *args: str) -> tuple[int, dict[str, dict[str, Any]], str]:
        res = self("--class=sysext", "--json=short", *args, "plan")
        doc = json.loads(res.stdout)
        return res.returncode, {r["name"]: r for r in doc["images"] if r["name"]}, res.stderr


@pytest.fixture
def run(mountns: None, fake_root: Path, tmp_path: Path, sysextpy_cmd: RunSysextpy) -> Iterator[Run]:
    r = Run(sysextpy_cmd, fake_root, tmp_path / "state.json")
    yield r
    # Leave nothing merged: the fake_root fixture then checks that no mount and no loop device is left.
    r("unmerge")


def need_image_tools() -> None:
    require_tools("mksquashfs", "sfdisk", "veritysetup", "openssl")


def build_good_images(work: Path, root: Path, signer: Signer) -> dict[str, str]:
    """One image of every kind; returns name -> the file each one contributes under /usr/share."""
    ext = root / EXT
    naked_image(work, ext / "sq.raw", "sq")
    if have_tools("mkfs.erofs"):
        naked_image(work, ext / "ero.raw", "ero", fs="erofs")
    if have_tools("mkfs.ext4"):
        naked_image(work, ext / "ex.raw", "ex", fs="ext4")
    naked_image(work, ext / "sidecar.raw", "sidecar", hash_kind="roothash", signer=signer)
    naked_image(work, ext / "xattr.raw", "xattr", hash_kind="xattr-roothash")
    build_ddi(work, ext / "ddi.raw", "ddi", signer=signer)
    build_ddi(work, ext / "derived.raw", "derived")
    build_ddi(work, ext / "usronly.raw", "usronly", designator="usr")
    build_ddi(work, ext / "plainddi.raw", "plainddi", verity=False, arch="x86")
    names = [p.name[: -len(".raw")] for p in ext.glob("*.raw")]
    return {n: f"usr/share/{n}/hello" for n in names}


def test_every_image_kind_is_found_identified_and_merged(run: Run, fake_root: Path, tmp_path: Path) -> None:
    need_image_tools()
    signer = make_signer(tmp_path / "keys")
    trust(fake_root, signer)
    files = build_good_images(tmp_path / "w", fake_root, signer)
    assert loops_below(tmp_path) == []

    listed = json.loads(run("--class=sysext", "--json=short", "list").stdout)
    assert sorted((r["name"], r["type"]) for r in listed) == sorted((n, "raw") for n in files)

    code, images, log = run.plan()
    assert code == EXIT_OK, log
    assert {n: r["verdict"] for n, r in images.items()} == {n: "merge" for n in files}
    assert settle(tmp_path) == []  # plan mounts in a private namespace and leaves nothing
    # What dissection found is said for every image.
    assert "sysext ddi: GPT disk image: root from partition #1 ('root-x86-64') (squashfs)" in log
    assert "sysext usronly: GPT disk image: usr from partition #1 ('usr-x86-64') (squashfs)" in log
    assert "sysext ddi: root partition's root hash" in log and "signed by /etc/verity.d/test.crt" in log
    assert "sysext sidecar: root partition's root hash" in log
    if not dm_verity_available():
        assert "mounted WITHOUT verity although it has a root hash (dm-verity is not available" in log

    res = run("--class=sysext", "merge")
    assert res.returncode == EXIT_OK, res.stderr
    for name, rel in files.items():
        assert (fake_root / rel).read_text() == f"hello from {name}\n", name
    # One loop device per mounted file system, each held by the merge alone.
    assert len(loops_below(tmp_path)) == len(files)
    origin = json.loads((fake_root / "usr/.systemd-sysext/origin").read_text())["extensions"]
    # Images with a root hash are identified by it, whatever its source.
    for name in ("sidecar", "xattr", "ddi", "derived", "usronly"):
        assert set(origin[name]) == {"path", "verityHash"}, name
    assert "verityHash" not in origin["sq"] and "verityHash" not in origin["plainddi"]

    assert run("unmerge").returncode == EXIT_OK
    assert settle(tmp_path) == []
    assert not (fake_root / "usr/share/ddi").exists()


def build_broken_images(work: Path, root: Path, signer: Signer) -> dict[str, str]:
    """Every kind of broken or untrusted image; returns name -> words its rejection must contain."""
    ext = root / EXT
    (ext / "zero.raw").write_bytes(b"")
    (ext / "garbage.raw").write_bytes(os.urandom(300_000))
    (ext / "notable.raw").write_bytes(b"\0" * (2 * MiB))
    ddi = build_ddi(work, work / "whole.raw", "truncated")
    (ext / "truncated.raw").write_bytes(ddi.path.read_bytes()[: MiB + 8192])
    build_gpt(ext / "nopart.raw", [PartSpec("generic", b"a" * 4096), PartSpec("generic", b"b" * 4096)])
    naked_image(work, ext / "misnamed.raw", "something-else")
    img, _ = naked_image(work, ext / "badsig.raw", "badsig", hash_kind="roothash")
    sign("ee" * 32, signer, ext / "badsig.roothash.p7s")
    build_ddi(work, ext / "stranger.raw", "stranger", signer=make_signer(work / "stranger", "stranger"))
    return {
        "zero": "is empty (0 bytes)",
        "garbage": "no recognised file system or partition table",
        "notable": "holds only zeros",
        "truncated": "beyond the end of the",
        "nopart": "has no root or usr partition",
        "misnamed": "extension-release.misnamed missing",
        "badsig": "the signature does not match the root hash (bad signature)",
        "stranger": "signed by an unknown certificate",
    }


def test_broken_and_untrusted_images_are_rejected_alone(run: Run, fake_root: Path, tmp_path: Path) -> None:
    need_image_tools()
    signer = make_signer(tmp_path / "keys")
    trust(fake_root, signer)
    work = tmp_path / "w"
    naked_image(work, fake_root / EXT / "good.raw", "good")
    build_ddi(work, fake_root / EXT / "goodddi.raw", "goodddi", signer=signer)
    broken = build_broken_images(work, fake_root, signer)
    # A policy violation: this root forbids /usr partitions, and one image has only that.
    build_ddi(work, fake_root / EXT / "usrpart.raw", "usrpart", designator="usr")
    conf = fake_root / "etc/systemd/sysext.conf"
    conf.parent.mkdir(parents=True)
    conf.write_text("[SysExt]\nImagePolicy=root=verity+signed+unprotected+absent:usr=absent\n")
    broken["usrpart"] = "usr partition is present but policy usr=absent"

    code, images, log = run.plan()
    assert code == EXIT_PARTIAL, log
    for name, words in broken.items():
        assert images[name]["verdict"] == Verdict.REJECTED.value, (name, images[name])
        assert words in images[name]["reason"], (name, images[name]["reason"])
    assert images["good"]["verdict"] == images["goodddi"]["verdict"] == "merge"
    assert settle(tmp_path) == []

    res = run("--class=sysext", "merge")
    assert res.returncode == EXIT_PARTIAL, res.stderr
    assert (fake_root / "usr/share/good/hello").read_text() == "hello from good\n"
    assert (fake_root / "usr/share/goodddi/hello").read_text() == "hello from goodddi\n"
    extensions = (fake_root / "usr/.systemd-sysext/extensions").read_text().split()
    assert extensions == ["good", "goodddi"]
    # Only the two merged images hold loop devices; nothing was left attached for the rejected ones.
    held = settle(tmp_path, at_most=2)
    assert sorted(os.path.basename(b) for b in held) == ["good.raw", "goodddi.raw"]
    assert run("unmerge").returncode == EXIT_OK
    assert settle(tmp_path) == []


@pytest.fixture
def host_etc_overlay(mountns: None, tmp_path: Path) -> Iterator[Path]:
    """A writable view of this machine's /etc inside the test's private mount namespace only.

    The real /etc is never written: an overlay with a scratch upper layer covers it for the
    duration of the test, and is removed afterwards.
    """
    upper, work = tmp_path / "etc-upper", tmp_path / "etc-work"
    upper.mkdir()
    work.mkdir()
    mountapi.mount("overlay", "/etc", "overlay", 0, f"lowerdir=/etc,upperdir={upper},workdir={work}")
    try:
        yield Path("/etc")
    finally:
        mountapi.umount2("/etc", mountapi.MNT_DETACH)


def test_certificates_come_from_the_root_never_the_host(
    run: Run, fake_root: Path, tmp_path: Path, host_etc_overlay: Path
) -> None:
    need_image_tools()
    signer = make_signer(tmp_path / "keys")
    # The running system trusts the key...
    host_dir = host_etc_overlay / "verity.d"
    host_dir.mkdir(exist_ok=True)
    shutil.copy(signer.cert, host_dir / "test.crt")
    work = tmp_path / "w"
    build_ddi(work, fake_root / EXT / "ddi.raw", "ddi", signer=signer)
    naked_image(work, fake_root / EXT / "side.raw", "side", hash_kind="usrhash", signer=signer)

    # ...but the root being merged does not: both images are rejected.
    code, images, _ = run.plan()
    assert code == EXIT_PARTIAL
    for name in ("ddi", "side"):
        assert images[name]["verdict"] == "rejected"
        assert (
            "root hash signature rejected: no trusted certificate: no *.crt in /etc/verity.d"
            in images[name]["reason"]
        )
        assert f"inside {str(fake_root)!r}" in images[name]["reason"]

    # A .pem is not a certificate file; the root's own .crt is.
    (fake_root / "etc/verity.d").mkdir()
    shutil.copy(signer.cert, fake_root / "etc/verity.d/test.pem")
    code, images, log = run.plan()
    assert code == EXIT_PARTIAL and images["ddi"]["verdict"] == "rejected"
    assert "Certificate /etc/verity.d/test.pem" in log and "only *.crt is read" in log
    shutil.copy(signer.cert, fake_root / "etc/verity.d/test.crt")
    code, images, log = run.plan()
    assert code == EXIT_OK, log
    assert images["ddi"]["verdict"] == images["side"]["verdict"] == "merge"
    assert "signed by /etc/verity.d/test.crt" in log
    assert settle(tmp_path) == []


def test_symlinked_signature_side_car_inside_the_root(run: Run, fake_root: Path, tmp_path: Path) -> None:
    need_image_tools()
    signer = make_signer(tmp_path / "keys")
    trust(fake_root, signer)
    store = fake_root / "srv/images"
    store.mkdir(parents=True)
    naked_image(tmp_path / "w", store / "app-1.raw", "app", hash_kind="roothash", signer=signer)
    (fake_root / EXT).mkdir(parents=True, exist_ok=True)
    (fake_root / EXT / "app.raw").symlink_to("/srv/images/app-1.raw")
    (store / "app-1.roothash.p7s").rename(store / "sig.p7s")
    (store / "app-1.roothash.p7s").symlink_to("/srv/images/sig.p7s")
    code, images, log = run.plan()
    assert code == EXIT_OK, log
    assert images["app"]["verdict"] == "merge"
    assert "signed by /etc/verity.d/test.crt" in log


# --------------------------------------------------------------------------------------------------
# In-process: the policy from the command line, and dm-verity activation up to the kernel


def settings_for(policy: Optional[str]) -> tuple[ClassSettings, ...]:
    return (
        ClassSettings(
            image_class=ImageClass.SYSEXT,
            hierarchies=("/usr", "/opt"),
            mutable=MutableMode.NO,
            mutable_source="default",
            image_policy=policy,
            overlay_options=None,
            noexec=None,
        ),
    )


@pytest.mark.parametrize(
    "policy, verdict, words",
    [
        (None, "merge", ""),
        (
            "root=signed+absent:usr=signed+absent",
            "rejected",
            "policy root=signed+absent (image policy setting)",
        ),
        (
            "root=verity+absent:usr=absent",
            "rejected",
            "root partition is unprotected but policy root=verity+absent",
        ),
        ("root=unprotected+absent:usr=absent", "merge", ""),
    ],
)
def test_image_policy_option(
    mountns: None, fake_root: Path, tmp_path: Path, policy: Optional[str], verdict: str, words: str
) -> None:
    need_image_tools()
    from sysextpy.plan import judge_all, survey

    naked_image(tmp_path / "w", fake_root / EXT / "foo.raw", "foo")
    opts = Options(
        verb=Verb.PLAN, classes=(ImageClass.SYSEXT,), root=fake_root, root_given=True, image_policy=policy
    )
    settings = settings_for(policy)
    view = LiveView(os.fspath(fake_root), {})
    found = survey(opts, settings, view)
    with Workspace(trust=TrustContext.from_settings(opts, settings, view)) as ws:
        plan = judge_all(opts, found, view, ws)
    (v,) = plan.classes[0].verdicts
    assert v.verdict.value == verdict, v.reason
    assert words in v.reason


FAKE_VERITYSETUP = """#!/bin/sh
echo "$@" >> "{log}"
case "$1" in
  open) exit {open_status} ;;
  *) exit 0 ;;
esac
"""


@pytest.mark.parametrize("open_status", [1, 0])
def test_verity_activation_failure_leaves_nothing(
    mountns: None, fake_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, open_status: int
) -> None:
    """With dm-verity claimed available, a failing activation (or a device that never appears) rejects
    the image and detaches everything it attached. The real activation runs in the QEMU tests."""
    need_image_tools()
    signer = make_signer(tmp_path / "keys")
    trust(fake_root, signer)
    ddi = build_ddi(tmp_path / "w", fake_root / EXT / "ddi.raw", "ddi", signer=signer)
    bindir = tmp_path / "bin"
    bindir.mkdir()
    calls = tmp_path / "calls"
    tool = bindir / "veritysetup"
    tool.write_text(FAKE_VERITYSETUP.format(log=calls, open_status=open_status))
    tool.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")

    ctx = TrustContext(LiveView(os.fspath(fake_root), {}), dm_verity=True, kernel_signatures=False)
    with Workspace(trust=ctx) as ws:
        with pytest.raises(ImageError) as e:
            ws.mount_image(candidate(fake_root, ddi.path))
    if open_status:
        assert "dm-verity activation failed" in str(e.value)
    else:
        assert "cannot mount the squashfs file system of partition #1" in str(e.value)
    lines = calls.read_text().splitlines()
    opened = lines[0].split()
    assert opened[0] == "open" and opened[1].startswith("/dev/loop") and opened[3].startswith("/dev/loop")
    assert opened[4] == ddi.root_hash and opened[1] != opened[3]
    assert not any("--root-hash-signature" in part for part in opened)  # vouched for in userspace
    if open_status == 0:
        assert lines[1].split()[0] == "close" and lines[1].split()[-1] == opened[2]
    assert settle(tmp_path) == []


def test_kernel_keyring_gets_the_signature(
    mountns: None, fake_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    need_image_tools()
    ddi = build_ddi(
        tmp_path / "w", fake_root / EXT / "ddi.raw", "ddi", signer=make_signer(tmp_path / "keys")
    )
    bindir = tmp_path / "bin"
    bindir.mkdir()
    calls = tmp_path / "calls"
    tool = bindir / "veritysetup"
    tool.write_text(FAKE_VERITYSETUP.format(log=calls, open_status=1))
    tool.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    ctx = TrustContext(LiveView(os.fspath(fake_root), {}), dm_verity=True, kernel_signatures=True)
    with Workspace(trust=ctx) as ws:
        with pytest.raises(ImageError, match="dm-verity activation failed"):
            ws.mount_image(candidate(fake_root, ddi.path))
    opened = calls.read_text().split()
    assert any(part.startswith("--root-hash-signature=") for part in opened)
    assert settle(tmp_path) == []


def test_usr_partition_needs_usr_in_the_root_file_system(
    mountns: None, fake_root: Path, tmp_path: Path
) -> None:
    """A DDI with root and usr partitions mounts usr on the root file system's /usr."""
    need_image_tools()
    work = tmp_path / "w"
    root_fs = make_fs(
        "squashfs", extension_tree(work / "root-tree", "both", files={"usr/.keep": ""}), work / "r.sqfs"
    )
    usr_fs = make_fs("squashfs", extension_tree(work / "usr-tree", "both", usr_only=True), work / "u.sqfs")
    image = build_gpt(
        fake_root / EXT / "both.raw",
        [PartSpec("root", root_fs.read_bytes()), PartSpec("usr", usr_fs.read_bytes())],
    )
    with Workspace(trust=TrustContext(LiveView(os.fspath(fake_root), {}), dm_verity=False)) as ws:
        tree = Path(ws.mount_image(candidate(fake_root, image)))
        assert (tree / "usr/share/both/hello").read_text() == "hello from both\n"
        assert (tree / "usr/lib/extension-release.d/extension-release.both").exists()
    # Without /usr in the root file system the usr partition has nowhere to go.
    bare = make_fs(
        "squashfs",
        extension_tree(work / "bare-tree", "bare", ImageClass.CONFEXT, files={"etc/x": ""}),
        work / "b.sqfs",
    )
    (fake_root / EXT / "both.raw").unlink()
    image = build_gpt(
        fake_root / EXT / "bare.raw",
        [PartSpec("root", bare.read_bytes()), PartSpec("usr", usr_fs.read_bytes())],
    )
    with Workspace(trust=TrustContext(LiveView(os.fspath(fake_root), {}), dm_verity=False)) as ws:
        with pytest.raises(ImageError, match="has no /usr to mount the usr partition on"):
            ws.mount_image(candidate(fake_root, image))
    assert settle(tmp_path) == []
