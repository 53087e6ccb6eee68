# SPDX-License-Identifier: LGPL-2.1-or-later
"""Hooks of the administrator: `check` vetoes one image, `generate` adds one read-only layer to
a hierarchy (an index no single extension can ship: modules.dep, ld.so.cache).

Hooks are `*.hook` executables in the hooks.d directories of the root being merged, resolved
inside it like verity.d: the same file name in an earlier directory overrides a later one, a link
to /dev/null (or an empty file) masks it, they run sorted by name. They are found through the
view (view.py), name and content, so that they are inputs of every class's fingerprint: a hook
added, changed or removed makes the next refresh rebuild, and a confirming refresh, which only
takes the observations again, runs none.

A hook runs as a copy, in the private workspace, of the bytes that were read and digested, chrooted
into a read-only view of the root (images.Workspace.hook_root): it runs the root's own tools, never
those of whoever merges (the initrd, for --root=/sysroot). What it works on is shown to it at fixed
places inside that view: the image at images.IMAGE_INNER, the merged tree in place of its hierarchy,
the output directory at images.OUT_INNER.

Extensions cannot add hooks. Every hooks.d directory but /run's lies below a hierarchy that is
merged over (/etc, /usr), where a live merge shows its extensions' files as if they were the
root's. A merge therefore writes down, in its metadata directory (SHIPPED_FILE), which hook
paths its extensions ship; a hook found at such a path while that merge is live is ignored, with
a warning. That file is read through the view: it changes only with the merge, which a
confirming refresh checks exactly anyway.
"""

from __future__ import annotations

import os
import time

from .chase import root_relative
from .errors import ResolveError, SysextError
from .handoff import HookRun
from .log import log
from .model import ALL_CLASSES
from .records import record
from .view import FileTooLarge, NotRegularFile, drop_in_files, sha256

TYPE_CHECKING = False  # typing is not imported at run time: it costs start-up time
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from typing import Any, Callable, Optional

    from .images import Workspace
    from .model import ImageClass
    from .view import LiveView, TreeWalk

HOOK_DIRS = (
    "/etc/sysextpy/hooks.d",
    "/run/sysextpy/hooks.d",
    "/usr/local/lib/sysextpy/hooks.d",
    "/usr/lib/sysextpy/hooks.d",
)
HOOK_SUFFIX = ".hook"
MAX_HOOK_BYTES = 16 << 20  # a hook is read whole for its digest; a larger file is no hook
DEFAULT_TIMEOUT = 30.0
TIMEOUT_ENV = "SYSEXTPY_HOOK_TIMEOUT"
SHIPPED_FILE = "sysextpy-hooks"  # in a merge's metadata directory: hook paths its extensions ship
CHECK = "check"
GENERATE = "generate"
# Not the caller's: the initrd's PATH would name the initrd's directories, a user's their own.
HOOK_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@record(frozen=True)
class Hook:
    name: str  # the file name without .hook, as messages name it
    inner: str  # where it was found, inside the root
    path: str  # the host path it resolves to
    sha256: str
    data: bytes = b""  # what was read, and digested: what runs
    copy: str = ""  # where staged() put it, inside the hook root: what runs


@record(frozen=True)
class HookSearch:
    hooks: tuple[Hook, ...]
    ignored: tuple[tuple[str, str], ...]  # (path inside the root, why)
    timeout: float
    chroot: str = ""  # staged(): the view of the root the hooks run in (host path)

    def inputs(self) -> dict[str, Any]:
        """What of the hooks decides a merge, as the fingerprint takes it."""
        return {
            "hooks": [[h.name, h.inner, h.sha256] for h in self.hooks],
            "ignored": [list(pair) for pair in self.ignored],
            "timeout": self.timeout,
        }


NO_HOOKS = HookSearch((), (), DEFAULT_TIMEOUT)


def hook_timeout(view: LiveView) -> tuple[float, Optional[str]]:
    text = view.env(TIMEOUT_ENV)
    if text is None or text == "":
        return DEFAULT_TIMEOUT, None
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0 or value != value or value == float("inf"):
        return DEFAULT_TIMEOUT, f"{TIMEOUT_ENV}={text!r} is not a positive number of seconds; using 30"
    return value, None


def _below(inner: str, hierarchy: str) -> bool:
    return inner == hierarchy or inner.startswith(hierarchy.rstrip("/") + "/")


class _Shipped:
    """Which hook paths the extensions of live merges ship, read only for the hierarchies a hook
    lies below (each a metadata file to observe, and a confirming refresh takes each again)."""

    def __init__(self, view: LiveView, hierarchies: Mapping[ImageClass, Sequence[str]]) -> None:
        self.view = view
        self.hierarchies = hierarchies
        self._read: dict[str, dict[str, str]] = {}  # hierarchy -> path -> "class extension"

    def _of(self, cls: ImageClass, h: str) -> dict[str, str]:
        if h not in self._read:
            found: dict[str, str] = {}
            try:
                path = self.view.resolve(f"{h}/{cls.metadata_dir}/{SHIPPED_FILE}")
                text = self.view.read(path, 1 << 20).decode("utf-8", "surrogateescape")
            except (ResolveError, OSError):
                text = ""  # no merge there, or a merge whose extensions ship no hook
            for line in text.splitlines():
                inner, sep, extension = line.partition("\t")
                if sep and _below(inner, h):
                    found[inner] = f"{cls.value} {extension}"
            self._read[h] = found
        return self._read[h]

    def by(self, *paths: str) -> Optional[str]:
        """The extension that ships one of `paths` (inside the root), or None."""
        for path in paths:
            for cls, hs in self.hierarchies.items():
                for h in hs:
                    if _below(path, h):
                        who = self._of(cls, h).get(path)
                        if who is not None:
                            return who
        return None


def find_hooks(view: LiveView, hierarchies: Mapping[ImageClass, Sequence[str]]) -> HookSearch:
    """The hooks of the view's root, and the files of the hooks.d directories that are not."""
    timeout, warning = hook_timeout(view)
    ignored: list[tuple[str, str]] = []
    if warning:
        log.warning("%s", warning)
    chosen = drop_in_files(view, HOOK_DIRS, HOOK_SUFFIX, ignored)
    chosen.pop(HOOK_SUFFIX, None)  # a file named only ".hook" has no name to run it by
    shipped = _Shipped(view, hierarchies)
    hooks: list[Hook] = []
    for name in sorted(chosen):
        inner, entry = chosen[name]
        why = _unusable(view, inner, entry, shipped)
        if isinstance(why, str):
            ignored.append((inner, why))
            continue
        path, data = why
        hooks.append(Hook(name[: -len(HOOK_SUFFIX)], inner, path, sha256(data).hexdigest(), data))
    for inner, why in ignored:
        if why.startswith("shipped by"):
            log.warning("Hook %s ignored: %s; extensions cannot add hooks.", inner, why)
    return HookSearch(tuple(hooks), tuple(ignored), timeout)


def _unusable(view: LiveView, inner: str, entry: str, shipped: _Shipped) -> Any:
    """Why the hooks.d entry is not a hook, or (its host path, its bytes)."""
    try:
        if view.lstat(entry).is_link and view.readlink(entry) == "/dev/null":
            return "masked (link to /dev/null)"
        path = view.resolve(inner)
        st = view.stat(path)
    except ResolveError as e:
        return e.message
    except OSError as e:
        return e.strerror or "cannot be read"
    who = shipped.by(inner, root_relative(view.root, path))
    if who is not None:
        return f"shipped by {who}"
    if st.is_chr:
        return "masked (character device)"
    if not st.is_reg:
        return "not a regular file"
    if st.size == 0:
        return "masked (empty file)"
    if not st.mode & 0o111:
        return "not executable"
    try:
        data = view.read(path, MAX_HOOK_BYTES)
    except (NotRegularFile, FileTooLarge) as e:
        return str(e)
    except OSError as e:
        return e.strerror or "cannot be read"
    return path, data


def staged(search: HookSearch, ws: Workspace, root: str) -> HookSearch:
    """The hooks as copies of the bytes that were read, ready to run in the view of `root` in the
    workspace: what runs is what the fingerprint took, and a hook found on a noexec mount (/etc
    below a confext merge) can run."""
    from .images import HOOKS_INNER

    directory = ws.scratch_dir("hooks", mode=0o700)
    copies = []
    for i, hook in enumerate(search.hooks):
        name = f"{i:03d}-{hook.name}{HOOK_SUFFIX}"
        fd = os.open(f"{directory}/{name}", os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o700)
        with open(fd, "wb") as f:
            f.write(hook.data)
        copy = f"{HOOKS_INNER}/{name}"
        copies.append(Hook(hook.name, hook.inner, hook.path, hook.sha256, hook.data, copy))
    chroot = ws.hook_root(root, directory)
    return HookSearch(tuple(copies), search.ignored, search.timeout, chroot)


def find_all_hooks(view: LiveView) -> HookSearch:
    """find_hooks() against every hierarchy any class may merge over."""
    from .settings import class_hierarchies

    hierarchies: dict[ImageClass, Sequence[str]] = {}
    for cls in ALL_CLASSES:
        try:
            hierarchies[cls] = class_hierarchies(cls, view.env)
        except SysextError:
            hierarchies[cls] = cls.default_hierarchies
    return find_hooks(view, hierarchies)


def shipped_hooks(
    trees: Sequence[tuple[str, str]],
    hierarchy: str,
    walk_of: Optional[Callable[[str], Optional[TreeWalk]]] = None,
) -> list[tuple[str, str]]:
    """The hook paths below `hierarchy` that extensions ship: (path inside the root, extension).
    `trees`: (extension name, the host path of its tree, which is its own root); `walk_of` gives a
    tree as its digest saw it, where it has one."""
    from .chase import normalize_root, resolve
    from .view import TreeWalk

    found: list[tuple[str, str]] = []
    for inner_dir in HOOK_DIRS:
        if not _below(inner_dir, hierarchy):
            continue
        for extension, tree in trees:
            walk = walk_of(tree) if walk_of is not None else None
            seen = TreeWalk() if walk is None else walk  # an empty walk looks at everything now
            try:
                names = seen.listdir(resolve(normalize_root(tree), inner_dir, lstat=seen.lstat))
            except (ResolveError, OSError):
                continue
            found.extend((f"{inner_dir}/{n}", extension) for n in sorted(names) if n.endswith(HOOK_SUFFIX))
    return found


def _first_line(text: Optional[str]) -> str:
    for line in (text or "").splitlines():
        if line.strip():
            return line.strip()[:300]
    return ""


def run_hook(
    hooks: HookSearch, hook: Hook, verb: str, args: Sequence[str], target: str, env: Mapping[str, str]
) -> HookRun:
    """Run one staged hook: argv [its copy, verb, *args], chrooted into the view of the root, stdin
    from /dev/null, killed (its whole process group) at the timeout."""
    from .run import TimedOut, run

    timeout = hooks.timeout
    assert hooks.chroot and hook.copy, "staged() first"
    t0 = time.monotonic()
    try:
        argv = [hook.copy, verb, *args]
        full_env = {**env, "PATH": HOOK_PATH}
        proc = run(argv, check=False, env=full_env, timeout=timeout, new_session=True, chroot=hooks.chroot)
    except SysextError as e:
        took = round((time.monotonic() - t0) * 1000, 3)
        why = f"killed after {timeout:g} s" if isinstance(e, TimedOut) else str(e)
        log.error("Hook %s (%s %s): %s", hook.name, verb, target, why)
        return HookRun(hook.name, verb, target, None, took, why)
    took = round((time.monotonic() - t0) * 1000, 3)
    result = HookRun(hook.name, verb, target, proc.returncode, took, _first_line(proc.stderr))
    log.info(
        "Hook %s (%s %s): exit status %d after %.0f ms%s",
        hook.name,
        verb,
        target,
        proc.returncode,
        took,
        f": {result.message}" if result.message else "",
    )
    return result


def release_env(cls: str, name: str, release: Sequence[tuple[str, str]]) -> dict[str, str]:
    """An image's release data as a check hook's environment."""
    env = {"SYSEXTPY_CLASS": cls, "SYSEXTPY_NAME": name}
    for key, value in release:
        if key.replace("_", "").isalnum() and key.isascii():
            env[f"SYSEXTPY_RELEASE_{key}"] = value
    return env
