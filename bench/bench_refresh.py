# SPDX-License-Identifier: LGPL-2.1-or-later
"""The refresh after switch-root: the no-op confirmation, and what a forced refresh does to readers.

1. No-op refresh of both classes with N sysexts + N confexts (N = 10, 100), after a merge:
   `sysextpy --root=A refresh` (one process, both classes; its record says whether the recorded
   observations or recomputed fingerprints confirmed the merge), the same through the full command
   line only (`sysextpy, recomputed`: what a refresh costs when the observations do not confirm),
   against the newer upstream's
   `systemd-sysext --root=B refresh` + `systemd-confext --root=B refresh` (two processes, after their
   own merge, on an identical separate root B). Beside the time, whether the run changed the mount
   table at all: /proc/self/mountinfo is compared as text before and after every run (a remount
   shows up as a new mount id even when the same overlay comes back).
2. The gap during a forced refresh (`--always-refresh=yes`, both classes): a reader process stat()s a
   confext-provided file under <root>/etc and a sysext-provided file under <root>/usr in a tight
   loop while the refresh runs, counting ENOENT, and reports the longest stretch in which a file was
   missing (from the first failed stat to the next successful one).
Debian's v252 has neither confext nor a refresh skip; it is not part of this comparison.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import common as c

# The reader: plain Python on the system interpreter, stat() in a loop, nothing between the calls
# but counting. It checks its stdin for the stop word every 1024 rounds.
READER = r"""
import json, os, select, sys, time
paths = sys.argv[1:]
n = len(paths)
ok = [0] * n
enoent = [0] * n
other = {}
gaps = [0] * n
longest = [0] * n
gap_start = [None] * n
stat = os.stat
now = time.perf_counter_ns
sys.stdout.write("ready\n")
sys.stdout.flush()
rounds = 0
begin = now()
while True:
    for k in range(n):
        t = now()
        try:
            stat(paths[k])
        except FileNotFoundError:
            enoent[k] += 1
            if gap_start[k] is None:
                gap_start[k] = t
                gaps[k] += 1
            continue
        except OSError as e:
            other[e.errno] = other.get(e.errno, 0) + 1
            continue
        ok[k] += 1
        if gap_start[k] is not None:
            longest[k] = max(longest[k], t - gap_start[k])
            gap_start[k] = None
    rounds += 1
    if rounds & 1023 == 0 and select.select([0], [], [], 0)[0]:
        break
end = now()
for k in range(n):
    if gap_start[k] is not None:  # still missing when told to stop
        longest[k] = max(longest[k], end - gap_start[k])
print(json.dumps({"seconds": (end - begin) / 1e9, "paths": paths, "ok": ok, "enoent": enoent,
                  "gaps": gaps, "longest_gap_ns": longest, "other_errors": other}))
"""


@dataclass
class Side:
    """One tool on its own root: how it merges, how it refreshes (no-op and forced)."""

    label: str
    key: str
    ours: bool
    root: Path
    merge: list[list[str]]
    refresh: list[list[str]]
    forced: list[list[str]]
    noop: c.Series = field(default_factory=c.Series)
    touched: int = 0  # no-op runs after which the mount table differed
    mounts_before: list[int] = field(default_factory=list)
    mounts_after: list[int] = field(default_factory=list)
    per_process_ms: dict[str, list[float]] = field(default_factory=dict)
    gap_runs: list[dict[str, Any]] = field(default_factory=list)
    forced_series: c.Series = field(default_factory=c.Series)
    said: str = ""  # what the last no-op refresh logged, for the report
    state: Optional[Path] = None  # our handoff record
    confirmed_by: dict[str, int] = field(default_factory=dict)  # its "confirmedBy" after each no-op


def _full_path(argv: list[str]) -> list[str]:
    """Our argv with the launcher swapped for one that goes straight to the full command line,
    past the confirming refresh: what a refresh costs when the observations do not confirm."""
    return [c.ours_launcher(confirming=False) if a == c.ours_launcher() else a for a in argv]


def sides(tools: c.Tools, scratch: Path, n: int) -> list[Side]:
    out = []
    ours = tools.ours
    for key, label, root, launch in (
        ("ours", "sysextpy (one process)", scratch / f"a{n}", list),
        ("ours-full", "sysextpy, recomputed", scratch / f"c{n}", _full_path),
    ):
        state = scratch / f"{key}-{n}.json"
        args = (f"--root={root}", f"--state={state}")
        out.append(
            Side(
                label,
                key,
                True,
                root,
                [launch(ours.argv("all", *args, "merge"))],
                [launch(ours.argv("all", *args, "refresh"))],
                [launch(ours.argv("all", *args, "--always-refresh=yes", "refresh"))]
                if key == "ours"
                else [],
                state=state,
            )
        )
    if tools.new is not None:
        t = tools.new
        b = scratch / f"b{n}"
        rb = f"--root={b}"
        out.append(
            Side(
                f"{t.label} sysext+confext",
                t.key,
                False,
                b,
                [t.argv(cls, rb, "merge") for cls in ("sysext", "confext")],
                [t.argv(cls, rb, "refresh") for cls in ("sysext", "confext")],
                [t.argv(cls, rb, "--always-refresh=yes", "refresh") for cls in ("sysext", "confext")],
            )
        )
    for side in out:
        c.build_root(side.root, n, n)
    return out


EXPECT = {"usr", "etc"}


def run_all(
    runner: c.Runner, side: Side, cmds: list[list[str]]
) -> tuple[int, int, list[c.Sample], Optional[str]]:
    wall = cpu = 0
    samples = []
    for argv in cmds:
        s = runner.run(argv)
        samples.append(s)
        wall += s.wall_ns
        cpu += s.cpu_ns
        if not s.ok:
            return wall, cpu, samples, s.why()
    merged = c.merged_hierarchies(side.root)
    if merged != EXPECT:
        return wall, cpu, samples, f"overlays on {sorted(merged) or 'nothing'}, expected {sorted(EXPECT)}"
    return wall, cpu, samples, None


def noop_refresh(runner: c.Runner, everyone: list[Side], runs: int) -> None:
    for side in everyone:
        _, _, _, error = run_all(runner, side, side.merge)
        if error is None:
            _, _, _, error = run_all(runner, side, side.refresh)  # warm-up
        side.noop.error = error
    for i in range(runs):
        for side in c.rotated([s for s in everyone if not s.noop.failed], i):
            before = c.mountinfo_text()
            wall, cpu, samples, error = run_all(runner, side, side.refresh)
            after = c.mountinfo_text()
            if error is not None:
                side.noop.error = error
                continue
            side.noop.add(wall, cpu)
            side.touched += before != after
            side.mounts_before.append(len(before.splitlines()))
            side.mounts_after.append(len(after.splitlines()))
            for argv, s in zip(side.refresh, samples):
                name = "sysextpy" if side.ours else os.path.basename(argv[argv.index("--argv0") + 1])
                side.per_process_ms.setdefault(name, []).append(s.wall_ns / 1e6)
            side.said = " | ".join(s.said() for s in samples)
            if side.state is not None:
                try:
                    how = json.loads(side.state.read_text()).get("confirmedBy") or "not confirmed"
                except (OSError, ValueError):
                    how = "no record"
                side.confirmed_by[how] = side.confirmed_by.get(how, 0) + 1


def start_reader(paths: list[Path]) -> subprocess.Popen[str]:
    reader = subprocess.Popen(
        [c.SYSTEM_PYTHON, "-I", "-S", "-c", READER, *map(os.fspath, paths)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=c.TOOL_ENV,
    )
    assert reader.stdout is not None
    if reader.stdout.readline().strip() != "ready":
        reader.kill()
        raise RuntimeError("the reader process did not start")
    return reader


def stop_reader(reader: subprocess.Popen[str]) -> dict[str, Any]:
    out, _ = reader.communicate("stop\n", timeout=60)
    result: dict[str, Any] = json.loads(out)
    return result


def forced_with_reader(runner: c.Runner, everyone: list[Side], reps: int) -> None:
    for side in everyone:
        if side.noop.failed:
            side.forced_series.error = "not measured: merge or refresh failed"
    for i in range(reps):
        for side in c.rotated([s for s in everyone if s.forced and not s.forced_series.failed], i):
            paths = [
                side.root / "etc" / f"{c.confext_name(1)}.conf",
                side.root / "usr/share" / c.sysext_name(1) / "README",
            ]
            missing = [p for p in paths if not p.exists()]
            if missing:
                side.forced_series.error = f"{missing[0]} missing before the refresh: is the merge in place?"
                continue
            reader = start_reader(paths)
            time.sleep(0.02)  # let the reader settle into its loop
            wall, cpu, _, error = run_all(runner, side, side.forced)
            time.sleep(0.02)
            seen = stop_reader(reader)
            if error is not None:
                side.forced_series.error = error
                continue
            side.forced_series.add(wall, cpu)
            side.gap_runs.append(seen)


def gap_summary(side: Side) -> dict[str, Any]:
    runs = side.gap_runs
    if not runs:
        return {"runs": 0}

    def total(key: str, k: int) -> int:
        return sum(int(r[key][k]) for r in runs)

    def longest_us(k: int) -> float:
        return max(int(r["longest_gap_ns"][k]) for r in runs) / 1e3

    other: dict[str, int] = {}
    for r in runs:
        for errno_, count in r["other_errors"].items():
            other[errno_] = other.get(errno_, 0) + count
    return {
        "runs": len(runs),
        "stats": sum(sum(r["ok"]) + sum(r["enoent"]) for r in runs),
        "etc_enoent": total("enoent", 0),
        "etc_gaps": total("gaps", 0),
        "etc_longest_gap_us": round(longest_us(0), 1),
        "usr_enoent": total("enoent", 1),
        "usr_gaps": total("gaps", 1),
        "usr_longest_gap_us": round(longest_us(1), 1),
        "other_errors": other,
        "reader_seconds": round(sum(r["seconds"] for r in runs), 3),
    }


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--runs", type=int, default=50, help="timed no-op refreshes per tool and size (default 50)"
    )
    ap.add_argument(
        "--gap-runs",
        type=int,
        default=8,
        help="forced refreshes under the reader (default 8; fewer for 100)",
    )
    ap.add_argument("--sizes", default="10,100", help="extensions per class (default 10,100)")
    args = ap.parse_args(argv)
    c.enter_bench_namespace()
    tools = c.find_tools()
    sizes = [int(x) for x in args.sizes.split(",") if x]
    keys = [tools.new.key] if tools.new is not None else []

    by_size: list[tuple[int, list[Side]]] = []
    with c.scratch_area("refresh") as scratch:
        runner = c.Runner(Path("/run/sysextpy-bench"))
        for n in sizes:
            everyone = sides(tools, scratch, n)
            noop_refresh(runner, everyone, args.runs)
            forced_with_reader(
                runner, everyone, args.gap_runs if n <= 10 else max(1, args.gap_runs * 3 // 5)
            )
            for side in everyone:
                c.detach_below(side.root)
            by_size.append((n, everyone))

    results: list[dict[str, Any]] = []
    noop_rows: list[list[str]] = []
    gap_rows: list[list[str]] = []
    cases: list[tuple[str, list[c.Cell]]] = []
    for n, everyone in by_size:
        case = f"no-op refresh, {n}+{n} ext"
        cells = [c.Cell(s.label, s.noop, s.ours, s.key) for s in everyone]
        baselines = c.baselines_of(cells, keys)
        cases.append((case, cells))
        entries = c.case_results(case, cells, baselines, extensions_per_class=n)
        for row, entry, side in zip(c.case_rows(case, cells, baselines), entries, everyone):
            runs = len(side.noop.walls_ns)
            mounts = (
                f"{statistics.median(side.mounts_before):.0f}->{statistics.median(side.mounts_after):.0f}"
                if runs
                else "-"
            )
            noop_rows.append([*row, f"{side.touched}/{runs}" if runs else "-", mounts])
            entry["mount_table_changed_runs"] = side.touched
            entry["mounts_before_median"] = statistics.median(side.mounts_before) if runs else None
            entry["mounts_after_median"] = statistics.median(side.mounts_after) if runs else None
            entry["per_process_median_ms"] = {
                k: round(statistics.median(v), 3) for k, v in side.per_process_ms.items() if v
            }
            entry["last_message"] = side.said
            if side.state is not None:
                entry["confirmed_by"] = side.confirmed_by
            results.append(entry)

        gap_case = f"forced refresh, {n}+{n} ext"
        for side in everyone:
            if not side.forced:
                continue
            g = gap_summary(side)
            fs = side.forced_series
            results.append(
                {
                    "case": gap_case,
                    "tool": side.label,
                    "extensions_per_class": n,
                    **fs.summary(),
                    "reader": g,
                }
            )
            if fs.failed or not g["runs"]:
                gap_rows.append([gap_case, side.label, "FAILED" if fs.failed else "-"] + [""] * 6)
                continue
            gap_rows.append(
                [
                    gap_case,
                    side.label,
                    f"{fs.median_ms():.1f}",
                    str(g["runs"]),
                    str(g["stats"]),
                    str(g["etc_enoent"]),
                    f"{g['etc_longest_gap_us']:.0f}",
                    str(g["usr_enoent"]),
                    f"{g['usr_longest_gap_us']:.0f}",
                ]
            )

    c.print_header("refresh of both classes after a merge (ratio < 1 means sysextpy is faster)", tools)
    print("\n-- no-op refresh: wall ms for the whole confirmation; did the mount table change?")
    headers = c.table_headers([(k, None) for k in keys]) + ["mounts changed", "mount count"]
    print(c.format_table(headers, noop_rows))
    said: dict[str, set[str]] = {}
    for _, everyone in by_size:
        for side in everyone:
            for message in side.said.split(" | "):
                if message:
                    said.setdefault(side.label, set()).add(message)
    for label, messages in said.items():
        for message in sorted(messages):
            print(f"   {label} said: {message}")
    for n, everyone in by_size:
        for side in everyone:
            if side.confirmed_by:
                how = ", ".join(f"{k} {v}" for k, v in sorted(side.confirmed_by.items()))
                print(f"   {n}+{n}, {side.label}: confirmed by {how}")
    for note in c.failure_notes(cases):
        print(f"   failed: {note}")
    print(
        "\n-- forced refresh (--always-refresh=yes) under a reader stat()ing "
        f"<root>/etc/{c.confext_name(1)}.conf and <root>/usr/share/{c.sysext_name(1)}/README"
    )
    gap_headers = [
        "case",
        "tool",
        "refresh ms",
        "runs",
        "stats",
        "/etc ENOENT",
        "/etc gap us",
        "/usr ENOENT",
        "/usr gap us",
    ]
    print(c.format_table(gap_headers, gap_rows))
    for n, everyone in by_size:
        for side in everyone:
            if side.forced_series.failed:
                print(f"   failed: forced refresh {n}+{n}, {side.label}: {side.forced_series.error}")
    path = c.write_results(
        "refresh",
        {
            "benchmark": "refresh",
            "host": c.host_info(),
            "tools": tools.describe(),
            "runs": args.runs,
            "gap_runs": args.gap_runs,
            "results": results,
        },
    )
    print(f"   results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
