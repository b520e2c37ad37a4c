"""The jobs' extra links: the AWS console on AWS, the emulator's job page on the local stack."""

from __future__ import annotations

import pytest

from boltzgen_airflow.sagemaker.links import ProcessingJobLogsLink, SageMakerProcessingJobLink

JOB = "bg-demo-fold-s0001-0123456789"


def test_on_aws_the_links_open_the_console(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_ENDPOINT_URL_SAGEMAKER", raising=False)
    job = SageMakerProcessingJobLink().format_link(
        region_name="eu-west-1", aws_domain="aws.amazon.com", job_name=JOB
    )
    assert job == f"https://console.aws.amazon.com/sagemaker/home?region=eu-west-1#/processing-jobs/{JOB}"
    logs = ProcessingJobLogsLink().format_link(
        region_name="eu-west-1", aws_domain="aws.amazon.com", job_name=JOB
    )
    assert logs.startswith("https://console.aws.amazon.com/cloudwatch/home?region=eu-west-1#logsV2:")
    assert logs.endswith(f"$3FlogStreamNameFilter$3D{JOB}")


def test_on_the_local_stack_the_links_open_the_emulators_job_page(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL_SAGEMAKER", "http://127.0.0.1:4599/")
    job = SageMakerProcessingJobLink().format_link(
        region_name="us-east-1", aws_domain="aws.amazon.com", job_name=JOB
    )
    assert job == f"http://127.0.0.1:4599/_emulator/jobs/{JOB}"
    logs = ProcessingJobLogsLink().format_link(
        region_name="us-east-1", aws_domain="aws.amazon.com", job_name=JOB
    )
    assert logs == f"http://127.0.0.1:4599/_emulator/jobs/{JOB}#log"
    assert ProcessingJobLogsLink().format_link(region_name="us-east-1") == ""
