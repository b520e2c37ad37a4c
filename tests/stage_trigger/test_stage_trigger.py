"""
The stage trigger stops its SageMaker job when the deferred task is cleared or marked, and only then.

The trigger waits for real jobs in the SageMaker emulator through the provider's async hook
(aiobotocore). The one substituted boundary is :meth:`StageJobTrigger.task_state`: it asks the
triggerer's supervisor for the task instance's state over the execution API, which exists only
inside a running triggerer, so these tests give the state a user action (or a triggerer restart)
would leave behind.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from types import SimpleNamespace
from typing import Any

import pytest
from support.processing_jobs import TERMINAL, import_string
from support.processing_jobs import cancel_while_waiting as _cancel_while_waiting
from support.processing_jobs import sleeper_request as _sleeper_request
from support.processing_jobs import status as _status
from support.processing_jobs import stop_quietly as _stop_quietly
from support.processing_jobs import wait_status as _wait_status

from boltzgen_airflow.exceptions import JobRequestError
from boltzgen_airflow.sagemaker.operators import BoltzGenStageOperator
from boltzgen_airflow.sagemaker.requests import JobSettings
from boltzgen_airflow.sagemaker.triggers import StageJobTrigger
from sagemaker_emulator.stack import LocalStack

IDENTITY = {"dag_id": "campaign_demo", "task_id": "shards.design", "run_id": "manual__1", "map_index": 2}


def _trigger(name: str, **overrides: Any) -> StageJobTrigger:
    kwargs: dict[str, Any] = {
        "waiter_delay": 1,
        "waiter_max_attempts": 300,
        "aws_conn_id": "aws_default",
        "region_name": "us-east-1",
    }
    trigger = StageJobTrigger(name, **{**kwargs, **overrides})
    # What the triggerer gives every trigger it runs: the deferred task instance.
    trigger.task_instance = SimpleNamespace(**IDENTITY)  # type: ignore[assignment]
    return trigger


def test_serialize_round_trip() -> None:
    trigger = _trigger(
        "bg-demo-design-s0001-abc123", verify=False, botocore_config={"retries": {"max_attempts": 3}}
    )
    classpath, kwargs = trigger.serialize()
    assert import_string(classpath) is StageJobTrigger
    rebuilt = import_string(classpath)(**kwargs)
    assert rebuilt.serialize() == (classpath, kwargs)
    # The task instance is the triggerer's to give, not part of the trigger's serialized form.
    assert not set(IDENTITY) & set(kwargs)
    assert trigger._identity() == ("campaign_demo", "shards.design", "manual__1", 2)
    assert (kwargs["job_name"], kwargs["aws_conn_id"], kwargs["region_name"]) == (
        "bg-demo-design-s0001-abc123",
        "aws_default",
        "us-east-1",
    )
    assert rebuilt.waiter_args == {"ProcessingJobName": "bg-demo-design-s0001-abc123"}


def test_rejects_what_it_cannot_stop() -> None:
    with pytest.raises(JobRequestError, match="invalid SageMaker job name 'bad name'"):
        _trigger("bad name")
    with pytest.raises(ValueError, match="job_type='Training'"):
        _trigger("bg-demo", job_type="Training")


def test_a_trigger_without_its_task_instance_never_stops_the_job() -> None:
    trigger = StageJobTrigger("bg-demo-design-s0000-1", waiter_delay=1)
    assert asyncio.run(trigger.safe_to_cancel()) is False


def test_operator_waits_with_the_stopping_trigger_and_its_own_aws_settings() -> None:
    op = BoltzGenStageOperator(
        task_id="design",
        stage="design",
        campaign_name="demo",
        settings=JobSettings(role_arn="arn:aws:iam::123456789012:role/r", image_uri="img:1"),
        shard={},
        check_interval=7,
        region_name="eu-west-1",
        verify=False,
        botocore_config={"retries": {"max_attempts": 3}},
    )
    request = {
        "ProcessingJobName": "bg-demo-design-s0000-1",
        "StoppingCondition": {"MaxRuntimeInSeconds": 686},
    }
    trigger = op.trigger_for(request)
    assert isinstance(trigger, StageJobTrigger)
    _, kwargs = trigger.serialize()
    assert kwargs["job_name"] == "bg-demo-design-s0000-1"
    # Polls cover the job's whole life: its max runtime plus the queue margin, every 7 s.
    assert (kwargs["waiter_delay"], kwargs["waiter_max_attempts"]) == (7, 613)
    assert (kwargs["region_name"], kwargs["verify"], kwargs["botocore_config"]) == (
        "eu-west-1",
        False,
        {"retries": {"max_attempts": 3}},
    )


@pytest.mark.stack
@pytest.mark.parametrize(
    "state", [None, "failed", "success"], ids=["cleared", "marked-failed", "marked-success"]
)
def test_cancel_after_user_action_stops_the_job(
    stack_env: LocalStack, sm: Any, s3: Any, bucket: str, state: Any
) -> None:
    name = f"bg-trigger-stop-{uuid.uuid4().hex[:8]}"
    sm.create_processing_job(**_sleeper_request(s3, bucket, name))
    try:
        asked = asyncio.run(_cancel_while_waiting(_trigger(name), sm, state))
        assert asked == [name]
        assert _status(sm, name) in ("Stopping", "Stopped")
        assert _wait_status(sm, name, TERMINAL) == "Stopped"
    finally:
        _stop_quietly(sm, name)


@pytest.mark.stack
@pytest.mark.parametrize(
    "state", ["deferred", RuntimeError("supervisor gone")], ids=["triggerer-restart", "state-unknown"]
)
def test_cancel_while_still_deferred_keeps_the_job(
    stack_env: LocalStack, sm: Any, s3: Any, bucket: str, state: Any
) -> None:
    name = f"bg-trigger-keep-{uuid.uuid4().hex[:8]}"
    sm.create_processing_job(**_sleeper_request(s3, bucket, name))
    try:
        first = _trigger(name)
        asked = asyncio.run(_cancel_while_waiting(first, sm, state))
        assert asked == [name]
        assert _status(sm, name) == "InProgress"
        # The next triggerer rebuilds the trigger from its serialized form and resumes waiting.
        classpath, kwargs = first.serialize()
        resumed = import_string(classpath)(**kwargs)
        asyncio.run(_cancel_while_waiting(resumed, sm, "deferred"))
        assert _status(sm, name) == "InProgress"
    finally:
        _stop_quietly(sm, name)


@pytest.mark.stack
@pytest.mark.parametrize(("state", "expected"), [(None, "Stopped"), ("deferred", "InProgress")])
def test_on_kill_stops_only_a_job_whose_task_left(
    stack_env: LocalStack, sm: Any, s3: Any, bucket: str, state: str | None, expected: str
) -> None:
    """Airflow 3.3 calls on_kill() after a cancellation it attributes to a user, reassignment included."""
    name = f"bg-trigger-kill-{uuid.uuid4().hex[:8]}"
    sm.create_processing_job(**_sleeper_request(s3, bucket, name))
    try:
        _wait_status(sm, name, ("InProgress",))
        trigger = _trigger(name)

        async def task_state() -> str | None:
            return state

        trigger.task_state = task_state  # type: ignore[method-assign]
        asyncio.run(trigger.on_kill())
        assert _wait_status(sm, name, ("Stopped", "InProgress")) == expected
    finally:
        _stop_quietly(sm, name)


@pytest.mark.stack
def test_job_that_completes_fires_success(stack_env: LocalStack, sm: Any, s3: Any, bucket: str) -> None:
    name = f"bg-trigger-done-{uuid.uuid4().hex[:8]}"
    sm.create_processing_job(**_sleeper_request(s3, bucket, name, seconds=1))

    async def first_event() -> Any:
        async for event in _trigger(name).run():
            return event
        return None

    event = asyncio.run(first_event())
    assert event.payload == {"status": "success", "job_name": name}
    assert _status(sm, name) == "Completed"


@pytest.mark.stack
def test_first_look_waits_one_interval(stack_env: LocalStack, sm: Any, s3: Any, bucket: str) -> None:
    # A job that has already ended must not fire the trigger at once: Airflow 3.3.2 fails a deferred
    # task whose trigger fires before the scheduler has processed the deferring try's exit.
    name = f"bg-trigger-early-{uuid.uuid4().hex[:8]}"
    sm.create_processing_job(**_sleeper_request(s3, bucket, name, seconds=0))
    while _status(sm, name) == "InProgress":
        time.sleep(0.2)

    async def first_event() -> tuple[Any, float]:
        started = time.monotonic()
        async for event in _trigger(name, waiter_delay=3).run():
            return event, time.monotonic() - started
        return None, 0.0

    event, waited = asyncio.run(first_event())
    assert event.payload == {"status": "success", "job_name": name}
    assert waited >= 3
