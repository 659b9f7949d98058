import sys

from .cli import main

if __name__ == "__main__":  # not when a spawned grading worker imports this module
    sys.exit(main())
