# SPDX-License-Identifier: LGPL-2.1-or-later
"""Live actions (actions.py): the units extensions name in EXTENSION_RESTART_UNITS= and
EXTENSION_RELOAD_OR_RESTART_UNITS=, restarted after the one manager reload.

The parsers and the order are checked against cases written out by hand. The runs are real: the
tool runs without --root, so it acts as on the real root, with its hierarchy moved into this
test's directory by $SYSTEMD_SYSEXT_HIERARCHIES and its extensions in /run/extensions (the
session's private tmpfs); the overlays are mounted inside the session's private mount namespace.
The only thing not real is the manager: a `systemctl` placed first on PATH writes its argv to a
log and answers `show --property=LoadState` from the unit files it finds in the merged hierarchy.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Optional

import pytest

from sysextpy.actions import (
    UnitRequest,
    changed_requests,
    parse_units,
    plan_actions,
    unit_name_is_valid,
)
from sysextpy.handoff import SCHEMA, ClassEntry, HandoffRecord, UnitAction, parse_record
from tests.conftest import REPO_ROOT
from tests.merge_support import Runner, RunSysextpy, add_sysext, sysext_tree, write

# --------------------------------------------------------------------------------------------------
# Parsing and planning


@pytest.mark.parametrize(
    "name, valid",
    [
        ("foo.service", True),
        ("foo@bar.service", True),
        ("-.mount", True),
        ("dev-sda1.device", True),
        ("a:b_c\\x2d.socket", True),
        ("foo@bar@baz.service", True),
        ("foo@.service", False),  # a template: nothing to restart
        ("@bar.service", False),
        ("foo", False),
        (".service", False),
        ("foo.bar", False),
        ("foo.service.", False),
        ("bad/x.service", False),
        ("foo bar.service", False),
        ("föö.service", False),
        ("*.service", False),
        ("a" * 247 + ".service", True),  # 255 characters
        ("a" * 248 + ".service", False),
    ],
)
def test_unit_name_is_valid(name: str, valid: bool) -> None:
    assert unit_name_is_valid(name) is valid


def test_parse_units_drops_bad_names_and_quotes_them() -> None:
    units, warnings = parse_units("  b.service bad/x a.service b.service\tfoo@.service ", "KEY", "ext")
    assert units == ["b.service", "a.service"]
    assert warnings == [
        "Invalid unit name 'bad/x' in KEY= of extension 'ext', ignoring it.",
        "Invalid unit name 'foo@.service' in KEY= of extension 'ext', ignoring it.",
    ]


@pytest.mark.parametrize(
    "release, restart, other, wants",
    [
        ({}, [], [], False),
        ({"EXTENSION_RESTART_UNITS": "a.service"}, ["a.service"], [], True),
        ({"EXTENSION_RELOAD_OR_RESTART_UNITS": "b.socket"}, [], ["b.socket"], True),
        ({"EXTENSION_RESTART_UNITS": "bad/x"}, [], [], True),  # set: the reload is asked for
        ({"EXTENSION_RESTART_UNITS": "  "}, [], [], False),
    ],
)
def test_request_from_release(
    release: dict[str, str], restart: list[str], other: list[str], wants: bool
) -> None:
    request = UnitRequest.from_release(release, "ext")
    assert (request.restart, request.reload_or_restart, request.wants_reload) == (restart, other, wants)


def test_plan_orders_restarts_first_and_restart_wins() -> None:
    planned = plan_actions(
        [
            ("sysext:z", UnitRequest(["b.service"], ["a.service", "c.service"])),
            ("confext:y", UnitRequest(["d.service"], ["b.service"])),
            ("sysext:a", UnitRequest([], ["a.service"])),
        ]
    )
    assert [(p.unit, p.kind, p.why) for p in planned] == [
        ("b.service", "try-restart", ["sysext:z"]),
        ("d.service", "try-restart", ["confext:y"]),
        ("a.service", "try-reload-or-restart", ["sysext:a", "sysext:z"]),
        ("c.service", "try-reload-or-restart", ["sysext:z"]),
    ]


def test_changed_requests() -> None:
    old = {
        "same": UnitRequest(["s.service"]),
        "replaced": UnitRequest(["old.service", "r.service"]),
        "removed": UnitRequest([], ["gone.service"]),
        "quiet": UnitRequest(),
    }
    new = {
        "same": UnitRequest(["s.service"]),
        "replaced": UnitRequest(["r.service", "new.service"]),
        "added": UnitRequest(["n.service"]),
        "quiet": UnitRequest(),
    }
    old_inputs = {"images": {"same": {"tree": "1"}, "replaced": {"tree": "2"}, "quiet": {"tree": "3"}}}
    new_inputs = {"images": {"same": {"tree": "1"}, "replaced": {"tree": "9"}, "quiet": {"tree": "8"}}}
    got = changed_requests("sysext", old, old_inputs, new, new_inputs)
    assert [(who, r.restart, r.reload_or_restart) for who, r in got] == [
        ("sysext:added", ["n.service"], []),
        ("sysext:removed", [], ["gone.service"]),
        ("sysext:replaced", ["old.service", "r.service", "new.service"], []),
    ]
    # what the live merge was built from is not known: everything merged now counts as changed
    unknown = changed_requests("sysext", old, None, new, new_inputs)
    assert [who for who, _ in unknown] == [
        "sysext:added",
        "sysext:removed",
        "sysext:replaced",
        "sysext:same",
    ]


def test_record_keeps_actions_and_target() -> None:
    record = HandoffRecord(
        boot_id="b" * 32,
        phase="merging",
        tool="t",
        verb="refresh",
        root="/",
        in_initrd=False,
        started=1,
        classes={"sysext": ClassEntry(target="f" * 64)},
        actions=[UnitAction("a.service", "stop", ["sysext:x"], "failed", "no")],
    )
    back = parse_record(record.dumps(), "b" * 32).record
    assert back is not None
    assert back.classes["sysext"].target == "f" * 64
    assert [a.to_json() for a in back.actions] == [
        {"unit": "a.service", "action": "stop", "for": ["sysext:x"], "result": "failed", "error": "no"}
    ]
    # a record written before these keys existed reads as having none
    old = json.loads(record.dumps())
    del old["actions"], old["classes"]["sysext"]["target"]
    again = parse_record(json.dumps(old), "b" * 32).record
    assert again is not None and again.actions == [] and again.classes["sysext"].target is None
    assert SCHEMA == 2
    bad = json.loads(record.dumps())
    bad["actions"][0]["action"] = "restart"
    assert "actions[0].action" in parse_record(json.dumps(bad), "b" * 32).reason


# --------------------------------------------------------------------------------------------------
# Real runs with a recording systemctl

FAKE_SYSTEMCTL = """#!/bin/sh
# SPDX-License-Identifier: LGPL-2.1-or-later
printf '%s\\n' "$*" >>"$FAKE_SYSTEMCTL_LOG"
for last; do :; done
if [ "$1" = show ]; then
    IFS=:
    for dir in $FAKE_UNIT_PATH; do
        if [ -e "$dir/$last" ]; then echo loaded; exit 0; fi
    done
    echo not-found
    exit 0
fi
case " $FAKE_SYSTEMCTL_FAIL " in
*" $1:$last "*) echo "Job for $last failed." >&2; exit 1 ;;
esac
exit 0
"""


class LiveWorld:
    """A real-root run whose sysext hierarchy is `self.usr` and whose manager is the fake one."""

    def __init__(self, cmd: RunSysextpy, base: Path) -> None:
        self.cmd = cmd
        self.base = base
        self.usr = base / "usr"
        self.units = self.usr / "lib/systemd/system"
        self.units.mkdir(parents=True)
        self.log = base / "systemctl.log"
        self.state = base / "state/state.json"
        self.extensions = Path("/run/extensions")
        write(base / "bin/systemctl", FAKE_SYSTEMCTL, 0o755)

    def add(self, name: str, release: str, files: Optional[dict[str, str]] = None) -> Path:
        """An extension in /run/extensions whose content lands in the hierarchy `self.usr`."""
        inside = os.path.relpath(self.usr, "/")
        content = {f"{inside}/{rel}": text for rel, text in (files or {"share/x": name}).items()}
        path = self.extensions / name
        shutil.rmtree(path, ignore_errors=True)
        return sysext_tree(path, name, content, release="ID=_any\n" + release)

    def run(self, *args: str, env: Optional[dict[str, str]] = None) -> tuple[int, list[str], str]:
        """(exit status, what systemctl was asked this run other than `show`, stderr)."""
        before = self.calls()
        full_env = {
            "PATH": f"{self.base / 'bin'}:{os.environ['PATH']}",
            "SYSTEMD_SYSEXT_HIERARCHIES": os.fspath(self.usr),
            "FAKE_SYSTEMCTL_LOG": os.fspath(self.log),
            "FAKE_UNIT_PATH": os.fspath(self.units),
            "SYSTEMD_IN_INITRD": "0",
            **(env or {}),
        }
        res = self.cmd("--class=sysext", "--state", os.fspath(self.state), *args, env=full_env)
        return (
            res.returncode,
            [c for c in self.calls()[len(before) :] if not c.startswith("show ")],
            res.stderr,
        )

    def calls(self) -> list[str]:
        return self.log.read_text().splitlines() if self.log.exists() else []

    def record(self) -> dict[str, object]:
        data: dict[str, object] = json.loads(self.state.read_text())
        return data

    def merged(self) -> list[str]:
        try:
            return (self.usr / ".systemd-sysext/extensions").read_text().split()
        except FileNotFoundError:
            return []


@pytest.fixture
def live(mount_tmp_path: Path, sysextpy_cmd: RunSysextpy) -> Iterator[LiveWorld]:
    world = LiveWorld(sysextpy_cmd, mount_tmp_path)
    os.makedirs(world.extensions, exist_ok=True)
    assert not os.listdir(world.extensions), "another test left extensions in /run/extensions"
    try:
        yield world
    finally:
        world.run("unmerge", "--no-reload")
        for entry in os.listdir(world.extensions):
            shutil.rmtree(world.extensions / entry)


def test_actions_follow_one_reload_in_a_stable_order(live: LiveWorld) -> None:
    write(live.units / "host.service", "[Service]\nExecStart=/bin/true\n")
    write(live.units / "b.service", "[Service]\nExecStart=/bin/true\n")
    live.add(
        "app",
        'EXTENSION_RESTART_UNITS="b.service a.service"\n'
        'EXTENSION_RELOAD_OR_RESTART_UNITS="c.service a.service"\n',
        {"lib/systemd/system/a.service": "[Service]\nExecStart=/bin/true\n", "share/app": "1"},
    )
    live.add("cfg", "EXTENSION_RELOAD_OR_RESTART_UNITS=host.service\n")
    live.add("plain", "")

    status, calls, err = live.run("refresh")
    assert status == 0, err
    assert live.merged() == ["app", "cfg", "plain"]
    assert calls == [
        "daemon-reload",
        "try-restart -- a.service",
        "try-restart -- b.service",
        "stop -- c.service",  # no unit file anywhere: the manager does not know it
        "try-reload-or-restart -- host.service",
    ]
    record = live.record()
    assert record["phase"] == "merged"
    assert [(a["unit"], a["action"], a["for"], a["result"]) for a in record["actions"]] == [  # type: ignore[attr-defined]
        ("a.service", "try-restart", ["sysext:app"], "done"),
        ("b.service", "try-restart", ["sysext:app"], "done"),
        ("c.service", "stop", ["sysext:app"], "done"),
        ("host.service", "try-reload-or-restart", ["sysext:cfg"], "done"),
    ]
    assert "a.service: systemctl try-restart done (asked by sysext:app)" in err

    # nothing changed: the refresh skips, and asks nothing of the manager
    status, calls, err = live.run("refresh")
    assert (status, calls) == (0, []), err
    assert "Skipping extension refresh" in err

    # app replaced: its units only, after one reload
    live.add(
        "app",
        'EXTENSION_RESTART_UNITS="b.service a.service"\n',
        {"lib/systemd/system/a.service": "[Service]\nExecStart=/bin/false\n", "share/app": "2"},
    )
    status, calls, err = live.run("refresh")
    assert status == 0, err
    assert calls == [
        "daemon-reload",
        "try-restart -- a.service",
        "try-restart -- b.service",
        "stop -- c.service",  # the old app named it: still asked for, though the new one does not
    ]
    assert (live.usr / "share/app").read_text() == "2"

    # app removed: what the old one named, from the live merge's metadata; a.service came with it
    shutil.rmtree(live.extensions / "app")
    status, calls, err = live.run("refresh")
    assert status == 0, err
    assert live.merged() == ["cfg", "plain"]
    assert calls == ["daemon-reload", "stop -- a.service", "try-restart -- b.service"]

    # unmerge: what the remaining extensions named
    status, calls, err = live.run("unmerge")
    assert status == 0, err
    assert calls == ["daemon-reload", "try-reload-or-restart -- host.service"]
    assert live.merged() == []


def test_unmerge_of_two_hierarchies_acts_once(live: LiveWorld) -> None:
    opt = live.base / "opt"
    opt.mkdir()
    live.add(
        "app",
        "EXTENSION_RESTART_UNITS=a.service\n",
        {"share/app": "1", f"{os.path.relpath(opt, live.usr)}/app": "1"},
    )
    both = {"SYSTEMD_SYSEXT_HIERARCHIES": f"{live.usr}:{opt}"}
    status, calls, err = live.run("merge", env=both)
    assert (status, calls) == (0, ["daemon-reload", "stop -- a.service"]), err
    assert (opt / "app").read_text() == "1"
    status, calls, err = live.run("unmerge", env=both)
    assert (status, calls) == (0, ["daemon-reload", "stop -- a.service"]), err
    assert not (opt / "app").exists()


def test_no_actions_without_units(live: LiveWorld) -> None:
    live.add("plain", "EXTENSION_RELOAD_MANAGER=1\n")
    status, calls, err = live.run("refresh")
    assert (status, calls) == (0, ["daemon-reload"]), err
    assert live.record()["actions"] == []


@pytest.mark.parametrize(
    "args, env, said",
    [
        (("--no-reload",), {}, "--no-reload given"),
        ((), {"SYSTEMD_IN_INITRD": "1"}, "running in the initrd"),
    ],
)
def test_no_reload_no_actions(
    live: LiveWorld, args: tuple[str, ...], env: dict[str, str], said: str
) -> None:
    live.add("app", "EXTENSION_RESTART_UNITS=a.service\n")
    for verb in ("merge", "refresh", "unmerge"):
        status, calls, err = live.run(verb, *args, "--always-refresh=yes", env=env)
        assert (status, calls) == (0, []), err
        assert f"Not reloading the service manager: {said}." in err
        assert live.record()["actions"] == []
    if env:
        assert live.record()["inInitrd"] is True


def test_root_given_no_actions(
    mountns: None, fake_root: Path, tmp_path: Path, sysextpy_cmd: RunSysextpy
) -> None:
    write(tmp_path / "bin/systemctl", FAKE_SYSTEMCTL, 0o755)
    log = tmp_path / "systemctl.log"
    env = {
        "PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}",
        "FAKE_SYSTEMCTL_LOG": os.fspath(log),
        "FAKE_UNIT_PATH": os.fspath(fake_root / "usr/lib/systemd/system"),
    }
    add_sysext(fake_root, "app", {"usr/share/app": "1"}).joinpath(
        "usr/lib/extension-release.d/extension-release.app"
    ).write_text("ID=_any\nEXTENSION_RESTART_UNITS=a.service\n")
    run = Runner(sysextpy_cmd, fake_root, tmp_path / "state.json")
    for verb in ("merge", "refresh", "unmerge"):
        assert "Not reloading the service manager: --root given." in run.ok(
            verb, "--always-refresh=yes", env=env
        )
    assert not log.exists()


def test_failed_action_exits_1_and_keeps_the_merge(live: LiveWorld) -> None:
    write(live.units / "b.service", "[Service]\nExecStart=/bin/true\n")
    live.add("app", 'EXTENSION_RESTART_UNITS="bad/x b.service"\n', {"share/app": "1"})
    status, calls, err = live.run("refresh", env={"FAKE_SYSTEMCTL_FAIL": "try-restart:b.service"})
    assert status == 1, err
    assert calls == ["daemon-reload", "try-restart -- b.service"]
    assert "Invalid unit name 'bad/x' in EXTENSION_RESTART_UNITS= of extension 'app', ignoring it." in err
    assert "b.service: systemctl try-restart failed (asked by sysext:app)" in err
    assert live.merged() == ["app"] and (live.usr / "share/app").read_text() == "1"
    record = live.record()
    assert record["phase"] == "merged"
    assert [(a["unit"], a["result"]) for a in record["actions"]] == [("b.service", "failed")]  # type: ignore[attr-defined]
    assert "Job for b.service failed." in record["actions"][0]["error"]  # type: ignore[index]
    # the merge stands: the next refresh confirms it and asks nothing
    status, calls, err = live.run("refresh")
    assert (status, calls) == (0, []), err


def test_merging_record_names_its_target(live: LiveWorld) -> None:
    """The record written before anything is mounted says which fingerprint the run moves to. It
    is rewritten only once the reload and the actions are done, so the copy the fake manager
    takes at daemon-reload is that `merging` record."""
    live.add("app", "EXTENSION_RELOAD_MANAGER=1\n")
    copy = live.base / "record-at-reload.json"
    hook = live.base / "bin/systemctl"
    hook.write_text(
        FAKE_SYSTEMCTL.replace(
            "for last; do :; done",
            f'for last; do :; done\n[ "$1" = daemon-reload ] && cp {live.state} {copy}',
        )
    )
    status, calls, err = live.run("refresh")
    assert (status, calls) == (0, ["daemon-reload"]), err
    during = json.loads(copy.read_text())
    after = live.record()
    assert during["phase"] == "merging"
    assert during["classes"]["sysext"]["fingerprint"] is None
    assert during["classes"]["sysext"]["target"] == after["classes"]["sysext"]["fingerprint"]  # type: ignore[index]


def exec_reload() -> list[str]:
    """The arguments the unit's ExecReload= gives the tool."""
    line = next(
        line
        for line in (REPO_ROOT / "units/sysextpy.service").read_text().splitlines()
        if line.startswith("ExecReload=")
    )
    words = line.partition("=")[2].split()
    assert words[0] == "/usr/bin/sysextpy"
    return [w.replace("${SYSEXTPY_CLASS}", "sysext") for w in words[1:]]


def test_exec_reload_skips_unless_something_changed(live: LiveWorld) -> None:
    """`systemctl reload sysextpy.service` in the unit's environment after a boot whose initrd
    record did not vouch (the generator's SYSEXTPY_FORCE_REFRESH=1): a skip while nothing
    changed, the changed extension's units once it did."""
    args = exec_reload()
    write(live.units / "foo.service", "[Service]\nExecStart=/bin/true\n")
    live.add("app", "EXTENSION_RESTART_UNITS=foo.service\n", {"share/app": "1"})
    forced = {"SYSEXTPY_FORCE_REFRESH": "1"}
    status, calls, err = live.run("refresh", env=forced)  # the boot's first run: ExecStart=
    assert (status, calls) == (0, ["daemon-reload", "try-restart -- foo.service"]), err
    status, calls, err = live.run(*args, env=forced)
    assert (status, calls) == (0, []), err
    assert "Skipping extension refresh" in err
    assert live.record()["confirmedBy"] == "observations"  # the quick path takes it too
    live.add("app", "EXTENSION_RESTART_UNITS=foo.service\n", {"share/app": "2"})
    status, calls, err = live.run(*args, env=forced)
    assert (status, calls) == (0, ["daemon-reload", "try-restart -- foo.service"]), err
    assert (live.usr / "share/app").read_text() == "2"
    # ExecStart='s plain refresh is forced by the variable: a swap and a reload, but no extension
    # changed, so no unit is restarted
    status, calls, err = live.run("refresh", env=forced)
    assert (status, calls) == (0, ["daemon-reload"]), err
