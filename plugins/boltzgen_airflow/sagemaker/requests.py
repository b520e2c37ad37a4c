"""
CreateProcessingJob requests for every stage, as pure functions.

The request follows the job contract of ``docs/architecture.md``: inputs ``code``, ``work``,
``specs``, ``upstream`` and ``analysis`` under ``/opt/ml/processing/input/<name>/``, one output
``result`` uploaded at the end of the job to the attempt prefix, and the stage script as entrypoint.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from boltzgen_airflow.exceptions import JobRequestError
from boltzgen_airflow.sagemaker.limits import (
    JOB_NAME_MAX,
    JOB_NAME_RE,
    MAX_ENVIRONMENT_ENTRIES,
    MAX_ENVIRONMENT_VALUE,
    MAX_INPUTS,
    MAX_RUNTIME_SECONDS,
)
from boltzgen_airflow.stages import STAGES

STEP_ROOT = "/opt/ml"
INPUT_ROOT = f"{STEP_ROOT}/processing/input"
OUTPUT_ROOT = f"{STEP_ROOT}/processing/output"
# SageMaker tag keys/values: letters, digits, spaces and _.:/=+-@
_TAG_RE = re.compile(r"^[\w\s.:/=+\-@]*\Z")
_S3_URI_RE = re.compile(r"^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/.*)?\Z")

STAGE_ABBREVIATIONS: Mapping[str, str] = {
    "design": "des",
    "inverse_folding": "inv",
    "folding": "fold",
    "analysis": "ana",
    "filtering": "filt",
}


@dataclass(frozen=True)
class JobSettings:
    """
    The campaign-wide settings every job of a campaign shares.

    :param role_arn: the execution role of the processing jobs.
    :param image_uri: the BoltzGen processing image.
    :param subnets: VPC subnets (empty: no VPC).
    :param security_group_ids: VPC security groups (given with subnets).
    :param kms_key_id: KMS key for the output and the instance volume (None: the service default).
    :param network_isolation: run the container without network access.
    :param tags: tags put on every job.
    """

    role_arn: str
    image_uri: str
    subnets: tuple[str, ...] = ()
    security_group_ids: tuple[str, ...] = ()
    kms_key_id: str | None = None
    network_isolation: bool = True
    tags: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_aws(cls, aws: Any) -> JobSettings:
        """
        Build the settings from a campaign's ``aws`` section.

        :param aws: :class:`boltzgen_airflow.campaign.model.AwsSettings`.
        """
        return cls(
            role_arn=aws.role_arn,
            image_uri=aws.image_uri,
            subnets=tuple(aws.subnets),
            security_group_ids=tuple(aws.security_group_ids),
            kms_key_id=aws.kms_key_id,
            network_isolation=aws.network_isolation,
            tags=dict(aws.tags),
        )


@dataclass(frozen=True)
class JobResources:
    """
    What one job of a stage runs on.

    :param instance_type: e.g. ``ml.g5.2xlarge``.
    :param instance_count: instances per job (the stage scripts use one).
    :param volume_gb: the ML storage volume.
    :param max_runtime_seconds: the job's StoppingCondition.
    :param fallback_types: types SageMaker may start the job on, in order, when ``instance_type``
        has no capacity (sent as ``InstancePreferences``).
    """

    instance_type: str
    instance_count: int
    volume_gb: int
    max_runtime_seconds: int
    fallback_types: tuple[str, ...] = ()

    @classmethod
    def from_stage_resources(cls, resources: Any) -> JobResources:
        """
        Build from :class:`boltzgen_airflow.campaign.catalog.StageResources`.

        :param resources: the resolved resources of one stage.
        """
        instance = resources.instance_type
        name = instance if isinstance(instance, str) else instance.name
        return cls(
            instance_type=name,
            instance_count=1,
            volume_gb=int(resources.volume_gb),
            max_runtime_seconds=int(resources.max_runtime_seconds),
            fallback_types=tuple(f.name for f in getattr(resources, "fallbacks", ())),
        )

    def as_dict(self) -> dict[str, Any]:
        """Return a JSON-ready mapping (what shard descriptors carry)."""
        return {
            "instance_type": self.instance_type,
            "instance_count": self.instance_count,
            "volume_gb": self.volume_gb,
            "max_runtime_seconds": self.max_runtime_seconds,
            "fallback_types": list(self.fallback_types),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> JobResources:
        """
        Inverse of :meth:`as_dict`.

        :param data: the mapping.
        """
        return cls(
            instance_type=str(data["instance_type"]),
            instance_count=int(data.get("instance_count", 1)),
            volume_gb=int(data["volume_gb"]),
            max_runtime_seconds=int(data["max_runtime_seconds"]),
            fallback_types=tuple(str(t) for t in data.get("fallback_types") or ()),
        )


@dataclass(frozen=True)
class JobLocations:
    """
    The S3 URIs a stage job reads and writes.

    :param code: the staged step scripts (``<prefix>/code/<code-hash>/``).
    :param work: the folder holding the job's ``work.json``.
    :param specs_manifest: the ManifestFile listing the bundles of the job's specs.
    :param result: the attempt prefix the output goes to.
    :param upstream: the committed attempt of the previous stage (not for design).
    :param analysis_manifest: the ManifestFile of every committed analysis attempt (filtering only).
    """

    code: str
    work: str
    specs_manifest: str
    result: str
    upstream: str | None = None
    analysis_manifest: str | None = None


def _slug(text: str, limit: int) -> str:
    slug = re.sub(r"[^a-zA-Z0-9]+", "-", text).strip("-")
    return slug[:limit].strip("-") or "x"


def job_name(campaign: str, run_id: str, stage: str, shard: str, attempt: int) -> str:
    """
    Build a SageMaker job name unique per campaign, run, stage, shard and attempt.

    The readable part (``bg-<campaign>-<stage>-<shard>``) is truncated to fit; uniqueness comes from
    a hash of all five values, so two names never collide even when the readable parts do.

    :param campaign: the campaign name.
    :param run_id: the Airflow run id.
    :param stage: one of :data:`~boltzgen_airflow.stages.STAGES`.
    :param shard: the shard id (or a spec's filter id for filtering).
    :param attempt: the task's try number.
    """
    if stage not in STAGES:
        raise JobRequestError(f"unknown stage {stage!r}; stages are {list(STAGES)}")
    digest = hashlib.sha256(f"{campaign}\0{run_id}\0{stage}\0{shard}\0{attempt}".encode()).hexdigest()[:10]
    shard_part = _slug(shard, 16)
    stage_part = STAGE_ABBREVIATIONS[stage]
    room = JOB_NAME_MAX - len(f"bg--{stage_part}-{shard_part}-{digest}")
    name = f"bg-{_slug(campaign, room)}-{stage_part}-{shard_part}-{digest}"
    validate_job_name(name)
    return name


def validate_job_name(name: str) -> str:
    """
    Check a processing job name against SageMaker's pattern.

    :param name: the job name.
    :raises JobRequestError: naming the value.
    """
    if not JOB_NAME_RE.match(name):
        raise JobRequestError(
            f"invalid SageMaker job name {name!r}: 1-63 letters, digits and single or repeated '-' "
            "between them, starting and ending with a letter or digit"
        )
    return name


def _check_uri(what: str, uri: str) -> str:
    if not _S3_URI_RE.match(uri):
        raise JobRequestError(f"{what}: invalid S3 URI {uri!r}")
    return uri


def _prefix_uri(uri: str) -> str:
    return uri if uri.endswith("/") else f"{uri}/"


def _s3_input(name: str, uri: str, data_type: str = "S3Prefix") -> dict[str, Any]:
    return {
        "InputName": name,
        "AppManaged": False,
        "S3Input": {
            "S3Uri": uri,
            "LocalPath": f"{INPUT_ROOT}/{name}",
            "S3DataType": data_type,
            "S3InputMode": "File",
            "S3DataDistributionType": "FullyReplicated",
        },
    }


def _tags(settings: JobSettings, extra: Mapping[str, str]) -> list[dict[str, str]]:
    merged = {**settings.tags, **extra}
    tags = []
    for key, raw in merged.items():
        value = raw[:256]
        if not 1 <= len(key) <= 128 or not _TAG_RE.match(key) or not _TAG_RE.match(value):
            raise JobRequestError(f"invalid tag {key!r}={value!r}: letters, digits, spaces and _.:/=+-@ only")
        tags.append({"Key": key, "Value": value})
    return tags


def stage_entrypoint(stage: str) -> list[str]:
    """
    Return the container entrypoint of a stage.

    :param stage: one of :data:`~boltzgen_airflow.stages.STAGES`.
    """
    return ["python3", f"{INPUT_ROOT}/code/{stage}.py"]


def stage_arguments() -> list[str]:
    """Return the container arguments every stage takes (the work file)."""
    return ["--work", f"{INPUT_ROOT}/work/work.json"]


def _check_request(stage: str, name: str, resources: JobResources, locations: JobLocations) -> None:
    """Refuse what SageMaker or the stage scripts would reject, naming the value."""
    if stage not in STAGES:
        raise JobRequestError(f"unknown stage {stage!r}; stages are {list(STAGES)}")
    validate_job_name(name)
    if not 1 <= resources.max_runtime_seconds <= MAX_RUNTIME_SECONDS:
        raise JobRequestError(
            f"{stage}: max runtime {resources.max_runtime_seconds}s is outside 1-{MAX_RUNTIME_SECONDS}s"
        )
    if resources.instance_count < 1 or resources.volume_gb < 1:
        raise JobRequestError(f"{stage}: instance count and volume size must be at least 1")
    if stage not in ("design", "filtering") and not locations.upstream:
        raise JobRequestError(f"{stage}: the upstream attempt prefix is required")
    if stage in ("design", "filtering") and locations.upstream:
        raise JobRequestError(f"{stage} has no upstream input")
    if stage == "filtering" and not locations.analysis_manifest:
        raise JobRequestError("filtering: the analysis ManifestFile is required")


def _inputs(stage: str, locations: JobLocations) -> list[dict[str, Any]]:
    """The job's ProcessingInputs: code, work, specs, and upstream or (filtering) analysis."""
    inputs = [
        _s3_input("code", _prefix_uri(_check_uri("code", locations.code))),
        _s3_input("work", _prefix_uri(_check_uri("work", locations.work))),
        _s3_input("specs", _check_uri("specs", locations.specs_manifest), "ManifestFile"),
    ]
    if stage == "filtering" and locations.analysis_manifest:
        analysis = _check_uri("analysis", locations.analysis_manifest)
        inputs.append(_s3_input("analysis", analysis, "ManifestFile"))
    elif locations.upstream:
        inputs.append(_s3_input("upstream", _prefix_uri(_check_uri("upstream", locations.upstream))))
    if len(inputs) > MAX_INPUTS:
        raise JobRequestError(f"{stage}: {len(inputs)} inputs exceed SageMaker's {MAX_INPUTS}")
    return inputs


def _environment(stage: str, environment: Mapping[str, str] | None) -> dict[str, str]:
    env = {"BOLTZGEN_STEP_ROOT": STEP_ROOT, **(environment or {})}
    if len(env) > MAX_ENVIRONMENT_ENTRIES:
        raise JobRequestError(f"{stage}: {len(env)} environment entries exceed {MAX_ENVIRONMENT_ENTRIES}")
    for key, value in env.items():
        if len(key) > MAX_ENVIRONMENT_VALUE or len(value) > MAX_ENVIRONMENT_VALUE:
            raise JobRequestError(f"{stage}: environment entry {key!r} is over {MAX_ENVIRONMENT_VALUE} long")
    return env


def _output_and_cluster(
    settings: JobSettings, resources: JobResources, locations: JobLocations
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The ProcessingOutputConfig and ClusterConfig, both encrypted with the campaign's KMS key."""
    output: dict[str, Any] = {
        "Outputs": [
            {
                "OutputName": "result",
                "AppManaged": False,
                "S3Output": {
                    "S3Uri": _prefix_uri(_check_uri("result", locations.result)),
                    "LocalPath": f"{OUTPUT_ROOT}/result",
                    "S3UploadMode": "EndOfJob",
                },
            }
        ]
    }
    cluster: dict[str, Any] = {
        "InstanceCount": resources.instance_count,
        "VolumeSizeInGB": resources.volume_gb,
    }
    if resources.fallback_types:
        # SageMaker starts the job on the first type with capacity; the list replaces InstanceType.
        types = (resources.instance_type, *resources.fallback_types)
        cluster["InstancePreferences"] = [{"InstanceType": t} for t in types]
    else:
        cluster["InstanceType"] = resources.instance_type
    if settings.kms_key_id:
        output["KmsKeyId"] = settings.kms_key_id
        cluster["VolumeKmsKeyId"] = settings.kms_key_id
    return output, cluster


def _network(settings: JobSettings) -> dict[str, Any]:
    network: dict[str, Any] = {"EnableNetworkIsolation": settings.network_isolation}
    if settings.subnets:
        network["VpcConfig"] = {
            "Subnets": list(settings.subnets),
            "SecurityGroupIds": list(settings.security_group_ids),
        }
    return network


def build_processing_request(
    *,
    stage: str,
    name: str,
    settings: JobSettings,
    resources: JobResources,
    locations: JobLocations,
    tags: Mapping[str, str] | None = None,
    environment: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """
    Build the CreateProcessingJob request of one stage job.

    :param stage: one of :data:`~boltzgen_airflow.stages.STAGES`.
    :param name: the job name (see :func:`job_name`).
    :param settings: the campaign's AWS settings.
    :param resources: the stage's instance, volume and runtime.
    :param locations: the S3 URIs the job reads and writes.
    :param tags: tags added to the campaign's (e.g. campaign, run, stage, shard).
    :param environment: variables added to ``BOLTZGEN_STEP_ROOT`` (small values only).
    :raises JobRequestError: naming the value SageMaker would reject.
    """
    _check_request(stage, name, resources, locations)
    env = _environment(stage, environment)
    output, cluster = _output_and_cluster(settings, resources, locations)

    return {
        "ProcessingJobName": name,
        "ProcessingInputs": _inputs(stage, locations),
        "ProcessingOutputConfig": output,
        "ProcessingResources": {"ClusterConfig": cluster},
        "StoppingCondition": {"MaxRuntimeInSeconds": resources.max_runtime_seconds},
        "AppSpecification": {
            "ImageUri": settings.image_uri,
            "ContainerEntrypoint": stage_entrypoint(stage),
            "ContainerArguments": stage_arguments(),
        },
        "Environment": env,
        "NetworkConfig": _network(settings),
        "RoleArn": settings.role_arn,
        "Tags": _tags(settings, tags or {}),
    }


def request_summary(request: Mapping[str, Any]) -> str:
    """
    Return one line saying what a CreateProcessingJob request starts: name, image, instances,
    inputs, outputs and runtime limit (the task log shows this; the full request is logged at debug).

    :param request: a request of :func:`build_processing_request`.
    """
    cluster = request["ProcessingResources"]["ClusterConfig"]
    preferences = [p["InstanceType"] for p in cluster.get("InstancePreferences", [])]
    instance = " or ".join(preferences) if preferences else cluster.get("InstanceType", "?")
    inputs = [i["InputName"] for i in request.get("ProcessingInputs", [])]
    outputs = request.get("ProcessingOutputConfig", {}).get("Outputs", [])
    hours = int(request["StoppingCondition"]["MaxRuntimeInSeconds"]) / 3600
    return (
        f"{request['ProcessingJobName']}: image {request['AppSpecification']['ImageUri']} on "
        f"{cluster.get('InstanceCount', 1)} x {instance} ({cluster.get('VolumeSizeInGB', '?')} GB), "
        f"inputs {len(inputs)} ({', '.join(inputs)}), outputs {len(outputs)}, max runtime {hours:g} h"
    )
