"""Extra links of the stage tasks: the SageMaker console page of the job and its CloudWatch logs."""

from __future__ import annotations

from urllib.parse import quote

from airflow.providers.amazon.aws.links.base_aws import BASE_AWS_CONSOLE_LINK, BaseAwsLink

PROCESSING_LOG_GROUP = "/aws/sagemaker/ProcessingJobs"


def _console_escape(text: str) -> str:
    """Escape a value the way the CloudWatch console expects inside its fragment ($ for %)."""
    return quote(quote(text, safe=""), safe="").replace("%", "$")


class SageMakerProcessingJobLink(BaseAwsLink):
    """The SageMaker console page of a processing job."""

    name = "SageMaker Processing Job"
    key = "boltzgen_processing_job"
    format_str = BASE_AWS_CONSOLE_LINK + "/sagemaker/home?region={region_name}#/processing-jobs/{job_name}"


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
        kwargs = {**kwargs, "log_group": _console_escape(PROCESSING_LOG_GROUP)}
        kwargs["job_name"] = _console_escape(kwargs["job_name"])
        return super().format_link(**kwargs)
