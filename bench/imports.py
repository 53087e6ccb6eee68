# SPDX-License-Identifier: LGPL-2.1-or-later
"""Where the import time of each mounting verb goes.

    sudo .venv/bin/python bench/imports.py [--runs N] [--size N]

For a merge, a forced refresh and an unmerge of a root with N + N directory extensions (default
10), started as the boot path starts sysextpy (bench/README.md), this first records which modules
the verb loads beyond the interpreter's own start. Then, in fresh processes taking turns, it
imports exactly those modules, in that order, three ways:

- `import`: as the program does;
- `split`: the package's byte code read and unmarshalled first (timed alone), then the same
  imports, served from those code objects by a finder of this script's, so that what is left is
  running the module bodies (with the standard-library modules they import);
- `stdlib`: only the standard-library modules of the list, as the package would import them.

From the medians: reading and unmarshalling; the package's module bodies (`split` minus `stdlib`);
the standard library's part; and the import system's own work for each module (`import` minus the
rest: finding the file, checking it, making the module), which is what fewer, larger modules
would save. Last, what `os` itself costs over the `posix` module it
wraps (`python3 -IS -c "import os"` against `"import posix"`): every run pays it, the floor too.

The collector is off in every measuring process, so that a collection that happens to fall in one
of them does not count against it; in whole runs it makes no difference (the program switches it
off itself before its work).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path
from typing import Any, Optional

sys.path.insert(0, os.fspath(Path(__file__).resolve().parent))

import common as c  # noqa: E402

VERBS = (
    ("merge", ("merge",)),
    ("forced refresh", ("--always-refresh=yes", "refresh")),
    ("unmerge", ("unmerge",)),
)

# Runs a verb through the package's main() and writes the modules it loaded beyond those the
# interpreter had after its start, in the order their imports began (argv: OUT ARGS...). That order,
# unlike sys.modules' (where a module goes once it has finished), imports each one as the program
# did: os before the posixpath it imports.
_RECORD = """\
import sys
asked = []

class Recorder:
    @staticmethod
    def find_spec(name, path=None, target=None):
        asked.append(name)
        return None

sys.meta_path.insert(0, Recorder)
out = sys.argv.pop(1)
sys.path.insert(0, {path!r})
from sysextpy import cli
status = cli.main(sys.argv[1:])
with open(out, "w") as f:
    f.write("\\n".join(name for name in dict.fromkeys(asked) if name in sys.modules))
import os
os._exit(status)
"""

# Imports the listed modules (argv: MODE PACKAGE_DIR NAME...) and prints the times in µs.
_MEASURE = """\
import gc
gc.disable()
import sys
from time import perf_counter
mode, where, names = sys.argv[1], sys.argv[2], sys.argv[3:]
sys.path.insert(0, where)
if mode == "import":
    t0 = perf_counter()
    for name in names:
        __import__(name)
    print(round((perf_counter() - t0) * 1e6))
elif mode == "stdlib":
    t0 = perf_counter()
    for name in names:
        if name != "sysextpy" and not name.startswith("sysextpy."):
            __import__(name)
    print(round((perf_counter() - t0) * 1e6))
else:
    from marshal import loads
    t0 = perf_counter()
    codes = {}
    for name in names:
        if name == "sysextpy" or name.startswith("sysextpy."):
            file = where + "/" + ("sysextpy/__init__" if name == "sysextpy" else name.replace(".", "/"))
            with open(file + ".pyc", "rb") as f:
                codes[name] = loads(f.read()[16:])
    t1 = perf_counter()
    from _frozen_importlib import ModuleSpec

    class Served:
        @classmethod
        def find_spec(cls, name, path=None, target=None):
            if name in codes:
                return ModuleSpec(name, cls, is_package=name == "sysextpy")
            return None

        @staticmethod
        def create_module(spec):
            return None

        @staticmethod
        def exec_module(module):
            if module.__name__ == "sysextpy":
                module.__path__ = []
            exec(codes[module.__name__], module.__dict__)

    sys.meta_path.insert(0, Served)
    t2 = perf_counter()
    for name in names:
        __import__(name)
    t3 = perf_counter()
    print(round((t1 - t0) * 1e6), round((t3 - t2) * 1e6))
"""


def loaded_modules(runner: c.Runner, root: Path, args: tuple[str, ...], scratch: Path) -> list[str]:
    out = scratch / "modules.txt"
    code = _RECORD.format(path=c.boot_form())
    done = runner.run([c.SYSTEM_PYTHON, "-I", "-S", "-c", code, os.fspath(out), f"--root={root}", *args])
    if not done.ok:
        raise SystemExit(f"{' '.join(args)} failed, {done.why()}")
    return out.read_text().split()


def measure(runner: c.Runner, mode: str, names: list[str]) -> list[int]:
    done = runner.run([c.SYSTEM_PYTHON, "-I", "-S", "-c", _MEASURE, mode, c.boot_form(), *names])
    if not done.ok:
        raise SystemExit(f"importing the modules ({mode}) failed, {done.why()}")
    return [int(x) for x in done.stdout.split()]


def interpreter_cost(runner: c.Runner, runs: int) -> tuple[float, float]:
    """Median wall ms of `python3 -IS -c "import os"` and of `"import posix"`, taking turns."""
    series = {"os": c.Series(), "posix": c.Series()}
    for i in range(runs + 1):
        for name in c.rotated(list(series), i):
            done = runner.run([c.SYSTEM_PYTHON, "-I", "-S", "-c", f"import {name}; {name}._exit(0)"])
            if i:  # the first round warms the page cache
                series[name].add(done.wall_ns, done.cpu_ns)
    with_os, with_posix = series["os"].median_ms(), series["posix"].median_ms()
    assert with_os is not None and with_posix is not None
    return with_os, with_posix


def pyc_bytes(names: list[str]) -> int:
    base = Path(c.boot_form())
    total = 0
    for name in names:
        if name == "sysextpy":
            total += (base / "sysextpy/__init__.pyc").stat().st_size
        elif name.startswith("sysextpy."):
            total += (base / (name.replace(".", "/") + ".pyc")).stat().st_size
    return total


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=40, help="measuring processes per way and verb (default 40)")
    ap.add_argument("--size", type=int, default=10, help="sysexts and confexts in the root (default 10)")
    args = ap.parse_args(argv)
    c.enter_bench_namespace()

    runner = c.Runner(Path("/run/sysextpy-bench"))
    rows: list[list[str]] = []
    results: list[dict[str, Any]] = []
    with c.scratch_area("imports") as scratch:
        root = scratch / "root"
        c.build_root(root, args.size, args.size)
        lists = {label: loaded_modules(runner, root, verb, scratch) for label, verb in VERBS}
    for label, names in lists.items():
        samples: dict[str, list[list[int]]] = {"import": [], "split": [], "stdlib": []}
        for i in range(args.runs + 1):
            for mode in c.rotated(list(samples), i):
                got = measure(runner, mode, names)
                if i:  # the first round warms the page cache
                    samples[mode].append(got)
        total = statistics.median(s[0] for s in samples["import"]) / 1e3
        reading = statistics.median(s[0] for s in samples["split"]) / 1e3
        bodies_all = statistics.median(s[1] for s in samples["split"]) / 1e3
        stdlib = statistics.median(s[0] for s in samples["stdlib"]) / 1e3
        package = [n for n in names if n == "sysextpy" or n.startswith("sysextpy.")]
        others = [n for n in names if n not in package]
        finding = total - reading - bodies_all
        rows.append(
            [
                label,
                f"{len(package)} + {len(others)}",
                f"{pyc_bytes(names) / 1024:.0f}",
                f"{total:.2f}",
                f"{reading:.2f}",
                f"{bodies_all - stdlib:.2f}",
                f"{stdlib:.2f}",
                f"{finding:.2f}",
            ]
        )
        results.append(
            {
                "verb": label,
                "package_modules": package,
                "stdlib_modules": others,
                "pyc_bytes": pyc_bytes(names),
                "import_ms": total,
                "read_unmarshal_ms": reading,
                "package_bodies_ms": bodies_all - stdlib,
                "stdlib_ms": stdlib,
                "finder_loader_ms": finding,
            }
        )
    with_os, with_posix = interpreter_cost(runner, args.runs)

    print(f"\n-- imports of each verb, {args.size} + {args.size} (median ms of {args.runs} processes each)")
    headers = [
        "verb",
        "modules (package + stdlib)",
        "byte code kB",
        "import",
        "read + unmarshal",
        "package bodies",
        "stdlib",
        "finder + loader",
    ]
    print(c.format_table(headers, rows))
    print(
        f"   the interpreter: -IS -c 'import os' {with_os:.2f} ms, 'import posix' {with_posix:.2f} ms:"
        f" os costs {with_os - with_posix:.2f} ms of every run"
    )
    for entry in results:
        print(f"   {entry['verb']}: stdlib {' '.join(entry['stdlib_modules'])}")
    path = c.write_results(
        "imports",
        {
            "benchmark": "imports",
            "host": c.host_info(),
            "size": args.size,
            "runs": args.runs,
            "results": results,
            "interpreter_ms": {"import os": with_os, "import posix": with_posix},
        },
    )
    print(f"   results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
