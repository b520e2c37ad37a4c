"""``python -m sagemaker_emulator.stack up|env|status|down`` as a shell user runs it."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import boto3
import pytest

from sagemaker_emulator.stack import free_ports

pytestmark = pytest.mark.stack


def _stack(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sagemaker_emulator.stack", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_up_env_status_down(tmp_path: Path) -> None:
    state = str(tmp_path / "state")
    moto, emulator = free_ports(2)
    up = _stack("up", "--state-dir", state, "--moto-port", str(moto), "--emulator-port", str(emulator),
                "--bucket", "one", "--bucket", "two")  # fmt: skip
    try:
        assert up.returncode == 0, up.stderr
        env_out = _stack("env", "--state-dir", state)
        exported = dict(
            shlex.split(line.removeprefix("export "))[0].split("=", 1) for line in env_out.stdout.splitlines()
        )
        assert exported["AWS_ENDPOINT_URL"] == f"http://127.0.0.1:{moto}"
        assert exported["AWS_ENDPOINT_URL_SAGEMAKER"] == f"http://127.0.0.1:{emulator}"
        assert '"service_config":{"sagemaker"' in exported["AIRFLOW_CONN_AWS_DEFAULT"]
        # The exported variables alone route boto3: S3 to moto, SageMaker to the emulator.
        saved = dict(os.environ)
        try:
            os.environ.update(exported)
            buckets = {b["Name"] for b in boto3.client("s3").list_buckets()["Buckets"]}
            assert {"one", "two"} <= buckets
            assert boto3.client("sagemaker").list_processing_jobs()["ProcessingJobSummaries"] == []
        finally:
            os.environ.clear()
            os.environ.update(saved)
        status = _stack("status", "--state-dir", state)
        assert status.returncode == 0
        assert "running: True" in status.stdout
        again = _stack("up", "--state-dir", state, "--moto-port", str(moto), "--emulator-port", str(emulator))
        assert again.returncode == 0, again.stderr
    finally:
        down = _stack("down", "--state-dir", state)
    assert down.returncode == 0
    assert "stopped" in down.stdout
    assert _stack("status", "--state-dir", state).returncode == 3
