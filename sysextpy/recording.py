# SPDX-License-Identifier: LGPL-2.1-or-later
"""The recording view: a live view of the root (view.py) that writes down every answer it gives
as a typed observation, and answers with exactly what it wrote down.

The full run reads everything that decides its merge through one; the observations go into the
handoff record, where the next refresh takes them again (view.replay) instead of recomputing.
"""

from __future__ import annotations

import os

from .chase import normalize_root
from .errors import ResolveError
from .view import VALUE_OF, LiveView, Stat, is_error, raise_error, read_value

TYPE_CHECKING = False  # typing is not imported at run time: it costs start-up time
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any, Optional

    from .pins import Pins
    from .view import TreeWalk


class RecordingView(LiveView):
    """A live view that writes down every observation and answers with what it wrote down.

    While `scope` names a class, the observations it asks for are that class's; the others (the
    host's) are every class's. So each class can be confirmed by its own observations, and a
    refresh of one class leaves the other's as they were."""

    def __init__(self, root: str, env: Mapping[str, str], pins: Optional[Pins] = None) -> None:
        super().__init__(root, env, pins=pins)
        # A snapshot: each path is looked at once, like each observation is taken once.
        self._live = LiveView(self.root, env, pins=pins, snapshot=True)
        self.tree_changes = self._live.tree_changes  # the trees' digests are taken by the live view
        self.observations: list[list[Any]] = []
        self.scope = ""  # "": every class's
        self._scopes: list[set[str]] = []  # per observation, the scopes that asked for it
        self._index: dict[tuple[Any, ...], int] = {}
        self._implied: set[int] = set()
        self._bytes: dict[tuple[Any, ...], Optional[bytes]] = {}

    def _note(self, key: tuple[Any, ...], value: Any) -> None:
        self._index[key] = len(self.observations)
        self.observations.append([*key, value])
        self._scopes.append(set())

    def _take(self, kind: str, *args: Any) -> Any:
        key = (kind, *args)
        if key not in self._index:
            self._note(key, VALUE_OF[kind](self._live, *args))
        i = self._index[key]
        self._scopes[i].add(self.scope)
        return self.observations[i][-1]

    def scoped(self, scope: str) -> _Scope:
        return _Scope(self, scope)

    def kept(self) -> list[int]:
        """The indices of the observations worth taking again: all but those another one implies
        (a stat of a directory whose tree is observed: the tree's digest holds its fields)."""
        return [i for i in range(len(self.observations)) if i not in self._implied]

    def observations_of(self, scope: str, kept: list[int]) -> list[int]:
        """Positions in `kept` (kept()) of the observations a scope (a class) depends on: its own
        and everyone's."""
        return [n for n, i in enumerate(kept) if scope in self._scopes[i] or "" in self._scopes[i]]

    def _answer(self, kind: str, path: str) -> Any:
        value = self._take(kind, self.relative(path))
        if is_error(value):
            raise_error(path, value)
        return value

    def env(self, name: str) -> Optional[str]:
        value: Optional[str] = self._take("env", name)
        return value

    def machine(self) -> str:
        value: str = self._take("mach")
        return value

    def capability(self, name: str) -> bool:
        return bool(self._take("cap", name))

    def in_initrd(self) -> bool:
        return bool(self._take("initrd"))

    def resolve(self, path: str, *, base: Optional[str] = None, missing_ok: bool = False) -> str:
        base_s = self.root if base is None else normalize_root(base)
        value = self._take("res", self.relative(base_s), path, missing_ok)
        if isinstance(value, list):
            if len(value) > 2:
                message = value[2].replace("<root>", repr(base_s))
            else:
                message = f"Cannot resolve {path!r} inside {base_s!r}: {os.strerror(value[1])}"
            raise ResolveError(message, errno=value[1])
        return self.absolute(value)

    def stat(self, path: str) -> Stat:
        return Stat(*self._answer("st", path))

    def lstat(self, path: str) -> Stat:
        return Stat(*self._answer("lst", path))

    def mode(self, path: str) -> int:
        return int(self._answer("mode", path))

    def listdir(self, path: str) -> list[str]:
        return list(self._answer("ls", path))

    def entries(self, path: str) -> list[tuple[str, str]]:
        return [(name, kind) for name, kind in self._answer("ents", path)]

    def readlink(self, path: str) -> str:
        value: str = self._answer("rl", path)
        return value

    def is_mount_point(self, path: str) -> bool:
        return bool(self._answer("mnt", path))

    def read(self, path: str, limit: int) -> bytes:
        key = ("rd", self.relative(path), limit)
        if key not in self._index:
            value, self._bytes[key] = read_value(self._live, path, limit)
            self._note(key, value)
        i = self._index[key]
        self._scopes[i].add(self.scope)
        data = self._bytes[key]
        if data is None:
            raise_error(path, self.observations[i][-1], limit)
        assert data is not None
        return data

    def getxattr(self, path: str, name: str) -> Optional[bytes]:
        value = self._take("xa", self.relative(path), name)
        if isinstance(value, list):
            raise_error(path, value)
        return None if value is None else bytes.fromhex(value)

    def config_files(self, name: str) -> tuple[list[tuple[str, str]], list[str]]:
        found, warnings = self._take("cfg", name)
        return [(shown, self.absolute(rel)) for shown, rel in found], list(warnings)

    def tree_digest(self, path: str) -> str:
        rel = self.relative(path)
        value: str = self._take("tree", rel)
        for kind in ("st", "lst"):
            i = self._index.get((kind, rel))
            if i is not None and not is_error(self.observations[i][-1]):
                self._implied.add(i)  # the tree's digest holds every field of its top's stat
        return value

    def file_identity(self, path: str, located: bool) -> dict[str, Any]:
        return dict(self._answer_id(path, located))

    def _answer_id(self, path: str, located: bool) -> Any:
        value = self._take("id", self.relative(path), located)
        if is_error(value):
            raise_error(path, value)
        return value

    def walk_of(self, tree: str) -> Optional[TreeWalk]:
        return self._live.walk_of(tree)

    def image_view(self, tree: str) -> LiveView:
        self.tree_digest(tree)  # what is read inside the tree is covered by its digest
        return self._live.image_view(tree)


class _Scope:
    __slots__ = ("_before", "_scope", "_view")

    def __init__(self, view: RecordingView, scope: str) -> None:
        self._view = view
        self._scope = scope
        self._before = ""

    def __enter__(self) -> None:
        self._before = self._view.scope
        self._view.scope = self._scope

    def __exit__(self, *exc: object) -> None:
        self._view.scope = self._before
