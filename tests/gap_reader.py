# SPDX-License-Identifier: LGPL-2.1-or-later
"""Open files over and over until a stop file appears; print "<opens> <failures>".

Used by `make demo` and the refresh tests to show that a swap never leaves /etc or /usr
missing: `python3 gap_reader.py FILE... STOPFILE`.
"""

import os
import sys


def main() -> None:
    paths, stop = sys.argv[1:-1], sys.argv[-1]
    reads = misses = 0
    while not os.path.exists(stop):
        for p in paths:
            reads += 1
            try:
                with open(p, "rb") as f:
                    f.read(16)
            except OSError:
                misses += 1
    print(reads, misses)


if __name__ == "__main__":
    main()
