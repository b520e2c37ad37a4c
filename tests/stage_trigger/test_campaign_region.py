"""
A campaign whose region is neither its connection's nor the environment's: the deferred wait polls
and stops the stage's job in the campaign's region, whatever the installed amazon provider hands to
its trigger (``make test-mwaa`` runs this on provider 9.34.0, ``make test`` on the development one).

The job is started by :meth:`BoltzGenStageOperator.start`, which creates it through the provider's
hook and defers to the stage trigger it builds; the trigger then waits from its serialized form, as
a triggerer rebuilds it. The SageMaker emulator is SageMaker in the campaign's region only: a request
signed for another region finds no job there, as on AWS. The one substituted boundary is
:meth:`StageJobTrigger.task_state` (see test_stage_trigger.py).
"""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import pytest
from airflow.providers.common.compat.sdk import TaskDeferred
from support.processing_jobs import TERMINAL, import_string
from support.processing_jobs import cancel_while_waiting as _cancel_while_waiting
from support.processing_jobs import sleeper_request as _sleeper_request
from support.processing_jobs import stop_quietly as _stop_quietly
from support.processing_jobs import wait_status as _wait_status

from boltzgen_airflow.sagemaker.operators import BoltzGenStageOperator
from boltzgen_airflow.sagemaker.requests import JobSettings
from boltzgen_airflow.sagemaker.triggers import StageJobTrigger
from sagemaker_emulator.stack import LocalStack

pytestmark = pytest.mark.stack

CAMPAIGN_REGION = "eu-west-2"
CONNECTION_REGION = "us-west-2"
ENVIRONMENT_REGION = "ap-southeast-2"
BUCKET = "campaign-region-tests"
BOTOCORE_CONFIG = {"retries": {"mode": "standard", "max_attempts": 4}}
#: conftest's stack serves SageMaker in this region only.
STACK_REGION = CAMPAIGN_REGION


@pytest.fixture
def elsewhere(stack_env: LocalStack, monkeypatch: pytest.MonkeyPatch) -> LocalStack:
    """The connection names one region and the environment another; only the campaign names the stack's."""
    connection = json.loads(stack_env.env()["AIRFLOW_CONN_AWS_DEFAULT"])
    connection["extra"]["region_name"] = CONNECTION_REGION
    monkeypatch.setenv("AIRFLOW_CONN_AWS_DEFAULT", json.dumps(connection))
    monkeypatch.setenv("AWS_DEFAULT_REGION", ENVIRONMENT_REGION)
    monkeypatch.setenv("AWS_REGION", ENVIRONMENT_REGION)
    return stack_env


def _defer_through_the_provider(s3: Any, name: str, seconds: int) -> StageJobTrigger:
    """Start the job as the stage operator does and return the trigger as the triggerer rebuilds it."""
    op = BoltzGenStageOperator(
        task_id="design",
        stage="design",
        campaign_name="demo",
        settings=JobSettings(role_arn="arn:aws:iam::123456789012:role/r", image_uri="img:1"),
        shard={},
        check_interval=1,
        region_name=CAMPAIGN_REGION,
        verify=False,
        botocore_config=BOTOCORE_CONFIG,
    )
    with pytest.raises(TaskDeferred) as deferred:
        op.start(_sleeper_request(s3, BUCKET, name, seconds=seconds))
    classpath, kwargs = deferred.value.trigger.serialize()
    assert (kwargs.get("region_name"), kwargs.get("verify"), kwargs.get("botocore_config")) == (
        CAMPAIGN_REGION,
        False,
        BOTOCORE_CONFIG,
    )
    trigger = import_string(classpath)(**kwargs)
    assert isinstance(trigger, StageJobTrigger)
    return trigger


def test_the_wait_polls_the_campaign_region(elsewhere: LocalStack, sm: Any, s3: Any) -> None:
    name = f"bg-region-poll-{uuid.uuid4().hex[:8]}"
    trigger = _defer_through_the_provider(s3, name, seconds=1)

    async def first_event() -> Any:
        async for event in trigger.run():
            return event
        return None

    # Polled in another region, DescribeProcessingJob answers ValidationException: an error event.
    event = asyncio.run(first_event())
    assert event.payload == {"status": "success", "job_name": name}
    assert sm.describe_processing_job(ProcessingJobName=name)["ProcessingJobStatus"] == "Completed"


def test_clearing_the_task_stops_the_job_in_the_campaign_region(
    elsewhere: LocalStack, sm: Any, s3: Any
) -> None:
    name = f"bg-region-stop-{uuid.uuid4().hex[:8]}"
    trigger = _defer_through_the_provider(s3, name, seconds=120)
    try:
        # The trigger keeps waiting while the job runs (no error event), then the task is cleared.
        asked = asyncio.run(_cancel_while_waiting(trigger, sm, None))
        assert asked == [name]
        assert _wait_status(sm, name, TERMINAL) == "Stopped"
    finally:
        _stop_quietly(sm, name)


def test_a_user_action_stops_the_job_in_the_campaign_region(elsewhere: LocalStack, sm: Any, s3: Any) -> None:
    """The triggerer's on_kill() after a user action: the stop alone, without a poll before it."""
    name = f"bg-region-kill-{uuid.uuid4().hex[:8]}"
    trigger = _defer_through_the_provider(s3, name, seconds=120)
    try:
        _wait_status(sm, name, ("InProgress",))

        async def task_state() -> str | None:
            return "failed"

        trigger.task_state = task_state  # type: ignore[method-assign]
        asyncio.run(trigger.on_kill())
        assert _wait_status(sm, name, TERMINAL) == "Stopped"
    finally:
        _stop_quietly(sm, name)
