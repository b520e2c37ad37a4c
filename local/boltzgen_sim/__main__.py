"""``python -m boltzgen_sim`` runs the simulated ``boltzgen`` CLI."""

from __future__ import annotations

import sys

from boltzgen_sim.cli import main

sys.exit(main())
