"""The confirming refresh: after switch-root, prove that nothing changed and leave at once.

On most boots `sysextpy refresh` finds exactly what the initrd merged. The full run proves that
by recomputing every input of every class, which needs most of the package. This path proves the
same with a fraction of it: the handoff record of this boot carries the observations the inputs
were read from (view.py). When each one, taken again, gives the same answer, and those are the
observations the record's fingerprints were bound to, the inputs are unchanged; then the same
decision as the full run's (decide.py) checks the record and the live merges. A confirmed run
writes its record, says what the full run would say, and exits; nothing is mounted or reloaded.

Whenever it cannot confirm (another set of options or classes than recorded, no observations, an
observation that differs, a hierarchy whose mount cannot be told by its device, a held lock, a
state directory it may not use), it says why and the full run does everything, as if this module
did not exist. It never decides that something changed; only the full run does.

It imports `os`, `time`, `fcntl`, `_json` and `_sha256` and the package's light modules: no
pathlib, json, re, enum or typing.
"""

from __future__ import annotations

import os
import time

TYPE_CHECKING = False  # typing is not imported at run time: it costs start-up time
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any, Optional


def confirm_refresh(
    values: Mapping[str, Any], env: Mapping[str, str]
) -> tuple[Optional[int], Optional[str]]:
    """(exit status, None) of a confirmed refresh, or (None, why not): the full run must do the work.
    `values` are the command line's (cli.read_argv), for a refresh cli.confirmable() accepted."""
    from .decide import forced
    from .log import DEBUG, level_from_env

    why = forced("refresh", False, env)
    if why:
        return None, why
    if (level_from_env(env.get("SYSTEMD_LOG_LEVEL")) or 0) >= DEBUG:
        return None, "debug logging: the full run says what it looked at"
    root = values.get("root", "/")
    if os.geteuid() != 0 or (values.get("root_given") and not os.path.isdir(root)):
        return None, "not root, or no such root: the full run says what is wrong"

    from .errors import SysextError
    from .live import Uncertain
    from .state import STATE_PATH, run_lock, write_record

    t0 = time.monotonic()
    state = values.get("state", STATE_PATH)
    try:
        with run_lock(state, root, env, wait=False):
            outcome = _confirmed(tuple(values["classes"]), root, state, env, t0)
            if isinstance(outcome, str):
                return None, outcome
            record, messages = outcome
            write_record(state, record)
    except (SysextError, Uncertain, OSError) as e:
        return None, str(e)

    from .decide import SKIP_MESSAGE
    from .errors import EXIT_OK, EXIT_PARTIAL
    from .log import log, setup_logging

    setup_logging()
    for priority, text in messages:
        log.log(priority, "%s", text)
    log.info("%s", SKIP_MESSAGE)
    return (EXIT_PARTIAL if record.rejected else EXIT_OK), None


def _confirmed(classes: tuple[str, ...], root: str, state: str, env: Mapping[str, str], t0: float) -> Any:
    """(the record of this run, the messages to repeat), or why the record does not confirm."""
    from .decide import confirmed_record, decide
    from .handoff import options_key
    from .live import quick_mount_check
    from .sources import unreachable_dirs
    from .state import now_usec, read_record
    from .view import replay

    started = now_usec()
    check = read_record(state)
    prior = check.record
    if not check.usable or prior is None:
        return check.reason
    confirm = prior.confirm
    if confirm is None:
        return "the record has no observations"
    if confirm.key != options_key() or tuple(confirm.classes) != classes:
        return "the record's observations were made with other options or classes"
    why = replay(root, confirm.observations, env)
    if why:
        return f"observation {why}"
    unreachable: dict[str, list[str]] = {}
    for cls in classes:
        hierarchies = confirm.hierarchies.get(cls)
        if hierarchies is None:
            return f"the record's observations have no hierarchies for {cls}"
        digest = confirm.digest(cls)
        if digest is None:
            return f"the record's observations do not say which are {cls}'s"
        skip, reason = decide(
            cls, hierarchies, check, root=root, mount_check=quick_mount_check, observations_digest=digest
        )
        if not skip:
            return f"{cls}: {reason}"
        unreachable[cls] = unreachable_dirs(root, confirm.search_dirs.get(cls, []), quick_mount_check)
    record = confirmed_record(
        prior,
        classes,
        unreachable,
        how="observations",
        verb="refresh",
        root=root,
        started=started,
        finished=now_usec(),
        total_ms=(time.monotonic() - t0) * 1000,
        confirm=confirm,
        messages=prior.messages,
    )
    return record, prior.messages
