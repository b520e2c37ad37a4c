"""The sensor between two stages of a shard: the upstream stage's commit, handed to the next stage."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.providers.common.compat.sdk import AirflowException, AirflowFailException
from airflow.sdk import BaseSensorOperator
from airflow.sdk.bases.sensor import PokeReturnValue

from boltzgen_airflow.run.descriptors import ShardDescriptor
from boltzgen_airflow.sagemaker.hooks import s3_client
from boltzgen_airflow.sagemaker.operators import QUEUE_MARGIN_SECONDS, shard_descriptor
from boltzgen_airflow.sagemaker.triggers import StageCommitTrigger
from boltzgen_airflow.settings import commit_wait
from boltzgen_airflow.stages import STAGES
from boltzgen_airflow.storage.commits import CommitRecord, CommittedStage, read_commit
from boltzgen_airflow.storage.layout import claim_key_of

if TYPE_CHECKING:
    from airflow.sdk import Context


class StageCommittedSensor(BaseSensorOperator):
    """
    Wait until one stage of a shard is committed, whoever commits it (this run, another run,
    another campaign), and return the commit as a
    :class:`~boltzgen_airflow.storage.commits.CommittedStage` document, the next stage's input.

    After a stage task that succeeded the commit is there and the first look returns it. After a
    stage left out of the run (``stages``), the sensor waits for a commit another run is making:
    in the triggerer (:class:`~boltzgen_airflow.sagemaker.triggers.StageCommitTrigger`) while the
    stage is claimed, up to the stage's maximum runtime plus a queue margin, and at most
    ``unclaimed_timeout`` seconds while nobody claims it. It runs in the default pool, never in a
    SageMaker pool: waiting holds no job slot.

    :param stage: the stage whose commit is waited for.
    :param shard: a reference to the shard's descriptor (templated so a mapped argument resolves).
    :param max_runtime_seconds: the stage's job runtime limit; the sensor's timeout adds the queue margin.
    :param aws_conn_id: the Airflow AWS connection.
    :param region_name: the AWS region.
    :param unclaimed_timeout: seconds to wait while nobody claims the stage (default: the
        ``commit_wait`` setting).
    :param deferrable: wait in the triggerer (True) or in the worker.
    """

    template_fields: Sequence[str] = ("shard",)
    ui_color = "#e2ecd5"

    def __init__(
        self,
        *,
        stage: str,
        shard: Any,
        max_runtime_seconds: int,
        aws_conn_id: str | None = "aws_default",
        region_name: str | None = None,
        unclaimed_timeout: int | None = None,
        deferrable: bool = True,
        **kwargs: Any,
    ) -> None:
        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r}; stages are {list(STAGES)}")
        kwargs.setdefault("timeout", timedelta(seconds=max_runtime_seconds + QUEUE_MARGIN_SECONDS))
        kwargs.setdefault("trigger_rule", "none_failed")
        super().__init__(**kwargs)
        self.deferrable = deferrable
        self.stage = stage
        self.shard = shard
        self.aws_conn_id = aws_conn_id
        self.region_name = region_name
        self.unclaimed_timeout = unclaimed_timeout
        self._descriptor: ShardDescriptor | None = None

    @cached_property
    def _s3(self) -> Any:
        return s3_client(self.aws_conn_id, self.region_name)

    def _load(self, context: Context) -> ShardDescriptor:
        if self._descriptor is None:
            context["shard_id"] = str(self.shard.get("shard", ""))  # type: ignore[typeddict-unknown-key]
            self._descriptor = shard_descriptor(self.shard, self._s3)
        return self._descriptor

    def _handover(self, record: CommitRecord) -> dict[str, Any]:
        descriptor = self._descriptor
        assert descriptor is not None
        self.log.info(
            "%s of %s is committed: job %s, %s of %s designs, under s3://%s/%s",
            self.stage,
            descriptor.shard,
            record.job_name,
            record.designs_produced,
            record.designs_expected,
            record.bucket,
            record.attempt_prefix,
        )
        commit_key = descriptor.stages[self.stage].commit_key
        return CommittedStage.of(record, shard=descriptor.shard, commit_key=commit_key).to_json()

    def poke(self, context: Context) -> PokeReturnValue:
        """Look for the stage's commit once."""
        descriptor = self._load(context)
        record = read_commit(self._s3, descriptor.bucket, descriptor.stages[self.stage].commit_key)
        if record is None:
            return PokeReturnValue(is_done=False)
        return PokeReturnValue(is_done=True, xcom_value=self._handover(record))

    def execute(self, context: Context) -> Any:
        """Return the commit at once when it is there; otherwise wait (deferred or poking)."""
        if not self.deferrable:
            return super().execute(context)
        found = self.poke(context)
        if found.is_done:
            return found.xcom_value
        descriptor = self._load(context)
        commit_key = descriptor.stages[self.stage].commit_key
        self.log.info("%s of %s is not committed yet: waiting for it", self.stage, descriptor.shard)
        self.defer(
            trigger=StageCommitTrigger(
                bucket=descriptor.bucket,
                commit_key=commit_key,
                claim_key=claim_key_of(commit_key),
                poke_interval=self.poke_interval,
                unclaimed_timeout=self.unclaimed_timeout
                if self.unclaimed_timeout is not None
                else commit_wait(),
                aws_conn_id=self.aws_conn_id,
                region_name=self.region_name,
            ),
            method_name="execute_complete",
            timeout=timedelta(seconds=self.timeout),
        )

    def execute_complete(self, context: Context, event: dict[str, Any] | None = None) -> dict[str, Any]:
        """Return the commit the trigger found; fail when nobody was making it."""
        self._load(context)
        event = event or {}
        if event.get("status") == "committed":
            return self._handover(CommitRecord.from_json(event["commit"]))
        if event.get("status") == "unclaimed":
            # Nothing will change by trying again: the stage must run (in this run or another).
            raise AirflowFailException(
                f"{self.stage} of {self.shard.get('shard')} is not committed and no run is making it: "
                f"{event.get('message')}; run the stage (add it to the run's stages) and clear this task"
            )
        raise AirflowException(f"waiting for the {self.stage} commit failed: {event}")
