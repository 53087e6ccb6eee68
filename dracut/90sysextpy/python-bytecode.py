# SPDX-License-Identifier: LGPL-2.1-or-later
"""Compile Python sources into an image as byte code only, without the sources.

Run at image build time by module-setup.sh, with the interpreter the initrd will run, as
    python3 -I -X no_debug_ranges python-bytecode.py IMAGE SOURCE...
and writes, for each SOURCE (an absolute path, e.g. /usr/lib/python3.11/json/decoder.py), the file
IMAGE/usr/lib/python3.11/json/decoder.pyc; the source itself is not copied.

- Where: the legacy layout, beside where the source would be. With no source there, the
  interpreter's path finder loads `name.pyc` itself (its sourceless loader); byte code in
  __pycache__/ is only ever used together with a source.
- What: the code as the interpreter compiles it, with the file name it has in the root (so a
  traceback names /usr/lib/python3/dist-packages/sysextpy/cli.py), line numbers (tracebacks
  still say file and line; -X no_debug_ranges leaves out only the column ranges Python >= 3.11
  adds to every instruction) and asserts, but without docstrings: nothing on the boot path reads
  them, and the standard library is tested without them (python3 -OO). This is what -OO would
  compile, assertions kept.
- The header: hash-based and marked checked (PEP 552), with the SipHash of the source that the
  interpreter itself computes. A sourceless load never compares it with anything, so checked or
  unchecked makes no difference at boot; a hash, unlike a file time, keeps the image
  reproducible and lets anyone check each file against the root's source
  (importlib.util.source_hash), and "checked" means that should the file ever sit next to a
  source, it is never run in place of a different one.
"""

from __future__ import annotations

import ast
import importlib.util
import marshal
import os
import sys

# PEP 552 flags: bit 0, the header holds a source hash; bit 1, the loader checks it.
HASH_BASED_CHECKED = 0b11


def without_docstrings(tree: ast.Module) -> ast.Module:
    """The module with the docstrings of it and of its classes and functions removed; a body that
    was only a docstring becomes `pass`, on the same line."""
    for node in ast.walk(tree):
        if not isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        body = node.body
        first = body[0] if body else None
        if (
            isinstance(first, ast.Expr)
            and isinstance(first.value, ast.Constant)
            and isinstance(first.value.value, str)
        ):
            if len(body) > 1:
                del body[0]
            else:
                body[0] = ast.copy_location(ast.Pass(), first)
    return tree


def byte_code(source: bytes, filename: str) -> bytes:
    tree = without_docstrings(ast.parse(source, filename))
    code = compile(tree, filename, "exec", dont_inherit=True)
    header = importlib.util.MAGIC_NUMBER + HASH_BASED_CHECKED.to_bytes(4, "little")
    return header + importlib.util.source_hash(source) + marshal.dumps(code)


def main(argv: list[str]) -> int:
    if len(argv) < 1 or not all(os.path.isabs(a) for a in argv):
        print("usage: python3 -I -X no_debug_ranges python-bytecode.py IMAGE SOURCE...", file=sys.stderr)
        return 2
    image, sources = argv[0], argv[1:]
    for source in sources:
        if not source.endswith(".py"):
            print(f"python-bytecode: {source!r} is not a Python source (*.py)", file=sys.stderr)
            return 2
        with open(source, "rb") as f:
            data = f.read()
        target = image + source[: -len(".py")] + ".pyc"
        os.makedirs(os.path.dirname(target), mode=0o755, exist_ok=True)
        # Written aside and renamed: an interrupted build leaves no truncated byte code behind.
        partial = target + ".partial"
        with open(partial, "wb") as f:
            f.write(byte_code(data, source))
        os.chmod(partial, 0o644)
        os.replace(partial, target)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
