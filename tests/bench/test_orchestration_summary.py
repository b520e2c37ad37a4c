"""The orchestration benchmark's bookkeeping: job names read back, duplicates, task figures, the campaign.

These are the pure parts of ``benchmarks/bench_orchestration.py``; the run itself (a real Airflow and
the local stack) is the benchmark, not a test. Job names come from the project's own ``job_name``.
"""

from __future__ import annotations

import importlib.util
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from boltzgen_airflow.campaign.loading import load_campaign
from boltzgen_airflow.dag.pools import stage_pools
from boltzgen_airflow.sagemaker.requests import job_name

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
RUN_ID = "manual__2026-01-01T00:00:00+00:00"


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    """``bench_orchestration`` loaded from its file (benchmarks/ is not a package)."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        path = BENCHMARKS / "bench_orchestration.py"
        spec = importlib.util.spec_from_file_location("bench_orchestration", path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up while it executes
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(BENCHMARKS))
    return module


@pytest.mark.parametrize("stage", ["design", "inverse_folding", "folding", "analysis", "filtering"])
@pytest.mark.parametrize("campaign", ["bench_orchestration", "a" * 60])
def test_job_names_read_back_to_their_stage_and_shard(bench: ModuleType, stage: str, campaign: str) -> None:
    name = job_name(campaign, RUN_ID, stage, "s0042", attempt=1)
    assert bench.parse_job_name(name) == (stage, "s0042")


def test_a_name_of_another_shape_is_not_read(bench: ModuleType) -> None:
    assert bench.parse_job_name("some-other-job") is None
    assert bench.parse_job_name("bg-camp-des-s0001-NOTHEX1234") is None


def test_job_summary_counts_per_stage_and_finds_the_shard_that_ran_twice(bench: ModuleType) -> None:
    names = [job_name("c", RUN_ID, s, f"s{i:04d}", 1) for s in ("design", "folding") for i in range(3)]
    names.append(job_name("c", RUN_ID, "folding", "s0001", 2))  # a second attempt of one (stage, shard)
    names.append(job_name("c", RUN_ID, "filtering", "f0000", 1))
    names.append("unrelated-job")
    summary = bench.job_summary(names)
    assert summary["jobs_per_stage"] == {"design": 3, "filtering": 1, "folding": 4}
    assert summary["duplicates"] == ["folding/s0001 x2"]
    assert summary["unrecognised_jobs"] == 1
    assert summary["jobs"] == 9


def test_no_duplicates_when_every_stage_and_shard_ran_once(bench: ModuleType) -> None:
    names = [job_name("c", RUN_ID, "design", f"s{i:04d}", 1) for i in range(50)]
    assert bench.job_summary(names)["duplicates"] == []


def _row(
    task_id: str, map_index: int, state: str | None, seconds: float | None, try_number: int = 1
) -> dict[str, Any]:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    return {
        "task_id": task_id,
        "map_index": map_index,
        "state": state,
        "try_number": try_number,
        "start_date": start.isoformat() if seconds is not None else None,
        "end_date": (start + timedelta(seconds=seconds)).isoformat() if seconds is not None else None,
    }


def test_task_summary_counts_states_shards_and_median_durations(bench: ModuleType) -> None:
    rows = [
        _row("plan", -1, "success", 10.0),
        _row("shard.design", 0, "success", 2.0),
        _row("shard.design", 1, "success", 4.0),
        _row("shard.design", 2, "success", 9.0, try_number=2),
        _row("filtering", 0, "success", 1.0),
        _row("shard.folding", 0, "failed", 3.0),
        _row("shard.folding", 1, "deferred", None),
        _row("shard.folding", 2, None, None),
    ]
    summary = bench.task_summary(rows, ("design", "folding"))
    assert summary["task_instances"] == 8
    assert summary["task_instances_by_state"] == {"deferred": 1, "failed": 1, "none": 1, "success": 5}
    assert summary["shards"] == 3
    assert summary["retried_task_instances"] == 1
    assert summary["shard_stage_tasks_succeeded"] == 3  # filtering and failures are not shard stage jobs done
    assert summary["task_median_s"]["shard.design"] == 4.0
    assert summary["task_total_s"]["shard.design"] == 15.0
    assert "shard.folding" in summary["task_median_s"] and summary["task_median_s"]["shard.folding"] == 3.0


def test_summary_divides_the_wall_by_shard_stage_jobs_not_filtering(bench: ModuleType) -> None:
    settings = bench.Settings(shards=2, skip_inverse_folding=True)
    triggered = datetime(2026, 1, 1, tzinfo=UTC)
    run = {
        "state": "success",
        "start_date": (triggered + timedelta(seconds=3)).isoformat(),
        "end_date": (triggered + timedelta(seconds=120)).isoformat(),
    }
    names = [job_name("c", RUN_ID, s, f"s{i:04d}", 1) for s in settings.shard_stages for i in range(2)]
    names += [job_name("c", RUN_ID, "filtering", "f0000", 1)]
    document = bench.summarize(
        settings=settings, run=run, triggered_at=triggered, tasks=[], job_names=names, planned_shards=2
    )
    assert document["shard_stages"] == ["design", "folding", "analysis"]
    assert document["shard_stage_jobs"] == 6 == document["expected_shard_stage_jobs"]
    assert document["wall_s"] == 120.0
    assert document["wall_s_per_shard_stage"] == 20.0
    assert document["trigger_to_run_start_s"] == 3.0
    assert document["finished"] is True and document["duplicates"] == []


def test_summary_of_a_run_that_did_not_end_has_no_wall(bench: ModuleType) -> None:
    document = bench.summarize(
        settings=bench.Settings(shards=5),
        run={"state": "running", "start_date": "2026-01-01T00:00:00+00:00", "end_date": None},
        triggered_at=datetime(2026, 1, 1, tzinfo=UTC),
        tasks=[_row("shard.design", 0, "success", 1.0)],
        job_names=[job_name("c", RUN_ID, "design", "s0000", 1)],
        planned_shards=5,
    )
    assert document["finished"] is False
    assert document["wall_s"] is None and document["wall_s_per_shard_stage"] is None
    assert document["shard_stage_jobs"] == 1 and document["expected_shard_stage_jobs"] == 20


def test_loop_summary_gives_the_gaps_between_the_schedulers_decisions(bench: ModuleType) -> None:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    gaps = [2.0, 2.0, 20.0, 4.0, 30.0]
    stamps = [start]
    for gap in gaps:
        stamps.append(stamps[-1] + timedelta(seconds=gap))
    summary = bench.loop_summary([s.isoformat() for s in stamps])
    assert summary == {"loops_seen": 6, "median_s": 4.0, "p90_s": 20.0, "max_s": 30.0}
    # Before the run is examined twice there is no gap to tell.
    assert bench.loop_summary([start.isoformat()]) == {"loops_seen": 1}


def test_campaign_file_validates_with_the_pools_and_stages_asked_for(
    bench: ModuleType, tmp_path: Path
) -> None:
    settings = bench.Settings(shards=7, pool_slots=12, skip_inverse_folding=True, retries=1)
    specs = BENCHMARKS.parent / "include" / "specs"
    path = tmp_path / "bench_orchestration.yaml"
    path.write_text(bench.campaign_yaml(settings, designs_per_spec=5, specs=specs))
    campaign = load_campaign(path)
    assert campaign.dag_id == bench.DAG_ID
    assert campaign.sharding.max_shards == 7
    assert campaign.retries == 1
    assert campaign.design.skip_inverse_folding is True
    assert {slots for _, slots in stage_pools(campaign).values()} == {12}
