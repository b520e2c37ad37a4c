"""The analysis stage as a SageMaker job runs it, with the real BoltzGen, over simulated folding output.

Design, inverse folding and folding of BoltzGen's example spec ``hard_targets/6m1uprot.yaml`` run on
the simulator; then the analysis job runs twice over the same folding result, CPU only: once with
the real ``boltzgen`` 0.3.2 first on PATH (BoltzGen's Analyze reads the design CIFs, the folding
npz and the refolded CIFs and computes every metric itself), once with the simulator. Real analysis
must score every design, with finite values for what filtering ranks and filters on, and compute
from the simulator's files the same refolding RMSDs (its own superposition over its own atom
masks) and take the same best-sample confidences as the simulated analysis.

Two protocols, chosen for what the others do not cover: peptide-anything (no design folding,
BoltzGen's peptide liabilities) and protein-small_molecule (design folding and affinity npz; the
simulator writes no ligand, so the spec stays protein-only for the stand-in molecule data). The
third, protein-anything, runs on the real package in the mixed-engine test.
"""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from conftest import harness

pytestmark = pytest.mark.boltzgen

SPEC = "b0/6m1uprot.yaml"
PROTOCOLS = {"peptide-anything": 1, "protein-small_molecule": 1}
#: Metrics computed from the same arrays by both: equal to the simulator's analysis.
COMPUTED_ALIKE = (
    "bb_rmsd", "bb_rmsd_design", "design_to_target_iptm", "design_ptm", "design_iptm", "iptm", "ptm",
    "min_design_to_target_pae", "min_interaction_pae", "num_design",
)  # fmt: skip


def _aggregate(stage: Any) -> pd.DataFrame:
    tables = [pd.read_csv(p) for p in stage.result.rglob("aggregate_metrics_analyze.csv")]
    assert len(tables) == 1, tables
    return tables[0].set_index("id").sort_index()


@pytest.mark.parametrize("protocol", sorted(PROTOCOLS))
def test_real_analysis_scores_the_simulators_folding_output(
    protocol: str, tmp_path: Path, shim_dir: Path, examples: Path, hub_cache: Path, boltzgen_venv: Path
) -> None:
    runner = harness.Runner(tmp_path / "jobs", shim_dir, tmp_path / "specs")
    (runner.specs_src / "b0").mkdir(parents=True)
    for name in ("6m1uprot.yaml", "6m1u.cif"):
        shutil.copy(examples / "hard_targets" / name, runner.specs_src / "b0" / name)
    env = {"HF_HUB_CACHE": str(hub_cache)}
    items = [harness.item(SPEC, 0, PROTOCOLS[protocol])]
    folded = runner.chain(items, protocol, until="folding", env=env)["folding"].result
    work = harness.work("analysis", items, protocol)
    real_path = f"{boltzgen_venv / 'bin'}{os.pathsep}{os.environ['PATH']}"
    real = runner.run(work, upstream=folded, env={**env, "PATH": real_path}, timeout=900)
    assert real.returncode == 0, real.message + real.stderr[-3000:]
    assert real.manifest["boltzgen_version"] == "0.3.2"
    sim = runner.run(work, upstream=folded, env=env)
    assert sim.returncode == 0, sim.message
    assert real.manifest["design_ids"] == sim.manifest["design_ids"]
    assert len(real.manifest["design_ids"]) == PROTOCOLS[protocol]

    real_table, sim_table = _aggregate(real), _aggregate(sim)
    assert list(real_table.index) == list(sim_table.index)
    # Every metric the simulator writes, real analysis computes too (from analysis.yaml's switches).
    extra = [c for c in sim_table.columns if c not in real_table.columns]
    assert not extra, extra
    if protocol == "protein-small_molecule":
        assert {"designfolding-bb_rmsd", "affinity_probability_binary1"} <= set(real_table.columns)
    numeric = [c for c in sim_table.columns if pd.api.types.is_numeric_dtype(sim_table[c])]
    assert len(numeric) > 30, numeric
    broken = {c: real_table[c].tolist() for c in numeric if not all(math.isfinite(v) for v in real_table[c])}
    assert not broken, broken
    alike = [c for c in (*COMPUTED_ALIKE, "designfolding-bb_rmsd") if c in sim_table]
    pd.testing.assert_frame_equal(real_table[alike], sim_table[alike], check_exact=False, rtol=1e-3)
    print(protocol, real_table[alike].to_dict("index"))
