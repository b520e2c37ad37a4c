"""The stage operator: one SageMaker Processing job per shard and stage, skipped when cached."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping, Sequence
from datetime import timedelta
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.providers.amazon.aws.operators.base_aws import AwsBaseOperator
from airflow.providers.amazon.aws.utils.mixins import aws_template_fields
from airflow.providers.common.compat.sdk import AirflowException, AirflowFailException, AirflowSkipException
from botocore.exceptions import ClientError

from boltzgen_airflow.exceptions import CommitError, RunStateError, SpendCapReached
from boltzgen_airflow.run import spend
from boltzgen_airflow.run.descriptors import DescriptorRef, ResolvedFiltering, ShardDescriptor, StageTarget
from boltzgen_airflow.run.filtering_inputs import load_filtering, resolve_filtering
from boltzgen_airflow.run.prepare import load_shard
from boltzgen_airflow.sagemaker.failures import job_failure_text
from boltzgen_airflow.sagemaker.hooks import ProcessingJobHook, error_code, processing_log_tail, s3_client
from boltzgen_airflow.sagemaker.links import ProcessingJobLogsLink, SageMakerProcessingJobLink
from boltzgen_airflow.sagemaker.requests import (
    JobLocations,
    JobSettings,
    build_processing_request,
    job_name,
    request_summary,
)
from boltzgen_airflow.sagemaker.triggers import ClaimTrigger, StageJobTrigger
from boltzgen_airflow.settings import claim_start_timeout
from boltzgen_airflow.stages import STAGES
from boltzgen_airflow.storage.claims import Claim, ClaimState, HeldClaim, acquire, conditional_writes_honoured
from boltzgen_airflow.storage.commits import (
    CommitRecord,
    CommittedStage,
    commit_attempt,
    read_commit,
    verify_attempt,
)
from boltzgen_airflow.storage.layout import claim_key_of, probe_key_of, s3_uri

if TYPE_CHECKING:
    from airflow.sdk import Context

# Time a job may wait for capacity before it starts running; polling covers it on top of the runtime.
QUEUE_MARGIN_SECONDS = 3600


def shard_descriptor(shard: Mapping[str, Any], client: Any) -> ShardDescriptor:
    """
    Return the descriptor a shard reference points at, failing the task for good when it is gone.

    The shard tasks map over references (see :func:`~boltzgen_airflow.run.prepare.publish_shards`);
    each task process reads its own descriptor once.

    :param shard: the resolved ``shard`` argument, a :class:`~boltzgen_airflow.run.descriptors.DescriptorRef`
        document.
    :param client: a boto3 S3 client.
    """
    try:
        return load_shard(client, DescriptorRef.from_json(shard))
    except RunStateError as err:
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


class BoltzGenStageOperator(AwsBaseOperator[ProcessingJobHook]):
    """
    Run one stage of one shard (or of one spec, for filtering) as a SageMaker Processing job, then
    verify its output and commit it.

    The request is built at execute time from the shard descriptor that ``plan`` published (the task
    maps over a reference and reads the descriptor from S3; XCom values are not Jinja-rendered, so
    nothing is left to templating). When the stage's output for this shard is already committed the
    job is skipped and the commit is returned. The job is created through the provider's hook
    (:class:`~boltzgen_airflow.sagemaker.hooks.ProcessingJobHook`) and waited for by the provider's
    trigger (:class:`~boltzgen_airflow.sagemaker.triggers.StageJobTrigger` extends it), both built
    here with the operator's AWS settings. Every try gets its own job name (the try number is part
    of its hash). A try whose worker was lost leaves its job behind, so a new try
    first looks at the jobs of the earlier tries of the run: one that completed into this try's
    attempt folder with an output that verifies is taken over and committed, one still running is
    stopped before a new job starts, so no shard stage ever has two jobs that both complete.

    Before starting a job the task claims the shard stage (:mod:`boltzgen_airflow.storage.claims`):
    when another run (or campaign) holds a live claim, it starts no job and waits for that claim's
    commit (deferred to :class:`~boltzgen_airflow.sagemaker.triggers.ClaimTrigger`); a claim whose
    job failed, stopped or was never created is taken over, and a claimed job that completed is
    verified and committed by whichever task sees it first.

    Job, verification and commit are one task: clearing a failed task then always brings back a new
    job (a separate check that failed would run again over the old one), and a shard stage costs the
    scheduler one task instance and two task runs (start, resume) rather than two and three. An
    output that does not verify fails the task without retry
    (:class:`~airflow.exceptions.AirflowFailException`): another try of the same job cannot change it.
    Creating a job backs off on throttling and exhausted quotas
    (:class:`~boltzgen_airflow.sagemaker.hooks.ProcessingJobHook`). A Stopped job fails the task in both
    synchronous and deferrable mode, and killing the task stops the job: in deferrable mode the trigger
    (:class:`~boltzgen_airflow.sagemaker.triggers.StageJobTrigger`) stops it when the deferred task is
    cleared or marked, and leaves it running across triggerer restarts.

    :param stage: one of :data:`~boltzgen_airflow.stages.STAGES`.
    :param campaign_name: the campaign (part of job names and tags).
    :param settings: the campaign's AWS job settings.
    :param shard: a reference to the shard's descriptor, one element of what
        :func:`~boltzgen_airflow.run.prepare.publish_shards` returned (templated so a mapped task
        group argument resolves).
    :param upstream: the previous stage's commit as its sensor returned it, a
        :class:`~boltzgen_airflow.storage.commits.CommittedStage` document (templated; not for
        design/filtering).
    :param check_interval: seconds between status polls.
    :param deferrable: wait in the triggerer (True) or in the worker.
    """

    aws_hook_class = ProcessingJobHook
    template_fields: Sequence[str] = aws_template_fields("shard", "upstream")
    operator_extra_links = (SageMakerProcessingJobLink(), ProcessingJobLogsLink())
    ui_color = "#c9daf8"

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
        super().__init__(**kwargs)
        self.check_interval = check_interval
        self.deferrable = deferrable
        self.stage = stage
        self.campaign_name = campaign_name
        self.settings = settings
        self.shard = shard
        self.upstream = upstream
        self._descriptor: ShardDescriptor | None = None
        self._job_name: str | None = None
        self._conditional = True

    @cached_property
    def _s3(self) -> Any:
        # One client per task run: each new AWS hook walks the call stack (inspect.stack) to name
        # its caller in the user agent, about 0.25 CPU s a client.
        return s3_client(self.aws_conn_id, self.region_name)

    @property
    def descriptor(self) -> ShardDescriptor:
        """The descriptor of this task's shard (or of the spec's filtering job), read at execute time."""
        if self._descriptor is None:
            raise AirflowException(f"{self.task_id}: the shard descriptor is read at execute time")
        return self._descriptor

    @property
    def target(self) -> StageTarget:
        """Where this stage's job of the shard writes and commits."""
        return self.descriptor.stages[self.stage]

    def _load(self, context: Context) -> ShardDescriptor:
        """Read the shard's descriptor (the filtering operator resolves its spec's instead)."""
        context["shard_id"] = str(self.shard.get("shard", ""))  # type: ignore[typeddict-unknown-key]
        return shard_descriptor(self.shard, self._s3)

    def _result(self, name: str, *, cached: bool, record: CommitRecord | None = None) -> dict[str, Any]:
        """Return the task's XCom: the committed attempt and its counts (prefixes, never data)."""
        result: dict[str, Any] = {
            "stage": self.stage,
            "shard": self.descriptor.shard,
            "job_name": name,
            "attempt_prefix": record.attempt_prefix if record else self.target.attempt_prefix(name),
            "cached": cached,
        }
        if record:
            result.update(
                designs_expected=record.designs_expected,
                designs_produced=record.designs_produced,
                seconds=record.seconds,
                shortfall=record.shortfall,
            )
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
        shard, target = self.descriptor, self.target
        bucket = shard.bucket
        upstream_uri = None
        if self.stage not in ("design", "filtering"):
            try:
                upstream = CommittedStage.from_json(self.upstream)
            except CommitError as err:
                raise AirflowException(
                    f"{self.stage}: no committed upstream output was handed over ({err})"
                ) from None
            upstream_uri = s3_uri(upstream.bucket, upstream.attempt_prefix)
        analysis = shard.analysis_manifest
        locations = JobLocations(
            code=s3_uri(bucket, shard.code_prefix),
            work=s3_uri(bucket, target.work_prefix),
            specs_manifest=s3_uri(bucket, str(shard.specs_manifest)),
            result=s3_uri(bucket, target.attempt_prefix(name)),
            upstream=upstream_uri,
            analysis_manifest=s3_uri(bucket, analysis) if analysis else None,
        )
        return build_processing_request(
            stage=self.stage,
            name=name,
            settings=self.settings,
            resources=target.resources,
            locations=locations,
            tags={
                "boltzgen:campaign": self.campaign_name,
                "boltzgen:stage": self.stage,
                "boltzgen:shard": shard.shard,
                "boltzgen:run": str(context["run_id"])[:256],
            },
        )

    def execute(self, context: Context) -> dict[str, Any]:
        """Return the commit on a cache hit; otherwise start the job and wait for it."""
        self._descriptor = self._load(context)
        bucket = self.descriptor.bucket
        run_stages = self.descriptor.run_stages or STAGES
        selected = self.stage in run_stages
        if not (selected and self.descriptor.force):
            record = read_commit(self._s3, bucket, self.target.commit_key)
            if record:
                self.log.info(
                    "%s of %s is committed (job %s, %s designs): no job started",
                    self.stage,
                    self.descriptor.shard,
                    record.job_name,
                    record.designs_produced,
                )
                self._persist_links(context, record.job_name)
                return self._finish(self._result(record.job_name, cached=True, record=record))
        if not selected:
            raise AirflowSkipException(f"{self.stage} is not among the stages to run ({list(run_stages)})")

        ti = context["ti"]
        name = self._try_job_name(context, int(ti.try_number))
        self._check_spend()
        claimed = self._claim(context, name)
        if claimed is not None:
            return claimed
        earlier = self._settle_earlier_jobs(context)
        if earlier:
            self._job_name = earlier
            self._persist_links(context, earlier)
            return self._finish(self._commit(context, self._result(earlier, cached=False)))
        self._job_name = name
        self._persist_links(context, name)
        self._start_job(context, name)
        # Synchronous mode, or a job that ended before deferring: the provider's wait treats Stopped
        # as done; it is not.
        self._raise_unless_completed(name)
        return self._finish(self._commit(context, self._result(name, cached=False)))

    def _claim(self, context: Context, name: str) -> dict[str, Any] | None:
        """
        Claim the shard stage for this try's job; None once it is this task's to run.

        Otherwise returns the stage's commit (made meanwhile, or made here from another's completed
        job), or defers until another task's live claim changes (:meth:`claim_changed`).
        """
        target, bucket = self.target, self.descriptor.bucket
        self._conditional = conditional_writes_honoured(self._s3, bucket, probe_key_of(target.commit_key))
        if not self._conditional:
            return None
        ti = context["ti"]
        wanted = Claim.now(
            stage=self.stage,
            key=target.key,
            dag_id=str(ti.dag_id),
            run_id=str(context["run_id"]),
            task_id=str(ti.task_id),
            map_index=int(ti.map_index if ti.map_index is not None else -1),
            try_number=int(ti.try_number),
            job_name=name,
        )
        failed: set[str] = set()
        while True:
            record = read_commit(self._s3, bucket, target.commit_key)
            if record and not self.descriptor.force:
                self._persist_links(context, record.job_name)
                return self._finish(self._result(record.job_name, cached=True, record=record))
            if record:  # a forced run redoes the committed job's work
                failed.add(record.job_name)
            acquired = acquire(
                self._s3,
                bucket,
                claim_key_of(target.commit_key),
                wanted,
                self._status,
                start_timeout_seconds=claim_start_timeout(),
                failed_jobs=failed,
            )
            if acquired.mine:
                if acquired.took_over:
                    self.log.info("Took over the stale claim of %s", acquired.took_over.describe())
                return None
            held = acquired.held
            if acquired.state is ClaimState.COMPLETED:
                committed = self._commit_theirs(context, held.claim)
                if committed is not None:
                    return committed
                failed.add(held.claim.job_name)
                continue
            self.log.info(
                "%s of %s is claimed by %s: no job started, waiting for its commit",
                self.stage,
                self.descriptor.shard,
                held.claim.describe(),
            )
            self._persist_links(context, held.claim.job_name)
            if self.deferrable:
                self.defer(
                    trigger=self.claim_trigger(held),
                    method_name="claim_changed",
                    timeout=timedelta(seconds=target.resources.max_runtime_seconds + QUEUE_MARGIN_SECONDS),
                )
            time.sleep(self.check_interval)

    def claim_trigger(self, held: HeldClaim) -> ClaimTrigger:
        """
        Return the trigger that waits on another task's claim of this shard stage.

        :param held: the claim and its ETag.
        """
        return ClaimTrigger(
            bucket=self.descriptor.bucket,
            commit_key=self.target.commit_key,
            claim_key=claim_key_of(self.target.commit_key),
            poke_interval=self.check_interval,
            etag=held.etag,
            job_name=held.claim.job_name,
            claimed_at=held.claim.claimed_at,
            start_timeout=claim_start_timeout(),
            aws_conn_id=self.aws_conn_id,
            region_name=self.region_name,
            verify=self.verify,
            botocore_config=self.botocore_config,
        )

    def claim_changed(self, context: Context, event: dict[str, Any] | None = None) -> dict[str, Any]:
        """Decide again once the claim waited on changed: its commit, its job's output, or a takeover."""
        self.log.info("The claim waited on changed: %s", (event or {}).get("change", event))
        return self.execute(context)

    def _commit_theirs(self, context: Context, claim: Claim) -> dict[str, Any] | None:
        """Commit another task's completed job when its output verifies (None when it does not)."""
        attempt = self.target.attempt_prefix(claim.job_name)
        try:
            record = commit_attempt(
                self._s3,
                bucket=self.descriptor.bucket,
                stage=self.stage,
                key=self.target.key,
                commit_key=self.target.commit_key,
                attempt_prefix=attempt,
                job_name=claim.job_name,
                min_fraction=self.descriptor.min_fraction,
                run_id=claim.run_id,
                # A forced run's job replaces the commit it was forced over.
                replace=self.descriptor.force,
            )
        except CommitError as err:
            self.log.info("The completed job of %s is not committed: %s", claim.describe(), err)
            return None
        self.log.info("Committed the completed job of %s", claim.describe())
        self._persist_links(context, record.job_name)
        return self._finish(self._result(record.job_name, cached=True, record=record))

    def _check_spend(self) -> None:
        """Start no job once the campaign run's spend would pass its cap (``run.spend``)."""
        cap = self.descriptor.spend_cap
        if cap is None:
            return
        try:
            spend.check_job(
                self._s3,
                self.hook.conn,
                bucket=self.descriptor.bucket,
                campaign=self.campaign_name,
                cap=cap,
                job_usd=self.descriptor.stage_usd.get(self.stage, 0.0),
            )
        except SpendCapReached as err:
            raise AirflowFailException(f"{self.stage} of {self.descriptor.shard}: {err}") from None

    def _start_job(self, context: Context, name: str) -> None:
        """Build this try's request and start its job (see :meth:`start`)."""
        request = self._build(context, name)
        # One line on every try; the whole request (about 100 lines) only at debug level.
        self.log.info(
            "Starting %s of %s: %s; writing to s3://%s/%s",
            self.stage,
            self.descriptor.shard,
            request_summary(request),
            self.descriptor.bucket,
            self.target.attempt_prefix(name),
        )
        self.log.debug("CreateProcessingJob request:\n%s", json.dumps(request, indent=2, default=str))
        self.start(request)

    def start(self, request: dict[str, Any]) -> None:
        """
        Create a job; in deferrable mode defer to :class:`StageJobTrigger` until it ends.

        Returns in synchronous mode once the job ended, and at once when it ended before deferring.

        :param request: the CreateProcessingJob request.
        """
        name = str(request["ProcessingJobName"])
        response = self.hook.create_processing_job(
            request, wait_for_completion=not self.deferrable, check_interval=self.check_interval
        )
        if response["ResponseMetadata"]["HTTPStatusCode"] != 200:
            raise AirflowException(f"SageMaker job {name} was not created: {response}")
        if not self.deferrable or self._status(name) in ("Completed", "Failed", "Stopped"):
            return
        self.defer(
            trigger=self.trigger_for(request), method_name="execute_complete", timeout=self.execution_timeout
        )

    def trigger_for(self, request: dict[str, Any]) -> StageJobTrigger:
        """
        Return the trigger that waits for a job of this task, polling for the job's whole life.

        Region, verify and botocore config are the operator's own on every provider release (the
        provider's own execute in 9.34.0, MWAA's, hands none of them to its trigger).

        :param request: the job's CreateProcessingJob request.
        """
        max_runtime = int(request["StoppingCondition"]["MaxRuntimeInSeconds"])
        return StageJobTrigger(
            str(request["ProcessingJobName"]),
            waiter_delay=self.check_interval,
            waiter_max_attempts=max_poll_attempts(max_runtime, self.check_interval),
            aws_conn_id=self.aws_conn_id,
            region_name=self.region_name,
            verify=self.verify,
            botocore_config=self.botocore_config,
        )

    def _try_job_name(self, context: Context, try_number: int) -> str:
        return job_name(
            self.campaign_name, str(context["run_id"]), self.stage, self.descriptor.shard, try_number
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
            attempt_uri = s3_uri(self.descriptor.bucket, self.target.attempt_prefix(name)).rstrip("/")
            outputs = (
                self.hook.describe_processing_job(name).get("ProcessingOutputConfig", {}).get("Outputs", [])
            )
            if attempt_uri not in {o.get("S3Output", {}).get("S3Uri", "").rstrip("/") for o in outputs}:
                # Another cache key (filtering over another set of shards): not this try's work.
                self.log.info("Job %s of try %d wrote elsewhere than %s", name, attempt, attempt_uri)
                continue
            manifest, verification = verify_attempt(
                self._s3,
                self.descriptor.bucket,
                self.target.attempt_prefix(name),
                self.descriptor.min_fraction,
                stage=self.stage,
            )
            if manifest is not None and verification.ok:
                self.log.info(
                    "Job %s of try %d completed and its output verifies: taking it over", name, attempt
                )
                return name
            self.log.info("Job %s of try %d completed with an output that does not verify", name, attempt)
        return None

    def _raise_unless_completed(self, name: str) -> None:
        description = self.hook.describe_processing_job(name)
        if description.get("ProcessingJobStatus") != "Completed":
            raise self._job_error(name, description)

    def _job_error(
        self, name: str, description: Mapping[str, Any] | None = None, waiter_message: str = ""
    ) -> AirflowException:
        """The task's error for a job that did not complete: its reasons and the tail of its log."""
        if description is None:
            try:
                description = self.hook.describe_processing_job(name)
            except Exception as err:  # the waiter's message still says what happened
                self.log.warning("Could not describe SageMaker job %s: %s", name, err)
                description = {}
        text = job_failure_text(name, description, self._tail(name), waiter_message=waiter_message)
        return AirflowException(f"{self.stage} of {self.descriptor.shard}: SageMaker {text}")

    def _tail(self, name: str) -> list[str]:
        try:
            return processing_log_tail(name, aws_conn_id=self.aws_conn_id, region_name=self.region_name)
        except Exception as err:  # the log is a courtesy; the failure itself must surface
            self.log.warning("Could not read the CloudWatch log of %s: %s", name, err)
            return []

    def _log_tail(self, name: str) -> None:
        tail = self._tail(name)
        if tail:
            self.log.error("Last log lines of %s:\n%s", name, "\n".join(tail))

    def execute_complete(self, context: Context, event: dict[str, Any] | None = None) -> dict[str, Any]:
        """Finish after the trigger: any end but Completed fails the task."""
        self._descriptor = self._load(context)
        event = event or {}
        name = str(event.get("job_name") or "")
        if event.get("status") != "success":
            message = f"({event.get('status')}) {event.get('message', '')}".strip()
            if name:
                raise self._job_error(name, waiter_message=message)
            raise AirflowException(f"{self.stage} of {self.descriptor.shard}: no SageMaker job: {message}")
        self._raise_unless_completed(name)
        result = self._result(name, cached=False)
        self._before_commit(result)
        return self._finish(self._commit(context, result))

    def _before_commit(self, result: Mapping[str, Any]) -> None:
        """Check what must hold before a resumed try commits (nothing for a shard stage)."""

    def _commit(self, context: Context, result: Mapping[str, Any]) -> dict[str, Any]:
        """Verify the job's attempt and commit it; an attempt that does not verify fails the task."""
        target = self.target
        name = str(result["job_name"])
        try:
            record = commit_attempt(
                self._s3,
                bucket=self.descriptor.bucket,
                stage=self.stage,
                key=target.key,
                commit_key=target.commit_key,
                attempt_prefix=str(result["attempt_prefix"]),
                job_name=name,
                min_fraction=self.descriptor.min_fraction,
                run_id=str(context["run_id"]),
                replace=self.descriptor.force or not self._conditional,
            )
        except CommitError as err:
            self._log_tail(name)
            raise AirflowFailException(str(err)) from None
        if record.job_name != name:
            return self._result(record.job_name, cached=True, record=record)
        self.log.info(
            "Committed %s of %s: %s designs of %s expected, from job %s",
            self.stage,
            self.descriptor.shard,
            record.designs_produced,
            record.designs_expected,
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

    :param spec: a reference to the spec's filtering descriptor, one element of what
        :func:`~boltzgen_airflow.run.filtering_inputs.publish_filtering` returned (templated so a mapped
        argument resolves).
    """

    def __init__(self, *, spec: Any, **kwargs: Any) -> None:
        kwargs.pop("stage", None)
        super().__init__(stage="filtering", shard=spec, **kwargs)
        self._writes_inputs = True
        self._filtering: ResolvedFiltering | None = None

    @property
    def filtering(self) -> ResolvedFiltering:
        """The spec's filtering over the analysis shards committed now, resolved at execute time."""
        if self._filtering is None:
            raise AirflowException(f"{self.task_id}: the spec's filtering is resolved at execute time")
        return self._filtering

    def _load(self, context: Context) -> ShardDescriptor:
        """Read the spec's filtering descriptor and resolve it against the committed analysis shards."""
        ref = DescriptorRef.from_json(self.shard)
        context["shard_id"] = ref.label or ref.shard  # type: ignore[typeddict-unknown-key]
        try:
            described = load_filtering(self._s3, ref)
        except RunStateError as err:
            raise AirflowFailException(str(err)) from None
        context["shard_id"] = described.spec  # type: ignore[typeddict-unknown-key]
        resolved = resolve_filtering(self._s3, described, write=self._writes_inputs)
        self._filtering = resolved
        if resolved.job is None:
            raise AirflowFailException(
                f"{resolved.spec}: no committed analysis shard of {resolved.shards_total} "
                f"(missing {' '.join(resolved.missing_shards)}); not filtered"
            )
        return resolved.job

    def execute(self, context: Context) -> dict[str, Any]:
        """Resolve the committed shards, then return the cached commit or run, verify and commit."""
        self._writes_inputs = True
        return super().execute(context)

    def execute_complete(self, context: Context, event: dict[str, Any] | None = None) -> dict[str, Any]:
        """Verify and commit the job's output once it completed (its inputs are not written again)."""
        self._writes_inputs = False
        return super().execute_complete(context, event)

    def _before_commit(self, result: Mapping[str, Any]) -> None:
        name = str(result["job_name"])
        outputs = self.hook.describe_processing_job(name).get("ProcessingOutputConfig", {}).get("Outputs", [])
        written = {o.get("S3Output", {}).get("S3Uri", "").rstrip("/") for o in outputs}
        if s3_uri(self.descriptor.bucket, str(result["attempt_prefix"])).rstrip("/") not in written:
            raise AirflowFailException(
                f"{self.filtering.spec}: the committed analysis shards changed while job {name} ran "
                f"(it wrote {sorted(written)}); clear this task to filter again"
            )

    def _finish(self, result: dict[str, Any]) -> dict[str, Any]:
        filtering = self.filtering
        results = s3_uri(self.descriptor.bucket, str(result["attempt_prefix"]))
        if filtering.missing_shards:
            raise AirflowFailException(
                f"{filtering.spec}: partial, filtered {filtering.shards_committed} of "
                f"{filtering.shards_total} shards; missing {' '.join(filtering.missing_shards)}; "
                f"results under {results} "
                "(clear the run's failed tasks to re-run the missing shards and filter again)"
            )
        self.log.info(
            "%s: filtered all %d shards; results under %s", filtering.spec, filtering.shards_total, results
        )
        return {
            **result,
            "spec": filtering.spec,
            "shards_total": filtering.shards_total,
            "shards_committed": filtering.shards_committed,
        }
