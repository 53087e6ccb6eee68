"""The recorder of observe.py: what the full run uses while it computes fingerprints.

It replaces the `os` functions the computation reads the file system with (and the environment)
by versions that write down what they saw and answer with exactly that; observe.py describes the
observations, and takes them again for the confirming refresh, which never loads this module.
"""

from __future__ import annotations

import os
import stat

from .observe import ACTIVE, VALUE_OF, _real, _relative, content_value, decline, error_value, stat_value

TYPE_CHECKING = False  # typing is not imported at run time: it costs start-up time
if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping
    from collections.abc import Mapping as _Mapping
    from typing import Any, Callable, Optional
else:
    from collections.abc import Mapping as _Mapping


def _restricted_stat(value: list[int]) -> os.stat_result:
    """A stat result with the recorded fields only; everything else reads as 0."""
    mode, size, mtime_ns, ctime_ns, rdev = value
    mtime_s, ctime_s = mtime_ns // 1_000_000_000, ctime_ns // 1_000_000_000
    return os.stat_result(
        (mode, 0, 0, 0, 0, 0, size, 0, mtime_s, ctime_s)
        + (0.0, mtime_ns / 1e9, ctime_ns / 1e9, 0, mtime_ns, ctime_ns, 0, 0, rdev)
    )


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

    def _whole(self) -> Mapping[str, str]:
        self._rec.incomplete("the whole environment was read")
        return self._env

    def __iter__(self) -> Iterator[str]:
        return iter(self._whole())

    def __len__(self) -> int:
        return len(self._whole())

    def keys(self) -> Any:
        return self._whole().keys()

    def items(self) -> Any:
        return self._whole().items()


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
        decline("an inode number was read")
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

    def pause(self) -> _Pause:
        """`with rec.pause():` around code observed as a whole (its own steps are not listed)."""
        return _Pause(self)

    def _take(self, op: str, path: str, *key: str) -> Any:
        """Take one plain observation (observe.VALUE_OF), write it down, and return it."""
        try:
            value = VALUE_OF[op](path, *key)
        except OSError as e:
            self.note(op, self.rel(path), *key, error_value(e))
            raise
        self.note(op, self.rel(path), *key, value)
        return value

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
            return _restricted_stat(self._take(kind, p))

        return wrapper

    def _listdir(self, path: Any = ".") -> list[str]:
        real = _real["listdir"]
        if self.paused:
            return real(path)  # type: ignore[no-any-return]
        p = self._path(path, "listdir")
        if p is None:
            return real(path)  # type: ignore[no-any-return]
        return self._take("ls", p)  # type: ignore[no-any-return]

    def _scandir(self, path: Any = ".") -> Any:
        if self.paused:
            return _real["scandir"](path)
        p = self._path(path, "scandir")
        if p is None:
            return _real["scandir"](path)
        value = self._take("sd", p)
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
        return self._take("rl", p)

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
        return bytes.fromhex(self._take("xa", p, attribute))

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


class _Pause:
    __slots__ = ("_rec",)

    def __init__(self, rec: Recorder) -> None:
        self._rec = rec

    def __enter__(self) -> None:
        self._rec.paused += 1

    def __exit__(self, *exc: object) -> None:
        self._rec.paused -= 1
