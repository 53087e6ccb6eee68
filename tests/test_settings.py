# SPDX-License-Identifier: LGPL-2.1-or-later
"""Effective per-class settings: hierarchies from the environment, and who wins for each setting.

The roots are on a fake file system (pyfakefs) whose host has a configuration of its own; the
program itself runs on tmp_path."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Optional

import pytest
from pyfakefs.fake_filesystem import FakeFilesystem

from sysextpy.errors import EXIT_OK, SysextError
from sysextpy.model import ClassSettings, ImageClass, MutableMode, Options
from sysextpy.settings import class_hierarchies, parse_hierarchies, resolve_settings
from sysextpy.view import LiveView
from tests.conftest import RunSysextpy

SYSEXT = ImageClass.SYSEXT
CONFEXT = ImageClass.CONFEXT


# --------------------------------------------------------------------------------------------------
# Hierarchies


@pytest.mark.parametrize(
    "value, hierarchies",
    [
        ("/usr", ("/usr",)),
        ("/usr:/opt", ("/usr", "/opt")),
        ("/opt:/usr", ("/opt", "/usr")),
        ("/usr/local/lib:/srv/a b", ("/usr/local/lib", "/srv/a b")),
        ("/usr:/usr", ("/usr",)),
    ],
)
def test_parse_hierarchies(value: str, hierarchies: tuple[str, ...]) -> None:
    assert parse_hierarchies(value, "SYSTEMD_SYSEXT_HIERARCHIES") == hierarchies


@pytest.mark.parametrize(
    "value, message",
    [
        ("", "is set but empty"),
        (":", "contains an empty element"),
        ("/usr:", "contains an empty element"),
        ("/usr::/opt", "contains an empty element"),
        ("usr", "'usr' is not an absolute, normalised path"),
        ("/usr:opt", "'opt' is not an absolute"),
        ("./usr", "'./usr' is not an absolute"),
        ("/", "'/' is not an absolute, normalised path other than '/'"),
        ("/usr:/", "'/' is not"),
        ("/usr/../etc", "'/usr/../etc' is not"),
        ("/usr/./lib", "'/usr/./lib' is not"),
        ("/usr//lib", "'/usr//lib' is not"),
        ("//usr", "'//usr' is not"),
        ("/usr/..", "is not"),
    ],
)
def test_parse_hierarchies_errors(value: str, message: str) -> None:
    with pytest.raises(SysextError) as info:
        parse_hierarchies(value, "SYSTEMD_CONFEXT_HIERARCHIES")
    assert "$SYSTEMD_CONFEXT_HIERARCHIES" in str(info.value)
    assert message in str(info.value)
    assert info.value.exit_code == 1


@pytest.fixture
def root(fake_fs: FakeFilesystem) -> Path:
    """An empty root on a fake file system whose host configures both classes: settings that read
    outside the root would show it."""
    for cls in ImageClass:
        body = f"[{cls.config_section}]\nMutable=ephemeral\nImagePolicy=root=absent\n"
        fake_fs.create_file(f"/etc/systemd/{cls.config_name}", contents=body)
    fake_fs.create_dir("/srv/root")
    return Path("/srv/root")


def settings(opts: Options, image_class: ImageClass, env: Mapping[str, str]) -> ClassSettings:
    return resolve_settings(opts, image_class, LiveView(os.fspath(opts.root), env))


@pytest.mark.parametrize(
    "image_class, env, hierarchies",
    [
        (SYSEXT, {}, ("/usr", "/opt")),
        (CONFEXT, {}, ("/etc",)),
        (SYSEXT, {"SYSTEMD_SYSEXT_HIERARCHIES": "/usr"}, ("/usr",)),
        (SYSEXT, {"SYSTEMD_CONFEXT_HIERARCHIES": "/etc/x"}, ("/usr", "/opt")),
        (CONFEXT, {"SYSTEMD_CONFEXT_HIERARCHIES": "/etc:/srv/conf"}, ("/etc", "/srv/conf")),
        (CONFEXT, {"SYSTEMD_SYSEXT_HIERARCHIES": "/usr"}, ("/etc",)),
    ],
)
def test_hierarchies_per_class(
    root: Path, image_class: ImageClass, env: dict[str, str], hierarchies: tuple[str, ...]
) -> None:
    assert class_hierarchies(image_class, LiveView(os.fspath(root), env).env) == hierarchies
    assert settings(Options(root=root), image_class, env).hierarchies == hierarchies


def test_bad_hierarchies_fail_resolution(root: Path) -> None:
    env = {"SYSTEMD_SYSEXT_HIERARCHIES": "relative"}
    with pytest.raises(SysextError, match="SYSTEMD_SYSEXT_HIERARCHIES"):
        settings(Options(root=root), SYSEXT, env)
    with pytest.raises(SysextError, match="SYSTEMD_SYSEXT_HIERARCHIES"):
        class_hierarchies(SYSEXT, LiveView(os.fspath(root), env).env)


# --------------------------------------------------------------------------------------------------
# Mutable mode: command line > environment > configuration > default


def write_config(root: Path, image_class: ImageClass, body: str, where: str = "etc/systemd") -> str:
    path = root / where / image_class.config_name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"[{image_class.config_section}]\n{body}")
    return f"/{where}/{image_class.config_name}"


@pytest.mark.parametrize("image_class", [SYSEXT, CONFEXT])
@pytest.mark.parametrize(
    "cli, env, config, mode, source",
    [
        (None, None, None, MutableMode.NO, "default"),
        (None, None, "yes", MutableMode.YES, "{config}"),
        (None, "auto", "yes", MutableMode.AUTO, "${prefix}_MUTABLE_MODE"),
        (None, "auto", None, MutableMode.AUTO, "${prefix}_MUTABLE_MODE"),
        (None, "true", None, MutableMode.YES, "${prefix}_MUTABLE_MODE"),
        (None, "0", "import", MutableMode.NO, "${prefix}_MUTABLE_MODE"),
        (MutableMode.EPHEMERAL, "auto", "yes", MutableMode.EPHEMERAL, "command line"),
        (MutableMode.NO, "yes", "yes", MutableMode.NO, "command line"),
        (MutableMode.IMPORT, None, None, MutableMode.IMPORT, "command line"),
        # a bad environment value is warned about and ignored: the next source decides
        (None, "bogus", "ephemeral-import", MutableMode.EPHEMERAL_IMPORT, "{config}"),
        (None, "bogus", None, MutableMode.NO, "default"),
        (None, "", "yes", MutableMode.YES, "{config}"),
        (None, "Auto", None, MutableMode.NO, "default"),
    ],
)
def test_mutable_precedence(
    root: Path,
    image_class: ImageClass,
    cli: Optional[MutableMode],
    env: Optional[str],
    config: Optional[str],
    mode: MutableMode,
    source: str,
) -> None:
    prefix = image_class.env_prefix
    environ = {} if env is None else {f"{prefix}_MUTABLE_MODE": env}
    config_file = write_config(root, image_class, f"Mutable={config}\n") if config is not None else ""
    cs = settings(Options(root=root, mutable=cli), image_class, environ)
    assert cs.mutable is mode
    assert cs.mutable_source == source.replace("{config}", config_file).replace("{prefix}", prefix)
    if env in ("bogus", "", "Auto"):
        assert cs.warnings == (f"ignoring ${prefix}_MUTABLE_MODE={env!r}: not a mutable mode",)
    else:
        assert cs.warnings == ()


def test_the_other_class_environment_does_not_apply(root: Path) -> None:
    env = {"SYSTEMD_CONFEXT_MUTABLE_MODE": "yes", "SYSTEMD_CONFEXT_OVERLAYFS_MOUNT_OPTIONS": "x"}
    cs = settings(Options(root=root), SYSEXT, env)
    assert (cs.mutable, cs.overlay_options) == (MutableMode.NO, None)


def test_config_warnings_are_passed_on(root: Path) -> None:
    write_config(root, SYSEXT, "Mutable=sometimes\nFrobnicate=1\n")
    cs = settings(Options(root=root), SYSEXT, {})
    assert cs.mutable is MutableMode.NO
    assert len(cs.warnings) == 2
    assert any("ignoring Mutable=sometimes" in w for w in cs.warnings)
    assert any("unknown key Frobnicate=" in w for w in cs.warnings)


def test_config_is_read_inside_the_root_only(root: Path) -> None:
    write_config(root.parent / "other", SYSEXT, "Mutable=yes\n")
    cs = settings(Options(root=root), SYSEXT, {})
    assert (cs.mutable, cs.image_policy) == (MutableMode.NO, None)  # not the host's either


# --------------------------------------------------------------------------------------------------
# Image policy: command line > configuration > class default (None)


@pytest.mark.parametrize(
    "cli, config, policy",
    [
        (None, None, None),
        (None, "root=signed", "root=signed"),
        ("usr=verity", "root=signed", "usr=verity"),
        ("usr=verity", None, "usr=verity"),
    ],
)
@pytest.mark.parametrize("image_class", [SYSEXT, CONFEXT])
def test_image_policy_precedence(
    root: Path, image_class: ImageClass, cli: Optional[str], config: Optional[str], policy: Optional[str]
) -> None:
    if config is not None:
        write_config(root, image_class, f"ImagePolicy={config}\n")
    cs = settings(Options(root=root, image_policy=cli), image_class, {})
    assert cs.image_policy == policy


# --------------------------------------------------------------------------------------------------
# Overlay mount options and noexec


@pytest.mark.parametrize(
    "env, options",
    [
        ({}, None),
        ({"SYSTEMD_SYSEXT_OVERLAYFS_MOUNT_OPTIONS": ""}, ""),
        (
            {"SYSTEMD_SYSEXT_OVERLAYFS_MOUNT_OPTIONS": "redirect_dir=off,xino=off"},
            "redirect_dir=off,xino=off",
        ),
    ],
)
def test_overlay_options_unset_empty_set(root: Path, env: dict[str, str], options: Optional[str]) -> None:
    assert settings(Options(root=root), SYSEXT, env).overlay_options == options
    confext_env = {k.replace("SYSEXT", "CONFEXT"): v for k, v in env.items()}
    assert settings(Options(root=root), CONFEXT, confext_env).overlay_options == options


@pytest.mark.parametrize("noexec", [None, True, False])
def test_noexec_comes_from_the_command_line(root: Path, noexec: Optional[bool]) -> None:
    cs = settings(Options(root=root, noexec=noexec), CONFEXT, {})
    assert cs.noexec is noexec


# --------------------------------------------------------------------------------------------------
# Through the program: plan --json shows the effective mode and the warning reaches stderr


def test_program_precedence(tmp_path: Path, sysextpy_cmd: RunSysextpy) -> None:
    root = tmp_path / "root"
    (root / "usr").mkdir(parents=True)
    write_config(root, SYSEXT, "Mutable=import\n")
    write_config(root, CONFEXT, "Mutable=auto\n")

    def modes(*args: str, env: Optional[dict[str, str]] = None) -> tuple[dict[str, str], str]:
        result = sysextpy_cmd(f"--root={root}", "plan", "--json=short", *args, env=env)
        assert result.returncode == EXIT_OK, result.stderr
        doc = json.loads(result.stdout)
        return {c["class"]: c["mutable"] for c in doc["classes"]}, result.stderr

    assert modes()[0] == {"sysext": "import", "confext": "auto"}
    got, stderr = modes(
        env={"SYSTEMD_SYSEXT_MUTABLE_MODE": "nonsense", "SYSTEMD_CONFEXT_MUTABLE_MODE": "yes"}
    )
    assert got == {"sysext": "import", "confext": "yes"}
    assert "ignoring $SYSTEMD_SYSEXT_MUTABLE_MODE='nonsense': not a mutable mode" in stderr
    assert modes("--mutable=ephemeral", env={"SYSTEMD_SYSEXT_MUTABLE_MODE": "yes"})[0] == {
        "sysext": "ephemeral",
        "confext": "ephemeral",
    }
