# SPDX-License-Identifier: LGPL-2.1-or-later
"""Shared pieces of the benchmarks: the tools under test, timing, fake roots, namespaces, output.

Every benchmark compares sysextpy with upstream systemd-sysext on the same machine, in the same
run, on fake roots it builds itself. Mounting benchmarks run inside a private mount namespace
(see `enter_bench_namespace`), so nothing they do can reach the host's /usr, /opt, /etc or /run.
"""

from __future__ import annotations

import atexit
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

REPO = Path(__file__).resolve().parent.parent
BENCH_DIR = REPO / "bench"
RESULTS_DIR = BENCH_DIR / "results"

# The interpreter sysextpy is timed with: the system's, not a venv or a pyenv shim.
SYSTEM_PYTHON = os.environ.get("SYSEXTPY_BENCH_PYTHON", "/usr/bin/python3")
BYTECODE_TOOL = REPO / "dracut/90sysextpy/python-bytecode.py"


def _compile_boot_form(sources: Sequence[str]) -> str:
    """Sources as the initrd holds the package: byte code only, without the sources, compiled by
    the dracut module's own python-bytecode.py with the interpreter that runs it (no docstrings, no
    column tables), so that the interpreter loads it with its sourceless loader, as at boot. Into a
    directory removed at exit; returns that directory, where each source's .pyc sits at the
    source's own absolute path below it."""
    image = tempfile.mkdtemp(prefix="sysextpy-bench-bytecode-", dir="/var/tmp")
    atexit.register(shutil.rmtree, image, True)
    subprocess.run(
        [SYSTEM_PYTHON, "-I", "-X", "no_debug_ranges", os.fspath(BYTECODE_TOOL), image, *sources],
        check=True,
        env=TOOL_ENV,
    )
    return image


_BOOT_FORM: list[str] = []


def boot_form() -> str:
    """The directory to put on sys.path for the package and bench/floor.py, built once per benchmark
    process."""
    if not _BOOT_FORM:
        sources = [os.fspath(p) for p in sorted((REPO / "sysextpy").glob("*.py"))]
        sources.append(os.fspath(BENCH_DIR / "floor.py"))
        _BOOT_FORM.append(_compile_boot_form(sources) + os.fspath(REPO))
    return _BOOT_FORM[0]


def ours_launcher(*, confirming: bool = True) -> str:
    """How sysextpy is started: isolated (-I: no PYTHONPATH, no user site, no cwd on sys.path) and
    without site (-S), from its byte code as the initrd holds it; `confirming=False` goes straight
    to the full run (past the confirming refresh of decide.confirm_refresh)."""
    return (
        f"import sys; sys.path.insert(0, {boot_form()!r}); "
        f"from sysextpy.cli import run_as_process; run_as_process(confirming={confirming})"
    )


def floor_launcher() -> str:
    """How bench/floor.py is started: as sysextpy is (ours_launcher), from its byte code."""
    return f"import sys; sys.path.insert(0, {boot_form() + '/bench'!r}); from floor import run; run()"


HOST_SYSEXT = "/usr/bin/systemd-sysext"
ORACLE_BASE = Path(os.environ.get("SYSEXT_ORACLE_BASE", "/opt/sysext-oracle"))

# Both tools see only this environment: no inherited SYSTEMD_* or PYTHON* variable skews a run.
TOOL_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}

# The release data every fake root and every extension carries (extensions match the root).
OS_RELEASE = 'ID=debian\nVERSION_ID=12\nPRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\n'
EXT_RELEASE = "ID=debian\nVERSION_ID=12\n"

_INSIDE_MARK = "SYSEXTPY_BENCH_INSIDE_NS"


# ---------------------------------------------------------------------------------------------
# The tools under test


@dataclass(frozen=True)
class Tool:
    """One implementation. `argv(cls, *args)` builds a command line for the given class."""

    key: str  # "ours", "v262", "v252"
    label: str  # column heading
    version: str
    prefix: dict[str, tuple[str, ...]]  # class ("sysext", "confext", "all") -> argv prefix

    def has(self, cls: str) -> bool:
        return cls in self.prefix

    def argv(self, cls: str, *args: str) -> list[str]:
        return [*self.prefix[cls], *args]


def _first_line(argv: Sequence[str]) -> str:
    try:
        out = subprocess.run(
            list(argv), capture_output=True, text=True, timeout=30, env=TOOL_ENV, stdin=subprocess.DEVNULL
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"unavailable ({e})"
    lines = (out.stdout or out.stderr).strip().splitlines()
    return lines[0] if lines else f"exit {out.returncode}"


def ours_tool() -> Tool:
    base = (SYSTEM_PYTHON, "-I", "-S", "-c", ours_launcher())
    prefix: dict[str, tuple[str, ...]] = {
        cls: (*base, f"--class={cls}") for cls in ("sysext", "confext", "all")
    }
    return Tool("ours", "sysextpy", _first_line([*base, "--version"]), prefix)


def host_tool() -> Optional[Tool]:
    """Debian's systemd-sysext (v252 on Debian 12): sysext only, no refresh skip, no confext."""
    if not os.access(HOST_SYSEXT, os.X_OK):
        return None
    version = _first_line([HOST_SYSEXT, "--version"])
    key = "v" + version.split()[1] if version.startswith("systemd ") else "host"
    return Tool(key, f"{key} (Debian)", version, {"sysext": (HOST_SYSEXT,)})


def _oracle_tree() -> Optional[Path]:
    wanted = os.environ.get("SYSEXT_ORACLE_VERSION")
    if wanted:
        tree = ORACLE_BASE / wanted
        return tree if (tree / "ORACLE-ENV").is_file() else None
    try:
        trees = [p for p in ORACLE_BASE.iterdir() if p.is_dir() and not p.is_symlink()]
    except OSError:
        return None
    trees = [p for p in trees if (p / "ORACLE-ENV").is_file() and not p.name.endswith(".tmp")]
    if not trees:
        return None

    def version_key(p: Path) -> list[Any]:
        return [(0, int(x)) if x.isdigit() else (1, x) for x in p.name.replace("-", ".").split(".")]

    return max(trees, key=version_key)


def oracle_tool() -> Optional[Tool]:
    """A newer upstream systemd unpacked under ORACLE_BASE/<version>/ (usr/ plus ORACLE-ENV naming its
    loader and library path). Started through that tree's own loader, directly (no wrapper script,
    whose start-up would be charged to upstream)."""
    tree = _oracle_tree()
    if tree is None:
        return None
    env: dict[str, str] = {}
    for line in (tree / "ORACLE-ENV").read_text().splitlines():
        key, eq, value = line.partition("=")
        if eq:
            env[key.strip()] = value.strip().strip("'\"")
    if "ORACLE_LDSO" not in env or "ORACLE_LIBPATH" not in env:
        return None
    libpath = ":".join(os.fspath(tree) + p for p in env["ORACLE_LIBPATH"].split(":") if p)
    prefix: dict[str, tuple[str, ...]] = {}
    for cls, name in (("sysext", "systemd-sysext"), ("confext", "systemd-confext")):
        binary = tree / "usr/bin/systemd-sysext"  # confext is the same binary, told apart by argv[0]
        if not binary.exists():
            return None
        prefix[cls] = (
            os.fspath(tree) + env["ORACLE_LDSO"],
            "--library-path",
            libpath,
            "--argv0",
            name,
            os.fspath(binary),
        )
    version = _first_line([*prefix["sysext"], "--version"])
    key = "v" + version.split()[1] if version.startswith("systemd ") else "oracle"
    return Tool(key, key, version, prefix)


@dataclass
class Tools:
    ours: Tool
    new: Optional[Tool]  # newer upstream (v262): refresh skip, confext
    old: Optional[Tool]  # Debian's (v252)
    notes: list[str] = field(default_factory=list)

    def upstream(self) -> list[Tool]:
        return [t for t in (self.new, self.old) if t is not None]

    def describe(self) -> dict[str, str]:
        return {t.key: t.version for t in (self.ours, self.new, self.old) if t is not None}


def find_tools() -> Tools:
    tools = Tools(ours_tool(), oracle_tool(), host_tool())
    if tools.new is None:
        tools.notes.append(
            f"no newer upstream systemd under {ORACLE_BASE} (see SYSEXT_ORACLE_BASE): no columns for it"
        )
    if tools.old is None:
        tools.notes.append(f"{HOST_SYSEXT} not found: Debian's columns are left out")
    return tools


# ---------------------------------------------------------------------------------------------
# Running and timing


@dataclass(frozen=True)
class Sample:
    wall_ns: int
    cpu_ns: int  # user + system time of the process and every child it waited for
    returncode: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def said(self) -> str:
        """What the tool said about a failure: its first line that says "fail" (a summary like "Failed
        to merge hierarchies" tends to come last and tell less), else its last line."""
        lines = [ln.strip() for ln in (self.stderr + "\n" + self.stdout).splitlines() if ln.strip()]
        failing = [ln for ln in lines if "fail" in ln.lower()]
        said = failing[0] if failing else (lines[-1] if lines else "")
        return said[:240]

    def why(self) -> str:
        return f"exit {self.returncode}: {self.said()}"


class Runner:
    """Starts one command at a time with posix_spawn and times it from spawn to reap.

    posix_spawn + wait4 keep the harness's own share of every sample small and identical for both
    tools, and wait4 hands back the child's CPU time. Output goes to files on /run (tmpfs), which
    cannot fill up like a pipe and never needs a reader thread.
    """

    def __init__(self, scratch: Path) -> None:
        scratch.mkdir(parents=True, exist_ok=True)
        self._out = scratch / "stdout"
        self._err = scratch / "stderr"

    def run(self, argv: Sequence[str], timeout: float = 300.0) -> Sample:
        out_fd = os.open(self._out, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        err_fd = os.open(self._err, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            actions = [
                (os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0),
                (os.POSIX_SPAWN_DUP2, out_fd, 1),
                (os.POSIX_SPAWN_DUP2, err_fd, 2),
            ]
            start = time.perf_counter_ns()
            pid = os.posix_spawn(argv[0], list(argv), TOOL_ENV, file_actions=actions)
            # A hung tool must not hang the whole benchmark.
            watchdog = threading.Timer(timeout, _kill_quietly, (pid,))
            watchdog.start()
            _, status, usage = os.wait4(pid, 0)
            wall = time.perf_counter_ns() - start
            watchdog.cancel()
            stdout = _read_fd(out_fd)
            stderr = _read_fd(err_fd)
        finally:
            os.close(out_fd)
            os.close(err_fd)
        cpu = int((usage.ru_utime + usage.ru_stime) * 1e9)
        return Sample(wall, cpu, os.waitstatus_to_exitcode(status), stdout, stderr)


def _kill_quietly(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass  # it finished just now


def _read_fd(fd: int) -> str:
    os.lseek(fd, 0, os.SEEK_SET)
    chunks = []
    while True:
        chunk = os.read(fd, 1 << 16)
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks).decode("utf-8", "replace")


@dataclass
class Series:
    """The samples of one (case, tool) cell, or the reason it has none."""

    walls_ns: list[int] = field(default_factory=list)
    cpus_ns: list[int] = field(default_factory=list)
    error: Optional[str] = None

    def add(self, wall_ns: int, cpu_ns: int) -> None:
        self.walls_ns.append(wall_ns)
        self.cpus_ns.append(cpu_ns)

    @property
    def failed(self) -> bool:
        return self.error is not None

    def median_ms(self) -> Optional[float]:
        if self.failed or not self.walls_ns:
            return None
        return statistics.median(self.walls_ns) / 1e6

    def cpu_median_ms(self) -> Optional[float]:
        if self.failed or not self.cpus_ns:
            return None
        return statistics.median(self.cpus_ns) / 1e6

    def summary(self) -> dict[str, Any]:
        if self.failed or not self.walls_ns:
            return {"runs": len(self.walls_ns), "error": self.error or "not run"}
        ms = [w / 1e6 for w in self.walls_ns]
        cpu = [c / 1e6 for c in self.cpus_ns]
        return {
            "runs": len(ms),
            "median_ms": round(statistics.median(ms), 3),
            "min_ms": round(min(ms), 3),
            "max_ms": round(max(ms), 3),
            "cpu_median_ms": round(statistics.median(cpu), 3),
            "samples_ms": [round(x, 3) for x in ms],
        }


def ratio(ours: Optional[float], theirs: Optional[float]) -> Optional[float]:
    if ours is None or theirs is None or theirs <= 0:
        return None
    return ours / theirs


def fmt_ms(series: Optional[Series]) -> str:
    if series is None:
        return "-"
    if series.failed:
        return "FAILED"
    if not series.walls_ns:
        return "-"
    ms = [w / 1e6 for w in series.walls_ns]
    return f"{statistics.median(ms):.1f} ({min(ms):.1f}-{max(ms):.1f})"


def fmt_ratio(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.2f}x"


def rotated(items: Sequence[Any], i: int) -> list[Any]:
    """The items in an order that changes every iteration, so no tool always runs first."""
    k = i % len(items) if items else 0
    return list(items[k:]) + list(items[:k])


# ---------------------------------------------------------------------------------------------
# Fake roots


# Short names on purpose: upstream passes all layers in one classic mount option string, which the
# kernel caps at one page, and every character of a name costs one byte per layer there.
def sysext_name(i: int) -> str:
    return f"s{i}"


def confext_name(i: int) -> str:
    return f"c{i}"


def build_root(root: Path, n_sysext: int, n_confext: int) -> None:
    """A minimal Debian 12 root with `n_sysext` directory sysexts in /var/lib/extensions and
    `n_confext` directory confexts in /var/lib/confexts, each a tiny tree with a matching release file.

    sysext sN provides /usr/share/sN/README and /usr/lib/sN/tool; confext cN provides /etc/cN.conf
    and /etc/cN.d/a.conf.
    """
    for sub in ("etc", "usr/bin", "usr/lib", "usr/share", "opt", "var/lib/extensions", "var/lib/confexts"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    (root / "usr/lib/os-release").write_text(OS_RELEASE)
    (root / "etc/os-release").write_text(OS_RELEASE)
    (root / "etc/hostname").write_text("bench\n")
    for i in range(1, n_sysext + 1):
        name = sysext_name(i)
        ext = root / "var/lib/extensions" / name
        (ext / "usr/lib/extension-release.d").mkdir(parents=True)
        (ext / f"usr/lib/extension-release.d/extension-release.{name}").write_text(EXT_RELEASE)
        (ext / "usr/share" / name).mkdir(parents=True)
        (ext / "usr/share" / name / "README").write_text(f"{name}\n")
        (ext / "usr/lib" / name).mkdir()
        (ext / "usr/lib" / name / "tool").write_text("#!/bin/sh\n")
    for i in range(1, n_confext + 1):
        name = confext_name(i)
        ext = root / "var/lib/confexts" / name
        (ext / "etc/extension-release.d").mkdir(parents=True)
        (ext / f"etc/extension-release.d/extension-release.{name}").write_text(EXT_RELEASE)
        (ext / "etc" / f"{name}.conf").write_text(f"# {name}\n")
        (ext / "etc" / f"{name}.d").mkdir()
        (ext / "etc" / f"{name}.d" / "a.conf").write_text("x=1\n")


# ---------------------------------------------------------------------------------------------
# Mount namespace and the mount table


def _mnt_ns(pid: str) -> str:
    return os.readlink(f"/proc/{pid}/ns/mnt")


def in_private_namespace() -> bool:
    """True in the namespace `enter_bench_namespace` made: the mark names the namespace we came from."""
    outer = os.environ.get(_INSIDE_MARK)
    return bool(outer) and _mnt_ns("self") != outer


def enter_bench_namespace() -> None:
    """Re-run this script in a private mount namespace set up for both tools, or return if already there.

    Inside: a fresh tmpfs on /run (both tools keep state there) and then every mount made shared
    again, within this namespace only: upstream assembles its overlays in a child namespace and
    hands them back by propagation, which a private tree would swallow.
    """
    if not os.environ.get(_INSIDE_MARK):
        if os.geteuid() != 0:
            raise SystemExit(f"{sys.argv[0]}: needs root (mounts overlays in a private mount namespace)")
        env = dict(os.environ, **{_INSIDE_MARK: _mnt_ns("self")})
        argv = ["unshare", "-m", "--propagation", "private", sys.executable, *sys.argv]
        os.execvpe("unshare", argv, env)
    if not in_private_namespace():
        # Never make the outer namespace's mounts shared or cover its /run.
        raise SystemExit("refusing to set up mounts: not in a private mount namespace")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=0755,nosuid,nodev", "tmpfs", "/run"], check=True)
    subprocess.run(["mount", "--make-rshared", "/"], check=True)


@contextmanager
def scratch_area(prefix: str) -> Iterator[Path]:
    """A directory for fake roots; a tmpfs of its own when inside the private namespace (it vanishes
    with the namespace), the directory itself is removed afterwards either way."""
    # Short, like the extension names: the root's path is part of upstream's mount option string too.
    path = Path(tempfile.mkdtemp(prefix=f"sxb-{prefix}-", dir="/var/tmp"))
    mounted = False
    try:
        if in_private_namespace():
            subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=0755", "benchroots", path], check=True)
            mounted = True
        yield path
    finally:
        if mounted:
            detach_below(path, include_self=True)
        shutil.rmtree(path, ignore_errors=True)


@dataclass(frozen=True)
class MountEntry:
    mount_id: int
    mount_point: str
    fstype: str


def _unescape(field_: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as octal.
    return field_.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\")


def mountinfo_text() -> str:
    with open("/proc/self/mountinfo") as f:
        return f.read()


def parse_mountinfo(text: str) -> list[MountEntry]:
    entries = []
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        fields = left.split()
        entries.append(MountEntry(int(fields[0]), _unescape(fields[4]), right.split()[0]))
    return entries


def mounts_below(path: Path, include_self: bool = False, text: Optional[str] = None) -> list[MountEntry]:
    base = os.path.realpath(path)
    found = []
    for e in parse_mountinfo(text if text is not None else mountinfo_text()):
        if e.mount_point.startswith(base + "/") or (include_self and e.mount_point == base):
            found.append(e)
    return found


def merged_hierarchies(root: Path) -> set[str]:
    """Hierarchies of `root` (relative, like "usr") that currently have an overlay on top."""
    base = os.path.realpath(root)
    return {
        os.path.relpath(e.mount_point, base)
        for e in mounts_below(root)
        if e.fstype == "overlay" and "/" not in os.path.relpath(e.mount_point, base)
    }


def detach_below(path: Path, include_self: bool = False) -> None:
    """Lazily detach whatever a failed run left mounted below `path`, innermost first."""
    for _ in range(1000):  # stacked mounts on one point need one detach each
        entries = mounts_below(path, include_self)
        if not entries:
            return
        for e in sorted(entries, key=lambda e: (e.mount_point.count("/"), e.mount_id), reverse=True):
            subprocess.run(["umount", "-l", e.mount_point], stderr=subprocess.DEVNULL, check=False)


# ---------------------------------------------------------------------------------------------
# Output


def host_info() -> dict[str, Any]:
    return {
        "kernel": platform.release(),
        "cpus": os.cpu_count(),
        "python": _first_line([SYSTEM_PYTHON, "--version"]),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        # Other work on the machine shows up as noise: say how busy it was.
        "loadavg": [round(x, 2) for x in os.getloadavg()],
    }


def write_results(name: str, data: dict[str, Any]) -> str:
    """Write bench/results/<name>.json; returns where, or why not (the tables are printed anyway)."""
    path = RESULTS_DIR / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    try:
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
        tmp.replace(path)
    except OSError as e:
        return f"not written ({path}: {e.strerror})"
    return os.fspath(path)


def format_table(headers: Sequence[str], rows: Iterable[Sequence[str]], left: int = 2) -> str:
    """A plain text table; the first `left` columns are labels (left-aligned), the rest numbers."""
    rows = [list(r) for r in rows]
    widths = [len(h) for h in headers]
    for r in rows:
        for i, cell in enumerate(r):
            widths[i] = max(widths[i], len(cell))

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            c.ljust(w) if i < left else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))
        ).rstrip()

    out = [line(headers), line(["-" * w for w in widths])]
    out.extend(line(r) for r in rows)
    return "\n".join(out)


def print_header(title: str, tools: Tools) -> None:
    print(f"\n== {title} ==")
    print(
        "   load average now: "
        + ", ".join(f"{x:.2f}" for x in os.getloadavg())
        + f" on {os.cpu_count()} CPUs"
    )
    for key, version in tools.describe().items():
        print(f"   {key}: {version}")
    print(f"   sysextpy runs as the initrd holds it: {SYSTEM_PYTHON} -IS, byte code only ({boot_form()})")
    for note in tools.notes:
        print(f"   note: {note}")


@dataclass
class Cell:
    """One row of a result table: a tool's series in one case."""

    label: str
    series: Series
    ours: bool = False
    key: str = ""  # the tool's key, so that upstream cells can serve as baselines


def case_rows(
    case: str, cells: Sequence[Cell], baselines: Sequence[tuple[str, Optional[Series]]]
) -> list[list[str]]:
    """Rows `case, tool, median, min, max, cpu, ours/<baseline>..., cpu ratios...`; ratios only on our
    rows. Wall time is what a boot waits for; the CPU ratio is steadier when the machine is busy."""
    rows = []
    for c in cells:
        s = c.series
        if s.failed or not s.walls_ns:
            stats = ["FAILED" if s.failed else "-", "", "", ""]
        else:
            ms = [w / 1e6 for w in s.walls_ns]
            stats = [
                f"{statistics.median(ms):.1f}",
                f"{min(ms):.1f}",
                f"{max(ms):.1f}",
                f"{statistics.median(cpu / 1e6 for cpu in s.cpus_ns):.1f}",
            ]
        ratios = [
            fmt_ratio(ratio(s.median_ms(), b.median_ms() if b is not None else None)) if c.ours else ""
            for _, b in baselines
        ]
        cpu_ratios = [
            fmt_ratio(ratio(s.cpu_median_ms(), b.cpu_median_ms() if b is not None else None))
            if c.ours
            else ""
            for _, b in baselines
        ]
        rows.append([case, c.label, *stats, *ratios, *cpu_ratios])
    return rows


def table_headers(baselines: Sequence[tuple[str, Optional[Series]]]) -> list[str]:
    return [
        "case",
        "tool",
        "median ms",
        "min",
        "max",
        "cpu ms",
        *[f"ours/{k}" for k, _ in baselines],
        *[f"cpu ours/{k}" for k, _ in baselines],
    ]


def failure_notes(cases: Sequence[tuple[str, Sequence[Cell]]]) -> list[str]:
    return [
        f"{case}, {c.label}: {c.series.error}" for case, cells in cases for c in cells if c.series.failed
    ]


def baselines_of(cells: Sequence[Cell], keys: Sequence[str]) -> list[tuple[str, Optional[Series]]]:
    found = {c.key: c.series for c in cells if not c.ours and c.key}
    return [(k, found.get(k)) for k in keys]


def case_results(
    case: str, cells: Sequence[Cell], baselines: Sequence[tuple[str, Optional[Series]]], **extra: Any
) -> list[dict[str, Any]]:
    """JSON entries for one case: each tool's summary, and on our rows the ratios to each baseline."""
    entries = []
    for c in cells:
        entry: dict[str, Any] = {"case": case, "tool": c.label, **extra, **c.series.summary()}
        if c.ours:
            ratios, cpu_ratios = {}, {}
            for k, b in baselines:
                r = ratio(c.series.median_ms(), b.median_ms() if b is not None else None)
                ratios[f"ours/{k}"] = None if r is None else round(r, 3)
                r = ratio(c.series.cpu_median_ms(), b.cpu_median_ms() if b is not None else None)
                cpu_ratios[f"ours/{k}"] = None if r is None else round(r, 3)
            entry["ratios"] = ratios
            entry["cpu_ratios"] = cpu_ratios
        entries.append(entry)
    return entries
