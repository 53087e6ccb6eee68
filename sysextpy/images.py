"""Raw images and the private workspace they are mounted in.

A `Workspace` is a private mount namespace of this process with a tmpfs scratch area. Images
are attached and mounted there, overlays are assembled there, and the host sees nothing of it:
if the process dies, the namespace and every mount in it die too. Only finished overlays leave,
as detached mount trees, when `leave()` returns to the host namespace.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import Optional

from .errors import ImageError, MountError, SysextError
from .log import log
from .model import Candidate, ImageClass, ImageType

WORKSPACE = Path("/run/sysextpy/workspace")
_SNIFF_BYTES = 65536 + 4096


def sniff_filesystem(header: bytes) -> Optional[str]:
    """The file system (or partition table) a raw image starts with, from its first bytes."""
    if header[:4] == b"hsqs":
        return "squashfs"
    if len(header) >= 1028 and struct.unpack_from("<I", header, 1024)[0] == 0xE0F5E1E2:
        return "erofs"
    if len(header) >= 1082 and struct.unpack_from("<H", header, 1080)[0] == 0xEF53:
        return "ext4"
    if len(header) >= 520 and header[512:520] == b"EFI PART":
        return "gpt"
    if header[:4] == b"XFSB":
        return "xfs"
    if len(header) >= 65608 and header[65600:65608] == b"_BHRfS_M":
        return "btrfs"
    return None


def read_header(path: Path) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY)
    try:
        return os.pread(fd, _SNIFF_BYTES, 0)
    finally:
        os.close(fd)


class Workspace:
    """A private mount namespace with a tmpfs scratch directory; see the module docstring."""

    def __init__(self, base: Path = WORKSPACE) -> None:
        self.base = base
        self._host_ns: Optional[int] = None
        self._cwd: Optional[int] = None
        self._mounted: dict[tuple[str, str], Path] = {}
        self._counter = 0
        self.inside = False

    def enter(self) -> None:
        from . import mountapi as m

        self.base.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._host_ns = os.open("/proc/self/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
        self._cwd = os.open(".", os.O_PATH | os.O_CLOEXEC)
        try:
            m.unshare(m.CLONE_NEWNS)
            m.mount(None, "/", None, m.MS_REC | m.MS_PRIVATE)
            m.mount("sysextpy", self.base, "tmpfs", m.MS_NOSUID | m.MS_NODEV, "mode=0700")
        except OSError as e:
            self._close_fds()
            raise MountError(
                f"Failed to set up a private workspace: {e.strerror}", hint="run as root"
            ) from e
        self.inside = True

    def leave(self) -> None:
        """Return to the host's mount namespace. Workspace paths are gone afterwards; detached
        mount fds taken inside stay valid."""
        from . import mountapi as m

        if not self.inside:
            return
        assert self._host_ns is not None and self._cwd is not None
        m.setns(self._host_ns, m.CLONE_NEWNS)
        os.fchdir(self._cwd)
        self.inside = False
        self._close_fds()

    def _close_fds(self) -> None:
        for fd in (self._host_ns, self._cwd):
            if fd is not None:
                os.close(fd)
        self._host_ns = self._cwd = None

    def __enter__(self) -> Workspace:
        self.enter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.leave()

    def scratch_dir(self, kind: str, mode: int = 0o755, name: Optional[str] = None) -> Path:
        """A fresh directory in the workspace tmpfs; `name` gives it a stable path (recorded in origin)."""
        self._counter += 1
        path = self.base / kind / (name or str(self._counter))
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        path.mkdir(mode=mode)
        os.chmod(path, mode)
        return path

    def mount_image(self, candidate: Candidate) -> Path:
        """Attach and mount a raw image read-only inside the workspace; cached per image."""
        key = (candidate.image_class.value, candidate.name)
        if key in self._mounted:
            return self._mounted[key]
        if not self.inside:
            raise SysextError("internal: mount_image() outside the workspace")
        from . import mountapi as m
        from .loopdev import LoopDevice

        path = candidate.path
        try:
            header = read_header(path)
        except OSError as e:
            raise ImageError(f"cannot read image {os.fspath(path)!r}: {e.strerror}") from e
        if not header.strip(b"\0"):
            raise ImageError(f"image {os.fspath(path)!r} is empty (no file system found)")
        fstype = sniff_filesystem(header)
        if fstype is None:
            raise ImageError(f"image {os.fspath(path)!r} has no recognised file system or partition table")
        if fstype == "gpt":
            raise ImageError(
                f"image {os.fspath(path)!r} is a GPT disk image; partitioned images are not supported yet"
            )
        target = self.scratch_dir("images")
        try:
            loop = LoopDevice.attach(path, read_only=True)
        except OSError as e:
            raise ImageError(f"cannot attach {os.fspath(path)!r} to a loop device: {e.strerror}") from e
        try:
            m.mount(loop.path, target, fstype, m.MS_RDONLY | m.MS_NODEV | m.MS_NOSUID)
        except OSError as e:
            loop.detach()
            raise ImageError(f"cannot mount {fstype} image {os.fspath(path)!r}: {e.strerror}") from e
        finally:
            loop.close()  # the mount keeps the device; autoclear frees it when the last user goes
        log.debug("Mounted %s image %s at %s", fstype, path, target)
        self._mounted[key] = target
        return target


def image_tree(candidate: Candidate, workspace: Optional[Workspace]) -> Path:
    """The directory holding an image's file tree (the directory itself, or its mount)."""
    if candidate.type in (ImageType.DIRECTORY, ImageType.SUBVOLUME):
        return candidate.path
    if workspace is None or not workspace.inside:
        raise ImageError(f"raw image {candidate.name!r} not inspected: that needs root (a loop device)")
    return workspace.mount_image(candidate)


def other_class(image_class: ImageClass) -> ImageClass:
    return ImageClass.CONFEXT if image_class is ImageClass.SYSEXT else ImageClass.SYSEXT
