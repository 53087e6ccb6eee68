# SPDX-License-Identifier: LGPL-2.1-or-later
"""The vocabulary: enums and frozen dataclasses shared by every module."""

from __future__ import annotations

from .records import Enumeration, field, record
from .state import STATE_PATH

TYPE_CHECKING = False  # typing is not imported at run time: it costs start-up time
if TYPE_CHECKING:
    from typing import Optional


class ImageClass(Enumeration):
    SYSEXT = "sysext"
    CONFEXT = "confext"

    @property
    def default_hierarchies(self) -> tuple[str, ...]:
        return ("/usr", "/opt") if self is ImageClass.SYSEXT else ("/etc",)

    @property
    def env_prefix(self) -> str:
        return "SYSTEMD_SYSEXT" if self is ImageClass.SYSEXT else "SYSTEMD_CONFEXT"

    @property
    def metadata_dir(self) -> str:
        """Name of the metadata directory inside a merged hierarchy."""
        return f".systemd-{self.value}"

    @property
    def list_file(self) -> str:
        """Name of the file listing merged extensions inside the metadata directory."""
        return "extensions" if self is ImageClass.SYSEXT else "confexts"

    @property
    def level_key(self) -> str:
        return "SYSEXT_LEVEL" if self is ImageClass.SYSEXT else "CONFEXT_LEVEL"

    @property
    def scope_key(self) -> str:
        return "SYSEXT_SCOPE" if self is ImageClass.SYSEXT else "CONFEXT_SCOPE"

    @property
    def release_dir(self) -> str:
        """Directory holding extension-release files inside an image (relative, no leading /)."""
        return "usr/lib/extension-release.d" if self is ImageClass.SYSEXT else "etc/extension-release.d"

    @property
    def suffix(self) -> str:
        """Optional class suffix on image names (`foo.sysext.raw`)."""
        return f".{self.value}"

    @property
    def config_name(self) -> str:
        return f"{self.value}.conf"

    @property
    def config_section(self) -> str:
        return "SysExt" if self is ImageClass.SYSEXT else "ConfExt"

    @property
    def upstream_tool(self) -> str:
        return f"systemd-{self.value}"

    def search_dirs(self, initrd: bool) -> tuple[str, ...]:
        """Directories searched for images, highest precedence first."""
        if self is ImageClass.SYSEXT:
            dirs: tuple[str, ...] = ("/etc/extensions", "/run/extensions", "/var/lib/extensions")
            if initrd:
                dirs += ("/.extra/sysext", "/.extra/global_sysext")
            return dirs
        if initrd:
            return (
                "/run/confexts",
                "/var/lib/confexts",
                "/usr/local/lib/confexts",
                "/.extra/confext",
                "/.extra/global_confext",
            )
        return ("/run/confexts", "/var/lib/confexts", "/usr/local/lib/confexts", "/usr/lib/confexts")


ALL_CLASSES = (ImageClass.SYSEXT, ImageClass.CONFEXT)

MUTABLE_BASE = "/var/lib/extensions.mutable"


def component_name(hierarchy: str) -> str:
    """`/usr` -> `usr`, `/foo/bar` -> `foo.bar`: the hierarchy's name under extensions.mutable."""
    return hierarchy.strip("/").replace("/", ".")


class MutableMode(Enumeration):
    NO = "no"
    YES = "yes"
    AUTO = "auto"
    IMPORT = "import"
    EPHEMERAL = "ephemeral"
    EPHEMERAL_IMPORT = "ephemeral-import"

    @property
    def is_ephemeral(self) -> bool:
        return self in (MutableMode.EPHEMERAL, MutableMode.EPHEMERAL_IMPORT)

    @property
    def imports(self) -> bool:
        return self in (MutableMode.IMPORT, MutableMode.EPHEMERAL_IMPORT)


class ImageType(Enumeration):
    DIRECTORY = "directory"
    SUBVOLUME = "subvolume"
    RAW = "raw"
    BLOCK = "block"
    MSTACK = "mstack"

    @property
    def is_file_backed(self) -> bool:
        return self in (ImageType.RAW, ImageType.BLOCK)


class Verdict(Enumeration):
    MERGE = "merge"
    IGNORED = "ignored"  # not for this host or shadowed/masked: not an error, like upstream
    REJECTED = "rejected"  # broken or untrusted: an error for this image, the others go on
    # In the initrd, on a file system it does not mount (the ESP, /boot, an fstab mount point):
    # not an error, the real root merges it.
    DEFERRED = "deferred"


class JsonMode(Enumeration):
    OFF = "off"
    SHORT = "short"
    PRETTY = "pretty"


@record(frozen=True)
class Candidate:
    """One image found by discovery, before anything inside it was read."""

    name: str
    image_class: ImageClass
    type: ImageType
    path: str  # fully resolved, root-prefixed
    entry: str  # the directory entry that named it (root-prefixed, unresolved)
    search_dir: str  # the search directory inside the root, e.g. "/etc/extensions"
    mtime_usec: int = 0
    crtime_usec: int = 0
    version: Optional[str] = None  # the picked version for `.v/` entries


@record(frozen=True)
class Skipped:
    """A directory entry discovery did not turn into an image, and why."""

    entry: str
    image_class: ImageClass
    reason: str
    name: Optional[str] = None
    verdict: Verdict = Verdict.IGNORED


@record(frozen=True)
class HostRelease:
    """What the host's os-release says, for compatibility decisions."""

    id: str
    id_like: tuple[str, ...] = ()
    version_id: str = ""
    sysext_level: str = ""
    confext_level: str = ""
    source: str = ""  # the file it came from, inside the root

    def level(self, image_class: ImageClass) -> str:
        return self.sysext_level if image_class is ImageClass.SYSEXT else self.confext_level


@record(frozen=True)
class HostInfo:
    release: Optional[HostRelease]
    scope: str  # "initrd" or "system"
    architecture: str  # uname-based name in systemd's vocabulary, e.g. "x86-64"
    release_error: Optional[str] = None  # why `release` is None


@record(frozen=True)
class ExtensionVerdict:
    """The decision for one candidate image."""

    candidate: Candidate
    verdict: Verdict
    reason: str
    release: tuple[tuple[str, str], ...] = field(default=())  # the extension-release fields read
    release_file: Optional[str] = None

    @property
    def name(self) -> str:
        return self.candidate.name


class Verb(Enumeration):
    STATUS = "status"
    LIST = "list"
    MERGE = "merge"
    UNMERGE = "unmerge"
    REFRESH = "refresh"
    PLAN = "plan"

    @property
    def mutates(self) -> bool:
        return self in (Verb.MERGE, Verb.UNMERGE, Verb.REFRESH)


DEFAULT_STATE_PATH = STATE_PATH


@record(frozen=True)
class Options:
    """The parsed command line. Everything below the CLI gets its inputs from here, never from argv."""

    verb: Verb = Verb.STATUS
    classes: tuple[ImageClass, ...] = ALL_CLASSES
    root: str = "/"  # absolute and normalised (cli.py); paths are str: pathlib costs milliseconds to import
    root_given: bool = False
    mutable: Optional[MutableMode] = None
    force: bool = False
    no_reload: bool = False
    always_refresh: Optional[bool] = None  # None: not given
    image_policy: Optional[str] = None
    noexec: Optional[bool] = None
    json: JsonMode = JsonMode.OFF
    legend: bool = True
    state: str = DEFAULT_STATE_PATH
    debug: bool = False

    @property
    def reload_allowed(self) -> bool:
        return not (self.no_reload or self.root_given)


@record(frozen=True)
class ClassSettings:
    """Effective settings of one class after CLI, environment and configuration files."""

    image_class: ImageClass
    hierarchies: tuple[str, ...]
    mutable: MutableMode
    mutable_source: str  # "command line", "environment", "<config file>", "default"
    image_policy: Optional[str]  # None: the class default applies
    overlay_options: Optional[str]  # None: unset; "" is a deliberate empty value
    noexec: Optional[bool]
    warnings: tuple[str, ...] = ()
