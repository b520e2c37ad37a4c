"""Fixtures of the DAG tests: a real S3 (moto server on loopback) and campaign files."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """An S3 endpoint served by moto over HTTP, so boto3 talks to a real server."""
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture
def s3(moto_endpoint: str, request: pytest.FixtureRequest) -> Iterator[tuple[Any, str]]:
    """A boto3 S3 client and a fresh bucket."""
    client = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1")
    bucket = "bg-test-" + request.node.name.lower().replace("_", "-")[:40].strip("-[]")
    bucket = "".join(c if c.isalnum() or c == "-" else "-" for c in bucket).strip("-")
    client.create_bucket(Bucket=bucket)
    yield client, bucket


PROJECT = Path(__file__).resolve().parents[2]
E2E_CAMPAIGN = """\
name: {name}
description: Two example specs through every stage on the local stack.
owner: e2e
tags: [e2e]
retries: 0
aws:
  bucket: {bucket}
  prefix: e2e
  role_arn: arn:aws:iam::123456789012:role/boltzgen-processing
  image_uri: boltzgen-sim:latest
  network_isolation: false
design:
  specs: {specs}
  include: "{include}"
  protocol: protein-anything
  num_designs: 3
  budget: 2
  diffusion_batch_size: 1
scaling:
  preset: small
sharding:
  target_hours: 0.01
"""


def write_campaign(folder: Path, name: str, bucket: str, include: str = "[vz]*/*.yaml") -> Path:
    """Write a small campaign over two of the example specs."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.yaml"
    text = E2E_CAMPAIGN.format(name=name, bucket=bucket, specs=PROJECT / "include" / "specs", include=include)
    path.write_text(text)
    return path


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
