# SPDX-License-Identifier: LGPL-2.1-or-later
"""merge, unmerge and refresh: the lock, the inputs, the decision, the workspace, the swap, the record.

A run reads everything that decides its merge through one recording view of the root (view.py):
the settings, discovery, the verdicts of the trees, the identities and trust material of the disk
images. From that it computes each class's inputs and their digest, binds them to the digest of
the observations, and asks decide.py whether a refresh may skip. Then, for what it does not skip,
it mounts disk images in a private workspace, builds the new overlays there and swaps each one in,
and records what it did (state.py). The mounts see what the view answered: a certificate removed
between deciding and mounting does not change the verdict of this run; the next one sees it.
"""

from __future__ import annotations

import os
import time

from . import __version__
from .chase import root_relative
from .decide import INPUTS_CHANGED, SKIP_MESSAGE, confirmed_record, decide, exit_status, forced
from .errors import EXIT_FAILURE, SysextError
from .handoff import ClassEntry, Confirmation, HandoffRecord, HierarchyResult, bind, options_key
from .live import exact_mount_check, format_dev, read_live_extra
from .log import INFO, WARNING, log
from .model import ClassSettings, ExtensionVerdict, ImageClass, Options, Verb, Verdict
from .records import field, record
from .util import is_truthy

TYPE_CHECKING = False  # typing is not imported at run time: it costs start-up time
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from typing import Any, Optional

    from .actions import UnitRequest
    from .discover import Discovery
    from .dissect import TrustContext
    from .handoff import RecordCheck
    from .hooks import HookSearch
    from .pins import Pins
    from .plan import ClassPlan, Survey
    from .recording import RecordingView
    from .view import LiveView


@record
class Assessment:
    """What a run knows before it mounts anything: per class the settings, what discovery found,
    the verdicts of the trees and the inputs; and what deciding said."""

    settings: tuple[ClassSettings, ...]
    found: Survey
    trust: Optional[TrustContext]
    verdicts: dict[tuple[str, str], ExtensionVerdict]  # the trees', by (class, name)
    inputs: list[dict[str, Any]]
    messages: list[tuple[int, str]]
    hooks: HookSearch


def class_settings(
    opts: Options, view: LiveView, messages: list[tuple[int, str]]
) -> tuple[ClassSettings, ...]:
    from .settings import resolve_settings

    result = []
    for c in opts.classes:
        with view.scoped(c.value):
            result.append(resolve_settings(opts, c, view))
    messages.extend((WARNING, w) for cs in result for w in cs.warnings)
    return tuple(result)


def assess(opts: Options, view: LiveView, pins: Optional[Pins] = None) -> Assessment:
    """Read every input of every class through `view`, mounting nothing. With `pins`, every image
    is pinned as soon as it is found, before its inputs are read (pins.py)."""
    from .fingerprint import class_inputs, host_inputs
    from .hooks import find_all_hooks
    from .plan import is_tree, judge_tree, survey

    messages: list[tuple[int, str]] = []
    settings = class_settings(opts, view, messages)
    found = survey(opts, settings, view)
    if pins is not None:
        pins.take(found.candidates)
    messages.extend((WARNING, w) for d in found.discoveries for w in d.warnings)
    messages.extend(
        (INFO, f"{s.image_class.value} {root_relative(opts.root, s.entry)}: deferred ({s.reason})")
        for d in found.discoveries
        for s in d.skipped
        if s.verdict is Verdict.DEFERRED
    )
    trust = None
    if any(c.type.is_file_backed for c in found.candidates):
        from .dissect import TrustContext  # only disk images are dissected: trees need none of it

        trust = TrustContext.from_settings(opts, settings, view)
    # Every class's, so read outside any class's scope.
    hooks = find_all_hooks(view)
    verdicts: dict[tuple[str, str], ExtensionVerdict] = {}
    inputs: list[dict[str, Any]] = []
    if found.host.release is not None:
        host_part = host_inputs(view, found.host)
        for cs, disc in zip(settings, found.discoveries):
            with view.scoped(cs.image_class.value):
                by_name = {
                    c.name: judge_tree(view, c, found.host, cs, force=opts.force)
                    for c in disc.candidates
                    if is_tree(c)
                }
                verdicts.update(((cs.image_class.value, name), v) for name, v in by_name.items())
                inputs.append(class_inputs(opts, cs, disc, by_name, host_part, view, trust, hooks))
    return Assessment(settings, found, trust, verdicts, inputs, messages, hooks)


def confirmation(opts: Options, a: Assessment, view: RecordingView) -> Confirmation:
    """What this run's inputs were read from, as the next refresh takes it again."""
    kept = view.kept()
    return Confirmation(
        key=options_key(
            force=opts.force,
            mutable=opts.mutable.value if opts.mutable is not None else None,
            image_policy=opts.image_policy,
            noexec=opts.noexec,
        ),
        classes=[cs.image_class.value for cs in a.settings],
        hierarchies={cs.image_class.value: list(cs.hierarchies) for cs in a.settings},
        search_dirs={d.image_class.value: list(d.search_dirs) for d in a.found.discoveries},
        observations=[view.observations[i] for i in kept],
        scopes={cs.image_class.value: view.observations_of(cs.image_class.value, kept) for cs in a.settings},
    )


@record
class ClassRun:
    """One class's inputs and decision in this run."""

    settings: ClassSettings
    inputs: dict[str, Any]
    inputs_digest: str
    observations_digest: str
    fingerprint: str
    skip: bool
    reason: str
    changes: tuple[str, ...] = ()
    unreachable: list[str] = field(default_factory=list)

    @property
    def image_class(self) -> ImageClass:
        return self.settings.image_class


def _live_inputs(root: str, cs: ClassSettings) -> Optional[dict[str, Any]]:
    """The inputs a live merge of the class was built from, from its metadata."""
    from .status import live_merge

    for h in cs.hierarchies:
        path, live = live_merge(root, cs.image_class, h)
        if live is not None and path is not None:
            extra = read_live_extra(os.fspath(path), cs.image_class.metadata_dir)
            inputs = extra.get("inputs") if extra else None
            if isinstance(inputs, dict):
                return inputs
    return None


def class_runs(
    opts: Options, a: Assessment, check: RecordCheck, confirm: Confirmation, env: Mapping[str, str]
) -> list[ClassRun]:
    """Decide, for each class, whether a refresh may skip it (decide.py)."""
    from .fingerprint import describe_changes, digest, unverifiable
    from .live import unreachable_dirs

    forced_by = forced(opts.verb.value, opts.always_refresh, env)
    runs = []
    for cs, disc, inputs in zip(a.settings, a.found.discoveries, a.inputs):
        inputs_digest = digest(inputs)
        skip, reason = decide(
            cs.image_class.value,
            cs.hierarchies,
            check,
            root=os.fspath(opts.root),
            mount_check=exact_mount_check,
            inputs_digest=inputs_digest,
            forced_by=forced_by or unverifiable(inputs),
        )
        changes: tuple[str, ...] = ()
        if reason == INPUTS_CHANGED:
            old = _live_inputs(opts.root, cs)
            changes = tuple(describe_changes(old, inputs)) if old else ()
        observations_digest = confirm.digest(cs.image_class.value)
        assert observations_digest is not None
        runs.append(
            ClassRun(
                settings=cs,
                inputs=inputs,
                inputs_digest=inputs_digest,
                observations_digest=observations_digest,
                fingerprint=bind(inputs_digest, observations_digest),
                skip=skip,
                reason=reason,
                changes=changes,
                unreachable=unreachable_dirs(opts.root, disc.search_dirs),
            )
        )
    return runs


def _fill_verdicts(entry: ClassEntry, cp: ClassPlan, root: str, merged: Sequence[ExtensionVerdict]) -> None:
    """A class's merged (`merged`, what cp.to_merge gave), rejected, ignored and deferred images, as
    its record entry lists them."""
    entry.merged = [v.name for v in merged]
    entry.rejected = [(v.name, v.reason) for v in cp.verdicts if v.verdict is Verdict.REJECTED]
    entry.rejected += [
        (s.name or os.fspath(s.entry), s.reason) for s in cp.skipped if s.verdict is Verdict.REJECTED
    ]
    entry.ignored = [(v.name, v.reason) for v in cp.verdicts if v.verdict is Verdict.IGNORED]
    entry.deferred = [
        (root_relative(root, s.entry), s.reason) for s in cp.skipped if s.verdict is Verdict.DEFERRED
    ]


def _log_deferred(check: RecordCheck, runs: list[ClassRun], found: Survey, root: str) -> None:
    """Name the images that the initrd of this boot left to this run, and why it did."""
    from .state import boot_id, in_initrd

    prior = check.record
    if prior is None or not prior.in_initrd or in_initrd() or prior.boot_id != boot_id():
        return
    for run, disc in zip(runs, found.discoveries):
        entry = prior.classes.get(run.image_class.value)
        if run.skip or entry is None or not entry.deferred:
            continue
        why = dict(entry.deferred)
        for c in disc.candidates:
            reason = why.get(root_relative(root, c.entry))
            if reason is not None:
                log.info("%s %s: deferred in the initrd: %s", run.image_class.value, c.name, reason)


def _adopt(
    opts: Options, a: Assessment, view: RecordingView, runs: list[ClassRun], pins: Pins
) -> dict[str, ClassEntry]:
    """The entries of the classes whose live merges systemd-sysext or systemd-confext made and that
    this run keeps (adopt.py): those it would build as they are."""
    from .adopt import adoption, upstream_merges
    from .fingerprint import unverifiable
    from .images import Workspace
    from .plan import Survey, judge_all

    if a.hooks.hooks:
        # Upstream's merge has no hook's verdict nor generated layer: it is never what we build.
        return {}
    todo = []
    for run, disc in zip(runs, a.found.discoveries):
        # A class that could be skipped needs no adopting, one with a block device cannot be.
        live = (
            upstream_merges(opts.root, run.settings) if not run.skip and not unverifiable(run.inputs) else {}
        )
        if live:
            todo.append((run, disc, live))
    if not todo:
        return {}
    identities = _identities(opts, [disc for _, disc, _ in todo], pins)
    adopted: dict[str, ClassEntry] = {}
    with Workspace(trust=a.trust, pins=pins) as ws:
        sub = Survey(
            root=a.found.root,
            host=a.found.host,
            initrd=a.found.initrd,
            settings=tuple(run.settings for run, _, _ in todo),
            discoveries=tuple(disc for _, disc, _ in todo),
        )
        plan = judge_all(opts, sub, view, ws, known=a.verdicts)
        for (run, _, live), cp in zip(todo, plan.classes):
            cls = run.image_class.value
            tool = run.image_class.upstream_tool
            where = ", ".join(live)
            results, why = adoption(opts, view, cp, ws, live, identities)
            if results is None or ws.retry:
                log.info("%s: not adopting the merge %s made on %s: %s.", cls, tool, where, why)
                continue
            log.info("%s: adopted the merge %s made on %s: %s.", cls, tool, where, why)
            entry = ClassEntry(
                fingerprint=run.fingerprint,
                inputs_digest=run.inputs_digest,
                observations_digest=run.observations_digest,
                unreachable=run.unreachable,
                hierarchies=results,
            )
            _fill_verdicts(entry, cp, opts.root, cp.to_merge)
            adopted[cls] = entry
    return adopted


def _identities(opts: Options, discoveries: Sequence[Discovery], pins: Pins) -> dict[tuple[str, str], Any]:
    """Upstream's identity of each image (origin), taken in the host's namespace, where mount ids
    are those of the paths discovered. It is read from the paths: an image that is not where it
    was pinned any more ends the run, which the next one repeats."""
    from .identity import extension_identity
    from .view import LiveView

    plain = LiveView(os.fspath(opts.root), {}, pins=pins)
    try:
        found = {
            (c.image_class.value, c.name): extension_identity(plain, c)
            for d in discoveries
            for c in d.candidates
        }
    except OSError as e:
        found, moved = {}, [e.filename or str(e)]
    else:
        moved = pins.moved()
    if moved:
        raise SysextError(
            f"{', '.join(repr(p) for p in moved)} changed while the merge was prepared; nothing changed.",
            hint="refresh again",
        )
    return found


def _log_choice(chosen: list[str], ignored: int) -> None:
    if chosen:
        log.info("Using extensions %s.", ", ".join(f"'{n}'" for n in chosen))
    elif ignored:
        log.info("No suitable extensions found (%d ignored due to incompatible image(s)).", ignored)
    else:
        log.info("No extensions found.")


def _timed_ms(since: float) -> float:
    return round((time.monotonic() - since) * 1000, 3)


# How often a run reads its inputs again when an image moved while they were being read.
READ_ATTEMPTS = 3


def _assess_pinned(opts: Options, env: Mapping[str, str]) -> tuple[RecordingView, Assessment, Pins]:
    """The inputs, read while every image is pinned, and the pins: what is merged later is what
    the inputs describe. An image whose path led elsewhere by the end of the reading (a file
    system remounted, an automount expired and triggered again) makes the run read again."""
    from .pins import Pins
    from .recording import RecordingView

    moved: list[str] = []
    for _ in range(READ_ATTEMPTS):
        pins = Pins()
        try:
            view = RecordingView(os.fspath(opts.root), env, pins)
            a = assess(opts, view, pins)
            moved = pins.moved()
        except BaseException:
            pins.close()
            raise
        if not moved:
            return view, a, pins
        pins.close()
        log.info("%s changed while being read; reading the inputs again.", ", ".join(repr(p) for p in moved))
    raise SysextError(
        f"{', '.join(repr(p) for p in moved)} kept changing while the inputs were read.",
        hint="merge again once the file systems holding the extensions are settled",
    )


def do_merge(opts: Options, env: Mapping[str, str], declined: Optional[str] = None) -> int:
    from .state import now_usec

    t0 = time.monotonic()
    started = now_usec()
    view, a, pins = _assess_pinned(opts, env)
    with pins:
        return _merge_assessed(opts, env, declined, view, a, pins, t0, started)


def _merge_assessed(
    opts: Options,
    env: Mapping[str, str],
    declined: Optional[str],
    view: RecordingView,
    a: Assessment,
    pins: Pins,
    t0: float,
    started: int,
) -> int:
    from .state import new_record, now_usec, read_record, write_record
    from .status import live_merge

    root = opts.root
    for priority, text in a.messages:
        log.log(priority, "%s", text)
    confirm = confirmation(opts, a, view)

    if opts.verb is Verb.MERGE:
        for cs in a.settings:
            for h in cs.hierarchies:
                if live_merge(root, cs.image_class, h)[1] is not None:
                    raise SysextError(
                        f"Hierarchy '{h}' is already merged.", hint="use refresh, or unmerge first"
                    )
    if a.found.host.release is None:
        raise SysextError(a.found.host.release_error or "Failed to acquire 'os-release' data of the root.")
    check = read_record(opts.state)

    runs = class_runs(opts, a, check, confirm, env)
    adopted: dict[str, ClassEntry] = {}
    if opts.verb is Verb.REFRESH and forced(opts.verb.value, opts.always_refresh, env) is None:
        adopted = _adopt(opts, a, view, runs, pins)
    for run in runs:
        if run.skip:
            log.debug("%s: no change (%s)", run.image_class.value, run.reason)
        elif opts.verb is Verb.REFRESH and run.image_class.value not in adopted:
            log.info("%s: refreshing: %s", run.image_class.value, run.reason)
            for change in run.changes:
                log.info("%s: %s", run.image_class.value, change)
    _log_deferred(check, runs, a.found, root)
    if declined and opts.verb is Verb.REFRESH:
        # Why the observations did not confirm: for the record, and for whoever wonders why a
        # boot took the long way.
        log.debug("The recorded observations did not confirm the merge: %s.", declined)
    t_decided = time.monotonic()

    if all(r.skip or r.image_class.value in adopted for r in runs):
        entries = {}
        for run in runs:
            cls = run.image_class.value
            if cls in adopted:
                entries[cls] = adopted[cls]
            else:
                assert check.record is not None  # a skip needs a usable record
                entries[cls] = check.record.classes[cls].confirmed(run.unreachable)
        done = confirmed_record(
            entries,
            how="adoption" if adopted else "inputs",
            verb=opts.verb.value,
            root=os.fspath(root),
            started=started,
            finished=now_usec(),
            total_ms=_timed_ms(t0),
            confirm=confirm,
            messages=a.messages,
            declined=declined if opts.verb is Verb.REFRESH else None,
        )
        write_record(opts.state, done)
        log.info("%s", SKIP_MESSAGE)
        return exit_status(done)

    todo = [d for r, d in zip(runs, a.found.discoveries) if not (r.skip or r.image_class.value in adopted)]
    identities = _identities(opts, todo, pins)
    record = new_record(opts.verb.value, root, "merging", started, env)
    record.messages = a.messages
    record.declined = declined if opts.verb is Verb.REFRESH else None
    for run in runs:
        cls = run.image_class.value
        if cls in adopted:
            record.classes[cls] = adopted[cls]
            run.skip = True
        elif run.skip:
            assert check.record is not None
            record.classes[cls] = check.record.classes[cls].confirmed(run.unreachable)
        else:
            record.classes[cls] = ClassEntry(unreachable=run.unreachable, target=run.fingerprint)
    write_record(opts.state, record)  # "merging": a crash from here on never leads to a skip
    return _build_and_swap(opts, env, a, view, pins, identities, runs, record, confirm, t0, t_decided)


def _build_and_swap(
    opts: Options,
    env: Mapping[str, str],
    a: Assessment,
    view: LiveView,
    pins: Pins,
    identities: dict[tuple[str, str], Any],
    runs: list[ClassRun],
    record: HandoffRecord,
    confirm: Confirmation,
    t0: float,
    t_decided: float,
) -> int:
    # Only now the modules that build and mount: a skipped refresh never loads them.
    from . import apply
    from .actions import UnitRequest, act, changed_requests, live_merge_requests
    from .fingerprint import EXTRA_FILE
    from .hooks import staged
    from .identity import origin_record
    from .images import Workspace
    from .jsonlite import dump_json
    from .plan import Survey, judge_all
    from .reload import reload_once
    from .state import now_usec, write_record
    from .view import LiveView

    root = opts.root
    todo = [r for r in runs if not r.skip]
    discoveries = [d for r, d in zip(runs, a.found.discoveries) if not r.skip]
    plain = LiveView(os.fspath(root), env, pins=pins)
    assembled: list[tuple[ClassRun, apply.Assembled]] = []
    requesting: set[str] = set()
    # per class: (what the live merge's extensions asked for, its inputs; what the new ones ask)
    before: dict[str, tuple[dict[str, UnitRequest], Optional[dict[str, Any]]]] = {}
    after: dict[str, dict[str, UnitRequest]] = {}
    hook_errors: list[str] = []
    ws = Workspace(trust=a.trust, pins=pins, walks=view.walk_of)
    ws.enter()
    try:
        hooks = staged(a.hooks, ws, root) if a.hooks.hooks else a.hooks
        sub = Survey(
            root=a.found.root,
            host=a.found.host,
            initrd=a.found.initrd,
            settings=tuple(r.settings for r in todo),
            discoveries=tuple(discoveries),
        )
        plan = judge_all(opts, sub, view, ws, known=a.verdicts, hooks=hooks)
        record.hooks.extend(plan.hook_runs)
        for run, cp in zip(todo, plan.classes):
            merged = list(cp.to_merge)  # sorted by version comparison: taken once
            entry = record.classes[run.image_class.value]
            _fill_verdicts(entry, cp, opts.root, merged)
            _log_choice(
                [v.name for v in merged], sum(1 for v in cp.verdicts if v.verdict is Verdict.IGNORED)
            )
            cls = run.image_class.value
            units = {v.name: UnitRequest.from_release(dict(v.release), v.name) for v in merged}
            for request in units.values():
                for warning in request.warnings:
                    log.warning("%s", warning)
            reload_flags = {
                v.name: is_truthy(dict(v.release).get("EXTENSION_RELOAD_MANAGER"))
                or units[v.name].wants_reload
                for v in merged
            }
            requesting.update(n for n, flag in reload_flags.items() if flag)
            # and those of the live merge that asked for one and are going away
            old_reloading: set[str] = set()
            before[cls] = live_merge_requests(root, run.image_class, cp.settings.hierarchies, old_reloading)
            requesting.update(old_reloading - set(reload_flags))
            after[cls] = units
            prepared = [
                apply.prepare_hierarchy(root, ws, cp.settings, h, merged) for h in cp.settings.hierarchies
            ]
            mutable_dirs = {
                p.hierarchy: p.layout.recorded for p in prepared if p.layout.recorded is not None
            }
            origin = origin_record(
                plain,
                [v.candidate for v in merged],
                cp.settings.mutable,
                mutable_dirs,
                cp.settings.overlay_options,
                identities,
            )
            # Compact, through the C encoder: the inputs of hundreds of extensions are long.
            extra = dump_json(
                {
                    "tool": f"sysextpy {__version__}",
                    "fingerprint": run.fingerprint,
                    "inputsDigest": run.inputs_digest,
                    "observationsDigest": run.observations_digest,
                    "inputs": run.inputs,
                    "reload": reload_flags,
                    "units": {n: r.to_json() for n, r in units.items() if r.restart or r.reload_or_restart},
                },
            )
            for p in prepared:
                try:
                    item = apply.build_hierarchy(
                        root,
                        ws,
                        p,
                        merged,
                        origin,
                        {EXTRA_FILE: extra + "\n"},
                        hooks,
                        record.hooks,
                        tree_changes=view.tree_changes,
                    )
                except apply.HookFailed as e:
                    # This hierarchy keeps the merge it has; the others go on.
                    log.error("%s", e)
                    hook_errors.append(str(e))
                    entry.hierarchies[p.hierarchy] = HierarchyResult("failed", None, None, str(e))
                    continue
                assembled.append((run, item))
    except BaseException as e:
        ws.leave()
        apply.discard([item for _, item in assembled])
        record.phase = "failed"
        record.errors.append(str(e))
        record.finished = now_usec()
        _write_quietly(opts.state, record)
        raise
    ws.leave()
    t_built = time.monotonic()

    # Everything is built. From here on, each hierarchy changes in one step.
    errors: list[str] = list(hook_errors)
    changed = False
    changed_classes: set[str] = set()
    for run, item in assembled:
        entry = record.classes[run.image_class.value]
        try:
            action = apply.swap_in(root, item)
            changed = changed or action != "untouched"
            if action != "untouched":
                changed_classes.add(run.image_class.value)
            dev = format_dev(os.stat(item.target).st_dev) if item.mount_id is not None else None
            entry.hierarchies[item.hierarchy] = HierarchyResult(action, item.mount_id, dev)  # type: ignore[arg-type]
        except SysextError as e:
            errors.append(str(e))
            log.error("%s", e)
            entry.hierarchies[item.hierarchy] = HierarchyResult("failed", None, None, str(e))
    apply.discard([item for _, item in assembled])
    for run in todo:
        entry = record.classes[run.image_class.value]
        # An image that failed for a passing reason (no memory, a busy device) is retried by the
        # next refresh rather than confirmed as rejected: no fingerprint, no skip.
        retry = sorted(n for c, n in ws.retry if c == run.image_class.value)
        if retry:
            log.info("%s: the next refresh retries %s.", run.image_class.value, ", ".join(retry))
        elif not any(h.result == "failed" for h in entry.hierarchies.values()):
            entry.fingerprint = run.fingerprint
            entry.inputs_digest = run.inputs_digest
            entry.observations_digest = run.observations_digest

    reload_once(opts, changed, requesting, env, record, errors)
    if record.reload_done:
        changes = []
        for run in todo:
            cls = run.image_class.value
            if cls in changed_classes and cls in before:
                old, old_inputs = before[cls]
                changes += changed_requests(cls, old, old_inputs, after[cls], run.inputs)
        record.actions = act(changes)

    record.errors = errors
    record.phase = "failed" if errors else "merged"
    if not errors:
        record.confirm = confirm
    record.finished = now_usec()
    record.timings = {
        "totalMs": _timed_ms(t0),
        "decideMs": round((t_decided - t0) * 1000, 3),
        "assembleMs": round((t_built - t_decided) * 1000, 3),
        "swapMs": _timed_ms(t_built),
    }
    write_record(opts.state, record)
    if errors or any(a.result == "failed" for a in record.actions):
        return EXIT_FAILURE
    return exit_status(record)


def _write_quietly(path: str, record: HandoffRecord) -> None:
    from .state import write_record

    try:
        write_record(path, record)
    except SysextError as e:
        log.error("%s", e)
