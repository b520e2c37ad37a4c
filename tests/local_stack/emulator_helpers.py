"""Helpers of the local stack tests: job requests, polling, S3 listing."""

from __future__ import annotations

import textwrap
import time
import uuid
from typing import Any

ROLE = "arn:aws:iam::123456789012:role/SageMakerRole"
BUCKET = "emulator-tests"
QUOTA_TYPE = "ml.m5.large"  # quota 1: the over-quota tests own this type


def unique(prefix: str) -> str:
    """A fresh job name."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def put_script(s3: Any, name: str, source: str) -> str:
    """Stage a python script as a job's code input; returns its S3 prefix URI."""
    key = f"code/{name}/main.py"
    s3.put_object(Bucket=BUCKET, Key=key, Body=textwrap.dedent(source).encode())
    return f"s3://{BUCKET}/code/{name}/"


def s3_input(name: str, uri: str, data_type: str = "S3Prefix") -> dict[str, Any]:
    """A processing input ``name`` downloaded to ``/opt/ml/processing/input/<name>``."""
    return {
        "InputName": name,
        "S3Input": {
            "S3Uri": uri,
            "LocalPath": f"/opt/ml/processing/input/{name}",
            "S3DataType": data_type,
            "S3InputMode": "File",
        },
    }


def job_request(
    name: str,
    code_uri: str,
    *,
    args: list[str] | None = None,
    inputs: list[dict[str, Any]] | None = None,
    env: dict[str, str] | None = None,
    instance_type: str = "ml.m5.xlarge",
    max_runtime: int = 120,
) -> dict[str, Any]:
    """A CreateProcessingJob request that runs ``main.py`` of ``code_uri`` with one output ``result``."""
    return {
        "ProcessingJobName": name,
        "RoleArn": ROLE,
        "AppSpecification": {
            "ImageUri": "123456789012.dkr.ecr.us-east-1.amazonaws.com/boltzgen:0.3.2",
            "ContainerEntrypoint": ["python3", "/opt/ml/processing/input/code/main.py"],
            **({"ContainerArguments": args} if args else {}),
        },
        "ProcessingResources": {
            "ClusterConfig": {"InstanceCount": 1, "InstanceType": instance_type, "VolumeSizeInGB": 30}
        },
        "ProcessingInputs": [
            {
                "InputName": "code",
                "S3Input": {
                    "S3Uri": code_uri,
                    "LocalPath": "/opt/ml/processing/input/code",
                    "S3DataType": "S3Prefix",
                    "S3InputMode": "File",
                },
            },
            *(inputs or []),
        ],
        "ProcessingOutputConfig": {
            "Outputs": [
                {
                    "OutputName": "result",
                    "S3Output": {
                        "S3Uri": f"s3://{BUCKET}/out/{name}/",
                        "LocalPath": "/opt/ml/processing/output/result",
                        "S3UploadMode": "EndOfJob",
                    },
                }
            ]
        },
        "Environment": env or {"BOLTZGEN_STEP_ROOT": "/opt/ml"},
        "StoppingCondition": {"MaxRuntimeInSeconds": max_runtime},
    }


def wait_terminal(sm: Any, name: str, timeout: float = 60) -> dict[str, Any]:
    """Poll DescribeProcessingJob until the job is Completed, Failed or Stopped."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        desc = sm.describe_processing_job(ProcessingJobName=name)
        if desc["ProcessingJobStatus"] in ("Completed", "Failed", "Stopped"):
            return desc
        time.sleep(0.2)
    raise AssertionError(f"{name} still {desc['ProcessingJobStatus']} after {timeout}s")


def wait_for(predicate: Any, timeout: float = 30, what: str = "condition") -> Any:
    """Poll ``predicate`` until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def output_keys(s3: Any, name: str) -> list[str]:
    resp = s3.list_objects_v2(Bucket=BUCKET, Prefix=f"out/{name}/")
    return sorted(o["Key"][len(f"out/{name}/") :] for o in resp.get("Contents", []))
