"""`python -m sim ...`: the same as `archipelago simulate ...`."""

import sys

from sim.run import main

sys.exit(main(sys.argv[1:]))
