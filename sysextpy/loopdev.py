# SPDX-License-Identifier: LGPL-2.1-or-later
"""Loop devices without losetup: /dev/loop-control plus LOOP_CONFIGURE (or its older two-step form).

Devices are attached with LO_FLAGS_AUTOCLEAR: the kernel detaches them once the last user (our
fd, a mount) is gone, so a crash never leaks a device that is not mounted. Like the syscall
wrappers in mountapi, failures raise OSError (errno kept, the backing file as filename); callers
add context (ImageError, MountError).
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import time

from . import libc as C

TYPE_CHECKING = False  # typing is not imported at run time: it costs start-up time
if TYPE_CHECKING:
    from types import TracebackType
    from typing import Optional

    from .chase import StrPath

LOOP_SET_FD = 0x4C00
LOOP_CLR_FD = 0x4C01
LOOP_SET_STATUS64 = 0x4C04
LOOP_GET_STATUS64 = 0x4C05
LOOP_CONFIGURE = 0x4C0A
LOOP_CTL_GET_FREE = 0x4C82

LO_FLAGS_READ_ONLY = 1
LO_FLAGS_AUTOCLEAR = 4
LO_FLAGS_PARTSCAN = 8

LOOP_MAJOR = 7
LOOP_CONTROL = "/dev/loop-control"
_LOOP_CONTROL_DEVNUM = (10, 237)
_LO_NAME_SIZE = 64
_ATTEMPTS = 64


class _LoopInfo64(C.Structure):
    _fields_ = [
        ("lo_device", C.c_uint64),
        ("lo_inode", C.c_uint64),
        ("lo_rdevice", C.c_uint64),
        ("lo_offset", C.c_uint64),
        ("lo_sizelimit", C.c_uint64),
        ("lo_number", C.c_uint32),
        ("lo_encrypt_type", C.c_uint32),
        ("lo_encrypt_key_size", C.c_uint32),
        ("lo_flags", C.c_uint32),
        ("lo_file_name", C.c_char * _LO_NAME_SIZE),
        ("lo_crypt_name", C.c_char * _LO_NAME_SIZE),
        ("lo_encrypt_key", C.c_char * 32),
        ("lo_init", C.c_uint64 * 2),
    ]


class _LoopConfig(C.Structure):
    _fields_ = [
        ("fd", C.c_uint32),
        ("block_size", C.c_uint32),
        ("info", _LoopInfo64),
        ("_reserved", C.c_uint64 * 8),
    ]


def _ensure_node(path: str, kind: int, major: int, minor: int) -> None:
    """Create a missing device node (no devtmpfs, e.g. some containers)."""
    try:
        os.mknod(path, kind | 0o660, os.makedev(major, minor))
    except FileExistsError:
        pass


def _loop_devnum(number: int) -> tuple[int, int]:
    """major:minor of loopN; the minor is N shifted by the driver's partition bits."""
    try:
        with open(f"/sys/devices/virtual/block/loop{number}/dev", encoding="ascii") as f:
            text = f.read()
    except OSError:
        return LOOP_MAJOR, number
    major, _, minor = text.strip().partition(":")
    return int(major), int(minor)


def _open_control() -> int:
    if not os.path.exists(LOOP_CONTROL):
        _ensure_node(LOOP_CONTROL, stat.S_IFCHR, *_LOOP_CONTROL_DEVNUM)
    return os.open(LOOP_CONTROL, os.O_RDWR | os.O_CLOEXEC)


class LoopDevice:
    """An attached loop device; closing or detaching it lets the kernel clear it (autoclear)."""

    def __init__(self, path: str, fd: int, number: int, backing: str) -> None:
        self.path = path
        self.fd = fd
        self.number = number
        self.backing = backing

    def __repr__(self) -> str:
        return f"LoopDevice({self.path!r}, backing={self.backing!r}, fd={self.fd})"

    @classmethod
    def attach(
        cls,
        path: StrPath,
        *,
        read_only: bool = True,
        partscan: bool = False,
        offset: int = 0,
        sizelimit: int = 0,
        file_fd: Optional[int] = None,
    ) -> LoopDevice:
        """Attach the file `path` (or the file open as `file_fd`, which `path` names) to a free
        loop device. Raises OSError."""
        own = file_fd is None
        if file_fd is None:
            file_fd = os.open(path, (os.O_RDONLY if read_only else os.O_RDWR) | os.O_CLOEXEC)
        try:
            flags = LO_FLAGS_AUTOCLEAR
            if read_only:
                flags |= LO_FLAGS_READ_ONLY
            if partscan:
                flags |= LO_FLAGS_PARTSCAN
            config = _LoopConfig()
            config.fd = file_fd
            config.info.lo_offset = offset
            config.info.lo_sizelimit = sizelimit
            config.info.lo_flags = flags
            config.info.lo_file_name = os.fsencode(path)[: _LO_NAME_SIZE - 1]
            control = _open_control()
            try:
                return cls._attach_free(control, config, read_only, path)
            finally:
                os.close(control)
        finally:
            # The loop device holds its own reference to the file.
            if own:
                os.close(file_fd)

    @classmethod
    def _attach_free(
        cls, control: int, config: _LoopConfig, read_only: bool, backing: StrPath
    ) -> LoopDevice:
        for _ in range(_ATTEMPTS):
            try:
                number = fcntl.ioctl(control, LOOP_CTL_GET_FREE)
                dev = f"/dev/loop{number}"
                if not os.path.exists(dev):
                    _ensure_node(dev, stat.S_IFBLK, *_loop_devnum(number))
                loop_fd = os.open(dev, (os.O_RDONLY if read_only else os.O_RDWR) | os.O_CLOEXEC)
            except OSError as exc:
                raise _with_context(exc, "no free loop device", backing) from exc
            try:
                _configure(loop_fd, config)
            except OSError as exc:
                os.close(loop_fd)
                # Someone else took the device between GET_FREE and our ioctl: take another.
                if exc.errno == errno.EBUSY:
                    time.sleep(0.001)
                    continue
                raise _with_context(exc, f"attaching to {dev!r} failed", backing) from exc
            return cls(dev, loop_fd, number, os.path.abspath(backing))
        raise OSError(errno.EBUSY, "every free loop device was taken by others", os.fspath(backing))

    def close(self) -> None:
        """Drop our reference; with autoclear the device goes once mounts of it are gone too."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def detach(self) -> None:
        """Detach now if nothing else uses the device, else as soon as its last user goes."""
        if self.fd < 0:
            return
        try:
            fcntl.ioctl(self.fd, LOOP_CLR_FD)
        except OSError as exc:
            # ENXIO: already cleared. On any other error autoclear still does the job on close.
            if exc.errno != errno.ENXIO:
                self.close()
                raise _with_context(exc, "LOOP_CLR_FD failed", self.path) from exc
        self.close()

    def __enter__(self) -> LoopDevice:
        return self

    def __exit__(
        self,
        exc_type: Optional[type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        self.detach()


def _with_context(exc: OSError, what: str, path: StrPath) -> OSError:
    return OSError(exc.errno, f"{what}: {exc.strerror}", os.fspath(path))


def _configure(loop_fd: int, config: _LoopConfig) -> None:
    try:
        fcntl.ioctl(loop_fd, LOOP_CONFIGURE, bytes(config))
        return
    except OSError as exc:
        # Kernels before 5.8 lack LOOP_CONFIGURE.
        if exc.errno not in (errno.EINVAL, errno.ENOTTY):
            raise
    fcntl.ioctl(loop_fd, LOOP_SET_FD, config.fd)
    try:
        fcntl.ioctl(loop_fd, LOOP_SET_STATUS64, bytes(config.info))
    except OSError:
        fcntl.ioctl(loop_fd, LOOP_CLR_FD)
        raise


def count_attached_loops() -> int:
    """How many loop devices have a backing file (for leak checks)."""
    return sum(
        1
        for name in os.listdir("/sys/block")
        if name.startswith("loop") and os.path.exists(f"/sys/block/{name}/loop/backing_file")
    )
