"""The amazon provider's hooks as the stage tasks use them: clients from an Airflow connection, and
a SageMaker hook whose job creation waits out throttling and exhausted instance quotas."""

from __future__ import annotations

import random
import time
from typing import Any

from airflow.providers.amazon.aws.hooks.logs import AwsLogsHook
from airflow.providers.amazon.aws.hooks.s3 import S3Hook
from airflow.providers.amazon.aws.hooks.sagemaker import SageMakerHook
from botocore.exceptions import ClientError

from boltzgen_airflow.sagemaker.links import PROCESSING_LOG_GROUP


def s3_client(aws_conn_id: str | None, region_name: str | None) -> Any:
    """
    Return a boto3 S3 client for an Airflow AWS connection.

    :param aws_conn_id: the connection id (None: the default boto3 chain).
    :param region_name: the AWS region.
    """
    return S3Hook(aws_conn_id=aws_conn_id, region_name=region_name).get_conn()


def processing_log_tail(
    job_name: str, *, aws_conn_id: str | None, region_name: str | None, lines: int = 40
) -> list[str]:
    """
    Return the last lines of a processing job's CloudWatch log streams (empty when there are none).

    :param job_name: the processing job.
    :param aws_conn_id: the connection id.
    :param region_name: the AWS region.
    :param lines: how many lines per stream.
    """
    client: Any = AwsLogsHook(aws_conn_id=aws_conn_id, region_name=region_name).get_conn()
    try:
        streams = client.describe_log_streams(
            logGroupName=PROCESSING_LOG_GROUP, logStreamNamePrefix=f"{job_name}/"
        ).get("logStreams", [])
    except client.exceptions.ResourceNotFoundException:
        return []
    tail: list[str] = []
    for stream in streams[:4]:
        name = stream["logStreamName"]
        events = client.get_log_events(
            logGroupName=PROCESSING_LOG_GROUP, logStreamName=name, limit=lines, startFromHead=False
        ).get("events", [])
        tail.extend(f"[{name}] {event['message'].rstrip()}" for event in events)
    return tail


# CreateProcessingJob rejected these without creating anything: trying again later is safe.
CREATE_RETRY_CODES = frozenset({"ThrottlingException", "Throttling", "ResourceLimitExceeded"})


def error_code(error: ClientError) -> str:
    """:param error: a botocore client error; its AWS error code (empty when absent)."""
    return str(error.response.get("Error", {}).get("Code", ""))


class ProcessingJobHook(SageMakerHook):
    """
    ``SageMakerHook`` whose ``create_processing_job`` backs off when SageMaker throttles the call or
    the account's instance quota is used up, instead of failing the task at once.

    botocore retries throttling a few times within a second or two; a quota frees only when other
    jobs end, which takes minutes. The pause doubles from ``create_retry_delay`` seconds (with
    jitter, so tasks turned away together do not return together) up to one minute. The job name
    is the try's own, so a create whose answer was lost and which botocore sent again
    (``ResourceInUse``) found this very job: it is taken as created, never created twice.

    :param create_attempts: calls to CreateProcessingJob in all.
    :param create_retry_delay: the first pause, in seconds.
    """

    def __init__(self, *args: Any, create_attempts: int = 6, create_retry_delay: float = 4.0, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.create_attempts = max(1, create_attempts)
        self.create_retry_delay = max(0.0, create_retry_delay)

    def _create(self, config: dict[str, Any]) -> dict[str, Any]:
        name = config["ProcessingJobName"]
        client: Any = self.get_conn()
        for attempt in range(1, self.create_attempts + 1):
            try:
                response: dict[str, Any] = client.create_processing_job(**config)
                return response
            except ClientError as err:
                code = error_code(err)
                if code == "ResourceInUse":
                    existing = self.describe_processing_job(name)
                    self.log.info("Job %s already exists (a create sent twice): waiting for it", name)
                    return {
                        "ProcessingJobArn": existing["ProcessingJobArn"],
                        "ResponseMetadata": {"HTTPStatusCode": 200},
                    }
                if code not in CREATE_RETRY_CODES or attempt == self.create_attempts:
                    raise
                pause = min(60.0, self.create_retry_delay * 2 ** (attempt - 1)) * random.uniform(0.75, 1.0)  # noqa: S311 (jitter, not secrecy)
                self.log.warning(
                    "CreateProcessingJob %s: %s (%s); trying again in %.0f s (%d of %d)",
                    name,
                    code,
                    err.response.get("Error", {}).get("Message", ""),
                    pause,
                    attempt,
                    self.create_attempts - 1,
                )
                time.sleep(pause)
        raise AssertionError("unreachable")

    def create_processing_job(
        self,
        config: dict,
        wait_for_completion: bool = True,
        check_interval: int = 30,
        max_ingestion_time: int | None = None,
    ) -> dict[str, Any]:
        """
        Create a processing job as the provider does, backing off on throttling and quotas.

        :param config: the CreateProcessingJob request.
        :param wait_for_completion: whether to wait until the job ends.
        :param check_interval: seconds between status polls while waiting.
        :param max_ingestion_time: seconds after which waiting fails (None: no limit).
        """
        response = self._create(config)
        if wait_for_completion:
            self.check_status(
                config["ProcessingJobName"],
                "ProcessingJobStatus",
                self.describe_processing_job,
                check_interval,
                max_ingestion_time,
            )
        return response
