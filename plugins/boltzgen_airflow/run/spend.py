"""
What a campaign run has spent, and the two checks of its cap (``design.max_cost_usd``).

Spend is billed job time at the catalog's on-demand prices: the committed jobs' hours (start to
end of the job, as :meth:`CommitRecord.hours` reads them) and, while a run goes on, the time its
running jobs have taken so far. Jobs of earlier campaign runs (cache hits) cost nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from boltzgen_airflow.exceptions import CampaignError, SpendCapReached
from boltzgen_airflow.storage.commits import CommitRecord, read_commit
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


def run_spend(client: Any, bucket: str, cap: SpendCap) -> float:
    """
    What this run's committed shard stage jobs cost (one read per stage of every shard).

    :param client: a boto3 S3 client.
    :param bucket: the campaign's bucket.
    :param cap: the run's cap.
    """
    document = read_json(client, bucket, cap.shards_key) or {}
    total = 0.0
    for shard in document.get("shards", []):
        for target in (shard.get("stages") or {}).values():
            record = read_commit(client, bucket, target["commit_key"])
            if record is None or record.run_id != cap.run_id:
                continue
            instance = (target.get("resources") or {}).get("instance_type", "")
            total += commit_usd(record, cap.prices.get(instance, 0.0))
    return total


def running_spend(
    sagemaker: Any, campaign: str, prices: Mapping[str, float], now: datetime | None = None
) -> float:
    """
    What the campaign's running jobs have cost so far (every job of the campaign in progress).

    :param sagemaker: a boto3 SageMaker client.
    :param campaign: the campaign name (jobs are named ``bg-<campaign>-...``).
    :param prices: USD per hour by instance type.
    :param now: the time to count to (default: now).
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
            total += billed_usd(hours, prices.get(instance, 0.0))
    return total


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
    committed = run_spend(client, bucket, cap)
    running = running_spend(sagemaker, campaign, cap.prices)
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
