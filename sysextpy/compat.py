# SPDX-License-Identifier: LGPL-2.1-or-later
"""Whether an extension's release data fits the host, in systemd's order of checks (spec §4.3)."""

from __future__ import annotations

from .model import HostInfo, ImageClass

TYPE_CHECKING = False  # typing is not imported at run time: it costs start-up time
if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = ["DEFAULT_SCOPES", "check_compatibility"]

# An extension that does not say where it belongs is good for these scopes.
DEFAULT_SCOPES = ("system", "portable")


def check_compatibility(ext: Mapping[str, str], host: HostInfo, image_class: ImageClass) -> tuple[bool, str]:
    """(compatible, reason). The reason names the deciding field and both sides of the comparison."""
    if not ext:
        return False, "no extension-release data"
    release = host.release
    if release is None:
        return False, host.release_error or "the host's os-release data is unavailable"

    scope_key = image_class.scope_key
    if scope_key in ext:
        scopes = tuple(ext[scope_key].split())
        if host.scope not in scopes:
            return False, f"{scope_key}={ext[scope_key]!r} does not include host scope {host.scope!r}"
    elif host.scope not in DEFAULT_SCOPES:
        return False, (
            f"no {scope_key}, which means {' '.join(DEFAULT_SCOPES)!r}, does not include host scope "
            f"{host.scope!r}; add {scope_key}={host.scope} to use it there"
        )

    arch = ext.get("ARCHITECTURE", "")
    if arch and arch != "_any" and arch != host.architecture:
        return False, f"ARCHITECTURE={arch} but host is {host.architecture}"

    ext_id = ext.get("ID", "")
    if not ext_id:
        return False, f"no ID (set ID={release.id} or ID=_any)"
    if ext_id == "_any":
        return True, "ID=_any"
    if ext_id != release.id and ext_id not in release.id_like:
        id_like = " ".join(release.id_like)
        return False, f"ID={ext_id} but host ID={release.id} (ID_LIKE={id_like!r})"
    matched = f"ID={ext_id}" if ext_id == release.id else f"ID={ext_id} (from host ID_LIKE)"

    level_key = image_class.level_key
    host_level = release.level(image_class)
    if not release.version_id and not host_level:
        return True, f"{matched} matches host, which has no VERSION_ID or {level_key}"

    ext_level = ext.get(level_key, "")
    if host_level and ext_level:
        if ext_level != host_level:
            return False, f"{level_key}={ext_level} but host {level_key}={host_level}"
        return True, f"{matched} {level_key}={ext_level} matches host"

    if release.version_id:
        ext_version = ext.get("VERSION_ID", "")
        if not ext_version:
            return False, f"no VERSION_ID while host VERSION_ID={release.version_id}"
        if ext_version != release.version_id:
            return False, f"VERSION_ID={ext_version} but host VERSION_ID={release.version_id}"
        return True, f"{matched} VERSION_ID={ext_version} matches host"

    return (
        True,
        f"{matched} matches host; host {level_key}={host_level} is not checked, the extension has none",
    )
