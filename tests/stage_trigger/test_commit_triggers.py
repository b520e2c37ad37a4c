"""
The triggers of claims and sensors against the local stack: S3 on moto server and SageMaker on the
emulator, read through the provider's async hooks (aiobotocore).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from support.processing_jobs import import_string
from support.processing_jobs import sleeper_request as _sleeper_request

from boltzgen_airflow.sagemaker.triggers import ClaimTrigger, StageCommitTrigger
from sagemaker_emulator.stack import LocalStack


def keys() -> tuple[str, str]:
    folder = f"triggers/cache/design/{uuid.uuid4().hex}"
    return f"{folder}/_COMMITTED.json", f"{folder}/_CLAIM.json"


def first_event(trigger: Any) -> tuple[dict[str, Any], float]:
    async def run() -> tuple[dict[str, Any], float]:
        started = time.monotonic()
        async for event in trigger.run():
            return event.payload, time.monotonic() - started
        raise AssertionError("no event")

    return asyncio.run(asyncio.wait_for(run(), 60))


def put(s3: Any, bucket: str, key: str, document: dict[str, Any], delay: float = 0.0) -> threading.Thread:
    def write() -> None:
        time.sleep(delay)
        s3.put_object(Bucket=bucket, Key=key, Body=json.dumps(document).encode())

    thread = threading.Thread(target=write)
    thread.start()
    return thread


def test_both_triggers_serialize_and_rebuild() -> None:
    commit_key, claim_key = keys()
    common = {"bucket": "b", "commit_key": commit_key, "claim_key": claim_key, "poke_interval": 7}
    for trigger in (
        StageCommitTrigger(unclaimed_timeout=60, **common, region_name="eu-west-1"),
        ClaimTrigger(
            etag='"e"',
            job_name="bg-c-des-s0000-1",
            claimed_at="2026-01-01T00:00:00+00:00",
            start_timeout=900,
            **common,
            verify=False,
        ),
    ):
        classpath, kwargs = trigger.serialize()
        rebuilt = import_string(classpath)(**kwargs)
        assert type(rebuilt) is type(trigger) and rebuilt.serialize() == (classpath, kwargs)


@pytest.mark.stack
def test_the_sensor_trigger_fires_with_the_commit_whoever_writes_it(
    stack_env: LocalStack, s3: Any, bucket: str
) -> None:
    commit_key, claim_key = keys()
    put(s3, bucket, claim_key, {"claimed": True})
    writer = put(s3, bucket, commit_key, {"schema": 1, "job_name": "bg-x"}, delay=1.5)
    trigger = StageCommitTrigger(
        bucket=bucket, commit_key=commit_key, claim_key=claim_key, poke_interval=0.5, unclaimed_timeout=0.5
    )
    # Claimed, so the short unclaimed timeout does not end the wait.
    payload, _ = first_event(trigger)
    writer.join()
    assert payload == {"status": "committed", "commit": {"schema": 1, "job_name": "bg-x"}}


@pytest.mark.stack
def test_the_sensor_trigger_gives_up_on_a_stage_nobody_makes(stack_env: LocalStack, bucket: str) -> None:
    commit_key, claim_key = keys()
    trigger = StageCommitTrigger(
        bucket=bucket, commit_key=commit_key, claim_key=claim_key, poke_interval=0.5, unclaimed_timeout=2
    )
    payload, waited = first_event(trigger)
    assert payload["status"] == "unclaimed" and commit_key in payload["message"]
    assert waited >= 2


@pytest.mark.stack
def test_the_claim_trigger_fires_when_the_claimed_job_ends(
    stack_env: LocalStack, sm: Any, s3: Any, bucket: str
) -> None:
    commit_key, claim_key = keys()
    etag = s3.put_object(Bucket=bucket, Key=claim_key, Body=b"{}")["ETag"]
    name = f"bg-claim-done-{uuid.uuid4().hex[:8]}"
    sm.create_processing_job(**_sleeper_request(s3, bucket, name, seconds=1))
    now = datetime.now(UTC).isoformat(timespec="seconds")
    trigger = ClaimTrigger(
        bucket=bucket,
        commit_key=commit_key,
        claim_key=claim_key,
        poke_interval=0.5,
        etag=etag,
        job_name=name,
        claimed_at=now,
        start_timeout=900,
    )
    payload, _ = first_event(trigger)
    assert payload == {"status": "changed", "change": f"job {name} Completed"}


@pytest.mark.stack
def test_the_claim_trigger_fires_when_the_claim_changes_or_its_job_never_comes(
    stack_env: LocalStack, s3: Any, bucket: str
) -> None:
    commit_key, claim_key = keys()
    etag = s3.put_object(Bucket=bucket, Key=claim_key, Body=b"{}")["ETag"]
    now = datetime.now(UTC).isoformat(timespec="seconds")
    common = {"bucket": bucket, "commit_key": commit_key, "claim_key": claim_key, "poke_interval": 0.5}
    writer = put(s3, bucket, claim_key, {"taken": "over"}, delay=1.5)
    payload, _ = first_event(
        ClaimTrigger(etag=etag, job_name="bg-never-created-1", claimed_at=now, start_timeout=900, **common)
    )
    writer.join()
    assert payload == {"status": "changed", "change": "claim changed"}
    etag = s3.head_object(Bucket=bucket, Key=claim_key)["ETag"]
    old = (datetime.now(UTC) - timedelta(seconds=30)).isoformat(timespec="seconds")
    payload, _ = first_event(
        ClaimTrigger(etag=etag, job_name="bg-never-created-2", claimed_at=old, start_timeout=10, **common)
    )
    assert payload == {"status": "changed", "change": "job bg-never-created-2 not created within 10 s"}
