# SPDX-License-Identifier: LGPL-2.1-or-later
"""`python -m sysextpy` and the `sysextpy` console script."""

from __future__ import annotations

import sys


def main() -> int:
    from .cli import main as cli_main

    return cli_main()


if __name__ == "__main__":
    from .cli import run_as_process

    run_as_process()
    sys.exit(1)  # not reached: run_as_process() ends the process
