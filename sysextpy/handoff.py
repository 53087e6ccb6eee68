# SPDX-License-Identifier: LGPL-2.1-or-later
"""The handoff record: what a run did, for the next run and for the generator. One type, one
parser, one serialiser; state.py reads and writes it where it lives.

Schema 2, one line of JSON, keys camelCase:

    {
      "schema": 2,
      "bootId": "<32 hex>",            # /proc/sys/kernel/random/boot_id without dashes
      "phase": "merging" | "merged" | "failed",
      "tool": "sysextpy 0.1.0", "verb": "merge" | "refresh" | "unmerge", "root": "/sysroot",
      "inInitrd": true,                # the process ran in an initrd (/etc/initrd-release)
      "started": <usec CLOCK_REALTIME>, "finished": <usec> | null,
      "classes": {
        "sysext": {
          "fingerprint": "<sha256 hex>" | null,   # bind(inputsDigest, observationsDigest)
          "target": "<sha256 hex>",       # only when rebuilt: the fingerprint it is moving to,
                                          # already in the "merging" record; never vouches
          "inputsDigest": "<sha256 hex>" | null,  # of everything that decides the merge
          "observationsDigest": "<sha256 hex>" | null,  # of the observations it was read from
          "merged": ["a", "b"],
          "rejected": [{"name": "c", "reason": "..."}],
          "ignored": [{"name": "d", "reason": "..."}],
          "deferred": [{"entry": "/var/lib/extensions/e.raw", "reason": "..."}],  # left to the
                                       # real root: on a file system the initrd does not mount
          "unreachable": ["/var/lib/extensions"],   # search dirs below a file system not yet mounted
          "hierarchies": {
            "/usr": {"result": "merged" | "replaced" | "unchanged" | "unmerged" | "untouched" | "failed",
                     "mountId": <int> | null, "dev": "MAJ:MIN" | null, "error": "..." | null}
          }
        },
        "confext": {...}
      },
      "errors": ["..."], "timings": {"totalMs": <float>, ...},
      "reload": {"done": false, "reason": "..."},
      "actions": [                      # live actions after the reload (actions.py), in order
        {"unit": "foo.service", "action": "try-restart" | "try-reload-or-restart" | "stop",
         "for": ["sysext:foo"], "result": "done" | "failed", "error": "..." | null}
      ],
      "hooks": [                        # the administrator's hooks this run ran (hooks.py), in order
        {"hook": "NAME", "verb": "check" | "generate", "target": "sysext:foo" | "sysext:/usr",
         "status": <int> | null, "durationMs": <float>, "message": "first line of stderr"}
      ],
      "confirmedBy": "observations" | "inputs" | null,  # what proved a run that changed nothing
      "quickDeclined": "..." | null,   # why the observations did not confirm (a full run's record)
      "messages": [[<priority>, "..."]],  # what deciding said (warnings), said again on a skip
      "confirm": {                      # what the inputs were read from (view.py), or null
        "key": {"force": false, "mutable": null, "imagePolicy": null, "noexec": null},
        "classes": ["sysext", "confext"],
        "hierarchies": {"sysext": ["/usr", "/opt"], ...},
        "searchDirs": {"sysext": ["/etc/extensions", ...], ...},
        "scopes": {"sysext": [0, 1, 5, ...], ...},  # which observations each class depends on
        "observations": [[kind, ..., value], ...]
      }
    }

`actions`, `hooks` and a class's `target` came later within schema 2: a record without them
reads as having none, and a reader that does not know them ignores them. A failed action leaves the phase
`merged`: the merge is what its inputs say, only the manager did not do what was asked.

A class's fingerprint binds what its merge was decided from (`inputsDigest`) to how that was read
(`observationsDigest`: of the class's frame and the observations its inputs depend on, see
Confirmation.digest): a record whose observations were edited, truncated, reordered or emptied no
longer matches its own fingerprints, nor the fingerprint that each live merge carries in its
metadata. Each class has its own, so a refresh of one class leaves the other confirmable.

Phases and results are closed vocabularies: typed as Literal for mypy and checked when a record
is read (an unknown word makes the record corrupt). They are strings, not `enum` members: importing
`enum` costs a fifth of the boot's confirming refresh.

Importable on its own (the generator loads it beside itself as a top-level module): it imports
nothing from the package but `jsonlite`, and nothing from the standard library at load time.
"""

from __future__ import annotations

if __package__:
    from .jsonlite import dump_json, load_json
else:  # loaded by the generator as the top-level module `handoff`, beside `jsonlite`
    from jsonlite import dump_json, load_json  # type: ignore[import-not-found,no-redef]

TYPE_CHECKING = False  # typing is not imported at run time: it costs start-up time
if TYPE_CHECKING:
    from hashlib import sha256 as sha256
    from typing import Any, Final, Literal, Optional

    Phase = Literal["merging", "merged", "failed"]
    Result = Literal["merged", "replaced", "unchanged", "adopted", "unmerged", "untouched", "failed"]
    ConfirmedBy = Literal["observations", "inputs", "adoption"]
    ActionKind = Literal["try-restart", "try-reload-or-restart", "stop"]
    ActionResult = Literal["done", "failed"]
else:
    try:  # the built-in module: hashlib loads OpenSSL
        from _sha256 import sha256
    except ImportError:  # Python >= 3.12
        try:
            from _sha2 import sha256
        except ImportError:
            from hashlib import sha256

SCHEMA: Final = 2
MAX_RECORD_BYTES: Final = 8 << 20  # observations of some hundred extensions fit

MERGING: Final = "merging"
MERGED: Final = "merged"
FAILED: Final = "failed"
PHASES: Final = (MERGING, MERGED, FAILED)

REPLACED: Final = "replaced"
UNCHANGED: Final = "unchanged"
UNMERGED: Final = "unmerged"
UNTOUCHED: Final = "untouched"
ADOPTED: Final = "adopted"  # an upstream merge kept (adopt.py): its `origin` is recorded by digest
RESULTS: Final = (MERGED, REPLACED, UNCHANGED, ADOPTED, UNMERGED, UNTOUCHED, FAILED)
LIVE_RESULTS: Final = (MERGED, REPLACED, UNCHANGED)  # a merge of ours is there
NOT_MERGED: Final = (UNMERGED, UNTOUCHED)  # nothing of ours is there

CONFIRMERS: Final = ("observations", "inputs", "adoption")
ACTION_KINDS: Final = ("try-restart", "try-reload-or-restart", "stop")
ACTION_RESULTS: Final = ("done", "failed")


class Corrupt(ValueError):
    """A record that is not what this schema describes."""


def _need(value: Any, kind: type, what: str) -> Any:
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise Corrupt(f"{what} is not {_KIND_NAMES.get(kind, kind.__name__)}")
    return value


def _maybe(value: Any, kind: type, what: str) -> Any:
    return None if value is None else _need(value, kind, what)


def _word(value: Any, words: tuple[str, ...], what: str) -> Any:
    if value not in words:
        raise Corrupt(f"{what} is {value!r}, not one of {', '.join(words)}")
    return value


def _all(value: Any, kind: type, what: str) -> list[Any]:
    """A list of `kind` only (a record holds long ones: checked without a call per item)."""
    items: list[Any] = _need(value, list, what)
    if not set(map(type, items)) <= {kind}:
        raise Corrupt(f"an entry of {what} is not {_KIND_NAMES.get(kind, kind.__name__)}")
    return items


def _strings(value: Any, what: str) -> list[str]:
    return list(_all(value, str, what))


_KIND_NAMES = {dict: "an object", list: "a list", str: "a string", int: "a number", bool: "true or false"}


def sha256_hex(data: bytes) -> str:
    return sha256(data).hexdigest()


def bind(inputs_digest: str, observations_digest: str) -> str:
    """A class's fingerprint: what its merge was decided from, bound to how that was read."""
    return sha256_hex(f"sysextpy fingerprint\0{inputs_digest}\0{observations_digest}".encode())


class HierarchyResult:
    __slots__ = ("dev", "error", "mount_id", "origin", "result")

    def __init__(
        self,
        result: Result,
        mount_id: Optional[int] = None,
        dev: Optional[str] = None,
        error: Optional[str] = None,
        origin: Optional[str] = None,
    ) -> None:
        self.result: Result = result
        self.mount_id = mount_id
        self.dev = dev
        self.error = error
        self.origin = origin  # an adopted merge: the sha256 of the `origin` upstream wrote

    @property
    def live(self) -> bool:
        return self.result in LIVE_RESULTS

    def to_json(self) -> dict[str, Any]:
        data = {"result": self.result, "mountId": self.mount_id, "dev": self.dev, "error": self.error}
        if self.origin is not None:
            data["origin"] = self.origin
        return data

    @classmethod
    def from_json(cls, data: Any, what: str) -> HierarchyResult:
        _need(data, dict, what)
        return cls(
            _word(data.get("result"), RESULTS, f"{what}.result"),
            _maybe(data.get("mountId"), int, f"{what}.mountId"),
            _maybe(data.get("dev"), str, f"{what}.dev"),
            _maybe(data.get("error"), str, f"{what}.error"),
            _maybe(data.get("origin"), str, f"{what}.origin"),
        )


class ClassEntry:
    """One class's outcome in a run."""

    __slots__ = (
        "deferred",
        "fingerprint",
        "hierarchies",
        "ignored",
        "inputs_digest",
        "merged",
        "observations_digest",
        "rejected",
        "target",
        "unreachable",
    )

    def __init__(
        self,
        *,
        fingerprint: Optional[str] = None,
        inputs_digest: Optional[str] = None,
        observations_digest: Optional[str] = None,
        merged: Optional[list[str]] = None,
        rejected: Optional[list[tuple[str, str]]] = None,
        ignored: Optional[list[tuple[str, str]]] = None,
        unreachable: Optional[list[str]] = None,
        hierarchies: Optional[dict[str, HierarchyResult]] = None,
        deferred: Optional[list[tuple[str, str]]] = None,
        target: Optional[str] = None,
    ) -> None:
        self.fingerprint = fingerprint
        self.target = target  # what a rebuild is moving to: evidence of intent, never of a merge
        self.inputs_digest = inputs_digest
        self.observations_digest = observations_digest
        self.merged = merged or []
        self.rejected = rejected or []
        self.ignored = ignored or []
        self.unreachable = unreachable or []
        self.hierarchies = hierarchies or {}
        # (search directory entry inside the root, reason): images left to the real root
        self.deferred = deferred or []

    def bound(self) -> bool:
        """Whether the fingerprint is the binding of the two digests it claims to bind."""
        return (
            self.fingerprint is not None
            and self.inputs_digest is not None
            and self.observations_digest is not None
            and self.fingerprint == bind(self.inputs_digest, self.observations_digest)
        )

    def confirmed(self, unreachable: list[str]) -> ClassEntry:
        """This entry as a run that confirmed it records it: the same, each live merge "unchanged"."""
        return ClassEntry(
            fingerprint=self.fingerprint,
            inputs_digest=self.inputs_digest,
            observations_digest=self.observations_digest,
            merged=self.merged,
            rejected=self.rejected,
            ignored=self.ignored,
            deferred=self.deferred,
            unreachable=unreachable,
            hierarchies={
                h: HierarchyResult(UNCHANGED, r.mount_id, r.dev, r.error) if r.live else r
                for h, r in self.hierarchies.items()
            },  # an adopted merge stays "adopted": it is still upstream's
        )

    def to_json(self) -> dict[str, Any]:
        data = {
            "fingerprint": self.fingerprint,
            "inputsDigest": self.inputs_digest,
            "observationsDigest": self.observations_digest,
            "merged": list(self.merged),
            "rejected": [{"name": n, "reason": r} for n, r in self.rejected],
            "ignored": [{"name": n, "reason": r} for n, r in self.ignored],
            "deferred": [{"entry": e, "reason": r} for e, r in self.deferred],
            "unreachable": list(self.unreachable),
            "hierarchies": {h: r.to_json() for h, r in self.hierarchies.items()},
        }
        if self.target is not None:
            data["target"] = self.target
        return data

    @classmethod
    def from_json(cls, data: Any, what: str) -> ClassEntry:
        _need(data, dict, what)

        def verdicts(key: str, by: str = "name") -> list[tuple[str, str]]:
            out = []
            for item in _need(data.get(key, []), list, f"{what}.{key}"):
                _need(item, dict, f"an entry of {what}.{key}")
                label = "a name" if by == "name" else "an entry path"
                key_value = _need(item.get(by), str, f"{label} in {what}.{key}")
                out.append((key_value, str(item.get("reason", ""))))
            return out

        hierarchies = _need(data.get("hierarchies", {}), dict, f"{what}.hierarchies")
        return cls(
            fingerprint=_maybe(data.get("fingerprint"), str, f"{what}.fingerprint"),
            inputs_digest=_maybe(data.get("inputsDigest"), str, f"{what}.inputsDigest"),
            observations_digest=_maybe(data.get("observationsDigest"), str, f"{what}.observationsDigest"),
            merged=_strings(data.get("merged", []), f"{what}.merged"),
            rejected=verdicts("rejected"),
            ignored=verdicts("ignored"),
            deferred=verdicts("deferred", "entry"),  # absent from records of older versions
            unreachable=_strings(data.get("unreachable", []), f"{what}.unreachable"),
            hierarchies={
                _need(h, str, "a hierarchy"): HierarchyResult.from_json(r, f"{what}.hierarchies.{h}")
                for h, r in hierarchies.items()
            },
            target=_maybe(data.get("target"), str, f"{what}.target"),
        )


class UnitAction:
    """One live action (actions.py): what was asked of the manager for a unit, and how it went."""

    __slots__ = ("action", "error", "extensions", "result", "unit")

    def __init__(
        self,
        unit: str,
        action: ActionKind,
        extensions: list[str],
        result: ActionResult,
        error: Optional[str] = None,
    ) -> None:
        self.unit = unit
        self.action: ActionKind = action
        self.extensions = extensions  # "class:name" of the extensions that asked for it
        self.result: ActionResult = result
        self.error = error

    def to_json(self) -> dict[str, Any]:
        return {
            "unit": self.unit,
            "action": self.action,
            "for": list(self.extensions),
            "result": self.result,
            "error": self.error,
        }

    @classmethod
    def from_json(cls, data: Any, what: str) -> UnitAction:
        _need(data, dict, what)
        return cls(
            _need(data.get("unit"), str, f"{what}.unit"),
            _word(data.get("action"), ACTION_KINDS, f"{what}.action"),
            _strings(data.get("for", []), f"{what}.for"),
            _word(data.get("result"), ACTION_RESULTS, f"{what}.result"),
            _maybe(data.get("error"), str, f"{what}.error"),
        )


class HookRun:
    """One run of an administrator's hook (hooks.py), as the record lists it."""

    __slots__ = ("duration_ms", "hook", "message", "status", "target", "verb")

    def __init__(
        self, hook: str, verb: str, target: str, status: Optional[int], duration_ms: float, message: str = ""
    ) -> None:
        self.hook = hook
        self.verb = verb  # check, generate
        self.target = target  # "class:image" for check, "class:hierarchy" for generate
        self.status = status  # the exit status; None: killed at the timeout, or could not start
        self.duration_ms = duration_ms
        self.message = message  # the first line of its standard error, or why it did not finish

    @property
    def ok(self) -> bool:
        return self.status == 0

    def reason(self) -> str:
        """Why it failed, as a rejection or an error names it."""
        return f"hook {self.hook}: {self.message or f'exit status {self.status}'}"

    def to_json(self) -> dict[str, Any]:
        return {
            "hook": self.hook,
            "verb": self.verb,
            "target": self.target,
            "status": self.status,
            "durationMs": self.duration_ms,
            "message": self.message,
        }

    @classmethod
    def from_json(cls, data: Any, what: str) -> HookRun:
        _need(data, dict, what)
        duration = data.get("durationMs", 0)
        if not isinstance(duration, (int, float)) or isinstance(duration, bool):
            raise Corrupt(f"{what}.durationMs is not a number")
        return cls(
            _need(data.get("hook"), str, f"{what}.hook"),
            _word(data.get("verb"), HOOK_VERBS, f"{what}.verb"),
            _need(data.get("target"), str, f"{what}.target"),
            _maybe(data.get("status"), int, f"{what}.status"),
            float(duration),
            _need(data.get("message", ""), str, f"{what}.message"),
        )


HOOK_VERBS = ("check", "generate")


def options_key(
    *,
    force: bool = False,
    mutable: Optional[str] = None,
    image_policy: Optional[str] = None,
    noexec: Optional[bool] = None,
) -> dict[str, Any]:
    """The command-line options the inputs depend on, as the observations record them."""
    return {"force": force, "mutable": mutable, "imagePolicy": image_policy, "noexec": noexec}


class Confirmation:
    """What a run's inputs were read from: the observations (view.py), which of them each class's
    inputs depend on, and the frame they were made in. The next refresh takes the observations
    again instead of recomputing the inputs."""

    __slots__ = ("classes", "hierarchies", "key", "observations", "scopes", "search_dirs")

    def __init__(
        self,
        key: dict[str, Any],
        classes: list[str],
        hierarchies: dict[str, list[str]],
        search_dirs: dict[str, list[str]],
        observations: list[Any],
        scopes: dict[str, list[int]],
    ) -> None:
        self.key = key
        self.classes = classes
        self.hierarchies = hierarchies
        self.search_dirs = search_dirs
        self.observations = observations
        self.scopes = scopes

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "classes": self.classes,
            "hierarchies": self.hierarchies,
            "searchDirs": self.search_dirs,
            "scopes": self.scopes,
            "observations": self.observations,
        }

    def digest(self, image_class: str) -> Optional[str]:
        """A class's observations digest: of its frame and, in order, the observations its inputs
        depend on. None when the record does not say which those are."""
        indices = self.scopes.get(image_class)
        if not isinstance(indices, list):
            return None
        try:
            own = [self.observations[i] for i in indices]
        except (IndexError, TypeError):
            return None
        # The observations by content, not by position: another class's may come and go.
        frame = [
            self.key,
            image_class,
            self.hierarchies.get(image_class),
            self.search_dirs.get(image_class),
            own,
        ]
        return sha256_hex(dump_json(frame, ascii_only=False).encode("utf-8", "surrogateescape"))

    @classmethod
    def from_json(cls, data: Any) -> Confirmation:
        _need(data, dict, "confirm")
        key = _need(data.get("key"), dict, "confirm.key")
        classes = _strings(data.get("classes"), "confirm.classes")
        tables = {}
        for name in ("hierarchies", "searchDirs", "scopes"):
            table = _need(data.get(name), dict, f"confirm.{name}")
            for image_class, items in table.items():
                _all(items, int if name == "scopes" else str, f"confirm.{name}.{image_class}")
            tables[name] = table
        observations = _need(data.get("observations"), list, "confirm.observations")
        return cls(key, classes, tables["hierarchies"], tables["searchDirs"], observations, tables["scopes"])


class HandoffRecord:
    __slots__ = (
        "actions",
        "boot_id",
        "classes",
        "confirm",
        "confirmed_by",
        "declined",
        "errors",
        "finished",
        "hooks",
        "in_initrd",
        "messages",
        "phase",
        "reload_done",
        "reload_reason",
        "root",
        "started",
        "timings",
        "tool",
        "verb",
    )

    def __init__(
        self,
        *,
        boot_id: str,
        phase: Phase,
        tool: str,
        verb: str,
        root: str,
        in_initrd: bool,
        started: int,
        finished: Optional[int] = None,
        classes: Optional[dict[str, ClassEntry]] = None,
        errors: Optional[list[str]] = None,
        timings: Optional[dict[str, float]] = None,
        reload_done: bool = False,
        reload_reason: str = "",
        confirmed_by: Optional[ConfirmedBy] = None,
        declined: Optional[str] = None,
        messages: Optional[list[tuple[int, str]]] = None,
        confirm: Optional[Confirmation] = None,
        actions: Optional[list[UnitAction]] = None,
        hooks: Optional[list[HookRun]] = None,
    ) -> None:
        self.boot_id = boot_id
        self.phase: Phase = phase
        self.tool = tool
        self.verb = verb
        self.root = root
        self.in_initrd = in_initrd
        self.started = started
        self.finished = finished
        self.classes = classes if classes is not None else {}
        self.errors = errors if errors is not None else []
        self.timings = timings if timings is not None else {}
        self.reload_done = reload_done
        self.reload_reason = reload_reason
        self.confirmed_by: Optional[ConfirmedBy] = confirmed_by
        self.declined = declined
        self.messages = messages if messages is not None else []
        self.confirm = confirm
        self.actions = actions if actions is not None else []
        self.hooks = hooks if hooks is not None else []

    @property
    def rejected(self) -> bool:
        return any(entry.rejected for entry in self.classes.values())

    def culprits(self) -> list[tuple[str, str, str]]:
        """(class, name, reason) of every image or entry the record says was rejected."""
        return [(c, name, reason) for c, entry in self.classes.items() for name, reason in entry.rejected]

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "bootId": self.boot_id,
            "phase": self.phase,
            "tool": self.tool,
            "verb": self.verb,
            "root": self.root,
            "inInitrd": self.in_initrd,
            "started": self.started,
            "finished": self.finished,
            "classes": {cls: entry.to_json() for cls, entry in self.classes.items()},
            "errors": list(self.errors),
            "timings": dict(self.timings),
            "reload": {"done": self.reload_done, "reason": self.reload_reason},
            "actions": [a.to_json() for a in self.actions],
            "hooks": [h.to_json() for h in self.hooks],
            "confirmedBy": self.confirmed_by,
            "quickDeclined": self.declined,
            "messages": [[level, text] for level, text in self.messages],
            "confirm": self.confirm.to_json() if self.confirm is not None else None,
        }

    def dumps(self) -> str:
        return dump_json(self.to_json()) + "\n"

    @classmethod
    def from_json(cls, data: Any) -> HandoffRecord:
        _need(data, dict, "the record")
        if data.get("schema") != SCHEMA:
            raise Corrupt(f"record schema {data.get('schema')!r}, expected {SCHEMA}")
        reload = _need(data.get("reload", {}), dict, "reload")
        classes = _need(data.get("classes"), dict, "classes")
        messages = []
        for item in _need(data.get("messages", []), list, "messages"):
            if not (
                isinstance(item, list)
                and len(item) == 2
                and isinstance(item[0], int)
                and isinstance(item[1], str)
            ):
                raise Corrupt("an entry of messages is not [priority, text]")
            messages.append((item[0], item[1]))
        confirmed_by = data.get("confirmedBy")
        if confirmed_by is not None:
            _word(confirmed_by, CONFIRMERS, "confirmedBy")
        confirm = data.get("confirm")
        actions = _need(data.get("actions", []), list, "actions")
        hooks = _need(data.get("hooks", []), list, "hooks")
        return cls(
            boot_id=_need(data.get("bootId"), str, "bootId"),
            phase=_word(data.get("phase"), PHASES, "phase"),
            tool=str(data.get("tool", "")),
            verb=str(data.get("verb", "")),
            root=_need(data.get("root", "/"), str, "root"),
            in_initrd=bool(data.get("inInitrd")),
            started=_need(data.get("started", 0), int, "started"),
            finished=_maybe(data.get("finished"), int, "finished"),
            classes={
                _need(c, str, "a class"): ClassEntry.from_json(e, f"classes.{c}") for c, e in classes.items()
            },
            errors=_strings(data.get("errors", []), "errors"),
            timings=dict(_need(data.get("timings", {}), dict, "timings")),
            reload_done=bool(reload.get("done")),
            reload_reason=str(reload.get("reason", "")),
            confirmed_by=confirmed_by,
            declined=_maybe(data.get("quickDeclined"), str, "quickDeclined"),
            messages=messages,
            confirm=None if confirm is None else Confirmation.from_json(confirm),
            actions=[UnitAction.from_json(a, f"actions[{i}]") for i, a in enumerate(actions)],
            hooks=[HookRun.from_json(h, f"hooks[{i}]") for i, h in enumerate(hooks)],
        )


class RecordCheck:
    """A record as read, and whether a refresh may rely on it."""

    __slots__ = ("reason", "record", "usable")

    def __init__(self, record: Optional[HandoffRecord], usable: bool, reason: str) -> None:
        self.record = record  # None: missing or unreadable as a record of this schema
        self.usable = usable  # of this boot and phase "merged"
        self.reason = reason  # why it is (not) usable, for logs and `plan`

    def __repr__(self) -> str:
        return f"RecordCheck(usable={self.usable!r}, reason={self.reason!r})"


def parse_record(text: Optional[str], current_boot: str) -> RecordCheck:
    """Pure: judge a record's text (None: there is none). Never raises."""
    if text is None:
        return RecordCheck(None, False, "no handoff record")
    try:
        data = load_json(text)
    except ValueError as e:
        msg, lineno = getattr(e, "msg", None), getattr(e, "lineno", None)
        where = f" at line {lineno}" if lineno is not None else ""
        return RecordCheck(None, False, f"corrupt record ({msg}{where})" if msg else f"corrupt record ({e})")
    except RecursionError:
        return RecordCheck(None, False, "corrupt record (nested too deeply)")
    if isinstance(data, dict) and data.get("schema") != SCHEMA:
        return RecordCheck(None, False, f"record schema {data.get('schema')!r}, expected {SCHEMA}")
    try:
        record = HandoffRecord.from_json(data)
    except Corrupt as e:
        return RecordCheck(None, False, f"corrupt record ({e})")
    if not current_boot:
        return RecordCheck(record, False, "the current boot id is unknown")
    if record.boot_id != current_boot:
        return RecordCheck(record, False, "record is from another boot")
    if record.phase != MERGED:
        return RecordCheck(record, False, f"record says phase {record.phase!r}")
    return RecordCheck(record, True, "record of this boot, phase 'merged'")
