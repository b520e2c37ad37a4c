"""CreateProcessingJob requests: the job contract, SageMaker's limits, and job names."""

from __future__ import annotations

import boto3
import pytest
from botocore.stub import Stubber
from hypothesis import given
from hypothesis import strategies as st

from boltzgen_airflow.exceptions import JobRequestError
from boltzgen_airflow.sagemaker.limits import JOB_NAME_RE
from boltzgen_airflow.sagemaker.requests import (
    JobLocations,
    JobResources,
    JobSettings,
    build_processing_request,
    job_name,
    request_summary,
)
from boltzgen_airflow.stages import STAGES

SETTINGS = JobSettings(
    role_arn="arn:aws:iam::123456789012:role/boltzgen",
    image_uri="123456789012.dkr.ecr.us-east-1.amazonaws.com/boltzgen:0.3.2",
    subnets=("subnet-0123456789abcdef0",),
    security_group_ids=("sg-0123456789abcdef0",),
    kms_key_id="alias/boltzgen",
    tags={"team": "design"},
)
RESOURCES = JobResources("ml.g5.2xlarge", 1, 100, 7200)
BASE = "s3://bucket/bg"


def locations(stage: str) -> JobLocations:
    return JobLocations(
        code=f"{BASE}/code/abc",
        work=f"{BASE}/campaigns/c/runs/r/work/{stage}/s0000",
        specs_manifest=f"{BASE}/inputs/_manifests/m.json",
        result=f"{BASE}/cache/{stage}/k/attempts/job",
        upstream=None if stage in ("design", "filtering") else f"{BASE}/cache/prev/k/attempts/j/",
        analysis_manifest=f"{BASE}/m/analysis.json" if stage == "filtering" else None,
    )


@pytest.mark.parametrize("stage", STAGES)
def test_request_follows_the_job_contract(stage: str) -> None:
    request = build_processing_request(
        stage=stage,
        name=job_name("camp", "run", stage, "s0000", 1),
        settings=SETTINGS,
        resources=RESOURCES,
        locations=locations(stage),
        tags={"boltzgen:stage": stage},
    )
    inputs = {i["InputName"]: i["S3Input"] for i in request["ProcessingInputs"]}
    expected = {"code", "work", "specs"} | (
        {"analysis"} if stage == "filtering" else set() if stage == "design" else {"upstream"}
    )
    assert set(inputs) == expected
    for name, spec in inputs.items():
        assert spec["LocalPath"] == f"/opt/ml/processing/input/{name}"
    assert inputs["specs"]["S3DataType"] == "ManifestFile"
    assert inputs["code"]["S3Uri"].endswith("/")
    app = request["AppSpecification"]
    assert app["ContainerEntrypoint"] == ["python3", f"/opt/ml/processing/input/code/{stage}.py"]
    assert app["ContainerArguments"] == ["--work", "/opt/ml/processing/input/work/work.json"]
    assert request["Environment"] == {"BOLTZGEN_STEP_ROOT": "/opt/ml"}
    (output,) = request["ProcessingOutputConfig"]["Outputs"]
    assert output["OutputName"] == "result"
    assert output["S3Output"]["LocalPath"] == "/opt/ml/processing/output/result"
    assert output["S3Output"]["S3UploadMode"] == "EndOfJob"
    assert output["S3Output"]["S3Uri"] == f"{BASE}/cache/{stage}/k/attempts/job/"
    assert request["ProcessingOutputConfig"]["KmsKeyId"] == "alias/boltzgen"
    assert request["ProcessingResources"]["ClusterConfig"]["VolumeKmsKeyId"] == "alias/boltzgen"
    assert request["NetworkConfig"] == {
        "EnableNetworkIsolation": True,
        "VpcConfig": {"Subnets": ["subnet-0123456789abcdef0"], "SecurityGroupIds": ["sg-0123456789abcdef0"]},
    }
    assert request["StoppingCondition"] == {"MaxRuntimeInSeconds": 7200}
    assert {"Key": "team", "Value": "design"} in request["Tags"]
    if stage == "filtering":
        assert inputs["analysis"]["S3DataType"] == "ManifestFile"


@pytest.mark.parametrize("stage", STAGES)
def test_request_passes_botocore_parameter_validation(stage: str) -> None:
    """botocore validates the request against the SageMaker service model before sending it."""
    client = boto3.client("sagemaker", region_name="us-east-1")
    request = build_processing_request(
        stage=stage,
        name=job_name("camp", "run", stage, "s0001", 2),
        settings=SETTINGS,
        resources=RESOURCES,
        locations=locations(stage),
    )
    with Stubber(client) as stub:
        stub.add_response("create_processing_job", {"ProcessingJobArn": "arn:x"}, request)
        client.create_processing_job(**request)
        stub.assert_no_pending_responses()


def test_fallback_types_become_instance_preferences_that_botocore_accepts() -> None:
    resources = JobResources("ml.g5.2xlarge", 1, 100, 7200, fallback_types=("ml.g6.2xlarge", "ml.g5.4xlarge"))
    request = build_processing_request(
        stage="folding",
        name=job_name("camp", "run", "folding", "s0002", 1),
        settings=SETTINGS,
        resources=resources,
        locations=locations("folding"),
    )
    cluster = request["ProcessingResources"]["ClusterConfig"]
    assert "InstanceType" not in cluster
    assert cluster["InstancePreferences"] == [
        {"InstanceType": "ml.g5.2xlarge"},
        {"InstanceType": "ml.g6.2xlarge"},
        {"InstanceType": "ml.g5.4xlarge"},
    ]
    assert cluster["InstanceCount"] == 1
    assert JobResources.from_dict(resources.as_dict()) == resources
    client = boto3.client("sagemaker", region_name="us-east-1")
    with Stubber(client) as stub:
        stub.add_response("create_processing_job", {"ProcessingJobArn": "arn:x"}, request)
        client.create_processing_job(**request)


def test_no_vpc_and_no_kms_leave_the_keys_out() -> None:
    settings = JobSettings(role_arn=SETTINGS.role_arn, image_uri=SETTINGS.image_uri, network_isolation=False)
    request = build_processing_request(
        stage="design", name="bg-x", settings=settings, resources=RESOURCES, locations=locations("design")
    )
    assert request["NetworkConfig"] == {"EnableNetworkIsolation": False}
    assert "KmsKeyId" not in request["ProcessingOutputConfig"]
    assert "VolumeKmsKeyId" not in request["ProcessingResources"]["ClusterConfig"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"resources": JobResources("ml.g5.xlarge", 1, 100, 777_601)}, "max runtime"),
        ({"name": "bad_name"}, "invalid SageMaker job name"),
        ({"stage": "folding", "locations": locations("design")}, "upstream attempt prefix is required"),
        ({"stage": "design", "locations": locations("folding")}, "design has no upstream"),
        (
            {"locations": JobLocations("http://x/y", "s3://b1b/w", "s3://b1b/m", "s3://b1b/r")},
            "code: invalid S3",
        ),
        ({"environment": {"BIG": "x" * 300}}, "over 256 long"),
        ({"stage": "blending"}, "unknown stage"),
    ],
)
def test_invalid_values_are_named(change: dict, message: str) -> None:
    kwargs = {
        "stage": "design",
        "name": "bg-ok",
        "settings": SETTINGS,
        "resources": RESOURCES,
        "locations": locations("design"),
        **change,
    }
    with pytest.raises(JobRequestError, match=message):
        build_processing_request(**kwargs)


def test_job_names_are_unique_per_run_stage_shard_and_attempt() -> None:
    names = {
        job_name("campaign", run, stage, shard, attempt)
        for run in ("manual__2025-01-01T00:00:00+00:00", "scheduled__2025-01-02T00:00:00+00:00")
        for stage in STAGES
        for shard in ("s0000", "s0001")
        for attempt in (1, 2)
    }
    assert len(names) == 2 * len(STAGES) * 2 * 2


@given(
    campaign=st.text(min_size=1, max_size=100),
    run_id=st.text(max_size=250),
    stage=st.sampled_from(STAGES),
    shard=st.text(max_size=80),
    attempt=st.integers(min_value=0, max_value=10_000),
)
def test_job_names_are_always_valid(campaign: str, run_id: str, stage: str, shard: str, attempt: int) -> None:
    name = job_name(campaign, run_id, stage, shard, attempt)
    assert JOB_NAME_RE.match(name)
    assert len(name) <= 63


def test_long_campaign_names_keep_the_hash() -> None:
    a = job_name("a" * 64, "r", "inverse_folding", "s0001", 1)
    b = job_name("a" * 64, "r", "inverse_folding", "s0001", 2)
    assert a != b and len(a) <= 63 and "-inv-s0001-" in a


@pytest.mark.parametrize(
    ("resources", "instance"),
    [
        (RESOURCES, "ml.g5.2xlarge"),
        (JobResources("ml.g5.2xlarge", 1, 100, 7200, ("ml.g6.2xlarge",)), "ml.g5.2xlarge or ml.g6.2xlarge"),
    ],
)
def test_the_task_log_shows_a_request_on_one_line(resources: JobResources, instance: str) -> None:
    name = job_name("camp", "run", "folding", "s0003", 2)
    request = build_processing_request(
        stage="folding", name=name, settings=SETTINGS, resources=resources, locations=locations("folding")
    )
    summary = request_summary(request)
    assert summary == (
        f"{name}: image {SETTINGS.image_uri} on 1 x {instance} (100 GB), "
        "inputs 4 (code, work, specs, upstream), outputs 1, max runtime 2 h"
    )
