# SPDX-License-Identifier: LGPL-2.1-or-later
"""The images a merge chose, held from discovery until the merge is built.

Discovery names images by path; the merge reads them much later, in a private mount namespace.
In between, the file system holding an image can go away and come back (an automount that
expires, a remount) or be replaced by another one, and the same path would then lead to
something else than what was discovered and fingerprinted. So each image is pinned in the host's
namespace as soon as discovery found it, before its inputs are read:

- a disk image (or block device) is held open; the merge reads and attaches it through that
  descriptor, never through its path again;
- a directory is cloned as a detached bind mount (open_tree(OPEN_TREE_CLONE)), which holds its
  file system mounted whatever happens to the original mount; the workspace attaches a fresh copy
  of the clone and hands the overlay a path below it.

After the inputs are read, `moved()` says which paths no longer lead to what was pinned (same
mount, same inode): the inputs may then describe something else, and the run looks again.
"""

from __future__ import annotations

import errno
import os
import stat

from .model import Candidate, ImageType

TYPE_CHECKING = False  # typing is not imported at run time: it costs start-up time
if TYPE_CHECKING:
    from collections.abc import Iterable
    from typing import Optional

TREE_TYPES = (ImageType.DIRECTORY, ImageType.SUBVOLUME)
FILE_TYPES = (ImageType.RAW, ImageType.BLOCK)


def _where(path: str) -> tuple[int, int, int]:
    """(mount id, device, inode) of what `path` leads to now."""
    from . import mountapi as m

    st = m.statx(m.AT_FDCWD, path, 0, m.STATX_MNT_ID_UNIQUE | m.STATX_MNT_ID | m.STATX_INO)
    return (st.mnt_id or 0, os.makedev(st.dev_major, st.dev_minor), st.ino)


class Pin:
    """One pinned image: a descriptor (an open file, or a detached mount of a directory) and where
    it was found."""

    def __init__(self, candidate: Candidate, fd: int, where: tuple[int, int, int]) -> None:
        self.candidate = candidate
        self.fd = fd
        self.where = where

    @property
    def is_tree(self) -> bool:
        return self.candidate.type in TREE_TYPES

    def clone(self) -> int:
        """A fresh detached copy of a pinned directory, for a workspace to attach.

        Older kernels (6.1 and 6.12 among them) copy only mounts of the caller's own namespace,
        and the pin is a detached mount: open_tree() fails with EINVAL. There the path is cloned
        again, and used only when it still leads to the mount and inode pinned."""
        from . import mountapi as m

        try:
            return m.open_tree(self.fd, "", m.OPEN_TREE_CLONE | m.OPEN_TREE_CLOEXEC | m.AT_EMPTY_PATH)
        except OSError as e:
            if e.errno != errno.EINVAL:
                raise
        path = os.fspath(self.candidate.path)
        fd = m.open_tree(m.AT_FDCWD, path, m.OPEN_TREE_CLONE | m.OPEN_TREE_CLOEXEC)
        st = os.fstat(fd)
        if _where(path) != self.where or (st.st_dev, st.st_ino) != self.where[1:]:
            os.close(fd)
            raise OSError(errno.ESTALE, "no longer the directory found at discovery", path)
        return fd


class Pins:
    """The pinned images of one run, by resolved path; see the module docstring."""

    def __init__(self) -> None:
        self._pins: dict[str, Pin] = {}

    def __len__(self) -> int:
        return len(self._pins)

    def take(self, candidates: Iterable[Candidate]) -> None:
        """Pin each image. One that cannot be opened is left to the steps that read it, which say why."""
        from . import mountapi as m

        for c in candidates:
            path = os.fspath(c.path)
            if path in self._pins or c.type not in TREE_TYPES + FILE_TYPES:
                continue
            try:
                before = _where(path)
                if c.type in TREE_TYPES:
                    fd = m.open_tree(m.AT_FDCWD, path, m.OPEN_TREE_CLONE | m.OPEN_TREE_CLOEXEC)
                else:
                    fd = os.open(
                        path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK | os.O_NOFOLLOW
                    )
            except OSError:
                continue  # not pinned: judging or mounting the image reports the error
            st = os.fstat(fd)
            # Both the descriptor and the path must name one object: the path was looked up twice.
            if (st.st_dev, st.st_ino) != before[1:] or _kind_differs(c, st.st_mode):
                os.close(fd)
                continue
            self._pins[path] = Pin(c, fd, before)

    def moved(self) -> list[str]:
        """The pinned directories whose paths lead elsewhere now (another mount or inode, or
        nowhere). A disk image is read through its pin from the start (LiveView.file_pin), so
        whatever its path leads to later, the inputs describe the image pinned."""
        gone = []
        for path, pin in self._pins.items():
            if not pin.is_tree:
                continue
            try:
                now = _where(path)
            except OSError:
                gone.append(path)
                continue
            if now != pin.where:
                gone.append(path)
        return gone

    def file_pin(self, path: os.PathLike[str] | str) -> Optional[Pin]:
        """The pin of a disk image (an open file), or None."""
        pin = self._pins.get(os.fspath(path))
        return pin if pin is not None and not pin.is_tree else None

    def file_fd(self, path: os.PathLike[str] | str) -> Optional[int]:
        """The open descriptor of a pinned disk image, or None."""
        pin = self.file_pin(path)
        return pin.fd if pin is not None else None

    def trees(self) -> list[Pin]:
        return [p for p in self._pins.values() if p.is_tree]

    def close(self) -> None:
        for pin in self._pins.values():
            os.close(pin.fd)
        self._pins.clear()

    def __enter__(self) -> Pins:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _kind_differs(candidate: Candidate, mode: int) -> bool:
    if candidate.type in TREE_TYPES:
        return not stat.S_ISDIR(mode)
    if candidate.type is ImageType.BLOCK:
        return not stat.S_ISBLK(mode)
    return not stat.S_ISREG(mode)
