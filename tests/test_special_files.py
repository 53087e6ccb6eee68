# SPDX-License-Identifier: LGPL-2.1-or-later
"""Special files where sysextpy expects a small regular file or an image: a FIFO, a character
device that never ends (like /dev/zero), a socket, and a sparse file of a terabyte.

Whatever the place (an image entry, an extension's release file, the root's os-release, the
configuration file, the handoff record, an image's verity side-car, a merge's metadata, fstab,
the generator's inputs), a run must finish promptly (every run has a timeout: blocking fails the
test), never read such a file without bound, and say what it refused and why, while everything
else goes on.
"""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Callable

import pytest

from sysextpy import mountapi
from tests.faults import REPO, Tally
from tests.merge_support import (
    HOST_RELEASE,
    Runner,
    RunSysextpy,
    add_confext,
    add_sysext,
    make_raw,
    mounts_at,
    sysext_tree,
    write,
)

TIMEOUT = 30  # seconds; any run that blocks on a special file fails by hitting it
tally = Tally("special files")


@pytest.fixture(scope="module", autouse=True)
def _report() -> Iterator[None]:
    yield
    tally.flush()


def _fifo(path: Path) -> None:
    os.mkfifo(path)


def _zero_device(path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("creating a character device needs root")
    os.mknod(path, stat.S_IFCHR | 0o644, os.makedev(1, 5))  # /dev/zero: reads never end


def _socket(path: Path) -> None:
    # Bound by a name relative to its directory: socket addresses are limited to 108 bytes.
    here = os.open(".", os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.chdir(path.parent)
        with socket.socket(socket.AF_UNIX) as s:
            s.bind(path.name)
    finally:
        os.fchdir(here)
        os.close(here)


def _huge(path: Path) -> None:
    with open(path, "wb") as f:
        f.truncate(1 << 40)  # sparse: a terabyte that takes no room


KINDS: dict[str, tuple[Callable[[Path], None], str]] = {
    # kind -> (how to make it, what the refusal says)
    "fifo": (_fifo, "FIFO"),
    "zero-device": (_zero_device, "character device"),
    "socket": (_socket, "socket"),
    "huge": (_huge, "bytes"),
}


def _place(path: Path, kind: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_symlink() or path.exists():
        path.unlink()
    KINDS[kind][0](path)


@pytest.fixture
def run(mountns: None, fake_root: Path, tmp_path: Path, sysextpy_cmd: RunSysextpy) -> Iterator[Runner]:
    add_sysext(fake_root, "good", {"usr/share/good/data": "good\n"})
    add_confext(fake_root, "conf", {"etc/conf.d/setting": "value\n"})
    runner = Runner(sysextpy_cmd, fake_root, tmp_path / "state" / "state.json")
    yield runner
    runner("unmerge", timeout=TIMEOUT)


def _refresh(run: Runner, kind: str, place: str) -> subprocess.CompletedProcess[str]:
    try:
        proc = run("refresh", timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        pytest.fail(f"refresh blocked on a {kind} as the {place}")
    assert "Traceback" not in proc.stderr, proc.stderr
    if place.endswith(")"):
        pass  # a run around the one tested
    elif kind in KINDS:
        tally.add(place, kind)
    else:
        tally.add("odd content", f"{kind} ({place})")
    return proc


def _good_merged(root: Path) -> bool:
    return (root / "usr/share/good/data").exists() and (root / "etc/conf.d/setting").exists()


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_image_entry(run: Runner, fake_root: Path, kind: str) -> None:
    _place(fake_root / "var/lib/extensions/bad.raw", kind)
    _place(fake_root / "var/lib/extensions/other.raw.v/other_1.raw", kind)
    proc = _refresh(run, kind, "image")
    assert _good_merged(fake_root), proc.stderr
    plan = run("plan", "--json=short", timeout=TIMEOUT)
    assert "bad.raw" in plan.stdout and "other.raw.v" in plan.stdout, plan.stdout
    if kind == "huge":
        # Regular files: images, looked at (their first bytes only) and rejected.
        assert proc.returncode == 3, proc.stderr
        assert proc.stderr.count("holds only zeros") == 2, proc.stderr
    else:
        assert proc.returncode == 0, proc.stderr
        assert KINDS[kind][1] in plan.stdout, plan.stdout
        # the .v directory's only entry is not an image of the right type: nothing to pick
        assert "no usable" in plan.stdout, plan.stdout


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_release_file(run: Runner, fake_root: Path, kind: str) -> None:
    bad = add_sysext(fake_root, "bad", {"usr/share/bad/data": "bad\n"})
    _place(bad / "usr/lib/extension-release.d/extension-release.bad", kind)
    # A second image whose only release file in the directory is special: the fallback scan.
    other = add_sysext(fake_root, "other", {"usr/share/other/data": "other\n"})
    os.unlink(other / "usr/lib/extension-release.d/extension-release.other")
    _place(other / "usr/lib/extension-release.d/extension-release.other_x", kind)
    proc = _refresh(run, kind, "release file")
    assert proc.returncode == 3, proc.stderr
    assert _good_merged(fake_root)
    assert not (fake_root / "usr/share/bad").exists() and not (fake_root / "usr/share/other").exists()
    assert KINDS[kind][1] in proc.stderr, proc.stderr
    assert "extension-release.bad" in proc.stderr, proc.stderr


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_host_os_release(run: Runner, fake_root: Path, kind: str) -> None:
    _place(fake_root / "etc/os-release", kind)
    proc = _refresh(run, kind, "os-release")
    assert proc.returncode == 1, proc.stderr
    assert "os-release" in proc.stderr and KINDS[kind][1] in proc.stderr, proc.stderr
    assert not mounts_at(fake_root / "usr")
    plan = run("plan", timeout=TIMEOUT)
    assert plan.returncode in (0, 1) and "Traceback" not in plan.stderr, plan.stderr


@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize("name", ["sysext.conf", "confext.conf.d/50-x.conf"])
def test_config_file(run: Runner, fake_root: Path, kind: str, name: str) -> None:
    _place(fake_root / "etc/systemd" / name, kind)
    proc = _refresh(run, kind, "configuration file")
    assert proc.returncode == 0, proc.stderr
    assert _good_merged(fake_root)
    if "/" not in name:  # drop-ins that are not regular files are skipped silently, like systemd
        assert "ignoring '/etc/systemd/sysext.conf'" in proc.stderr, proc.stderr
        assert KINDS[kind][1] in proc.stderr, proc.stderr


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_handoff_record(run: Runner, fake_root: Path, kind: str) -> None:
    _refresh(run, kind, "handoff record (setup)")
    _place(run.state, kind)
    proc = _refresh(run, kind, "handoff record")
    assert proc.returncode == 0, proc.stderr
    # A socket cannot even be opened (ENXIO); the other kinds are opened without blocking and
    # looked at.
    reasons = {"huge": "too large", "socket": "unreadable: No such device or address"}
    assert reasons.get(kind, "not a regular file") in proc.stderr, proc.stderr
    assert "Skipping extension refresh" not in proc.stderr
    assert run.state.is_file() and run.state.stat().st_size < 1 << 20  # replaced by a real record
    assert "Skipping extension refresh" in _refresh(run, kind, "handoff record (after)").stderr


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_fstab(run: Runner, fake_root: Path, kind: str) -> None:
    _place(fake_root / "etc/fstab", kind)
    proc = _refresh(run, kind, "fstab")
    assert proc.returncode == 0, proc.stderr
    assert _good_merged(fake_root)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_metadata_of_an_unmerged_hierarchy(run: Runner, fake_root: Path, kind: str) -> None:
    """A copied tree may carry a .systemd-sysext directory; its files are read to tell a live
    merge from a copy, and a special file there must not hang status or refresh."""
    for name in ("dev", "extensions"):
        _place(fake_root / "usr/.systemd-sysext" / name, kind)
    status = run("status", timeout=TIMEOUT)
    assert status.returncode == 0, status.stderr
    proc = _refresh(run, kind, "merge metadata")
    assert proc.returncode == 0, proc.stderr
    assert _good_merged(fake_root)


needs_squashfs = pytest.mark.tools("mksquashfs")


@needs_squashfs
@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize("sidecar", ["roothash", "roothash.p7s", "verity"])
def test_verity_sidecar(run: Runner, fake_root: Path, tmp_path: Path, kind: str, sidecar: str) -> None:
    src = sysext_tree(tmp_path / "src", "signed", {"usr/share/signed/data": "x\n"})
    make_raw("squashfs", src, fake_root / "var/lib/extensions/signed.raw")
    if sidecar != "roothash":
        write(fake_root / "var/lib/extensions/signed.roothash", "ab" * 32 + "\n")
    _place(fake_root / f"var/lib/extensions/signed.{sidecar}", kind)
    proc = _refresh(run, kind, "verity side-car")
    assert proc.returncode == 3, proc.stderr
    assert _good_merged(fake_root)
    assert not (fake_root / "usr/share/signed").exists()
    assert "signed" in proc.stderr, proc.stderr


GENERATOR = REPO / "generators/sysextpy-generator"


@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize(
    "place", ["proc/cmdline", "run/sysextpy/state.json", "proc/sys/kernel/random/boot_id"]
)
def test_generator_inputs(tmp_path: Path, kind: str, place: str) -> None:
    root = tmp_path / "root"
    write(root / "etc/os-release", HOST_RELEASE)
    write(root / "proc/cmdline", "quiet\n")
    write(root / "proc/sys/kernel/random/boot_id", "0123456789abcdef0123456789abcdef\n")
    _place(root / place, kind)
    out = tmp_path / "out"
    out.mkdir()
    env = {"PATH": os.environ.get("PATH", "/usr/bin"), "SYSEXTPY_ROOT": os.fspath(root)}
    try:
        proc = subprocess.run(
            [sys.executable, "-IS", os.fspath(GENERATOR), os.fspath(out)],
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"the generator blocked on a {kind} at {place}")
    tally.add(f"generator: {place}", kind)
    assert proc.returncode == 0, proc.stderr
    assert "internal error" not in proc.stderr, proc.stderr
    assert (out / "sysinit.target.wants/sysextpy.service").is_symlink()
    handoff = out / "sysextpy.service.d/50-handoff.conf"
    if place == "run/sysextpy/state.json":
        # Whatever is wrong with the record, the service is told to check everything itself.
        assert "SYSEXTPY_FORCE_REFRESH=1" in handoff.read_text()
    else:
        # No record at all: a refresh without one never skips, so nothing is forced (which would
        # forbid adopting a merge systemd's own sysroot units made in the initrd).
        assert not handoff.exists(), handoff.read_text()


# --------------------------------------------------------------------------------------------
# Odd content and odd places (each of these once stopped a whole run)


def test_truncated_gpt_image(run: Runner, fake_root: Path) -> None:
    image = bytearray(520)
    image[512:520] = b"EFI PART"  # a partition table signature and nothing after it
    (fake_root / "var/lib/extensions/cut.raw").write_bytes(bytes(image))
    proc = _refresh(run, "truncated GPT", "image")
    assert proc.returncode == 3, proc.stderr
    assert "truncated" in proc.stderr, proc.stderr
    assert _good_merged(fake_root)


def test_fstab_with_bad_escapes(run: Runner, fake_root: Path) -> None:
    write(fake_root / "etc/fstab", "/dev/sda2 /var\\999lib ext4 defaults 0 0\nLABEL=x /srv\\0 xfs\n")
    proc = _refresh(run, "bad escapes", "fstab")
    assert proc.returncode == 0, proc.stderr
    assert _good_merged(fake_root)


def test_absurd_device_number_in_copied_metadata(run: Runner, fake_root: Path) -> None:
    write(fake_root / "usr/.systemd-sysext/dev", "99999999999999999999999:1\n")
    assert run("status", timeout=TIMEOUT).returncode == 0
    proc = _refresh(run, "absurd device number", "merge metadata")
    assert proc.returncode == 0, proc.stderr
    assert _good_merged(fake_root)


def test_extension_behind_a_path_that_is_not_utf8(run: Runner, fake_root: Path) -> None:
    odd = os.fsdecode(b"/srv/odd-\xff-dir")
    sysext_tree(Path(os.fspath(fake_root) + odd), "odd", {"usr/share/odd/data": "odd\n"})
    (fake_root / "var/lib/extensions/odd").symlink_to(odd)
    proc = _refresh(run, "not UTF-8", "image path")
    assert proc.returncode == 0, proc.stderr
    assert (fake_root / "usr/share/odd/data").read_text() == "odd\n"
    origin = (fake_root / "usr/.systemd-sysext/origin").read_bytes().decode("utf-8")  # valid UTF-8
    assert json.loads(origin)["extensions"]["odd"]["path"] == odd  # the odd byte reads back
    assert "Skipping extension refresh" in _refresh(run, "not UTF-8", "image path (again)").stderr


@needs_squashfs
def test_image_without_release_file(run: Runner, fake_root: Path, tmp_path: Path) -> None:
    write(tmp_path / "src/usr/share/anon/data", "x\n")
    make_raw("squashfs", tmp_path / "src", fake_root / "var/lib/extensions/anon.raw")
    proc = _refresh(run, "no release file", "image")
    assert proc.returncode == 3, proc.stderr
    assert "extension-release.anon" in proc.stderr and "usr/lib/extension-release.d" in proc.stderr
    assert _good_merged(fake_root) and not (fake_root / "usr/share/anon").exists()


def test_extension_stored_inside_its_hierarchy(run: Runner, fake_root: Path) -> None:
    """A link from a search directory into /usr: refused for that image alone, before overlayfs
    would refuse the whole merge (ELOOP)."""
    sysext_tree(fake_root / "usr/local/lib/extensions/inner", "inner", {"usr/share/inner/data": "x\n"})
    (fake_root / "var/lib/extensions/inner").symlink_to("/usr/local/lib/extensions/inner")
    proc = _refresh(run, "inside /usr", "image")
    assert proc.returncode == 3, proc.stderr
    assert "inner: rejected (stored inside /usr" in proc.stderr, proc.stderr
    assert _good_merged(fake_root) and not (fake_root / "usr/share/inner").exists()


def test_renamed_extension_on_a_file_system_without_xattrs(run: Runner, fake_root: Path) -> None:
    """The fallback asks the release file for user.extension-release.strict; ramfs has no
    extended attributes at all: the image is ignored with a reason, nothing crashes."""
    place = fake_root / "var/lib/extensions/renamed"
    place.mkdir(parents=True)
    mountapi.mount("ramfs", place, "ramfs", 0, "mode=0755")
    try:
        sysext_tree(place, "original", {"usr/share/renamed/data": "x\n"})
        proc = _refresh(run, "no xattrs", "release file")
        assert proc.returncode == 0, proc.stderr
        assert "renamed: ignored" in proc.stderr and "extension-release.original" in proc.stderr, proc.stderr
        assert _good_merged(fake_root) and not (fake_root / "usr/share/renamed").exists()
    finally:
        run("unmerge", timeout=TIMEOUT)
        mountapi.umount2(place, mountapi.MNT_DETACH)


def test_extension_whose_usr_is_a_symlink(run: Runner, fake_root: Path, tmp_path: Path) -> None:
    """`usr` inside a directory extension is a link to a directory of the extension, and the
    extension itself is a link into /srv: both resolve inside their roots and merge."""
    ext = fake_root / "srv/linked"
    sysext_tree(ext / "payload", "linked", {"share/linked/data": "x\n"})
    os.rename(ext / "payload/usr/lib", ext / "payload/lib")  # the release file, at payload/lib/...
    os.rmdir(ext / "payload/usr")
    (ext / "usr").symlink_to("payload")
    (fake_root / "var/lib/extensions/linked").symlink_to("/srv/linked")
    proc = _refresh(run, "symlinked usr", "image")
    assert proc.returncode == 0, proc.stderr
    assert (fake_root / "usr/share/linked/data").read_text() == "x\n"
    assert _good_merged(fake_root)
