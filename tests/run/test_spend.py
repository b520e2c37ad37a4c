"""The spend cap's count of a run's jobs, against the SageMaker emulator and S3 on moto server: committed
jobs at their billed hours, running ones at no less than their estimates, other runs' jobs as they ran."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Iterator

import pytest
from support.processing_jobs import sleeper_request, stop_quietly, wait_status
from support.s3_specs import FILES, VANILLA, ZINC, upload
from support.s3_specs import campaign as s3_campaign
from support.stacks import simulated_stack

from boltzgen_airflow.campaign.params import validate_run_params
from boltzgen_airflow.exceptions import SpendCapReached
from boltzgen_airflow.run import spend
from boltzgen_airflow.run.descriptors import ShardDescriptor
from boltzgen_airflow.run.prepare import load_shards, plan_run, publish_shards
from boltzgen_airflow.storage.commits import CommitRecord
from boltzgen_airflow.storage.s3 import put_json
from sagemaker_emulator.stack import LocalStack

pytestmark = pytest.mark.stack

BUCKET = "spend-tests"
RUN = "manual__2026-01-01T00:00:00+00:00"
OTHER_RUN = "manual__2025-12-01T00:00:00+00:00"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    with simulated_stack(tmp_path_factory.mktemp("spend-stack"), [BUCKET]) as local:
        yield local


@pytest.fixture(scope="module")
def shards(stack: LocalStack) -> list[ShardDescriptor]:
    """A capped run of two specs as ``plan`` publishes it: descriptors carrying the cap and estimates."""
    client = stack.client("s3")
    for spec in (VANILLA, ZINC):
        upload(client, BUCKET, spec, *FILES[spec])
    campaign = s3_campaign(BUCKET, max_cost_usd=1000)
    options, updated = validate_run_params(campaign, {})
    planned = plan_run(client, updated, options, RUN).shards
    refs = publish_shards(client, updated, RUN, planned)
    return load_shards(client, updated, RUN, refs)


def start_job(stack: LocalStack, stage: str, shard: str, run_id: str) -> str:
    """A job of the campaign tagged as the operator tags a shard stage job, sleeping until stopped."""
    sm = stack.client("sagemaker")
    name = f"bg-s3specs-{stage[:3]}-{shard}-{uuid.uuid4().hex[:10]}"
    request = sleeper_request(stack.client("s3"), BUCKET, name, seconds=300)
    tags = {"boltzgen:campaign": "s3specs", "boltzgen:stage": stage, "boltzgen:shard": shard}
    request["Tags"] = [{"Key": k, "Value": v} for k, v in {**tags, "boltzgen:run": run_id}.items()]
    sm.create_processing_job(**request)
    wait_status(sm, name, ("InProgress",))
    return name


def commit(stack: LocalStack, shard: ShardDescriptor, stage: str, run_id: str, minutes: int) -> None:
    """Commit the stage of the shard as a job of ``run_id`` that worked ``minutes``."""
    target = shard.stages[stage]
    record = CommitRecord(
        stage=stage,
        key=target.key,
        bucket=BUCKET,
        attempt_prefix=target.attempt_prefix("bg-s3specs-job"),
        job_name="bg-s3specs-job",
        committed_at="2026-01-01T01:00:00+00:00",
        shard=shard.shard,
        started_at="2026-01-01T00:00:00+00:00",
        finished_at=f"2026-01-01T00:{minutes:02d}:00+00:00",
        run_id=run_id,
    )
    put_json(stack.client("s3"), BUCKET, target.commit_key, record.to_json())


def test_every_stage_of_the_run_is_estimated_until_committed_and_only_its_own_commits_cost(
    stack: LocalStack, shards: list[ShardDescriptor]
) -> None:
    cap = shards[0].spend_cap
    assert cap is not None and cap.run_id == RUN
    jobs = spend.run_jobs(stack.client("s3"), BUCKET, cap)
    assert jobs.committed_usd == 0
    assert jobs.estimates == {(stage, s.shard): s.stage_usd[stage] for s in shards for stage in s.stages}
    assert all(usd > 0 for usd in jobs.estimates.values())
    first, second = shards[0], shards[1]
    commit(stack, first, "design", RUN, minutes=30)
    commit(stack, second, "design", OTHER_RUN, minutes=45)  # an earlier run's: a cache hit
    jobs = spend.run_jobs(stack.client("s3"), BUCKET, cap)
    price = cap.prices[first.stages["design"].resources.instance_type]
    assert jobs.committed_usd == pytest.approx(0.5 * price)
    assert ("design", first.shard) not in jobs.estimates
    assert ("design", second.shard) not in jobs.estimates
    assert ("folding", first.shard) in jobs.estimates


def test_jobs_that_started_together_count_each_other_at_their_estimates(
    stack: LocalStack, shards: list[ShardDescriptor]
) -> None:
    sm, s3 = stack.client("sagemaker"), stack.client("s3")
    cap = shards[0].spend_cap
    assert cap is not None
    jobs = spend.run_jobs(s3, BUCKET, cap)
    a, b = shards[0].shard, shards[1].shard
    names = [start_job(stack, "folding", a, RUN), start_job(stack, "folding", b, RUN)]
    names.append(start_job(stack, "folding", a, OTHER_RUN))  # another run's: at its time so far
    try:
        together = jobs.estimates["folding", a] + jobs.estimates["folding", b]
        # The sleepers run on an instance type the plan does not price: time so far costs nothing.
        by_time = spend.running_spend(sm, "s3specs", cap.prices)
        assert by_time == 0
        counted = spend.running_spend(sm, "s3specs", cap.prices, run_id=RUN, estimates=jobs.estimates)
        assert counted == pytest.approx(together)
        job_usd = jobs.estimates["analysis", a]
        left = cap.spent_usd + jobs.committed_usd + together + job_usd
        tight = dataclasses.replace(cap, cap_usd=left * 0.999)
        with pytest.raises(SpendCapReached, match=r"would pass max_cost_usd"):
            spend.check_job(s3, sm, bucket=BUCKET, campaign="s3specs", cap=tight, job_usd=job_usd)
        enough = dataclasses.replace(cap, cap_usd=left * 1.001)
        spend.check_job(s3, sm, bucket=BUCKET, campaign="s3specs", cap=enough, job_usd=job_usd)
    finally:
        for name in names:
            stop_quietly(sm, name)
