# SPDX-License-Identifier: LGPL-2.1-or-later
"""The main job, end to end, on the built-in example (`make demo`, as root).

Runs inside a private mount namespace (the Makefile starts it with `unshare -m`): a sample root
with a dozen extensions is merged the way the initrd does it, the refresh after switch-root
confirms and skips, a changed extension is swapped in atomically while a reader hammers /etc
and /usr, and `status` shows the result. Nothing outside the namespace is touched.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from sample_root import build_sample_root, make_confext  # noqa: E402

GAP_READER = str(Path(__file__).with_name("gap_reader.py"))


def banner(text: str) -> None:
    print(f"\n\033[1m== {text}\033[0m" if sys.stdout.isatty() else f"\n== {text}", flush=True)


def sysextpy(*args: str, quiet: bool = False) -> int:
    cmd = [sys.executable, "-m", "sysextpy", *args]
    print("$ sysextpy " + " ".join(args), flush=True)
    proc = subprocess.run(cmd, cwd=REPO, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    if proc.stdout:
        sys.stdout.write(proc.stdout)
    lines = proc.stderr.splitlines()
    if quiet:
        lines = [ln for ln in lines if not (": ignored (" in ln or ": rejected (" in ln)]
    for ln in lines:
        print(f"  | {ln}")
    print(f"  (exit status {proc.returncode})", flush=True)
    return proc.returncode


def mounts_below(root: Path) -> list[str]:
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        return [ln.rstrip() for ln in f if f" {root}/" in ln]


def main() -> int:
    if os.geteuid() != 0:
        print("make demo needs root (it mounts overlays in a private mount namespace)", file=sys.stderr)
        return 1
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        if any(" / / " in ln and "shared:" in ln for ln in f):
            print("refusing to run outside a private mount namespace; use `make demo`", file=sys.stderr)
            return 1
    subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=0755", "sysextpy-demo", "/run"], check=True)
    work = Path(tempfile.mkdtemp(prefix="sysextpy-demo-"))
    root = build_sample_root(work / "root")
    state = "--state=/run/sysextpy/state.json"

    banner("The example root and what would be merged (plan)")
    sysextpy(f"--root={root}", "plan")

    banner("Initrd: merge both classes into the root, as sysextpy-sysroot.service does")
    sysextpy(f"--root={root}", state, "refresh", quiet=True)
    print(f"  {root}/usr/bin: {' '.join(sorted(os.listdir(root / 'usr/bin')))}")
    print(f"  {root}/etc/motd: {(root / 'etc/motd').read_text().strip()}")

    banner("After switch-root: the refresh confirms the initrd's merge and skips")
    before = mounts_below(root)
    t0 = time.monotonic()
    sysextpy(f"--root={root}", state, "refresh", quiet=True)
    took = (time.monotonic() - t0) * 1000
    same = before == mounts_below(root)
    print(
        f"  mount table below the root unchanged: {same}; took {took:.0f} ms (including interpreter start)"
    )
    with open("/run/sysextpy/state.json", encoding="utf-8") as f:
        how = json.load(f).get("confirmedBy")
    print(f"  the record says it was confirmed by: {how} (the initrd run's, taken again)")

    banner("An extension changes: the refresh swaps the overlays atomically")
    tool = root / "var/lib/extensions/tools/usr/bin/hello-tools"
    tool.write_text("#!/bin/sh\necho hello from tools, version 2\n")
    make_confext(
        root / "run/confexts/banner", "banner", "ID=debian\nVERSION_ID=12\n", {"etc/banner": "new\n"}
    )
    stop = work / "stop-reader"
    reader = subprocess.Popen(
        [sys.executable, GAP_READER, str(root / "etc/motd"), str(root / "usr/bin/base-tool"), str(stop)],
        stdout=subprocess.PIPE,
        text=True,
    )
    time.sleep(0.2)
    sysextpy(f"--root={root}", state, "refresh", quiet=True)
    time.sleep(0.2)
    stop.touch()
    out, _ = reader.communicate(timeout=30)
    reads, misses = (int(x) for x in out.split())
    print(f"  a reader opened /etc/motd and /usr/bin/base-tool {reads} times during the swap,")
    print(f"  with {misses} failures")
    print(f"  {root}/usr/bin/hello-tools now says: {tool.read_text().splitlines()[-1]}")
    print(f"  {root}/etc/banner: {(root / 'etc/banner').read_text().strip()}")

    banner("status")
    sysextpy(f"--root={root}", "status")

    banner("Clean up")
    sysextpy(f"--root={root}", state, "unmerge")
    left = mounts_below(root)
    print(f"  mounts left below the root: {len(left)}")
    if not left:
        shutil.rmtree(work)
    return 0 if same and misses == 0 and not left else 1


if __name__ == "__main__":
    sys.exit(main())
