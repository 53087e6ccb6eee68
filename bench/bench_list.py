# SPDX-License-Identifier: LGPL-2.1-or-later
"""`list` on roots with 10 and 100 directory sysexts: sysextpy against systemd-sysext (new and Debian's).

Also times `--version` of each tool: the fixed cost of starting it, which every other number includes.
Needs no root; as root it runs in the same private mount namespace as the mounting benchmarks.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Optional

import common as c


def _check_listing(sample: c.Sample, n: int) -> Optional[str]:
    if not sample.ok:
        return sample.why()
    missing = [c.sysext_name(i) for i in (1, n) if c.sysext_name(i) not in sample.stdout]
    return f"listing lacks {', '.join(missing)}" if missing else None


def measure(runner: c.Runner, cells: list[tuple[c.Cell, list[str]]], runs: int, check: int) -> None:
    """Warm each command up once (checking its output when `check` > 0), then time them interleaved."""
    for cell, argv in cells:
        s = runner.run(argv)
        cell.series.error = _check_listing(s, check) if check else (None if s.ok else s.why())
    live = [(cell, argv) for cell, argv in cells if not cell.series.failed]
    for i in range(runs):
        for cell, argv in c.rotated(live, i):
            s = runner.run(argv)
            if not s.ok:
                cell.series.error = s.why()
                continue
            cell.series.add(s.wall_ns, s.cpu_ns)


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=40, help="timed runs per tool and case (default 40)")
    ap.add_argument("--sizes", default="10,100", help="extension counts (default 10,100)")
    args = ap.parse_args(argv)
    if os.geteuid() == 0:
        c.enter_bench_namespace()
    tools = c.find_tools()
    sizes = [int(x) for x in args.sizes.split(",") if x]
    upstream = tools.upstream()
    cases: list[tuple[str, list[c.Cell]]] = []
    results: list[dict[str, Any]] = []

    with c.scratch_area("list") as scratch:
        runner = c.Runner(scratch / "io")

        version_cells = [(c.Cell("sysextpy", c.Series(), ours=True), tools.ours.argv("all", "--version"))]
        version_cells += [
            (c.Cell(t.label, c.Series(), key=t.key), t.argv("sysext", "--version")) for t in upstream
        ]
        # The floor: the interpreter alone, started the same way, importing nothing of ours.
        floor = [c.SYSTEM_PYTHON, "-I", "-S", "-c", "pass"]
        version_cells.append((c.Cell("python3 -I -S -c pass", c.Series()), floor))
        measure(runner, version_cells, args.runs, 0)
        cases.append(("--version", [cell for cell, _ in version_cells]))

        for n in sizes:
            root = scratch / f"root{n}"
            c.build_root(root, n, 0)
            r = f"--root={root}"
            cells = [
                (c.Cell("sysextpy", c.Series(), ours=True), tools.ours.argv("all", r, "list")),
                (
                    c.Cell("sysextpy --class=sysext", c.Series(), ours=True),
                    tools.ours.argv("sysext", r, "list"),
                ),
            ]
            cells += [
                (c.Cell(t.label, c.Series(), key=t.key), t.argv("sysext", r, "list")) for t in upstream
            ]
            measure(runner, cells, args.runs, n)
            cases.append((f"list, {n} ext", [cell for cell, _ in cells]))

    keys = [t.key for t in upstream]
    rows: list[list[str]] = []
    for case, cells_ in cases:
        baselines = c.baselines_of(cells_, keys)
        rows += c.case_rows(case, cells_, baselines)
        results += c.case_results(case, cells_, baselines)

    c.print_header(
        "list: sysextpy vs systemd-sysext (wall ms per process; ratio < 1 means sysextpy is faster)", tools
    )
    print(c.format_table(c.table_headers([(k, None) for k in keys]), rows))
    for note in c.failure_notes(cases):
        print(f"   failed: {note}")
    path = c.write_results(
        "list",
        {
            "benchmark": "list",
            "host": c.host_info(),
            "tools": tools.describe(),
            "runs": args.runs,
            "results": results,
        },
    )
    print(f"   results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
