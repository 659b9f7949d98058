"""`python -m trl_justrl <command>`: the `trl-justrl` command (trl_justrl.cli)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
