# SPDX-License-Identifier: LGPL-2.1-or-later
"""sysextpy-generator's start-up cost, and what the dracut module adds to an initramfs.

    /usr/bin/python3 bench/generator.py [--runs N] [--no-initrd]

1. The generator's wall time, median (and 90th percentile) of N runs (default 200), run as systemd
   runs it (the script through its `#!/usr/bin/python3 -IS` line) on fake roots: in the initrd, and
   in the real root with a good handoff record, with a failed one, and with extensions linked
   onto an fstab automount point. Beside it the bare
   interpreter (`python3 -IS -c pass`), which is the floor.
2. The initramfs size delta: two `dracut --no-hostonly --no-kernel` builds, with and without
   `--add sysextpy`, on a `make install` laid over /usr in a private mount namespace (as
   tests/test_dracut.py does); compressed image sizes, the uncompressed size of what the module
   adds (from lsinitrd), and the build times. Needs root and dracut; skip it with --no-initrd.
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
GENERATOR = REPO / "generators" / "sysextpy-generator"
PYTHON = "/usr/bin/python3"
BOOT_ID = "2f0c8f3d-6b1e-4a57-9c3e-0d4f5a6b7c8d"


def fake_root(path: Path, initrd: bool, phase: str = "") -> Path:
    (path / "proc/sys/kernel/random").mkdir(parents=True)
    (path / "proc/sys/kernel/random/boot_id").write_text(BOOT_ID + "\n")
    (path / "proc/cmdline").write_text("BOOT_IMAGE=/vmlinuz root=/dev/vda2 ro quiet\n")
    if initrd:
        (path / "etc").mkdir()
        (path / "etc/initrd-release").write_text("")
    if phase:
        # A record as a merge writes it, through the one record type.
        sys.path.insert(0, os.fspath(REPO))
        from sysextpy.handoff import ClassEntry, HandoffRecord, HierarchyResult, bind

        def entry(hierarchies: tuple[str, ...], unreachable: list[str]) -> ClassEntry:
            result = HierarchyResult("failed" if phase == "failed" else "merged", 1, "0:42")
            inputs, observations = "1" * 64, "2" * 64
            return ClassEntry(
                fingerprint=bind(inputs, observations),
                inputs_digest=inputs,
                observations_digest=observations,
                merged=["a"],
                unreachable=unreachable,
                hierarchies={h: result for h in hierarchies},
            )

        record = HandoffRecord(
            boot_id=BOOT_ID.replace("-", ""),
            phase="failed" if phase == "failed" else "merged",
            tool="sysextpy bench",
            verb="refresh",
            root="/sysroot",
            in_initrd=True,
            started=1,
            classes={
                "sysext": entry(("/usr", "/opt"), []),
                "confext": entry(("/etc",), ["/var/lib/confexts"]),
            },
        )
        (path / "run/sysextpy").mkdir(parents=True)
        (path / "run/sysextpy/state.json").write_text(record.dumps())
    return path


def automount_root(path: Path) -> Path:
    """A real root whose extensions lie on an fstab automount point: fstab, the search
    directories' links and the systemd version are read too."""
    fake_root(path, initrd=False, phase="merged")
    (path / "etc").mkdir()
    (path / "etc/fstab").write_text(
        "UUID=6f3c0a52-1d2e-4b7a-9f0e-2c4d5e6f7a8b / ext4 defaults 0 1\n"
        "LABEL=ext /srv/ext ext4 ro,x-systemd.automount,x-systemd.idle-timeout=2 0 2\n"
    )
    (path / "var/lib/extensions").mkdir(parents=True)
    for i in range(10):
        (path / f"var/lib/extensions/ext{i}.raw").symlink_to(f"/srv/ext/ext{i}.raw")
    (path / "usr/lib/systemd").mkdir(parents=True)
    (path / "usr/lib/systemd/libsystemd-shared-256.so").write_text("")
    return path


def run_once(argv: list[str], env: dict[str, str], target: Path) -> float:
    start = time.perf_counter()
    subprocess.run(
        [*argv, os.fspath(target)], env=env, stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True
    )
    return time.perf_counter() - start


def bench_generator(runs: int) -> None:
    load = os.getloadavg()[0]
    print(f"sysextpy-generator wall time ({PYTHON}, {os.cpu_count()} CPUs, load average {load:.1f})")
    with tempfile.TemporaryDirectory(prefix="sysextpy-bench-") as tmp:
        work = Path(tmp)
        cases: list[tuple[str, list[str], dict[str, str]]] = [
            ("python3 -IS -c pass (the floor)", [PYTHON, "-IS", "-c", "pass"], {})
        ]
        for label, root in (
            ("initrd", fake_root(work / "initrd", initrd=True)),
            ("real root, record 'merged'", fake_root(work / "merged", initrd=False, phase="merged")),
            ("real root, record 'failed'", fake_root(work / "failed", initrd=False, phase="failed")),
            ("real root, no record", fake_root(work / "none", initrd=False)),
            ("real root, on an automount", automount_root(work / "automount")),
        ):
            cases.append((label, [os.fspath(GENERATOR)], {"SYSEXTPY_ROOT": os.fspath(root)}))
        # Interleaved rounds: a change in machine load hits every case alike, and the difference to
        # the floor within a round is what the generator itself costs.
        times: list[list[float]] = [[] for _ in cases]
        for i in range(runs):
            for n, (_, argv, env) in enumerate(cases):
                times[n].append(run_once(argv, env, work / "out" / f"{n}-{i}"))
        for n, (label, _, _) in enumerate(cases):
            ms = sorted(t * 1000 for t in times[n])
            p90 = ms[int(len(ms) * 0.9) - 1]
            line = f"  {label:<34} median {statistics.median(ms):6.2f} ms   p90 {p90:6.2f} ms"
            if n:
                above = statistics.median((t - f) * 1000 for t, f in zip(times[n], times[0]))
                line += f"   over the floor {above:5.2f} ms"
            print(line)


def lsinitrd_sizes(image: Path) -> dict[str, int]:
    listing = subprocess.run(
        ["lsinitrd", os.fspath(image)], capture_output=True, text=True, check=True
    ).stdout
    sizes = {}
    for line in listing.splitlines():
        fields = line.split()
        if len(fields) >= 9 and fields[0][:1] in "-l":
            sizes[fields[8]] = int(fields[4]) if fields[0][0] == "-" else 0
    return sizes


def bench_initrd() -> None:
    if os.geteuid() != 0:
        print("initramfs size delta: skipped (needs root)")
        return
    with tempfile.TemporaryDirectory(prefix="sysextpy-bench-dracut-") as tmp:
        work = Path(tmp)
        dest = work / "dest"
        subprocess.run(
            ["make", "-s", "-C", os.fspath(REPO), "install", f"DESTDIR={dest}", "PREFIX=/usr"]
            + ["SYSTEMDSYSTEMUNITDIR=/usr/lib/systemd/system"]
            + ["SYSTEMDSYSTEMGENERATORDIR=/usr/lib/systemd/system-generators"],
            check=True,
        )
        images = {}
        for label, extra in (("without", ""), ("with", "--add sysextpy")):
            image = work / f"{label}.img"
            (work / f"tmp-{label}").mkdir()
            script = (
                f"mount -t overlay overlay -o lowerdir={shlex.quote(os.fspath(dest / 'usr'))}:/usr /usr\n"
                f"exec dracut --quiet --no-hostonly --no-kernel {extra} --force "
                f"--tmpdir {shlex.quote(os.fspath(work / f'tmp-{label}'))} {shlex.quote(os.fspath(image))}\n"
            )
            start = time.monotonic()
            subprocess.run(
                ["unshare", "--mount", "--propagation", "private", "sh", "-euc", script], check=True
            )
            images[label] = (image, time.monotonic() - start)
        without, with_module = lsinitrd_sizes(images["without"][0]), lsinitrd_sizes(images["with"][0])
        added = {path: size for path, size in with_module.items() if path not in without}
        delta = images["with"][0].stat().st_size - images["without"][0].stat().st_size
        print("initramfs size delta (dracut --no-hostonly --no-kernel, default compression)")
        for label, (image, seconds) in images.items():
            size = image.stat().st_size / 1e6
            print(f"  {label + ' sysextpy':<20} {size:7.2f} MB   built in {seconds:5.1f} s")
        print(f"  delta, compressed    {delta / 1e6:7.2f} MB")
        print(f"  added, uncompressed  {sum(added.values()) / 1e6:7.2f} MB in {len(added)} files, of which:")
        groups: dict[str, int] = {}
        for path, size in added.items():
            if path.endswith(".pyc"):
                key = "Python byte code (.pyc)"
            elif path.endswith(".py"):
                key = "Python sources (.py)"
            elif "/python3" in path and path.endswith(".so"):
                key = "Python extension modules"
            else:
                key = path
            groups[key] = groups.get(key, 0) + size
        for key, size in sorted(groups.items(), key=lambda item: -item[1])[:8]:
            print(f"    {size / 1e6:7.2f} MB  {key}")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--no-initrd", action="store_true", help="skip the dracut builds")
    args = parser.parse_args()
    bench_generator(args.runs)
    if not args.no_initrd:
        bench_initrd()
    return 0


if __name__ == "__main__":
    sys.exit(main())
