"""`python -m trl_justrl.plot`: an alias of the dynamics plot, `trl_justrl.reporting.plot` (see there)."""

import sys

from .reporting.plot import main

if __name__ == "__main__":
    sys.exit(main())
