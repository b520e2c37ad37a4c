"""The filtering stage as a SageMaker job runs it, with the real BoltzGen: the simulator's final designs.

Three shards of BoltzGen's example spec ``hard_targets/6m1uprot.yaml`` (target 6m1u chain A, a
protein-only spec: the stand-in molecule data holds the canonical residues only) go through
design, inverse folding (two sequences per backbone) and folding on the simulator, and analysis on
the simulator. The filtering job then runs twice over the same analysis results, CPU only: once
with the real ``boltzgen`` 0.3.2 first on PATH (``execute --steps analysis filtering``: real
analysis aggregates the union's metrics, real filtering ranks and selects), once with the
simulator. Both must select the same designs and write the same tables.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from conftest import harness

pytestmark = pytest.mark.boltzgen

SPEC = "b0/6m1uprot.yaml"
SHARDS = [(0, 3), (3, 3), (6, 3)]
VARIANTS = {
    "alpha0.9-override-filters-buckets": {
        "budget": 4, "alpha": 0.9, "metrics_override": {"design_ptm": 2.0, "plip_saltbridge_refolded": None},
        "additional_filters": ["design_iptm>0.2"], "size_buckets": "shorter half: 2",
    },
    "alpha0.5-rmsd-filter": {
        "budget": 4, "alpha": 0.5, "additional_filters": ["bb_rmsd<2.2"], "filter_biased": False,
    },
}  # fmt: skip


# Size buckets must leave enough designs for the budget: where every design falls in a full bucket,
# BoltzGen 0.3.2's lazy-greedy loop pops an empty heap (IndexError), and so does the simulator. So
# the bucket is made from the designs' lengths: at most 2 of the shorter half, the rest unbounded.


def _lengths(results: list[Path]) -> list[int]:
    tables = [pd.read_csv(p) for r in results for p in r.rglob("aggregate_metrics_analyze.csv")]
    return sorted(int(n) for t in tables for n in t["num_design"])


def _copy_spec(runner: Any, examples: Path) -> None:
    bundle = runner.specs_src / "b0"
    bundle.mkdir(parents=True, exist_ok=True)
    for name in ("6m1uprot.yaml", "6m1u.cif"):
        shutil.copy(examples / "hard_targets" / name, bundle / name)


@pytest.fixture(scope="module")
def shard_runs(
    tmp_path_factory: pytest.TempPathFactory, shim_dir: Path, examples: Path, hub_cache: Path
) -> tuple[Any, list[Path]]:
    """The analysis results of three shards, from simulated GPU stages with BoltzGen's data paths."""
    base = tmp_path_factory.mktemp("shards")
    runner = harness.Runner(base / "jobs", shim_dir, base / "specs")
    _copy_spec(runner, examples)
    env = {"HF_HUB_CACHE": str(hub_cache)}
    results = []
    for start, count in SHARDS:
        stages = runner.chain(
            [harness.item(SPEC, start, count)], env=env, boltzgen={"inverse_fold_num_sequences": 2}
        )
        results.append(stages["analysis"].result)
    return runner, results


def _filter(runner: Any, results: list[Path], real: Path | None, options: dict[str, Any], **env: str) -> Any:
    work = harness.work("filtering", [harness.item(SPEC, 0, 3)], filtering=options)
    if real is not None:
        env["PATH"] = f"{real / 'bin'}{os.pathsep}{os.environ['PATH']}"
    return runner.run(work, analysis=results, env=env, timeout=600)


def _tables(stage: Any, budget: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    final = stage.result / "final_ranked_designs"
    return pd.read_csv(final / "all_designs_metrics.csv"), pd.read_csv(
        final / f"final_designs_metrics_{budget}.csv"
    )


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_real_filtering_selects_the_simulators_designs(
    variant: str, shard_runs: tuple[Any, list[Path]], boltzgen_venv: Path, hub_cache: Path
) -> None:
    runner, results = shard_runs
    options = dict(VARIANTS[variant])
    lengths = _lengths(results)
    if options.get("size_buckets"):
        split = lengths[len(lengths) // 2]
        options["size_buckets"] = [f"{lengths[0]}-{split}:2"]
    real = _filter(runner, results, boltzgen_venv, options, HF_HUB_CACHE=str(hub_cache))
    assert real.returncode == 0, real.message + real.stderr[-3000:]
    assert real.manifest["boltzgen_version"] == "0.3.2"
    sim = _filter(runner, results, None, options)
    assert sim.returncode == 0, sim.message
    assert real.manifest["design_ids"] == sim.manifest["design_ids"]
    assert len(real.manifest["design_ids"]) == options["budget"]
    real_all, real_final = _tables(real, options["budget"])
    sim_all, sim_final = _tables(sim, options["budget"])
    assert len(real_all) == sum(c for _, c in SHARDS) * 2
    assert list(real_all.columns) == list(sim_all.columns)
    assert list(real_final.columns) == list(sim_final.columns)
    assert list(real_all["id"]) == list(sim_all["id"])  # the same ranking, not only the same picks
    pd.testing.assert_frame_equal(real_all, sim_all, check_exact=False, rtol=1e-4)
    if options.get("size_buckets"):
        assert (real_final["num_design"] < split).sum() <= 2
    print(variant, real.manifest["design_ids"])


def test_one_design_gives_a_nan_quality_score_and_is_selected(
    tmp_path: Path, shim_dir: Path, examples: Path, hub_cache: Path, boltzgen_venv: Path
) -> None:
    runner = harness.Runner(tmp_path / "jobs", shim_dir, tmp_path / "specs")
    _copy_spec(runner, examples)
    stages = runner.chain([harness.item(SPEC, 0, 1)], env={"HF_HUB_CACHE": str(hub_cache)})
    results = [stages["analysis"].result]
    real = _filter(runner, results, boltzgen_venv, {"budget": 2}, HF_HUB_CACHE=str(hub_cache))
    assert real.returncode == 0, real.message + real.stderr[-3000:]
    sim = _filter(runner, results, None, {"budget": 2})
    assert real.manifest["design_ids"] == sim.manifest["design_ids"] == ["6m1uprot_00"]
    assert real.manifest["designs_expected"] == 1 and real.manifest["shortfall"] == 0
    for stage in (real, sim):
        table, _ = _tables(stage, 2)
        assert table["quality_score"].isna().all()  # BoltzGen divides by len - 1 = 0


def test_cpu_stages_refuse_a_molecule_directory_they_cannot_see(
    tmp_path: Path, shim_dir: Path, examples: Path, boltzgen_venv: Path
) -> None:
    """The design stage resolves moldir in its own image; a CPU stage without it fails, naming it."""
    runner = harness.Runner(tmp_path / "jobs", shim_dir, tmp_path / "specs")
    _copy_spec(runner, examples)
    gone = tmp_path / "design-image-cache"
    stages = runner.chain([harness.item(SPEC, 0, 1)], env={"HF_HUB_CACHE": str(gone)})
    shutil.rmtree(gone)
    item_dir = next(p for p in stages["analysis"].result.iterdir() if (p / "config").is_dir())
    # What real BoltzGen does with such a config: its analysis fails loading the molecules.
    command = [str(boltzgen_venv / "bin" / "boltzgen"), "execute", str(item_dir), "--steps", "analysis"]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False, env=env)
    assert proc.returncode != 0 and "Invalid moldir" in proc.stdout + proc.stderr
    flt = _filter(runner, [stages["analysis"].result], boltzgen_venv, {"budget": 1})
    assert flt.returncode != 0
    assert "moldir" in flt.message and str(gone) in flt.message
    assert "analysis.yaml" in flt.message
