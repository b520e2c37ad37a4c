"""The demo's end summary, read from final metrics CSVs the BoltzGen simulator writes."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

from boltzgen_demo.summary import (
    CacheUse,
    cache_use,
    find_final_designs,
    format_cache_use,
    format_top_designs,
)

PROJECT = Path(__file__).resolve().parents[2]
SPEC = PROJECT / "include/specs/vanilla_protein/1g13prot.yaml"
KEY_METRICS = ("design_to_target_iptm", "design_ptm", "min_design_to_target_pae", "filter_rmsd")


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run's ``results/`` folder holding one spec, filtered by the simulator (a GPU host it pretends)."""
    root = tmp_path_factory.mktemp("results")
    out = root / "vanilla_protein" / "1g13prot"
    subprocess.run(
        [sys.executable, "-m", "boltzgen_sim", "run", str(SPEC), "--output", str(out),
         "--protocol", "protein-anything", "--num_designs", "4", "--budget", "2"],
        env={**os.environ, "BOLTZGEN_SIM_GPUS": "1"},
        check=True,
        capture_output=True,
        timeout=300,
    )  # fmt: skip
    return root


def test_final_designs_are_found_per_spec_in_rank_order(results: Path) -> None:
    specs = find_final_designs(results)
    assert [s.spec for s in specs] == ["vanilla_protein/1g13prot"]
    rows = specs[0].rows
    assert len(rows) == 2
    assert [int(r["final_rank"]) for r in rows] == [1, 2]
    assert all(r["id"].startswith("1g13prot_") for r in rows)


def test_top_designs_table_shows_ids_and_metrics_of_the_csv(results: Path) -> None:
    spec = find_final_designs(results)[0]
    with spec.csv_path.open(newline="") as handle:
        best = min(csv.DictReader(handle), key=lambda r: int(r["final_rank"]))
    table = format_top_designs([spec], top=1)
    lines = table.splitlines()
    assert lines[0] == "vanilla_protein/1g13prot  (2 final designs)"
    assert "iptm(d-t)" in lines[1] and "filter rmsd" in lines[1]
    assert len(lines) == 3  # only the top design
    cells = lines[2].split()
    assert cells[:2] == ["1", best["id"]]
    assert cells[2:] == [f"{float(best[m]):.3f}" for m in KEY_METRICS]


def test_missing_metrics_show_as_dash(tmp_path: Path) -> None:
    folder = tmp_path / "spec" / "final_ranked_designs"
    folder.mkdir(parents=True)
    (folder / "final_designs_metrics_1.csv").write_text("id,final_rank,design_ptm\nspec_0,1,nan\n")
    table = format_top_designs(find_final_designs(tmp_path))
    assert table.splitlines()[-1].split() == ["1", "spec_0", "-", "-", "-", "-"]


def test_no_results_say_so(tmp_path: Path) -> None:
    assert format_top_designs(find_final_designs(tmp_path)) == "no final designs found"


def _manifest(statuses: list[str]) -> dict[str, object]:
    shards = [{"shard": f"s{i:04d}", "stages": {"design": {"status": s}}} for i, s in enumerate(statuses)]
    return {"shards": shards}


def test_cache_use_counts_shard_stages_by_how_they_were_satisfied() -> None:
    use = cache_use(_manifest(["cached", "committed", "cached", "failed", "skipped"]))
    assert use == CacheUse(ran=1, cached=2, failed=1)
    assert format_cache_use(use) == "2 of 4 shard stages were cache hits, 1 ran as SageMaker jobs, 1 failed"


def test_a_fully_cached_run_says_no_job_ran() -> None:
    text = format_cache_use(cache_use(_manifest(["cached"] * 36)))
    assert text.startswith("36 of 36 shard stages were cache hits") and "no job ran" in text
