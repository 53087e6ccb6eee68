# SPDX-License-Identifier: LGPL-2.1-or-later
"""Helpers for the real-mount merge tests: building extensions, running verbs, reading mounts.

Everything here works on a fake root (the `fake_root` fixture) inside the test session's private
mount namespace; nothing touches the machine's own hierarchies.
"""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Callable, Optional

from sysextpy import mountapi
from tests.conftest import have_tools, loops_backed_below

REPO_ROOT = Path(__file__).resolve().parent.parent

RunSysextpy = Callable[..., "subprocess.CompletedProcess[str]"]

# Matches the os-release the `fake_root` fixture writes.
HOST_RELEASE = "ID=debian\nVERSION_ID=12\n"


def write(path: Path, text: str, mode: int = 0o644) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    os.chmod(path, mode)
    return path


def sysext_tree(base: Path, name: str, files: Mapping[str, str], release: str = HOST_RELEASE) -> Path:
    """A sysext file tree at `base` (not necessarily inside a root): release file + `files`."""
    write(base / "usr/lib/extension-release.d" / f"extension-release.{name}", release)
    for rel, text in files.items():
        write(base / rel, text)
    return base


def confext_tree(base: Path, name: str, files: Mapping[str, str], release: str = HOST_RELEASE) -> Path:
    write(base / "etc/extension-release.d" / f"extension-release.{name}", release)
    for rel, text in files.items():
        write(base / rel, text)
    return base


def add_sysext(
    root: Path, name: str, files: Mapping[str, str], search_dir: str = "var/lib/extensions"
) -> Path:
    """A directory sysext `name` in one of the root's search directories."""
    return sysext_tree(root / search_dir / name, name, files)


def add_confext(
    root: Path, name: str, files: Mapping[str, str], search_dir: str = "var/lib/confexts"
) -> Path:
    return confext_tree(root / search_dir / name, name, files)


def make_raw(kind: str, src: Path, image: Path) -> Path:
    """Pack `src` into a naked file system image `image` of the given kind."""
    image.parent.mkdir(parents=True, exist_ok=True)
    if kind == "squashfs":
        argv = ["mksquashfs", str(src), str(image), "-quiet", "-noappend", "-all-root"]
    elif kind == "erofs":
        argv = ["mkfs.erofs", "--quiet", str(image), str(src)]
    elif kind == "ext4":
        argv = ["mkfs.ext4", "-q", "-F", "-O", "^has_journal", "-d", str(src), str(image), "8M"]
    else:
        raise ValueError(kind)
    subprocess.run(argv, check=True, stdin=subprocess.DEVNULL, capture_output=True)
    return image


# The host tool make_raw builds each kind of image with.
RAW_TOOLS = {"squashfs": "mksquashfs", "erofs": "mkfs.erofs", "ext4": "mkfs.ext4"}


def have_tool(kind: str) -> bool:
    """Whether the tool that builds `kind` images is there (conftest.have_tools: under
    SYSEXTPY_REQUIRE_TOOLS=1 a missing one fails the test)."""
    return have_tools(RAW_TOOLS[kind])


class Runner:
    """Runs verbs against one fake root and one state file."""

    def __init__(self, cmd: RunSysextpy, root: Path, state: Path) -> None:
        self.cmd, self.root, self.state = cmd, root, state

    def __call__(
        self, verb: str, *args: str, env: Optional[Mapping[str, str]] = None, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        return self.cmd(
            "--root", str(self.root), "--state", str(self.state), *args, verb, env=env, timeout=timeout
        )

    def ok(self, verb: str, *args: str, env: Optional[Mapping[str, str]] = None) -> str:
        """Run a verb that must succeed (exit 0); returns stderr."""
        res = self(verb, *args, env=env)
        assert res.returncode == 0, f"{verb} {args} exited {res.returncode}:\n{res.stderr}"
        return res.stderr


def mounts_at(path: Path) -> list[mountapi.MountInfo]:
    """Every mount whose mount point is `path`, bottom first (mountinfo order)."""
    real = os.path.realpath(path)
    return [info for info in mountapi.read_mountinfo() if info.mount_point == real]


def top_mount(path: Path) -> mountapi.MountInfo:
    found = mounts_at(path)
    assert found, f"{path} is not a mount point"
    # The visible one is the mount no other mount at the same point sits on.
    ids = {info.mount_id for info in found}
    parents = {info.parent_id for info in found}
    tops = [info for info in found if info.mount_id not in parents] or found
    assert len(tops) == 1 or len(ids) == 1, f"ambiguous stack at {path}: {found}"
    return tops[-1]


def lower_dirs(info: mountapi.MountInfo) -> list[str]:
    """The overlay's lower layers, top first, from its super options."""
    result = []
    for opt in info.super_options.split(","):
        if opt.startswith("lowerdir+="):
            result.append(opt[len("lowerdir+=") :])
        elif opt.startswith("lowerdir="):
            result.extend(opt[len("lowerdir=") :].split(":"))
    return result


def pinned_layer(cls: str, name: str, hierarchy: str) -> str:
    """The overlay layer of a directory extension: its pinned copy in the workspace (pins.py)."""
    return f"/run/sysextpy/workspace/pinned/{cls}-{name}/{hierarchy}"


def vfs_options(info: mountapi.MountInfo) -> set[str]:
    return set(info.options.split(","))


def mounts_below(path: Path) -> list[str]:
    """Mount points at or below `path`, as text lines (id, point, fs, source, options)."""
    real = os.path.realpath(path)
    return [
        f"{i.mount_id} {i.mount_point} {i.fstype} {i.source} {i.options} {i.super_options}"
        for i in mountapi.read_mountinfo()
        if i.mount_point == real or i.mount_point.startswith(real.rstrip("/") + "/")
    ]


def listing(path: Path) -> list[tuple[str, str, int, str]]:
    """A comparable snapshot of a tree: (relative path, kind, mode bits, content digest or link)."""
    out = []
    for dirpath, dirnames, filenames in os.walk(path):
        dirnames.sort()
        for name in sorted(dirnames) + sorted(filenames):
            full = os.path.join(dirpath, name)
            st = os.lstat(full)
            rel = os.path.relpath(full, path)
            if stat.S_ISLNK(st.st_mode):
                out.append((rel, "link", 0, os.readlink(full)))
            elif stat.S_ISDIR(st.st_mode):
                out.append((rel, "dir", stat.S_IMODE(st.st_mode), ""))
            else:
                with open(full, "rb") as f:
                    digest = hashlib.sha256(f.read()).hexdigest()
                out.append((rel, "file", stat.S_IMODE(st.st_mode), digest))
    return out


def loops_settle(path: Path, at_most: int, timeout: float = 2.0) -> int:
    """Autoclear frees a loop device a moment after its last user is gone: wait for that."""
    deadline = time.monotonic() + timeout
    count = loops_backed_below(path)
    while count > at_most and time.monotonic() < deadline:
        time.sleep(0.02)
        count = loops_backed_below(path)
    return count


def expected_identity(root: Path, path: Path, *, raw: bool) -> dict[str, object]:
    """The origin entry upstream writes for an image without a verity hash. Take it before
    merging: once a hierarchy holding the image is merged, the image is seen through that
    overlay (another mount, another file handle)."""
    st = mountapi.statx(mountapi.AT_FDCWD, path, 0, mountapi.STATX_MNT_ID_UNIQUE | mountapi.STATX_BTIME)
    assert st.mnt_id is not None and st.mnt_id_is_unique
    entry: dict[str, object] = {"path": "/" + os.path.relpath(path, root), "onMountId": st.mnt_id}
    handle = mountapi.file_handle(path)
    if handle is not None:
        entry["fileHandle"] = {"type": handle[0], "handle": handle[1].hex()}
    else:
        entry["inode"] = os.stat(path).st_ino
    # no user.crtime_usec xattr in these tests: the birth time, or 0 where the fs has none
    entry["crtime"] = 0 if st.btime is None else st.btime[0] * 1_000_000 + st.btime[1] // 1000
    entry["mtime"] = os.stat(path).st_mtime_ns // 1000 if raw else 0
    return entry


def read_meta(hierarchy: Path, name: str, cls: str = "sysext") -> Optional[str]:
    try:
        return (hierarchy / f".systemd-{cls}" / name).read_text()
    except FileNotFoundError:
        return None
