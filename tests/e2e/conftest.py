# SPDX-License-Identifier: LGPL-2.1-or-later
"""Fixtures for the end-to-end tests: cached boot artefacts and one guest per test.

The tests boot QEMU and take minutes, so they run only when asked for: with SYSEXTPY_E2E=1 in
the environment (what `make e2e` and the CI entry point set) or when `-m e2e` selects them.
Otherwise they are skipped with a reason saying how to run them.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Callable

import pytest

from tests.conftest import require_tools

from . import harness

# Per-boot timing lines, printed in the terminal summary ("Must show": boot and unit durations).
BOOT_SUMMARIES: list[str] = []
# What scenarios that compare boots found, by section title: printed after the boot summaries.
REPORT_SECTIONS: dict[str, list[str]] = {}

MakeGuest = Callable[..., harness.Guest]


def _enabled(config: pytest.Config) -> bool:
    if os.environ.get("SYSEXTPY_E2E") == "1":
        return True
    markexpr = str(config.getoption("markexpr", "") or "")
    return "e2e" in markexpr and "not e2e" not in markexpr


@pytest.hookimpl(tryfirst=True)  # before -m selects by marker
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    enabled = _enabled(config)
    for item in items:
        # Only the tests that boot (they use make_guest); the harness's own tests run everywhere.
        if "make_guest" not in getattr(item, "fixturenames", ()):
            continue
        item.add_marker(pytest.mark.e2e)
        if not enabled:
            item.add_marker(pytest.mark.skip(reason="QEMU boot test: set SYSEXTPY_E2E=1 or run `make e2e`"))
        elif os.geteuid() != 0:
            item.add_marker(
                pytest.mark.skip(reason="QEMU boot test: needs root (mmdebstrap, dracut, mkfs -d)")
            )


_passed_key = pytest.StashKey[bool]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.when == "call":
        item.stash[_passed_key] = report.passed
    return report


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not BOOT_SUMMARIES and not harness.TIMINGS and not REPORT_SECTIONS:
        return
    terminalreporter.section("sysextpy end-to-end boots")
    for line in BOOT_SUMMARIES:
        terminalreporter.write_line(line)
    for title, lines in REPORT_SECTIONS.items():
        terminalreporter.write_line(f"{title}:")
        for line in lines:
            terminalreporter.write_line(f"  {line}")
    if harness.TIMINGS:
        terminalreporter.write_line(
            "harness timings (s): " + ", ".join(f"{k} {v}" for k, v in harness.TIMINGS.items())
        )


def missing_boot_path() -> list[str]:
    """The pieces of the boot path a scenario needs that the tree does not have yet."""
    needed = {
        "dracut module": harness.REPO_ROOT / "dracut/90sysextpy/module-setup.sh",
        "generator": harness.REPO_ROOT / "generators/sysextpy-generator",
        "initrd unit": harness.REPO_ROOT / "units/sysextpy-sysroot.service",
        "real-root unit": harness.REPO_ROOT / "units/sysextpy.service",
    }
    return [
        f"{what} ({path.relative_to(harness.REPO_ROOT)})"
        for what, path in needed.items()
        if not path.exists()
    ]


def require_boot_path() -> None:
    missing = missing_boot_path()
    if missing:
        pytest.skip("the boot path is not there yet: missing " + ", ".join(missing))


_environments: dict[str, harness.Environment] = {}


def environment(flavour: str) -> harness.Environment:
    """The cached kernel, root and initrd for one kernel flavour (built on first use)."""
    if flavour not in _environments:
        require_boot_path()
        require_tools(*harness.TOOLS)
        try:
            _environments[flavour] = harness.prepare(flavour)
        except harness.HarnessError as e:
            pytest.fail(f"building the boot artefacts failed: {e}", pytrace=False)
    return _environments[flavour]


# The guests a scenario can boot on: "host", the host release's root and binaries (systemd 252 on
# Debian 12), and "sid", Debian sid's root with its own initrd (systemd 262). A module runs its
# scenarios on both with `pytestmark = pytest.mark.parametrize("system", SYSTEMS)`.
SYSTEMS = ("host", "sid")


@pytest.fixture
def system() -> str:
    """The guest system of the test's boots; "host" unless the test is parametrized over SYSTEMS."""
    return "host"


@pytest.fixture
def make_guest(request: pytest.FixtureRequest, tmp_path: Path, system: str) -> Iterator[MakeGuest]:
    """make_guest(name, flavour="stable") -> a Guest whose root is a fresh copy of the cached one.

    On the "sid" system every boot is of the sid guest (whose kernel is the newer one, so a
    scenario asking for flavour="new" gets what it needs); `flavour` picks the host guest's kernel.
    Boots are summarised for the terminal summary. The guest's disk images are removed after a
    passing test (they are large); after a failure they stay in the test's tmp_path.
    """
    guests: list[harness.Guest] = []

    def make(name: str, flavour: str = "stable") -> harness.Guest:
        if system == "sid":
            flavour = harness.SID_SUITE
        else:
            # SYSEXTPY_E2E_KERNEL=new boots every scenario with the newer kernel.
            flavour = os.environ.get("SYSEXTPY_E2E_KERNEL") or flavour
        env = environment(flavour)
        workdir = tmp_path / name
        workdir.mkdir()
        guest = harness.Guest(env, workdir, name=name)
        guests.append(guest)
        return guest

    yield make
    for guest in guests:
        if guest.result is not None:
            BOOT_SUMMARIES.append(f"{request.node.name} [{guest.name}]: {guest.result.timing_summary()}")
    if request.node.stash.get(_passed_key, False):
        for guest in guests:
            for image in ("root.img", "var.img", *(f"{label}.img" for label, _ in guest.disks.values())):
                (guest.workdir / image).unlink(missing_ok=True)
            for _, tree in guest.disks.values():
                shutil.rmtree(tree, ignore_errors=True)
            shutil.rmtree(guest.tree, ignore_errors=True)
            shutil.rmtree(guest.var_tree, ignore_errors=True)
