"""A `boltzgen` 0.3.2 command-line double: same arguments, same output layout, simulated numbers."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

__version__ = "0.3.2"

__all__ = ["__version__", "install_shim"]


def install_shim(folder: Path | str, python: str | None = None) -> Path:
    """Write an executable ``boltzgen`` into ``folder`` that runs the simulator.

    Put ``folder`` first on PATH and every ``boltzgen ...`` call reaches the simulator.

    :param folder: where to write the script (created if missing).
    :param python: interpreter that can import ``boltzgen_sim``; defaults to this one.
    :return: the path of the script.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    interpreter = python or sys.executable
    package_root = str(Path(__file__).resolve().parent.parent)
    script = folder / "boltzgen"
    script.write_text(
        "#!/bin/sh\n"
        "# boltzgen-sim: simulated BoltzGen (see `boltzgen --help`).\n"
        f"PYTHONPATH={shlex.quote(package_root)}${{PYTHONPATH:+:$PYTHONPATH}} "
        f'exec {shlex.quote(interpreter)} -m boltzgen_sim "$@"\n'
    )
    script.chmod(0o755)
    return script
