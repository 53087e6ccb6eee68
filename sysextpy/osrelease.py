# SPDX-License-Identifier: LGPL-2.1-or-later
"""os-release and extension-release files: the parser, safe reading, and where to find them.

The parser is pure (text in, values out). Everything that touches the file system reads through a
view (view.py) of the root or of an image's tree, which resolves paths inside that root, so an
absolute symlink in an image or in --root never escapes to the host.
"""

from __future__ import annotations

from .chase import MISSING, root_relative
from .errors import ImageError, ParseError, ResolveError, SysextError
from .model import HostRelease, ImageClass
from .records import record
from .util import parse_bool
from .view import FileTooLarge, NotRegularFile, read_text

TYPE_CHECKING = False  # typing is not imported at run time: it costs start-up time
if TYPE_CHECKING:
    from typing import Optional

    from .view import LiveView

__all__ = [
    "ReleaseLookup",
    "find_extension_release",
    "image_base_name",
    "image_has_os_release",
    "image_name_is_valid",
    "is_initrd_root",
    "load_host_release",
    "parse_os_release",
    "parse_os_release_verbose",
]

STRICT_XATTR = "user.extension-release.strict"
RELEASE_PREFIX = "extension-release."

_KEY_START = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_")
_KEY_CHARS = _KEY_START | frozenset("0123456789")
_BLANK = " \t\r"  # a lone CR (not part of CRLF) counts as blank, like in systemd
_DOUBLE_QUOTE_ESCAPABLE = '"\\`$'


# --------------------------------------------------------------------------------------------------
# The parser


def is_valid_key(key: str) -> bool:
    """A shell variable name, as os-release(5) allows: [A-Za-z_][A-Za-z0-9_]*."""
    return bool(key) and key[0] in _KEY_START and all(c in _KEY_CHARS for c in key)


def parse_os_release(text: str) -> dict[str, str]:
    """Parse os-release syntax; never raises. See parse_os_release_verbose() for the rules."""
    return parse_os_release_verbose(text)[0]


def parse_os_release_verbose(text: str) -> tuple[dict[str, str], list[str]]:
    """Parse os-release(5) syntax and say which lines were ignored and why.

    KEY=value assignments, one per line; blank lines and lines starting with '#' or ';' are
    comments; whitespace around keys and values is trimmed; values may be quoted like in a shell
    ('...' literal, "..." with backslash escapes for " \\ ` $), may span lines inside quotes or with
    a trailing backslash; the last assignment to a key wins. Lines that are not assignments or assign
    to a name that is not [A-Za-z_][A-Za-z0-9_]* are skipped with a warning. Never raises.
    """
    src = text.replace("\r\n", "\n")
    end = len(src)
    fields: dict[str, str] = {}
    warnings: list[str] = []
    pos = 0
    line = 1
    while pos < end:
        while pos < end and src[pos] in _BLANK:
            pos += 1
        if pos >= end:
            break
        char = src[pos]
        if char == "\n":
            pos += 1
            line += 1
            continue
        if char in "#;":
            pos, line = _skip_comment(src, pos, line)
            continue

        start_line = line
        key_end = pos
        while key_end < end and src[key_end] not in "=\n":
            key_end += 1
        if key_end >= end or src[key_end] == "\n":
            warnings.append(f"line {start_line}: ignoring {src[pos:key_end]!r}: not a KEY=value assignment")
            pos = key_end
            continue

        key = src[pos:key_end].rstrip(_BLANK)
        value, pos, line, closed = _read_value(src, key_end + 1, line)
        if not is_valid_key(key):
            warnings.append(
                f"line {start_line}: ignoring assignment to {key!r}: not a valid name "
                "(letters, digits and '_', not starting with a digit)"
            )
            continue
        if not closed:
            warnings.append(f"line {start_line}: value of {key} has an unterminated quote; using it as is")
        fields[key] = value
    return fields, warnings


def _skip_comment(src: str, pos: int, line: int) -> tuple[int, int]:
    # A backslash escapes the next character even here, so "# foo \" continues the comment.
    end = len(src)
    while pos < end:
        char = src[pos]
        if char == "\\" and pos + 1 < end:
            if src[pos + 1] == "\n":
                line += 1
            pos += 2
            continue
        pos += 1
        if char == "\n":
            return pos, line + 1
    return pos, line


def _read_value(src: str, pos: int, line: int) -> tuple[str, int, int, bool]:
    """Read one value starting after '='. Returns (value, next position, line there, quotes closed)."""
    end = len(src)
    while pos < end and src[pos] in _BLANK:
        pos += 1
    chunks: list[str] = []
    keep = 0  # chunks[:keep] survive trimming of trailing unquoted blanks
    closed = True
    while pos < end:
        char = src[pos]
        if char == "\n":
            return "".join(chunks[:keep]), pos + 1, line + 1, closed
        if char == "\\":
            if pos + 1 >= end:  # a lone backslash at the very end escapes nothing
                pos = end
                break
            escaped = src[pos + 1]
            pos += 2
            if escaped == "\n":
                line += 1
                continue
            chunks.append(escaped)
            keep = len(chunks)
            continue
        if char == "'":
            close = src.find("'", pos + 1)
            if close < 0:
                closed = False
                chunk, pos = src[pos + 1 :], end
            else:
                chunk, pos = src[pos + 1 : close], close + 1
            line += chunk.count("\n")
            chunks.append(chunk)
            keep = len(chunks)
            continue
        if char == '"':
            chunk, pos, line, ok = _read_double_quoted(src, pos + 1, line)
            closed = closed and ok
            chunks.append(chunk)
            keep = len(chunks)
            continue
        chunks.append(char)
        if char not in _BLANK:
            keep = len(chunks)
        pos += 1
    return "".join(chunks[:keep]), pos, line, closed


def _read_double_quoted(src: str, pos: int, line: int) -> tuple[str, int, int, bool]:
    end = len(src)
    out: list[str] = []
    while pos < end:
        char = src[pos]
        if char == '"':
            return "".join(out), pos + 1, line, True
        if char == "\\" and pos + 1 < end:
            escaped = src[pos + 1]
            pos += 2
            if escaped == "\n":
                line += 1
            elif escaped in _DOUBLE_QUOTE_ESCAPABLE:
                out.append(escaped)
            else:
                out.append("\\" + escaped)
            continue
        if char == "\n":
            line += 1
        out.append(char)
        pos += 1
    return "".join(out), end, line, False


# --------------------------------------------------------------------------------------------------
# Host data


def _resolve_existing(view: LiveView, path: str) -> Optional[str]:
    """Resolve path inside the view's root; None when it (or a parent) does not exist. Other
    failures raise."""
    try:
        return view.resolve(path)
    except ResolveError as e:
        if e.errno in MISSING:
            return None
        raise


def load_host_release(view: LiveView) -> HostRelease:
    """The host's os-release inside the view's root, per §4.2.

    $SYSTEMD_OS_RELEASE when set (no fallback), else /etc/os-release, else /usr/lib/os-release.
    SysextError when there is none, it cannot be read, or it has no ID=.
    """
    root = view.root
    override = view.env("SYSTEMD_OS_RELEASE")
    tried = [override] if override is not None else ["/etc/os-release", "/usr/lib/os-release"]
    resolved: Optional[str] = None
    text: Optional[str] = None
    try:
        for candidate in tried:
            resolved = _resolve_existing(view, candidate)
            if resolved is not None:
                text = read_text(view, resolved)
                break
    except SysextError as e:
        raise SysextError(
            f"Failed to acquire 'os-release' data of OS tree {root!r}: {e.message}", hint=e.hint
        ) from e
    if resolved is None or text is None:
        names = " or ".join(repr(t) for t in tried)
        raise SysextError(
            f"Failed to acquire 'os-release' data of OS tree {root!r}: no {names} in it",
            hint="install os-release(5) in the OS tree or point $SYSTEMD_OS_RELEASE at it",
        )

    fields = parse_os_release(text)
    source = root_relative(root, resolved)
    os_id = fields.get("ID", "")
    if not os_id:
        raise SysextError(
            f"'ID' field not found or empty in {source!r} of OS tree {root!r}",
            hint="os-release must set ID=, e.g. ID=fedora",
        )
    return HostRelease(
        id=os_id,
        id_like=tuple(fields.get("ID_LIKE", "").split()),
        version_id=fields.get("VERSION_ID", ""),
        sysext_level=fields.get("SYSEXT_LEVEL", ""),
        confext_level=fields.get("CONFEXT_LEVEL", ""),
        source=source,
    )


def is_initrd_root(view: LiveView) -> bool:
    """Whether the OS tree of the view is an initrd (it has /etc/initrd-release)."""
    return view.exists("/etc/initrd-release")


def image_has_os_release(tree: LiveView) -> bool:
    """Whether an extension image (the view of its tree) carries /usr/lib/os-release, which it
    must not."""
    return _resolve_existing(tree, "/usr/lib/os-release") is not None


# --------------------------------------------------------------------------------------------------
# extension-release files inside images


def image_name_is_valid(name: str) -> bool:
    """systemd's image_name_is_valid(): a plain file name, no control characters, no '.#' temp files."""
    if name in ("", ".", "..") or "/" in name or len(name.encode("utf-8", "surrogatepass")) > 255:
        return False
    if any(ord(c) < 0x20 or ord(c) == 0x7F or "\ud800" <= c <= "\udfff" for c in name):
        return False  # control characters, or bytes that are not UTF-8 (lone surrogates)
    return not name.startswith(".#")


def image_base_name(name: str) -> Optional[str]:
    """The name an image's extension-release file may use: suffix stripped, cut at the first '_' or '+'."""
    for suffix in (".sysext.raw", ".confext.raw", ".raw"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    for i, char in enumerate(name):
        if char in "_+":
            name = name[:i]
            break
    return name if image_name_is_valid(name) else None


@record(frozen=True)
class ReleaseLookup:
    """Where an image's extension-release data came from, what it says, and why."""

    path: Optional[str]  # resolved, image-root-prefixed; None when no usable file was found
    fields: tuple[tuple[str, str], ...]
    reason: str
    ambiguous: bool = False  # more than one candidate qualified (upstream: ENOTUNIQ)
    warnings: tuple[str, ...] = ()  # lines of the file the parser skipped

    @property
    def found(self) -> bool:
        return self.path is not None

    def as_dict(self) -> dict[str, str]:
        return dict(self.fields)


def _strict_xattr_verdict(tree: LiveView, path: str, file_name: str) -> tuple[bool, str]:
    """Whether a fallback candidate opted out of strict name matching, and a note for the reason."""
    try:
        raw = tree.getxattr(path, STRICT_XATTR)
    except OSError as e:
        return False, f"{file_name} (cannot read its {STRICT_XATTR} xattr: {e.strerror})"
    if raw is None:
        return False, f"{file_name} (set {STRICT_XATTR}=0 on it to accept it)"
    text = raw.rstrip(b"\0").decode("utf-8", errors="replace")
    try:
        strict = parse_bool(text)
    except ParseError:
        return False, f"{file_name} (its {STRICT_XATTR}={text!r} is not a boolean; set it to 0 to accept it)"
    if strict:
        return False, f"{file_name} (its {STRICT_XATTR} is true; set it to 0 to accept it)"
    return True, f"{file_name} ({STRICT_XATTR}={text})"


RELEASE_LIMIT = 64 << 10


def decode_release(data: bytes, what: str) -> str:
    """The text of a release file, or ImageError: like systemd, a file with a NUL byte or with
    bytes that are not UTF-8 anywhere in it is refused whole, never read in part."""
    nul = data.find(b"\0")
    if nul >= 0:
        raise ImageError(f"{what} holds a NUL byte at offset {nul}: refusing the whole file")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ImageError(
            f"{what} holds bytes that are not UTF-8 at offset {e.start}: refusing the whole file"
        ) from None


def _lookup_result(tree: LiveView, path: str, reason: str) -> ReleaseLookup:
    what = f"release file {root_relative(tree.root, path)!r}"
    try:
        data = tree.read(path, RELEASE_LIMIT)
    except NotRegularFile as e:
        raise ImageError(f"{what} is {e.kind}, not a regular file") from e
    except FileTooLarge as e:
        raise ImageError(f"{what} has {e.size} bytes, more than the limit of {RELEASE_LIMIT}") from e
    fields, warnings = parse_os_release_verbose(decode_release(data, what))
    return ReleaseLookup(path=path, fields=tuple(fields.items()), reason=reason, warnings=tuple(warnings))


def find_extension_release(
    tree: LiveView, name: str, image_class: ImageClass, *, strict: bool = True
) -> ReleaseLookup:
    """Find and read the extension-release file of image `name` in the view of the image's tree.

    First `<release dir>/extension-release.<name>`; if that does not exist, the one regular
    `extension-release.*` file in the release directory that is named after the image's base name or
    carries user.extension-release.strict=0 (in relaxed mode: any single one). Absence and ambiguity
    are reported in the result; a broken image (unreadable, non-regular or undecodable release file,
    symlink loop, unreadable directory) raises ImageError.
    """
    try:
        return _find_extension_release(tree, name, image_class, strict)
    except ImageError:
        raise
    except SysextError as e:
        raise ImageError(f"Cannot read the release data of image {name!r}: {e.message}", hint=e.hint) from e
    except OSError as e:
        raise ImageError(
            f"Cannot read the release data of image {name!r}: {e.strerror} ({e.filename!r})"
        ) from e


def _find_extension_release(
    tree: LiveView, name: str, image_class: ImageClass, strict: bool
) -> ReleaseLookup:
    release_dir = image_class.release_dir
    wanted = RELEASE_PREFIX + name
    if not image_name_is_valid(name):
        return ReleaseLookup(None, (), f"{name!r} is not a valid image name, so it has no {wanted!r}")

    primary = _resolve_existing(tree, f"/{release_dir}/{wanted}")
    if primary is not None:
        return _lookup_result(tree, primary, f"read {release_dir}/{wanted}")

    directory = _resolve_existing(tree, "/" + release_dir)
    if directory is None or not tree.stat(directory).is_dir:
        return ReleaseLookup(None, (), f"{wanted} missing: the image has no {release_dir}/ directory")

    base = image_base_name(name) if strict else None
    accepted: list[tuple[str, str]] = []
    rejected: list[str] = []
    for entry_name, kind in tree.entries(directory):
        if not entry_name.startswith(RELEASE_PREFIX):
            continue
        suffix = entry_name[len(RELEASE_PREFIX) :]
        if not image_name_is_valid(suffix):
            continue
        if kind != "f":
            rejected.append(f"{entry_name} (not a regular file)")
            continue
        path = f"{directory.rstrip('/')}/{entry_name}"
        if not strict:
            accepted.append((path, f"{entry_name} (relaxed check: any single file)"))
        elif base is not None and suffix == base:
            accepted.append((path, f"{entry_name} (matches the base name {base!r})"))
        else:
            ok, note = _strict_xattr_verdict(tree, path, entry_name)
            if ok:
                accepted.append((path, note))
            else:
                rejected.append(note)

    if len(accepted) > 1:
        names = ", ".join(note for _, note in accepted)
        return ReleaseLookup(
            None,
            (),
            f"{wanted} missing and {len(accepted)} other files in {release_dir}/ qualify: {names}; "
            "keep only one or name it after the image",
            ambiguous=True,
        )
    if len(accepted) == 1:
        path, note = accepted[0]
        return _lookup_result(tree, path, f"{wanted} missing; using {release_dir}/{note}")
    if rejected:
        return ReleaseLookup(None, (), f"{wanted} missing; found " + "; ".join(rejected))
    return ReleaseLookup(
        None, (), f"{wanted} missing and no other extension-release.* file in {release_dir}/"
    )
