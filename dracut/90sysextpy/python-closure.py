# SPDX-License-Identifier: LGPL-2.1-or-later
"""List the files the initrd needs to run sysextpy: its package and the Python modules it imports.

Run at image build time by module-setup.sh, with the interpreter the initrd will run, as
    python3 -I python-closure.py LAUNCHER GENERATOR
and prints absolute paths, one a line: every file of the sysextpy package the launcher runs, and
every standard-library module (source or extension) that is imported, directly or not, by

- the interpreter's own start-up (encodings, site, ...), as the launcher starts it;
- any module of the package and the generator, whether the import sits at the top of a file or in
  a function on an error path (those are the ones a trace of one run would miss);
- a `plan` run against an empty root and `--version`, for imports made by name at run time;
- systemd-python, when it is installed (journal logging; optional).

The imports are made in a fresh interpreter so that nothing this script itself uses is counted.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Iterable
from pathlib import Path

# Start-up codecs that an interpreter may look up by name, whatever the build host's locale says.
# Codecs are looked up by name at run time (GPT partition names are UTF-16), which no import scan
# can see; the interpreter's start-up needs the first ones.
ALWAYS = (
    "encodings",
    "encodings.aliases",
    "encodings.utf_8",
    "encodings.ascii",
    "encodings.latin_1",
    "encodings.utf_16_le",
)

# Runs in the fresh interpreter: load the launcher without running main(), import the names, run
# the cheap verbs, then report every loaded module's file.
CHILD = r"""
import importlib, io, os, runpy, sys
launcher, fake_root, names = sys.argv[1], sys.argv[2], sys.argv[3:]
runpy.run_path(launcher, run_name="sysextpy_launcher")
for name in names:
    try:
        importlib.import_module(name)
    except Exception:
        pass  # optional (systemd-python), or an attribute imported with "from x import y"
main = importlib.import_module("sysextpy.cli").main
real_stdout, real_stderr = sys.stdout, sys.stderr
for argv in (["--version"], ["--root=" + fake_root, "--state=" + fake_root + "/state.json", "plan"]):
    sys.argv = ["sysextpy", *argv]
    sys.stdout = sys.stderr = io.StringIO()
    try:
        main()
    except BaseException:
        pass  # only the imports matter here
sys.stdout, sys.stderr = real_stdout, real_stderr
print("package", os.path.dirname(sys.modules["sysextpy"].__file__))
for name, module in sorted(sys.modules.items()):
    path = getattr(module, "__file__", None)
    if path:
        print("module", name, path)
"""


def imported_names(path: Path, package: str) -> set[str]:
    """Absolute names of every module `path` may import, at any depth of the code."""
    tree = ast.parse(path.read_bytes(), os.fspath(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = package + (f".{base}" if base else "")
            names.add(base)
            # "from x import y" may name a submodule; the child tries and ignores attributes.
            names.update(f"{base}.{alias.name}" for alias in node.names if alias.name != "*")
    return names


def run_child(launcher: Path, fake_root: Path, names: Iterable[str]) -> tuple[Path, dict[str, Path]]:
    proc = subprocess.run(
        [sys.executable, "-I", "-c", CHILD, os.fspath(launcher), os.fspath(fake_root), *sorted(names)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        sys.exit(f"python-closure: loading {launcher} failed:\n{proc.stderr}")
    package = Path()
    modules: dict[str, Path] = {}
    for line in proc.stdout.splitlines():
        kind, _, rest = line.partition(" ")
        if kind == "package":
            package = Path(rest)
        elif kind == "module":
            name, _, path = rest.partition(" ")
            modules[name] = Path(path)
    return package, modules


def closure(launcher: Path, generator: Path) -> list[Path]:
    # First pass: find the package the launcher runs, to know what to scan.
    with tempfile.TemporaryDirectory(prefix="sysextpy-closure-") as tmp:
        fake_root = Path(tmp)
        (fake_root / "usr/lib").mkdir(parents=True)
        (fake_root / "usr/lib/os-release").write_text("ID=closure\nVERSION_ID=1\n")
        package, _ = run_child(launcher, fake_root, ())
        names = set(ALWAYS)
        for source in [*sorted(package.glob("*.py")), generator]:
            names |= imported_names(source, package.name)
        _, modules = run_child(launcher, fake_root, names)

    stdlib = [Path(sysconfig.get_path(key)) for key in ("stdlib", "platstdlib")]
    third_party = [package]
    systemd = modules.get("systemd")
    if systemd is not None:
        third_party.append(systemd.parent)
    files: set[Path] = set(package.glob("*.py"))
    for path in modules.values():
        if path.suffix not in (".py", ".so"):
            continue
        # Only the standard library and the packages asked for: a .pth hook of the build host
        # (setuptools' _distutils_hack, say) is not part of what sysextpy needs.
        in_stdlib = any(path.is_relative_to(d) for d in stdlib)
        if in_stdlib and not {"site-packages", "dist-packages"} & set(path.parts):
            files.add(path)
        elif any(path.is_relative_to(d) for d in third_party):
            files.add(path)
    return sorted(files)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python3 -I python-closure.py LAUNCHER GENERATOR", file=sys.stderr)
        return 2
    for path in closure(Path(argv[0]), Path(argv[1])):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
