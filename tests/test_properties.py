# SPDX-License-Identifier: LGPL-2.1-or-later
"""Properties of every parser and pure function, against generated input (hypothesis).

The rule for parsers: whatever the input, the result is a value or the project's own error
(sysextpy.errors.SysextError or a subclass) with a message; any other exception is a bug. Where a
function has an algebraic property (a total order, a round trip, a bound), that is checked too.
The number of examples each property ran is reported (tests/RELIABILITY.md).
"""

from __future__ import annotations

import functools
import json
import os
import posixpath
import re
import struct
import tempfile
import uuid
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable, Optional, TypeVar

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from sysextpy import generator as gen
from sysextpy.apply import c_escape
from sysextpy.arch import is_architecture, native_architecture
from sysextpy.cli import parse_args
from sysextpy.compat import check_compatibility
from sysextpy.config import parse_config, parse_mutable_mode
from sysextpy.discover import invalid_name_reason
from sysextpy.dissect import Evidence, decide_protection, sniff_filesystem
from sysextpy.errors import ImageError, MountError, ParseError, SysextError, UsageError
from sysextpy.fingerprint import describe_changes, digest
from sysextpy.fstab import parse_fstab_mount_points, unescape_fstab
from sysextpy.gpt import GptError, known_architectures, parse_partition_table, select_partitions, type_uuid
from sysextpy.handoff import SCHEMA, ClassEntry, Confirmation, HandoffRecord, HierarchyResult, parse_record
from sysextpy.identity import format_origin
from sysextpy.jsonlite import dump_json_indented
from sysextpy.model import HostInfo, HostRelease, ImageClass, JsonMode, component_name
from sysextpy.mountapi import (
    classic_overlay_options,
    escape_overlay_path,
    kernel_version,
    parse_mount_options,
    parse_mountinfo,
    split_vfs_options,
)
from sysextpy.osrelease import image_base_name, image_name_is_valid, is_valid_key, parse_os_release_verbose
from sysextpy.policy import (
    DESIGNATORS,
    PROTECTIONS,
    effective_policy,
    format_image_policy,
    parse_image_policy,
    policies_equivalent,
)
from sysextpy.settings import parse_hierarchies
from sysextpy.state import boot_id, read_record, write_record
from sysextpy.status import parse_dev
from sysextpy.util import parse_bool, parse_bool_or_none
from sysextpy.verity import parse_root_hash, parse_verity_sig, parse_verity_superblock, pem_certificates
from sysextpy.vpick import VersionedName, best_candidate, parse_versioned_name, split_vdir_name
from tests.faults import Tally

tally = Tally("properties")
F = TypeVar("F", bound=Callable[..., None])


@pytest.fixture(scope="module", autouse=True)
def _report() -> Iterator[None]:
    yield
    tally.flush()


def counted(name: str) -> Callable[[F], F]:
    """Count the examples a property really ran (hypothesis may stop early or add some)."""

    def wrap(fn: F) -> F:
        @functools.wraps(fn)
        def run(*args: Any, **kwargs: Any) -> None:
            tally.add(name)
            fn(*args, **kwargs)

        return run  # type: ignore[return-value]

    return wrap


def own_errors_only(fn: Callable[..., Any], *args: Any, expect: type[SysextError] = SysextError) -> Any:
    """fn(*args), or the project's error it raised (which must carry a message); any other
    exception propagates and fails the property."""
    try:
        return fn(*args)
    except SysextError as e:
        assert isinstance(e, expect), f"{type(e).__name__} where {expect.__name__} was expected: {e}"
        assert e.message.strip(), f"{type(e).__name__} without a message"
        return e


# Any str, lone surrogates included: file names that are not UTF-8 reach Python that way.
any_text = st.text(st.characters(blacklist_categories=()), max_size=60)
# What a directory listing can give: any bytes, decoded the way os.listdir() decodes them.
file_names = st.binary(max_size=40).map(os.fsdecode) | st.text(max_size=40)
line_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=60)
NORMAL = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FEW = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | any_text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)


# --------------------------------------------------------------------------------------------
# os-release and extension-release files

_release_alphabet = st.sampled_from(list("AZ_=09'\"\\#; \t\r\nxé$`"))


@NORMAL
@given(st.text(_release_alphabet, max_size=80) | any_text)
@counted("os-release: any text parses, keys valid")
def test_os_release_any_text(text: str) -> None:
    fields, warnings = parse_os_release_verbose(text)
    assert all(re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", k) for k in fields)
    assert all(isinstance(v, str) for v in fields.values())
    assert all(isinstance(w, str) and w for w in warnings)


@NORMAL
@given(st.text(st.sampled_from(list("aZ_09é٣\n -")), max_size=6) | any_text)
@counted("os-release: a valid name is what [A-Za-z_][A-Za-z0-9_]* matches")
def test_os_release_key_like_the_regular_expression(key: str) -> None:
    assert is_valid_key(key) is bool(re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key))


_keys = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,8}", fullmatch=True)
_values = st.text(st.characters(blacklist_categories=("Cs", "Cc")) | st.sampled_from("\t\n"), max_size=20)


def _double_quoted(value: str) -> str:
    return '"' + "".join("\\" + c if c in '"\\`$' else c for c in value) + '"'


@NORMAL
@given(st.dictionaries(_keys, _values, max_size=6), st.booleans(), st.booleans())
@counted("os-release: written values read back (quoting, comments, CRLF)")
def test_os_release_round_trip(fields: dict[str, str], crlf: bool, comments: bool) -> None:
    lines = []
    for key, value in fields.items():
        if comments:
            lines.append(f"# about {key}")
        lines.append(f"{key}={_double_quoted(value)}")
    text = ("\r\n" if crlf else "\n").join(lines)
    if crlf:
        assume("\r" not in "".join(fields.values()) and "\n" not in "".join(fields.values()))
    parsed, _ = parse_os_release_verbose(text)
    assert parsed == fields


@NORMAL
@given(file_names | st.text(st.sampled_from(list("ab._+-# .raw\x01/")), max_size=20) | st.just("x" * 256))
@counted("image names: the two validity checks agree, base names are valid")
def test_image_names(name: str) -> None:
    valid = image_name_is_valid(name)
    reason = invalid_name_reason(name)
    assert reason is None or reason.strip()
    assert valid == (reason is None), (name, reason)
    base = image_base_name(name)
    assert base is None or image_name_is_valid(base)


# --------------------------------------------------------------------------------------------
# .v/ directories


@NORMAL
@given(
    any_text
    | st.lists(st.sampled_from(list("ab_.+-1v") + [".raw", ".sysext", ".v"]), max_size=12).map("".join)
)
@counted(".v/ names: any name is split and parsed without error")
def test_vpick_names_any_text(name: str) -> None:
    for cls in ImageClass:
        split = split_vdir_name(name, cls)
        assert split is None or (split[0] and name.endswith(".v"))
    for basename, suffix in (("foo", ".raw"), ("foo", ""), ("", ".raw")):
        parsed = parse_versioned_name(name, basename, suffix)
        assert parsed is None or parsed.version


_plain_version = st.text(st.sampled_from(list("0123456789abc.-,")), min_size=1, max_size=8).filter(
    lambda v: v not in (".", "..")
)
_archs = st.sampled_from((None, *known_architectures()))
_tries = st.one_of(st.none(), st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1) | st.none()))


@NORMAL
@given(_plain_version, _archs, _tries, st.sampled_from(("", ".raw", ".sysext.raw")))
@counted(".v/ names: BASE_VERSION[_ARCH][+LEFT[-DONE]]SUFFIX reads back")
def test_vpick_round_trip(
    version: str, arch: Optional[str], tries: Optional[tuple[int, Optional[int]]], suffix: str
) -> None:
    name = "foo_" + version + (f"_{arch}" if arch else "")
    if tries is not None:
        name += f"+{tries[0]}" + (f"-{tries[1]}" if tries[1] is not None else "")
    parsed = parse_versioned_name(name + suffix, "foo", suffix)
    assert parsed is not None
    assert (parsed.version, parsed.architecture) == (version, arch)
    if tries is None:
        assert parsed.tries_left is None
    else:
        assert (parsed.tries_left, parsed.tries_done) == (tries[0], tries[1] or 0)


_vnames = st.builds(
    VersionedName,
    st.text(st.sampled_from("abc123_+"), min_size=1, max_size=6),
    _plain_version,
    st.sampled_from((None, "x86-64", "x86", "arm64")),
    st.none() | st.integers(0, 3),
    st.none() | st.integers(0, 3),
)


@NORMAL
@given(st.lists(_vnames, max_size=8, unique_by=lambda n: n.filename), st.randoms())
@counted(".v/ pick: the choice does not depend on the listing order")
def test_vpick_best_is_order_independent(names: list[VersionedName], rnd: Any) -> None:
    first = best_candidate(names, "x86-64", ("x86",))
    shuffled = list(names)
    rnd.shuffle(shuffled)
    assert best_candidate(shuffled, "x86-64", ("x86",)) == first
    assert first is None or first.architecture != "arm64"


# --------------------------------------------------------------------------------------------
# Image policies

_policy_words = st.sampled_from(
    [*DESIGNATORS, *PROTECTIONS, "open", "ignore", "read-only-on", "growfs-off", "squashfs", "bogus"]
)
_policy_text = st.lists(
    st.tuples(st.sampled_from([*DESIGNATORS, "", "bogus"]), st.lists(_policy_words, max_size=3)),
    max_size=4,
).map(lambda rules: ":".join(f"{d}={'+'.join(f)}" for d, f in rules))


@NORMAL
@given(_policy_text | any_text | st.sampled_from(["", "-", "*", "~", ":", "=", "root=", "root=+"]))
@counted("image policy: any string parses or is a ParseError; the canonical form means the same")
def test_image_policy(text: str) -> None:
    for graceful in (False, True):
        result = own_errors_only(
            functools.partial(parse_image_policy, graceful=graceful), text, expect=ParseError
        )
        if isinstance(result, SysextError):
            continue
        again = parse_image_policy(format_image_policy(result))
        assert policies_equivalent(again, result), (text, format_image_policy(result))


_valid_policy = _policy_text.filter(
    lambda t: not isinstance(own_errors_only(parse_image_policy, t), SysextError)
)


@NORMAL
@given(
    _valid_policy,
    st.sampled_from(("root", "usr")),
    st.builds(
        Evidence, st.booleans(), st.sampled_from(("none", "trusted", "untrusted")), st.text(max_size=5)
    ),
    st.booleans(),
    st.booleans(),
)
@counted("image policy: the protection chosen is one the policy allows and the image has")
def test_decide_protection(text: str, designator: str, ev: Evidence, dm_verity: bool, kernel: bool) -> None:
    policy = parse_image_policy(text)
    result = own_errors_only(
        lambda: decide_protection(
            designator, policy, "test", ev, dm_verity=dm_verity, kernel_signatures=kernel
        ),
        expect=ImageError,
    )
    if isinstance(result, SysextError):
        return
    level, kernel_check, notes = result
    flags = policy.flags_for(designator)
    assert level in flags, (level, sorted(flags))
    if level in ("signed", "verity"):
        assert ev.has_hash and dm_verity
    if level == "signed":
        assert ev.signature == "trusted" or (kernel_check and kernel)
    assert all(isinstance(n, str) and n for n in notes)


@NORMAL
@given(any_text | st.text(st.sampled_from(list("/.extra/sysconf")), max_size=24), st.booleans())
@counted("image policy: the effective policy of any image path")
def test_effective_policy(path: str, initrd: bool) -> None:
    for cls in ImageClass:
        effective_policy(cls, path, explicit=None, initrd_without_root=initrd)


# --------------------------------------------------------------------------------------------
# Configuration, booleans, hierarchies, the command line

_config_text = st.text(st.sampled_from(list("[]SysExt=MutableImagePolicy #;\\\n\r\t X-yes")), max_size=80)


@NORMAL
@given(_config_text | any_text)
@counted("config files: any text parses to known keys and warnings")
def test_config(text: str) -> None:
    values, warnings = parse_config(text, "SysExt")
    assert set(values) <= {"Mutable", "ImagePolicy"}
    assert all(isinstance(w, str) and w for w in warnings)
    for value in values.values():
        own_errors_only(parse_mutable_mode, value, expect=ParseError)


@NORMAL
@given(any_text | st.sampled_from(["yes", "No", "TRUE", "0", "", "on ", "y"]))
@counted("booleans: parse or ParseError")
def test_booleans(text: str) -> None:
    result = own_errors_only(parse_bool, text, expect=ParseError)
    assert isinstance(result, (bool, ParseError))
    own_errors_only(parse_bool_or_none, text, expect=ParseError)


@NORMAL
@given(
    any_text
    | st.lists(st.sampled_from(["/usr", "/opt", "", "/", "//a", "a", "/a/../b", "/a/"])).map(":".join)
)
@counted("hierarchy lists: parse or SysextError")
def test_hierarchies(text: str) -> None:
    result = own_errors_only(parse_hierarchies, text, "SYSTEMD_SYSEXT_HIERARCHIES")
    if not isinstance(result, SysextError):
        for h in result:
            assert h.startswith("/") and posixpath.normpath(h) == h and h != "/"
            assert component_name(h)


_args = st.sampled_from(
    [
        "merge",
        "refresh",
        "status",
        "plan",
        "help",
        "--class=sysext",
        "--class",
        "all",
        "--root=/x",
        "--root",
        "--mutable=help",
        "--mutable=auto",
        "--mutable",
        "--json=short",
        "--json=help",
        "--image-policy=*",
        "--image-policy=root=bogus",
        "--state=",
        "--always-refresh=maybe",
        "--noexec=1",
        "--force",
        "--",
        "-",
        "--version",
        "-h",
        "--no-pager",
        "--force=1",
        "--unknown",
    ]
)


@NORMAL
@given(st.lists(_args | any_text, max_size=6))
@counted("command line: any argv parses or is a UsageError")
def test_command_line(argv: list[str]) -> None:
    own_errors_only(parse_args, argv, expect=UsageError)


# --------------------------------------------------------------------------------------------
# The generator: kernel command line, handoff record, drop-ins

_cmdline = st.lists(
    st.sampled_from(
        [
            "sysextpy=0",
            "rd.sysextpy=1",
            "systemd.sysext=0",
            "systemd_confext=no",
            "rd.systemd.confext",
            "systemd.sysext=bogus",
            "'a b'",
            '"x=y z"',
            "quiet",
            "'",
        ]
    ),
    max_size=6,
).map(" ".join)


@NORMAL
@given(_cmdline | any_text, st.booleans())
@counted("kernel command line: any text gives switches")
def test_cmdline(text: str, in_initrd: bool) -> None:
    words = gen.split_cmdline(text)
    assert all(isinstance(w, str) for w in words)
    warnings: list[str] = []
    switches = gen.read_switches(text, in_initrd, warnings)
    assert set(switches.classes) <= set(gen.CLASSES)
    assert switches.enabled or not switches.classes or switches.off_word
    for handoff in (None, gen.Handoff("x", ("/var",))):
        gen.plan_outputs(in_initrd, switches, handoff, "/run/sysextpy/state.json", warnings)


@NORMAL
@given(any_text | st.sampled_from(["7", "debug", " INFO ", "²", "٣", "99", ""]))
@counted("generator: any SYSTEMD_LOG_LEVEL is a level")
def test_log_level(text: str) -> None:
    assert 0 <= gen.log_level(text) <= 7


BOOT = "0123456789abcdef0123456789abcdef"
_record_like = st.fixed_dictionaries(
    {"schema": st.just(SCHEMA), "bootId": st.just(BOOT)},
    optional={
        "phase": json_values | st.sampled_from(["merged", "merging", "failed"]),
        "classes": json_values
        | st.dictionaries(
            st.sampled_from(["sysext", "confext"]),
            st.fixed_dictionaries(
                {},
                optional={
                    "unreachable": st.lists(any_text | json_values, max_size=3),
                    "hierarchies": st.dictionaries(any_text, json_values | st.just({"result": "failed"})),
                },
            ),
        ),
    },
)
_SETTING = re.compile(
    r"(RequiresMountsFor=.*|Environment=SYSEXTPY_FORCE_REFRESH=1|\[Unit\]|\[Service\]|#.*|)"
)


@NORMAL
@given(st.one_of(_record_like.map(json.dumps), json_values.map(json.dumps), any_text))
@counted("handoff record (generator): any text is judged, and no drop-in line is smuggled in")
def test_generator_record(text: str) -> None:
    handoff = gen.judge_record(text, BOOT, gen.CLASSES)
    assert isinstance(handoff.force_reason, str)
    warnings: list[str] = []
    for out in gen.handoff_dropin(handoff, "/run/sysextpy/state.json", warnings):
        for line in out.text.splitlines():
            assert _SETTING.fullmatch(line), line
        for line in out.text.splitlines():
            if line.startswith("RequiresMountsFor="):
                assert all(w.startswith(("/", '"/')) for w in line[len("RequiresMountsFor=") :].split())


@NORMAL
@given(any_text)
@counted("generator: unit words and comments cannot break a unit file")
def test_unit_words(text: str) -> None:
    word = gen.unit_path_word(text)
    assert word is None or ("\n" not in word and word.lstrip('"').startswith("/"))
    assert "\n" not in gen.comment_text(text) and "\r" not in gen.comment_text(text)


# --------------------------------------------------------------------------------------------
# The handoff record (handoff.py, state.py) and the origin JSON

# Each field valid or not, about as often: records of every kind, complete ones included.
_state_record = st.fixed_dictionaries(
    {
        "schema": st.just(SCHEMA) | st.sampled_from([1, "2", None]),
        "bootId": st.just(BOOT) | st.sampled_from(["", None]),
        "phase": st.sampled_from(["merged", "merging", "failed"]) | st.none(),
        "classes": st.dictionaries(
            st.sampled_from(["sysext", "confext"]),
            st.fixed_dictionaries(
                {},
                optional={
                    "fingerprint": st.none() | any_text | json_values,
                    "merged": st.lists(any_text, max_size=3) | json_values,
                    "rejected": st.lists(
                        st.fixed_dictionaries({"name": any_text, "reason": any_text}), max_size=2
                    )
                    | json_values,
                    "hierarchies": st.dictionaries(any_text, st.just({"result": "merged"}) | json_values),
                },
            ),
        )
        | json_values,
    },
    optional={
        "root": st.sampled_from(["/", "/sysroot"]) | json_values,
        "started": st.integers() | json_values,
        "messages": st.lists(st.tuples(st.integers(0, 7), any_text).map(list), max_size=2) | json_values,
        "confirm": st.none() | json_values,
    },
)


@NORMAL
@given(st.one_of(_state_record.map(json.dumps), json_values.map(json.dumps), any_text))
@counted("handoff record (state): any text is judged, never trusted unless complete")
def test_state_record(text: str) -> None:
    check = parse_record(text, BOOT)
    assert check.reason
    if check.record is None:
        assert not check.usable
        return
    assert isinstance(check.record, HandoffRecord)
    assert check.usable is (check.record.phase == "merged" and check.record.boot_id == BOOT)
    for entry in check.record.classes.values():
        assert isinstance(entry, ClassEntry)
        assert entry.fingerprint is None or isinstance(entry.fingerprint, str)
        assert all(isinstance(n, str) for n in entry.merged)
        assert all(isinstance(h, HierarchyResult) for h in entry.hierarchies.values())
    # What was read is a record of the schema: written out and read again, it is the same.
    again = parse_record(check.record.dumps(), BOOT)
    assert again.record is not None and again.record.to_json() == check.record.to_json()


_digests = st.none() | st.text("0123456789abcdef", min_size=64, max_size=64)
_class_entries = st.builds(
    ClassEntry,
    fingerprint=_digests,
    inputs_digest=_digests,
    observations_digest=_digests,
    merged=st.lists(file_names, max_size=3),
    rejected=st.lists(st.tuples(file_names, any_text), max_size=2),
    ignored=st.lists(st.tuples(file_names, any_text), max_size=2),
    unreachable=st.lists(any_text, max_size=2),
    hierarchies=st.dictionaries(
        any_text,
        st.builds(
            HierarchyResult,
            st.sampled_from(
                ["merged", "replaced", "unchanged", "adopted", "unmerged", "untouched", "failed"]
            ),
            st.none() | st.integers(0, 2**63),
            st.none() | any_text,
            st.none() | any_text,
            st.none() | _digests,
        ),
        max_size=2,
    ),
)
_confirmations = st.builds(
    Confirmation,
    key=st.dictionaries(st.text(max_size=8), json_values, max_size=4),
    classes=st.lists(st.sampled_from(["sysext", "confext"]), max_size=2),
    hierarchies=st.dictionaries(st.sampled_from(["sysext", "confext"]), st.lists(any_text, max_size=2)),
    search_dirs=st.dictionaries(st.sampled_from(["sysext", "confext"]), st.lists(any_text, max_size=2)),
    observations=st.lists(json_values, max_size=4),
    scopes=st.dictionaries(st.sampled_from(["sysext", "confext"]), st.lists(st.integers(0, 9), max_size=3)),
)
_records = st.builds(
    HandoffRecord,
    boot_id=st.just(BOOT),  # replaced by this boot's id in the test
    phase=st.sampled_from(["merging", "merged", "failed"]),
    tool=any_text,
    verb=st.sampled_from(["merge", "refresh", "unmerge"]),
    root=any_text,
    in_initrd=st.booleans(),
    started=st.integers(0, 2**63),
    finished=st.none() | st.integers(0, 2**63),
    classes=st.dictionaries(st.sampled_from(["sysext", "confext"]), _class_entries, max_size=2),
    errors=st.lists(any_text, max_size=2),
    timings=st.dictionaries(any_text, st.floats(allow_nan=False, allow_infinity=False), max_size=2),
    reload_done=st.booleans(),
    reload_reason=any_text,
    confirmed_by=st.none() | st.sampled_from(["observations", "inputs", "adoption"]),
    declined=st.none() | any_text,
    messages=st.lists(st.tuples(st.integers(0, 7), any_text), max_size=2),
    confirm=st.none() | _confirmations,
)


@FEW
@given(_records)
@counted("handoff record (state): written and read back")
def test_state_round_trip(record: HandoffRecord) -> None:
    record.boot_id = boot_id()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "state" / "state.json"
        write_record(path, record)
        check = read_record(path)
        assert check.record is not None, check.reason
        assert check.usable is (record.phase == "merged"), check.reason
        assert check.record.to_json() == json.loads(json.dumps(record.to_json()))
        for cls, entry in record.classes.items():
            assert check.record.classes[cls].bound() is entry.bound()


@NORMAL
@given(st.dictionaries(any_text, json_values, max_size=5))
@counted("origin JSON: upstream's layout, valid UTF-8, reads back the same")
def test_origin_round_trip(record: dict[str, Any]) -> None:
    text = format_origin(record)
    text.encode("utf-8")  # what apply writes: must not fail on odd bytes of a path
    assert text.endswith("}\n")
    assert json.loads(text) == record
    # JSON strings hold no raw newline: every "\n" ends a line of the layout, indented by tabs
    assert all(not line.startswith(" ") for line in text.split("\n"))


# Every float, NaN and the infinities too: json.dumps writes them (allow_nan), and so must we.
_json_any_floats = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | any_text,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.tuples(inner, inner)
        | st.dictionaries(st.text(max_size=8), inner, max_size=4)
        | st.dictionaries(st.integers() | st.booleans() | st.none(), inner, max_size=3)
    ),
    max_leaves=20,
)


@NORMAL
@given(
    _json_any_floats,
    st.sampled_from(["\t", " ", "  ", ""]),
    st.sampled_from([(",", ": "), (",", " : "), (", ", ":")]),
    st.booleans(),
    st.booleans(),
)
@counted("indented JSON: the same text as json.dumps")
def test_indented_json_is_json_dumps(
    value: Any, indent: str, separators: tuple[str, str], sort_keys: bool, ascii_only: bool
) -> None:
    try:
        expected = json.dumps(
            value, indent=indent, separators=separators, sort_keys=sort_keys, ensure_ascii=ascii_only
        )
    except TypeError:  # keys of mixed types cannot be sorted
        expected = None
    options = {"item_separator": separators[0], "key_separator": separators[1]}
    if expected is None:
        with pytest.raises(TypeError):
            dump_json_indented(value, indent=indent, sort_keys=sort_keys, ascii_only=ascii_only, **options)
        return
    got = dump_json_indented(value, indent=indent, sort_keys=sort_keys, ascii_only=ascii_only, **options)
    assert got == expected


@NORMAL
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | any_text,
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(any_text, inner, max_size=4),
        max_leaves=20,
    ),
    st.sampled_from([JsonMode.PRETTY, JsonMode.SHORT]),
    st.booleans(),
)
@counted("--json output: the text of json.dumps, pretty and short")
def test_json_output_is_json_dumps(value: Any, mode: JsonMode, ascii_only: bool) -> None:
    from sysextpy.output import _json_text

    if mode is JsonMode.PRETTY:
        expected = json.dumps(value, indent=2, ensure_ascii=ascii_only)
    else:
        expected = json.dumps(value, separators=(",", ":"), ensure_ascii=ascii_only)
    assert _json_text(value, mode, ascii_only) == expected


@FEW
@given(
    st.dictionaries(st.sampled_from(["images", "host", "notImages", "mutable", "tool"]), json_values),
    st.dictionaries(st.sampled_from(["images", "host", "notImages", "mutable", "tool"]), json_values),
)
@counted("fingerprint: changes are described for inputs of any shape")
def test_describe_changes(old: dict[str, Any], new: dict[str, Any]) -> None:
    changes = describe_changes(old, new)
    assert all(isinstance(c, str) for c in changes)
    assert len(changes) <= 9


@FEW
@given(
    st.dictionaries(st.sampled_from(["images", "notImages", "mutable"]), st.lists(file_names, max_size=3))
)
@counted("fingerprint: the digest of inputs holding any path survives the record's JSON")
def test_digest(inputs: dict[str, Any]) -> None:
    assert digest(inputs) == digest(json.loads(json.dumps(inputs)))


# --------------------------------------------------------------------------------------------
# fstab, mounts, devices

_fstab = st.lists(
    st.tuples(
        st.sampled_from(["/dev/sda1", "UUID=x", "#", "", "tmpfs"]),
        st.text(st.sampled_from(list("/var\\0402lib9 .")), max_size=12),
        st.sampled_from(["ext4", "swap", ""]),
    ),
    max_size=5,
).map(lambda rows: "\n".join(" ".join(r) for r in rows))


@NORMAL
@given(_fstab | any_text)
@counted("fstab: any text gives normalised absolute mount points")
def test_fstab(text: str) -> None:
    for point in parse_fstab_mount_points(text):
        assert point.startswith("/") and posixpath.normpath(point) == point


@NORMAL
@given(st.text(st.characters(blacklist_categories=("Cs",)), max_size=20))
@counted("fstab: octal escapes read back")
def test_fstab_escapes(text: str) -> None:
    escaped = "".join(f"\\{ord(c):03o}" if c in " \t\n\\" else c for c in text)
    assert unescape_fstab(escaped) == text


@NORMAL
@given(any_text | st.text(st.sampled_from(list("a=b,\\c")), max_size=20))
@counted("mount options: any text splits; VFS flags are separated")
def test_mount_options(text: str) -> None:
    options = parse_mount_options(text)
    ms, attrs, rest = split_vfs_options(options)
    assert ms >= 0 and attrs >= 0 and len(rest) <= len(options)


@NORMAL
@given(any_text | st.text(st.sampled_from(list("a=b,\\c\n:")), max_size=20))
@counted("mount options: split as the regular expression (?:\\.|[^,\\])+ splits them")
def test_mount_options_split_like_the_regular_expression(text: str) -> None:
    items = re.findall(r"(?:\\.|[^,\\])+", text)
    expected = [(k, v if sep else None) for k, sep, v in (i.partition("=") for i in items)]
    assert parse_mount_options(text) == expected


@NORMAL
@given(file_names | st.text(st.sampled_from(list("a\\,:")), max_size=12))
@counted("overlay paths: escaped as re.sub escapes them")
def test_overlay_path_escape_is_the_substitution(path: str) -> None:
    assert escape_overlay_path(path) == re.sub(r"([\\,:])", r"\\\1", path)


@NORMAL
@given(st.text(st.sampled_from(list("\\0123789a")), max_size=16))
@counted("mountinfo: octal escapes decoded as re.sub decodes them")
def test_mountinfo_unescapes_like_the_substitution(point: str) -> None:
    assume(" " not in point and point)
    line = f"36 35 98:0 / {point} rw - ext4 /dev/x rw"
    expected = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), point)
    (info,) = parse_mountinfo(line)
    assert info.mount_point == expected


@NORMAL
@given(any_text | st.from_regex(r"[0-9]{1,3}\.[0-9]{0,3}[.a-z0-9-]{0,6}", fullmatch=True))
@counted("kernel release: (major, minor) as the regular expression reads them")
def test_kernel_version_like_the_regular_expression(release: str) -> None:
    found = re.match(r"([0-9]+)\.([0-9]+)", release)
    assert kernel_version(release) == ((int(found.group(1)), int(found.group(2))) if found else None)


@NORMAL
@given(st.lists(file_names.filter(lambda p: p != ""), min_size=1, max_size=4), st.booleans())
@counted("overlay options: layers escaped so that they split back; too long is a MountError")
def test_overlay_options(layers: list[str], upper: bool) -> None:
    result = own_errors_only(
        lambda: classic_overlay_options(
            layers, upperdir="/u" if upper else None, workdir="/w" if upper else None
        ),
        expect=MountError,
    )
    if isinstance(result, SysextError):
        return
    lower = result.split(",upperdir=")[0][len("lowerdir=") :]
    split = re.findall(r"(?:\\.|[^:\\])+", lower)
    assert [re.sub(r"\\(.)", r"\1", s) for s in split] == [p for p in layers if escape_overlay_path(p)]


_mountinfo_line = st.lists(
    st.sampled_from(
        [
            "36",
            "35",
            "98:0",
            "/",
            "/mnt",
            "rw,noatime",
            "shared:1",
            "-",
            "ext3",
            "/dev/root",
            "rw",
            "x",
            "\\040",
        ]
    ),
    max_size=14,
).map(" ".join)


@NORMAL
@given(st.lists(_mountinfo_line, max_size=3).map("\n".join) | any_text)
@counted("mountinfo: any text parses or is a ParseError")
def test_mountinfo(text: str) -> None:
    own_errors_only(parse_mountinfo, text, expect=ParseError)


@NORMAL
@given(any_text | st.tuples(st.integers(0, 2**40), st.integers(0, 2**40)).map(lambda t: f"{t[0]}:{t[1]}\n"))
@counted("dev files: any text is a device number or nothing")
def test_parse_dev(text: str) -> None:
    dev = parse_dev(text)
    if dev is not None:
        assert f"{os.major(dev)}:{os.minor(dev)}" == text.strip().lstrip("0") or dev >= 0


@NORMAL
@given(
    st.binary(max_size=2048)
    | st.builds(lambda p, b: p + b, st.sampled_from([b"hsqs", b"XFSB"]), st.binary())
)
@counted("image sniffing: any header is a file system name or nothing")
def test_sniff(header: bytes) -> None:
    assert sniff_filesystem(header) in (None, "squashfs", "erofs", "ext4", "gpt", "xfs", "btrfs")


@NORMAL
@given(any_text)
@counted("host names: any machine string maps to an architecture or a ParseError")
def test_architecture(machine: str) -> None:
    result = own_errors_only(native_architecture, machine, expect=ParseError)
    if isinstance(result, str):
        assert is_architecture(result)
    assert isinstance(is_architecture(machine), bool)
    assert "\n" not in c_escape(machine) and all(ord(c) >= 0x20 for c in c_escape(machine))


# --------------------------------------------------------------------------------------------
# Compatibility

_release_values = st.sampled_from(
    ["", "debian", "_any", "12", "13", "x86-64", "arm64", "system", "initrd portable", "fedora debian"]
)


@settings(max_examples=400, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(
            [
                "ID",
                "VERSION_ID",
                "SYSEXT_LEVEL",
                "CONFEXT_LEVEL",
                "ARCHITECTURE",
                "SYSEXT_SCOPE",
                "CONFEXT_SCOPE",
                "ID_LIKE",
            ]
        ),
        _release_values | any_text,
    ),
    st.builds(
        HostRelease,
        st.sampled_from(["debian", "fedora"]),
        st.sampled_from([(), ("debian",)]),
        _release_values,
        _release_values,
        _release_values,
    ),
    st.sampled_from(["system", "initrd", "portable"]),
    st.sampled_from(list(ImageClass)),
    st.booleans(),
)
@counted("compatibility: any release data gets a verdict and a reason")
def test_compatibility(
    ext: dict[str, str], host: HostRelease, scope: str, cls: ImageClass, known: bool
) -> None:
    info = HostInfo(
        release=host if known else None, scope=scope, architecture="x86-64", release_error="none"
    )
    ok, reason = check_compatibility(ext, info, cls)
    assert isinstance(ok, bool) and reason.strip()
    if ok:
        assert ext.get("ID") in ("_any", host.id, *host.id_like)


# --------------------------------------------------------------------------------------------
# dm-verity data

_hexish = st.text(st.sampled_from(list("0123456789abcdefABXZ \n\t")), max_size=80)


@NORMAL
@given(st.binary(max_size=80) | _hexish.map(str.encode))
@counted("root hashes: any bytes are a hash or a ParseError")
def test_root_hash(data: bytes) -> None:
    result = own_errors_only(parse_root_hash, data, "test", expect=ParseError)
    if isinstance(result, bytes):
        assert len(result) >= 16


_sig_json = st.fixed_dictionaries(
    {},
    optional={
        "rootHash": _hexish | json_values,
        "certificateFingerprint": st.sampled_from(["ab" * 32, "zz", "ab:" * 31 + "ab"]) | json_values,
        "signature": st.sampled_from(["", "aGVsbG8=", "!!", "aGVsbG8"]) | json_values,
    },
)


@NORMAL
@given(st.one_of(_sig_json.map(lambda d: json.dumps(d).encode() + b"\0" * 8), st.binary(max_size=200)))
@counted("verity-sig partitions: any content is read or a ParseError")
def test_verity_sig(data: bytes) -> None:
    own_errors_only(parse_verity_sig, data, expect=ParseError)


@NORMAL
@given(
    st.integers(0, 2),
    st.integers(0, 2),
    st.sampled_from([b"sha256", b"sha1", b"md5", b"nope", b""]),
    st.sampled_from([0, 512, 4096, 4095, 1 << 21]),
    st.sampled_from([0, 4096, 3]),
    st.integers(0, 2**64 - 1),
    st.integers(0, 300),
    st.integers(0, 600),
)
@counted("verity superblocks: any fields are read or a ParseError")
def test_verity_superblock(
    version: int, hash_type: int, algorithm: bytes, dbs: int, hbs: int, blocks: int, salt: int, size: int
) -> None:
    data = bytearray(max(size, 0))
    head = b"verity\0\0" + struct.pack("<II", version, hash_type) + bytes(16) + algorithm.ljust(32, b"\0")
    head += struct.pack("<IIQH", dbs, hbs, blocks, salt)
    data[: len(head)] = head[: len(data)]
    own_errors_only(parse_verity_superblock, bytes(data), expect=ParseError)


@NORMAL
@given(
    st.lists(
        st.sampled_from(
            [b"-----BEGIN CERTIFICATE-----", b"-----END CERTIFICATE-----", b"MIIB", b"\n", b"!!", b"aGk="]
        ),
        max_size=8,
    ).map(b"".join)
    | st.binary(max_size=200)
)
@counted("certificates: any file gives a list of DER blobs")
def test_pem(data: bytes) -> None:
    assert all(isinstance(d, bytes) and d for d in pem_certificates(data))


# --------------------------------------------------------------------------------------------
# GPT partition tables


def _gpt(
    entries: list[tuple[uuid.UUID, int, int, str]], sector: int, sectors: int, count: int, entry_size: int
) -> bytearray:
    image = bytearray(sector * sectors)
    stride = max(entry_size, 128)  # the header may claim a size too small for an entry
    table = bytearray(count * stride)
    for i, (type_id, first, last, name) in enumerate(entries[:count]):
        struct.pack_into(
            "<16s16sQQQ72s",
            table,
            i * stride,
            type_id.bytes_le,
            uuid.UUID(int=i + 1).bytes_le,
            first,
            last,
            0,
            name.encode("utf-16-le")[:72],
        )
    first_usable = 2 + -(-len(table) // sector)
    header = bytearray(92)
    struct.pack_into(
        "<8sIIIIQQQQ16sQIII",
        header,
        0,
        b"EFI PART",
        0x10000,
        92,
        0,
        0,
        1,
        sectors - 1,
        first_usable,
        max(sectors - first_usable - 1, 0),
        uuid.UUID(int=99).bytes_le,
        2,
        count,
        entry_size,
        zlib.crc32(table[: count * entry_size]),
    )
    struct.pack_into("<I", header, 16, zlib.crc32(header))
    image[sector : sector + 92] = header[: max(0, len(image) - sector)]
    image[2 * sector : 2 * sector + len(table)] = table[: max(0, len(image) - 2 * sector)]
    return image


_types = st.sampled_from(
    [type_uuid(r, a) for r in ("root", "usr", "root-verity") for a in ("x86-64", "arm64")]
    + [uuid.UUID("0fc63daf-8483-4772-8e79-3d69d8477de4"), uuid.UUID(int=0), uuid.UUID(int=5)]
)
_lba = st.integers(0, 70) | st.integers(0, 2**64 - 1)


@NORMAL
@given(
    st.lists(st.tuples(_types, _lba, _lba, st.text(st.sampled_from("v12."), max_size=4)), max_size=4),
    st.sampled_from([512, 4096]),
    st.integers(1, 80),
    st.sampled_from([0, 1, 4, 128]),
    st.sampled_from([128, 256, 8, 100]),
    st.one_of(st.none(), st.integers(0, 80 * 4096)),
    st.one_of(st.none(), st.tuples(st.integers(0, 80 * 4096), st.integers(0, 255))),
)
@counted("GPT: any table, truncated or damaged, is read or a GptError")
def test_gpt(
    entries: list[tuple[uuid.UUID, int, int, str]],
    sector: int,
    sectors: int,
    count: int,
    entry_size: int,
    cut: Optional[int],
    flip: Optional[tuple[int, int]],
) -> None:
    image = _gpt(entries, sector, sectors, count, entry_size)
    if flip is not None and flip[0] < len(image):
        image[flip[0]] = flip[1]
    if cut is not None:
        image = image[:cut]
    table = own_errors_only(parse_partition_table, bytes(image), expect=GptError)
    if isinstance(table, SysextError):
        return
    for p in table.partitions:
        assert p.offset + p.size <= len(image)
    selection = select_partitions(table, ("x86-64", "x86"))
    assert all(p in table.partitions for _, p in selection.chosen)


@NORMAL
@given(st.binary(max_size=1200), st.sampled_from([b"", b"EFI PART"]), st.sampled_from([0, 512, 4096]))
@counted("GPT: random bytes are read or a GptError")
def test_gpt_random(data: bytes, signature: bytes, at: int) -> None:
    image = bytearray(data)
    if signature and len(image) < at + 8:
        image.extend(bytes(at + 8 - len(image)))
    image[at : at + len(signature)] = signature
    own_errors_only(parse_partition_table, bytes(image), expect=GptError)


# --------------------------------------------------------------------------------------------
# The report's map of the user-needs catalogue


def test_catalogue_map_is_complete_and_points_at_real_tests() -> None:
    from tests.reliability_report import CATALOGUE, EXPLAINED, missing_tests

    assert [n for n, _, _ in CATALOGUE] == list(range(1, 58)), "every case of the catalogue, in order"
    assert all(refs for _, _, refs in CATALOGUE)
    assert missing_tests() == [], "the map names tests that do not exist"
    section = (Path(__file__).resolve().parent.parent / "docs/reliability.md").read_text()
    for n, _, refs in CATALOGUE:
        if EXPLAINED in refs:
            assert f"- **{n}** " in section, (
                f"case {n} is left to docs/reliability.md, which does not explain it"
            )
