# SPDX-License-Identifier: LGPL-2.1-or-later
"""Boot scenarios: a real kernel, a dracut initramfs with sysextpy, a Debian root, under QEMU.

Each test is one boot. The guest reports what it saw (units, journal, handoff record, mounts,
probe results) and powers off; the assertions below read that report. A failing assertion shows
the guest's console tail and every line about sysextpy (`BootResult.explain`).

Run with `make e2e`, `SYSEXTPY_E2E=1 pytest tests/e2e` or `pytest -m e2e`.
"""

from __future__ import annotations

import json
import os
from typing import Any, Optional

import pytest

from tests.conftest import require_tools

from . import harness
from .conftest import SYSTEMS, MakeGuest
from .harness import BootResult, Link

# Every scenario on both guests: systemd 252 and Python 3.11 (the host's Debian 12), systemd 262
# and the newest Python (Debian sid).
pytestmark = [pytest.mark.e2e, pytest.mark.parametrize("system", SYSTEMS)]

# Ordering of a probe that must see the root exactly as the initrd left it: after switch-root,
# before the real-root refresh (sysextpy.service) and before the rest of early boot.
EARLY = "DefaultDependencies=no\nBefore=sysextpy.service sysinit.target systemd-tmpfiles-setup.service"
STATE = "/run/sysextpy/state.json"
MERGED_HIERARCHIES = ("/usr", "/etc")
# A unit shipped inside a sysext and enabled there with a .wants link.
SYSEXT_UNIT = (
    "[Unit]\nDescription=Unit shipped in a sysext\n\n"
    "[Service]\nType=oneshot\nRemainAfterExit=yes\nExecStart=/usr/bin/cat /usr/lib/e2e/dir.txt\n"
)


def record_of(text: Optional[str]) -> dict[str, Any]:
    assert text is not None, "no handoff record"
    record = json.loads(text)
    assert isinstance(record, dict)
    return record


def merged(record: dict[str, Any], image_class: str) -> list[str]:
    return sorted(record["classes"][image_class]["merged"])


def basic_checks(result: BootResult, partial: bool = False) -> dict[str, Any]:
    """What every scenario requires: a report, multi-user.target, no failed unit. With `partial`
    (an image was rejected), our units may have failed, but only with exit status 3 ("partial")."""
    report = result.require_report()
    with result.explain():
        assert result.reached("multi-user.target"), "the guest did not reach multi-user.target"
        failed = [line.split()[0] for line in report["failedUnits"]]
        if partial:
            ours = [u for u in failed if u in ("sysextpy-sysroot.service", "sysextpy.service")]
            assert {u: result.unit(u).get("ExecMainStatus") for u in ours} == {u: "3" for u in ours}
            failed = [u for u in failed if u not in ours]
        assert failed == [], f"failed units: {report['failedUnits']}"
    return report


def reloads_after_switch_root(result: BootResult) -> list[dict[str, Any]]:
    """The manager reloads in the real root: PID 1 says "Reloading." (systemd 252) or
    "Reloading..." (262) once per reload (the "Reload(ing) requested from client PID ..." line that
    may precede it and 262's "Reloading finished in ..." are not counted)."""
    userspace = int(result.require_report()["manager"]["UserspaceTimestampMonotonic"])
    reloads = result.require_report()["reloads"]
    return [r for r in reloads if r["usec"] >= userspace and r["message"] in ("Reloading.", "Reloading...")]


# --------------------------------------------------------------------------------------------------
# Smoke


def test_smoke_boot(make_guest: MakeGuest) -> None:
    """The guest boots with our module in the initrd, reaches multi-user.target and reports; the
    installed sysextpy runs in it and both of our units ran once and succeeded."""
    guest = make_guest("smoke")
    result = guest.boot()
    report = basic_checks(result)
    with result.explain():
        assert result.results.get("reached") == "multi-user.target", result.results
        assert report["uname"] == guest.env.kernel.kver
        status = result.command("status")
        assert status["returncode"] == 0, status
        assert {h["hierarchy"] for h in json.loads(status["stdout"])} >= {"/usr", "/opt", "/etc"}
        for unit in ("sysextpy-sysroot.service", "sysextpy.service"):
            runs = report["phases"].get(unit, {}).get("runs", [])
            assert [r.get("result") for r in runs] == ["done"], f"{unit}: {runs}"


# --------------------------------------------------------------------------------------------------
# 1. Happy path: everything merged in the initrd, the real root only confirms.


def test_happy_path_merged_in_initrd_and_confirmed(make_guest: MakeGuest) -> None:
    guest = make_guest("happy")
    guest.add_dir_sysext(
        "e2e-dir",
        {
            "usr/lib/e2e/dir.txt": "from the directory sysext\n",
            "usr/lib/systemd/system/e2e-from-sysext.service": SYSEXT_UNIT,
            "usr/lib/systemd/system/multi-user.target.wants/e2e-from-sysext.service": Link(
                "../e2e-from-sysext.service"
            ),
        },
    )
    guest.add_squashfs_sysext(
        "e2e-squash",
        {"usr/lib/e2e/squash.txt": "from the squashfs sysext\n", "opt/e2e/squash.txt": "opt too\n"},
    )
    guest.add_dir_confext("e2e-conf", {"etc/e2e/conf.txt": "from the confext\n"})
    guest.add_read_probe(
        "early", ["/etc/e2e/conf.txt", "/usr/lib/e2e/dir.txt", STATE, "/proc/self/mountinfo"], EARLY
    )
    guest.report_paths += ["/usr/lib/e2e/squash.txt", "/opt/e2e/squash.txt", "/etc/e2e/conf.txt"]
    result = guest.boot()
    report = basic_checks(result)

    with result.explain():
        # A unit that starts before the real-root refresh already sees the confext and the sysext.
        assert result.probe_text("early", "/etc/e2e/conf.txt") == "from the confext\n"
        assert result.probe_text("early", "/usr/lib/e2e/dir.txt") == "from the directory sysext\n"
        assert result.path_text("/usr/lib/e2e/squash.txt") == "from the squashfs sysext\n"
        assert result.path_text("/opt/e2e/squash.txt") == "opt too\n"

        # The initrd merged everything (its record, as the real root found it).
        initrd = record_of(result.probe_text("early", STATE))
        assert initrd["inInitrd"] is True and initrd["phase"] == "merged", initrd
        assert merged(initrd, "sysext") == ["e2e-dir", "e2e-squash"]
        assert merged(initrd, "confext") == ["e2e-conf"]

        # The real root skipped: said so, changed nothing, remounted nothing, reloaded nothing.
        final = report["state"]
        assert final["inInitrd"] is False and final["phase"] == "merged", final
        for image_class in ("sysext", "confext"):
            for hierarchy, res in final["classes"][image_class]["hierarchies"].items():
                if hierarchy in ("/usr", "/opt", "/etc"):
                    assert res["result"] == "unchanged", (image_class, hierarchy, res)
        assert final["reload"]["done"] is False
        # ... and it did so on the initrd's observations, without recomputing the fingerprints.
        assert final.get("confirmedBy") == "observations", final.get("quickDeclined")
        assert any(
            "sysextpy.service" in line and "Skipping extension refresh" in line
            for line in report["sysextpyJournal"]
        ), "the real-root run did not say it skipped"
        before = harness.top_mounts(
            harness.parse_mountinfo(result.probe_text("early", "/proc/self/mountinfo") or "")
        )
        after = harness.top_mounts(report["mounts"])
        for hierarchy in ("/usr", "/opt", "/etc"):
            assert before[hierarchy]["fstype"] == "overlay", before[hierarchy]
            assert after[hierarchy]["id"] == before[hierarchy]["id"], (
                hierarchy,
                before[hierarchy],
                after[hierarchy],
            )
        assert reloads_after_switch_root(result) == []

        # A unit enabled inside a sysext (.wants) started.
        assert result.unit("e2e-from-sysext.service").get("ActiveState") == "active"
        status = {h["hierarchy"]: h for h in json.loads(result.command("status")["stdout"])}
        assert sorted(status["/usr"]["extensions"]) == ["e2e-dir", "e2e-squash"], status
        assert status["/etc"]["extensions"] == ["e2e-conf"], status


# --------------------------------------------------------------------------------------------------
# 2. Changed between the phases: an extension on a separate /var appears only in the real root.


def test_extension_on_separate_var_is_swapped_in_atomically(make_guest: MakeGuest) -> None:
    guest = make_guest("separate-var", flavour="new")
    guest.split_var()
    # Visible in the initrd (on the root file system).
    guest.add_dir_sysext("e2e-early", {"usr/lib/e2e/early.txt": "early\n"}, where="/etc/extensions")
    guest.add_dir_confext(
        "e2e-early-conf", {"etc/e2e/early.txt": "early\n"}, where="/usr/local/lib/confexts"
    )
    # Only on /var (the second disk), which the initrd does not mount.
    reload = {"EXTENSION_RELOAD_MANAGER": "1"}
    guest.add_dir_sysext("e2e-late", {"usr/lib/e2e/late.txt": "late\n"}, release_extra=reload)
    guest.add_dir_confext("e2e-late-conf", {"etc/e2e/late.txt": "late\n"}, release_extra=reload)
    guest.add_read_probe("early", [STATE, "/proc/self/mountinfo"], EARLY)
    guest.add_gap_probe(
        "gap",
        ["/etc/e2e/early.txt", "/usr/lib/e2e/early.txt", "/etc/os-release", "/usr/bin/python3"],
        EARLY + "\nAfter=e2e-probe-early.service",
    )
    guest.report_paths += ["/usr/lib/e2e/late.txt", "/etc/e2e/late.txt", "/usr/lib/e2e/early.txt"]
    result = guest.boot()
    report = basic_checks(result)

    with result.explain():
        assert guest.env.kernel.release >= harness.NEW_KERNEL_MIN
        initrd = record_of(result.probe_text("early", STATE))
        assert merged(initrd, "sysext") == ["e2e-early"] and merged(initrd, "confext") == ["e2e-early-conf"]
        assert "/var/lib/extensions" in initrd["classes"]["sysext"]["unreachable"], initrd

        final = report["state"]
        assert merged(final, "sysext") == ["e2e-early", "e2e-late"], final
        assert merged(final, "confext") == ["e2e-early-conf", "e2e-late-conf"], final
        assert final["classes"]["sysext"]["hierarchies"]["/usr"]["result"] == "replaced"
        assert final["classes"]["confext"]["hierarchies"]["/etc"]["result"] == "replaced"
        assert result.path_text("/usr/lib/e2e/late.txt") == "late\n"
        assert result.path_text("/etc/e2e/late.txt") == "late\n"
        assert result.path_text("/usr/lib/e2e/early.txt") == "early\n"

        # Swapped, not patched: new overlays on /usr and /etc ...
        before = harness.top_mounts(
            harness.parse_mountinfo(result.probe_text("early", "/proc/self/mountinfo") or "")
        )
        after = harness.top_mounts(report["mounts"])
        for hierarchy in MERGED_HIERARCHIES:
            assert after[hierarchy]["id"] != before[hierarchy]["id"], hierarchy
        # ... without a moment in which /etc or /usr were missing ...
        gap = result.probe("gap")
        assert gap["passes"] > 10 and gap["stopped"], gap
        assert gap["failures"] == {}, gap
        # ... and one reload of the manager for both classes together.
        assert final["reload"]["done"] is True, final["reload"]
        assert len(reloads_after_switch_root(result)) == 1, reloads_after_switch_root(result)


# --------------------------------------------------------------------------------------------------
# 3. A broken image among good ones.


def test_broken_image_is_named_and_the_good_ones_merge(make_guest: MakeGuest) -> None:
    guest = make_guest("broken")
    guest.add_dir_sysext("e2e-good", {"usr/lib/e2e/good.txt": "good\n"})
    guest.add_squashfs_sysext("e2e-good-squash", {"usr/lib/e2e/good-squash.txt": "good\n"})
    # A squashfs image cut short, as by an interrupted download: recognised by its magic, but its
    # tables (at the end, after incompressible data) are gone and it cannot be mounted.
    broken_src = guest.ext_dir / "broken-src"
    payload = {"usr/lib/e2e/broken.bin": os.urandom(300_000)}
    harness.make_extension_tree(
        broken_src, "e2e-broken", payload, kind="sysext", os_release=guest.os_release
    )
    image = harness.make_squashfs(broken_src, guest.ext_dir / "e2e-broken.raw")
    with open(image, "r+b") as f:
        f.truncate(os.path.getsize(image) // 3)
    guest.add_raw(image, "/var/lib/extensions/e2e-broken.raw")
    guest.report_paths += ["/usr/lib/e2e/good.txt", "/usr/lib/e2e/good-squash.txt"]
    result = guest.boot()
    report = basic_checks(result, partial=True)

    with result.explain():
        assert result.path_text("/usr/lib/e2e/good.txt") == "good\n"
        assert result.path_text("/usr/lib/e2e/good-squash.txt") == "good\n"
        final = report["state"]
        assert merged(final, "sysext") == ["e2e-good", "e2e-good-squash"], final
        rejected = {r["name"]: r["reason"] for r in final["classes"]["sysext"]["rejected"]}
        assert rejected.get("e2e-broken"), final["classes"]["sysext"]
        status = result.command("status")
        assert "e2e-broken" in status["stdout"] + status["stderr"], status


# --------------------------------------------------------------------------------------------------
# 4. rd.sysextpy=0: nothing in the initrd, the real root merges.


def test_rd_switch_off_leaves_the_merge_to_the_real_root(make_guest: MakeGuest, system: str) -> None:
    guest = make_guest("rd-off")
    guest.add_dir_sysext("e2e-dir", {"usr/lib/e2e/dir.txt": "dir\n"})
    guest.add_dir_confext("e2e-conf", {"etc/e2e/conf.txt": "conf\n"})
    guest.add_read_probe("early", ["/etc/e2e/conf.txt", "/usr/lib/e2e/dir.txt", STATE], EARLY)
    guest.report_paths += ["/usr/lib/e2e/dir.txt", "/etc/e2e/conf.txt"]
    cmdline = ["rd.sysextpy=0"]
    if system == "sid":
        # Its initrd also has systemd's own sysroot units, which merge when ours is switched off
        # (test_sysroot_units.py); masked, nothing in the initrd merges, as on the host's. In the
        # initrd, systemd-debug-generator takes only the rd.-prefixed switch.
        cmdline += [f"rd.systemd.mask=systemd-{kind}-sysroot.service" for kind in ("sysext", "confext")]
    result = guest.boot(cmdline=cmdline)
    report = basic_checks(result)

    with result.explain():
        assert "sysextpy-sysroot.service" not in report["phases"], report["phases"]
        assert result.probe_text("early", STATE) is None
        assert result.probe_text("early", "/etc/e2e/conf.txt") is None
        final = report["state"]
        assert final["inInitrd"] is False and final["phase"] == "merged", final
        assert merged(final, "sysext") == ["e2e-dir"] and merged(final, "confext") == ["e2e-conf"]
        assert result.path_text("/usr/lib/e2e/dir.txt") == "dir\n"
        assert result.path_text("/etc/e2e/conf.txt") == "conf\n"


# --------------------------------------------------------------------------------------------------
# 5. A signed verity DDI, trusted only through the booted root's /etc/verity.d.


def _image_kit() -> Any:
    from tests import test_dissect  # the image kit lives with the dissection tests

    return test_dissect


def test_signed_verity_ddi_with_certificate_in_the_root(make_guest: MakeGuest) -> None:
    kit = _image_kit()
    require_tools("openssl", "sfdisk")  # on the host, to build a signed DDI
    guest = make_guest("verity")
    work = guest.ext_dir / "ddi"
    signer = kit.make_signer(work / "keys", cn="sysextpy-e2e")
    ddi = kit.build_ddi(work, work / "e2e-signed.raw", "e2e-signed", signer=signer)
    guest.add_raw(ddi.path, "/var/lib/extensions/e2e-signed.raw")
    # The certificate exists only in the booted root, not in the initrd nor on the host.
    guest.add_files({"/etc/verity.d/e2e.crt": signer.cert.read_text()})
    guest.add_read_probe("early", [STATE], EARLY)
    guest.report_paths += ["/usr/share/e2e-signed/hello"]
    result = guest.boot()
    report = basic_checks(result)

    with result.explain():
        initrd = record_of(result.probe_text("early", STATE))
        assert initrd["inInitrd"] is True
        assert merged(initrd, "sysext") == ["e2e-signed"], initrd["classes"]["sysext"]
        assert result.path_text("/usr/share/e2e-signed/hello") is not None
        # The image is mounted in sysextpy's private namespace (not in the guest's mount table);
        # what stays visible is the dm-verity device under the merged /usr.
        verity = [d for d in report["dm"] if d["uuid"].startswith("CRYPT-VERITY-")]
        assert verity, f"no dm-verity device: {report['dm']}"
        # The real root confirmed the signed image on the initrd's observations: the certificate,
        # the signature and the image, taken again after switch-root, are what the initrd saw.
        final = report["state"]
        assert final.get("confirmedBy") == "observations", final.get("quickDeclined")
        assert final["classes"]["sysext"]["hierarchies"]["/usr"]["result"] == "unchanged", final


# --------------------------------------------------------------------------------------------------
# Live update after boot: an extension replaced, `systemctl reload sysextpy.service`.

LIVE_UPDATE = """#!/bin/sh
# SPDX-License-Identifier: LGPL-2.1-or-later
# Replace the extension e2e-live with its next version, then reload sysextpy.service.
set -u
out=/run/sysextpy-e2e
mkdir -p "$out"
before=$(systemctl show -P MainPID e2e-foo.service)
rm -rf /var/lib/extensions/e2e-live
mv /var/lib/e2e-next/e2e-live /var/lib/extensions/e2e-live
systemctl reload sysextpy.service
status=$?
after=$(systemctl show -P MainPID e2e-foo.service)
printf '{"before": %s, "after": %s, "status": %s}\\n' "$before" "$after" "$status" >"$out/live-update.json"
"""


def test_live_update_restarts_the_named_unit_once(make_guest: MakeGuest) -> None:
    guest = make_guest("live-update", flavour="new")
    restart = {"EXTENSION_RESTART_UNITS": "e2e-foo.service"}
    guest.add_dir_sysext("e2e-live", {"usr/lib/e2e/live.txt": "v1\n"}, release_extra=restart)
    guest.add_dir_sysext(
        "e2e-live", {"usr/lib/e2e/live.txt": "v2\n"}, where="/var/lib/e2e-next", release_extra=restart
    )
    guest.add_dir_confext("e2e-conf", {"etc/e2e/conf.txt": "conf\n"})
    # Each start of the service leaves its PID (the shell's, which execs sleep: the main PID) in
    # a file the report collects. "$$$$" in a unit file is the shell's "$$".
    starts = "/run/sysextpy-e2e/foo-starts"
    guest.add_unit(
        "e2e-foo.service",
        f"[Service]\nExecStart=/bin/sh -c 'mkdir -p /run/sysextpy-e2e; echo $$$$ >>{starts}; "
        "exec sleep infinity'\n",
        wanted_by=["multi-user.target"],
    )
    guest.add_files({"/usr/local/sbin/e2e-live-update": LIVE_UPDATE})
    os.chmod(guest.host_path("/usr/local/sbin/e2e-live-update"), 0o755)
    guest.add_unit(
        "e2e-live-update.service",
        "[Unit]\nAfter=e2e-foo.service sysextpy.service e2e-probe-gap.service\n\n"
        "[Service]\nType=oneshot\nRemainAfterExit=yes\nExecStart=/usr/local/sbin/e2e-live-update\n",
        wanted_by=["multi-user.target"],
    )
    guest.add_gap_probe(
        "gap", ["/usr/lib/e2e/live.txt", "/usr/bin/python3", "/etc/e2e/conf.txt", "/etc/os-release"], EARLY
    )
    guest.report_paths += ["/usr/lib/e2e/live.txt"]
    result = guest.boot()
    report = basic_checks(result)

    with result.explain():
        assert guest.env.kernel.release >= harness.NEW_KERNEL_MIN
        update = result.probe("live-update")
        assert update["status"] == 0, update
        assert result.path_text("/usr/lib/e2e/live.txt") == "v2\n"
        # foo.service started at boot and once more, by the live update: its PID changed once.
        pids = report["probes"]["foo-starts"].split()
        assert [int(p) for p in pids] == [update["before"], update["after"]], (pids, update)
        assert update["before"] != update["after"], update
        # One manager reload after switch-root: the live update's (the boot's refresh skipped).
        assert len(reloads_after_switch_root(result)) == 1, reloads_after_switch_root(result)
        final = report["state"]
        assert final["reload"]["done"] is True, final["reload"]
        assert [(a["unit"], a["action"], a["result"]) for a in final["actions"]] == [
            ("e2e-foo.service", "try-restart", "done")
        ], final["actions"]
        # A reader of /usr and /etc saw no file missing, before, during and after the swap.
        gap = result.probe("gap")
        assert gap["passes"] > 10 and gap["stopped"], gap
        assert gap["failures"] == {}, gap
