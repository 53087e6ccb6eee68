# SPDX-License-Identifier: LGPL-2.1-or-later
"""The end-to-end harness's own logic, without booting anything: kernel unpacking, result
parsing, the boot loop (against a fake qemu on PATH) and the guest-side report's pure parts.

These run in the normal suite; only the boot scenarios (test_boot.py) wait for SYSEXTPY_E2E=1.
"""

from __future__ import annotations

import bz2
import gzip
import importlib.util
import json
import lzma
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any, Callable

import pytest

from tests.conftest import require_tools

from . import harness

FAKE_ELF = b"\x7fELF\x02\x01\x01" + bytes(range(256)) * 64
SETUP_CODE = b"MZ" + b"\x00" * 500 + b"HdrS" + b"\x5d\x00\x00\x00" + b"not a stream" + b"\x1f\x8b\x08 decoy"


def _zstd(data: bytes) -> bytes:
    return subprocess.run(["zstd", "-q", "-c"], input=data, capture_output=True, check=True).stdout


def _lz4(data: bytes) -> bytes:
    return subprocess.run(["lz4", "-q", "-l", "-c"], input=data, capture_output=True, check=True).stdout


COMPRESSORS: dict[str, Callable[[bytes], bytes]] = {
    "gzip": gzip.compress,
    "xz": lambda d: lzma.compress(d, format=lzma.FORMAT_XZ),
    # The kernel's lzma streams use a 32 MiB dictionary, which gives the magic extract-vmlinux seeks.
    "lzma": lambda d: lzma.compress(
        d, format=lzma.FORMAT_ALONE, filters=[{"id": lzma.FILTER_LZMA1, "dict_size": 1 << 25}]
    ),
    "bzip2": bz2.compress,
    "zstd": _zstd,
    "lz4": _lz4,
}


@pytest.mark.parametrize("method", sorted(COMPRESSORS))
def test_extract_vmlinux_finds_the_compressed_kernel_behind_decoys(method: str) -> None:
    if method in ("zstd", "lz4"):
        require_tools(method)
    image = SETUP_CODE + COMPRESSORS[method](FAKE_ELF) + b"\x00" * 64 + b"trailing data"
    assert harness.extract_vmlinux(image) == FAKE_ELF


@pytest.mark.parametrize(
    "image",
    [
        pytest.param(FAKE_ELF, id="already-elf"),
    ],
)
def test_extract_vmlinux_passes_an_elf_through(image: bytes) -> None:
    assert harness.extract_vmlinux(image) == image


@pytest.mark.parametrize(
    "image",
    [
        pytest.param(SETUP_CODE, id="no-payload"),
        pytest.param(SETUP_CODE + gzip.compress(b"not an ELF file"), id="payload-not-elf"),
    ],
)
def test_extract_vmlinux_without_a_kernel_fails(image: bytes) -> None:
    with pytest.raises(harness.HarnessError, match="no compressed ELF kernel"):
        harness.extract_vmlinux(image)


REPORT = {"schema": 1, "units": {"multi-user.target": {"ActiveState": "active"}}}
BLOB = "E2E-JSON-BEGIN\n" + json.dumps(REPORT) + "\nE2E-JSON-END\n"


@pytest.mark.parametrize(
    "console, port, report, results",
    [
        pytest.param(
            "[ 1.0] boot\r\nE2E-RESULT reached=multi-user.target\r\nE2E-RESULT failed=\r\n",
            "noise\n" + BLOB,
            REPORT,
            {"reached": "multi-user.target", "failed": ""},
            id="port",
        ),
        pytest.param(
            "[ 2.0] x E2E-RESULT a.b@c=1=2\n" + BLOB, "", REPORT, {"a.b@c": "1=2"}, id="console-fallback"
        ),
        pytest.param(
            "",
            "E2E-JSON-BEGIN\n{broken\nE2E-JSON-END\n",
            {"reportError": "the report's JSON could not be parsed"},
            {},
        ),
        pytest.param("E2E-JSON-BEGIN\n{}", "", None, {}, id="cut-off"),
    ],
)
def test_parse_results(console: str, port: str, report: Any, results: dict[str, str]) -> None:
    assert harness.parse_results(console, port) == (report, results)


def test_parse_mountinfo_and_top_mounts() -> None:
    text = (
        "22 1 0:21 / /usr rw,relatime shared:1 - ext4 /dev/vda rw\n"
        "40 22 0:40 / /usr rw,relatime shared:9 - overlay overlay ro,lowerdir=/a:/b\n"
        "41 1 0:41 / /with\\040space rw - tmpfs tmpfs rw\n"
        "garbage\n"
    )
    mounts = harness.parse_mountinfo(text)
    assert [(m["id"], m["mountPoint"], m["fstype"]) for m in mounts] == [
        (22, "/usr", "ext4"),
        (40, "/usr", "overlay"),
        (41, "/with space", "tmpfs"),
    ]
    assert harness.top_mounts(mounts)["/usr"]["id"] == 40


def test_module_closure_follows_dependencies(tmp_path: Path) -> None:
    kernel = harness.Kernel("stable", "linux-image-x", "1", "6.1.0-x", tmp_path)
    kernel.moddir.mkdir(parents=True)
    (kernel.moddir / "modules.dep").write_text(
        "kernel/fs/overlayfs/overlay.ko:\n"
        "kernel/drivers/md/dm-verity.ko.xz: kernel/drivers/md/dm-bufio.ko.xz"
        " kernel/drivers/md/dm-mod.ko.xz\n"
        "kernel/drivers/md/dm-bufio.ko.xz: kernel/drivers/md/dm-mod.ko.xz\n"
        "kernel/drivers/md/dm-mod.ko.xz:\n"
        "kernel/fs/unrelated.ko:\n"
    )
    assert harness.module_closure(kernel, ["dm_verity", "overlay", "builtin_one"]) == [
        "kernel/drivers/md/dm-bufio.ko.xz",
        "kernel/drivers/md/dm-mod.ko.xz",
        "kernel/drivers/md/dm-verity.ko.xz",
        "kernel/fs/overlayfs/overlay.ko",
    ]


def test_merge_usr_moves_top_level_directories_into_usr(tmp_path: Path) -> None:
    (tmp_path / "lib/systemd/system").mkdir(parents=True)
    (tmp_path / "lib/systemd/system/a.service").write_text("a")
    (tmp_path / "usr/lib/systemd/system").mkdir(parents=True)
    (tmp_path / "usr/lib/systemd/system/b.service").write_text("b")
    (tmp_path / "bin").symlink_to("usr/bin")
    harness.merge_usr(tmp_path)
    assert not (tmp_path / "lib").exists()
    assert (tmp_path / "bin").is_symlink()
    assert sorted(p.name for p in (tmp_path / "usr/lib/systemd/system").iterdir()) == [
        "a.service",
        "b.service",
    ]


def test_write_files_never_writes_through_links(tmp_path: Path) -> None:
    shared = tmp_path / "shared.txt"
    shared.write_text("base")
    top = tmp_path / "tree"
    (top / "etc").mkdir(parents=True)
    os.link(shared, top / "etc/hard.txt")
    (top / "etc/soft.txt").symlink_to(shared)
    harness.write_files(
        top,
        {
            "etc/hard.txt": "new",
            "etc/soft.txt": b"new",
            "usr/bin/tool": "#!/bin/sh\n",
            "usr/lib/x.wants/y.service": harness.Link("../y.service"),
        },
    )
    assert shared.read_text() == "base"
    assert (top / "etc/hard.txt").read_text() == (top / "etc/soft.txt").read_text() == "new"
    assert os.stat(top / "usr/bin/tool").st_mode & 0o777 == 0o755
    assert os.readlink(top / "usr/lib/x.wants/y.service") == "../y.service"


def test_extension_release_fields() -> None:
    host = {"ID": "debian", "VERSION_ID": "12"}
    assert harness.extension_release(host) == "ID=debian\nVERSION_ID=12\n"
    assert harness.extension_release(host, match_any=True) == "ID=_any\n"
    assert harness.extension_release(host, {"EXTENSION_RELOAD_MANAGER": "1"}).endswith(
        "EXTENSION_RELOAD_MANAGER=1\n"
    )


# --------------------------------------------------------------------------------------------------
# The boot loop, against a fake qemu-system-x86_64 on PATH

FAKE_QEMU = r"""#!/usr/bin/python3
import sys, time
argv = sys.argv[1:]
results = [a[len("file:"):] for a in argv if a.startswith("file:")][0]
cmdline = argv[argv.index("-append") + 1]
print("[    0.000000] Command line: " + cmdline, flush=True)
print("[    1.000000] sysextpy-generator: something about sysextpy", flush=True)
if "hang" in cmdline:
    time.sleep(60)
with open(results, "w") as f:
    f.write("E2E-JSON-BEGIN\n" + '{"schema": 1, "units": {}}' + "\nE2E-JSON-END\n")
print("E2E-RESULT reached=none\r", flush=True)
"""


@pytest.fixture
def fake_qemu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    qemu = bin_dir / "qemu-system-x86_64"
    qemu.write_text(FAKE_QEMU)
    qemu.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    workdir = tmp_path / "work"
    workdir.mkdir()
    yield workdir


def _boot(workdir: Path, cmdline: list[str], timeout: float) -> harness.BootResult:
    kernel = harness.Kernel("stable", "linux-image-x", "1", "6.1.0-x", workdir)
    initrd = harness.Initrd("key", workdir / "initrd.img", True, 0)
    return harness.boot("fake", kernel, initrd, [workdir / "root.img"], workdir, cmdline, timeout=timeout)


def test_boot_reads_console_and_report(fake_qemu: Path) -> None:
    result = _boot(fake_qemu, ["extra=1"], timeout=60)
    assert not result.timed_out and result.returncode == 0
    assert result.ok and result.report == {"schema": 1, "units": {}}
    assert result.results == {"reached": "none"}
    assert "extra=1" in result.cmdline and result.cmdline.startswith("root=/dev/vda")
    assert "\r" not in result.console
    assert (fake_qemu / "report.json").exists() and (fake_qemu / "console.log").exists()


def test_boot_timeout_kills_the_guest_and_explains(fake_qemu: Path) -> None:
    result = _boot(fake_qemu, ["hang"], timeout=3)
    assert result.timed_out and not result.ok
    context = result.failure_context()
    assert "timed out" in context and "no report from the guest" in context
    assert "sysextpy-generator: something about sysextpy" in context.split("=== last")[0]
    with pytest.raises(AssertionError, match="the guest did not report"):
        result.require_report()
    with pytest.raises(AssertionError, match="timed out"), result.explain():
        raise AssertionError("a scenario check")


def test_failure_context_names_a_kernel_crash(tmp_path: Path) -> None:
    console = "[    1.9] sched_clock: Marking stable\n[    1.98] Oops: int3: 0000 [#1] PREEMPT SMP\n"
    crashed = harness.BootResult("t", console, None, {}, 2.0, 0, False, "", tmp_path)
    assert "=== the guest kernel failed: [    1.98] Oops: int3" in crashed.failure_context()
    console = "[    1.9] Run /init as init process\n"
    quiet = harness.BootResult("t", console, None, {}, 2.0, 0, False, "", tmp_path)
    assert "kernel failed" not in quiet.failure_context()


# --------------------------------------------------------------------------------------------------
# The guest-side report's pure parts (the script runs on the guest's Python; loaded by path here)


def _guest_module(name: str) -> ModuleType:
    path = Path(harness.GUEST_DIR) / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"sysextpy_e2e_guest_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_guest_unit_phases_and_reloads() -> None:
    report = _guest_module("report")

    def entry(usec: int, unit: str, message_id: str, **extra: str) -> dict[str, str]:
        return {
            "UNIT": unit,
            "_PID": "1",
            "MESSAGE_ID": message_id,
            "__MONOTONIC_TIMESTAMP": str(usec),
            **extra,
        }

    entries = [
        entry(1_000_000, "sysextpy-sysroot.service", report.MSG_UNIT_STARTING),
        entry(3_500_000, "sysextpy-sysroot.service", report.MSG_UNIT_STARTED, JOB_RESULT="done"),
        entry(9_000_000, "sysextpy.service", report.MSG_UNIT_STARTING),
        entry(9_250_000, "sysextpy.service", report.MSG_UNIT_FAILED, JOB_RESULT="failed"),
        entry(9_100_000, "other.service", report.MSG_UNIT_STARTING),
        {
            "_PID": "1",
            "MESSAGE": "Reloading requested from client PID 7 ('systemctl')...",
            "__MONOTONIC_TIMESTAMP": "10",
        },
        {"_PID": "1", "MESSAGE": "Reloading.", "__MONOTONIC_TIMESTAMP": "11"},
        {"_PID": "42", "MESSAGE": "Reloading.", "__MONOTONIC_TIMESTAMP": "12"},
    ]
    phases = report.unit_phases(entries, {"sysextpy-sysroot.service", "sysextpy.service"})
    assert phases == {
        "sysextpy-sysroot.service": {
            "runs": [{"startUsec": 1_000_000, "endUsec": 3_500_000, "result": "done", "ms": 2500.0}]
        },
        "sysextpy.service": {
            "runs": [{"startUsec": 9_000_000, "endUsec": 9_250_000, "result": "failed", "ms": 250.0}]
        },
    }
    assert [r["message"] for r in report.reload_messages(entries)] == [
        "Reloading requested from client PID 7 ('systemctl')...",
        "Reloading.",
    ]
    assert report.parse_show("A=1\nB=x=y\nnoise\n") == {"A": "1", "B": "x=y"}
    summary = dict(
        report.summary({"units": {"emergency.target": {"ActiveState": "active"}}, "phases": phases})
    )
    assert summary["reached"] == "emergency.target"
    assert summary["ms.sysextpy.service"] == "250.0"


def test_guest_probe_read_once(tmp_path: Path) -> None:
    probe = _guest_module("probe")
    (tmp_path / "file").write_text("x")
    errors = probe.read_once(
        [os.fspath(tmp_path / "file"), os.fspath(tmp_path), os.fspath(tmp_path / "missing")]
    )
    assert list(errors) == [os.fspath(tmp_path / "missing")]


def test_guest_job_timeline_and_the_jobs_read_from_it(tmp_path: Path) -> None:
    report = _guest_module("report")

    def entry(usec: int, unit: str, message_id: str = "", **extra: str) -> dict[str, str]:
        return {
            "UNIT": unit,
            "_PID": "1",
            "MESSAGE_ID": message_id,
            "__MONOTONIC_TIMESTAMP": str(usec),
            **extra,
        }

    entries = [
        # In the initrd (before the real root's manager started at 5 s): a service's whole job ...
        entry(1_000_000, "a.service", report.MSG_UNIT_STARTING, MESSAGE="Starting a..."),
        entry(1_200_000, "a.service", report.MSG_UNIT_STARTED, JOB_RESULT="done"),
        # ... in the real root: a job whose "Starting" went to the kernel log only, a failed one,
        # and a message that is no job's.
        entry(6_000_000, "a.service", report.MSG_UNIT_STARTED, JOB_RESULT="done"),
        entry(6_500_000, "a.service", report.MSG_UNIT_STARTING),
        entry(6_700_000, "a.service", report.MSG_UNIT_FAILED, JOB_RESULT="failed"),
        entry(6_800_000, "a.service", MESSAGE="a.service: Consumed 1ms CPU time."),
        entry(7_000_000, "b.target", report.MSG_UNIT_STARTED, JOB_RESULT="done"),
        entry(7_100_000, "not-asked-for.service", report.MSG_UNIT_STARTED),
        {**entry(7_200_000, "a.service", report.MSG_UNIT_STARTED), "_PID": "42"},
    ]
    timeline = report.job_timeline(entries, {"a.service", "b.target"})
    assert [(e["usec"], e["kind"]) for e in timeline["a.service"]] == [
        (1_000_000, "starting"),
        (1_200_000, "done"),
        (6_000_000, "done"),
        (6_500_000, "starting"),
        (6_700_000, "failed"),
        (6_800_000, ""),
    ]
    assert timeline["a.service"][-1]["message"] == "a.service: Consumed 1ms CPU time."
    assert sorted(timeline) == ["a.service", "b.target"]

    result = harness.BootResult(
        "t",
        "",
        {"manager": {"UserspaceTimestampMonotonic": "5000000"}, "timeline": timeline},
        {},
        1.0,
        0,
        False,
        "",
        tmp_path,
    )
    Job = harness.UnitJob
    assert result.jobs("a.service") == [
        Job("a.service", 1_000_000, 1_200_000, "done", True),
        Job("a.service", None, 6_000_000, "done", False),
        Job("a.service", 6_500_000, 6_700_000, "failed", False),
    ]
    assert result.jobs("b.target") == [Job("b.target", None, 7_000_000, "done", False)]
    assert result.jobs("b.target")[0].first == 7_000_000
    assert result.jobs("never.service") == []


def _ext4_label(image: Path) -> str:
    """The volume name in an ext4 superblock (at byte 1024; s_volume_name at 0x78, 16 bytes)."""
    with open(image, "rb") as f:
        f.seek(1024)
        superblock = f.read(1024)
    assert superblock[0x38:0x3A] == b"\x53\xef", "no ext4 superblock"
    return superblock[0x78:0x88].rstrip(b"\0").decode()


def test_make_data_disk_is_built_once_per_content(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    require_tools("mkfs.ext4")
    monkeypatch.setenv("SYSEXTPY_E2E_CACHE", os.fspath(tmp_path))
    first = harness.make_data_disk("e2etest", {"a.txt": "a\n"}, size_mb=4)
    assert _ext4_label(first) == "e2etest"
    assert first.stat().st_size == 4 << 20
    built = first.stat().st_mtime_ns
    assert harness.make_data_disk("e2etest", {"a.txt": "a\n"}, size_mb=4) == first
    assert first.stat().st_mtime_ns == built
    other = harness.make_data_disk("e2etest", {"a.txt": "b\n"}, size_mb=4)
    relabelled = harness.make_data_disk("e2eother", {"a.txt": "a\n"}, size_mb=4)
    assert len({first, other, relabelled}) == 3
    assert _ext4_label(relabelled) == "e2eother"
    assert not (first.parent / "tree").exists()
