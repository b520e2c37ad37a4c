"""Small helpers over the amazon provider's hooks: clients built from an Airflow connection."""

from __future__ import annotations

from typing import Any

from airflow.providers.amazon.aws.hooks.logs import AwsLogsHook
from airflow.providers.amazon.aws.hooks.s3 import S3Hook

from boltzgen_airflow.links import PROCESSING_LOG_GROUP


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
