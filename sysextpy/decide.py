# SPDX-License-Identifier: LGPL-2.1-or-later
"""Skip or refresh: the one decision, for the confirming refresh and the full run alike, and the
record of a run that changed nothing.

A class is skipped only when all of this holds:
- nothing forces a refresh (--always-refresh=yes, SYSEXTPY_FORCE_REFRESH, a verb other than
  refresh, an input that cannot be observed);
- the handoff record is of this boot and says "merged", and its entry for the class has a
  fingerprint that binds its inputs digest and its observations digest;
- the class's inputs are what they were when it was merged: either recomputed now and equal to the
  entry's inputs digest (the full run), or proven unchanged by every recorded observation, taken
  again with the same result, those observations being the ones the entry was bound to (the
  confirming refresh);
- the record speaks of exactly the class's hierarchies, and each is what it says: a live merge of
  ours carrying the entry's fingerprint on the recorded device, or no merge of ours at all.

The full run calls decide() with the inputs digest it computed; the confirming refresh with the
digest of the observations it took again. Nothing else differs.

The confirming refresh (confirm_refresh) is what runs after switch-root on most boots, when the
refresh finds exactly what the initrd merged. The full run proves that by recomputing every input
of every class, which needs most of the package; the confirming refresh proves the same with a
fraction of it: the handoff record of this boot carries the observations the inputs were read from
(view.py). When each one, taken again, gives the same answer, and those are the observations the
record's fingerprints were bound to, the inputs are unchanged; then decide() checks the record and
the live merges as for the full run. A confirmed run writes its record, says what the full run
would say, and exits; nothing is mounted or reloaded. Whenever it cannot confirm (another set of
options or classes than recorded, no observations, an observation that differs, a hierarchy whose
mount cannot be told by its device, a held lock, a state directory it may not use), it says why
and the full run does everything, as if the confirming refresh did not exist: it never decides
that something changed.

This module imports `os` and `time` and the package's light modules (and, confirming, `fcntl`,
`_json` and `_sha256`): no pathlib, json, re, enum or typing.
"""

from __future__ import annotations

import os
import time

from .handoff import ADOPTED, NOT_MERGED, HandoffRecord, sha256_hex
from .live import format_dev, probe, read_live_extra, read_metadata

TYPE_CHECKING = False  # typing is not imported at run time: it costs start-up time
if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence
    from typing import Any, Optional

    from .handoff import ClassEntry, Confirmation, ConfirmedBy, RecordCheck
    from .live import MountCheck

SKIP_MESSAGE = (
    "Skipping extension refresh because no change was found, "
    "use --always-refresh=yes to always do a refresh."
)
INPUTS_CHANGED = "inputs changed since the last merge"


def forced(verb: str, always_refresh: Optional[bool], env: Mapping[str, str]) -> Optional[str]:
    """Why this run refreshes whatever the record says, or None. `always_refresh` is the command
    line's (None: not given); an explicit --always-refresh=no beats $SYSEXTPY_FORCE_REFRESH, as
    the command line beats the environment everywhere."""
    if verb not in ("refresh", "plan"):
        return f"verb {verb}"
    if always_refresh:
        return "--always-refresh=yes given"
    from .util import is_truthy

    if always_refresh is None and is_truthy(env.get("SYSEXTPY_FORCE_REFRESH")):
        return "SYSEXTPY_FORCE_REFRESH=1 (the earlier merge was incomplete or failed)"
    return None


def decide(
    image_class: str,
    hierarchies: Sequence[str],
    check: RecordCheck,
    *,
    root: str,
    mount_check: MountCheck,
    inputs_digest: Optional[str] = None,
    observations_digest: Optional[str] = None,
    forced_by: Optional[str] = None,
) -> tuple[bool, str]:
    """(skip, why) for one class. Give either the inputs digest computed now (the full run) or the
    digest of the record's observations, all taken again with the same result (the confirming
    refresh). The live checks may raise live.Uncertain when `mount_check` cannot tell."""
    if forced_by:
        return False, forced_by
    if not check.usable or check.record is None:
        return False, f"{check.reason}: doing a full refresh"
    entry = check.record.classes.get(image_class)
    if entry is None:
        return False, "the record has nothing for this class"
    if entry.fingerprint is None:
        return False, "the last run left no fingerprint (unmerged, or something failed)"
    if not entry.bound():
        return False, "the record's fingerprint does not bind its digests (the record was altered)"
    if set(entry.hierarchies) != set(hierarchies):
        return False, "the set of hierarchies changed"
    if observations_digest is not None:
        if observations_digest != entry.observations_digest:
            return False, "the record's observations are not those its fingerprint was made from"
    elif inputs_digest != entry.inputs_digest:
        return False, INPUTS_CHANGED
    metadata_dir = f".systemd-{image_class}"
    for h in hierarchies:
        res = entry.hierarchies[h]
        path, st = probe(root, metadata_dir, h, mount_check)
        if res.live:
            if st is None or path is None:
                return False, f"{h} is no longer merged"
            extra = read_live_extra(path, metadata_dir)
            if not extra or extra.get("fingerprint") != entry.fingerprint:
                return False, f"{h} holds a different merge than recorded"
            if res.dev != format_dev(st.st_dev):
                return False, f"{h} is mounted anew since the record was written"
        elif res.result == ADOPTED:
            # An upstream merge kept as it was (adopt.py): the very mount, still upstream's, with
            # the origin it had then.
            if st is None or path is None:
                return False, f"{h} is no longer merged"
            origin = read_metadata(path, metadata_dir, "origin", 8 << 20)
            if read_live_extra(path, metadata_dir) is not None or origin is None:
                return False, f"{h} holds a different merge than recorded"
            if sha256_hex(origin.encode("utf-8", "surrogateescape")) != res.origin:
                return False, f"{h} holds a different merge than recorded"
            if res.dev != format_dev(st.st_dev):
                return False, f"{h} is mounted anew since the record was written"
        elif res.result in NOT_MERGED:
            if st is not None:
                return False, f"{h} is merged but the record says it should not be"
        else:
            return False, f"{h}: the last run's result was {res.result!r}"
    return True, "inputs and live merges match the record"


def exit_status(record: HandoffRecord) -> int:
    """A run's exit status from its record: 3 when an image was rejected, each one named."""
    return culprits_status(record.culprits())


def culprits_status(culprits: Iterable[tuple[str, str, str]]) -> int:
    """Name each rejected image (class, name, reason) as a warning; 3 when there was one, else 0."""
    from .errors import EXIT_OK, EXIT_PARTIAL
    from .log import log

    named = 0
    for cls, name, reason in culprits:
        log.warning("%s %s: rejected (%s)", cls, name, reason)
        named += 1
    return EXIT_PARTIAL if named else EXIT_OK


def confirmed_record(
    entries: dict[str, ClassEntry],
    *,
    how: ConfirmedBy,
    verb: str,
    root: str,
    started: int,
    finished: int,
    total_ms: float,
    confirm: Optional[Confirmation],
    messages: list[tuple[int, str]],
    declined: Optional[str] = None,
) -> HandoffRecord:
    """The record of a run that changed nothing: each class's entry as it was confirmed (the prior
    record's with each live merge "unchanged", or an adopted one); `confirm` holds the observations
    this run took (never the prior run's, unless taken again)."""
    from . import __version__
    from .state import boot_id, in_initrd

    return HandoffRecord(
        boot_id=boot_id(),
        phase="merged",
        tool=f"sysextpy {__version__}",
        verb=verb,
        root=root,
        in_initrd=in_initrd(),
        started=started,
        finished=finished,
        classes=entries,
        timings={"totalMs": round(total_ms, 3)},
        reload_done=False,
        reload_reason="nothing changed",
        confirmed_by=how,
        declined=declined,
        messages=messages,
        confirm=confirm,
    )


# --------------------------------------------------------------------------------------------------
# The confirming refresh


def confirm_refresh(
    values: Mapping[str, Any], env: Mapping[str, str]
) -> tuple[Optional[int], Optional[str]]:
    """(exit status, None) of a confirmed refresh, or (None, why not): the full run must do the work.
    `values` are the command line's (cli.read_argv), for a refresh cli.confirmable() accepted."""
    from .log import DEBUG, level_from_env

    why = forced("refresh", values.get("always_refresh"), env)
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

    from .log import log, setup_logging

    setup_logging()
    for priority, text in messages:
        log.log(priority, "%s", text)
    log.info("%s", SKIP_MESSAGE)
    return exit_status(record), None


def _confirmed(classes: tuple[str, ...], root: str, state: str, env: Mapping[str, str], t0: float) -> Any:
    """(the record of this run, the messages to repeat), or why the record does not confirm."""
    from .handoff import options_key
    from .live import quick_mount_check, unreachable_dirs
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
        {cls: prior.classes[cls].confirmed(unreachable[cls]) for cls in classes},
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
