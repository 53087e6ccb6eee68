# SPDX-License-Identifier: LGPL-2.1-or-later
from __future__ import annotations

import os
import re
import sys

import pytest

from sysextpy.arch import ARCHITECTURES, is_architecture, native_architecture, secondary_architectures
from sysextpy.errors import ParseError


@pytest.mark.parametrize(
    "machine,arch",
    [
        ("x86_64", "x86-64"),
        ("i686", "x86"),
        ("i586", "x86"),
        ("i486", "x86"),
        ("i386", "x86"),
        ("aarch64", "arm64"),
        ("aarch64_be", "arm64-be"),
        ("armv7l", "arm"),
        ("armv7b", "arm-be"),
        ("armv6l", "arm"),
        ("armv5tejl", "arm"),
        ("armv8l", "arm"),
        ("armv7ml", "arm"),
        ("ppc64le", "ppc64-le"),
        ("ppc64", "ppc64"),
        ("ppc", "ppc"),
        ("ppcle", "ppc-le"),
        ("s390x", "s390x"),
        ("s390", "s390"),
        ("riscv64", "riscv64"),
        ("riscv32", "riscv32"),
        ("loongarch64", "loongarch64"),
        ("parisc64", "parisc64"),
        ("sparc64", "sparc64"),
        ("sh4a", "sh"),
        ("sh5", "sh64"),
        ("crisv32", "cris"),
        ("arceb", "arc-be"),
        ("m68k", "m68k"),
        ("alpha", "alpha"),
        ("ia64", "ia64"),
        ("nios2", "nios2"),
        ("tilegx", "tilegx"),
    ],
)
def test_machine_mapping(machine: str, arch: str) -> None:
    assert native_architecture(machine) == arch


def test_mips_byte_order_comes_from_the_build() -> None:
    little = sys.byteorder == "little"
    assert native_architecture("mips") == ("mips-le" if little else "mips")
    assert native_architecture("mips64") == ("mips64-le" if little else "mips64")


@pytest.mark.parametrize("machine", ["", "x86-64", "X86_64", "amd64", "armv7", "pdp11"])
def test_unknown_machine_is_an_error(machine: str) -> None:
    with pytest.raises(ParseError, match=re.escape(repr(machine))):
        native_architecture(machine)


def test_default_is_this_host() -> None:
    assert native_architecture() == native_architecture(os.uname().machine)


def test_every_mapping_lands_in_the_table() -> None:
    machines = ["x86_64", "aarch64", "armv7l", "armv7b", "ppc64le", "mips", "mips64", "riscv", "sh2a"]
    for machine in machines:
        assert native_architecture(machine) in ARCHITECTURES


@pytest.mark.parametrize(
    "native,secondary",
    [
        ("x86-64", ("x86",)),
        ("arm64", ("arm",)),
        ("s390x", ("s390",)),
        # Each ppc64 flavour runs its own byte order's 32-bit code only (upstream's build table).
        ("ppc64", ("ppc",)),
        ("ppc64-le", ("ppc-le",)),
        ("arm64-be", ()),
        ("x86", ()),
        ("riscv64", ()),
        ("loongarch64", ()),
        ("not-an-arch", ()),
    ],
)
def test_secondary(native: str, secondary: tuple[str, ...]) -> None:
    assert secondary_architectures(native) == secondary


def test_table() -> None:
    assert len(ARCHITECTURES) == 33
    assert len(set(ARCHITECTURES)) == len(ARCHITECTURES)
    assert all(is_architecture(a) for a in ARCHITECTURES)
    assert not is_architecture("x86_64")
    assert not is_architecture("")
    assert not is_architecture("X86-64")
