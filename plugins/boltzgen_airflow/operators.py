"""The stage operator: one SageMaker Processing job per shard and stage, skipped when cached."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from datetime import timedelta
from functools import cached_property
from typing import TYPE_CHECKING, Any, NoReturn

from airflow.providers.amazon.aws.operators.sagemaker import SageMakerProcessingOperator
from airflow.providers.amazon.aws.triggers.sagemaker import SageMakerTrigger
from airflow.providers.amazon.aws.utils.mixins import aws_template_fields
from airflow.providers.common.compat.sdk import AirflowException, AirflowFailException, AirflowSkipException
from botocore.exceptions import ClientError

from boltzgen_airflow.commit import CommitError, commit_attempt, read_commit, verify_attempt
from boltzgen_airflow.hooks import ProcessingJobHook, error_code, processing_log_tail, s3_client
from boltzgen_airflow.jobs import (
    JobLocations,
    JobResources,
    JobSettings,
    build_processing_request,
    job_name,
)
from boltzgen_airflow.links import ProcessingJobLogsLink, SageMakerProcessingJobLink
from boltzgen_airflow.stages import STAGES
from boltzgen_airflow.triggers import StageJobTrigger

if TYPE_CHECKING:
    from airflow.sdk import Context
    from airflow.triggers.base import BaseTrigger

# Time a job may wait for capacity before it starts running; polling covers it on top of the runtime.
QUEUE_MARGIN_SECONDS = 3600
_POOL_RE = re.compile(r"[^a-z0-9_]+")


def pool_name(instance_type: str) -> str:
    """
    Return the Airflow pool of an instance type, e.g. ``sagemaker_ml_g5_2xlarge``.

    :param instance_type: the SageMaker instance type.
    """
    return "sagemaker_" + _POOL_RE.sub("_", instance_type.lower()).strip("_")


def shard_descriptor(shard: Any, client: Any) -> Any:
    """
    Return the descriptor a shard reference points at; anything else is returned unchanged.

    The shard tasks map over references (see :func:`~boltzgen_airflow.runtime.publish_shards`); each
    task process reads its own descriptor once.

    :param shard: the resolved ``shard`` argument.
    :param client: a boto3 S3 client.
    """
    from boltzgen_airflow.errors import CampaignError
    from boltzgen_airflow.runtime import load_shard

    if not isinstance(shard, Mapping):
        return shard
    try:
        return load_shard(client, shard)
    except CampaignError as err:
        # Another try reads the same object: only planning the run again can bring it back.
        raise AirflowFailException(str(err)) from None


def max_poll_attempts(
    max_runtime_seconds: int, check_interval: int, margin: int = QUEUE_MARGIN_SECONDS
) -> int:
    """
    Return how many status polls cover a job's whole life (queue margin plus its maximum runtime).

    The provider's default (60 polls) would give up after 30 minutes while SageMaker keeps working.

    :param max_runtime_seconds: the job's StoppingCondition.
    :param check_interval: seconds between polls.
    :param margin: seconds allowed for starting up.
    """
    return max(1, math.ceil((max_runtime_seconds + margin) / max(check_interval, 1)))


def s3_uri(bucket: str, key: str) -> str:
    """
    Return ``s3://bucket/key``.

    :param bucket: the bucket.
    :param key: the key.
    """
    return f"s3://{bucket}/{key}"


class BoltzGenStageOperator(SageMakerProcessingOperator):
    """
    Run one stage of one shard (or of one spec, for filtering) as a SageMaker Processing job, then
    verify its output and commit it.

    The request is built at execute time from the shard descriptor that ``plan`` published (the task
    maps over a reference and reads the descriptor from S3; XCom values are not Jinja-rendered, so
    nothing is left to templating). When the stage's output for this shard is already committed the
    job is skipped and the commit is returned. Every try gets its own job name
    (``action_if_job_exists="fail"``). A try whose worker was lost leaves its job behind, so a new try
    first looks at the jobs of the earlier tries of the run: one that completed into this try's
    attempt folder with an output that verifies is taken over and committed, one still running is
    stopped before a new job starts, so no shard stage ever has two jobs that both complete.

    Job, verification and commit are one task: clearing a failed task then always brings back a new
    job (a separate check that failed would run again over the old one), and a shard stage costs the
    scheduler one task instance and two task runs (start, resume) rather than two and three. An
    output that does not verify fails the task without retry
    (:class:`~airflow.exceptions.AirflowFailException`): another try of the same job cannot change it.
    Creating a job backs off on throttling and exhausted quotas
    (:class:`~boltzgen_airflow.hooks.ProcessingJobHook`). A Stopped job fails the task in both
    synchronous and deferrable mode, and killing the task stops the job: in deferrable mode the trigger
    (:class:`~boltzgen_airflow.triggers.StageJobTrigger`) stops it when the deferred task is
    cleared or marked, and leaves it running across triggerer restarts.

    :param stage: one of :data:`~boltzgen_airflow.stages.STAGES`.
    :param campaign_name: the campaign (part of job names and tags).
    :param settings: the campaign's AWS job settings.
    :param shard: the shard descriptor (templated so a mapped task group argument resolves).
    :param upstream: what the previous stage returned, its commit (templated; not for design/filtering).
    :param check_interval: seconds between status polls.
    """

    aws_hook_class = ProcessingJobHook
    template_fields: Sequence[str] = aws_template_fields("shard", "upstream")
    operator_extra_links = (SageMakerProcessingJobLink(), ProcessingJobLogsLink())
    ui_color = "#c9daf8"
    #: the least fraction of expected designs an attempt needs when the shard does not say
    default_min_fraction = 0.9

    def __init__(
        self,
        *,
        stage: str,
        campaign_name: str,
        settings: JobSettings,
        shard: Any,
        upstream: Any = None,
        check_interval: int = 30,
        deferrable: bool = True,
        **kwargs: Any,
    ) -> None:
        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r}; stages are {list(STAGES)}")
        kwargs.pop("action_if_job_exists", None)
        super().__init__(
            config={},
            action_if_job_exists="fail",
            check_interval=check_interval,
            deferrable=deferrable,
            wait_for_completion=True,
            print_log=False,
            **kwargs,
        )
        self.stage = stage
        self.campaign_name = campaign_name
        self.settings = settings
        self.shard = shard
        self.upstream = upstream
        self._job_name: str | None = None
        self._task_identity: dict[str, Any] = {}

    @cached_property
    def _s3(self) -> Any:
        # One client per task run: each new AWS hook walks the call stack (inspect.stack) to name
        # its caller in the user agent, about 0.25 CPU s a client.
        return s3_client(self.aws_conn_id, self.region_name)

    @property
    def _stage(self) -> Mapping[str, Any]:
        stage: Mapping[str, Any] = self.shard["stages"][self.stage]
        return stage

    def _attempt_prefix(self, name: str) -> str:
        return f"{self._stage['attempts_prefix'].rstrip('/')}/{name}/"

    def _result(self, name: str, *, cached: bool, record: Mapping[str, Any] | None = None) -> dict[str, Any]:
        result = {
            "stage": self.stage,
            "shard": self.shard["shard"],
            "job_name": name,
            "attempt_prefix": (record or {}).get("attempt_prefix") or self._attempt_prefix(name),
            "cached": cached,
        }
        if record:
            for key in ("designs_expected", "designs_produced", "seconds", "shortfall"):
                result[key] = record.get(key)
        return result

    def _persist_links(self, context: Context, name: str) -> None:
        region = self.region_name or self.hook.conn_region_name or "us-east-1"
        partition = self.hook.conn_partition
        SageMakerProcessingJobLink.persist(
            context, self, region_name=region, aws_partition=partition, job_name=name
        )
        ProcessingJobLogsLink.persist(
            context, self, region_name=region, aws_partition=partition, job_name=name
        )

    def _build(self, context: Context, name: str) -> dict[str, Any]:
        shard, stage = self.shard, self._stage
        bucket = shard["bucket"]
        upstream_uri = None
        if self.stage not in ("design", "filtering"):
            if not isinstance(self.upstream, Mapping) or not self.upstream.get("attempt_prefix"):
                raise AirflowException(f"{self.stage}: no committed upstream output was handed over")
            upstream_uri = s3_uri(self.upstream.get("bucket") or bucket, self.upstream["attempt_prefix"])
        analysis = shard.get("analysis_manifest")
        locations = JobLocations(
            code=s3_uri(bucket, shard["code_prefix"]),
            work=s3_uri(bucket, stage["work_prefix"]),
            specs_manifest=s3_uri(bucket, shard["specs_manifest"]),
            result=s3_uri(bucket, self._attempt_prefix(name)),
            upstream=upstream_uri,
            analysis_manifest=s3_uri(bucket, analysis) if analysis else None,
        )
        return build_processing_request(
            stage=self.stage,
            name=name,
            settings=self.settings,
            resources=JobResources.from_dict(stage["resources"]),
            locations=locations,
            tags={
                "boltzgen:campaign": self.campaign_name,
                "boltzgen:stage": self.stage,
                "boltzgen:shard": shard["shard"],
                "boltzgen:run": str(context["run_id"])[:256],
            },
        )

    def execute(self, context: Context) -> dict[str, Any]:
        """Return the commit on a cache hit; otherwise start the job and wait for it."""
        context["shard_id"] = self.shard.get("shard", "")  # type: ignore[typeddict-unknown-key]
        self.shard = shard_descriptor(self.shard, self._s3)
        bucket = self.shard["bucket"]
        run_stages = self.shard.get("run_stages") or list(STAGES)
        selected = self.stage in run_stages
        if not (selected and self.shard.get("force")):
            record = read_commit(self._s3, bucket, self._stage["commit_key"])
            if record:
                self.log.info(
                    "%s of %s is committed (job %s, %s designs): no job started",
                    self.stage,
                    self.shard["shard"],
                    record.get("job_name"),
                    record.get("designs_produced"),
                )
                self._persist_links(context, str(record.get("job_name", "")))
                return self._finish(self._result(str(record.get("job_name", "")), cached=True, record=record))
        if not selected:
            raise AirflowSkipException(f"{self.stage} is not among the stages to run ({run_stages})")

        ti = context["ti"]
        self._task_identity = {
            "dag_id": ti.dag_id,
            "task_id": ti.task_id,
            "run_id": ti.run_id,
            "map_index": int(ti.map_index if ti.map_index is not None else -1),
        }
        earlier = self._settle_earlier_jobs(context)
        if earlier:
            self._job_name = earlier
            self._persist_links(context, earlier)
            return self._finish(self._commit(context, self._result(earlier, cached=False)))
        name = self._try_job_name(context, int(ti.try_number))
        self._job_name = name
        self.config = self._build(context, name)
        self.max_attempts = max_poll_attempts(
            int(self._stage["resources"]["max_runtime_seconds"]), self.check_interval
        )
        self._persist_links(context, name)
        self.log.info(
            "Starting %s job %s writing to s3://%s/%s", self.stage, name, bucket, self._attempt_prefix(name)
        )
        super().execute(context)
        # Synchronous mode (deferrable mode resumes in execute_complete). The provider's wait treats
        # Stopped as done; it is not.
        self._raise_unless_completed(name)
        return self._finish(self._commit(context, self._result(name, cached=False)))

    def _try_job_name(self, context: Context, try_number: int) -> str:
        return job_name(
            self.campaign_name, str(context["run_id"]), self.stage, self.shard["shard"], try_number
        )

    def _status(self, name: str) -> str | None:
        try:
            return str(self.hook.describe_processing_job(name).get("ProcessingJobStatus"))
        except ClientError as err:
            if error_code(err) == "ValidationException":  # SageMaker's answer for an unknown job
                return None
            raise

    def _settle_earlier_jobs(self, context: Context) -> str | None:
        """
        Return the completed job of an earlier try whose output verifies, after stopping any earlier
        job still running; None when this try must start its own job.
        """
        for attempt in range(int(context["ti"].try_number) - 1, 0, -1):
            name = self._try_job_name(context, attempt)
            status = self._status(name)
            if status in ("InProgress", "Stopping"):
                self.log.info("Job %s of try %d is still %s: stopping it", name, attempt, status)
                try:
                    client: Any = self.hook.conn
                    client.stop_processing_job(ProcessingJobName=name)
                except ClientError as err:
                    if error_code(err) != "ValidationException":  # already ended
                        raise
                status = self._status(name)
            if status != "Completed":
                continue
            attempt_uri = s3_uri(self.shard["bucket"], self._attempt_prefix(name)).rstrip("/")
            outputs = (
                self.hook.describe_processing_job(name).get("ProcessingOutputConfig", {}).get("Outputs", [])
            )
            if attempt_uri not in {o.get("S3Output", {}).get("S3Uri", "").rstrip("/") for o in outputs}:
                # Another cache key (filtering over another set of shards): not this try's work.
                self.log.info("Job %s of try %d wrote elsewhere than %s", name, attempt, attempt_uri)
                continue
            manifest, verification = verify_attempt(
                self._s3,
                self.shard["bucket"],
                self._attempt_prefix(name),
                float(self.shard.get("min_fraction", self.default_min_fraction)),
                stage=self.stage,
            )
            if manifest is not None and verification.ok:
                self.log.info(
                    "Job %s of try %d completed and its output verifies: taking it over", name, attempt
                )
                return name
            self.log.info("Job %s of try %d completed with an output that does not verify", name, attempt)
        return None

    def defer(
        self,
        *,
        trigger: BaseTrigger,
        method_name: str,
        kwargs: dict[str, Any] | None = None,
        timeout: timedelta | int | float | None = None,
    ) -> NoReturn:
        """
        Defer as the provider does, waiting with :class:`~boltzgen_airflow.triggers.StageJobTrigger`.

        The provider's execute builds a plain ``SageMakerTrigger``, which leaves the job running when
        the deferred task is cleared or marked; its job and polling settings are carried over to the
        trigger that stops the job then. The AWS settings are the operator's own: provider 9.34.0
        (MWAA's) does not hand ``region_name``, ``verify`` and ``botocore_config`` to its trigger.
        """
        if isinstance(trigger, SageMakerTrigger) and not isinstance(trigger, StageJobTrigger):
            if not self._task_identity:
                raise AirflowException(f"{self.task_id}: deferring before a job was started")
            trigger = StageJobTrigger(
                trigger.job_name,
                **self._task_identity,
                waiter_delay=trigger.waiter_delay,
                waiter_max_attempts=trigger.attempts,
                aws_conn_id=self.aws_conn_id,
                region_name=self.region_name,
                verify=self.verify,
                botocore_config=self.botocore_config,
            )
        super().defer(trigger=trigger, method_name=method_name, kwargs=kwargs, timeout=timeout)

    def _raise_unless_completed(self, name: str) -> None:
        description = self.hook.describe_processing_job(name)
        status = description.get("ProcessingJobStatus")
        if status != "Completed":
            self._log_tail(name)
            reason = description.get("FailureReason") or description.get("ExitMessage") or ""
            raise AirflowException(f"SageMaker job {name} ended {status}: {reason}".rstrip(": "))

    def _log_tail(self, name: str) -> None:
        try:
            tail = processing_log_tail(name, aws_conn_id=self.aws_conn_id, region_name=self.region_name)
        except Exception as err:  # the log is a courtesy; the failure itself must surface
            self.log.warning("Could not read the CloudWatch log of %s: %s", name, err)
            return
        if tail:
            self.log.error("Last log lines of %s:\n%s", name, "\n".join(tail))

    def execute_complete(self, context: Context, event: dict[str, Any] | None = None) -> dict[str, Any]:
        """Finish after the trigger: any end but Completed fails the task."""
        context["shard_id"] = self.shard.get("shard", "")  # type: ignore[typeddict-unknown-key]
        self.shard = shard_descriptor(self.shard, self._s3)
        event = event or {}
        name = str(event.get("job_name") or "")
        if event.get("status") != "success":
            reason = ""
            if name:
                self._log_tail(name)
                try:
                    description = self.hook.describe_processing_job(name)
                    reason = (
                        f"; job {description.get('ProcessingJobStatus')}: "
                        f"{description.get('FailureReason') or description.get('ExitMessage') or ''}"
                    )
                except Exception as err:  # the trigger's own message still says what happened
                    self.log.warning("Could not describe SageMaker job %s: %s", name, err)
            raise AirflowException(
                f"SageMaker job {name} of {self.stage}/{self.shard['shard']} did not complete "
                f"({event.get('status')}): {event.get('message', '')}{reason}".rstrip(": ")
            )
        self._raise_unless_completed(name)
        result = self._result(name, cached=False)
        self._before_commit(result)
        return self._finish(self._commit(context, result))

    def _before_commit(self, result: Mapping[str, Any]) -> None:
        """Check what must hold before a resumed try commits (nothing for a shard stage)."""

    def _commit(self, context: Context, result: Mapping[str, Any]) -> dict[str, Any]:
        """Verify the job's attempt and commit it; an attempt that does not verify fails the task."""
        stage = self._stage
        name = str(result["job_name"])
        try:
            record = commit_attempt(
                self._s3,
                bucket=self.shard["bucket"],
                stage=self.stage,
                key=stage["key"],
                commit_key=stage["commit_key"],
                attempt_prefix=str(result["attempt_prefix"]),
                job_name=name,
                min_fraction=float(self.shard.get("min_fraction", self.default_min_fraction)),
                extra={"run_id": str(context["run_id"])},
            )
        except CommitError as err:
            self._log_tail(name)
            raise AirflowFailException(str(err)) from None
        self.log.info(
            "Committed %s of %s: %s designs of %s expected, from job %s",
            self.stage,
            self.shard["shard"],
            record["designs_produced"],
            record["designs_expected"],
            name,
        )
        return self._result(name, cached=False, record=record)

    def _finish(self, result: dict[str, Any]) -> dict[str, Any]:
        """Return the task's XCom (prefixes and counts, never data)."""
        return result

    def on_kill(self) -> None:
        """Stop the job this try started, so a killed task leaves nothing running."""
        if not self._job_name:
            return
        try:
            status = self.hook.describe_processing_job(self._job_name).get("ProcessingJobStatus")
            if status == "InProgress":
                self.log.info("Stopping SageMaker job %s", self._job_name)
                client: Any = self.hook.conn
                client.stop_processing_job(ProcessingJobName=self._job_name)
        except Exception as err:
            self.log.warning("Could not stop SageMaker job %s: %s", self._job_name, err)


class BoltzGenFilteringOperator(BoltzGenStageOperator):
    """
    Filter one spec over the analysis shards committed when it runs: job, verification and commit
    in one task, which fails after committing when some of the spec's shards are missing.

    One task rather than a job and a check: clearing failed tasks must bring back the whole of a
    partial spec's filtering, and a job task that succeeded would stay as it is while its check
    ran again over the old job. The failure of a partial spec keeps its results (committed under
    a key of exactly the shards filtered) and lets clearing the run's failed tasks filter it again.

    :param spec: one element of what :func:`~boltzgen_airflow.runtime.filter_specs` returned
        (templated so a mapped argument resolves).
    """

    default_min_fraction = 0.0

    def __init__(self, *, spec: Any, **kwargs: Any) -> None:
        kwargs.pop("stage", None)
        super().__init__(stage="filtering", shard=spec, **kwargs)

    @property
    def _spec(self) -> str:
        return str(self.shard.get("spec", ""))

    def _resolve(self, context: Context, *, write: bool) -> None:
        from boltzgen_airflow.runtime import resolve_filtering

        context["shard_id"] = self._spec  # type: ignore[typeddict-unknown-key]
        client = self._s3
        resolved = resolve_filtering(client, self.shard, write=write)
        self.shard = resolved
        if not resolved["shards_committed"]:
            raise AirflowFailException(
                f"{self._spec}: no committed analysis shard of {resolved['shards_total']} "
                f"(missing {' '.join(resolved['missing_shards'])}); not filtered"
            )

    def execute(self, context: Context) -> dict[str, Any]:
        """Resolve the committed shards, then return the cached commit or run, verify and commit."""
        self._resolve(context, write=True)
        result = super().execute(context)
        context["shard_id"] = self._spec  # type: ignore[typeddict-unknown-key]
        return result

    def execute_complete(self, context: Context, event: dict[str, Any] | None = None) -> dict[str, Any]:
        """Verify and commit the job's output once it completed."""
        self._resolve(context, write=False)
        result = super().execute_complete(context, event)
        context["shard_id"] = self._spec  # type: ignore[typeddict-unknown-key]
        return result

    def _before_commit(self, result: Mapping[str, Any]) -> None:
        name = str(result["job_name"])
        outputs = self.hook.describe_processing_job(name).get("ProcessingOutputConfig", {}).get("Outputs", [])
        written = {o.get("S3Output", {}).get("S3Uri", "").rstrip("/") for o in outputs}
        if s3_uri(self.shard["bucket"], str(result["attempt_prefix"])).rstrip("/") not in written:
            raise AirflowFailException(
                f"{self._spec}: the committed analysis shards changed while job {name} ran "
                f"(it wrote {sorted(written)}); clear this task to filter again"
            )

    def _finish(self, result: dict[str, Any]) -> dict[str, Any]:
        shard = self.shard
        results = s3_uri(shard["bucket"], str(result["attempt_prefix"]))
        if shard["missing_shards"]:
            raise AirflowFailException(
                f"{self._spec}: partial, filtered {shard['shards_committed']} of {shard['shards_total']} "
                f"shards; missing {' '.join(shard['missing_shards'])}; results under {results} "
                "(clear the run's failed tasks to re-run the missing shards and filter again)"
            )
        self.log.info(
            "%s: filtered all %d shards; results under %s",
            self._spec,
            shard["shards_total"],
            results,
        )
        return {
            **result,
            "spec": self._spec,
            "shards_total": shard["shards_total"],
            "shards_committed": shard["shards_committed"],
        }
