"""The SageMaker Processing operations: request in, response (or :class:`ApiError`) out."""

from __future__ import annotations

import base64
import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from sagemaker_emulator import ACCOUNT_ID
from sagemaker_emulator.config import EmulatorConfig
from sagemaker_emulator.errors import ApiError, not_found, validation_error
from sagemaker_emulator.faults import CREATE_ACTIONS, FaultBook
from sagemaker_emulator.runner import JobRunner, kill_process_group
from sagemaker_emulator.store import ACTIVE_STATUSES, Job, JobStore
from sagemaker_emulator.validation import (
    requested_instance_types,
    validate_create_request,
    validate_job_name,
    validate_tags,
)

log = logging.getLogger(__name__)

RESTART_REASON = (
    "InternalServerError: The processing host restarted while the job was running; the job did not "
    "complete and its outputs were not uploaded. Start a new job."
)
SHUTDOWN_REASON = (
    "InternalServerError: The processing host shut down while the job was running; the job did not "
    "complete and its outputs were not uploaded. Start a new job."
)


def quota_message(instance_type: str, quota: int, used: int, delta: int) -> str:
    """
    The message of SageMaker's account-level quota error.

    :param instance_type: the instance type asked for.
    :param quota: the quota of that type.
    :param used: instances of that type in use.
    :param delta: instances the request asks for.
    """
    return (
        f"The account-level service limit '{instance_type} for processing job usage' is {quota} Instances, "
        f"with current utilization of {used} Instances and a request delta of {delta} Instances. "
        "Please use AWS Service Quotas to request an increase for this quota. If AWS Service Quotas is "
        "not available, contact AWS support to request an increase for this quota."
    )


class SageMakerEmulator:
    """
    The operations the emulator serves, over a job table, a runner and fault rules.

    :param config: the emulator's settings.
    """

    def __init__(self, config: EmulatorConfig) -> None:
        self.config = config
        config.state_dir.mkdir(parents=True, exist_ok=True)
        self.store = JobStore(config.state_dir / "jobs.sqlite")
        self.faults = FaultBook(config.state_dir / "faults.json")
        self.runner = JobRunner(config, self.store, self.faults)
        self._create_lock = threading.Lock()
        self.recover()
        self.operations: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
            "CreateProcessingJob": self.create_processing_job,
            "DescribeProcessingJob": self.describe_processing_job,
            "StopProcessingJob": self.stop_processing_job,
            "ListProcessingJobs": self.list_processing_jobs,
            "AddTags": self.add_tags,
            "ListTags": self.list_tags,
        }

    def recover(self) -> None:
        """Record jobs that were running when the emulator last died as Failed, killing leftovers."""
        for job in self.store.all():
            if job.status not in ACTIVE_STATUSES:
                continue
            if job.pid and job.workspace and _is_job_process(job.pid, job.workspace):
                kill_process_group(job.pid, grace=1.0)
            self.store.update(job.name, status="Failed", failure_reason=RESTART_REASON, end_time=time.time())
            log.warning("job %s was %s when the emulator stopped; recorded as Failed", job.name, job.status)

    def close(self) -> None:
        """Stop every running job (recorded Failed) and close the job table."""
        self.runner.shutdown(SHUTDOWN_REASON)
        self.store.close()

    def call(self, operation: str, body: dict[str, Any], region: str | None = None) -> dict[str, Any]:
        """
        Run one operation.

        The emulator is SageMaker in one region (``config.region``): a request signed for another
        region sees a region without these jobs, as a client pointed at the wrong region would.

        :param operation: e.g. ``CreateProcessingJob``.
        :param body: the decoded request.
        :param region: the region the request was signed for (None when unsigned).
        """
        handler = self.operations.get(operation)
        if handler is None:
            raise ApiError(
                "UnknownOperationException", f"Operation {operation} is not supported by this emulator"
            )
        if region is not None and region != self.config.region:
            return self._other_region(operation, body, region)
        return handler(body)

    def _other_region(self, operation: str, body: dict[str, Any], region: str) -> dict[str, Any]:
        if operation == "ListProcessingJobs":
            return {"ProcessingJobSummaries": []}
        if operation == "DescribeProcessingJob":
            name = validate_job_name(body.get("ProcessingJobName"))
            raise validation_error(f"Could not find requested job with name {name}")
        if operation == "StopProcessingJob":
            name = validate_job_name(body.get("ProcessingJobName"))
            raise not_found(f"Could not find requested job with name {name}")
        raise validation_error(
            f"this emulator serves region {self.config.region}; the request was signed for {region} "
            f"(start the stack with --region {region} or point the client at {self.config.region})"
        )

    def arn(self, name: str) -> str:
        """:param name: a processing job name."""
        return f"arn:aws:sagemaker:{self.config.region}:{ACCOUNT_ID}:processing-job/{name.lower()}"

    def _select_instance_type(self, cluster: dict[str, Any]) -> None:
        """
        Check the quota: the first requested type with room is the job's (recorded as
        ``SelectedInstanceType`` when the request lists ``InstancePreferences``).

        :raises ApiError: ResourceLimitExceeded naming the first type when none has room.
        """
        count = cluster["InstanceCount"]
        refusals = []
        for instance_type in requested_instance_types(cluster):
            quota = self.config.quota(instance_type)
            used = self.store.active_instances(instance_type) if quota is not None else 0
            if quota is None or used + count <= quota:
                if "InstancePreferences" in cluster:
                    cluster.update(SelectedInstanceType=instance_type, SelectedInstanceCount=count)
                return
            refusals.append(quota_message(instance_type, quota, used, count))
        raise ApiError("ResourceLimitExceeded", refusals[0])

    # -- operations ------------------------------------------------------------------------------

    def create_processing_job(self, req: dict[str, Any]) -> dict[str, Any]:
        """:param req: a CreateProcessingJob request."""
        validate_create_request(req)
        name = req["ProcessingJobName"]
        for rule in self.faults.take(name, CREATE_ACTIONS):
            if rule.action == "throttle":
                raise ApiError("ThrottlingException", rule.message or "Rate exceeded")
            instance_type = requested_instance_types(req["ProcessingResources"]["ClusterConfig"])[0]
            raise ApiError(
                "ResourceLimitExceeded",
                rule.message
                or quota_message(
                    instance_type, 0, 0, req["ProcessingResources"]["ClusterConfig"]["InstanceCount"]
                ),
            )
        with self._create_lock:
            if self.store.get(name) is not None:
                arn = self.arn(name)
                raise ApiError(
                    "ResourceInUse",
                    "Job name must be unique within an AWS account and region, and a job with this name "
                    f"already exists ({arn})",
                )
            self._select_instance_type(req["ProcessingResources"]["ClusterConfig"])
            now = time.time()
            job = Job(
                name=name,
                arn=self.arn(name),
                status="InProgress",
                request={k: v for k, v in req.items() if k != "Tags"},
                tags=list(req.get("Tags", [])),
                creation_time=now,
                last_modified_time=now,
            )
            self.store.insert(job)
        self.runner.start(job)
        return {"ProcessingJobArn": job.arn}

    def _get(self, name: Any) -> Job:
        validate_job_name(name)
        job = self.store.get(name)
        if job is None:
            # SageMaker answers a missing processing job with ValidationException (not ResourceNotFound);
            # the amazon provider's name-collision check relies on exactly that code.
            raise validation_error(f"Could not find requested job with name {name}")
        return job

    def describe_processing_job(self, req: dict[str, Any]) -> dict[str, Any]:
        """:param req: a DescribeProcessingJob request."""
        job = self._get(req.get("ProcessingJobName"))
        out: dict[str, Any] = {
            k: job.request[k]
            for k in (
                "ProcessingInputs", "ProcessingOutputConfig", "ProcessingJobName", "ProcessingResources",
                "StoppingCondition", "AppSpecification", "Environment", "NetworkConfig", "RoleArn",
                "ExperimentConfig",
            )
            if k in job.request
        }  # fmt: skip
        for item in out.get("ProcessingInputs", []):
            s3 = item.get("S3Input")
            if s3 is not None:
                s3.setdefault("S3InputMode", "File")
                s3.setdefault("S3DataDistributionType", "FullyReplicated")
                s3.setdefault("S3CompressionType", "None")
            item.setdefault("AppManaged", False)
        out.update(
            ProcessingJobArn=job.arn,
            ProcessingJobStatus=job.status,
            CreationTime=job.creation_time,
            LastModifiedTime=job.last_modified_time,
        )
        if job.start_time is not None:
            out["ProcessingStartTime"] = job.start_time
        if job.end_time is not None:
            out["ProcessingEndTime"] = job.end_time
        if job.failure_reason:
            out["FailureReason"] = job.failure_reason
        if job.exit_message is not None:
            out["ExitMessage"] = job.exit_message
        return out

    def stop_processing_job(self, req: dict[str, Any]) -> dict[str, Any]:
        """:param req: a StopProcessingJob request."""
        name = validate_job_name(req.get("ProcessingJobName"))
        job = self.store.get(name)
        if job is None:
            raise not_found(f"Could not find requested job with name {name}")
        if job.status == "Stopping":
            return {}
        if not self.store.transition(name, ("InProgress",), status="Stopping"):
            raise validation_error(
                f"The request was rejected because the processing job is in status {job.status}."
            )
        self.runner.request_stop(name)
        return {}

    def list_processing_jobs(self, req: dict[str, Any]) -> dict[str, Any]:
        """:param req: a ListProcessingJobs request."""
        max_results = req.get("MaxResults", 10)
        if not isinstance(max_results, int) or not 1 <= max_results <= 100:
            raise validation_error(
                f"1 validation error detected: Value '{max_results}' at 'maxResults' failed to satisfy "
                "constraint: Member must have value less than or equal to 100"
            )
        sort_by = req.get("SortBy", "CreationTime")
        order = req.get("SortOrder", "Descending")
        if sort_by not in ("Name", "CreationTime", "Status") or order not in ("Ascending", "Descending"):
            raise validation_error(f"Invalid SortBy {sort_by!r} or SortOrder {order!r}")
        jobs = self.store.all()
        filters: list[Callable[[Job], bool]] = []
        if (text := req.get("NameContains")) is not None:
            filters.append(lambda j: text.lower() in j.name.lower())
        if (status := req.get("StatusEquals")) is not None:
            filters.append(lambda j: j.status == status)
        for key, attr, after in (
            ("CreationTimeAfter", "creation_time", True),
            ("CreationTimeBefore", "creation_time", False),
            ("LastModifiedTimeAfter", "last_modified_time", True),
            ("LastModifiedTimeBefore", "last_modified_time", False),
        ):
            if (bound := req.get(key)) is not None:
                filters.append(_time_filter(attr, float(bound), after))
        jobs = [j for j in jobs if all(f(j) for f in filters)]
        sort_key: Callable[[Job], Any] = {
            "Name": lambda j: j.name,
            "CreationTime": lambda j: j.creation_time,
            "Status": lambda j: (j.status, j.creation_time),
        }[sort_by]
        jobs.sort(key=sort_key, reverse=order == "Descending")
        offset = _decode_token(req.get("NextToken"))
        page = jobs[offset : offset + max_results]
        out: dict[str, Any] = {"ProcessingJobSummaries": [_summary(j) for j in page]}
        if offset + max_results < len(jobs):
            out["NextToken"] = _encode_token(offset + max_results)
        return out

    def _by_arn(self, arn: Any) -> Job:
        job = self.store.get_by_arn(arn) if isinstance(arn, str) else None
        if job is None:
            raise validation_error(
                f"Resource {arn} does not exist or is not a processing job of this account."
            )
        return job

    def add_tags(self, req: dict[str, Any]) -> dict[str, Any]:
        """:param req: an AddTags request."""
        job = self._by_arn(req.get("ResourceArn"))
        new = validate_tags(req.get("Tags"))
        merged = {t["Key"]: t.get("Value", "") for t in job.tags}
        merged.update({t["Key"]: t.get("Value", "") for t in new})
        tags = [{"Key": k, "Value": v} for k, v in merged.items()]
        validate_tags(tags)
        self.store.update(job.name, tags=tags, last_modified_time=job.last_modified_time)
        return {"Tags": new}

    def list_tags(self, req: dict[str, Any]) -> dict[str, Any]:
        """:param req: a ListTags request."""
        return {"Tags": self._by_arn(req.get("ResourceArn")).tags}


def _time_filter(attr: str, bound: float, after: bool) -> Callable[[Job], bool]:
    if after:
        return lambda j: float(getattr(j, attr)) > bound
    return lambda j: float(getattr(j, attr)) < bound


def _summary(job: Job) -> dict[str, Any]:
    out: dict[str, Any] = {
        "ProcessingJobName": job.name,
        "ProcessingJobArn": job.arn,
        "CreationTime": job.creation_time,
        "LastModifiedTime": job.last_modified_time,
        "ProcessingJobStatus": job.status,
    }
    if job.end_time is not None:
        out["ProcessingEndTime"] = job.end_time
    if job.failure_reason:
        out["FailureReason"] = job.failure_reason
    if job.exit_message is not None:
        out["ExitMessage"] = job.exit_message
    return out


def _encode_token(offset: int) -> str:
    return base64.urlsafe_b64encode(json.dumps({"offset": offset}).encode()).decode()


def _decode_token(token: Any) -> int:
    if token is None:
        return 0
    try:
        offset = json.loads(base64.urlsafe_b64decode(str(token).encode()))["offset"]
    except (ValueError, KeyError, TypeError) as exc:
        raise validation_error(f"Invalid pagination token {token!r}") from exc
    if not isinstance(offset, int) or offset < 0:
        raise validation_error(f"Invalid pagination token {token!r}")
    return offset


def _is_job_process(pid: int, workspace: str) -> bool:
    """Whether ``pid`` is still the job's container (its working directory is the job's folder)."""
    try:
        from pathlib import Path

        return Path(f"/proc/{pid}/cwd").resolve() == Path(workspace).parent.resolve()
    except OSError:
        return False
