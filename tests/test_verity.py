# SPDX-License-Identifier: LGPL-2.1-or-later
"""Root hashes, side-cars, verity-sig JSON, hash trees, certificates and signature checks."""

from __future__ import annotations

import base64
import json
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Optional

import pytest
from pyfakefs.fake_filesystem import FakeFilesystem

from sysextpy.dissect import TrustContext, check_hash_tree
from sysextpy.errors import ImageError, ParseError
from sysextpy.fingerprint import trust_inputs
from sysextpy.verity import (
    RootHash,
    Sidecars,
    Signature,
    VerityActivation,
    find_certificates,
    find_sidecars,
    hash_function,
    parse_root_hash,
    parse_verity_sig,
    parse_verity_superblock,
    pem_certificates,
    sidecar_root_hash,
    verify_signature,
    veritysetup_open_argv,
)
from sysextpy.view import LiveView
from tests.conftest import require_tools
from tests.test_dissect import make_root, make_signer, sign, trust, verity_format

HASH = "5ca1ab1e" * 8


# --------------------------------------------------------------------------------------------------
# Pure parsers


@pytest.mark.parametrize(
    "text, expected",
    [
        (HASH.encode(), bytes.fromhex(HASH)),
        (f"  {HASH}\n".encode(), bytes.fromhex(HASH)),
        (HASH.upper().encode(), bytes.fromhex(HASH)),
        (b"00" * 16, bytes(16)),
        (b"00" * 15, "at least 16 are needed"),
        (b"xyz", "is not a hexadecimal root hash"),
        (b"abc", "is not a hexadecimal root hash"),  # odd length
        (b"", "at least 16"),
    ],
)
def test_parse_root_hash(text: bytes, expected: object) -> None:
    if isinstance(expected, bytes):
        assert parse_root_hash(text, "x") == expected
    else:
        with pytest.raises(ParseError) as e:
            parse_root_hash(text, "side-car 'x'")
        assert str(expected) in str(e.value) and "side-car 'x'" in str(e.value)


def _sig_json(**fields: object) -> bytes:
    obj: dict[str, object] = {
        "rootHash": HASH,
        "certificateFingerprint": "ab" * 32,
        "signature": base64.b64encode(b"sig").decode(),
    }
    obj.update(fields)
    return json.dumps({k: v for k, v in obj.items() if v is not None}).encode()


@pytest.mark.parametrize(
    "data, expected",
    [
        (_sig_json(), None),
        (_sig_json() + b"\0" * 1000, None),
        (_sig_json(certificateFingerprint=None), None),
        (_sig_json(certificateFingerprint=":".join(["ab"] * 32)), None),
        (b"\0" * 64, "is empty"),
        (b"{broken", "does not hold valid JSON"),
        (b"[1, 2]", "does not hold a JSON object"),
        (_sig_json(rootHash=None), 'has no "rootHash" string'),
        (_sig_json(rootHash="zz"), "is not a hexadecimal root hash"),
        (_sig_json(signature=None), 'has no "signature" string'),
        (_sig_json(signature="!!!"), "is not base64"),
        (_sig_json(signature=""), "is empty"),
        (_sig_json(certificateFingerprint="abcd"), "is not a SHA-256 fingerprint"),
        (_sig_json(certificateFingerprint="xyz!"), "is not hexadecimal"),
        (_sig_json(certificateFingerprint=5), "is not a string"),
    ],
)
def test_parse_verity_sig(data: bytes, expected: Optional[str]) -> None:
    if expected is None:
        sig = parse_verity_sig(data)
        assert sig.root_hash.hex() == HASH and sig.signature == b"sig"
        assert sig.fingerprint in (None, bytes.fromhex("ab" * 32))
        return
    with pytest.raises(ParseError) as e:
        parse_verity_sig(data, "verity-sig partition #3")
    assert expected in str(e.value) and "verity-sig partition #3" in str(e.value)


def test_pem_certificates_reads_every_block() -> None:
    one = b"-----BEGIN CERTIFICATE-----\nAAEC\n-----END CERTIFICATE-----\n"
    two = b"junk\n-----BEGIN CERTIFICATE-----\nAwQF\nBg==\n-----END CERTIFICATE-----\n"
    assert pem_certificates(one + two) == [b"\0\1\2", b"\3\4\5\6"]
    assert pem_certificates(b"-----BEGIN PRIVATE KEY-----\nAAEC\n-----END PRIVATE KEY-----\n") == []


def test_veritysetup_command() -> None:
    act = VerityActivation("n", Path("/dev/loop1"), Path("/dev/loop2"), HASH)
    assert veritysetup_open_argv(act) == ["veritysetup", "open", "/dev/loop1", "n", "/dev/loop2", HASH]
    signed = VerityActivation("n", Path("/dev/loop1"), Path("/dev/loop1"), HASH, 4096, Path("/run/x.p7s"))
    assert veritysetup_open_argv(signed)[-2:] == ["--hash-offset=4096", "--root-hash-signature=/run/x.p7s"]
    assert act.device == "/dev/mapper/n"


# --------------------------------------------------------------------------------------------------
# Hash trees made by veritysetup


@pytest.mark.parametrize("size", [4096, 3 * 1024 * 1024])  # one data block (no hash levels), several levels
def test_hash_tree_check(tmp_path: Path, size: int) -> None:
    data = tmp_path / "data"
    data.write_bytes(os.urandom(size))
    tree = tmp_path / "tree"
    root_hash = bytes.fromhex(verity_format(data, tree))
    hashes, content = tree.read_bytes(), data.read_bytes()
    sb = parse_verity_superblock(hashes)
    assert (sb.algorithm, sb.data_blocks, sb.hash_type) == ("sha256", size // 4096, 1)

    def reader(blob: bytes):  # type: ignore[no-untyped-def]
        return lambda offset, length: blob[offset : offset + length]

    assert check_hash_tree(reader(hashes), reader(content), root_hash) is None
    assert (
        check_hash_tree(reader(hashes), reader(content), bytes(32))
        == "the root hash does not match the hash tree"
    )
    damaged = bytearray(hashes if size > 4096 else content)
    damaged[4096 if size > 4096 else 0] ^= 1
    if size > 4096:
        assert check_hash_tree(reader(bytes(damaged)), reader(content), root_hash) is not None
    else:
        assert check_hash_tree(reader(hashes), reader(bytes(damaged)), root_hash) is not None
    assert check_hash_tree(reader(b"\0" * 4096), reader(content), root_hash) == "no dm-verity superblock"


# --------------------------------------------------------------------------------------------------
# Side-cars: what find_sidecars reads is names, xattrs and small files, never the image, so these
# run on a fake file system (pyfakefs) whose host has side-cars of its own where a link that left
# the root would find them. Real images with side-cars are dissected in test_dissect.py.

FAKE_ROOT = "/srv/root"
EXT = "var/lib/extensions"


@pytest.fixture
def fake_root(fake_fs: FakeFilesystem) -> Path:
    fake_fs.create_file(f"/{EXT}/foo.roothash", contents="ab" * 32)
    fake_fs.create_file("/srv/sigs/foo.p7s", contents=b"host signature")
    fake_fs.create_file(f"{FAKE_ROOT}/{EXT}/foo.raw", contents=b"an image")
    return Path(FAKE_ROOT)


def sidecars_of(root: Path, image: Path, env: Optional[Mapping[str, str]] = None) -> Sidecars:
    return find_sidecars(LiveView(os.fspath(root), env or {}), os.fspath(image))


def test_side_cars_and_xattrs(fake_root: Path) -> None:
    img = fake_root / EXT / "foo.raw"
    (fake_root / EXT / "foo.roothash").write_text(HASH.upper() + "\n")
    (fake_root / EXT / "foo.verity").write_bytes(b"a hash tree")
    side = sidecars_of(fake_root, img)
    assert side.root_hash == RootHash(
        bytes.fromhex(HASH), "root", "side-car '/var/lib/extensions/foo.roothash'"
    )
    assert side.hash_tree == os.fspath(fake_root / EXT / "foo.verity")
    assert side.signature is None
    # An xattr beats the side-car file; a root hash beats a usr hash.
    other = "c0ffee00" * 8
    os.setxattr(img, "user.verity.usrhash", other.encode())
    assert sidecars_of(fake_root, img).root_hash.designator == "root"  # type: ignore[union-attr]
    os.setxattr(img, "user.verity.roothash", other.encode())
    found = sidecars_of(fake_root, img).root_hash
    assert (
        found is not None
        and found.hex == other
        and found.source == "extended attribute user.verity.roothash"
    )
    view = LiveView(os.fspath(fake_root), {})
    assert sidecar_root_hash(view, os.fspath(img)) == other
    off = LiveView(os.fspath(fake_root), {"SYSTEMD_DISSECT_VERITY_SIDECAR": "0"})
    assert sidecar_root_hash(off, os.fspath(img)) is None
    assert find_sidecars(off, os.fspath(img)) == Sidecars()


def test_usrhash_side_car_and_its_signature(fake_root: Path) -> None:
    img = fake_root / EXT / "foo.raw"
    (fake_root / EXT / "foo.usrhash").write_text(HASH)
    (fake_root / EXT / "foo.usrhash.p7s").write_bytes(b"usr signature")
    (fake_root / EXT / "foo.roothash.p7s").write_bytes(b"root signature")  # the other kind: second
    side = sidecars_of(fake_root, img)
    assert side.root_hash is not None and side.root_hash.designator == "usr"
    assert side.signature == Signature(b"usr signature", "side-car '/var/lib/extensions/foo.usrhash.p7s'")


def test_side_cars_follow_links_inside_the_root(fake_root: Path) -> None:
    store = fake_root / "srv/store"
    store.mkdir(parents=True)
    img = store / "foo-1.raw"
    img.write_bytes(b"an image")
    (store / "foo-1.roothash").write_text(HASH)
    # The image is the resolved path; its p7s side-car is a link with an absolute target, which
    # must be read inside the root, not from the (fake) host's /srv.
    real = fake_root / "srv/sigs/foo.p7s"
    real.parent.mkdir(parents=True)
    real.write_bytes(b"signature inside")
    (store / "foo-1.roothash.p7s").symlink_to("/srv/sigs/foo.p7s")
    side = sidecars_of(fake_root, img)
    assert side.signature is not None and side.signature.data == b"signature inside"
    assert side.signature.source == "side-car '/srv/sigs/foo.p7s'"
    # A dangling link (target missing inside the root) means no signature, not the host's.
    real.unlink()
    assert sidecars_of(fake_root, img).signature is None


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("foo.roothash", b"nothex\n", "is not a hexadecimal root hash"),
        ("foo.roothash", b"ab" * 16 + b"\n", None),
        ("foo.roothash", b"ab" * 8 + b"\n", "at least 16 are needed"),
        ("foo.roothash.p7s", b"", "is empty"),
        ("foo.roothash", b"a" * (1 << 20) + b"\n", "is implausibly large"),
    ],
)
def test_unusable_side_cars(fake_root: Path, name: str, content: bytes, message: Optional[str]) -> None:
    img = fake_root / EXT / "foo.raw"
    (fake_root / EXT / "foo.roothash").write_text(HASH)
    (fake_root / EXT / name).write_bytes(content)
    if message is None:
        assert sidecars_of(fake_root, img).root_hash is not None
        return
    with pytest.raises(ImageError, match=message):
        sidecars_of(fake_root, img)
    # identity never fails
    assert sidecar_root_hash(LiveView(os.fspath(fake_root), {}), os.fspath(img)) is None


def test_side_car_that_is_not_a_regular_file(fake_root: Path) -> None:
    (fake_root / EXT / "foo.roothash").mkdir()
    with pytest.raises(
        ImageError, match="side-car '/var/lib/extensions/foo.roothash' is not a regular file"
    ):
        sidecars_of(fake_root, fake_root / EXT / "foo.raw")


def test_side_cars_only_for_raw_names(fake_root: Path) -> None:
    img = fake_root / EXT / "foo.img"
    img.write_bytes(b"an image")
    (fake_root / EXT / "foo.roothash").write_text(HASH)
    assert sidecars_of(fake_root, img).root_hash is None


# --------------------------------------------------------------------------------------------------
# Certificates


def test_certificate_directories(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    a, b, c = (make_signer(tmp_path / "keys", n) for n in ("a", "b", "c"))
    trust(root, a, "one.crt", "etc/verity.d")
    trust(root, b, "one.crt", "usr/lib/verity.d")  # overridden by /etc's one.crt
    trust(root, b, "two.crt", "run/verity.d")
    trust(root, c, "three.crt", "usr/lib/verity.d")
    (root / "etc/verity.d/three.crt").symlink_to("/dev/null")  # masks /usr/lib's three.crt
    trust(root, c, "four.pem", "usr/local/lib/verity.d")  # wrong suffix
    (root / "etc/verity.d/dir.crt").mkdir()
    (root / "etc/verity.d/empty.crt").write_text("")
    (root / "etc/verity.d/junk.crt").write_text("no certificate here\n")
    search = find_certificates(LiveView(os.fspath(root), {}))
    assert [(x.name, x.fingerprint.hex()) for x in search.certificates] == [
        ("/etc/verity.d/one.crt", a.fingerprint),
        ("/run/verity.d/two.crt", b.fingerprint),
    ]
    ignored = dict(search.ignored)
    assert ignored["/usr/lib/verity.d/one.crt"] == "overridden by /etc/verity.d/one.crt"
    assert ignored["/etc/verity.d/three.crt"] == "masked (link to /dev/null)"
    assert ignored["/usr/local/lib/verity.d/four.pem"] == "not a .crt file (only *.crt is read)"
    assert ignored["/etc/verity.d/dir.crt"] == "not a regular file"
    assert ignored["/etc/verity.d/empty.crt"] == "masked (empty file)"
    assert ignored["/etc/verity.d/junk.crt"] == "holds no PEM certificate"
    assert search.searched == (
        "/etc/verity.d",
        "/run/verity.d",
        "/usr/local/lib/verity.d",
        "/usr/lib/verity.d",
    )


def test_certificate_links_resolve_inside_the_root(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    a = make_signer(tmp_path / "keys", "a")
    trust(root, a, "a.crt", "srv/certs")
    (root / "etc/verity.d").symlink_to("/srv/certs")  # absolute: means <root>/srv/certs
    (root / "run").mkdir()
    (root / "run/verity.d").mkdir()
    (root / "run/verity.d/b.crt").symlink_to("/srv/certs/a.crt")
    search = find_certificates(LiveView(os.fspath(root), {}))
    assert [x.name for x in search.certificates] == ["/etc/verity.d/a.crt", "/run/verity.d/b.crt"]
    assert all(Path(x.path).is_relative_to(root) for x in search.certificates)


def test_no_certificate_directories(tmp_path: Path) -> None:
    search = find_certificates(LiveView(os.fspath(make_root(tmp_path)), {}))
    assert search.certificates == () and search.ignored == ()


# --------------------------------------------------------------------------------------------------
# Signatures


@pytest.fixture(scope="module")
def signers(tmp_path_factory: pytest.TempPathFactory) -> tuple[object, object]:
    base = tmp_path_factory.mktemp("signers")
    return make_signer(base, "good"), make_signer(base, "other")


@pytest.mark.parametrize(
    "trusted, signed_hash, garbage, expected",
    [
        (["good"], HASH, False, "signed by /etc/verity.d/good.crt"),
        (["other", "good"], HASH, False, "signed by /etc/verity.d/good.crt"),
        (["other"], HASH, False, "signed by an unknown certificate"),
        ([], HASH, False, "no trusted certificate: no *.crt in /etc/verity.d, /run/verity.d"),
        (["good"], "00" * 32, False, "the signature does not match the root hash (bad signature)"),
        (["good"], HASH, True, "the signature cannot be verified"),
    ],
)
def test_verify_signature(
    tmp_path: Path,
    signers: tuple[object, object],
    trusted: list[str],
    signed_hash: str,
    garbage: bool,
    expected: str,
) -> None:
    require_tools("openssl")
    good, other = signers
    by_name = {"good": good, "other": other}
    root = make_root(tmp_path)
    for n in trusted:
        trust(root, by_name[n], f"{n}.crt")  # type: ignore[arg-type]
    sig = tmp_path / "sig.p7s"
    if garbage:
        sig.write_bytes(os.urandom(200))
    else:
        sign(signed_hash, good, sig)  # type: ignore[arg-type]
    check = verify_signature(HASH, sig.read_bytes(), find_certificates(LiveView(os.fspath(root), {})))
    assert check.reason.startswith(expected)
    assert check.trusted is expected.startswith("signed by /")
    if check.trusted:
        assert check.certificate is not None and check.certificate.name == "/etc/verity.d/good.crt"


def test_missing_openssl_means_untrusted(tmp_path: Path, signers: tuple[object, object]) -> None:
    good, _ = signers
    root = make_root(tmp_path)
    trust(root, good, "good.crt")  # type: ignore[arg-type]
    check = verify_signature(
        HASH, b"x", find_certificates(LiveView(os.fspath(root), {})), openssl=str(tmp_path / "no-openssl")
    )
    assert not check.trusted and "cannot check the signature" in check.reason


@pytest.mark.parametrize("certificate", [False, True])
def test_openssl_is_an_input_only_with_a_certificate(
    tmp_path: Path, signers: tuple[object, object], certificate: bool
) -> None:
    """Whether openssl is on PATH is part of the trust inputs exactly when it can change a
    signature check: with no certificate the check fails the same way with or without it."""
    good, _ = signers
    root = make_root(tmp_path)
    if certificate:
        trust(root, good, "good.crt")  # type: ignore[arg-type]
    search = find_certificates(LiveView(os.fspath(root), {}))
    sig = tmp_path / "sig.p7s"
    sign(HASH, good, sig)  # type: ignore[arg-type]
    missing = os.fspath(tmp_path / "no-openssl")
    checks = [verify_signature(HASH, sig.read_bytes(), search, openssl=o) for o in ("openssl", missing)]
    with_tool = tmp_path / "with"
    with_tool.mkdir()
    os.symlink(shutil.which("openssl") or "/usr/bin/openssl", with_tool / "openssl")
    inputs = [
        trust_inputs(view, TrustContext(view, dm_verity=True, kernel_signatures=False))
        for view in (
            LiveView(os.fspath(root), {"PATH": os.fspath(d)}) for d in (with_tool, tmp_path / "none")
        )
    ]
    assert (checks[0] != checks[1]) == certificate
    assert (inputs[0] != inputs[1]) == certificate


@pytest.mark.parametrize(
    "name", ["sha256", "sha224", "sha512", "sha384", "sha1", "md5", "sha3_256", "blake2b"]
)
def test_hash_function_agrees_with_hashlib(name: str) -> None:
    """dm-verity's hash by name, without hashlib for the interpreter's own algorithms, against
    hashlib's."""
    import hashlib

    data = bytes(range(256)) * 17
    h = hash_function(name)()
    h.update(data[:100])
    h.update(data[100:])
    assert h.digest() == hashlib.new(name, data).digest()
    assert hash_function(name)(data).hexdigest() == hashlib.new(name, data).hexdigest()


def test_hash_function_refuses_unknown_names() -> None:
    with pytest.raises(ValueError):
        hash_function("no-such-hash")
