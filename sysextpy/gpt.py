# SPDX-License-Identifier: LGPL-2.1-or-later
"""GUID partition tables, parsed from bytes, and the Discoverable Partitions choice of what to use.

Nothing here opens files: the table is read through a `read(offset, length)` callable, so the same
code serves images on disk and bytes in tests. Partition types are those of the UAPI Discoverable
Partitions Specification; a disk image built for several architectures is used for the native one
first, then the secondary one.
"""

from __future__ import annotations

import struct
import zlib

from .errors import ImageError
from .records import record

TYPE_CHECKING = False  # typing is not imported at run time: it costs start-up time
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from typing import Callable, Optional

    Reader = Callable[[int, int], bytes]

SIGNATURE = b"EFI PART"
SECTOR_SIZES = (512, 4096)
HEADER_MIN_SIZE = 92
ENTRY_MIN_SIZE = 128
# Real tables hold 128 entries of 128 bytes (16 KiB); anything far beyond that is garbage, and
# reading it would let a hostile image make us allocate at will.
MAX_ENTRY_BYTES = 1 << 20

FLAG_GROWFS = 1 << 59
FLAG_READ_ONLY = 1 << 60
FLAG_NO_AUTO = 1 << 63


class GptError(ImageError):
    """The image's partition table is missing, damaged or inconsistent."""


# The types, for annotations inside Guid, which has properties of these names.
_Bytes = bytes
_Int = int


class Guid:
    """A GUID as a GPT stores it, in the part of `uuid.UUID` this package uses: `bytes` (big
    endian, the RFC 4122 order), `bytes_le` (the on-disk order), `int`, the usual text; equal to,
    and hashed like, the uuid.UUID of the same value. The `uuid` module itself imports `enum` and
    `platform`, and with them `re`: milliseconds of every boot that dissects a disk image."""

    __slots__ = ("_value",)
    _value: _Int

    def __init__(self, text: str) -> None:
        digits = text.replace("-", "")
        if len(digits) != 32:
            raise ValueError(f"badly formed GUID {text!r}")
        object.__setattr__(self, "_value", int(digits, 16))

    @classmethod
    def from_bytes_le(cls, raw: _Bytes) -> Guid:
        """The GUID of 16 bytes in the mixed-endian order of GPT (first three fields little endian)."""
        if len(raw) != 16:
            raise ValueError("a GUID is 16 bytes")
        guid = object.__new__(cls)
        object.__setattr__(guid, "_value", int.from_bytes(_swap_fields(raw), "big"))
        return guid

    @property
    def int(self) -> _Int:
        value: _Int = self._value
        return value

    @property
    def bytes(self) -> _Bytes:
        raw: _Bytes = self._value.to_bytes(16, "big")
        return raw

    @property
    def bytes_le(self) -> _Bytes:
        return _swap_fields(self.bytes)

    def __str__(self) -> str:
        h = f"{self._value:032x}"
        return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"

    def __repr__(self) -> str:
        return f"Guid({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Guid):
            return self._value == other._value
        value = getattr(other, "int", None)  # a uuid.UUID
        if not isinstance(value, int) or not hasattr(other, "bytes_le"):
            return NotImplemented
        same: bool = self._value == value
        return same

    def __hash__(self) -> _Int:
        return hash(self._value)  # as uuid.UUID hashes

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"cannot set {name!r}: a Guid is immutable")


def _swap_fields(raw: _Bytes) -> _Bytes:
    """GPT's mixed-endian GUID bytes to RFC 4122 order, and back: the first three fields reversed."""
    return raw[3::-1] + raw[5:3:-1] + raw[7:5:-1] + raw[8:]


# Per architecture, in this order: root, usr, root-verity, usr-verity, root-verity-sig, usr-verity-sig.
DATA_ROLES = ("root", "usr", "root-verity", "usr-verity", "root-verity-sig", "usr-verity-sig")
_ARCH_TYPES: dict[str, tuple[str, str, str, str, str, str]] = {
    "alpha": (
        "6523f8ae-3eb1-4e2a-a05a-18b695ae656f",
        "e18cf08c-33ec-4c0d-8246-c6c6fb3da024",
        "fc56d9e9-e6e5-4c06-be32-e74407ce09a5",
        "8cce0d25-c0d0-4a44-bd87-46331bf1df67",
        "d46495b7-a053-414f-80f7-700c99921ef8",
        "5c6e1c76-076a-457a-a0fe-f3b4cd21ce6e",
    ),
    "arc": (
        "d27f46ed-2919-4cb8-bd25-9531f3c16534",
        "7978a683-6316-4922-bbee-38bff5a2fecc",
        "24b2d975-0f97-4521-afa1-cd531e421b8d",
        "fca0598c-d880-4591-8c16-4eda05c7347c",
        "143a70ba-cbd3-4f06-919f-6c05683a78bc",
        "94f9a9a1-9971-427a-a400-50cb297f0f35",
    ),
    "arm": (
        "69dad710-2ce4-4e3c-b16c-21a1d49abed3",
        "7d0359a3-02b3-4f0a-865c-654403e70625",
        "7386cdf2-203c-47a9-a498-f2ecce45a2d6",
        "c215d751-7bcd-4649-be90-6627490a4c05",
        "42b0455f-eb11-491d-98d3-56145ba9d037",
        "d7ff812f-37d1-4902-a810-d76ba57b975a",
    ),
    "arm64": (
        "b921b045-1df0-41c3-af44-4c6f280d3fae",
        "b0e01050-ee5f-4390-949a-9101b17104e9",
        "df3300ce-d69f-4c92-978c-9bfb0f38d820",
        "6e11a4e7-fbca-4ded-b9e9-e1a512bb664e",
        "6db69de6-29f4-4758-a7a5-962190f00ce3",
        "c23ce4ff-44bd-4b00-b2d4-b41b3419e02a",
    ),
    "ia64": (
        "993d8d3d-f80e-4225-855a-9daf8ed7ea97",
        "4301d2a6-4e3b-4b2a-bb94-9e0b2c4225ea",
        "86ed10d5-b607-45bb-8957-d350f23d0571",
        "6a491e03-3be7-4545-8e38-83320e0ea880",
        "e98b36ee-32ba-4882-9b12-0ce14655f46a",
        "8de58bc2-2a43-460d-b14e-a76e4a17b47f",
    ),
    "loongarch64": (
        "77055800-792c-4f94-b39a-98c91b762bb6",
        "e611c702-575c-4cbe-9a46-434fa0bf7e3f",
        "f3393b22-e9af-4613-a948-9d3bfbd0c535",
        "f46b2c26-59ae-48f0-9106-c50ed47f673d",
        "5afb67eb-ecc8-4f85-ae8e-ac1e7c50e7d0",
        "b024f315-d330-444c-8461-44bbde524e99",
    ),
    "mips": (
        "e9434544-6e2c-47cc-bae2-12d6deafb44c",
        "773b2abc-2a99-4398-8bf5-03baac40d02b",
        "7a430799-f711-4c7e-8e5b-1d685bd48607",
        "6e5a1bc8-d223-49b7-bca8-37a5fcceb996",
        "bba210a2-9c5d-45ee-9e87-ff2ccbd002d0",
        "97ae158d-f216-497b-8057-f7f905770f54",
    ),
    "mips-le": (
        "37c58c8a-d913-4156-a25f-48b1b64e07f0",
        "0f4868e9-9952-4706-979f-3ed3a473e947",
        "d7d150d2-2a04-4a33-8f12-16651205ff7b",
        "46b98d8d-b55c-4e8f-aab3-37fca7f80752",
        "c919cc1f-4456-4eff-918c-f75e94525ca5",
        "3e23ca0b-a4bc-4b4e-8087-5ab6a26aa8a9",
    ),
    "mips64": (
        "d113af76-80ef-41b4-bdb6-0cff4d3d4a25",
        "57e13958-7331-4365-8e6e-35eeee17c61b",
        "579536f8-6a33-4055-a95a-df2d5e2c42a8",
        "81cf9d90-7458-4df4-8dcf-c8a3a404f09b",
        "43ce94d4-0f3d-4999-8250-b9deafd98e6e",
        "05816ce2-dd40-4ac6-a61d-37d32dc1ba7d",
    ),
    "mips64-le": (
        "700bda43-7a34-4507-b179-eeb93d7a7ca3",
        "c97c1f32-ba06-40b4-9f22-236061b08aa8",
        "16b417f8-3e06-4f57-8dd2-9b5232f41aa6",
        "3c3d61fe-b5f3-414d-bb71-8739a694a4ef",
        "904e58ef-5c65-4a31-9c57-6af5fc7c5de7",
        "f2c2c7ee-adcc-4351-b5c6-ee9816b66e16",
    ),
    "parisc": (
        "1aacdb3b-5444-4138-bd9e-e5c2239b2346",
        "dc4a4480-6917-4262-a4ec-db9384949f25",
        "d212a430-fbc5-49f9-a983-a7feef2b8d0e",
        "5843d618-ec37-48d7-9f12-cea8e08768b2",
        "15de6170-65d3-431c-916e-b0dcd8393f25",
        "450dd7d1-3224-45ec-9cf2-a43a346d71ee",
    ),
    "ppc": (
        "1de3f1ef-fa98-47b5-8dcd-4a860a654d78",
        "7d14fec5-cc71-415d-9d6c-06bf0b3c3eaf",
        "98cfe649-1588-46dc-b2f0-add147424925",
        "df765d00-270e-49e5-bc75-f47bb2118b09",
        "1b31b5aa-add9-463a-b2ed-bd467fc857e7",
        "7007891d-d371-4a80-86a4-5cb875b9302e",
    ),
    "ppc64": (
        "912ade1d-a839-4913-8964-a10eee08fbd2",
        "2c9739e2-f068-46b3-9fd0-01c5a9afbcca",
        "9225a9a3-3c19-4d89-b4f6-eeff88f17631",
        "bdb528a5-a259-475f-a87d-da53fa736a07",
        "f5e2c20c-45b2-4ffa-bce9-2a60737e1aaf",
        "0b888863-d7f8-4d9e-9766-239fce4d58af",
    ),
    "ppc64-le": (
        "c31c45e6-3f39-412e-80fb-4809c4980599",
        "15bb03af-77e7-4d4a-b12b-c0d084f7491c",
        "906bd944-4589-4aae-a4e4-dd983917446a",
        "ee2b9983-21e8-4153-86d9-b6901a54d1ce",
        "d4a236e7-e873-4c07-bf1d-bf6cf7f1c3c6",
        "c8bfbd1e-268e-4521-8bba-bf314c399557",
    ),
    "riscv32": (
        "60d5a7fe-8e7d-435c-b714-3dd8162144e1",
        "b933fb22-5c3f-4f91-af90-e2bb0fa50702",
        "ae0253be-1167-4007-ac68-43926c14c5de",
        "cb1ee4e3-8cd0-4136-a0a4-aa61a32e8730",
        "3a112a75-8729-4380-b4cf-764d79934448",
        "c3836a13-3137-45ba-b583-b16c50fe5eb4",
    ),
    "riscv64": (
        "72ec70a6-cf74-40e6-bd49-4bda08e8f224",
        "beaec34b-8442-439b-a40b-984381ed097d",
        "b6ed5582-440b-4209-b8da-5ff7c419ea3d",
        "8f1056be-9b05-47c4-81d6-be53128e5b54",
        "efe0f087-ea8d-4469-821a-4c2a96a8386a",
        "d2f9000a-7a18-453f-b5cd-4d32f77a7b32",
    ),
    "s390": (
        "08a7acea-624c-4a20-91e8-6e0fa67d23f9",
        "cd0f869b-d0fb-4ca0-b141-9ea87cc78d66",
        "7ac63b47-b25c-463b-8df8-b4a94e6c90e1",
        "b663c618-e7bc-4d6d-90aa-11b756bb1797",
        "3482388e-4254-435a-a241-766a065f9960",
        "17440e4f-a8d0-467f-a46e-3912ae6ef2c5",
    ),
    "s390x": (
        "5eead9a9-fe09-4a1e-a1d7-520d00531306",
        "8a4f5770-50aa-4ed3-874a-99b710db6fea",
        "b325bfbe-c7be-4ab8-8357-139e652d2f6b",
        "31741cc4-1a2a-4111-a581-e00b447d2d06",
        "c80187a5-73a3-491a-901a-017c3fa953e9",
        "3f324816-667b-46ae-86ee-9b0c0c6c11b4",
    ),
    "tilegx": (
        "c50cdd70-3862-4cc3-90e1-809a8c93ee2c",
        "55497029-c7c1-44cc-aa39-815ed1558630",
        "966061ec-28e4-4b2e-b4a5-1f0a825a1d84",
        "2fb4bf56-07fa-42da-8132-6b139f2026ae",
        "b3671439-97b0-4a53-90f7-2d5a8f3ad47b",
        "4ede75e2-6ccc-4cc8-b9c7-70334b087510",
    ),
    "x86": (
        "44479540-f297-41b2-9af7-d131d5f0458a",
        "75250d76-8cc6-458e-bd66-bd47cc81a812",
        "d13c5d3b-b5d1-422a-b29f-9454fdc89d76",
        "8f461b0d-14ee-4e81-9aa9-049b6fb97abd",
        "5996fc05-109c-48de-808b-23fa0830b676",
        "974a71c0-de41-43c3-be5d-5c5ccd1ad2c0",
    ),
    "x86-64": (
        "4f68bce3-e8cd-4db1-96e7-fbcaf984b709",
        "8484680c-9521-48c6-9c11-b0720656f69e",
        "2c7357ed-ebd2-46d9-aec1-23d437ec2bf5",
        "77ff5f63-e7b6-4633-acf4-1565b864c0e6",
        "41092b05-9fc8-4523-994f-2def0408b176",
        "e7bb33fb-06cf-4e81-8273-e543b413e2e2",
    ),
}

# Architecture-independent types, named like image policy designators where policies can name them.
LINUX_GENERIC = Guid("0fc63daf-8483-4772-8e79-3d69d8477de4")
_OTHER_TYPES = {
    Guid("c12a7328-f81f-11d2-ba4b-00a0c93ec93b"): "esp",
    Guid("bc13c2ff-59e6-4262-a352-b275fd6f7172"): "xbootldr",
    Guid("0657fd6d-a4ab-43c4-84e5-0933c84b4f4f"): "swap",
    Guid("933ac7e1-2eb4-4f13-b844-0e14e2aef915"): "home",
    Guid("3b8f8425-20e0-4f3b-907f-1a25a76f98e8"): "srv",
    Guid("4d21b016-b534-45c2-a9fb-5c16e091fd2d"): "var",
    Guid("7ec6f557-3bc5-4aca-b293-16ef5df639d1"): "tmp",
}

_BY_TYPE: dict[Guid, tuple[str, Optional[str]]] = {
    Guid(text): (role, arch) for arch, texts in _ARCH_TYPES.items() for role, text in zip(DATA_ROLES, texts)
}
_BY_TYPE.update({u: (name, None) for u, name in _OTHER_TYPES.items()})


def type_uuid(role: str, arch: str) -> Guid:
    """The partition type of `role` (root, usr, root-verity, ... usr-verity-sig) for `arch`."""
    return Guid(_ARCH_TYPES[arch][DATA_ROLES.index(role)])


def partition_role(type_id: Guid) -> Optional[tuple[str, Optional[str]]]:
    """(designator, architecture or None) of a partition type; None for types we do not know."""
    return _BY_TYPE.get(type_id)


def known_architectures() -> tuple[str, ...]:
    return tuple(_ARCH_TYPES)


@record(frozen=True)
class GptHeader:
    sector_size: int
    disk_uuid: Guid
    current_lba: int
    backup_lba: int
    first_usable_lba: int
    last_usable_lba: int
    entries_lba: int
    entry_count: int
    entry_size: int
    entries_crc32: int


@record(frozen=True)
class Partition:
    number: int  # 1-based slot in the entry array, like /dev/loop0p<number>
    type_uuid: Guid
    uuid: Guid
    first_lba: int
    last_lba: int
    attributes: int
    name: str
    sector_size: int

    @property
    def offset(self) -> int:
        return self.first_lba * self.sector_size

    @property
    def size(self) -> int:
        return (self.last_lba - self.first_lba + 1) * self.sector_size

    @property
    def read_only(self) -> bool:
        return bool(self.attributes & FLAG_READ_ONLY)

    @property
    def no_auto(self) -> bool:
        return bool(self.attributes & FLAG_NO_AUTO)

    @property
    def growfs(self) -> bool:
        return bool(self.attributes & FLAG_GROWFS)

    @property
    def role(self) -> Optional[tuple[str, Optional[str]]]:
        return partition_role(self.type_uuid)

    def describe(self) -> str:
        label = f" ({self.name!r})" if self.name else ""
        return f"partition #{self.number}{label}"


@record(frozen=True)
class PartitionTable:
    header: GptHeader
    partitions: tuple[Partition, ...]


def parse_header(block: bytes, sector_size: int) -> GptHeader:
    """The GPT header found at LBA 1 (`block` holds at least its first 92 bytes); GptError if invalid."""
    if block[:8] != SIGNATURE:
        raise GptError(f"no GPT header at LBA 1 for {sector_size}-byte sectors")
    if len(block) < HEADER_MIN_SIZE:
        raise GptError(f"GPT header at LBA 1 is truncated ({len(block)} bytes)")
    (revision, header_size, header_crc) = struct.unpack_from("<III", block, 8)
    if header_size < HEADER_MIN_SIZE or header_size > sector_size or header_size > len(block):
        raise GptError(f"GPT header size {header_size} is out of range")
    raw = bytearray(block[:header_size])
    raw[16:20] = b"\0\0\0\0"
    if zlib.crc32(bytes(raw)) != header_crc:
        raise GptError("GPT header checksum mismatch (damaged or truncated partition table)")
    current, backup, first, last = struct.unpack_from("<QQQQ", block, 24)
    disk = Guid.from_bytes_le(bytes(block[56:72]))
    entries_lba, count, entry_size, entries_crc = struct.unpack_from("<QIII", block, 72)
    if current != 1:
        raise GptError(f"GPT header claims to be at LBA {current}, not 1")
    if entry_size < ENTRY_MIN_SIZE or entry_size % 8:
        raise GptError(f"GPT partition entry size {entry_size} is invalid")
    if count * entry_size > MAX_ENTRY_BYTES:
        raise GptError(f"GPT partition entry array of {count} x {entry_size} bytes is implausibly large")
    if entries_lba < 2 or first > last:
        raise GptError("GPT header has an inconsistent layout")
    del revision  # any revision with this layout is accepted, like other readers do
    return GptHeader(
        sector_size=sector_size,
        disk_uuid=disk,
        current_lba=current,
        backup_lba=backup,
        first_usable_lba=first,
        last_usable_lba=last,
        entries_lba=entries_lba,
        entry_count=count,
        entry_size=entry_size,
        entries_crc32=entries_crc,
    )


def parse_entries(data: bytes, header: GptHeader) -> tuple[Partition, ...]:
    """The used entries of the partition entry array `data` (checksum verified)."""
    length = header.entry_count * header.entry_size
    if len(data) < length:
        raise GptError("GPT partition entry array is truncated")
    data = data[:length]
    if zlib.crc32(data) != header.entries_crc32:
        raise GptError("GPT partition entry array checksum mismatch")
    partitions = []
    for index in range(header.entry_count):
        entry = data[index * header.entry_size : (index + 1) * header.entry_size]
        type_id = Guid.from_bytes_le(bytes(entry[0:16]))
        if type_id.int == 0:
            continue
        first, last, attributes = struct.unpack_from("<QQQ", entry, 32)
        name = bytes(entry[56:128]).decode("utf-16-le", "replace").split("\0", 1)[0]
        if first > last:
            raise GptError(f"GPT partition #{index + 1} ends before it starts")
        partitions.append(
            Partition(
                number=index + 1,
                type_uuid=type_id,
                uuid=Guid.from_bytes_le(bytes(entry[16:32])),
                first_lba=first,
                last_lba=last,
                attributes=attributes,
                name=name,
                sector_size=header.sector_size,
            )
        )
    return tuple(partitions)


def read_partition_table(read: Reader, image_size: int) -> PartitionTable:
    """Find and check the GPT of an image of `image_size` bytes (512- or 4096-byte sectors).

    Every partition must lie inside the image and inside the header's usable area, so a truncated
    image is refused here instead of failing later with an I/O error deep inside a mount.
    """
    problems = []
    for sector_size in SECTOR_SIZES:
        block = read(sector_size, sector_size)
        if block[:8] != SIGNATURE:
            continue
        try:
            header = parse_header(block, sector_size)
        except GptError as e:
            problems.append(str(e))
            continue
        entries_offset = header.entries_lba * sector_size
        length = header.entry_count * header.entry_size
        if entries_offset + length > image_size:
            raise GptError("GPT partition entry array lies beyond the end of the image (truncated?)")
        partitions = parse_entries(read(entries_offset, length), header)
        for p in partitions:
            if p.first_lba < header.first_usable_lba or p.last_lba > header.last_usable_lba:
                raise GptError(f"{p.describe()} lies outside the usable area of the partition table")
            if p.offset + p.size > image_size:
                raise GptError(
                    f"{p.describe()} ends at byte {p.offset + p.size}, beyond the end of the "
                    f"{image_size}-byte image (truncated?)"
                )
        return PartitionTable(header=header, partitions=partitions)
    if problems:
        raise GptError(problems[0])
    raise GptError("no GPT partition table found")


def parse_partition_table(image: bytes) -> PartitionTable:
    """read_partition_table() over an image held in memory."""
    return read_partition_table(lambda offset, length: image[offset : offset + length], len(image))


# --------------------------------------------------------------------------------------------------
# Choosing partitions


@record(frozen=True)
class Selection:
    """What a disk image offers for one architecture: at most one partition per designator."""

    architecture: Optional[str]  # None: no root/usr partition for any accepted architecture
    chosen: tuple[tuple[str, Partition], ...]  # (designator, partition), e.g. ("root", ...)
    generic: bool = False  # the only partition is a generic Linux one, used as root
    passed_over: tuple[tuple[Partition, str], ...] = ()  # partitions not used, and why
    foreign: tuple[str, ...] = ()  # architectures that have root/usr partitions we did not accept

    def get(self, designator: str) -> Optional[Partition]:
        for name, p in self.chosen:
            if name == designator:
                return p
        return None


def partitions_of(table: PartitionTable, designator: str, arch: Optional[str]) -> tuple[Partition, ...]:
    """Partitions of one role and architecture, in table order (no-auto ones excluded)."""
    return tuple(p for p in table.partitions if p.role == (designator, arch) and not p.no_auto)


def _newest_first(a: Partition, b: Partition) -> int:
    from .versioncomp import compare_versions

    # A/B images carry the version in the partition label; the newer one wins, then the earlier slot.
    c = compare_versions(b.name, a.name)
    return c if c else a.number - b.number


def _pick(candidates: Sequence[Partition], wanted_uuid: Optional[bytes]) -> Optional[Partition]:
    if not candidates:
        return None
    if wanted_uuid is not None:
        matching = [p for p in candidates if p.uuid.bytes == wanted_uuid]
        if matching:
            return matching[0]
    best = candidates[0]
    for p in candidates[1:]:
        if _newest_first(p, best) < 0:
            best = p
    return best


def select_partitions(
    table: PartitionTable,
    architectures: Sequence[str],
    root_hashes: Optional[Mapping[str, bytes]] = None,
) -> Selection:
    """Pick root/usr and their verity partitions for the first architecture that has any.

    `root_hashes` maps "root"/"usr" to a root hash known from elsewhere (side-car, signature
    partition): by the specification the data partition's UUID is the first 128 bits of it and the
    verity partition's UUID the last 128 bits, which decides between A/B copies. Verity-sig
    partitions are not picked here: their JSON says which root hash they sign.
    """
    hashes = dict(root_hashes or {})
    passed: list[tuple[Partition, str]] = []
    for q in table.partitions:
        if q.no_auto and q.role is not None:
            passed.append((q, "marked no-auto"))

    present = {
        p.role[1] for p in table.partitions if p.role and p.role[0] in ("root", "usr") and not p.no_auto
    }
    arch = next((a for a in architectures if a in present), None)
    foreign = tuple(sorted(a for a in present if a is not None and a not in architectures))
    chosen: list[tuple[str, Partition]] = []
    generic = False
    if arch is not None:
        for data in ("root", "usr"):
            wanted = hashes.get(data)
            p = _pick(
                partitions_of(table, data, arch), wanted[:16] if wanted and len(wanted) >= 16 else None
            )
            if p is None:
                continue
            chosen.append((data, p))
            verity_candidates = partitions_of(table, f"{data}-verity", arch)
            wanted_v = wanted[-16:] if wanted and len(wanted) >= 32 else None
            if wanted_v is None and len(verity_candidates) > 1:
                same_label = [v for v in verity_candidates if v.name == p.name]
                verity_candidates = tuple(same_label) or verity_candidates
            v = _pick(verity_candidates, wanted_v)
            if v is not None:
                chosen.append((f"{data}-verity", v))
    elif not present:
        generics = [p for p in table.partitions if p.type_uuid == LINUX_GENERIC and not p.no_auto]
        recognised = [p for p in table.partitions if p.role is not None]
        # Like a naked file system: a lone generic Linux partition stands in for the root partition.
        if len(generics) == 1 and not recognised:
            chosen.append(("root", generics[0]))
            generic = True
    for q in table.partitions:
        role = q.role
        if role is None or role[1] is not None or q.no_auto:
            continue
        if not any(name == role[0] for name, _ in chosen):
            chosen.append((role[0], q))
    used = {id(c) for _, c in chosen}
    for other in table.partitions:
        if id(other) in used or other.no_auto:
            continue
        role = other.role
        if role is None:
            if not (generic and other.type_uuid == LINUX_GENERIC):
                passed.append((other, "partition type not used by extensions"))
        elif role[1] is not None and role[1] != arch:
            passed.append((other, f"for architecture {role[1]}"))
        elif role[0] in DATA_ROLES and role[0].endswith("-sig"):
            continue  # decided by the caller from the signature's content
        else:
            passed.append((other, f"another {role[0]} partition was preferred"))
    return Selection(
        architecture=arch,
        chosen=tuple(chosen),
        generic=generic,
        passed_over=tuple(passed),
        foreign=foreign,
    )
