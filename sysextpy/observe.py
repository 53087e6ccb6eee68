"""What a fingerprint was computed from, kept so that a later run can check it cheaply.

The fingerprint of a class (fingerprint.py) is a function of what the run read: the command line,
some environment variables, and the file system inside the root (configuration files, search
directories, links, the os-release file, the extensions' trees). While the full run computes it,
a `Recorder` stands between that code and the `os` module and writes down every observation at
the grain the code can see it:

    ["env", name, value or null]             an environment variable
    ["uname", machine]                       the machine name (the architecture derives from it)
    ["res", root, path, missing_ok, result]  chase.resolve_in_root(): the resolved path, or the
                                             error (errno and message); its own lstat()s and
                                             readlink()s are not listed, only the outcome
    ["st" | "lst", path, value]              stat/lstat: mode, size, mtime, ctime, rdev (or errno)
    ["ls", path, names]                      listdir, sorted
    ["sd", path, [[name, type], ...]]        scandir: names and d_type letters
    ["rl", path, target]                     readlink
    ["rd", path, value]                      a file opened for reading: sha256 of its content, or
                                             for one over READ_LIMIT (a disk image) its stat fields
    ["xa", path, name, value]                an extended attribute (hex), or errno
    ["tree", path, digest]                   tree_digest() of a directory extension

Paths are relative to the root ("/etc/extensions"), or "host:/proc/..." for a path outside it,
so the initrd's record (root /sysroot) is checked in the real root (root /) after switch-root.

The recorder hands the code exactly what it wrote down and nothing more: a stat result carries
only the five recorded fields (inode, device, owner and access time read as 0), a listing comes
sorted. So the fingerprint depends on the recorded values only, and `replay()` proves it
unchanged by taking every observation again: equal observations, equal fingerprint. Anything the
recorder cannot vouch for (an unknown file descriptor, a write, a block device, a warning
printed) makes the trace incomplete, and nothing is skipped on its word.

This module imports only `os` and `stat` at load time: the confirming refresh (quick.py) runs it
without the rest of the package.
"""

from __future__ import annotations

import os
import stat

TYPE_CHECKING = False  # typing is not imported at run time: it costs start-up time
if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping
    from typing import Any, Callable, Optional

    from .errors import ResolveError

if TYPE_CHECKING:
    from collections.abc import Mapping as _Mapping
    from hashlib import sha256 as sha256
else:
    from _collections_abc import Mapping as _Mapping  # loaded with os: no import cost

    try:  # the built-in module: importing hashlib loads OpenSSL, which costs more than it hashes here
        from _sha256 import sha256
    except ImportError:  # Python >= 3.12
        try:
            from _sha2 import sha256
        except ImportError:
            from hashlib import sha256

READ_LIMIT = 4 << 20  # a file opened for reading is hashed whole; larger ones end the trace
TREE_ENTRY_LIMIT = 200_000
HOST = "host:"

ACTIVE: list[Recorder] = []  # the recorder of this run, while one is recording


# --------------------------------------------------------------------------------------------------
# Values: the same functions compute what is recorded and what is checked later


def stat_value(st: os.stat_result) -> list[int]:
    return [st.st_mode, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_rdev]


def error_value(e: OSError) -> list[Any]:
    return ["E", e.errno or 0]


def _restricted_stat(value: list[int]) -> os.stat_result:
    """A stat result with the recorded fields only; everything else reads as 0."""
    mode, size, mtime_ns, ctime_ns, rdev = value
    mtime_s, ctime_s = mtime_ns // 1_000_000_000, ctime_ns // 1_000_000_000
    return os.stat_result(
        (mode, 0, 0, 0, 0, 0, size, 0, mtime_s, ctime_s)
        + (0.0, mtime_ns / 1e9, ctime_ns / 1e9, 0, mtime_ns, ctime_ns, 0, 0, rdev)
    )


_TYPE_LETTERS = ((stat.S_ISDIR, "d"), (stat.S_ISLNK, "l"), (stat.S_ISREG, "f"))


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


def scandir_value(path: str) -> list[list[str]]:
    with _real["scandir"](path) as it:
        return sorted([e.name, _entry_type(e)] for e in it)


def content_value(fd: int) -> Any:
    """sha256 of a regular file's whole content (read with pread: the caller's offset stays), the
    file type for anything else. A file larger than READ_LIMIT (a disk image) is known by its
    stat() fields instead, as the fingerprint itself knows disk images: a write changes the ctime."""
    st = _real["fstat"](fd)
    if not stat.S_ISREG(st.st_mode):
        return ["T", stat.S_IFMT(st.st_mode)]
    if st.st_size > READ_LIMIT:
        return ["S", *stat_value(st)]
    h = sha256()
    offset = 0
    while True:
        chunk = _real["pread"](fd, 1 << 20, offset)
        if not chunk:
            return h.hexdigest()
        offset += len(chunk)
        if offset > READ_LIMIT:  # it grew while being read
            return ["S", *stat_value(_real["fstat"](fd))]
        h.update(chunk)


def tree_digest(top: Any) -> str:
    """sha256 over (relative path, type, mode, size, mtime, link target) of every entry below `top`.
    File contents are not read: an edit changes the size or the mtime."""
    rec = ACTIVE[-1] if ACTIVE else None
    if rec is not None and not rec.paused:
        rec.paused += 1
        try:
            value = _tree_digest(os.fspath(top))
        finally:
            rec.paused -= 1
        rec.note("tree", rec.rel(os.fspath(top)), value)
        return value
    return _tree_digest(os.fspath(top))


def _tree_digest(top: str) -> str:
    h = sha256()
    count = 0
    scandir = _real["scandir"]
    stack = [(top, "")]
    while stack:
        directory, rel = stack.pop()
        try:
            with scandir(directory) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as e:
            h.update(f"{rel}\0error:{e.errno}\n".encode())
            continue
        for entry in entries:
            count += 1
            if count > TREE_ENTRY_LIMIT:
                h.update(b"\0truncated\n")
                return h.hexdigest()
            path = f"{rel}/{entry.name}"
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError as e:
                h.update(f"{path}\0error:{e.errno}\n".encode("utf-8", "surrogateescape"))
                continue
            extra = ""
            if stat.S_ISLNK(st.st_mode):
                try:
                    extra = _real["readlink"](entry.path)
                except OSError:
                    extra = "?"
            elif stat.S_ISDIR(st.st_mode):
                stack.append((entry.path, path))
            line = f"{path}\0{st.st_mode:o}\0{st.st_size}\0{st.st_mtime_ns}\0{extra}\n"
            h.update(line.encode("utf-8", "surrogateescape"))
    return h.hexdigest()


def resolve_outcome(root_s: str, result: Optional[str], error: Optional[ResolveError]) -> Any:
    """How a resolution inside `root_s` is recorded: the path inside the root, or the error."""
    if error is not None:
        return ["E", error.errno, str(error).replace(repr(root_s), "<root>")]
    assert result is not None
    return _relative(root_s, result)


def resolve_value(root: str, path: str, missing_ok: bool) -> Any:
    """What chase.resolve_in_root() gives now."""
    from .chase import _resolve, _root_str
    from .errors import ResolveError

    root_s = _root_str(root)
    try:
        return resolve_outcome(root_s, _resolve(root_s, path, missing_ok), None)
    except ResolveError as e:
        return resolve_outcome(root_s, None, e)


def _relative(root: str, path: str) -> str:
    """chase.root_relative(), with paths outside the root marked as the host's."""
    from .chase import root_relative

    rel = root_relative(root, path)
    return HOST + path if root != "/" and rel == path else rel


def _absolute(root: str, rel: str) -> str:
    if rel.startswith(HOST):
        return rel[len(HOST) :]
    if root == "/":
        return rel
    return root if rel == "/" else root + rel


# The os functions a recorder replaces, as they were before any recorder.
_real: dict[str, Any] = {
    name: getattr(os, name)
    for name in (
        "stat",
        "listdir",
        "scandir",
        "readlink",
        "open",
        "fstat",
        "uname",
        "read",
        "pread",
        "getxattr",
    )
    if hasattr(os, name)
}


# --------------------------------------------------------------------------------------------------
# Recording


class Incomplete(Exception):
    pass


class ObservedEnv(_Mapping[str, str]):
    """The environment as a read-only mapping that writes down every variable looked at."""

    def __init__(self, env: Mapping[str, str], rec: Recorder) -> None:
        self._env = env
        self._rec = rec

    def _look(self, key: str) -> Optional[str]:
        value = self._env.get(key)
        self._rec.note("env", key, value)
        return value

    def __getitem__(self, key: str) -> str:
        value = self._look(key)
        if value is None:
            raise KeyError(key)
        return value

    def get(self, key: str, default: Any = None) -> Any:
        value = self._look(key)
        return default if value is None else value

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self._look(key) is not None

    def __iter__(self) -> Iterator[str]:
        self._rec.incomplete("the whole environment was read")
        return iter(self._env)

    def __len__(self) -> int:
        self._rec.incomplete("the whole environment was read")
        return len(self._env)

    def keys(self) -> Any:
        self._rec.incomplete("the whole environment was read")
        return self._env.keys()

    def items(self) -> Any:
        self._rec.incomplete("the whole environment was read")
        return self._env.items()


class _Entry:
    """A scandir entry answered from the recorded name and type; stat() goes through the recorder."""

    __slots__ = ("name", "path", "_type")

    def __init__(self, name: str, path: str, kind: str) -> None:
        self.name = name
        self.path = path
        self._type = kind

    def is_symlink(self) -> bool:
        return self._type == "l"

    def is_dir(self, *, follow_symlinks: bool = True) -> bool:
        if follow_symlinks and self._type == "l":
            try:
                return stat.S_ISDIR(os.stat(self.path).st_mode)
            except OSError:
                return False
        return self._type == "d"

    def is_file(self, *, follow_symlinks: bool = True) -> bool:
        if follow_symlinks and self._type == "l":
            try:
                return stat.S_ISREG(os.stat(self.path).st_mode)
            except OSError:
                return False
        return self._type == "f"

    def stat(self, *, follow_symlinks: bool = True) -> os.stat_result:
        return os.stat(self.path) if follow_symlinks else os.lstat(self.path)

    def inode(self) -> int:
        rec = ACTIVE[-1] if ACTIVE else None
        if rec is not None:
            rec.incomplete("an inode number was read")
        return 0

    def __fspath__(self) -> str:
        return self.path


class _Listing:
    def __init__(self, entries: list[_Entry]) -> None:
        self._entries = entries

    def __enter__(self) -> _Listing:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def __iter__(self) -> Iterator[_Entry]:
        return iter(self._entries)

    def close(self) -> None:
        pass


class Recorder:
    """Record the observations of the code run inside `with Recorder(root, env) as rec:`.

    Use `rec.env` instead of the environment. Afterwards `rec.trace()` is the list of
    observations, or None when the run did something the trace cannot vouch for."""

    def __init__(self, root: str, env: Mapping[str, str]) -> None:
        from .chase import _root_str

        self.root = _root_str(root)
        self.env = ObservedEnv(env, self)
        self.paused = 0
        self._trace: list[list[Any]] = []
        self._seen: dict[str, Any] = {}
        self._fds: dict[int, str] = {}
        self.why_incomplete = ""
        self._saved: dict[str, Any] = {}
        self._messages = 0

    # -- bookkeeping

    def rel(self, path: str) -> str:
        return _relative(self.root, path)

    def note(self, op: str, *args: Any) -> None:
        key = repr((op, *args[:-1]))
        if key in self._seen:
            if self._seen[key] != args[-1]:
                self.incomplete(f"{op} {args[0]!r} gave two different answers")
            return
        self._seen[key] = args[-1]
        self._trace.append([op, *args])

    def incomplete(self, why: str) -> None:
        if not self.why_incomplete:
            self.why_incomplete = why

    def trace(self) -> Optional[list[list[Any]]]:
        return None if self.why_incomplete else self._trace

    def _path(self, path: Any, op: str) -> Optional[str]:
        """The path as a string, or None (and the trace incomplete) for what cannot be recorded."""
        if isinstance(path, int) or isinstance(path, bytes):
            self.incomplete(f"{op} on a file descriptor or a bytes path")
            return None
        p = os.fspath(path)
        if not isinstance(p, str) or not p.startswith("/"):
            self.incomplete(f"{op} on a relative path {p!r}")
            return None
        return p

    # -- the replacements

    def _stat(self, op: str) -> Callable[..., os.stat_result]:
        real = _real["stat"]

        def wrapper(path: Any, *, dir_fd: Any = None, follow_symlinks: bool = True) -> os.stat_result:
            follow = follow_symlinks and op == "st"
            if self.paused:
                return real(path, dir_fd=dir_fd, follow_symlinks=follow)  # type: ignore[no-any-return]
            kind = "st" if follow else "lst"
            p = self._path(path, kind) if dir_fd is None else None
            if p is None:
                if dir_fd is not None:
                    self.incomplete(f"{kind} relative to a directory descriptor")
                return real(path, dir_fd=dir_fd, follow_symlinks=follow)  # type: ignore[no-any-return]
            try:
                st = real(p, follow_symlinks=follow)
            except OSError as e:
                self.note(kind, self.rel(p), error_value(e))
                raise
            value = stat_value(st)
            self.note(kind, self.rel(p), value)
            return _restricted_stat(value)

        return wrapper

    def _listdir(self, path: Any = ".") -> list[str]:
        real = _real["listdir"]
        if self.paused:
            return real(path)  # type: ignore[no-any-return]
        p = self._path(path, "listdir")
        if p is None:
            return real(path)  # type: ignore[no-any-return]
        try:
            names = sorted(real(p))
        except OSError as e:
            self.note("ls", self.rel(p), error_value(e))
            raise
        self.note("ls", self.rel(p), names)
        return names

    def _scandir(self, path: Any = ".") -> Any:
        if self.paused:
            return _real["scandir"](path)
        p = self._path(path, "scandir")
        if p is None:
            return _real["scandir"](path)
        try:
            value = scandir_value(p)
        except OSError as e:
            self.note("sd", self.rel(p), error_value(e))
            raise
        self.note("sd", self.rel(p), value)
        base = p.rstrip("/")
        return _Listing([_Entry(name, f"{base}/{name}", kind) for name, kind in value])

    def _readlink(self, path: Any, *, dir_fd: Any = None) -> Any:
        real = _real["readlink"]
        if self.paused:
            return real(path, dir_fd=dir_fd)
        p = self._path(path, "readlink") if dir_fd is None else None
        if p is None:
            self.incomplete("readlink relative to a directory descriptor")
            return real(path, dir_fd=dir_fd)
        try:
            target = real(p)
        except OSError as e:
            self.note("rl", self.rel(p), error_value(e))
            raise
        self.note("rl", self.rel(p), target)
        return target

    def _open(self, path: Any, flags: int, mode: int = 0o777, *, dir_fd: Any = None) -> int:
        real = _real["open"]
        if self.paused:
            return real(path, flags, mode, dir_fd=dir_fd)  # type: ignore[no-any-return]
        writing = flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND)
        p = self._path(path, "open") if dir_fd is None else None
        if writing or p is None:
            self.incomplete("a file was opened for writing" if writing else "open relative to a descriptor")
            return real(path, flags, mode, dir_fd=dir_fd)  # type: ignore[no-any-return]
        try:
            fd: int = real(p, flags, mode)
        except OSError as e:
            self.note("rd", self.rel(p), error_value(e))
            raise
        try:
            value = content_value(fd)
        except OSError as e:
            value = error_value(e)
        self.note("rd", self.rel(p), value)
        self._fds[fd] = p
        return fd

    def _fstat(self, fd: int) -> os.stat_result:
        real = _real["fstat"]
        if self.paused:
            return real(fd)  # type: ignore[no-any-return]
        p = self._fds.get(fd)
        if p is None:
            self.incomplete("fstat of a descriptor the recorder did not open")
            return real(fd)  # type: ignore[no-any-return]
        value = stat_value(real(fd))
        self.note("st", self.rel(p), value)
        return _restricted_stat(value)

    def _getxattr(self, path: Any, attribute: str, *, follow_symlinks: bool = True) -> bytes:
        real = _real["getxattr"]
        if self.paused:
            return real(path, attribute, follow_symlinks=follow_symlinks)  # type: ignore[no-any-return]
        p = self._path(path, "getxattr")
        if p is None or not follow_symlinks:
            self.incomplete("getxattr on a descriptor or a link")
            return real(path, attribute, follow_symlinks=follow_symlinks)  # type: ignore[no-any-return]
        try:
            value: bytes = real(p, attribute)
        except OSError as e:
            self.note("xa", self.rel(p), attribute, error_value(e))
            raise
        self.note("xa", self.rel(p), attribute, value.hex())
        return value

    def _uname(self) -> os.uname_result:
        machine = _real["uname"]().machine
        self.note("uname", machine)
        return os.uname_result(("", "", "", "", machine))

    def _refuse(self, name: str) -> Callable[..., Any]:
        real = getattr(os, name)

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if not self.paused:
                self.incomplete(f"os.{name}() is not recorded")
            return real(*args, **kwargs)

        return wrapper

    def _fd_read(self, name: str) -> Callable[..., Any]:
        real = _real[name]

        def wrapper(fd: int, *args: Any) -> Any:
            if not self.paused and fd not in self._fds:
                self.incomplete(f"os.{name}() of a descriptor the recorder did not open")
            return real(fd, *args)

        return wrapper

    def _builtin_open(self, real: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
            if not self.paused:
                self.incomplete("a file was opened with open()")
            return real(file, mode, *args, **kwargs)

        return wrapper

    # -- entering and leaving

    def __enter__(self) -> Recorder:
        import builtins
        import io

        from .log import log

        if os.stat_result.n_fields != 19:  # a layout _restricted_stat() does not know
            self.incomplete("unknown stat layout")
        self._messages = log.emitted
        replacements: dict[str, Any] = {
            "stat": self._stat("st"),
            "lstat": self._stat("lst"),
            "listdir": self._listdir,
            "scandir": self._scandir,
            "readlink": self._readlink,
            "open": self._open,
            "fstat": self._fstat,
            "uname": self._uname,
        }
        if hasattr(os, "getxattr"):
            replacements["getxattr"] = self._getxattr
        for name in ("listxattr", "statvfs", "access"):
            if hasattr(os, name):
                replacements[name] = self._refuse(name)
        replacements["read"] = self._fd_read("read")
        replacements["pread"] = self._fd_read("pread")
        for name, value in replacements.items():
            self._saved[f"os.{name}"] = getattr(os, name)
            setattr(os, name, value)
        self._saved["os.environ"] = os.environ
        os.environ = self.env  # type: ignore[assignment]  # noqa: B003 - replaced, then restored
        self._saved["builtins.open"] = builtins.open
        builtins.open = io.open = self._builtin_open(builtins.open)
        ACTIVE.append(self)
        return self

    def __exit__(self, *exc: object) -> None:
        import builtins
        import io

        from .log import log

        ACTIVE.remove(self)
        for key, value in self._saved.items():
            module, name = key.split(".")
            if module == "os":
                setattr(os, name, value)
            else:
                builtins.open = io.open = value
        self._saved.clear()
        if log.emitted != self._messages:
            self.incomplete("messages were logged")
        if exc and exc[0] is not None:
            self.incomplete("the run failed")


def note_resolve(root: str, path: str, missing_ok: bool, result: Any) -> None:
    rec = ACTIVE[-1] if ACTIVE else None
    if rec is not None and not rec.paused:
        rec.note("res", rec.rel(root), path, missing_ok, result)


def decline(why: str) -> None:
    """Called by code whose inputs the trace cannot cover (a raw image's verity data...)."""
    rec = ACTIVE[-1] if ACTIVE else None
    if rec is not None:
        rec.incomplete(why)


# --------------------------------------------------------------------------------------------------
# Checking


def _check_one(root: str, item: list[Any], env: Mapping[str, str]) -> Any:
    """The current value of one observation."""
    op = item[0]
    if op == "env":
        return env.get(item[1])
    if op == "uname":
        return os.uname().machine
    if op == "res":
        return resolve_value(_absolute(root, item[1]), item[2], item[3])
    path = _absolute(root, item[1])
    try:
        if op == "st":
            return stat_value(os.stat(path))
        if op == "lst":
            return stat_value(os.lstat(path))
        if op == "ls":
            return sorted(os.listdir(path))
        if op == "sd":
            return scandir_value(path)
        if op == "rl":
            return os.readlink(path)
        if op == "rd":
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY)
            try:
                return content_value(fd)
            finally:
                os.close(fd)
        if op == "tree":
            return _tree_digest(path)
        if op == "xa":
            return os.getxattr(path, item[2]).hex()
    except OSError as e:
        return error_value(e)
    raise Incomplete(f"unknown observation {op!r}")


def replay(root: str, trace: Any, env: Mapping[str, str]) -> str:
    """Take every observation of `trace` again inside `root`. "" when all agree, else which one
    differs. A malformed trace is a difference, never an exception."""
    from .chase import _root_str

    root_s = _root_str(root)
    if not isinstance(trace, list):
        return "no observations recorded"
    for item in trace:
        if not isinstance(item, list) or len(item) < 2 or not isinstance(item[0], str):
            return "malformed observation"
        if item[0] not in ("env", "uname") and not isinstance(item[1], str):
            return "malformed observation"
        if item[0] == "res" and not (
            len(item) == 5 and isinstance(item[2], str) and isinstance(item[3], bool)
        ):
            return "malformed observation"
        try:
            now = _check_one(root_s, item, env)
        except (Incomplete, IndexError, TypeError, ValueError, AttributeError) as e:
            return f"malformed observation ({e})"
        if now != item[-1]:
            return f"{item[0]} {item[1]!r} changed"
    return ""
