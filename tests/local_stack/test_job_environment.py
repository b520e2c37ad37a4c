"""What a job's process inherits from the emulator's host, and what it does not."""

from __future__ import annotations

from pathlib import Path

import pytest

from sagemaker_emulator.config import EmulatorConfig
from sagemaker_emulator.faults import FaultBook
from sagemaker_emulator.runner import JobRunner
from sagemaker_emulator.store import Job, JobStore


def _job() -> Job:
    request = {
        "ProcessingResources": {"ClusterConfig": {"InstanceCount": 1, "InstanceType": "ml.g5.xlarge"}},
        "Environment": {"BOLTZGEN_STEP_ROOT": "/opt/ml"},
    }
    return Job(
        name="env-job",
        arn="arn:aws:sagemaker:us-east-1:123456789012:processing-job/env-job",
        status="InProgress",
        request=request,
    )


def test_weights_cache_reaches_jobs_and_credentials_do_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HOME", "/srv/hf-cache")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "host-secret")
    config = EmulatorConfig(state_dir=tmp_path, gpus=0)
    runner = JobRunner(config, JobStore(tmp_path / "jobs.sqlite"), FaultBook(tmp_path / "faults.json"))
    root = tmp_path / "jobs" / "env-job" / "opt_ml"

    env = runner.job_environment(_job(), root, [])

    # Real BoltzGen on a workstation reads its weights from the host's cache, offline.
    assert env["HF_HOME"] == "/srv/hf-cache" and env["HF_HUB_OFFLINE"] == "1"
    assert env["BOLTZGEN_STEP_ROOT"] == str(root)
    assert "AWS_SECRET_ACCESS_KEY" not in env
