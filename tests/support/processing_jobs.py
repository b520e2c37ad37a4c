"""Processing jobs on the emulator that the trigger and hook tests wait for, stop and inspect."""

from __future__ import annotations

import time
from typing import Any

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
