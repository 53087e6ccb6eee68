# SPDX-License-Identifier: LGPL-2.1-or-later
"""The verbs that only look (status, list, plan): each turns Options into output and an exit status.
merge, refresh and unmerge are run by cli.py, through merge.py and unmerge.py."""

from __future__ import annotations

import os

from .log import log
from .model import ClassSettings, JsonMode, Options, Verb, Verdict

TYPE_CHECKING = False  # typing is not imported at run time: it costs start-up time
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any, Optional

    from .view import LiveView


def settings_of(opts: Options, view: LiveView) -> tuple[ClassSettings, ...]:
    """Every class's settings, its warnings said."""
    from .merge import class_settings

    messages: list[tuple[int, str]] = []
    settings = class_settings(opts, view, messages)
    for priority, text in messages:
        log.log(priority, "%s", text)
    return settings


def _merge_details(hierarchy: str, metadata_dir: str) -> tuple[Optional[str], dict[str, str]]:
    """(mutable mode, extension name -> image path) of a live merge, from its metadata files."""
    from .jsonlite import load_json
    from .live import read_metadata

    mode: Optional[str] = None
    paths: dict[str, str] = {}
    try:
        origin = load_json(read_metadata(hierarchy, metadata_dir, "origin", 8 << 20) or "")
        mode = origin.get("mutable", {}).get("mode")
        for name, ident in (origin.get("extensions") or {}).items():
            if isinstance(ident, dict) and isinstance(ident.get("path"), str):
                paths[name] = ident["path"]
    except (ValueError, AttributeError):
        pass  # a merge without a readable origin (older tools) still shows its names
    return mode, paths


def _rejected_by_class(opts: Options) -> dict[str, list[dict[str, str]]]:
    """Images the last run of this boot rejected, per class, from the handoff record."""
    from .state import read_record

    check = read_record(opts.state)
    record = check.record
    if record is None or "another boot" in check.reason:
        return {}
    return {
        cls: [{"name": name, "reason": reason} for name, reason in entry.rejected]
        for cls, entry in record.classes.items()
    }


def verb_status(opts: Options, settings: tuple[ClassSettings, ...]) -> int:
    from .output import emit_json, emit_table, format_usec  # only these verbs print tables
    from .status import live_merge

    rejected = _rejected_by_class(opts)
    rows: list[dict[str, Any]] = []
    for cs in settings:
        cls = cs.image_class.value
        for hierarchy in cs.hierarchies:
            path, merge = live_merge(opts.root, cs.image_class, hierarchy)
            if path is None:
                continue
            mode, paths = (
                _merge_details(os.fspath(path), cs.image_class.metadata_dir) if merge else (None, {})
            )
            rows.append(
                {
                    "hierarchy": hierarchy,
                    "extensions": list(merge.extensions) if merge else [],
                    "since": merge.since_usec if merge else None,
                    "class": cls,
                    "mutable": mode,
                    "paths": paths,
                    "rejected": rejected.get(cls, []),
                }
            )
    rows.sort(key=lambda r: (r["hierarchy"], r["class"]))
    if opts.json is not JsonMode.OFF:
        emit_json(rows, opts.json)
        return 0
    table = [
        [
            r["hierarchy"],
            ", ".join(r["extensions"]) if r["extensions"] else "none",
            format_usec(r["since"]) if r["since"] else "",
            r["class"],
            r["mutable"] or "",
        ]
        for r in rows
    ]
    emit_table(["hierarchy", "extensions", "since", "class", "mutable"], table, legend=opts.legend)
    shown = [cs.image_class.value for cs in settings]
    for cls in shown:
        for r in rejected.get(cls, []):
            print(f"rejected {cls} image {r.get('name')!r}: {r.get('reason')}")
    return 0


def verb_list(opts: Options, settings: tuple[ClassSettings, ...], view: LiveView) -> int:
    from .discover import discover
    from .osrelease import is_initrd_root
    from .output import emit_json, emit_table, format_usec  # only these verbs print tables

    initrd = is_initrd_root(view)
    rows: list[dict[str, Any]] = []
    for cs in settings:
        found = discover(view, cs.image_class, initrd=initrd)
        for warning in found.warnings:
            log.warning("%s: %s", cs.image_class.value, warning)
        for c in found.candidates:
            rows.append(
                {
                    "name": c.name,
                    "type": c.type.value,
                    "path": os.fspath(c.path),
                    "time": c.mtime_usec or c.crtime_usec,
                    "class": cs.image_class.value,
                }
            )
    rows.sort(key=lambda r: (r["name"], r["class"]))
    if opts.json is not JsonMode.OFF:
        emit_json(rows, opts.json)
        return 0
    if not rows:
        log.info("No OS extensions found.")
        return 0
    table = [[r["name"], r["type"], r["path"], format_usec(r["time"]), r["class"]] for r in rows]
    emit_table(["name", "type", "path", "time", "class"], table, legend=opts.legend)
    if opts.legend:
        print(f"\n{len(rows)} images listed.")
    return 0


def plan_rows(plan: Any) -> list[dict[str, Any]]:
    """Every image and skipped entry of a plan, as JSON-ready rows."""
    rows: list[dict[str, Any]] = []
    for cp in plan.classes:
        for v in cp.verdicts:
            c = v.candidate
            row: dict[str, Any] = {
                "name": c.name,
                "class": c.image_class.value,
                "type": c.type.value,
                "path": os.fspath(c.path),
                "entry": os.fspath(c.entry),
                "verdict": v.verdict.value,
                "reason": v.reason,
            }
            if c.version is not None:
                row["version"] = c.version
            if v.release_file:
                row["releaseFile"] = v.release_file
            rows.append(row)
        for s in cp.skipped:
            rows.append(
                {
                    "name": s.name,
                    "class": s.image_class.value,
                    "type": None,
                    "path": None,
                    "entry": os.fspath(s.entry),
                    "verdict": s.verdict.value,
                    "reason": s.reason,
                }
            )
    return rows


def verb_plan(opts: Options, env: Mapping[str, str]) -> int:
    """Every image's verdict and what refresh would do, decided as refresh decides; nothing changes."""
    from .decide import culprits_status
    from .merge import assess, class_runs, confirmation
    from .output import emit_json, emit_table  # only these verbs print tables
    from .plan import judge_all
    from .recording import RecordingView
    from .state import read_record

    view = RecordingView(os.fspath(opts.root), env)
    a = assess(opts, view)
    for priority, text in a.messages:
        log.log(priority, "%s", text)
    decisions: dict[str, dict[str, Any]] = {}
    if a.found.host.release is not None:
        confirm = confirmation(opts, a, view)
        for r in class_runs(opts, a, read_record(opts.state), confirm, env):
            decisions[r.image_class.value] = {
                "skip": r.skip,
                "reason": r.reason,
                "changes": list(r.changes),
                "fingerprint": r.fingerprint,
            }
    if os.geteuid() == 0 and (a.hooks.hooks or any(c.type.is_file_backed for c in a.found.candidates)):
        # Raw images are inspected, and check hooks shown the images, in a private mount
        # namespace: nothing shows on the host.
        from .hooks import staged
        from .images import Workspace

        with Workspace(trust=a.trust) as ws:
            hooks = staged(a.hooks, ws, opts.root) if a.hooks.hooks else a.hooks
            plan = judge_all(opts, a.found, view, ws, known=a.verdicts, hooks=hooks)
    else:
        plan = judge_all(opts, a.found, view, known=a.verdicts)
    rows = plan_rows(plan)
    result: dict[str, Any] = {
        "root": os.fspath(plan.root),
        "scope": plan.host.scope,
        "images": rows,
        "classes": [
            {
                "class": cp.image_class.value,
                "hierarchies": list(cp.settings.hierarchies),
                "mutable": cp.settings.mutable.value,
                "merge": [v.name for v in cp.to_merge],
                "refresh": decisions.get(cp.image_class.value),
            }
            for cp in plan.classes
        ],
    }
    if plan.host.release_error:
        result["hostError"] = plan.host.release_error
    result["hooks"] = {
        "hooks": [{"name": h.name, "path": h.inner, "sha256": h.sha256} for h in a.hooks.hooks],
        "ignored": [list(pair) for pair in a.hooks.ignored],
        "timeout": a.hooks.timeout,
        "checks": [r.to_json() for r in plan.hook_runs],
    }
    if opts.json is not JsonMode.OFF:
        emit_json(result, opts.json)
    else:
        table = [
            [
                r["class"],
                r["name"] or "-",
                r["verdict"],
                r["path"] or r["entry"],
                r["reason"],
            ]
            for r in rows
        ]
        emit_table(["class", "name", "verdict", "path", "reason"], table, legend=opts.legend)
        if opts.legend:
            for cp in plan.classes:
                names = ", ".join(v.name for v in cp.to_merge) or "nothing"
                decision = decisions.get(cp.image_class.value)
                if decision:
                    action = "skip" if decision["skip"] else "refresh"
                    print(f"\n{cp.image_class.value}: refresh would {action}: {decision['reason']}")
                    for change in decision["changes"]:
                        print(f"  {change}")
                where = ", ".join(cp.settings.hierarchies)
                print(f"\n{cp.image_class.value}: would merge {names} into {where}")
            if a.hooks.hooks:
                listed = ", ".join(f"{h.name} ({h.inner})" for h in a.hooks.hooks)
                print(f"\nhooks: check each image, then generate each hierarchy: {listed}")
            for inner, why in a.hooks.ignored:
                print(f"hook {inner} ignored: {why}")
    if plan.host.release_error:
        log.error("%s", plan.host.release_error)
    return culprits_status(
        (r["class"], r["name"] or r["entry"], r["reason"])
        for r in rows
        if r["verdict"] == Verdict.REJECTED.value
    )


def run_verb(opts: Options, env: Mapping[str, str]) -> int:
    """The verbs that only look: status, list and plan (cli.py runs those that change things)."""
    if opts.verb is Verb.PLAN:
        return verb_plan(opts, env)
    from .view import LiveView

    view = LiveView(os.fspath(opts.root), env)
    settings = settings_of(opts, view)
    if opts.verb is Verb.STATUS:
        return verb_status(opts, settings)
    if opts.verb is Verb.LIST:
        return verb_list(opts, settings, view)
    raise AssertionError(f"unhandled verb {opts.verb.value}")
