"""merge, unmerge and refresh: the lock, the fingerprint, the workspace, the swap, the record."""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from pathlib import Path

from . import __version__
from .errors import SysextError
from .live import LIVE_RESULTS, exact_mount_check, format_dev
from .log import log
from .model import ClassSettings, ImageClass, Options, Verb, Verdict
from .quick import SKIP_MESSAGE
from .records import field, record
from .state import DEFAULT_LOCK_TIMEOUT, run_lock
from .util import is_truthy

TYPE_CHECKING = False  # typing is not imported at run time: it costs start-up time
if TYPE_CHECKING:
    from typing import Any, Optional

__all__ = ["DEFAULT_LOCK_TIMEOUT", "LIVE_RESULTS", "SKIP_MESSAGE", "run_lock"]

EXIT_PARTIAL = 3


@record
class ClassRun:
    """One class's inputs and decision in this run."""

    settings: ClassSettings
    fingerprint: str
    inputs: dict[str, Any]
    skip: bool
    reason: str
    changes: tuple[str, ...] = ()
    unreachable: list[str] = field(default_factory=list)

    @property
    def image_class(self) -> ImageClass:
        return self.settings.image_class


def _old_inputs(root: Path, cs: ClassSettings) -> Optional[dict[str, Any]]:
    from .fingerprint import read_live_extra
    from .status import live_merge

    for h in cs.hierarchies:
        _, live = live_merge(root, cs.image_class, h)
        if live is not None:
            extra = read_live_extra(live.metadata_dir)
            inputs = extra.get("inputs") if extra else None
            if isinstance(inputs, dict):
                return inputs
    return None


def decide(
    opts: Options,
    cs: ClassSettings,
    fingerprint: str,
    inputs: dict[str, Any],
    prior: Any,
    env: Mapping[str, str],
) -> tuple[bool, str, tuple[str, ...]]:
    """Skip or refresh one class. Skipping needs a usable record of this boot with the same
    fingerprint AND live merges that match it on the mount table."""
    from .fingerprint import describe_changes
    from .live import check_hierarchies

    if opts.verb not in (Verb.REFRESH, Verb.PLAN):
        return False, f"verb {opts.verb.value}", ()
    if opts.always_refresh:
        return False, "--always-refresh=yes given", ()
    if is_truthy(env.get("SYSEXTPY_FORCE_REFRESH")):
        return False, "SYSEXTPY_FORCE_REFRESH=1 (the earlier merge was incomplete or failed)", ()
    if not prior.usable:
        return False, f"{prior.reason}: doing a full refresh", ()
    entry = prior.record["classes"].get(cs.image_class.value)
    if not isinstance(entry, dict) or not isinstance(entry.get("hierarchies"), dict):
        return False, "the record has nothing for this class", ()
    if entry.get("fingerprint") is None:
        return False, "the last run left no fingerprint (unmerged, or something failed)", ()
    if entry.get("fingerprint") != fingerprint:
        old = _old_inputs(opts.root, cs)
        changes = tuple(describe_changes(old, inputs)) if old else ()
        return False, "inputs changed since the last merge", changes
    recorded: dict[str, Any] = entry["hierarchies"]
    if set(recorded) != set(cs.hierarchies):
        return False, "the set of hierarchies changed", ()
    why = check_hierarchies(opts.root, cs.image_class.metadata_dir, fingerprint, recorded, exact_mount_check)
    if why:
        return False, why, ()
    return True, "fingerprint and live merges match the record", ()


def class_inputs_of(opts: Options, found: Any, env: Mapping[str, str]) -> list[tuple[dict[str, Any], str]]:
    """(inputs, fingerprint) of every class of a survey."""
    from .chase import root_relative
    from .fingerprint import class_inputs, digest, host_inputs

    root = opts.root
    host_part = host_inputs(root, found.host, env)
    result = []
    for cs, disc in zip(found.settings, found.discoveries):
        skipped = [(root_relative(root, s.entry), s.reason) for s in disc.skipped]
        inputs = class_inputs(opts, cs, disc.candidates, skipped, host_part, env)
        result.append((inputs, digest(inputs)))
    return result


def class_runs(
    opts: Options,
    found: Any,
    prior: Any,
    env: Mapping[str, str],
    computed: Optional[list[tuple[dict[str, Any], str]]] = None,
) -> list[ClassRun]:
    """Fingerprint every class of a survey (unless `computed` already) and decide, for each,
    whether a refresh may skip it."""
    from .sources import unreachable_dirs

    if computed is None:
        computed = class_inputs_of(opts, found, env)
    runs = []
    for cs, disc, (inputs, fp) in zip(found.settings, found.discoveries, computed):
        skip, reason, changes = decide(opts, cs, fp, inputs, prior, env)
        runs.append(
            ClassRun(cs, fp, inputs, skip, reason, changes, unreachable_dirs(opts.root, disc.search_dirs))
        )
    return runs


def confirm_data(opts: Options, found: Any, trace: Optional[list[Any]]) -> Optional[dict[str, Any]]:
    """What the next refresh needs to confirm this run's merge without recomputing (quick.py);
    None when the trace cannot vouch for the fingerprints."""
    from .quick import options_key

    if trace is None:
        return None
    return {
        "key": options_key(
            force=opts.force,
            mutable=opts.mutable.value if opts.mutable is not None else None,
            image_policy=opts.image_policy,
            noexec=opts.noexec,
        ),
        "classes": [cs.image_class.value for cs in found.settings],
        "hierarchies": {cs.image_class.value: list(cs.hierarchies) for cs in found.settings},
        "searchDirs": {d.image_class.value: list(d.search_dirs) for d in found.discoveries},
        "trace": trace,
    }


def _log_choice(chosen: list[str], ignored: int) -> None:
    if chosen:
        log.info("Using extensions %s.", ", ".join(f"'{n}'" for n in chosen))
    elif ignored:
        log.info("No suitable extensions found (%d ignored due to incompatible image(s)).", ignored)
    else:
        log.info("No extensions found.")


def _new_record(opts: Options, phase: str, started: int) -> dict[str, Any]:
    from .state import new_record

    return new_record(opts.verb.value, opts.root, phase, started)


def do_merge(opts: Options, env: Mapping[str, str]) -> int:
    from .plan import survey
    from .recorder import Recorder
    from .state import confirmed_entry, finish_confirmed, now_usec, read_record, write_record
    from .status import live_merge
    from .verbs import class_settings

    t0 = time.monotonic()
    started = now_usec()
    root = opts.root
    # Everything the fingerprints are computed from is observed, so that the next refresh can
    # confirm them by taking the same observations again (quick.py).
    with Recorder(os.fspath(root), env) as recorder:
        settings = class_settings(opts, recorder.env)
        found = survey(opts, settings, recorder.env)
        computed = class_inputs_of(opts, found, recorder.env) if found.host.release else []
    confirm = confirm_data(opts, found, recorder.trace())
    if recorder.why_incomplete:
        log.debug("The next refresh will recompute the fingerprints: %s.", recorder.why_incomplete)

    if opts.verb is Verb.MERGE:
        for cs in settings:
            for h in cs.hierarchies:
                if live_merge(root, cs.image_class, h)[1] is not None:
                    raise SysextError(
                        f"Hierarchy '{h}' is already merged.", hint="use refresh, or unmerge first"
                    )
    if found.host.release is None:
        raise SysextError(found.host.release_error or "Failed to acquire 'os-release' data of the root.")
    prior = read_record(opts.state)

    runs = class_runs(opts, found, prior, env, computed)
    for run in runs:
        cs, skip, reason, changes = run.settings, run.skip, run.reason, run.changes
        if skip:
            log.debug("%s: no change (%s)", cs.image_class.value, reason)
        elif opts.verb is Verb.REFRESH:
            log.info("%s: refreshing: %s", cs.image_class.value, reason)
            for change in changes:
                log.info("%s: %s", cs.image_class.value, change)
    t_decided = time.monotonic()

    prior_classes = prior.record.get("classes", {}) if prior.usable and prior.record else {}
    record = _new_record(opts, "merging", started)
    for run in runs:
        if run.skip:
            record["classes"][run.image_class.value] = confirmed_entry(
                prior_classes[run.image_class.value], run.unreachable
            )

    from .quick import DECLINED

    if DECLINED and opts.verb is Verb.REFRESH:
        # Why the observations did not confirm: for the record, and for whoever wonders why a
        # boot took the long way.
        record["quickDeclined"] = DECLINED[-1]
        log.debug("The recorded observations did not confirm the merge: %s.", DECLINED[-1])
    if all(r.skip for r in runs):
        # Nothing mounted, nothing reloaded; the record says this run confirmed the merge.
        log.info("%s", SKIP_MESSAGE)
        finish_confirmed(record, t0, "fingerprints")
        if confirm is not None:
            record["confirm"] = confirm
        write_record(opts.state, record)
        rejected = any(c.get("rejected") for c in record["classes"].values())
        return EXIT_PARTIAL if rejected else 0

    for run in runs:
        if not run.skip:
            record["classes"][run.image_class.value] = {
                "fingerprint": None,
                "merged": [],
                "rejected": [],
                "ignored": [],
                "unreachable": run.unreachable,
                "hierarchies": {},
            }
    write_record(opts.state, record)  # "merging": a crash from here on never leads to a skip

    # Only now the modules that build and mount: a skipped refresh never loads them.
    from . import apply
    from .fingerprint import EXTRA_FILE
    from .identity import extension_identity, origin_record
    from .images import Workspace
    from .plan import judge_all
    from .reload import decide_reload, reload_manager

    todo = [r for r in runs if not r.skip]
    # upstream's origin identity is taken in the host's namespace: mount ids differ in the workspace
    identities = {
        (c.image_class.value, c.name): extension_identity(root, c, env)
        for r, d in zip(runs, found.discoveries)
        if not r.skip
        for c in d.candidates
    }
    assembled: list[tuple[ClassRun, apply.Assembled]] = []
    requesting: set[str] = set()
    trust = None
    if any(
        c.type.is_file_backed for r, d in zip(runs, found.discoveries) if not r.skip for c in d.candidates
    ):
        from .dissect import TrustContext  # only raw images are dissected: directories need none of it

        trust = TrustContext.from_settings(opts, tuple(r.settings for r in todo), env)
    ws = Workspace(trust=trust)
    ws.enter()
    try:
        from .plan import Survey

        sub = Survey(
            root=found.root,
            host=found.host,
            initrd=found.initrd,
            settings=tuple(r.settings for r in todo),
            discoveries=tuple(d for r, d in zip(runs, found.discoveries) if not r.skip),
        )
        plan = judge_all(opts, sub, ws)
        for run, cp in zip(todo, plan.classes):
            merged = list(cp.to_merge)
            entry = record["classes"][run.image_class.value]
            entry["merged"] = [v.name for v in merged]
            entry["rejected"] = [
                {"name": v.name, "reason": v.reason} for v in cp.verdicts if v.verdict is Verdict.REJECTED
            ]
            entry["rejected"] += [
                {"name": s.name or os.fspath(s.entry), "reason": s.reason}
                for s in cp.skipped
                if s.verdict is Verdict.REJECTED
            ]
            entry["ignored"] = [
                {"name": v.name, "reason": v.reason} for v in cp.verdicts if v.verdict is Verdict.IGNORED
            ]
            _log_choice(
                [v.name for v in merged], sum(1 for v in cp.verdicts if v.verdict is Verdict.IGNORED)
            )
            reload_flags = {
                v.name: is_truthy(dict(v.release).get("EXTENSION_RELOAD_MANAGER")) for v in merged
            }
            requesting.update(n for n, flag in reload_flags.items() if flag)
            old = _old_inputs(root, cp.settings)
            if old:
                requesting.update(_old_reloaders(root, cp.settings, set(reload_flags)))
            prepared = [
                apply.prepare_hierarchy(root, ws, cp.settings, h, merged) for h in cp.settings.hierarchies
            ]
            mutable_dirs = {
                p.hierarchy: p.layout.recorded for p in prepared if p.layout.recorded is not None
            }
            origin = origin_record(
                root,
                [v.candidate for v in merged],
                cp.settings.mutable,
                mutable_dirs,
                cp.settings.overlay_options,
                env,
                identities,
            )
            import json

            extra = json.dumps(
                {
                    "tool": f"sysextpy {__version__}",
                    "fingerprint": run.fingerprint,
                    "inputs": run.inputs,
                    "reload": reload_flags,
                },
                indent=1,
                sort_keys=True,
            )
            for p in prepared:
                assembled.append(
                    (run, apply.build_hierarchy(root, ws, p, merged, origin, {EXTRA_FILE: extra + "\n"}))
                )
    except BaseException as e:
        ws.leave()
        apply.discard([a for _, a in assembled])
        record["phase"] = "failed"
        record["errors"].append(str(e))
        record["finished"] = now_usec()
        _write_quietly(opts.state, record)
        raise
    ws.leave()
    t_built = time.monotonic()

    # Everything is built. From here on, each hierarchy changes in one step.
    errors: list[str] = []
    changed = False
    for run, item in assembled:
        entry = record["classes"][run.image_class.value]
        try:
            action = apply.swap_in(root, item)
            changed = changed or action != "untouched"
            result: dict[str, Any] = {"result": action, "mountId": item.mount_id, "dev": None, "error": None}
            if item.mount_id is not None:
                dev = os.stat(item.target).st_dev
                result["dev"] = format_dev(dev)
            entry["hierarchies"][item.hierarchy] = result
        except SysextError as e:
            errors.append(str(e))
            log.error("%s", e)
            entry["hierarchies"][item.hierarchy] = {"result": "failed", "mountId": None, "error": str(e)}
    apply.discard([a for _, a in assembled])
    for run in todo:
        entry = record["classes"][run.image_class.value]
        # An image that failed for a passing reason (no memory, a busy device) is retried by the
        # next refresh rather than confirmed as rejected: no fingerprint, no skip.
        retry = sorted(n for c, n in ws.retry if c == run.image_class.value)
        if retry:
            log.info("%s: the next refresh retries %s.", run.image_class.value, ", ".join(retry))
        elif not any(h.get("result") == "failed" for h in entry["hierarchies"].values()):
            entry["fingerprint"] = run.fingerprint

    do_reload, why = decide_reload(opts, changed, requesting)
    log.info("%s the service manager: %s.", "Reloading" if do_reload else "Not reloading", why)
    record["reload"] = {"done": False, "reason": why}
    if do_reload:
        try:
            reload_manager()
            record["reload"]["done"] = True
        except SysextError as e:
            errors.append(str(e))
            log.error("%s", e)

    record["errors"] = errors
    record["phase"] = "failed" if errors else "merged"
    if not errors and confirm is not None:
        record["confirm"] = confirm
    record["finished"] = now_usec()
    record["timings"] = {
        "totalMs": round((time.monotonic() - t0) * 1000, 3),
        "decideMs": round((t_decided - t0) * 1000, 3),
        "assembleMs": round((t_built - t_decided) * 1000, 3),
        "swapMs": round((time.monotonic() - t_built) * 1000, 3),
    }
    write_record(opts.state, record)
    if errors:
        return 1
    return EXIT_PARTIAL if plan.rejected else 0


def _old_reloaders(root: Path, cs: ClassSettings, still_merged: set[str]) -> set[str]:
    """Extensions of the live merge that ask for a reload and are going away."""
    from .fingerprint import read_live_extra
    from .status import live_merge

    result: set[str] = set()
    for h in cs.hierarchies:
        _, live = live_merge(root, cs.image_class, h)
        if live is None:
            continue
        extra = read_live_extra(live.metadata_dir) or {}
        flags = extra.get("reload") or {}
        if isinstance(flags, dict):
            result.update(n for n, f in flags.items() if f and n not in still_merged)
    return result


def _write_quietly(path: Path, record: Mapping[str, Any]) -> None:
    from .state import write_record

    try:
        write_record(path, record)
    except SysextError as e:
        log.error("%s", e)


def do_unmerge(opts: Options, settings: tuple[ClassSettings, ...], env: Mapping[str, str]) -> int:
    from . import apply
    from .reload import decide_reload, reload_manager
    from .state import now_usec, write_record

    record = _new_record(opts, "merging", now_usec())
    requesting: set[str] = set()
    for cs in settings:
        requesting |= _old_reloaders(opts.root, cs, set())
    failed: list[str] = []
    changed = False
    for cs in settings:
        entry: dict[str, Any] = {
            "fingerprint": None,
            "merged": [],
            "rejected": [],
            "ignored": [],
            "unreachable": [],
            "hierarchies": {},
        }
        for h in cs.hierarchies:
            try:
                did = apply.unmerge_hierarchy(opts.root, cs.image_class, h)
                changed = changed or did
                entry["hierarchies"][h] = {
                    "result": "unmerged" if did else "untouched",
                    "mountId": None,
                    "error": None,
                }
            except SysextError as e:
                log.error("%s", e)
                failed.append(str(e))
                entry["hierarchies"][h] = {"result": "failed", "mountId": None, "error": str(e)}
        record["classes"][cs.image_class.value] = entry
    do_reload, why = decide_reload(opts, changed, requesting)
    log.info("%s the service manager: %s.", "Reloading" if do_reload else "Not reloading", why)
    if do_reload:
        try:
            reload_manager()
        except SysextError as e:
            failed.append(str(e))
            log.error("%s", e)
    record["phase"] = "failed" if failed else "merged"
    record["errors"] = failed
    record["finished"] = now_usec()
    record["reload"] = {"done": do_reload, "reason": why}
    write_record(opts.state, record)
    return 1 if failed else 0


def run_mutating_verb(opts: Options, env: Mapping[str, str]) -> int:
    from .verbs import class_settings

    with run_lock(opts.state, opts.root, env):
        if opts.verb is Verb.UNMERGE:
            return do_unmerge(opts, class_settings(opts, env), env)
        return do_merge(opts, env)
