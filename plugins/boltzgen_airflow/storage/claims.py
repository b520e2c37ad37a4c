"""
Claims: one job per shard stage however many runs want it.

Before a stage task starts a job it claims the stage's cache entry: ``_CLAIM.json`` next to the
entry's ``_COMMITTED.json``, written with S3's conditional PUT (``If-None-Match: *``), naming the
run, task, try and job. Exactly one of several writers gets it; the others read it and wait for the
commit. A claim whose job failed or stopped, or whose job was never created within a timeout, is
taken over by a conditional PUT on the claim's ETag (``If-Match``), so again exactly one taker
wins. A store that does not honour conditional writes is detected by a probe (see
:func:`conditional_writes_honoured`). The decision rules are pure (:func:`assess`); the S3 calls
are a few functions around them. docs/architecture.md ("Claims") says why.
"""

from __future__ import annotations

import enum
import json
import logging
import uuid
from collections.abc import Callable, Collection, Mapping
from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime
from typing import Any

from botocore.exceptions import ClientError

from boltzgen_airflow.exceptions import CommitError
from boltzgen_airflow.storage.s3 import with_retries

CLAIM_SCHEMA = 1
#: Codes of a conditional PUT that lost: the object exists (If-None-Match), its ETag moved or it
#: is gone (If-Match), or S3 saw two conditional writes of one key at once.
LOST_CODES = frozenset({"PreconditionFailed", "412", "ConditionalRequestConflict", "409", "NoSuchKey", "404"})
#: Job states in which a claimed job may still produce a commit.
LIVE_JOB_STATES = frozenset({"InProgress", "Stopping"})
#: Job states that end a claim without an output.
DEAD_JOB_STATES = frozenset({"Failed", "Stopped"})
#: Claim rounds before giving up: each round is lost only to another writer's success.
MAX_ROUNDS = 8

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Claim:
    """
    ``_CLAIM.json``: who is making a shard stage's output, and with which job.

    :param stage: the stage.
    :param key: the stage's cache key.
    :param dag_id: the claiming DAG (a campaign).
    :param run_id: its run.
    :param task_id: its task.
    :param map_index: its map index (-1 when not mapped).
    :param try_number: the try that claimed.
    :param job_name: the SageMaker job the try starts (known before it is created).
    :param claimed_at: when (ISO 8601, UTC).
    """

    stage: str
    key: str
    dag_id: str
    run_id: str
    task_id: str
    map_index: int
    try_number: int
    job_name: str
    claimed_at: str

    @property
    def owner(self) -> tuple[str, str, str, int]:
        """The task instance that owns the claim, whichever of its tries."""
        return self.dag_id, self.run_id, self.task_id, self.map_index

    def describe(self) -> str:
        """Who holds the claim, for logs and errors."""
        index = f"[{self.map_index}]" if self.map_index >= 0 else ""
        return (
            f"{self.dag_id}/{self.run_id}/{self.task_id}{index} try {self.try_number} (job {self.job_name})"
        )

    def age_seconds(self, now: datetime | None = None) -> float:
        """
        Seconds since the claim was written (0 when its time is unreadable: a fresh claim is live).

        :param now: the time to measure at (default: now).
        """
        try:
            at = datetime.fromisoformat(self.claimed_at)
        except ValueError:
            return 0.0
        return max(0.0, ((now or datetime.now(UTC)) - at).total_seconds())

    def to_json(self) -> dict[str, Any]:
        """Return the ``_CLAIM.json`` document (schema 1)."""
        return {"schema": CLAIM_SCHEMA, **asdict(self)}

    @classmethod
    def from_json(cls, document: Mapping[str, Any]) -> Claim:
        """
        Inverse of :meth:`to_json`.

        :param document: the parsed ``_CLAIM.json``.
        :raises CommitError: when a field is missing.
        """
        names = [f.name for f in fields(cls)]
        missing = [name for name in names if name not in document]
        if missing:
            raise CommitError(f"claim document lacks {missing}")
        values = {name: document[name] for name in names}
        return cls(
            **{**values, "map_index": int(values["map_index"]), "try_number": int(values["try_number"])}
        )

    @classmethod
    def now(cls, **values: Any) -> Claim:
        """
        Return a claim made now.

        :param values: every field but ``claimed_at``.
        """
        return cls(claimed_at=datetime.now(UTC).isoformat(timespec="seconds"), **values)


@dataclass(frozen=True)
class HeldClaim:
    """
    A claim as read from S3, with the ETag that a takeover must match.

    :param claim: the claim.
    :param etag: the object's ETag.
    """

    claim: Claim
    etag: str


class ClaimState(enum.Enum):
    """What another task's claim means for a task that wants the same shard stage."""

    #: Its job runs, or is about to be created: wait for its commit.
    LIVE = "live"
    #: Its job completed: its output may be committed (by its owner, or by whoever verifies it).
    COMPLETED = "completed"
    #: Its job failed or stopped, or was never created within the timeout: take it over.
    STALE = "stale"


def assess(
    claim: Claim,
    job_status: str | None,
    *,
    start_timeout_seconds: float,
    now: datetime | None = None,
    failed_jobs: Collection[str] = (),
) -> ClaimState:
    """
    Decide what another task's claim means (pure).

    :param claim: the claim.
    :param job_status: its job's ``ProcessingJobStatus`` (None when SageMaker does not know it).
    :param start_timeout_seconds: how long a claim may stand without its job being created.
    :param now: the time to judge at.
    :param failed_jobs: jobs known to have completed with an output that does not verify.
    """
    if claim.job_name in failed_jobs or job_status in DEAD_JOB_STATES:
        return ClaimState.STALE
    if job_status in LIVE_JOB_STATES:
        return ClaimState.LIVE
    if job_status == "Completed":
        return ClaimState.COMPLETED
    if claim.age_seconds(now) < start_timeout_seconds:
        return ClaimState.LIVE
    return ClaimState.STALE


def claim_lost(error: ClientError) -> bool:
    """
    Return whether a conditional PUT failed because another writer won.

    :param error: the error of the PUT.
    """
    code = str(error.response.get("Error", {}).get("Code", ""))
    status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return code in LOST_CODES or status in (409, 412)


def read_claim(client: Any, bucket: str, claim_key: str) -> HeldClaim | None:
    """
    Return the claim of a stage key with its ETag, or None when nobody claimed it.

    :param client: a boto3 S3 client.
    :param bucket: the bucket.
    :param claim_key: ``<prefix>/cache/<stage>/<key>/_CLAIM.json``.
    :raises CommitError: when the object is not a claim.
    """
    try:
        response = with_retries(
            lambda: client.get_object(Bucket=bucket, Key=claim_key), what=f"read s3://{bucket}/{claim_key}"
        )
    except ClientError as err:
        if str(err.response.get("Error", {}).get("Code", "")) in ("NoSuchKey", "404", "NotFound"):
            return None
        raise
    try:
        document = json.loads(response["Body"].read())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CommitError(f"s3://{bucket}/{claim_key} is not valid JSON: {err}") from None
    if not isinstance(document, dict):
        raise CommitError(f"s3://{bucket}/{claim_key} is not a JSON object")
    return HeldClaim(Claim.from_json(document), str(response["ETag"]))


def put_claim(
    client: Any, bucket: str, claim_key: str, claim: Claim, *, replacing: str | None
) -> HeldClaim | None:
    """
    Write a claim only if the key holds nothing (``replacing`` None) or exactly the claim of that ETag.

    :param client: a boto3 S3 client.
    :param bucket: the bucket.
    :param claim_key: where the claim goes.
    :param claim: the claim.
    :param replacing: the ETag of the claim taken over.
    :return: the claim now held, or None when another writer won.
    """
    body = json.dumps(claim.to_json(), sort_keys=True).encode()
    condition = {"IfNoneMatch": "*"} if replacing is None else {"IfMatch": replacing}
    try:
        response = with_retries(
            lambda: client.put_object(
                Bucket=bucket, Key=claim_key, Body=body, ContentType="application/json", **condition
            ),
            what=f"claim s3://{bucket}/{claim_key}",
        )
    except ClientError as err:
        if claim_lost(err):
            return None
        raise
    return HeldClaim(claim, str(response["ETag"]))


_PROBED: dict[tuple[str, str], bool] = {}


def conditional_writes_honoured(client: Any, bucket: str, probe_key: str) -> bool:
    """
    Return whether the store refuses a second ``If-None-Match: *`` PUT of one key (once per process).

    S3 and moto do; a store that ignores the header would let two claims both succeed. The probe
    writes one small object that stays (one PUT in later processes, answered 412).

    :param client: a boto3 S3 client.
    :param bucket: the bucket.
    :param probe_key: a key of the campaign's prefix kept for the probe.
    """
    endpoint = str(getattr(getattr(client, "meta", None), "endpoint_url", ""))
    cached = _PROBED.get((endpoint, bucket))
    if cached is not None:
        return cached
    body = json.dumps({"probe": uuid.uuid4().hex}).encode()
    honoured = False
    for _ in range(2):
        try:
            with_retries(
                lambda: client.put_object(Bucket=bucket, Key=probe_key, Body=body, IfNoneMatch="*"),
                what=f"probe s3://{bucket}/{probe_key}",
            )
        except ClientError as err:
            # PreconditionFailed is the promise kept; NotImplemented (501) a store that refuses it.
            honoured = claim_lost(err)
            break
    _PROBED[(endpoint, bucket)] = honoured
    if not honoured:
        log.warning(
            "s3://%s does not honour conditional writes (If-None-Match): shard stage claims are "
            "off, so runs that want the same uncommitted shard stage at once may each start a job",
            bucket,
        )
    return honoured


@dataclass(frozen=True)
class Acquired:
    """
    The outcome of :func:`acquire`: the claim is this task's, or another's to wait for or verify.

    :param held: the claim as it now stands in S3.
    :param mine: whether it is this task's.
    :param state: what another's claim means (None when it is this task's).
    :param took_over: the other claim this task took over, if any.
    """

    held: HeldClaim
    mine: bool
    state: ClaimState | None = None
    took_over: Claim | None = None


def acquire(
    client: Any,
    bucket: str,
    claim_key: str,
    wanted: Claim,
    job_status: Callable[[str], str | None],
    *,
    start_timeout_seconds: float,
    failed_jobs: Collection[str] = (),
) -> Acquired:
    """
    Claim a stage key for ``wanted``'s task, or report another task's claim that stands.

    A claim of the same task instance (an earlier try) is this task's to update; another's is kept
    while it is live or its job completed, and taken over when stale. Every write is conditional,
    so among any number of tasks doing this at once exactly one holds the claim.

    :param client: a boto3 S3 client.
    :param bucket: the bucket.
    :param claim_key: ``<prefix>/cache/<stage>/<key>/_CLAIM.json``.
    :param wanted: the claim this task would hold.
    :param job_status: SageMaker's status of a job by name (None when unknown).
    :param start_timeout_seconds: how long a claim may stand without its job being created.
    :param failed_jobs: completed jobs whose output does not verify (their claims are stale).
    :raises CommitError: when the claim changed hands more than :data:`MAX_ROUNDS` times.
    """
    for _ in range(MAX_ROUNDS):
        held = read_claim(client, bucket, claim_key)
        if held is None:
            placed = put_claim(client, bucket, claim_key, wanted, replacing=None)
            if placed:
                return Acquired(placed, mine=True)
            continue
        current = held.claim
        if current.owner == wanted.owner:
            if (current.try_number, current.job_name) == (wanted.try_number, wanted.job_name):
                return Acquired(held, mine=True)  # this try's own claim (resumed, or a retried PUT)
            placed = put_claim(client, bucket, claim_key, wanted, replacing=held.etag)
            if placed:
                return Acquired(placed, mine=True)
            continue
        state = assess(
            current,
            job_status(current.job_name),
            start_timeout_seconds=start_timeout_seconds,
            failed_jobs=failed_jobs,
        )
        if state is not ClaimState.STALE:
            return Acquired(held, mine=False, state=state)
        placed = put_claim(client, bucket, claim_key, wanted, replacing=held.etag)
        if placed:
            log.info("Took over the stale claim of %s", current.describe())
            return Acquired(placed, mine=True, took_over=current)
    raise CommitError(f"the claim s3://{bucket}/{claim_key} changed hands {MAX_ROUNDS} times; try again")
