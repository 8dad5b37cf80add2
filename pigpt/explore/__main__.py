import sys

from pigpt.explore import main

sys.exit(main())
