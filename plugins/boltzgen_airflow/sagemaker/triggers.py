"""Triggers that wait in the triggerer, holding no worker slot."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from airflow.providers.amazon.aws.triggers.sagemaker import SageMakerTrigger
from airflow.triggers.base import TriggerEvent
from botocore.exceptions import ClientError

from boltzgen_airflow.sagemaker.requests import validate_job_name

# Seconds the cancellation path may spend asking for the task's state and stopping the job; a
# triggerer that is shutting down must not hang on it.
CANCEL_TIMEOUT_SECONDS = 20.0
DEFERRED = "deferred"


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
