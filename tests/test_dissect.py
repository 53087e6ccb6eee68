# SPDX-License-Identifier: LGPL-2.1-or-later
"""Dissecting raw images: which partition, which root hash, which protection, which verdict.

The first half of this file is the image kit the trust tests share: it builds squashfs/erofs/ext4
file systems, dm-verity hash trees (`veritysetup format` needs no device-mapper), GPT disk images
(sfdisk) and certificates and signatures (openssl). Dissection itself only reads files, so these
tests need no mounts.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import pytest

from sysextpy.dissect import TrustContext, candidate_root, dissect, image_root_hash
from sysextpy.errors import ImageError
from sysextpy.gpt import LINUX_GENERIC, type_uuid
from sysextpy.model import Candidate, ClassSettings, ImageClass, ImageType, MutableMode, Options
from sysextpy.view import LiveView
from tests.conftest import require_tools

HOST_RELEASE = "ID=debian\nVERSION_ID=12\n"
NATIVE = ("x86-64", "x86")
HOME = uuid.UUID("933ac7e1-2eb4-4f13-b844-0e14e2aef915")


# --------------------------------------------------------------------------------------------------
# The image kit


def sh(*argv: object, input: Optional[bytes] = None) -> str:
    proc = subprocess.run(
        [os.fspath(a) if isinstance(a, Path) else str(a) for a in argv],
        input=input,
        stdin=None if input is not None else subprocess.DEVNULL,
        capture_output=True,
        check=False,
    )
    if proc.returncode != 0:
        raise AssertionError(f"{argv[0]} failed: {proc.stderr.decode(errors='replace')}")
    return proc.stdout.decode(errors="replace")


def extension_tree(
    base: Path,
    name: str,
    cls: ImageClass = ImageClass.SYSEXT,
    files: Optional[Mapping[str, str]] = None,
    release: str = HOST_RELEASE,
    usr_only: bool = False,
) -> Path:
    """A sysext/confext tree. usr_only: the tree is the content of /usr (for a usr partition)."""
    rel_dir = "lib/extension-release.d" if usr_only else cls.release_dir
    (base / rel_dir).mkdir(parents=True, exist_ok=True)
    (base / rel_dir / f"extension-release.{name}").write_text(release)
    default = {f"{'etc' if cls is ImageClass.CONFEXT else 'usr/share'}/{name}/hello": f"hello from {name}\n"}
    if usr_only:
        default = {f"share/{name}/hello": f"hello from {name}\n"}
    for rel, text in (files if files is not None else default).items():
        (base / rel).parent.mkdir(parents=True, exist_ok=True)
        (base / rel).write_text(text)
    return base


def make_fs(kind: str, src: Path, out: Path) -> Path:
    """A file system image of `src` (squashfs, erofs or ext4)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    if kind == "squashfs":
        require_tools("mksquashfs")
        sh("mksquashfs", src, out, "-quiet", "-noappend", "-all-root", "-no-progress")
    elif kind == "erofs":
        require_tools("mkfs.erofs")
        sh("mkfs.erofs", "--all-root", "--quiet", out, src)
    elif kind == "ext4":
        require_tools("mkfs.ext4")
        sh("mkfs.ext4", "-q", "-F", "-d", src, "-O", "^has_journal", "-b", "4096", out, "4M")
    else:
        raise ValueError(kind)
    return out


def verity_format(data: Path, hash_tree: Path) -> str:
    """Build the hash tree of `data` into `hash_tree`; the root hash in hex."""
    require_tools("veritysetup")
    out = sh("veritysetup", "format", data, hash_tree)
    for line in out.splitlines():
        if line.startswith("Root hash:"):
            return line.split(":", 1)[1].strip()
    raise AssertionError(f"no root hash in: {out}")


@dataclass(frozen=True)
class Signer:
    cert: Path
    key: Path

    @property
    def der(self) -> bytes:
        text = self.cert.read_text()
        body = text.split("-----BEGIN CERTIFICATE-----")[1].split("-----END CERTIFICATE-----")[0]
        return base64.b64decode("".join(body.split()))

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256(self.der).hexdigest()


def make_signer(directory: Path, cn: str = "test") -> Signer:
    require_tools("openssl")
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / f"{cn}.crt", directory / f"{cn}.key"
    sh(
        "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={cn}", "-days", "1",
        "-keyout", key, "-out", cert,
    )  # fmt: skip
    return Signer(cert, key)


def sign(root_hash: str, signer: Signer, out: Path) -> Path:
    """A detached DER PKCS#7 signature of the hex root hash (no newline), as image builders make."""
    content = out.with_name(out.name + ".content")
    content.write_text(root_hash)
    sh(
        "openssl", "smime", "-sign", "-binary", "-noattr", "-outform", "DER", "-in", content,
        "-signer", signer.cert, "-inkey", signer.key, "-out", out,
    )  # fmt: skip
    content.unlink()
    return out


def verity_sig_json(root_hash: str, signature: bytes, fingerprint: str) -> bytes:
    obj = {
        "rootHash": root_hash,
        "certificateFingerprint": fingerprint,
        "signature": base64.b64encode(signature).decode(),
    }
    return json.dumps(obj).encode()


@dataclass
class PartSpec:
    role: str  # root, usr, root-verity, ... or "generic"
    content: bytes
    arch: str = "x86-64"
    part_uuid: Optional[uuid.UUID] = None
    name: str = ""
    attrs: str = ""

    @property
    def type_uuid(self) -> uuid.UUID:
        if self.role == "generic":
            return LINUX_GENERIC
        if self.role == "home":
            return HOME
        return type_uuid(self.role, self.arch)


MiB = 1 << 20


def build_gpt(out: Path, parts: Sequence[PartSpec]) -> Path:
    """A GPT disk image (512-byte sectors) with `parts` in order, each 1 MiB aligned."""
    require_tools("sfdisk")
    lines = ["label: gpt"]
    offsets = []
    pos = MiB
    for part in parts:
        size = max(MiB, -(-len(part.content) // MiB) * MiB)
        fields = [f"start={pos // 512}", f"size={size // 512}", f"type={part.type_uuid}"]
        if part.part_uuid is not None:
            fields.append(f"uuid={part.part_uuid}")
        if part.name:
            fields.append(f'name="{part.name}"')
        if part.attrs:
            fields.append(f'attrs="{part.attrs}"')
        lines.append(", ".join(fields))
        offsets.append(pos)
        pos += size
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "wb") as f:
        f.truncate(pos + MiB)
    sh("sfdisk", "-q", "--no-reread", "--no-tell-kernel", out, input="\n".join(lines).encode() + b"\n")
    with open(out, "r+b") as f:
        for part, offset in zip(parts, offsets):
            f.seek(offset)
            f.write(part.content)
    return out


@dataclass
class Ddi:
    path: Path
    root_hash: Optional[str]
    data_uuid: uuid.UUID
    verity_uuid: Optional[uuid.UUID]


def build_ddi(
    work: Path,
    out: Path,
    name: str,
    *,
    cls: ImageClass = ImageClass.SYSEXT,
    designator: str = "root",
    arch: str = "x86-64",
    fs: str = "squashfs",
    verity: bool = True,
    signer: Optional[Signer] = None,
    uuids_from_hash: bool = True,
    release: str = HOST_RELEASE,
    sig_root_hash: Optional[str] = None,
    extra: Sequence[PartSpec] = (),
) -> Ddi:
    """An extension DDI: a data partition (root or usr) with optional verity and verity-sig partitions.

    Like image builders do, the data and verity partition UUIDs are the two halves of the root hash
    (uuids_from_hash), so the root hash can be derived without a signature partition.
    """
    work.mkdir(parents=True, exist_ok=True)
    tree = extension_tree(work / f"{name}-tree", name, cls, release=release, usr_only=designator == "usr")
    data = make_fs(fs, tree, work / f"{name}.{fs}")
    parts = []
    root_hash: Optional[str] = None
    data_uuid = uuid.uuid4()
    verity_uuid: Optional[uuid.UUID] = None
    if verity:
        root_hash = verity_format(data, work / f"{name}.hashtree")
        raw = bytes.fromhex(root_hash)
        if uuids_from_hash:
            data_uuid, verity_uuid = uuid.UUID(bytes=raw[:16]), uuid.UUID(bytes=raw[-16:])
        else:
            verity_uuid = uuid.uuid4()
    parts.append(PartSpec(designator, data.read_bytes(), arch, data_uuid, f"{designator}-{arch}"))
    if verity:
        hash_bytes = (work / f"{name}.hashtree").read_bytes()
        parts.append(
            PartSpec(f"{designator}-verity", hash_bytes, arch, verity_uuid, f"{designator}-{arch}-verity")
        )
    if signer is not None:
        assert root_hash is not None
        signed = sig_root_hash or root_hash
        sig = sign(signed, signer, work / f"{name}.p7s").read_bytes()
        payload = verity_sig_json(signed, sig, signer.fingerprint)
        payload += b"\0" * (16384 - len(payload))
        parts.append(
            PartSpec(f"{designator}-verity-sig", payload, arch, None, f"{designator}-{arch}-verity-sig")
        )
    parts.extend(extra)
    build_gpt(out, parts)
    return Ddi(out, root_hash, data_uuid, verity_uuid)


def naked_image(
    work: Path,
    out: Path,
    name: str,
    *,
    cls: ImageClass = ImageClass.SYSEXT,
    fs: str = "squashfs",
    hash_kind: Optional[str] = None,  # None, "roothash", "usrhash", "xattr-roothash", "xattr-usrhash"
    signer: Optional[Signer] = None,
    release: str = HOST_RELEASE,
) -> tuple[Path, Optional[str]]:
    """A naked file system image `out` (NAME.raw), optionally with .verity/.roothash/.p7s side-cars."""
    tree = extension_tree(
        work / f"{name}-tree", name, cls, release=release, usr_only=bool(hash_kind and "usr" in hash_kind)
    )
    make_fs(fs, tree, out)
    if hash_kind is None:
        return out, None
    stem = os.fspath(out)[: -len(".raw")]
    root_hash = verity_format(out, Path(stem + ".verity"))
    which = "usrhash" if "usr" in hash_kind else "roothash"
    if hash_kind.startswith("xattr-"):
        os.setxattr(out, f"user.verity.{which}", root_hash.encode())
    else:
        Path(f"{stem}.{which}").write_text(root_hash + "\n")
    if signer is not None:
        sign(root_hash, signer, Path(f"{stem}.{which}.p7s"))
    return out, root_hash


def make_root(base: Path) -> Path:
    root = base / "root"
    for d in ("etc", "usr/lib", "var/lib/extensions", "var/lib/confexts"):
        (root / d).mkdir(parents=True, exist_ok=True)
    (root / "etc/os-release").write_text(HOST_RELEASE)
    return root


def candidate(
    root: Path, path: Path, *, cls: ImageClass = ImageClass.SYSEXT, name: Optional[str] = None
) -> Candidate:
    """A Candidate for an image placed inside `root` (path is root-prefixed)."""
    rel = "/" + os.path.relpath(path, root)
    search_dir = os.path.dirname(rel)
    entry_name = os.path.basename(rel)
    return Candidate(
        name=name or entry_name.split(".")[0],
        image_class=cls,
        type=ImageType.RAW,
        path=path,
        entry=path,
        search_dir=search_dir,
    )


def context(root: Path, **kw: object) -> TrustContext:
    kw.setdefault("dm_verity", False)
    kw.setdefault("kernel_signatures", False)
    kw.setdefault("architectures", NATIVE)
    return TrustContext(LiveView(os.fspath(root), {}), **kw)  # type: ignore[arg-type]


def trust(root: Path, signer: Signer, name: str = "test.crt", where: str = "etc/verity.d") -> Path:
    d = root / where
    d.mkdir(parents=True, exist_ok=True)
    shutil.copy(signer.cert, d / name)
    return d / name


# --------------------------------------------------------------------------------------------------
# Naked images


@pytest.mark.parametrize("fs", ["squashfs", "erofs", "ext4"])
def test_naked_image_without_verity_is_root_unprotected(tmp_path: Path, fs: str) -> None:
    root = make_root(tmp_path)
    img, _ = naked_image(tmp_path / "w", root / "var/lib/extensions/foo.raw", "foo", fs=fs)
    plan = dissect(candidate(root, img), context(root))
    assert plan.kind == fs
    assert [(s.designator, s.where, s.fstype, s.protection, s.offset) for s in plan.steps] == [
        ("root", "", fs, "unprotected", 0)
    ]
    assert plan.root_hash is None


@pytest.mark.parametrize(
    "hash_kind, designator, source",
    [
        ("roothash", "root", "side-car '/var/lib/extensions/foo.roothash'"),
        ("usrhash", "usr", "side-car '/var/lib/extensions/foo.usrhash'"),
        ("xattr-roothash", "root", "extended attribute user.verity.roothash"),
        ("xattr-usrhash", "usr", "extended attribute user.verity.usrhash"),
    ],
)
@pytest.mark.parametrize("dm", [False, True])
def test_naked_image_root_hash_sources(
    tmp_path: Path, hash_kind: str, designator: str, source: str, dm: bool
) -> None:
    root = make_root(tmp_path)
    img, root_hash = naked_image(
        tmp_path / "w", root / "var/lib/extensions/foo.raw", "foo", hash_kind=hash_kind
    )
    plan = dissect(candidate(root, img), context(root, dm_verity=dm))
    assert plan.root_hash is not None and plan.root_hash.hex == root_hash
    assert plan.root_hash.source == source
    (step,) = plan.steps
    assert step.designator == designator
    assert step.where == ("usr" if designator == "usr" else "")
    if dm:
        assert step.protection == "verity"
        assert step.verity is not None
        assert step.verity.hash_file == os.fspath(root / "var/lib/extensions/foo.verity")
    else:
        assert step.protection == "unprotected" and step.verity is None
        assert any("WITHOUT verity" in n and "dm-verity is not available" in n for n in plan.notes)


def test_naked_image_signed_with_root_certificate(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    signer = make_signer(tmp_path / "keys")
    trust(root, signer)
    img, root_hash = naked_image(
        tmp_path / "w", root / "var/lib/extensions/foo.raw", "foo", hash_kind="roothash", signer=signer
    )
    plan = dissect(candidate(root, img), context(root, dm_verity=True))
    (step,) = plan.steps
    assert step.protection == "signed"
    assert step.verity is not None and step.verity.trusted_by == "/etc/verity.d/test.crt"
    assert not step.verity.kernel_check
    assert "signed by /etc/verity.d/test.crt" in plan.summary()


def test_signed_image_without_openssl_is_rejected_with_the_reason(tmp_path: Path) -> None:
    """An initrd built without openssl (sysextpy_openssl=no) cannot check a signature: the image
    is rejected, saying why, rather than taken at a weaker protection or crashing."""
    root = make_root(tmp_path)
    signer = make_signer(tmp_path / "keys")
    trust(root, signer)
    img, _ = naked_image(
        tmp_path / "w", root / "var/lib/extensions/foo.raw", "foo", hash_kind="roothash", signer=signer
    )
    ctx = context(root, dm_verity=True, openssl=os.fspath(tmp_path / "no-openssl"))
    with pytest.raises(
        ImageError, match=r"root hash signature rejected: cannot check the signature: .*not found"
    ):
        dissect(candidate(root, img), ctx)


def test_root_hash_not_matching_hash_tree_is_rejected(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    img, root_hash = naked_image(
        tmp_path / "w", root / "var/lib/extensions/foo.raw", "foo", hash_kind="roothash"
    )
    assert root_hash is not None
    (root / "var/lib/extensions/foo.roothash").write_text("00" * 32)
    with pytest.raises(ImageError, match="does not match the hash tree"):
        dissect(candidate(root, img), context(root))


def test_root_hash_without_hash_tree_cannot_give_verity(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    img, _ = naked_image(tmp_path / "w", root / "var/lib/extensions/foo.raw", "foo", hash_kind="roothash")
    (root / "var/lib/extensions/foo.verity").unlink()
    plan = dissect(candidate(root, img), context(root, dm_verity=True))
    assert plan.steps[0].protection == "unprotected"
    assert any("no .verity hash tree" in n for n in plan.notes)
    with pytest.raises(ImageError, match=r"root partition is unprotected \(root hash from .*no .verity"):
        dissect(
            candidate(root, img), context(root, dm_verity=True, policies={ImageClass.SYSEXT: "root=verity"})
        )


# --------------------------------------------------------------------------------------------------
# GPT disk images


def test_ddi_with_signature_partition(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    signer = make_signer(tmp_path / "keys")
    trust(root, signer)
    ddi = build_ddi(tmp_path / "w", root / "var/lib/extensions/foo.raw", "foo", signer=signer)
    plan = dissect(candidate(root, ddi.path), context(root, dm_verity=True))
    assert plan.kind == "gpt"
    (step,) = plan.steps
    assert (step.designator, step.where, step.fstype, step.protection) == ("root", "", "squashfs", "signed")
    assert step.offset == MiB and step.what == "partition #1 ('root-x86-64')"
    assert step.verity is not None
    assert step.verity.root_hash.hex == ddi.root_hash
    assert step.verity.root_hash.source == "verity-sig partition #3 ('root-x86-64-verity-sig')"
    assert step.verity.hash_offset == 2 * MiB
    assert step.verity.trusted_by == "/etc/verity.d/test.crt"


def test_ddi_root_hash_derived_from_partition_uuids(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    ddi = build_ddi(tmp_path / "w", root / "var/lib/extensions/foo.raw", "foo")
    plan = dissect(candidate(root, ddi.path), context(root, dm_verity=True))
    (step,) = plan.steps
    assert step.protection == "verity"
    assert step.verity is not None and step.verity.root_hash.hex == ddi.root_hash
    assert step.verity.root_hash.source == "the partition UUIDs"


def test_ddi_uuids_not_encoding_the_hash_give_no_verity(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    ddi = build_ddi(tmp_path / "w", root / "var/lib/extensions/foo.raw", "foo", uuids_from_hash=False)
    plan = dissect(candidate(root, ddi.path), context(root, dm_verity=True))
    assert plan.steps[0].protection == "unprotected"
    assert any("do not encode its root hash" in n for n in plan.notes)


def test_ddi_side_car_root_hash_wins(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    ddi = build_ddi(tmp_path / "w", root / "var/lib/extensions/foo.raw", "foo", uuids_from_hash=False)
    assert ddi.root_hash is not None
    (root / "var/lib/extensions/foo.roothash").write_text(ddi.root_hash)
    plan = dissect(candidate(root, ddi.path), context(root, dm_verity=True))
    assert plan.steps[0].protection == "verity"
    assert plan.steps[0].verity is not None
    assert plan.steps[0].verity.root_hash.source == "side-car '/var/lib/extensions/foo.roothash'"


def test_usr_only_ddi_is_mounted_at_usr(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    ddi = build_ddi(tmp_path / "w", root / "var/lib/extensions/foo.raw", "foo", designator="usr")
    plan = dissect(candidate(root, ddi.path), context(root))
    assert [(s.designator, s.where) for s in plan.steps] == [("usr", "usr")]


def test_usr_only_ddi_is_nothing_for_a_confext(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    ddi = build_ddi(tmp_path / "w", root / "var/lib/confexts/foo.raw", "foo", designator="usr")
    with pytest.raises(ImageError, match="nothing to mount"):
        dissect(candidate(root, ddi.path, cls=ImageClass.CONFEXT), context(root))


@pytest.mark.parametrize(
    "archs, image_arch, outcome",
    [
        (("x86-64", "x86"), "x86-64", "root"),
        (("x86-64", "x86"), "x86", "root"),  # secondary architecture
        (("arm64", "arm"), "arm", "root"),
        (
            ("x86-64", "x86"),
            "arm64",
            "no root or usr partition for x86-64 or x86 (the image has them for arm64)",
        ),
        (("riscv64",), "riscv64", "root"),
        (("s390x", "s390"), "s390x", "root"),
        (("ppc64-le",), "ppc64-le", "root"),
        (("loongarch64",), "loongarch64", "root"),
    ],
)
def test_ddi_architecture(tmp_path: Path, archs: tuple[str, ...], image_arch: str, outcome: str) -> None:
    root = make_root(tmp_path)
    ddi = build_ddi(tmp_path / "w", root / "var/lib/extensions/foo.raw", "foo", arch=image_arch)
    ctx = context(root, architectures=archs)
    if outcome == "root":
        plan = dissect(candidate(root, ddi.path), ctx)
        assert plan.steps[0].designator == "root"
    else:
        with pytest.raises(ImageError) as e:
            dissect(candidate(root, ddi.path), ctx)
        assert outcome in str(e.value)


def test_native_architecture_preferred_over_secondary(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    native = build_ddi(tmp_path / "n", tmp_path / "n.raw", "foo", verity=False)
    second = make_fs("squashfs", extension_tree(tmp_path / "x86-tree", "foo"), tmp_path / "x86.sqfs")
    out = root / "var/lib/extensions/foo.raw"
    build_gpt(
        out,
        [
            PartSpec("root", second.read_bytes(), "x86", name="second"),
            PartSpec("root", native.path.read_bytes()[MiB : 2 * MiB], "x86-64", name="native"),
        ],
    )
    plan = dissect(candidate(root, out), context(root))
    assert plan.steps[0].what == "partition #2 ('native')"
    assert any("for architecture x86" in n for n in plan.notes)


def test_generic_linux_partition_alone_is_the_root(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    data = make_fs("squashfs", extension_tree(tmp_path / "t", "foo"), tmp_path / "foo.sqfs")
    out = build_gpt(root / "var/lib/extensions/foo.raw", [PartSpec("generic", data.read_bytes())])
    plan = dissect(candidate(root, out), context(root))
    assert [(s.designator, s.protection) for s in plan.steps] == [("root", "unprotected")]


# --------------------------------------------------------------------------------------------------
# Policy verdicts


@pytest.mark.parametrize(
    "image, policy, dm, expected",
    [
        # (image kind, --image-policy, dm-verity available, protection or the verdict's words)
        ("plain", None, False, "unprotected"),
        ("plain", "root=verity+signed", False,
         "root partition is unprotected but policy root=verity+signed (image policy setting) requires "
         "signed or verity"),
        ("plain", "root=signed+absent:usr=signed+absent", True,
         "root partition is unprotected but policy root=signed+absent (image policy setting) requires "
         "signed"),
        ("verity", "root=verity", False,
         "root partition has a dm-verity root hash, but dm-verity is not available on this kernel"),
        ("verity", "root=verity", True, "verity"),
        ("verity", "root=signed", True,
         "root partition is verity-protected but unsigned, and policy root=signed (image policy setting) "
         "requires signed"),
        ("verity", "root=unprotected", True, "unprotected"),
        ("signed", None, True, "signed"),
        ("signed", None, False, "unprotected"),
        ("signed", "root=signed", False,
         "root partition has a signed dm-verity root hash, but dm-verity is not available on this kernel"),
        ("signed", "root=verity", True, "verity"),
        ("plain", "root=absent", False,
         "root partition is present but policy root=absent (image policy setting) does not allow it"),
        ("plain", "root=ignore", False, "nothing to mount"),
        ("plain", "root=open:usr=verity", False,
         "image has no usr partition, but policy usr=verity (image policy setting) requires one"),
        ("plain", "root=unprotected+erofs", False,
         "root partition holds squashfs, but policy root=unprotected+erofs (image policy setting) allows "
         "only erofs"),
        ("plain", "root=unprotected+squashfs", False, "unprotected"),
        ("plain", "root=read-only-on", False,
         "root partition #1 ('root-x86-64') has the read-only flag not set, but policy requires "
         "read-only-on"),
        ("plain", "root=open:home=absent", False, "unprotected"),
    ],
)  # fmt: skip
def test_policy_verdicts(tmp_path: Path, image: str, policy: Optional[str], dm: bool, expected: str) -> None:
    root = make_root(tmp_path)
    signer = make_signer(tmp_path / "keys")
    trust(root, signer)
    ddi = build_ddi(
        tmp_path / "w",
        root / "var/lib/extensions/foo.raw",
        "foo",
        verity=image != "plain",
        signer=signer if image == "signed" else None,
    )
    ctx = context(root, dm_verity=dm, policies={ImageClass.SYSEXT: policy})
    if expected in ("unprotected", "verity", "signed"):
        plan = dissect(candidate(root, ddi.path), ctx)
        assert plan.steps[0].protection == expected
    else:
        with pytest.raises(ImageError) as e:
            dissect(candidate(root, ddi.path), ctx)
        assert expected in str(e.value)


def test_policy_forbidding_another_partition(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    data = make_fs("squashfs", extension_tree(tmp_path / "t", "foo"), tmp_path / "foo.sqfs")
    out = root / "var/lib/extensions/foo.raw"
    # A home partition, which extensions never use: the default ignores it, "=absent" forbids it.
    build_gpt(out, [PartSpec("root", data.read_bytes()), PartSpec("home", b"")])
    assert dissect(candidate(root, out), context(root)).steps[0].protection == "unprotected"
    with pytest.raises(ImageError, match=r"has a home partition .*which policy home=absent"):
        dissect(candidate(root, out), context(root, policies={ImageClass.SYSEXT: "root=open:=absent"}))


@pytest.mark.parametrize(
    "where, cls, expected",
    [
        ("/.extra/sysext", ImageClass.SYSEXT, "requires signed"),
        ("/.extra/global_sysext", ImageClass.SYSEXT, "requires signed"),
        ("/.extra/confext", ImageClass.CONFEXT, "requires signed"),
        ("/.extra/other", ImageClass.SYSEXT, "does not allow it"),
        ("/var/lib/extensions", ImageClass.SYSEXT, None),
    ],
)
def test_initrd_extra_rules(tmp_path: Path, where: str, cls: ImageClass, expected: Optional[str]) -> None:
    root = make_root(tmp_path)
    img, _ = naked_image(tmp_path / "w", root / where.lstrip("/") / "foo.raw", "foo", cls=cls)
    # The /.extra rules look at the path inside the root; the context's root is where the image lives.
    ctx = context(root, initrd_without_root=True)
    c = candidate(root, img, cls=cls)
    if expected is None:
        assert dissect(c, ctx).steps[0].protection == "unprotected"
        return
    with pytest.raises(ImageError) as e:
        dissect(c, ctx)
    assert expected in str(e.value) and "initrd rule for /.extra" in str(e.value)
    # With --root (no initrd rules) the same image is fine.
    assert dissect(c, context(root)).steps[0].protection == "unprotected"


# --------------------------------------------------------------------------------------------------
# Signatures


def test_signature_from_unknown_certificate_is_rejected(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    signer = make_signer(tmp_path / "keys")
    trust(root, make_signer(tmp_path / "other", "other"), "other.crt")
    ddi = build_ddi(tmp_path / "w", root / "var/lib/extensions/foo.raw", "foo", signer=signer)
    with pytest.raises(ImageError) as e:
        dissect(candidate(root, ddi.path), context(root, dm_verity=True))
    text = str(e.value)
    assert "root hash signature rejected: signed by an unknown certificate" in text
    assert signer.fingerprint[:16] in text and "/etc/verity.d" in text


def test_signature_of_another_hash_is_rejected(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    signer = make_signer(tmp_path / "keys")
    trust(root, signer)
    img, root_hash = naked_image(
        tmp_path / "w", root / "var/lib/extensions/foo.raw", "foo", hash_kind="roothash", signer=signer
    )
    # Re-sign a different hash and put that signature next to the image.
    sign("ab" * 32, signer, root / "var/lib/extensions/foo.roothash.p7s")
    with pytest.raises(ImageError, match="bad signature"):
        dissect(candidate(root, img), context(root))


def test_untrusted_signature_ignored_when_policy_does_not_use_signatures(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    signer = make_signer(tmp_path / "keys")
    ddi = build_ddi(tmp_path / "w", root / "var/lib/extensions/foo.raw", "foo", signer=signer)
    plan = dissect(
        candidate(root, ddi.path), context(root, dm_verity=True, policies={ImageClass.SYSEXT: "root=verity"})
    )
    assert plan.steps[0].protection == "verity"
    assert any("signature ignored" in n for n in plan.notes)


def test_untrusted_signature_left_to_the_kernel_keyring(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    signer = make_signer(tmp_path / "keys")
    ddi = build_ddi(tmp_path / "w", root / "var/lib/extensions/foo.raw", "foo", signer=signer)
    plan = dissect(candidate(root, ddi.path), context(root, dm_verity=True, kernel_signatures=True))
    step = plan.steps[0]
    assert step.protection == "signed"
    assert step.verity is not None and step.verity.kernel_check and step.verity.signature is not None


def test_signature_partition_for_another_hash(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    signer = make_signer(tmp_path / "keys")
    trust(root, signer)
    ddi = build_ddi(
        tmp_path / "w", root / "var/lib/extensions/foo.raw", "foo", signer=signer, sig_root_hash="cd" * 32
    )
    with pytest.raises(ImageError, match="does not match the hash tree"):
        dissect(candidate(root, ddi.path), context(root))


# --------------------------------------------------------------------------------------------------
# Broken images


def _garbage(path: Path) -> None:
    path.write_bytes(os.urandom(256 * 1024))


@pytest.mark.parametrize(
    "kind, expected",
    [
        ("zero-bytes", "is empty (0 bytes)"),
        ("zeros", "holds only zeros"),
        ("garbage", "no recognised file system or partition table"),
        ("truncated-gpt", "beyond the end of the"),
        ("gpt-header-crc", "GPT header checksum mismatch"),
        ("gpt-entries-crc", "partition entry array checksum mismatch"),
        ("gpt-no-root", "has no root or usr partition"),
        ("gpt-garbage-partition", "holds no recognised file system"),
        ("bad-verity-sig-json", "does not hold valid JSON"),
        ("bad-roothash-sidecar", "is not a hexadecimal root hash"),
        ("empty-p7s", "is empty"),
    ],
)
def test_broken_images_are_image_errors(tmp_path: Path, kind: str, expected: str) -> None:
    root = make_root(tmp_path)
    out = root / "var/lib/extensions/foo.raw"
    if kind == "zero-bytes":
        out.write_bytes(b"")
    elif kind == "zeros":
        out.write_bytes(b"\0" * 65536)
    elif kind == "garbage":
        _garbage(out)
    elif kind.startswith("gpt-") or kind == "truncated-gpt":
        ddi = build_ddi(tmp_path / "w", out, "foo", verity=False)
        data = bytearray(ddi.path.read_bytes())
        if kind == "truncated-gpt":
            out.write_bytes(data[: MiB + 4096])
        elif kind == "gpt-header-crc":
            data[512 + 40] ^= 0xFF
            out.write_bytes(data)
        elif kind == "gpt-entries-crc":
            data[1024 + 60] ^= 0xFF
            out.write_bytes(data)
        elif kind == "gpt-no-root":
            build_gpt(out, [PartSpec("generic", b"x" * 4096), PartSpec("generic", b"y" * 4096)])
        elif kind == "gpt-garbage-partition":
            build_gpt(out, [PartSpec("root", os.urandom(8192))])
    elif kind == "bad-verity-sig-json":
        build_gpt(
            out,
            [
                PartSpec("root", b"hsqs" + b"\0" * 4092),
                PartSpec("root-verity-sig", b"{not json" + b"\0" * 100),
            ],
        )
    elif kind == "bad-roothash-sidecar":
        naked_image(tmp_path / "w", out, "foo")
        (root / "var/lib/extensions/foo.roothash").write_text("not-hex\n")
    elif kind == "empty-p7s":
        naked_image(tmp_path / "w", out, "foo", hash_kind="roothash")
        (root / "var/lib/extensions/foo.roothash.p7s").write_bytes(b"")
    with pytest.raises(ImageError) as e:
        dissect(candidate(root, out), context(root))
    assert expected in str(e.value)


def test_verity_side_car_with_gpt_is_refused(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    ddi = build_ddi(tmp_path / "w", root / "var/lib/extensions/foo.raw", "foo")
    (root / "var/lib/extensions/foo.verity").write_bytes(b"x")
    with pytest.raises(ImageError, match="a .verity side-car means a naked file system"):
        dissect(candidate(root, ddi.path), context(root))


# --------------------------------------------------------------------------------------------------
# Identity: the root hash recorded in `origin`


@pytest.mark.parametrize("kind", ["sidecar", "xattr", "sig-partition", "uuids", "uuids-wrong", "none"])
def test_image_root_hash_for_identity(tmp_path: Path, kind: str) -> None:
    root = make_root(tmp_path)
    out = root / "var/lib/extensions/foo.raw"
    expected: Optional[str]
    if kind in ("sidecar", "xattr"):
        _, expected = naked_image(
            tmp_path / "w", out, "foo", hash_kind="roothash" if kind == "sidecar" else "xattr-roothash"
        )
    elif kind == "sig-partition":
        ddi = build_ddi(
            tmp_path / "w", out, "foo", signer=make_signer(tmp_path / "keys"), uuids_from_hash=False
        )
        expected = ddi.root_hash
    elif kind.startswith("uuids"):
        ddi = build_ddi(tmp_path / "w", out, "foo", uuids_from_hash=kind == "uuids")
        expected = ddi.root_hash if kind == "uuids" else None
    else:
        naked_image(tmp_path / "w", out, "foo")
        expected = None
    assert image_root_hash(LiveView(os.fspath(root), {}), candidate(root, out)) == expected
    if kind == "sidecar":
        off = LiveView(os.fspath(root), {"SYSTEMD_DISSECT_VERITY_SIDECAR": "0"})
        assert image_root_hash(off, candidate(root, out)) is None


def test_candidate_root_from_entry(tmp_path: Path) -> None:
    c = Candidate(
        name="foo",
        image_class=ImageClass.SYSEXT,
        type=ImageType.RAW,
        path=tmp_path / "store/foo-1.raw",
        entry=tmp_path / "etc/extensions/foo.raw",
        search_dir="/etc/extensions",
    )
    assert candidate_root(c) == os.fspath(tmp_path)
    host = Candidate(
        name="foo",
        image_class=ImageClass.SYSEXT,
        type=ImageType.RAW,
        path=Path("/var/lib/extensions/foo.raw"),
        entry=Path("/var/lib/extensions/foo.raw"),
        search_dir="/var/lib/extensions",
    )
    assert candidate_root(host) == "/"


# --------------------------------------------------------------------------------------------------
# The trust context asks the view, and only what it needs


class Machine(LiveView):
    """A view of a machine that can do what `can` says, noting what it was asked."""

    def __init__(self, root: str, can: dict[str, bool]) -> None:
        super().__init__(root, {})
        self.can = can
        self.asked: list[str] = []

    def capability(self, name: str) -> bool:
        self.asked.append(name)
        return self.can[name]

    def machine(self) -> str:
        return "aarch64"


@pytest.mark.parametrize(
    "can, dm_verity, kernel_signatures, asked",
    [
        ({"dm-verity": True, "verity-signatures": True}, True, True, ["dm-verity", "verity-signatures"]),
        ({"dm-verity": True, "verity-signatures": False}, True, False, ["dm-verity", "verity-signatures"]),
        # without device-mapper the kernel checks no signature, whatever its module says
        ({"dm-verity": False, "verity-signatures": True}, False, False, ["dm-verity", "verity-signatures"]),
    ],
)
def test_trust_context_asks_the_machine_when_first_needed(
    tmp_path: Path, can: dict[str, bool], dm_verity: bool, kernel_signatures: bool, asked: list[str]
) -> None:
    view = Machine(os.fspath(tmp_path), can)
    ctx = TrustContext(view)
    assert view.asked == []
    assert ctx.architectures == ("arm64", "arm")  # the view's machine, not this host's
    assert (ctx.kernel_signatures, ctx.dm_verity) == (kernel_signatures, dm_verity)
    assert (ctx.kernel_signatures, ctx.dm_verity) == (kernel_signatures, dm_verity)
    assert sorted(view.asked) == asked  # each once
    given = TrustContext(Machine(os.fspath(tmp_path), {}), dm_verity=True, kernel_signatures=False)
    assert (given.dm_verity, given.kernel_signatures) == (True, False)


@pytest.mark.parametrize(
    "initrd, root_given, rules", [(True, False, True), (True, True, False), (False, False, False)]
)
def test_trust_context_from_settings(tmp_path: Path, initrd: bool, root_given: bool, rules: bool) -> None:
    root = make_root(tmp_path)
    if initrd:
        (root / "etc/initrd-release").write_text("")
    opts = Options(root=root, root_given=root_given, image_policy="root=signed")
    settings = tuple(
        ClassSettings(cls, cls.default_hierarchies, MutableMode.NO, "default", policy, None, None)
        for cls, policy in ((ImageClass.SYSEXT, "root=signed"), (ImageClass.CONFEXT, None))
    )
    ctx = TrustContext.from_settings(opts, settings, LiveView(os.fspath(root), {}))
    assert ctx.initrd_without_root is rules
    assert ctx.root == os.fspath(root)
    sysext = candidate(root, root / "var/lib/extensions/foo.raw")
    assert ctx.policy_for(sysext)[1] == "image policy setting"
    confext = candidate(root, root / ".extra/confext/foo.raw", cls=ImageClass.CONFEXT)
    assert ctx.policy_for(confext)[1] == ("initrd rule for /.extra" if rules else "confext default")
