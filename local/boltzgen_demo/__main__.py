"""``python -m boltzgen_demo``."""

from __future__ import annotations

import sys

from boltzgen_demo.cli import main

sys.exit(main())
