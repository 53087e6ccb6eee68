# SPDX-License-Identifier: LGPL-2.1-or-later
"""List the files the initrd needs to run sysextpy: its package and the Python modules it imports.

Run at image build time by module-setup.sh, with the interpreter the initrd will run, as
    python3 -I python-closure.py LAUNCHER GENERATOR
and prints absolute paths, one a line: every file of the sysextpy package the launcher runs, and
every standard-library module (source or extension) that is imported, directly or not, by

- the interpreter's own start-up (encodings, site, ...);
- any module of the package and the generator, whether the import sits at the top of a file or in
  a function on an error path (those are the ones a trace of one run would miss);
- a `plan` run against an empty root and `--version`, for imports made by name at run time;
- systemd-python, when it is installed (journal logging; optional).

Left out, because they are never read from a file at run time:
- imports under `if TYPE_CHECKING:` (only the type checker follows them);
- modules the interpreter has frozen into its binary (Python >= 3.11 freezes os, site, codecs,
  io, runpy, importlib's bootstrap...): it loads those from itself, whatever is on disk. Only
  os is listed anyway: the interpreter looks for lib/pythonX.Y/os.py or os.pyc to find its
  prefix, and warns on every start without it;
- OPTIONAL: modules that the standard library imports only when they are there, and that
  nothing here uses.

The imports are made in a fresh interpreter so that nothing this script itself uses is counted.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Iterable, Iterator
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

# The interpreter's prefix landmark (see above): installed even when the module is frozen.
LANDMARK = "os"

# Imported inside "try: ... except ImportError" by modules that work without them:
# - by shutil, for its archive formats (bz2 and xz tarballs and zips), which sysextpy never makes
#   or unpacks; with them go _compression and the libraries of their extension modules;
# - by hashlib, for OpenSSL's implementations: without it hashlib takes the interpreter's own
#   (sha1, sha2, sha3, blake2, md5), which is all that sysextpy asks of it (certificate
#   fingerprints and one dm-verity hash block per image).
OPTIONAL = ("bz2", "_bz2", "lzma", "_lzma", "_compression", "_hashlib")

# Runs in the fresh interpreter: load the launcher without running main(), import the names, run
# the cheap verbs, then report every loaded module's file. The launcher is run as the interpreter
# runs a script, not with runpy, whose imports (pkgutil, typing) the boot path never makes.
CHILD = r"""
import importlib, io, os, sys
launcher, fake_root, names = sys.argv[1], sys.argv[2], sys.argv[3:]
with open(launcher, "rb") as f:
    exec(compile(f.read(), launcher, "exec"), {"__name__": "sysextpy_launcher", "__file__": launcher})
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
        origin = getattr(getattr(module, "__spec__", None), "origin", None)
        print("frozen" if origin == "frozen" else "module", name, path)
"""


def type_checking_only(node: ast.AST) -> bool:
    """`if TYPE_CHECKING:` or `if typing.TYPE_CHECKING:`: a block no interpreter runs."""
    if not isinstance(node, ast.If):
        return False
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def walk_run_time(tree: ast.AST) -> Iterator[ast.AST]:
    """Every node of `tree`, as ast.walk gives them, except the bodies of TYPE_CHECKING blocks
    (their else branches do run)."""
    todo = [tree]
    while todo:
        node = todo.pop()
        yield node
        if type_checking_only(node):
            assert isinstance(node, ast.If)
            todo.extend(node.orelse)
        else:
            todo.extend(ast.iter_child_nodes(node))


def imported_names(path: Path, package: str) -> set[str]:
    """Absolute names of every module `path` may import at run time, at any depth of the code."""
    tree = ast.parse(path.read_bytes(), os.fspath(path))
    names: set[str] = set()
    for node in walk_run_time(tree):
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


def run_child(
    launcher: Path, fake_root: Path, names: Iterable[str]
) -> tuple[Path, dict[str, Path], set[str]]:
    """The package's directory, the file of every module loaded, and which of them are frozen."""
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
    frozen: set[str] = set()
    for line in proc.stdout.splitlines():
        kind, _, rest = line.partition(" ")
        if kind == "package":
            package = Path(rest)
        elif kind in ("module", "frozen"):
            name, _, path = rest.partition(" ")
            modules[name] = Path(path)
            if kind == "frozen":
                frozen.add(name)
    return package, modules, frozen


def closure(launcher: Path, generator: Path) -> list[Path]:
    # First pass: find the package the launcher runs, to know what to scan.
    with tempfile.TemporaryDirectory(prefix="sysextpy-closure-") as tmp:
        fake_root = Path(tmp)
        (fake_root / "usr/lib").mkdir(parents=True)
        (fake_root / "usr/lib/os-release").write_text("ID=closure\nVERSION_ID=1\n")
        package, _, _ = run_child(launcher, fake_root, ())
        names = set(ALWAYS)
        for source in [*sorted(package.glob("*.py")), generator]:
            names |= imported_names(source, package.name)
        _, modules, frozen = run_child(launcher, fake_root, names)
    # What the package asks for by name stays, even when the standard library holds it optional.
    left_out = (frozen - {LANDMARK}) | {m for m in modules if m.split(".")[0] in OPTIONAL and m not in names}

    stdlib = [Path(sysconfig.get_path(key)) for key in ("stdlib", "platstdlib")]
    third_party = [package]
    systemd = modules.get("systemd")
    if systemd is not None:
        third_party.append(systemd.parent)
    files: set[Path] = set(package.glob("*.py"))
    for name, path in modules.items():
        if name in left_out or path.suffix not in (".py", ".so"):
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
