"""`python -m trl_justrl.plan`: an alias of the cluster planner, `trl_justrl.cluster.plan` (see there)."""

import sys

from .cluster.plan import main

if __name__ == "__main__":
    sys.exit(main())
