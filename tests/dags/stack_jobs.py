"""The processing jobs the emulator received, read back by the tests that count them."""

from __future__ import annotations

from typing import Any

from boltzgen_airflow.sagemaker.requests import STAGE_ABBREVIATIONS

STAGE_OF = {abbreviation: stage for stage, abbreviation in STAGE_ABBREVIATIONS.items()}


def list_jobs(stack: Any, campaign: str, status: str | None = None) -> dict[str, dict[str, Any]]:
    """
    The campaign's processing jobs: name -> summary.

    :param stack: the local stack.
    :param campaign: the campaign (job names are ``bg-<campaign>-...``).
    :param status: only the jobs of this status.
    """
    client = stack.client("sagemaker")
    kwargs: dict[str, Any] = {"NameContains": f"bg-{campaign}-", "MaxResults": 100}
    if status:
        kwargs["StatusEquals"] = status
    found: dict[str, dict[str, Any]] = {}
    while True:
        page = client.list_processing_jobs(**kwargs)
        found.update({job["ProcessingJobName"]: job for job in page["ProcessingJobSummaries"]})
        if not page.get("NextToken"):
            return found
        kwargs["NextToken"] = page["NextToken"]


def stage_shard(name: str) -> tuple[str, str]:
    """``bg-<campaign>-<stage>-<shard>-<digest>`` -> (stage, shard or filter id)."""
    parts = name.split("-")
    return STAGE_OF[parts[-3]], parts[-2]


def cache_entry(stack: Any, name: str) -> str:
    """``<stage>/<key>``: the cache entry a job wrote its attempt into."""
    job = stack.client("sagemaker").describe_processing_job(ProcessingJobName=name)
    uri = job["ProcessingOutputConfig"]["Outputs"][0]["S3Output"]["S3Uri"]
    return str(uri.split("/cache/", 1)[1].split("/attempts/", 1)[0])
