"""``python -m rllmtop`` = the ``rllmtop`` command."""

import sys

from rllmtop.cli import main

sys.exit(main())
