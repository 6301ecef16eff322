"""`python -m bgeort COMMAND ...`: the same as the `bgeort` command (bgeort/cli)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
