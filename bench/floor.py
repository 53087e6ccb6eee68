# SPDX-License-Identifier: LGPL-2.1-or-later
"""The least a Python merge can do: the floor that bench_merge.py times beside sysextpy and upstream.

    floor.py [--walk] ROOT merge|refresh|unmerge

Started like sysextpy (bench/common.py: `/usr/bin/python3 -I -S`, from byte code, ending with
_exit), it does only what every merger must do for the
fake roots of bench/common.py, and nothing of what makes a merge safe:
  merge     read the root's os-release and each extension's release file (ID must match), stat
            each extension's /usr, /opt and /etc, and mount one read-only overlay per hierarchy,
            its layers handed to the kernel one by one (fsconfig "lowerdir+", Linux 6.8 and newer:
            no page limit, no bind mount of each layer);
  unmerge   read /proc/self/mountinfo and detach the overlays on the root's /usr, /opt and /etc;
  refresh   unmerge, then merge, in one process.
No configuration, no image policy, no metadata layer, no record, no pinning, no atomic swap, no
checks beyond the ID. With --walk, merge (and refresh) also list and lstat() every entry of each
extension's tree, hashing what they saw: the least a recorded proof that a later refresh may skip
needs on top.

Imports nothing but `os`, `sys` and the C part of ctypes (`ctypes` itself costs about 1.3 ms to
import here). It exists to be timed: what it takes is how far below a bound the interpreter's
start and these syscalls leave room for everything else.
"""

import os
import sys
from _ctypes import FUNCFLAG_CDECL, FUNCFLAG_USE_ERRNO, CFuncPtr, _SimpleCData, dlopen, get_errno

HIERARCHIES = {"sysext": ("usr", "opt"), "confext": ("etc",)}
SEARCH = {"sysext": "var/lib/extensions", "confext": "var/lib/confexts"}
RELEASE = {"sysext": "usr/lib/extension-release.d", "confext": "etc/extension-release.d"}
MNT_DETACH = 2
FSOPEN_CLOEXEC = 1
FSCONFIG_SET_STRING = 1
FSCONFIG_CMD_CREATE = 6
FSMOUNT_CLOEXEC = 1
MOUNT_ATTR_RDONLY = 1
MOVE_MOUNT_F_EMPTY_PATH = 4
AT_FDCWD = -100


class _Int(_SimpleCData):  # type: ignore[type-arg]
    _type_ = "i"


class _Function(CFuncPtr):
    _flags_ = FUNCFLAG_CDECL | FUNCFLAG_USE_ERRNO
    _restype_ = _Int


class _Process:
    def __init__(self) -> None:
        self._handle = dlopen(None, os.RTLD_NOW)  # type: ignore[arg-type]


_LIBC = _Process()
TYPE_CHECKING = False
if TYPE_CHECKING:
    from hashlib import sha256 as _sha256
else:
    try:  # as sysextpy does: hashlib would load OpenSSL
        from _sha256 import sha256 as _sha256
    except ImportError:  # Python 3.12 and newer
        from _sha2 import sha256 as _sha256


def _call(name: str, *args: object) -> int:
    result: int = _Function((name, _LIBC))(*args)  # type: ignore[arg-type]
    if result < 0:
        errno = get_errno()
        raise OSError(errno, f"{name}{args[:2]}: {os.strerror(errno)}")
    return result


def read_release(path: str) -> dict[str, str]:
    with open(path, "rb") as f:
        text = f.read().decode()
    out = {}
    for line in text.splitlines():
        key, eq, value = line.partition("=")
        if eq:
            out[key.strip()] = value.strip().strip("'\"")
    return out


def walk(top: str) -> str:
    """Every entry's name and lstat() below `top`, hashed."""
    h = _sha256()
    stack = [top]
    while stack:
        directory = stack.pop()
        with os.scandir(directory) as it:
            entries = sorted(it, key=lambda e: e.name)
        for e in entries:
            st = e.stat(follow_symlinks=False)
            h.update(f"{e.path}\0{st.st_mode}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ctime_ns}\n".encode())
            if e.is_dir(follow_symlinks=False):
                stack.append(e.path)
    return h.hexdigest()


def merge(root: str, walked: bool) -> None:
    host = read_release(f"{root}/etc/os-release")
    for cls, hierarchies in HIERARCHIES.items():
        base = f"{root}/{SEARCH[cls]}"
        names = sorted(os.listdir(base))
        chosen = []
        for name in names:
            if walked:
                walk(f"{base}/{name}")
            release = read_release(f"{base}/{name}/{RELEASE[cls]}/extension-release.{name}")
            if release.get("ID") in ("_any", host.get("ID")):
                chosen.append(name)
        for h in hierarchies:
            layers = [f"{base}/{n}/{h}" for n in reversed(chosen) if os.path.isdir(f"{base}/{n}/{h}")]
            if not layers:
                continue
            target = f"{root}/{h}"
            fs = _call("fsopen", b"overlay", FSOPEN_CLOEXEC)
            for layer in [*layers, target]:
                _call("fsconfig", fs, FSCONFIG_SET_STRING, b"lowerdir+", layer.encode(), 0)
            _call("fsconfig", fs, FSCONFIG_SET_STRING, b"source", cls.encode(), 0)
            _call("fsconfig", fs, FSCONFIG_CMD_CREATE, None, None, 0)
            mnt = _call("fsmount", fs, FSMOUNT_CLOEXEC, MOUNT_ATTR_RDONLY)
            _call("move_mount", mnt, b"", AT_FDCWD, target.encode(), MOVE_MOUNT_F_EMPTY_PATH)
            os.close(mnt)
            os.close(fs)


def unmerge(root: str) -> None:
    targets = {f"{root}/{h}" for hs in HIERARCHIES.values() for h in hs}
    with open("/proc/self/mountinfo", "rb") as f:
        lines = f.read().decode().splitlines()
    for line in reversed(lines):
        fields = line.split(" ")
        if fields[4] in targets and fields[fields.index("-") + 1] == "overlay":
            _call("umount2", fields[4].encode(), MNT_DETACH)


def main(argv: list[str]) -> int:
    walked = "--walk" in argv
    args = [a for a in argv if a != "--walk"]
    if len(args) != 2 or args[1] not in ("merge", "refresh", "unmerge"):
        print("usage: floor.py [--walk] ROOT merge|refresh|unmerge", file=sys.stderr)
        return 2
    root, verb = os.path.abspath(args[0]), args[1]
    if verb != "merge":
        unmerge(root)
    if verb != "unmerge":
        merge(root, walked)
    return 0


def run() -> None:
    """main() as the whole process, ended as sysextpy ends its own (cli.run_as_process): through
    _exit, without the interpreter's teardown."""
    status = main(sys.argv[1:])
    sys.stderr.flush()
    os._exit(status)


if __name__ == "__main__":
    run()
