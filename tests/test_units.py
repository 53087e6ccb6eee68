# SPDX-License-Identifier: LGPL-2.1-or-later
"""The units and `make install`: systemd-analyze verify, the directives the boot path relies on, the
boot transaction systemd computes with them (sysextpy's units against upstream's), and the layout
`make install` produces.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Optional

import pytest
from conftest import REPO_ROOT, require_tools

UNITS = REPO_ROOT / "units"
GENERATOR = REPO_ROOT / "generators" / "sysextpy-generator"
GOLDEN = Path(__file__).resolve().parent / "generator"
SYSTEMD = next(
    (p for p in ("/usr/lib/systemd/systemd", "/lib/systemd/systemd") if os.access(p, os.X_OK)), None
)
UPSTREAM_INITRD = ("systemd-sysext-sysroot.service", "systemd-confext-sysroot.service")
UPSTREAM_HOST = ("systemd-sysext.service", "systemd-confext.service")


def parse_unit(text: str) -> list[tuple[str, str, str]]:
    """(section, key, value) for every setting, in order; repeated keys stay repeated."""
    settings: list[tuple[str, str, str]] = []
    section = ""
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        settings.append((section, key.strip(), value.strip()))
    return settings


def values(unit: str, section: str, key: str) -> list[str]:
    """Every value of `key`, split into words as systemd splits list settings."""
    found: list[str] = []
    for sec, k, v in parse_unit((UNITS / unit).read_text()):
        if (sec, k) == (section, key):
            found.extend(v.split())
    return found


def make(*args: str, cwd: Path = REPO_ROOT) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        ["make", "-s", "-C", os.fspath(REPO_ROOT), *args],
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def install_into(destdir: Path, *extra: str) -> None:
    make(
        "install",
        f"DESTDIR={destdir}",
        "PREFIX=/usr",
        "SYSTEMDSYSTEMUNITDIR=/usr/lib/systemd/system",
        "SYSTEMDSYSTEMGENERATORDIR=/usr/lib/systemd/system-generators",
        *extra,
    )


# ---------------------------------------------------------------------------------------------
# systemd-analyze verify


def verify(
    root: Path, units: Sequence[str], man_path: Optional[Path] = None
) -> subprocess.CompletedProcess[str]:
    """`systemd-analyze verify` on units installed below `root`. With `man_path`, the man: pages
    their Documentation= names must be found there too (--man=yes runs man(1), which looks only
    in $MANPATH when it is set)."""
    require_tools("systemd-analyze")
    analyze = "systemd-analyze"
    man = "no" if man_path is None else "yes"
    env = None if man_path is None else {**os.environ, "MANPATH": os.fspath(man_path)}
    return subprocess.run(
        [
            analyze,
            "verify",
            f"--root={root}",
            f"--man={man}",
            *(os.fspath(root / u.lstrip("/")) for u in units),
        ],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=env,
    )


INSTALLED_UNITS = [
    "/usr/lib/systemd/system/sysextpy.service",
    "/usr/lib/systemd/system/sysextpy-sysroot.service",
]


@pytest.mark.parametrize(
    "dropins_from",
    [
        None,
        "04-initrd-confext-off",  # sysextpy-sysroot.service.d/50-class.conf
        "20-host-confext-off",  # sysextpy.service.d/50-class.conf
        "23-host-failed-unreachable",  # 50-handoff.conf with both sections
        "24-host-odd-paths",  # quoted and %-escaped RequiresMountsFor=
        "32-host-automount-before-256",  # After= automount units, Wants= their mount units (systemd < 256)
        "33-host-automount-esp",  # After=efi.automount, WantsMountsFor= (see the test below)
    ],
)
def test_systemd_analyze_verify(dropins_from: Optional[str], tmp_path: Path) -> None:
    """The units as installed (ExecStart= must exist below the root), with the generator's
    drop-ins in place where a case produces some: no warning at all, not only exit 0."""
    root = tmp_path / "root"
    install_into(root)
    if dropins_from is not None:
        expected = GOLDEN / dropins_from / "expected"
        dropins = [p for p in expected.glob("*.service.d/*.conf")]
        assert dropins, f"{dropins_from} has no drop-ins"
        for conf in dropins:
            target = root / "etc/systemd/system" / conf.parent.name / conf.name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(conf, target)
    result = verify(root, INSTALLED_UNITS)
    assert result.returncode == 0, result.stderr
    assert result.stderr == "" or wants_mounts_for_unknown(result.stderr, dropins_from), result.stderr


def systemd_analyze_version() -> int:
    out = subprocess.run(
        ["systemd-analyze", "--version"], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    return int(out.split()[1])


def wants_mounts_for_unknown(stderr: str, case: Optional[str]) -> bool:
    """The one complaint a drop-in written for systemd >= 256 may draw from an older
    systemd-analyze: WantsMountsFor= is a key it does not know (and ignores)."""
    if (
        case is None
        or "WantsMountsFor="
        not in (GOLDEN / case / "expected").joinpath("sysextpy.service.d/50-automount.conf").read_text()
        or systemd_analyze_version() >= 256
    ):
        return False
    lines = stderr.splitlines()
    return bool(lines) and all(
        "Unknown key 'WantsMountsFor' in section [Unit], ignoring." in line for line in lines
    )


def test_systemd_analyze_verify_catches_mistakes(tmp_path: Path) -> None:
    """The check above can fail: a bad drop-in and a missing program are both reported."""
    root = tmp_path / "root"
    install_into(root)
    bad = root / "etc/systemd/system/sysextpy.service.d/bad.conf"
    bad.parent.mkdir(parents=True)
    bad.write_text('[Unit]\nRequiresMountsFor=/a "/b c\n')
    (root / "usr/bin/sysextpy").unlink()
    result = verify(root, INSTALLED_UNITS)
    assert "Invalid syntax" in result.stderr
    assert "is not executable" in result.stderr


# ---------------------------------------------------------------------------------------------
# The directives the boot path relies on (boot-integration §7.2, §7.3)

INITRD = "sysextpy-sysroot.service"
HOST = "sysextpy.service"


@pytest.mark.parametrize(
    ("unit", "section", "key", "must_contain"),
    [
        (INITRD, "Unit", "DefaultDependencies", ["no"]),
        (INITRD, "Unit", "ConditionPathExists", ["/etc/initrd-release"]),
        (INITRD, "Unit", "ConditionKernelCommandLine", ["!rd.sysextpy=0", "!sysextpy=0"]),
        # Masking sysextpy.service in the real root's /etc switches the initrd merge off too.
        (INITRD, "Unit", "ConditionPathIsSymbolicLink", ["!/sysroot/etc/systemd/system/sysextpy.service"]),
        (
            INITRD,
            "Unit",
            "After",
            ["initrd-root-fs.target", "modprobe@loop.service", "modprobe@overlay.service"],
        ),
        (INITRD, "Unit", "Before", ["initrd-parse-etc.service", "initrd.target", "initrd-cleanup.service"]),
        (INITRD, "Unit", "RequiresMountsFor", ["/sysroot/usr"]),
        (INITRD, "Unit", "Conflicts", ["shutdown.target", *UPSTREAM_INITRD]),
        (INITRD, "Unit", "IgnoreOnIsolate", ["yes"]),
        (INITRD, "Service", "Type", ["oneshot"]),
        (INITRD, "Service", "RemainAfterExit", ["yes"]),
        (INITRD, "Service", "TimeoutStartSec", ["90s"]),
        (HOST, "Unit", "DefaultDependencies", ["no"]),
        (HOST, "Unit", "ConditionPathExists", ["!/etc/initrd-release"]),
        (HOST, "Unit", "ConditionKernelCommandLine", ["!sysextpy=0"]),
        (HOST, "Unit", "After", ["local-fs.target"]),
        (HOST, "Unit", "Before", ["sysinit.target", "systemd-tmpfiles-setup.service", "shutdown.target"]),
        (HOST, "Unit", "Conflicts", ["shutdown.target", *UPSTREAM_HOST]),
        (HOST, "Service", "Type", ["oneshot"]),
        (HOST, "Service", "RemainAfterExit", ["yes"]),
    ],
)
def test_directive(unit: str, section: str, key: str, must_contain: list[str]) -> None:
    found = values(unit, section, key)
    for value in must_contain:
        assert value in found, f"{unit}: [{section}] {key}= lacks {value!r} (has {found})"


@pytest.mark.parametrize(
    ("unit", "argv"),
    [
        (INITRD, ["/usr/bin/sysextpy", "--root=/sysroot", "--class=${SYSEXTPY_CLASS}", "refresh"]),
        (HOST, ["/usr/bin/sysextpy", "--class=${SYSEXTPY_CLASS}", "refresh"]),
    ],
)
def test_exec_start(unit: str, argv: list[str]) -> None:
    assert values(unit, "Service", "ExecStart") == argv
    assert values(unit, "Service", "Environment") == ["SYSEXTPY_CLASS=all"]


@pytest.mark.parametrize("unit", [INITRD, HOST])
def test_nothing_undoes_the_merge_and_nothing_enables_statically(unit: str) -> None:
    settings = parse_unit((UNITS / unit).read_text())
    keys = {key for _, key, _ in settings}
    # Stopping (isolation of initrd-switch-root.target, shutdown) must never unmerge.
    assert "ExecStop" not in keys and "ExecStopPost" not in keys
    # No OnFailure=emergency.target: a bad extension never blocks the boot.
    assert "OnFailure" not in keys
    # Pulled in by the generator only, so that the kernel switches really keep it out.
    assert "Install" not in {section for section, _, _ in settings}


def test_reload_refreshes_as_upstream_does() -> None:
    """A plain refresh, which skips when nothing changed, without the boot's forcing variable
    (tests/test_actions.py runs this very command line)."""
    assert values(HOST, "Service", "ExecReload") == [
        "/usr/bin/sysextpy",
        "--class=${SYSEXTPY_CLASS}",
        "refresh",
        "--always-refresh=no",
    ]


# ---------------------------------------------------------------------------------------------
# The boot transaction, as systemd computes it (`systemd --test`, which refuses to run as root)


@pytest.fixture
def unit_dir() -> Iterator[Path]:
    """A directory the unprivileged `systemd --test` can read (tmp_path's parents are 0700)."""
    path = Path(tempfile.mkdtemp(prefix="sysextpy-units-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path)


def fake_unit(directory: Path, name: str, wanted_by: str = "") -> None:
    text = "[Service]\nType=oneshot\nExecStart=/bin/true\n" if name.endswith(".service") else "[Unit]\n"
    (directory / name).write_text(text)
    if wanted_by:
        wants = directory / f"{wanted_by}.wants"
        wants.mkdir(exist_ok=True)
        (wants / name).symlink_to(f"../{name}")


def start_jobs(directory: Path, target: str) -> set[str]:
    require_tools("/usr/lib/systemd/systemd", "setpriv")
    for path in directory.rglob("*"):
        if not path.is_symlink():
            path.chmod(0o755 if path.is_dir() else 0o644)
    drop = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"] if os.geteuid() == 0 else []
    result = subprocess.run(
        [
            *drop,
            "env",
            "-i",
            f"SYSTEMD_UNIT_PATH={directory}",
            SYSTEMD,
            "--test",
            "--system",
            f"--unit={target}",
        ],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr
    _, _, jobs = result.stdout.partition("-> By jobs:")
    assert jobs, result.stdout[-2000:]
    started = set()
    for line in jobs.splitlines():
        line = line.strip()
        if line.startswith("Action:") and line.endswith("-> start"):
            started.add(line.split()[1])
    return started


def run_generator_into(directory: Path, tmp_path: Path, cmdline: str, initrd: bool) -> None:
    root = tmp_path / "root"
    (root / "proc").mkdir(parents=True)
    (root / "proc/cmdline").write_text(cmdline + "\n")
    if initrd:
        (root / "etc").mkdir()
        (root / "etc/initrd-release").write_text("")
    result = subprocess.run(
        [os.fspath(GENERATOR), os.fspath(directory)],
        env={"SYSEXTPY_ROOT": os.fspath(root)},
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    ("cmdline", "ours", "upstream"),
    [
        ("root=/dev/vda", True, False),  # ours wins the conflict, upstream's are dropped
        ("rd.sysextpy=0", False, True),  # switched off: as if sysextpy were not installed
        ("rd.systemd.confext=0", True, False),  # one class off still keeps upstream out
    ],
)
def test_initrd_transaction(
    cmdline: str, ours: bool, upstream: bool, unit_dir: Path, tmp_path: Path
) -> None:
    """What dracut's systemd-sysext module does with systemd >= 261 (upstream's -sysroot units
    enabled in initrd.target.wants), next to sysextpy's unit pulled in by the generator."""
    shutil.copy(UNITS / INITRD, unit_dir / INITRD)
    fake_unit(unit_dir, "initrd.target")
    for name in UPSTREAM_INITRD:
        fake_unit(unit_dir, name, wanted_by="initrd.target")
    run_generator_into(unit_dir, tmp_path, cmdline, initrd=True)
    started = start_jobs(unit_dir, "initrd.target")
    assert (INITRD in started) == ours
    for name in UPSTREAM_INITRD:
        assert (name in started) == upstream, started


@pytest.mark.parametrize(("cmdline", "ours"), [("quiet", True), ("sysextpy=0", False)])
def test_host_transaction(cmdline: str, ours: bool, unit_dir: Path, tmp_path: Path) -> None:
    shutil.copy(UNITS / HOST, unit_dir / HOST)
    fake_unit(unit_dir, "sysinit.target")
    for name in UPSTREAM_HOST:
        fake_unit(unit_dir, name, wanted_by="sysinit.target")
    run_generator_into(unit_dir, tmp_path, cmdline, initrd=False)
    started = start_jobs(unit_dir, "sysinit.target")
    assert (HOST in started) == ours
    for name in UPSTREAM_HOST:
        assert (name in started) != ours, started


def test_transaction_check_can_fail(unit_dir: Path, tmp_path: Path) -> None:
    """Without the Conflicts= line the upstream units are started too: the tests above see it."""
    text = (UNITS / INITRD).read_text()
    stripped = "\n".join(line for line in text.splitlines() if not line.startswith("Conflicts=systemd-"))
    assert stripped != text
    (unit_dir / INITRD).write_text(stripped + "\n")
    fake_unit(unit_dir, "initrd.target")
    for name in UPSTREAM_INITRD:
        fake_unit(unit_dir, name, wanted_by="initrd.target")
    run_generator_into(unit_dir, tmp_path, "quiet", initrd=True)
    started = start_jobs(unit_dir, "initrd.target")
    assert {INITRD, *UPSTREAM_INITRD} <= started


# ---------------------------------------------------------------------------------------------
# make install


def pkg_config_dir(variable: str, default: str) -> str:
    try:
        out = subprocess.run(
            ["pkg-config", f"--variable={variable}", "systemd"], capture_output=True, text=True, check=False
        ).stdout.strip()
    except OSError:
        out = ""
    return out or default


def test_make_install_layout(tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    make("install", f"DESTDIR={dest}", "PREFIX=/usr")
    unitdir = pkg_config_dir("systemdsystemunitdir", "/usr/lib/systemd/system").lstrip("/")
    gendir = pkg_config_dir("systemdsystemgeneratordir", "/usr/lib/systemd/system-generators").lstrip("/")
    package = dest / "usr/lib/python3/dist-packages/sysextpy"
    expected_executables = [
        dest / "usr/bin/sysextpy",
        dest / gendir / "sysextpy-generator",
        dest / "usr/lib/dracut/modules.d/90sysextpy/module-setup.sh",
    ]
    for path in expected_executables:
        assert path.is_file() and os.access(path, os.X_OK), path
    for name in (INITRD, HOST):
        assert (dest / unitdir / name).read_text() == (UNITS / name).read_text()
    assert (dest / "usr/lib/dracut/modules.d/90sysextpy/python-closure.py").is_file()
    sources = sorted(p.name for p in (REPO_ROOT / "sysextpy").glob("*.py"))
    assert sorted(p.name for p in package.glob("*.py")) == sources
    # Byte code next to every module, so that a read-only /usr never compiles on the boot path.
    compiled = {p.name.split(".")[0] for p in (package / "__pycache__").glob("*.pyc")}
    assert compiled == {name[: -len(".py")] for name in sources}
    generator = (dest / gendir / "sysextpy-generator").read_text().splitlines()
    assert generator[0] == "#!/usr/bin/python3 -IS"
    assert 'PACKAGE_DIR = "/usr/lib/python3/dist-packages/sysextpy"' in generator


def test_make_install_elsewhere_runs(tmp_path: Path) -> None:
    """Another prefix and no DESTDIR: the launcher finds its package, the units call it there."""
    prefix = tmp_path / "usr/local"
    unitdir = tmp_path / "units"
    gendir = tmp_path / "generators"
    make(
        "install",
        f"PREFIX={prefix}",
        f"SYSTEMDSYSTEMUNITDIR={unitdir}",
        f"SYSTEMDSYSTEMGENERATORDIR={gendir}",
    )
    launcher = prefix / "bin/sysextpy"
    version = subprocess.run(
        [os.fspath(launcher), "--version"], env={}, capture_output=True, text=True, check=False, timeout=60
    )
    assert version.returncode == 0, version.stderr
    assert version.stdout.startswith("sysextpy ")
    text = (unitdir / INITRD).read_text()
    assert f"ExecStart={launcher} --root=/sysroot" in text
    assert "/usr/bin/sysextpy" not in text
    out = tmp_path / "out"
    result = subprocess.run(
        [os.fspath(gendir / "sysextpy-generator"), os.fspath(out)],
        env={"SYSEXTPY_ROOT": os.fspath(GOLDEN / "01-initrd-default/root")},
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert os.readlink(out / "initrd.target.wants" / INITRD) == f"../{INITRD}"
