"""`python -m sysextpy` and the `sysextpy` console script."""

from __future__ import annotations

import sys


def main() -> int:
    import os

    from .quick import main as quick_main

    # A refresh that only has to confirm the initrd's merge is done without the rest of the package.
    status = quick_main(sys.argv[1:], sys.argv[0] if sys.argv else "sysextpy", os.environ)
    if status is not None:
        return status
    from .cli import main as cli_main

    return cli_main()


if __name__ == "__main__":
    sys.exit(main())
