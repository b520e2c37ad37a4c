"""One local stack (moto server + SageMaker emulator) per test session, on free ports in a tmp dir."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from botocore.config import Config
from emulator_helpers import BUCKET, QUOTA_TYPE
from support.stacks import simulated_stack

from sagemaker_emulator.stack import LocalStack


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    options = {"quotas": {QUOTA_TYPE: 1}, "sim_gpus": {"ml.g5.2xlarge": 2}}
    with simulated_stack(tmp_path_factory.mktemp("local-stack"), [BUCKET], **options) as local:
        yield local


@pytest.fixture(scope="session")
def sm(stack: LocalStack) -> Any:
    return stack.client("sagemaker")


@pytest.fixture(scope="session")
def sm_raw(stack: LocalStack) -> Any:
    """A client that sends requests botocore would refuse, to see the server's own validation."""
    return boto3.client(
        "sagemaker",
        endpoint_url=stack.emulator_url,
        region_name="us-east-1",
        config=Config(parameter_validation=False, retries={"total_max_attempts": 1, "mode": "standard"}),
    )


@pytest.fixture(scope="session")
def s3(stack: LocalStack) -> Any:
    return stack.client("s3")


@pytest.fixture(scope="session")
def logs(stack: LocalStack) -> Any:
    return stack.client("logs")


@pytest.fixture(autouse=True)
def _no_faults(stack: LocalStack) -> Iterator[None]:
    yield
    stack.set_faults([])
