# SPDX-License-Identifier: LGPL-2.1-or-later
"""merge, forced refresh and unmerge with 1 to 500 directory extensions: sysextpy against upstream.

Each fake root carries N directory sysexts and N directory confexts. Two comparisons per size:
  sysext only   sysextpy --class=sysext  vs  systemd-sysext (new, and Debian's where it has the verb)
  both classes  sysextpy --class=all     vs  systemd-sysext + systemd-confext (new; two processes,
                                             their times added up), and the floor:
                                             bench/floor.py, the interpreter's start and the
                                             syscalls any merge makes, without and with a walk
                                             of every extension tree
One cycle is merge, refresh (forced: --always-refresh=yes; Debian's v252 has no skip and no such
option, its refresh always re-merges) and unmerge; every step is checked against the mount table
(overlays present after merge and refresh, gone after unmerge), not just the exit status. The
tools run interleaved on the same root, in an order that rotates every cycle, after one untimed
warm-up cycle each.

With --squashfs every extension is a squashfs image instead (`name.raw`, packed by mksquashfs
from the same tree): the same cycle through loop devices, without the floor (bench/floor.py reads
directories only). Its results go to bench/results/merge-squashfs.json.

overlayfs stacks at most 500 lower layers and both tools add two of their own (the metadata layer
and the host hierarchy), so 498 extensions is the most that can be merged; 500 is attempted once
to show how each tool fails.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import common as c

STEPS = ("merge", "refresh", "unmerge")


@dataclass
class Contender:
    """One tool configuration: per step the command lines it runs (their times are added up)."""

    label: str
    key: str
    rated: bool  # ratios to upstream on its rows: sysextpy's, and the floor's
    group: str  # "sysext" or "all"
    expect: set[str]  # hierarchies (relative to the root) merged after merge and refresh
    steps: dict[str, list[list[str]]]
    series: dict[str, c.Series] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.series = {step: c.Series() for step in STEPS}

    @property
    def failed(self) -> bool:
        return any(s.failed for s in self.series.values())


def contenders(tools: c.Tools, root: Path, floor: bool = True) -> list[Contender]:
    r = f"--root={root}"
    forced = "--always-refresh=yes"
    out = []
    ours = tools.ours
    out.append(
        Contender(
            "sysextpy --class=sysext",
            "ours",
            True,
            "sysext",
            {"usr"},
            {
                "merge": [ours.argv("sysext", r, "merge")],
                "refresh": [ours.argv("sysext", r, forced, "refresh")],
                "unmerge": [ours.argv("sysext", r, "unmerge")],
            },
        )
    )
    for t in tools.upstream():
        flag = [forced] if t is tools.new else []  # Debian's v252 knows no --always-refresh
        out.append(
            Contender(
                f"{t.label} systemd-sysext",
                t.key,
                False,
                "sysext",
                {"usr"},
                {
                    "merge": [t.argv("sysext", r, "merge")],
                    "refresh": [t.argv("sysext", r, *flag, "refresh")],
                    "unmerge": [t.argv("sysext", r, "unmerge")],
                },
            )
        )
    out.append(
        Contender(
            "sysextpy --class=all",
            "ours",
            True,
            "all",
            {"usr", "etc"},
            {
                "merge": [ours.argv("all", r, "merge")],
                "refresh": [ours.argv("all", r, forced, "refresh")],
                "unmerge": [ours.argv("all", r, "unmerge")],
            },
        )
    )
    if tools.new is not None:
        t = tools.new
        out.append(
            Contender(
                f"{t.label} sysext+confext",
                t.key,
                False,
                "all",
                {"usr", "etc"},
                {
                    step: [
                        t.argv(cls, r, *([forced] if step == "refresh" else []), step)
                        for cls in ("sysext", "confext")
                    ]
                    for step in STEPS
                },
            )
        )
    # The floor (floor.py): the interpreter's start and the syscalls any merge makes, nothing else.
    for label, extra in (("python floor", []), ("python floor + walk", ["--walk"])) if floor else ():
        floor = [c.SYSTEM_PYTHON, "-I", "-S", "-c", c.floor_launcher(), *extra, str(root)]
        out.append(
            Contender(
                label, "floor", True, "all", {"usr", "etc"}, {step: [[*floor, step]] for step in STEPS}
            )
        )
    return out


def one_cycle(runner: c.Runner, root: Path, who: Contender, record: bool) -> None:
    """merge, refresh, unmerge; on the first failure the contender is out for this size."""
    for i, step in enumerate(STEPS):
        wall = cpu = 0
        error: Optional[str] = None
        for argv in who.steps[step]:
            s = runner.run(argv)
            wall += s.wall_ns
            cpu += s.cpu_ns
            if not s.ok:
                error = s.why()
                break
        merged = c.merged_hierarchies(root)
        expected = set() if step == "unmerge" else who.expect
        if error is None and merged != expected:
            # Exit 0 is not enough: Debian's v252 reports a failed overlay mount and still exits 0.
            now, wanted = sorted(merged) or "nothing", sorted(expected) or "nothing"
            error = f"after {step}: overlays on {now}, expected {wanted}"
            if s.said():
                error += f" (tool said: {s.said()})"
        if error is not None:
            who.series[step].error = error
            for later in STEPS[i + 1 :]:
                who.series[later].error = f"not measured: {step} failed"
            c.detach_below(root)
            return
        if record:
            who.series[step].add(wall, cpu)


def pack_squashfs(root: Path) -> None:
    """Each extension tree of the root as a squashfs image beside it (`name.raw`), the tree removed."""
    for search in ("var/lib/extensions", "var/lib/confexts"):
        for tree in sorted((root / search).iterdir()):
            image = f"{tree}.raw"
            argv = ["mksquashfs", str(tree), image, "-quiet", "-no-progress", "-noappend", "-all-root"]
            subprocess.run(argv, check=True, stdin=subprocess.DEVNULL)
            shutil.rmtree(tree)


def bench_size(
    runner: c.Runner, tools: c.Tools, scratch: Path, n: int, runs: int, squashfs: bool
) -> list[Contender]:
    root = scratch / f"r{n}"
    c.build_root(root, n, n)
    if squashfs:
        pack_squashfs(root)
    everyone = contenders(tools, root, floor=not squashfs)
    for who in everyone:
        one_cycle(runner, root, who, record=False)
    for i in range(runs):
        for who in c.rotated([w for w in everyone if not w.failed], i):
            one_cycle(runner, root, who, record=True)
    c.detach_below(root)
    return everyone


def runs_for(n: int, base: int) -> int:
    if n >= 500:
        return 1  # beyond the layer limit: shows how each tool fails, nothing to time
    if n > 100:
        return max(2, base // 3)
    return base


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--runs",
        type=int,
        default=30,
        help="timed cycles per tool up to 100 extensions (default 30; a third above)",
    )
    ap.add_argument(
        "--sizes", default="1,10,100,498,500", help="extension counts (default 1,10,100,498,500)"
    )
    ap.add_argument(
        "--squashfs", action="store_true", help="extensions as squashfs images (needs mksquashfs)"
    )
    args = ap.parse_args(argv)
    if args.squashfs and shutil.which("mksquashfs") is None:
        raise SystemExit("--squashfs needs mksquashfs (Debian: squashfs-tools)")
    c.enter_bench_namespace()
    tools = c.find_tools()
    sizes = [int(x) for x in args.sizes.split(",") if x]

    by_size: list[tuple[int, list[Contender]]] = []
    with c.scratch_area("merge") as scratch:
        runner = c.Runner(Path("/run/sysextpy-bench"))
        for n in sizes:
            by_size.append((n, bench_size(runner, tools, scratch, n, runs_for(n, args.runs), args.squashfs)))

    results: list[dict[str, Any]] = []
    c.print_header(
        "merge / forced refresh / unmerge (wall ms per operation; ratio < 1 means sysextpy is faster)", tools
    )
    for group, title in (
        ("sysext", "sysext only: sysextpy --class=sysext vs systemd-sysext"),
        ("all", "both classes: sysextpy --class=all (one process) vs systemd-sysext + systemd-confext"),
    ):
        keys = [t.key for t in tools.upstream()] if group == "sysext" else [t.key for t in [tools.new] if t]
        rows: list[list[str]] = []
        cases: list[tuple[str, list[c.Cell]]] = []
        for step in STEPS:
            for n, everyone in by_size:
                cells = [
                    c.Cell(w.label, w.series[step], w.rated, w.key) for w in everyone if w.group == group
                ]
                case = f"{step}, {n} ext"
                baselines = c.baselines_of(cells, keys)
                rows += c.case_rows(case, cells, baselines)
                results += c.case_results(case, cells, baselines, step=step, extensions=n, group=group)
                cases.append((case, cells))
        print(f"\n-- {title}")
        print(c.format_table(c.table_headers([(k, None) for k in keys]), rows))
        for note in c.failure_notes(cases):
            if "not measured" not in note:
                print(f"   failed: {note}")
    name = "merge-squashfs" if args.squashfs else "merge"
    path = c.write_results(
        name,
        {
            "benchmark": name,
            "host": c.host_info(),
            "tools": tools.describe(),
            "runs": {str(n): runs_for(n, args.runs) for n in sizes},
            "results": results,
        },
    )
    print(f"   results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
