# SPDX-License-Identifier: LGPL-2.1-or-later
"""Raw images and the private workspace they are mounted in.

A `Workspace` is a private mount namespace of this process with a tmpfs scratch area. Images
are attached and mounted there, overlays are assembled there, and the host sees nothing of it:
if the process dies, the namespace and every mount in it die too. Only finished overlays leave,
as detached mount trees, when `leave()` returns to the host namespace. Mounts made on the host
meanwhile (an automount that triggers) do reach the workspace (slave propagation); what it merges
comes from the images pinned at discovery (pins.py), not from paths looked up again.
"""

from __future__ import annotations

import errno
import os

from .errors import ImageError, MountError, SysextError
from .log import log
from .model import Candidate, ImageClass, ImageType

TYPE_CHECKING = False  # typing is not imported at run time: it costs start-up time
if TYPE_CHECKING:
    from typing import Callable, Optional

    from .chase import StrPath
    from .dissect import ImagePlan, MountStep, TrustContext
    from .loopdev import LoopDevice
    from .pins import Pins
    from .view import TreeWalk

WORKSPACE = "/run/sysextpy/workspace"
# Inside the view of the root a hook runs in (hook_root): a read-only tmpfs on /run holds these places.
HOOK_RUN = "/run/sysextpy"
HOOKS_INNER = f"{HOOK_RUN}/hooks"  # the staged copies
IMAGE_INNER = f"{HOOK_RUN}/image"  # check: the image's files
OUT_INNER = f"{HOOK_RUN}/out"  # generate: where the new layer is written
MERGED_INNER = f"{HOOK_RUN}/merged"  # generate: the merged tree of a hierarchy the root lacks
HOOK_RUN_PLACES = (HOOKS_INNER, IMAGE_INNER, OUT_INNER, MERGED_INNER)
# mount(2) errors that describe the image itself: a damaged or unsupported file system. Any other
# failure to attach or mount an image (memory, busy or exhausted devices, a read error, the file
# replaced meanwhile...) says more about the moment than about the image.
IMAGE_MOUNT_ERRNOS = frozenset({errno.EINVAL, errno.EUCLEAN, errno.ENODEV, errno.ENOTBLK})


def _read_only_recursive(path: str) -> None:
    """Make the mount at `path` and every mount below it read-only (this view of them only)."""
    from . import mountapi as m

    try:
        m.mount_setattr(m.AT_FDCWD, path, m.AT_RECURSIVE, m.MOUNT_ATTR_RDONLY, 0)
        return
    except OSError as e:
        if e.errno != errno.ENOSYS:
            raise
    # Linux < 5.12: one remount each, keeping the flags a bind remount would otherwise drop
    kept = m.MS_NOSUID | m.MS_NODEV | m.MS_NOEXEC | m.MS_NOATIME | m.MS_NODIRATIME
    top = os.path.realpath(path)
    for point in [top] + [i.mount_point for i in m.submounts_below(top, m.read_mountinfo())]:
        flags = os.statvfs(point).f_flag & kept
        m.mount(None, point, None, m.MS_BIND | m.MS_REMOUNT | m.MS_RDONLY | flags)


class PassingImageError(ImageError):
    """An image could not be attached or mounted for a reason that may pass: the next refresh
    retries it rather than confirming the rejection with a skip."""


class Workspace:
    """A private mount namespace with a tmpfs scratch directory; see the module docstring."""

    def __init__(
        self,
        base: str = WORKSPACE,
        trust: Optional[TrustContext] = None,
        pins: Optional[Pins] = None,
        walks: Optional[Callable[[str], Optional[TreeWalk]]] = None,
    ) -> None:
        self.base = os.fspath(base)
        # A directory's tree as its digest saw it (LiveView.walk_of), by its path: its clone here is
        # looked at through that, so what is merged is what the digest describes.
        self._walk_of = walks
        self._walks: dict[str, TreeWalk] = {}  # where a clone is attached -> its walk, moved there
        # The images as discovery found them; without pins, images are opened by path.
        self.pins = pins
        self._tree_clones: dict[str, int] = {}  # path -> a bind clone of a pinned directory
        self._clone_errors: dict[str, str] = {}  # path -> why it could not be cloned
        self._trees: dict[str, str] = {}  # path -> where the copy is attached in the workspace
        # How raw images may be mounted (root, image policy, certificates). Without one, each
        # image gets the context of the root it was found in, with that root's configured policy.
        self.trust = trust
        self._trust_by_root: dict[str, TrustContext] = {}
        self.dissections: dict[tuple[str, str], ImagePlan] = {}
        self._host_ns: Optional[int] = None
        self._cwd: Optional[int] = None
        self._root: Optional[int] = None
        self._mounted: dict[tuple[str, str], str] = {}
        # (class, name) of images that failed for a passing reason (PassingImageError)
        self.retry: set[tuple[str, str]] = set()
        self._counter = 0
        self._kinds: set[str] = set()  # the scratch directories' parents made so far
        self._hook_root: Optional[str] = None  # hook_root()
        self.inside = False

    def enter(self) -> None:
        from . import mountapi as m

        os.makedirs(self.base, mode=0o700, exist_ok=True)
        self._host_ns = os.open("/proc/self/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
        self._cwd = os.open(".", os.O_PATH | os.O_CLOEXEC)
        self._root = os.open("/", os.O_PATH | os.O_CLOEXEC)
        try:
            # A pinned directory is cloned here, in the host's namespace, where its mount is: older
            # kernels clone only mounts of the caller's own namespace.
            for pin in self.pins.trees() if self.pins is not None else ():
                path = os.fspath(pin.candidate.path)
                try:
                    self._tree_clones[path] = m.open_tree(
                        pin.fd, "", m.OPEN_TREE_CLONE | m.OPEN_TREE_CLOEXEC | m.AT_EMPTY_PATH
                    )
                except OSError as e:
                    # Its mount was detached since it was pinned: said when the tree is needed.
                    self._clone_errors[path] = e.strerror or str(e)
            m.unshare(m.CLONE_NEWNS)
            self._make_private()
            m.mount("sysextpy", self.base, "tmpfs", m.MS_NOSUID | m.MS_NODEV, "mode=0700")
        except OSError as e:
            self._close_fds()
            raise MountError(
                f"Failed to set up a private workspace: {e.strerror}", hint="run as root"
            ) from e
        self.inside = True

    @staticmethod
    def _make_private() -> None:
        """Stop mounts made here from propagating back to the host's namespace, while the host's
        new mounts still propagate here (an automount triggered by a path the merge reads)."""
        from . import mountapi as m

        try:
            m.mount(None, "/", None, m.MS_REC | m.MS_SLAVE)
            return
        except OSError as e:
            if e.errno != errno.EINVAL:
                raise
        # In a chroot whose root is not a mount point, "/" cannot be changed; every mount that
        # can be seen can, and only those can receive the workspace's mounts.
        for info in m.read_mountinfo():
            try:
                m.mount(None, info.mount_point, None, m.MS_SLAVE)
            except OSError as e:
                log.debug("Cannot make %s a slave mount: %s", info.mount_point, e.strerror)

    def leave(self) -> None:
        """Return to the host's mount namespace. Workspace paths are gone afterwards; detached
        mount fds taken inside stay valid."""
        from . import mountapi as m

        if not self.inside:
            return
        assert self._host_ns is not None and self._cwd is not None and self._root is not None
        try:
            m.setns(self._host_ns, m.CLONE_NEWNS)
            # setns() puts the process at the namespace's root: go back into a chroot we ran in
            os.fchdir(self._root)
            os.chroot(".")
            os.fchdir(self._cwd)
        except OSError as e:
            # Still in the private namespace: nothing built here can reach the host any more.
            raise MountError(f"Failed to return from the private workspace: {e.strerror}") from e
        self.inside = False
        self._close_fds()

    def _close_fds(self) -> None:
        for fd in (self._host_ns, self._cwd, self._root, *self._tree_clones.values()):
            if fd is not None:
                os.close(fd)
        self._host_ns = self._cwd = self._root = None
        self._tree_clones.clear()
        self._clone_errors.clear()
        self._trees.clear()
        self._walks.clear()
        self._kinds.clear()
        self._hook_root = None

    def pinned_tree(self, candidate: Candidate) -> Optional[str]:
        """Where the directory pinned for `candidate` is attached in the workspace, or None when
        it is not pinned (the caller uses its path)."""
        from . import mountapi as m

        path = os.fspath(candidate.path)
        if path in self._trees:
            return self._trees[path]
        if path in self._clone_errors:
            raise PassingImageError(
                f"cannot take the directory {path!r} into the workspace: {self._clone_errors[path]}"
            )
        fd = self._tree_clones.pop(path, None)
        if fd is None or not self.inside:
            return None
        try:
            where = self.scratch_dir("pinned", name=f"{candidate.image_class.value}-{candidate.name}")
            m.move_mount(fd, "", m.AT_FDCWD, where, m.MOVE_MOUNT_F_EMPTY_PATH)
        except OSError as e:
            raise PassingImageError(f"cannot attach the directory {path!r} in the workspace: {e}") from e
        finally:
            os.close(fd)
        self._trees[path] = where
        walk = self._walk_of(path) if self._walk_of is not None else None
        if walk is not None:
            self._walks[where] = walk.moved(path, where)
        return where

    def walk(self, tree: str) -> Optional[TreeWalk]:
        """What the digest saw of the directory attached at `tree` (pinned_tree()), if anything."""
        return self._walks.get(tree)

    def __enter__(self) -> Workspace:
        self.enter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.leave()

    def scratch_dir(self, kind: str, mode: int = 0o755, name: Optional[str] = None) -> str:
        """A fresh directory in the workspace tmpfs; `name` gives it a stable path (recorded in origin)."""
        self._counter += 1
        parent = os.path.join(self.base, kind)
        path = os.path.join(parent, name or str(self._counter))
        if kind not in self._kinds:
            os.makedirs(parent, mode=0o700, exist_ok=True)
            self._kinds.add(kind)
        os.mkdir(path, mode)
        os.chmod(path, mode)  # whatever the umask
        return path

    def hook_root(self, root: str, hooks: str) -> str:
        """The root hooks run chrooted in (hooks.py), built once: `root` bound read-only with what
        is mounted below it, so that a hook runs the root's own tools; /proc, /sys and /dev of this
        namespace; an empty writable tmpfs on /tmp; and on /run a read-only tmpfs with the staged
        `hooks` (read-only) and the places where a hook is shown its trees (show_to_hooks)."""
        from . import mountapi as m

        if self._hook_root is not None:
            return self._hook_root
        where = self.scratch_dir("hook-root")
        try:
            m.mount(root, where, None, m.MS_BIND | m.MS_REC)
            _read_only_recursive(where)
            self._hook_root = where
            run_dir = self.hook_place("/run")
            if run_dir is None:
                raise MountError(
                    f"{os.fspath(root)!r} has no directory /run, where hooks are shown what they work on",
                    hint="create /run in the root",
                )
            for name in ("proc", "sys", "dev"):
                place = self.hook_place(f"/{name}")
                if place is not None:
                    m.mount(f"/{name}", place, None, m.MS_BIND | m.MS_REC)
            tmp = self.hook_place("/tmp")
            if tmp is not None:
                m.mount("tmpfs", tmp, "tmpfs", m.MS_NOSUID | m.MS_NODEV, "mode=1777")
            m.mount("tmpfs", run_dir, "tmpfs", m.MS_NOSUID | m.MS_NODEV, "mode=0755")
            for inner in HOOK_RUN_PLACES:
                os.makedirs(os.path.join(run_dir, os.path.relpath(inner, "/run")), mode=0o755)
            os.chmod(os.path.join(run_dir, os.path.relpath(HOOK_RUN, "/run")), 0o755)
            self.show_to_hooks(hooks, HOOKS_INNER)
            m.mount(None, run_dir, None, m.MS_BIND | m.MS_REMOUNT | m.MS_RDONLY | m.MS_NOSUID | m.MS_NODEV)
        except OSError as e:
            self._hook_root = None
            raise MountError(
                f"Cannot build the view of {os.fspath(root)!r} hooks run in: {e.strerror or e}"
            ) from e
        except SysextError:
            self._hook_root = None
            raise
        return where

    def hook_place(self, inner: str) -> Optional[str]:
        """Where `inner`, a path inside the root, lies in the hook root: None unless a directory."""
        from .chase import resolve_in_root

        assert self._hook_root is not None, "hook_root() first"
        try:
            place = resolve_in_root(self._hook_root, inner)
        except SysextError:
            return None
        return place if os.path.isdir(place) and not os.path.islink(place) else None

    def show_to_hooks(self, source: str, inner: str, read_only: bool = True) -> None:
        """Bind `source` (with what is mounted below it) at `inner` in the hook root, read-only
        unless asked otherwise; hide_from_hooks() takes it away again."""
        from . import mountapi as m

        place = self.hook_place(inner)
        if place is None:
            raise MountError(f"Cannot show {os.fspath(source)!r} to hooks at {inner!r}: no directory there")
        try:
            m.mount(source, place, None, m.MS_BIND | m.MS_REC)
            if read_only:
                _read_only_recursive(place)
        except OSError as e:
            raise MountError(f"Cannot show {os.fspath(source)!r} to hooks at {inner!r}: {e.strerror}") from e

    def hide_from_hooks(self, inner: str) -> None:
        from . import mountapi as m

        place = self.hook_place(inner)
        if place is not None:
            # Detached: a process a hook left behind, still in there, must not keep the run waiting.
            m.umount2(place, m.MNT_DETACH)

    def mount_image(self, candidate: Candidate) -> str:
        """Dissect, attach and mount a raw image read-only inside the workspace; cached per image.

        ImageError when the image is broken, untrusted or refused by the image policy; nothing
        attached or mounted for it is left behind then.
        """
        key = (candidate.image_class.value, candidate.name)
        if key in self._mounted:
            return self._mounted[key]
        if not self.inside:
            raise SysextError("internal: mount_image() outside the workspace")
        from .dissect import dissect

        plan = dissect(candidate, self._trust_for(candidate), self._file_fd(candidate.path))
        log.info("%s %s: %s", candidate.image_class.value, candidate.name, plan.summary())
        for note in plan.notes:
            (log.warning if "WITHOUT verity" in note else log.info)(
                "%s %s: %s", candidate.image_class.value, candidate.name, note
            )
        target = self.scratch_dir("images")
        mounted: list[str] = []
        try:
            for step in plan.steps:
                where = os.path.join(target, step.where) if step.where else target
                if step.where and not os.path.isdir(where):
                    if mounted:
                        raise ImageError(
                            f"the image's root file system has no /{step.where} to mount the "
                            f"{step.designator} partition on"
                        )
                    os.mkdir(where, 0o755)
                self._mount_step(step, where)
                mounted.append(where)
        except BaseException as e:
            self._unmount_all(mounted)
            if isinstance(e, PassingImageError):
                self.retry.add(key)
            raise
        log.debug("Mounted image %s at %s", candidate.path, target)
        self.dissections[key] = plan
        self._mounted[key] = target
        return target

    def _file_fd(self, path: StrPath) -> Optional[int]:
        return self.pins.file_fd(path) if self.pins is not None else None

    def _trust_for(self, candidate: Candidate) -> TrustContext:
        if self.trust is not None:
            return self.trust
        from .dissect import TrustContext, candidate_root

        root = os.fspath(candidate_root(candidate))
        if root not in self._trust_by_root:
            self._trust_by_root[root] = TrustContext.for_candidate(candidate, os.environ)
        return self._trust_by_root[root]

    def _mount_step(self, step: MountStep, where: str) -> None:
        """Attach one file system (through dm-verity when the plan says so) and mount it at `where`."""
        from . import mountapi as m
        from .loopdev import LoopDevice

        path = os.fspath(step.source)
        loops: list[LoopDevice] = []
        verity_name: Optional[str] = None

        def attach(source: str, offset: int, size: int) -> LoopDevice:
            try:
                loop = LoopDevice.attach(
                    source, read_only=True, offset=offset, sizelimit=size, file_fd=self._file_fd(source)
                )
            except OSError as e:
                raise PassingImageError(
                    f"cannot attach {os.fspath(source)!r} to a loop device: {e.strerror}"
                ) from e
            loops.append(loop)
            return loop

        try:
            data = attach(step.source, step.offset, step.size)
            device = data.path
            if step.verity is not None:
                device, verity_name = self._activate_verity(step, data, attach)
            try:
                m.mount(device, where, step.fstype, m.MS_RDONLY | m.MS_NODEV | m.MS_NOSUID)
            except OSError as e:
                kind = ImageError if e.errno in IMAGE_MOUNT_ERRNOS else PassingImageError
                raise kind(
                    f"cannot mount the {step.fstype} file system of {step.what} of {path!r}: {e.strerror}"
                ) from e
        except BaseException:
            if verity_name is not None:
                from .verity import deactivate

                deactivate(verity_name, deferred=False)
            for loop in loops:
                try:
                    loop.detach()
                except OSError as e:
                    # Best effort: autoclear still frees the device once its last user is gone.
                    log.debug("Could not detach %s now: %s", loop.path, e)
            raise
        # The mount (or the dm device under it) keeps the loop devices; autoclear frees them when
        # their last user goes, and a deferred remove does the same for the dm device.
        for loop in loops:
            loop.close()
        if verity_name is not None:
            from .verity import deactivate

            deactivate(verity_name, deferred=True)

    def _activate_verity(
        self, step: MountStep, data: LoopDevice, attach: Callable[[str, int, int], LoopDevice]
    ) -> tuple[str, str]:
        from .verity import VerityActivation, activate

        assert step.verity is not None
        v = step.verity
        hash_loop = attach(v.hash_file, v.hash_offset, v.hash_size)
        signature_file: Optional[str] = None
        if v.kernel_check and v.signature is not None:
            signature_file = os.path.join(self.scratch_dir("signatures"), "roothash.p7s")
            with open(signature_file, "wb") as f:
                f.write(v.signature.data)
        self._counter += 1
        # Unique per activation: the device of the current merge may still be in use during a refresh.
        name = f"sysextpy-{v.root_hash.hex[:32]}-{os.getpid()}-{self._counter}"
        act = VerityActivation(
            name=name,
            data_device=data.path,
            hash_device=hash_loop.path,
            root_hash_hex=v.root_hash.hex,
            signature_file=signature_file,
        )
        return activate(act), name

    def _unmount_all(self, mounted: list[str]) -> None:
        from . import mountapi as m

        for where in reversed(mounted):
            try:
                m.umount2(where, m.MNT_DETACH)
            except OSError as e:
                log.warning("Could not unmount %s: %s", where, e.strerror)


def image_tree(candidate: Candidate, workspace: Optional[Workspace]) -> str:
    """The directory holding an image's file tree (the directory itself, or its mount)."""
    if candidate.type in (ImageType.DIRECTORY, ImageType.SUBVOLUME):
        pinned = workspace.pinned_tree(candidate) if workspace is not None else None
        return pinned if pinned is not None else candidate.path
    if workspace is None or not workspace.inside:
        raise ImageError(f"raw image {candidate.name!r} not inspected: that needs root (a loop device)")
    return workspace.mount_image(candidate)


def other_class(image_class: ImageClass) -> ImageClass:
    return ImageClass.CONFEXT if image_class is ImageClass.SYSEXT else ImageClass.SYSEXT
