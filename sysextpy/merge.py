"""merge, unmerge and refresh: the lock, the plan, the workspace, the swap."""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .errors import LockTimeout, SysextError
from .log import log
from .model import ClassSettings, Options, Verb, Verdict

EXIT_PARTIAL = 3
DEFAULT_LOCK_TIMEOUT = 60.0


@contextmanager
def run_lock(state_path: Path, env: Mapping[str, str]) -> Iterator[None]:
    """Serialise mutating runs. A second run waits (bounded), then works on what the first left."""
    lock_dir = state_path.parent
    lock_dir.mkdir(parents=True, exist_ok=True, mode=0o755)
    path = lock_dir / "lock"
    try:
        timeout = float(env.get("SYSEXTPY_LOCK_TIMEOUT", DEFAULT_LOCK_TIMEOUT))
    except ValueError:
        timeout = DEFAULT_LOCK_TIMEOUT
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        deadline = time.monotonic() + timeout
        announced = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not announced:
                    log.info("Waiting for another sysextpy run to finish (lock %s)...", path)
                    announced = True
                if time.monotonic() >= deadline:
                    raise LockTimeout(
                        f"Another sysextpy run held {os.fspath(path)!r} for more than {timeout:g} s.",
                        hint="check for a hung sysextpy process",
                    ) from None
                time.sleep(0.05)
        yield
    finally:
        os.close(fd)


def _log_choice(cls_name: str, chosen: list[str], ignored: int) -> None:
    if chosen:
        log.info("Using extensions %s.", ", ".join(f"'{n}'" for n in chosen))
    elif ignored:
        log.info("No suitable extensions found (%d ignored due to incompatible image(s)).", ignored)
    else:
        log.info("No extensions found.")


def do_merge(opts: Options, settings: tuple[ClassSettings, ...], env: Mapping[str, str]) -> int:
    from . import apply
    from .identity import origin_record
    from .images import Workspace
    from .plan import judge_all, survey
    from .status import live_merge

    root = opts.root
    refresh = opts.verb is Verb.REFRESH
    if not refresh:
        for cs in settings:
            for h in cs.hierarchies:
                if live_merge(root, cs.image_class, h)[1] is not None:
                    raise SysextError(
                        f"Hierarchy '{h}' is already merged.", hint="use refresh, or unmerge first"
                    )

    found = survey(opts, settings, env)
    if found.host.release is None:
        raise SysextError(found.host.release_error or "Failed to acquire 'os-release' data of the root.")
    # Identity is taken in the host's namespace: mount ids differ inside the private workspace.
    identities: dict[tuple[str, str], dict[str, Any]] = {}
    from .identity import extension_identity

    for c in found.candidates:
        identities[(c.image_class.value, c.name)] = extension_identity(root, c, env)

    ws = Workspace()
    ws.enter()
    assembled: list[apply.Assembled] = []
    try:
        plan = judge_all(opts, found, ws)
        for cp in plan.classes:
            merged = list(cp.to_merge)
            ignored = sum(1 for v in cp.verdicts if v.verdict is Verdict.IGNORED)
            _log_choice(cp.image_class.value, [v.name for v in merged], ignored)
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
            for p in prepared:
                assembled.append(apply.build_hierarchy(root, ws, p, merged, origin))
    except BaseException:
        ws.leave()
        apply.discard(assembled)
        raise
    ws.leave()

    # Everything is built. From here on, each hierarchy changes in one step.
    errors = []
    for item in assembled:
        try:
            apply.swap_in(root, item)
        except SysextError as e:
            errors.append(str(e))
            log.error("%s", e)
    apply.discard(assembled)
    if errors:
        return 1
    return EXIT_PARTIAL if plan.rejected else 0


def do_unmerge(opts: Options, settings: tuple[ClassSettings, ...]) -> int:
    from . import apply

    failed = 0
    for cs in settings:
        for h in cs.hierarchies:
            try:
                apply.unmerge_hierarchy(opts.root, cs.image_class, h)
            except SysextError as e:
                log.error("%s", e)
                failed += 1
    return 1 if failed else 0


def run_mutating_verb(opts: Options, settings: tuple[ClassSettings, ...], env: Mapping[str, str]) -> int:
    with run_lock(opts.state, env):
        if opts.verb is Verb.UNMERGE:
            return do_unmerge(opts, settings)
        return do_merge(opts, settings, env)
