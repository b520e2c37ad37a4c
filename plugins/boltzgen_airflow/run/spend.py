"""
What a campaign run has spent, and the two checks of its cap (``design.max_cost_usd``).

Spend is billed job time at the catalog's on-demand prices: the committed jobs' hours (start to
end of the job, as :meth:`CommitRecord.hours` reads them) and, while a run goes on, its running
jobs at the larger of their time so far and their estimates. Jobs of earlier campaign runs (cache
hits) cost nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from boltzgen_airflow.exceptions import CampaignError, SpendCapReached
from boltzgen_airflow.storage.commits import CommitRecord, read_commits
from boltzgen_airflow.storage.s3 import read_json

log = logging.getLogger(__name__)


def billed_usd(hours: float, price_per_hour: float) -> float:
    """
    The cost of one job: its billed hours at its instance type's price.

    :param hours: the job's hours.
    :param price_per_hour: USD per instance hour.
    """
    return max(0.0, hours) * price_per_hour


def commit_usd(record: CommitRecord, price_per_hour: float) -> float:
    """
    The cost of the job behind a commit.

    :param record: the commit.
    :param price_per_hour: USD per hour of the instance type it ran on.
    """
    return billed_usd(record.hours(), price_per_hour)


def check_plan(campaign_file: str, *, estimate_usd: float, cap_usd: float | None, spent_usd: float) -> None:
    """
    Refuse a run whose estimate exceeds what is left of the cap.

    :param campaign_file: the campaign file (named in the error).
    :param estimate_usd: the plan's estimated cost.
    :param cap_usd: ``max_cost_usd`` (None: no cap).
    :param spent_usd: what the campaign run's earlier rounds spent.
    :raises CampaignError: naming the estimate, the cap and what was spent.
    """
    if cap_usd is None:
        return
    left = cap_usd - spent_usd
    if estimate_usd > left:
        raise CampaignError.single(
            campaign_file,
            "design.max_cost_usd",
            f"the run is estimated at ${estimate_usd:.2f}, more than the ${max(left, 0.0):.2f} left of "
            f"max_cost_usd ${cap_usd:.2f} (${spent_usd:.2f} spent by earlier rounds); raise "
            "max_cost_usd or plan fewer designs",
        )


@dataclass(frozen=True)
class SpendCap:
    """
    What a stage task needs to keep a run within its cap (carried by the shard descriptor).

    :param cap_usd: ``max_cost_usd``.
    :param spent_usd: what earlier rounds of the campaign run spent.
    :param shards_key: the run's ``shards.json``, whose commits are this run's spend.
    :param run_id: this run's id (commits of other runs are cache hits and cost nothing).
    :param prices: USD per hour by instance type.
    """

    cap_usd: float
    spent_usd: float
    shards_key: str
    run_id: str
    prices: Mapping[str, float]

    def to_json(self) -> dict[str, Any]:
        """Return the JSON document."""
        return {
            "cap_usd": self.cap_usd,
            "spent_usd": self.spent_usd,
            "shards_key": self.shards_key,
            "run_id": self.run_id,
            "prices": dict(self.prices),
        }

    @classmethod
    def from_json(cls, document: Mapping[str, Any]) -> SpendCap:
        """
        Inverse of :meth:`to_json`.

        :param document: the JSON document.
        """
        return cls(
            cap_usd=float(document["cap_usd"]),
            spent_usd=float(document.get("spent_usd", 0.0)),
            shards_key=str(document["shards_key"]),
            run_id=str(document["run_id"]),
            prices={str(k): float(v) for k, v in (document.get("prices") or {}).items()},
        )


@dataclass(frozen=True)
class RunJobs:
    """
    A capped run's shard stage jobs as its cap counts them.

    :param committed_usd: what the jobs this run committed cost.
    :param estimates: (stage, shard) -> the estimated cost of its job, for every stage not committed.
    """

    committed_usd: float
    estimates: Mapping[tuple[str, str], float]


def run_jobs(client: Any, bucket: str, cap: SpendCap) -> RunJobs:
    """
    Read the run's ``shards.json`` and its commits (one read per stage of every shard, eight at a time).

    :param client: a boto3 S3 client.
    :param bucket: the campaign's bucket.
    :param cap: the run's cap.
    """
    document = read_json(client, bucket, cap.shards_key) or {}
    targets = [
        (str(shard["shard"]), stage, target, float((shard.get("stage_usd") or {}).get(stage, 0.0)))
        for shard in document.get("shards", [])
        for stage, target in (shard.get("stages") or {}).items()
    ]
    records = read_commits(client, bucket, [target["commit_key"] for _, _, target, _ in targets])
    total, estimates = 0.0, {}
    for (shard, stage, target, estimate), record in zip(targets, records, strict=True):
        if record is None:
            estimates[stage, shard] = estimate
        elif record.run_id == cap.run_id:
            instance = (target.get("resources") or {}).get("instance_type", "")
            total += commit_usd(record, cap.prices.get(instance, 0.0))
    return RunJobs(committed_usd=total, estimates=estimates)


def running_spend(
    sagemaker: Any,
    campaign: str,
    prices: Mapping[str, float],
    now: datetime | None = None,
    *,
    run_id: str | None = None,
    estimates: Mapping[tuple[str, str], float] | None = None,
) -> float:
    """
    What the campaign's running jobs cost: each at its time so far, and a job of ``run_id`` at its
    estimate while that is more (jobs that started together each count the others in full).

    :param sagemaker: a boto3 SageMaker client.
    :param campaign: the campaign name (jobs are named ``bg-<campaign>-...``).
    :param prices: USD per hour by instance type.
    :param now: the time to count to (default: now).
    :param run_id: the run whose jobs count at least their estimates.
    :param estimates: (stage, shard) -> the estimated cost of that job of ``run_id`` (``RunJobs``).
    """
    now = now or datetime.now(UTC)
    total = 0.0
    prefix = f"bg-{campaign}-"
    for page in sagemaker.get_paginator("list_processing_jobs").paginate(
        StatusEquals="InProgress", NameContains=prefix
    ):
        for summary in page.get("ProcessingJobSummaries", []):
            if not summary["ProcessingJobName"].startswith(prefix):
                continue
            job = sagemaker.describe_processing_job(ProcessingJobName=summary["ProcessingJobName"])
            started = job.get("ProcessingStartTime") or job.get("CreationTime") or now
            cluster = job.get("ProcessingResources", {}).get("ClusterConfig", {})
            instance = cluster.get("InstanceType") or cluster.get("SelectedInstanceType", "")
            hours = (now - started).total_seconds() / 3600
            estimate = 0.0
            if run_id is not None and estimates:
                estimate = _job_estimate(sagemaker, job["ProcessingJobArn"], run_id, estimates)
            total += max(billed_usd(hours, prices.get(instance, 0.0)), estimate)
    return total


def _job_estimate(sagemaker: Any, arn: str, run_id: str, estimates: Mapping[tuple[str, str], float]) -> float:
    """A running job's estimate, found by its ``boltzgen:*`` tags (0 for a job of another run)."""
    tags = {
        tag["Key"]: tag["Value"]
        for page in sagemaker.get_paginator("list_tags").paginate(ResourceArn=arn)
        for tag in page.get("Tags", [])
    }
    if tags.get("boltzgen:run") != run_id[:256]:
        return 0.0
    return estimates.get((tags.get("boltzgen:stage", ""), tags.get("boltzgen:shard", "")), 0.0)


def check_job(
    client: Any, sagemaker: Any, *, bucket: str, campaign: str, cap: SpendCap, job_usd: float
) -> None:
    """
    Refuse to start a job once the campaign run's spend would pass its cap.

    :param client: a boto3 S3 client.
    :param sagemaker: a boto3 SageMaker client.
    :param bucket: the campaign's bucket.
    :param campaign: the campaign name.
    :param cap: the run's cap.
    :param job_usd: the estimated cost of the job about to start.
    :raises SpendCapReached: naming the spend, the job's estimate and the cap.
    """
    jobs = run_jobs(client, bucket, cap)
    committed = jobs.committed_usd
    running = running_spend(sagemaker, campaign, cap.prices, run_id=cap.run_id, estimates=jobs.estimates)
    spent = cap.spent_usd + committed + running
    log.info(
        "Spend of the campaign run: $%.4f (earlier rounds $%.4f, this run's commits $%.4f, running jobs "
        "$%.4f); this job about $%.4f; cap $%.2f",
        spent,
        cap.spent_usd,
        committed,
        running,
        job_usd,
        cap.cap_usd,
    )
    if spent + job_usd > cap.cap_usd:
        raise SpendCapReached(
            f"spend cap reached: ${spent:.2f} spent (earlier rounds ${cap.spent_usd:.2f}, this run "
            f"${committed + running:.2f}) and this job's ~${job_usd:.2f} would pass max_cost_usd "
            f"${cap.cap_usd:.2f}; no job started"
        )
