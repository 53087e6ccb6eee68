# SPDX-License-Identifier: LGPL-2.1-or-later
"""The built-in example: a small Debian-like root with a dozen extensions covering every verdict.

Used by the tests and by `make demo`. Run as a script to build one: `python3 tests/sample_root.py DIR`.
Every image name says what it demonstrates.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

HOST_OS_RELEASE = 'ID=debian\nVERSION_ID="12"\nPRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\n'


def write(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    os.chmod(path, mode)


def make_sysext(base: Path, name: str, release: str, files: dict[str, str] | None = None) -> Path:
    """A directory sysext `base` whose release file is named after `name`."""
    write(base / "usr/lib/extension-release.d" / f"extension-release.{name}", release)
    for rel, text in (files or {}).items():
        write(base / rel, text, 0o755 if rel.startswith(("usr/bin/", "opt/bin/")) else 0o644)
    return base


def make_confext(base: Path, name: str, release: str, files: dict[str, str] | None = None) -> Path:
    write(base / "etc/extension-release.d" / f"extension-release.{name}", release)
    for rel, text in (files or {}).items():
        write(base / rel, text)
    return base


def script(text: str) -> str:
    return f"#!/bin/sh\necho {text}\n"


def build_sample_root(root: Path, *, broken: bool = True, raw: bool = True) -> Path:
    """Build the example root at `root` (created; must not exist or be empty). Returns root."""
    root.mkdir(parents=True, exist_ok=True)
    for d in ("usr/bin", "usr/share/doc", "usr/lib", "opt", "etc", "var/lib", "run"):
        (root / d).mkdir(parents=True, exist_ok=True)
    write(root / "etc/os-release", HOST_OS_RELEASE)
    write(root / "usr/lib/os-release", HOST_OS_RELEASE)
    write(root / "etc/hostname", "sample\n")
    write(root / "usr/bin/base-tool", script("base"), 0o755)

    ext = root / "var/lib/extensions"
    deb12 = "ID=debian\nVERSION_ID=12\n"

    # 1. compatible directory sysext contributing to /usr and /opt
    make_sysext(
        ext / "tools",
        "tools",
        deb12 + "EXTENSION_RELOAD_MANAGER=1\n",
        {"usr/bin/hello-tools": script("hello from tools"), "opt/tools/README": "tools in /opt\n"},
    )
    # 2. ID=_any matches every host
    make_sysext(ext / "anyext", "anyext", "ID=_any\n", {"usr/share/anyext/data": "any\n"})
    # 3. another distribution
    make_sysext(ext / "fedora-only", "fedora-only", "ID=fedora\nVERSION_ID=41\n", {"usr/bin/fed": "x\n"})
    # 4. another Debian release
    make_sysext(ext / "old-debian", "old-debian", "ID=debian\nVERSION_ID=11\n", {"usr/bin/old": "x\n"})
    # 5. another architecture
    make_sysext(ext / "arm-only", "arm-only", deb12 + "ARCHITECTURE=arm64\n", {"usr/bin/arm": "x\n"})
    # 6. shadowing: /etc/extensions wins over /var/lib/extensions
    make_sysext(root / "etc/extensions/shadowed", "shadowed", deb12, {"usr/share/shadowed/from": "etc\n"})
    make_sysext(ext / "shadowed", "shadowed", deb12, {"usr/share/shadowed/from": "var\n"})
    # 7. masking: an empty directory in a higher-precedence directory hides the image
    (root / "etc/extensions/masked").mkdir(parents=True)
    make_sysext(ext / "masked", "masked", deb12, {"usr/bin/masked": "x\n"})
    # 8. versioned: editor.v/ holds three versions; 1.2 wins (2.0 is for arm64 only)
    for version in ("1.0", "1.2"):
        make_sysext(
            ext / "editor.v" / f"editor_{version}",
            "editor",
            deb12,
            {"usr/bin/editor": script(f"editor {version}")},
        )
    make_sysext(ext / "editor.v" / "editor_2.0_arm64", "editor", deb12, {"usr/bin/editor": "arm\n"})
    # 9. invalid entries: a lock file and a file without .raw
    write(ext / ".#tools.lck.raw", "")
    write(ext / "notes.txt", "not an image\n")
    # 10. a dangling link
    (ext / "gone.raw").symlink_to("/srv/images/gone.raw")
    # 11. an absolute link, resolved inside the root (never the host's /srv)
    make_sysext(root / "srv/store/linked", "linked", deb12, {"usr/share/linked/data": "linked\n"})
    (ext / "linked").symlink_to("/srv/store/linked")
    # 12. release file named for another image
    make_sysext(ext / "misnamed", "misnamed-1.2", deb12, {"usr/bin/misnamed": "x\n"})
    if broken:
        # 13. an OS tree, not an extension: rejected
        make_sysext(ext / "osimage", "osimage", deb12, {"usr/lib/os-release": HOST_OS_RELEASE})
        # 14. an empty raw image: rejected
        write(ext / "empty.raw", "")

    # confexts
    make_confext(root / "run/confexts/motd", "motd", deb12, {"etc/motd": "Hello from a confext\n"})
    make_confext(
        root / "var/lib/confexts/initrd-only",
        "initrd-only",
        deb12 + "CONFEXT_SCOPE=initrd\n",
        {"etc/initrd-only.conf": "x\n"},
    )

    if raw and shutil.which("mksquashfs"):
        src = root.parent / f".{root.name}-squash-src"
        make_sysext(src, "squashy", deb12, {"usr/bin/squashy": script("hello from squashfs")})
        image = ext / "squashy.raw"
        subprocess.run(
            ["mksquashfs", str(src), str(image), "-quiet", "-no-progress", "-noappend", "-all-root"],
            check=True,
            stdin=subprocess.DEVNULL,
        )
        shutil.rmtree(src)
    return root


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: sample_root.py DIR")
    build_sample_root(Path(sys.argv[1]))
