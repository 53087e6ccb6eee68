# SPDX-License-Identifier: LGPL-2.1-or-later
"""sysextpy-generator's start-up cost, and what the dracut module adds to an initramfs.

    /usr/bin/python3 bench/generator.py [--runs N] [--no-initrd]

1. The generator's wall time, median (and 90th percentile) of N runs (default 200), run as systemd
   runs it (the script through its `#!/usr/bin/python3 -IS` line) on fake roots: in the initrd, and
   in the real root with a good handoff record, with a failed one, and with extensions linked
   onto an fstab automount point. Beside it the bare
   interpreter (`python3 -IS -c pass`), which is the floor.
2. The initramfs size delta: `dracut --no-hostonly --no-kernel` builds without and with
   `--add sysextpy` (and with sysextpy_openssl=no), on a `make install` laid over /usr in a
   private mount namespace (as tests/test_dracut.py does), with no configuration of the machine's;
   compressed image sizes and build times, then what the module adds (from lsinitrd): by kind,
   and module by module, uncompressed and as gzip -9 file by file. Needs root and dracut; skip it
   with --no-initrd.
"""

from __future__ import annotations

import argparse
import gzip
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


def gzipped(path: Path) -> int:
    """The file's size alone through gzip -9 (dracut's default): its share of the compressed image,
    a little more than in the image, where neighbours compress together."""
    return len(gzip.compress(path.read_bytes(), 9))


def module_of(path: str) -> str:
    """What an added file is, for the cost table: a Python module by name, or the file itself."""
    for marker in ("/dist-packages/", "/site-packages/", "/lib-dynload/"):
        if marker in path:
            name = path.split(marker, 1)[1]
            break
    else:
        parts = path.split("/")
        if len(parts) > 3 and parts[1] == "lib" and parts[2].startswith("python3."):
            name = "/".join(parts[3:])
        else:
            return path
    name = name.split(".", 1)[0] if "/lib-dynload/" in path else name.rsplit(".", 1)[0]
    name = name.replace("/", ".").removesuffix(".__init__")
    return name + (" (C)" if "/lib-dynload/" in path else "")


def group_of(path: str) -> str:
    if path.endswith(".pyc") and "/sysextpy/" in path:
        return "byte code, the sysextpy package"
    if path.endswith(".pyc"):
        return "byte code, standard library"
    if path.endswith(".py"):
        return "Python sources"
    if "/lib-dynload/" in path:
        return "extension modules (C)"
    if "ssl" in path:
        return "openssl"
    if "/bin/python3" in path or "/libexpat." in path:
        return "the interpreter (and libexpat, which it links)"
    return "other programs and libraries"


def build(work: Path, dest: Path, label: str, extra: str, conf: str = "") -> tuple[Path, float]:
    """dracut --no-hostonly --no-kernel on `dest` laid over /usr, with `conf` as the only
    configuration (none of the machine's)."""
    image = work / f"{label}.img"
    tmp, confdir = work / f"tmp-{label}", work / f"conf-{label}"
    tmp.mkdir()
    confdir.mkdir()
    (confdir / "bench.conf").write_text(conf)
    q = shlex.quote
    script = (
        f"mount -t overlay overlay -o lowerdir={q(os.fspath(dest / 'usr'))}:/usr /usr\n"
        f"exec dracut --quiet --no-hostonly --no-kernel {extra} --force --conf /dev/null "
        f"--confdir {q(os.fspath(confdir))} --tmpdir {q(os.fspath(tmp))} {q(os.fspath(image))}\n"
    )
    start = time.monotonic()
    subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-euc", script], check=True)
    return image, time.monotonic() - start


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
        images = {
            "without sysextpy": build(work, dest, "without", ""),
            "with sysextpy": build(work, dest, "with", "--add sysextpy"),
            "with, sysextpy_openssl=no": build(
                work, dest, "no-openssl", "--add sysextpy", "sysextpy_openssl=no\n"
            ),
        }
        base = images["without sysextpy"][0].stat().st_size
        print("initramfs size delta (dracut --no-hostonly --no-kernel, no configuration, gzip -9)")
        for label, (image, seconds) in images.items():
            size = image.stat().st_size
            delta = f"   delta {(size - base) / 1e6:5.2f} MB" if size != base else ""
            print(f"  {label:<26} {size / 1e6:7.2f} MB   built in {seconds:5.1f} s{delta}")
        without = lsinitrd_sizes(images["without sysextpy"][0])
        with_module = lsinitrd_sizes(images["with sysextpy"][0])
        added = {path: size for path, size in with_module.items() if path not in without and size}

        # The files as the image holds them (the byte code exists nowhere else).
        unpacked = work / "unpacked"
        unpacked.mkdir()
        subprocess.run(
            ["lsinitrd", "--unpack", os.fspath(images["with sysextpy"][0])],
            cwd=unpacked,
            check=True,
            capture_output=True,
        )

        def source(path: str) -> Path:
            return unpacked / path

        costs = {path: (size, gzipped(source(path))) for path, size in added.items()}
        print(
            f"  added: {sum(s for s, _ in costs.values()) / 1e6:.2f} MB uncompressed in {len(costs)} files,"
            f" {sum(g for _, g in costs.values()) / 1e6:.2f} MB as gzip -9 file by file"
        )
        groups: dict[str, list[int]] = {}
        for path, (size, packed) in costs.items():
            total = groups.setdefault(group_of(path), [0, 0, 0])
            total[0] += size
            total[1] += packed
            total[2] += 1
        print(f"    {'what':<48} {'files':>5} {'bytes':>10} {'gzip -9':>9}")
        for group, (size, packed, count) in sorted(groups.items(), key=lambda item: -item[1][1]):
            print(f"    {group:<48} {count:5d} {size:10d} {packed:9d}")
        print("  what each Python module costs (byte code or extension module), largest first:")
        print(f"    {'module':<40} {'bytes':>8} {'gzip -9':>8}")
        modules = [
            (module_of(path), size, packed)
            for path, (size, packed) in costs.items()
            if path.endswith(".pyc") or "/lib-dynload/" in path
        ]
        for name, size, packed in sorted(modules, key=lambda m: -m[2]):
            print(f"    {name:<40} {size:8d} {packed:8d}")


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
