"""``ProcessingJobHook`` against the SageMaker emulator: creating a job waits out throttling and used-up
quotas (faults injected by the emulator) and never creates a job twice."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from botocore.exceptions import ClientError
from support.processing_jobs import sleeper_request as _sleeper_request
from support.processing_jobs import stop_quietly as _stop_quietly

from boltzgen_airflow.sagemaker.hooks import ProcessingJobHook
from sagemaker_emulator.stack import LocalStack

pytestmark = pytest.mark.stack


def _hook(**kwargs: Any) -> ProcessingJobHook:
    return ProcessingJobHook(aws_conn_id="aws_default", region_name="us-east-1", **kwargs)


def _jobs_named(sm: Any, name: str) -> list[str]:
    found = sm.list_processing_jobs(NameContains=name)["ProcessingJobSummaries"]
    return [job["ProcessingJobName"] for job in found]


@pytest.mark.parametrize("action", ["throttle", "quota"])
def test_create_backs_off_until_accepted(
    stack_env: LocalStack, sm: Any, s3: Any, bucket: str, action: str, capfd: pytest.CaptureFixture[str]
) -> None:
    name = f"bg-hook-{action}-{uuid.uuid4().hex[:8]}"
    # More rejections than botocore's own retries absorb (it retries throttling, never quotas).
    stack_env.set_faults([{"pattern": name, "action": action, "times": 6}])
    try:
        response = _hook(create_attempts=8, create_retry_delay=0.05).create_processing_job(
            _sleeper_request(s3, bucket, name, seconds=0), wait_for_completion=True, check_interval=1
        )
    finally:
        stack_env.set_faults([])
    assert response["ProcessingJobArn"].endswith(name)
    assert _jobs_named(sm, name) == [name]
    assert sm.describe_processing_job(ProcessingJobName=name)["ProcessingJobStatus"] == "Completed"
    assert "trying again" in capfd.readouterr().out


def test_create_gives_up_with_the_aws_error(stack_env: LocalStack, s3: Any, sm: Any, bucket: str) -> None:
    name = f"bg-hook-full-{uuid.uuid4().hex[:8]}"
    stack_env.set_faults([{"pattern": name, "action": "quota"}])
    try:
        with pytest.raises(ClientError, match="ResourceLimitExceeded"):
            _hook(create_attempts=3, create_retry_delay=0.05).create_processing_job(
                _sleeper_request(s3, bucket, name), wait_for_completion=False
            )
    finally:
        stack_env.set_faults([])
    assert _jobs_named(sm, name) == []


def test_a_create_sent_twice_is_the_same_job(stack_env: LocalStack, s3: Any, sm: Any, bucket: str) -> None:
    # What botocore does when the answer to a create that succeeded is lost: it sends it again.
    name = f"bg-hook-twice-{uuid.uuid4().hex[:8]}"
    request = _sleeper_request(s3, bucket, name, seconds=30)
    first = sm.create_processing_job(**request)
    try:
        again = _hook().create_processing_job(request, wait_for_completion=False)
        assert again["ProcessingJobArn"] == first["ProcessingJobArn"]
        assert _jobs_named(sm, name) == [name]
    finally:
        _stop_quietly(sm, name)


def test_other_errors_are_not_retried(stack_env: LocalStack, s3: Any, bucket: str) -> None:
    request = _sleeper_request(s3, bucket, f"bg-hook-bad-{uuid.uuid4().hex[:8]}")
    request["RoleArn"] = "not-a-role-arn-but-long-enough"
    with pytest.raises(ClientError, match="ValidationException"):
        _hook(create_attempts=5, create_retry_delay=30).create_processing_job(
            request, wait_for_completion=False
        )
