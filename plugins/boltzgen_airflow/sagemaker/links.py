"""Extra links: a stage task's SageMaker job and its CloudWatch logs, and the run's results."""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import quote

from airflow.providers.amazon.aws.links.base_aws import BASE_AWS_CONSOLE_LINK, BaseAwsLink
from airflow.sdk import BaseOperatorLink

PROCESSING_LOG_GROUP = "/aws/sagemaker/ProcessingJobs"


#: boto3's endpoint of SageMaker (the local stack sets it to the emulator).
SAGEMAKER_ENDPOINT_ENV = "AWS_ENDPOINT_URL_SAGEMAKER"
EMULATOR_JOB_PAGE = "/_emulator/jobs/"


def emulator_job_page(job_name: str, anchor: str = "") -> str | None:
    """
    The emulator's page of a job when SageMaker is the local emulator (else None: use the console).

    :param job_name: the processing job.
    :param anchor: a fragment of the page (``log``).
    """
    endpoint = os.environ.get(SAGEMAKER_ENDPOINT_ENV, "").rstrip("/")
    if not endpoint:
        return None
    return f"{endpoint}{EMULATOR_JOB_PAGE}{quote(job_name, safe='')}" + (f"#{anchor}" if anchor else "")


def _console_escape(text: str) -> str:
    """Escape a value the way the CloudWatch console expects inside its fragment ($ for %)."""
    return quote(quote(text, safe=""), safe="").replace("%", "$")


class SageMakerProcessingJobLink(BaseAwsLink):
    """The SageMaker console page of a processing job."""

    name = "SageMaker Processing Job"
    key = "boltzgen_processing_job"
    format_str = BASE_AWS_CONSOLE_LINK + "/sagemaker/home?region={region_name}#/processing-jobs/{job_name}"

    def format_link(self, **kwargs: str) -> str:
        """The console page, or the emulator's page of the job on the local stack."""
        local = emulator_job_page(kwargs["job_name"]) if "job_name" in kwargs else None
        return local or super().format_link(**kwargs)


class ProcessingJobLogsLink(BaseAwsLink):
    """The CloudWatch log streams of a processing job (one per instance, ``<job>/algo-<n>-<ts>``)."""

    name = "CloudWatch Logs"
    key = "boltzgen_processing_logs"
    format_str = (
        BASE_AWS_CONSOLE_LINK
        + "/cloudwatch/home?region={region_name}#logsV2:log-groups/log-group/{log_group}"
        + "$3FlogStreamNameFilter$3D{job_name}"
    )

    def format_link(self, **kwargs: str) -> str:
        """Escape the log group and job name for the console fragment."""
        if "job_name" not in kwargs:
            return ""
        local = emulator_job_page(kwargs["job_name"], "log")
        if local:
            return local
        kwargs = {**kwargs, "log_group": _console_escape(PROCESSING_LOG_GROUP)}
        kwargs["job_name"] = _console_escape(kwargs["job_name"])
        return super().format_link(**kwargs)


class CampaignViewLink(BaseOperatorLink):
    """The run in the campaign view (its designs, structures, shards and report), on the report task."""

    name = "Campaign results"

    def get_link(self, operator: Any, *, ti_key: Any) -> str:
        """The view of the task's run, under Airflow's base URL."""
        from airflow.configuration import conf

        from boltzgen_airflow.ui.paths import view_path

        base = (conf.get("api", "base_url", fallback="") or "").rstrip("/")
        return base + view_path(ti_key.dag_id, ti_key.run_id)
