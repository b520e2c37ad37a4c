"""``boltzgen-airflow calibrate`` reads committed stages from a real S3 API (moto server) and
SageMaker's record of the jobs (moto's SageMaker, standing in for AWS)."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import boto3
import yaml
from conftest import write_campaign

from boltzgen_airflow.cli import main, read_timings
from boltzgen_airflow.config import load_campaign
from boltzgen_airflow.layout import MANIFEST_FILE, Layout


def commit_folding(s3: Any, layout: Layout, key: str, job: str, started_at: str, runs: list[tuple]) -> None:
    attempt = layout.attempt_prefix("folding", key, job)
    items = [
        {"spec": f"{'a' * 64}/s{i}.yaml", "spec_name": f"s{i}.yaml", "start": 0, "count": n, "residues": r}
        for i, (r, n, _) in enumerate(runs)
    ]
    timings = [
        {"spec": item["spec"], "start": 0, "count": item["count"], "seconds": sec, "exit_code": 0, "gpu": 0}
        for item, (_, _, sec) in zip(items, runs, strict=True)
    ]
    timings.append({**timings[0], "start": 5, "seconds": 1.0, "exit_code": 0})  # no such item: ignored
    manifest = {
        "stage": "folding",
        "items": items,
        "timings": timings,
        "gpu_model": "A10G",
        "started_at": started_at,
    }
    s3.put_object(Bucket=layout.bucket, Key=attempt + MANIFEST_FILE, Body=json.dumps(manifest).encode())
    record = {"stage": "folding", "bucket": layout.bucket, "attempt_prefix": attempt, "job_name": job}
    s3.put_object(
        Bucket=layout.bucket, Key=layout.commit_key("folding", key), Body=json.dumps(record).encode()
    )


def create_job(sagemaker: Any, name: str) -> Any:
    sagemaker.create_processing_job(
        ProcessingJobName=name,
        ProcessingResources={
            "ClusterConfig": {"InstanceCount": 1, "InstanceType": "ml.g5.xlarge", "VolumeSizeInGB": 10}
        },
        AppSpecification={"ImageUri": "123456789012.dkr.ecr.us-east-1.amazonaws.com/boltzgen:0.3.2"},
        RoleArn="arn:aws:iam::123456789012:role/boltzgen",
    )
    return sagemaker.describe_processing_job(ProcessingJobName=name)["CreationTime"]


def test_calibrate_fits_the_committed_timings(s3, moto_endpoint, tmp_path, monkeypatch, capsys):
    client, bucket = s3
    path = write_campaign(tmp_path, "calib", bucket)
    campaign = load_campaign(path)
    layout = Layout(bucket, campaign.aws.prefix)
    sagemaker = boto3.client("sagemaker", endpoint_url=moto_endpoint, region_name="us-east-1")
    created = create_job(sagemaker, "calib-folding-1")
    started = (created + timedelta(seconds=300)).isoformat()
    commit_folding(
        client, layout, "1" * 32, "calib-folding-1", started, [(200, 10, 900.0), (400, 20, 2500.0)]
    )
    commit_folding(client, layout, "2" * 32, "calib-folding-gone", started, [(300, 5, 600.0)])
    samples, provisioning = read_timings(client, sagemaker, layout)
    assert sorted((t.residues, t.count, t.seconds) for t in samples) == [
        (200, 10, 900.0),
        (300, 5, 600.0),
        (400, 20, 2500.0),
    ]
    assert all(t.stage == "folding" and t.gpu_model == "A10G" for t in samples)
    assert provisioning == [300.0]  # the job SageMaker no longer knows adds no provisioning figure

    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_endpoint)
    out = tmp_path / "fitted.yaml"
    assert main(["calibrate", str(path), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "3 processes, 1 jobs" in printed
    assert "provisioning_seconds_per_job" in printed and "median of 1 jobs" in printed
    data = yaml.safe_load(out.read_text())
    assert data["provisioning_seconds_per_job"] == 300.0
    assert data["calibrated"]["folding"].startswith("3 processes")
    assert "design" not in data["calibrated"]


def test_calibrate_says_when_nothing_is_committed(s3, moto_endpoint, tmp_path, monkeypatch, capsys):
    _, bucket = s3
    path = write_campaign(Path(tmp_path), "empty", bucket)
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_endpoint)
    assert main(["calibrate", str(path)]) == 1
    assert "no committed stage under" in capsys.readouterr().out
