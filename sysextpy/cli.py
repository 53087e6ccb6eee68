# SPDX-License-Identifier: LGPL-2.1-or-later
"""Command line: parse argv into Options, dispatch to the verb, map errors to exit codes.

The parser is hand-written on purpose: it accepts upstream's spellings (options before or after
the verb, `--opt=value` and `--opt value`), prints one-line usage errors, and costs nothing to
import on the boot path, where argparse would be the most expensive import we have.
"""

from __future__ import annotations

import gc
import os
import sys

from . import __version__
from .errors import EXIT_INTERRUPTED, EXIT_OK, ParseError, SysextError, UsageError
from .util import parse_bool

TYPE_CHECKING = False  # typing is not imported at run time: it costs start-up time
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from typing import Any, Callable, NoReturn, Optional

    from .model import ImageClass, Options

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

CLASS_NAMES = {"sysext": ("sysext",), "confext": ("confext",), "all": ("sysext", "confext")}
MUTABLE_NAMES = ("no", "yes", "auto", "import", "ephemeral", "ephemeral-import")


def parse_boolean(option: str, value: str) -> bool:
    try:
        return parse_bool(value)
    except ParseError:
        raise UsageError(f"{option}= takes a boolean, got {value!r}") from None


def class_from_argv0(argv0: str) -> tuple[str, ...]:
    """Installed as systemd-confext/systemd-sysext (a symlink), behave like that tool's class."""
    base = os.path.basename(argv0)
    if "systemd-confext" in base:
        return CLASS_NAMES["confext"]
    if "systemd-sysext" in base:
        return CLASS_NAMES["sysext"]
    return CLASS_NAMES["all"]


class Parsed:
    """The command line as read: option values (plain values; enums only for options that need
    them), the verb, and what to show instead of running one."""

    __slots__ = ("given", "show", "values", "verb")

    def __init__(self, classes: tuple[str, ...]) -> None:
        self.values: dict[str, Any] = {"classes": classes}
        self.verb: Optional[str] = None
        self.show: Optional[str] = None  # help, version, mutable-help, json-help
        self.given: list[str] = []  # the options given, in order


def _opt_class(p: Parsed, value: str) -> None:
    if value not in CLASS_NAMES:
        raise UsageError(f"--class= takes sysext, confext or all, got {value!r}")
    p.values["classes"] = CLASS_NAMES[value]


def _opt_root(p: Parsed, value: str) -> None:
    if value == "":
        p.values["root"] = "/"
        p.values["root_given"] = False
        return
    p.values["root"] = os.path.normpath(os.path.abspath(value))
    p.values["root_given"] = True


def _opt_mutable(p: Parsed, value: str) -> None:
    if value == "help":
        # Like upstream, only a --no-legend given *before* --mutable=help drops the header: help
        # stops the parse, so later options are never seen.
        p.show = "mutable-help"
        return
    from .config import parse_mutable_mode  # the one parser, shared with Mutable= in sysext.conf

    try:
        p.values["mutable"] = parse_mutable_mode(value)
    except ParseError:
        raise UsageError(
            f"--mutable= takes one of {', '.join(MUTABLE_NAMES)} or a boolean, got {value!r}"
        ) from None


def _opt_json(p: Parsed, value: str) -> None:
    if value == "help":
        p.show = "json-help"
        return
    from .model import JsonMode

    try:
        p.values["json"] = JsonMode(value)
    except ValueError:
        raise UsageError(f"--json= takes pretty, short or off, got {value!r}") from None


def _opt_policy(p: Parsed, value: str) -> None:
    if not value:
        p.values["image_policy"] = None
        return
    # Imported here: the policy grammar is only needed when the option is given.
    from .policy import format_image_policy, parse_image_policy

    try:
        p.values["image_policy"] = format_image_policy(parse_image_policy(value))
    except ParseError as e:
        raise UsageError(f"--image-policy=: {e.message}", hint=e.hint) from None


def _opt_state(p: Parsed, value: str) -> None:
    if not value:
        raise UsageError("--state= needs a path")
    p.values["state"] = os.path.abspath(value)


def _set(key: str, value: object) -> Callable[[Parsed], None]:
    return lambda p: p.values.__setitem__(key, value)


def _show(what: str) -> Callable[[Parsed], None]:
    return lambda p: setattr(p, "show", what)


class Option:
    """One option: whether it takes a value, what it does, and whether a refresh given it may be
    confirmed by the recorded observations (decide.confirm_refresh) rather than by recomputed inputs: only
    options that change nothing the inputs depend on may."""

    __slots__ = ("apply", "confirming", "name", "takes_value")

    def __init__(
        self, name: str, apply: Callable[..., None], *, takes_value: bool, confirming: bool = False
    ) -> None:
        self.name = name
        self.apply = apply
        self.takes_value = takes_value
        self.confirming = confirming


OPTIONS: dict[str, Option] = {
    o.name: o
    for o in (
        Option("--class", _opt_class, takes_value=True, confirming=True),
        Option("--root", _opt_root, takes_value=True, confirming=True),
        Option("--state", _opt_state, takes_value=True, confirming=True),
        Option(
            "--always-refresh",
            lambda p, v: p.values.__setitem__("always_refresh", parse_boolean("--always-refresh", v)),
            takes_value=True,
            confirming=True,  # =no only: =yes never confirms anything
        ),
        Option("--mutable", _opt_mutable, takes_value=True),
        Option("--json", _opt_json, takes_value=True),
        Option("--image-policy", _opt_policy, takes_value=True),
        Option(
            "--noexec",
            lambda p, v: p.values.__setitem__("noexec", parse_boolean("--noexec", v)),
            takes_value=True,
        ),
        Option("--force", _set("force", True), takes_value=False),
        Option("--no-reload", _set("no_reload", True), takes_value=False, confirming=True),
        Option("--no-legend", _set("legend", False), takes_value=False, confirming=True),
        Option("--no-pager", lambda p: None, takes_value=False, confirming=True),
        Option("--debug", _set("debug", True), takes_value=False),
        Option("--help", _show("help"), takes_value=False),
        Option("-h", _show("help"), takes_value=False),
        Option("--version", _show("version"), takes_value=False),
    )
}


def read_argv(argv: Sequence[str], argv0: str = "sysextpy") -> Parsed:
    """Read argv (without the program name) against OPTIONS. UsageError for anything else."""
    p = Parsed(class_from_argv0(argv0))
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
        option = OPTIONS.get(name)
        if option is None:
            raise UsageError(f"unknown option {arg!r}", hint="see sysextpy --help")
        p.given.append(name)
        if not option.takes_value:
            if eq:
                raise UsageError(f"option {name} takes no value, got {arg!r}")
            option.apply(p)
            continue
        if not eq:
            if i >= len(args):
                raise UsageError(f"option {name} needs a value")
            value = args[i]
            i += 1
        option.apply(p, value)
    if p.show is not None:
        # Help and friends print and exit as soon as they are seen, like upstream's getopt loop.
        return p
    if extra is not None:
        raise UsageError(f"too many arguments: {extra!r} after verb {p.verb!r}")
    if p.verb == "help":
        p.show = "help"
    elif p.verb is not None and p.verb not in VERBS:
        raise UsageError(f"unknown verb {p.verb!r}", hint=f"verbs: {', '.join(VERBS)}")
    return p


VERBS = ("status", "list", "merge", "unmerge", "refresh", "plan")


def confirmable(p: Parsed) -> bool:
    """Whether this is a refresh the recorded observations may confirm (decide.confirm_refresh)."""
    return (
        p.show is None
        and p.verb == "refresh"
        and not p.values.get("always_refresh")
        and all(OPTIONS[name].confirming for name in p.given)
    )


def to_options(p: Parsed) -> Options:
    """The Options every verb runs from."""
    from .model import ImageClass, Options, Verb
    from .records import replace

    values = dict(p.values)
    classes: tuple[ImageClass, ...] = tuple(ImageClass(c) for c in values.pop("classes"))
    # A verb is only looked at when there is nothing to show instead (help stops the parse).
    verb = Verb(p.verb) if p.verb is not None and p.show is None else Verb.STATUS
    return replace(Options(), verb=verb, classes=classes, **values)


def parse_args(argv: Sequence[str], argv0: str = "sysextpy") -> tuple[Options, Optional[str]]:
    """Parse argv (without the program name). Returns the options and what to show instead of
    running a verb ("help", "version", "mutable-help", "json-help"), if anything."""
    p = read_argv(argv, argv0)
    return to_options(p), p.show


def _print_mutable_help(opts: Options) -> None:
    if opts.legend:
        print("Known mutability modes:")
    for name in MUTABLE_NAMES:
        print(name)


def main(argv: Optional[Sequence[str]] = None, *, confirming: bool = True) -> int:
    """The program. A refresh that the recorded observations can confirm is done by decide.confirm_refresh
    without the rest of the package (unless `confirming` is False); anything else runs here."""
    # A run lasts milliseconds and leaves no garbage cycles worth collecting: the collector's passes
    # over what the imports made cost about 1 ms of each run (5 % of a merge, 2 ms at 100 + 100).
    collecting = gc.isenabled()
    gc.disable()
    try:
        return _run(argv, confirming=confirming)
    finally:
        if collecting:
            # Without a collection on the way out: everything made meanwhile counts as old (moved
            # to the oldest generation, the young one's count reset), as if it had been collected.
            gc.freeze()
            gc.unfreeze()
            gc.enable()


def run_as_process(*, confirming: bool = True) -> NoReturn:
    """`main()` as the whole process: its status, with the output flushed, through _exit. The
    interpreter's own teardown (every module and object freed one by one) serves nothing a finished
    run needs, and costs 1 to 3 ms after a merge. An exception that escapes main() (--debug) takes
    the ordinary way out, with its traceback."""
    status = main(confirming=confirming)
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):
        status = 120  # what the interpreter's own exit gives when stdout cannot be flushed
    os._exit(status)


def _require_root_directory(opts: Options) -> None:
    if opts.root_given and not os.path.isdir(opts.root):
        raise SysextError(f"--root={os.fspath(opts.root)!r} is not a directory.")


def _mutate(opts: Options, env: Mapping[str, str], declined: Optional[str]) -> int:
    """merge, refresh and unmerge, under the lock (settings are read under it too)."""
    if os.geteuid() != 0:
        raise SysextError("Need to be privileged.", hint="run as root")
    from .model import Verb
    from .state import run_lock

    with run_lock(opts.state, opts.root, env):
        if opts.verb is Verb.UNMERGE:
            from .unmerge import do_unmerge

            return do_unmerge(opts, env)
        from .merge import do_merge

        return do_merge(opts, env, declined)


def _run(argv: Optional[Sequence[str]], *, confirming: bool) -> int:
    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args
    try:
        parsed = read_argv(args, sys.argv[0] if sys.argv else "sysextpy")
    except UsageError as e:
        print(f"sysextpy: {e}", file=sys.stderr)
        return e.exit_code

    declined: Optional[str] = None
    if confirming and confirmable(parsed):
        from .decide import confirm_refresh

        status, declined = confirm_refresh(parsed.values, os.environ)
        if status is not None:
            return status

    show = parsed.show
    if show == "help":
        sys.stdout.write(USAGE)
        return EXIT_OK
    if show == "version":
        print(f"sysextpy {__version__}")
        return EXIT_OK
    if show == "mutable-help":
        if parsed.values.get("legend", True):
            print("Known mutability modes:")
        for name in MUTABLE_NAMES:
            print(name)
        return EXIT_OK
    if show == "json-help":
        print("\n".join(("pretty", "short", "off")))  # upstream's order
        return EXIT_OK

    opts = to_options(parsed)
    from .log import log, setup_logging

    setup_logging(debug=opts.debug)
    try:
        _require_root_directory(opts)
        if opts.verb.mutates:
            return _mutate(opts, os.environ, declined)
        from .verbs import run_verb

        return run_verb(opts, os.environ)
    except SysextError as e:
        log.error("%s", e)
        if opts.debug:
            # The interpreter's own printer (in C): the traceback module and its imports would
            # have to be in the initrd for this alone.
            sys.__excepthook__(type(e), e, e.__traceback__)
        return e.exit_code
    except KeyboardInterrupt:
        log.error("Interrupted.")
        return EXIT_INTERRUPTED
    except Exception as e:
        # A programming error: say so plainly; the traceback is what a bug report needs.
        if debug:
            raise
        log.error("sysextpy failed unexpectedly; please report this with the output of --debug:")
        sys.__excepthook__(type(e), e, e.__traceback__)
        return 1
