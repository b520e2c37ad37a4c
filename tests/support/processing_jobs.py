"""Processing jobs on the emulator that the trigger and hook tests wait for, stop and inspect."""

from __future__ import annotations

import asyncio
import importlib
import time
from typing import Any

import pytest

TERMINAL = ("Completed", "Failed", "Stopped")


def sleeper_request(s3: Any, bucket: str, name: str, seconds: int = 120) -> dict[str, Any]:
    """Stage a script that sleeps ``seconds`` and return the CreateProcessingJob request that runs it."""
    key = f"code/{name}/main.py"
    s3.put_object(Bucket=bucket, Key=key, Body=f"import time\ntime.sleep({seconds})\n".encode())
    return {
        "ProcessingJobName": name,
        "RoleArn": "arn:aws:iam::123456789012:role/boltzgen-processing",
        "AppSpecification": {
            "ImageUri": "boltzgen-sim:latest",
            "ContainerEntrypoint": ["python3", "/opt/ml/processing/input/code/main.py"],
        },
        "ProcessingResources": {
            "ClusterConfig": {"InstanceCount": 1, "InstanceType": "ml.m5.xlarge", "VolumeSizeInGB": 30}
        },
        "ProcessingInputs": [
            {
                "InputName": "code",
                "S3Input": {
                    "S3Uri": f"s3://{bucket}/code/{name}/",
                    "LocalPath": "/opt/ml/processing/input/code",
                    "S3DataType": "S3Prefix",
                    "S3InputMode": "File",
                },
            }
        ],
        "StoppingCondition": {"MaxRuntimeInSeconds": seconds + 60},
    }


def status(sm: Any, name: str) -> str:
    """The job's ProcessingJobStatus."""
    return str(sm.describe_processing_job(ProcessingJobName=name)["ProcessingJobStatus"])


def wait_status(sm: Any, name: str, wanted: tuple[str, ...], timeout: float = 60) -> str:
    """Wait until the job's status is one of ``wanted``; return it."""
    deadline = time.monotonic() + timeout
    current = status(sm, name)
    while current not in wanted and time.monotonic() < deadline:
        time.sleep(0.2)
        current = status(sm, name)
    assert current in wanted, f"{name} is {current}, expected one of {wanted}"
    return current


def stop_quietly(sm: Any, name: str) -> None:
    """Stop the job if it still runs (test clean-up)."""
    if status(sm, name) == "InProgress":
        sm.stop_processing_job(ProcessingJobName=name)


def import_string(classpath: str) -> Any:
    """Resolve a serialized trigger's class path the way the triggerer does."""
    module, _, name = classpath.rpartition(".")
    return getattr(importlib.import_module(module), name)


async def cancel_while_waiting(trigger: Any, sm: Any, state: Any) -> list[str]:
    """Run the trigger until it has polled the running job, then cancel it; returns the states asked."""
    asked: list[str] = []

    async def task_state() -> str | None:
        asked.append(trigger.job_name)
        if isinstance(state, Exception):
            raise state
        return str(state) if state is not None else None

    trigger.task_state = task_state  # type: ignore[method-assign]
    events: list[Any] = []

    async def consume() -> None:
        async for event in trigger.run():
            events.append(event)

    task = asyncio.create_task(consume())
    # Cancel only once the job runs and the trigger is inside its wait, as a triggerer would find it.
    while await asyncio.to_thread(status, sm, trigger.job_name) != "InProgress":
        await asyncio.sleep(0.2)
    await asyncio.sleep(1.5)
    assert not task.done(), f"the trigger ended early: {events}"
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert events == []
    return asked
