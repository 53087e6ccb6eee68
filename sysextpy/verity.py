# SPDX-License-Identifier: LGPL-2.1-or-later
"""dm-verity for extension images: root hashes, signatures, trusted certificates, activation.

Where a root hash comes from, best first: the `user.verity.roothash`/`usrhash` extended attributes
or the `.roothash`/`.usrhash` side-car files next to a `.raw` image, the JSON of a GPT verity-sig
partition, or the partition UUIDs of a GPT image (the data partition's UUID is the first half of
the root hash, the verity partition's UUID the second half). A signature is a detached PKCS#7
signature of the root hash in lower-case hex (no newline), from a `.roothash.p7s`/`.usrhash.p7s`
side-car, the `user.verity.*hashsig` attributes or the verity-sig JSON.

Signatures are checked against the `*.crt` certificates of the root being booted (never the
running system's own, which in the initrd is not what the user configured) with the `openssl`
tool: PKCS7_verify() semantics with the trusted certificates as the only candidate signers and
no chain building, which is what systemd's userspace verification does too.
"""

from __future__ import annotations

import binascii
import errno
import os
import struct

from .chase import MISSING, root_relative
from .errors import ImageError, ParseError, ResolveError, SysextError
from .jsonlite import load_json
from .log import log
from .records import record
from .view import FileTooLarge, NotRegularFile, drop_in_files

# Neither pathlib, json nor hashlib: with what they import (re, enum, collections, urllib, OpenSSL)
# they cost every boot that merges a disk image milliseconds (docs/measurements.md).
TYPE_CHECKING = False  # typing is not imported at run time: it costs start-up time
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Any, Callable, Optional, Union

    from .chase import StrPath
    from .view import LiveView

HASH_SOURCES = (
    ("root", "user.verity.roothash", ".roothash"),
    ("usr", "user.verity.usrhash", ".usrhash"),
)
SIGNATURE_SOURCES = {
    "root": ("user.verity.roothashsig", ".roothash.p7s"),
    "usr": ("user.verity.usrhashsig", ".usrhash.p7s"),
}
HASH_TREE_SUFFIX = ".verity"
MIN_ROOT_HASH_BYTES = 16
MAX_SIDECAR_BYTES = 1 << 20
# The verity-sig partition holds a small JSON object padded with NULs; anything larger is not one.
MAX_VERITY_SIG_BYTES = 4 << 20
CERTIFICATE_DIRS = ("/etc/verity.d", "/run/verity.d", "/usr/local/lib/verity.d", "/usr/lib/verity.d")
CERTIFICATE_SUFFIX = ".crt"
SHA256_SIZE = 32
VERITY_SUPERBLOCK_SIGNATURE = b"verity\0\0"

# The interpreter's own hash modules by algorithm name, as (module, constructor): `hashlib` would
# load OpenSSL to find the same ones. Python 3.12 merged the SHA-2 modules into _sha2.
_BUILT_IN_HASHES = {
    "sha256": (("_sha256", "sha256"), ("_sha2", "sha256")),
    "sha224": (("_sha256", "sha224"), ("_sha2", "sha224")),
    "sha512": (("_sha512", "sha512"), ("_sha2", "sha512")),
    "sha384": (("_sha512", "sha384"), ("_sha2", "sha384")),
    "sha1": (("_sha1", "sha1"),),
    "md5": (("_md5", "md5"),),
}


def hash_function(name: str) -> Callable[..., Any]:
    """The constructor of hash algorithm `name` (lower case), e.g. hash_function("sha256")(data):
    the interpreter's own where it has one, else OpenSSL's through hashlib; ValueError if neither
    knows it."""
    for module, attr in _BUILT_IN_HASHES.get(name, ()):
        try:
            found: Callable[..., Any] = getattr(__import__(module), attr)
            return found
        except (ImportError, AttributeError):
            continue
    import hashlib  # an algorithm only OpenSSL has (or an interpreter built without its own)

    if name not in hashlib.algorithms_available:
        raise ValueError(f"unsupported hash type {name}")
    return lambda data=b"": hashlib.new(name, data)


def sidecars_enabled(view: LiveView) -> bool:
    """$SYSTEMD_DISSECT_VERITY_SIDECAR: any false spelling turns side-car files off."""
    value = view.env("SYSTEMD_DISSECT_VERITY_SIDECAR")
    return value is None or value.strip().lower() not in ("0", "no", "n", "false", "f", "off")


# --------------------------------------------------------------------------------------------------
# Root hashes and signatures


@record(frozen=True)
class RootHash:
    value: bytes
    designator: str  # "root" or "usr": which data partition it protects
    source: str  # where it was found, for messages and `plan`

    @property
    def hex(self) -> str:
        return self.value.hex()


@record(frozen=True)
class Signature:
    data: bytes  # DER PKCS#7, detached, over RootHash.hex
    source: str
    fingerprint: Optional[bytes] = None  # SHA-256 of the signer's DER certificate, when stated


def parse_root_hash(text: bytes, what: str) -> bytes:
    """A root hash written as hex (surrounding white space allowed); ParseError names `what`."""
    try:
        value = binascii.unhexlify(text.strip())
    except (binascii.Error, ValueError):
        raise ParseError(f"{what} is not a hexadecimal root hash") from None
    if len(value) < MIN_ROOT_HASH_BYTES:
        raise ParseError(f"{what} holds a root hash of {len(value)} bytes; at least 16 are needed")
    return value


@record(frozen=True)
class VeritySig:
    """The content of a verity-sig partition."""

    root_hash: bytes
    fingerprint: Optional[bytes]
    signature: bytes


def parse_verity_sig(data: bytes, what: str = "verity-sig partition") -> VeritySig:
    """{"rootHash": hex, "certificateFingerprint": hex, "signature": base64}, NUL padded."""
    text = data.rstrip(b"\0")
    if not text.strip():
        raise ParseError(f"{what} is empty")
    try:
        obj = load_json(text.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise ParseError(f"{what} does not hold valid JSON: {e}") from None
    if not isinstance(obj, dict):
        raise ParseError(f"{what} does not hold a JSON object")
    root_hash = obj.get("rootHash")
    if not isinstance(root_hash, str):
        raise ParseError(f'{what} has no "rootHash" string')
    value = parse_root_hash(root_hash.encode("ascii", "replace"), f'"rootHash" of the {what}')
    fingerprint: Optional[bytes] = None
    fp = obj.get("certificateFingerprint")
    if fp is not None:
        if not isinstance(fp, str):
            raise ParseError(f'"certificateFingerprint" of the {what} is not a string')
        try:
            fingerprint = binascii.unhexlify(fp.replace(":", ""))
        except (binascii.Error, ValueError):
            raise ParseError(f'"certificateFingerprint" of the {what} is not hexadecimal') from None
        if len(fingerprint) != SHA256_SIZE:
            raise ParseError(f'"certificateFingerprint" of the {what} is not a SHA-256 fingerprint')
    sig = obj.get("signature")
    if not isinstance(sig, str):
        raise ParseError(f'{what} has no "signature" string')
    try:
        signature = b64decode_strict(sig)
    except (binascii.Error, ValueError):
        raise ParseError(f'"signature" of the {what} is not base64') from None
    if not signature:
        raise ParseError(f'"signature" of the {what} is empty')
    return VeritySig(root_hash=value, fingerprint=fingerprint, signature=signature)


# --------------------------------------------------------------------------------------------------
# Side-car files and extended attributes


@record(frozen=True)
class Sidecars:
    root_hash: Optional[RootHash] = None
    signature: Optional[Signature] = None
    hash_tree: Optional[str] = None  # the `.verity` file, host path


def _read_xattr(view: LiveView, path: str, name: str) -> Optional[bytes]:
    try:
        return view.getxattr(path, name)
    except OSError as e:
        if e.errno == errno.ENOENT:
            return None
        raise ImageError(f"cannot read extended attribute {name} of {path!r}: {e.strerror}") from e


def _sidecar_path(view: LiveView, image: str, suffix: str) -> Optional[str]:
    """Resolve NAME<suffix> next to NAME.raw inside the root; None when missing."""
    inner = root_relative(view.root, image)
    if not inner.endswith(".raw"):
        return None
    try:
        return view.resolve(inner[: -len(".raw")] + suffix)
    except ResolveError as e:
        if e.errno in MISSING:
            return None
        raise ImageError(f"cannot look up side-car {inner[:-4] + suffix!r}: {e.message}") from e


def _read_sidecar(view: LiveView, path: str) -> bytes:
    what = root_relative(view.root, path)
    try:
        return view.read(path, MAX_SIDECAR_BYTES)
    except NotRegularFile:
        raise ImageError(f"side-car {what!r} is not a regular file") from None
    except FileTooLarge as e:
        raise ImageError(f"side-car {what!r} is implausibly large ({e.size} bytes)") from None
    except OSError as e:
        raise ImageError(f"cannot read side-car {what!r}: {e.strerror}") from e


def find_sidecars(view: LiveView, image: str) -> Sidecars:
    """Root hash, signature and hash tree for an image, from its xattrs and `NAME.*` side-cars.

    Side-car files are looked up next to the resolved image (`image`, root-prefixed) and resolved
    inside the view's root, so a symlinked `.roothash.p7s` works and can never point at the host.
    ImageError when one exists but is unusable (not hex, empty signature, unreadable).
    """
    if not sidecars_enabled(view):
        return Sidecars()
    root_hash: Optional[RootHash] = None
    for designator, attr, suffix in HASH_SOURCES:
        raw = _read_xattr(view, image, attr)
        source = f"extended attribute {attr}"
        if raw is None:
            path = _sidecar_path(view, image, suffix)
            if path is None:
                continue
            raw = _read_sidecar(view, path)
            source = f"side-car {root_relative(view.root, path)!r}"
        try:
            root_hash = RootHash(parse_root_hash(raw, source), designator, source)
        except ParseError as e:
            raise ImageError(e.message) from None
        break

    signature: Optional[Signature] = None
    if root_hash is not None:
        # The signature that goes with the hash first, then the other kind, as upstream looks.
        order = [root_hash.designator] + [d for d, _, _ in HASH_SOURCES if d != root_hash.designator]
        for designator in order:
            attr, suffix = SIGNATURE_SOURCES[designator]
            data = _read_xattr(view, image, attr)
            source = f"extended attribute {attr}"
            if data is None:
                path = _sidecar_path(view, image, suffix)
                if path is None:
                    continue
                data = _read_sidecar(view, path)
                source = f"side-car {root_relative(view.root, path)!r}"
            if not data:
                raise ImageError(f"signature {source} is empty")
            signature = Signature(data, source)
            break

    hash_tree = _sidecar_path(view, image, HASH_TREE_SUFFIX)
    return Sidecars(
        root_hash=root_hash,
        signature=signature,
        hash_tree=hash_tree,
    )


def sidecar_root_hash(view: LiveView, image: str) -> Optional[str]:
    """The side-car/xattr root hash of a raw image in hex, or None (also when a side-car is unusable:
    identity must never fail; the image is judged, and rejected if need be, when it is dissected)."""
    try:
        found = find_sidecars(view, image).root_hash
    except SysextError as e:
        log.debug("No usable side-car root hash for %s: %s", image, e)
        return None
    return found.hex if found is not None else None


# --------------------------------------------------------------------------------------------------
# The hash tree


@record(frozen=True)
class VeritySuperblock:
    version: int
    hash_type: int  # 1: salt before the data (the normal format); 0: after (Chrome OS)
    uuid: bytes
    algorithm: str
    data_block_size: int
    hash_block_size: int
    data_blocks: int
    salt: bytes

    def digest(self, block: bytes) -> bytes:
        h = hash_function(self.algorithm)()
        if self.hash_type == 0:
            h.update(block)
            h.update(self.salt)
        else:
            h.update(self.salt)
            h.update(block)
        digest: bytes = h.digest()
        return digest


def parse_verity_superblock(data: bytes) -> VeritySuperblock:
    """The superblock `veritysetup format` writes at the start of a hash device."""
    if len(data) < 512 or data[:8] != VERITY_SUPERBLOCK_SIGNATURE:
        raise ParseError("no dm-verity superblock")
    version, hash_type = struct.unpack_from("<II", data, 8)
    algorithm = data[32:64].split(b"\0", 1)[0].decode("ascii", "replace").lower()
    data_block_size, hash_block_size, data_blocks, salt_size = struct.unpack_from("<IIQH", data, 64)
    if version != 1 or hash_type not in (0, 1):
        raise ParseError(f"unsupported dm-verity superblock (version {version}, type {hash_type})")
    try:
        hash_function(algorithm)
    except ValueError:
        raise ParseError(f"unsupported dm-verity hash algorithm {algorithm!r}") from None
    for size in (data_block_size, hash_block_size):
        if size < 512 or size > (1 << 20) or size & (size - 1):
            raise ParseError(f"invalid dm-verity block size {size}")
    if salt_size > 256 or data_blocks == 0:
        raise ParseError("invalid dm-verity superblock")
    return VeritySuperblock(
        version=version,
        hash_type=hash_type,
        uuid=bytes(data[16:32]),
        algorithm=algorithm,
        data_block_size=data_block_size,
        hash_block_size=hash_block_size,
        data_blocks=data_blocks,
        salt=bytes(data[88 : 88 + salt_size]),
    )


def top_block_location(sb: VeritySuperblock) -> tuple[str, int, int]:
    """("hash"|"data", offset, length) of the block whose digest is the root hash.

    The hash levels follow the superblock, top level first; with a single data block there are no
    hash blocks and the root hash is that block's digest.
    """
    if sb.data_blocks == 1:
        return "data", 0, sb.data_block_size
    return "hash", sb.hash_block_size, sb.hash_block_size


# --------------------------------------------------------------------------------------------------
# Certificates


@record(frozen=True)
class Certificate:
    path: str  # host path (root-prefixed)
    name: str  # path inside the root, for messages
    fingerprint: bytes  # SHA-256 of the DER encoding
    pem: bytes


@record(frozen=True)
class CertificateSearch:
    certificates: tuple[Certificate, ...]
    searched: tuple[str, ...]  # directories inside the root, in precedence order
    ignored: tuple[tuple[str, str], ...] = ()  # (path inside the root, why)
    root: str = "/"

    def describe_dirs(self) -> str:
        where = "" if os.fspath(self.root) == "/" else f" (inside {os.fspath(self.root)!r})"
        return ", ".join(self.searched) + where


def pem_certificates(data: bytes) -> list[bytes]:
    """The DER bodies of the PEM CERTIFICATE blocks in `data`."""
    found = []
    begin, end = b"-----BEGIN CERTIFICATE-----", b"-----END CERTIFICATE-----"
    pos = 0
    while True:
        start = data.find(begin, pos)
        if start < 0:
            break
        stop = data.find(end, start)
        if stop < 0:
            break
        body = data[start + len(begin) : stop]
        try:
            der = b64decode_strict(b"".join(body.split()))
        except (binascii.Error, ValueError):
            der = b""
        if der:
            found.append(der)
        pos = stop + len(end)
    return found


def find_certificates(view: LiveView) -> CertificateSearch:
    """The trusted `*.crt` certificates of the view's root (§7.3.2): earlier directories override
    later ones by file name, a link to /dev/null (or an empty file) masks, only regular files count,
    other suffixes are ignored (and said so). Everything is resolved inside the root."""
    ignored: list[tuple[str, str]] = []
    chosen = drop_in_files(
        view,
        CERTIFICATE_DIRS,
        CERTIFICATE_SUFFIX,
        ignored,
        other=f"not a {CERTIFICATE_SUFFIX} file (only *{CERTIFICATE_SUFFIX} is read)",
    )

    certs: list[Certificate] = []
    for name in sorted(chosen):
        inner, entry = chosen[name]
        try:
            if view.lstat(entry).is_link and view.readlink(entry) == "/dev/null":
                ignored.append((inner, "masked (link to /dev/null)"))
                continue
            path = view.resolve(inner)
            st = view.stat(path)
        except ResolveError as e:
            ignored.append((inner, e.message))
            continue
        except OSError as e:
            ignored.append((inner, e.strerror or "cannot be read"))
            continue
        if st.is_chr:
            ignored.append((inner, "masked (character device)"))
            continue
        if not st.is_reg:
            ignored.append((inner, "not a regular file"))
            continue
        if st.size == 0:
            ignored.append((inner, "masked (empty file)"))
            continue
        try:
            pem = view.read(path, MAX_SIDECAR_BYTES)
        except OSError as e:
            ignored.append((inner, e.strerror or "cannot be read"))
            continue
        ders = pem_certificates(pem)
        if not ders:
            ignored.append((inner, "holds no PEM certificate"))
            continue
        # A file with several certificates trusts each of them.
        for der in ders:
            block = binascii.b2a_base64(der, newline=False)
            lines = [block[i : i + 64] for i in range(0, len(block), 64)]
            one_pem = b"-----BEGIN CERTIFICATE-----\n" + b"\n".join(lines) + b"\n-----END CERTIFICATE-----\n"
            certs.append(Certificate(path, inner, hash_function("sha256")(der).digest(), one_pem))
    return CertificateSearch(
        certificates=tuple(certs), searched=CERTIFICATE_DIRS, ignored=tuple(ignored), root=view.root
    )


# --------------------------------------------------------------------------------------------------
# Signature verification


@record(frozen=True)
class SignatureCheck:
    trusted: bool
    certificate: Optional[Certificate]
    reason: str  # why not trusted, or which certificate vouched


def _short(fingerprint: bytes) -> str:
    return fingerprint.hex()[:16]


_B64_ALPHABET = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")


def b64decode_strict(data: Union[str, bytes]) -> bytes:
    """Base64 with nothing but the alphabet and up to two "=" at the end; ValueError otherwise."""
    raw = data.encode("ascii") if isinstance(data, str) else data
    body = raw.rstrip(b"=")
    if len(raw) - len(body) > 2 or not _B64_ALPHABET.issuperset(body):
        raise ValueError("not base64")
    return binascii.a2b_base64(raw)


def _write_new(path: str, data: bytes) -> None:
    """Write a file that must not exist yet (in a directory only we can use)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    with open(fd, "wb") as f:
        f.write(data)


def _private_dir(parent: Optional[StrPath]) -> str:
    """A new directory only we can use, in `parent` (default: $TMPDIR or /tmp)."""
    base = os.fspath(parent) if parent is not None else os.environ.get("TMPDIR") or "/tmp"
    for _ in range(100):
        path = os.path.join(base, f"sysextpy-verity-{os.getpid()}-{os.urandom(6).hex()}")
        try:
            os.mkdir(path, 0o700)
            return path
        except FileExistsError:
            continue
    raise SysextError(f"cannot create a private directory in {os.fspath(base)!r}")


def _remove_private_dir(path: str) -> None:
    # Best effort: the files are ours and small; a leftover in the workspace dies with it.
    for name in os.listdir(path):
        try:
            os.unlink(os.path.join(path, name))
        except OSError as e:
            log.debug("Could not remove %s: %s", os.path.join(path, name), e)
    try:
        os.rmdir(path)
    except OSError as e:
        log.debug("Could not remove %s: %s", path, e)


def verify_signature(
    root_hash_hex: str,
    signature: bytes,
    search: CertificateSearch,
    *,
    fingerprint: Optional[bytes] = None,
    openssl: str = "openssl",
    workdir: Optional[StrPath] = None,
) -> SignatureCheck:
    """Check a detached PKCS#7 signature of the hex root hash against the trusted certificates."""
    from .run import run

    dirs = search.describe_dirs()
    if not search.certificates:
        return SignatureCheck(False, None, f"no trusted certificate: no *{CERTIFICATE_SUFFIX} in {dirs}")
    tmpdir = _private_dir(workdir)
    try:
        _write_new(os.path.join(tmpdir, "roothash"), root_hash_hex.encode("ascii"))
        _write_new(os.path.join(tmpdir, "signature.p7s"), signature)
        _write_new(os.path.join(tmpdir, "trusted.pem"), b"".join(c.pem for c in search.certificates))
        argv = [
            openssl,
            "smime",
            "-verify",
            "-binary",
            "-inform",
            "DER",
            "-in",
            os.path.join(tmpdir, "signature.p7s"),
            "-content",
            os.path.join(tmpdir, "roothash"),
            "-certfile",
            os.path.join(tmpdir, "trusted.pem"),
            # Only the trusted certificates may be the signer; no chain to a CA is built.
            "-nointern",
            "-noverify",
            "-signer",
            os.path.join(tmpdir, "signer.pem"),
            "-out",
            os.devnull,
        ]
        try:
            proc = run(argv, check=False, timeout=60)
        except SysextError as e:
            return SignatureCheck(False, None, f"cannot check the signature: {e}")
        if proc.returncode == 0:
            try:
                with open(os.path.join(tmpdir, "signer.pem"), "rb") as f:
                    signer = pem_certificates(f.read())
            except OSError:
                signer = []
            prints = {hash_function("sha256")(der).digest() for der in signer}
            for cert in search.certificates:
                if cert.fingerprint in prints:
                    return SignatureCheck(True, cert, f"signed by {cert.name}")
            return SignatureCheck(False, None, "openssl accepted the signature but named no trusted signer")
    finally:
        _remove_private_dir(tmpdir)
    output = (proc.stderr or "") + (proc.stdout or "")
    if "signer certificate not found" in output:
        who = f" (SHA-256 fingerprint {_short(fingerprint)}...)" if fingerprint else ""
        return SignatureCheck(
            False,
            None,
            f"signed by an unknown certificate{who}: none of the *{CERTIFICATE_SUFFIX} in {dirs}",
        )
    if "signature failure" in output or "digest failure" in output or "bad signature" in output:
        return SignatureCheck(False, None, "the signature does not match the root hash (bad signature)")
    last = [line for line in output.strip().splitlines() if line.strip()]
    detail = last[-1] if last else f"openssl exit status {proc.returncode}"
    return SignatureCheck(False, None, f"the signature cannot be verified: {detail}")


# --------------------------------------------------------------------------------------------------
# Activation


@record(frozen=True)
class VerityActivation:
    name: str  # the /dev/mapper name
    data_device: str
    hash_device: str
    root_hash_hex: str
    hash_offset: int = 0
    signature_file: Optional[str] = None  # kernel keyring check of the signature

    @property
    def device(self) -> str:
        return f"/dev/mapper/{self.name}"


def veritysetup_open_argv(act: VerityActivation, veritysetup: str = "veritysetup") -> list[str]:
    argv = [
        veritysetup,
        "open",
        os.fspath(act.data_device),
        act.name,
        os.fspath(act.hash_device),
        act.root_hash_hex,
    ]
    if act.hash_offset:
        argv.append(f"--hash-offset={act.hash_offset}")
    if act.signature_file is not None:
        argv.append(f"--root-hash-signature={os.fspath(act.signature_file)}")
    return argv


def activate(act: VerityActivation) -> str:
    """Create the dm-verity device; MountError-free: raises ImageError with veritysetup's reason."""
    from .run import run

    try:
        run(veritysetup_open_argv(act), timeout=120)
    except SysextError as e:
        raise ImageError(f"dm-verity activation failed: {e}") from e
    return act.device


def deactivate(name: str, *, deferred: bool) -> None:
    """Remove a dm-verity device; deferred: as soon as its last user (the mount) is gone."""
    from .run import run

    argv: Sequence[str] = ["veritysetup", "close", *(["--deferred"] if deferred else []), name]
    proc = run(argv, check=False, timeout=60)
    if proc.returncode != 0:
        log.warning("Could not remove dm-verity device %s: %s", name, (proc.stderr or "").strip())
