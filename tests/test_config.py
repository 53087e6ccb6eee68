# SPDX-License-Identifier: LGPL-2.1-or-later
from __future__ import annotations

import os
import stat
import threading
from pathlib import Path
from typing import Optional

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pyfakefs.fake_filesystem import FakeFilesystem

from sysextpy import config as config_module
from sysextpy import view as view_module
from sysextpy.config import ClassConfig, load_config, parse_config, parse_mutable_mode
from sysextpy.errors import ParseError
from sysextpy.model import ImageClass, MutableMode
from sysextpy.view import LiveView, search_config_files

SYSEXT = ImageClass.SYSEXT
CONFEXT = ImageClass.CONFEXT

# --------------------------------------------------------------------------------------------------
# parse_mutable_mode


@pytest.mark.parametrize(
    "text, mode",
    [
        ("no", MutableMode.NO),
        ("yes", MutableMode.YES),
        ("auto", MutableMode.AUTO),
        ("import", MutableMode.IMPORT),
        ("ephemeral", MutableMode.EPHEMERAL),
        ("ephemeral-import", MutableMode.EPHEMERAL_IMPORT),
        ("true", MutableMode.YES),
        ("1", MutableMode.YES),
        ("on", MutableMode.YES),
        ("false", MutableMode.NO),
        ("0", MutableMode.NO),
        ("off", MutableMode.NO),
        ("N", MutableMode.NO),
    ],
)
def test_parse_mutable_mode(text: str, mode: MutableMode) -> None:
    assert parse_mutable_mode(text) is mode


@pytest.mark.parametrize("text", ["", "help", "Auto", "ephemeral_import", "2", "import ", "maybe"])
def test_parse_mutable_mode_rejects(text: str) -> None:
    with pytest.raises(ParseError, match="Invalid mutable mode") as info:
        parse_mutable_mode(text)
    assert repr(text) in str(info.value)
    assert "ephemeral-import" in str(info.value)


@settings(max_examples=200)
@given(st.text(max_size=20))
def test_parse_mutable_mode_raises_only_parse_error(text: str) -> None:
    try:
        parse_mutable_mode(text)
    except ParseError:
        pass


# --------------------------------------------------------------------------------------------------
# parse_config


@pytest.mark.parametrize(
    "text, section, values, warning_fragments",
    [
        pytest.param("", "SysExt", {}, [], id="empty"),
        pytest.param("[SysExt]\nMutable=yes\n", "SysExt", {"Mutable": "yes"}, [], id="simple"),
        pytest.param(
            "[SysExt]\n  Mutable  =  auto  \nImagePolicy= root=signed \n",
            "SysExt",
            {"Mutable": "auto", "ImagePolicy": "root=signed"},
            [],
            id="whitespace",
        ),
        pytest.param(
            "[SysExt]\nMutable=yes\nMutable=no\n", "SysExt", {"Mutable": "no"}, [], id="later-wins"
        ),
        pytest.param(
            "[SysExt]\nMutable=yes\n[SysExt]\nMutable=import\n",
            "SysExt",
            {"Mutable": "import"},
            [],
            id="repeated-section",
        ),
        pytest.param(
            "# comment\n; other\n[SysExt]\n#Mutable=yes\n\n", "SysExt", {}, [], id="comments-and-blank-lines"
        ),
        pytest.param("[ConfExt]\nMutable=yes\n", "ConfExt", {"Mutable": "yes"}, [], id="confext-section"),
        pytest.param(
            "[ConfExt]\nMutable=yes\n",
            "SysExt",
            {},
            ["unknown section [ConfExt]", "expected [SysExt]"],
            id="other",
        ),
        pytest.param(
            "[sysext]\nMutable=yes\n", "SysExt", {}, ["unknown section [sysext]"], id="case-sensitive"
        ),
        pytest.param(
            "[X-Vendor]\nFoo=bar\n[SysExt]\nMutable=1\n", "SysExt", {"Mutable": "1"}, [], id="x-section"
        ),
        pytest.param("Mutable=yes\n", "SysExt", {}, ["outside of any section"], id="no-section"),
        pytest.param(
            "[SysExt]\nFoo=bar\n", "SysExt", {}, ["unknown key Foo= in [SysExt]"], id="unknown-key"
        ),
        pytest.param("[SysExt]\nX-Foo=bar\n", "SysExt", {}, [], id="x-key"),
        pytest.param("[SysExt]\nmutable=yes\n", "SysExt", {}, ["unknown key mutable="], id="key-case"),
        pytest.param(
            "[SysExt]\njunk\n", "SysExt", {}, ["<config>:2", "'junk' is not a Key=Value"], id="garbage"
        ),
        pytest.param("[SysExt]\n=yes\n", "SysExt", {}, ["'=yes' is not a Key=Value"], id="empty-key"),
        pytest.param(
            "[SysExt\nMutable=yes\n", "SysExt", {}, ["invalid section header '[SysExt'"], id="bad-header"
        ),
        pytest.param(
            "[SysExt]\nImagePolicy=root=signed+\\\n  absent\n",
            "SysExt",
            {"ImagePolicy": "root=signed+ absent"},
            [],
            id="continuation",
        ),
        pytest.param(
            "\ufeff[SysExt]\r\nMutable=yes\r\n", "SysExt", {"Mutable": "yes"}, [], id="bom-and-crlf"
        ),
        pytest.param("[SysExt]\nMutable=\n", "SysExt", {"Mutable": ""}, [], id="empty-value"),
    ],
)
def test_parse_config(text: str, section: str, values: dict[str, str], warning_fragments: list[str]) -> None:
    parsed, warnings = parse_config(text, section)
    assert parsed == values
    joined = "\n".join(warnings)
    if not warning_fragments:
        assert warnings == []
    for fragment in warning_fragments:
        assert fragment in joined


def test_parse_config_names_the_source() -> None:
    _, warnings = parse_config("[SysExt]\n\nbogus\n", "SysExt", source="/etc/systemd/sysext.conf")
    assert warnings == ["/etc/systemd/sysext.conf:3: 'bogus' is not a Key=Value assignment, ignoring it"]


@settings(max_examples=300)
@given(
    st.text(alphabet=st.sampled_from("[]SysExtMutable=yes#;\\ \n\r\tX-"), max_size=80) | st.text(max_size=60)
)
def test_parse_config_never_raises(text: str) -> None:
    values, warnings = parse_config(text, "SysExt")
    assert set(values) <= {"Mutable", "ImagePolicy"}
    assert all(isinstance(w, str) for w in warnings)


# --------------------------------------------------------------------------------------------------
# load_config and the configuration search, on a fake file system (devices and FIFOs on tmp_path)

ROOT = "/srv/root"


@pytest.fixture
def root(fake_fs: FakeFilesystem) -> Path:
    """An empty root at ROOT on a fake file system whose host has a configuration of its own for both
    classes, in every directory: a search that left the root would find it."""
    for cls in ImageClass:
        for directory in view_module.CONFIG_DIRS:
            body = f"[{cls.config_section}]\nMutable=ephemeral\nImagePolicy=root=absent\n"
            fake_fs.create_file(f"{directory}/{cls.config_name}", contents=body)
            fake_fs.create_file(f"{directory}/{cls.config_name}.d/99-host.conf", contents=body)
    fake_fs.create_dir(ROOT)
    return Path(ROOT)  # made while pyfakefs is active: module-level paths are real ones


def load(root: Path, image_class: ImageClass) -> ClassConfig:
    return load_config(LiveView(os.fspath(root), {}), image_class)


def write(root: Path, path: str, text: str) -> Path:
    target = root / path.lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text)
    return target


def mask(root: Path, path: str) -> None:
    target = root / path.lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.symlink_to("/dev/null")


def test_config_dirs_are_the_views() -> None:
    assert config_module.CONFIG_DIRS is view_module.CONFIG_DIRS
    assert view_module.CONFIG_DIRS == (
        "/etc/systemd",
        "/run/systemd",
        "/usr/local/lib/systemd",
        "/usr/lib/systemd",
    )


def test_no_configuration(root: Path) -> None:
    assert load(root, SYSEXT) == ClassConfig()
    assert LiveView(os.fspath(root), {}).config_files("sysext.conf") == ([], [])


@pytest.mark.parametrize(
    "present, winner",
    [
        (["/etc", "/run", "/usr/local/lib", "/usr/lib"], "/etc"),
        (["/run", "/usr/local/lib", "/usr/lib"], "/run"),
        (["/usr/local/lib", "/usr/lib"], "/usr/local/lib"),
        (["/usr/lib"], "/usr/lib"),
    ],
)
def test_main_file_precedence(root: Path, present: list[str], winner: str) -> None:
    modes = {"/etc": "yes", "/run": "auto", "/usr/local/lib": "import", "/usr/lib": "ephemeral"}
    for prefix in present:
        write(root, f"{prefix}/systemd/sysext.conf", f"[SysExt]\nMutable={modes[prefix]}\n")
    config = load(root, SYSEXT)
    assert config.mutable is parse_mutable_mode(modes[winner])
    assert config.files == (f"{winner}/systemd/sysext.conf",)  # only the first one is read


def test_main_file_is_per_class(root: Path) -> None:
    write(root, "/etc/systemd/sysext.conf", "[SysExt]\nMutable=yes\n")
    write(root, "/usr/lib/systemd/confext.conf", "[ConfExt]\nMutable=import\nImagePolicy=root=signed\n")
    assert load(root, SYSEXT).mutable is MutableMode.YES
    confext = load(root, CONFEXT)
    assert (confext.mutable, confext.image_policy) == (MutableMode.IMPORT, "root=signed")
    assert confext.files == ("/usr/lib/systemd/confext.conf",)


def test_wrong_section_for_class_is_a_warning(root: Path) -> None:
    write(root, "/etc/systemd/confext.conf", "[SysExt]\nMutable=yes\n")
    config = load(root, CONFEXT)
    assert config.mutable is None
    assert config.warnings == (
        "/etc/systemd/confext.conf:1: unknown section [SysExt], ignoring it (expected [ConfExt])",
    )


def test_drop_ins_union_order_and_override(root: Path) -> None:
    write(root, "/usr/lib/systemd/sysext.conf", "[SysExt]\nMutable=yes\nImagePolicy=*\n")
    write(root, "/usr/lib/systemd/sysext.conf.d/10-a.conf", "[SysExt]\nMutable=auto\n")
    write(root, "/etc/systemd/sysext.conf.d/10-a.conf", "[SysExt]\nMutable=import\n")  # wins by name
    write(root, "/run/systemd/sysext.conf.d/20-b.conf", "[SysExt]\nImagePolicy=root=signed+absent\n")
    write(root, "/usr/local/lib/systemd/sysext.conf.d/05-first.conf", "[SysExt]\nMutable=no\n")
    write(root, "/usr/lib/systemd/sysext.conf.d/README", "[SysExt]\nMutable=ephemeral\n")  # no .conf
    write(root, "/usr/lib/systemd/sysext.conf.d/.hidden.conf", "[SysExt]\nMutable=ephemeral\n")
    config = load(root, SYSEXT)
    assert config.files == (
        "/usr/lib/systemd/sysext.conf",
        "/usr/local/lib/systemd/sysext.conf.d/05-first.conf",
        "/etc/systemd/sysext.conf.d/10-a.conf",
        "/run/systemd/sysext.conf.d/20-b.conf",
    )
    assert config.mutable is MutableMode.IMPORT
    assert config.image_policy == "root=signed+absent"
    assert config.warnings == ()


def test_drop_ins_without_main_file(root: Path) -> None:
    write(root, "/run/systemd/sysext.conf.d/x.conf", "[SysExt]\nMutable=ephemeral-import\n")
    config = load(root, SYSEXT)
    assert config.mutable is MutableMode.EPHEMERAL_IMPORT
    assert config.files == ("/run/systemd/sysext.conf.d/x.conf",)


def test_drop_in_masked_by_dev_null(root: Path) -> None:
    write(root, "/usr/lib/systemd/sysext.conf.d/10-vendor.conf", "[SysExt]\nMutable=yes\n")
    mask(root, "/etc/systemd/sysext.conf.d/10-vendor.conf")
    config = load(root, SYSEXT)
    assert config == ClassConfig()


def test_main_file_masked_by_dev_null(root: Path) -> None:
    mask(root, "/etc/systemd/sysext.conf")
    write(root, "/usr/lib/systemd/sysext.conf", "[SysExt]\nMutable=yes\n")
    write(root, "/usr/lib/systemd/sysext.conf.d/a.conf", "[SysExt]\nImagePolicy=~\n")
    config = load(root, SYSEXT)
    assert config.mutable is None
    assert config.image_policy == "~"
    assert config.files == ("/usr/lib/systemd/sysext.conf.d/a.conf",)


@pytest.mark.parametrize("link", [False, True])
def test_dev_null_device_masks(tmp_path: Path, link: bool) -> None:
    """/dev/null itself (a character device 1:3) masks like a link to it, wherever it is."""
    if os.geteuid() != 0:
        pytest.skip("creating a character device inside the fake root needs root")
    root = tmp_path / "root"
    write(root, "/usr/lib/systemd/sysext.conf", "[SysExt]\nMutable=yes\n")
    write(root, "/usr/lib/systemd/sysext.conf.d/a.conf", "[SysExt]\nImagePolicy=~\n")
    node = root / ("dev/null" if link else "etc/systemd/sysext.conf")
    node.parent.mkdir(parents=True, exist_ok=True)
    os.mknod(node, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    if link:  # a link to the root's /dev/null, by another name than "/dev/null"
        (root / "etc/systemd").mkdir(parents=True)
        (root / "etc/systemd/sysext.conf").symlink_to("../../dev/null")
    config = load(root, SYSEXT)
    assert (config.mutable, config.files) == (None, ("/usr/lib/systemd/sysext.conf.d/a.conf",))


def test_paths_are_resolved_inside_root(root: Path) -> None:
    # An absolute link must be re-rooted: /vendor is the root's, not the host's.
    write(root, "/vendor/sysext.conf", "[SysExt]\nMutable=auto\n")
    (root / "etc/systemd").mkdir(parents=True)
    (root / "etc/systemd/sysext.conf").symlink_to("/vendor/sysext.conf")
    write(root, "/vendor/dropins/a.conf", "[SysExt]\nImagePolicy=root=verity\n")
    (root / "run/systemd").mkdir(parents=True)
    (root / "run/systemd/sysext.conf.d").symlink_to("/vendor/dropins")
    config = load(root, SYSEXT)
    assert (config.mutable, config.image_policy) == (MutableMode.AUTO, "root=verity")
    assert config.files == ("/etc/systemd/sysext.conf", "/run/systemd/sysext.conf.d/a.conf")
    # What the search gives: the path inside the root, and where it resolved to.
    assert search_config_files(LiveView(os.fspath(root), {}), "sysext.conf") == (
        [
            ("/etc/systemd/sysext.conf", f"{root}/vendor/sysext.conf"),
            ("/run/systemd/sysext.conf.d/a.conf", f"{root}/vendor/dropins/a.conf"),
        ],
        [],
    )


def test_link_escaping_the_root_finds_nothing(root: Path) -> None:
    outside = write(root.parent, "/outside.conf", "[SysExt]\nMutable=yes\n")
    (root / "etc/systemd").mkdir(parents=True)
    (root / "etc/systemd/sysext.conf").symlink_to(outside)
    write(root, "/usr/lib/systemd/sysext.conf", "[SysExt]\nMutable=import\n")
    assert load(root, SYSEXT).mutable is MutableMode.IMPORT


@pytest.mark.parametrize(
    "lines, mutable, policy, fragments",
    [
        (["Mutable=bogus"], None, None, ["ignoring Mutable=bogus", "Invalid mutable mode 'bogus'"]),
        (["Mutable=yes", "Mutable=bogus"], MutableMode.YES, None, ["ignoring Mutable=bogus"]),
        (["Mutable=help"], None, None, ["ignoring Mutable=help"]),
        (["Mutable=yes", "Mutable="], None, None, []),
        (
            ["ImagePolicy=root=bogus"],
            None,
            "root=-",
            ["Unknown partition policy flag 'bogus'", "leaves 'root=-'"],
        ),
        (["ImagePolicy=root=open:root=open"], None, None, ["ignoring ImagePolicy=", "more than one rule"]),
        (
            ["ImagePolicy=*", "ImagePolicy=nonsense"],
            None,
            "*",
            ["ignoring ImagePolicy=nonsense", "Missing '='"],
        ),
        (["ImagePolicy=root=signed", "ImagePolicy="], None, None, []),
        (["ImagePolicy=usr=verity:root=signed+absent"], None, "root=signed+absent:usr=verity", []),
    ],
)
def test_bad_values_are_warnings(
    root: Path,
    lines: list[str],
    mutable: Optional[MutableMode],
    policy: Optional[str],
    fragments: list[str],
) -> None:
    write(root, "/etc/systemd/sysext.conf", "[SysExt]\n" + "\n".join(lines) + "\n")
    config = load(root, SYSEXT)
    assert config.mutable is mutable
    assert config.image_policy == policy
    joined = "\n".join(config.warnings)
    for fragment in fragments:
        assert fragment in joined
    if fragments:
        assert "/etc/systemd/sysext.conf:" in joined
    else:
        assert config.warnings == ()


def test_graceful_policy_keeps_known_parts(root: Path) -> None:
    write(root, "/etc/systemd/sysext.conf", "[SysExt]\nImagePolicy=root=signed+future:newpart=open\n")
    config = load(root, SYSEXT)
    assert config.image_policy == "root=signed"
    assert len(config.warnings) == 1 and "'future'" in config.warnings[0]


def test_unreadable_files_are_warnings_without_blocking(tmp_path: Path) -> None:
    # Real FIFOs: pyfakefs has none.
    (tmp_path / "etc/systemd").mkdir(parents=True)
    os.mkfifo(tmp_path / "etc/systemd/sysext.conf")
    write(tmp_path, "/etc/systemd/sysext.conf.d/big.conf", "[SysExt]\n" + "#" * (70 * 1024) + "\n")
    write(tmp_path, "/etc/systemd/sysext.conf.d/ok.conf", "[SysExt]\nMutable=yes\n")
    os.mkfifo(tmp_path / "etc/systemd/sysext.conf.d/pipe.conf")
    result: list[ClassConfig] = []
    thread = threading.Thread(target=lambda: result.append(load(tmp_path, SYSEXT)), daemon=True)
    thread.start()
    thread.join(5)
    assert not thread.is_alive(), "load_config blocked"
    config = result[0]
    assert config.mutable is MutableMode.YES
    assert config.files == ("/etc/systemd/sysext.conf.d/ok.conf",)
    joined = "\n".join(config.warnings)
    assert "'/etc/systemd/sysext.conf'" in joined and "FIFO" in joined
    assert "'/etc/systemd/sysext.conf.d/big.conf'" in joined and "more than the limit" in joined
    # Non-regular drop-ins are skipped like systemd does, without a warning.
    assert "pipe.conf" not in joined


def test_resolution_loops_are_warnings(root: Path) -> None:
    (root / "etc/systemd").mkdir(parents=True)
    (root / "etc/systemd/sysext.conf").symlink_to("sysext.conf")
    (root / "run/systemd").mkdir(parents=True)
    (root / "run/systemd/sysext.conf.d").symlink_to("sysext.conf.d")
    write(root, "/usr/lib/systemd/sysext.conf.d/ok.conf", "[SysExt]\nMutable=yes\n")
    config = load(root, SYSEXT)
    assert config.mutable is MutableMode.YES
    assert config.files == ("/usr/lib/systemd/sysext.conf.d/ok.conf",)
    assert any("ignoring '/etc/systemd/sysext.conf'" in w for w in config.warnings)
    assert any("ignoring drop-in directory '/run/systemd/sysext.conf.d'" in w for w in config.warnings)
    found, warnings = search_config_files(LiveView(os.fspath(root), {}), "sysext.conf")
    assert [shown for shown, _ in found] == list(config.files) and tuple(warnings) == config.warnings


def test_drop_in_directory_that_is_a_file(root: Path) -> None:
    write(root, "/etc/systemd/sysext.conf.d", "not a directory")
    assert load(root, SYSEXT) == ClassConfig()
