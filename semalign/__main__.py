"""``python -m semalign``: the same entry point as the ``semalign`` console script."""

import sys

from semalign.cli import main

sys.exit(main())
