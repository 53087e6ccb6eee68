# SPDX-License-Identifier: LGPL-2.1-or-later
"""Effective per-class settings: command line > environment > configuration files > defaults."""

from __future__ import annotations

import posixpath

from .errors import SysextError
from .model import ClassSettings, ImageClass, MutableMode, Options

TYPE_CHECKING = False  # typing is not imported at run time: it costs start-up time
if TYPE_CHECKING:
    from typing import Callable, Optional

    from .view import LiveView


def parse_hierarchies(value: str, variable: str) -> tuple[str, ...]:
    """A colon-separated list of absolute, normalised paths other than "/" (upstream's rules)."""
    if value == "":
        raise SysextError(f"${variable} is set but empty", hint="unset it to use the default hierarchies")
    result: list[str] = []
    for item in value.split(":"):
        if not item:
            raise SysextError(f"${variable}={value!r} contains an empty element")
        # normpath() keeps a leading "//" (POSIX allows it), upstream's normalisation check does not.
        if not item.startswith("/") or posixpath.normpath(item) != item or item == "/" or "//" in item:
            raise SysextError(
                f"${variable}={value!r}: {item!r} is not an absolute, normalised path other than '/'"
            )
        if item not in result:
            result.append(item)
    return tuple(result)


def _mutable_from_text(value: str) -> MutableMode:
    from .config import parse_mutable_mode

    return parse_mutable_mode(value)


def class_hierarchies(image_class: ImageClass, env: Callable[[str], Optional[str]]) -> tuple[str, ...]:
    """The hierarchies a class merges into: $SYSTEMD_<CLASS>_HIERARCHIES, else the defaults. `env`
    reads a variable (a view's env(), which a recording view notes, or a mapping's get())."""
    hier_var = f"{image_class.env_prefix}_HIERARCHIES"
    value = env(hier_var)
    return parse_hierarchies(value, hier_var) if value is not None else image_class.default_hierarchies


def resolve_settings(opts: Options, image_class: ImageClass, view: LiveView) -> ClassSettings:
    """Combine the command line, the environment and the root's configuration for one class."""
    from .config import load_config

    warnings: list[str] = []
    prefix = image_class.env_prefix
    hierarchies = class_hierarchies(image_class, view.env)

    config = load_config(view, image_class)
    warnings.extend(config.warnings)

    mutable, source = MutableMode.NO, "default"
    if config.mutable is not None:
        mutable, source = config.mutable, ", ".join(config.files) or "configuration"
    env_mutable = view.env(f"{prefix}_MUTABLE_MODE")
    if env_mutable is not None:  # set but empty is a bad value too, warned about like upstream
        try:
            mutable, source = _mutable_from_text(env_mutable), f"${prefix}_MUTABLE_MODE"
        except SysextError:
            warnings.append(f"ignoring ${prefix}_MUTABLE_MODE={env_mutable!r}: not a mutable mode")
    if opts.mutable is not None:
        mutable, source = opts.mutable, "command line"

    policy = opts.image_policy if opts.image_policy is not None else config.image_policy
    return ClassSettings(
        image_class=image_class,
        hierarchies=hierarchies,
        mutable=mutable,
        mutable_source=source,
        image_policy=policy,
        overlay_options=view.env(f"{prefix}_OVERLAYFS_MOUNT_OPTIONS"),
        noexec=opts.noexec,
        warnings=tuple(warnings),
    )
