"""Progress lines of a run, from ListProcessingJobs answers (shaped as the SageMaker API returns them)."""

from __future__ import annotations

from typing import Any

from boltzgen_demo.progress import Progress, StageJobs, count_jobs, job_stage, plan_totals, progress_line


def summary(name: str, status: str) -> dict[str, Any]:
    return {"ProcessingJobName": name, "ProcessingJobStatus": status, "ProcessingJobArn": f"arn:x:{name}"}


def test_job_stage_reads_the_stage_from_the_job_name() -> None:
    assert job_stage("bg-demo-des-s0001-f02b7d42b9") == "design"
    assert job_stage("bg-demo-inv-s0000-29b02fd335") == "inverse_folding"
    assert job_stage("bg-my-campaign-fold-s0012-0123456789") == "folding"
    assert job_stage("bg-demo-filt-f0002-296a18a241") == "filtering"
    assert job_stage("someone-elses-job") is None


def test_jobs_are_counted_per_stage_once_and_earlier_jobs_left_out() -> None:
    jobs = [
        summary("bg-demo-des-s0000-aaaaaaaaaa", "Completed"),
        summary("bg-demo-des-s0001-bbbbbbbbbb", "Completed"),
        summary("bg-demo-des-s0001-bbbbbbbbbb", "Completed"),  # repeated by paging
        summary("bg-demo-inv-s0000-cccccccccc", "InProgress"),
        summary("bg-demo-inv-s0001-dddddddddd", "Failed"),
        summary("bg-demo-des-s0009-eeeeeeeeee", "Completed"),  # an earlier run's
        summary("unrelated", "InProgress"),
    ]
    counts = count_jobs(jobs, ignore={"bg-demo-des-s0009-eeeeeeeeee"})
    assert counts == {
        "design": StageJobs(completed=2),
        "inverse_folding": StageJobs(running=1, failed=1),
    }


def test_progress_line_lists_stages_in_order_with_totals_and_tasks() -> None:
    progress = Progress(
        jobs={"inverse_folding": StageJobs(running=1, completed=3), "design": StageJobs(completed=9)},
        tasks={"success": 20, "skipped": 1, "deferred": 1, "failed": 1, "upstream_failed": 2},
    )
    totals = {"design": 9, "inverse_folding": 9, "folding": 9, "analysis": 9, "filtering": 3}
    assert progress_line(progress, totals) == (
        "jobs: design 9/9 · inverse_folding 3/9 (1 running) · folding 0/9 · analysis 0/9 · filtering 0/3"
        " | tasks: 21 done, 1 running, 3 failed"
    )


def test_plan_totals_come_from_the_plan_json() -> None:
    plan = {
        "shards": [{"id": "s0000"}, {"id": "s0001"}],
        "filter_ids": {"a.yaml": "f0000"},
        "resources": {"design": {}, "folding": {}, "analysis": {}, "filtering": {}},
    }
    assert plan_totals(plan) == {"design": 2, "folding": 2, "analysis": 2, "filtering": 1}
