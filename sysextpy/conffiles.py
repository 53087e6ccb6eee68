"""Where a class's configuration files are: sysext.conf or confext.conf in the first of four
directories that has one, and the drop-ins of all four, in systemd's order.

Kept apart from their parsing (config.py) so that what was found can be observed as a whole
(observe.py): in the initrd `/sysroot/run` is an empty directory and after switch-root `/run`
holds `/run/systemd`, so the steps of the search differ while what it finds does not.
"""

from __future__ import annotations

import os
import stat

from .chase import _resolve, _root_str
from .errors import ResolveError
from .observe import recording

TYPE_CHECKING = False  # typing is not imported at run time: it costs start-up time
if TYPE_CHECKING:
    from typing import Any, Optional

    from .chase import StrPath

CONFIG_DIRS = ("/etc/systemd", "/run/systemd", "/usr/local/lib/systemd", "/usr/lib/systemd")


def _is_dev_null(st: os.stat_result) -> bool:
    return stat.S_ISCHR(st.st_mode) and os.major(st.st_rdev) == 1 and os.minor(st.st_rdev) == 3


def _locate(root: str, path_in_root: str, warnings: list[str]) -> Optional[tuple[Optional[str], bool]]:
    """(resolved path or None when masked, whether it is a regular file) of a config file inside
    root, masked when it is a symlink to /dev/null or /dev/null itself; None when absent."""
    parent, _, name = path_in_root.rpartition("/")
    try:
        directory = _resolve(root, parent or "/", False)
        entry = os.path.join(directory, name)
        # Check the link text before resolving: inside --root, /dev/null may not exist at all.
        if os.path.islink(entry) and os.readlink(entry) == "/dev/null":
            return None, False
        resolved = _resolve(root, path_in_root, False)
        st = os.stat(resolved)
    except ResolveError as e:
        if not e.is_missing:
            warnings.append(f"ignoring {path_in_root!r}: {e}")
        return None
    except OSError as e:
        warnings.append(f"ignoring {path_in_root!r}: {e.strerror}")
        return None
    if _is_dev_null(st):
        return None, False
    return resolved, stat.S_ISREG(st.st_mode)


def _drop_in_names(root: str, directory: str, warnings: list[str]) -> list[str]:
    try:
        resolved = _resolve(root, directory, False)
    except ResolveError as e:
        if not e.is_missing:
            warnings.append(f"ignoring drop-in directory {directory!r}: {e}")
        return []
    try:
        with os.scandir(resolved) as entries:
            return [e.name for e in entries if e.name.endswith(".conf") and not e.name.startswith(".")]
    except NotADirectoryError:
        return []
    except OSError as e:
        warnings.append(f"ignoring drop-in directory {directory!r}: {e.strerror}")
        return []


def _find(root: str, name: str, warnings: list[str]) -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    for directory in CONFIG_DIRS:
        main = _locate(root, f"{directory}/{name}", warnings)
        if main is not None:
            if main[0] is not None:
                found.append((f"{directory}/{name}", main[0]))
            break  # the first one found wins, even when it masks the others

    drop_ins: dict[str, str] = {}
    for directory in CONFIG_DIRS:
        for file_name in _drop_in_names(root, f"{directory}/{name}.d", warnings):
            drop_ins.setdefault(file_name, f"{directory}/{name}.d/{file_name}")
    for file_name in sorted(drop_ins):
        located = _locate(root, drop_ins[file_name], warnings)
        # Like systemd, drop-ins that are not regular files (directories, FIFOs...) are skipped.
        if located is not None and located[0] is not None and located[1]:
            found.append((drop_ins[file_name], located[0]))
    return found


def observed(root: str, found: list[tuple[str, str]], warnings: list[str]) -> list[Any]:
    """How a search's outcome is recorded: the files (inside the root) and the warnings."""
    from .observe import _relative

    return [[[shown, _relative(root, path)] for shown, path in found], list(warnings)]


def search_now(root: StrPath, name: str) -> list[Any]:
    """What the search finds now, as observed() records it."""
    root_s = _root_str(root)
    warnings: list[str] = []
    return observed(root_s, _find(root_s, name, warnings), warnings)


def config_files(root: StrPath, name: str, warnings: list[str]) -> list[tuple[str, str]]:
    """(path inside root, resolved path) of the main file `name` ("sysext.conf") and its drop-ins,
    in the order they apply. Problems are appended to `warnings`."""
    root_s = _root_str(root)
    rec = recording()
    if rec is None:
        return _find(root_s, name, warnings)
    mine: list[str] = []
    with rec.pause():
        found = _find(root_s, name, mine)
    rec.note("cfg", rec.rel(root_s), name, observed(root_s, found, mine))
    warnings.extend(mine)
    return found
