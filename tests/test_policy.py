# SPDX-License-Identifier: LGPL-2.1-or-later
from __future__ import annotations

from typing import Optional

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sysextpy.errors import ParseError
from sysextpy.model import ImageClass
from sysextpy.policy import (
    DESIGNATORS,
    PROTECTIONS,
    ImagePolicy,
    default_policy,
    effective_policy,
    format_image_policy,
    initrd_extra_policy,
    parse_image_policy,
    partition_allowed,
    policies_equivalent,
)

SYSEXT_DEFAULT = (
    "root=verity+signed+encrypted+unprotected+absent:usr=verity+signed+encrypted+unprotected+absent"
)
CONFEXT_DEFAULT = "root=verity+signed+encrypted+unprotected+absent"


@pytest.mark.parametrize(
    "text, formatted",
    [
        ("*", "*"),
        ("-", "-"),
        ("", "-"),
        ("~", "~"),
        (" * ", "*"),
        ("=open", "*"),
        ("=verity+signed+encrypted+encryptedwithintegrity+unprotected+unused+absent", "*"),
        ("=unused+absent", "-"),
        ("=ignore", "-"),
        ("=absent", "~"),
        ("=", "*"),  # a rule without protection flags allows everything
        ("=-", "*"),
        ("swap=open", "swap=open"),
        ("swap=open:root=signed", "root=signed:swap=open"),
        (
            "swap=open:root=signed+read-only-on+growfs-off:=absent",
            "root=signed+read-only-on+growfs-off:swap=open:=absent",
        ),
        ("root=signed+read-only-on+read-only-off", "root=signed"),  # both = don't care
        ("root=", "root=-"),  # no protection flag: everything allowed; printed like systemd does
        ("root=-", "root=-"),
        ("root=erofs+squashfs", "root=erofs+squashfs"),
        ("root=signed+erofs", "root=signed+erofs"),
        ("root=ignore", "-"),  # same as the default, so it is dropped
        ("home=unused+absent:=open", "home=ignore:=open"),
        ("root=signed:", "root=signed"),  # trailing ':' tolerated
        ("root=signed+", "root=signed"),  # trailing '+' tolerated
        (" root = signed + absent : usr = verity ", "root=signed+absent:usr=verity"),
        (SYSEXT_DEFAULT, SYSEXT_DEFAULT),
        (CONFEXT_DEFAULT, CONFEXT_DEFAULT),
        (
            "usr=verity+read-only-on:root=encrypted:swap=encrypted",
            "root=encrypted:usr=verity+read-only-on:swap=encrypted",
        ),
        (
            "root=unprotected+encrypted:swap=absent+unused:=unprotected+encrypted+absent",
            "root=encrypted+unprotected:swap=ignore:=encrypted+unprotected+absent",
        ),
    ],
)
def test_parse_and_format(text: str, formatted: str) -> None:
    policy = parse_image_policy(text)
    assert format_image_policy(policy) == formatted
    assert policies_equivalent(parse_image_policy(formatted), policy)


@pytest.mark.parametrize(
    "text, fragments",
    [
        ("root=verity+bogus", ["'bogus'", "flag"]),
        ("bogus=open", ["'bogus'", "designator"]),
        ("root", ["Missing '='", "'root'"]),
        ("verity", ["Missing '='"]),
        ("root=open:root=signed", ["'root'", "more than one rule"]),
        ("=open:=absent", ["Default rule given more than once"]),
        ("root=open::usr=open", ["Missing '='", "''"]),
        (":root=open", ["Missing '='"]),
        (":", ["Missing '='"]),
        ("root=verity++signed", ["''"]),
        ("root=+", ["''"]),
        ("Root=open", ["'Root'"]),
        ("root=Verity", ["'Verity'"]),
        ("default=open", ["'default'"]),
        ("root=open=x", ["'open=x'"]),
        ("**", ["Missing '='"]),
    ],
)
def test_parse_errors(text: str, fragments: list[str]) -> None:
    with pytest.raises(ParseError) as info:
        parse_image_policy(text)
    message = str(info.value)
    assert repr(text) in message
    for fragment in fragments:
        assert fragment in message


def test_graceful_skips_unknown_words() -> None:
    policy = parse_image_policy("root=signed+future-flag:future-partition=open:usr=verity", graceful=True)
    assert format_image_policy(policy) == "root=signed:usr=verity"
    with pytest.raises(ParseError, match="more than one rule"):
        parse_image_policy("root=open:root=open", graceful=True)


@pytest.mark.parametrize(
    "policy, partition, allowed, denied",
    [
        (SYSEXT_DEFAULT, "root", {"verity", "signed", "encrypted", "unprotected", "absent"}, {"unused"}),
        (SYSEXT_DEFAULT, "usr", {"verity", "signed", "encrypted", "unprotected", "absent"}, {"unused"}),
        (SYSEXT_DEFAULT, "home", {"unused", "absent"}, {"unprotected", "encrypted", "verity"}),
        (SYSEXT_DEFAULT, "root-verity", {"unprotected", "absent"}, {"verity", "signed", "unused"}),
        (SYSEXT_DEFAULT, "usr-verity-sig", {"unprotected", "absent"}, {"unused", "encrypted"}),
        (CONFEXT_DEFAULT, "usr", {"unused", "absent"}, {"verity", "signed", "unprotected"}),
        (
            "root=signed+absent",
            "root",
            {"signed", "absent"},
            {"verity", "unprotected", "encrypted", "unused"},
        ),
        ("root=signed+absent", "root-verity", {"unprotected", "absent"}, {"unused"}),
        ("root=signed+absent", "root-verity-sig", {"unprotected", "absent"}, {"unused"}),
        ("root=verity", "root-verity", {"unprotected"}, {"absent", "unused"}),
        ("root=verity", "root-verity-sig", {"unused", "absent"}, {"unprotected"}),  # no signed: default
        ("root=encrypted", "root-verity", {"unused", "absent"}, {"unprotected"}),
        ("root=verity+unused", "root-verity", {"unprotected", "unused"}, {"absent"}),
        ("root-verity=absent:root=verity", "root-verity", {"absent"}, {"unprotected"}),
        ("*", "root", set(PROTECTIONS), set()),
        ("*", "home", {"unprotected", "encrypted", "unused", "absent"}, {"verity", "signed"}),
        ("-", "root", {"unused", "absent"}, {"unprotected", "verity"}),
        ("~", "usr", {"absent"}, {"unused", "unprotected", "signed"}),
        ("root=", "root", set(PROTECTIONS), set()),
        ("root=read-only-on", "root", set(PROTECTIONS), set()),
        ("=encrypted", "var", {"encrypted"}, {"unprotected", "absent"}),
    ],
)
def test_partition_allowed(policy: str, partition: str, allowed: set[str], denied: set[str]) -> None:
    parsed = parse_image_policy(policy)
    for protection in allowed:
        assert partition_allowed(parsed, partition, protection), protection
    for protection in denied:
        assert not partition_allowed(parsed, partition, protection), protection


def test_gpt_flags_are_kept_and_dropped_for_absent() -> None:
    policy = parse_image_policy("root=verity+read-only-on:usr=absent+growfs-on")
    assert "read-only-on" in policy.flags_for("root")
    assert "read-only-off" not in policy.flags_for("root")
    assert {"growfs-on", "growfs-off"}.isdisjoint(policy.flags_for("usr"))


@pytest.mark.parametrize("partition, protection", [("bogus", "verity"), ("root", "bogus"), ("root", "open")])
def test_partition_allowed_rejects_unknown_words(partition: str, protection: str) -> None:
    with pytest.raises(ValueError):
        partition_allowed(parse_image_policy("*"), partition, protection)


@pytest.mark.parametrize(
    "image_class, text", [(ImageClass.SYSEXT, SYSEXT_DEFAULT), (ImageClass.CONFEXT, CONFEXT_DEFAULT)]
)
def test_default_policies(image_class: ImageClass, text: str) -> None:
    policy = default_policy(image_class)
    assert format_image_policy(policy) == text
    assert policy == parse_image_policy(text)


@pytest.mark.parametrize(
    "path, expected",
    [
        ("/.extra/sysext/foo.raw", "root=signed+absent:usr=signed+absent"),
        ("/.extra/global_sysext/foo.raw", "root=signed+absent:usr=signed+absent"),
        ("/.extra/confext/foo.raw", "root=signed+absent"),
        ("/.extra/global_confext/foo.raw", "root=signed+absent"),
        ("/.extra/other/foo.raw", "~"),
        ("/.extra/foo.raw", "~"),
        ("/.extras/sysext/foo.raw", None),
        ("/var/lib/extensions/foo.raw", None),
        ("/run/extensions/.extra/sysext/foo.raw", None),
    ],
)
def test_initrd_extra_policy(path: str, expected: Optional[str]) -> None:
    policy = initrd_extra_policy(path)
    assert (format_image_policy(policy) if policy is not None else None) == expected


def _reference_below_extra(path: str) -> Optional[tuple[str, ...]]:
    """Where a path lies below /.extra, as pathlib reads it: the independent reading."""
    from pathlib import PurePosixPath

    try:
        return PurePosixPath(path).relative_to("/.extra").parts
    except ValueError:
        return None


_COMPONENTS = st.sampled_from(
    ["", ".", "..", ".extra", ".extras", "sysext", "confext", "global_sysext", "global_confext", "x"]
)


@settings(max_examples=600, deadline=None)
@given(lead=st.sampled_from(["", "/", "//", "///"]), parts=st.lists(_COMPONENTS, max_size=5))
def test_initrd_extra_policy_reads_paths_as_pathlib_does(lead: str, parts: list[str]) -> None:
    """Which /.extra rule applies, for paths with empty, "." and ".." components and any number of
    leading slashes, against pathlib's reading of the same path (which the product does not import:
    it costs a boot with a raw image milliseconds)."""
    path = lead + "/".join(parts)
    below = _reference_below_extra(path)
    if below is None:
        expected = None
    elif below[:1] in (("sysext",), ("global_sysext",)):
        expected = "sysext-strict"
    elif below[:1] in (("confext",), ("global_confext",)):
        expected = "confext-strict"
    else:
        expected = "deny"
    policy = initrd_extra_policy(path)
    strict = {
        initrd_extra_policy("/.extra/sysext/a"): "sysext-strict",
        initrd_extra_policy("/.extra/confext/a"): "confext-strict",
        initrd_extra_policy("/.extra/a"): "deny",
    }
    assert (strict[policy] if policy is not None else None) == expected, path


def test_effective_policy() -> None:
    explicit = parse_image_policy("*")
    sysext = ImageClass.SYSEXT
    extra = "/.extra/sysext/a.raw"
    assert effective_policy(sysext, extra, explicit=explicit, initrd_without_root=True) is explicit
    strict = effective_policy(sysext, extra, explicit=None, initrd_without_root=True)
    assert format_image_policy(strict) == "root=signed+absent:usr=signed+absent"
    assert effective_policy(sysext, extra, explicit=None, initrd_without_root=False) == default_policy(
        sysext
    )
    other = effective_policy(
        ImageClass.CONFEXT, "/run/confexts/a.raw", explicit=None, initrd_without_root=True
    )
    assert other == default_policy(ImageClass.CONFEXT)


def test_equality_versus_equivalence() -> None:
    a = parse_image_policy("root=signed")
    b = parse_image_policy("root=signed:home=ignore")
    assert a != b
    assert policies_equivalent(a, b)
    assert not policies_equivalent(a, parse_image_policy("root=verity"))
    assert isinstance(a, ImagePolicy) and hash(a) == hash(parse_image_policy("root=signed"))


_FLAG_WORDS = (
    *PROTECTIONS,
    "open",
    "ignore",
    "read-only-on",
    "read-only-off",
    "growfs-on",
    "growfs-off",
    "erofs",
)


@st.composite
def valid_policies(draw: st.DrawFn) -> str:
    designators = draw(st.lists(st.sampled_from(("", *DESIGNATORS)), unique=True, max_size=5))
    rules = []
    for designator in designators:
        flags = draw(st.lists(st.sampled_from(_FLAG_WORDS), max_size=4))
        rules.append(f"{designator}={'+'.join(flags)}")
    return ":".join(rules) or draw(st.sampled_from(["*", "-", "~", ""]))


@settings(max_examples=300)
@given(valid_policies())
def test_format_round_trips(text: str) -> None:
    policy = parse_image_policy(text)
    formatted = format_image_policy(policy)
    again = parse_image_policy(formatted)
    assert policies_equivalent(policy, again)
    assert format_image_policy(again) == formatted


@settings(max_examples=300)
@given(
    st.text(alphabet=st.sampled_from("root=usr:+verity-signed*~ absent\t"), max_size=40)
    | st.text(max_size=30)
)
def test_parse_raises_only_parse_error(text: str) -> None:
    try:
        parse_image_policy(text)
    except ParseError:
        pass
