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

Imports only the package's light modules: the confirming refresh runs it.
"""

from __future__ import annotations

from .handoff import NOT_MERGED, HandoffRecord
from .live import format_dev, probe, read_live_extra

TYPE_CHECKING = False  # typing is not imported at run time: it costs start-up time
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from typing import Optional

    from .handoff import Confirmation, ConfirmedBy, RecordCheck
    from .live import MountCheck

SKIP_MESSAGE = (
    "Skipping extension refresh because no change was found, "
    "use --always-refresh=yes to always do a refresh."
)
INPUTS_CHANGED = "inputs changed since the last merge"


def forced(verb: str, always_refresh: bool, env: Mapping[str, str]) -> Optional[str]:
    """Why this run refreshes whatever the record says, or None."""
    if verb not in ("refresh", "plan"):
        return f"verb {verb}"
    if always_refresh:
        return "--always-refresh=yes given"
    value = env.get("SYSEXTPY_FORCE_REFRESH")
    if value is not None and value.strip().lower() in ("1", "yes", "y", "true", "t", "on"):
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
        elif res.result in NOT_MERGED:
            if st is not None:
                return False, f"{h} is merged but the record says it should not be"
        else:
            return False, f"{h}: the last run's result was {res.result!r}"
    return True, "inputs and live merges match the record"


def confirmed_record(
    prior: HandoffRecord,
    classes: Sequence[str],
    unreachable: Mapping[str, list[str]],
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
    """The record of a run that changed nothing: every class as the prior record has it, each live
    merge "unchanged"; `confirm` holds the observations this run took (never the prior run's, unless
    taken again)."""
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
        classes={cls: prior.classes[cls].confirmed(unreachable.get(cls, [])) for cls in classes},
        timings={"totalMs": round(total_ms, 3)},
        reload_done=False,
        reload_reason="nothing changed",
        confirmed_by=how,
        declined=declined,
        messages=messages,
        confirm=confirm,
    )
