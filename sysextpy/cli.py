"""Command line: parse argv into Options, dispatch to the verb, map errors to exit codes.

The parser is hand-written on purpose: it accepts upstream's spellings (options before or after
the verb, `--opt=value` and `--opt value`), prints one-line usage errors, and costs nothing to
import on the boot path, where argparse would be the most expensive import we have.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path

from . import __version__
from .errors import ParseError, SysextError, UsageError
from .model import ALL_CLASSES, ImageClass, JsonMode, MutableMode, Options, Verb
from .records import replace
from .util import parse_bool

TYPE_CHECKING = False  # typing is not imported at run time: it costs start-up time
if TYPE_CHECKING:
    from typing import Callable, Optional

USAGE = """\
sysextpy [OPTIONS...] [VERB]

Merge system extension images (/usr, /opt) and configuration extension images (/etc).

Verbs:
  status               Show which extensions are merged where (default)
  list                 List discovered extension images
  plan                 Show the verdict for every image and what refresh would do; change nothing
  merge                Merge extension images
  unmerge              Unmerge extension images
  refresh              Bring the merge up to date; skip when nothing changed

Options:
  -h --help            Show this help
     --version         Show the version
     --class=CLASS     sysext, confext or all (default: all)
     --root=PATH       Operate on an alternate root (implies --no-reload)
     --mutable=MODE    no, yes, auto, import, ephemeral, ephemeral-import, or help
     --force           Skip compatibility checks
     --no-reload       Do not reload the service manager
     --always-refresh=BOOL  Refresh even when nothing changed
     --image-policy=POLICY  Image policy for disk images
     --noexec=BOOL     Force noexec on (yes) or off (no) for the merged hierarchies
     --json=MODE       pretty, short or off
     --no-legend       Do not print table headers and footers
     --no-pager        Accepted for compatibility; output is never paged
     --state=PATH      Handoff record (default: /run/sysextpy/state.json)
     --debug           Verbose logging and tracebacks

Exit status: 0 success, 1 error, 2 usage error, 3 some images rejected while others merged.
"""

MUTABLE_NAMES = tuple(m.value for m in MutableMode)


def parse_boolean(option: str, value: str) -> bool:
    try:
        return parse_bool(value)
    except ParseError:
        raise UsageError(f"{option}= takes a boolean, got {value!r}") from None


def parse_mutable(value: str) -> MutableMode:
    """A mode name (case-sensitive, as upstream's table lookup) or any boolean spelling."""
    from .config import parse_mutable_mode  # the one parser, shared with Mutable= in sysext.conf

    try:
        return parse_mutable_mode(value)
    except ParseError:
        raise UsageError(
            f"--mutable= takes one of {', '.join(MUTABLE_NAMES)} or a boolean, got {value!r}"
        ) from None


def class_from_argv0(argv0: str) -> tuple[ImageClass, ...]:
    """Installed as systemd-confext/systemd-sysext (a symlink), behave like that tool's class."""
    base = os.path.basename(argv0)
    if "systemd-confext" in base:
        return (ImageClass.CONFEXT,)
    if "systemd-sysext" in base:
        return (ImageClass.SYSEXT,)
    return ALL_CLASSES


class _Parsed:
    """Mutable scratch for the parser; frozen into Options at the end."""

    def __init__(self, classes: tuple[ImageClass, ...]) -> None:
        self.values: dict[str, object] = {"classes": classes}
        self.verb: Optional[str] = None
        self.show: Optional[str] = None  # help, version, mutable-help, json-help


# Options taking a value, and what to do with it.
def _opt_class(p: _Parsed, value: str) -> None:
    table = {"sysext": (ImageClass.SYSEXT,), "confext": (ImageClass.CONFEXT,), "all": ALL_CLASSES}
    if value not in table:
        raise UsageError(f"--class= takes sysext, confext or all, got {value!r}")
    p.values["classes"] = table[value]


def _opt_root(p: _Parsed, value: str) -> None:
    if value == "":
        p.values["root"] = Path("/")
        p.values["root_given"] = False
        return
    p.values["root"] = Path(os.path.normpath(os.path.abspath(value)))
    p.values["root_given"] = True


def _opt_mutable(p: _Parsed, value: str) -> None:
    if value == "help":
        # Like upstream, only a --no-legend given *before* --mutable=help drops the header: help
        # stops the parse, so later options are never seen.
        p.show = "mutable-help"
        return
    p.values["mutable"] = parse_mutable(value)


def _opt_json(p: _Parsed, value: str) -> None:
    if value == "help":
        p.show = "json-help"
        return
    try:
        p.values["json"] = JsonMode(value)
    except ValueError:
        raise UsageError(f"--json= takes pretty, short or off, got {value!r}") from None


def _opt_policy(p: _Parsed, value: str) -> None:
    if not value:
        p.values["image_policy"] = None
        return
    # Imported here: the policy grammar is only needed when the option is given.
    from .policy import format_image_policy, parse_image_policy

    try:
        p.values["image_policy"] = format_image_policy(parse_image_policy(value))
    except ParseError as e:
        raise UsageError(f"--image-policy=: {e.message}", hint=e.hint) from None


def _opt_state(p: _Parsed, value: str) -> None:
    if not value:
        raise UsageError("--state= needs a path")
    p.values["state"] = Path(os.path.abspath(value))


_VALUED: dict[str, Callable[[_Parsed, str], None]] = {
    "--class": _opt_class,
    "--root": _opt_root,
    "--mutable": _opt_mutable,
    "--json": _opt_json,
    "--image-policy": _opt_policy,
    "--state": _opt_state,
    "--always-refresh": lambda p, v: p.values.__setitem__(
        "always_refresh", parse_boolean("--always-refresh", v)
    ),
    "--noexec": lambda p, v: p.values.__setitem__("noexec", parse_boolean("--noexec", v)),
}

_FLAGS: dict[str, Callable[[_Parsed], None]] = {
    "--force": lambda p: p.values.__setitem__("force", True),
    "--no-reload": lambda p: p.values.__setitem__("no_reload", True),
    "--no-legend": lambda p: p.values.__setitem__("legend", False),
    "--no-pager": lambda p: None,
    "--debug": lambda p: p.values.__setitem__("debug", True),
    "--help": lambda p: setattr(p, "show", "help"),
    "-h": lambda p: setattr(p, "show", "help"),
    "--version": lambda p: setattr(p, "show", "version"),
}


def parse_args(argv: Sequence[str], argv0: str = "sysextpy") -> tuple[Options, Optional[str]]:
    """Parse argv (without the program name). Returns the options and what to show instead of running
    a verb ("help", "version", "mutable-help", "json-help"), if anything."""
    p = _Parsed(class_from_argv0(argv0))
    args = list(argv)
    i = 0
    only_positional = False
    extra: Optional[str] = None  # a second positional; reported after the options, like getopt
    while i < len(args) and p.show is None:
        arg = args[i]
        i += 1
        if only_positional or not arg.startswith("-") or arg == "-":
            if p.verb is None:
                p.verb = arg
            elif extra is None:
                extra = arg
            continue
        if arg == "--":
            only_positional = True
            continue
        name, eq, value = arg.partition("=")
        if name in _FLAGS:
            if eq:
                raise UsageError(f"option {name} takes no value, got {arg!r}")
            _FLAGS[name](p)
            continue
        if name in _VALUED:
            if not eq:
                if i >= len(args):
                    raise UsageError(f"option {name} needs a value")
                value = args[i]
                i += 1
            _VALUED[name](p, value)
            continue
        raise UsageError(f"unknown option {arg!r}", hint="see sysextpy --help")

    if p.show is not None:
        # Help and friends print and exit as soon as they are seen, like upstream's getopt loop.
        return replace(Options(), **p.values), p.show  # type: ignore[arg-type]
    if extra is not None:
        raise UsageError(f"too many arguments: {extra!r} after verb {p.verb!r}")
    verb = Verb.STATUS
    if p.verb is not None:
        if p.verb == "help":
            p.show = "help"
        else:
            try:
                verb = Verb(p.verb)
            except ValueError:
                known = ", ".join(v.value for v in Verb)
                raise UsageError(f"unknown verb {p.verb!r}", hint=f"verbs: {known}") from None
    opts = replace(Options(), verb=verb, **p.values)  # type: ignore[arg-type]
    return opts, p.show


def _print_mutable_help(opts: Options) -> None:
    if opts.legend:
        print("Known mutability modes:")
    for name in MUTABLE_NAMES:
        print(name)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args
    try:
        opts, show = parse_args(args, sys.argv[0] if sys.argv else "sysextpy")
    except UsageError as e:
        print(f"sysextpy: {e}", file=sys.stderr)
        return e.exit_code

    if show == "help":
        sys.stdout.write(USAGE)
        return 0
    if show == "version":
        print(f"sysextpy {__version__}")
        return 0
    if show == "mutable-help":
        _print_mutable_help(opts)
        return 0
    if show == "json-help":
        # Upstream's order, which is not the enum's.
        print("\n".join(m.value for m in (JsonMode.PRETTY, JsonMode.SHORT, JsonMode.OFF)))
        return 0

    from .log import log, setup_logging

    setup_logging(debug=opts.debug)
    try:
        from .verbs import run_verb

        return run_verb(opts)
    except SysextError as e:
        log.error("%s", e)
        if opts.debug:
            import traceback

            traceback.print_exc()
        return e.exit_code
    except KeyboardInterrupt:
        log.error("Interrupted.")
        return 130
    except Exception:
        # A programming error: say so plainly; the traceback is what a bug report needs.
        if debug:
            raise
        import traceback

        log.error("sysextpy failed unexpectedly; please report this with the output of --debug:")
        log.error("%s", traceback.format_exc().rstrip())
        return 1
