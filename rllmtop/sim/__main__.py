"""``python -m rllmtop.sim serve|profiles``."""

import sys

from rllmtop.sim.cli import main

sys.exit(main())
