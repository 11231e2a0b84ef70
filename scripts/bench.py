"""Kept for old command lines: ``python scripts/bench.py ARGS`` runs ``python -m benchmarks ARGS``."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import main

sys.exit(main())
