"""A local stack (moto server + SageMaker emulator) for the stage trigger tests, with its environment set."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from sagemaker_emulator.stack import LocalStack, free_ports

BUCKET = "stage-trigger-tests"


@pytest.fixture(scope="module")
def stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    """
    A stack per test module; a module's ``STACK_REGION`` and ``BUCKET`` choose SageMaker's region
    (default us-east-1) and the bucket.
    """
    moto_port, emulator_port = free_ports(2)
    region = getattr(request.module, "STACK_REGION", None)
    local = LocalStack(
        tmp_path_factory.mktemp("stage-trigger-stack"),
        moto_port=moto_port,
        emulator_port=emulator_port,
        simulated=True,
        buckets=[getattr(request.module, "BUCKET", BUCKET)],
        gpus=0,
        stop_grace_seconds=1.0,
        **({"region": region} if region else {}),
    )
    local.start()
    yield local
    local.stop()


@pytest.fixture
def stack_env(stack: LocalStack, monkeypatch: pytest.MonkeyPatch) -> LocalStack:
    """Point Airflow's ``aws_default`` connection, boto3 and aiobotocore at the stack."""
    for name, value in stack.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    return stack


@pytest.fixture
def sm(stack: LocalStack) -> Any:
    return stack.client("sagemaker")


@pytest.fixture
def s3(stack: LocalStack) -> Any:
    return stack.client("s3")


@pytest.fixture
def bucket() -> str:
    return BUCKET
