"""``boltzgen-airflow calibrate`` reads committed stages from a real S3 API (moto server) and
SageMaker's record of the jobs (moto's SageMaker, standing in for AWS)."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import boto3
import yaml
from support.dag_campaigns import write_campaign

from boltzgen_airflow.campaign.loading import load_campaign
from boltzgen_airflow.cli import main, read_timings
from boltzgen_airflow.storage.layout import MANIFEST_FILE, Layout


def commit_folding(
    s3: Any, layout: Layout, key: str, job: str, started_at: str, runs: list[tuple], gpu: str | None = "A10G"
) -> None:
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
        "gpu_model": gpu,
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


class WithClusterConfig:
    """moto's DescribeProcessingJob leaves out ProcessingResources, which SageMaker returns: add it."""

    def __init__(self, client: Any, instance_type: str) -> None:
        self.client, self.instance_type = client, instance_type

    def describe_processing_job(self, **kwargs: Any) -> dict[str, Any]:
        record = self.client.describe_processing_job(**kwargs)
        cluster = {"InstanceCount": 1, "InstanceType": self.instance_type, "VolumeSizeInGB": 10}
        return {**record, "ProcessingResources": {"ClusterConfig": cluster}}


def test_calibrate_reads_the_committed_timings_and_job_records(s3, moto_endpoint, tmp_path):
    client, bucket = s3
    path = write_campaign(tmp_path, "calib", bucket)
    campaign = load_campaign(path)
    layout = Layout(bucket, campaign.aws.prefix)
    sagemaker = boto3.client("sagemaker", endpoint_url=moto_endpoint, region_name="us-east-1")
    created = create_job(sagemaker, "calib-folding-1")
    started = (created + timedelta(seconds=300)).isoformat()
    # No GPU in the manifest (a CPU-only host): the job's instance type says which GPU it stands for.
    runs = [(200, 10, 900.0), (400, 20, 2500.0)]
    commit_folding(client, layout, "1" * 32, "calib-folding-1", started, runs, gpu=None)
    commit_folding(client, layout, "2" * 32, "calib-folding-gone", started, [(300, 5, 600.0)])
    commit_folding(client, layout, "3" * 32, "calib-folding-unknown", started, [(250, 8, 700.0)], gpu=None)
    samples, provisioning = read_timings(client, WithClusterConfig(sagemaker, "ml.g5.xlarge"), layout)
    found = sorted((t.residues, t.count, t.seconds, t.gpu_model) for t in samples)
    assert found == [
        (200, 10, 900.0, "A10G"),
        (250, 8, 700.0, None),
        (300, 5, 600.0, "A10G"),
        (400, 20, 2500.0, "A10G"),
    ]
    assert all(t.stage == "folding" for t in samples)
    assert provisioning == [300.0]  # the jobs SageMaker no longer knows add no provisioning figure


def test_calibrate_writes_a_time_model_that_names_what_it_fitted(
    s3, moto_endpoint, tmp_path, monkeypatch, capsys
):
    client, bucket = s3
    path = write_campaign(tmp_path, "calib", bucket)
    layout = Layout(bucket, load_campaign(path).aws.prefix)
    sagemaker = boto3.client("sagemaker", endpoint_url=moto_endpoint, region_name="us-east-1")
    started = (create_job(sagemaker, "calib-folding-2") + timedelta(seconds=420)).isoformat()
    runs = [(200, 10, 900.0), (400, 20, 2500.0), (300, 5, 600.0)]
    commit_folding(client, layout, "4" * 32, "calib-folding-2", started, runs)
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_endpoint)
    out = tmp_path / "fitted.yaml"
    assert main(["calibrate", str(path), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "3 processes, 1 jobs" in printed
    assert "median of 1 jobs" in printed and "design                         default" in printed
    data = yaml.safe_load(out.read_text())
    assert data["provisioning_seconds_per_job"] == 420.0
    assert data["calibrated"]["folding"].startswith("3 processes")
    assert "design" not in data["calibrated"]
    # The campaign plans with it once sharding.time_model names it.
    assert main(["plan", str(path), "--set", "sharding.time_model=" + str(out)]) == 0
    assert "time model: calibrated affinity, folding, model_load_seconds, provisioning_seconds_per_job" in (
        capsys.readouterr().out
    )


def test_calibrate_says_when_nothing_is_committed(s3, moto_endpoint, tmp_path, monkeypatch, capsys):
    _, bucket = s3
    path = write_campaign(Path(tmp_path), "empty", bucket)
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_endpoint)
    assert main(["calibrate", str(path)]) == 1
    assert "no committed stage under" in capsys.readouterr().out
