"""Each benchmark suite runs at its smoke size and writes JSON of the shape docs/benchmarks.md documents.

The suites run as ``benchmarks/run.py`` would run them under ``make bench`` (a subprocess each); the
figures of a smoke run mean nothing and are not checked, only that they are there and consistent.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

PROJECT = Path(__file__).resolve().parents[2]


def _run_suite(name: str, out: Path, engine: str = "local") -> dict[str, Any]:
    done = subprocess.run(
        [
            sys.executable,
            str(PROJECT / "benchmarks" / "run.py"),
            "--smoke",
            "--only",
            name,
            "--out",
            str(out),
            "--engine",
            engine,
        ],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"== {name} ==" in done.stdout
    file = name if engine == "local" else f"{name}_{engine}"
    document: dict[str, Any] = json.loads((out / f"{file}.json").read_text())
    assert set(document["machine"]) >= {"python", "cpus", "load_average", "measured_at"}
    return document


@pytest.mark.airflow
def test_parse_suite_writes_per_campaign_figures(tmp_path: Path) -> None:
    document = _run_suite("parse", tmp_path)
    assert document["campaigns"] == 2
    (case,) = document["cases"]
    assert case["dags"] == 2
    assert case["per_campaign_ms"] == pytest.approx(case["file_ms"] / 2, rel=0.01)
    assert document["per_campaign_ms"] == case["per_campaign_ms"]
    assert document["baseline_import_ms"] > 0
    assert isinstance(document["meets_target"], bool)


def test_planner_suite_compares_three_strategies(tmp_path: Path) -> None:
    document = _run_suite("planner", tmp_path)
    (row,) = document["scenarios"]
    assert row["name"] == "2x50" and row["preset"] == "small"
    for key in (
        "ours_makespan_hours",
        "ours_pooled_makespan_hours",
        "original_makespan_hours",
        "lower_bound_hours",
        "ours_cost_usd",
        "original_cost_usd",
    ):
        assert row[key] > 0, key
    # Nothing beats the bound: both schedules run inside the same pools.
    assert row["ours_pooled_makespan_hours"] >= row["lower_bound_hours"]
    assert row["original_makespan_hours"] >= row["lower_bound_hours"]
    assert row["ours_pooled_vs_lower_bound"] == pytest.approx(
        row["ours_pooled_makespan_hours"] / row["lower_bound_hours"], rel=0.01
    )
    # Each lever planned and list-scheduled by the benchmark ends where the planner's estimate says.
    for name, variant in row["variants"].items():
        assert variant["pooled_makespan_hours"] == pytest.approx(
            variant["estimate_makespan_hours"], abs=2e-3
        ), name
        assert variant["pooled_makespan_hours"] >= row["lower_bound_hours"], name


def test_plan_scale_suite_measures_xcom_of_plan_run(tmp_path: Path) -> None:
    document = _run_suite("plan_scale", tmp_path)
    assert document["designs"] == 200
    assert document["shards"] >= 1
    assert document["xcom_return_bytes"] > 0 and document["xcom_plan_info_bytes"] > 0
    assert document["xcom_total_bytes"] == document["xcom_return_bytes"] + document["xcom_plan_info_bytes"]
    # plan_run wrote a work.json per shard stage and publish_shards a descriptor per shard.
    assert document["s3_objects_written"] >= document["shards"] * 5
    # The map input holds references, not the descriptors every mapped task would pull.
    assert document["xcom_bytes_per_shard"] < 200 < document["largest_shard_descriptor_bytes"]
    assert document["shard_descriptors_bytes"] > document["xcom_return_bytes"]


# It starts a deployment of its own, as the scheduler suite does, and runs with it (on the
# deployment of ``--engine``).
@pytest.mark.stack
@pytest.mark.airflow
@pytest.mark.slow
@pytest.mark.scheduler
def test_orchestration_suite_runs_a_campaign_through_airflow_and_the_emulator(tmp_path: Path) -> None:
    document = _run_suite("orchestration", tmp_path, os.environ.get("BOLTZGEN_TEST_ENGINE", "local"))
    assert document["state"] == "success" and document["finished"] is True
    # Every task succeeds but the next round's trigger, skipped: the campaign asks for one round.
    assert document["task_instances_by_state"] == {"success": document["task_instances"] - 1, "skipped": 1}
    assert document["shards"] == 1
    assert document["shard_stage_jobs"] == 4 == document["expected_shard_stage_jobs"]
    assert document["duplicates"] == []
    assert document["wall_s_per_shard_stage"] == pytest.approx(document["wall_s"] / 4, rel=0.01)
    tasks = set(document["task_median_s"])
    assert {"plan", "shard.design", "shard.analysis", "filtering", "report"} <= tasks
    assert {"scheduler", "triggerer", "stack_emulator"} <= set(document["cpu_s"])
