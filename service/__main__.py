"""`python -m service`: the same command line as `tlink-push`."""

from __future__ import annotations

import sys

from service.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
