# SPDX-License-Identifier: LGPL-2.1-or-later
"""The syscall wrappers: mount-related syscalls Python lacks, mountinfo parsing, feature probes.

Syscall wrappers are named after the syscall they wrap and raise OSError(errno, message, path);
callers turn that into a MountError with context. Helpers built on them (`make_overlay_fd`,
`classic_overlay_options`) raise MountError themselves.
"""

from __future__ import annotations

import errno
import os

from . import libc as C
from .errors import MountError, ParseError
from .log import log

TYPE_CHECKING = False  # typing is not imported at run time: it costs start-up time
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Any, Callable, Optional, Union

    StrPath = Union[str, "os.PathLike[str]"]
    MountOptions = Sequence[tuple[str, Optional[str]]]


# mount(2) flags
MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_REMOUNT = 0x20
MS_NOATIME = 0x400
MS_NODIRATIME = 0x800
MS_BIND = 0x1000
MS_MOVE = 0x2000
MS_REC = 0x4000
MS_SILENT = 0x8000
MS_UNBINDABLE = 1 << 17
MS_PRIVATE = 1 << 18
MS_SLAVE = 1 << 19
MS_SHARED = 1 << 20
MS_RELATIME = 1 << 21
MS_STRICTATIME = 1 << 24

# umount2(2) flags
MNT_FORCE = 0x1
MNT_DETACH = 0x2
MNT_EXPIRE = 0x4
UMOUNT_NOFOLLOW = 0x8

# *at() flags
AT_FDCWD = -100
AT_SYMLINK_NOFOLLOW = 0x100
AT_HANDLE_FID = 0x200
AT_SYMLINK_FOLLOW = 0x400
AT_NO_AUTOMOUNT = 0x800
AT_EMPTY_PATH = 0x1000
AT_RECURSIVE = 0x8000

# fsopen / fsconfig / fsmount
FSOPEN_CLOEXEC = 0x1
FSCONFIG_SET_FLAG = 0
FSCONFIG_SET_STRING = 1
FSCONFIG_SET_BINARY = 2
FSCONFIG_SET_PATH = 3
FSCONFIG_SET_PATH_EMPTY = 4
FSCONFIG_SET_FD = 5
FSCONFIG_CMD_CREATE = 6
FSCONFIG_CMD_RECONFIGURE = 7
FSCONFIG_CMD_CREATE_EXCL = 8
FSMOUNT_CLOEXEC = 0x1

# mount attributes (fsmount, mount_setattr)
MOUNT_ATTR_RDONLY = 0x1
MOUNT_ATTR_NOSUID = 0x2
MOUNT_ATTR_NODEV = 0x4
MOUNT_ATTR_NOEXEC = 0x8
MOUNT_ATTR__ATIME = 0x70
MOUNT_ATTR_RELATIME = 0x0
MOUNT_ATTR_NOATIME = 0x10
MOUNT_ATTR_STRICTATIME = 0x20
MOUNT_ATTR_NODIRATIME = 0x80
MOUNT_ATTR_IDMAP = 0x100000
MOUNT_ATTR_NOSYMFOLLOW = 0x200000

# move_mount
MOVE_MOUNT_F_SYMLINKS = 0x1
MOVE_MOUNT_F_AUTOMOUNTS = 0x2
MOVE_MOUNT_F_EMPTY_PATH = 0x4
MOVE_MOUNT_T_SYMLINKS = 0x10
MOVE_MOUNT_T_AUTOMOUNTS = 0x20
MOVE_MOUNT_T_EMPTY_PATH = 0x40
MOVE_MOUNT_SET_GROUP = 0x100
MOVE_MOUNT_BENEATH = 0x200

# open_tree
OPEN_TREE_CLONE = 0x1
OPEN_TREE_CLOEXEC = os.O_CLOEXEC

# statx
STATX_TYPE = 0x1
STATX_MODE = 0x2
STATX_NLINK = 0x4
STATX_UID = 0x8
STATX_GID = 0x10
STATX_ATIME = 0x20
STATX_MTIME = 0x40
STATX_CTIME = 0x80
STATX_INO = 0x100
STATX_SIZE = 0x200
STATX_BLOCKS = 0x400
STATX_BASIC_STATS = 0x7FF
STATX_BTIME = 0x800
STATX_MNT_ID = 0x1000
STATX_DIOALIGN = 0x2000
STATX_MNT_ID_UNIQUE = 0x4000
STATX_ATTR_MOUNT_ROOT = 0x2000

# unshare
CLONE_NEWNS = 0x20000

# A page: the most mount(2) copies of its data argument, terminating NUL included.
MOUNT_DATA_MAX = 4095
# fsconfig(FSCONFIG_SET_STRING) copies at most 255 bytes (plus NUL) of a value.
FSCONFIG_STRING_MAX = 255

_MAX_HANDLE_SZ = 128

# Syscalls glibc may lack. The new mount API (428+) has the same numbers on every architecture
# using the unified table; statx and name_to_handle_at differ, and glibc has both anyway.
_NR_OPEN_TREE = 428
_NR_MOVE_MOUNT = 429
_NR_FSOPEN = 430
_NR_FSCONFIG = 431
_NR_FSMOUNT = 432
_NR_MOUNT_SETATTR = 442
_NR_BY_MACHINE = {
    "x86_64": {"statx": 332, "name_to_handle_at": 303},
    "aarch64": {"statx": 291, "name_to_handle_at": 264},
    "riscv64": {"statx": 291, "name_to_handle_at": 264},
    "loongarch64": {"statx": 291, "name_to_handle_at": 264},
}

_syscall = C.function("syscall", C.c_long)
_mount = C.function("mount")
_umount2 = C.function("umount2")
_unshare = C.function("unshare")
_setns = C.function("setns")


def _fs(path: Optional[StrPath]) -> Optional[bytes]:
    return None if path is None else os.fsencode(path)


def _check(result: int, what: str, path: Optional[StrPath] = None) -> int:
    if result < 0:
        err = C.get_errno()
        if path is None:
            raise OSError(err, f"{what}: {os.strerror(err)}")
        raise OSError(err, f"{what}: {os.strerror(err)}", os.fsdecode(path))
    return result


_OPTIONAL: dict[str, Any] = {}


def _optional(name: str) -> Any:
    """The C library's `name`, or None where it has none (a libc older than the syscall)."""
    if name not in _OPTIONAL:
        try:
            _OPTIONAL[name] = C.function(name)
        except AttributeError:
            _OPTIONAL[name] = None
    return _OPTIONAL[name]


def _nr(name: str) -> int:
    table = _NR_BY_MACHINE.get(os.uname().machine)
    if table is None:
        raise OSError(errno.ENOSYS, f"{name}: syscall number unknown on {os.uname().machine!r}")
    return table[name]


# ---------------------------------------------------------------------------------------------
# Syscall wrappers


def mount(
    source: Optional[StrPath],
    target: StrPath,
    fstype: Optional[str],
    flags: int,
    data: Optional[str] = None,
) -> None:
    res = _mount(
        _fs(source),
        _fs(target),
        None if fstype is None else fstype.encode(),
        C.c_ulong(flags),
        None if data is None else os.fsencode(data),
    )
    _check(int(res), "mount", target)


def umount2(target: StrPath, flags: int = 0) -> None:
    _check(int(_umount2(_fs(target), C.c_int(flags))), "umount2", target)


def unshare(flags: int) -> None:
    _check(int(_unshare(C.c_int(flags))), "unshare")


def setns(fd: int, nstype: int) -> None:
    _check(int(_setns(C.c_int(fd), C.c_int(nstype))), "setns")


def fsopen(fsname: str, flags: int = FSOPEN_CLOEXEC) -> int:
    res = _syscall(C.c_long(_NR_FSOPEN), C.c_char_p(fsname.encode()), C.c_long(flags))
    return _check(int(res), f"fsopen({fsname!r})")


def _fsconfig(fd: int, cmd: int, key: Optional[str], value: Optional[bytes], aux: int, what: str) -> None:
    res = _syscall(
        C.c_long(_NR_FSCONFIG),
        C.c_long(fd),
        C.c_long(cmd),
        None if key is None else C.c_char_p(key.encode()),
        None if value is None else C.c_char_p(value),
        C.c_long(aux),
    )
    _check(int(res), what)


def fsconfig_set_string(fd: int, key: str, value: StrPath) -> None:
    raw = os.fsencode(value)
    _fsconfig(fd, FSCONFIG_SET_STRING, key, raw, 0, f"fsconfig({key!r}={os.fsdecode(raw)!r})")


def fsconfig_set_flag(fd: int, key: str) -> None:
    _fsconfig(fd, FSCONFIG_SET_FLAG, key, None, 0, f"fsconfig({key!r})")


def fsconfig_set_fd(fd: int, key: str, value_fd: int) -> None:
    _fsconfig(fd, FSCONFIG_SET_FD, key, None, value_fd, f"fsconfig({key!r}=fd {value_fd})")


def fsconfig_create(fd: int) -> None:
    _fsconfig(fd, FSCONFIG_CMD_CREATE, None, None, 0, "fsconfig(create)")


def fsmount(fd: int, flags: int = FSMOUNT_CLOEXEC, attr_flags: int = 0) -> int:
    res = _syscall(C.c_long(_NR_FSMOUNT), C.c_long(fd), C.c_long(flags), C.c_long(attr_flags))
    return _check(int(res), "fsmount")


def move_mount(from_dfd: int, from_path: StrPath, to_dfd: int, to_path: StrPath, flags: int) -> None:
    res = _syscall(
        C.c_long(_NR_MOVE_MOUNT),
        C.c_long(from_dfd),
        C.c_char_p(os.fsencode(from_path)),
        C.c_long(to_dfd),
        C.c_char_p(os.fsencode(to_path)),
        C.c_long(flags),
    )
    _check(int(res), "move_mount", to_path if os.fspath(to_path) else from_path)


def open_tree(dfd: int, path: StrPath, flags: int) -> int:
    res = _syscall(
        C.c_long(_NR_OPEN_TREE),
        C.c_long(dfd),
        C.c_char_p(os.fsencode(path)),
        C.c_long(flags),
    )
    return _check(int(res), "open_tree", path)


class _MountAttr(C.Structure):
    _fields_ = [
        ("attr_set", C.c_uint64),
        ("attr_clr", C.c_uint64),
        ("propagation", C.c_uint64),
        ("userns_fd", C.c_uint64),
    ]


def mount_setattr(
    dfd: int, path: StrPath, flags: int, attr_set: int, attr_clr: int, propagation: int = 0
) -> None:
    attr = _MountAttr(attr_set, attr_clr, propagation, 0)
    res = _syscall(
        C.c_long(_NR_MOUNT_SETATTR),
        C.c_long(dfd),
        C.c_char_p(os.fsencode(path)),
        C.c_long(flags),
        C.byref(attr),
        C.c_long(C.sizeof(attr)),
    )
    _check(int(res), "mount_setattr", path)


class _StatxTimestamp(C.Structure):
    _fields_ = [("tv_sec", C.c_int64), ("tv_nsec", C.c_uint32), ("_reserved", C.c_int32)]


class _StatxBuf(C.Structure):
    _fields_ = [
        ("stx_mask", C.c_uint32),
        ("stx_blksize", C.c_uint32),
        ("stx_attributes", C.c_uint64),
        ("stx_nlink", C.c_uint32),
        ("stx_uid", C.c_uint32),
        ("stx_gid", C.c_uint32),
        ("stx_mode", C.c_uint16),
        ("_spare0", C.c_uint16),
        ("stx_ino", C.c_uint64),
        ("stx_size", C.c_uint64),
        ("stx_blocks", C.c_uint64),
        ("stx_attributes_mask", C.c_uint64),
        ("stx_atime", _StatxTimestamp),
        ("stx_btime", _StatxTimestamp),
        ("stx_ctime", _StatxTimestamp),
        ("stx_mtime", _StatxTimestamp),
        ("stx_rdev_major", C.c_uint32),
        ("stx_rdev_minor", C.c_uint32),
        ("stx_dev_major", C.c_uint32),
        ("stx_dev_minor", C.c_uint32),
        ("stx_mnt_id", C.c_uint64),
        ("_spare", C.c_uint64 * 13),
    ]


class Statx:
    """What statx(2) returned; fields the kernel did not fill (see `mask`) are None. Each field is
    read from the kernel's buffer when asked for: most callers want one or two of them."""

    __slots__ = ("_buf", "mask")

    def __init__(self, buf: _StatxBuf) -> None:
        self._buf = buf
        self.mask: int = buf.stx_mask

    attributes = property(lambda self: int(self._buf.stx_attributes))
    attributes_mask = property(lambda self: int(self._buf.stx_attributes_mask))
    mode = property(lambda self: int(self._buf.stx_mode))
    nlink = property(lambda self: int(self._buf.stx_nlink))
    uid = property(lambda self: int(self._buf.stx_uid))
    gid = property(lambda self: int(self._buf.stx_gid))
    ino = property(lambda self: int(self._buf.stx_ino))
    size = property(lambda self: int(self._buf.stx_size))
    dev_major = property(lambda self: int(self._buf.stx_dev_major))
    dev_minor = property(lambda self: int(self._buf.stx_dev_minor))
    rdev_major = property(lambda self: int(self._buf.stx_rdev_major))
    rdev_minor = property(lambda self: int(self._buf.stx_rdev_minor))

    @property
    def mnt_id(self) -> Optional[int]:
        """The mount id; the 64-bit unique one if mask has STATX_MNT_ID_UNIQUE."""
        return int(self._buf.stx_mnt_id) if self.mask & (STATX_MNT_ID | STATX_MNT_ID_UNIQUE) else None

    @property
    def btime(self) -> Optional[tuple[int, int]]:
        """(sec, nsec) of the birth time, if the file system keeps one."""
        t = self._buf.stx_btime
        return (t.tv_sec, t.tv_nsec) if self.mask & STATX_BTIME else None

    @property
    def mtime(self) -> tuple[int, int]:
        t = self._buf.stx_mtime
        return (t.tv_sec, t.tv_nsec)

    @property
    def dev(self) -> int:
        return os.makedev(self._buf.stx_dev_major, self._buf.stx_dev_minor)

    @property
    def mnt_id_is_unique(self) -> bool:
        return bool(self.mask & STATX_MNT_ID_UNIQUE)


def statx(dirfd: int, path: StrPath, flags: int, mask: int) -> Statx:
    buf = _StatxBuf()
    raw = os.fsencode(path)
    libc_statx = _optional("statx")
    if libc_statx is not None:
        # Plain ints and bytes go to C as int and char *: what statx() takes (mask fits an int).
        res = libc_statx(dirfd, raw, flags, mask, C.byref(buf))
    else:
        res = _syscall(
            C.c_long(_nr("statx")),
            C.c_long(dirfd),
            C.c_char_p(raw),
            C.c_long(flags),
            C.c_long(mask),
            C.byref(buf),
        )
    if res < 0:
        _check(int(res), "statx", path)
    return Statx(buf)


def name_to_handle_at(dirfd: int, path: StrPath, flags: int) -> tuple[int, bytes, int]:
    """Return (handle_type, handle bytes, mount id) of `path`."""
    size = _MAX_HANDLE_SZ
    raw = C.c_char_p(os.fsencode(path))
    mount_id = C.c_uint64(0)  # large enough for AT_HANDLE_MNT_ID_UNIQUE too
    func = _optional("name_to_handle_at")
    while True:
        buf = C.string_buffer(8 + size)
        C.c_uint32.from_buffer(buf, 0).value = size
        if func is not None:
            res = func(C.c_int(dirfd), raw, buf, C.byref(mount_id), C.c_int(flags))
        else:
            res = _syscall(
                C.c_long(_nr("name_to_handle_at")),
                C.c_long(dirfd),
                raw,
                buf,
                C.byref(mount_id),
                C.c_long(flags),
            )
        if int(res) < 0 and C.get_errno() == errno.EOVERFLOW:
            wanted = C.c_uint32.from_buffer(buf, 0).value
            if wanted <= size:  # EOVERFLOW without a bigger size: the file system has no handles
                _check(-1, "name_to_handle_at", path)
            size = wanted
            continue
        _check(int(res), "name_to_handle_at", path)
        handle_bytes = C.c_uint32.from_buffer(buf, 0).value
        handle_type = C.c_int32.from_buffer(buf, 4).value
        # Without AT_HANDLE_MNT_ID_UNIQUE the kernel wrote an int at the start of the buffer.
        mnt = C.c_int.from_buffer(mount_id).value
        return handle_type, buf.raw[8 : 8 + handle_bytes], mnt


_NO_HANDLE_ERRNOS = (errno.EOPNOTSUPP, errno.ENOSYS, errno.EPERM, errno.EACCES, errno.EOVERFLOW)


def file_handle(path: StrPath, fd: Optional[int] = None) -> Optional[tuple[int, bytes]]:
    """(handle_type, handle) of `path` (symlinks followed), or of the file open as `fd`, or None if
    its file system has none.

    AT_HANDLE_FID (kernel >= 6.5) is tried first: it also works on file systems that cannot
    reopen by handle. Other errors (ENOENT...) are raised.
    """
    dirfd, where, empty = (AT_FDCWD, path, 0) if fd is None else (fd, "", AT_EMPTY_PATH)
    for flags in (AT_SYMLINK_FOLLOW | AT_HANDLE_FID | empty, AT_SYMLINK_FOLLOW | empty):
        try:
            handle_type, handle, _ = name_to_handle_at(dirfd, where, flags)
        except OSError as exc:
            if exc.errno == errno.EINVAL and flags & AT_HANDLE_FID:
                continue  # kernel older than AT_HANDLE_FID
            if exc.errno in _NO_HANDLE_ERRNOS:
                return None
            raise
        return handle_type, handle
    return None


# ---------------------------------------------------------------------------------------------
# Feature probes, cached per process

_PROBED: dict[str, bool] = {}


def _once(probe: Callable[[], bool]) -> Callable[[], bool]:
    """functools.cache for a probe without arguments, without importing functools for it."""

    def cached() -> bool:
        found = _PROBED.get(probe.__name__)
        if found is None:
            found = _PROBED[probe.__name__] = probe()
        return found

    cached.__name__ = cached.__qualname__ = probe.__name__
    cached.__doc__ = probe.__doc__
    return cached


@_once
def have_new_mount_api() -> bool:
    try:
        fd = fsopen("overlay", FSOPEN_CLOEXEC)
    except OSError:
        return False
    os.close(fd)
    return True


@_once
def have_lowerdir_plus() -> bool:
    """Whether overlayfs takes one layer per fsconfig call ("lowerdir+", Linux >= 6.8).

    Before 6.5 overlayfs accepts any key at fsconfig() time and refuses it only when the file
    system is created, so the kernel version has to agree as well."""
    if not _kernel_at_least(6, 8):
        return False
    try:
        fd = fsopen("overlay", FSOPEN_CLOEXEC)
    except OSError:
        return False
    try:
        fsconfig_set_string(fd, "lowerdir+", "/")
    except OSError as exc:
        # An unknown key is EINVAL; any other error means the key was understood.
        return exc.errno != errno.EINVAL
    finally:
        os.close(fd)
    return True


def kernel_version(release: str) -> Optional[tuple[int, int]]:
    """(major, minor) from the start of a kernel release string ("6.8.0-31-generic"), or None."""
    first, dot, rest = release.partition(".")
    second = rest[: len(rest) - len(rest.lstrip("0123456789"))]
    if not (dot and first and second and all("0" <= c <= "9" for c in first)):
        return None
    return int(first), int(second)


def _kernel_at_least(major: int, minor: int) -> bool:
    found = kernel_version(os.uname().release)
    return found is not None and found >= (major, minor)


@_once
def have_move_mount_beneath() -> bool:
    """Whether move_mount() knows MOVE_MOUNT_BENEATH (Linux >= 6.5)."""
    # Unknown flags are refused with EINVAL before the (invalid) fd is looked at; a known flag
    # gets as far as EBADF. Nothing is moved either way.
    try:
        move_mount(-1, "", AT_FDCWD, "/", MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_BENEATH)
    except OSError as exc:
        if exc.errno in (errno.EBADF, errno.ENOENT):
            return True
        if exc.errno in (errno.EINVAL, errno.ENOSYS):
            return False
    # Unprivileged (EPERM is checked first) or unexpected: go by the kernel version.
    return _kernel_at_least(6, 5)


def _fdinfo_mnt_id(path: StrPath) -> int:
    fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    try:
        with open(f"/proc/self/fdinfo/{fd}", encoding="utf-8") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key == "mnt_id":
                    return int(value)
    finally:
        os.close(fd)
    raise OSError(errno.ENOSYS, "no mnt_id in /proc/self/fdinfo", os.fsdecode(path))


def unique_mount_id(path: StrPath) -> int:
    """The id of the mount containing `path` (symlinks followed): the 64-bit never-reused id
    where the kernel has it (>= 6.8), else the classic mountinfo id."""
    for mask in (STATX_MNT_ID_UNIQUE, STATX_MNT_ID):
        st = statx(AT_FDCWD, path, 0, mask)
        if st.mask & mask and st.mnt_id is not None:
            return st.mnt_id
    try:
        return name_to_handle_at(AT_FDCWD, path, AT_SYMLINK_FOLLOW)[2]
    except OSError as exc:
        if exc.errno not in _NO_HANDLE_ERRNOS:
            raise
    return _fdinfo_mnt_id(path)


# ---------------------------------------------------------------------------------------------
# Overlays


def _drain_fs_log(fd: int) -> str:
    """Messages the kernel queued on an fs context ("e overlay: ..."), best effort."""
    lines = []
    while True:
        try:
            chunk = os.read(fd, 4096)
        except OSError:
            break  # ENODATA: queue empty
        if not chunk:
            break
        lines.append(chunk.decode(errors="replace").strip())
    return "; ".join(lines)


_VFS_OPTIONS: dict[str, tuple[int, int, bool]] = {
    # name: (MS flag, MOUNT_ATTR flag, whether the option sets (True) or clears it)
    "ro": (MS_RDONLY, MOUNT_ATTR_RDONLY, True),
    "rw": (MS_RDONLY, MOUNT_ATTR_RDONLY, False),
    "nosuid": (MS_NOSUID, MOUNT_ATTR_NOSUID, True),
    "suid": (MS_NOSUID, MOUNT_ATTR_NOSUID, False),
    "nodev": (MS_NODEV, MOUNT_ATTR_NODEV, True),
    "dev": (MS_NODEV, MOUNT_ATTR_NODEV, False),
    "noexec": (MS_NOEXEC, MOUNT_ATTR_NOEXEC, True),
    "exec": (MS_NOEXEC, MOUNT_ATTR_NOEXEC, False),
    "noatime": (MS_NOATIME, MOUNT_ATTR_NOATIME, True),
    "relatime": (MS_RELATIME, MOUNT_ATTR_RELATIME, True),
    "strictatime": (MS_STRICTATIME, MOUNT_ATTR_STRICTATIME, True),
    "nodiratime": (MS_NODIRATIME, MOUNT_ATTR_NODIRATIME, True),
}


def parse_mount_options(text: str) -> list[tuple[str, Optional[str]]]:
    """Split "a=b,c,d=e\\,f" into [("a","b"), ("c",None), ("d","e\\,f")]; escapes are kept.

    Items are the runs of escaped characters (a backslash and the character after it, never a
    newline) and characters other than ',' and '\\'; empty items are dropped, and a backslash
    that escapes nothing ends the item it stands in."""
    items: list[str] = []
    current: list[str] = []
    i, end = 0, len(text)
    while i < end:
        ch = text[i]
        if ch == "\\" and i + 1 < end and text[i + 1] != "\n":
            current.append(text[i : i + 2])
            i += 2
            continue
        if ch in ",\\":
            if current:
                items.append("".join(current))
                current = []
        else:
            current.append(ch)
        i += 1
    if current:
        items.append("".join(current))
    result: list[tuple[str, Optional[str]]] = []
    for item in items:
        key, sep, value = item.partition("=")
        result.append((key, value if sep else None))
    return result


def split_vfs_options(options: MountOptions) -> tuple[int, int, list[tuple[str, Optional[str]]]]:
    """Separate per-mount flags (noatime, nosuid...) from file system options.

    mount(2) and fsconfig() hand every key to the file system, and overlayfs refuses "noatime":
    such keys must become MS_* flags (classic) or MOUNT_ATTR_* flags (fsmount). Returns
    (ms_flags, mount_attr_flags, remaining options); later options override earlier ones.
    """
    ms_flags = 0
    attr_flags = 0
    rest: list[tuple[str, Optional[str]]] = []
    for key, value in options:
        known = _VFS_OPTIONS.get(key) if value is None else None
        if known is None:
            rest.append((key, value))
            continue
        ms_bit, attr_bit, on = known
        if ms_bit in (MS_NOATIME, MS_RELATIME, MS_STRICTATIME):
            ms_flags &= ~(MS_NOATIME | MS_RELATIME | MS_STRICTATIME)
            attr_flags &= ~MOUNT_ATTR__ATIME
        if on:
            ms_flags |= ms_bit
            attr_flags |= attr_bit
        else:
            ms_flags &= ~ms_bit
            attr_flags &= ~attr_bit
    return ms_flags, attr_flags, rest


def escape_overlay_path(path: StrPath) -> str:
    """Backslash-escape what overlayfs treats specially in "lowerdir=" and friends."""
    return os.fsdecode(path).replace("\\", "\\\\").replace(",", "\\,").replace(":", "\\:")


def _check_layer_count(lowerdirs: Sequence[StrPath], upperdir: Optional[StrPath]) -> None:
    if upperdir is None and len(lowerdirs) < 2:
        raise MountError(
            f"A read-only overlay needs at least two lower directories, got {len(lowerdirs)}.",
            hint="overlayfs refuses a single lower directory without an upper directory",
        )
    if not lowerdirs:
        raise MountError("An overlay needs at least one lower directory, none given.")


def classic_overlay_options(
    lowerdirs: Sequence[StrPath],
    *,
    upperdir: Optional[StrPath] = None,
    workdir: Optional[StrPath] = None,
    options: MountOptions = (),
) -> str:
    """The data string for mount(2) of an overlay: "lowerdir=top:...:bottom[,upperdir=..,workdir=..]".

    `options` must be file system options only (see `split_vfs_options`). Raises MountError
    when the result does not fit the page mount(2) copies.
    """
    _check_layer_count(lowerdirs, upperdir)
    parts = ["lowerdir=" + ":".join(escape_overlay_path(d) for d in lowerdirs)]
    if upperdir is not None:
        parts.append("upperdir=" + escape_overlay_path(upperdir))
    if workdir is not None:
        parts.append("workdir=" + escape_overlay_path(workdir))
    parts.extend(key if value is None else f"{key}={value}" for key, value in options)
    data = ",".join(parts)
    size = len(os.fsencode(data))
    if size > MOUNT_DATA_MAX:
        raise MountError(
            f"Overlay mount options for {len(lowerdirs)} layers are {size} bytes, "
            f"more than the {MOUNT_DATA_MAX} bytes mount(2) accepts.",
            hint="merge fewer extensions or shorten their paths; "
            "kernels >= 6.8 avoid the limit by passing layers one by one (lowerdir+)",
        )
    return data


def _set_layer(fd: int, key: str, path: StrPath, escape: bool) -> None:
    value = escape_overlay_path(path) if escape else os.fsdecode(path)
    if len(os.fsencode(value)) <= FSCONFIG_STRING_MAX:
        fsconfig_set_string(fd, key, value)
        return
    # Longer than fsconfig takes as a string: pass the directory itself (Linux >= 6.13).
    dir_fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fsconfig_set_fd(fd, key, dir_fd)
    finally:
        os.close(dir_fd)


def make_overlay_fd(
    lowerdirs: Sequence[StrPath],
    *,
    upperdir: Optional[StrPath] = None,
    workdir: Optional[StrPath] = None,
    source: str = "overlay",
    options: MountOptions = (),
    attr_flags: int = 0,
) -> int:
    """Create a detached overlay (top layer first) and return its mount fd (O_CLOEXEC).

    Layers go one per fsconfig("lowerdir+") call, so neither the page limit of mount(2) nor
    escaping of lower paths matters. Per-mount flags in `options` (noatime...) are turned into
    mount attributes. Attach the result with move_mount(fd, "", AT_FDCWD, target,
    MOVE_MOUNT_F_EMPTY_PATH). Raises MountError, with the kernel's own explanation if it gave one.
    """
    _check_layer_count(lowerdirs, upperdir)
    if not have_lowerdir_plus():
        raise MountError("This kernel's overlayfs does not accept layers one by one (lowerdir+).")
    _, vfs_attrs, fs_options = split_vfs_options(options)
    try:
        fs_fd = fsopen("overlay", FSOPEN_CLOEXEC)
    except OSError as exc:
        raise MountError(f"Failed to open an overlayfs context: {exc.strerror}") from exc
    try:
        step = "source"
        try:
            fsconfig_set_string(fs_fd, "source", source)
            for layer in lowerdirs:
                step = f"lower directory {os.fsdecode(layer)!r}"
                _set_layer(fs_fd, "lowerdir+", layer, escape=False)
            # Unlike lowerdir+, the kernel unescapes upperdir and workdir strings.
            if upperdir is not None:
                step = f"upper directory {os.fsdecode(upperdir)!r}"
                _set_layer(fs_fd, "upperdir", upperdir, escape=True)
            if workdir is not None:
                step = f"work directory {os.fsdecode(workdir)!r}"
                _set_layer(fs_fd, "workdir", workdir, escape=True)
            for key, value in fs_options:
                step = f"option {key!r}"
                if value is None:
                    fsconfig_set_flag(fs_fd, key)
                else:
                    fsconfig_set_string(fs_fd, key, value)
            step = "creating the file system"
            fsconfig_create(fs_fd)
            step = "fsmount"
            return fsmount(fs_fd, FSMOUNT_CLOEXEC, attr_flags | vfs_attrs)
        except OSError as exc:
            log = _drain_fs_log(fs_fd)
            reason = os.strerror(exc.errno or errno.EIO) + (f" ({log})" if log else "")
            raise MountError(f"Failed to set up overlay {source!r} ({step}): {reason}") from exc
    finally:
        os.close(fs_fd)


# ---------------------------------------------------------------------------------------------
# /proc/*/mountinfo


class MountInfo:
    """One line of mountinfo. A plain class: a mount table is parsed several times a run, and
    a record's keyword constructor costs twice the parsing of the line itself."""

    __slots__ = (
        "mount_id",
        "parent_id",
        "major",
        "minor",
        "root",
        "mount_point",
        "options",
        "fstype",
        "source",
        "super_options",
        "optional_fields",
    )

    def __init__(
        self,
        mount_id: int,
        parent_id: int,
        major: int,
        minor: int,
        root: str,
        mount_point: str,
        options: str,
        fstype: str,
        source: str,
        super_options: str,
        optional_fields: tuple[str, ...] = (),  # "shared:N", "master:N", "propagate_from:N", "unbindable"
    ) -> None:
        self.mount_id = mount_id
        self.parent_id = parent_id
        self.major = major
        self.minor = minor
        self.root = root
        self.mount_point = mount_point
        self.options = options
        self.fstype = fstype
        self.source = source
        self.super_options = super_options
        self.optional_fields = optional_fields

    def _fields(self) -> tuple[object, ...]:
        return tuple(getattr(self, n) for n in self.__slots__)

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        assert isinstance(other, MountInfo)
        return self._fields() == other._fields()

    def __hash__(self) -> int:
        return hash(self._fields())

    def __repr__(self) -> str:
        inner = ", ".join(f"{n}={getattr(self, n)!r}" for n in self.__slots__)
        return f"MountInfo({inner})"


_OCTAL = "01234567"


def _unescape_octal(field: str) -> str:
    """Decode the octal escapes of mountinfo (\\040 for a space...)."""
    if "\\" not in field:
        return field
    out: list[str] = []
    i, end = 0, len(field)
    while i < end:
        ch = field[i]
        if ch == "\\" and i + 3 < end and all(c in _OCTAL for c in field[i + 1 : i + 4]):
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(ch)
            i += 1
    return "".join(out)


def parse_mountinfo(text: str) -> list[MountInfo]:
    """Parse /proc/PID/mountinfo text (see proc(5)); octal escapes (\\040...) are decoded."""
    result = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split(" ")
        try:
            sep = fields.index("-", 6)
            mount_id, parent_id = int(fields[0]), int(fields[1])
            major, minor = (int(x) for x in fields[2].split(":"))
            fstype, source, super_options = fields[sep + 1 : sep + 4]
        except ValueError as exc:
            raise ParseError(f"Malformed mountinfo line {lineno}: {line!r}") from exc
        result.append(
            MountInfo(
                mount_id,
                parent_id,
                major,
                minor,
                _unescape_octal(fields[3]),
                _unescape_octal(fields[4]),
                fields[5],
                _unescape_octal(fstype),
                _unescape_octal(source),
                _unescape_octal(super_options),
                tuple(fields[6:sep]),
            )
        )
    return result


def read_mountinfo(pid: Union[int, str] = "self") -> list[MountInfo]:
    with open(f"/proc/{pid}/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
        return parse_mountinfo(f.read())


def is_mount_point(path: StrPath, *, follow_symlinks: bool = False) -> bool:
    """Whether `path` is the root of a mount. A missing path is not a mount point."""
    flags = AT_NO_AUTOMOUNT | (0 if follow_symlinks else AT_SYMLINK_NOFOLLOW)
    mask = STATX_TYPE | STATX_INO | STATX_MNT_ID
    try:
        st = statx(AT_FDCWD, path, flags, mask)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            return False
        raise
    if st.attributes_mask & STATX_ATTR_MOUNT_ROOT:
        return bool(st.attributes & STATX_ATTR_MOUNT_ROOT)
    # Kernels before 5.8: compare with the parent directory.
    full = os.path.realpath(path) if follow_symlinks else os.path.abspath(path)
    if full == "/":
        return True
    parent = statx(AT_FDCWD, os.path.dirname(full), AT_NO_AUTOMOUNT, mask)
    if st.mnt_id is not None and parent.mnt_id is not None:
        return st.mnt_id != parent.mnt_id
    if st.dev != parent.dev:
        return True
    # Same device: a bind mount of the same file system, or not a mount at all.
    real = os.path.realpath(full)
    return any(info.mount_point == real for info in read_mountinfo())


def submounts_below(path: StrPath, infos: Sequence[MountInfo]) -> list[MountInfo]:
    """Mounts strictly below `path` (a normalized absolute path), in mountinfo order."""
    base = os.path.normpath(os.fsdecode(path))
    prefix = base.rstrip("/") + "/"
    return [info for info in infos if info.mount_point != base and info.mount_point.startswith(prefix)]


# ---------------------------------------------------------------------------------------------
# Mounts made on a hierarchy, carried across a change of what is mounted there


def carry_submounts(target: str) -> list[tuple[str, int]]:
    """Clone every top-level mount below `target` (recursively), so it can be re-attached inside
    the new overlay. Returns (path relative to target, detached tree fd)."""
    infos = read_mountinfo()
    base = os.fspath(target)
    below = submounts_below(base, infos)
    tops: list[str] = []
    for info in below:
        rel = os.path.relpath(info.mount_point, base)
        if rel.split("/", 1)[0].startswith(".systemd-"):
            continue  # our own read-only metadata bind mount
        if any(rel == t or rel.startswith(t + "/") for t in tops):
            continue
        tops = [t for t in tops if not t.startswith(rel + "/")]
        tops.append(rel)
    carried: list[tuple[str, int]] = []
    for rel in tops:
        try:
            fd = open_tree(
                AT_FDCWD, os.path.join(base, rel), OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | AT_RECURSIVE
            )
        except OSError as e:
            if e.errno == errno.EINVAL:
                # An unbindable mount can never be cloned: no retry would do better.
                log.warning("Cannot carry submount %s over: %s", os.path.join(base, rel), e.strerror)
                continue
            # Anything else may pass (no memory...): fail now rather than hide the submount.
            for _, taken in carried:
                os.close(taken)
            raise MountError(
                f"Cannot carry submount {os.path.join(base, rel)!r} over: {e.strerror}",
                hint="the hierarchy is left as it is",
            ) from e
        carried.append((rel, fd))
    return carried


def put_back_submounts(target: str, carried: list[tuple[str, int]]) -> None:
    """Re-attach mounts carried off an overlay that has just been detached from `target`.

    A mount whose place on the plain hierarchy is already a mount point is the original that
    the merge cloned into the overlay: it never left, so its clone is dropped."""
    for rel, fd in carried:
        dest = os.path.join(target, rel)
        try:
            if not os.path.lexists(dest):
                log.warning("Submount %s not put back: the hierarchy has no such path.", dest)
            elif not is_mount_point(dest):
                move_mount(fd, "", AT_FDCWD, dest, MOVE_MOUNT_F_EMPTY_PATH)
        except OSError as e:
            log.warning("Cannot put submount %s back: %s", dest, e.strerror)
        finally:
            os.close(fd)
