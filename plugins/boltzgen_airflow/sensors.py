"""The check after every stage job: verify the attempt, commit it, hand its metadata on."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from airflow.providers.common.compat.sdk import AirflowFailException, BaseSensorOperator, PokeReturnValue

from boltzgen_airflow.commit import CommitError, commit_attempt, read_json
from boltzgen_airflow.commit import join_key as _join
from boltzgen_airflow.hooks import processing_log_tail, s3_client
from boltzgen_airflow.triggers import ManifestCheckTrigger

if TYPE_CHECKING:
    from airflow.sdk import Context


class StageCheckSensor(BaseSensorOperator):
    """
    Wait for a stage job's ``_manifest.json``, verify it, commit the attempt, and return its metadata.

    The returned XCom is small: the attempt prefix, the job name, counts and timings (never data). A
    cache hit of the stage operator passes straight through. On failure the last lines of the job's
    CloudWatch log go to the task log.

    :param stage: the stage checked.
    :param shard: the shard descriptor (from ``plan``; templated so a mapped argument resolves).
    :param job: what the stage operator returned (templated).
    :param aws_conn_id: the Airflow AWS connection.
    :param region_name: the AWS region.
    :param deferrable: wait in the triggerer.
    """

    template_fields: Sequence[str] = ("shard", "job")
    ui_color = "#d9ead3"

    def __init__(
        self,
        *,
        stage: str,
        shard: Any,
        job: Any,
        aws_conn_id: str | None = "aws_default",
        region_name: str | None = None,
        deferrable: bool = True,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("poke_interval", 10.0)
        kwargs.setdefault("timeout", timedelta(minutes=30).total_seconds())
        super().__init__(**kwargs)
        self.stage = stage
        self.shard = shard
        self.job = job
        self.aws_conn_id = aws_conn_id
        self.region_name = region_name
        self.deferrable = deferrable

    @property
    def _stage(self) -> Mapping[str, Any]:
        stage: Mapping[str, Any] = self.shard["stages"][self.stage]
        return stage

    def _label(self, context: Context) -> None:
        context["shard_id"] = self.shard.get("shard", "")  # type: ignore[typeddict-unknown-key]

    def _commit(self, context: Context) -> dict[str, Any]:
        stage = self._stage
        client = s3_client(self.aws_conn_id, self.region_name)
        try:
            record = commit_attempt(
                client,
                bucket=self.shard["bucket"],
                stage=self.stage,
                key=stage["key"],
                commit_key=stage["commit_key"],
                attempt_prefix=self.job["attempt_prefix"],
                job_name=self.job["job_name"],
                min_fraction=float(self.shard.get("min_fraction", 0.9)),
                extra={"run_id": str(context["run_id"])},
            )
        except CommitError as err:
            self._fail(str(err))
        self.log.info(
            "Committed %s of shard %s: %s designs of %s from job %s",
            self.stage,
            self.shard["shard"],
            record["designs_produced"],
            record["designs_expected"],
            record["job_name"],
        )
        return self._result(record, cached=False)

    def _result(self, record: Mapping[str, Any], *, cached: bool) -> dict[str, Any]:
        keep = ("attempt_prefix", "job_name", "designs_expected", "designs_produced", "seconds", "shortfall")
        return {
            "stage": self.stage,
            "shard": self.shard["shard"],
            "bucket": self.shard["bucket"],
            "cached": cached,
            **{k: record.get(k) for k in keep},
        }

    def _fail(self, message: str) -> Any:
        job_name = (self.job or {}).get("job_name")
        if job_name:
            tail = processing_log_tail(job_name, aws_conn_id=self.aws_conn_id, region_name=self.region_name)
            if tail:
                self.log.error("Last log lines of %s:\n%s", job_name, "\n".join(tail))
        # The attempt is what it is: another try of the check cannot change it, only a new job can.
        raise AirflowFailException(message)

    def execute(self, context: Context) -> Any:
        """Pass a cache hit through, commit a ready attempt at once, or defer until it is ready."""
        self._label(context)
        if self.job.get("cached"):
            self.log.info(
                "%s of shard %s was already committed by %s",
                self.stage,
                self.shard["shard"],
                self.job.get("job_name"),
            )
            return self._result(self.job, cached=True)
        if not self.deferrable:
            return super().execute(context)
        client = s3_client(self.aws_conn_id, self.region_name)
        if read_json(client, self.shard["bucket"], _join(self.job["attempt_prefix"], "_manifest.json")):
            return self._commit(context)
        self.defer(
            trigger=ManifestCheckTrigger(
                bucket=self.shard["bucket"],
                attempt_prefix=self.job["attempt_prefix"],
                stage=self.stage,
                job_name=self.job["job_name"],
                min_fraction=float(self.shard.get("min_fraction", 0.9)),
                poll_interval=self.poke_interval,
                max_attempts=max(1, int(self.timeout // max(self.poke_interval, 1))),
                aws_conn_id=self.aws_conn_id,
                region_name=self.region_name,
            ),
            method_name="execute_complete",
        )

    def poke(self, context: Context) -> PokeReturnValue:
        """Look for the manifest once (synchronous mode)."""
        client = s3_client(self.aws_conn_id, self.region_name)
        if (
            read_json(client, self.shard["bucket"], _join(self.job["attempt_prefix"], "_manifest.json"))
            is None
        ):
            return PokeReturnValue(is_done=False)
        return PokeReturnValue(is_done=True, xcom_value=self._commit(context))

    def execute_complete(self, context: Context, event: dict[str, Any] | None = None) -> dict[str, Any]:
        """Commit after the trigger found a verified manifest, or fail with its problems."""
        self._label(context)
        event = event or {}
        if event.get("status") != "success":
            problems = "; ".join(event.get("problems") or ["no event"])
            self._fail(f"{self.stage} attempt of job {self.job.get('job_name')} failed its check: {problems}")
        return self._commit(context)
