# SPDX-License-Identifier: LGPL-2.1-or-later
"""Architecture names in systemd's vocabulary (`x86-64`, `arm64`, ...).

They appear in `.v/` entry names (`foo_1.2_x86-64.raw`) and in `ARCHITECTURE=` of
extension-release files, so they must be spelled exactly like upstream's table.
"""

from __future__ import annotations

import os
import sys

from .errors import ParseError

TYPE_CHECKING = False  # typing is not imported at run time: it costs start-up time
if TYPE_CHECKING:
    from typing import Optional

ARCHITECTURES: tuple[str, ...] = (
    "x86-64",
    "x86",
    "arm64",
    "arm",
    "arm64-be",
    "arm-be",
    "alpha",
    "arc",
    "arc-be",
    "cris",
    "ia64",
    "loongarch64",
    "m68k",
    "mips",
    "mips-le",
    "mips64",
    "mips64-le",
    "nios2",
    "parisc",
    "parisc64",
    "ppc",
    "ppc-le",
    "ppc64",
    "ppc64-le",
    "riscv32",
    "riscv64",
    "s390",
    "s390x",
    "sh",
    "sh64",
    "sparc",
    "sparc64",
    "tilegx",
)

# uname(2) machine strings, cleaned up the way upstream does: CPU families, not CPU features.
_MACHINES: dict[str, str] = {
    "x86_64": "x86-64",
    "i686": "x86",
    "i586": "x86",
    "i486": "x86",
    "i386": "x86",
    "aarch64": "arm64",
    "aarch64_be": "arm64-be",
    "alpha": "alpha",
    "arc": "arc",
    "arceb": "arc-be",
    "crisv32": "cris",
    "ia64": "ia64",
    "loongarch64": "loongarch64",
    "m68k": "m68k",
    "nios2": "nios2",
    "parisc": "parisc",
    "parisc64": "parisc64",
    "ppc": "ppc",
    "ppcle": "ppc-le",
    "ppc64": "ppc64",
    "ppc64le": "ppc64-le",
    "riscv32": "riscv32",
    "riscv64": "riscv64",
    "s390": "s390",
    "s390x": "s390x",
    "sh2": "sh",
    "sh2a": "sh",
    "sh3": "sh",
    "sh4": "sh",
    "sh4a": "sh",
    "sh5": "sh64",
    "sparc": "sparc",
    "sparc64": "sparc64",
    "tilegx": "tilegx",
}
for _v in ("armv4", "armv4t", "armv5t", "armv5te", "armv5tej", "armv6", "armv7", "armv7m", "armv8"):
    # The final letter of 32-bit ARM machine names is the byte order.
    _MACHINES[_v + "l"] = "arm"
    _MACHINES[_v + "b"] = "arm-be"
del _v

# What a native binary of this architecture can also run, as systemd's build defines it (one
# secondary architecture at most). Big-endian arm64 and the LE/BE variants have none.
_SECONDARY: dict[str, tuple[str, ...]] = {
    "x86-64": ("x86",),
    "arm64": ("arm",),
    "s390x": ("s390",),
    "ppc64": ("ppc",),
    "ppc64-le": ("ppc-le",),
}


def native_architecture(machine: Optional[str] = None) -> str:
    """Map a uname machine string (default: this host's) to systemd's architecture name.

    Raises ParseError for a machine string upstream does not know either (it would abort there).
    """
    if machine is None:
        machine = os.uname().machine
    # uname says "mips"/"mips64"/"riscv" for both byte orders/word sizes; upstream decides those
    # at build time, the closest run-time equivalent is how this interpreter was built.
    little = sys.byteorder == "little"
    if machine == "mips":
        return "mips-le" if little else "mips"
    if machine == "mips64":
        return "mips64-le" if little else "mips64"
    if machine == "riscv":
        return "riscv64" if sys.maxsize > 2**32 else "riscv32"
    arch = _MACHINES.get(machine)
    if arch is None:
        raise ParseError(
            f"Unknown machine type {machine!r} reported by uname()",
            hint="it has no name in systemd's architecture table",
        )
    return arch


def secondary_architectures(native: str) -> tuple[str, ...]:
    """Architectures accepted after the native one in `.v/` picks, best first."""
    return _SECONDARY.get(native, ())


def is_architecture(name: str) -> bool:
    return name in _ARCH_SET


_ARCH_SET = frozenset(ARCHITECTURES)
