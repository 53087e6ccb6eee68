"""The dracut module: build a real initramfs with Debian's dracut, list it, and run sysextpy from
inside the unpacked image against a fake /sysroot.

The module and everything it installs come from `make install` into a temporary DESTDIR, which a
child process lays over /usr with an overlay mount in its own private mount namespace: dracut
then finds the units, the generator, the launcher, the package and the module where a
distribution puts them, and nothing reaches the host's /usr. Needs root (mounts, chroot); dracut
is installed from the distribution when missing (`apt-get install dracut-core`, never removing a
package).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import REPO_ROOT, check_no_leftovers
from sample_root import build_sample_root

# The interpreter the launcher names, and how its files are called.
_PY = subprocess.run(
    [
        "/usr/bin/python3",
        "-c",
        "import sys, sysconfig; print('%d.%d' % sys.version_info[:2],"
        " sysconfig.get_config_var('EXT_SUFFIX'), sys.implementation.cache_tag)",
    ],
    capture_output=True,
    text=True,
    check=True,
).stdout.split()
PY_VERSION, EXT_SUFFIX, CACHE_TAG = _PY
STDLIB = f"usr/lib/python{PY_VERSION}"
UNIT = "usr/lib/systemd/system/sysextpy-sysroot.service"
GENERATOR = "usr/lib/systemd/system-generators/sysextpy-generator"
PACKAGE = "usr/lib/python3/dist-packages/sysextpy"


def run(argv: list[str], timeout: float = 600, **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        **kwargs,  # type: ignore[arg-type]
    )


def ensure_dracut() -> None:
    """Install Debian's dracut-core (and only what it needs) if dracut is missing."""
    if shutil.which("dracut") and shutil.which("lsinitrd"):
        return
    if not shutil.which("apt-get"):
        pytest.skip("dracut is not installed and there is no apt-get to install it")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "--no-install-recommends", "dracut-core"]
    simulated = run([*install[:2], "-s", *install[2:]], env=env)
    if simulated.returncode != 0:
        run(["apt-get", "update"], env=env)
        simulated = run([*install[:2], "-s", *install[2:]], env=env)
    if simulated.returncode != 0 or any(line.startswith("Remv") for line in simulated.stdout.splitlines()):
        pytest.skip(f"cannot install dracut-core without removing packages:\n{simulated.stdout[-2000:]}")
    result = run(install, env=env)
    if result.returncode != 0 or not shutil.which("dracut"):
        pytest.skip(f"installing dracut-core failed:\n{result.stdout[-2000:]}{result.stderr[-2000:]}")


class Initramfs:
    def __init__(self, image: Path, listing: str, tree: Path) -> None:
        self.image = image
        self.listing = listing
        self.tree = tree

    def paths(self) -> set[str]:
        """The paths lsinitrd lists (its `ls -l`-like lines end with the path, or `path -> target`)."""
        found = set()
        for line in self.listing.splitlines():
            fields = line.split()
            if len(fields) >= 9 and fields[0][:1] in "-dlcbps":
                found.add(fields[8])
        return found


def in_namespace(script: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """Run a shell script in a fresh private mount namespace: its mounts die with it."""
    return run(["unshare", "--mount", "--propagation", "private", "sh", "-euc", script], timeout=timeout)


def install_tree(dest: Path) -> None:
    make = run(
        [
            "make",
            "-s",
            "-C",
            os.fspath(REPO_ROOT),
            "install",
            f"DESTDIR={dest}",
            "PREFIX=/usr",
            "SYSTEMDSYSTEMUNITDIR=/usr/lib/systemd/system",
            "SYSTEMDSYSTEMGENERATORDIR=/usr/lib/systemd/system-generators",
        ]
    )
    assert make.returncode == 0, make.stderr


def build_image(dest: Path, image: Path) -> subprocess.CompletedProcess[str]:
    """dracut with the module, on `dest` (a `make install` DESTDIR) laid over /usr."""
    tmp = image.parent / f"{image.name}.tmp"
    tmp.mkdir()
    return in_namespace(
        f"mount -t overlay overlay -o lowerdir={shlex.quote(os.fspath(dest / 'usr'))}:/usr /usr\n"
        f"exec dracut --no-hostonly --no-kernel --add sysextpy --force "
        f"--tmpdir {shlex.quote(os.fspath(tmp))} {shlex.quote(os.fspath(image))}\n"
    )


def needs_root_and_dracut() -> None:
    if os.geteuid() != 0:
        pytest.skip("builds an initramfs and chroots into it: needs root")
    ensure_dracut()


@pytest.fixture(scope="module")
def initramfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Initramfs]:
    needs_root_and_dracut()
    work = tmp_path_factory.mktemp("dracut")
    install_tree(work / "dest")
    image = work / "initramfs.img"
    build = build_image(work / "dest", image)
    assert build.returncode == 0, build.stdout[-4000:] + build.stderr[-4000:]
    assert "Including module: sysextpy" in build.stdout + build.stderr
    listing = run(["lsinitrd", os.fspath(image)])
    assert listing.returncode == 0, listing.stderr
    tree = work / "unpacked"
    tree.mkdir()
    unpack = run(["lsinitrd", "--unpack", os.fspath(image)], cwd=tree)
    assert unpack.returncode == 0, unpack.stderr
    yield Initramfs(image, listing.stdout, tree)


def test_image_lists_the_module(initramfs: Initramfs) -> None:
    paths = initramfs.paths()
    for path in (
        UNIT,
        GENERATOR,
        "usr/bin/sysextpy",
        "usr/bin/python3",
        f"{PACKAGE}/cli.py",
        f"{PACKAGE}/__pycache__/cli.{CACHE_TAG}.pyc",
        f"{STDLIB}/os.py",  # the interpreter's landmark for finding its prefix
        f"{STDLIB}/encodings/utf_8.py",
        f"{STDLIB}/lib-dynload/_ctypes{EXT_SUFFIX}",
    ):
        assert path in paths, f"{path} is not in the initramfs"
    # The libraries of extension modules are there too (dracut only resolves executables).
    assert any(p.startswith("usr/lib/") and "/libffi.so" in p for p in paths)
    # systemd-python (journal logging) comes along when the build host has it.
    journal = run(["/usr/bin/python3", "-I", "-c", "import systemd.journal as j; print(j.__file__)"])
    if journal.returncode == 0:
        assert journal.stdout.strip().lstrip("/") in paths
    # The unit is not enabled statically: the generator pulls it in.
    assert not any("initrd.target.wants/sysextpy" in p for p in paths)


def test_image_holds_the_import_closure_not_the_stdlib(initramfs: Initramfs) -> None:
    stdlib = f"{STDLIB}/"
    sources = [p for p in initramfs.paths() if p.startswith(stdlib) and p.endswith(".py")]
    assert 50 < len(sources) < 250, len(sources)
    names = {p[len(stdlib) :] for p in sources}
    for needed in (
        "subprocess.py",
        "json/decoder.py",
        "ctypes/__init__.py",
        "logging/__init__.py",
        "site.py",
    ):
        assert needed in names, needed
    for unneeded in ("argparse.py", "unittest/__init__.py", "tkinter/__init__.py", "sqlite3/__init__.py"):
        assert unneeded not in names, unneeded


def test_generator_runs_inside_the_initrd(initramfs: Initramfs) -> None:
    # No $SYSTEMD_IN_INITRD: the image's own /etc/initrd-release has to say it.
    out = "/tmp/generator-test"
    result = run(
        ["chroot", os.fspath(initramfs.tree), f"/{GENERATOR}", out], env={"PATH": os.environ["PATH"]}
    )
    assert result.returncode == 0, result.stderr
    link = initramfs.tree / out.lstrip("/") / "initrd.target.wants/sysextpy-sysroot.service"
    assert os.readlink(link) == "../sysextpy-sysroot.service"
    shutil.rmtree(initramfs.tree / out.lstrip("/"))


def test_plan_inside_the_initrd(initramfs: Initramfs, tmp_path: Path) -> None:
    sysroot = build_sample_root(tmp_path / "sysroot", broken=False)
    tree = shlex.quote(os.fspath(initramfs.tree))
    result = in_namespace(
        f"mount --bind {shlex.quote(os.fspath(sysroot))} {tree}/sysroot\n"
        f"mount -t proc proc {tree}/proc\n"
        f"exec chroot {tree} /usr/bin/python3 -I -m sysextpy --root=/sysroot --json=short plan\n"
    )
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    verdicts = {image["name"]: image["verdict"] for image in plan["images"] if image["name"]}
    assert verdicts["tools"] == "merge"
    assert verdicts["motd"] == "merge"
    assert verdicts["fedora-only"] == "ignored"
    assert all(image["entry"].startswith("/sysroot/") for image in plan["images"])


@pytest.mark.mounts
def test_refresh_inside_the_initrd(initramfs: Initramfs, tmp_path: Path) -> None:
    """The initrd's real job, from inside the image: merge into /sysroot, write the record; then
    the generator, as the real root runs it, finds the record good and asks for no full refresh."""
    sysroot = build_sample_root(tmp_path / "sysroot", broken=False)
    tree = shlex.quote(os.fspath(initramfs.tree))
    result = in_namespace(
        f"mount --bind {shlex.quote(os.fspath(sysroot))} {tree}/sysroot\n"
        f"mount -t proc proc {tree}/proc\n"
        f"mount -t sysfs sysfs {tree}/sys\n"
        f"mount --rbind /dev {tree}/dev\n"
        f"mount -t tmpfs tmpfs {tree}/run\n"
        f"chroot {tree} /usr/bin/sysextpy --root=/sysroot refresh\n"
        f"echo '--- record'; cat {tree}/run/sysextpy/state.json\n"
        f"echo '--- mounts'; cut -d' ' -f5 /proc/self/mountinfo\n"
        f"echo '--- usr/bin'; ls {tree}/sysroot/usr/bin\n"
        f"echo '--- generator'; SYSTEMD_IN_INITRD=0 chroot {tree} /{GENERATOR} /tmp/real-root\n"
        f"cd {tree}/tmp/real-root && find . | sort && cd / && rm -rf {tree}/tmp/real-root\n"
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    sections = dict(part.split("\n", 1) for part in result.stdout.split("--- ")[1:])
    record = json.loads(sections["record"])
    assert record["phase"] == "merged"
    assert record["classes"]["sysext"]["hierarchies"]["/usr"]["result"] == "merged"
    assert "tools" in record["classes"]["sysext"]["merged"]
    assert f"{initramfs.tree}/sysroot/usr" in sections["mounts"].split()
    assert "hello-tools" in sections["usr/bin"].split()
    assert sections["generator"].split() == [
        ".",
        "./sysinit.target.wants",
        "./sysinit.target.wants/sysextpy.service",
    ]
    # The namespace is gone, and with it every mount; the loop devices went with them.
    check_no_leftovers(tmp_path)


def test_closure_helper_follows_every_import(tmp_path: Path) -> None:
    """python-closure.py on an installed tree: the package, the stdlib modules it and the generator
    import (also those imported inside functions), and nothing they do not import."""
    prefix = tmp_path / "usr"
    dirs = [f"SYSTEMDSYSTEMUNITDIR={tmp_path}/units", f"SYSTEMDSYSTEMGENERATORDIR={tmp_path}/generators"]
    make = run(["make", "-s", "-C", os.fspath(REPO_ROOT), "install", f"PREFIX={prefix}", *dirs])
    assert make.returncode == 0, make.stderr
    helper = REPO_ROOT / "dracut/90sysextpy/python-closure.py"
    launcher = prefix / "bin/sysextpy"
    result = run(
        [
            "/usr/bin/python3",
            "-I",
            os.fspath(helper),
            os.fspath(launcher),
            f"{tmp_path}/generators/sysextpy-generator",
        ]
    )
    assert result.returncode == 0, result.stderr
    files = result.stdout.splitlines()
    package = prefix / "lib/python3/dist-packages/sysextpy"
    assert sorted(f for f in files if f.startswith(f"{package}/")) == sorted(
        map(os.fspath, package.glob("*.py"))
    )
    names = {f[len(STDLIB) + 2 :] for f in files if f.startswith(f"/{STDLIB}/")}
    # cli.py imports traceback only on its error path; the generator imports json only for a record.
    for needed in (
        "traceback.py",
        "json/decoder.py",
        "os.py",
        "site.py",
        "runpy.py",
        f"lib-dynload/_json{EXT_SUFFIX}",
    ):
        assert needed in names, needed
    for unneeded in ("argparse.py", "unittest/__init__.py", "asyncio/__init__.py"):
        assert unneeded not in names, unneeded
    assert all(os.path.isabs(f) and os.path.exists(f) for f in files)


def test_self_check_stops_a_broken_build(tmp_path: Path) -> None:
    """A module the package imports but the image lacks must fail the build, not the boot."""
    needs_root_and_dracut()
    install_tree(tmp_path / "dest")
    helper = tmp_path / "dest/usr/lib/dracut/modules.d/90sysextpy/python-closure.py"
    text = helper.read_text()
    broken = text.replace(
        "        print(path)", '        if path.name != "subprocess.py":\n            print(path)'
    )
    assert broken != text
    helper.write_text(broken)
    image = tmp_path / "broken.img"
    build = build_image(tmp_path / "dest", image)
    assert build.returncode != 0
    assert "cannot be imported inside the initrd" in build.stdout + build.stderr
    assert not image.exists()
