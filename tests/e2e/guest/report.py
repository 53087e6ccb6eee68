#!/usr/bin/python3 -I
# SPDX-License-Identifier: LGPL-2.1-or-later
"""Guest side of the end-to-end tests: collect what happened during this boot and send it home.

Runs once the boot has settled (after multi-user.target, or when an emergency target was
reached). Writes a short human summary as `E2E-RESULT key=value` lines to the console and the
whole report as JSON between `E2E-JSON-BEGIN`/`E2E-JSON-END` lines to the results port
(/dev/ttyS1, which nothing else writes to; the console is used when that port is missing). The
unit that runs this powers the machine off afterwards, whatever happened here.

Python 3.9 compatible and stdlib only: it runs on the guest's own interpreter.
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
import termios
import time
import tty
from pathlib import Path
from typing import Any, Optional

CONFIG = Path("/usr/lib/sysextpy-e2e/report.json")
PROBE_DIR = Path("/run/sysextpy-e2e")
CONSOLE = "/dev/ttyS0"
RESULTS_PORT = "/dev/ttyS1"

# systemd's catalogue ids for job start/finish/failure messages (sd-messages.h).
MSG_UNIT_STARTING = "7d4958e842da4a758f6c1cdc7b36dcc5"
MSG_UNIT_STARTED = "39f53479d3a045ac8e11786248231fbf"
MSG_UNIT_FAILED = "be02cf6855d2428ba40df7e9d022f03d"
MSG_UNIT_RESULT = "1f4e0a44a88649939aaea34fc6da8c95"

MANAGER_PROPERTIES = (
    "Version",
    "FirmwareTimestampMonotonic",
    "LoaderTimestampMonotonic",
    "KernelTimestampMonotonic",
    "InitRDTimestampMonotonic",
    "UserspaceTimestampMonotonic",
    "FinishTimestampMonotonic",
    "GeneratorsStartTimestampMonotonic",
    "GeneratorsFinishTimestampMonotonic",
    "UnitsLoadStartTimestampMonotonic",
    "UnitsLoadFinishTimestampMonotonic",
    "InitRDGeneratorsStartTimestampMonotonic",
    "InitRDGeneratorsFinishTimestampMonotonic",
    "InitRDUnitsLoadStartTimestampMonotonic",
    "InitRDUnitsLoadFinishTimestampMonotonic",
    "SystemState",
)
UNIT_PROPERTIES = (
    "Id",
    "LoadState",
    "ActiveState",
    "SubState",
    "Result",
    "UnitFileState",
    "FragmentPath",
    "DropInPaths",
    "ExecMainStatus",
    "ExecMainCode",
    "InactiveExitTimestampMonotonic",
    "ActiveEnterTimestampMonotonic",
    "ExecMainStartTimestampMonotonic",
    "ExecMainExitTimestampMonotonic",
    "ConditionResult",
    "ConditionTimestampMonotonic",
    "NeedDaemonReload",
    "Environment",
)
# Units always reported on, besides those named in the configuration.
DEFAULT_UNIT_PATTERNS = (
    "sysextpy*",
    "systemd-sysext*",
    "systemd-confext*",
    "sysextpy-e2e*",
    "e2e-*",
    "multi-user.target",
    "emergency.target",
    "rescue.target",
)


def run(argv: list[str], timeout: float = 60) -> dict[str, Any]:
    started = time.monotonic()
    try:
        proc = subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=timeout,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        return {"argv": argv, "error": str(e), "returncode": None, "stdout": "", "stderr": ""}
    return {
        "argv": argv,
        "returncode": proc.returncode,
        "stdout": proc.stdout,
        "stderr": proc.stderr,
        "seconds": round(time.monotonic() - started, 3),
    }


def parse_show(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            out[key] = value
    return out


def load_config() -> dict[str, Any]:
    try:
        data = json.loads(CONFIG.read_text())
    except (OSError, ValueError) as e:
        return {"error": str(e)}
    return data if isinstance(data, dict) else {"error": "not a JSON object"}


def wait_for_probes(config: dict[str, Any]) -> None:
    """Tell long-running probes to stop, and give them a moment to write their results."""
    expected = [str(p) for p in config.get("wait_for", [])]
    if not expected:
        return
    PROBE_DIR.mkdir(parents=True, exist_ok=True)
    (PROBE_DIR / "stop").write_text("stop\n")
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not all((PROBE_DIR / name).exists() for name in expected):
        time.sleep(0.1)


def collect_probes() -> dict[str, Any]:
    probes: dict[str, Any] = {}
    if not PROBE_DIR.is_dir():
        return probes
    for path in sorted(PROBE_DIR.iterdir()):
        if not path.is_file():
            continue
        text = path.read_text(errors="replace")
        if path.suffix == ".json":
            try:
                probes[path.name] = json.loads(text)
                continue
            except ValueError:
                pass
        probes[path.name] = text
    return probes


def describe_path(path: str) -> dict[str, Any]:
    entry: dict[str, Any] = {"path": path}
    try:
        st = os.lstat(path)
    except OSError as e:
        entry["error"] = e.strerror
        return entry
    entry["mode"] = oct(st.st_mode)
    entry["dev"] = st.st_dev
    entry["ino"] = st.st_ino
    if os.path.islink(path):
        entry["link"] = os.readlink(path)
    elif os.path.isdir(path):
        entry["entries"] = sorted(os.listdir(path))
    elif os.path.isfile(path) and st.st_size <= 65536:
        data = Path(path).read_bytes()
        try:
            entry["text"] = data.decode()
        except UnicodeDecodeError:
            entry["base64"] = base64.b64encode(data).decode()
    return entry


def parse_mountinfo() -> list[dict[str, Any]]:
    mounts = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        pre, _, post = line.partition(" - ")
        fields = pre.split()
        fstype, source, super_options = (post.split() + ["", "", ""])[:3]
        mounts.append(
            {
                "id": int(fields[0]),
                "parent": int(fields[1]),
                "root": fields[3],
                "mountPoint": fields[4].encode().decode("unicode_escape"),
                "options": fields[5],
                "fstype": fstype,
                "source": source,
                "superOptions": super_options,
            }
        )
    return mounts


def device_mapper_devices() -> list[dict[str, str]]:
    """The device-mapper devices with their names and uuids (veritysetup's start `CRYPT-VERITY-`).
    The image mounts themselves live in sysextpy's private namespace and never show up in
    mountinfo; the dm device they sit on does."""
    devices = []
    for dm in sorted(Path("/sys/block").glob("dm-*")):
        entry = {"device": dm.name}
        for key in ("name", "uuid"):
            try:
                entry[key] = (dm / "dm" / key).read_text().strip()
            except OSError:
                entry[key] = ""
        devices.append(entry)
    return devices


def read_journal() -> tuple[list[dict[str, Any]], str]:
    """This boot's journal, the initrd's part included (the initrd is told the root's machine id on
    the kernel command line, so both write to the same journal directory)."""
    entries = []
    proc = run(["journalctl", "-b", "-o", "json", "--no-pager"], timeout=120)
    for line in proc["stdout"].splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict):
            entries.append(entry)
    text = run(["journalctl", "-b", "-o", "short-monotonic", "--no-pager"], timeout=120)
    return entries, text["stdout"] + text["stderr"]


def _message(entry: dict[str, Any]) -> str:
    message = entry.get("MESSAGE", "")
    if isinstance(message, list):  # journald hands out binary messages as byte arrays
        return bytes(message).decode(errors="replace")
    return str(message)


def unit_phases(entries: list[dict[str, Any]], units: set[str]) -> dict[str, Any]:
    """Start/finish times of unit jobs, from PID 1's messages (initrd and real root alike)."""
    phases: dict[str, Any] = {}
    for entry in entries:
        unit = entry.get("UNIT")
        if unit not in units or entry.get("_PID") != "1":
            continue
        usec = int(entry.get("__MONOTONIC_TIMESTAMP", "0"))
        item = phases.setdefault(unit, {"runs": []})
        message_id = entry.get("MESSAGE_ID")
        if message_id == MSG_UNIT_STARTING:
            item["runs"].append({"startUsec": usec})
        elif message_id in (MSG_UNIT_STARTED, MSG_UNIT_FAILED) and item["runs"]:
            run_ = item["runs"][-1]
            run_["endUsec"] = usec
            run_["result"] = entry.get("JOB_RESULT", "done" if message_id == MSG_UNIT_STARTED else "failed")
            run_["ms"] = round((usec - run_["startUsec"]) / 1000, 1)
    return phases


def job_timeline(entries: list[dict[str, Any]], units: set[str]) -> dict[str, list[dict[str, Any]]]:
    """Every message PID 1 logged about one of `units` (initrd and real root alike), in journal
    order: its time, its kind (starting, done, failed, or "" for anything else: a skipped
    condition, a mount's own message) and its text. Unlike unit_phases, a job without a
    "Starting" message (targets, jobs of skipped units) still shows."""
    kinds = {MSG_UNIT_STARTING: "starting", MSG_UNIT_STARTED: "done", MSG_UNIT_FAILED: "failed"}
    out: dict[str, list[dict[str, Any]]] = {}
    for entry in entries:
        unit = entry.get("UNIT")
        if unit not in units or entry.get("_PID") != "1":
            continue
        out.setdefault(unit, []).append(
            {
                "usec": int(entry.get("__MONOTONIC_TIMESTAMP", "0")),
                "kind": kinds.get(str(entry.get("MESSAGE_ID", "")), ""),
                "result": entry.get("JOB_RESULT", ""),
                "message": _message(entry),
            }
        )
    return out


def reload_messages(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for entry in entries:
        if entry.get("_PID") != "1":
            continue
        message = _message(entry)
        if re.match(r"Reload", message):
            out.append({"usec": int(entry.get("__MONOTONIC_TIMESTAMP", "0")), "message": message})
    return out


def relevant_journal(entries: list[dict[str, Any]]) -> list[str]:
    """Journal lines that concern sysextpy (its units, its own messages, extension units)."""
    out = []
    for entry in entries:
        fields = " ".join(
            str(entry.get(k, "")) for k in ("_SYSTEMD_UNIT", "UNIT", "SYSLOG_IDENTIFIER", "_COMM")
        )
        message = _message(entry)
        if "sysext" in fields or "confext" in fields or "sysext" in message or "confext" in message:
            usec = int(entry.get("__MONOTONIC_TIMESTAMP", "0"))
            ident = entry.get("SYSLOG_IDENTIFIER", entry.get("_COMM", "?"))
            unit = entry.get("_SYSTEMD_UNIT", "")
            unit = f" {unit}" if unit and entry.get("_PID") != "1" else ""
            out.append(f"[{usec / 1e6:12.6f}] {ident}[{entry.get('_PID', '?')}]{unit}: {message}")
    return out


def list_units(patterns: list[str]) -> list[str]:
    proc = run(["systemctl", "list-units", "--all", "--plain", "--no-legend", "--no-pager", *patterns])
    names = {line.split()[0] for line in proc["stdout"].splitlines() if line.split()}
    proc = run(["systemctl", "list-unit-files", "--plain", "--no-legend", "--no-pager", *patterns])
    names |= {line.split()[0] for line in proc["stdout"].splitlines() if line.split()}
    return sorted(n for n in names if "@." not in n)


def show_units(names: list[str]) -> dict[str, dict[str, str]]:
    if not names:
        return {}
    proc = run(["systemctl", "show", "--no-pager", "-p", ",".join(UNIT_PROPERTIES), *names])
    units: dict[str, dict[str, str]] = {}
    for block in proc["stdout"].split("\n\n"):
        props = parse_show(block)
        if "Id" in props:
            units[props["Id"]] = props
    return units


def read_state() -> Any:
    path = Path("/run/sysextpy/state.json")
    try:
        text = path.read_text()
    except OSError as e:
        return {"missing": e.strerror}
    try:
        return json.loads(text)
    except ValueError:
        return {"unparsable": text}


def build_report(config: dict[str, Any]) -> dict[str, Any]:
    wait_for_probes(config)
    entries, journal_text = read_journal()
    patterns = list(DEFAULT_UNIT_PATTERNS) + [str(p) for p in config.get("units", [])]
    units = show_units(list_units(patterns))
    phase_units = set(units) | {"sysextpy-sysroot.service", "sysextpy.service"}
    commands = {"status": ["sysextpy", "status", "--json=short"]}
    commands.update({str(k): [str(a) for a in v] for k, v in config.get("commands", {}).items()})
    manager = parse_show(
        run(["systemctl", "show", "--no-pager", "-p", ",".join(MANAGER_PROPERTIES)])["stdout"]
    )
    return {
        "schema": 1,
        "config": config,
        "uname": os.uname().release,
        "cmdline": Path("/proc/cmdline").read_text().strip(),
        "python": sys.version.split()[0],
        "monotonicUsec": time.monotonic_ns() // 1000,
        "manager": manager,
        "systemState": run(["systemctl", "is-system-running"])["stdout"].strip(),
        "failedUnits": run(["systemctl", "list-units", "--failed", "--plain", "--no-legend", "--no-pager"])[
            "stdout"
        ].splitlines(),
        "units": units,
        "phases": unit_phases(entries, phase_units),
        "reloads": reload_messages(entries),
        "timeline": job_timeline(entries, {str(u) for u in config.get("timeline", [])}),
        "state": read_state(),
        "commands": {name: run(argv) for name, argv in commands.items()},
        "paths": {p: describe_path(p) for p in [str(p) for p in config.get("paths", [])]},
        "mounts": parse_mountinfo(),
        "dm": device_mapper_devices(),
        "probes": collect_probes(),
        "sysextpyJournal": relevant_journal(entries),
        "journal": journal_text,
    }


def summary(report: dict[str, Any]) -> list[tuple[str, str]]:
    units = report.get("units", {})
    reached = "none"
    for target in ("multi-user.target", "emergency.target", "rescue.target"):
        if units.get(target, {}).get("ActiveState") == "active":
            reached = target
            break
    lines = [("reached", reached), ("failed", ",".join(x.split()[0] for x in report.get("failedUnits", [])))]
    state = report.get("state")
    if isinstance(state, dict) and "phase" in state:
        lines.append(("state_phase", str(state["phase"])))
    for name, phase in sorted(report.get("phases", {}).items()):
        done = [str(r["ms"]) for r in phase["runs"] if "ms" in r]
        if name.startswith("sysextpy") and done:
            lines.append((f"ms.{name}", ",".join(done)))
    lines.append(("reloads", str(len(report.get("reloads", [])))))
    return lines


def open_port(path: str) -> Optional[int]:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        tty.setraw(fd)  # no newline translation: the host reads exactly what was written
    except termios.error:
        pass  # not a terminal (a file when run by hand): raw bytes are what we want anyway
    return fd


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def main() -> int:
    config = load_config()
    try:
        report = build_report(config)
    except Exception as e:  # the host must hear about it rather than time out waiting
        report = {"schema": 1, "reportError": f"{type(e).__name__}: {e}"}
    blob = json.dumps(report, sort_keys=True).encode()
    console = open_port(CONSOLE)
    results = open_port(RESULTS_PORT)
    if console is not None:
        text = "".join(f"E2E-RESULT {k}={v}\n" for k, v in summary(report))
        if "reportError" in report:
            text += f"E2E-RESULT report_error={report['reportError']}\n"
        text += f"E2E-RESULT json_bytes={len(blob)}\n"
        write_all(console, ("\n" + text).encode())
    target = results if results is not None else console
    if target is not None:
        write_all(target, b"\nE2E-JSON-BEGIN\n" + blob + b"\nE2E-JSON-END\n")
    for fd in (console, results):
        if fd is None:
            continue
        try:
            termios.tcdrain(fd)  # the power goes off right after us: let the UART empty first
        except termios.error:
            pass  # not a terminal
    return 0


if __name__ == "__main__":
    sys.exit(main())
