"""``python -m graphexec``: the command line (see `graphexec.cli`)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
