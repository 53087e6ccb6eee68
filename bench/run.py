# SPDX-License-Identifier: LGPL-2.1-or-later
"""Run every benchmark and print a report: `make bench` (as root). See bench/README.md.

Each benchmark is its own script, started with this interpreter; each prints its tables and writes
bench/results/<name>.json. The summary at the end picks the headline numbers out of those files.
Benchmarks added next to these (generator.py, identify_raw.py) are run too when present.
Always exits 0: a benchmark that fails is reported, not fatal.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"

# (script, needs root, arguments for --quick)
OURS = [
    ("bench_list.py", False, ["--runs", "5"]),
    ("bench_merge.py", True, ["--runs", "3", "--sizes", "1,10,100"]),
    ("bench_refresh.py", True, ["--runs", "5", "--gap-runs", "2"]),
    ("imports.py", True, ["--runs", "5"]),
]
# (script, arguments, arguments for --quick): benchmarks kept by their own authors, run when present.
# identify_raw.py's default of 20 runs alone takes about ten minutes (upstream needs ~15 s per no-op
# refresh of 100 raw images here), so `make bench` asks it for fewer.
OTHERS = [
    ("generator.py", [], ["--runs", "50", "--no-initrd"]),
    ("identify_raw.py", ["--runs", "5"], ["--runs", "2"]),
]
TIMEOUT = 900.0


def run_script(name: str, args: list[str]) -> tuple[int, float]:
    print(f"\n######## {name} {' '.join(args)}".rstrip(), flush=True)
    start = time.monotonic()
    try:
        rc = subprocess.run(
            [sys.executable, os.fspath(BENCH_DIR / name), *args], cwd=BENCH_DIR, timeout=TIMEOUT
        ).returncode
    except subprocess.TimeoutExpired:
        print(f"{name}: still running after {TIMEOUT:.0f} s, stopped", flush=True)
        rc = -1
    return rc, time.monotonic() - start


def _load(name: str, since: float) -> Optional[dict[str, Any]]:
    """A results file written by this run (one left from an earlier run would mislead)."""
    path = RESULTS_DIR / f"{name}.json"
    try:
        if path.stat().st_mtime < since:
            return None
        data: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data


def _ms(entry: dict[str, Any]) -> str:
    return f"{entry['median_ms']:.1f} ms" if "median_ms" in entry else "failed"


def _case_line(entries: list[dict[str, Any]], ours_tool: Optional[str] = None) -> str:
    """`case: sysextpy X ms | v262 Y ms | ... | ours/v262 R` for one case (one of our rows)."""
    ours = [e for e in entries if "ratios" in e and (ours_tool is None or e["tool"] == ours_tool)]
    theirs = [e for e in entries if "ratios" not in e and not e["tool"].startswith("python3")]
    if not ours:
        return ""
    head = ours[0]
    parts = [f"{head['tool']} {_ms(head)}"] + [f"{e['tool']} {_ms(e)}" for e in theirs]
    ratios = [f"{k} {v:.2f}x" for k, v in head["ratios"].items() if v is not None]
    ratios += [f"cpu {k} {v:.2f}x" for k, v in head.get("cpu_ratios", {}).items() if v is not None]
    return f"{head['case']}: " + " | ".join(parts) + (f"  ->  {', '.join(ratios)}" if ratios else "")


def _by_case(data: dict[str, Any], **match: Any) -> dict[str, list[dict[str, Any]]]:
    cases: dict[str, list[dict[str, Any]]] = {}
    for e in data["results"]:
        if all(e.get(k) == v for k, v in match.items()):
            cases.setdefault(e["case"], []).append(e)
    return cases


def summary(since: float) -> list[str]:
    """The headline numbers, one line each, from the results files of this run."""
    lines: list[str] = []
    data = _load("list", since)
    if data:
        for entries in _by_case(data).values():
            lines.append(_case_line(entries, "sysextpy"))
    data = _load("merge", since)
    if data:
        for group in ("sysext", "all"):
            for n in (10, 100, 498):
                for entries in _by_case(data, group=group, extensions=n).values():
                    lines.append(_case_line(entries) + f"  [{group}]")
    data = _load("refresh", since)
    if data:
        for case, entries in _by_case(data).items():
            if case.startswith("no-op"):
                line = _case_line(entries)
                changed = [
                    f"{e['tool']} {e['mount_table_changed_runs']}/{e['runs']}"
                    for e in entries
                    if "median_ms" in e
                ]
                lines.append(line + "  mount table changed: " + ", ".join(changed))
                continue
            for e in entries:
                g = e.get("reader", {})
                if g.get("runs"):
                    lines.append(
                        f"{case}: {e['tool']}: /etc ENOENT {g['etc_enoent']} (longest gap "
                        f"{g['etc_longest_gap_us']:.0f} us), /usr ENOENT {g['usr_enoent']} (longest "
                        f"{g['usr_longest_gap_us']:.0f} us) in {g['stats']} stats"
                    )
    return [line for line in lines if line]


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer runs and no 498/500 sizes (a smoke test)")
    ap.add_argument(
        "--only", action="append", default=[], help="run only this script (repeatable), e.g. bench_list.py"
    )
    args = ap.parse_args(argv)
    root = os.geteuid() == 0
    began = time.monotonic()
    began_wall = time.time()
    report: list[str] = []
    for name, needs_root, quick_args in OURS:
        if args.only and name not in args.only:
            continue
        if needs_root and not root:
            report.append(f"{name}: skipped, needs root (it mounts in a private mount namespace)")
            continue
        rc, took = run_script(name, quick_args if args.quick else [])
        report.append(f"{name}: exit {rc} after {took:.0f} s")
    for name, normal_args, quick_args in OTHERS:
        if args.only and name not in args.only:
            continue
        if (BENCH_DIR / name).is_file():
            rc, took = run_script(name, quick_args if args.quick else normal_args)
            report.append(f"{name}: exit {rc} after {took:.0f} s")
    print("\n######## summary (ratio = sysextpy median / upstream median; < 1 means sysextpy is faster)")
    for line in summary(began_wall):
        print(f"  {line}")
    for line in report:
        print(f"  {line}")
    print(f"  total {time.monotonic() - began:.0f} s; results in {RESULTS_DIR}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
