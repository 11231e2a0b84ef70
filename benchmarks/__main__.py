"""``python -m benchmarks [--quick] [--out DIR] ...``: see :mod:`benchmarks`."""

import sys

from benchmarks.cli import main

sys.exit(main())
