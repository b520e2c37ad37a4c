"""The mixed engine: the real BoltzGen package for the jobs on instance types without a GPU.

The GPU stages (design, inverse folding, folding) keep the simulator; analysis and filtering, which
SageMaker runs on CPU instances, get the real ``boltzgen`` of the BoltzGen venv (``make
boltzgen-venv``). Their molecule directory is the one the design stage's configs name, resolved in
the jobs' Hugging Face cache; where that cache has no ``mols.zip`` with molecules in it, a stand-in
is built there from biotite's CCD (``standin_moldir.py``: the 20 canonical residues only).
"""

from __future__ import annotations

import os
import subprocess
import zipfile
from pathlib import Path

#: Where ``make boltzgen-venv`` builds the venv, relative to the project root.
DEFAULT_VENV = Path(".boltzgen") / "venv"
# Runs in the BoltzGen venv (it imports boltzgen, rdkit and biotite), so it lives outside this package.
STANDIN_SCRIPT = Path(__file__).resolve().parents[1] / "boltzgen_venv" / "standin_moldir.py"
MOLDIR_FOLDER = "datasets--boltzgen--inference-data"


class RealBoltzGenError(RuntimeError):
    """The real BoltzGen cannot be given to the jobs: no venv, or no molecule directory."""


def project_root() -> Path:
    return Path(__file__).resolve().parents[2]


def find_venv(environ: dict[str, str] | None = None) -> Path:
    """
    The BoltzGen venv: ``BOLTZGEN_VENV`` or ``.boltzgen/venv`` at the project root.

    :param environ: the environment to read ``BOLTZGEN_VENV`` from (default ``os.environ``).
    :raises RealBoltzGenError: when it holds no ``boltzgen``, saying how to build it.
    """
    env = os.environ if environ is None else environ
    venv = Path(env.get("BOLTZGEN_VENV") or project_root() / DEFAULT_VENV).resolve()
    if not (venv / "bin" / "boltzgen").is_file():
        raise RealBoltzGenError(
            f"the mixed engine runs analysis and filtering with the real BoltzGen, but {venv} holds no "
            "bin/boltzgen: build it with `make boltzgen-venv` (torch's CPU build, then boltzgen 0.3.2; "
            "a few minutes) or set BOLTZGEN_VENV to a venv with boltzgen 0.3.2"
        )
    return venv


def install_cpu_shim(folder: Path, venv: Path) -> Path:
    """
    A folder holding only the venv's ``boltzgen``, to put first on the CPU jobs' PATH.

    Only the command is linked: the venv's ``python`` must not replace the one the step scripts run on.

    :param folder: the folder to fill.
    :param venv: the BoltzGen venv.
    """
    folder.mkdir(parents=True, exist_ok=True)
    link = folder / "boltzgen"
    link.unlink(missing_ok=True)
    link.symlink_to(venv / "bin" / "boltzgen")
    return folder


def _holds_molecules(cache: Path) -> bool:
    for path in (cache / MOLDIR_FOLDER / "snapshots").glob("*/mols.zip"):
        try:
            with zipfile.ZipFile(path) as archive:
                if archive.namelist():
                    return True
        except (OSError, zipfile.BadZipFile):
            continue
    return False


def ensure_moldir(cache: Path, venv: Path, timeout: float = 600) -> bool:
    """
    Give the hub cache ``cache`` a ``mols.zip`` BoltzGen can load; returns True when one was built.

    A cache that already holds one (the real download, or a stand-in built before) is left alone.

    :param cache: the Hugging Face hub cache the jobs use.
    :param venv: the BoltzGen venv whose Python builds the stand-in.
    :param timeout: seconds allowed for the build.
    """
    if _holds_molecules(cache):
        return False
    cache.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        [str(venv / "bin" / "python"), str(STANDIN_SCRIPT), str(cache)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if proc.returncode != 0:
        raise RealBoltzGenError(
            f"building the stand-in molecule directory in {cache} with {venv} failed: {proc.stderr[-2000:]}"
        )
    return True
