# SPDX-License-Identifier: LGPL-2.1-or-later
"""What hooks cost the confirming refresh: none runs, and their observations are taken again.

Two roots with 10 sysexts and 10 confexts each (common.build_root), one of them with a check and a
generate hook (in /etc/sysextpy/hooks.d and /usr/lib/sysextpy/hooks.d). Both are merged, then
`sysextpy --root=R refresh` is run on each, started as the boot path starts it (/usr/bin/python3
-I -S), and must confirm the merge and run no hook (its record's `hooks` is empty). Measured:

- instructions of one confirming refresh under `valgrind --tool=callgrind` (the machine is shared
  and loaded: instruction counts do not depend on the load), the whole process;
- wall-clock time of many runs, the two roots interleaved, median and the difference of medians.

Usage (root): bench/bench_hooks.py [--runs N] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import common as c

sys.path.insert(0, os.fspath(c.REPO))
from tests.root_tools import equip_root  # noqa: E402  (the repository is on sys.path only now)

CHECK_HOOK = '#!/bin/sh\n[ "$1" = check ] || exit 0\n[ "$SYSEXTPY_NAME" != refused ]\n'
GENERATE_HOOK = '#!/bin/sh\n[ "$1" = generate ] || exit 0\nls "$4" > "$5/generated-listing"\n'


def _argv(root: Path, *args: str) -> list[str]:
    return c.ours_tool().argv("all", f"--root={root}", f"--state={root}/run/state.json", *args)


def _record(root: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((root / "run/state.json").read_text())
    return data


def _refresh(root: Path) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(_argv(root, "refresh"), env=c.TOOL_ENV, capture_output=True, text=True)
    took = time.perf_counter() - t0
    record = _record(root)
    if proc.returncode != 0 or record.get("confirmedBy") is None or record.get("hooks"):
        raise SystemExit(f"{root}: the refresh did not confirm without hooks:\n{proc.stderr}")
    return took


def _instructions(root: Path) -> int:
    proc = subprocess.run(
        ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", *_argv(root, "refresh")],
        env=c.TOOL_ENV,
        capture_output=True,
        text=True,
    )
    found = re.search(r"Collected : (\d+)", proc.stderr)
    if proc.returncode != 0 or found is None:
        raise SystemExit(f"callgrind failed:\n{proc.stderr}")
    if _record(root).get("hooks"):
        raise SystemExit("a hook ran in a confirming refresh")
    return int(found.group(1))


def main() -> None:
    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=raw)
    parser.add_argument("--runs", type=int, default=60)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    c.enter_bench_namespace()
    with c.scratch_area("hooks") as area:
        roots = {"without hooks": area / "a", "with hooks": area / "b"}
        for root in roots.values():
            c.build_root(root, 10, 10)
            (root / "run").mkdir(exist_ok=True)
        hooked = roots["with hooks"]
        # hooks run chrooted in the root, with its own shell and tools
        equip_root(hooked, "sh", "ls")
        for rel, text in (
            ("etc/sysextpy/hooks.d/50-check.hook", CHECK_HOOK),
            ("usr/lib/sysextpy/hooks.d/50-generate.hook", GENERATE_HOOK),
        ):
            (hooked / rel).parent.mkdir(parents=True, exist_ok=True)
            (hooked / rel).write_text(text)
            os.chmod(hooked / rel, 0o755)
        for root in roots.values():
            subprocess.run(_argv(root, "merge"), env=c.TOOL_ENV, check=True, capture_output=True)
        ran = len(_record(hooked)["hooks"])
        # each hook is asked to check each image and to generate for /usr and /etc
        assert ran == 2 * (20 + 2), f"the merge ran {ran} hooks"
        for root in roots.values():
            _refresh(root)  # warm the page cache
        counts = {key: _instructions(root) if shutil.which("valgrind") else 0 for key, root in roots.items()}
        times: dict[str, list[float]] = {key: [] for key in roots}
        for i in range(args.runs):
            for key in c.rotated(list(roots), i):
                times[key].append(_refresh(roots[key]))
        for root in roots.values():
            subprocess.run(_argv(root, "unmerge"), env=c.TOOL_ENV, check=True, capture_output=True)
    medians = {key: statistics.median(v) * 1000 for key, v in times.items()}
    result = {
        "hooksRunByTheMerge": ran,
        "hooksRunByTheConfirmingRefreshes": 0,
        "instructions": counts,
        "instructionsAdded": counts["with hooks"] - counts["without hooks"],
        "medianMs": medians,
        "medianDifferenceMs": medians["with hooks"] - medians["without hooks"],
        "runs": args.runs,
    }
    if args.json:
        print(json.dumps(result, indent=1))
        return
    print(f"confirming refresh, 10 sysexts + 10 confexts, {args.runs} interleaved runs each")
    for key in roots:
        print(f"  {key:14} {counts[key]:>12,} instructions   median {medians[key]:7.2f} ms")
    print(
        f"  hooks add {result['instructionsAdded']:,} instructions, "
        f"{result['medianDifferenceMs']:+.2f} ms (difference of medians); hooks run: 0"
    )


if __name__ == "__main__":
    main()
