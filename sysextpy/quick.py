"""The confirming refresh: after switch-root, prove that nothing changed and leave at once.

On most boots `sysextpy refresh` finds exactly what the initrd merged. The full run proves that
by recomputing every fingerprint, which needs most of the package and most of its start-up time.
This path proves the same with a fraction of the code: the handoff record of this boot carries
what the fingerprints were computed from (observe.py); when every observation is taken again with
the same result, the fingerprints are the same, and the live merges are then checked against the
record exactly as the full run checks them (live.py). Then it writes the record of a confirming
run, logs the same line the full run logs, and exits; nothing is mounted, nothing reloaded.

Whenever anything is unusual — an option this path does not know, a record that is missing,
of another boot, without observations, a changed observation, a hierarchy whose mount cannot be
told by its device number, a held lock — it returns None and the full run does everything, as if
this module did not exist. It never decides that something changed; only the full run does.

It imports `os`, `stat`, `time`, `fcntl`, `_json`, `_sha256` and the package's light modules: no
pathlib, json, re or enum.
"""

from __future__ import annotations

import os
import time

TYPE_CHECKING = False  # typing is not imported at run time: it costs start-up time
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from typing import Any, Optional

SKIP_MESSAGE = (
    "Skipping extension refresh because no change was found, "
    "use --always-refresh=yes to always do a refresh."
)
CLASSES = {"sysext": ("sysext",), "confext": ("confext",), "all": ("sysext", "confext")}
_FLAGS = ("--no-reload", "--no-pager", "--no-legend")
DECLINED: list[str] = []  # why this process's refresh was left to the full run (for its record)


def _decline(why: str) -> None:
    """Leave the refresh to the full run, noting why (the caller returns None)."""
    DECLINED.append(why)


_VALUED = ("--class", "--root", "--state", "--always-refresh")


def options_key(
    *,
    force: bool = False,
    mutable: Optional[str] = None,
    image_policy: Optional[str] = None,
    noexec: Optional[bool] = None,
) -> dict[str, Any]:
    """The command-line options a fingerprint depends on, as recorded beside its observations."""
    return {"force": force, "mutable": mutable, "imagePolicy": image_policy, "noexec": noexec}


class Request:
    __slots__ = ("classes", "root", "root_given", "state")

    def __init__(self, classes: tuple[str, ...], root: str, root_given: bool, state: str) -> None:
        self.classes = classes
        self.root = root
        self.root_given = root_given
        self.state = state


def parse(argv: Sequence[str], argv0: str) -> Optional[Request]:
    """A `refresh` with options this path knows, read the way cli.parse_args() reads them;
    None for anything else (which the full command line then handles, errors included)."""
    from .state import STATE_PATH

    base = os.path.basename(argv0)
    if "systemd-sysext" in base or "systemd-confext" in base:
        return None
    verb: Optional[str] = None
    req = Request(CLASSES["all"], "/", False, STATE_PATH)
    i = 0
    while i < len(argv):
        arg = argv[i]
        i += 1
        if not arg.startswith("-") or arg == "-":
            if verb is not None:
                return None
            verb = arg
            continue
        name, eq, value = arg.partition("=")
        if name in _FLAGS and not eq:
            continue
        if name not in _VALUED:
            return None
        if not eq:
            if i >= len(argv):
                return None
            value = argv[i]
            i += 1
        if name == "--class":
            if value not in CLASSES:
                return None
            req.classes = CLASSES[value]
        elif name == "--root":
            req.root_given = value != ""
            req.root = os.path.normpath(os.path.abspath(value)) if value else "/"
        elif name == "--state":
            if not value:
                return None
            req.state = os.path.abspath(value)
        else:
            from .errors import ParseError
            from .util import parse_bool

            try:
                if parse_bool(value):
                    return None
            except ParseError:
                return None
    return req if verb == "refresh" else None


def main(argv: Sequence[str], argv0: str, env: Mapping[str, str]) -> Optional[int]:
    """The exit status of a confirmed refresh, or None: the full run must do the work."""
    req = parse(argv, argv0)
    if req is None:
        _decline("not a plain refresh")
        return None
    from .log import DEBUG, level_from_env, log, setup_logging

    force = env.get("SYSEXTPY_FORCE_REFRESH")
    if force:
        from .util import is_truthy  # only when set: the module costs an import on every boot

        if is_truthy(force):
            _decline("SYSEXTPY_FORCE_REFRESH is set")
            return None
    if (level_from_env(env.get("SYSTEMD_LOG_LEVEL")) or 0) >= DEBUG:
        _decline("debug logging")  # the full run says what it looked at
        return None
    if os.geteuid() != 0 or (req.root_given and not os.path.isdir(req.root)):
        _decline("not root, or no such root")  # the full run says what is wrong
        return None

    from .errors import SysextError
    from .live import Uncertain
    from .state import run_lock

    t0 = time.monotonic()
    try:
        with run_lock(req.state, req.root, env, wait=False):
            record = _confirmed_record(req, env, t0)
            if record is None:
                return None  # _confirmed_record() said why
            from .state import write_record

            write_record(req.state, record)
    except (SysextError, Uncertain, OSError) as e:
        _decline(str(e))
        return None
    setup_logging()
    log.info("%s", SKIP_MESSAGE)
    rejected = any(entry.get("rejected") for entry in record["classes"].values())
    return 3 if rejected else 0


def _confirmed_record(req: Request, env: Mapping[str, str], t0: float) -> Optional[dict[str, Any]]:
    from .live import check_hierarchies, quick_mount_check
    from .observe import replay
    from .sources import unreachable_dirs
    from .state import confirmed_entry, finish_confirmed, new_record, now_usec, read_record

    started = now_usec()
    check = read_record(req.state)
    prior = check.record
    if not check.usable or prior is None:
        _decline(check.reason)
        return None
    confirm = prior.get("confirm")
    if not isinstance(confirm, dict):
        _decline("the record has no observations")
        return None
    if confirm.get("key") != options_key() or confirm.get("classes") != list(req.classes):
        _decline("the record's observations were made with other options or classes")
        return None
    hierarchies, search_dirs = confirm.get("hierarchies"), confirm.get("searchDirs")
    if not isinstance(hierarchies, dict) or not isinstance(search_dirs, dict):
        _decline("malformed observations")
        return None
    why = replay(req.root, confirm.get("trace"), env)
    if why:
        _decline(f"observation {why}")
        return None
    record = new_record("refresh", req.root, "merged", started)
    for cls in req.classes:
        entry = prior["classes"].get(cls)
        if not isinstance(entry, dict) or not isinstance(entry.get("hierarchies"), dict):
            _decline(f"the record has nothing for {cls}")
            return None
        fingerprint = entry.get("fingerprint")
        recorded = entry["hierarchies"]
        if not isinstance(fingerprint, str) or sorted(recorded) != sorted(hierarchies.get(cls) or ()):
            _decline(f"{cls}: no fingerprint, or other hierarchies than observed")
            return None
        why = check_hierarchies(req.root, f".systemd-{cls}", fingerprint, recorded, quick_mount_check)
        if why:
            _decline(why)
            return None
        dirs = search_dirs.get(cls)
        if not isinstance(dirs, list) or not all(isinstance(d, str) for d in dirs):
            _decline("malformed observations")
            return None
        record["classes"][cls] = confirmed_entry(entry, unreachable_dirs(req.root, dirs, quick_mount_check))
    finish_confirmed(record, t0, "observations")
    record["confirm"] = confirm
    return record
