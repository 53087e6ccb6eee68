# SPDX-License-Identifier: LGPL-2.1-or-later
"""Render tests/RELIABILITY.md from the figures a test run reported.

    SYSEXTPY_RELIABILITY_REPORT=/tmp/figures.jsonl .venv/bin/python -m pytest -q \\
        tests/test_properties.py tests/test_adversarial_chase.py tests/test_faults.py \\
        tests/test_concurrency.py tests/test_special_files.py tests/test_refresh.py tests/test_quick.py \\
        tests/test_skip_soundness.py
    .venv/bin/python tests/reliability_report.py /tmp/figures.jsonl > tests/RELIABILITY.md

Each line of the figures file is {"section", "name", "figures"} (tests/faults.py: report()).
Figures reported more than once under one name (parametrised tests) are added up. The catalogue
of cases below maps every case of the user-needs catalogue to the tests that cover it, or to the
page docs/reliability.md where it explains why a case is not covered.
"""

from __future__ import annotations

import ast
import json
import os
import platform
import sys
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

TESTS = Path(__file__).resolve().parent
EXPLAINED = "docs/reliability.md"

# Each case: "N. what", then one line per test that covers it ("file::function", below tests/)
# or docs/reliability.md when that page says why it is not (fully) covered.
CATALOGUE_TEXT = """
 1. zero-byte image next to a good one
    test_images_raw.py::test_broken_raw_images_are_rejected
    e2e/test_boot.py::test_broken_image_is_named_and_the_good_ones_merge
 2. image with a file system but no release file
    test_special_files.py::test_image_without_release_file
 3. versioned file name, release file of the base name
    test_osrelease.py::test_fallback_accepts_base_name
    test_osrelease.py::test_fallback_rejects_other_name_without_xattr
 4. renamed image and user.extension-release.strict
    test_osrelease.py::test_fallback_strict_xattr
    test_osrelease.py::test_fallback_with_real_xattr
    test_special_files.py::test_renamed_extension_on_a_file_system_without_xattrs
 5. release file syntax
    test_osrelease.py::test_parse_os_release
    test_properties.py::test_os_release_round_trip
    test_properties.py::test_os_release_any_text
 6. the matching grid
    test_compat.py::test_rules
    test_properties.py::test_compatibility
 7. a sysext shipping usr/lib/os-release
    test_plan.py::test_plan_json_verdicts
 8. nothing for a hierarchy
    test_merge.py::test_opt_overlay_only_with_opt_content
    test_merge.py::test_empty_hierarchy_is_not_a_layer
 9. usr a symlink inside an extension; the extension a symlink
    test_special_files.py::test_extension_whose_usr_is_a_symlink
    test_refresh.py::test_each_change_refreshes
10. an extension stored inside the hierarchy it extends
    test_special_files.py::test_extension_stored_inside_its_hierarchy
11. one name in two search directories; masking
    test_discover.py::test_shadowing_by_name
    test_discover.py::test_empty_directory_masks_lower_images
    test_discover.py::test_dev_null_link_does_not_mask
    test_merge.py::test_shadowing_between_search_dirs
    docs/reliability.md
12. a dangling symlink in a search directory
    test_discover.py::test_entries_that_are_not_images
    test_discover.py::test_dev_null_link_without_dev_null_in_root_is_dangling
13. host symlink against an extension directory
    docs/reliability.md
14. more than 100 extensions with long paths
    test_merge.py::test_498_extensions_fill_the_overlay
    test_apply.py::test_classic_option_string_too_long_is_refused
    test_mountapi.py::test_overlay_fd_paths_longer_than_fsconfig_strings
15. odd image names
    test_discover.py::test_entry_names_and_suffixes
    test_discover.py::test_non_utf8_name_is_invalid
    test_properties.py::test_image_names
    test_special_files.py::test_extension_behind_a_path_that_is_not_utf8
16. absolute symlinks resolved inside --root
    test_discover.py::test_links_resolve_inside_the_root
    test_adversarial_chase.py::test_random_trees
17. a symlinked .roothash.p7s
    test_images_trust.py::test_symlinked_signature_side_car_inside_the_root
    test_verity.py::test_side_cars_follow_links_inside_the_root
18. certificates only in the root; .pem ignored
    test_images_trust.py::test_certificates_come_from_the_root_never_the_host
    test_verity.py::test_certificate_directories
19. the initrd's own initrd-release
    test_osrelease.py::test_is_initrd_root_ignores_host_target
20. /var not mounted yet in the initrd
    e2e/test_boot.py::test_extension_on_separate_var_is_swapped_in_atomically
    test_generator.py::test_golden
21. first-boot writes to /etc after the confext merge
    test_mutable.py::test_mutable_modes
    docs/reliability.md
22. overlays survive switch-root; nothing leaks to other namespaces
    e2e/test_boot.py::test_happy_path_merged_in_initrd_and_confirmed
    test_merge.py::test_failed_assembly_leaves_target_untouched
23. the generator sandboxed
    test_generator.py::test_golden
    test_generator.py::test_second_run_into_same_dir_keeps_first_output
    test_special_files.py::test_generator_inputs
24. the kernel command line switch
    test_generator.py::test_read_switches
    e2e/test_boot.py::test_rd_switch_off_leaves_the_merge_to_the_real_root
    docs/reliability.md
25. unchanged verity images: skip and say why
    test_refresh.py::test_unchanged_refresh_skips_and_touches_no_mount
    e2e/test_boot.py::test_signed_verity_ddi_with_certificate_in_the_root
26. a file edited in a directory extension
    test_refresh.py::test_each_change_refreshes
    test_skip_soundness.py::test_a_skip_leaves_what_a_forced_refresh_builds
27. an image replaced with the same size and mtime
    test_refresh.py::test_each_change_refreshes
    test_skip_soundness.py::test_a_skip_leaves_what_a_forced_refresh_builds
28. a retargeted current symlink
    test_refresh.py::test_each_change_refreshes
29. an extension added or removed
    test_refresh.py::test_each_change_refreshes
30. settings changed, images not
    test_refresh.py::test_setting_changes_refresh
31. the record missing, corrupt, foreign, special
    test_refresh.py::test_untrusted_record_means_full_refresh
    test_quick.py::test_an_altered_record_never_confirms_a_changed_root
    test_special_files.py::test_handoff_record
    test_properties.py::test_state_record
32. record and mount table disagree
    test_refresh.py::test_live_merge_must_match_the_record
33. /run full or read-only
    test_faults.py::test_unusable_handoff_directory
    docs/reliability.md
34. submounts kept
    test_merge.py::test_submounts_survive_merge_refresh_unmerge
    test_merge.py::test_submount_made_while_merged_survives_unmerge
    test_faults.py::test_each_syscall_failing_once
35. a hierarchy that is a read-only bind mount
    test_refresh.py::test_one_reload_for_both_classes
36. a mutable upper dir under another lower stack
    test_mutable.py::test_writes_of_yes_are_imported_later
    test_mutable.py::test_mutable_overlay_options
37. work directories
    test_mutable.py::test_mutable_dir_symlinked_to_hierarchy
    docs/reliability.md
38. a lower layer that is an overlay at the stacking limit
    docs/reliability.md
39. the overlay mount refused (EINVAL)
    test_merge.py::test_failed_assembly_leaves_target_untouched
    test_faults.py::test_each_syscall_failing_once
40. no loop devices leaked
    test_images_raw.py::test_broken_raw_images_are_rejected
    test_images_trust.py::test_verity_activation_failure_leaves_nothing
    test_faults.py::test_sigkill_at_each_step
41. a mutable-only overlay
    test_mutable.py::test_mutable_modes
42. machine-id under a read-only confext
    test_merge.py::test_submounts_survive_merge_refresh_unmerge
    docs/reliability.md
43. readers during a forced refresh
    test_refresh.py::test_forced_refresh_leaves_no_gap
44. one hierarchy fails, the others not
    test_merge.py::test_failed_assembly_leaves_target_untouched
    test_faults.py::test_each_syscall_failing_once
45. two runs at once
    test_lock.py::test_concurrent_runs_are_serialised
    test_concurrency.py::test_parallel_refreshes
    test_concurrency.py::test_parallel_refreshes_with_their_own_records
46. killed in the middle
    test_faults.py::test_sigkill_at_each_step
    test_refresh.py::test_sigkill_at_every_step_loses_nothing
    docs/reliability.md
47. unmerge and refresh while the trees are busy
    test_concurrency.py::test_busy_hierarchies
48. an extension deleted while merged
    test_refresh.py::test_each_change_refreshes
49. images replaced while refreshing
    test_concurrency.py::test_merge_racing_replaced_images
50. the very first run
    test_faults.py::test_first_run_on_a_pristine_root
51. EXTENSION_RELOAD_MANAGER=1 merged in the initrd
    e2e/test_boot.py::test_happy_path_merged_in_initrd_and_confirmed
    test_refresh.py::test_one_reload_for_both_classes
52. a unit enabled through .wants
    e2e/test_boot.py::test_happy_path_merged_in_initrd_and_confirmed
53. units of an unmerged extension stopped
    docs/reliability.md
54. sysext and confext changed: one reload
    test_refresh.py::test_one_reload_for_both_classes
    e2e/test_boot.py::test_extension_on_separate_var_is_swapped_in_atomically
55. SELinux labels
    docs/reliability.md
56. an image policy rejection exits non-zero
    test_images_trust.py::test_image_policy_option
57. status JSON
    test_plan.py::test_status_json_unmerged
    test_status.py::test_status_names_paths_mode_and_rejected_images
"""


def parse_catalogue(text: str) -> list[tuple[int, str, tuple[str, ...]]]:
    cases: list[tuple[int, str, list[str]]] = []
    for line in text.splitlines():
        if not line.strip():
            continue
        if line.startswith("    "):
            cases[-1][2].append(line.strip())
        else:
            number, _, what = line.strip().partition(". ")
            cases.append((int(number), what, []))
    return [(n, what, tuple(refs)) for n, what, refs in cases]


CATALOGUE = parse_catalogue(CATALOGUE_TEXT)


def missing_tests(catalogue: Iterable[tuple[int, str, tuple[str, ...]]] = CATALOGUE) -> list[str]:
    """Catalogue references to tests that do not exist (read from the test files' syntax trees)."""
    defined: dict[str, set[str]] = {}
    missing = []
    for _, _, refs in catalogue:
        for ref in refs:
            if ref == EXPLAINED:
                continue
            file, _, name = ref.partition("::")
            if file not in defined:
                path = TESTS / file
                tree = ast.parse(path.read_text()) if path.exists() else ast.Module(body=[], type_ignores=[])
                defined[file] = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
            if name not in defined[file]:
                missing.append(ref)
    return missing


# --------------------------------------------------------------------------------------------
# Reading and adding up


def _add(a: Any, b: Any) -> Any:
    if isinstance(a, dict) and isinstance(b, dict):
        return {k: _add(a.get(k), b.get(k)) if k in a and k in b else a.get(k, b.get(k)) for k in {*a, *b}}
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a + b
    return b


def load(lines: Iterable[str]) -> dict[str, dict[str, dict[str, Any]]]:
    sections: dict[str, dict[str, dict[str, Any]]] = {}
    for line in lines:
        if not line.strip():
            continue
        item = json.loads(line)
        names = sections.setdefault(item["section"], {})
        name = item["name"]
        names[name] = _add(names[name], item["figures"]) if name in names else item["figures"]
    return sections


# --------------------------------------------------------------------------------------------
# Rendering


def _num(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int) else str(value)


def _pairs(d: Mapping[str, Any]) -> str:
    if not d:
        return "-"
    return ", ".join(
        f"{k} ({_pairs(v)})" if isinstance(v, dict) else f"{k} {_num(v)}" for k, v in sorted(d.items())
    )


def _table(headers: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return out


def render(sections: Mapping[str, Mapping[str, Mapping[str, Any]]], how: str) -> str:
    out = [
        "# Reliability: the figures",
        "",
        "Generated by `tests/reliability_report.py` from the figures the reliability tests reported in one",
        f"run ({how}). Regenerate it as that script's docstring says; do not edit by hand.",
        "",
    ]
    props = sections.get("properties", {})
    trees = sections.get("adversarial trees", {})
    faults = sections.get("faults", {})
    conc = sections.get("concurrency", {})
    special = sections.get("special files", {})
    skip = sections.get("skip soundness", {})
    tampered = sections.get("record tampering", {})

    paths = trees.get("paths", {})
    escapes = paths.get("escapes", 0)
    lost = sum(int(f.get("lost_hierarchies", f.get("lost", 0))) for f in faults.values())
    leaks = sum(int(f.get("leaks", 0)) for f in faults.values()) + sum(
        int(f.get("leaks", 0)) for f in conc.values()
    )
    injected = sum(int(f.get("runs", 0)) for name, f in faults.items() if "(" in name)
    examples = sum(int(f.get("examples", 0)) for f in props.values())
    parallel = sum(int(f.get("runs", 0)) for f in conc.values())
    special_runs = sum(sum(f.values()) for n, f in special.items() if n != "odd content")
    out += [
        "## Summary",
        "",
        f"- Properties: {len(props)}, {_num(examples)} examples.",
        f"- Adversarial trees: {_num(trees.get('trees', {}).get('resolved', 0))} trees, "
        f"{_num(paths.get('resolved', 0))} resolutions; escapes from the root: {escapes}.",
        f"- Fault injection: {_num(injected)} runs with a fault injected; hierarchies lost or "
        f"half-assembled: {lost}; mounts or loop devices leaked after the repair: {leaks}.",
        f"- Concurrency: {_num(parallel)} runs in parallel or racing replaced images; every one "
        "exited cleanly; one overlay per hierarchy at the end.",
        f"- Special files: {_num(special_runs)} runs against a FIFO, a /dev/zero-like device, a "
        "socket or a terabyte-sized sparse file; none blocked.",
        f"- Skip soundness: {_num(sum(int(f.get('cases', 0)) for f in skip.values()))} changed roots "
        "refreshed plainly and with --always-refresh=yes; skipped although the forced refresh built "
        f"another state: {sum(int(f.get('skipped_though_different', 0)) for f in skip.values())}.",
        f"- Altered records: {_num(sum(int(f.get('roots', 0)) for f in tampered.values()))} changed roots "
        "with a record altered; confirmed although the root changed: "
        f"{sum(int(f.get('confirmed_though_changed', 0)) for f in tampered.values())}.",
        "",
    ]

    out += ["## Properties (tests/test_properties.py)", "", "Examples each property ran:", ""]
    out += _table(
        ["property", "examples"], [[n, _num(f.get("examples", 0))] for n, f in sorted(props.items())]
    )
    out += [""]

    out += ["## Adversarial trees (tests/test_adversarial_chase.py)", ""]
    t = trees.get("trees", {})
    out += [
        f"- Trees built and resolved in: {_num(t.get('resolved', 0))} ({_num(t.get('entries', 0))} entries, "
        f"{_num(t.get('symlinks', 0))} of them symlinks).",
        f"- Paths resolved: {_num(paths.get('resolved', 0))}; outcomes: "
        + _pairs({k: v for k, v in paths.items() if k in ("ok", "ENOENT", "ENOTDIR", "ELOOP")})
        + ".",
        f"- Results equal to the reference model: {_num(paths.get('model agrees', 0))}; also checked "
        f"against the kernel (openat2 RESOLVE_IN_ROOT): {_num(paths.get('kernel agrees', 0))}.",
        f"- Escapes from the root: {escapes}.",
        "",
    ]

    out += ["## Fault injection (tests/test_faults.py, tests/test_refresh.py)", ""]
    out += [
        "A point is one call of a mount-related syscall (or a loop device ioctl) that a clean run of the",
        "verb makes; *each step* injects at every point except inside a burst of one syscall, where the",
        "first and last call stand for it. Outcome: how the run ended, and the state right after it",
        "(old, new, or other: a whole merge of fewer images, reported as rejected); every run was",
        "followed by a repair run that had to reach the new state with one overlay per hierarchy.",
        "*Stacked until the repair*: runs after which a new overlay sat hidden below the old, visible one",
        "(a fault between mounting beneath and detaching); the repair run cleared every one of them.",
        "",
    ]
    rows = []
    for name, f in sorted(faults.items()):
        if "(" not in name:
            continue
        rows.append(
            [
                name,
                _num(f.get("reached", "")),
                _num(f.get("points", "")),
                _num(f.get("runs", "")),
                _pairs(f.get("by_syscall", {})),
                _pairs(f.get("outcomes", {})),
                _num(f.get("lost_hierarchies", 0)),
                _num(f.get("leaks", "-")),
            ]
        )
    out += _table(
        [
            "run",
            "points reached",
            "points injected",
            "runs",
            "points by syscall",
            "outcomes",
            "lost",
            "leaks",
        ],
        rows,
    )
    others = [[n, _pairs(f)] for n, f in sorted(faults.items()) if "(" not in n]
    if others:
        out += ["", "Other faults:", ""] + _table(["case", "figures"], others)
    out += [""]

    out += ["## Concurrency (tests/test_concurrency.py)", ""]
    out += _table(["case", "figures"], [[n, _pairs(f)] for n, f in sorted(conc.items())])
    out += [""]

    out += ["## Special files (tests/test_special_files.py)", "", "Runs per place and kind of file:", ""]
    places = {n: f for n, f in special.items() if n != "odd content"}
    kinds = sorted({k for f in places.values() for k in f})
    out += _table(
        ["place", *kinds], [[n, *(_num(f.get(k, "")) for k in kinds)] for n, f in sorted(places.items())]
    )
    odd = special.get("odd content", {})
    if odd:
        out += [
            "",
            "Odd content and odd places, one run each and none failed: " + ", ".join(sorted(odd)) + ".",
        ]
    out += [""]

    out += ["## Skip soundness (tests/test_skip_soundness.py)", ""]
    out += [
        "A root with directory and raw extensions of both classes is merged and changed, then",
        "refreshed twice: plainly, and with --always-refresh=yes. The state each leaves (live merges,",
        "extension lists, every visible file, rejected images, exit status) must be the same. The oracle",
        "is the forced refresh, never the fingerprint.",
        "",
    ]
    keys = ("cases", "skipped", "partly_skipped", "refreshed", "equal", "differ", "skipped_though_different")
    out += _table(
        ["change [class, kind]", *(k.replace("_", " ") for k in keys)],
        [[n, *(_num(f.get(k, 0)) for k in keys)] for n, f in sorted(skip.items())],
    )
    out += [""]

    out += ["## Altered records (tests/test_quick.py)", ""]
    out += [
        "After a merge the root is changed (an extension added, a file edited in place with its size",
        "and mtime kept) and the handoff record altered; the refresh must not skip.",
        "",
    ]
    out += _table(
        ["alteration", "changed roots", "confirmed though changed"],
        [
            [n, _num(f.get("roots", 0)), _num(f.get("confirmed_though_changed", 0))]
            for n, f in sorted(tampered.items())
        ],
    )
    out += [""]

    out += [
        "## The catalogue of cases",
        "",
        "Every case of part (b) of the user-needs catalogue, and what covers it (test files under",
        f"`tests/`; {EXPLAINED} says why a case is not, or not fully, covered).",
        "",
    ]
    out += _table(
        ["#", "case", "covered by"],
        [
            [str(n), what, "<br>".join(f"`{r}`" if r != EXPLAINED else r for r in refs)]
            for n, what, refs in CATALOGUE
        ],
    )
    return "\n".join(out) + "\n"


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        sys.stderr.write("usage: reliability_report.py FIGURES.jsonl > tests/RELIABILITY.md\n")
        return 2
    with open(argv[0], encoding="utf-8") as f:
        sections = load(f)
    how = (
        f"{time.strftime('%Y-%m-%d')}, Linux {os.uname().release}, Python {platform.python_version()}, "
        f"{os.cpu_count()} CPUs; {os.environ.get('SYSEXTPY_RELIABILITY_HOW', 'pytest')}"
    )
    sys.stdout.write(render(sections, how))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
