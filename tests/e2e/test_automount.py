# SPDX-License-Identifier: LGPL-2.1-or-later
"""Boot scenario: extensions on an fstab automount point that expires when idle.

The images live on a disk that fstab mounts at /srv/ext with `x-systemd.automount` and a two-second
idle timeout, linked from the search directories. The initrd does not mount it: it defers them (not
a dangling link) and says why; the real root merges them, naming what the initrd deferred; the
generator orders sysextpy.service after srv-ext.automount. Well after the idle timeout the merge
holds, the unit stays active and a refresh skips without remounting anything. The drop-in has
WantsMountsFor= on systemd 256 and later, Wants= and After= srv-ext.mount before; with
RequiresMountsFor=, this boot showed the unit killed while it ran, /srv/ext having expired.
"""

from __future__ import annotations

import pytest

from .conftest import MakeGuest
from .harness import Link
from .test_boot import EARLY, STATE, basic_checks, merged, record_of

pytestmark = pytest.mark.e2e

DROP_IN = "sysextpy.service.d/50-automount.conf"
# The top mount ids of /usr and /etc; well after the idle timeout, whether /srv/ext expired, then a
# stop of its mount unit (the job an expiry makes, whether or not the file system is busy), a
# refresh, and the same again.
LATER = r"""
top() { awk -v m="$1" '$5 == m { id = $1 } END { print id }' /proc/self/mountinfo; }
before="$(top /usr) $(top /etc)"
sleep 6
echo "mount_after_idle=$(systemctl is-active srv-ext.mount)"
systemctl stop srv-ext.mount
echo "active_after_stop=$(systemctl is-active sysextpy.service)"
sysextpy refresh 2>&1
echo "rc=$?"
echo "before=$before"
echo "after=$(top /usr) $(top /etc)"
echo "active=$(systemctl is-active sysextpy.service)"
"""


def test_extensions_on_an_expiring_automount(make_guest: MakeGuest) -> None:
    guest = make_guest("automount")
    guest.add_disk("/srv/ext", "ext", "x-systemd.automount,x-systemd.idle-timeout=2")
    # On the root file system: the initrd merges this one.
    guest.add_dir_sysext("e2e-early", {"usr/lib/e2e/early.txt": "early\n"}, where="/etc/extensions")
    # On the automounted disk, linked from the search directories.
    guest.add_squashfs_sysext("e2e-auto", {"usr/lib/e2e/auto.txt": "auto\n"}, where="/srv/ext")
    guest.add_dir_confext("e2e-auto-conf", {"etc/e2e/auto.txt": "auto conf\n"}, where="/srv/ext/confexts")
    guest.add_files(
        {
            "/var/lib/extensions/e2e-auto.raw": Link("/srv/ext/e2e-auto.raw"),
            "/var/lib/confexts/e2e-auto-conf": Link("/srv/ext/confexts/e2e-auto-conf"),
        }
    )
    guest.add_read_probe("early", [STATE], EARLY)
    guest.report_paths += [
        "/usr/lib/e2e/auto.txt",
        "/etc/e2e/auto.txt",
        "/usr/lib/e2e/early.txt",
        f"/run/systemd/generator/{DROP_IN}",
    ]
    guest.report_commands["later"] = ["sh", "-c", LATER]
    guest.report_units += ["srv-ext.automount", "srv-ext.mount"]
    result = guest.boot()
    report = basic_checks(result)

    with result.explain():
        # The initrd merged what it could reach and deferred the rest, saying why.
        initrd = record_of(result.probe_text("early", STATE))
        assert initrd["inInitrd"] is True and initrd["phase"] == "merged", initrd
        assert merged(initrd, "sysext") == ["e2e-early"], initrd["classes"]["sysext"]
        deferred = {
            cls: {d["entry"]: d["reason"] for d in initrd["classes"][cls]["deferred"]}
            for cls in ("sysext", "confext")
        }
        assert "lies on /srv/ext" in deferred["sysext"]["/var/lib/extensions/e2e-auto.raw"], deferred
        assert "lies on /srv/ext" in deferred["confext"]["/var/lib/confexts/e2e-auto-conf"], deferred
        assert initrd["classes"]["sysext"]["rejected"] == [], initrd["classes"]["sysext"]

        # The real root merged them and said that the initrd had deferred them.
        final = report["state"]
        assert merged(final, "sysext") == ["e2e-auto", "e2e-early"], final["classes"]["sysext"]
        assert merged(final, "confext") == ["e2e-auto-conf"], final["classes"]["confext"]
        assert result.path_text("/usr/lib/e2e/auto.txt") == "auto\n"
        assert result.path_text("/etc/e2e/auto.txt") == "auto conf\n"
        journal = "\n".join(report["sysextpyJournal"])
        assert "sysext e2e-auto: deferred in the initrd: " in journal, journal
        assert "confext e2e-auto-conf: deferred in the initrd: " in journal, journal

        # The generator ordered the service after the automount, and chose the mount setting by
        # the guest's systemd.
        version = int(report["manager"]["Version"].split()[0].split(".")[0])
        wants = version >= 256
        drop_in = result.path_text(f"/run/systemd/generator/{DROP_IN}") or ""
        assert "After=srv-ext.automount" in drop_in.splitlines(), drop_in
        assert ("WantsMountsFor=/srv/ext" in drop_in.splitlines()) == wants, drop_in
        assert ("Wants=srv-ext.mount" in drop_in.splitlines()) != wants, drop_in
        assert not any(line.startswith("RequiresMountsFor=") for line in drop_in.splitlines()), drop_in
        assert result.unit("srv-ext.automount").get("ActiveState") == "active"

        # Well past the idle timeout: the merge holds, the unit is active, a refresh skips and
        # remounts nothing.
        later = result.command("later")
        lines = dict(
            line.split("=", 1) for line in later["stdout"].splitlines() if line.split("=", 1)[0] in
            ("rc", "before", "after", "active", "active_after_stop", "mount_after_idle")
        )  # fmt: skip
        assert lines.get("rc") == "0", later
        assert "Skipping extension refresh" in later["stdout"], later
        assert lines["before"] == lines["after"] and lines["before"].strip(), later
        assert lines["active_after_stop"] == "active", later
        assert lines["active"] == "active", later
