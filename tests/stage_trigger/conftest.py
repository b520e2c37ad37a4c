"""A local stack (moto server + SageMaker emulator) for the stage trigger tests, with its environment set."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from support.stacks import simulated_stack

from sagemaker_emulator.stack import LocalStack

BUCKET = "stage-trigger-tests"


@pytest.fixture(scope="module")
def stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    """
    A stack per test module; a module's ``STACK_REGION`` and ``BUCKET`` choose SageMaker's region
    (default us-east-1) and the bucket.
    """
    region = getattr(request.module, "STACK_REGION", None)
    buckets = [getattr(request.module, "BUCKET", BUCKET)]
    state = tmp_path_factory.mktemp("stage-trigger-stack")
    with simulated_stack(state, buckets, **({"region": region} if region else {})) as local:
        yield local


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
