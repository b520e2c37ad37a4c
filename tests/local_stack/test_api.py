"""The SageMaker API surface of the emulator: shapes, validation errors, listing, tags, async clients."""

from __future__ import annotations

import asyncio
import copy
import json
import sysconfig
import time
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from emulator_helpers import job_request, put_script, unique, wait_terminal

from sagemaker_emulator.stack import LocalStack

pytestmark = pytest.mark.stack

QUICK = "print('ok')\n"


def _base(name: str) -> dict[str, Any]:
    return job_request(name, "s3://emulator-tests/code/none/")


def _mutate(path: list[Any], value: Any) -> Any:
    def apply(req: dict[str, Any]) -> dict[str, Any]:
        target: Any = req
        for step in path[:-1]:
            target = target[step]
        if value is _DELETE:
            del target[path[-1]]
        else:
            target[path[-1]] = value
        return req

    return apply


_DELETE = object()

INPUT = {
    "InputName": "x",
    "S3Input": {"S3Uri": "s3://b/k/", "LocalPath": "/opt/ml/processing/input/x", "S3DataType": "S3Prefix"},
}


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        (_mutate(["ProcessingJobName"], "bad_name!"), "Member must satisfy regular expression pattern"),
        (_mutate(["ProcessingJobName"], "-starts-with-dash"), "processingJobName"),
        (_mutate(["ProcessingJobName"], "a" * 64), "processingJobName"),
        (_mutate(["RoleArn"], _DELETE), "roleArn"),
        (_mutate(["RoleArn"], "not-an-arn"), "roleArn"),
        (_mutate(["AppSpecification", "ImageUri"], _DELETE), "appSpecification.imageUri"),
        (_mutate(["StoppingCondition", "MaxRuntimeInSeconds"], 777601), "777600"),
        (_mutate(["StoppingCondition", "MaxRuntimeInSeconds"], 0), "maxRuntimeInSeconds"),
        (
            _mutate(["ProcessingResources", "ClusterConfig", "InstanceType"], "ml.g5.13xlarge"),
            "processingResources.clusterConfig.instanceType",
        ),
        (
            _mutate(
                ["ProcessingInputs"],
                [{**copy.deepcopy(INPUT), "InputName": f"in{i}"} for i in range(11)],
            ),
            "less than or equal to 10",
        ),
        (_mutate(["Environment"], {f"K{i}": "v" for i in range(101)}), "less than or equal to 100"),
        (_mutate(["Environment"], {"K": "v" * 257}), "Map value"),
        (_mutate(["Environment"], {"K" * 257: "v"}), "Map keys"),
    ],
    ids=[
        "name-pattern",
        "name-dash",
        "name-too-long",
        "missing-role",
        "bad-role",
        "missing-image",
        "runtime-too-long",
        "runtime-zero",
        "unknown-instance-type",
        "eleven-inputs",
        "env-101-entries",
        "env-value-257",
        "env-key-257",
    ],
)
def test_invalid_requests_are_refused_with_validation_exception(
    sm_raw: Any, change: Any, needle: str
) -> None:
    name = unique("invalid")
    request = change(_base(name))
    with pytest.raises(ClientError) as err:
        sm_raw.create_processing_job(**request)
    assert err.value.response["Error"]["Code"] == "ValidationException"
    assert needle in err.value.response["Error"]["Message"]
    assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400


def test_duplicate_name_is_resource_in_use(sm: Any, s3: Any) -> None:
    name = unique("dup")
    request = job_request(name, put_script(s3, name, QUICK))
    sm.create_processing_job(**request)
    with pytest.raises(ClientError) as err:
        sm.create_processing_job(**request)
    assert err.value.response["Error"]["Code"] == "ResourceInUse"
    wait_terminal(sm, name)


def test_missing_job_answers_like_sagemaker(sm: Any) -> None:
    # The amazon provider's name-collision check treats ValidationException as "no such job".
    with pytest.raises(ClientError) as err:
        sm.describe_processing_job(ProcessingJobName="never-created-job")
    assert err.value.response["Error"]["Code"] == "ValidationException"
    assert (
        "Could not find requested job with name never-created-job" in err.value.response["Error"]["Message"]
    )
    with pytest.raises(ClientError) as err:
        sm.stop_processing_job(ProcessingJobName="never-created-job")
    assert err.value.response["Error"]["Code"] == "ResourceNotFound"


def test_describe_has_the_real_shape(sm: Any, s3: Any) -> None:
    name = unique("shape")
    request = job_request(name, put_script(s3, name, QUICK), env={"A": "1"})
    arn = sm.create_processing_job(**request, Tags=[{"Key": "campaign", "Value": "demo"}])["ProcessingJobArn"]
    assert arn == f"arn:aws:sagemaker:us-east-1:123456789012:processing-job/{name}"
    desc = wait_terminal(sm, name)
    assert desc["ProcessingJobArn"] == arn
    assert desc["ProcessingJobStatus"] == "Completed"
    assert desc["ProcessingResources"] == request["ProcessingResources"]
    assert desc["Environment"] == {"A": "1"}
    assert desc["AppSpecification"] == request["AppSpecification"]
    assert desc["StoppingCondition"] == {"MaxRuntimeInSeconds": 120}
    assert desc["RoleArn"] == request["RoleArn"]
    assert desc["ProcessingInputs"][0]["S3Input"]["S3InputMode"] == "File"
    # botocore parsed epoch-second timestamps into datetimes, in order.
    assert desc["CreationTime"] <= desc["ProcessingStartTime"] <= desc["ProcessingEndTime"]
    assert desc["LastModifiedTime"] >= desc["CreationTime"]
    assert "FailureReason" not in desc
    assert sm.list_tags(ResourceArn=arn)["Tags"] == [{"Key": "campaign", "Value": "demo"}]
    sm.add_tags(ResourceArn=arn, Tags=[{"Key": "shard", "Value": "s0001"}, {"Key": "campaign", "Value": "x"}])
    tags = {t["Key"]: t["Value"] for t in sm.list_tags(ResourceArn=arn)["Tags"]}
    assert tags == {"campaign": "x", "shard": "s0001"}


def test_list_filters_sorts_and_paginates(sm: Any, s3: Any) -> None:
    tag = unique("lst")
    code = put_script(s3, tag, QUICK)
    names = [f"{tag}-{i}" for i in range(5)]
    before = time.time()
    for name in names:
        sm.create_processing_job(**job_request(name, code))
    for name in names:
        wait_terminal(sm, name)
    listed = sm.list_processing_jobs(NameContains=tag, SortBy="Name", SortOrder="Ascending")
    assert [s["ProcessingJobName"] for s in listed["ProcessingJobSummaries"]] == names
    summary = listed["ProcessingJobSummaries"][0]
    assert set(summary) >= {"ProcessingJobName", "ProcessingJobArn", "CreationTime", "ProcessingJobStatus"}
    newest_first = sm.list_processing_jobs(NameContains=tag.upper())["ProcessingJobSummaries"]
    assert [s["ProcessingJobName"] for s in newest_first] == names[::-1]

    pages = list(
        sm.get_paginator("list_processing_jobs").paginate(
            NameContains=tag, SortBy="CreationTime", SortOrder="Ascending", PaginationConfig={"PageSize": 2}
        )
    )
    assert [len(p["ProcessingJobSummaries"]) for p in pages] == [2, 2, 1]
    assert [s["ProcessingJobName"] for p in pages for s in p["ProcessingJobSummaries"]] == names

    assert (
        len(sm.list_processing_jobs(NameContains=tag, StatusEquals="Completed")["ProcessingJobSummaries"])
        == 5
    )
    assert sm.list_processing_jobs(NameContains=tag, StatusEquals="Failed")["ProcessingJobSummaries"] == []
    assert (
        sm.list_processing_jobs(NameContains=tag, CreationTimeBefore=before)["ProcessingJobSummaries"] == []
    )
    after = sm.list_processing_jobs(NameContains=tag, CreationTimeAfter=before, LastModifiedTimeAfter=before)
    assert len(after["ProcessingJobSummaries"]) == 5


def test_aiobotocore_client_and_provider_waiter_see_the_job(stack: LocalStack, s3: Any) -> None:
    """The deferrable operator's trigger polls with aiobotocore and the provider's custom waiter."""
    from aiobotocore.session import get_session
    from aiobotocore.waiter import create_waiter_with_client
    from botocore.waiter import WaiterModel

    # The provider's own waiter definition, read without importing Airflow (slow to import).
    model_file = (
        Path(sysconfig.get_paths()["purelib"]) / "airflow/providers/amazon/aws/waiters/sagemaker.json"
    )
    waiter_model = WaiterModel(json.loads(model_file.read_text()))

    name = unique("async")
    code = put_script(s3, name, "import time; time.sleep(1); print('done')\n")

    async def run() -> dict[str, Any]:
        session = get_session()
        async with session.create_client(
            "sagemaker",
            endpoint_url=stack.emulator_url,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        ) as client:
            await client.create_processing_job(**job_request(name, code))
            waiter = create_waiter_with_client("ProcessingJobComplete", waiter_model, client)
            await waiter.wait(ProcessingJobName=name, WaiterConfig={"Delay": 1, "MaxAttempts": 30})
            return await client.describe_processing_job(ProcessingJobName=name)

    desc = asyncio.run(run())
    assert desc["ProcessingJobStatus"] == "Completed"


def test_requests_for_another_region_see_none_of_its_jobs(stack: LocalStack, sm: Any, s3: Any) -> None:
    # The emulator is SageMaker in the stack's region: a client signed for another region must not
    # find, stop or list its jobs, nor create one, as on AWS (where that region has its own endpoint).
    name = unique("region")
    sm.create_processing_job(**job_request(name, put_script(s3, name, QUICK)))
    elsewhere = boto3.client(
        "sagemaker",
        endpoint_url=stack.emulator_url,
        region_name="eu-west-2",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    with pytest.raises(ClientError) as err:
        elsewhere.describe_processing_job(ProcessingJobName=name)
    assert err.value.response["Error"]["Code"] == "ValidationException"
    with pytest.raises(ClientError) as err:
        elsewhere.stop_processing_job(ProcessingJobName=name)
    assert err.value.response["Error"]["Code"] == "ResourceNotFound"
    assert elsewhere.list_processing_jobs(NameContains=name)["ProcessingJobSummaries"] == []
    with pytest.raises(ClientError, match="this emulator serves region us-east-1; the request was signed"):
        elsewhere.create_processing_job(**job_request(unique("region"), put_script(s3, name, QUICK)))
    assert sm.describe_processing_job(ProcessingJobName=name)["ProcessingJobName"] == name
    wait_terminal(sm, name)
