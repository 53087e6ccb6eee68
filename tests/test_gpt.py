# SPDX-License-Identifier: LGPL-2.1-or-later
"""GPT parsing from bytes and the Discoverable Partitions choice of partitions."""

from __future__ import annotations

import json
import re
import struct
import subprocess
import uuid
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sysextpy.gpt import (
    FLAG_NO_AUTO,
    FLAG_READ_ONLY,
    LINUX_GENERIC,
    GptError,
    Guid,
    known_architectures,
    parse_partition_table,
    partition_role,
    select_partitions,
    type_uuid,
)
from tests.conftest import require_tools

SD_GPT_H = Path("/usr/include/systemd/sd-gpt.h")


@dataclass
class Entry:
    type_id: uuid.UUID
    first: int
    last: int
    part_uuid: uuid.UUID = uuid.UUID(int=1)
    name: str = ""
    attrs: int = 0


def gpt_bytes(
    entries: Sequence[Entry], *, sector: int = 512, sectors: int = 4096, count: int = 128
) -> bytearray:
    """A GPT image written by hand (the tests' own writer, so every field can be bent)."""
    image = bytearray(sector * sectors)
    table = bytearray(count * 128)
    for i, e in enumerate(entries):
        name = e.name.encode("utf-16-le")[:72]
        struct.pack_into(
            "<16s16sQQQ72s",
            table,
            i * 128,
            e.type_id.bytes_le,
            e.part_uuid.bytes_le,
            e.first,
            e.last,
            e.attrs,
            name,
        )
    entries_lba = 2
    first_usable = entries_lba + -(-len(table) // sector)
    header = bytearray(92)
    struct.pack_into(
        "<8sIIIIQQQQ16sQIII",
        header,
        0,
        b"EFI PART",
        0x00010000,
        92,
        0,
        0,
        1,
        sectors - 1,
        first_usable,
        sectors - first_usable - 1,
        uuid.UUID(int=7).bytes_le,
        entries_lba,
        count,
        128,
        zlib.crc32(table),
    )
    struct.pack_into("<I", header, 16, zlib.crc32(header))
    image[sector : sector + 92] = header
    image[entries_lba * sector : entries_lba * sector + len(table)] = table
    return image


def root(arch: str = "x86-64") -> uuid.UUID:
    return type_uuid("root", arch)


# --------------------------------------------------------------------------------------------------
# Partition types


def test_type_table_matches_systemd_header() -> None:
    require_tools(str(SD_GPT_H))
    text = SD_GPT_H.read_text()
    pattern = (
        r"#define SD_GPT_(ROOT|USR)_([A-Z0-9_]+?)(_VERITY_SIG|_VERITY)?\s+SD_ID128_MAKE\(([0-9a-f,]+)\)"
    )
    seen = 0
    for kind, arch, suffix, hexbytes in re.findall(pattern, text):
        role = kind.lower() + (suffix or "").lower().replace("_", "-")
        name = arch.lower().replace("_", "-")
        expected = uuid.UUID(hexbytes.replace(",", ""))
        assert type_uuid(role, name) == expected, (role, name)
        assert partition_role(expected) == (role, name)
        seen += 1
    assert seen == 6 * len(known_architectures())


@pytest.mark.parametrize(
    "role, arch, text",
    [
        ("root", "x86-64", "4f68bce3-e8cd-4db1-96e7-fbcaf984b709"),
        ("usr", "x86-64", "8484680c-9521-48c6-9c11-b0720656f69e"),
        ("root-verity", "x86-64", "2c7357ed-ebd2-46d9-aec1-23d437ec2bf5"),
        ("root-verity-sig", "x86-64", "41092b05-9fc8-4523-994f-2def0408b176"),
        ("root", "arm64", "b921b045-1df0-41c3-af44-4c6f280d3fae"),
        ("usr-verity-sig", "arm64", "c23ce4ff-44bd-4b00-b2d4-b41b3419e02a"),
        ("root", "x86", "44479540-f297-41b2-9af7-d131d5f0458a"),
        ("root", "arm", "69dad710-2ce4-4e3c-b16c-21a1d49abed3"),
        ("root", "riscv64", "72ec70a6-cf74-40e6-bd49-4bda08e8f224"),
        ("root", "s390x", "5eead9a9-fe09-4a1e-a1d7-520d00531306"),
        ("root", "ppc64-le", "c31c45e6-3f39-412e-80fb-4809c4980599"),
        ("root", "loongarch64", "77055800-792c-4f94-b39a-98c91b762bb6"),
    ],
)
def test_well_known_types(role: str, arch: str, text: str) -> None:
    assert type_uuid(role, arch) == uuid.UUID(text)
    assert partition_role(uuid.UUID(text)) == (role, arch)


def test_other_types() -> None:
    assert partition_role(uuid.UUID("933ac7e1-2eb4-4f13-b844-0e14e2aef915")) == ("home", None)
    assert partition_role(uuid.UUID("c12a7328-f81f-11d2-ba4b-00a0c93ec93b")) == ("esp", None)
    assert partition_role(LINUX_GENERIC) is None
    assert partition_role(uuid.uuid4()) is None


# --------------------------------------------------------------------------------------------------
# Parsing


@pytest.mark.parametrize("sector", [512, 4096])
def test_parse_hand_written_table(sector: int) -> None:
    pu = uuid.uuid4()
    image = gpt_bytes(
        [
            Entry(root(), 40, 59, pu, "root-x86-64", FLAG_READ_ONLY),
            Entry(LINUX_GENERIC, 60, 99, name="data"),
        ],
        sector=sector,
        sectors=128,
        count=4,
    )
    table = parse_partition_table(bytes(image))
    assert table.header.sector_size == sector
    assert table.header.disk_uuid == uuid.UUID(int=7)
    first, second = table.partitions
    assert (first.number, first.uuid, first.name, first.read_only, first.no_auto) == (
        1,
        pu,
        "root-x86-64",
        True,
        False,
    )
    assert (first.offset, first.size) == (40 * sector, 20 * sector)
    assert first.role == ("root", "x86-64")
    assert (second.number, second.type_uuid, second.offset) == (2, LINUX_GENERIC, 60 * sector)
    assert second.describe() == "partition #2 ('data')"


def test_empty_slots_keep_their_numbers() -> None:
    image = gpt_bytes([Entry(uuid.UUID(int=0), 0, 0), Entry(root(), 40, 59)], sectors=128, count=4)
    (p,) = parse_partition_table(bytes(image)).partitions
    assert p.number == 2


def test_parse_matches_sfdisk(tmp_path: Path) -> None:
    require_tools("sfdisk")
    image = tmp_path / "disk.raw"
    image.write_bytes(b"\0" * (8 << 20))
    script = (
        "label: gpt\n"
        f'size=2048, type={root()}, name="root-x86-64", attrs="GUID:60"\n'
        f'size=4096, type={type_uuid("root-verity", "x86-64")}, name="root-x86-64-verity"\n'
        f'size=32, type={type_uuid("root-verity-sig", "x86-64")}, name="sig", attrs="GUID:63"\n'
    )
    subprocess.run(
        ["sfdisk", "-q", "--no-reread", "--no-tell-kernel", str(image)], input=script.encode(), check=True
    )
    dump = json.loads(
        subprocess.run(["sfdisk", "--json", str(image)], capture_output=True, check=True).stdout
    )
    table = parse_partition_table(image.read_bytes())
    ours = [
        (p.first_lba, p.last_lba - p.first_lba + 1, str(p.type_uuid), str(p.uuid), p.name)
        for p in table.partitions
    ]
    theirs = [
        (p["start"], p["size"], p["type"].lower(), p["uuid"].lower(), p.get("name", ""))
        for p in dump["partitiontable"]["partitions"]
    ]
    assert ours == theirs
    assert [p.read_only for p in table.partitions] == [True, False, False]
    assert [p.no_auto for p in table.partitions] == [False, False, True]
    assert str(table.header.disk_uuid) == dump["partitiontable"]["id"].lower()


def _corrupt(kind: str) -> bytes:
    image = gpt_bytes([Entry(root(), 40, 59)], sectors=128, count=4)
    if kind == "no-signature":
        image[512:520] = b"NOT PART"
    elif kind == "header-crc":
        image[512 + 48] ^= 1
    elif kind == "entries-crc":
        image[1024 + 40] ^= 1
    elif kind == "truncated":
        return bytes(image[: 50 * 512])
    elif kind == "entries-truncated":
        return bytes(image[:1100])
    elif kind == "current-lba":
        struct.pack_into("<Q", image, 512 + 24, 5)
        _fix_header_crc(image)
    elif kind == "entry-size":
        struct.pack_into("<I", image, 512 + 84, 100)
        _fix_header_crc(image)
    elif kind == "huge":
        struct.pack_into("<I", image, 512 + 80, 1 << 20)
        _fix_header_crc(image)
    elif kind == "outside-usable":
        return bytes(gpt_bytes([Entry(root(), 2, 59)], sectors=128, count=4))
    elif kind == "ends-before-start":
        return bytes(gpt_bytes([Entry(root(), 59, 40)], sectors=128, count=4))
    return bytes(image)


def _fix_header_crc(image: bytearray) -> None:
    struct.pack_into("<I", image, 512 + 16, 0)
    struct.pack_into("<I", image, 512 + 16, zlib.crc32(bytes(image[512 : 512 + 92])))


@pytest.mark.parametrize(
    "kind, message",
    [
        ("no-signature", "no GPT partition table found"),
        ("header-crc", "GPT header checksum mismatch"),
        ("entries-crc", "partition entry array checksum mismatch"),
        ("truncated", "beyond the end of the"),
        ("entries-truncated", "entry array lies beyond the end of the image"),
        ("current-lba", "claims to be at LBA 5"),
        ("entry-size", "entry size 100 is invalid"),
        ("huge", "implausibly large"),
        ("outside-usable", "outside the usable area"),
        ("ends-before-start", "ends before it starts"),
    ],
)
def test_damaged_tables(kind: str, message: str) -> None:
    with pytest.raises(GptError) as e:
        parse_partition_table(_corrupt(kind))
    assert message in str(e.value)


def test_gpt_error_is_an_image_error() -> None:
    from sysextpy.errors import ImageError

    assert issubclass(GptError, ImageError)


# --------------------------------------------------------------------------------------------------
# Choosing partitions


def table_of(*entries: Entry) -> bytes:
    placed = []
    lba = 40
    for e in entries:
        placed.append(Entry(e.type_id, lba, lba + 7, e.part_uuid, e.name, e.attrs))
        lba += 8
    return bytes(gpt_bytes(placed, sectors=256, count=16))


def names(selection_chosen: Sequence[tuple[str, object]]) -> list[tuple[str, str]]:
    return [(d, p.name) for d, p in selection_chosen]  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "entries, archs, chosen, arch",
    [
        # native beats secondary, whatever the order in the table
        (
            [("root", "x86", "r32"), ("root", "x86-64", "r64")],
            ("x86-64", "x86"),
            [("root", "r64")],
            "x86-64",
        ),
        ([("root", "x86", "r32")], ("x86-64", "x86"), [("root", "r32")], "x86"),
        ([("root", "arm64", "a")], ("x86-64", "x86"), [], None),
        # usr only, and root + usr with their verity partitions
        ([("usr", "x86-64", "u")], ("x86-64",), [("usr", "u")], "x86-64"),
        (
            [("root", "x86-64", "r"), ("usr", "x86-64", "u"), ("usr-verity", "x86-64", "uv")],
            ("x86-64",),
            [("root", "r"), ("usr", "u"), ("usr-verity", "uv")],
            "x86-64",
        ),
        # verity partitions of another architecture are not paired
        (
            [("root", "x86-64", "r"), ("root-verity", "x86", "rv")],
            ("x86-64", "x86"),
            [("root", "r")],
            "x86-64",
        ),
        # A/B: the newer label wins
        (
            [("root", "x86-64", "foo_1.2"), ("root", "x86-64", "foo_1.10")],
            ("x86-64",),
            [("root", "foo_1.10")],
            "x86-64",
        ),
        # other partition kinds are reported for the policy to judge
        (
            [("root", "x86-64", "r"), ("home", None, "h")],
            ("x86-64",),
            [("root", "r"), ("home", "h")],
            "x86-64",
        ),
    ],
)
def test_selection(
    entries: list[tuple[str, Optional[str], str]],
    archs: tuple[str, ...],
    chosen: list[tuple[str, str]],
    arch: Optional[str],
) -> None:
    def type_of(role: str, a: Optional[str]) -> uuid.UUID:
        if role == "home":
            return uuid.UUID("933ac7e1-2eb4-4f13-b844-0e14e2aef915")
        assert a is not None
        return type_uuid(role, a)

    table = parse_partition_table(
        table_of(*(Entry(type_of(r, a), 0, 0, uuid.uuid4(), n) for r, a, n in entries))
    )
    sel = select_partitions(table, archs)
    assert sel.architecture == arch
    assert names(sel.chosen) == chosen


def test_foreign_architectures_are_named() -> None:
    table = parse_partition_table(
        table_of(Entry(root("arm64"), 0, 0, name="a"), Entry(root("riscv64"), 0, 0))
    )
    sel = select_partitions(table, ("x86-64", "x86"))
    assert sel.architecture is None and sel.foreign == ("arm64", "riscv64")


def test_root_hash_picks_partitions_by_uuid() -> None:
    root_hash = bytes(range(32))
    a_data, a_hash = uuid.uuid4(), uuid.uuid4()
    b_data, b_hash = uuid.UUID(bytes=root_hash[:16]), uuid.UUID(bytes=root_hash[16:])
    table = parse_partition_table(
        table_of(
            Entry(root(), 0, 0, a_data, "foo_2"),
            Entry(type_uuid("root-verity", "x86-64"), 0, 0, a_hash, "foo_2"),
            Entry(root(), 0, 0, b_data, "foo_1"),
            Entry(type_uuid("root-verity", "x86-64"), 0, 0, b_hash, "foo_1"),
        )
    )
    # Without a hash the newer copy wins, and its verity partition goes with it (same label).
    assert names(select_partitions(table, ("x86-64",)).chosen) == [
        ("root", "foo_2"),
        ("root-verity", "foo_2"),
    ]
    # The hash names the other copy.
    sel = select_partitions(table, ("x86-64",), {"root": root_hash})
    assert [(d, p.uuid) for d, p in sel.chosen] == [("root", b_data), ("root-verity", b_hash)]


def test_no_auto_partitions_are_passed_over() -> None:
    table = parse_partition_table(
        table_of(Entry(root(), 0, 0, name="hidden", attrs=FLAG_NO_AUTO), Entry(root(), 0, 0, name="shown"))
    )
    sel = select_partitions(table, ("x86-64",))
    assert names(sel.chosen) == [("root", "shown")]
    assert [(p.name, why) for p, why in sel.passed_over] == [("hidden", "marked no-auto")]


@pytest.mark.parametrize(
    "entries, generic",
    [
        ([LINUX_GENERIC], True),
        ([LINUX_GENERIC, LINUX_GENERIC], False),  # ambiguous
        ([LINUX_GENERIC, uuid.UUID("933ac7e1-2eb4-4f13-b844-0e14e2aef915")], False),  # not alone
    ],
)
def test_generic_partition(entries: list[uuid.UUID], generic: bool) -> None:
    table = parse_partition_table(table_of(*(Entry(t, 0, 0, name=f"g{i}") for i, t in enumerate(entries))))
    sel = select_partitions(table, ("x86-64",))
    assert sel.generic is generic
    assert (sel.get("root") is not None) is generic


@settings(max_examples=300, deadline=None)
@given(raw=st.binary(min_size=16, max_size=16))
def test_guid_agrees_with_uuid(raw: bytes) -> None:
    """The package's own GUID type (uuid is not imported on the boot path) against the standard
    library's: from GPT's mixed-endian bytes and from text, each view of the value, equality both
    ways and the hash, so that either kind finds the other in a dict."""
    ours, theirs = Guid.from_bytes_le(raw), uuid.UUID(bytes_le=raw)
    assert (ours.bytes, ours.bytes_le, ours.int, str(ours)) == (
        theirs.bytes,
        theirs.bytes_le,
        theirs.int,
        str(theirs),
    )
    assert ours == theirs and theirs == ours and hash(ours) == hash(theirs)
    assert Guid(str(theirs)) == ours and Guid(theirs.hex) == ours
    assert {theirs: 1}.get(ours) == 1 and {ours: 1}.get(theirs) == 1
    other = uuid.UUID(int=theirs.int ^ 1)
    assert ours != other and other != ours and ours != Guid.from_bytes_le(other.bytes_le)


def test_guid_is_a_value() -> None:
    g = Guid("0fc63daf-8483-4772-8e79-3d69d8477de4")
    assert repr(g) == "Guid('0fc63daf-8483-4772-8e79-3d69d8477de4')"
    assert g != "0fc63daf-8483-4772-8e79-3d69d8477de4" and g != g.int
    with pytest.raises(AttributeError):
        g.x = 1  # type: ignore[attr-defined]
    for bad in ("", "0fc63daf", "0fc63daf-8483-4772-8e79-3d69d8477de4ff"):
        with pytest.raises(ValueError):
            Guid(bad)
    with pytest.raises(ValueError):
        Guid.from_bytes_le(b"\0" * 15)
