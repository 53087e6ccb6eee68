# SPDX-License-Identifier: LGPL-2.1-or-later
"""Programs of this machine copied into a fake root, for hooks that run chrooted in it.

Standard library only: the benchmarks use it too, run by the system's python3 without pytest.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

# What a root needs for hooks to run chrooted in it (sysextpy/hooks.py): /run is where they are
# shown their trees, /tmp their scratch space, the rest as a program expects.
HOOK_ROOT_DIRS = ("run", "tmp", "proc", "sys", "dev")


def equip_root(root: Path, *programs: str) -> None:
    """Make a fake root one that hooks can run in: the directories HOOK_ROOT_DIRS, merged-/usr links
    (bin, sbin, lib, lib64 into usr/), and copies of the host's `programs` (found on PATH) with the
    libraries they load, at the paths the host has them. Hooks run the root's tools, not the host's."""
    for name in HOOK_ROOT_DIRS:
        (root / name).mkdir(exist_ok=True)
    for name in ("bin", "sbin", "lib", "lib64"):
        if not os.path.lexists(root / name):
            (root / "usr" / name).mkdir(parents=True, exist_ok=True)
            (root / name).symlink_to(f"usr/{name}")
    for program in programs:
        found = shutil.which(program)
        assert found is not None, f"{program}: not on this machine's PATH"
        ldd = subprocess.run(["ldd", found], capture_output=True, text=True, check=False)
        # "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)", "/lib64/ld-linux-x86-64.so.2 (0x...)"
        # (a script or a static program: "not a dynamic executable", exit status 1)
        loaded = ldd.stdout if ldd.returncode == 0 else ""
        libraries = re.findall(r"^\s*(?:\S+ => )?(/\S+) \(0x", loaded, re.M)
        for path in [found, *libraries]:
            dest = root / path.lstrip("/")
            if not dest.exists():
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(os.path.realpath(path), dest)
