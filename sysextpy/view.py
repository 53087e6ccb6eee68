# SPDX-License-Identifier: LGPL-2.1-or-later
"""One view of the root: every read that decides a merge goes through it.

The code that decides what a merge looks like (settings, the configuration search, discovery,
release files, compatibility, policy, side-cars, certificates, signatures, hash trees) never calls
`os` to read; it is handed a view and asks it. Two kinds exist:

- `LiveView` reads the file system and the environment as they are now;
- `RecordingView` (recording.py) does the same and writes every answer down as a typed
  observation, so that a later run can take the same observations again (`replay`) and know that
  the decision's inputs are unchanged. It answers the code with exactly what it wrote down: a
  `Stat` carries the five fields it records and no others, a listing comes sorted, a file's bytes
  are those whose digest it recorded, and asking twice gives the first answer. So nothing a
  decision read escapes the record.

Observations, as kept in the handoff record (paths relative to the view's root, "host:/..." for a
path outside it, so the initrd's record for /sysroot is checked at / after switch-root):

    ["env", name, value | null]            an environment variable
    ["mach", machine]                      uname's machine (the architecture derives from it)
    ["cap", name, bool]                    what this machine can do: "dm-verity", "verity-signatures",
                                           "openssl" (the tool is on $PATH)
    ["res", base, path, missing_ok, out]   a resolution inside `base` (chase.py): the path it
                                           resolved to, or the error: [E, errno], with the message
                                           for errors other than "missing"; not the steps
    ["st" | "lst", path, [mode, size, mtime_ns, ctime_ns, rdev] | [E, errno]]
    ["mode", path, mode | [E, errno]]      only the type and permission bits (stat): of a directory
                                           whose content changes without changing an input
    ["ls", path, names | [E, errno]]       a directory's names, sorted
    ["ents", path, [[name, type], ...]]    names with their types: d, f, l, o(ther)
    ["rl", path, target | [E, errno]]      a link's target
    ["rd", path, limit, [sha256, length] | [E, errno] | [T, kind] | [F, size]]
                                           a small regular file's bytes (T: not a regular file,
                                           F: larger than the limit)
    ["xa", path, name, hex | null | [E, errno]]   an extended attribute
    ["cfg", name, [[[shown, path], ...], warnings]]
                                           the configuration search as a whole (config_files()):
                                           which files it found, not its steps, which differ
                                           between the initrd's /sysroot/run and the real /run
    ["tree", path, digest]                 a directory extension as a whole (tree_digest())
    ["id", path, located, identity]        a disk image as a whole (file_identity())

A directory extension is observed as a whole: what is read inside it later (its release file,
whether it is empty, links inside it) goes through `image_view()`, which is covered by the tree
digest and therefore not listed again. A disk image is likewise covered by its identity.

This module imports only `os`, `stat` and the light modules of the package: the confirming
refresh replays observations with it.
"""

from __future__ import annotations

import errno
import os
import stat

from .chase import MISSING, normalize_root, resolve
from .errors import ResolveError

TYPE_CHECKING = False  # typing is not imported at run time: it costs start-up time
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from hashlib import sha256 as sha256
    from typing import Any, Callable, Optional

    from .pins import Pin, Pins
else:
    try:  # the built-in module: importing hashlib loads OpenSSL, which costs more than it hashes here
        from _sha256 import sha256
    except ImportError:  # Python >= 3.12
        try:
            from _sha2 import sha256
        except ImportError:
            from hashlib import sha256

HOST = "host:"
ENDS = 64 << 10  # a disk image's first and last bytes that its identity hashes
TREE_ENTRY_LIMIT = 200_000
ERROR = "E"


class Stat:
    """The fields of a stat() that decisions may use. Nothing else is recorded, so nothing else
    exists: no inode, device or owner."""

    __slots__ = ("mode", "size", "mtime_ns", "ctime_ns", "rdev")

    def __init__(self, mode: int, size: int, mtime_ns: int, ctime_ns: int, rdev: int) -> None:
        self.mode = mode
        self.size = size
        self.mtime_ns = mtime_ns
        self.ctime_ns = ctime_ns
        self.rdev = rdev

    @classmethod
    def of(cls, st: os.stat_result) -> Stat:
        return cls(st.st_mode, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_rdev)

    def value(self) -> list[int]:
        return [self.mode, self.size, self.mtime_ns, self.ctime_ns, self.rdev]

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)

    @property
    def is_reg(self) -> bool:
        return stat.S_ISREG(self.mode)

    @property
    def is_link(self) -> bool:
        return stat.S_ISLNK(self.mode)

    @property
    def is_chr(self) -> bool:
        return stat.S_ISCHR(self.mode)

    @property
    def is_blk(self) -> bool:
        return stat.S_ISBLK(self.mode)


_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISLNK, "a symlink"),
)


def describe_type(mode: int) -> str:
    for check, name in _KINDS:
        if check(mode):
            return name
    return f"of unknown type (mode {stat.S_IFMT(mode):#o})"


class NotRegularFile(OSError):
    """A file that was to be read is a FIFO, a device, a directory...: refused without reading."""

    def __init__(self, path: str, kind: str) -> None:
        super().__init__(errno.EINVAL, f"it is {kind}, not a regular file", path)
        self.kind = kind


class FileTooLarge(OSError):
    def __init__(self, path: str, size: int, limit: int) -> None:
        super().__init__(errno.EFBIG, f"it has {size} bytes, more than the limit of {limit}", path)
        self.size = size


def _entry_type(entry: os.DirEntry[str]) -> str:
    try:
        if entry.is_symlink():
            return "l"
        if entry.is_dir(follow_symlinks=False):
            return "d"
        if entry.is_file(follow_symlinks=False):
            return "f"
    except OSError:
        return "?"
    return "o"


def dm_verity_available() -> bool:
    """Whether the kernel has device-mapper (it registers the "device-mapper" misc device).

    /dev/mapper/control alone proves nothing: libdevmapper creates that node itself when it is
    missing, also on kernels without device-mapper.
    """
    try:
        data = _read_regular("/proc/misc", 1 << 16, allow_growth=True)
    except OSError:
        return False
    return any(line.split()[-1:] == [b"device-mapper"] for line in data.splitlines())


def kernel_signature_support() -> bool:
    """Whether dm-verity can check root hash signatures against the kernel keyring."""
    return os.path.exists("/sys/module/dm_verity/parameters/require_signatures")


def _on_path(tool: str, path_var: Optional[str]) -> bool:
    for directory in (path_var or os.defpath).split(":"):
        candidate = os.path.join(directory or ".", tool)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return True
    return False


def _read_regular(path: str, limit: int, *, allow_growth: bool = False) -> bytes:
    """Up to `limit` bytes of a regular file, opened without blocking (a FIFO put in its place never
    hangs the run). NotRegularFile, FileTooLarge (unless allow_growth: then truncated), OSError.
    A device, socket or FIFO is refused from its stat() without being opened at all; fstat()
    after open() closes the race."""
    mode = os.stat(path).st_mode
    if not stat.S_ISREG(mode):
        raise NotRegularFile(path, describe_type(mode))
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise NotRegularFile(path, describe_type(st.st_mode))
        if st.st_size > limit and not allow_growth:
            raise FileTooLarge(path, st.st_size, limit)
        parts: list[bytes] = []
        total = 0
        while True:
            # The file may grow after fstat(); read one byte past the limit to notice. The buffer is
            # sized by the file: one of megabytes for a small file costs more than reading it.
            chunk = os.read(fd, min(limit + 1 - total, max(st.st_size + 1 - total, 1 << 16)))
            if not chunk:
                break
            parts.append(chunk)
            total += len(chunk)
            if total > limit:
                if allow_growth:
                    return b"".join(parts)[:limit]
                raise FileTooLarge(path, total, limit)
        return b"".join(parts)
    finally:
        os.close(fd)


def nonempty_dir(path: str) -> bool:
    """Whether the directory `path` has entries; one that cannot be read has none."""
    try:
        with os.scandir(path) as it:
            return any(True for _ in it)
    except OSError:
        return False


class TreeWalk:
    """What the walk of a tree's digest saw, by host path: each entry's lstat() and each directory's
    names. A view of the tree (LiveView.image_view) resolves and lists through it, so what is read
    inside the tree is what its digest describes, without looking again."""

    __slots__ = ("lstats", "names")

    def __init__(self) -> None:
        self.lstats: dict[str, os.stat_result] = {}
        self.names: dict[str, list[str]] = {}

    def lstat(self, path: str) -> os.stat_result:
        """lstat() as the walk saw it; what it did not see is looked at now."""
        found = self.lstats.get(path)
        return os.lstat(path) if found is None else found

    def nonempty(self, directory: str) -> bool:
        """Whether `directory` has entries; one that cannot be read has none."""
        names = self.names.get(directory)
        return nonempty_dir(directory) if names is None else bool(names)

    def listdir(self, directory: str) -> list[str]:
        names = self.names.get(directory)
        return sorted(os.listdir(directory)) if names is None else list(names)

    def moved(self, top: str, to: str) -> TreeWalk:
        """The same walk for the tree `top` seen at `to` (a clone of it attached elsewhere)."""
        n = len(top)
        out = TreeWalk()
        out.lstats = {to + k[n:]: v for k, v in self.lstats.items() if k.startswith(top)}
        out.names = {to + k[n:]: v for k, v in self.names.items() if k.startswith(top)}
        return out


def tree_digest_now(
    top: str, changed: Optional[dict[str, int]] = None, walk: Optional[TreeWalk] = None
) -> str:
    """sha256 over (relative path, mode, size, mtime, ctime, link target) of `top` and every entry
    below it (of `top` itself every field a Stat records). File contents are not read: any change
    to a file changes its ctime, which nobody can set back, and the directory's own entry covers
    renames and new files.

    With `changed`, the newest change time (ns) of the tree, `top` and all, goes into it under
    `top`, where the walk saw every entry: what apply.input_stamp needs, without a second walk.
    With `walk`, what the walk saw goes into it (TreeWalk)."""
    h = sha256()
    try:
        st = os.lstat(top)
    except OSError as e:
        h.update(f"\0error:{e.errno}\n".encode())
        return h.hexdigest()
    # The top's own stat() fields, all of them: a stat() of the tree is then implied by its digest.
    lines = [f"\0{st.st_mode:o}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ctime_ns}\0{st.st_rdev}\n"]
    newest = st.st_ctime_ns
    whole = True
    count = 0
    stack = [(top, "")]
    scandir, readlink, kind_of = os.scandir, os.readlink, stat.S_IFMT
    link, directory_kind = stat.S_IFLNK, stat.S_IFDIR
    append = lines.append
    seen = None if walk is None else walk.lstats
    listed = None if walk is None else walk.names
    while stack:
        directory, rel = stack.pop()
        try:
            with scandir(directory) as it:
                entries = list(it)
        except OSError as e:
            append(f"{rel}\0error:{e.errno}\n")
            whole = False
            continue
        if len(entries) > 1:
            entries.sort(key=_NAME)
        if listed is not None:
            listed[directory] = [e.name for e in entries]
        count += len(entries)
        if count > TREE_ENTRY_LIMIT:
            append("\0truncated\n")
            whole = False
            break
        for entry in entries:
            path = f"{rel}/{entry.name}"
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError as e:
                append(f"{path}\0error:{e.errno}\n")
                whole = False
                continue
            if seen is not None:
                seen[entry.path] = st
            if st.st_ctime_ns > newest:
                newest = st.st_ctime_ns
            mode = st.st_mode
            kind = kind_of(mode)
            if kind == directory_kind:
                stack.append((entry.path, path))
                append(f"{path}\0{mode:o}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ctime_ns}\0\n")
                continue
            extra = ""
            if kind == link:
                try:
                    extra = readlink(entry.path)
                except OSError:
                    extra = "?"
            append(f"{path}\0{mode:o}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ctime_ns}\0{extra}\n")
    h.update("".join(lines).encode("utf-8", "surrogateescape"))
    if changed is not None and whole:
        changed[top] = newest
    return h.hexdigest()


_NAME = os.DirEntry.name.__get__  # C-level: entries sorted by name


def file_identity_now(path: str, located: bool, pin: Optional[Pin] = None) -> dict[str, Any]:
    """What identifies a disk image (or a hash tree) without reading it whole: its stat fields, a
    digest of its first and last ENDS bytes, and where `located`, the unique id of the mount it is
    on and its file handle (or inode), as upstream identifies images. A pinned image (pins.py) is
    read through its pin, with the mount its path was on when it was pinned.

    Not `located` is for files below a hierarchy that may be merged over: seen through an overlay
    the same file has another mount and no handle, so only what the overlay passes on counts."""
    if pin is not None:
        fd = os.dup(pin.fd)
    else:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY)
    try:
        st = os.fstat(fd)
        ident: dict[str, Any] = {
            "mode": st.st_mode,
            "size": st.st_size,
            "mtime": st.st_mtime_ns,
            "ctime": st.st_ctime_ns,
        }
        if stat.S_ISBLK(st.st_mode):
            ident["rdev"] = st.st_rdev
        elif stat.S_ISREG(st.st_mode):
            head = os.pread(fd, ENDS, 0)
            tail = os.pread(fd, ENDS, max(0, st.st_size - ENDS)) if st.st_size > ENDS else b""
            ident["ends"] = sha256(head + b"\0" + tail).hexdigest()
        if located:
            from . import mountapi

            ident["mount"] = pin.where[0] if pin is not None else mountapi.unique_mount_id(path)
            try:
                handle = mountapi.file_handle(path, fd)
            except OSError:
                handle = None
            if handle is not None:
                ident["handle"] = [handle[0], handle[1].hex()]
            else:
                ident["inode"] = st.st_ino
    finally:
        os.close(fd)
    return ident


CONFIG_DIRS = ("/etc/systemd", "/run/systemd", "/usr/local/lib/systemd", "/usr/lib/systemd")


def _config_entry(view: LiveView, inner: str, warnings: list[str]) -> Optional[tuple[Optional[str], bool]]:
    """(resolved path, or None when masked; whether it is a regular file) of a configuration file
    inside the root, or None when there is none. A link to /dev/null, or /dev/null itself, masks:
    the link text is checked first, because inside --root /dev/null may not exist at all."""
    parent, _, name = inner.rpartition("/")
    try:
        entry = f"{view.resolve(parent or '/').rstrip('/')}/{name}"
        if view.lstat(entry).is_link and view.readlink(entry) == "/dev/null":
            return None, False
        resolved = view.resolve(inner)
        st = view.stat(resolved)
    except ResolveError as e:
        if e.errno not in MISSING:
            warnings.append(f"ignoring {inner!r}: {e}")
        return None
    except FileNotFoundError:
        return None
    except OSError as e:
        warnings.append(f"ignoring {inner!r}: {e.strerror}")
        return None
    if st.is_chr and os.major(st.rdev) == 1 and os.minor(st.rdev) == 3:
        return None, False
    return resolved, st.is_reg


def _drop_in_names(view: LiveView, directory: str, warnings: list[str]) -> list[str]:
    try:
        names = [name for name, _ in view.entries(view.resolve(directory))]
    except ResolveError as e:
        if e.errno not in MISSING:
            warnings.append(f"ignoring drop-in directory {directory!r}: {e}")
        return []
    except NotADirectoryError:
        return []
    except OSError as e:
        warnings.append(f"ignoring drop-in directory {directory!r}: {e.strerror}")
        return []
    return [n for n in names if n.endswith(".conf") and not n.startswith(".")]


def drop_in_files(
    view: LiveView,
    directories: Sequence[str],
    suffix: str,
    ignored: list[tuple[str, str]],
    *,
    other: Optional[str] = None,
) -> dict[str, tuple[str, str]]:
    """name -> (path inside the root, path to it) of the `*suffix` files of `directories`, searched
    in systemd's order: a file in an earlier directory overrides one of the same name in a later
    one. What is not used goes to `ignored` as (path inside the root, why): a directory that cannot
    be resolved or read (a missing one is not said), an overridden file, and, when `other` is given,
    a file without the suffix, with `other` as the reason (otherwise such files are passed over)."""
    chosen: dict[str, tuple[str, str]] = {}
    for inner_dir in directories:
        try:
            directory = view.resolve(inner_dir)
            names = view.listdir(directory)
        except ResolveError as e:
            if e.errno not in MISSING:
                ignored.append((inner_dir, f"cannot be resolved: {e.message}"))
            continue
        except OSError as e:
            if e.errno not in MISSING:
                ignored.append((inner_dir, f"cannot be read: {e.strerror}"))
            continue
        for name in names:
            inner = f"{inner_dir}/{name}"
            if not name.endswith(suffix):
                if other is not None:
                    ignored.append((inner, other))
                continue
            if name in chosen:
                ignored.append((inner, f"overridden by {chosen[name][0]}"))
            else:
                chosen[name] = (inner, f"{directory.rstrip('/')}/{name}")
    return chosen


def search_config_files(view: LiveView, name: str) -> tuple[list[tuple[str, str]], list[str]]:
    """(path inside the root, resolved path) of the configuration file `name` ("sysext.conf") in the
    first of CONFIG_DIRS that has one, then its drop-ins from all four in systemd's order (an
    earlier directory's file of the same name wins); and what was wrong on the way."""
    warnings: list[str] = []
    found: list[tuple[str, str]] = []
    for directory in CONFIG_DIRS:
        main = _config_entry(view, f"{directory}/{name}", warnings)
        if main is not None:
            if main[0] is not None:
                found.append((f"{directory}/{name}", main[0]))
            break  # the first one found wins, even when it masks the others
    drop_ins: dict[str, str] = {}
    for directory in CONFIG_DIRS:
        for file_name in _drop_in_names(view, f"{directory}/{name}.d", warnings):
            drop_ins.setdefault(file_name, f"{directory}/{name}.d/{file_name}")
    for file_name in sorted(drop_ins):
        located = _config_entry(view, drop_ins[file_name], warnings)
        # Like systemd, drop-ins that are not regular files (directories, FIFOs...) are skipped.
        if located is not None and located[0] is not None and located[1]:
            found.append((drop_ins[file_name], located[0]))
    return found, warnings


def read_text(view: LiveView, path: str, limit: int = 64 << 10) -> str:
    """A small regular file through `view`, as UTF-8 (invalid bytes replaced). FIFOs, devices,
    directories and files larger than `limit` are refused without blocking: SysextError."""
    from .errors import SysextError

    try:
        data = view.read(path, limit)
    except NotRegularFile as e:
        raise SysextError(
            f"Refusing to read {path!r}: it is {e.kind}, not a regular file",
            hint="release and configuration files must be regular files",
        ) from e
    except FileTooLarge as e:
        raise SysextError(
            f"Refusing to read {path!r}: it has {e.size} bytes, more than the limit of {limit}",
            hint="release and configuration files are expected to be small text files",
        ) from e
    except OSError as e:
        raise SysextError(f"Failed to read {path!r}: {e.strerror}") from e
    return data.decode("utf-8", errors="replace")


CAPABILITIES: dict[str, Callable[[Optional[str]], bool]] = {
    "dm-verity": lambda path_var: dm_verity_available(),
    "verity-signatures": lambda path_var: kernel_signature_support(),
    "openssl": lambda path_var: _on_path("openssl", path_var),
}


class LiveView:
    """The root (a host path) and the environment, read as they are now.

    Paths given to the reading methods are host paths (root-prefixed, as resolve() returns them);
    paths given to resolve() are inside the root (or inside `base`)."""

    def __init__(
        self,
        root: str,
        env: Mapping[str, str],
        *,
        snapshot: bool = False,
        pins: Optional[Pins] = None,
        walk: Optional[TreeWalk] = None,
    ) -> None:
        self.root = normalize_root(root)
        self._env = env
        # The disk images pinned at discovery (pins.py): read through their pins, not their paths.
        self.pins = pins
        # A snapshot view (replay, recording) looks at each directory a resolution passes once: the
        # search directories lie on the way to every image in them. `walk` starts it with what
        # was looked at already: a tree, as its digest saw it.
        self._walk = walk
        self._lstat: Optional[Callable[[str], os.stat_result]] = (
            walk.lstat if walk is not None else _cached_lstat({}) if snapshot else None
        )
        # tree -> its newest change time (ns), taken with its digest (tree_digest_now)
        self.tree_changes: dict[str, int] = {}
        # tree -> what its digest saw
        self._walks: dict[str, TreeWalk] = {}

    # -- the environment and the machine

    def env(self, name: str) -> Optional[str]:
        return self._env.get(name)

    def machine(self) -> str:
        return os.uname().machine

    def capability(self, name: str) -> bool:
        """What this machine can do (CAPABILITIES): asked of the running system, not the root."""
        return CAPABILITIES[name](self._env.get("PATH"))

    def in_initrd(self) -> bool:
        """Whether this process runs in an initrd, whatever the root (state.in_initrd)."""
        from .state import in_initrd

        return in_initrd()

    # -- the file system

    def resolve(self, path: str, *, base: Optional[str] = None, missing_ok: bool = False) -> str:
        """chase.resolve() inside the root, or inside `base` (a host path below it)."""
        return resolve(self.root if base is None else base, path, missing_ok=missing_ok, lstat=self._lstat)

    def exists(self, path: str) -> bool:
        """Whether `path` resolves inside the root; loops and permission problems raise."""
        try:
            self.resolve(path)
        except ResolveError as e:
            if e.errno in MISSING:
                return False
            raise
        return True

    def stat(self, path: str) -> Stat:
        return Stat.of(os.stat(path))

    def mode(self, path: str) -> int:
        """stat()'s st_mode alone: what a persistent mutable directory contributes, whatever is
        written into it."""
        return os.stat(path).st_mode

    def lstat(self, path: str) -> Stat:
        return Stat.of(os.lstat(path))

    def listdir(self, path: str) -> list[str]:
        if self._walk is not None:
            return self._walk.listdir(path)
        return sorted(os.listdir(path))

    def entries(self, path: str) -> list[tuple[str, str]]:
        with os.scandir(path) as it:
            return sorted((e.name, _entry_type(e)) for e in it)

    def readlink(self, path: str) -> str:
        return os.readlink(path)

    def is_mount_point(self, path: str) -> bool:
        """Whether a file system is mounted on `path` (a host path; links are not followed, and an
        automount point is not triggered)."""
        from .mountapi import is_mount_point

        return is_mount_point(path)

    def read(self, path: str, limit: int) -> bytes:
        """A small regular file whole; NotRegularFile, FileTooLarge or OSError otherwise."""
        return _read_regular(path, limit)

    def getxattr(self, path: str, name: str) -> Optional[bytes]:
        """An extended attribute (symlinks followed); None when absent or not supported."""
        try:
            return os.getxattr(path, name)
        except OSError as e:
            if e.errno in (errno.ENODATA, errno.ENOTSUP, errno.EOPNOTSUPP):
                return None
            raise

    def config_files(self, name: str) -> tuple[list[tuple[str, str]], list[str]]:
        """search_config_files(), observed as a whole by a recording view."""
        return search_config_files(self, name)

    def tree_digest(self, path: str) -> str:
        walk = TreeWalk()
        digest = tree_digest_now(path, self.tree_changes, walk)
        self._walks[path] = walk
        return digest

    def file_identity(self, path: str, located: bool) -> dict[str, Any]:
        return file_identity_now(path, located, self.file_pin(path))

    def file_pin(self, path: str) -> Optional[Pin]:
        """The pin of the disk image at `path` (pins.py), or None: then it is read by its path."""
        return self.pins.file_pin(path) if self.pins is not None else None

    def walk_of(self, tree: str) -> Optional[TreeWalk]:
        """What the digest of `tree` saw, if it was taken through this view."""
        return self._walks.get(tree)

    def image_view(self, tree: str) -> LiveView:
        """A view of a directory extension's tree as its own root. Reads inside it are covered by
        the tree's digest (a recording view observes that), so they are not recorded one by one.
        Where the digest is taken, paths inside resolve through the entries it saw: what is read is
        then what the digest describes."""
        return LiveView(tree, {}, walk=self._walks.get(tree))

    def scoped(self, scope: str) -> Any:
        """`with view.scoped(cls):` around what one class's inputs are read for (a recording view
        notes which class asked for each observation)."""
        return _UNSCOPED

    def relative(self, path: str) -> str:
        """A host path as it is recorded: relative to the root, or marked as the host's."""
        root = self.root
        if root == "/":
            return path
        if path == root:
            return "/"
        if path.startswith(root) and path[len(root)] == "/":
            return path[len(root) :]
        return HOST + path

    def absolute(self, rel: str) -> str:
        if rel.startswith(HOST):
            return rel[len(HOST) :]
        if self.root == "/":
            return rel
        return self.root if rel == "/" else self.root + rel


def _cached_lstat(cache: dict[str, Any]) -> Callable[[str], os.stat_result]:
    def lstat(path: str) -> os.stat_result:
        found = cache.get(path)
        if found is None:
            try:
                found = cache[path] = os.lstat(path)
            except OSError as e:
                found = cache[path] = e
        if isinstance(found, OSError):
            raise OSError(found.errno, found.strerror, path)  # a new one: this one has a traceback
        return found

    return lstat


class _Unscoped:
    """What LiveView.scoped() gives: nothing to note (a RecordingView notes the class)."""

    __slots__ = ()

    def __enter__(self) -> None:
        pass

    def __exit__(self, *exc: object) -> None:
        pass


_UNSCOPED = _Unscoped()


# --------------------------------------------------------------------------------------------------
# Observations: how each is taken (the same for recording and for replaying) and written down


def _error_value(e: OSError) -> list[Any]:
    if isinstance(e, NotRegularFile):
        return ["T", e.kind]
    if isinstance(e, FileTooLarge):
        return ["F", e.size]
    return [ERROR, e.errno or 0]


def is_error(value: Any) -> bool:
    """Whether a recorded value stands for an error, [E, errno]. No successful value looks like
    that: listings hold names (strings), stats numbers, identities mappings, links strings. (A
    read's value has errors of its own: [T, kind] and [F, size] besides, never like [sha256, n].)"""
    return isinstance(value, list) and len(value) == 2 and value[0] == ERROR and isinstance(value[1], int)


def raise_error(path: str, value: list[Any], limit: int = 0) -> Any:
    """Raise the error an error value stands for."""
    if value[0] == "T":
        raise NotRegularFile(path, value[1])
    if value[0] == "F":
        raise FileTooLarge(path, value[1], limit)
    raise OSError(value[1], os.strerror(value[1]), path)


def _resolve_value(view: LiveView, base: str, path: str, missing_ok: bool) -> Any:
    try:
        return view.relative(view.resolve(path, base=base, missing_ok=missing_ok))
    except ResolveError as e:
        if e.errno in MISSING:
            return [ERROR, e.errno]  # where exactly it is missing may differ; that it is, may not
        return [ERROR, e.errno, str(e).replace(repr(base), "<root>")]


def _stat_value(path: str) -> list[int]:
    st = os.stat(path)
    return [st.st_mode, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_rdev]


def _lstat_value(path: str) -> list[int]:
    st = os.lstat(path)
    return [st.st_mode, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_rdev]


def _path_value(take: Callable[[str], Any], path: str) -> Any:
    try:
        return take(path)
    except OSError as e:
        return _error_value(e)


def read_value(view: LiveView, path: str, limit: int) -> tuple[Any, Optional[bytes]]:
    try:
        data = view.read(path, limit)
    except OSError as e:
        return _error_value(e), None
    return [sha256(data).hexdigest(), len(data)], data


def _config_value(view: LiveView, name: str) -> Any:
    found, warnings = view.config_files(name)
    return [[[shown, view.relative(path)] for shown, path in found], warnings]


def _xattr_value(view: LiveView, path: str, name: str) -> Any:
    try:
        data = view.getxattr(path, name)
    except OSError as e:
        return _error_value(e)
    return None if data is None else data.hex()


# kind -> the observation's current value, from a live view and the recorded arguments
VALUE_OF: dict[str, Callable[..., Any]] = {
    "env": lambda v, name: v.env(name),
    "mach": lambda v: v.machine(),
    "cap": lambda v, name: v.capability(name),
    "res": lambda v, base, path, missing_ok: _resolve_value(v, v.absolute(base), path, missing_ok),
    "st": lambda v, path: _path_value(_stat_value, v.absolute(path)),
    "mode": lambda v, path: _path_value(v.mode, v.absolute(path)),
    "lst": lambda v, path: _path_value(_lstat_value, v.absolute(path)),
    "ls": lambda v, path: _path_value(v.listdir, v.absolute(path)),
    "ents": lambda v, path: _path_value(lambda p: [list(e) for e in v.entries(p)], v.absolute(path)),
    "rl": lambda v, path: _path_value(v.readlink, v.absolute(path)),
    "mnt": lambda v, path: _path_value(v.is_mount_point, v.absolute(path)),
    "initrd": lambda v: v.in_initrd(),
    "rd": lambda v, path, limit: read_value(v, v.absolute(path), limit)[0],
    "xa": lambda v, path, name: _xattr_value(v, v.absolute(path), name),
    "cfg": lambda v, name: _config_value(v, name),
    "tree": lambda v, path: v.tree_digest(v.absolute(path)),
    "id": lambda v, path, located: _path_value(lambda p: v.file_identity(p, located), v.absolute(path)),
}


def replay(root: str, observations: Any, env: Mapping[str, str]) -> str:
    """Take every observation again inside `root`: "" when all agree, else which one differs.
    Anything malformed is a difference, never an exception."""
    if not isinstance(observations, list):
        return "no observations recorded"
    view = LiveView(root, env, snapshot=True)
    for item in observations:
        if not isinstance(item, list) or not item or not isinstance(item[0], str):
            return "a malformed observation"
        take = VALUE_OF.get(item[0])
        if take is None:
            return f"an unknown observation {item[0]!r}"
        try:
            now = take(view, *item[1:-1])
        except (TypeError, ValueError, KeyError, AttributeError, IndexError, OSError) as e:
            return f"a malformed observation ({type(e).__name__})"
        if now != item[-1]:
            what = item[2] if item[0] == "res" else (item[1] if len(item) > 2 else item[0])
            return f"{item[0]} {what!r} changed"
    return ""
