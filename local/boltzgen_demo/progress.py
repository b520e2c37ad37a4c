"""Compact progress lines of a campaign run, from the SageMaker job list and Airflow's task states."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

# Stage order and the abbreviations job names carry (``bg-<campaign>-<abbr>-<shard>-<hash>``).
STAGES: tuple[str, ...] = ("design", "inverse_folding", "folding", "analysis", "filtering")
_ABBREVIATIONS = {"des": "design", "inv": "inverse_folding", "fold": "folding", "ana": "analysis",
                  "filt": "filtering"}  # fmt: skip
_JOB_RE = re.compile(r"-(des|inv|fold|ana|filt)-([sf]\d{4})-[0-9a-f]+$")
_RUNNING = {"InProgress", "Stopping"}


def job_stage(name: str) -> str | None:
    """
    Return the stage of a processing job from its name, or None for a job of something else.

    :param name: a ``ProcessingJobName``.
    """
    match = _JOB_RE.search(name)
    return _ABBREVIATIONS[match.group(1)] if match else None


@dataclass
class StageJobs:
    """Jobs of one stage: how many run, completed and failed (Failed or Stopped)."""

    running: int = 0
    completed: int = 0
    failed: int = 0


@dataclass
class Progress:
    """
    What a run has done so far.

    :param jobs: stage -> its jobs.
    :param tasks: Airflow task state -> count.
    """

    jobs: dict[str, StageJobs] = field(default_factory=dict)
    tasks: dict[str, int] = field(default_factory=dict)


def count_jobs(summaries: Iterable[Mapping[str, Any]], ignore: Iterable[str] = ()) -> dict[str, StageJobs]:
    """
    Count processing jobs per stage.

    :param summaries: ``ProcessingJobSummaries`` entries of ListProcessingJobs.
    :param ignore: job names to leave out (those that existed before the run).
    """
    skip = set(ignore)
    out: dict[str, StageJobs] = {}
    for job in summaries:
        name = str(job.get("ProcessingJobName", ""))
        stage = job_stage(name)
        if stage is None or name in skip:
            continue
        # Pages listed while jobs are created can repeat a job; each counts once.
        skip.add(name)
        entry = out.setdefault(stage, StageJobs())
        status = job.get("ProcessingJobStatus")
        if status in _RUNNING:
            entry.running += 1
        elif status == "Completed":
            entry.completed += 1
        else:
            entry.failed += 1
    return out


def progress_line(progress: Progress, totals: Mapping[str, int]) -> str:
    """
    One line: per stage ``completed/total`` jobs (with running and failed), then the task counts.

    :param progress: the current state.
    :param totals: stage -> jobs the plan needs (a stage absent here shows no total).
    """
    parts = []
    for stage in STAGES:
        jobs = progress.jobs.get(stage, StageJobs())
        if stage not in totals and not (jobs.running or jobs.completed or jobs.failed):
            continue
        text = f"{stage} {jobs.completed}"
        if stage in totals:
            text += f"/{totals[stage]}"
        extras = []
        if jobs.running:
            extras.append(f"{jobs.running} running")
        if jobs.failed:
            extras.append(f"{jobs.failed} failed")
        if extras:
            text += f" ({', '.join(extras)})"
        parts.append(text)
    line = "jobs: " + " · ".join(parts)
    if progress.tasks:
        done = sum(n for state, n in progress.tasks.items() if state in ("success", "skipped"))
        failed = sum(n for state, n in progress.tasks.items() if state in ("failed", "upstream_failed"))
        active = sum(n for state, n in progress.tasks.items() if state in ("running", "deferred", "queued"))
        line += f" | tasks: {done} done"
        if active:
            line += f", {active} running"
        if failed:
            line += f", {failed} failed"
    return line


def plan_totals(plan: Mapping[str, Any]) -> dict[str, int]:
    """
    Jobs per stage a run needs when nothing is cached, from ``boltzgen-airflow plan --json``.

    :param plan: the plan document.
    """
    shards = len(plan.get("shards", []))
    totals = {stage: shards for stage in plan.get("resources", {}) if stage != "filtering"}
    totals["filtering"] = len(plan.get("filter_ids", {}))
    return {stage: totals[stage] for stage in STAGES if stage in totals}
