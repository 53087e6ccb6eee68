# SPDX-License-Identifier: LGPL-2.1-or-later
"""Dissect one raw image: what to mount, from where, with which protection, and why.

The result is an ImagePlan that images.Workspace executes (loop devices, dm-verity, mounts). Every
decision the image policy takes is made here, before anything is attached, and every refusal is an
ImageError naming the partition and the policy word that decided, so a bad image is rejected alone.

Protection levels are tried strongest first: "signed" (a root hash whose signature a certificate of
the root vouches for, or the kernel keyring), "verity" (a root hash and its hash tree), then
"unprotected"; the first one the policy allows and this machine can do is used. A signature that
is present but does not verify rejects the image whenever the policy lets signatures count: an
image that claims a signature and fails it is treated as tampered with, never quietly mounted with
less protection.
"""

from __future__ import annotations

import os
import stat
import struct

from .errors import ImageError, ParseError, SysextError
from .gpt import Partition, PartitionTable, partitions_of, read_partition_table, select_partitions
from .log import log
from .model import Candidate, ClassSettings, ImageClass, ImageType, Options
from .policy import PROTECTIONS, ImagePolicy, default_policy, initrd_extra_policy, parse_image_policy
from .records import field, record
from .verity import (
    CertificateSearch,
    RootHash,
    Sidecars,
    Signature,
    find_certificates,
    find_sidecars,
    parse_verity_sig,
    parse_verity_superblock,
    top_block_location,
    verify_signature,
)
from .view import LiveView

TYPE_CHECKING = False  # typing is not imported at run time: it costs start-up time
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from typing import Callable, Optional

    Reader = Callable[[int, int], bytes]

MOUNTABLE = ("squashfs", "erofs", "ext4", "xfs", "btrfs")
FILE_SYSTEM_FLAGS = ("btrfs", "erofs", "ext4", "f2fs", "squashfs", "vfat", "xfs")
LEVELS = ("signed", "verity", "unprotected")  # strongest first
SNIFF_BYTES = 65536 + 4096 + 8
MAX_VERITY_SIG_PARTITION = 4 << 20


# --------------------------------------------------------------------------------------------------
# The trust context: root, policies, what this machine can do


class TrustContext:
    """Everything outside an image that decides how it may be mounted, read through a view of the
    root (view.py): its certificates, the side-cars next to its images, the policy settings, and
    what this machine can do."""

    def __init__(
        self,
        view: LiveView,
        *,
        policies: Optional[Mapping[ImageClass, Optional[str]]] = None,
        initrd_without_root: bool = False,
        dm_verity: Optional[bool] = None,
        kernel_signatures: Optional[bool] = None,
        architectures: Optional[Sequence[str]] = None,
        openssl: str = "openssl",
    ) -> None:
        from .arch import native_architecture, secondary_architectures

        self.view = view
        self.root = view.root
        self.explicit: dict[ImageClass, ImagePolicy] = {}
        for cls, text in (policies or {}).items():
            if text is None:
                continue
            try:
                self.explicit[cls] = parse_image_policy(text)
            except ParseError as e:
                raise SysextError(f"Invalid image policy for {cls.value}: {e.message}", hint=e.hint) from e
        self.initrd_without_root = initrd_without_root
        self._dm_verity = dm_verity
        self._kernel_signatures = kernel_signatures
        if architectures is None:
            native = native_architecture(view.machine())
            architectures = (native, *secondary_architectures(native))
        self.architectures = tuple(architectures)
        self.openssl = openssl
        self._certificates: Optional[CertificateSearch] = None

    @property
    def dm_verity(self) -> bool:
        """Whether the kernel has device-mapper: asked of the view when first needed."""
        if self._dm_verity is None:
            self._dm_verity = self.view.capability("dm-verity")
        return self._dm_verity

    @property
    def kernel_signatures(self) -> bool:
        if self._kernel_signatures is None:
            self._kernel_signatures = self.view.capability("verity-signatures")
        return self._kernel_signatures and self.dm_verity

    @classmethod
    def from_settings(cls, opts: Options, settings: Sequence[ClassSettings], view: LiveView) -> TrustContext:
        """The context of a run: the policies the settings carry, the /.extra rules in an initrd."""
        from .osrelease import is_initrd_root

        return cls(
            view,
            policies={cs.image_class: cs.image_policy for cs in settings},
            initrd_without_root=not opts.root_given and is_initrd_root(view),
        )

    @classmethod
    def for_candidate(cls, candidate: Candidate, env: Mapping[str, str]) -> TrustContext:
        """A context for a caller that has none: the root derived from where the image was found,
        the policy from that root's configuration, no command-line policy."""
        from .osrelease import is_initrd_root
        from .settings import resolve_settings

        root = candidate_root(candidate)
        view = LiveView(os.fspath(root), env)
        policy: Optional[str] = None
        try:
            policy = resolve_settings(
                Options(root=os.fspath(root)), candidate.image_class, view
            ).image_policy
        except SysextError as e:
            log.warning("Cannot read the image policy configuration of %s: %s", root, e)
        return cls(
            view,
            policies={candidate.image_class: policy},
            initrd_without_root=os.fspath(root) == "/" and is_initrd_root(view),
        )

    def certificates(self) -> CertificateSearch:
        if self._certificates is None:
            self._certificates = find_certificates(self.view)
            for inner, why in self._certificates.ignored:
                log.info("Certificate %s (in root %s) not used: %s", inner, self.root, why)
        return self._certificates

    def policy_for(self, candidate: Candidate) -> tuple[ImagePolicy, str]:
        """The image policy for one image and where it came from (§7.4)."""
        from .chase import root_relative

        explicit = self.explicit.get(candidate.image_class)
        if explicit is not None:
            return explicit, "image policy setting"
        if self.initrd_without_root:
            inner = root_relative(self.root, candidate.path)
            extra = initrd_extra_policy(inner)
            if extra is not None:
                return extra, "initrd rule for /.extra"
        return default_policy(candidate.image_class), f"{candidate.image_class.value} default"


def candidate_root(candidate: Candidate) -> str:
    """The root an image was discovered in: its entry is <root><search_dir>/<entry name>."""
    entry = os.fspath(candidate.entry)
    tail = candidate.search_dir.rstrip("/") + "/" + os.path.basename(entry)
    if entry.endswith(tail):
        return entry[: -len(tail)] or "/"
    return "/"


# --------------------------------------------------------------------------------------------------
# The plan for one image


@record(frozen=True)
class VerityPlan:
    root_hash: RootHash
    hash_file: str
    hash_offset: int
    hash_size: int  # 0: to the end of the file
    signature: Optional[Signature] = None
    trusted_by: Optional[str] = None  # the certificate that vouched, inside the root
    kernel_check: bool = False  # hand the signature to the kernel keyring at activation


@record(frozen=True)
class MountStep:
    designator: str  # root or usr
    where: str  # "" for the image root, "usr" for a /usr partition
    source: str
    offset: int
    size: int  # 0: to the end of the file
    fstype: str
    protection: str  # signed, verity or unprotected
    what: str  # "partition #2 ('usr-x86-64')" or "the image file"
    verity: Optional[VerityPlan] = None


@record(frozen=True)
class ImagePlan:
    path: str
    kind: str  # "gpt" or the naked file system's type
    steps: tuple[MountStep, ...]
    policy: str  # the decisive rules, "root=...:usr=..."
    policy_source: str
    root_hash: Optional[RootHash] = None
    notes: tuple[str, ...] = field(default=())

    def summary(self) -> str:
        parts = []
        for s in self.steps:
            text = f"{s.designator} from {s.what} ({s.fstype}), {s.protection}"
            if s.verity is not None:
                text += f", root hash {s.verity.root_hash.hex[:16]}... from {s.verity.root_hash.source}"
                if s.verity.trusted_by:
                    text += f", signed by {s.verity.trusted_by}"
                elif s.verity.kernel_check:
                    text += ", signature checked by the kernel keyring"
            parts.append(text)
        kind = "GPT disk image" if self.kind == "gpt" else f"{self.kind} image"
        return f"{kind}: " + "; ".join(parts) + f" [policy {self.policy} ({self.policy_source})]"


def policy_words(policy: ImagePolicy, designator: str) -> str:
    """The protection part of one partition's effective rule, e.g. "root=verity+signed+absent"."""
    flags = policy.flags_for(designator)
    words = [p for p in PROTECTIONS if p in flags]
    words += [f for f in FILE_SYSTEM_FLAGS if f in flags]
    return f"{designator}={'+'.join(words) if words else '-'}"


@record(frozen=True)
class Evidence:
    """What an image offers for one data partition."""

    has_hash: bool  # root hash known and its hash tree present and consistent
    signature: str = "none"  # none, trusted or untrusted
    signature_reason: str = ""
    hash_note: str = ""  # why a root hash that was found cannot be used


def decide_protection(
    designator: str,
    policy: ImagePolicy,
    policy_source: str,
    ev: Evidence,
    *,
    dm_verity: bool,
    kernel_signatures: bool,
) -> tuple[str, bool, list[str]]:
    """(protection, check signature in the kernel, notes) for a present data partition.

    Protection is signed, verity, unprotected, or unused (the policy ignores the partition).
    ImageError when the policy and the image cannot agree.
    """
    flags = policy.flags_for(designator)
    words = f"{policy_words(policy, designator)} ({policy_source})"
    allowed = [level for level in LEVELS if level in flags]
    notes: list[str] = []
    if not allowed and not ({"encrypted", "encryptedwithintegrity"} & flags):
        if "unused" in flags:
            return "unused", False, [f"{designator} partition ignored: policy {words}"]
        raise ImageError(f"{designator} partition is present but policy {words} does not allow it")

    kernel_check = False
    if ev.signature == "untrusted" and "signed" in allowed:
        if ev.has_hash and dm_verity and kernel_signatures:
            kernel_check = True
            notes.append(
                f"root hash signature not vouched for by the root's certificates ({ev.signature_reason})"
            )
        else:
            raise ImageError(f"{designator} partition: root hash signature rejected: {ev.signature_reason}")

    possible = {
        "signed": ev.has_hash and dm_verity and (ev.signature == "trusted" or kernel_check),
        "verity": ev.has_hash and dm_verity,
        "unprotected": True,
    }
    for level in allowed:
        if possible[level]:
            if level == "unprotected" and ev.has_hash:
                why = "dm-verity is not available on this kernel" if not dm_verity else f"policy {words}"
                notes.append(
                    f"{designator} partition mounted WITHOUT verity although it has a root hash ({why})"
                )
            if level == "verity" and ev.signature == "untrusted":
                notes.append(
                    f"{designator} partition signature ignored: policy {words} does not use signatures"
                )
            if ev.hash_note:
                notes.append(ev.hash_note)
            return level, kernel_check and level == "signed", notes

    wanted = " or ".join(allowed) or "encryption"
    if ev.has_hash and not dm_verity:
        kind = "signed dm-verity root hash" if ev.signature == "trusted" else "dm-verity root hash"
        raise ImageError(
            f"{designator} partition has a {kind}, but dm-verity is not available on this kernel, "
            f"and policy {words} requires {wanted}"
        )
    if ev.has_hash:
        raise ImageError(
            f"{designator} partition is verity-protected but unsigned, and policy {words} requires {wanted}"
        )
    detail = f" ({ev.hash_note})" if ev.hash_note else ""
    raise ImageError(f"{designator} partition is unprotected{detail} but policy {words} requires {wanted}")


def check_absent(policy: ImagePolicy, policy_source: str, designator: str, why: str = "") -> None:
    if "absent" not in policy.flags_for(designator):
        words = f"{policy_words(policy, designator)} ({policy_source})"
        raise ImageError(f"image has no {designator} partition{why}, but policy {words} requires one")


def check_file_system(policy: ImagePolicy, policy_source: str, designator: str, fstype: str) -> None:
    wanted = [f for f in FILE_SYSTEM_FLAGS if f in policy.flags_for(designator)]
    if wanted and fstype not in wanted:
        words = f"{policy_words(policy, designator)} ({policy_source})"
        raise ImageError(
            f"{designator} partition holds {fstype}, but policy {words} allows only {'/'.join(wanted)}"
        )


def check_gpt_flags(policy: ImagePolicy, policy_source: str, designator: str, p: Partition) -> None:
    flags = policy.flags_for(designator)
    for flag, is_set, name in (
        ("read-only", p.read_only, "read-only"),
        ("growfs", p.growfs, "growfs"),
    ):
        on, off = f"{flag}-on" in flags, f"{flag}-off" in flags
        if on != off and is_set != on:
            state = "set" if is_set else "not set"
            raise ImageError(
                f"{designator} {p.describe()} has the {name} flag {state}, but policy requires "
                f"{flag}-{'on' if on else 'off'} ({policy_source})"
            )


# --------------------------------------------------------------------------------------------------
# Reading the image


def check_hash_tree(read_hash: Reader, read_data: Reader, root_hash: bytes) -> Optional[str]:
    """None when `root_hash` is the digest of the hash tree's top block, else what is wrong.

    This does not replace dm-verity (the data is only checked when it is read through the device),
    but it tells a wrong root hash or a damaged hash tree apart before anything is activated.
    """
    try:
        sb = parse_verity_superblock(read_hash(0, 4096))
    except ParseError as e:
        return e.message
    where, offset, length = top_block_location(sb)
    block = (read_hash if where == "hash" else read_data)(offset, length)
    if len(block) != length:
        return "the hash tree is truncated"
    if sb.digest(block) != root_hash:
        return "the root hash does not match the hash tree"
    return None


def sniff_filesystem(header: bytes) -> Optional[str]:
    """The file system (or partition table) a raw image starts with, from its first bytes."""
    if header[:4] == b"hsqs":
        return "squashfs"
    if len(header) >= 1028 and struct.unpack_from("<I", header, 1024)[0] == 0xE0F5E1E2:
        return "erofs"
    if len(header) >= 1082 and struct.unpack_from("<H", header, 1080)[0] == 0xEF53:
        return "ext4"
    if header[512:520] == b"EFI PART" or header[4096:4104] == b"EFI PART":
        return "gpt"  # 512- or 4096-byte sectors
    if header[:4] == b"XFSB":
        return "xfs"
    if len(header) >= 65608 and header[65600:65608] == b"_BHRfS_M":
        return "btrfs"
    return None


def _file_reader(fd: int, base: int = 0) -> Reader:
    def read(offset: int, length: int) -> bytes:
        return os.pread(fd, length, base + offset)

    return read


def _image_size(fd: int) -> int:
    return os.lseek(fd, 0, os.SEEK_END)


def dissect(candidate: Candidate, ctx: TrustContext, image_fd: Optional[int] = None) -> ImagePlan:
    """Decide how to mount one raw image (read from `image_fd` where it is held open, see pins.py);
    ImageError when it is broken, untrusted or refused."""
    path = candidate.path
    policy, source = ctx.policy_for(candidate)
    try:
        if image_fd is not None:
            fd = os.dup(image_fd)
        else:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK)
    except OSError as e:
        raise ImageError(f"cannot open image {os.fspath(path)!r}: {e.strerror}") from e
    try:
        size = _image_size(fd)
        if size == 0:
            raise ImageError(f"image {os.fspath(path)!r} is empty (0 bytes)")
        header = os.pread(fd, SNIFF_BYTES, 0)
        if not header.strip(b"\0"):
            raise ImageError(
                f"image {os.fspath(path)!r} holds only zeros (no file system or partition table)"
            )
        side = find_sidecars(ctx.view, os.fspath(path)) if candidate.type is ImageType.RAW else Sidecars()
        kind = sniff_filesystem(header)
        if kind == "gpt":
            if side.hash_tree is not None:
                raise ImageError(
                    "a .verity side-car means a naked file system, but the image has a GPT partition table"
                )
            return _dissect_gpt(candidate, ctx, fd, size, side, policy, source)
        if kind in MOUNTABLE:
            return _dissect_naked(candidate, ctx, fd, kind, side, policy, source)
        if kind is not None:
            raise ImageError(f"image {os.fspath(path)!r} holds {kind}, which extensions cannot use")
        raise ImageError(f"image {os.fspath(path)!r} has no recognised file system or partition table")
    except OSError as e:
        raise ImageError(f"cannot read image {os.fspath(path)!r}: {e.strerror}") from e
    finally:
        os.close(fd)


def _signature_evidence(
    ctx: TrustContext, policy: ImagePolicy, designator: str, root_hash: RootHash, sig: Optional[Signature]
) -> tuple[str, str, Optional[str]]:
    """(none|trusted|untrusted, reason, vouching certificate) — checked only when the policy cares."""
    if sig is None:
        return "none", "", None
    if "signed" not in policy.flags_for(designator):
        return "untrusted", "not checked: the policy does not use signatures", None
    check = verify_signature(
        root_hash.hex,
        sig.data,
        ctx.certificates(),
        fingerprint=sig.fingerprint,
        openssl=ctx.openssl,
    )
    if check.trusted:
        return "trusted", check.reason, check.certificate.name if check.certificate else None
    return "untrusted", f"{check.reason} (signature from {sig.source})", None


def _dissect_naked(
    candidate: Candidate,
    ctx: TrustContext,
    fd: int,
    fstype: str,
    side: Sidecars,
    policy: ImagePolicy,
    source: str,
) -> ImagePlan:
    root_hash = side.root_hash
    designator = root_hash.designator if root_hash is not None else "root"
    notes: list[str] = []
    has_hash = False
    hash_note = ""
    verity: Optional[VerityPlan] = None
    if root_hash is not None and side.hash_tree is not None:
        try:
            # O_NONBLOCK: a FIFO in its place must not hang the run (the type is checked next).
            hfd = os.open(side.hash_tree, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY)
        except OSError as e:
            raise ImageError(f"cannot open hash tree {os.fspath(side.hash_tree)!r}: {e.strerror}") from e
        try:
            if not stat.S_ISREG(os.fstat(hfd).st_mode):
                raise ImageError(f"hash tree {os.fspath(side.hash_tree)!r} is not a regular file")
            problem = check_hash_tree(_file_reader(hfd), _file_reader(fd), root_hash.value)
        finally:
            os.close(hfd)
        if problem is not None:
            tree = os.path.basename(side.hash_tree)
            raise ImageError(f"root hash from {root_hash.source} cannot be used with {tree!r}: {problem}")
        has_hash = True
    elif root_hash is not None:
        hash_note = f"root hash from {root_hash.source}, but no .verity hash tree next to the image"
    elif side.hash_tree is not None:
        notes.append(f"hash tree {os.path.basename(side.hash_tree)!r} ignored: no root hash for it")

    signature = "none"
    reason = ""
    trusted_by: Optional[str] = None
    if root_hash is not None and has_hash:
        signature, reason, trusted_by = _signature_evidence(
            ctx, policy, designator, root_hash, side.signature
        )
    ev = Evidence(has_hash=has_hash, signature=signature, signature_reason=reason, hash_note=hash_note)
    protection, kernel_check, more = decide_protection(
        designator, policy, source, ev, dm_verity=ctx.dm_verity, kernel_signatures=ctx.kernel_signatures
    )
    notes += more
    if signature == "trusted" and root_hash is not None:
        notes.append(f"{designator} partition's root hash {root_hash.hex[:16]}...: {reason}")
    other = "usr" if designator == "root" else "root"
    check_absent(policy, source, other)
    if protection == "unused":
        check_absent(policy, source, designator, " the policy lets us use")
        raise ImageError(f"nothing to mount: the policy ignores the image's only ({designator}) file system")
    check_file_system(policy, source, designator, fstype)
    if protection in ("signed", "verity"):
        assert root_hash is not None and side.hash_tree is not None
        verity = VerityPlan(
            root_hash=root_hash,
            hash_file=side.hash_tree,
            hash_offset=0,
            hash_size=0,
            signature=side.signature,
            trusted_by=trusted_by,
            kernel_check=kernel_check,
        )
    step = MountStep(
        designator=designator,
        where="usr" if designator == "usr" else "",
        source=os.fspath(candidate.path),
        offset=0,
        size=0,
        fstype=fstype,
        protection=protection,
        what="the image file",
        verity=verity,
    )
    return ImagePlan(
        path=os.fspath(candidate.path),
        kind=fstype,
        steps=(step,),
        policy=":".join(policy_words(policy, d) for d in ("root", "usr")),
        policy_source=source,
        root_hash=root_hash,
        notes=tuple(notes),
    )


@record(frozen=True)
class _SigPartition:
    partition: Partition
    arch: str
    root_hash: bytes
    signature: Signature


def _verity_sig_partitions(
    table: PartitionTable, read: Reader, architectures: Sequence[str]
) -> dict[str, list[_SigPartition]]:
    found: dict[str, list[_SigPartition]] = {"root": [], "usr": []}
    for designator in found:
        for arch in architectures:
            for p in partitions_of(table, f"{designator}-verity-sig", arch):
                what = f"verity-sig {p.describe()}"
                if p.size > MAX_VERITY_SIG_PARTITION:
                    raise ImageError(f"{what} is implausibly large ({p.size} bytes)")
                try:
                    sig = parse_verity_sig(read(p.offset, p.size), what)
                except ParseError as e:
                    raise ImageError(e.message) from None
                found[designator].append(
                    _SigPartition(p, arch, sig.root_hash, Signature(sig.signature, what, sig.fingerprint))
                )
    return found


def gpt_root_hashes(
    table: PartitionTable, read: Reader, architectures: Sequence[str], side: Sidecars
) -> tuple[dict[str, bytes], dict[str, _SigPartition]]:
    """Root hashes known before choosing partitions (side-car first, then verity-sig partitions)."""
    known: dict[str, bytes] = {}
    sig_for: dict[str, _SigPartition] = {}
    if side.root_hash is not None:
        known[side.root_hash.designator] = side.root_hash.value
    sigs = _verity_sig_partitions(table, read, architectures)
    for designator, entries in sigs.items():
        if not entries:
            continue
        arch = next((a for a in architectures if partitions_of(table, designator, a)), None)
        entries = [e for e in entries if e.arch == arch] or entries
        data_uuids = {p.uuid.bytes for p in partitions_of(table, designator, arch)} if arch else set()
        if designator in known:
            match = [e for e in entries if e.root_hash == known[designator]]
        else:
            match = [e for e in entries if e.root_hash[:16] in data_uuids] or entries
        if match:
            sig_for[designator] = match[0]
            known.setdefault(designator, match[0].root_hash)
    return known, sig_for


def _dissect_gpt(
    candidate: Candidate,
    ctx: TrustContext,
    fd: int,
    size: int,
    side: Sidecars,
    policy: ImagePolicy,
    source: str,
) -> ImagePlan:
    read = _file_reader(fd)
    table = read_partition_table(read, size)
    known, sig_for = gpt_root_hashes(table, read, ctx.architectures, side)
    sel = select_partitions(table, ctx.architectures, known)
    if sel.architecture is None and not sel.generic:
        if sel.foreign:
            raise ImageError(
                f"no root or usr partition for {' or '.join(ctx.architectures)} "
                f"(the image has them for {', '.join(sel.foreign)})"
            )
        raise ImageError("the GPT partition table has no root or usr partition")

    notes: list[str] = []
    steps: list[MountStep] = []
    first_hash: Optional[RootHash] = None
    for skipped, why in sel.passed_over:
        notes.append(f"{skipped.describe()} not used: {why}")
    for designator in ("root", "usr"):
        p = sel.get(designator)
        if p is None:
            check_absent(policy, source, designator)
            continue
        vp = sel.get(f"{designator}-verity")
        root_hash: Optional[RootHash] = None
        signature: Optional[Signature] = None
        derived = False
        if side.root_hash is not None and side.root_hash.designator == designator:
            root_hash = side.root_hash
            signature = side.signature
            sp = sig_for.get(designator)
            if signature is None and sp is not None and sp.root_hash == root_hash.value:
                signature = sp.signature
        elif designator in sig_for:
            sp = sig_for[designator]
            root_hash = RootHash(sp.root_hash, designator, f"verity-sig {sp.partition.describe()}")
            signature = sp.signature
        elif vp is not None:
            root_hash = RootHash(p.uuid.bytes + vp.uuid.bytes, designator, "the partition UUIDs")
            derived = True

        has_hash = False
        hash_note = ""
        if root_hash is not None and vp is not None:
            problem = check_hash_tree(_reader_at(fd, vp), _reader_at(fd, p), root_hash.value)
            if problem is None:
                has_hash = True
            elif derived:
                hash_note = (
                    f"the partition UUIDs of {p.describe()} and {vp.describe()} do not encode its root hash"
                )
                root_hash = None
            else:
                raise ImageError(
                    f"root hash from {root_hash.source} cannot be used with {vp.describe()}: {problem}"
                )
        elif root_hash is not None:
            hash_note = (
                f"root hash from {root_hash.source}, but the image has no {designator}-verity partition"
            )
        elif vp is not None:
            hash_note = f"{vp.describe()} found, but no root hash for it"

        sig_state, sig_reason, trusted_by = "none", "", None
        if root_hash is not None and has_hash:
            sig_state, sig_reason, trusted_by = _signature_evidence(
                ctx, policy, designator, root_hash, signature
            )
        ev = Evidence(
            has_hash=has_hash, signature=sig_state, signature_reason=sig_reason, hash_note=hash_note
        )
        protection, kernel_check, more = decide_protection(
            designator, policy, source, ev, dm_verity=ctx.dm_verity, kernel_signatures=ctx.kernel_signatures
        )
        notes += more
        if sig_state == "trusted" and root_hash is not None:
            notes.append(f"{designator} partition's root hash {root_hash.hex[:16]}...: {sig_reason}")
        if protection == "unused":
            check_absent(policy, source, designator, " the policy lets us use")
            continue
        fstype = sniff_filesystem(read(p.offset, min(SNIFF_BYTES, p.size)))
        if fstype not in MOUNTABLE:
            holds = f"holds {fstype}" if fstype else "holds no recognised file system"
            raise ImageError(f"{designator} {p.describe()} {holds}")
        check_file_system(policy, source, designator, fstype)
        check_gpt_flags(policy, source, designator, p)
        verity: Optional[VerityPlan] = None
        if protection in ("signed", "verity"):
            assert root_hash is not None and vp is not None
            verity = VerityPlan(
                root_hash=root_hash,
                hash_file=os.fspath(candidate.path),
                hash_offset=vp.offset,
                hash_size=vp.size,
                signature=signature,
                trusted_by=trusted_by,
                kernel_check=kernel_check,
            )
        if first_hash is None and root_hash is not None and has_hash:
            first_hash = root_hash
        steps.append(
            MountStep(
                designator=designator,
                where="usr" if designator == "usr" else "",
                source=os.fspath(candidate.path),
                offset=p.offset,
                size=p.size,
                fstype=fstype,
                protection=protection,
                what=p.describe(),
                verity=verity,
            )
        )
    # Other partition kinds (home, swap, esp...) follow their rules too; the defaults ignore them.
    for designator, p in sel.chosen:
        if designator in ("root", "usr", "root-verity", "usr-verity"):
            continue
        if "unused" not in policy.flags_for(designator):
            words = f"{policy_words(policy, designator)} ({source})"
            raise ImageError(
                f"the image has a {designator} partition ({p.describe()}), which policy {words} forbids"
            )
    if not steps:
        raise ImageError("nothing to mount: the image policy ignores every partition of the image")
    return ImagePlan(
        path=os.fspath(candidate.path),
        kind="gpt",
        steps=tuple(steps),
        policy=":".join(policy_words(policy, d) for d in ("root", "usr")),
        policy_source=source,
        root_hash=first_hash,
        notes=tuple(notes),
    )


def _reader_at(fd: int, p: Partition) -> Reader:
    def read(offset: int, length: int) -> bytes:
        length = max(0, min(length, p.size - offset))
        return os.pread(fd, length, p.offset + offset)

    return read


def image_root_hash(view: LiveView, candidate: Candidate) -> Optional[str]:
    """The root hash that identifies an image (for `origin`), in hex, or None. Never raises.

    Side-cars and xattrs first, then a GPT image's verity-sig partition or partition UUIDs (only
    when they agree with the hash tree), for the native or secondary architecture. The image's own
    bytes are read directly: its identity (view.file_identity) covers them.
    """
    from .verity import sidecar_root_hash

    found = sidecar_root_hash(view, os.fspath(candidate.path))
    if found is not None or candidate.type is not ImageType.RAW:
        return found
    pin = view.file_pin(os.fspath(candidate.path))
    try:
        if pin is not None:
            fd = os.dup(pin.fd)
        else:
            fd = os.open(candidate.path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        head = os.pread(fd, 8, 512) + os.pread(fd, 8, 4096)
        if b"EFI PART" not in head:
            return None
        from .arch import native_architecture, secondary_architectures

        native = native_architecture(view.machine())
        arches = (native, *secondary_architectures(native))
        read = _file_reader(fd)
        table = read_partition_table(read, _image_size(fd))
        known, _ = gpt_root_hashes(table, read, arches, Sidecars())
        sel = select_partitions(table, arches, known)
        for designator in ("root", "usr"):
            p, vp = sel.get(designator), sel.get(f"{designator}-verity")
            if p is None or vp is None:
                continue
            value = known.get(designator, p.uuid.bytes + vp.uuid.bytes)
            if check_hash_tree(_reader_at(fd, vp), _reader_at(fd, p), value) is None:
                return value.hex()
        return None
    except (OSError, SysextError) as e:
        log.debug("No root hash for %s: %s", candidate.path, e)
        return None
    finally:
        os.close(fd)
