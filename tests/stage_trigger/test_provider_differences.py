"""
The table of docs/deploy-mwaa.md section 9 ("what differs between provider 9.34.0 and 9.39.0") holds
for the installed amazon provider: every row is observed here, on the provider's own operator and
trigger against the SageMaker emulator, and compared with the table's column of that version.

``make test-mwaa`` runs this on 9.34.0 (MWAA's), ``make test`` on the development provider; a newer
provider than the table's columns is compared with the newest column, so a change shows up as a
failure that asks for a new column.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest
from airflow.providers.amazon.aws.operators.sagemaker import SageMakerProcessingOperator
from airflow.providers.amazon.aws.triggers.sagemaker import SageMakerTrigger
from airflow.providers.common.compat.sdk import TaskDeferred
from support.processing_jobs import sleeper_request as _sleeper_request
from support.processing_jobs import stop_quietly as _stop_quietly
from support.processing_jobs import wait_status as _wait_status

from sagemaker_emulator.stack import LocalStack

DOC = Path(__file__).resolve().parents[2] / "docs" / "deploy-mwaa.md"
HEADING = "## 9. What differs between"
BOTOCORE_CONFIG = {"retries": {"mode": "standard", "max_attempts": 4}}
_VERSION = re.compile(r"^\d+\.\d+\.\d+$")


def _release(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split("."))


def read_table() -> tuple[list[str], dict[str, dict[str, str]]]:
    """Return the table's provider versions and, per row, the cell of each version."""
    lines = DOC.read_text(encoding="utf-8").splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(HEADING))
    rows = []
    for line in lines[start + 1 :]:
        if line.startswith("## "):
            break
        if line.startswith("|"):
            rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    header, body = rows[0], rows[2:]
    versions = [cell for cell in header if _VERSION.match(cell)]
    assert versions, f"{DOC}: the table under {HEADING!r} names no provider version"
    columns = {cell: i for i, cell in enumerate(header) if cell in versions}
    return versions, {row[0]: {v: row[i].strip("`") for v, i in columns.items()} for row in body}


def table_column() -> str:
    """The table's column for the installed provider: its own, else the newest one before it."""
    installed = version("apache-airflow-providers-amazon")
    versions, _ = read_table()
    earlier = [v for v in versions if _release(v) <= _release(installed)]
    assert earlier, f"provider {installed} is older than every column of {DOC.name} ({versions})"
    return max(earlier, key=_release)


def _operator(stack: LocalStack, request: dict[str, Any]) -> SageMakerProcessingOperator:
    return SageMakerProcessingOperator(
        task_id="provider_check",
        config=request,
        aws_conn_id="aws_default",
        region_name=stack.region,
        verify=False,
        botocore_config=BOTOCORE_CONFIG,
        deferrable=True,
        wait_for_completion=True,
        check_interval=1,
        max_attempts=5,
        action_if_job_exists="fail",
    )


def _deferral(stack: LocalStack, s3: Any, bucket: str) -> tuple[SageMakerTrigger, list[str]]:
    """Defer the provider's own operator on a running job; the trigger and the SageMaker calls made."""
    name = f"bg-provider-{uuid.uuid4().hex[:8]}"
    op = _operator(stack, _sleeper_request(s3, bucket, name, seconds=60))
    calls: list[str] = []
    op.hook.conn.meta.events.register("before-call.sagemaker", lambda model, **_: calls.append(model.name))
    try:
        with pytest.raises(TaskDeferred) as deferred:
            op.execute({})  # type: ignore[arg-type]
    finally:
        _stop_quietly(stack.client("sagemaker"), name)
    trigger = deferred.value.trigger
    assert isinstance(trigger, SageMakerTrigger)
    return trigger, calls


def hands_aws_settings_to_trigger(stack: LocalStack, s3: Any, bucket: str) -> str:
    trigger, _ = _deferral(stack, s3, bucket)
    settings = (trigger.region_name, trigger.verify, trigger.botocore_config)
    if settings == (stack.region, False, BOTOCORE_CONFIG):
        return "yes"
    assert settings == (None, None, None), f"the trigger got part of the operator's settings: {settings}"
    return "no"


def trigger_builds_its_hook_from_them(stack: LocalStack, s3: Any, bucket: str) -> str:
    trigger = SageMakerTrigger(
        job_name="bg-provider-hook",
        job_type="Processing",
        region_name="eu-west-2",
        verify=False,
        botocore_config=BOTOCORE_CONFIG,
    )
    hook = trigger.hook()
    built = (hook.region_name, hook.verify, hook.config.retries if hook.config else None)
    return "yes" if built == ("eu-west-2", False, BOTOCORE_CONFIG["retries"]) else f"no: {built}"


def name_check_calls(stack: LocalStack, s3: Any, bucket: str) -> str:
    _, calls = _deferral(stack, s3, bucket)
    assert "CreateProcessingJob" in calls, calls
    return ", ".join(dict.fromkeys(calls[: calls.index("CreateProcessingJob")]))


def takes_output_files_to_xcom(stack: LocalStack, s3: Any, bucket: str) -> str:
    op = _operator(stack, {})
    return "yes" if hasattr(op, "output_files_to_xcom") else "no"


def _event_status(stack: LocalStack, name: str, attempts: int = 120) -> str:
    trigger = SageMakerTrigger(
        job_name=name, job_type="Processing", waiter_delay=1, waiter_max_attempts=attempts
    )

    async def first_event() -> Any:
        async for event in trigger.run():
            return event
        return None

    event = asyncio.run(first_event())
    return str(event.payload["status"])


def status_when_failed(stack: LocalStack, s3: Any, bucket: str) -> str:
    name = f"bg-provider-failed-{uuid.uuid4().hex[:8]}"
    stack.set_faults([{"pattern": name, "action": "fail", "message": "injected failure"}])
    try:
        stack.client("sagemaker").create_processing_job(**_sleeper_request(s3, bucket, name, seconds=0))
        return _event_status(stack, name)
    finally:
        stack.set_faults([])


def status_when_stopped(stack: LocalStack, s3: Any, bucket: str) -> str:
    sm = stack.client("sagemaker")
    name = f"bg-provider-stopped-{uuid.uuid4().hex[:8]}"
    sm.create_processing_job(**_sleeper_request(s3, bucket, name, seconds=60))
    _wait_status(sm, name, ("InProgress",))
    sm.stop_processing_job(ProcessingJobName=name)
    _wait_status(sm, name, ("Stopped",))
    return _event_status(stack, name)


def status_when_polls_run_out(stack: LocalStack, s3: Any, bucket: str) -> str:
    sm = stack.client("sagemaker")
    name = f"bg-provider-timeout-{uuid.uuid4().hex[:8]}"
    sm.create_processing_job(**_sleeper_request(s3, bucket, name, seconds=60))
    try:
        return _event_status(stack, name, attempts=1)
    finally:
        _stop_quietly(sm, name)


#: The table's first column -> how this test observes the row on the installed provider.
OBSERVATIONS: dict[str, Callable[[LocalStack, Any, str], str]] = {
    "The deferrable operator hands its region, verify and botocore config to its trigger": (
        hands_aws_settings_to_trigger
    ),
    "`SageMakerTrigger` builds its hook from its region, verify and botocore config": (
        trigger_builds_its_hook_from_them
    ),
    "Event status when the job ends Failed": status_when_failed,
    "Event status when the job ends Stopped": status_when_stopped,
    "Event status when the polls run out": status_when_polls_run_out,
    "Calls the `action_if_job_exists` name check makes": name_check_calls,
    "The operator takes `output_files_to_xcom`": takes_output_files_to_xcom,
}


def test_every_row_of_the_table_is_observed() -> None:
    _, rows = read_table()
    assert set(rows) == set(OBSERVATIONS), (
        f"rows of {DOC.name} not observed here: {sorted(set(rows) - set(OBSERVATIONS))}; "
        f"observed but not in the table: {sorted(set(OBSERVATIONS) - set(rows))}"
    )


@pytest.mark.stack
@pytest.mark.parametrize("row", list(OBSERVATIONS))
def test_the_row_holds_for_the_installed_provider(
    stack_env: LocalStack, s3: Any, bucket: str, row: str
) -> None:
    column = table_column()
    _, rows = read_table()
    observed = OBSERVATIONS[row](stack_env, s3, bucket)
    assert observed == rows[row][column], (
        f"{DOC.name}, row {row!r}: the table says {rows[row][column]!r} for provider {column}, "
        f"provider {version('apache-airflow-providers-amazon')} does {observed!r}"
    )
