"""The IAM policies in docs/iam/ allow every AWS call the DAG code makes, and no more than they claim.

The sources are scanned with ast (see deploy_aws_calls); nothing calls AWS. The policy evaluation is
a small allow-list evaluator (action globs only): real IAM cannot run here.
"""

from __future__ import annotations

import fnmatch
import json
from pathlib import Path

import pytest
from deploy_aws_calls import (
    AwsCall,
    allowing_statements,
    calls_in_source,
    load_policy,
    missing,
    scan,
)

ROOT = Path(__file__).resolve().parents[2]
IAM_DIR = ROOT / "docs" / "iam"
AIRFLOW_POLICY = IAM_DIR / "airflow-role-policy.json"
EXECUTION_POLICY = IAM_DIR / "sagemaker-execution-role-policy.json"
TRUST_POLICY = IAM_DIR / "sagemaker-execution-role-trust.json"
# What runs inside Airflow (scheduler, workers, triggerer, DAG processor).
AIRFLOW_SOURCES = [ROOT / "plugins", ROOT / "dags"]

VALUES = {
    "REGION": "us-east-1",
    "ACCOUNT_ID": "123456789012",
    "BUCKET": "example-campaigns",
    "PREFIX": "boltzgen",
    "SAGEMAKER_EXECUTION_ROLE_NAME": "BoltzGenSageMakerExecution",
    "SNS_TOPIC_NAME": "boltzgen-campaigns",
    "KMS_KEY_ID": "1234abcd-12ab-34cd-56ef-1234567890ab",
    "ECR_REPOSITORY": "boltzgen",
}

# What the amazon provider's classes call on the project's behalf; the scan cannot see inside
# them. Read from apache-airflow-providers-amazon 9.39.0 and checked against 9.34.0 (MWAA):
PROVIDER_CALLS = [
    # SageMakerProcessingOperator.execute: the unique-name check (DescribeProcessingJob in 9.39,
    # ListProcessingJobs through count_processing_jobs_by_name for action_if_job_exists in older
    # releases), CreateProcessingJob, then DescribeProcessingJob for the status and the result.
    ("SageMakerProcessingOperator.execute", "sagemaker:DescribeProcessingJob"),
    ("SageMakerProcessingOperator.execute", "sagemaker:ListProcessingJobs"),
    ("SageMakerProcessingOperator.execute", "sagemaker:CreateProcessingJob"),
    # CreateProcessingJob with Tags is authorised as AddTags too.
    ("SageMakerProcessingOperator.execute (Tags)", "sagemaker:AddTags"),
    # The job's RoleArn is passed to SageMaker.
    ("SageMakerProcessingOperator.execute (RoleArn)", "iam:PassRole"),
    # SageMakerTrigger polls the ProcessingJobComplete waiter: DescribeProcessingJob.
    ("SageMakerTrigger.run", "sagemaker:DescribeProcessingJob"),
    # The stage operator stops its job when the task is killed.
    ("SageMakerHook.stop_processing_job", "sagemaker:StopProcessingJob"),
    # SageMakerHook.describe_processing_job_with_log (synchronous wait with print_log).
    ("SageMakerHook.describe_processing_job_with_log", "logs:DescribeLogStreams"),
    ("SageMakerHook.describe_processing_job_with_log", "logs:GetLogEvents"),
    # SageMakerProcessingJobLink / list_tags on the job (operator links and OpenLineage).
    ("SageMakerHook.list_tags", "sagemaker:ListTags"),
]


@pytest.fixture(scope="module")
def airflow_policy() -> dict:
    return load_policy(AIRFLOW_POLICY, VALUES)


@pytest.fixture(scope="module")
def execution_policy() -> dict:
    return load_policy(EXECUTION_POLICY, VALUES)


def _provider_calls() -> list[AwsCall]:
    return [AwsCall(Path("<provider>"), 0, where, (action,)) for where, action in PROVIDER_CALLS]


def test_every_aws_call_of_the_dag_code_is_allowed_to_the_airflow_role(airflow_policy: dict) -> None:
    calls = scan(AIRFLOW_SOURCES)
    problems = missing(calls + _provider_calls(), airflow_policy)
    assert not problems, "docs/iam/airflow-role-policy.json lacks:\n" + "\n".join(problems)


def test_the_scan_sees_the_calls_the_code_is_known_to_make() -> None:
    # The stage operators exist to create processing jobs and the check sensor reads manifests:
    # a scan that finds neither is broken, not clean.
    found = {a for call in scan(AIRFLOW_SOURCES) for a in call.actions}
    assert "s3:GetObject" in found, "the scan no longer finds the manifest reads in plugins/"


def test_an_injected_call_the_policy_lacks_fails_the_check(airflow_policy: dict, tmp_path: Path) -> None:
    module = tmp_path / "rogue.py"
    module.write_text(
        "async def go(hook, s3):\n"
        "    conn = hook.get_conn()\n"
        "    conn.create_training_job(TrainingJobName='x')\n"
        "    async with s3 as client:\n"
        "        await client.delete_object(Bucket='b', Key='k')\n"
        "    hook.conn.get_paginator('list_object_versions')\n"
    )
    problems = missing(scan([*AIRFLOW_SOURCES, module]), airflow_policy)
    text = "\n".join(problems)
    assert "sagemaker:CreateTrainingJob" in text
    assert "s3:DeleteObject" in text
    assert "s3:ListObjectVersions" in text
    assert all(str(module) in p for p in problems)


def test_a_provider_action_missing_from_the_policy_fails_the_check(airflow_policy: dict) -> None:
    trimmed = json.loads(json.dumps(airflow_policy))
    for statement in trimmed["Statement"]:
        actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        statement["Action"] = [a for a in actions if a != "sagemaker:StopProcessingJob"] or ["none:None"]
    problems = missing(_provider_calls(), trimmed)
    assert problems == ["<provider>:0: SageMakerHook.stop_processing_job needs sagemaker:StopProcessingJob"]


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("c.list_objects_v2(Bucket='b')", ("s3:ListBucket",)),
        ("c.head_object(Bucket='b', Key='k')", ("s3:GetObject",)),
        ("c.copy_object(Bucket='b', Key='k', CopySource='x')", ("s3:GetObject", "s3:PutObject")),
        ("c.describe_processing_job(ProcessingJobName='n')", ("sagemaker:DescribeProcessingJob",)),
        ("c.filter_log_events(logGroupName='g')", ("logs:FilterLogEvents",)),
        ("c.publish(TopicArn='t', Message='m')", ("sns:Publish",)),
        ("c.get_waiter('processing_job_completed_or_stopped')", ("sagemaker:DescribeProcessingJob",)),
        ("hook.load_string('x', key='k', bucket_name='b')", ("s3:PutObject",)),
        ("c.upload_file('f', 'b', 'k')", ("s3:PutObject",)),
        ("re.compile('x').search('y')", None),
        ("json.dumps({})", None),
    ],
)
def test_method_names_map_to_iam_actions(source: str, expected: tuple[str, ...] | None) -> None:
    calls = calls_in_source(source, Path("m.py"))
    if expected is None:
        assert calls == []
    else:
        assert [c.actions for c in calls] == [expected]


def test_a_dynamic_paginator_is_reported_rather_than_passed(airflow_policy: dict) -> None:
    calls = calls_in_source("c.get_paginator(name)", Path("m.py"))
    assert missing(calls, airflow_policy) == ["m.py:1: get_paginator(<dynamic>) needs <unresolved>"]


def test_pass_role_is_limited_to_the_execution_role_and_sagemaker(airflow_policy: dict) -> None:
    statements = allowing_statements(airflow_policy, "iam:PassRole")
    assert len(statements) == 1
    (statement,) = statements
    assert statement["Resource"] == "arn:aws:iam::123456789012:role/BoltzGenSageMakerExecution"
    assert statement["Condition"] == {"StringEquals": {"iam:PassedToService": "sagemaker.amazonaws.com"}}


def test_processing_job_actions_cover_the_names_the_code_builds(airflow_policy: dict) -> None:
    jobs = pytest.importorskip("boltzgen_airflow.sagemaker.requests")
    names = [
        jobs.job_name("binder-campaign", "manual__2025-01-01T00:00:00+00:00", stage, "s0001", 1)
        for stage in ("design", "inverse_folding", "folding", "analysis", "filtering")
    ]
    (statement,) = allowing_statements(airflow_policy, "sagemaker:CreateProcessingJob")
    for name in names:
        arn = f"arn:aws:sagemaker:us-east-1:123456789012:processing-job/{name}"
        assert fnmatch.fnmatchcase(arn, statement["Resource"]), f"{name} is outside {statement['Resource']}"


def test_no_statement_grants_a_whole_service(airflow_policy: dict, execution_policy: dict) -> None:
    for policy in (airflow_policy, execution_policy):
        for statement in policy["Statement"]:
            actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
            assert not [a for a in actions if a == "*" or a.endswith(":*")], statement["Sid"]


def test_s3_access_stays_under_the_campaign_prefix(airflow_policy: dict, execution_policy: dict) -> None:
    for policy in (airflow_policy, execution_policy):
        for statement in policy["Statement"]:
            resources = statement["Resource"]
            for resource in resources if isinstance(resources, list) else [resources]:
                if resource.startswith("arn:aws:s3:::example-campaigns/"):
                    assert resource.startswith("arn:aws:s3:::example-campaigns/boltzgen/"), statement["Sid"]
                elif resource == "arn:aws:s3:::example-campaigns":
                    prefixes = statement["Condition"]["StringLike"]["s3:prefix"]
                    assert all(p.startswith("boltzgen") for p in prefixes), statement["Sid"]


def test_the_execution_role_can_do_what_a_processing_job_does(execution_policy: dict) -> None:
    # What SageMaker does with the execution role for one job of jobs.py's shape: pull the image,
    # download the inputs (S3Prefix and ManifestFile), upload the result at the end, write logs.
    needed = [
        "ecr:GetAuthorizationToken",
        "ecr:BatchGetImage",
        "ecr:GetDownloadUrlForLayer",
        "s3:GetObject",
        "s3:ListBucket",
        "s3:PutObject",
        "logs:CreateLogStream",
        "logs:PutLogEvents",
        "cloudwatch:PutMetricData",
        "ec2:CreateNetworkInterface",
        "kms:GenerateDataKey",
    ]
    assert [a for a in needed if not allowing_statements(execution_policy, a)] == []
    (put,) = allowing_statements(execution_policy, "s3:PutObject")
    # Jobs write attempts only: never a commit, never the inputs.
    assert put["Resource"] == "arn:aws:s3:::example-campaigns/boltzgen/cache/*/attempts/*"
    assert not allowing_statements(execution_policy, "iam:PassRole")
    assert not allowing_statements(execution_policy, "sagemaker:CreateProcessingJob")


def test_only_sagemaker_of_this_account_assumes_the_execution_role() -> None:
    trust = load_policy(TRUST_POLICY, VALUES)
    (statement,) = trust["Statement"]
    assert statement["Principal"] == {"Service": "sagemaker.amazonaws.com"}
    assert statement["Condition"]["StringEquals"]["aws:SourceAccount"] == "123456789012"


def test_every_placeholder_is_documented() -> None:
    doc = (ROOT / "docs" / "iam.md").read_text(encoding="utf-8")
    for path in (AIRFLOW_POLICY, EXECUTION_POLICY, TRUST_POLICY):
        text = path.read_text(encoding="utf-8")
        for key in VALUES:
            if "{{" + key + "}}" in text:
                assert "{{" + key + "}}" in doc, f"{key} (in {path.name}) is not explained in docs/iam.md"
    with pytest.raises(KeyError, match="REGION"):
        load_policy(AIRFLOW_POLICY, {})
