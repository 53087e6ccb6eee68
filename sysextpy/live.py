"""Live merges: is a hierarchy merged right now, and is it the merge a record speaks of?

The test is upstream's: the hierarchy is a mount point and `H/.systemd-<class>/dev` names the
hierarchy's own st_dev. A copied or untarred tree with a metadata directory is never mistaken for
a live merge. Whether a refresh may skip is then decided hierarchy by hierarchy against the
handoff record (`check_hierarchies`), by the full run and by the confirming refresh alike; so this
module imports only `os` and `stat` and the package's light modules.
"""

from __future__ import annotations

import os

from .chase import _resolve, _root_str
from .errors import ResolveError
from .files import read_small
from .jsonlite import load_json

TYPE_CHECKING = False  # typing is not imported at run time: it costs start-up time
if TYPE_CHECKING:
    from typing import Any, Callable, Optional

    from .chase import StrPath

    MountCheck = Callable[[str, os.stat_result], bool]

EXTRA_FILE = "sysextpy.json"
LIVE_RESULTS = ("merged", "replaced", "unchanged")


class Uncertain(Exception):
    """The quick checks cannot tell; the full run must decide."""


def parse_dev(text: str) -> Optional[int]:
    """`MAJOR:MINOR\\n` -> a dev_t, None when malformed."""
    major, sep, minor = text.strip().partition(":")
    if not sep or not (major.isascii() and major.isdigit() and minor.isascii() and minor.isdigit()):
        return None
    try:
        return os.makedev(int(major), int(minor))
    except OverflowError:  # numbers no device has: not a merge's record
        return None


def format_dev(dev: int) -> str:
    return f"{os.major(dev)}:{os.minor(dev)}"


def quick_mount_check(path: str, st: os.stat_result) -> bool:
    """A different device than the parent directory means a mount boundary. The same device
    needs the mount table to tell (a bind mount): raises Uncertain."""
    try:
        if os.stat(os.path.dirname(path) or "/").st_dev != st.st_dev:
            return True
    except OSError:
        pass
    raise Uncertain(f"{path!r} has its parent's device")


def exact_mount_check(path: str, st: os.stat_result) -> bool:
    """quick_mount_check(), with the mount table as the judge when it cannot tell."""
    try:
        return quick_mount_check(path, st)
    except Uncertain:
        from .mountapi import is_mount_point

        return is_mount_point(path)


def probe(
    root: StrPath, metadata_dir: str, hierarchy: str, mount_check: MountCheck
) -> tuple[Optional[str], Optional[os.stat_result]]:
    """(resolved path or None when missing, the hierarchy's lstat() when a live merge of the class
    whose metadata directory is `metadata_dir` sits there, else None)."""
    try:
        path = _resolve(_root_str(root), hierarchy, False)
    except ResolveError:
        return None, None
    try:
        st = os.lstat(path)
    except OSError:
        return None, None
    dev_text = read_small(f"{path}/{metadata_dir}/dev")
    if dev_text is None or parse_dev(dev_text) != st.st_dev or not mount_check(path, st):
        return path, None
    return path, st


def read_live_extra(metadata_dir: StrPath) -> Optional[dict[str, Any]]:
    """The `sysextpy.json` of a merge's metadata directory, None when missing or unreadable."""
    text = read_small(os.path.join(metadata_dir, EXTRA_FILE), 8 << 20)
    if text is None:
        return None
    try:
        data = load_json(text)
    except (ValueError, RecursionError):
        return None
    return data if isinstance(data, dict) else None


def check_hierarchies(
    root: StrPath,
    metadata_dir: str,
    fingerprint: str,
    recorded: dict[str, Any],
    mount_check: MountCheck,
) -> str:
    """ "" when every hierarchy of a class is as the record says: merged with this fingerprint on
    the very mount recorded, or not merged at all. Otherwise why not."""
    for h, res in recorded.items():
        result = res.get("result") if isinstance(res, dict) else None
        path, st = probe(root, metadata_dir, h, mount_check)
        if result in LIVE_RESULTS:
            if st is None or path is None:
                return f"{h} is no longer merged"
            extra = read_live_extra(f"{path}/{metadata_dir}")
            if not extra or extra.get("fingerprint") != fingerprint:
                return f"{h} holds a different merge than recorded"
            if res.get("dev") != format_dev(st.st_dev):
                return f"{h} is mounted anew since the record was written"
        elif result in ("untouched", "unmerged"):
            if st is not None:
                return f"{h} is merged but the record says it should not be"
        else:
            return f"{h}: the last run's result was {result!r}"
    return ""
