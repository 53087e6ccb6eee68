# SPDX-License-Identifier: LGPL-2.1-or-later
"""Live actions: the units an extension asks to restart once it comes, changes or goes.

An extension-release file may name units in `EXTENSION_RESTART_UNITS=` and
`EXTENSION_RELOAD_OR_RESTART_UNITS=` (whitespace-separated). After a run on the real root that
changed a hierarchy and reloaded the manager, each unit named by an extension that was added,
replaced or removed gets `systemctl try-restart` (or `try-reload-or-restart`); a unit the manager
no longer finds a file for (it came with the extension) is stopped instead. A unit in both lists
is only restarted, as upstream does. Either key, when not empty, implies
`EXTENSION_RELOAD_MANAGER=1`: the manager has to see the unit files come and go first.

`try-` and not upstream's plain restart: the run may be `sysextpy.service` early in the boot,
where starting a unit that was not running would queue it before sysinit.target is reached.

A name that is not a valid unit name drops that one action with a warning that quotes it (as
upstream's v262 does: "ignoring"); the image itself is still merged.

What an extension asked for is kept in the merge's `sysextpy.json` ("units"), so that when it is
replaced or removed, what the old one named is known without its image; of a merge
systemd-sysext made, the release files in the merged tree say it.
"""

from __future__ import annotations

import os

TYPE_CHECKING = False  # typing is not imported at run time: it costs start-up time
if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence
    from typing import Any, Optional

    from .handoff import ActionKind, UnitAction
    from .model import ImageClass

RESTART_KEY = "EXTENSION_RESTART_UNITS"
RELOAD_OR_RESTART_KEY = "EXTENSION_RELOAD_OR_RESTART_UNITS"

TRY_RESTART: ActionKind = "try-restart"
TRY_RELOAD_OR_RESTART: ActionKind = "try-reload-or-restart"
STOP: ActionKind = "stop"

UNIT_TYPES = frozenset("service socket target device mount automount swap timer path slice scope".split())
UNIT_NAME_MAX = 255
_VALID_CHARS = frozenset("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ:-_.\\@")


def unit_name_is_valid(name: str) -> bool:
    """A unit that can be restarted: `foo.service` or an instance `foo@bar.service`; a template
    (`foo@.service`) cannot be."""
    if not 0 < len(name) <= UNIT_NAME_MAX:
        return False
    dot = name.rfind(".")
    if dot <= 0 or name[dot + 1 :] not in UNIT_TYPES:
        return False
    prefix = name[:dot]
    if not set(prefix) <= _VALID_CHARS:
        return False
    at = prefix.find("@")
    return at != 0 and at != len(prefix) - 1


def parse_units(value: str, key: str, extension: str) -> tuple[list[str], list[str]]:
    """Pure: (the valid unit names of `value`, in order and once each; a warning per bad one)."""
    units: list[str] = []
    warnings: list[str] = []
    for word in value.split():
        if not unit_name_is_valid(word):
            warnings.append(f"Invalid unit name {word!r} in {key}= of extension {extension!r}, ignoring it.")
        elif word not in units:
            units.append(word)
    return units, warnings


class UnitRequest:
    """What one extension's release data asks of the manager."""

    __slots__ = ("reload_or_restart", "restart", "warnings", "wants_reload")

    def __init__(
        self,
        restart: Sequence[str] = (),
        reload_or_restart: Sequence[str] = (),
        wants_reload: bool = False,
        warnings: Sequence[str] = (),
    ) -> None:
        self.restart = list(restart)
        self.reload_or_restart = list(reload_or_restart)
        self.wants_reload = wants_reload  # a key was set, valid names or not (as upstream)
        self.warnings = list(warnings)

    @classmethod
    def from_release(cls, release: Mapping[str, str], extension: str) -> UnitRequest:
        restart, w1 = parse_units(release.get(RESTART_KEY, ""), RESTART_KEY, extension)
        reload_or_restart, w2 = parse_units(
            release.get(RELOAD_OR_RESTART_KEY, ""), RELOAD_OR_RESTART_KEY, extension
        )
        wants = bool(release.get(RESTART_KEY, "").strip() or release.get(RELOAD_OR_RESTART_KEY, "").strip())
        return cls(restart, reload_or_restart, wants, w1 + w2)

    def to_json(self) -> dict[str, Any]:
        return {"restart": list(self.restart), "reloadOrRestart": list(self.reload_or_restart)}

    @classmethod
    def from_json(cls, data: Any) -> UnitRequest:
        """From a merge's metadata; another version may have written another shape: what is not a
        list of valid names counts as nothing."""
        if not isinstance(data, dict):
            return cls()

        def names(key: str) -> list[str]:
            items = data.get(key)
            if not isinstance(items, list):
                return []
            return [u for u in items if isinstance(u, str) and unit_name_is_valid(u)]

        return cls(names("restart"), names("reloadOrRestart"))


class PlannedAction:
    """A unit to act on and the extensions that asked for it (`class:name`)."""

    __slots__ = ("kind", "unit", "why")

    def __init__(self, unit: str, kind: ActionKind, why: Sequence[str]) -> None:
        self.unit = unit
        self.kind: ActionKind = kind  # TRY_RESTART or TRY_RELOAD_OR_RESTART; STOP is decided when acting
        self.why = list(why)


def plan_actions(changed: Iterable[tuple[str, UnitRequest]]) -> list[PlannedAction]:
    """Pure: the actions for the requests of the extensions that changed (`class:name`, request):
    restarts first, then reloads-or-restarts, each sorted by unit name; a unit in both lists is
    only restarted."""
    restart: dict[str, list[str]] = {}
    reload_or_restart: dict[str, list[str]] = {}
    for who, request in sorted(changed, key=lambda item: item[0]):
        for unit in request.restart:
            restart.setdefault(unit, []).append(who)
        for unit in request.reload_or_restart:
            reload_or_restart.setdefault(unit, []).append(who)
    actions = [PlannedAction(u, TRY_RESTART, restart[u]) for u in sorted(restart)]
    actions += [
        PlannedAction(u, TRY_RELOAD_OR_RESTART, reload_or_restart[u])
        for u in sorted(reload_or_restart)
        if u not in restart
    ]
    return actions


def changed_requests(
    image_class: str,
    old: Mapping[str, UnitRequest],
    old_inputs: Optional[Mapping[str, Any]],
    new: Mapping[str, UnitRequest],
    new_inputs: Mapping[str, Any],
) -> list[tuple[str, UnitRequest]]:
    """Pure: the requests of one class's extensions that were added, replaced or removed, given
    what was merged before (`old`, by name, with the inputs it was built from, None when unknown)
    and what is merged now. A replaced extension asks for what its old and new versions named:
    a unit the new one no longer ships is then stopped."""
    old_images = old_inputs.get("images") if old_inputs else None
    new_images = new_inputs.get("images")
    result = []
    for name in sorted(set(old) | set(new)):
        if name not in old:
            request = new[name]
        elif name not in new:
            request = old[name]
        else:
            before = old_images.get(name) if isinstance(old_images, dict) else None
            after = new_images.get(name) if isinstance(new_images, dict) else None
            if before is not None and before == after:
                continue
            request = UnitRequest(
                old[name].restart + [u for u in new[name].restart if u not in old[name].restart],
                old[name].reload_or_restart
                + [u for u in new[name].reload_or_restart if u not in old[name].reload_or_restart],
            )
        if request.restart or request.reload_or_restart:
            result.append((f"{image_class}:{name}", request))
    return result


def live_merge_requests(
    root: str, image_class: ImageClass, hierarchies: Sequence[str], reloading: Optional[set[str]] = None
) -> tuple[dict[str, UnitRequest], Optional[dict[str, Any]]]:
    """What the extensions of the class's live merges asked for (by name), and the inputs the
    merge was built from (None when unknown: then every extension merged now counts as changed).
    Read before a swap or an unmerge: what goes away may exist nowhere else. The names of those
    that asked for a manager reload are added to `reloading`, from the same reading."""
    from .live import read_live_extra
    from .status import live_merge

    found: dict[str, UnitRequest] = {}
    inputs: Optional[dict[str, Any]] = None
    for h in hierarchies:
        path, live = live_merge(root, image_class, h)
        if live is None or path is None:
            continue
        extra = read_live_extra(os.fspath(path), image_class.metadata_dir)
        if extra is None:
            # A merge systemd-sysext made (or one sysextpy adopted): its extensions' release data
            # where upstream reads it, in the merged tree.
            for name in live.extensions:
                found.setdefault(name, merged_release_request(root, image_class, name))
            continue
        for name, request in live_requests(extra).items():
            found.setdefault(name, request)
        if reloading is not None:
            flags = extra.get("reload")
            if isinstance(flags, dict):
                reloading.update(n for n, flag in flags.items() if flag)
        if inputs is None and isinstance(extra.get("inputs"), dict):
            inputs = extra["inputs"]
    return found, inputs


def merged_release_request(root: str, image_class: ImageClass, name: str) -> UnitRequest:
    """What the extension-release file of a merged extension asks for, read from the merged tree
    inside the root; nothing when it cannot be read."""
    from .errors import ResolveError, SysextError
    from .osrelease import parse_os_release
    from .view import LiveView, read_text

    view = LiveView(os.fspath(root), {})
    try:
        text = read_text(view, view.resolve(f"/{image_class.release_dir}/extension-release.{name}"))
    except (ResolveError, SysextError) as e:
        from .log import log

        log.debug("No release data of the merged extension %r: %s", name, e)
        return UnitRequest()
    return UnitRequest.from_release(parse_os_release(text), name)


def live_requests(extra: Optional[Mapping[str, Any]]) -> dict[str, UnitRequest]:
    """What each extension of a live merge asked for, from its `sysextpy.json`: every extension
    it merged (the "reload" map names them all), with the units it named, if any."""
    if not extra:
        return {}
    merged = extra.get("reload")
    units = extra.get("units")
    names = [n for n in merged if isinstance(n, str)] if isinstance(merged, dict) else []
    table = units if isinstance(units, dict) else {}
    return {n: UnitRequest.from_json(table.get(n)) for n in names}


def act(changes: list[tuple[str, UnitRequest]]) -> list[UnitAction]:
    """The live actions for the extensions that changed, done after the one reload."""
    from .log import log

    planned = plan_actions(changes)
    if planned:
        log.info("Acting on %d unit(s) the changed extensions name.", len(planned))
    return perform(planned)


def perform(actions: Sequence[PlannedAction]) -> list[UnitAction]:
    """Act on each unit in order, said in the log; what was done and how it went, for the record.
    A unit the manager has no file for any more (LoadState=not-found) is stopped instead."""
    from .errors import SysextError
    from .handoff import UnitAction
    from .log import log
    from .run import run

    done: list[UnitAction] = []
    for action in actions:
        kind: ActionKind = action.kind
        error: Optional[str] = None
        try:
            # Asked of the manager itself: it has just reloaded, so it knows which files are gone.
            state = run(
                ["systemctl", "show", "--property=LoadState", "--value", "--", action.unit], timeout=30
            )
            if state.stdout.strip() == "not-found":
                kind = STOP
            run(["systemctl", kind, "--", action.unit], timeout=90)
        except SysextError as e:
            error = str(e)
        asked = ", ".join(action.why)
        if error is None:
            log.info("%s: systemctl %s done (asked by %s).", action.unit, kind, asked)
        else:
            log.error("%s: systemctl %s failed (asked by %s): %s", action.unit, kind, asked, error)
        done.append(UnitAction(action.unit, kind, list(action.why), "failed" if error else "done", error))
    return done
