# SPDX-License-Identifier: LGPL-2.1-or-later
"""The single service-manager reload, after all classes are done."""

from __future__ import annotations

from .errors import SysextError
from .log import log
from .state import in_initrd

__all__ = ["decide_reload", "in_initrd", "reload_manager", "reload_once"]

TYPE_CHECKING = False  # typing is not imported at run time: it costs start-up time
if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping
    from typing import Optional

    from .handoff import HandoffRecord
    from .model import Options


def decide_reload(
    opts: Options, changed: bool, requesting: Iterable[str], env: Optional[Mapping[str, str]] = None
) -> tuple[bool, str]:
    """Whether to reload the manager, and why (said in the log either way). The live actions
    (actions.py) follow a reload, and only one."""
    wanted = sorted(set(requesting))
    if not changed:
        return False, "nothing changed"
    if opts.no_reload:
        return False, "--no-reload given"
    if opts.root_given:
        return False, "--root given"
    if in_initrd(env):
        return False, "running in the initrd"
    if not wanted:
        return False, "no changed extension sets EXTENSION_RELOAD_MANAGER=1"
    return True, "EXTENSION_RELOAD_MANAGER=1 (or units to restart) in " + ", ".join(repr(n) for n in wanted)


def reload_manager() -> None:
    from .run import run

    run(["systemctl", "daemon-reload"], timeout=90)
    log.info("Reloaded the service manager.")


def reload_once(
    opts: Options,
    changed: bool,
    requesting: Iterable[str],
    env: Optional[Mapping[str, str]],
    record: HandoffRecord,
    errors: list[str],
) -> None:
    """The run's one reload, if decide_reload() wants it: why goes into the log and the record,
    and a failed reload into `errors` (what was merged stays)."""
    do_reload, why = decide_reload(opts, changed, requesting, env)
    log.info("%s the service manager: %s.", "Reloading" if do_reload else "Not reloading", why)
    record.reload_reason = why
    if do_reload:
        try:
            reload_manager()
            record.reload_done = True
        except SysextError as e:
            errors.append(str(e))
            log.error("%s", e)
