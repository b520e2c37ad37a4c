"""Triggers that wait in the triggerer, holding no worker slot."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

from airflow.providers.amazon.aws.hooks.s3 import S3Hook
from airflow.providers.amazon.aws.hooks.sagemaker import SageMakerHook
from airflow.providers.amazon.aws.triggers.sagemaker import SageMakerTrigger
from airflow.triggers.base import BaseTrigger, TriggerEvent
from botocore.exceptions import ClientError

from boltzgen_airflow.sagemaker.requests import validate_job_name

# Seconds the cancellation path may spend asking for the task's state and stopping the job; a
# triggerer that is shutting down must not hang on it.
CANCEL_TIMEOUT_SECONDS = 20.0
DEFERRED = "deferred"
_Found = TypeVar("_Found")


class StageJobTrigger(SageMakerTrigger):
    """
    Wait for a stage's SageMaker Processing job, and stop the job when its task stops waiting.

    The triggerer cancels a trigger both when a user clears the deferred task or marks it failed or
    successful, and when the triggerer restarts or hands the trigger to another triggerer. Only the
    first leaves the task instance out of the ``deferred`` state, so on cancellation the trigger asks
    for the state of the task instance the triggerer gave it (``self.task_instance``, as the
    provider's EMR Serverless trigger does) and stops the job only when it is no longer deferred;
    otherwise the job keeps running and the next triggerer resumes waiting for it. The same check
    guards :meth:`on_kill`, which the triggerer calls for user actions, because a trigger reassigned
    to another triggerer reaches the old one by the same cancellation path.

    :param job_name: the processing job to wait for.
    :param job_type: ``Processing`` (the only kind this trigger stops).
    :param waiter_delay: seconds between status polls.
    :param waiter_max_attempts: polls before giving up.
    :param aws_conn_id: the Airflow AWS connection.
    :param region_name: the AWS region.
    :param verify: whether to verify SSL certificates.
    :param botocore_config: botocore client configuration.
    """

    def __init__(
        self,
        job_name: str,
        *,
        job_type: str = "Processing",
        waiter_delay: int = 30,
        waiter_max_attempts: int = 480,
        aws_conn_id: str | None = "aws_default",
        region_name: str | None = None,
        verify: bool | str | None = None,
        botocore_config: dict[str, Any] | None = None,
    ) -> None:
        if job_type != "Processing":
            raise ValueError(f"StageJobTrigger waits for Processing jobs, not job_type={job_type!r}")
        validate_job_name(job_name)
        super().__init__(
            job_name=job_name,
            job_type=job_type,
            waiter_delay=waiter_delay,
            waiter_max_attempts=waiter_max_attempts,
            aws_conn_id=aws_conn_id,
            region_name=region_name,
            verify=verify,
            botocore_config=botocore_config,
        )
        self._stop_decided = False

    def _identity(self) -> tuple[str, str, str, int]:
        """The deferred task instance's dag id, task id, run id and map index (from the triggerer)."""
        ti = self.task_instance
        if ti is None:
            raise RuntimeError("the triggerer gave this trigger no task instance")
        map_index = ti.map_index if ti.map_index is not None else -1
        return str(ti.dag_id), str(ti.task_id), str(ti.run_id), int(map_index)

    def _describe_task(self) -> str:
        try:
            dag_id, task_id, run_id, map_index = self._identity()
        except RuntimeError:
            return "its task"
        return f"{dag_id}/{task_id}[{map_index}]/{run_id}"

    async def task_state(self) -> str | None:
        """
        Return the current state of the deferred task instance (``None`` when cleared or gone).

        Triggers have no database session in Airflow 3; the triggerer's supervisor answers this
        request through the execution API.
        """
        from airflow.sdk.execution_time.task_runner import RuntimeTaskInstance
        from asgiref.sync import sync_to_async

        dag_id, task_id, run_id, map_index = self._identity()
        states = await sync_to_async(RuntimeTaskInstance.get_task_states)(
            dag_id=dag_id,
            task_ids=[task_id],
            run_ids=[run_id],
            map_index=map_index if map_index >= 0 else None,
        )
        # The execution API keys mapped task instances as ``<task_id>_<map_index>``.
        state = states.get(run_id, {}).get(task_id if map_index < 0 else f"{task_id}_{map_index}")
        return None if state is None else str(state)

    async def safe_to_cancel(self) -> bool:
        """Return whether the task has left the deferred state, so nothing will wait for the job any more."""
        try:
            state = await self.task_state()
        except Exception as err:  # without an answer the job is kept: stopping it cannot be undone
            self.log.warning(
                "Could not read the state of %s: %s; job %s is left running",
                self._describe_task(),
                err,
                self.job_name,
            )
            return False
        if state == DEFERRED:
            self.log.info(
                "Trigger of job %s cancelled while its task is still deferred (triggerer restart or "
                "reassignment): the job keeps running",
                self.job_name,
            )
            return False
        self.log.info("Task of job %s is %s, no longer deferred", self.job_name, state)
        return True

    async def stop_processing_job(self) -> None:
        """Stop the job if it is still running; a job that has already ended is left as it is."""
        self.log.info("Stopping SageMaker job %s", self.job_name)
        async with await self.hook().get_async_conn() as client:
            try:
                await client.stop_processing_job(ProcessingJobName=self.job_name)
            except ClientError as err:
                # StopProcessingJob rejects a job that already ended: nothing left to stop.
                if err.response.get("Error", {}).get("Code") != "ValidationException":
                    raise
                self.log.info("SageMaker job %s was not running: %s", self.job_name, err)

    async def _stop_if_abandoned(self) -> None:
        if self._stop_decided:
            return
        self._stop_decided = True
        try:
            async with asyncio.timeout(CANCEL_TIMEOUT_SECONDS):
                if await self.safe_to_cancel():
                    await self.stop_processing_job()
        except Exception as err:  # the cancellation itself must still propagate
            self.log.error("Could not stop SageMaker job %s: %s", self.job_name, err)

    async def run(self) -> AsyncIterator[TriggerEvent]:
        """Wait for the job like the provider's trigger; on cancellation stop it if its task left."""
        try:
            # The first look comes one interval after deferring, not at once: a SageMaker job spends
            # minutes provisioning, and Airflow 3.3.2 fails a deferred task whose trigger fires
            # before the scheduler has processed the deferring try's exit (apache/airflow#71580).
            await asyncio.sleep(self.waiter_delay)
            async for event in super().run():
                yield event
        except asyncio.CancelledError:
            await self._stop_if_abandoned()
            raise

    async def on_kill(self) -> None:
        """Stop the job after a user action on the task (called by the triggerer after cancelling run())."""
        await self._stop_if_abandoned()


class _S3Poller(BaseTrigger):
    """
    What the commit and claim triggers share: the AWS settings of their operator and async reads
    of one S3 object through the provider's S3 hook (aiobotocore).

    :param bucket: the bucket.
    :param commit_key: the stage key's ``_COMMITTED.json``.
    :param claim_key: the stage key's ``_CLAIM.json``.
    :param poke_interval: seconds between looks.
    :param aws_conn_id: the Airflow AWS connection.
    :param region_name: the AWS region.
    :param verify: whether to verify SSL certificates.
    :param botocore_config: botocore client configuration.
    """

    def __init__(
        self,
        *,
        bucket: str,
        commit_key: str,
        claim_key: str,
        poke_interval: float = 30,
        aws_conn_id: str | None = "aws_default",
        region_name: str | None = None,
        verify: bool | str | None = None,
        botocore_config: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.bucket = bucket
        self.commit_key = commit_key
        self.claim_key = claim_key
        self.poke_interval = poke_interval
        self.aws_conn_id = aws_conn_id
        self.region_name = region_name
        self.verify = verify
        self.botocore_config = botocore_config

    def _common(self) -> dict[str, Any]:
        return {
            "bucket": self.bucket,
            "commit_key": self.commit_key,
            "claim_key": self.claim_key,
            "poke_interval": self.poke_interval,
            "aws_conn_id": self.aws_conn_id,
            "region_name": self.region_name,
            "verify": self.verify,
            "botocore_config": self.botocore_config,
        }

    def _hook_args(self) -> dict[str, Any]:
        return {
            "aws_conn_id": self.aws_conn_id,
            "region_name": self.region_name,
            "verify": self.verify,
            "config": self.botocore_config,
        }

    async def _poll(self, look: Callable[[], Awaitable[_Found | None]]) -> _Found:
        """
        Look every ``poke_interval`` seconds until a look finds something, and return it.

        Not at once: the deferring task has just looked, and Airflow 3.3.2 fails a deferred task
        whose trigger fires before its deferral is processed (apache/airflow#71580).

        :param look: one look; what it found, or None to look again.
        """
        while True:
            await asyncio.sleep(self.poke_interval)
            found = await look()
            if found is not None:
                return found

    @staticmethod
    async def read(client: Any, bucket: str, key: str) -> tuple[dict[str, Any], str] | None:
        """Return an object's JSON and ETag, or None when it does not exist."""
        try:
            response = await client.get_object(Bucket=bucket, Key=key)
        except ClientError as err:
            if err.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "NotFound"):
                return None
            raise
        async with response["Body"] as body:
            document = json.loads(await body.read())
        return document, str(response["ETag"])


class StageCommitTrigger(_S3Poller):
    """
    Wait until a shard stage is committed, whoever commits it; give up when nobody claims it.

    The sensor between two stages defers to it. It fires ``committed`` with the commit document as
    soon as ``_COMMITTED.json`` exists, and ``unclaimed`` once the key has had neither a commit
    nor a claim for ``unclaimed_timeout`` seconds (nobody is making it). The overall bound is the
    sensor's deferral timeout.

    :param unclaimed_timeout: seconds without commit and claim before giving up.
    """

    def __init__(self, *, unclaimed_timeout: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.unclaimed_timeout = unclaimed_timeout

    def serialize(self) -> tuple[str, dict[str, Any]]:
        """Return the trigger's class path and arguments."""
        return (
            f"{self.__class__.__module__}.{self.__class__.__qualname__}",
            {**self._common(), "unclaimed_timeout": self.unclaimed_timeout},
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        """Poll the commit (and, while there is none, the claim) every ``poke_interval`` seconds."""
        unclaimed_since = time.monotonic()
        async with await S3Hook(**self._hook_args()).get_async_conn() as client:

            async def look() -> dict[str, Any] | None:
                nonlocal unclaimed_since
                commit = await self.read(client, self.bucket, self.commit_key)
                if commit is not None:
                    return {"status": "committed", "commit": commit[0]}
                if await self.read(client, self.bucket, self.claim_key) is not None:
                    unclaimed_since = time.monotonic()
                elif time.monotonic() - unclaimed_since >= self.unclaimed_timeout:
                    return {
                        "status": "unclaimed",
                        "message": f"s3://{self.bucket}/{self.commit_key} was neither committed "
                        f"nor claimed for {self.unclaimed_timeout:g} s",
                    }
                return None

            yield TriggerEvent(await self._poll(look))


class ClaimTrigger(_S3Poller):
    """
    Wait on another task's claim of a shard stage until something changes that may end the wait.

    The stage operator defers to it when another run is making the stage's output. It fires once
    the stage is committed, the claim changed hands (or went away), the claimed job ended, or the
    claim stood ``start_timeout`` seconds without its job being created; the operator then decides
    again (return the commit, verify a completed job, or take the claim over).

    :param etag: the ETag of the claim waited on.
    :param job_name: the job the claim names.
    :param claimed_at: when it was claimed (ISO 8601).
    :param start_timeout: seconds a claim may stand before its job exists.
    """

    def __init__(
        self, *, etag: str, job_name: str, claimed_at: str, start_timeout: float, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        validate_job_name(job_name)
        self.etag = etag
        self.job_name = job_name
        self.claimed_at = claimed_at
        self.start_timeout = start_timeout

    def serialize(self) -> tuple[str, dict[str, Any]]:
        """Return the trigger's class path and arguments."""
        return (
            f"{self.__class__.__module__}.{self.__class__.__qualname__}",
            {
                **self._common(),
                "etag": self.etag,
                "job_name": self.job_name,
                "claimed_at": self.claimed_at,
                "start_timeout": self.start_timeout,
            },
        )

    async def job_status(self, client: Any) -> str | None:
        """Return the claimed job's status (None while SageMaker does not know it)."""
        try:
            description = await client.describe_processing_job(ProcessingJobName=self.job_name)
        except ClientError as err:
            if err.response.get("Error", {}).get("Code") == "ValidationException":
                return None
            raise
        return str(description.get("ProcessingJobStatus"))

    def _unstarted_too_long(self) -> bool:
        try:
            at = datetime.fromisoformat(self.claimed_at)
        except ValueError:
            return False
        return (datetime.now(UTC) - at).total_seconds() >= self.start_timeout

    async def _change(self, s3: Any, sagemaker: Any) -> str | None:
        if await self.read(s3, self.bucket, self.commit_key) is not None:
            return "committed"
        claim = await self.read(s3, self.bucket, self.claim_key)
        if claim is None or claim[1] != self.etag:
            return "claim changed"
        status = await self.job_status(sagemaker)
        if status in ("Completed", "Failed", "Stopped"):
            return f"job {self.job_name} {status}"
        if status is None and self._unstarted_too_long():
            return f"job {self.job_name} not created within {self.start_timeout:g} s"
        return None

    async def run(self) -> AsyncIterator[TriggerEvent]:
        """Poll commit, claim and job every ``poke_interval`` seconds until one changes."""
        s3_hook, sagemaker_hook = S3Hook(**self._hook_args()), SageMakerHook(**self._hook_args())
        async with await s3_hook.get_async_conn() as s3, await sagemaker_hook.get_async_conn() as sagemaker:
            change = await self._poll(lambda: self._change(s3, sagemaker))
            yield TriggerEvent({"status": "changed", "change": change})
