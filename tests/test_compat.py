# SPDX-License-Identifier: LGPL-2.1-or-later
from __future__ import annotations

from typing import Optional

import pytest

from sysextpy.compat import check_compatibility
from sysextpy.model import HostInfo, HostRelease, ImageClass

SYSEXT = ImageClass.SYSEXT
CONFEXT = ImageClass.CONFEXT


def host(
    id: str = "debian",
    id_like: tuple[str, ...] = (),
    version_id: str = "12",
    sysext_level: str = "",
    confext_level: str = "",
    scope: str = "system",
    architecture: str = "x86-64",
) -> HostInfo:
    release = HostRelease(
        id=id, id_like=id_like, version_id=version_id, sysext_level=sysext_level, confext_level=confext_level
    )
    return HostInfo(release=release, scope=scope, architecture=architecture)


def check(ext: dict[str, str], h: HostInfo, image_class: ImageClass = SYSEXT) -> tuple[bool, str]:
    return check_compatibility(ext, h, image_class)


DEBIAN = {"ID": "debian", "VERSION_ID": "12"}


@pytest.mark.parametrize(
    "ext, h, image_class, expected",
    [
        # 1. no release data
        pytest.param({}, host(), SYSEXT, (False, "no extension-release data"), id="empty"),
        # 2. scope (absent means "system portable")
        pytest.param(
            {**DEBIAN, "SYSEXT_SCOPE": "initrd"},
            host(),
            SYSEXT,
            (False, "SYSEXT_SCOPE='initrd' does not include host scope 'system'"),
            id="scope-initrd-only-on-system",
        ),
        pytest.param(
            {**DEBIAN, "SYSEXT_SCOPE": "initrd system"},
            host(scope="initrd"),
            SYSEXT,
            (True, "ID=debian VERSION_ID=12 matches host"),
            id="scope-list",
        ),
        pytest.param(
            {**DEBIAN, "SYSEXT_SCOPE": ""},
            host(),
            SYSEXT,
            (False, "SYSEXT_SCOPE='' does not include host scope 'system'"),
            id="scope-empty-means-none",
        ),
        pytest.param(
            {**DEBIAN, "SYSEXT_SCOPE": "portable"},
            host(),
            SYSEXT,
            (False, "SYSEXT_SCOPE='portable' does not include host scope 'system'"),
            id="scope-portable-only",
        ),
        pytest.param(
            {**DEBIAN, "CONFEXT_SCOPE": "initrd"},
            host(),
            CONFEXT,
            (False, "CONFEXT_SCOPE='initrd' does not include host scope 'system'"),
            id="confext-scope",
        ),
        pytest.param(
            {**DEBIAN, "SYSEXT_SCOPE": "initrd"},
            host(),
            CONFEXT,
            (True, "ID=debian VERSION_ID=12 matches host"),
            id="confext-ignores-sysext-scope",
        ),
        # 3. architecture
        pytest.param(
            {**DEBIAN, "ARCHITECTURE": "arm64"},
            host(),
            SYSEXT,
            (False, "ARCHITECTURE=arm64 but host is x86-64"),
            id="arch-mismatch",
        ),
        pytest.param({**DEBIAN, "ARCHITECTURE": "x86-64"}, host(), SYSEXT, (True, None), id="arch-match"),
        pytest.param({**DEBIAN, "ARCHITECTURE": "_any"}, host(), SYSEXT, (True, None), id="arch-any"),
        pytest.param({**DEBIAN, "ARCHITECTURE": ""}, host(), SYSEXT, (True, None), id="arch-empty"),
        pytest.param(
            {"ID": "fedora", "SYSEXT_SCOPE": "initrd", "ARCHITECTURE": "arm64"},
            host(),
            SYSEXT,
            (False, "SYSEXT_SCOPE='initrd' does not include host scope 'system'"),
            id="scope-checked-before-arch-and-id",
        ),
        pytest.param(
            {"ID": "fedora", "ARCHITECTURE": "arm64"},
            host(),
            SYSEXT,
            (False, "ARCHITECTURE=arm64 but host is x86-64"),
            id="arch-checked-before-id",
        ),
        # 4. ID missing / _any
        pytest.param(
            {"VERSION_ID": "12"}, host(), SYSEXT, (False, "no ID (set ID=debian or ID=_any)"), id="no-id"
        ),
        pytest.param({"ID": "", "VERSION_ID": "12"}, host(), SYSEXT, (False, None), id="empty-id"),
        pytest.param({"ID": "_any", "VERSION_ID": "99"}, host(), SYSEXT, (True, "ID=_any"), id="id-any"),
        pytest.param(
            {"ID": "_any", "SYSEXT_LEVEL": "9"},
            host(sysext_level="1"),
            SYSEXT,
            (True, "ID=_any"),
            id="any-no-level",
        ),
        # 5. ID / ID_LIKE
        pytest.param(
            {"ID": "fedora", "VERSION_ID": "12"},
            host(),
            SYSEXT,
            (False, "ID=fedora but host ID=debian (ID_LIKE='')"),
            id="id-mismatch",
        ),
        pytest.param(
            {"ID": "debian", "VERSION_ID": "12"},
            host(id="ubuntu", id_like=("debian",)),
            SYSEXT,
            (True, "ID=debian (from host ID_LIKE) VERSION_ID=12 matches host"),
            id="id-like",
        ),
        pytest.param(
            {"ID": "rhel"},
            host(id="fedora", id_like=("centos", "suse")),
            SYSEXT,
            (False, "ID=rhel but host ID=fedora (ID_LIKE='centos suse')"),
            id="id-like-mismatch",
        ),
        # 6. host without VERSION_ID and level (rolling release)
        pytest.param(
            {"ID": "arch", "VERSION_ID": "whatever"},
            host(id="arch", version_id=""),
            SYSEXT,
            (True, "ID=arch matches host, which has no VERSION_ID or SYSEXT_LEVEL"),
            id="rolling-host",
        ),
        # 7. both levels
        pytest.param(
            {"ID": "debian", "SYSEXT_LEVEL": "1", "VERSION_ID": "11"},
            host(sysext_level="1"),
            SYSEXT,
            (True, "ID=debian SYSEXT_LEVEL=1 matches host"),
            id="level-match-ignores-version",
        ),
        pytest.param(
            {"ID": "debian", "SYSEXT_LEVEL": "2", "VERSION_ID": "12"},
            host(sysext_level="1"),
            SYSEXT,
            (False, "SYSEXT_LEVEL=2 but host SYSEXT_LEVEL=1"),
            id="level-mismatch",
        ),
        pytest.param(
            {"ID": "debian", "CONFEXT_LEVEL": "2", "VERSION_ID": "12"},
            host(confext_level="1"),
            CONFEXT,
            (False, "CONFEXT_LEVEL=2 but host CONFEXT_LEVEL=1"),
            id="confext-level-mismatch",
        ),
        pytest.param(
            {"ID": "debian", "SYSEXT_LEVEL": "2", "VERSION_ID": "12"},
            host(sysext_level="1"),
            CONFEXT,
            (True, "ID=debian VERSION_ID=12 matches host"),
            id="confext-ignores-sysext-level",
        ),
        pytest.param(
            {"ID": "debian", "SYSEXT_LEVEL": "2", "VERSION_ID": "12"},
            host(),
            SYSEXT,
            (True, "ID=debian VERSION_ID=12 matches host"),
            id="ext-level-without-host-level-uses-version",
        ),
        # 8. VERSION_ID
        pytest.param(
            {"ID": "debian", "VERSION_ID": "11"},
            host(),
            SYSEXT,
            (False, "VERSION_ID=11 but host VERSION_ID=12"),
            id="version-mismatch",
        ),
        pytest.param(
            {"ID": "debian"},
            host(),
            SYSEXT,
            (False, "no VERSION_ID while host VERSION_ID=12"),
            id="no-version",
        ),
        pytest.param(
            {"ID": "debian", "VERSION_ID": ""},
            host(),
            SYSEXT,
            (False, "no VERSION_ID while host VERSION_ID=12"),
            id="empty-version",
        ),
        pytest.param(
            {"ID": "debian", "VERSION_ID": "12"},
            host(sysext_level="1"),
            SYSEXT,
            (True, "ID=debian VERSION_ID=12 matches host"),
            id="host-level-ext-none-version-match",
        ),
        pytest.param(
            {"ID": "debian"},
            host(sysext_level="1"),
            SYSEXT,
            (False, "no VERSION_ID while host VERSION_ID=12"),
            id="host-level-ext-nothing",
        ),
        # 9. host has only a level, extension none
        pytest.param(
            {"ID": "debian", "VERSION_ID": "7"},
            host(version_id="", sysext_level="1"),
            SYSEXT,
            (True, None),
            id="host-only-level",
        ),
        pytest.param(
            {"ID": "debian", "CONFEXT_LEVEL": "3"},
            host(version_id="", confext_level="1"),
            CONFEXT,
            (False, "CONFEXT_LEVEL=3 but host CONFEXT_LEVEL=1"),
            id="host-only-level-mismatch",
        ),
        # 11. other fields are not checked
        pytest.param(
            {**DEBIAN, "EXTENSION_RELOAD_MANAGER": "1", "SYSEXT_IMAGE_ID": "x", "IMAGE_VERSION": "7"},
            host(),
            SYSEXT,
            (True, "ID=debian VERSION_ID=12 matches host"),
            id="extra-fields",
        ),
    ],
)
def test_rules(
    ext: dict[str, str], h: HostInfo, image_class: ImageClass, expected: tuple[bool, Optional[str]]
) -> None:
    ok, reason = check(ext, h, image_class)
    assert ok is expected[0]
    if expected[1] is not None:
        assert reason == expected[1]
    assert reason


@pytest.mark.parametrize("image_class", [SYSEXT, CONFEXT])
def test_default_scope_excludes_initrd(image_class: ImageClass) -> None:
    ok, reason = check(DEBIAN, host(scope="initrd"), image_class)
    assert not ok
    assert f"no {image_class.scope_key}" in reason and "'initrd'" in reason
    assert f"add {image_class.scope_key}=initrd" in reason


def test_missing_host_release() -> None:
    h = HostInfo(release=None, scope="system", architecture="x86-64", release_error="no os-release in '/r'")
    assert check(DEBIAN, h) == (False, "no os-release in '/r'")
    bare = HostInfo(release=None, scope="system", architecture="x86-64")
    ok, reason = check(DEBIAN, bare)
    assert not ok and "os-release" in reason


def test_empty_release_checked_before_host() -> None:
    h = HostInfo(release=None, scope="system", architecture="x86-64", release_error="broken")
    assert check({}, h) == (False, "no extension-release data")
