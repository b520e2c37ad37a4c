"""Run the stage scripts as SageMaker would, in a folder laid out like /opt/ml, with the simulator.

The GPU is the one boundary that cannot run here: ``BOLTZGEN_STEP_GPUS`` replaces ``nvidia-smi`` and
``BOLTZGEN_SIM_GPUS`` tells the simulator how many GPUs the host pretends to have. Everything else
(the scripts, the ``boltzgen`` command line, files between stages) is real.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from boltzgen_sim import install_shim

PROJECT_ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = PROJECT_ROOT / "include" / "step_scripts"
EXAMPLES = PROJECT_ROOT.parent / "shared" / "boltzgen-examples"
GPU_STAGES = {"design", "inverse_folding", "folding"}

SPEC_TEXT = """\
entities:
  - protein:
      id: B
      sequence: 12..20
  - protein:
      id: A
      sequence: MKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQAPILSRVGDGTQDNLSGAEKAVQVKVKALPDAQFEVVHSLAKWKRQTLGQ
"""
LIGAND_SPEC_TEXT = """\
entities:
  - protein:
      id: A
      sequence: 20..30
  - ligand:
      id: B
      ccd: RPB
"""


@dataclass
class Stage:
    """One finished stage run: its root, exit code, output and result folder."""

    root: Path
    returncode: int
    stderr: str

    @property
    def result(self) -> Path:
        return self.root / "processing" / "output" / "result"

    @property
    def manifest(self) -> dict[str, Any]:
        return json.loads((self.result / "_manifest.json").read_text())

    @property
    def message(self) -> str:
        path = self.root / "output" / "message"
        return path.read_text() if path.exists() else ""


@pytest.fixture(scope="session")
def shim_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("shim")
    install_shim(folder)
    return folder


def write_bundle(
    specs_root: Path, bundle: str = "b0", text: str = SPEC_TEXT, rel: str = "targets/pdlbinder.yaml"
) -> str:
    """Write a spec bundle as the specs input holds it; return the item ``spec`` value."""
    path = specs_root / bundle / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return f"{bundle}/{rel}"


def item(spec: str, start: int, count: int, width: int = 2, est: float = 10.0) -> dict[str, Any]:
    spec_name = spec.split("/", 1)[1]
    return {
        "spec": spec,
        "spec_name": spec_name,
        "start": start,
        "count": count,
        "width": width,
        "residues": 100,
        "est_seconds": est,
    }


def work(
    stage: str, items: list[dict[str, Any]], protocol: str = "protein-anything", **extra: Any
) -> dict[str, Any]:
    w: dict[str, Any] = {
        "schema": 1,
        "campaign": "c",
        "run_id": "r",
        "stage": stage,
        "shard": "s0000",
        "protocol": protocol,
        "items": items,
        "boltzgen": {
            "diffusion_batch_size": 2,
            "inverse_fold_num_sequences": 1,
            "skip_inverse_folding": False,
            "step_config": {},
        },
        "filtering": {
            "budget": 3,
            "alpha": None,
            "filter_biased": None,
            "metrics_override": {},
            "additional_filters": [],
            "size_buckets": [],
            "refolding_rmsd_threshold": None,
        },
        "max_runtime_seconds": 600,
    }
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(w.get(key), dict):
            w[key] = {**w[key], **value}
        else:
            w[key] = value
    return w


class Runner:
    """Lays out one job root per stage (roots differ, as with the emulator) and runs the script."""

    def __init__(self, base: Path, shim: Path, specs_src: Path) -> None:
        self.base = base
        self.shim = shim
        self.specs_src = specs_src
        self.counter = 0

    def run(
        self,
        w: dict[str, Any],
        *,
        upstream: Path | None = None,
        analysis: list[Path] | None = None,
        gpus: int | None = None,
        env: dict[str, str] | None = None,
        timeout: float = 120,
    ) -> Stage:
        self.counter += 1
        root = self.base / f"job{self.counter:02d}-{w['stage']}"
        inputs = root / "processing" / "input"
        (inputs / "work").mkdir(parents=True)
        (inputs / "work" / "work.json").write_text(json.dumps(w))
        shutil.copytree(self.specs_src, inputs / "specs")
        if upstream is not None:
            shutil.copytree(upstream, inputs / "upstream")
        for i, shard in enumerate(analysis or []):
            shutil.copytree(shard, inputs / "analysis" / f"key{i}" / "attempts" / f"job{i}")
        if gpus is None:
            gpus = 2 if w["stage"] in GPU_STAGES else 0
        full_env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("BOLTZGEN_", "CUDA_", "HF_"))},
            "PATH": f"{self.shim}{os.pathsep}{os.environ['PATH']}",
            "BOLTZGEN_STEP_ROOT": str(root),
            "BOLTZGEN_STEP_GPUS": f"{gpus}:NVIDIA A10G",
            "BOLTZGEN_SIM_GPUS": str(gpus),
            # One Hugging Face cache for every job, as baked into one processing image.
            "HF_HUB_CACHE": str(self.base / "hf-cache"),
            **(env or {}),
        }
        proc = subprocess.run(
            [sys.executable, str(SCRIPTS / f"{w['stage']}.py"), "--work", str(inputs / "work" / "work.json")],
            env=full_env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        return Stage(root, proc.returncode, proc.stderr)

    def chain(
        self,
        items: list[dict[str, Any]],
        protocol: str = "protein-anything",
        *,
        until: str = "analysis",
        env: dict[str, str] | None = None,
        **extra: Any,
    ) -> dict[str, Stage]:
        """design -> inverse_folding -> folding -> analysis, each from the previous result."""
        stages: dict[str, Stage] = {}
        upstream = None
        for name in ("design", "inverse_folding", "folding", "analysis"):
            stage = self.run(work(name, items, protocol, **extra), upstream=upstream, env=env)
            assert stage.returncode == 0, f"{name} failed: {stage.message}\n{stage.stderr[-3000:]}"
            stages[name] = stage
            upstream = stage.result
            if name == until:
                break
        return stages


@pytest.fixture
def specs_root(tmp_path: Path) -> Path:
    return tmp_path / "specs"


@pytest.fixture
def runner(tmp_path: Path, shim_dir: Path, specs_root: Path) -> Iterator[Runner]:
    specs_root.mkdir(exist_ok=True)
    yield Runner(tmp_path / "jobs", shim_dir, specs_root)
