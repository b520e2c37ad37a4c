"""
A campaign with ``notifications.sns_topic_arn`` publishes its run's end to SNS (moto server).

The callbacks run through the DAG processor's own callback code with the request the scheduler
sends, so the notifier is rendered and called exactly as in a deployment.
"""

from __future__ import annotations

import json
import logging
import uuid
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import boto3
import pytest

from boltzgen_airflow.campaign.loading import parse_campaign
from boltzgen_airflow.campaign.model import Campaign

pytestmark = pytest.mark.airflow

CONN_ID = "bg_notify"
SECRET = "notify-secret-Xq81"


def campaign(topic_arn: str, **notifications: Any) -> Campaign:
    data = {
        "name": "notified",
        "aws": {
            "bucket": "bg-notified",
            "prefix": "runs",
            "role_arn": "arn:aws:iam::123456789012:role/boltzgen",
            "image_uri": "boltzgen-sim:latest",
            "conn_id": CONN_ID,
        },
        "design": {"specs": "s3://bg-notified/specs/", "num_designs": 4, "budget": 2},
        "notifications": {"sns_topic_arn": topic_arn, **notifications},
    }
    return parse_campaign(data, "notified.yaml", {})


@pytest.fixture
def topic(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> tuple[str, Any, str]:
    """An SNS topic delivering to an SQS queue, and the Airflow connection that reaches them."""
    connection = {
        "conn_type": "aws",
        "login": "testing",
        "password": SECRET,
        "extra": {"region_name": "us-east-1", "endpoint_url": moto_endpoint},
    }
    monkeypatch.setenv(f"AIRFLOW_CONN_{CONN_ID.upper()}", json.dumps(connection))
    sns = boto3.client("sns", endpoint_url=moto_endpoint, region_name="us-east-1")
    sqs = boto3.client("sqs", endpoint_url=moto_endpoint, region_name="us-east-1")
    name = f"boltzgen-{uuid.uuid4().hex[:8]}"
    arn = sns.create_topic(Name=name)["TopicArn"]
    queue = sqs.create_queue(QueueName=name)["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    sns.subscribe(TopicArn=arn, Protocol="sqs", Endpoint=queue_arn)
    return arn, sqs, queue


def received(sqs: Any, queue: str) -> list[dict[str, Any]]:
    messages = sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10, WaitTimeSeconds=1).get(
        "Messages", []
    )
    return [json.loads(m["Body"]) for m in messages]


def run_callbacks(dag: Any, run_id: str, state: str, *, failure: bool) -> None:
    """Run the DAG's callbacks as the DAG processor does on the scheduler's request."""
    from airflow.api_fastapi.execution_api.datamodels.taskinstance import DagRun, TaskInstance
    from airflow.callbacks.callback_requests import DagCallbackRequest, DagRunContext
    from airflow.dag_processing.processor import _execute_dag_callbacks

    now = datetime.now(UTC)
    dag_run = DagRun(
        dag_id=dag.dag_id,
        run_id=run_id,
        logical_date=now,
        data_interval_start=now,
        data_interval_end=now,
        run_after=now,
        start_date=now,
        end_date=now,
        run_type="manual",
        state=state,
        consumed_asset_events=[],
        partition_key=None,
        conf={},
    )
    last_ti = TaskInstance(
        id=uuid.uuid4(),
        task_id="report",
        dag_id=dag.dag_id,
        run_id=run_id,
        try_number=1,
        dag_version_id=uuid.uuid4(),
    )
    request = DagCallbackRequest(
        filepath="boltzgen_campaigns.py",
        bundle_name="dags-folder",
        bundle_version=None,
        dag_id=dag.dag_id,
        run_id=run_id,
        context_from_server=DagRunContext(dag_run=dag_run, last_ti=last_ti),
        is_failure_callback=failure,
        msg="task_failure" if failure else "success",
    )
    _execute_dag_callbacks(SimpleNamespace(dags={dag.dag_id: dag}), request, logging.getLogger(__name__))  # type: ignore[arg-type]


def test_the_dag_callbacks_are_the_sns_notifier() -> None:
    from airflow.providers.amazon.aws.notifications.sns import SnsNotifier

    from boltzgen_airflow.dag.builder import build_dag

    arn = "arn:aws:sns:us-east-1:123456789012:boltzgen-events"
    failure_only = build_dag(campaign(arn))
    assert isinstance(failure_only.on_failure_callback, SnsNotifier)
    assert failure_only.on_failure_callback.target_arn == arn
    assert failure_only.on_failure_callback.aws_conn_id == CONN_ID
    assert not failure_only.on_success_callback

    both = build_dag(campaign(arn, on_success=True))
    assert isinstance(both.on_success_callback, SnsNotifier)
    assert isinstance(both.on_failure_callback, SnsNotifier)


def test_a_run_end_is_published_naming_campaign_run_and_state(topic: tuple[str, Any, str]) -> None:
    from boltzgen_airflow.dag.builder import build_dag

    arn, sqs, queue = topic
    dag = build_dag(campaign(arn, on_success=True))

    run_callbacks(dag, "manual__2026-01-01T00:00:00+00:00", "failed", failure=True)
    (failed,) = received(sqs, queue)
    # The same DAG object (and notifier) serves the next run's callback in one processor.
    run_callbacks(dag, "manual__2026-01-02T00:00:00+00:00", "success", failure=False)
    (succeeded,) = received(sqs, queue)

    assert failed["TopicArn"] == arn
    assert "notified" in failed["Subject"]
    assert failed["Message"] == "Run manual__2026-01-01T00:00:00+00:00 of boltzgen_notified ended failed."
    assert succeeded["Message"] == "Run manual__2026-01-02T00:00:00+00:00 of boltzgen_notified ended success."
    for message in (failed, succeeded):
        assert SECRET not in json.dumps(message) and "testing" not in message["Message"]
