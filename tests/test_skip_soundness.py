# SPDX-License-Identifier: LGPL-2.1-or-later
"""The skip rule against its oracle: a `refresh` that skips leaves exactly the state that a forced
refresh (`refresh --always-refresh=yes`) builds from the same inputs.

Each case builds a fake root with directory and raw extensions of both classes (a naked squashfs
image, one with signed verity side-cars and a signed GPT disk image), merges it, changes one input
(or several), then runs a plain `refresh` and takes a snapshot (tests/snapshot.py), runs a forced
refresh and takes another: the two snapshots and the two exit statuses must be equal. Nothing here
looks at the fingerprint; a refresh that did not skip must agree with the forced one too.

This machine's kind has no device-mapper: with the default image policy a naked image whose
signature a certificate of the root vouches for is mounted unprotected (with a warning), while an
image whose signature is present but fails is rejected (exit 3). The certificate and signature
cases turn on that difference.

Inputs below /etc and /usr are changed in those directories themselves, below the overlays (a
plain bind mount of the root taken before the merge reaches them), as a confext merged read-only
leaves no other way; the kernel's dentry cache is then dropped so that the overlays mounted on
them show what is there now rather than what they looked up before.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import pytest

from sysextpy import mountapi
from sysextpy.model import ImageClass
from tests.conftest import RunSysextpy
from tests.faults import report
from tests.merge_support import (
    HOST_RELEASE,
    Runner,
    add_confext,
    add_sysext,
    confext_tree,
    make_raw,
    sysext_tree,
    write,
)
from tests.root_tools import equip_root
from tests.snapshot import differences, snapshot
from tests.test_dissect import Signer, build_ddi, make_signer, naked_image, sign, trust, verity_format

SKIPPED = "Skipping extension refresh because no change was found"
# tool -> its Debian package
TOOLS = {
    "mksquashfs": "squashfs-tools",
    "veritysetup": "cryptsetup-bin",
    "openssl": "openssl",
    "sfdisk": "fdisk",
    "mount": "mount",
}
SECTION = "skip soundness"

CLASSES = ("sysext", "confext")
PREFIX = {"sysext": "s", "confext": "c"}
SEARCH = {"sysext": "var/lib/extensions", "confext": "var/lib/confexts"}
HIGHER = {"sysext": "etc/extensions", "confext": "run/confexts"}  # searched before SEARCH
CONTENT = {"sysext": "usr/share", "confext": "etc"}  # where an extension's files go
RELEASE_DIR = {"sysext": "usr/lib/extension-release.d", "confext": "etc/extension-release.d"}
HIERARCHY = {"sysext": "usr", "confext": "etc"}
SECTION_NAME = {"sysext": "SysExt", "confext": "ConfExt"}
ENV_PREFIX = {"sysext": "SYSTEMD_SYSEXT", "confext": "SYSTEMD_CONFEXT"}
IMAGE_CLASS = {"sysext": ImageClass.SYSEXT, "confext": ImageClass.CONFEXT}

FEDORA_RELEASE = "ID=fedora\nVERSION_ID=12\n"
STRICT_POLICY = "root=signed+absent:usr=signed+absent"
VERITY_POLICY = "root=verity+signed+absent:usr=verity+signed+absent"


def tree_for(cls: str) -> Callable[..., Path]:
    return sysext_tree if cls == "sysext" else confext_tree


def data_file(cls: str, name: str, leaf: str = "data") -> str:
    return f"{CONTENT[cls]}/{name}/{leaf}"


# --------------------------------------------------------------------------------------------------
# The images, built once per session


@dataclass(frozen=True)
class Images:
    """The image files every case copies into its root; `path(name)` is one file of the cache."""

    directory: Path
    key_a: Signer  # its certificate is in the base root's etc/verity.d
    key_b: Signer  # nobody trusts it

    def path(self, name: str) -> Path:
        return self.directory / name


def _plain(work: Path, out: Path, cls: str, name: str, text: str, release: str = HOST_RELEASE) -> Path:
    src = tree_for(cls)(work / out.name, name, {data_file(cls, name): text}, release)
    return make_raw("squashfs", src, out)


def _pad_to_same_size(paths: Sequence[Path]) -> None:
    """Squashfs ignores bytes past its end: equal sizes make the same-stat replacement possible."""
    size = max(p.stat().st_size for p in paths)
    for p in paths:
        os.truncate(p, size)


def build_images(directory: Path) -> Images:
    missing = [f"{tool} (package {package})" for tool, package in TOOLS.items() if not shutil.which(tool)]
    if missing:
        pytest.fail(f"the skip soundness tests need {', '.join(missing)}: install it", pytrace=False)
    work = directory / "work"
    key_a = make_signer(directory / "keys", "a")
    key_b = make_signer(directory / "keys", "b")
    for cls in CLASSES:
        p = PREFIX[cls]
        plain = _plain(work, directory / f"{p}plain.raw", cls, f"{p}plain", "plain 1\n")
        other = _plain(work, directory / f"{p}plain.v2.raw", cls, f"{p}plain", "plain 2\n")
        _plain(work, directory / f"{p}plain.fedora.raw", cls, f"{p}plain", "plain 1\n", FEDORA_RELEASE)
        _plain(work, directory / f"{p}new.raw", cls, f"{p}new", "new 1\n")
        _pad_to_same_size([plain, other])
        for version in ("1", "2"):
            _plain(work, directory / f"{p}v_{version}.raw", cls, f"{p}v", f"version {version}\n")
        # Signed by A: NAME.raw, NAME.verity, NAME.roothash, NAME.roothash.p7s.
        _, root_hash = naked_image(
            work / "sig", directory / f"{p}sig.raw", f"{p}sig", cls=IMAGE_CLASS[cls], hash_kind="roothash",
            signer=key_a,
        )  # fmt: skip
        assert root_hash is not None
        sign(root_hash, key_b, directory / f"{p}sig.roothash.p7s.b")
        # A GPT disk image with root, root-verity and root-verity-sig partitions, signed by A.
        build_ddi(work / "ddi", directory / f"{p}ddi.raw", f"{p}ddi", cls=IMAGE_CLASS[cls], signer=key_a)
        # Another image's hash tree and root hash.
        shutil.copy(other, work / f"{p}other.raw")
        other_hash = verity_format(work / f"{p}other.raw", directory / f"{p}other.verity")
        (directory / f"{p}other.roothash").write_text(other_hash + "\n")
    return Images(directory, key_a, key_b)


@pytest.fixture(scope="session")
def images(tmp_path_factory: pytest.TempPathFactory) -> Images:
    return build_images(tmp_path_factory.mktemp("skip-soundness-images"))


# --------------------------------------------------------------------------------------------------
# One root


def _drop_dentry_caches() -> None:
    """Overlays keep what they looked up in their layers (a negative entry stays negative): after a
    layer changed below a live overlay, drop what is cached so the overlay shows the layer as it
    is. Only caches are dropped; nothing else on the machine changes."""
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("2\n")


@dataclass
class World:
    run: Runner
    root: Path
    under: Path  # the root, without the overlays (bind-mounted before the merge)
    work: Path  # scratch outside the root
    images: Images
    merge_args: list[str] = field(default_factory=list)
    refresh_args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    mounts: list[Path] = field(default_factory=list)  # mounted by the case, unmounted last first

    def at(self, rel: str) -> Path:
        """Where to change `rel` of the root: below the overlays for the merged hierarchies."""
        rel = rel.lstrip("/")
        if rel.split("/", 1)[0] in ("etc", "usr", "opt"):
            return self.under / rel
        return self.root / rel

    def copy_image(self, name: str, rel: str) -> Path:
        dest = self.at(rel)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(dest.name + ".new")
        shutil.copy(self.images.path(name), tmp)
        os.replace(tmp, dest)
        return dest

    def status(self) -> str:
        res = self.run("status", "--json=short", env=self.env)
        assert res.returncode == 0, f"status exited {res.returncode}:\n{res.stderr}"
        return res.stdout

    def snapshot(self) -> dict[str, Any]:
        return snapshot(self.root, self.status)

    def mount_squashfs(self, image: Path, where: Path) -> None:
        subprocess.run(
            ["mount", "-t", "squashfs", "-o", "ro,loop", os.fspath(image), os.fspath(where)],
            check=True,
            stdin=subprocess.DEVNULL,
            capture_output=True,
        )
        self.mounts.append(where)


def build_base(root: Path, images: Images) -> None:
    """Both classes, both kinds: a directory extension, an unsigned raw image, a raw image with
    signed verity side-cars and a signed GPT disk image (certificate A in etc/verity.d). A shell
    for the cases' hooks, which run chrooted in the root, is there from the start: installed
    later, it would change /usr itself, an input of its own."""
    equip_root(root, "sh")
    trust(root, images.key_a, "a.crt")
    for cls in CLASSES:
        p = PREFIX[cls]
        add = add_sysext if cls == "sysext" else add_confext
        d = add(
            root,
            f"{p}dir",
            {
                data_file(cls, f"{p}dir", "one"): "one\n",
                data_file(cls, f"{p}dir", "two"): "two\n",
                data_file(cls, f"{p}dir", "data"): "dir 1\n",
                **({"opt/sdir/data": "opt\n"} if cls == "sysext" else {}),
            },
        )
        (d / data_file(cls, f"{p}dir", "current")).symlink_to("one")
        search = root / SEARCH[cls]
        shutil.copy(images.path(f"{p}plain.raw"), search / f"{p}plain.raw")
        shutil.copy(images.path(f"{p}ddi.raw"), search / f"{p}ddi.raw")
        for suffix in (".raw", ".verity", ".roothash", ".roothash.p7s"):
            shutil.copy(images.path(f"{p}sig{suffix}"), search / f"{p}sig{suffix}")


@pytest.fixture
def world(
    mountns: None, fake_root: Path, tmp_path: Path, sysextpy_cmd: RunSysextpy, images: Images
) -> Iterator[World]:
    """conftest's fake_root with the base extensions; afterwards unmerged and unmounted (fake_root
    then checks that no mount and no loop device is left below tmp_path)."""
    under = tmp_path / "under"
    under.mkdir()
    mountapi.mount(fake_root, under, None, mountapi.MS_BIND)
    w = World(
        Runner(sysextpy_cmd, fake_root, tmp_path / "state.json"), fake_root, under, tmp_path / "work", images
    )
    w.mounts.append(under)
    w.work.mkdir()
    build_base(fake_root, images)
    yield w
    w.run("unmerge", env=w.env)
    for where in reversed(w.mounts):
        try:
            mountapi.umount2(where, mountapi.MNT_DETACH)
        except OSError:
            pass  # best effort: fake_root's check says what is left


# --------------------------------------------------------------------------------------------------
# The catalogue of changes

Step = Callable[[World, str, str], Any]  # (world, class, kind)


def _nothing(w: World, cls: str, kind: str) -> None:
    pass


def _unlink(rel: str) -> Step:
    return lambda w, cls, kind: w.at(rel).unlink()


def _name(cls: str, kind: str) -> str:
    """The extension of `cls` and `kind` that a change works on."""
    return f"{PREFIX[cls]}{'dir' if kind == 'dir' else 'plain'}"


def _entry(cls: str, kind: str, name: Optional[str] = None) -> str:
    """Its entry in the search directory."""
    name = name or _name(cls, kind)
    return f"{SEARCH[cls]}/{name}{'.raw' if kind == 'raw' else ''}"


def _sig(cls: str, suffix: str = ".raw") -> str:
    return f"{SEARCH[cls]}/{PREFIX[cls]}sig{suffix}"


def _both_sigs(make: Step) -> Step:
    def step(w: World, cls: str, kind: str) -> None:
        for c in CLASSES:
            make(w, c, kind)

    return step


# Certificates


def _mkdir(w: World, rel: str) -> Path:
    w.at(rel).mkdir(parents=True, exist_ok=True)
    return w.at(rel)


def _move_cert_to_usr_lib(w: World, cls: str, kind: str) -> None:
    os.rename(w.at("etc/verity.d/a.crt"), _mkdir(w, "usr/lib/verity.d") / "a.crt")


def _cert_b(where: str) -> Step:
    def step(w: World, cls: str, kind: str) -> None:
        _mkdir(w, where)
        shutil.copy(w.images.key_b.cert, w.at(f"{where}/b.crt"))

    return step


def _cert_a_becomes_b(w: World, cls: str, kind: str) -> None:
    shutil.copy(w.images.key_b.cert, w.at("etc/verity.d/a.crt"))


def _mask_cert(w: World, cls: str, kind: str) -> None:
    _mkdir(w, "etc/verity.d")
    w.at("etc/verity.d/a.crt").symlink_to("/dev/null")


def _sign_with_b(w: World, cls: str, kind: str) -> None:
    w.copy_image(f"{PREFIX[cls]}sig.roothash.p7s.b", _sig(cls, ".roothash.p7s"))


def _sign_with_a(w: World, cls: str, kind: str) -> None:
    w.copy_image(f"{PREFIX[cls]}sig.roothash.p7s", _sig(cls, ".roothash.p7s"))


def _unsign(w: World, cls: str, kind: str) -> None:
    w.at(_sig(cls, ".roothash.p7s")).unlink()


def _other_tree(w: World, cls: str, kind: str) -> None:
    w.copy_image(f"{PREFIX[cls]}other.verity", _sig(cls, ".verity"))


def _other_root_hash(w: World, cls: str, kind: str) -> None:
    w.copy_image(f"{PREFIX[cls]}other.roothash", _sig(cls, ".roothash"))


# Policy, mutable mode, configuration


def _conf(cls: str, rel: str, key: str, value: str) -> Step:
    def step(w: World, c: str, kind: str) -> None:
        write(w.at(rel.format(cls=cls)), f"[{SECTION_NAME[cls]}]\n{key}={value}\n")

    return step


def _for_class(make: Callable[[str], Step]) -> Step:
    return lambda w, cls, kind: make(cls)(w, cls, kind)


def _refresh_args(*args: str) -> Step:
    return lambda w, cls, kind: w.refresh_args.extend(args)


def _merge_args(*args: str) -> Step:
    return lambda w, cls, kind: w.merge_args.extend(args)


def _env_mutable(w: World, cls: str, kind: str) -> None:
    w.env[f"{ENV_PREFIX[cls]}_MUTABLE_MODE"] = "yes"


def _mutable_dir(w: World, cls: str, kind: str) -> None:
    w.at(f"var/lib/extensions.mutable/{HIERARCHY[cls]}").mkdir(parents=True)


# Release files


def _release_file(w: World, cls: str) -> Path:
    name = _name(cls, "dir")
    return w.at(f"{SEARCH[cls]}/{name}/{RELEASE_DIR[cls]}/extension-release.{name}")


def _release_fedora(w: World, cls: str, kind: str) -> None:
    _release_file(w, cls).write_text("ID=fedora\n")


def _release_fedora_same_stat(w: World, cls: str, kind: str) -> None:
    """Another OS in the release file, written with the same length and given its old times back."""
    path = _release_file(w, cls)
    before = path.stat()
    text = path.read_text()
    path.write_text(text.replace("ID=debian", "ID=fedora"))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))


def _raw_fedora(w: World, cls: str, kind: str) -> None:
    w.copy_image(f"{PREFIX[cls]}plain.fedora.raw", _entry(cls, "raw"))


def _os_release(w: World, cls: str, kind: str) -> None:
    text = 'ID=debian\nVERSION_ID=13\nPRETTY_NAME="Debian GNU/Linux 13 (trixie)"\n'
    write(w.at("etc/os-release"), text)
    write(w.at("usr/lib/os-release"), text)


def _os_release_usr_lib(w: World, cls: str, kind: str) -> None:
    write(w.at("usr/lib/os-release"), "ID=debian\nVERSION_ID=13\n")


def _os_release_link(w: World, cls: str, kind: str) -> None:
    os.unlink(w.at("etc/os-release"))
    w.at("etc/os-release").symlink_to("../usr/lib/os-release")


# Raw images replaced


def _raw_replaced(w: World, cls: str, kind: str) -> None:
    w.copy_image(f"{PREFIX[cls]}plain.v2.raw", _entry(cls, "raw"))


def _squashfs_of(src: Path, out: Path, time: int) -> Path:
    subprocess.run(
        ["mksquashfs", os.fspath(src), os.fspath(out), "-quiet", "-noappend", "-no-progress", "-all-root",
         "-all-time", str(time), "-mkfs-time", str(time)],
        check=True, stdin=subprocess.DEVNULL, capture_output=True,
    )  # fmt: skip
    return out


READ_ONLY_TIME = 1_700_000_000


def _read_only_search_dir(w: World, cls: str, kind: str) -> None:
    """The search directory becomes a read-only file system (squashfs, all times T), as on an image
    based system; a second one, the same but for the image's content, is made ready beside it."""
    search = w.root / SEARCH[cls]
    first, second = w.work / f"{cls}-first", w.work / f"{cls}-second"
    shutil.copytree(search, first, symlinks=True)
    shutil.copytree(search, second, symlinks=True)
    shutil.copy(w.images.path(f"{PREFIX[cls]}plain.v2.raw"), second / f"{_name(cls, 'raw')}.raw")
    _squashfs_of(first, w.work / f"{cls}-first.squashfs", READ_ONLY_TIME)
    _squashfs_of(second, w.work / f"{cls}-second.squashfs", READ_ONLY_TIME)
    w.mount_squashfs(w.work / f"{cls}-first.squashfs", search)


def _read_only_replaced(w: World, cls: str, kind: str) -> None:
    """Another read-only file system mounted over the first: the image of the same name has the same
    size, mode, mtime and ctime, and another content."""
    search = w.root / SEARCH[cls]
    image = search / f"{_name(cls, 'raw')}.raw"
    before = image.stat()
    w.mount_squashfs(w.work / f"{cls}-second.squashfs", search)
    after = image.stat()
    same = ("st_size", "st_mode", "st_mtime_ns", "st_ctime_ns")
    assert [getattr(before, a) for a in same] == [getattr(after, a) for a in same]


# Directory trees


def _dir_file(w: World, cls: str, leaf: str) -> Path:
    name = _name(cls, "dir")
    return w.at(f"{SEARCH[cls]}/{name}/{data_file(cls, name, leaf)}")


def _edit_same_stat(w: World, cls: str, kind: str) -> None:
    path = _dir_file(w, cls, "one")
    before = path.stat()
    path.write_text("ONE\n")
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))


def _rename_file(w: World, cls: str, kind: str) -> None:
    os.rename(_dir_file(w, cls, "two"), _dir_file(w, cls, "three"))


def _add_file(w: World, cls: str, kind: str) -> None:
    write(_dir_file(w, cls, "added"), "added\n")


def _rename_extension(w: World, cls: str, kind: str) -> None:
    os.rename(w.at(_entry(cls, "dir")), w.at(_entry(cls, "dir", f"{PREFIX[cls]}renamed")))


def _retarget_link(w: World, cls: str, kind: str) -> None:
    link = _dir_file(w, cls, "current")
    link.unlink()
    link.symlink_to("two")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


# .v/ directories: NAME.v/NAME_VERSION for directories, NAME.raw.v/NAME_VERSION.raw for raw images


def _version(version: str) -> Step:
    def step(w: World, cls: str, kind: str) -> None:
        name = f"{PREFIX[cls]}v"
        if kind == "raw":
            w.copy_image(f"{name}_{version}.raw", f"{SEARCH[cls]}/{name}.raw.v/{name}_{version}.raw")
        else:
            tree_for(cls)(
                w.at(f"{SEARCH[cls]}/{name}.v/{name}_{version}"),
                name,
                {data_file(cls, name): f"version {version}\n"},
            )

    return step


def _remove_version(version: str) -> Step:
    def step(w: World, cls: str, kind: str) -> None:
        name = f"{PREFIX[cls]}v"
        suffix = ".raw" if kind == "raw" else ""
        _remove(w.at(f"{SEARCH[cls]}/{name}{suffix}.v/{name}_{version}{suffix}"))

    return step


# Discovery


def _add_extension(w: World, cls: str, kind: str) -> None:
    name = f"{PREFIX[cls]}new"
    if kind == "raw":
        w.copy_image(f"{name}.raw", _entry(cls, "raw", name))
    else:
        tree_for(cls)(w.at(_entry(cls, "dir", name)), name, {data_file(cls, name): "new 1\n"})


# A link onto a file system the root's fstab names but that is not mounted (in the initrd, such an
# entry is deferred; here a dangling link whose mount point is observed).
STORE = "srv/store"


def _store_link(w: World, cls: str, kind: str) -> None:
    write(w.at("etc/fstab"), f"LABEL=store /{STORE} ext4 defaults 0 2\n")
    _mkdir(w, STORE)
    name = f"{PREFIX[cls]}new"
    w.at(_entry(cls, kind, name)).symlink_to(f"/{STORE}/{_entry(cls, kind, name).rsplit('/', 1)[1]}")


def _store_mounted(with_image: bool) -> Step:
    def step(w: World, cls: str, kind: str) -> None:
        where = w.root / STORE
        mountapi.mount("tmpfs", where, "tmpfs", 0, "mode=0755")
        w.mounts.append(where)
        if not with_image:
            return
        name = f"{PREFIX[cls]}new"
        if kind == "raw":
            shutil.copy(w.images.path(f"{name}.raw"), where / f"{name}.raw")
        else:
            tree_for(cls)(where / name, name, {data_file(cls, name): "new 1\n"})

    return step


def _remove_extension(w: World, cls: str, kind: str) -> None:
    _remove(w.at(_entry(cls, kind)))


def _mask(w: World, cls: str, kind: str) -> None:
    w.at(f"{HIGHER[cls]}/{_name(cls, kind)}").mkdir(parents=True)


def _shadow(w: World, cls: str, kind: str) -> None:
    name = _name(cls, kind)
    if kind == "raw":
        w.copy_image(f"{name}.v2.raw", f"{HIGHER[cls]}/{name}.raw")
    else:
        tree_for(cls)(w.at(f"{HIGHER[cls]}/{name}"), name, {data_file(cls, name, "shadow"): "shadowing\n"})


# Configuration drop-ins: one in /etc for sysext, one in /usr/lib for confext

DROP_IN = {
    "sysext": "etc/systemd/sysext.conf.d/50-x.conf",
    "confext": "usr/lib/systemd/confext.conf.d/50-x.conf",
}


def _drop_in(w: World, cls: str, kind: str) -> None:
    write(w.at(DROP_IN[cls]), f"[{SECTION_NAME[cls]}]\nMutable=yes\n")


def _no_drop_in(w: World, cls: str, kind: str) -> None:
    w.at(DROP_IN[cls]).unlink()


# Harmless


def _sysupdate_entry(w: World, cls: str, kind: str) -> None:
    write(w.at(f"{SEARCH[cls]}/.sysupdate.{_name(cls, 'raw')}.raw.partial"), "half a download\n")
    w.at(f"{SEARCH[cls]}/.sysupdate.tmp").mkdir()


def _unrelated(w: World, cls: str, kind: str) -> None:
    write(w.at("srv/unrelated"), "x\n")
    write(w.at("var/lib/unrelated"), "x\n")
    write(w.at("etc/hostname"), "box\n")


# The administrator's hooks (below /etc and /usr: changed below the overlays, like certificates)

GENERATE_HOOK = "etc/sysextpy/hooks.d/50-gen.hook"


def _hook_text(word: str) -> str:
    """A generate hook whose output layer holds `word`; it also takes a check, and accepts."""
    return f'#!/bin/sh\n[ "$1" = generate ] || exit 0\necho {word} > "$5/generated-by-hook"\n'


def _hook(word: str, rel: str = GENERATE_HOOK) -> Step:
    return lambda w, cls, kind: write(w.at(rel), _hook_text(word), mode=0o755)


def _hook_edited_same_stat(w: World, cls: str, kind: str) -> None:
    path = w.at(GENERATE_HOOK)
    st = path.stat()
    path.write_text(_hook_text("two"))  # as long as "one"
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def _hook_masked(w: World, cls: str, kind: str) -> None:
    _mkdir(w, "run/sysextpy/hooks.d")
    w.at("run/sysextpy/hooks.d/50-gen.hook").symlink_to("/dev/null")


def _veto_hook(w: World, cls: str, kind: str) -> None:
    name = _name(cls, kind)
    write(w.at("etc/sysextpy/hooks.d/40-veto.hook"), f'#!/bin/sh\n[ "$1.$3" != check.{name} ]\n', mode=0o755)


CHANGES = "changes"
NO_EFFECT = "none"
EITHER = "either"


@dataclass(frozen=True)
class Change:
    name: str
    apply: Step
    setup: Optional[Step] = None  # before the merge
    classes: tuple[str, ...] = CLASSES  # ("all",): the change is not of one class
    kinds: tuple[str, ...] = ("dir", "raw")  # ("raw",): only raw images have it; ("-",): neither
    # What the change does to the state a forced refresh builds: CHANGES it (checked, so that a case
    # cannot pass by changing nothing), leaves the outcome (what is merged where, what is rejected)
    # as it was (NO_EFFECT), or may do either (EITHER: without dm-verity a trusted signature and none
    # both mean "mounted unprotected").
    effect: str = CHANGES
    combinable: bool = True  # may be one of a random combination


ALL = ("all",)
RAW = ("raw",)
DIR = ("dir",)
NO_KIND = ("-",)

CATALOGUE: list[Change] = [
    Change("nothing", _nothing, classes=ALL, kinds=NO_KIND, effect=NO_EFFECT, combinable=False),
    # Certificates of the root (both classes' signed images hang on them).
    Change("cert-removed", _unlink("etc/verity.d/a.crt"), classes=ALL, kinds=RAW),
    Change("cert-removed-usr-lib", _unlink("usr/lib/verity.d/a.crt"), _move_cert_to_usr_lib, ALL, RAW),
    Change("cert-replaced-by-other-key", _cert_a_becomes_b, classes=ALL, kinds=RAW),
    Change("cert-added-trusts-signature", _cert_b("etc/verity.d"), _both_sigs(_sign_with_b), ALL, RAW),
    Change("cert-added-usr-lib-trusts", _cert_b("usr/lib/verity.d"), _both_sigs(_sign_with_b), ALL, RAW),
    Change("cert-masked-by-dev-null", _mask_cert, _move_cert_to_usr_lib, ALL, RAW),
    Change("cert-unrelated-added", _cert_b("etc/verity.d"), classes=ALL, kinds=RAW, effect=NO_EFFECT),
    # Signatures.
    Change("sig-replaced-unknown-key", _sign_with_b, kinds=RAW),
    Change("sig-removed", _unsign, kinds=RAW, effect=EITHER),
    Change("sig-added-unknown-key", _sign_with_b, _unsign, kinds=RAW),
    Change("sig-added-trusted", _sign_with_a, _unsign, kinds=RAW, effect=EITHER),
    # Hash trees and root hashes.
    Change("verity-tree-of-another-image", _other_tree, kinds=RAW),
    Change("roothash-edited", _other_root_hash, kinds=RAW),
    # Image policy.
    Change(
        "policy-cli-on-refresh", _refresh_args(f"--image-policy={VERITY_POLICY}"), classes=ALL, kinds=RAW
    ),
    Change("policy-cli-on-merge-only", _nothing, _merge_args(f"--image-policy={VERITY_POLICY}"), ALL, RAW),
    Change(
        "policy-conf",
        _for_class(lambda c: _conf(c, "etc/systemd/{cls}.conf", "ImagePolicy", STRICT_POLICY)),
        kinds=RAW,
    ),
    Change(
        "policy-conf-drop-in",
        _for_class(
            lambda c: _conf(c, "etc/systemd/{cls}.conf.d/50-policy.conf", "ImagePolicy", STRICT_POLICY)
        ),
        kinds=RAW,
    ),
    # Mutable mode.
    Change(
        "mutable-conf",
        _for_class(lambda c: _conf(c, "etc/systemd/{cls}.conf", "Mutable", "yes")),
        kinds=NO_KIND,
    ),
    Change("mutable-cli", _refresh_args("--mutable=yes"), classes=ALL, kinds=NO_KIND),
    Change("mutable-env", _env_mutable, kinds=NO_KIND),
    Change(
        "mutable-dir-appears-auto",
        _mutable_dir,
        _for_class(lambda c: _conf(c, "etc/systemd/{cls}.conf", "Mutable", "auto")),
        kinds=NO_KIND,
    ),
    # Release files.
    Change("release-other-os", _release_fedora, kinds=DIR),
    Change("release-other-os-same-size-mtime", _release_fedora_same_stat, kinds=DIR),
    Change("release-other-os-image-rebuilt", _raw_fedora, kinds=RAW),
    Change("os-release-version", _os_release, classes=ALL, kinds=NO_KIND),
    Change("os-release-version-through-link", _os_release_usr_lib, _os_release_link, ALL, NO_KIND),
    Change("os-release-link-same-content", _os_release_link, classes=ALL, kinds=NO_KIND, effect=NO_EFFECT),
    # Raw images replaced.
    Change("raw-replaced", _raw_replaced, kinds=RAW),
    Change(
        "raw-replaced-same-stat-read-only-fs",
        _read_only_replaced,
        _read_only_search_dir,
        kinds=RAW,
        combinable=False,
    ),
    # Directory trees.
    Change("file-edited-same-size-mtime", _edit_same_stat, kinds=DIR),
    Change("file-renamed", _rename_file, kinds=DIR),
    Change("file-added", _add_file, kinds=DIR),
    Change("extension-renamed", _rename_extension, kinds=DIR),
    Change("symlink-retargeted", _retarget_link, kinds=DIR),
    # .v/ directories.
    Change("vdir-version-added", _version("2"), _version("1")),
    Change(
        "vdir-newest-removed",
        _remove_version("2"),
        lambda w, c, k: (_version("1")(w, c, k), _version("2")(w, c, k)),
    ),
    # Discovery.
    Change("extension-added", _add_extension),
    Change("extension-removed", _remove_extension),
    Change("extension-masked-by-empty-dir", _mask),
    Change("extension-shadowed", _shadow),
    Change("link-target-file-system-mounted", _store_mounted(True), _store_link, combinable=False),
    Change(
        "link-target-file-system-mounted-empty",
        _store_mounted(False),
        _store_link,
        effect=NO_EFFECT,
        combinable=False,
    ),
    # Configuration drop-ins.
    Change("drop-in-appears", _drop_in, kinds=NO_KIND),
    Change("drop-in-disappears", _no_drop_in, _drop_in, kinds=NO_KIND),
    # The administrator's hooks.
    Change("hook-added", _hook("one"), classes=ALL, kinds=NO_KIND),
    Change("hook-changed", _hook("other"), _hook("one"), classes=ALL, kinds=NO_KIND),
    Change("hook-edited-same-size-mtime", _hook_edited_same_stat, _hook("one"), ALL, NO_KIND),
    Change("hook-removed", _unlink(GENERATE_HOOK), _hook("one"), classes=ALL, kinds=NO_KIND),
    Change("hook-masked", _hook_masked, _hook("one", "usr/lib/sysextpy/hooks.d/50-gen.hook"), ALL, NO_KIND),
    Change("hook-vetoes-an-image", _veto_hook),
    # Harmless.
    Change("sysupdate-entry", _sysupdate_entry, kinds=NO_KIND, effect=NO_EFFECT),
    Change("unrelated-files", _unrelated, classes=ALL, kinds=NO_KIND, effect=NO_EFFECT),
]
BY_NAME = {c.name: c for c in CATALOGUE}
assert len(BY_NAME) == len(CATALOGUE)


@dataclass(frozen=True)
class Case:
    change: Change
    cls: str
    kind: str

    @property
    def id(self) -> str:
        return f"{self.change.name}[{self.cls},{self.kind}]"


CASES = [Case(ch, cls, kind) for ch in CATALOGUE for cls in ch.classes for kind in ch.kinds]


def _combinations(seed: int, count: int) -> list[tuple[Case, ...]]:
    pool = [c for c in CASES if c.change.combinable]
    rng = random.Random(seed)
    out: list[tuple[Case, ...]] = []
    while len(out) < count:
        picked = rng.sample(pool, rng.randint(2, 4))
        if len({c.change.name for c in picked}) == len(picked):
            out.append(tuple(picked))
    return out


COMBINATIONS = _combinations(20240611, 20)


# --------------------------------------------------------------------------------------------------
# The property


def _step(step: Step, w: World, case: Case, tolerant: bool) -> None:
    try:
        step(w, case.cls, case.kind)
    except (FileNotFoundError, FileExistsError):
        if not tolerant:
            raise
        # in a combination, an earlier change took away (or made) what this one works on


def _outcome(snap: Mapping[str, Any]) -> dict[str, Any]:
    """What was merged where and what rejected, without the trees."""
    return {
        "merged": {k: v for k, v in snap["hierarchies"].items() if not k.startswith("tree:")},
        "status": snap["status"],
    }


def _how(stderr: str) -> str:
    """skipped (the whole run), refreshed (every class), partly (some classes skipped), or other
    (neither said: the run failed before it decided)."""
    if SKIPPED in stderr:
        return "skipped"
    refreshed = [cls for cls in CLASSES if f"{cls}: refreshing" in stderr]
    if not refreshed:
        return "other"
    return "refreshed" if len(refreshed) == len(CLASSES) else "partly"


def _tally(name: str, how: str, equal: bool) -> None:
    """For tests/RELIABILITY.md: how the plain refresh went, and whether it agreed with the forced one."""
    report(
        SECTION,
        name,
        cases=1,
        skipped=int(how == "skipped"),
        partly_skipped=int(how == "partly"),
        refreshed=int(how == "refreshed"),
        other=int(how == "other"),
        equal=int(equal),
        differ=int(not equal),
        skipped_though_different=int(how in ("skipped", "partly") and not equal),
    )


def check_skip_is_sound(w: World, cases: Sequence[Case], name: str) -> None:
    for case in cases:
        if case.change.setup is not None:
            _step(case.change.setup, w, case, tolerant=len(cases) > 1)
    merged = w.run("merge", *w.merge_args, env=w.env)
    assert merged.returncode in (0, 3), f"merge exited {merged.returncode}:\n{merged.stderr}"
    one = cases[0].change if len(cases) == 1 else None
    before = w.snapshot() if one is not None and one.effect != EITHER else None
    for case in cases:
        _step(case.change.apply, w, case, tolerant=len(cases) > 1)
    _drop_dentry_caches()

    plain = w.run("refresh", *w.refresh_args, env=w.env)
    how = _how(plain.stderr)
    after_plain = w.snapshot()
    forced = w.run("refresh", *w.refresh_args, "--always-refresh=yes", env=w.env)
    after_forced = w.snapshot()

    equal = after_plain == after_forced and plain.returncode == forced.returncode
    _tally(name, how, equal)
    for out in (plain, forced):
        assert "Traceback" not in out.stderr, out.stderr
    diff = differences(after_plain, after_forced)
    assert equal, (
        f"{name}: the plain refresh ({how}, exit {plain.returncode}) "
        f"left another state than the forced one (exit {forced.returncode}):\n  "
        + "\n  ".join(diff or ["(exit statuses differ)"])
        + f"\n--- plain refresh said:\n{plain.stderr}--- forced refresh said:\n{forced.stderr}"
    )
    if one is not None and before is not None and one.effect == NO_EFFECT:
        assert _outcome(after_forced) == _outcome(before), (
            f"{name} is not harmless: {differences(before, after_forced)}"
        )
    if one is not None and before is not None and one.effect == CHANGES:
        assert after_forced != before, (
            f"{name} did not change what a forced refresh builds: the case tests nothing"
        )


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_a_skip_leaves_what_a_forced_refresh_builds(world: World, case: Case) -> None:
    check_skip_is_sound(world, [case], f"{case.change.name} ({case.kind}, {case.cls})")


@pytest.mark.parametrize(
    "cases", COMBINATIONS, ids=[" + ".join(c.id for c in combo) for combo in COMBINATIONS]
)
def test_random_combinations(world: World, cases: tuple[Case, ...]) -> None:
    check_skip_is_sound(world, cases, "combination: " + " + ".join(c.id for c in cases))
