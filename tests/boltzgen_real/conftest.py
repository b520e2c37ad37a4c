"""The real BoltzGen 0.3.2 judges the simulator and the CPU stages (``make test-boltzgen``).

``BOLTZGEN_VENV`` is the venv ``make`` builds with torch's CPU build and ``boltzgen==0.3.2``. The
GPU stages run on the simulator (no GPU here); the readers, parsers, analysis and filtering that
judge them are BoltzGen's own, run from that venv. Two things stand in for what cannot be had here:
the molecule data ``mols.zip`` (``standin_moldir.py`` says how its stand-in differs) and, for real
``boltzgen configure`` only, the GPU's device capability (``oracle.py``).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
PROJECT = HERE.parents[1]
ORACLE = HERE / "oracle.py"
STANDIN_MOLDIR = PROJECT / "local" / "boltzgen_venv" / "standin_moldir.py"
CHECKPOINTS = (
    "boltzgen1_diverse.ckpt", "boltzgen1_adherence.ckpt", "boltzgen1_ifold.ckpt",
    "boltz2_conf_final.ckpt", "boltz2_aff.ckpt",
)  # fmt: skip


def _examples() -> Path:
    """BoltzGen's published example specs (shared/ beside the checkout, or BOLTZGEN_EXAMPLES)."""
    return Path(os.environ.get("BOLTZGEN_EXAMPLES") or PROJECT.parent / "shared" / "boltzgen-examples")


def _load_stage_harness() -> ModuleType:
    """The step-script test harness (tests/step_scripts/conftest.py), under a name of its own."""
    spec = importlib.util.spec_from_file_location(
        "stage_harness", PROJECT / "tests" / "step_scripts" / "conftest.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


harness = _load_stage_harness()


@pytest.fixture(scope="session")
def boltzgen_venv() -> Path:
    venv = os.environ.get("BOLTZGEN_VENV")
    if not venv or not (Path(venv) / "bin" / "boltzgen").is_file():
        pytest.fail("BOLTZGEN_VENV must name a venv with boltzgen 0.3.2: run `make test-boltzgen`")
    return Path(venv)


@pytest.fixture(scope="session")
def examples() -> Path:
    folder = _examples()
    if not (folder / "hard_targets" / "6m1uprot.yaml").is_file():
        pytest.fail(f"BoltzGen's example specs are not at {folder} (set BOLTZGEN_EXAMPLES)")
    return folder


@pytest.fixture(scope="session")
def oracle(boltzgen_venv: Path) -> Callable[..., Any]:
    """Run ``oracle.py COMMAND ARGS`` with the real BoltzGen; its JSON answer."""

    def run(*args: str, timeout: float = 600) -> Any:
        proc = subprocess.run(
            [str(boltzgen_venv / "bin" / "python"), str(ORACLE), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            env={**os.environ, "CUDA_VISIBLE_DEVICES": ""},
        )
        assert proc.returncode == 0, proc.stderr[-4000:]
        return json.loads(proc.stdout.strip().splitlines()[-1])

    return run


@pytest.fixture(scope="session")
def hub_cache(boltzgen_venv: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Hugging Face hub cache holding the stand-in ``mols.zip`` (what the processing image bakes in)."""
    cache = tmp_path_factory.mktemp("hf-cache")
    # Checkpoints: empty files; `configure` only resolves them, the GPU steps (simulated) would load them.
    models = cache / "models--boltzgen--boltzgen-1"
    (models / "refs").mkdir(parents=True)
    (models / "refs" / "main").write_text("standin")
    (models / "snapshots" / "standin").mkdir(parents=True)
    for name in CHECKPOINTS:
        (models / "snapshots" / "standin" / name).touch()
    subprocess.run(
        [str(boltzgen_venv / "bin" / "python"), str(STANDIN_MOLDIR), str(cache)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    return cache


@pytest.fixture(scope="session")
def moldir(hub_cache: Path) -> Path:
    return next(hub_cache.rglob("mols.zip"))


@pytest.fixture(scope="session")
def shim_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("shim")
    harness.install_shim(folder)
    return folder


@pytest.fixture
def runner(tmp_path: Path, shim_dir: Path) -> Any:
    specs = tmp_path / "specs"
    specs.mkdir()
    return harness.Runner(tmp_path / "jobs", shim_dir, specs)
