"""python -m pigpt.explore: the same as pigpt-explore."""

import sys

from pigpt.explore import main

if __name__ == "__main__":  # importing the module (e.g. walking the package) starts nothing
    sys.exit(main())
