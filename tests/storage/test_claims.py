"""Claims of a shard stage against a real S3 API (moto server, which honours conditional PUTs)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
import pytest

from boltzgen_airflow.storage.claims import (
    Acquired,
    Claim,
    ClaimState,
    acquire,
    assess,
    conditional_writes_honoured,
    read_claim,
)
from boltzgen_airflow.storage.layout import claim_key_of, probe_key_of

COMMIT_KEY = "bg/cache/design/k1/_COMMITTED.json"
CLAIM_KEY = claim_key_of(COMMIT_KEY)


def claim(run: str, *, try_number: int = 1, dag: str = "boltzgen_c", age: float = 0.0) -> Claim:
    at = datetime.now(UTC) - timedelta(seconds=age)
    return Claim(
        stage="design",
        key="k1",
        dag_id=dag,
        run_id=run,
        task_id="shard.design",
        map_index=0,
        try_number=try_number,
        job_name=f"bg-c-des-s0000-{run}{try_number}",
        claimed_at=at.isoformat(timespec="seconds"),
    )


def statuses(known: dict[str, str]) -> Callable[[str], str | None]:
    """SageMaker's answer for the jobs the test names (None: a job never created)."""
    return known.get


def race(
    endpoint: str, bucket: str, wanted: list[Claim], job_status: Callable[[str], str | None]
) -> list[Acquired]:
    """Every claimer acquires at once, each with a client of its own (as separate task processes)."""
    clients = [boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1") for _ in wanted]
    barrier = threading.Barrier(len(wanted))
    results: list[Acquired | None] = [None] * len(wanted)

    def run(index: int) -> None:
        barrier.wait()
        results[index] = acquire(
            clients[index], bucket, CLAIM_KEY, wanted[index], job_status, start_timeout_seconds=600
        )

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(wanted))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert all(r is not None for r in results)
    return [r for r in results if r is not None]


def test_of_runs_claiming_at_once_exactly_one_wins(s3: tuple[Any, str], moto_endpoint: str) -> None:
    client, bucket = s3
    wanted = [claim(f"run{i}") for i in range(8)]
    # Every job still unknown to SageMaker: a fresh claim is live.
    results = race(moto_endpoint, bucket, wanted, statuses({}))
    winners = [r for r in results if r.mine]
    assert len(winners) == 1
    held = read_claim(client, bucket, CLAIM_KEY)
    assert held is not None and held.claim == winners[0].held.claim
    # The others see the winner's claim, live: they start no job and wait for its commit.
    assert {(r.held.claim, r.state) for r in results if not r.mine} == {(held.claim, ClaimState.LIVE)}


@pytest.mark.parametrize("status", ["Failed", "Stopped"])
def test_a_claim_whose_job_ended_without_output_is_taken_over_by_exactly_one(
    s3: tuple[Any, str], moto_endpoint: str, status: str
) -> None:
    client, bucket = s3
    client.delete_object(Bucket=bucket, Key=CLAIM_KEY)  # both cases share a bucket (name cut at 40)
    owner = claim("owner")
    assert acquire(client, bucket, CLAIM_KEY, owner, statuses({}), start_timeout_seconds=600).mine
    takers = [claim(f"taker{i}") for i in range(6)]
    results = race(moto_endpoint, bucket, takers, statuses({owner.job_name: status}))
    winners = [r for r in results if r.mine]
    assert len(winners) == 1 and winners[0].took_over == owner
    held = read_claim(client, bucket, CLAIM_KEY)
    assert held is not None and held.claim == winners[0].held.claim
    # The losers found the winner's fresh claim, whose job is not created yet: live.
    assert {r.state for r in results if not r.mine} == {ClaimState.LIVE}


def test_a_claim_never_given_a_job_is_live_until_the_timeout(s3: tuple[Any, str]) -> None:
    client, bucket = s3
    gone = claim("gone", age=120)
    assert acquire(client, bucket, CLAIM_KEY, gone, statuses({}), start_timeout_seconds=600).mine
    waiting = acquire(client, bucket, CLAIM_KEY, claim("other"), statuses({}), start_timeout_seconds=600)
    assert not waiting.mine and waiting.state is ClaimState.LIVE
    taken = acquire(client, bucket, CLAIM_KEY, claim("other"), statuses({}), start_timeout_seconds=60)
    assert taken.mine and taken.took_over == gone


def test_a_running_or_completed_job_keeps_its_claim(s3: tuple[Any, str]) -> None:
    client, bucket = s3
    owner = claim("owner", age=3600)
    assert acquire(client, bucket, CLAIM_KEY, owner, statuses({}), start_timeout_seconds=600).mine
    for status, state in (("InProgress", ClaimState.LIVE), ("Completed", ClaimState.COMPLETED)):
        seen = acquire(
            client,
            bucket,
            CLAIM_KEY,
            claim("other"),
            statuses({owner.job_name: status}),
            start_timeout_seconds=60,
        )
        assert (seen.mine, seen.state, seen.held.claim) == (False, state, owner)
    # A completed job whose output does not verify leaves a stale claim.
    taken = acquire(
        client,
        bucket,
        CLAIM_KEY,
        claim("other"),
        statuses({owner.job_name: "Completed"}),
        start_timeout_seconds=60,
        failed_jobs={owner.job_name},
    )
    assert taken.mine and taken.took_over == owner


def test_a_later_try_of_the_same_task_takes_its_own_claim_back(s3: tuple[Any, str]) -> None:
    client, bucket = s3
    first = claim("run", try_number=1)
    assert acquire(client, bucket, CLAIM_KEY, first, statuses({}), start_timeout_seconds=600).mine
    # The same try again (resumed after deferring) holds it as it is.
    again = acquire(client, bucket, CLAIM_KEY, first, statuses({}), start_timeout_seconds=600)
    assert again.mine and again.took_over is None
    # Its retry (the first try's job failed, or is still running) updates it with the new job.
    second = claim("run", try_number=2)
    got = acquire(
        client, bucket, CLAIM_KEY, second, statuses({first.job_name: "InProgress"}), start_timeout_seconds=600
    )
    assert got.mine
    held = read_claim(client, bucket, CLAIM_KEY)
    assert held is not None and held.claim == second
    # The same run of another campaign (another DAG) is another owner.
    other = acquire(
        client, bucket, CLAIM_KEY, claim("run", dag="boltzgen_d"), statuses({}), start_timeout_seconds=600
    )
    assert not other.mine


def test_assess_reads_the_claimed_job() -> None:
    now = datetime.now(UTC)
    fresh, old = claim("a"), claim("a", age=1000)
    assert assess(fresh, None, start_timeout_seconds=900, now=now) is ClaimState.LIVE
    assert assess(old, None, start_timeout_seconds=900, now=now) is ClaimState.STALE
    assert assess(old, "Stopping", start_timeout_seconds=900, now=now) is ClaimState.LIVE
    assert assess(fresh, "Failed", start_timeout_seconds=900, now=now) is ClaimState.STALE


def test_the_probe_finds_conditional_writes_and_a_store_without_them(s3: tuple[Any, str]) -> None:
    client, bucket = s3
    assert conditional_writes_honoured(client, bucket, probe_key_of(COMMIT_KEY))

    class IgnoresConditions:
        """A store that ignores If-None-Match (no such store runs here: the header is dropped)."""

        meta = type("Meta", (), {"endpoint_url": "http://ignores-conditions"})()

        def put_object(self, **kwargs: Any) -> Any:
            kwargs.pop("IfNoneMatch", None)
            return client.put_object(**kwargs)

    assert not conditional_writes_honoured(IgnoresConditions(), bucket, "other/cache/_probe.json")
