"""Fixtures of the security tests: a real S3 (moto server on loopback) and a spec-tree builder."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import boto3
import pytest


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def moto_s3() -> Iterator[str]:
    """An S3 endpoint served by moto over HTTP, so boto3 talks to a real server."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=_free_port(), verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture
def s3_bucket(moto_s3: str) -> Iterator[tuple[Any, str]]:
    """A boto3 S3 client and a fresh bucket on the moto server."""
    client = boto3.client("s3", endpoint_url=moto_s3, region_name="us-east-1")
    bucket = f"bg-security-{_free_port()}"
    client.create_bucket(Bucket=bucket)
    yield client, bucket


@pytest.fixture(scope="module")
def local_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The SageMaker emulator and moto server (S3, Logs) as processes; jobs run the BoltzGen simulator."""
    from sagemaker_emulator.stack import LocalStack, free_ports

    state = tmp_path_factory.mktemp("stack")
    stack = LocalStack(state, *free_ports(2), simulated=True, buckets=["bg-secrets"])
    stack.start(timeout=180)
    try:
        yield stack
    finally:
        stack.stop()
