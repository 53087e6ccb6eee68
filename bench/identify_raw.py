# SPDX-License-Identifier: LGPL-2.1-or-later
"""Identifying 100 raw images: sysextpy's fingerprint path against systemd-sysext's refresh decision.

1. In-process: discovery plus `identity.extension_identity()` for 100 `.raw` squashfs images, with
   `.roothash`/`.verity` side-cars (the hash identifies the image) and without (inode, file handle,
   times). This is what sysextpy computes to decide whether a refresh can be skipped; it mounts
   nothing.
2. Whole process: a no-op `refresh` of 100 raw images after a merge, `sysextpy --class=sysext` on
   root A against the newer upstream `systemd-sysext` on an identical root B (after its own merge).
   Upstream mounts every image before it decides to skip; sysextpy does not. With side-cars,
   upstream insists on dm-verity, which a machine without device-mapper lacks: its merge fails as a
   whole, so it is also timed with `SYSTEMD_DISSECT_VERITY_SIDECAR=0` (side-cars ignored).
Needs root (loop devices, overlays) and runs in a private mount namespace; upstream's columns are
left out when it is not installed (see bench/README.md).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Optional

import common as c

N_IMAGES = 100


@contextmanager
def tool_env(**extra: str) -> Iterator[None]:
    """Run the tools with extra environment variables (common.Runner reads common.TOOL_ENV)."""
    saved = dict(c.TOOL_ENV)
    c.TOOL_ENV.update(extra)
    try:
        yield
    finally:
        c.TOOL_ENV.clear()
        c.TOOL_ENV.update(saved)


def build_images(root: Path, n: int, sidecars: bool, cache: Path) -> None:
    """n squashfs sysexts `rN.raw` in root's /var/lib/extensions (+ side-cars); built once, copied."""
    c.build_root(root, 0, 0)
    ext = root / "var/lib/extensions"
    cache.mkdir(parents=True, exist_ok=True)
    for i in range(1, n + 1):
        name = f"r{i}"
        image = cache / f"{name}.raw"
        if not image.exists():
            src = cache / f"src-{name}"
            (src / "usr/lib/extension-release.d").mkdir(parents=True)
            (src / f"usr/lib/extension-release.d/extension-release.{name}").write_text(c.EXT_RELEASE)
            (src / "usr/share" / name).mkdir(parents=True)
            (src / "usr/share" / name / "README").write_text(f"{name}\n")
            subprocess.run(
                ["mksquashfs", src, image, "-quiet", "-noappend", "-all-root", "-no-progress"],
                check=True,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
            )
            shutil.rmtree(src)
            out = subprocess.run(
                ["veritysetup", "format", image, cache / f"{name}.verity"],
                check=True,
                capture_output=True,
                text=True,
            ).stdout
            root_hash = next(
                ln.split(":", 1)[1].strip() for ln in out.splitlines() if ln.startswith("Root hash:")
            )
            (cache / f"{name}.roothash").write_text(root_hash + "\n")
        shutil.copy(image, ext / image.name)
        if sidecars:
            for suffix in (".verity", ".roothash"):
                shutil.copy(cache / f"{name}{suffix}", ext / f"{name}{suffix}")


def dm_available() -> bool:
    from sysextpy.verity import dm_verity_available

    return dm_verity_available()


def identify_once(root: Path) -> int:
    """Discover and identify every sysext of `root`; returns how many carry a verity hash."""
    from sysextpy.discover import discover
    from sysextpy.identity import extension_identity
    from sysextpy.model import ImageClass

    found = discover(root, ImageClass.SYSEXT, initrd=False)
    env: dict[str, str] = {}
    return sum("verityHash" in extension_identity(root, cand, env) for cand in found.candidates)


def time_identify(root: Path, runs: int) -> tuple[c.Series, int]:
    series = c.Series()
    hashed = identify_once(root)  # warm-up (imports, dentry cache)
    for _ in range(runs):
        cpu0, t0 = time.process_time_ns(), time.perf_counter_ns()
        identify_once(root)
        series.add(time.perf_counter_ns() - t0, time.process_time_ns() - cpu0)
    return series, hashed


def time_noop_refresh(runner: c.Runner, argv: list[str], runs: int) -> tuple[c.Series, int, str]:
    """Time `argv` (a refresh) `runs` times; count the runs that changed the mount table."""
    series = c.Series()
    changed = 0
    said = ""
    warm = runner.run(argv)  # untimed: the first run after a merge fills caches
    if not warm.ok:
        series.error = warm.why()
        return series, changed, warm.said()
    for _ in range(runs):
        before = c.mountinfo_text()
        s = runner.run(argv)
        if not s.ok:
            series.error = s.why()
            return series, changed, s.said()
        series.add(s.wall_ns, s.cpu_ns)
        changed += c.mountinfo_text() != before
        said = s.said()
    return series, changed, said


def merge(runner: c.Runner, argv: list[str], root: Path) -> Optional[str]:
    s = runner.run(argv)
    if not s.ok:
        return s.why()
    if "usr" not in c.merged_hierarchies(root):
        return f"exit 0 but no overlay on {root}/usr: {s.said()}"
    return None


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--runs",
        type=int,
        default=8,
        help="timed refresh runs per tool and case (default 8; upstream's take seconds)",
    )
    ap.add_argument("--identify-runs", type=int, default=50, help="timed in-process runs (default 50)")
    ap.add_argument("--images", type=int, default=N_IMAGES, help=f"raw images per root (default {N_IMAGES})")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("identify_raw.py: needs root (loop devices and overlays in a private mount namespace)")
        return 0
    for tool in ("mksquashfs", "veritysetup"):
        if not shutil.which(tool):
            print(f"identify_raw.py: {tool} not found, skipped")
            return 0
    c.enter_bench_namespace()
    sys.path.insert(0, os.fspath(c.REPO))
    tools = c.find_tools()
    new = tools.new
    n = args.images
    results: list[dict[str, Any]] = []
    rows: list[list[str]] = []
    notes: list[str] = []

    with c.scratch_area("raw") as scratch:
        runner = c.Runner(scratch / "io")
        cache = scratch / "cache"
        roots = {
            ("plain", "ours"): scratch / "pa",
            ("plain", "up"): scratch / "pb",
            ("side", "ours"): scratch / "sa",
            ("side", "up"): scratch / "sb",
        }
        for (kind, _), root in roots.items():
            build_images(root, n, kind == "side", cache)

        # 1. In-process identification.
        cells = []
        for kind in ("side", "plain"):
            series, hashed = time_identify(roots[(kind, "ours")], args.identify_runs)
            label = f"identify {n} raw, {'side-cars' if kind == 'side' else 'no side-cars'}"
            cells.append((label, c.Cell("sysextpy (in-process)", series, ours=True)))
            notes.append(f"{label}: {hashed} of {n} identified by their verity hash")
            per_image = (series.median_ms() or 0) * 1000 / n
            notes.append(f"{label}: {per_image:.0f} us per image")

        # 2. No-op refresh after a merge, whole processes.
        for kind in ("plain", "side"):
            case = f"no-op refresh, {n} raw{' + side-cars' if kind == 'side' else ''}"
            ours_root, up_root = roots[(kind, "ours")], roots[(kind, "up")]
            ours_cell = c.Cell("sysextpy", c.Series(), ours=True)
            err = merge(runner, c.ours_tool().argv("sysext", f"--root={ours_root}", "merge"), ours_root)
            if err:
                ours_cell.series.error = f"merge: {err}"
            else:
                refresh = c.ours_tool().argv("sysext", f"--root={ours_root}", "refresh")
                ours_cell.series, changed, said = time_noop_refresh(runner, refresh, args.runs)
                notes.append(f"{case}, sysextpy: mount table changed in {changed} runs; said: {said}")
            case_cells = [ours_cell]
            if new is not None:
                variants: list[tuple[str, dict[str, str]]] = [("", {})]
                if kind == "side":
                    variants = [(" (side-cars off)", {"SYSTEMD_DISSECT_VERITY_SIDECAR": "0"})]
                    if dm_available():
                        variants.insert(0, ("", {}))
                    else:
                        # Not even tried: it fails as a whole, and its libdevmapper would leave a
                        # /dev/mapper/control node behind on the host's /dev.
                        notes.append(
                            f"{case}, {new.label}: not run with side-cars honoured: no device-mapper "
                            "here, and upstream requires dm-verity for them (its whole merge fails)"
                        )
                for suffix, env in variants:
                    cell = c.Cell(new.label + suffix, c.Series(), key=new.key + suffix.replace(" ", ""))
                    with tool_env(**env):
                        err = merge(
                            runner, new.argv("sysext", f"--root={up_root}", "--no-reload", "merge"), up_root
                        )
                        if err:
                            cell.series.error = f"merge: {err}"
                        else:
                            refresh = new.argv("sysext", f"--root={up_root}", "refresh")
                            cell.series, changed, said = time_noop_refresh(runner, refresh, args.runs)
                            notes.append(
                                f"{case}, {cell.label}: mount table changed in {changed} runs; said: {said}"
                            )
                            runner.run(new.argv("sysext", f"--root={up_root}", "unmerge"))
                    case_cells.append(cell)
            cells.extend((case, cell) for cell in case_cells)
            runner.run(c.ours_tool().argv("sysext", f"--root={ours_root}", "unmerge"))

    by_case: dict[str, list[c.Cell]] = {}
    for case, cell in cells:
        by_case.setdefault(case, []).append(cell)
    keys = sorted({cell.key for cs in by_case.values() for cell in cs if cell.key})
    for case, cs in by_case.items():
        baselines = c.baselines_of(cs, keys)
        rows += c.case_rows(case, cs, baselines)
        results += c.case_results(case, cs, baselines, images=n)

    c.print_header(
        f"identifying {n} raw images: sysextpy's fingerprint path vs systemd-sysext's refresh decision "
        "(wall ms; ratio < 1 means sysextpy is faster)",
        tools,
    )
    print(c.format_table(c.table_headers([(k, None) for k in keys]), rows))
    for note in notes + c.failure_notes(list(by_case.items())):
        print(f"   {note}")
    path = c.write_results(
        "identify_raw",
        {
            "benchmark": "identify_raw",
            "host": c.host_info(),
            "tools": tools.describe(),
            "runs": args.runs,
            "identify_runs": args.identify_runs,
            "images": n,
            "notes": notes,
            "results": results,
        },
    )
    print(f"   results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
