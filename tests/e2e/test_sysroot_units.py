# SPDX-License-Identifier: LGPL-2.1-or-later
"""Boot scenarios next to systemd's own initrd merge, on the Debian sid guest (systemd 262).

dracut's systemd-sysext module, added as a distribution adds it, puts systemd-sysext-sysroot.service
and systemd-confext-sysroot.service into the initrd and enables them: two implementations of the
same merge are installed side by side, as on a system where sysextpy is installed next to
systemd. These scenarios boot that initrd and read what really ran.

Only on the sid guest: Debian 12's systemd (252) has no sysroot units and no systemd.sysext= /
systemd.confext= switches.
"""

from __future__ import annotations

from typing import Any

import pytest

from . import harness
from .conftest import MakeGuest
from .harness import BootResult, Guest
from .test_boot import EARLY, STATE, basic_checks, merged, record_of, reloads_after_switch_root

pytestmark = [pytest.mark.e2e, pytest.mark.parametrize("system", ["sid"])]

UPSTREAM_SYSROOT = ("systemd-sysext-sysroot.service", "systemd-confext-sysroot.service")
OURS_SYSROOT = "sysextpy-sysroot.service"
# upstream's marker of its own merge: the metadata directory in the merged hierarchy.
UPSTREAM_MARKS = {"/usr": "/usr/.systemd-sysext", "/etc": "/etc/.systemd-confext"}


def with_extensions(guest: Guest) -> None:
    """One sysext and one confext where both implementations look (upstream's sysroot units run
    only when one of their search directories in /sysroot is not empty)."""
    guest.add_dir_sysext("e2e-dir", {"usr/lib/e2e/dir.txt": "from the sysext\n"})
    guest.add_dir_confext("e2e-conf", {"etc/e2e/conf.txt": "from the confext\n"})
    guest.add_read_probe(
        "early", ["/etc/e2e/conf.txt", "/usr/lib/e2e/dir.txt", STATE, "/proc/self/mountinfo"], EARLY
    )
    guest.report_paths += ["/usr/lib/e2e/dir.txt", "/etc/e2e/conf.txt"]
    guest.timeline_units += [*UPSTREAM_SYSROOT, OURS_SYSROOT]


def overlays(mounts: list[dict[str, Any]], mount_point: str) -> list[dict[str, Any]]:
    """Every overlay mounted at `mount_point`, stacked ones included."""
    return [m for m in mounts if m["mountPoint"] == mount_point and m["fstype"] == "overlay"]


def started(result: BootResult, unit: str) -> list[str]:
    """The results of the jobs of `unit` that started it (a unit skipped by a condition has a job
    that never says "Starting")."""
    return [j.result for j in result.jobs(unit) if j.start is not None]


def skipped_for(result: BootResult, unit: str) -> list[str]:
    """PID 1's messages about `unit` skipped for a condition."""
    events = result.require_report().get("timeline", {}).get(unit, [])
    return [e["message"] for e in events if "unmet condition" in e["message"]]


def test_both_merges_installed_only_ours_runs(make_guest: MakeGuest) -> None:
    """Both sets of sysroot units are in the initrd and enabled; ours conflicts with theirs, so
    theirs are dropped from the boot transaction, and each hierarchy is merged once, by us; the
    real root confirms without a remount or a reload."""
    guest = make_guest("both-merges")
    with_extensions(guest)
    # PID 1 reports how it settles the conflict at debug level only; in the initrd only. Before
    # journald runs those lines go through the kernel's log: unthrottled by the kernel
    # (printk.devkmsg=on) and by PID 1 itself (systemd.log_ratelimit_kmsg=0: "Too many messages
    # being logged to kmsg, ignoring"), with room for all of them (log_buf_len), or some are lost.
    result = guest.boot(
        cmdline=[
            "rd.systemd.log_level=debug",
            "systemd.log_ratelimit_kmsg=0",
            "printk.devkmsg=on",
            "log_buf_len=8M",
        ]
    )
    report = basic_checks(result)

    with result.explain():
        # Theirs are in the image and enabled: not missing, but dropped.
        # The debug messages of the initrd's PID 1 reach the journal through the kernel's log
        # (journald is not up yet when the transaction is built): no _PID, not in the timeline.
        for unit in UPSTREAM_SYSROOT:
            assert result.jobs(unit) == [], (unit, result.jobs(unit))
            # The two jobs are named in either order.
            said = [line for line in report["sysextpyJournal"] if f"{unit}: Fixing conflicting jobs" in line]
            assert any(line.endswith(f"by deleting job {unit}/start") for line in said), (unit, said)
        assert [j.result for j in result.jobs(OURS_SYSROOT)] == ["done"], result.jobs(OURS_SYSROOT)

        initrd = record_of(result.probe_text("early", STATE))
        assert initrd["inInitrd"] is True and initrd["phase"] == "merged", initrd
        assert merged(initrd, "sysext") == ["e2e-dir"] and merged(initrd, "confext") == ["e2e-conf"]
        assert result.probe_text("early", "/etc/e2e/conf.txt") == "from the confext\n"
        assert result.probe_text("early", "/usr/lib/e2e/dir.txt") == "from the sysext\n"

        # One merge per hierarchy, before and after the real root's refresh: the same mount.
        before = harness.parse_mountinfo(result.probe_text("early", "/proc/self/mountinfo") or "")
        for hierarchy in ("/usr", "/etc"):
            assert len(overlays(before, hierarchy)) == 1, overlays(before, hierarchy)
            assert overlays(report["mounts"], hierarchy) == overlays(before, hierarchy), hierarchy

        final = report["state"]
        assert final["inInitrd"] is False and final.get("confirmedBy") == "observations", final
        for image_class, hierarchy in (("sysext", "/usr"), ("confext", "/etc")):
            assert final["classes"][image_class]["hierarchies"][hierarchy]["result"] == "unchanged"
        assert final["reload"]["done"] is False
        assert reloads_after_switch_root(result) == []


def test_rd_switch_off_upstream_merges_and_the_real_root_keeps_it(make_guest: MakeGuest) -> None:
    """rd.sysextpy=0: systemd's sysroot units merge in the initrd as if sysextpy were not
    installed; the real-root refresh adopts their merge (same extensions, nothing changed since)
    instead of remounting it."""
    guest = make_guest("rd-off-upstream")
    with_extensions(guest)
    guest.report_paths += list(UPSTREAM_MARKS.values())
    result = guest.boot(cmdline=["rd.sysextpy=0"])
    report = basic_checks(result)

    with result.explain():
        assert result.jobs(OURS_SYSROOT) == [], result.jobs(OURS_SYSROOT)
        for unit in UPSTREAM_SYSROOT:
            assert [(j.result, j.in_initrd) for j in result.jobs(unit)] == [("done", True)], unit
        # Their merge, in place before the real root's refresh (no record of ours).
        assert result.probe_text("early", STATE) is None
        assert result.probe_text("early", "/etc/e2e/conf.txt") == "from the confext\n"
        assert result.probe_text("early", "/usr/lib/e2e/dir.txt") == "from the sysext\n"

        final = report["state"]
        results = {
            (image_class, hierarchy): final["classes"][image_class]["hierarchies"][hierarchy]
            for image_class, hierarchy in (("sysext", "/usr"), ("confext", "/etc"))
        }
        assert {key: res["result"] for key, res in results.items()} == {
            ("sysext", "/usr"): "adopted",
            ("confext", "/etc"): "adopted",
        }, results
        before = harness.parse_mountinfo(result.probe_text("early", "/proc/self/mountinfo") or "")
        for hierarchy in ("/usr", "/etc"):
            assert len(overlays(before, hierarchy)) == 1, overlays(before, hierarchy)
            assert overlays(report["mounts"], hierarchy) == overlays(before, hierarchy), hierarchy
        assert reloads_after_switch_root(result) == []
        assert result.path_text("/usr/lib/e2e/dir.txt") == "from the sysext\n"
        assert result.path_text("/etc/e2e/conf.txt") == "from the confext\n"


@pytest.mark.parametrize("merger", ["sysextpy", "systemd"])
def test_confext_switch_off_leaves_etc_alone_in_both(make_guest: MakeGuest, merger: str) -> None:
    """systemd.confext=0: neither implementation touches /etc, in the initrd or after, and each
    merges /usr: ours (theirs dropped by the conflict, as when both run), or, with rd.sysextpy=0,
    theirs, which the real root adopts."""
    guest = make_guest(f"confext-off-{merger}")
    with_extensions(guest)
    cmdline = ["systemd.confext=0"] + (["rd.sysextpy=0"] if merger == "systemd" else [])
    result = guest.boot(cmdline=cmdline)
    report = basic_checks(result)

    with result.explain():
        assert started(result, "systemd-confext-sysroot.service") == []
        if merger == "sysextpy":
            # Both of upstream's units are dropped by the conflict before their conditions count.
            assert result.jobs("systemd-confext-sysroot.service") == []
            assert result.jobs("systemd-sysext-sysroot.service") == []
            assert [j.result for j in result.jobs(OURS_SYSROOT)] == ["done"]
            initrd = record_of(result.probe_text("early", STATE))
            assert merged(initrd, "sysext") == ["e2e-dir"], initrd
            assert "confext" not in initrd["classes"], initrd["classes"].keys()
        else:
            # Upstream's confext unit is switched off by its own condition.
            assert any(
                "ConditionKernelCommandLine=!systemd.confext=0" in line
                for line in skipped_for(result, "systemd-confext-sysroot.service")
            ), result.require_report()["timeline"].get("systemd-confext-sysroot.service")
            assert result.jobs(OURS_SYSROOT) == []
            assert started(result, "systemd-sysext-sysroot.service") == ["done"]
            assert result.probe_text("early", STATE) is None
        assert result.probe_text("early", "/usr/lib/e2e/dir.txt") == "from the sysext\n"
        assert result.probe_text("early", "/etc/e2e/conf.txt") is None
        final = report["state"]
        expected = "unchanged" if merger == "sysextpy" else "adopted"
        assert final["classes"]["sysext"]["hierarchies"]["/usr"]["result"] == expected, final
        assert "confext" not in final["classes"], final["classes"].keys()
        assert result.path_text("/etc/e2e/conf.txt") is None
        assert result.path_text("/usr/lib/e2e/dir.txt") == "from the sysext\n"
        before = harness.parse_mountinfo(result.probe_text("early", "/proc/self/mountinfo") or "")
        assert overlays(before, "/etc") == [] and overlays(report["mounts"], "/etc") == []
        assert len(overlays(report["mounts"], "/usr")) == 1
