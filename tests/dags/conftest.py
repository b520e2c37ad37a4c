"""Fixtures of the DAG tests: campaign files and a local stack (S3 on moto is in tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

# The scheduler and fault suites import these from here.
from support.dag_campaigns import PROJECT, write_campaign  # noqa: F401

# The scheduler and fault suites import it from here.
from support.network import free_port as _free_port  # noqa: F401


@pytest.fixture(scope="module")
def local_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The SageMaker emulator and moto server (S3, Logs) as processes, jobs run by the BoltzGen simulator."""
    from sagemaker_emulator.stack import LocalStack, free_ports

    state = tmp_path_factory.mktemp("stack")
    stack = LocalStack(state, *free_ports(2), simulated=True, buckets=["bg-e2e"])
    stack.start(timeout=180)
    try:
        yield stack
    finally:
        stack.stop()
